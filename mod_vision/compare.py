"""`mod-vision compare`: detectors side by side, trained alike, scored by one evaluator and timed round-robin.

Every arm (a mod_vision YAML, or an Ultralytics one such as yolo11n.yaml, which trains with `ultralytics.YOLO`) trains
from scratch on the same data with the same epochs, imgsz, batch and augmentation, once per seed; the mod_vision arms
also get `extra`, mod_vision's training arguments. An arm may also be a dict, {"name": ..., "model": YAML, **its own
training arguments}, so that one YAML trained at capacity 0.5 and at 0.25 makes two arms. Each is scored by
mod_vision's validator: COCO box AP (and mask AP for a segment model) against the data's COCO json, and on data that
records background kinds (the sample data's val_flat.txt, val_textured.txt) the AP of each kind. Latency: batch 1,
`threads` CPU threads, every arm timed round-robin in one call (as `yolo benchmark` times formats one after another,
but interleaved so that machine noise hits every arm alike), on random weights or, with `trained_latency=True`, on
each arm's first trained seed.

A capacity study (`capacities=[1.0,0.5,0.25,0.125]`) scores each routed arm at each capacity, with its routing-aware
GFLOPs, and times each (arm, capacity) on its trained weights at the one `latency_imgsz`; `latency_ratio` divides by
the `reference` arm's latency (the dense twin). Its `data` may name several data sets, {split: data YAML}, each arm
trained on each. Its report judges `targets` ({"arm", "capacity", "within"}: AP within that many points of the
reference; {"arm", "loses_less_than", "from", "to"}: AP lost between two capacities against another arm) and whether
a routed arm beats the `baseline` arm at equal or lower latency; it writes results.md (one row per arm and capacity,
AP against capacity, the verdicts), results.csv, capacity.csv, ap_vs_latency.png and ap_vs_capacity.png.

Resumable: each (split, arm, seed) writes <run>/results/[<split>__]<arm>__s<seed>.json when done, and a rerun reuses
it; an interrupted training resumes from its last.pt. Results: <run>/results-<data>-e<epochs>-i<imgsz>.csv, one row
per arm and seed (a CSV named by its configuration, as timm's benchmark results are), and the report <run>/results.md
with its command line at the top, plus ap_vs_latency.png. `routing_quality=True` appends, for each routed arm's first
seed, the table of `routing_quality_rows` (learned against random ranking at each capacity, object lift and recall,
padding share).

    mod-vision compare name=main arms=[hybrid12-det-n.yaml,yolo11n.yaml] data=sample epochs=40 imgsz=160 seeds=[0,1]
    mod-vision compare name=study "arms=[{'name':'c0.5','model':'modvit-seg-n.yaml','capacity':0.5},'yolo11n-seg.yaml']"
        capacities=[1.0,0.5,0.25] latency_imgsz=[160]
"""

from __future__ import annotations

import json
import math
import statistics
from functools import partial
from pathlib import Path
from types import SimpleNamespace

import torch

from .defaults import DEFAULT_CAPACITIES
from .report import markdown_table, write_csv

SHARED = ("data", "epochs", "imgsz", "batch", "extra")  # settings a finished result must match to be reused
BACKGROUNDS = ("flat", "textured")  # the sample data's kinds, each with its lists (train_<kind>.txt, val_<kind>.txt)
STUDY_METRICS = ("box_AP", "box_AP50", "mask_AP", "mask_AP50")  # a capacity study's columns, NaN where not scored
PREFIX = "mod-vision compare"


def is_stock(arm: str) -> bool:
    """An Ultralytics model (yolo11n.yaml, yolo26n-seg.yaml): trained and loaded with `ultralytics.YOLO`."""
    return Path(arm).name.startswith("yolo")


def as_arm(value) -> dict:
    """An arm as `compare` takes it: a model YAML, which also names the arm, or {"model": YAML, "name": NAME, **its own
    training arguments}. Returns {"name", "model", "train"}."""
    if not isinstance(value, dict):
        return {"name": str(value), "model": str(value), "train": {}}
    spec = dict(value)
    model = spec.pop("model", None)
    if not isinstance(model, str):
        raise SystemExit(f"{PREFIX}: an arm given as a dict needs 'model': a model YAML, got {value!r}")
    return {"name": str(spec.pop("name", model)), "model": model, "train": spec}


