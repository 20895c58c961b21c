"""Model-level routing controls: a model's routers in forward order (through Ultralytics' AutoBackend too), set
together by `set_routing` (capacity, dynamic mode, selection policy), read back (`routing_mode`, `dynamic_bounds`) or
put back as they were."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import nn

from ..policies import check_policy
from .mechanism import check_budget, check_capacity
from .router import TokenRouter

STATIC, DYNAMIC = "static", "dynamic"


class _Keep:
    def __repr__(self) -> str:
        return "KEEP"


# The default of every `set_routing` argument: None cannot be it, since `dynamic=None` ends dynamic mode
KEEP = _Keep()


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


def set_routing(
    model: nn.Module, *, capacity=KEEP, dynamic=KEEP, threshold=KEEP, policy=KEEP, seed=KEEP
) -> list[float]:
    """Set the routing of every routed block of `model` (also through Ultralytics' AutoBackend): the one setter that
    every other one calls. Returns the capacities now in force, in forward order.

    The routing that runs is the one set last, whatever the order of calls:

    - `capacity`: static top-k at this capacity, in every routed block (a float) or per routed block (a list of one
      per block, or {block index: capacity}, the others left as they are). It ENDS dynamic mode, unless the same call
      also gives `dynamic`.
    - `dynamic`: (min, max) capacities START dynamic mode: each image processes the tokens its object predictors score
      above `threshold`, clamped to these bounds (a min of 0: an image that wants none routes none). None or False
      ends it: static top-k at the capacities set.
    - `threshold`: the predictor logit dynamic mode counts a token wanted above (a new router has 0.0).
    - `policy`: how tokens are ranked (nn/policies.py): "topk", "object", "random" (one generator for the model,
      seeded by `seed`, 0 if not given) or "none". It changes neither the capacities nor the mode.

    An argument not given leaves that part as it is. Every value is checked before any is set, so a bad one changes
    nothing.
    """
    blocks = routed_blocks(model)
    capacities = {} if capacity is KEEP else _capacities(model, blocks, capacity)
    bounds = None if dynamic is KEEP else _bounds(dynamic)
    if threshold is not KEEP:
        threshold = float(threshold)
    if seed is not KEEP and policy is KEEP:
        raise ValueError(f"seed={seed!r} seeds the 'random' policy's generator: give it with policy=")
    if policy is not KEEP:
        source = None
        if check_policy(policy) == "random" and blocks:
            generator = torch.Generator(device=next(native_model(model).parameters()).device)
            source = generator.manual_seed(0 if seed is KEEP else seed)
    for i, b in enumerate(blocks):
        if i in capacities:
            b.capacity = capacities[i]
        if dynamic is not KEEP or capacity is not KEEP:
            b.dynamic = bounds
        if threshold is not KEEP:
            b.threshold = threshold
        if policy is not KEEP:
            b.policy, b.random_source = policy, source
    return [b.capacity for b in blocks]


def _capacities(model: nn.Module, blocks: list[TokenRouter], capacity) -> dict[int, float]:
    """{routed block index: capacity} for `set_routing`'s `capacity` (a float, a list or a dict), checked."""
    if isinstance(capacity, (list, tuple)):
        if len(capacity) != len(blocks):
            raise ValueError(f"{len(capacity)} capacities given for {len(blocks)} routed blocks{stage_summary(model)}")
        capacity = dict(enumerate(capacity))
    if isinstance(capacity, dict):
        bad = [i for i in capacity if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < len(blocks)]
        if bad:
            raise ValueError(f"routed block indices {bad} out of range for {len(blocks)} routed blocks{stage_summary(model)}")
        return {i: check_capacity(c) for i, c in capacity.items()}
    return dict.fromkeys(range(len(blocks)), check_capacity(capacity))


def _bounds(dynamic) -> tuple[float, float] | None:
    """`set_routing`'s `dynamic`, checked: (min, max) capacities, or None for static top-k (None or False)."""
    if dynamic is None or dynamic is False:
        return None
    return check_budget(dynamic, "dynamic capacity", True, f"dynamic capacity needs [min, max], got {dynamic!r}")


def dynamic_bounds(model: nn.Module) -> tuple[float, float] | None:
    """The (min, max) capacities of dynamic mode as `set_routing` set them; None in static mode or for a dense model."""
    return next((b.dynamic for b in routed_blocks(model) if b.dynamic is not None), None)


def routing_mode(model: nn.Module) -> str | None:
    """'dynamic' or 'static' for the routed blocks of a (possibly wrapped) model; None for a dense model."""
    if not routed_blocks(model):
        return None
    return STATIC if dynamic_bounds(model) is None else DYNAMIC


def set_capacity(model: nn.Module, capacity: float | list[float] | dict[int, float]) -> list[float]:
    """`set_routing(model, capacity=capacity)`: static top-k at `capacity` for all routed blocks (a float), or per
    routed block (a list, or {block index: capacity}); this ends dynamic mode. Returns the capacities now in force."""
    return set_routing(model, capacity=capacity)


# the name FLOP counts and timings at a given capacity use; the same setter since set_capacity ends dynamic mode too
set_static = set_capacity


def set_dynamic(model: nn.Module, bounds: tuple[float, float] | None, threshold: float = 0.0) -> None:
    """`set_routing(model, dynamic=bounds, threshold=threshold)`: dynamic per-image k (the tokens the predictors score
    above `threshold`, clamped to `bounds` capacities), or back to static top-k with `bounds=None`."""
    set_routing(model, dynamic=bounds, threshold=threshold)


def set_policy(model: nn.Module, policy: str, seed: int = 0) -> None:
    """`set_routing(model, policy=policy, seed=seed)`: how every routed block ranks its tokens (nn/policies.py)."""
    set_routing(model, policy=policy, seed=seed)


def stage_summary(model: nn.Module) -> str:
    """' (layer 6: 2 routed blocks, layer 8: 2 routed blocks)': where a model's routed blocks are, for error messages."""
    native = native_model(model)
    layers = getattr(native, "model", None)
    if not isinstance(layers, nn.Sequential):
        return ""
    counts = [(getattr(m, "i", i), sum(isinstance(r, TokenRouter) for r in m.modules())) for i, m in enumerate(layers)]
    parts = [f"layer {i} ({type(m).__name__}): {c}" for (i, c), m in zip(counts, layers) if c]
    return f" ({', '.join(parts)})" if parts else ""


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
