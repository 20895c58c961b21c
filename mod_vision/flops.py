"""Routing-aware compute accounting: FLOPs of a real forward, so routed blocks count at the k tokens that run.

torch.utils.flop_counter counts every matmul and scaled-dot-product attention at its actual shapes (2 FLOPs per
multiply-add, Ultralytics' GFLOPs convention). Ultralytics' own `model.info()` profiles a small input and scales it
linearly with the pixel count, which undercounts attention, whose cost grows with the square of the token count.
"""

from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode, flop_registry, register_flop_formula, sdpa_flop_count

from .defaults import DEFAULT_CAPACITIES as CAPACITIES
from .nn.routing import routed_blocks, routing_kept, set_static

# torch < 2.15 has no FLOP formula for CPU flash attention, so it counted 0; the formula is flash attention's (a
# backport of torch 2.15's registration, for the torch 2.14 that the [export] extra installs)
_CPU_ATTENTION = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
if _CPU_ATTENTION not in flop_registry:

    @register_flop_formula(_CPU_ATTENTION)
    def _cpu_attention_flop(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
        return sdpa_flop_count(query_shape, key_shape, value_shape)


def gflops(model: torch.nn.Module, imgsz: int | tuple[int, int] = 640, ch: int = 3) -> float:
    """GFLOPs of one forward of a batch-1 imgsz input at the model's current capacities."""
    h, w = (imgsz, imgsz) if isinstance(imgsz, int) else imgsz
    p = next(model.parameters())
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(torch.zeros(1, ch, h, w, device=p.device, dtype=p.dtype))
    finally:
        model.train(was_training)
    return counter.get_total_flops() / 1e9


def capacity_table(model: torch.nn.Module, imgsz=640, capacities=CAPACITIES) -> list[tuple[float, float]]:
    """[(capacity, GFLOPs)] with every routed block set to each capacity; the model's capacities are restored."""
    if not routed_blocks(model):  # a dense model has one cost
        return []
    table = []
    with routing_kept(model):
        for c in capacities:
            set_static(model, c)
            table.append((c, gflops(model, imgsz)))
    return table


def compute_line(model: torch.nn.Module, imgsz: int | tuple[int, int]) -> str:
    """One log line that says what a GFLOPs figure is: routing-aware, at which input size and capacities, beside the
    same model with every token processed. Ultralytics' summary line profiles a small input and scales it, so its
    figure for the same model differs."""
    caps = [b.capacity for b in routed_blocks(model)]
    size = "x".join(map(str, (imgsz, imgsz) if isinstance(imgsz, int) else imgsz))
    if not caps:
        return f"routing-aware GFLOPs at {size}: {gflops(model, imgsz):.2f} (no routed blocks)"
    with routing_kept(model):
        set_static(model, caps)
        now = gflops(model, imgsz)
        set_static(model, 1.0)
        full = gflops(model, imgsz)
    shown = ", ".join(f"{c:g}" for c in dict.fromkeys(caps))
    return (f"routing-aware GFLOPs at {size}: {now:.2f} at capacity {shown} ({full:.2f} with every token processed); "
            f"Ultralytics' summary figure scales a small input and undercounts attention")
