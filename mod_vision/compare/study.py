"""A capacity study's report: one row per arm and capacity, AP against capacity, the targets judged on their numbers,
results.csv, capacity.csv, ap_vs_latency.png and ap_vs_capacity.png."""

from __future__ import annotations

import math
from functools import partial
from pathlib import Path

from ..report import markdown_table, write_csv
from .reporting import ap_metric, figure, header
from .settings import BACKGROUNDS, label


STUDY_METRICS = ("box_AP", "box_AP50", "mask_AP", "mask_AP50")  # a capacity study's columns, NaN where not scored


def key_columns(r: dict, results: list[dict]) -> dict:
    """The columns that tell a capacity study's rows apart: the split and the seed where the run has several of them,
    and the arm."""
    splits, seeds = {q.get("split") for q in results}, {q["seed"] for q in results}
    return {**({"split": r.get("split")} if splits != {None} else {}), "arm": label(r["arm"]),
            **({"seed": r["seed"]} if len(seeds) > 1 else {})}  # fmt: skip


def trained_at(r: dict) -> str:
    """How a capacity study's arm was trained: 'elastic 0.125-1' (capacity_range), its capacity, or 'dense'."""
    span = r["train_args"].get("capacity_range")
    if span:
        return "elastic " + "-".join(f"{c:g}" for c in span)
    return "dense" if r["own_capacity"] is None else f"{r['own_capacity']:g}"


def study_rows(results: list[dict]) -> list[dict]:
    """One row per (arm, capacity) of a capacity study: AP in [0, 1], GFLOPs, latency and its ratio to the reference."""
    kinds = [f"box_AP_{k}" for k in BACKGROUNDS if any(f"box_AP_{k}" in s for r in results for s in r["eval"].values())]
    return [{**key_columns(r, results), "trained at": trained_at(r), "capacity": key,
             **{k: s.get(k, math.nan) for k in (*STUDY_METRICS, *kinds)}, "GFLOPs": s["gflops"],
             "latency_ms": s.get("latency_ms", math.nan), "latency_ratio": s.get("latency_ratio", math.nan),
             "token_share": math.nan if s["token_share"] is None else s["token_share"]}
            for r in results for key, s in r["eval"].items()]  # fmt: skip


def capacity_rows(results: list[dict], capacities) -> list[dict]:
    """Box and mask AP of each routed arm (one row per metric it has) at each capacity: how AP falls with compute."""
    caps = [f"{c:g}" for c in capacities]
    at = lambda r, c, kind: r["eval"][c][kind] if c in r["eval"] else math.nan  # noqa: E731
    return [{**key_columns(r, results), "metric": kind, **{c: at(r, c, kind) for c in caps}}
            for r in results if r["own_capacity"] is not None for kind in ("box_AP", "mask_AP")
            if any(kind in s for s in r["eval"].values())]  # fmt: skip


def verdicts(results: list[dict], targets: list[dict], reference: str | None, baseline: str | None) -> list[str]:
    """The targets judged per split (and seed) and metric, each with the numbers it was judged on, AP in points:
    {"arm", "capacity", "within"}: the arm at that capacity is within `within` AP of the reference arm;
    {"arm", "loses_less_than", "from", "to"}: the arm loses less AP from capacity `from` to `to` than the other arm;
    and with a `baseline` arm: a routed arm, at some capacity, is more accurate than it at equal or lower latency.
    A target whose numbers were not all measured is left out."""
    lines, several = [], len({r["seed"] for r in results}) > 1
    for split, seed in dict.fromkeys((r.get("split"), r["seed"]) for r in results):
        group = [r for r in results if (r.get("split"), r["seed"]) == (split, seed)]
        for kind in ("box_AP", "mask_AP"):
            at = partial(ap_points, group, kind=kind)
            judged = [within(at, t, reference) if "within" in t else loses_less(at, t) for t in targets]
            where = " ".join(part for part in (split, f"seed {seed}" if several else "", kind) if part)
            lines += [f"- {where}: {line}" for line in [*judged, beats(group, kind, baseline)] if line]
    return lines


def ap_points(results: list[dict], arm: str, capacity: str, kind: str) -> float:
    """An arm's AP (`kind`) at a capacity ("0.5"; "dense" for an unrouted arm) in points, NaN where not measured."""
    r = next((r for r in results if r["arm"] == arm), None)
    return 100 * r["eval"][capacity].get(kind, math.nan) if r and capacity in r["eval"] else math.nan


def within(at, target: dict, reference: str) -> str | None:
    """`verdicts`' line for a target {"arm", "capacity", "within"}; None where a number is missing."""
    arm, cap, tol = target["arm"], f"{target['capacity']:g}", target["within"]
    a, d = at(arm, cap), at(reference, "dense")
    if math.isnan(a + d):
        return None
    verdict = ("holds" if a >= d - tol else "does not hold") + (" (both 0: uninformative)" if a == d == 0 else "")
    return f"{arm} at {cap} = {a:.2f} vs {reference} {d:.2f} (target: within {tol} AP) -> **{verdict}** ({a - d:+.2f})"


def loses_less(at, target: dict) -> str | None:
    """`verdicts`' line for a target {"arm", "loses_less_than", "from", "to"}; None where a number is missing."""
    arms, caps = (target["arm"], target["loses_less_than"]), (f"{target['from']:g}", f"{target['to']:g}")
    (a_hi, a_lo), (b_hi, b_lo) = ([at(arm, c) for c in caps] for arm in arms)
    if math.isnan(a_hi + a_lo + b_hi + b_lo):
        return None
    verdict = "holds" if a_lo - a_hi > b_lo - b_hi else "does not hold"
    return (f"{arms[0]} loses less AP from {caps[0]} to {caps[1]} than {arms[1]}: {arms[0]} {a_hi:.2f} -> {a_lo:.2f} "
            f"({a_lo - a_hi:+.2f}), {arms[1]} {b_hi:.2f} -> {b_lo:.2f} ({b_lo - b_hi:+.2f}) -> **{verdict}**")


