"""The routing mechanism as pure functions: how many tokens a capacity keeps, which ones top-k keeps, and running a
block on only those.

`route_tokens` gathers the chosen tokens of each image, runs any block on them and adds the (gated) update back;
unchosen tokens pass on the residual path unchanged, so the feature map stays complete for dense heads (SViT's finding)
and a token skipped here can be picked again later. Which tokens to choose is the router's business (router.py).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch


def tracing() -> bool:
    """Whether a forward is being traced for export (TorchScript, ONNX, torch.export / dynamo): eager-only paths, which
    read memory layouts, storage or data-dependent shapes, step aside then."""
    return torch.jit.is_tracing() or torch.onnx.is_in_onnx_export() or torch.compiler.is_compiling()


def check_capacity(capacity: float, name: str = "capacity") -> float:
    """Return capacity as a float, or raise a ValueError that names the key (`name`) and the valid range."""
    if isinstance(capacity, bool) or not isinstance(capacity, (int, float)) or not 0.0 < float(capacity) <= 1.0:
        raise ValueError(f"{name} must be a float in the range (0, 1], got {capacity!r}")
    return float(capacity)


def check_floor(capacity: float) -> float:
    """A per-image budget's min as a float in [0, 1], or a ValueError that names the range. Unlike a capacity it may
    be 0: an image whose object predictors want no token then routes none, so an empty scene skips the routed layers."""
    if isinstance(capacity, bool) or not isinstance(capacity, (int, float)) or not 0.0 <= float(capacity) <= 1.0:
        raise ValueError(f"a per-image budget's min must be a float in the range [0, 1], got {capacity!r}")
    return float(capacity)


def check_budget(value, name: str, per_image: bool, wrong_shape: str) -> tuple[float, float]:
    """[min, max] capacities as floats: max in (0, 1], min in (0, 1] or, for a per-image budget, in [0, 1]
    (`check_floor`), min <= max. The one check of every budget (elastic training's range, dynamic mode's bounds,
    whether given as a key or to `set_routing`); its callers name it. `wrong_shape` is the message for a value that is
    not a pair; a bad min or max reads `name=[min, max]: <its range>`."""
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        raise ValueError(wrong_shape)
    try:
        lo, hi = (check_floor if per_image else check_capacity)(value[0]), check_capacity(value[1])
    except ValueError as e:
        raise ValueError(f"{name}={list(value)}: {e}") from None
    if lo > hi:
        raise ValueError(f"{name} min {lo} is above max {hi}")
    return lo, hi


def tokens_for(capacity: float, n: int | torch.Tensor) -> int | torch.Tensor:
    """Return k = ceil(capacity * n), at least one token, at most n.

    `n` is a tensor while torch.jit / torch.onnx trace a model for export with dynamic shapes: k is then computed in the
    graph, in integer arithmetic on capacity in millionths, so it equals eager mode's k at every input size.
    """
    if isinstance(n, torch.Tensor):
        millionths = round(capacity * 1_000_000)
        return torch.minimum((n * millionths + 999_999) // 1_000_000, n).clamp(min=1)
    # round() first so that float noise such as 0.1 * 30 = 3.0000000000000004 does not add a token
    return max(1, min(n, math.ceil(round(capacity * n, 6))))


def route_tokens(
    x: torch.Tensor,
    index: torch.Tensor,
    block: Callable[[torch.Tensor], torch.Tensor],
    gate: torch.Tensor | None = None,
    valid: torch.Tensor | None = None,
    inputs: torch.Tensor | None = None,
    delta: bool = False,
    owned: bool = False,
) -> torch.Tensor:
    """Run `block` on the tokens `index` of each image and scatter its gated update back; the rest pass unchanged.

    Args:
        x: (B, N, C) tokens, the residual stream.
        index: (B, K) token indices per image (any order; raster order reads memory forward).
        block: maps (B, K, C) tokens to their new values (a pre-norm transformer block with its own residuals).
        gate: (B, K) multiplier of each chosen token's update, or None for 1.
        valid: (B, K) bool, which chosen tokens are real (dynamic mode pads images to the batch's largest k); padded
            ones are hidden from attention as keys (the block must accept `attn_mask`) and keep their value.
        inputs: (B, N, C') what the block reads instead of x (x plus a position term, say), or a function of `index`
            that returns the (B, K, C') rows to read; the update is still added to x.
        delta: `block` returns the update itself, not the token's new value: a layer that changes width (a patch merge,
            a head) reads `inputs` of another width and adds to a base `x` of its output width.
        owned: x is the caller's own new tensor (a base or a position-mixed map it just made), not read after this
            call, so outside autograd the updates are written into it rather than into a copy, a frame-sized copy that
            every routed layer would otherwise pay on every frame, however few tokens it routes.

    Whole rows of the flattened (B*N, C) tokens are gathered and scattered (ONNX Gather/ScatterND): every export runtime
    has them, and they move B*K rows rather than a B*K*C index.
    """
    b, n, c = x.shape
    rows = flat_rows(index, n)
    flat = x.reshape(-1, c)
    selected = flat.index_select(0, rows).view(b, -1, c)
    if inputs is None:
        read = selected
    elif callable(inputs):
        read = inputs(index)
    else:
        read = inputs.reshape(b * n, -1).index_select(0, rows).view(b, index.shape[1], -1)
    out = block(read) if valid is None else block(read, attn_mask=valid[:, None, None, :])
    if gate is None and inputs is None and not delta:
        new = out  # not selected + (out - selected): exact, so capacity 1 without a gate is the plain block bit for bit
    else:
        update = out if delta else out - read
        new = selected + (update if gate is None else gate.unsqueeze(-1) * update)
    if valid is not None:
        new = torch.where(valid.unsqueeze(-1), new, selected)
    result = flat if writable(flat, x, owned) else flat.clone()
    result[rows] = new.reshape(-1, c)  # in place on a copy: OpenVINO converts index_put_, not index_put
    return result.view(b, n, c)


def flat_rows(index: torch.Tensor, n: int) -> torch.Tensor:
    """(B*K,) the rows of the flattened (B*N, C) tokens that `index` (B, K) names in each image."""
    return (index + torch.arange(index.shape[0], device=index.device).unsqueeze(1) * n).flatten()


def writable(flat: torch.Tensor, x: torch.Tensor, owned: bool) -> bool:
    """Whether `flat`, x's rows, may take the scattered updates in place: reshape copied them already (x was not a view
    of rows: a transposed map), or x is the caller's own, its rows do not overlap (an expanded base's rows share one
    parameter's memory) and no gradient is recorded. Not while torch.export traces (its fake tensors have no storage to
    compare)."""
    if torch.compiler.is_compiling():
        return False
    return flat.data_ptr() != x.data_ptr() or (owned and flat.is_contiguous() and not torch.is_grad_enabled())


def topk_raster(scores: torch.Tensor, k: int | torch.Tensor) -> torch.Tensor:
    """(B, k) indices of the k best scores per image, in raster order.

    Raster order through a second top-k of the negated positions (exact below 2**24 tokens) rather than a sort: every
    export runtime has a float TopK, while LiteRT's interpreter has no Sort. sorted=True: CoreML's iOS16 opset has no
    unsorted top-k. At capacity 1 this is the identity permutation, so a routed block equals its dense block.
    """
    top = scores.topk(k, dim=1).indices
    return top.gather(1, (-top.float()).topk(k, dim=1).indices)