def label(name: str) -> str:
    """An arm in tables and file names: a model file by its stem (hybrid12-det-n), another name as it is (mod-c0.5)."""
    return Path(name).stem if Path(name).suffix in {".yaml", ".yml", ".pt"} else name


def finished(checkpoint: Path) -> bool:
    """Ultralytics marks a checkpoint whose training ended (optimizer stripped) with epoch -1."""
    return torch.load(checkpoint, map_location="cpu", weights_only=False).get("epoch", -1) == -1


def parse_extra(items: list[str] | None) -> dict:
    """`KEY=VALUE` items, values parsed as YAML (2, 0.1, [0.25, 1.0]): the tools' `--extra`."""
    import yaml

    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"--extra takes KEY=VALUE, got {item!r}")
        out[key] = yaml.safe_load(value)
    return out


def train_arm(arm: str, folder: Path, **train) -> Path:
    """Train one arm into `folder` (Ultralytics' run folder), resume it from an unfinished last.pt, or reuse it when
    its training ended; returns best.pt (last.pt where no best was saved)."""
    from ultralytics import YOLO

    from . import MoDYOLO

    cls = YOLO if is_stock(arm) else MoDYOLO
    folder = Path(folder).resolve()  # Ultralytics nests a relative project under its runs/
    last, best = folder / "weights" / "last.pt", folder / "weights" / "best.pt"
    weights = lambda: best if best.is_file() else last  # noqa: E731
    if (last.is_file() and finished(last)) or (best.is_file() and not last.is_file()):
        print(f"[compare] {folder.name}: trained, reusing {weights()}", flush=True)
        return weights()
    if last.is_file():
        print(f"[compare] {folder.name}: resuming from {last}", flush=True)
        cls(str(last)).train(resume=True)
    else:
        cls(arm).train(project=str(folder.parent), name=folder.name, exist_ok=True, **train)
    return weights()


def split_yamls(data: str | Path, folder: Path, stem: str, parts=("val",), kinds=BACKGROUNDS,
                required: bool = False) -> dict[str, str]:  # fmt: skip
    """One data YAML per background kind whose `parts` are that kind's lists (val_flat.txt, ...), written to
    `folder/<stem>_<kind>.yaml`. A kind without its lists is left out, or with `required` raises. The COCO json stays
    the full one: the validator scores only the image ids its loader holds, so each is that kind's AP."""
    from ultralytics.utils import YAML

    spec = YAML.load(data)
    root = Path(spec.get("path") or Path(data).parent)
    out = {}
    for kind in kinds:
        missing = [root / f"{part}_{kind}.txt" for part in parts if not (root / f"{part}_{kind}.txt").is_file()]
        if missing and required:
            raise FileNotFoundError(f"{missing[0]} missing; splits are 'flat' and 'textured'")
        if not missing:
            path = Path(folder) / f"{stem}_{kind}.yaml"
            YAML.save(path, {**{k: v for k, v in spec.items() if k != "yaml_file"}, "path": str(root),
                             **{part: f"{part}_{kind}.txt" for part in parts}})  # fmt: skip
            out[kind] = str(path)
    return out


def evaluate(weights: Path, data: str, imgsz: int, batch: int, splits: dict[str, str] | None = None, **val) -> dict:
    """Box AP and AP50 (mask AP and AP50 for a segment model) and the token share on the val split, and box AP on each
    background kind's val list of `splits` (`split_yamls`)."""
    from . import MoDYOLO
    from .engine.coco_eval import box_ap

    model = MoDYOLO(str(weights))
    run = lambda d: model.val(data=str(d), imgsz=imgsz, batch=batch, plots=False, verbose=False, **{"device": "cpu", **val})  # noqa: E731
    m = run(data)
    # COCO's AP where the data names a COCO json (a failed COCO evaluation raises), else Ultralytics' mAP, named
    (ap, metric), (ap50, _) = box_ap(m), box_ap(m, "AP50")
    out = {"box_AP": ap, "box_AP50": ap50, "box_AP_metric": metric, "token_share": m.token_share}
    for key in ("AP", "AP50"):  # a segment model: its masks are scored against the same json
        if f"metrics/coco_{key}(M)" in m.coco:
            out[f"mask_{key}"] = m.coco[f"metrics/coco_{key}(M)"]
    return {**out, **{f"box_AP_{kind}": box_ap(run(path))[0] for kind, path in (splits or {}).items()}}


