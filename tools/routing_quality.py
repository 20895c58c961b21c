"""Where a routed model spends its tokens, against the random-ranking control: one val per capacity and ranking.

At the model's own budget, then for each capacity with the learned ranking and with `routing="random"` (same k, the
learned gate kept, tokens picked at random), and with `routing="none"` (no token processed by any router), report COCO box AP, the token share, and per background kind (the sample data records flat and
textured) the object lift, object recall and padding share, as the mean over routed blocks and the worst block.

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

from mod_vision.defaults import DEFAULT_CAPACITIES  # noqa: E402
from mod_vision.report import markdown_table  # noqa: E402


def summarize(blocks: list[dict], key: str, worst) -> str:
    values = [b[key] for b in blocks if b[key] is not None]
    if not values:
        return "-"
    return f"{sum(values) / len(values):.2f} ({worst(values):.2f})"


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
    p.add_argument("--out", default=None, help="write the table to this Markdown file too")
    a = p.parse_args(argv)

    from mod_vision import MoDYOLO
    from mod_vision.engine.coco_eval import box_ap  # COCO's AP, or Ultralytics' mAP named so; a failed COCO eval raises
    from mod_vision.nn import routed_blocks

    model = MoDYOLO(a.weights)
    if not routed_blocks(model.model):
        p.error(f"{a.weights} has no routed blocks: nothing to measure")
    rows, metrics = [], set()
    # the model's own budget (per image for modnext-det), every capacity and ranking asked for, then the routed compute
    # removed (routing="none": every router processes no token)
    runs = [(None, None, "topk"), *((None, list(d), "topk") for d in a.dynamic),
            *((c, None, r) for c in a.capacities for r in a.rankings), (None, None, "none")]
    for capacity, dynamic, ranking in runs:
        m = model.val(data=a.data, imgsz=a.imgsz, batch=a.batch, capacity=capacity, dynamic_capacity=dynamic,
                      routing=ranking, plots=False, verbose=False, device="cpu")  # fmt: skip
        shown = ("-" if ranking == "none" else f"per image {dynamic}" if dynamic else "model's own" if capacity is None
                 else f"{capacity:g}")
        ranked = {"topk": "learned", "none": "none (routed compute removed)"}.get(ranking, ranking)
        row = {"capacity": shown, "ranking": ranked,
               "box AP": f"{100 * box_ap(m)[0]:.2f}",
               "token share": f"{m.token_share:.3f}"}  # fmt: skip
        for kind in ("flat", "textured", "all"):
            blocks = m.routing.get(kind)
            if blocks:
                row[f"lift {kind}"] = summarize(blocks, "object_lift", min)
                row[f"recall {kind}"] = summarize(blocks, "object_recall", min)
        row["padding share (worst block)"] = summarize(m.routing.get("all", []), "padding_share", max)
        rows.append(row)
        metrics.add(box_ap(m)[1])
    command = "python tools/routing_quality.py " + " ".join(sys.argv[1:] if argv is None else argv)
    text = "\n".join([f"```\n{command}\n```", "", f"box AP: {' / '.join(sorted(metrics))} x 100",
                      "lift and recall: mean over routed blocks (worst block)", "",
                      markdown_table(rows)])  # fmt: skip
    print(text)
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(text + "\n")
    return text


if __name__ == "__main__":
    main()
