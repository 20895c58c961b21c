"""`mod-vision compare`: detectors side by side, trained alike, scored by one evaluator and timed round-robin.

Every arm (a mod_vision YAML, or an Ultralytics one such as yolo11n.yaml, which trains with `ultralytics.YOLO`) trains
from scratch on the same data with the same epochs, imgsz, batch and augmentation, once per seed; the mod_vision arms
also get `extra`, mod_vision's training arguments. Each is scored by mod_vision's validator: COCO box AP against the
data's COCO json, and on data that records background kinds (the sample data's val_flat.txt, val_textured.txt) the AP
of each kind. Latency: batch 1, `threads` CPU threads, every arm timed round-robin in one call (as `yolo benchmark`
times formats one after another, but interleaved so that machine noise hits every arm alike), on random weights or,
with `trained_latency=True`, on each arm's first trained seed.

Resumable: each (arm, seed) writes <run>/results/<arm>__s<seed>.json when done, and a rerun reuses it; an interrupted
training resumes from its last.pt. Results: <run>/results-<data>-e<epochs>-i<imgsz>.csv, one row per arm and seed (a
CSV named by its configuration, as timm's benchmark results are), and the report <run>/results.md with its command
line at the top, plus ap_vs_latency.png. `routing_quality=True` appends, for each routed arm's first seed, the table of
`routing_quality_rows` (learned against random ranking at each capacity, object lift and recall, padding share).

    mod-vision compare name=main arms=[hybrid12-det-n.yaml,yolo11n.yaml] data=sample epochs=40 imgsz=160 seeds=[0,1]
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from types import SimpleNamespace

import torch

from .defaults import DEFAULT_CAPACITIES
from .report import markdown_table, write_csv

SHARED = ("data", "epochs", "imgsz", "batch", "extra")  # settings a finished result must match to be reused
BACKGROUNDS = ("flat", "textured")  # the sample data's kinds, each with its lists (train_<kind>.txt, val_<kind>.txt)
PREFIX = "mod-vision compare"


def is_stock(arm: str) -> bool:
    """An Ultralytics model (yolo11n.yaml, yolo26n-seg.yaml): trained and loaded with `ultralytics.YOLO`."""
    return Path(arm).name.startswith("yolo")


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


def median_ms(calls: list, runs: int, warmup: int, threads: int) -> list[float]:
    """Median ms of each (prepare, run) pair of `calls`, timed round-robin (mod_vision.benchmark.round_robin)."""
    from .benchmark import round_robin

    torch.set_num_threads(threads)
    with torch.inference_mode():
        times = round_robin(calls, runs=runs, warmup=warmup)
    return [1000 * statistics.median(t) for t in times]


def latency(arms: list[str], imgsz: int, threads: int, runs: int, weights: dict | None = None) -> dict[str, float]:
    """Median ms per image of each arm, batch 1: the model its YAML builds (random weights), or its `weights`."""
    from ultralytics import YOLO

    from . import MoDYOLO

    nets = [(YOLO if is_stock(a) else MoDYOLO)(str((weights or {}).get(a, a))).model.fuse(verbose=False).eval()
            for a in arms]  # fmt: skip
    x = torch.zeros(1, 3, imgsz, imgsz)
    return dict(zip(arms, median_ms([(None, lambda n=n: n(x)) for n in nets], runs, 3, threads)))


def ap_metric(results: list[dict]) -> str:
    """The metric the box AP columns hold, as the evaluations recorded it (COCO's, or Ultralytics' mAP without a COCO
    json). Results saved before it was recorded say so: then a failed COCO evaluation fell back to Ultralytics' mAP."""
    return " / ".join(sorted({r.get("box_AP_metric", "box AP (metric not recorded)") for r in results})) or "-"