def sweep(weights: Path, data: str, imgsz: int, batch: int, capacities, name: str, splits=None, **val):
    """A trained arm scored at each capacity, keyed "1", "0.5", ... ("dense" once for a model without routed blocks),
    each with its routing-aware GFLOPs at imgsz; returns (the arm's own capacity or None, the scores)."""
    from . import MoDYOLO
    from .flops import capacity_table, gflops
    from .model import routed_capacities

    net = MoDYOLO(str(weights)).model
    own = routed_capacities(net)
    table = capacity_table(net, imgsz, capacities)  # [] for a model without routed blocks
    points = [(f"{c:g}", c, g) for c, g in table] or [("dense", None, gflops(net, imgsz))]
    scores = {key: {**evaluate(weights, data, imgsz, batch, splits, capacity=c, name=f"{name}__{key}", **val),
                    "gflops": g} for key, c, g in points}  # fmt: skip
    return (own[0] if own else None), scores


def median_ms(calls: list, runs: int, warmup: int, threads: int) -> list[float]:
    """Median ms of each (prepare, run) pair of `calls`, timed round-robin (mod_vision.benchmark.round_robin)."""
    from .benchmark import round_robin

    torch.set_num_threads(threads)
    with torch.inference_mode():
        times = round_robin(calls, runs=runs, warmup=warmup)
    return [1000 * statistics.median(t) for t in times]


def network(model: str, weights: str | Path | None = None) -> torch.nn.Module:
    """The fused eval network that `latency` times: the model its YAML builds (random weights), or its `weights`."""
    from ultralytics import YOLO

    from . import MoDYOLO

    return (YOLO if is_stock(model) else MoDYOLO)(str(weights or model)).model.fuse(verbose=False).eval()


def timed(configs: list[tuple], imgsz: int, threads: int, runs: int, warmup: int) -> list[float]:
    """Median ms per image, batch 1, of each (network, capacity) pair, all timed round-robin. The capacity (None: the
    network as it is) is set before each run, since the pairs of one arm share its network."""
    from .nn.routing import set_static

    x = torch.rand(1, 3, imgsz, imgsz, generator=torch.Generator().manual_seed(0))
    calls = [(None if c is None else partial(set_static, net, c), partial(net, x)) for net, c in configs]
    return median_ms(calls, runs, warmup, threads)


def latency(arms: list[dict], imgsz: int, threads: int, runs: int, weights: dict | None = None,
            warmup: int = 3) -> dict[str, float]:  # fmt: skip
    """Median ms per image of each arm (`as_arm`), batch 1: the model its YAML builds, or its `weights` by arm name."""
    nets = [(network(a["model"], (weights or {}).get(a["name"])), None) for a in arms]
    return dict(zip([a["name"] for a in arms], timed(nets, imgsz, threads, runs, warmup)))


def time_capacities(results: list[dict], imgsz: int, threads: int, runs: int, warmup: int,
                    reference: str | None = None) -> None:  # fmt: skip
    """A capacity study's latency: every result at each capacity it was scored at, on its trained weights, timed
    round-robin in one call, into its scores' `latency_ms`; `latency_ratio` divides by the `reference` arm's latency
    (its first score) of the same split and seed, NaN without one."""
    configs, scores = [], []
    for r in results:
        net = network(r["model"], r["weights"])
        configs += [(net, None if key == "dense" else float(key)) for key in r["eval"]]
        scores += r["eval"].values()
    for score, ms in zip(scores, timed(configs, imgsz, threads, runs, warmup)):
        score["latency_ms"] = ms
    for r in results:
        same = (reference, r.get("split"), r["seed"])
        ref = next((q for q in results if (q["arm"], q.get("split"), q["seed"]) == same), None)
        base = next(iter(ref["eval"].values()))["latency_ms"] if ref else math.nan
        for score in r["eval"].values():
            score["latency_ratio"] = score["latency_ms"] / base


