"""Print the model table (docs/compute.md): parameters and GFLOPs at 640x640 for every shipped YAML and scale.

GFLOPs are counted by torch.utils.flop_counter on a real 640x640 forward (2 FLOPs per multiply-add, Ultralytics'
convention), so attention and routed blocks are counted at the token counts that actually run. Ultralytics' own
`model.info()` profiles a small input and scales it linearly, which undercounts a ViT's quadratic attention.

Usage: python tools/model_table.py [--imgsz 640] [--yamls modvit-det.yaml ...] [--scales n s m]
"""

from __future__ import annotations

import argparse

import torch

import mod_vision  # noqa: F401  (registers the layers)
from mod_vision.flops import gflops
from mod_vision.nn.routing import set_static
from mod_vision.nn.tasks import MODEL_DIR, MoDDetectionModel, MoDSegmentationModel, load_model_yaml
from mod_vision.report import markdown_table


def row(name: str, scale: str, imgsz: int) -> dict:
    d = load_model_yaml(name)
    d["scale"] = scale  # None for a YAML without scales (the timm-shaped ones)
    cls = MoDSegmentationModel if "-seg" in name else MoDDetectionModel
    model = cls(d, verbose=False).eval()
    caps = model.capacities()
    if caps:  # the YAML's capacities as static top-k: a per-image budget has no fixed cost
        set_static(model, caps)
    return {
        "model": name.replace(".yaml", f"-{scale}" if scale else ""),
        "params (M)": sum(p.numel() for p in model.parameters()) / 1e6,
        "capacity": ", ".join(sorted({f"{c:g}" for c in caps})) or "dense",
        f"GFLOPs@{imgsz}": gflops(model, imgsz),
    }


def main(argv: list[str] | None = None) -> str:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--imgsz", type=int, default=640)
    ap.add_argument("--yamls", nargs="+", default=sorted(p.name for p in MODEL_DIR.glob("*.yaml")))
    ap.add_argument("--scales", nargs="+", default=["n", "s", "m"])
    args = ap.parse_args(argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    rows = [row(y, s, args.imgsz) for y in args.yamls for s in (args.scales if load_model_yaml(y).get("scales") else [None])]
    table = markdown_table(rows, floatfmt=".2f")
    print(table)
    return table


if __name__ == "__main__":
    main()
