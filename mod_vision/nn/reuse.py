"""Token reuse across video frames: a token whose input has not changed since it was last computed keeps its cached
update, and only changed tokens are computed (Eventful Transformers' token gating, Dutson et al. 2023).

The rule sits beside the routing rule (nn/routing/router.py) and is applied by the same routers: routing picks the
tokens a block may process (top-k, capacity), reuse picks which of those must be computed on this frame. Recomputed
tokens attend to every routed token, with the cached keys and values of the unchanged ones.

- `TokenReuse` is one stream's cache (a row per batch slot): per block call of a forward, each token's reference input
  (its input when last computed), its cached update, and each attention layer's keys and values. It is state the
  caller owns and passes in (`with reusing(cache):`), never state on the modules, so several streams never mix.
- `reuse_route` is the mechanism: a function of the tokens, the routed set and the block's attention layers, which
  reads and updates the one block cache it is given.
- A block takes part through its attention layers: each must offer `qkv(t)` and `finish(t, attended)` (see
  `attention_layer`), the two halves of a pre-norm transformer block split around its attention.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from timm.models.vision_transformer import Block
from torch import nn


def check_reuse_args(threshold, refresh, max_change) -> tuple[float, int, float]:
    """(threshold, refresh, max_change) checked, or a ValueError naming the key."""
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not threshold >= 0:
        raise ValueError(f"reuse_threshold must be a number >= 0 (relative change of a token's input), got {threshold!r}")
    if isinstance(refresh, bool) or not isinstance(refresh, int) or refresh < 1:
        raise ValueError(f"reuse_refresh must be an int >= 1 (frames between full refreshes), got {refresh!r}")
    if isinstance(max_change, bool) or not isinstance(max_change, (int, float)) or not 0 < max_change <= 1:
        raise ValueError(
            f"reuse_max_change must be a share in (0, 1] (changed 8x8 pixel cells, by mean colour, that force a full refresh), "
            f"got {max_change!r}"
        )
    return float(threshold), refresh, float(max_change)


@dataclass
class BlockCache:
    """One block call's cache, for B slots of N tokens."""

    ref: torch.Tensor  # (B, N, C) each token's input when it was last computed
    ref_norm: torch.Tensor  # (B, N) ||ref||
    update: torch.Tensor  # (B, N, C) its (gated) update then
    have: torch.Tensor  # (B, N) bool: computed at least once since the cache was reset
    # Work buffers, (B, N, C): frame-sized temporaries allocated afresh on every frame cost more (allocation and page
    # faults) than the few tokens a still scene computes. The block's output is one of them, valid until the next frame.
    scratch: torch.Tensor
    out: torch.Tensor
    kv: list[tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list)  # per layer, (B, N, heads, d) each
    delta: torch.Tensor | None = None  # (B, N, C_out) the update of a layer that changes width (`reuse_delta`)

    @classmethod
    def empty(cls, x: torch.Tensor) -> BlockCache:
        have = torch.zeros(x.shape[:2], dtype=torch.bool, device=x.device)
        return cls(torch.zeros_like(x), x.new_zeros(x.shape[:2]), torch.zeros_like(x), have, torch.empty_like(x),
                   torch.empty_like(x))  # fmt: skip

    def moved(self, x: torch.Tensor, threshold: float, index: torch.Tensor | None = None) -> torch.Tensor:
        """(B, N) bool: tokens of x that moved more than `threshold` relative to their reference (||x - ref|| / ||ref||),
        tested only at `index` (B, K) where given (the routed tokens: the others are not computed anyway, and the
        test is a full pass over the tokens per block, the largest cost of a still frame); False elsewhere."""
        if index is None:
            diff = torch.sub(x, self.ref, out=self.scratch)
            return torch.linalg.vector_norm(diff, dim=-1) > threshold * self.ref_norm
        diff = gather_rows(x, index) - gather_rows(self.ref, index)
        moved = torch.linalg.vector_norm(diff, dim=-1) > threshold * gather_rows(self.ref_norm, index)
        return index_mask(index, moved, x.shape[1])


