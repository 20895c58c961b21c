"""The most that token reuse can save on a model: its forward time split by layer kind on a fixed-camera clip.

Token reuse skips work only inside the routed layers (those that hold routers: the hybrids' attention, MoDNeXt's
merges and stages, whose depthwise position terms still run on every token); the dense layers and the head run in
full on every frame. So 1 / (1 - routed share) bounds the forward speedup that reuse can give, whatever the threshold. The
split is a property of the architecture, so untrained YAML models are profiled (forward hooks on the top-level layers,
one pass over a generated 640x480 clip, per-frame and at reuse_threshold 0.1).

Usage:
    python tools/reuse_bound.py hybrid11p-det-n.yaml modvit-det-deep-n.yaml
"""

import argparse
import os
from pathlib import Path

os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("YOLO_AUTOINSTALL", "false")

import torch  # noqa: E402

from mod_vision import MoDYOLO  # noqa: E402
from mod_vision import video_bench as vb  # noqa: E402
from mod_vision.data import make_sample_video  # noqa: E402
from mod_vision.report import markdown_table  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("models", nargs="*", default=["hybrid11p-det-n.yaml"], help="model YAMLs (untrained) or checkpoints")
    p.add_argument("--imgsz", type=int, default=640)
    p.add_argument("--frames", type=int, default=30)
    p.add_argument("--size", type=int, nargs=2, default=[640, 480], metavar=("W", "H"))
    p.add_argument("--threshold", type=float, default=0.1, help="the reuse_threshold of the reuse row")
    p.add_argument("--out", default="runs/video_reuse")
    return p.parse_args(argv)


def main(argv=None) -> list[dict]:
    """Rows per model and setting (per-frame, reuse): the time share of each layer kind and the bound."""
    a = parse_args(argv)
    torch.set_num_threads(2)
    video, _ = make_sample_video(Path(a.out) / "bound-clips" / "flat.mp4", frames=a.frames, size=tuple(a.size))
    rows = []
    for cfg in a.models:
        yolo = MoDYOLO(cfg)
        for thr in (None, a.threshold):
            s = vb.profile(yolo, video, a.imgsz, thr)
            routed = s.get("routed", 0.0)
            rows.append({"model": Path(cfg).stem, "reuse_threshold": vb.PER_FRAME if thr is None else thr,
                         "routed": routed, "dense": s.get("dense", 0.0), "head": s.get("head", 0.0),
                         "bound on the reuse speedup": 1 / (1 - routed)})  # fmt: skip
    print(markdown_table(rows, floatfmt=".2f"))
    return rows


if __name__ == "__main__":
    main()
