"""Routing heatmaps of several models on the same images, one figure: a row per (model, image), the depth overlay then
one panel per routed block, the model's detections drawn on the image.

For before/after pictures: the same model trained without and with a routing loss, or one model at two capacities.

Usage:
    python tools/heatmap_compare.py --weights before=runs/a/weights/best.pt after=runs/b/weights/best.pt \
        --images datasets/mod-scenes/images/val/000000000247.jpg --imgsz 320 --out docs/figure.png
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("YOLO_AUTOINSTALL", "false")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--weights", nargs="+", required=True, help="label=checkpoint items, one row block each")
    p.add_argument("--images", nargs="+", required=True)
    p.add_argument("--imgsz", type=int, default=640)
    p.add_argument("--capacity", type=float, default=None, help="capacity of every routed block (default: the model's)")
    p.add_argument("--conf", type=float, default=0.25)
    p.add_argument("--out", required=True)
    a = p.parse_args(argv)
    bad = [w for w in a.weights if "=" not in w]
    if bad:
        p.error(f"--weights takes label=checkpoint items, got {bad}")
    a.weights = dict(w.split("=", 1) for w in a.weights)
    missing = [str(f) for f in [*a.weights.values(), *a.images] if not Path(f).is_file()]
    if missing:
        p.error(f"not found: {missing}")
    return a


def main(argv=None) -> Path:
    from mod_vision import MoDYOLO
    from mod_vision.heatmap import panel_figure

    args = parse_args(argv)
    rows = []
    for label, weights in args.weights.items():
        model = MoDYOLO(weights)
        kw = dict(imgsz=args.imgsz, conf=args.conf, verbose=False)
        if args.capacity is not None:
            kw["capacity"] = args.capacity
        for r in model.predict(args.images, **kw):
            if r.routing is None:
                raise SystemExit(f"{weights} reports no routing (it has no routed blocks)")
            rows.append((r.plot(labels=False, conf=False, line_width=1), r.routing, f"{label}, {Path(r.path).name}"))
    path = panel_figure(rows, args.out)
    print(f"wrote {path}")
    return path


if __name__ == "__main__":
    main()