def ap_metric(results: list[dict]) -> str:
    """The metric the box AP columns hold, as the evaluations recorded it (COCO's, or Ultralytics' mAP without a COCO
    json). Results saved before it was recorded say so: then a failed COCO evaluation fell back to Ultralytics' mAP."""
    return " / ".join(sorted({r.get("box_AP_metric", "box AP (metric not recorded)") for r in results})) or "-"


def header(args, command: str, scoring: str) -> list[str]:
    """The report's title, its command line, and what was trained and how it was scored and timed (`scoring`)."""
    return [f"# {args.name}", "", "```", command, "```", "",
            f"data `{args.data}`, {args.epochs} epochs, imgsz {args.imgsz}, batch {args.batch}, extra (mod arms) "
            f"{args.extra or '-'}; {scoring}.", ""]  # fmt: skip


def report(results: list[dict], lat: dict, run: Path, args, command: str) -> Path:
    """results.md (and ap_vs_latency.png): one row per arm, its seeds' box AP and their mean, and its latencies.
    `args` holds name, data, epochs, imgsz, batch, extra, threads, runs (and optionally trained_latency)."""
    arms = list(dict.fromkeys([r["arm"] for r in results] + [a for ms in lat.values() for a in ms]))
    rows = []
    for a in arms:
        mine = [r for r in results if r["arm"] == a]
        if not mine:  # timed only (train=False, or not trained yet)
            rows.append({"arm": label(a), **{f"ms @ {size}": f"{ms[a]:.1f}" for size, ms in lat.items() if a in ms}})
            continue
        aps = [100 * r["box_AP"] for r in mine]
        row = {"arm": label(a), "seeds": " ".join(str(r["seed"]) for r in mine),
               "box AP (per seed)": " / ".join(f"{v:.2f}" for v in aps), "box AP (mean)": f"{statistics.mean(aps):.2f}",
               "box AP50 (mean)": f"{100 * statistics.mean(r['box_AP50'] for r in mine):.2f}",
               **{f"box AP {kind} (mean)": f"{100 * statistics.mean(r[f'box_AP_{kind}'] for r in mine):.2f}"
                  for kind in BACKGROUNDS if all(f"box_AP_{kind}" in r for r in mine)},
               **({"mask AP (per seed)": " / ".join(f"{100 * r['mask_AP']:.2f}" for r in mine),
                   "mask AP (mean)": f"{100 * statistics.mean(r['mask_AP'] for r in mine):.2f}"}
                  if all("mask_AP" in r for r in mine) else {}),
               "token share": "" if mine[0]["token_share"] is None else f"{mine[0]['token_share']:.3f}"}  # fmt: skip
        for size, ms in lat.items():
            row[f"ms @ {size}"] = f"{ms[a]:.1f}" if a in ms else ""
        rows.append(row)
    weights = "trained weights (first seed)" if getattr(args, "trained_latency", False) else "random weights"
    scoring = (f"box AP: {ap_metric(results)} x 100 on the data's val split; latency: batch 1, {args.threads} CPU "
               f"threads, median of {args.runs} round-robin runs, {weights}")  # fmt: skip
    text = [*header(args, command, scoring), markdown_table(rows, list(dict.fromkeys(k for r in rows for k in r)))]
    path = Path(run) / "results.md"
    path.write_text("\n".join(text) + "\n")
    if results and lat:
        plot(results, lat, Path(run) / "ap_vs_latency.png")
    return path