def report(results: list[dict], lat: dict, run: Path, args, command: str) -> Path:
    """results.md (and ap_vs_latency.png): one row per arm, its seeds' box AP and their mean, and its latencies.
    `args` holds name, data, epochs, imgsz, batch, extra, threads, runs (and optionally trained_latency)."""
    arms = list(dict.fromkeys([r["arm"] for r in results] + [a for ms in lat.values() for a in ms]))
    rows = []
    for a in arms:
        mine = [r for r in results if r["arm"] == a]
        if not mine:  # timed only (train=False, or not trained yet)
            rows.append({"arm": Path(a).stem, **{f"ms @ {size}": f"{ms[a]:.1f}" for size, ms in lat.items() if a in ms}})
            continue
        aps = [100 * r["box_AP"] for r in mine]
        row = {"arm": Path(a).stem, "seeds": " ".join(str(r["seed"]) for r in mine),
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
    text = [f"# {args.name}", "", "```", command, "```", "",
            f"data `{args.data}`, {args.epochs} epochs, imgsz {args.imgsz}, batch {args.batch}, extra (mod arms) "
            f"{args.extra or '-'}; box AP: {ap_metric(results)} x 100 on the data's val split; latency: "
            f"batch 1, {args.threads} CPU threads, median of {args.runs} round-robin runs, {weights}.", "",
            markdown_table(rows, list(dict.fromkeys(k for r in rows for k in r)))]  # fmt: skip
    path = Path(run) / "results.md"
    path.write_text("\n".join(text) + "\n")
    if results and lat:
        plot(results, lat, Path(run) / "ap_vs_latency.png")
    return path


def plot(results: list[dict], lat: dict, path: Path) -> None:
    """Box AP (each seed, and the mean) against latency, one panel per timed input size."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5 * len(lat), 4), layout="constrained")
    FigureCanvasAgg(fig)
    for ax, (size, ms) in zip(fig.subplots(1, len(lat), squeeze=False)[0], lat.items()):
        for arm in dict.fromkeys(r["arm"] for r in results):
            if arm not in ms:
                continue
            aps = [100 * r["box_AP"] for r in results if r["arm"] == arm]
            (mean,) = ax.plot([ms[arm]], [statistics.mean(aps)], marker="o", ls="", label=Path(arm).stem)
            ax.plot([ms[arm]] * len(aps), aps, marker="_", ls="", ms=12, color=mean.get_color())
        ax.set_xlabel(f"ms per image at {size} (batch 1)")
        ax.set_ylabel("COCO box AP (dot: mean, bars: seeds)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.savefig(path, dpi=110)


def csv_name(data: str, epochs: int, imgsz: int) -> str:
    """The results CSV of one configuration, e.g. results-sample-e30-i160.csv: runs of other settings sit beside it."""
    return f"results-{Path(data).stem}-e{epochs}-i{imgsz}.csv"


def write_results_csv(results: list[dict], lat: dict, path: Path) -> Path:
    """One row per (arm, seed): AP values in [0, 1] as evaluated, and the arm's latency at each timed size."""
    columns = ["arm", "seed", "box_AP", "box_AP50", *(f"box_AP_{k}" for k in BACKGROUNDS), "mask_AP", "mask_AP50",
               "token_share", "box_AP_metric", *(f"ms@{size}" for size in lat)]  # fmt: skip
    rows = [{**{k: r.get(k) for k in columns}, "arm": Path(r["arm"]).stem,
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


def compare(arms=("hybrid12-det-n.yaml", "yolo11n.yaml"), data: str = "sample", name: str = "compare",
            project: str = "runs/compare", seeds=(0,), epochs: int = 40, imgsz: int = 160, batch: int = 16,
            workers: int = 2, latency_imgsz=(640,), threads: int = 2, runs: int = 20, trained_latency: bool = False,
            routing_quality: bool = False, train: bool = True, extra: dict | None = None,
            command: str | None = None) -> Path:  # fmt: skip
    """Train, evaluate and time `arms` (see the module's docstring); returns the report results.md."""
    arms, seeds, latency_imgsz = as_list(arms), as_list(seeds, int), as_list(latency_imgsz, int)
    for key, value, least in (("epochs", epochs, 1), ("imgsz", imgsz, 1), ("batch", batch, 1), ("workers", workers, 0),
                              ("threads", threads, 1), ("runs", runs, 1)):  # fmt: skip
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise SystemExit(f"{PREFIX}: {key} must be an integer >= {least}, got {key}={value!r}")
    if not arms or not seeds:
        raise SystemExit(f"{PREFIX}: give at least one arm and one seed, got arms={arms} seeds={seeds}")
    if any(s <= 0 for s in latency_imgsz):
        raise SystemExit(f"{PREFIX}: latency_imgsz must be positive sizes (or [] for no timing), got {latency_imgsz}")
    if not isinstance(extra or {}, dict):
        raise SystemExit(f"{PREFIX}: extra must be a dict of mod_vision training arguments, got extra={extra!r}")
    for arm in dict.fromkeys(arms):
        check_arm(arm)
    if data == "sample":
        from .data import sample_data_yaml

        data = str(sample_data_yaml())
    args = SimpleNamespace(name=name, data=str(data), epochs=epochs, imgsz=imgsz, batch=batch, extra=extra or {},
                           threads=threads, runs=runs, trained_latency=trained_latency)  # fmt: skip
    command = command or f"{PREFIX} " + " ".join(f"{k}={v}" for k, v in vars(args).items() if k != "threads")
    run = Path(project) / name
    (run / "results").mkdir(parents=True, exist_ok=True)
    settings = {k: getattr(args, k) for k in SHARED}
    # a data name Ultralytics resolves itself (coco8.yaml) records no background kinds
    splits = split_yamls(args.data, run, "data_val") if train and Path(args.data).is_file() else {}
    results = []
    for seed in seeds:
        for arm in arms:
            out = run / "results" / f"{Path(arm).stem}__s{seed}.json"
            if out.exists():
                done = json.loads(out.read_text())
                if done["settings"] != settings:
                    raise SystemExit(f"{out} was made with other settings {done['settings']}; use another name")
                print(f"[compare] {Path(arm).stem} seed {seed}: done, reusing {out}", flush=True)
                results.append(done)
                continue
            if not train:
                continue
            best = train_arm(arm, train_arm_folder(run, arm, seed), data=args.data, epochs=epochs,
                             imgsz=imgsz, batch=batch, seed=seed, workers=workers, plots=False, device="cpu",
                             **({} if is_stock(arm) else args.extra))  # fmt: skip
            done = {"arm": arm, "seed": seed, "settings": settings, "weights": str(best),
                    **evaluate(best, args.data, imgsz, batch, splits, project=str((run / "val").resolve()),
                               name=f"{Path(arm).stem}__s{seed}", exist_ok=True)}  # fmt: skip
            out.write_text(json.dumps(done, indent=1))
            results.append(done)
    # each arm's first seed (results saved before "weights" was recorded: its run folder's)
    first = {r["arm"]: r.get("weights") or str(train_arm_folder(run, r["arm"], r["seed"]) / "weights" / "best.pt")
             for r in reversed(results)}  # fmt: skip
    timed = [a for a in dict.fromkeys(arms) if not trained_latency or a in first]
    lat = {size: latency(timed, size, threads, runs, first if trained_latency else None) for size in latency_imgsz}
    path = report(results, lat, run, args, command)
    write_results_csv(results, lat, run / csv_name(args.data, epochs, imgsz))
    if routing_quality:
        text = []
        for arm, weights in first.items():
            try:
                table = routing_quality_text(*routing_quality_rows(weights, args.data, imgsz, batch))
            except ValueError:  # a dense arm: no routing to measure
                continue
            text += ["", f"## Routing quality: {Path(arm).stem} (first seed)", "", table]
        path.write_text(path.read_text() + "\n".join(text) + ("\n" if text else ""))
    print(path.read_text())
    return path


def train_arm_folder(run: Path, arm: str, seed: int) -> Path:
    return run / "train" / f"{Path(arm).stem}__s{seed}"


def cli_args(args: dict) -> dict:
    """`mod-vision compare` key=value arguments: mod_vision's training arguments (capacity=, router_aux=, ...) go to
    the mod_vision arms' `extra`; the rest are `compare`'s own."""
    from .cfg import EXTRA_ARGS

    extra = {k: args.pop(k) for k in list(args) if k in EXTRA_ARGS}
    return {**args, "extra": {**args.get("extra", {}), **extra}} if extra else args
