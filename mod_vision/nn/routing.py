"""Mixture-of-Depths token routing, in one place: the mechanism, the router that decides, and the record of a forward.

- `route_tokens` is the mechanism, a pure function: gather the chosen tokens of each image, run any block on them, add
  the (gated) update back; unchosen tokens pass on the residual path unchanged, so the feature map stays complete for
  dense heads (SViT's finding) and a token skipped here can be picked again later.
- `TokenRouter` is the policy: it owns a scorer (which tokens matter), a selection policy (how many and which: static
  top-k, dynamic threshold, or the random-ranking control) and the gate. A routed block is a block plus a router:
  `RoutedBlock` (timm's ViT block) and `ABlockPair` (two of YOLO12's attention blocks, in nn/blocks.py) are short.
  Across video frames the router also applies the reuse rule (nn/reuse.py): of the tokens it routes, only those whose
  input changed are computed.
- `RoutingRecord` is what a forward routed, opt-in (`with record_routing() as rec:`): processed indices, token grids,
  optionally scores and predictor logits. Nothing is recorded, and no mask is built, when nobody asks; nothing about a
  forward is kept on the modules, so nothing of it reaches a checkpoint.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from timm.models.vision_transformer import Block
from torch import nn

from .policies import check_policy, ranking
from .reuse import gather_rows, index_mask, reuse_delta, reuse_step, reuses_tokens

GATES = ("sigmoid", "unit", "none")


def check_capacity(capacity: float) -> float:
    """Return capacity as a float, or raise a ValueError that names the valid range."""
    if isinstance(capacity, bool) or not isinstance(capacity, (int, float)) or not 0.0 < float(capacity) <= 1.0:
        raise ValueError(f"capacity must be a float in the range (0, 1], got {capacity!r}")
    return float(capacity)


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


# ----------------------------------------------------------------------------------------------------------------------
# The mechanism


def route_tokens(
    x: torch.Tensor,
    index: torch.Tensor,
    block: Callable[[torch.Tensor], torch.Tensor],
    gate: torch.Tensor | None = None,
    valid: torch.Tensor | None = None,
    inputs: torch.Tensor | None = None,
    delta: bool = False,
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

    Whole rows of the flattened (B*N, C) tokens are gathered and scattered (ONNX Gather/ScatterND): every export runtime
    has them, and they move B*K rows rather than a B*K*C index.
    """
    b, n, c = x.shape
    rows = (index + torch.arange(b, device=x.device).unsqueeze(1) * n).flatten()
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
    result = flat.clone()
    result[rows] = new.reshape(-1, c)  # in place on a copy: OpenVINO converts index_put_, not index_put
    return result.view(b, n, c)


def topk_raster(scores: torch.Tensor, k: int | torch.Tensor) -> torch.Tensor:
    """(B, k) indices of the k best scores per image, in raster order.

    Raster order through a second top-k of the negated positions (exact below 2**24 tokens) rather than a sort: every
    export runtime has a float TopK, while LiteRT's interpreter has no Sort. sorted=True: CoreML's iOS16 opset has no
    unsorted top-k. At capacity 1 this is the identity permutation, so a routed block equals its dense block.
    """
    top = scores.topk(k, dim=1).indices
    return top.gather(1, (-top.float()).topk(k, dim=1).indices)


# ----------------------------------------------------------------------------------------------------------------------
# The record of a forward


@dataclass
class BlockRouting:
    """What one routed block did in one forward."""

    index: torch.Tensor  # (B, K) processed token indices, raster order
    valid: torch.Tensor | None  # (B, K) bool, which of them were real (dynamic mode, padded batches), or None: all
    tokens: int  # N
    grid: tuple[int, int] | None  # (h, w) token grid, when the block's caller knows it
    scores: torch.Tensor | None = None  # (B, N) router scores (with grad in training), when asked for
    predicted: torch.Tensor | None = None  # (B, N) object-predictor logits (with grad in training), when asked for
    computed: torch.Tensor | None = None  # (B, N) bool under token reuse: the routed tokens computed on this frame

    def mask(self) -> torch.Tensor:
        """(B, N) bool: the tokens this block routed (processed, or under token reuse computed or reused)."""
        return index_mask(self.index, self.valid, self.tokens)

    def processed(self) -> torch.Tensor:
        """(B,) tokens computed per image: the routed ones, or under token reuse those computed on this frame."""
        if self.computed is not None:
            return self.computed.sum(1)
        return self.index.new_full((self.index.shape[0],), self.index.shape[1]) if self.valid is None else self.valid.sum(1)