class TokenReuse:
    """One stream's token cache: call `begin(input)` before each frame's forward, run the forward inside `reusing()`.

    Args:
        threshold: a token is recomputed when its input moved by more than this, relative to its reference input
            (||x - ref|| / ||ref||); 0 recomputes every changed token.
        refresh: every this many frames, every routed token is recomputed, so that error cannot accumulate.
        max_change: an image on which more than this share of its 8x8 pixel cells changed their mean colour (a scene
            cut, a camera move) is recomputed in full on that frame.

    The cache resets itself when the input's batch size or image size changes; `reset()` resets it by hand (a new
    source).
    """

    def __init__(self, threshold: float = 0.05, refresh: int = 30, max_change: float = 0.5):
        self.threshold, self.refresh, self.max_change = check_reuse_args(threshold, refresh, max_change)
        self.reset()

    def reset(self) -> None:
        self.blocks: list[BlockCache] = []
        self.last_cells: torch.Tensor | None = None  # (B, 3, H/8, W/8) the last frame's 8x8 cell means
        self.shape: tuple[int, ...] | None = None
        self.frame = 0  # frames since the last reset
        self.call = 0  # block calls so far in this frame's forward
        self.full: torch.Tensor | None = None  # (B,) bool: images recomputed in full on this frame

    def begin(self, image: torch.Tensor, lost: Sequence[bool] | None = None, source_shapes: Sequence | None = None) -> None:
        """Start a frame: `image` is the (B, 3, H, W) network input. A new batch size or image size resets the cache,
        and so does a change of `source_shapes` (the frames' own sizes, before letterboxing); `lost` (B,) marks slots
        whose stream was interrupted, whose rows are reset."""
        shape = (tuple(image.shape), None if source_shapes is None else tuple(tuple(s) for s in source_shapes))
        if shape != self.shape:
            self.reset()
            self.shape = shape
        elif lost is not None and any(lost):
            rows = torch.as_tensor(list(lost), dtype=torch.bool)
            for c in self.blocks:  # nothing of these rows is reused: their next frame is computed in full
                c.have[rows.to(c.have.device)] = False
        self.call = 0
        # which images are computed in full: every `refresh` frames (frame 0 after a reset: nothing is cached), and any
        # on which more than `max_change` of the 8x8 pixel cells changed (a scene cut, a camera move, a lost stream)
        cells = cell_means(image)
        changed = changed_cells(cells, self.last_cells, self.threshold)
        self.full = (changed > self.max_change) | (self.frame % self.refresh == 0)
        if lost is not None:
            self.full |= torch.as_tensor(list(lost), dtype=torch.bool, device=image.device)
        self.last_cells = cells
        self.frame += 1

    def next_block(self, x: torch.Tensor) -> BlockCache:
        """The cache of the next block call of this forward; a fresh one where the layout does not match."""
        i, self.call = self.call, self.call + 1
        if i == len(self.blocks):
            self.blocks.append(BlockCache.empty(x))
        elif self.blocks[i].ref.shape != x.shape:
            self.blocks[i] = BlockCache.empty(x)
        return self.blocks[i]


_REUSE: ContextVar[TokenReuse | None] = ContextVar("mod_vision_token_reuse", default=None)


@contextmanager
def reusing(cache: TokenReuse | None) -> Iterator[None]:
    """Let the routed blocks of forwards run inside the block reuse `cache`; None runs them as usual."""
    token = _REUSE.set(cache)
    try:
        yield
    finally:
        _REUSE.reset(token)


def active_reuse() -> TokenReuse | None:
    return _REUSE.get()


def reuses_tokens(module: nn.Module) -> bool:
    """Whether `module`'s forward runs under token reuse now: a cache is active and the module is in eval mode (a
    training forward never reuses)."""
    return _REUSE.get() is not None and not module.training


# ----------------------------------------------------------------------------------------------------------------------
# Attention layers split around their attention


