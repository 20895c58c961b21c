"""Token reuse on fixed-camera video against per-frame predict: the same model and capacity, one run.

For each model and each generated clip (flat or textured background, with or without sensor noise), predicts the clip
frame by frame without reuse and with `token_reuse=True` at each `--thresholds` value, and reports per configuration:
the forward latency per frame (Ultralytics' `speed["inference"]`: the model's forward, reuse bookkeeping included;
median and p90 over all frames of all repetitions), the token share (routed-block tokens computed), COCO box AP
against the clip's ground truth, and the agreement with per-frame predict (the share of per-frame detections at
conf >= 0.25 that have a reuse detection of the same class with box IoU >= 0.7). Configurations run round-robin, one
clip pass each, `--reps` times. With `--profile`, each model's forward time is also split by layer kind (routed or
attention layers against the dense convolutions and the head) and, per frame, into matrix products (the routed tokens'
heavy work, which reuse skips) and every other operator, without reuse and at the first reuse threshold.

Usage:
    python tools/video_reuse.py --weights runs/video/hybrid11-e40/weights/best.pt --imgsz 640 --name v1
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

import numpy as np  # noqa: E402
import torch  # noqa: E402

from mod_vision.report import markdown_table, write_csv  # noqa: E402
from mod_vision.video_bench import PER_FRAME, op_split, profile, run_clip  # noqa: E402

AGREE_CONF, AGREE_IOU = 0.25, 0.7


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--weights", nargs="+", required=True, help="trained checkpoints (.pt)")
    p.add_argument("--imgsz", type=int, default=640)
    p.add_argument("--capacity", type=float, default=None, help="capacity of every routed block (default: the model's)")
    p.add_argument("--thresholds", type=float, nargs="+", default=[0.05, 0.1, 0.2, 0.3])
    p.add_argument("--refresh", type=int, default=30, help="reuse_refresh")
    p.add_argument("--frames", type=int, default=60)
    p.add_argument("--size", type=int, nargs=2, default=[640, 480], metavar=("W", "H"))
    p.add_argument("--objects", type=int, default=3)
    p.add_argument("--backgrounds", nargs="+", default=["flat", "textured"], choices=["flat", "textured"])
    p.add_argument("--noise", type=float, nargs="+", default=[0.0, 2.0], help="sensor noise sigmas, one clip each")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--reps", type=int, default=2, help="round-robin passes over the configurations")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--profile", action="store_true", help="split the forward time by layer kind")
    p.add_argument("--name", default="default")
    p.add_argument("--out", default="runs/video_reuse")
    return p.parse_args(argv)


def make_clips(folder: Path, args) -> list[tuple[str, Path, Path]]:
    from mod_vision.data import make_sample_video

    clips = []
    for i, bg in enumerate(args.backgrounds):
        for noise in args.noise:
            name = f"{bg}-noise{noise:g}"
            video, gt = make_sample_video(folder / f"{name}.mp4", frames=args.frames, size=tuple(args.size),
                                          textured=bg == "textured", objects=args.objects, noise=noise,
                                          seed=args.seed + i)  # fmt: skip
            clips.append((name, video, gt))
    return clips


def coco_predictions(frames: list[dict], gt: dict) -> list[dict]:
    ids = {im["frame"]: im["id"] for im in gt["images"]}
    out = []
    for t, f in enumerate(frames):
        for x0, y0, x1, y1, conf, cls in f["boxes"]:
            out.append({"image_id": ids[t], "category_id": int(cls) + 1, "score": float(conf),
                        "bbox": [float(x0), float(y0), float(x1 - x0), float(y1 - y0)]})  # fmt: skip
    return out


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(len(a), len(b)) IoU of xyxy boxes."""
    lo, hi = np.maximum(a[:, None, :2], b[None, :, :2]), np.minimum(a[:, None, 2:4], b[None, :, 2:4])
    inter = np.clip(hi - lo, 0, None).prod(-1)
    area = lambda z: (z[:, 2] - z[:, 0]) * (z[:, 3] - z[:, 1])  # noqa: E731
    return inter / (area(a)[:, None] + area(b)[None] - inter + 1e-9)


def agreement(reference: list[dict], other: list[dict]) -> float | None:
    """Share of the reference's detections (conf >= 0.25) matched by one of `other`'s of the same class, IoU >= 0.7;
    None when the reference has none."""
    hit = total = 0
    for r, o in zip(reference, other):
        a, b = r["boxes"][r["boxes"][:, 4] >= AGREE_CONF], o["boxes"][o["boxes"][:, 4] >= AGREE_CONF]
        total += len(a)
        if len(a) and len(b):
            iou = box_iou(a, b) * (a[:, None, 5] == b[None, :, 5])
            hit += int((iou.max(1) >= AGREE_IOU).sum())
    return hit / total if total else None


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q))