class RoutingRecord:
    """The routing of the forwards run inside `record_routing()`, one `BlockRouting` per routed block call, in order.

    Readers call `take()` between forwards when one record spans several (a validation loop).
    """

    def __init__(self, scores: bool = False, predictions: bool = False):
        self.keep_scores, self.keep_predictions = scores, predictions
        self.blocks: list[BlockRouting] = []

    def add(self, entry: BlockRouting) -> None:
        self.blocks.append(entry)

    def take(self) -> list[BlockRouting]:
        """Return the entries recorded so far and start afresh."""
        out, self.blocks = self.blocks, []
        return out

    def __len__(self) -> int:
        return len(self.blocks)

    def grids(self) -> list[tuple[int, int] | None]:
        return [e.grid for e in self.blocks]

    def masks(self) -> list[torch.Tensor]:
        """Per routed block, (B, N_block) bool: the tokens it processed."""
        return [e.mask() for e in self.blocks]

    def token_share(self) -> torch.Tensor | None:
        return token_share(self.blocks)


def join_images(forwards: list[list[BlockRouting]]) -> list[BlockRouting]:
    """The entries of one forward over a batch, from the entries of forwards that each ran some of its images in turn
    (block by block, images concatenated)."""
    def cat(parts: list[torch.Tensor | None], fill: list[torch.Tensor]) -> torch.Tensor | None:
        if all(p is None for p in parts):
            return None
        return torch.cat([torch.ones_like(f, dtype=torch.bool) if p is None else p for p, f in zip(parts, fill)])

    joined = []
    for entries in zip(*forwards):
        first = entries[0]
        joined.append(BlockRouting(
            torch.cat([e.index for e in entries]), cat([e.valid for e in entries], [e.index for e in entries]),
            first.tokens, first.grid,
            *(None if getattr(first, f) is None else torch.cat([getattr(e, f) for e in entries])
              for f in ("scores", "predicted", "computed")),
        ))  # fmt: skip
    return joined


def token_share(entries: list[BlockRouting]) -> torch.Tensor | None:
    """(B,) share of routed-block tokens processed per image in one forward: sum of k over blocks / sum of N; None when
    nothing was routed."""
    if not entries:
        return None
    done = sum(e.processed().double() for e in entries)
    return (done / sum(e.tokens for e in entries)).cpu()


_ACTIVE: ContextVar[RoutingRecord | None] = ContextVar("mod_vision_routing_record", default=None)


@contextmanager
def record_routing(model: nn.Module | None = None, scores: bool = False, predictions: bool = False) -> Iterator[RoutingRecord]:
    """Record what the routed blocks of forwards run inside the block do.

    An exported model (Ultralytics' AutoBackend over ONNX, OpenVINO, ...) cannot report its routing: its graph returns
    only the detections. Asking for a record of one raises rather than returning an empty record.
    """
    if model is not None and not isinstance(native_model(model), nn.Module):
        raise ValueError(
            "exported models do not return their routing (the graph outputs only detections); use the PyTorch "
            "checkpoint for routing records and heatmaps. The exported file's capacities are in its metadata."
        )
    record = RoutingRecord(scores=scores, predictions=predictions)
    token = _ACTIVE.set(record)
    try:
        yield record
    finally:
        _ACTIVE.reset(token)


def active_record() -> RoutingRecord | None:
    return _ACTIVE.get()


_INPUT: ContextVar[dict | None] = ContextVar("mod_vision_routing_input", default=None)


