"""Detectors side by side: `mod-vision compare` (mod_vision/compare/) with this tool's flags and run folders.

Every arm trains alike once per seed into runs/detector_compare/<name>/train/<arm>__s<seed>/, is scored by COCO box AP
(per background kind on the sample data) and timed round-robin; finished arms are reused, interrupted ones resumed.
Results: results.md and results-<data>-e<epochs>-i<imgsz>.csv in runs/detector_compare/<name>/.

Usage:
    python tools/detector_compare.py --name main-job --data sample --epochs 40 --imgsz 160 \
        --arms hybrid12-det-n.yaml yolo11n.yaml --seeds 0 1
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("YOLO_AUTOINSTALL", "false")

from mod_vision.compare import compare, finished, parse_extra, report, split_yamls  # noqa: E402, F401


def background_splits(data: str, run: Path) -> dict[str, str]:
    return split_yamls(data, run, "data_val")


def parse_args(argv=None):
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
    p.add_argument("--trained-latency", action="store_true", help="time each arm's first trained seed, not random weights")
    p.add_argument("--routing-quality", action="store_true", help="append each routed arm's routing quality table")
    p.add_argument("--extra", nargs="*", default=[], help="key=value training arguments for the mod_vision arms only")
    p.add_argument("--no-train", action="store_true", help="only measure latency")
    a = p.parse_args(argv)
    a.extra = parse_extra(a.extra)
    return a


def main(argv=None) -> Path:
    a = vars(parse_args(argv))
    command = "python tools/detector_compare.py " + " ".join(sys.argv[1:] if argv is None else argv)
    return compare(project="runs/detector_compare", train=not a.pop("no_train"), command=command, **a)


if __name__ == "__main__":
    main()
