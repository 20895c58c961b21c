"""Detectors side by side: train each arm with identical settings, then COCO box AP on one val set and CPU latency.

Every arm (a mod_vision YAML or an Ultralytics one: yolo11n.yaml, yolo12n.yaml, yolo26n.yaml) trains from scratch on the
same data with the same epochs, imgsz, batch, seed and augmentation, once per seed, and is evaluated by the same
evaluator (mod_vision's validator: faster-coco-eval against the data's COCO json). Latency: batch 1, `--threads`
threads, random-weight models built from the same YAMLs, timed round-robin in one run at each `--latency-imgsz`.

Resumable: each (arm, seed) writes <run>/results/<arm>__s<seed>.json when done; a rerun skips finished ones and resumes
an interrupted training from its last.pt. The report (results.md, results.csv) is rewritten at the end of every run.

Usage:
    python tools/detector_compare.py --name main-job --data sample --epochs 40 --imgsz 160 \
        --arms hybrid12-det-n.yaml yolo11n.yaml --seeds 0 1
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("YOLO_AUTOINSTALL", "false")

import torch  # noqa: E402

from mod_vision.report import markdown_table  # noqa: E402

SHARED = ("data", "epochs", "imgsz", "batch", "extra")  # settings a finished result must match to be reused
BACKGROUNDS = ("flat", "textured")  # the sample data's kinds, each with its val list (val_<kind>.txt)


def is_ultralytics(arm: str) -> bool:
    return arm.startswith("yolo")


def finished(checkpoint: Path) -> bool:
    """Ultralytics marks a checkpoint whose training ended (optimizer stripped) with epoch -1."""
    return torch.load(checkpoint, map_location="cpu", weights_only=False).get("epoch", -1) == -1


def train_arm(arm: str, seed: int, run: Path, args) -> Path:
    from ultralytics import YOLO

    from mod_vision import MoDYOLO

    folder = (run / "train" / f"{Path(arm).stem}__s{seed}").resolve()  # Ultralytics nests a relative project in runs/
    last = folder / "weights" / "last.pt"
    best = folder / "weights" / "best.pt"
    if best.exists() and (not last.exists() or finished(last)):
        return best
    if last.exists():
        (YOLO if is_ultralytics(arm) else MoDYOLO)(str(last)).train(resume=True)
        return best
    model = YOLO(arm) if is_ultralytics(arm) else MoDYOLO(arm)
    extra = {} if is_ultralytics(arm) else args.extra
    model.train(data=args.data, epochs=args.epochs, imgsz=args.imgsz, batch=args.batch, seed=seed, workers=args.workers,
                project=str(folder.parent), name=folder.name, exist_ok=True, plots=False, device="cpu", **extra)
    return best


def background_splits(data: str, run: Path) -> dict[str, str]:
    """One data YAML per background kind whose val split is that kind's list (the sample data's val_flat.txt and
    val_textured.txt), written under the run; empty for data without them. The validator scores COCO AP on the
    dataloader's images only, so each is that background's AP."""
    from ultralytics.utils import YAML

    spec = YAML.load(data)
    root = Path(spec.get("path") or Path(data).parent)
    out = {}
    for kind in BACKGROUNDS:
        if (root / f"val_{kind}.txt").is_file():
            path = run / f"data_val_{kind}.yaml"
            YAML.save(path, {**{k: v for k, v in spec.items() if k != "yaml_file"}, "path": str(root),
                             "val": f"val_{kind}.txt"})  # fmt: skip
            out[kind] = str(path)
    return out


def evaluate(weights: Path, args, splits: dict[str, str]) -> dict:
    """Box AP (and mask AP for a segment model) on the val split, and box AP on each background kind's val list of
    `splits` (`background_splits`)."""
    from mod_vision import MoDYOLO
    from mod_vision.engine.coco_eval import box_ap

    model = MoDYOLO(str(weights))

    def val(data):
        return model.val(data=data, imgsz=args.imgsz, batch=args.batch, plots=False, device="cpu", verbose=False)

    m = val(args.data)
    # COCO's AP where the data names a COCO json (a failed COCO evaluation raises), else Ultralytics' mAP, named
    (ap, metric), (ap50, _) = box_ap(m), box_ap(m, "AP50")
    out = {"box_AP": ap, "box_AP50": ap50, "box_AP_metric": metric, "token_share": m.token_share}
    if "metrics/coco_AP(M)" in m.coco:  # a segment model: its masks are scored against the same json
        out["mask_AP"] = m.coco["metrics/coco_AP(M)"]
    return {**out, **{f"box_AP_{kind}": box_ap(val(path))[0] for kind, path in splits.items()}}


def latency(arms: list[str], imgsz: int, threads: int, runs: int) -> dict[str, float]:
    """Median ms per image, batch 1, every arm timed round-robin in this one call."""
    from ultralytics import YOLO

    from mod_vision import MoDYOLO
    from mod_vision.benchmark import round_robin

    torch.set_num_threads(threads)
    nets = [((YOLO if is_ultralytics(a) else MoDYOLO)(a).model.fuse(verbose=False).eval()) for a in arms]
    x = torch.zeros(1, 3, imgsz, imgsz)
    with torch.inference_mode():
        times = round_robin([(None, lambda n=n: n(x)) for n in nets], runs=runs, warmup=3)
    return {a: 1000 * statistics.median(t) for a, t in zip(arms, times)}


def ap_metric(results: list[dict]) -> str:
    """The metric the box AP columns hold, as the evaluations recorded it (COCO's, or Ultralytics' mAP without a COCO
    json). Results saved before it was recorded say so: then a failed COCO evaluation fell back to Ultralytics' mAP."""
    return " / ".join(sorted({r.get("box_AP_metric", "box AP (metric not recorded)") for r in results})) or "-"