@contextmanager
def routing_input(image: torch.Tensor) -> Iterator[None]:
    """Let the routers of forwards run inside the block see the network input (B, 3, H, W), to skip constant cells."""
    token = _INPUT.set({"image": image, "cells": {}})
    try:
        yield
    finally:
        _INPUT.reset(token)


LETTERBOX_FILL = 114 / 255  # Ultralytics' letterbox (and mosaic) fill, as the network sees it


def constant_cells(image: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """(B, h*w) bool: the token cells of a (h, w) grid over `image` that are padding: all one colour (a flat patch of
    exactly one value, the padding a patch embedding adds), or mostly Ultralytics' letterbox fill (a centred letterbox
    splits its band, so a coarse cell can be half fill, half image edge). Max- and average-pooling: every export
    runtime has them."""
    return padding_levels(image, grid) > 0


def padding_levels(image: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """(B, h*w) float: 0 for a real cell, 1 for a cell of one colour, 2 for a cell that is mostly letterbox fill, so
    that when k exceeds the real cells, flat patches run before letterbox padding (see `constant_cells`)."""
    return levels_from_pixels(pixel_extremes(image), grid)


def token_stride(input_shape: tuple[int, int], grid: tuple[int, int]) -> int:
    """Input pixels per token side of a token grid over an input: a power of two (Ultralytics' strides), so grids that
    a patch embedding or strided convolutions ceil-rounded map back to their stride."""
    return 2 ** round(math.log2(max(input_shape[0] / grid[0], input_shape[1] / grid[1])))


BASE_CELL = 8  # padding statistics are gathered per 8x8 pixels once a forward; every token grid pools from them


def pixel_extremes(image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per 8x8 pixel cell: each channel's largest and smallest value (B, 3, H/8, W/8), and the share of its pixels that
    are letterbox fill (B, 1, H/8, W/8); by reshaping rather than max pooling (no indices). The image is zero-padded to
    whole cells, as a patch embedding pads.

    This runs on every forward of every routed model, so it is written for speed: each reduction runs over the
    contiguous last axis first (three times faster than reducing both cell axes at once on CPU), and the fill test
    works in place on its own difference."""
    b, c, h, w = image.shape
    ph, pw = -h % BASE_CELL, -w % BASE_CELL
    if ph or pw:
        image = nn.functional.pad(image, (0, pw, 0, ph))
    gh, gw = (h + ph) // BASE_CELL, (w + pw) // BASE_CELL
    shape = (-1, gh, BASE_CELL, gw, BASE_CELL)  # rank 5 (batch and channels merged): CoreML allows no more
    cells = image.reshape(shape)
    fill = ((image - LETTERBOX_FILL).abs_().amax(1, keepdim=True) < 0.5 / 255).to(image.dtype).reshape(shape)
    return (cells.amax(4).amax(2).reshape(b, c, gh, gw), cells.amin(4).amin(2).reshape(b, c, gh, gw),
            fill.mean(4).mean(2).reshape(b, 1, gh, gw))  # fmt: skip


def levels_from_pixels(pixels: tuple[torch.Tensor, torch.Tensor, torch.Tensor], grid: tuple[int, int]) -> torch.Tensor:
    hi, lo, fill = pixels
    stride = token_stride((hi.shape[-2] * BASE_CELL, hi.shape[-1] * BASE_CELL), grid)
    k = max(1, stride // BASE_CELL)
    if k > 1:
        hi = nn.functional.max_pool2d(hi, k, k, ceil_mode=True)
        lo = -nn.functional.max_pool2d(-lo, k, k, ceil_mode=True)
        fill = nn.functional.avg_pool2d(fill, k, k, ceil_mode=True)
    mostly_fill = (fill[:, 0] > 0.5).to(hi.dtype)
    flat = ((hi - lo).amax(1) < 1 / 255).to(hi.dtype)
    levels = torch.maximum(flat, mostly_fill) + mostly_fill  # arithmetic, not `|`: CoreML has no bitwise or
    levels = levels[:, : grid[0], : grid[1]]
    if levels.shape[-2:] != tuple(grid):  # a grid the image does not tile (a size the model pads further): padding
        levels = nn.functional.pad(levels, (0, grid[1] - levels.shape[-1], 0, grid[0] - levels.shape[-2]), value=2.0)
    return levels.flatten(1)


def current_padding(grid: tuple[int, int] | None) -> torch.Tensor | None:
    """`padding_levels` of the input set by `routing_input`, once per grid and forward; None without one."""
    state = _INPUT.get()
    if state is None or grid is None:
        return None
    if grid not in state["cells"]:
        if "pixels" not in state:
            state["pixels"] = pixel_extremes(state["image"])
        state["cells"][grid] = levels_from_pixels(state["pixels"], grid)
    return state["cells"][grid]


# ----------------------------------------------------------------------------------------------------------------------
# The router: scorer, selection policy, gate


class Scorer(nn.Module):
    """Scores each token with one scalar: a linear map, or a 2-layer MLP (SViT found the MLP gate as good as complex ones)."""

    def __init__(self, dim: int, hidden: int = 0):
        super().__init__()
        if isinstance(hidden, bool) or not isinstance(hidden, int) or hidden < 0:
            raise ValueError(f"router_hidden must be 0 (linear router) or a positive hidden width, got {hidden!r}")
        self.net = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, 1)) if hidden else nn.Linear(dim, 1)
        for m in self.net.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, N, C) tokens -> (B, N) scores."""
        return self.net(x).squeeze(-1)


class ObjectPredictor(Scorer):
    """Says whether a token lies on an object: a 2-layer MLP on each token joined with its image's mean token.

    The mean is DynamicViT's global feature: "background" is only defined relative to the rest of the image (a red
    patch is an object on grass and the background on a red wall).
    """

    def __init__(self, dim: int, hidden: int):
        super().__init__(2 * dim, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # the first layer on [token, mean] is split in two, so the mean's half runs once per image and no (B, N, 2C)
        # copy is made: this runs on every token of every routed layer in dynamic mode
        first, *rest = self.net
        dim = x.shape[-1]
        w = first.weight
        h = F.linear(x, w[:, :dim]) + F.linear(x.mean(1, keepdim=True), w[:, dim:], first.bias)
        for m in rest:
            h = m(h)
        return h.squeeze(-1)


class TokenRouter(nn.Module):
    """Decides which tokens of each image a routed block processes, and how much each update counts.

    Args:
        dim: token width.
        capacity: share of tokens processed in static mode, in (0, 1]; settable later (`set_capacity`).
        hidden: 0 for a linear scorer, else the hidden width of a 2-layer MLP scorer.
        gate: what multiplies a chosen token's update:
            "sigmoid": sigmoid(score), as in the MoD paper; the product is what lets the task loss train the scorer.
            "unit": exactly 1 in the forward pass with the gradient of log-sigmoid, so a pretrained dense ViT starts
                out computing what it computed before.
            "none": no gate (the scorer then gets no gradient from the task loss).
        policy: "topk" (the scorer's best k), "object" (the k tokens the object predictor, trained on ground-truth
            object cover, rates highest: Focus-DETR's foreground selection) or "random" (k random tokens: the control
            that shows what a ranking is worth). The gate always uses the scorer's scores. "none" processes no token:
            the block's routed compute removed, the control that shows what the routed blocks carry.

    Dynamic mode (`dynamic=(min, max)` capacities) lets each image choose its k: the tokens its object predictor (the
    MoD paper's auxiliary predictor, trained by `router_aux_loss` on detached tokens) scores above `threshold`, clamped
    to the bounds; the scorer's ranking decides which. Batches pad to the largest k; padded tokens are masked out of
    attention and keep their value, so an image's output does not depend on its batch-mates. It is an inference mode: a
    router in training mode runs its static capacity.
    """

    random_source: torch.Generator | None = None  # the "random" policy's generator (`set_policy`); a class default
    # too, so that routers pickled in checkpoints from before it existed load

    def __init__(
        self, dim: int, capacity: float = 0.25, hidden: int = 0, gate: str | bool = "sigmoid", policy: str = "topk"
    ):
        super().__init__()
        self.scorer = Scorer(dim, hidden)
        self.predictor = ObjectPredictor(dim, max(16, dim // 8))
        self.capacity = capacity
        self.gate = {True: "sigmoid", False: "none", None: "none"}.get(gate, gate)
        if self.gate not in GATES:
            raise ValueError(f"gate must be one of {GATES}, got {gate!r}")
        self.policy = policy
        self.random_source = None
        self.dynamic: tuple[float, float] | None = None
        self.threshold = 0.0  # logit 0 is probability 0.5, the auxiliary loss's decision boundary
        self.skip_constant = True  # the "never padding" policy: constant cells rank last (see `select`)
        self.export_dynamic_shapes = False  # set by the exporter: k computed in the graph from N

    @property
    def capacity(self) -> float:
        return self._capacity

    @capacity.setter
    def capacity(self, value: float) -> None:
        self._capacity = check_capacity(value)

    @property
    def policy(self) -> str:
        return self._policy

    @policy.setter
    def policy(self, value: str) -> None:
        self._policy = check_policy(value)

    # The capacity travels in the state_dict, so it survives what rebuilds a model from its weights: Ultralytics'
    # trainer (YAML + load), EMA copies and resume. float64 keeps it exact through .half() and the EMA's averaging.
    def get_extra_state(self) -> torch.Tensor:
        return torch.tensor(self.capacity, dtype=torch.float64)

    def set_extra_state(self, state: torch.Tensor) -> None:
        self.capacity = round(float(state), 6)

    def select(
        self, scores: torch.Tensor, predicted: torch.Tensor | None, padding: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(B, K) indices to process per image, in raster order, and their validity mask (None: all valid).

        `padding` (B, N) levels (`padding_levels`: 1 one-colour cell, 2 letterbox fill) rank after every real token,
        fill last, so they run only when k exceeds the real tokens; dynamic mode never counts them as wanted."""
        n = scores.shape[1]
        ranked = ranking(self.policy, scores, predicted, self.random_source)
        if padding is not None and self.skip_constant:
            # a margin far beyond any score, finite so every runtime's TopK takes it
            ranked = ranked - padding.to(ranked.dtype) * 1e4
            if predicted is not None:
                predicted = predicted.masked_fill(padding > 0, -1e4)
        if self.dynamic is None or self.training:  # dynamic k is an inference mode: training runs its capacity
            # While tracing, n is a tensor: k stays in the graph only for exports with dynamic shapes; a constant k lets
            # a runtime plan fixed shapes and fuse the block's matmuls.
            k = tokens_for(self.capacity, n if self.export_dynamic_shapes or not torch.is_tensor(n) else int(n))
            return topk_raster(ranked, k), None
        lo, hi = (tokens_for(c, n) for c in self.dynamic)
        want = (predicted > self.threshold).sum(1).clamp(lo, hi)  # (B,) tokens each image asks for
        k = int(want.max())
        top = ranked.topk(k, dim=1).indices  # best first, so the first want[b] are image b's own
        valid = torch.arange(k, device=scores.device) < want[:, None]
        index, order = top.sort(dim=1)
        valid = valid.gather(1, order)
        return index, None if bool(valid.all()) else valid

    def decide(self, x: torch.Tensor, grid: tuple[int, int] | None = None) -> Decision | None:
        """Which of the (B, N, C) tokens `x` to process and how much each update counts, recorded in the active
        routing record; None under the "none" policy (the routed compute removed: nothing is processed)."""
        record = active_record()
        if self.policy == "none":
            if record is not None:
                empty = torch.zeros(x.shape[0], 0, dtype=torch.long, device=x.device)
                record.add(BlockRouting(empty, None, x.shape[1], grid))
            return None
        scores = self.scorer(x)
        want_pred = self.dynamic is not None or self.policy == "object" or (record is not None and record.keep_predictions)
        predicted = self.predictor(x.detach()) if want_pred else None
        index, valid = self.select(scores, predicted, current_padding(grid))
        if record is not None:
            record.add(
                BlockRouting(
                    index.detach(),
                    valid,
                    x.shape[1],
                    grid,
                    None if not record.keep_scores else scores if self.training else scores.detach(),  # rank loss
                    None if predicted is None or not record.keep_predictions
                    else predicted if self.training else predicted.detach(),  # the aux loss trains only in training
                )
            )
        gate = None
        if self.gate != "none":
            gate = scores.gather(1, index).sigmoid()
            if self.gate == "unit":
                gate = gate / gate.detach()
        return Decision(index, valid, gate, scores)

    def forward(
        self,
        x: torch.Tensor,
        block: Callable[[torch.Tensor], torch.Tensor],
        grid: tuple[int, int] | None = None,
        inputs: torch.Tensor | None = None,
        layers: Sequence[nn.Module] = (),
    ) -> torch.Tensor:
        """Route (B, N, C) tokens through `block` (see `route_tokens`); `grid` is their (h, w) layout, for the record.

        `layers` are the block's transformer layers, for token reuse across video frames (nn/reuse.py): under an active
        `TokenReuse`, only the routed tokens whose input changed are computed."""
        decision = self.decide(x, grid)
        if decision is None:
            return x
        if reuses_tokens(self):
            if not layers or inputs is not None:
                raise ValueError("token reuse needs the routed block's transformer layers (layers=) and no inputs=")
            # the gate of every token, as in the routed path: sigmoid(score), or exactly 1 ("unit", "none")
            gate = decision.scores.sigmoid() if self.gate == "sigmoid" else None
            out, _, computed = reuse_step(x, decision.index, decision.valid, layers, gate)
            record_computed(computed)
            return out
        return route_tokens(x, decision.index, block, decision.gate, decision.valid, inputs)

    def add_to(self, base: torch.Tensor, features: torch.Tensor, update: Callable[[torch.Tensor], torch.Tensor],
               grid: tuple[int, int] | None = None, read: Callable[[torch.Tensor], torch.Tensor] | None = None
               ) -> torch.Tensor:
        """For a layer that changes width: `base` (B, N, C_out) plus the gated `update` of the routed tokens of
        `features` (B, N, C_in), which the scorer reads; the other tokens output `base`. `read`, a function of the
        (B, K) index, gives what `update` reads instead of the features' rows (their neighbourhoods, say)."""
        decision = self.decide(features, grid)
        if decision is None:
            return base
        if reuses_tokens(self):
            gate = decision.scores.sigmoid() if self.gate == "sigmoid" else None
            rows = read or (lambda index: gather_rows(features, index))
            out, _, computed = reuse_delta(base, features, decision.index, decision.valid, rows, update, gate)
            record_computed(computed)
            return out
        return route_tokens(base, decision.index, update, decision.gate, decision.valid, read or features, delta=True)


def record_computed(computed: torch.Tensor) -> None:
    """Under token reuse: which routed tokens the block call just recorded computed on this frame."""
    record = active_record()
    if record is not None:
        record.blocks[-1].computed = computed


@dataclass
class Decision:
    """What a router decided for one forward of its block."""

    index: torch.Tensor  # (B, K) tokens to process, raster order
    valid: torch.Tensor | None  # (B, K) bool, which of them are real (dynamic mode), or None: all
    gate: torch.Tensor | None  # (B, K) multiplier of their updates, or None: 1
    scores: torch.Tensor  # (B, N) the scorer's scores


class RoutedBlock(Block):
    """A timm ViT `Block` that processes only the tokens its `router` picks.

    It subclasses timm's Block, so its parameter names are timm's (plus `router.*`) and timm weights load directly.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        capacity: float = 0.125,
        router_hidden: int = 0,
        gate: str | bool = "sigmoid",
        **kwargs,
    ):
        super().__init__(dim, num_heads, **kwargs)
        self.router = TokenRouter(dim, capacity, router_hidden, gate)

    def forward(self, x: torch.Tensor, grid: tuple[int, int] | None = None) -> torch.Tensor:
        """(B, N, C) -> (B, N, C); the whole batch is gathered and scattered at once, with no loop over images."""
        return self.router(x, super().forward, grid, layers=(self,))


# ----------------------------------------------------------------------------------------------------------------------
# Model-level controls


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


# ----------------------------------------------------------------------------------------------------------------------
# Object supervision


def object_tokens(
    grid: tuple[int, int], boxes: torch.Tensor, image_index: torch.Tensor, batch_size: int
) -> torch.Tensor:
    """(B, H*W) float: 1 where a token's cell of the (H, W) grid overlaps one of its image's boxes.

    `boxes` are (M, 4) normalized xywh, as in an Ultralytics batch's "bboxes", with `image_index` (M,) their image
    ("batch_idx"). The grid is taken to tile the image exactly, as it does at training sizes (multiples of the stride).
    Boxes are clipped to the image; empty ones mark nothing.
    """
    h, w = grid
    target = torch.zeros(batch_size, h, w, device=boxes.device)
    if len(boxes):
        xy, half = boxes[:, :2], boxes[:, 2:] / 2
        lo = ((xy - half).clamp(0, 1) * boxes.new_tensor([w, h])).floor()
        hi = ((xy + half).clamp(0, 1) * boxes.new_tensor([w, h])).ceil()
        cols, rows = torch.arange(w, device=boxes.device), torch.arange(h, device=boxes.device)
        in_x = (cols >= lo[:, :1]) & (cols < hi[:, :1])  # (M, W)
        in_y = (rows >= lo[:, 1:]) & (rows < hi[:, 1:])  # (M, H)
        cells = (in_y[:, :, None] & in_x[:, None, :]).float()  # (M, H, W)
        target.index_add_(0, image_index.long(), cells)
    return (target > 0).float().flatten(1)


def router_aux_loss(record: RoutingRecord, boxes: torch.Tensor, image_index: torch.Tensor) -> torch.Tensor | None:
    """The auxiliary predictor loss: BCE teaching each routed block's predictor which tokens lie on an object.

    `record` is the training forward's (with predictions); `boxes` (M, 4) normalized xywh and `image_index` (M,) are the
    batch's ground truth (Ultralytics' "bboxes" and "batch_idx"). Object cover is what dynamic mode should follow
    (Focus-DETR's foreground supervision; the MoD paper's top-k target gives busy and empty images the same k here, see
    docs/dynamic_compute.md). Object tokens are weighted by the batch's background-to-object ratio (balanced BCE):
    unbalanced, a predictor unsure of most tokens stays below 0.5 everywhere. Only the predictor learns from it (its
    input is detached). Returns the mean over routed blocks, or None when nothing was recorded with grad.
    """
    losses, targets = [], {}  # blocks on one token grid share one target
    for e in record.blocks:
        p = e.predicted
        if p is None or not p.requires_grad:
            continue
        if e.grid is None or e.grid[0] * e.grid[1] != p.shape[1]:
            raise ValueError(f"routed block has {p.shape[1]} tokens but no token grid ({e.grid}): its caller must pass grid=")
        if e.grid not in targets:
            target = object_tokens(e.grid, boxes.to(p.device), image_index.to(p.device), p.shape[0]).to(p.dtype)
            cover = target.mean().clamp(1e-3, 1 - 1e-3)
            targets[e.grid] = target, (1 - cover) / cover
        target, pos_weight = targets[e.grid]
        losses.append(nn.functional.binary_cross_entropy_with_logits(p, target, pos_weight=pos_weight))
    return torch.stack(losses).mean() if losses else None


def dilate_tokens(target: torch.Tensor, grid: tuple[int, int], cells: int) -> torch.Tensor:
    """(B, H*W) 0/1 token target grown by `cells` grid cells in every direction (a (2c+1)^2 max filter): object borders
    and their immediate context count as object."""
    if cells <= 0:
        return target
    t = target.view(-1, 1, *grid)
    return nn.functional.max_pool2d(t, 2 * cells + 1, stride=1, padding=cells).flatten(1)


RANK_KINDS = ("pairwise", "bce")


def router_rank_loss(
    record: RoutingRecord,
    boxes: torch.Tensor,
    image_index: torch.Tensor,
    kind: str = "bce",
    dilate: int = 0,
    max_tokens: int = 1024,
) -> torch.Tensor | None:
    """The ranking loss: teaches each routed block's *scorer* (the ranking that top-k uses, and the gate) to put the
    tokens on ground-truth objects above the background tokens of the same image (Focus-DETR's foreground supervision,
    applied to the MoD router itself rather than a side predictor).

    `record` is the training forward's, with scores recorded with grad (`record_routing(scores=True)` in training mode);
    `boxes` (M, 4) normalized xywh and `image_index` (M,) as in `router_aux_loss`. The target is `object_tokens` on the
    block's grid, grown by `dilate` cells (`dilate_tokens`). The scorer is not detached: the task gradient through the
    gate still flows, this loss adds to it.

    kind:
        "pairwise": per image, the mean over (object token o, background token b) pairs of softplus(s_b - s_o), the
            logistic (RankNet) surrogate of 1 - AUC. It depends only on score differences within an image, so it leaves
            the scores' level, which sets the gate's value, to the task loss. Images with no object or no background
            token have no pair and add nothing; the loss is the mean over images that have pairs. It takes O(B N^2)
            memory: a grid of more than `max_tokens` tokens (imgsz 640 at stride 16 has 1600) is scored on a random
            subset of that many tokens, the same for every image, which keeps the pairs' mean in expectation.
        "bce": balanced BCE of the scores against the target (object tokens weighted by the batch's background-to-object
            ratio), as `router_aux_loss` does for the predictor; this also pulls the gate of background tokens to 0.
    Returns the mean over routed blocks, or None when nothing was recorded with grad (or no image had a pair).
    """
    if kind not in RANK_KINDS:
        raise ValueError(f"router rank loss kind must be one of {RANK_KINDS}, got {kind!r}")
    losses, targets = [], {}
    for e in record.blocks:
        s = e.scores
        if s is None or not s.requires_grad:
            continue
        if e.grid is None or e.grid[0] * e.grid[1] != s.shape[1]:
            raise ValueError(
                f"routed block has {s.shape[1]} tokens but no token grid ({e.grid}): its caller must pass grid="
            )
        if e.grid not in targets:
            t = object_tokens(e.grid, boxes.to(s.device), image_index.to(s.device), s.shape[0])
            targets[e.grid] = dilate_tokens(t, e.grid, dilate).to(s.dtype)
        target = targets[e.grid]
        s = s.float()
        if kind == "bce":
            cover = target.mean().clamp(1e-3, 1 - 1e-3)
            weight = (1 - cover) / cover
            losses.append(nn.functional.binary_cross_entropy_with_logits(s, target.float(), pos_weight=weight))
            continue
        if s.shape[1] > max_tokens:
            keep = torch.randperm(s.shape[1], device=s.device)[:max_tokens]
            s, target = s[:, keep], target[:, keep]
        pos, neg = target > 0.5, target <= 0.5  # (B, N)
        pairs = pos[:, :, None] & neg[:, None, :]  # (B, N_o, N_b): o object, b background, same image
        n = pairs.sum((1, 2))  # (B,)
        has = n > 0
        if not bool(has.any()):
            continue
        diff = s[:, None, :] - s[:, :, None]  # [b, o, j] = s_j - s_o
        per_image = (nn.functional.softplus(diff) * pairs).sum((1, 2)) / n.clamp(min=1)
        losses.append(per_image[has].mean())
    return torch.stack(losses).mean() if losses else None