class TimmLayer:
    """timm's ViT `Block` as the two halves around its attention (the same calls as `Block.forward`)."""

    def __init__(self, block: Block):
        if getattr(block.attn, "gate", None) is not None:
            raise ValueError("token reuse does not support timm's gated attention")
        self.block = block

    def qkv(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        a = self.block.attn
        b, n, _ = t.shape
        q, k, v = a.qkv(self.block.norm1(t)).reshape(b, n, 3, a.num_heads, a.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        return a.q_norm(q), a.k_norm(k), v

    def finish(self, t: torch.Tensor, attended: torch.Tensor) -> torch.Tensor:
        blk, a = self.block, self.block.attn
        b, n, _ = t.shape
        y = a.proj_drop(a.proj(a.norm(attended.transpose(1, 2).reshape(b, n, a.attn_dim))))
        t = t + blk.drop_path1(blk.ls1(y))
        return t + blk.drop_path2(blk.ls2(blk.mlp(blk.norm2(t))))


def attention_layer(block: nn.Module):
    """The reuse view of one transformer block: itself when it has `qkv` and `finish` (nn/blocks.TokenABlock) or when
    it works on each token alone (`per_token`, nn/blocks.TokenMLP: nothing to cache but its update), a `TimmLayer` for
    timm's Block."""
    if getattr(block, "per_token", False) or (hasattr(block, "qkv") and callable(getattr(block, "finish", None))):
        return block
    if isinstance(block, Block):
        return TimmLayer(block)
    raise TypeError(f"{type(block).__name__} cannot reuse tokens: it needs qkv(t) and finish(t, attended)")


# ----------------------------------------------------------------------------------------------------------------------
# The mechanism


def cell_means(image: torch.Tensor, cell: int = 8) -> torch.Tensor:
    """(B, 3, H, W) -> (B, 3, H/cell, W/cell): each pixel cell's mean colour, what the scene-cut test compares. Means
    rather than pixels: the test decides only the full refresh (a scene cut changes most cells' means; smaller changes
    are the per-token tests' job), and a frame-sized difference per frame cost more than a still frame's blocks.
    The predictor's input is channels-last in memory (its HWC pixels), where the pooling operator is slow on 3
    channels: there, at a size divisible by `cell` (a letterboxed input always is), each cell is summed as whole pixel
    rows, about 5x faster on CPU."""
    b, c, h, w = image.shape
    if h % cell or w % cell or not image.is_contiguous(memory_format=torch.channels_last):
        return F.avg_pool2d(image, cell, cell, ceil_mode=True)
    rows = image.permute(0, 2, 3, 1).reshape(b * h // cell, cell, w // cell, cell * c).sum(1)  # each cell's columns
    sums = rows.view(b, h // cell, w // cell, cell, c).sum(3)
    return sums.div_(cell * cell).permute(0, 3, 1, 2)


def changed_cells(cells: torch.Tensor, last: torch.Tensor | None, threshold: float) -> torch.Tensor:
    """(B,) share of the cells (`cell_means`) whose mean colour moved more than `threshold` relative to the last
    frame's (1 without a last frame)."""
    if last is None or last.shape != cells.shape:
        return torch.ones(cells.shape[0], device=cells.device)
    moved = (cells - last).abs_().sum(1)
    return (moved > threshold * last.abs().sum(1)).flatten(1).float().mean(1)


def gather_rows(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """(B, N, ...) -> (B, K, ...): the rows `index` (B, K) of each image (advanced indexing: whole rows are copied, of
    contiguous and strided tensors alike, twice as fast on CPU as `gather` with an expanded index)."""
    return x[torch.arange(x.shape[0], device=x.device)[:, None], index]


def scatter_rows(x: torch.Tensor, index: torch.Tensor, rows: torch.Tensor, valid: torch.Tensor | None) -> None:
    """Write `rows` (B, K, ...) at `index` (B, K) of x (B, N, ...) in place, where `valid` (B, K) (None: every row);
    others untouched."""
    image = torch.arange(x.shape[0], device=x.device)[:, None].expand_as(index)
    if valid is None:
        x[image, index] = rows
    else:
        x[image[valid], index[valid]] = rows[valid]


def index_mask(index: torch.Tensor, valid: torch.Tensor | None, n: int) -> torch.Tensor:
    """(B, N) bool: the tokens `index` (B, K) marks, those of them that are `valid` (B, K) where given."""
    m = torch.zeros(index.shape[0], n, dtype=torch.bool, device=index.device)
    return m.scatter(1, index, torch.ones_like(index, dtype=torch.bool) if valid is None else valid)


def reuse_route(
    x: torch.Tensor,
    index: torch.Tensor,
    valid: torch.Tensor | None,
    routed: torch.Tensor,
    layers: Sequence,
    cache: BlockCache,
    compute: torch.Tensor,
    gate: torch.Tensor | None = None,
) -> torch.Tensor:
    """The routed tokens `index` (B, K) of x (B, N, C) (`valid` (B, K) where padded; `routed` (B, N), the same as a
    mask) through `layers`, computing only the routed tokens in `compute` (B, N) bool and reusing the cached update of
    the others; unrouted tokens pass unchanged.

    Computed tokens attend to every routed token: their own fresh keys and values, the cached ones of the rest. The
    cache is updated in place. With every routed token computed, this is the routed block itself (`route_tokens`).
    `gate` (B, N) multiplies each token's update (the router's gate on every token; None: 1).
    """
    b, n, _ = x.shape
    compute = compute & routed
    rows, real = computed_rows(compute)
    if rows.shape[1]:
        read = gather_rows(x, rows)
        t = read
        mask = None if valid is None else valid[:, None, None, :]
        every = index.shape[1] == n and valid is None  # raster-ordered, so the index is every token in order
        attention = 0  # attention layers seen, each with its keys and values in the cache
        for layer in layers:
            if getattr(layer, "per_token", False):  # needs no other token: the computed tokens alone
                t = layer(t, None)
                continue
            j, attention = attention, attention + 1
            q, k, v = layer.qkv(t)  # (B, heads, m, d)
            if j == len(cache.kv):  # token-major, so that rows are gathered and scattered contiguously
                cache.kv.append((k.new_zeros(b, n, *k.shape[1::2]), v.new_zeros(b, n, *v.shape[1::2])))
            kc, vc = cache.kv[j]
            scatter_rows(kc, rows, k.transpose(1, 2), real)
            scatter_rows(vc, rows, v.transpose(1, 2), real)
            keys, values = ((z if every else gather_rows(z, index)).transpose(1, 2) for z in (kc, vc))
            t = layer.finish(t, F.scaled_dot_product_attention(q, keys, values, attn_mask=mask))
        update = t - read
        if gate is not None:
            update = gather_rows(gate, rows).unsqueeze(-1) * update
        scatter_rows(cache.update, rows, update, real)
        scatter_rows(cache.ref, rows, read, real)
        scatter_rows(cache.ref_norm, rows, torch.linalg.vector_norm(read, dim=-1), real)
        cache.have |= compute
    return torch.addcmul(x, cache.update, routed.unsqueeze(-1).to(x.dtype), out=cache.out)


def computed_rows(compute: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(B, M) the tokens to compute of each image (`compute` (B, N) bool) first, in raster order, M the most of any
    image, and (B, M) bool which of them are real (images with fewer are padded), None when all are (one image: a
    video's frames, one stream)."""
    b, n = compute.shape
    if b == 1:  # nothing to pad: the computed tokens in raster order, without a sort over all of them
        return compute[0].nonzero().view(1, -1), None
    counts = compute.sum(1)
    key = torch.arange(n, device=compute.device).expand(b, n) + (~compute) * n
    m = int(counts.max())
    return key.argsort(dim=1)[:, :m], torch.arange(m, device=compute.device) < counts[:, None]


def reuse_delta(
    base: torch.Tensor,
    features: torch.Tensor,
    index: torch.Tensor,
    valid: torch.Tensor | None,
    read: Callable[[torch.Tensor], torch.Tensor],
    update: Callable[[torch.Tensor], torch.Tensor],
    gate: torch.Tensor | None,
    owned: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A width-changing routed layer (a patch merge, a head: `TokenRouter.add_to`) under the active `TokenReuse`:
    (output, routed mask, computed mask). Of the routed tokens `index` (B, K), only those whose `features` (B, N, C)
    moved are computed (`update(read(rows))`, gated by `gate` (B, N)); the others keep their cached update. The
    change is tested on each token's own features, which the layer reads with its neighbours (the head's 3x3).

    The cached updates are added to the routed rows of `base` only, written into `base` itself where it is the
    caller's own (`owned`, as in `route_tokens`): a pass over the whole map per layer would cost a still frame more
    than the few tokens it computes."""
    from .routing.mechanism import flat_rows, writable
    state = active_reuse()
    b, n, _ = features.shape
    cache = state.next_block(features)
    routed = index_mask(index, valid, n)
    compute = (cache.moved(features, state.threshold, index) | ~cache.have | state.full[:, None]) & routed
    if cache.delta is None or cache.delta.shape != base.shape:
        cache.delta = torch.zeros_like(base)
    rows, real = computed_rows(compute)
    if rows.shape[1]:
        new = update(read(rows))
        if gate is not None:
            new = gather_rows(gate, rows).unsqueeze(-1) * new
        scatter_rows(cache.delta, rows, new, real)
        own = gather_rows(features, rows)
        scatter_rows(cache.ref, rows, own, real)
        scatter_rows(cache.ref_norm, rows, torch.linalg.vector_norm(own, dim=-1), real)
        cache.have |= compute
    c = base.shape[-1]
    flat = base.reshape(-1, c)
    out = flat if writable(flat, base, owned) else flat.clone()
    add = gather_rows(cache.delta, index)
    if valid is not None:
        add = add * valid.unsqueeze(-1).to(add.dtype)
    out.index_add_(0, flat_rows(index, n), add.reshape(-1, c))
    return out.view(b, n, c), routed, compute


def reuse_step(
    x: torch.Tensor, index: torch.Tensor | None, valid: torch.Tensor | None, layers: Sequence, gate: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One block call under the active `TokenReuse`: (output, routed mask, computed mask), each (B, N[, C]).

    `index` None routes every token (a dense block). Images that `TokenReuse.begin` marked for a full refresh compute
    every routed token."""
    state = active_reuse()
    b, n, _ = x.shape
    cache = state.next_block(x)
    compute = cache.moved(x, state.threshold, index) | ~cache.have | state.full[:, None]
    if index is None:
        index = torch.arange(n, device=x.device).expand(b, n)
    routed = index_mask(index, valid, n)
    out = reuse_route(x, index, valid, routed, [attention_layer(layer) for layer in layers], cache, compute, gate)
    return out, routed, compute & routed