def beats(results: list[dict], kind: str, baseline: str | None) -> str | None:
    """`verdicts`' line for the baseline: the routed arms' capacities more accurate than it and no slower."""
    base = next((r["eval"]["dense"] for r in results if r["arm"] == baseline and "dense" in r["eval"]), {})
    if kind not in base or "latency_ms" not in base:
        return None
    ap, ms = 100 * base[kind], base["latency_ms"]
    better = [f"{label(r['arm'])}@{c} {100 * s[kind]:.2f} AP at {s['latency_ms']:.1f} ms" for r in results
              if r["own_capacity"] is not None for c, s in r["eval"].items()
              if 100 * s.get(kind, math.nan) > ap and s.get("latency_ms", math.inf) <= ms]  # fmt: skip
    verdict = f"holds: {', '.join(better)}" if better else "does not hold"
    return (f"a routed arm more accurate than {label(baseline)} ({ap:.2f} AP, {ms:.1f} ms) at equal or lower latency "
            f"-> **{verdict}**")


def study_report(results: list[dict], run: Path, args, command: str) -> Path:
    """A capacity study's results.md (with the `verdicts` on args.targets and args.baseline), results.csv
    (`study_rows`), capacity.csv (`capacity_rows`), ap_vs_latency.png and ap_vs_capacity.png."""
    table, by_capacity = study_rows(results), capacity_rows(results, args.capacities)
    columns = list(table[0]) if table else []
    caps = [f"{c:g}" for c in args.capacities]
    cap_columns = [*(k for k in columns if k in ("split", "arm", "seed")), "metric", *caps]
    write_csv(run / "results.csv", table, columns)
    write_csv(run / "capacity.csv", by_capacity, cap_columns)
    size = f"{args.latency_imgsz[0]}x{args.latency_imgsz[0]}" if args.latency_imgsz else "not timed"
    scoring = (f"box AP/AP50: {ap_metric([s for r in results for s in r['eval'].values()])}, and mask AP/AP50 for "
               "segment models, in [0, 1] on the val split, every arm scored by mod_vision's validator, the routed "
               "ones at each capacity; GFLOPs: mod_vision.flops.gflops (routing-aware) at imgsz; latency: batch 1, "
               f"{size}, {args.threads} CPU threads, fused model with its trained weights, median of {args.runs} runs "
               f"after {args.warmup} warm-up, round-robin over all rows; latency_ratio: against the "
               f"{args.reference or '(no reference)'} arm of the same split")  # fmt: skip
    arms = {label(r["arm"]): f"{r['model']} {r['train_args'] or ''}".strip() for r in results}
    text = [*header(args, command, scoring), "Arms: " + "; ".join(f"{a} = {spec}" for a, spec in arms.items()), "",
            markdown_table(table, columns, floatfmt=".3f"), "", "## AP against capacity (routed arms)", "",
            markdown_table(by_capacity, cap_columns, floatfmt=".3f")]
    if args.targets or args.baseline:
        text += ["", "## Targets (AP in points)", "", *verdicts(results, args.targets, args.reference, args.baseline)]
    path = Path(run) / "results.md"
    path.write_text("\n".join(text) + "\n")
    if results:
        for name, x in (("ap_vs_latency", "latency_ms"), ("ap_vs_capacity", "capacity")):
            plot_study(results, run / f"{name}.png", x, args.reference)
    return path


def plot_study(results: list[dict], path: Path, x: str, reference: str | None) -> None:
    """AP against latency or capacity (`x`): a row of panels per metric, a column per split."""
    splits = list(dict.fromkeys(r.get("split") for r in results))
    kinds = [k for k in ("box_AP", "mask_AP") if any(k in s for r in results for s in r["eval"].values())]
    fig = figure((5 * len(splits), 4 * len(kinds)))
    axes = fig.subplots(len(kinds), len(splits), squeeze=False)
    for i, kind in enumerate(kinds):
        for j, split in enumerate(splits):
            ax = axes[i, j]
            for r in results:
                if r.get("split") == split:
                    draw_arm(ax, r, results, kind, x, reference)
            ax.set(title=f"{split}: {kind}" if split else kind, ylabel=kind,
                   xlabel="capacity" if x == "capacity" else "CPU latency (ms)")  # fmt: skip
            if x == "capacity":
                ax.set_xscale("log", base=2)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
    fig.savefig(path, dpi=100)


def draw_arm(ax, r: dict, results: list[dict], kind: str, x: str, reference: str | None) -> None:
    """One result on an AP panel: a routed arm is a line through its capacities; any other a point (against latency)
    or a level (against capacity), dashed black for the reference."""
    lead = key_columns(r, results)
    name = lead["arm"] + (f" seed {lead['seed']}" if "seed" in lead else "")
    where = lambda c, s: float(c) if x == "capacity" else s.get("latency_ms", math.nan)  # noqa: E731
    points = [(where(c, s), s.get(kind, math.nan)) for c, s in r["eval"].items() if c != "dense"]
    dense = r["eval"].get("dense", {})
    if points:
        ax.plot(*zip(*points), "o-", label=name)
    elif x == "capacity":
        ax.axhline(dense.get(kind, math.nan), ls="--", color="k" if r["arm"] == reference else "r", label=name)
    else:
        ax.plot(dense.get("latency_ms", math.nan), dense.get(kind, math.nan), "s", ms=9, label=name)
