"""Evaluation: a trained arm's COCO box (and mask) AP by mod_vision's validator, per background kind and, in a capacity
study, at each capacity; and the routing quality of a routed arm against random ranking."""

from __future__ import annotations

from pathlib import Path

from ..defaults import DEFAULT_CAPACITIES
from ..report import markdown_table


def evaluate(weights: Path, data: str, imgsz: int, batch: int, splits: dict[str, str] | None = None, **val) -> dict:
    """Box AP and AP50 (mask AP and AP50 for a segment model) and the token share on the val split, and box AP on each
    background kind's val list of `splits` (`split_yamls`)."""
    from .. import MoDYOLO
    from ..engine.coco_eval import box_ap

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


def sweep(weights: Path, data: str, imgsz: int, batch: int, capacities, name: str, splits=None, **val):
    """A trained arm scored at each capacity, keyed "1", "0.5", ... ("dense" once for a model without routed blocks),
    each with its routing-aware GFLOPs at imgsz; returns (the arm's own capacity or None, the scores)."""
    from .. import MoDYOLO
    from ..flops import capacity_table, gflops
    from ..model import routed_capacities

    net = MoDYOLO(str(weights)).model
    own = routed_capacities(net)
    table = capacity_table(net, imgsz, capacities)  # [] for a model without routed blocks
    points = [(f"{c:g}", c, g) for c, g in table] or [("dense", None, gflops(net, imgsz))]
    scores = {key: {**evaluate(weights, data, imgsz, batch, splits, capacity=c, name=f"{name}__{key}", **val),
                    "gflops": g} for key, c, g in points}  # fmt: skip
    return (own[0] if own else None), scores


def routing_quality_rows(weights: str | Path, data: str, imgsz: int = 160, batch: int = 16,
                         capacities=DEFAULT_CAPACITIES, rankings=("topk", "random"), dynamic=(),
                         threshold: float | None = None) -> tuple[list[dict], str]:
    """Where a routed model spends its tokens, against the random-ranking control: rows of one val each at the model's
    own budget, at each `dynamic` per-image budget, at each capacity with each ranking (`random`: same k, the learned
    gate kept, tokens picked at random), and with `routing="none"` (no token processed by any router); box AP, token
    share and, per background kind, object lift and recall (mean over routed blocks, worst block) and the padding
    share. `threshold`: the predictor logit per-image budgets count a token wanted above, instead of the model's own.
    Returns the rows and the box AP metric's name. A model without routed blocks is a ValueError."""
    from .. import MoDYOLO
    from ..engine.coco_eval import box_ap
    from ..nn import routed_blocks
    from ..nn.routing import set_routing

    def summarize(blocks: list[dict], key: str, worst) -> str:
        values = [b[key] for b in blocks if b[key] is not None]
        return f"{sum(values) / len(values):.2f} ({worst(values):.2f})" if values else "-"

    model = MoDYOLO(str(weights))
    if not routed_blocks(model.model):
        raise ValueError(f"{weights} has no routed blocks: nothing to measure")
    if threshold is not None:
        set_routing(model.model, threshold=threshold)
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
