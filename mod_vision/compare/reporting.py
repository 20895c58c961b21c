"""The report of arms compared: results.md with its command line at the top, the CSV named by its configuration,
ap_vs_latency.png, and the routing quality section."""

from __future__ import annotations

import statistics
from pathlib import Path

from ..report import markdown_table, write_csv
from .evaluation import routing_quality_rows, routing_quality_text
from .settings import BACKGROUNDS, label
from .timing import latency
from .training import first_seeds, weights_of


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
