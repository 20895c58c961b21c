"""Validation across capacities: one trained model, several compute budgets, a mAP-vs-capacity table and plot."""

from __future__ import annotations

import csv
from pathlib import Path
from types import SimpleNamespace

from ultralytics.cfg import get_save_dir
from ultralytics.utils import LOGGER

from ..defaults import DEFAULT_CAPACITIES
from ..flops import gflops
from ..nn.routing import check_capacity, routed_blocks, set_dynamic

COLUMNS = ("capacity", "gflops", "token_share", "coco_AP(B)", "coco_AP50(B)", "coco_AP(M)", "coco_AP50(M)", "mAP50-95(B)")


def capacity_sweep(model, capacities=DEFAULT_CAPACITIES, **val_args) -> tuple[list[dict], Path]:
    """Validate `model` (a MoDYOLO) at each capacity; write capacity_sweep.{csv,md,png} into one run folder.

    An entry is one capacity for every routed block, or a per-block schedule (a list, one value per routed block:
    SparseViT's per-layer sparsity), so schedules of equal compute can be compared. Every entry runs static top-k, even
    on a model in dynamic mode. Returns (rows, save_dir). The model's own routing (capacities and mode) is restored
    afterwards: a sweep measures, it does not set.
    """
    net = model.model
    own = [b.capacity for b in routed_blocks(net)]  # a stock Ultralytics model has no capacities()
    if not own:
        raise ValueError("capacity sweep needs a routed model; this one has no routed blocks")
    own_dynamic = routed_blocks(net)[0].dynamic
    capacities = check_sweep_capacities(capacities, len(own))
    for key in ("capacity", "dynamic_capacity"):
        if val_args.get(key) not in (None, False):
            raise ValueError(f"{key}= is not an argument of a capacity sweep, which runs static top-k at each of "
                             f"`capacities`; put the budgets to compare there")
    imgsz = int(val_args.get("imgsz") or 640)
    save_dir = get_save_dir(
        SimpleNamespace(project=val_args.pop("project", None), name=val_args.pop("name", None) or "sweep",
                        task=model.task, mode="val", exist_ok=val_args.pop("exist_ok", False))
    )
    rows = []
    try:
        for c in capacities:
            schedule = [f"{x:g}" for x in c] if isinstance(c, (list, tuple)) else None
            tag = "-".join(schedule) if schedule else f"{c:g}"
            m = model.val(**val_args, capacity=c, project=str(save_dir), name=f"capacity_{tag}", exist_ok=True)
            net.set_capacity(c)  # val() fused the model in place; the FLOP count is of the same network
            coco = {k.removeprefix("metrics/"): v for k, v in m.coco.items()}
            rows.append({"capacity": f"[{', '.join(schedule)}]" if schedule else c,
                         "gflops": gflops(net, imgsz), "token_share": m.token_share,
                         **{k: coco.get(k) for k in COLUMNS[3:7]}, "mAP50-95(B)": float(m.box.map)})
    finally:
        net.set_capacity(own)
        set_dynamic(net, own_dynamic)
    write_sweep(rows, save_dir)
    LOGGER.info(f"capacity sweep saved to {save_dir}\n{markdown(rows)}")
    return rows, save_dir


def check_sweep_capacities(capacities, n_blocks: int) -> list:
    """The sweep's entries, each a capacity in (0, 1] or a list of one per routed block; raises naming `capacities`
    before anything is validated, so a bad entry cannot fail after hours of validation at the good ones."""
    usage = "a non-empty list of capacities in (0, 1], e.g. capacities=[1.0,0.5,0.25], or of per-block lists"
    if isinstance(capacities, (int, float)) and not isinstance(capacities, bool):
        capacities = [capacities]
    if not isinstance(capacities, (list, tuple)) or not capacities:
        raise ValueError(f"capacities must be {usage}; got {capacities!r}")
    for c in capacities:
        try:
            if isinstance(c, (list, tuple)):
                if len(c) != n_blocks:
                    raise ValueError(f"{len(c)} capacities given for {n_blocks} routed blocks")
                for x in c:
                    check_capacity(x)
            else:
                check_capacity(c)
        except ValueError as e:
            raise ValueError(f"capacities={list(capacities)!r}: entry {c!r} is invalid ({e}); capacities must be {usage}") from None
    return list(capacities)


def markdown(rows: list[dict]) -> str:
    from ..report import markdown_table

    return markdown_table(rows, [c for c in COLUMNS if any(r.get(c) is not None for r in rows)], missing="-")


def write_sweep(rows: list[dict], save_dir: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(save_dir / "capacity_sweep.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS)
        w.writeheader()
        w.writerows(rows)
    (save_dir / "capacity_sweep.md").write_text(markdown(rows) + "\n")
    fig, ax = plt.subplots(figsize=(6, 4), tight_layout=True)
    schedules = any(isinstance(r["capacity"], str) for r in rows)  # per-block entries: place rows by token share
    caps = [r["token_share"] if schedules else r["capacity"] for r in rows]
    for key, label in (("coco_AP(B)", "box AP"), ("coco_AP50(B)", "box AP50"), ("coco_AP(M)", "mask AP")):
        if all(r.get(key) is not None for r in rows):
            ax.plot(caps, [r[key] for r in rows], "o-", label=label)
    for x, r in zip(caps, rows):
        text = f"{r['capacity']} " * schedules + f"{r['gflops']:.1f} GFLOPs"
        ax.annotate(text, (x, r.get("coco_AP(B)") or 0), fontsize=7)
    xlabel = "token share (mean over routed blocks)" if schedules else "capacity (share of tokens per routed block)"
    ax.set(xlabel=xlabel, ylabel="COCO AP", title="Accuracy vs capacity")
    ax.set_xscale("log", base=2)
    ax.legend()
    fig.savefig(save_dir / "capacity_sweep.png", dpi=120)
    plt.close(fig)
