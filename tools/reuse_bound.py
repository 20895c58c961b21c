"""The most that token reuse can save on a model: its forward time split by layer kind on a fixed-camera clip.

Token reuse skips work only inside the routed attention layers; the dense convolutions and the head run in full on
every frame. So 1 / (1 - attention share) bounds the forward speedup that reuse can give, whatever the threshold. The
split is a property of the architecture, so untrained YAML models are profiled (forward hooks on the top-level layers,
one pass over a generated 640x480 clip, per-frame and at reuse_threshold 0.1).

Usage:
    python tools/reuse_bound.py hybrid11p-det-n.yaml modvit-det-deep-n.yaml
"""

import os
import sys
from pathlib import Path

os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("YOLO_AUTOINSTALL", "false")
sys.path.insert(0, str(Path(__file__).parent))

import torch  # noqa: E402
import video_reuse as vr  # noqa: E402

from mod_vision import MoDYOLO  # noqa: E402


def main(models: list[str]) -> None:
    torch.set_num_threads(2)
    args = vr.parse_args(["--weights", "-", "--frames", "30", "--noise", "0", "--backgrounds", "flat"])
    video = vr.make_clips(Path(args.out) / "bound-clips", args)[0][1]
    print("| model | reuse_threshold | attention | conv | head | bound on the reuse speedup |")
    print("|---|---|---|---|---|---|")
    for cfg in models:
        yolo = MoDYOLO(cfg)
        for thr in (None, 0.1):
            s = vr.profile(yolo, video, args, thr)
            print(f"| {cfg} | {vr.PER_FRAME if thr is None else thr} | {s.get('attention', 0):.2f} | "
                  f"{s.get('conv', 0):.2f} | {s.get('head', 0):.2f} | {1 / (1 - s.get('attention', 0)):.2f}x |", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:] or ["hybrid11p-det-n.yaml"])