def plot(results: list[dict], lat: dict, path: Path) -> None:
    """Box AP (each seed, and the mean) against latency, one panel per timed input size."""
    fig = figure((5 * len(lat), 4))
    for ax, (size, ms) in zip(fig.subplots(1, len(lat), squeeze=False)[0], lat.items()):
        for arm in dict.fromkeys(r["arm"] for r in results):
            if arm not in ms:
                continue
            aps = [100 * r["box_AP"] for r in results if r["arm"] == arm]
            (mean,) = ax.plot([ms[arm]], [statistics.mean(aps)], marker="o", ls="", label=label(arm))
            ax.plot([ms[arm]] * len(aps), aps, marker="_", ls="", ms=12, color=mean.get_color())
        ax.set_xlabel(f"ms per image at {size} (batch 1)")
        ax.set_ylabel("COCO box AP (dot: mean, bars: seeds)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.savefig(path, dpi=110)


def figure(size: tuple[float, float]):
    """A Matplotlib figure drawn off-screen, without pyplot's global state."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


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


def csv_name(data: str, epochs: int, imgsz: int) -> str:
    """The results CSV of one configuration, e.g. results-sample-e30-i160.csv: runs of other settings sit beside it."""
    return f"results-{Path(data).stem}-e{epochs}-i{imgsz}.csv"


def write_results_csv(results: list[dict], lat: dict, path: Path) -> Path:
    """One row per (arm, seed): AP values in [0, 1] as evaluated, and the arm's latency at each timed size."""
    columns = ["arm", "seed", "box_AP", "box_AP50", *(f"box_AP_{k}" for k in BACKGROUNDS), "mask_AP", "mask_AP50",
               "token_share", "box_AP_metric", *(f"ms@{size}" for size in lat)]  # fmt: skip
    rows = [{**{k: r.get(k) for k in columns}, "arm": label(r["arm"]),
             **{f"ms@{size}": ms.get(r["arm"]) for size, ms in lat.items()}} for r in results]  # fmt: skip
    return write_csv(path, rows, columns)


def routing_quality_rows(weights: str | Path, data: str, imgsz: int = 160, batch: int = 16,
                         capacities=DEFAULT_CAPACITIES, rankings=("topk", "random"), dynamic=()) -> tuple[list[dict], str]:
    """Where a routed model spends its tokens, against the random-ranking control: rows of one val each at the model's
    own budget, at each `dynamic` per-image budget, at each capacity with each ranking (`random`: same k, the learned
    gate kept, tokens picked at random), and with `routing="none"` (no token processed by any router); box AP, token
    share and, per background kind, object lift and recall (mean over routed blocks, worst block) and the padding
    share. Returns the rows and the box AP metric's name. A model without routed blocks is a ValueError."""
    from . import MoDYOLO
    from .engine.coco_eval import box_ap
    from .nn import routed_blocks

    def summarize(blocks: list[dict], key: str, worst) -> str:
        values = [b[key] for b in blocks if b[key] is not None]
        return f"{sum(values) / len(values):.2f} ({worst(values):.2f})" if values else "-"

    model = MoDYOLO(str(weights))
    if not routed_blocks(model.model):
        raise ValueError(f"{weights} has no routed blocks: nothing to measure")
    rows, metrics = [], set()
    runs = [(None, None, "topk"), *((None, list(d), "topk") for d in dynamic),
            *((c, None, r) for c in capacities for r in rankings), (None, None, "none")]
    for capacity, bounds, ranking in runs:
        m = model.val(data=data, imgsz=imgsz, batch=batch, capacity=capacity, dynamic_capacity=bounds,
                      routing=ranking, plots=False, verbose=False, device="cpu")  # fmt: skip
        shown = ("-" if ranking == "none" else f"per image {bounds}" if bounds else "model's own" if capacity is None
                 else f"{capacity:g}")
        ranked = {"topk": "learned", "none": "none (routed compute removed)"}.get(ranking, ranking)
        row = {"capacity": shown, "ranking": ranked, "box AP": f"{100 * box_ap(m)[0]:.2f}",
               "token share": f"{m.token_share:.3f}"}
        for kind in ("flat", "textured", "all"):
            if blocks := m.routing.get(kind):
                row[f"lift {kind}"] = summarize(blocks, "object_lift", min)
                row[f"recall {kind}"] = summarize(blocks, "object_recall", min)
        row["padding share (worst block)"] = summarize(m.routing.get("all", []), "padding_share", max)
        rows.append(row)
        metrics.add(box_ap(m)[1])
    return rows, " / ".join(sorted(metrics))


def routing_quality_text(rows: list[dict], metric: str) -> str:
    return "\n".join([f"box AP: {metric} x 100", "lift and recall: mean over routed blocks (worst block)", "",
                      markdown_table(rows)])  # fmt: skip


def as_list(value, kind=str) -> list:
    """A list argument as `key=value` gives it: a list, one value, or a string '[a,b]' / 'a,b' (smart_value leaves a
    list of names unparsed)."""
    if isinstance(value, str):
        value = [v.strip() for v in value.strip("[]").split(",") if v.strip()]
    return [kind(v) for v in (value if isinstance(value, (list, tuple)) else [value])]


def check_arm(arm: str) -> None:
    """Build the arm once before any training, so that a misspelt YAML fails now and not after hours of other arms."""
    from ultralytics import YOLO

    from . import MoDYOLO

    try:
        (YOLO if is_stock(arm) else MoDYOLO)(arm)
    except Exception as e:  # Ultralytics raises FileNotFoundError, KeyError or AssertionError for a YAML it lacks
        raise SystemExit(f"{PREFIX}: unknown arm '{arm}' ({type(e).__name__}: {' '.join(str(e).split())[:200]}); "
                         f"arms are model YAMLs: mod_vision's (cfg/models/) or Ultralytics' (yolo11n.yaml)") from e


def compare(arms=("hybrid12-det-n.yaml", "yolo11n.yaml"), data="sample", name: str = "compare",
            project: str = "runs/compare", seeds=(0,), epochs: int = 40, imgsz: int = 160, batch: int = 16,
            workers: int = 2, latency_imgsz=(640,), threads: int = 2, runs: int = 20, warmup: int = 3,
            trained_latency: bool = False, routing_quality: bool = False, train: bool = True, extra: dict | None = None,
            capacities=None, reference: str | None = None, baseline: str | None = None, targets=(),
            device: str = "cpu", command: str | None = None) -> Path:  # fmt: skip
    """Train, evaluate and time `arms` (see the module's docstring); returns the report results.md."""
    arms, seeds, latency_imgsz = as_list(arms, as_arm), as_list(seeds, int), as_list(latency_imgsz, int)
    capacities = None if capacities is None else as_list(capacities, float)
    targets = [targets] if isinstance(targets, (dict, str)) else list(targets or ())
    check_settings(arms, seeds, latency_imgsz, extra, epochs=epochs, imgsz=imgsz, batch=batch, workers=workers,
                   threads=threads, runs=runs, warmup=warmup)  # fmt: skip
    check_study(arms, capacities, latency_imgsz, data, reference, baseline, targets)
    for model in dict.fromkeys(a["model"] for a in arms):
        check_arm(model)
    datas = data_sets(data)
    args = SimpleNamespace(name=name, data=datas.get(None, datas), epochs=epochs, imgsz=imgsz, batch=batch,
                           extra=extra or {}, threads=threads, runs=runs, warmup=warmup, latency_imgsz=latency_imgsz,
                           trained_latency=trained_latency, capacities=capacities, reference=reference,
                           baseline=baseline, targets=targets, workers=workers, device=device, train=train)  # fmt: skip
    shown = {k: v for k, v in vars(args).items() if k != "threads" and v not in (None, [], {})}
    command = command or f"{PREFIX} " + " ".join(f"{k}={v}" for k, v in shown.items())
    run = Path(project) / name
    (run / "results").mkdir(parents=True, exist_ok=True)
    # a data name Ultralytics resolves itself (coco8.yaml) records no background kinds, and named data sets (a study's
    # splits) are scored on their own val lists only
    one = datas.get(None)
    backgrounds = split_yamls(one, run, "data_val") if train and one and Path(one).is_file() else {}
    results = [r for split, path in datas.items() for seed in seeds for arm in arms
               if (r := run_arm(arm, seed, split, path, run, args, backgrounds)) is not None]  # fmt: skip
    if capacities is None:
        path = report_arms(results, arms, run, args, command)
    else:
        if latency_imgsz:
            time_capacities(results, latency_imgsz[0], threads, runs, warmup, reference)
        path = study_report(results, run, args, command)
    if routing_quality:
        path.write_text(path.read_text() + routing_quality_section(results, run, args))
    print(path.read_text())
    return path


def check_settings(arms: list[dict], seeds: list[int], latency_imgsz: list[int], extra, **counts) -> None:
    """Refuse, in one line and before any training, settings that cannot run (`counts`: integer settings)."""
    for key, value in counts.items():
        least = 0 if key in ("workers", "warmup") else 1
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise SystemExit(f"{PREFIX}: {key} must be an integer >= {least}, got {key}={value!r}")
    labels = [label(a["name"]) for a in arms]
    if not arms or not seeds:
        raise SystemExit(f"{PREFIX}: give at least one arm and one seed, got arms={labels} seeds={seeds}")
    if len(set(labels)) < len(labels):
        raise SystemExit(f"{PREFIX}: two arms share a name ({labels}); give each dict arm its own 'name'")
    if any(s <= 0 for s in latency_imgsz):
        raise SystemExit(f"{PREFIX}: latency_imgsz must be positive sizes (or [] for no timing), got {latency_imgsz}")
    if not isinstance(extra or {}, dict):
        raise SystemExit(f"{PREFIX}: extra must be a dict of mod_vision training arguments, got extra={extra!r}")


def check_study(arms: list[dict], capacities, latency_imgsz: list[int], data, reference, baseline, targets) -> None:
    """Refuse, in one line, a capacity study's settings that cannot run, and study settings without `capacities`."""
    names = [a["name"] for a in arms]
    if capacities is None:
        given = [k for k, v in (("data={split: YAML}", isinstance(data, dict)), ("baseline", baseline),
                                ("targets", targets)) if v]  # fmt: skip
        if given:
            raise SystemExit(f"{PREFIX}: {', '.join(given)} belong to a capacity study: give capacities=[...]")
    elif not capacities or not all(0 < c <= 1 for c in capacities):
        raise SystemExit(f"{PREFIX}: capacities must be a list of capacities in (0, 1], got capacities={capacities}")
    elif len(latency_imgsz) > 1:
        raise SystemExit(f"{PREFIX}: a capacity study times each arm at each capacity at one size; give "
                         f"latency_imgsz=[SIZE] (or [] for no timing), got {latency_imgsz}")  # fmt: skip
    if isinstance(data, dict) and not data:
        raise SystemExit(f"{PREFIX}: data={{}} names no split")
    for key, arm in (("reference", reference), ("baseline", baseline)):
        if arm is not None and arm not in names:
            raise SystemExit(f"{PREFIX}: {key}={arm!r} is not one of the arms {names}")
    shapes = ({"arm", "capacity", "within"}, {"arm", "loses_less_than", "from", "to"})
    for t in targets:
        if not isinstance(t, dict) or set(t) not in shapes:
            raise SystemExit(f"{PREFIX}: a target is {{arm, capacity, within}} or {{arm, loses_less_than, from, to}}, "
                             f"got {t!r}")  # fmt: skip
        if {t["arm"], t.get("loses_less_than", t["arm"])} - set(names):
            raise SystemExit(f"{PREFIX}: target {t!r} names an arm that is not one of {names}")
        if "within" in t and reference is None:
            raise SystemExit(f"{PREFIX}: target {t!r} is judged against the reference arm: give reference=ARM")


def data_sets(data) -> dict:
    """{split: data YAML}: {None: data} for one data set ('sample': the sample data, generated on first use), or the
    named data sets of data={split: YAML}."""
    if isinstance(data, dict):
        return {str(k): str(v) for k, v in data.items()}
    if data == "sample":
        from .data import sample_data_yaml

        data = sample_data_yaml()
    return {None: str(data)}


def run_arm(arm: dict, seed: int, split: str | None, data: str, run: Path, args, backgrounds: dict) -> dict | None:
    """Train, score and record one (split, arm, seed), or reuse its record when made with the same settings; None
    where there is no record and `args.train` is off. A capacity study scores it at each of `args.capacities`."""
    tag = tag_of(split, arm["name"], seed)
    out, settings = run / "results" / f"{tag}.json", settings_of(arm, data, args)
    if out.exists():
        done = json.loads(out.read_text())
        if done["settings"] != settings:
            raise SystemExit(f"{out} was made with other settings {done['settings']}, not {settings}; use another name")
        where = f"{split}/" if split else ""
        print(f"[compare] {where}{label(arm['name'])} seed {seed}: done, reusing {out}", flush=True)
        return done
    if not args.train:
        return None
    # fp32 on every device (Ultralytics turns AMP on for a GPU), so that arms trained on different machines compare
    train = dict(data=data, epochs=args.epochs, imgsz=args.imgsz, batch=args.batch, seed=seed, workers=args.workers,
                 plots=False, device=args.device, amp=False)  # fmt: skip
    mod_args = {} if is_stock(arm["model"]) else args.extra
    best = train_arm(arm["model"], run / "train" / tag, **{**train, **mod_args, **arm["train"]})
    val = dict(project=str((run / "val").resolve()), exist_ok=True, device=args.device, workers=args.workers)
    record = {"arm": arm["name"], "seed": seed, "split": split, "model": arm["model"], "train_args": arm["train"],
              "settings": settings, "weights": str(best)}  # fmt: skip
    if args.capacities is None:
        record.update(evaluate(best, data, args.imgsz, args.batch, backgrounds, name=tag, **val))
    else:
        record["own_capacity"], record["eval"] = sweep(best, data, args.imgsz, args.batch, args.capacities, tag,
                                                       backgrounds, **val)  # fmt: skip
    out.write_text(json.dumps(record, indent=1))
    return record


def settings_of(arm: dict, data: str, args) -> dict:
    """What a finished result must match to be reused: the shared settings, an arm's own model and training arguments
    where it has them (a bare model YAML records none, as results from before arms had them), a study's capacities."""
    settings = {**{k: getattr(args, k) for k in SHARED}, "data": data}
    if arm["train"] or arm["name"] != arm["model"]:
        settings.update(model=arm["model"], train=arm["train"])
    if args.capacities is not None:
        settings["capacities"] = args.capacities
    return json.loads(json.dumps(settings))  # as a result's json holds them: tuples become lists


def tag_of(split: str | None, name: str, seed: int) -> str:
    """The name of one (split, arm, seed) in results/, train/ and val/: [<split>__]<arm>__s<seed>."""
    return "__".join([*([split] if split else []), label(name), f"s{seed}"])


def weights_of(r: dict, run: Path) -> str:
    """A result's trained weights (results saved before "weights" was recorded: its run folder's best.pt)."""
    return r.get("weights") or str(run / "train" / tag_of(r.get("split"), r["arm"], r["seed"]) / "weights" / "best.pt")


def first_seeds(results: list[dict]) -> dict:
    """Each (split, arm)'s first result, in the order the arms were given."""
    first = {}
    for r in results:
        first.setdefault((r.get("split"), r["arm"]), r)
    return first


def report_arms(results: list[dict], arms: list[dict], run: Path, args, command: str) -> Path:
    """Time the arms (random weights, or each one's first trained seed) at each latency size, and write the report and
    the CSV named by the configuration."""
    weights = {arm: weights_of(r, run) for (_, arm), r in first_seeds(results).items()}
    timed_arms = [a for a in arms if not args.trained_latency or a["name"] in weights]
    lat = {size: latency(timed_arms, size, args.threads, args.runs, weights if args.trained_latency else None,
                         args.warmup) for size in args.latency_imgsz}  # fmt: skip
    path = report(results, lat, run, args, command)
    write_results_csv(results, lat, run / csv_name(args.data, args.epochs, args.imgsz))
    return path


def routing_quality_section(results: list[dict], run: Path, args) -> str:
    """The routing quality table of each routed arm's first seed, for the end of the report."""
    text = []
    for (split, arm), r in first_seeds(results).items():
        try:
            table = routing_quality_text(*routing_quality_rows(weights_of(r, run), r["settings"]["data"], args.imgsz,
                                                               args.batch))  # fmt: skip
        except ValueError:  # a dense arm: no routing to measure
            continue
        text += ["", f"## Routing quality: {split + ' ' if split else ''}{label(arm)} (first seed)", "", table]
    return "\n".join(text) + ("\n" if text else "")


def cli_args(args: dict) -> dict:
    """`mod-vision compare` key=value arguments: mod_vision's training arguments (capacity=, router_aux=, ...) go to
    the mod_vision arms' `extra`; the rest are `compare`'s own."""
    from .cfg import EXTRA_ARGS

    extra = {k: args.pop(k) for k in list(args) if k in EXTRA_ARGS}
    return {**args, "extra": {**args.get("extra", {}), **extra}} if extra else args