def report(results: list[dict], lat: dict, run: Path, args, command: str) -> Path:
    arms = list(dict.fromkeys([r["arm"] for r in results] + [a for ms in lat.values() for a in ms]))
    rows = []
    for a in arms:
        mine = [r for r in results if r["arm"] == a]
        if not mine:  # timed only (--no-train, or not trained yet)
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
    text = [f"# {args.name}", "", "```", command, "```", "",
            f"data `{args.data}`, {args.epochs} epochs, imgsz {args.imgsz}, batch {args.batch}, extra (mod arms) "
            f"{args.extra or '-'}; box AP: {ap_metric(results)} x 100 on the data's val split; latency: "
            f"batch 1, {args.threads} CPU threads, median of {args.runs} round-robin runs, random weights.", "",
            markdown_table(rows, list(dict.fromkeys(k for r in rows for k in r)))]  # fmt: skip
    path = run / "results.md"
    path.write_text("\n".join(text) + "\n")
    if results and lat:
        plot(results, lat, run / "ap_vs_latency.png")
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


def parse_args(argv=None):
    from ultralytics.utils import YAML

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--name", default="compare")
    p.add_argument("--data", default="sample", help="data YAML, or 'sample' for the main job's sample data")
    p.add_argument("--arms", nargs="+", default=["hybrid12-det-n.yaml", "yolo11n.yaml"])
    p.add_argument("--seeds", nargs="+", type=int, default=[0])
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--imgsz", type=int, default=160)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--latency-imgsz", nargs="*", type=int, default=[640])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--runs", type=int, default=20)
    p.add_argument("--extra", nargs="*", default=[], help="key=value training arguments for the mod_vision arms only")
    p.add_argument("--no-train", action="store_true", help="only measure latency")
    a = p.parse_args(argv)
    bad = [e for e in a.extra if "=" not in e]
    if bad:
        p.error(f"--extra takes key=value items, got {bad}")
    a.extra = {k: YAML.load_str(v) if hasattr(YAML, "load_str") else __import__("yaml").safe_load(v)
               for k, v in (e.split("=", 1) for e in a.extra)}
    if a.data == "sample":
        from mod_vision.data import sample_data_yaml

        a.data = str(sample_data_yaml())
    return a


def main(argv=None) -> Path:
    args = parse_args(argv)
    command = "python tools/detector_compare.py " + " ".join(sys.argv[1:] if argv is None else argv)
    run = Path("runs/detector_compare") / args.name
    (run / "results").mkdir(parents=True, exist_ok=True)
    settings = {k: getattr(args, k) for k in SHARED}
    splits = background_splits(args.data, run) if not args.no_train else {}
    results = []
    for seed in args.seeds:
        for arm in args.arms:
            out = run / "results" / f"{Path(arm).stem}__s{seed}.json"
            if out.exists():
                done = json.loads(out.read_text())
                if done["settings"] != settings:
                    raise SystemExit(f"{out} was made with other settings {done['settings']}; use another --name")
                results.append(done)
                continue
            if args.no_train:
                continue
            best = train_arm(arm, seed, run, args)
            done = {"arm": arm, "seed": seed, "settings": settings, **evaluate(best, args, splits)}
            out.write_text(json.dumps(done, indent=1))
            results.append(done)
    lat = {size: latency(args.arms, size, args.threads, args.runs) for size in args.latency_imgsz}
    path = report(results, lat, run, args, command)
    print(path.read_text())
    return path


if __name__ == "__main__":
    main()
