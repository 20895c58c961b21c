"""Model-level routing controls: a model's routers in forward order (through Ultralytics' AutoBackend too), and
capacity, dynamic mode and selection policy set on all of them at once, or put back as they were."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import nn

from ..policies import check_policy
from .mechanism import check_capacity
from .router import TokenRouter


def native_model(model: nn.Module) -> nn.Module:
    """The PyTorch model inside Ultralytics' AutoBackend (which keeps it on a backend object, not as a submodule).

    Returns the AutoBackend itself for an exported model (its backend holds no PyTorch model)."""
    backend = getattr(model, "backend", None)
    if backend is None:
        return model
    native = getattr(backend, "model", None)
    return native if isinstance(native, nn.Module) else None


def routed_blocks(model: nn.Module) -> list[TokenRouter]:
    """The routers of a model's routed blocks, in forward order (also through Ultralytics' AutoBackend); each holds its
    block's capacity, gate and selection policy."""
    native = native_model(model)
    return [] if native is None else [m for m in native.modules() if isinstance(m, TokenRouter)]


def set_capacity(model: nn.Module, capacity: float | list[float] | dict[int, float]) -> list[float]:
    """Set the capacity of all routed blocks (a float), or per routed block (a list, or {block index: capacity}).

    Returns the capacities now in force, in forward order.
    """
    blocks = routed_blocks(model)
    if isinstance(capacity, (list, tuple)):
        if len(capacity) != len(blocks):
            raise ValueError(f"{len(capacity)} capacities given for {len(blocks)} routed blocks{stage_summary(model)}")
        capacity = dict(enumerate(capacity))
    if isinstance(capacity, dict):
        bad = [i for i in capacity if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < len(blocks)]
        if bad:
            raise ValueError(f"routed block indices {bad} out of range for {len(blocks)} routed blocks{stage_summary(model)}")
        values = {i: check_capacity(c) for i, c in capacity.items()}
    else:
        values = dict.fromkeys(range(len(blocks)), check_capacity(capacity))
    for i, c in values.items():
        blocks[i].capacity = c
    return [b.capacity for b in blocks]


def stage_summary(model: nn.Module) -> str:
    """' (layer 6: 2 routed blocks, layer 8: 2 routed blocks)': where a model's routed blocks are, for error messages."""
    native = native_model(model)
    layers = getattr(native, "model", None)
    if not isinstance(layers, nn.Sequential):
        return ""
    counts = [(getattr(m, "i", i), sum(isinstance(r, TokenRouter) for r in m.modules())) for i, m in enumerate(layers)]
    parts = [f"layer {i} ({type(m).__name__}): {c}" for (i, c), m in zip(counts, layers) if c]
    return f" ({', '.join(parts)})" if parts else ""


def set_static(model: nn.Module, capacity: float | list[float] | dict[int, float]) -> list[float]:
    """Static top-k at `capacity` (as `set_capacity`), ending dynamic mode: what a FLOP count or a timing at a given
    capacity runs. Returns the capacities now in force."""
    set_dynamic(model, None)
    return set_capacity(model, capacity)


def routing_restorer(model: nn.Module) -> Callable[[], None]:
    """A function that puts back the routing each routed block of `model` has now: capacity, dynamic bounds and
    threshold, policy (with its random source)."""
    fields = ("capacity", "dynamic", "threshold", "policy", "random_source")
    saved = [(r, {f: getattr(r, f) for f in fields}) for r in routed_blocks(model)]

    def restore() -> None:
        for r, values in saved:
            for f, v in values.items():
                setattr(r, f, v)

    return restore


@contextmanager
def routing_kept(model: nn.Module) -> Iterator[None]:
    """Restore every router's routing (`routing_restorer`) on exit, whatever ran inside."""
    restore = routing_restorer(model)
    try:
        yield
    finally:
        restore()


def set_dynamic(model: nn.Module, bounds: tuple[float, float] | None, threshold: float = 0.0) -> None:
    """Switch routed blocks to dynamic per-image k (the tokens their predictors score above `threshold`, clamped to
    `bounds` capacities), or back to static top-k with `bounds=None`."""
    if bounds is not None:
        if not isinstance(bounds, (list, tuple)) or len(bounds) != 2:
            raise ValueError(f"dynamic capacity needs [min, max], got {bounds!r}")
        lo, hi = map(check_capacity, bounds)
        if lo > hi:
            raise ValueError(f"dynamic capacity min {lo} is above max {hi}")
        bounds = (lo, hi)
    for b in routed_blocks(model):
        b.dynamic, b.threshold = bounds, float(threshold)


def set_policy(model: nn.Module, policy: str, seed: int = 0) -> None:
    """Set how every routed block ranks its tokens (nn/policies.py): "topk", "object", "random" (one generator for the
    model, seeded by `seed`) or "none"."""
    source = None
    if check_policy(policy) == "random":
        source = torch.Generator(device=next(native_model(model).parameters()).device).manual_seed(seed)
    for b in routed_blocks(model):
        b.policy, b.random_source = policy, source
