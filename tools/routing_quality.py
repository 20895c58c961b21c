"""Where a routed model spends its tokens, against the random-ranking control: one val per capacity and ranking.

At the model's own budget, then for each capacity with the learned ranking and with `routing="random"` (same k, the
learned gate kept, tokens picked at random), and with `routing="none"` (no token processed by any router), report COCO box AP, the token share, and per background kind (the sample data records flat and
textured) the object lift, object recall and padding share, as the mean over routed blocks and the worst block.

The logic is `mod_vision.compare.routing_quality_rows`, which `mod-vision compare routing_quality=True` also runs.

Usage:
    python tools/routing_quality.py runs/detect/train/weights/best.pt datasets/mod-sample/sample.yaml --imgsz 160
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("YOLO_AUTOINSTALL", "false")

from mod_vision.compare import routing_quality_rows, routing_quality_text  # noqa: E402
from mod_vision.defaults import DEFAULT_CAPACITIES  # noqa: E402


def main(argv=None) -> str:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("weights")
    p.add_argument("data")
    p.add_argument("--imgsz", type=int, default=160)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--capacities", type=float, nargs="+", default=list(DEFAULT_CAPACITIES))
    p.add_argument("--rankings", nargs="+", default=["topk", "random"], choices=["topk", "object", "random"],
                   help="topk: the learned scorer; object: the object predictor; random: the control")
    p.add_argument("--dynamic", type=float, nargs=2, metavar=("MIN", "MAX"), action="append", default=[],
                   help="also a row at this per-image budget (dynamic_capacity=[MIN, MAX]); repeatable")
    p.add_argument("--threshold", type=float, default=None,
                   help="the predictor logit per-image budgets count a token wanted above (default: the model's own)")
    p.add_argument("--out", default=None, help="write the table to this Markdown file too")
    a = p.parse_args(argv)
    try:
        rows, metric = routing_quality_rows(a.weights, a.data, a.imgsz, a.batch, a.capacities, a.rankings, a.dynamic,
                                            a.threshold)
    except ValueError as e:  # a model without routed blocks
        p.error(str(e))
    command = "python tools/routing_quality.py " + " ".join(sys.argv[1:] if argv is None else argv)
    text = f"```\n{command}\n```\n\n" + routing_quality_text(rows, metric)
    print(text)
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(text + "\n")
    return text


if __name__ == "__main__":
    main()