def main(argv=None) -> Path:
    args = parse_args(argv)
    from mod_vision import MoDYOLO
    from mod_vision.engine.coco_eval import coco_evaluate

    torch.set_num_threads(args.threads)
    out = Path(args.out).resolve() / args.name
    out.mkdir(parents=True, exist_ok=True)
    clips = make_clips(out / "clips", args)
    configs = [None, *args.thresholds]
    models = {Path(w).parent.parent.name if Path(w).parent.name == "weights" else Path(w).stem: MoDYOLO(w)
              for w in args.weights}  # fmt: skip
    runs: dict[tuple, list[list[dict]]] = {}
    for rep in range(args.reps):  # round-robin: every configuration once per pass
        for mname, model in models.items():
            for cname, video, _ in clips:
                for thr in configs:
                    runs.setdefault((mname, cname, thr), []).append(
                        run_clip(model, video, args.imgsz, thr, args.capacity, args.refresh))
        print(f"pass {rep + 1}/{args.reps} done", flush=True)

    rows = []
    for mname in models:
        for cname, _, gt_path in clips:
            gt = json.loads(gt_path.read_text())
            base = runs[(mname, cname, None)]
            base_ms = statistics.median(f["ms"] for rep in base for f in rep)
            base_share = statistics.mean(f["share"] for f in base[0])
            base_ap = None
            for thr in configs:
                reps = runs[(mname, cname, thr)]
                ms = [f["ms"] for rep in reps for f in rep]
                share = statistics.mean(f["share"] for f in reps[0])
                ap = 100 * coco_evaluate(gt, coco_predictions(reps[0], gt), verbose=False)["AP"]
                base_ap = ap if thr is None else base_ap
                rows.append({
                    "model": mname, "clip": cname, "reuse_threshold": PER_FRAME if thr is None else thr,
                    "ms median": statistics.median(ms), "ms p90": percentile(ms, 90),
                    "speedup": base_ms / statistics.median(ms), "token share": share,
                    "fewer tokens": base_share / share if share else float("inf"),
                    "box AP": ap, "AP - per-frame": ap - base_ap,
                    "agreement": agreement(base[0], reps[0]),
                })  # fmt: skip
    columns = list(rows[0])
    write_csv(out / "results.csv", rows, columns)
    fmt = {"ms median": ".1f", "ms p90": ".1f", "speedup": ".2f", "token share": ".3f", "fewer tokens": ".2f",
           "box AP": ".2f", "AP - per-frame": "+.2f", "agreement": ".3f"}  # fmt: skip
    profiles = []
    if args.profile:
        for mname, model in models.items():
            for thr in (None, args.thresholds[0]):
                shares = profile(model, clips[0][1], args.imgsz, thr, capacity=args.capacity, refresh=args.refresh)
                ops = op_split(model, clips[0][1], args.imgsz, thr, set_up=False, capacity=args.capacity,
                               refresh=args.refresh)
                profiles.append({"model": mname, "reuse_threshold": PER_FRAME if thr is None else thr,
                                 **{f"{k} share": v for k, v in shares.items()}, **ops})  # fmt: skip
    report = [
        "# Token reuse against per-frame predict",
        "",
        "```bash\npython tools/video_reuse.py " + " ".join(argv if argv is not None else sys.argv[1:]) + "\n```",
        "",
        f"Clips: {args.frames} frames of {args.size[0]}x{args.size[1]}, {args.objects} moving shapes, fixed camera "
        f"(`mod_vision.data.make_sample_video`, seed {args.seed}); predict at imgsz {args.imgsz}, "
        f"capacity {'the model' + chr(39) + 's' if args.capacity is None else args.capacity}, reuse_refresh "
        f"{args.refresh}; {args.threads} threads, {args.reps} round-robin passes. speedup: per-frame median forward "
        f"ms / this row's; fewer tokens: per-frame token share / this row's; agreement: per-frame detections "
        f"(conf >= {AGREE_CONF}) matched by this row's (same class, IoU >= {AGREE_IOU}).",
        "",
        markdown_table(rows, columns, floatfmt=fmt),
    ]
    if profiles:
        report += ["", "Forward time by layer kind (forward hooks on the top-level layers, first clip), and per "
                   "frame by operator (torch.profiler's self CPU time, a second pass; the profiler adds its own "
                   "overhead):", "",
                   markdown_table(profiles, floatfmt=".2f")]  # fmt: skip
    (out / "results.md").write_text("\n".join(report) + "\n")
    plot(rows, out / "reuse_threshold.png")
    print("\n".join(report))
    return out


def plot(rows: list[dict], path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 3.4), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 3)
    for key, ax, label in (("speedup", axes[0], "forward speedup vs per-frame"),
                           ("fewer tokens", axes[1], "routed tokens: per-frame / reuse"),
                           ("AP - per-frame", axes[2], "box AP - per-frame box AP")):  # fmt: skip
        for model, clip in sorted({(r["model"], r["clip"]) for r in rows}):
            pts = [(r["reuse_threshold"], r[key]) for r in rows
                   if r["model"] == model and r["clip"] == clip and r["reuse_threshold"] != PER_FRAME]  # fmt: skip
            ax.plot(*zip(*pts), marker="o", label=f"{model} / {clip}")
        ax.set_xlabel("reuse_threshold")
        ax.set_title(label, fontsize=9)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=6)
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
