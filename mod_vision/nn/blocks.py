"""YOLO12's area-attention C2f (`A2C2f`) on token sets, dense and routed, for the conv + attention hybrids.

YOLO12's `ABlock` attends within horizontal strips of the full map and adds a 7x7 depthwise position term computed on
the full value map. A routed block sees only a set of tokens, so here attention is global among the tokens it runs, and
one depthwise 7x7 conv per pair of blocks runs densely on the pair's input, as a residual conditional position
encoding (CPVT): every token, routed or not, gets position and local spatial mixing (a depthwise conv over a sparse map
would see zeros where tokens were skipped; a neck whose attention skips 3 tokens in 4 must still mix them spatially).
A2C2f's unit is a pair of ABlocks; here each pair is routed as one (one router, one gather and one scatter per pair),
which halves the routing overhead that dominates at these small widths.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import TypeVar

import torch
import torch.nn.functional as F
from torch import nn
from ultralytics.nn.modules import Conv
from ultralytics.nn.modules.block import A2C2f, ABlock

from .reuse import reuse_step, reuses_tokens
from .routing import DENSE, RouterSpec
from .routing.mechanism import tracing


class TokenABlock(ABlock):
    """YOLO12's ABlock as a transformer block over a (B, K, C) token set: global attention, then the MLP.

    The 1x1 convolutions (and their BatchNorms, fused at inference) run on the tokens as (B*K, C) rows (`pointwise`)."""

    token_products = True  # its products run through `linear` (`bf16_products`)

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 1.2):
        super().__init__(dim, num_heads, mlp_ratio)
        del self.attn.pe  # the pair's position term replaces it (see the module docstring)

    def forward(self, t: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        q, k, v = self.qkv(t)
        return self.finish(t, F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask))

    def qkv(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, K, C) tokens -> queries, keys, values, each (B, heads, K, head_dim)."""
        a = self.attn
        b, k, _ = t.shape
        return pointwise(a.qkv, t).view(b, k, a.num_heads, 3 * a.head_dim).transpose(1, 2).chunk(3, dim=-1)

    def finish(self, t: torch.Tensor, attended: torch.Tensor) -> torch.Tensor:
        """The block's output from its input tokens (B, K, C) and their attention output (B, heads, K, head_dim)."""
        b, k, _ = t.shape
        t = t + pointwise(self.attn.proj, attended.transpose(1, 2).reshape(b, k, -1))
        return t + pointwise(self.mlp[1], pointwise(self.mlp[0], t))


T = TypeVar("T")
_BF16: ContextVar[bool] = ContextVar("mod_vision_bf16_products", default=False)
# layer -> (its weight's identity, the weight and bias in bfloat16): keyed by the layer, so nothing is added to the
# weight itself (which checkpoints would save)
_BF16_WEIGHTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


@contextmanager
def bf16_products(enabled: bool = True) -> Iterator[None]:
    """Inside, the token layers' matrix products (`linear`: the routed MLPs, merges and head branches, the heavy
    per-token work) run in bfloat16 on CPU, their results back in float32, in eager inference only (not under
    autograd or tracing). On a CPU with AVX512-BF16 or AMX they run several times faster; everything else (the dense
    convolutions, the routers, the head's decoding) stays float32."""
    token = _BF16.set(bool(enabled))
    try:
        yield
    finally:
        _BF16.reset(token)


def linear(t: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, layer: nn.Module) -> torch.Tensor:
    """`F.linear` of `layer`'s (out, in) `weight`, in bfloat16 inside `bf16_products`, with the layer's bfloat16
    weight made once and again only when the weight changes."""
    if not (_BF16.get() and t.device.type == "cpu" and not torch.is_grad_enabled() and not tracing()):
        return F.linear(t, weight, bias)
    key = tensor_identity(weight), None if bias is None else tensor_identity(bias)
    w, b = derived(_BF16_WEIGHTS, layer, key, lambda: (weight.detach().to(torch.bfloat16),
                                                       None if bias is None else bias.detach().to(torch.bfloat16)))
    return F.linear(t.to(torch.bfloat16), w, b).float()


def has_token_products(model: nn.Module) -> bool:
    """Whether any layer of `model` computes with `linear` (its class says `token_products`), so that
    `bf16_products` changes anything: not a model of timm ViT blocks, whose products are timm's own."""
    return any(getattr(m, "token_products", False) for m in model.modules())


def derived(cache: weakref.WeakKeyDictionary, owner: nn.Module, key, make: Callable[[], T]) -> T:
    """`make()`, kept for `owner` in `cache` (a WeakKeyDictionary) until `key` changes: what inference derives from a
    layer's weights once rather than on every frame, off the modules so that checkpoints and deep copies never carry
    it."""
    cached = cache.get(owner)
    if cached is None or cached[0] != key:
        cached = cache[owner] = key, make()
    return cached[1]


def tensor_identity(t: torch.Tensor) -> tuple:
    """What changes when a tensor is replaced or changed in place: its memory, layout and version (an inference
    tensor, made under inference_mode as a reordered weight may be, has no version and cannot change)."""
    return t.data_ptr(), tuple(t.shape), tuple(t.stride()), None if t.is_inference() else t._version


def pointwise(conv: Conv, t: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """An Ultralytics 1x1 `Conv` applied to (B, K, C) tokens: a matmul on the tokens, then (before fusion, in training
    and unfused eval) its BatchNorm over all B*K tokens, then its activation. `weight`: the convolution's (out, C)
    weight with its columns in the order the tokens hold their channels, when that is not the convolution's own
    (`pixel_major_weight`).

    The BatchNorm runs on the (B*K, C) rows rather than on a (B, C, K, 1) view of the tokens: on the CPU, torch's
    BatchNorm2d backward returns wrong gradients when its input or its output gradient has the strides of such a view
    (its forward is right), and training then stalls."""
    y = linear(t, conv.conv.weight.flatten(1) if weight is None else weight, conv.conv.bias, conv)
    bn = getattr(conv, "bn", None)
    if bn is not None:
        if bn.training and bn.track_running_stats:
            bn.num_batches_tracked.add_(1)
        y = F.batch_norm(y.reshape(-1, y.shape[-1]), bn.running_mean, bn.running_var, bn.weight, bn.bias,
                         bn.training or not bn.track_running_stats, bn.momentum or 0.0, bn.eps).view_as(y)
    return conv.act(y)


class TokenStage(nn.Module):
    """Token layers on a (B, C, H, W) map after a dense depthwise position term; routed when `router` has a capacity.

    The depthwise k x k convolution runs on every token as a residual conditional position encoding (CPVT) and local
    mixing: cheap, and a token the router skips still gets it. The layers, the stage's heavy per-token work, run on the
    tokens the router picks, with one gather and one scatter for all of them."""

    def __init__(self, dim: int, layers: list[nn.Module], router: RouterSpec = DENSE, kernel: int = 7):
        super().__init__()
        self.pe = Conv(dim, dim, kernel, 1, kernel // 2, g=dim, act=False)
        self.blocks = nn.ModuleList(layers)
        self.router = router.make(dim)

    def run(self, t: torch.Tensor, attn_mask: torch.Tensor | None = None, **first) -> torch.Tensor:
        """The blocks in turn; `first`: keywords for the first block only (the one that reads neighbourhoods)."""
        for i, blk in enumerate(self.blocks):
            t = blk(t, attn_mask, **first) if i == 0 and first else blk(t, attn_mask)
        return t

    def position_mixed(self, x: torch.Tensor) -> torch.Tensor:
        """x plus its depthwise position term. In eager inference on a fused model (the term's BatchNorm folded into
        the convolution) it is one convolution whose kernel holds the identity at its centre: the same sum without a
        second pass over the map, which on a frame that routes little is much of what the stage costs."""
        conv = self.pe.conv
        if eager_layout(x) and not hasattr(self.pe, "bn") and isinstance(self.pe.act, nn.Identity):
            weight = conv.weight.clone()
            weight[:, 0, conv.kernel_size[0] // 2, conv.kernel_size[1] // 2] += 1
            return F.conv2d(x, weight, conv.bias, conv.stride, conv.padding, conv.dilation, conv.groups)
        return x + self.pe(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        t = self.position_mixed(x).flatten(2).transpose(1, 2)  # dense and cheap: position and local mixing
        if self.router is not None:
            out = self.router(t, self.run, (h, w), layers=self.blocks, owned=True)
        else:
            out = reuse_step(t, None, None, self.blocks, None)[0] if reuses_tokens(self) else self.run(t)
        return as_map(out, h, w)


def as_map(tokens: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """(B, H*W, C) tokens as a (B, C, H, W) map without a copy: a channels-last view, which convolutions take as it is
    and which the next routed layer flattens back to tokens without a copy."""
    return tokens.view(tokens.shape[0], h, w, tokens.shape[-1]).permute(0, 3, 1, 2)


class ABlockPair(TokenStage):
    """A2C2f's unit, two ABlocks on a (B, C, H, W) map, with a depthwise 7x7 position term; routed when `router` has a
    capacity."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 1.2, router: RouterSpec = DENSE):
        super().__init__(dim, [TokenABlock(dim, num_heads, mlp_ratio) for _ in range(2)], router)


class TokenMLP(nn.Module):
    """A pointwise MLP with a residual on (B, K, C) tokens (ConvNeXt's per-token half): expand, SiLU, project back."""

    per_token = True  # each token's output depends on that token alone (token reuse caches only its update)
    token_products = True  # its products run through `linear` (`bf16_products`)

    def __init__(self, dim: int, mlp_ratio: float = 4.0):
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.fc1 = Conv(dim, hidden, 1)
        self.fc2 = Conv(hidden, dim, 1, act=False)

    def forward(self, t: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        return t + pointwise(self.fc2, pointwise(self.fc1, t))


class NeighbourhoodMLP(TokenMLP):
    """A `TokenMLP` whose first layer reads each token's 3x3 neighbourhood, (B, K, 9C) rows (`neighbourhoods`): a full
    3x3 convolution, computed only where the token is routed. The residual is the neighbourhood's centre."""

    per_token = False

    def __init__(self, dim: int, mlp_ratio: float = 4.0):
        super().__init__(dim, mlp_ratio)
        self.fc1 = Conv(9 * dim, int(dim * mlp_ratio), 1)

    def forward(self, nbh: torch.Tensor, attn_mask: torch.Tensor | None = None,
                pixel_major: bool = False) -> torch.Tensor:
        """`pixel_major`: the neighbourhoods are in `neighbourhoods(pixel_major=True)`'s order."""
        weight = pixel_major_weight(self.fc1) if pixel_major else None
        return centre(nbh, pixel_major) + pointwise(self.fc2, pointwise(self.fc1, nbh, weight))


def centre(nbh: torch.Tensor, pixel_major: bool = False) -> torch.Tensor:
    """(B, K, C): the middle pixel of (B, K, 9C) 3x3 neighbourhoods in `neighbourhoods`' order (`pixel_major` as
    there)."""
    if pixel_major:
        c = nbh.shape[-1] // 9
        return nbh[..., 4 * c : 5 * c]
    return nbh.unflatten(-1, (-1, 9))[..., 4]


_PIXEL_MAJOR: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # layer -> (its weight's identity, reordered)


def pixel_major_weight(conv: Conv) -> torch.Tensor:
    """The (out, 9C) weight of a layer that reads 3x3 neighbourhoods (a 1x1 `Conv` on 9C channels in a convolution's
    unfolded order, channel-major), its columns reordered to pixel-major (pixel p's channel c at p * C + c), so that
    it reads `neighbourhoods(pixel_major=True)`. Kept per weight until the weight changes: inference reorders it once,
    not on every frame."""
    w = conv.conv.weight
    out = w.shape[0]
    return derived(_PIXEL_MAJOR, conv, (tensor_identity(w), w.dtype),
                   lambda: w.detach().view(out, -1, 9).transpose(1, 2).reshape(out, -1).contiguous())


class MoDNeXt(TokenStage):
    """A ConvNeXt-style stage whose MLPs are routed: a dense depthwise k x k term, then `n` pointwise MLPs on the tokens
    the router picks (`router` with a capacity in (0, 1]) or on all tokens (no capacity: the dense twin).

    Nearly all of its FLOPs are in the MLPs, so a skipped token skips nearly all of its work. `reads=3` makes the first
    MLP read each routed token's 3x3 neighbourhood (`NeighbourhoodMLP`): cross-channel spatial mixing, as a C3k2's 3x3
    convolutions give, paid only on routed tokens. YAML:
    `[-1, 2, MoDNeXt, [256, {capacity: 0.25, mlp_ratio: 4, kernel: 7, reads: 3}]]` (input and output widths are equal).
    """

    def __init__(self, c1: int, c2: int, n: int = 1, mlp_ratio: float = 4.0, kernel: int = 7,
                 router: RouterSpec = RouterSpec(), reads: int = 1):
        if c1 != c2:
            raise ValueError(f"MoDNeXt keeps its width: input {c1} and output {c2} channels differ (merge with MoDDown)")
        if reads not in (1, 3):
            raise ValueError(f"MoDNeXt reads=1 (each token) or 3 (its 3x3 neighbourhood), got {reads!r}")
        first = NeighbourhoodMLP(c2, mlp_ratio) if reads == 3 else TokenMLP(c2, mlp_ratio)
        super().__init__(c2, [first] + [TokenMLP(c2, mlp_ratio) for _ in range(n - 1)], router, kernel)
        self.reads = reads

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if getattr(self, "reads", 1) == 1:  # checkpoints from before the option have none
            return super().forward(x)
        b, c, h, w = x.shape
        mixed = self.position_mixed(x)
        t = mixed.flatten(2).transpose(1, 2)
        fast = eager_layout(mixed)  # pixel-major neighbourhoods: no transposing copy of the rows read

        def update(nbh: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
            return self.run(nbh, attn_mask, pixel_major=fast) - centre(nbh, fast)

        def read(index: torch.Tensor) -> torch.Tensor:
            return neighbourhoods(mixed, index, fast)

        if self.router is None:
            return as_map(t + update(read(torch.arange(h * w, device=x.device).expand(b, -1))), h, w)
        return as_map(self.router.add_to(t, t, update, (h, w), read, owned=True), h, w)


class MoDDown(nn.Module):
    """A 2x2 patch merge to the next stride whose linear map (4 * c1 -> c2, BN, SiLU) runs only on routed tokens.

    Every output token gets a cheap dense base, so a skipped token still carries what its patch held: `base="mean"` the
    parameter-free 2x2 mean with the channels tiled to c2, or `base="depthwise"` a learned depthwise 2x2 merge (each
    input channel to c2 / c1 output channels; trained on the sample data it gave lower AP, docs/routing_carries.md). A
    routed token adds the gated full merge. The router scores the 2x2 patch (`router_reads="patch"`, 4 * c1 wide) or
    its mean (`"mean"`, c1 wide: a quarter of the scoring that every token pays, and only the routed tokens' patches
    are gathered). A `router` without a capacity merges every token (the dense twin)."""

    router_reads = "patch"  # a class default too: checkpoints from before the option have none
    token_products = True  # its merge runs through `linear` (`bf16_products`)

    def __init__(self, c1: int, c2: int, router: RouterSpec = RouterSpec(), base: str = "mean",
                 router_reads: str = "patch"):
        super().__init__()
        if base not in ("depthwise", "mean"):
            raise ValueError(f"MoDDown base must be 'depthwise' or 'mean', got {base!r}")
        if base == "depthwise" and c2 % c1:
            raise ValueError(f"MoDDown's depthwise base needs c2 ({c2}) to be a multiple of c1 ({c1}); use base='mean'")
        if router_reads not in ("patch", "mean"):
            raise ValueError(f"MoDDown router_reads must be 'patch' or 'mean', got {router_reads!r}")
        self.c2 = c2
        self.merge = Conv(4 * c1, c2, 1)
        self.router_reads = router_reads
        self.router = router.make(4 * c1 if router_reads == "patch" else c1)
        self.base = Conv(c1, c2, 2, 2, 0, g=c1, act=False) if base == "depthwise" else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[2:]
        if h % 2 or w % 2:  # odd grids are padded, as a stride-2 convolution's ceil division would
            x = F.pad(x, (0, w % 2, 0, h % 2))
        gh, gw = x.shape[2] // 2, x.shape[3] // 2
        merge = lambda t, attn_mask=None: pointwise(self.merge, t)  # noqa: E731
        if self.router is not None and self.router_reads == "mean":
            mean = F.avg_pool2d(x, 2).flatten(2).transpose(1, 2)  # (B, N, C), what the router scores
            base = self.dense_base(x, mean)
            return as_map(self.router.add_to(base, mean, merge, (gh, gw), lambda index: patches(x, index), owned=True),
                          gh, gw)
        reads_patches = self.router is not None and self.router_reads == "patch" and self.router.decision == "own"
        if reads_patches and eager_layout(x):
            # The router reads every 2x2 patch: its readout is one 2x2 stride-2 convolution over the map (a weight row
            # in pixel_unshuffle's order, 4c + 2i + j, is a (C, 2, 2) kernel), and only the routed patches are gathered.
            # Unshuffling a channels-last map would cost more than the rest of this layer on a flat frame.
            readout = F.conv2d(x, self.router.readout().view(-1, x.shape[1], 2, 2), stride=2).flatten(2).transpose(1, 2)
            # token reuse tests each patch for change against the last frame's: its pixels, in any fixed order
            features = pixel_major_patches(x) if reuses_tokens(self.router) else readout
            return as_map(self.router.add_to(self.dense_base(x), features, merge, (gh, gw),
                                             lambda index: patches(x, index), owned=True, readout=readout), gh, gw)
        tokens = F.pixel_unshuffle(x, 2).flatten(2).transpose(1, 2)  # (B, N, 4C): channel 4c + 2i + j is pixel (i, j)
        base = self.dense_base(x)
        if self.router is None:
            out = base + pointwise(self.merge, tokens)
        else:
            out = self.router.add_to(base, tokens, merge, (gh, gw), owned=True)
        return as_map(out, gh, gw)

    def dense_base(self, x: torch.Tensor, mean: torch.Tensor | None = None) -> torch.Tensor:
        """(B, N, c2): every output token's base, the learned depthwise merge or the (B, N, C) 2x2 mean tiled (`mean`
        where the caller has it; pooled from the map, not reduced from the unshuffled tokens, whose four pixels of a
        channel lie N apart: a slow reduction)."""
        if getattr(self, "base", None) is not None:  # checkpoints from before the depthwise base have none
            return self.base(x).flatten(2).transpose(1, 2)
        if mean is None:
            mean = F.avg_pool2d(x, 2).flatten(2).transpose(1, 2)
        tiles = -(-self.c2 // mean.shape[-1])  # cat, not repeat: repeat copies through a rank-6 view, 2x slower on CPU
        return torch.cat([mean] * tiles, -1)[..., : self.c2]  # a new tensor always: routed layers write into it


def eager_layout(x: torch.Tensor) -> bool:
    """Whether x is a channels-last map in eager inference (RoutedModelMixin.predict's layout), where a layer may take
    a faster path that computes the same values: never under autograd, tracing or export."""
    return x.is_contiguous(memory_format=torch.channels_last) and not torch.is_grad_enabled() and not tracing()


def pixel_major_patches(x: torch.Tensor) -> torch.Tensor:
    """A channels-last (B, C, H, W) map's 2x2 patches as (B, N, 4C) rows, pixel (i, j)'s channel c at (2i + j) * C + c:
    from channels-last memory a copy in runs of C, several times faster than `pixel_unshuffle`'s order."""
    b, c, h, w = x.shape
    return x.permute(0, 2, 3, 1).reshape(b, h // 2, 2, w // 2, 2, c).transpose(2, 3).reshape(b, -1, 4 * c)


def patches(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """(B, K, 4C): the 2x2 patch of the (B, C, H, W) map under each token `index` (B, K) of its 2x2 grid, in
    pixel_unshuffle's channel order (channel c's pixel (i, j) at 4c + 2i + j), read without unshuffling the map."""
    w = x.shape[3]
    corner = index // (w // 2) * 2 * w + index % (w // 2) * 2  # each patch's top-left pixel
    return pixel_rows(x, corner[..., None] + torch.tensor([0, 1, w, w + 1], device=x.device))  # (0,0) (0,1) (1,0) (1,1)


def neighbourhoods(x: torch.Tensor, index: torch.Tensor, pixel_major: bool = False) -> torch.Tensor:
    """(B, K, 9C): the 3x3 neighbourhood of each position `index` (B, K) of the (B, C, H, W) map, zero beyond its
    border, in the order of a 3x3 convolution's unfolded input (channel-major, then row, then column), or with
    `pixel_major` (eager inference on a channels-last map) pixel-major: pixel p (row-major) channel c at p * C + c, the
    rows as read, without the transposing copy that is much of a busy frame's gathering (the reading layer takes its
    weight so, `pixel_major_weight`)."""
    b, c, h, w = x.shape
    if pixel_major and not eager_layout(x):
        raise ValueError("pixel-major neighbourhoods are read from a channels-last map in eager inference")
    if tracing():  # exports: a zero border, channels-last: each neighbourhood is 9 whole pixel rows of the padded map
        padded = F.pad(x, (1, 1, 1, 1)).contiguous(memory_format=torch.channels_last)
        offsets = torch.tensor([dy * (w + 2) + dx for dy in range(3) for dx in range(3)], device=x.device)
        corner = index // w * (w + 2) + index % w  # the top-left of each neighbourhood in the padded map
        return pixel_rows(padded, corner[..., None] + offsets)
    # eager: the map's own pixels at clamped positions, zeroed beyond the border, so a frame that routes few tokens
    # does not pay for a padded copy of the whole map
    step = torch.arange(-1, 2, device=x.device)
    rows = (index // w)[..., None, None] + step[:, None]  # (B, K, 3, 1): the rows above, at and below
    cols = (index % w)[..., None, None] + step  # (B, K, 1, 3)
    inside = ((rows >= 0) & (rows < h) & (cols >= 0) & (cols < w)).flatten(2)  # (B, K, 9), row-major
    at = (rows.clamp(0, h - 1) * w + cols.clamp(0, w - 1)).flatten(2)
    if pixel_major:
        nbh = pixel_rows(x, at, pixel_major=True).view(b, index.shape[1], 9, c)
        edge = ~inside.all(-1)  # (B, K) the neighbourhoods that cross the border: few, so only theirs are zeroed
        if edge.any():
            nbh[edge] = nbh[edge].masked_fill_(~inside[edge][..., None], 0)
        return nbh.view(b, index.shape[1], 9 * c)
    nbh = pixel_rows(x, at).view(b, index.shape[1], c, 9)
    return nbh.masked_fill(~inside[:, :, None], 0).view(b, index.shape[1], c * 9)


def pixel_rows(x: torch.Tensor, at: torch.Tensor, pixel_major: bool = False) -> torch.Tensor:
    """(B, K, C * P): for each of K tokens, the P pixels of the (B, C, H, W) map at flat positions `at` (B, K, P),
    channel-major (channel c's p-th pixel at c * P + p, a convolution's unfolded order), or pixel-major (`pixel_major`,
    a channels-last map only: pixel p's channel c at p * C + c). A channels-last map (a token map, `as_map`) is read
    by rows, whole pixels at a time; another by a gather per channel, without a copy of it."""
    b, c, h, w = x.shape
    k, p = at.shape[1:]
    if x.is_contiguous(memory_format=torch.channels_last):
        rows = x.permute(0, 2, 3, 1).reshape(-1, c)
        at = at + (torch.arange(b, device=x.device) * h * w)[:, None, None]
        picked = rows.index_select(0, at.flatten())
        if pixel_major:
            return picked.view(b, k, p * c)
        return picked.view(b, k, p, c).transpose(2, 3).reshape(b, k, c * p)
    if pixel_major:
        raise ValueError("pixel-major rows are read from a channels-last map")
    return x.flatten(2).gather(2, at.flatten(1)[:, None].expand(b, c, -1)).view(b, c, k, p).transpose(1, 2).reshape(
        b, k, c * p)


class UpAdd(nn.Module):
    """FPN's top-down merge: the coarse map upsampled (nearest) to the fine map's size and added to it. YAML:
    `[[-1, 4], 1, UpAdd, []]` (coarse, fine), both of the fine map's width."""

    def forward(self, xs: list[torch.Tensor]) -> torch.Tensor:
        coarse, fine = xs
        return fine + F.interpolate(coarse, size=fine.shape[-2:], mode="nearest")


class MoDA2C2f(A2C2f):
    """Ultralytics' A2C2f whose attention pairs run on token sets: routed (`router` with a capacity) or dense (without).

    YAML: `[-1, 4, MoDA2C2f, [512, True, 4, {capacity: 0.25}]]`, A2C2f's arguments then mod_vision's keywords. `area` is
    accepted for YAML compatibility with A2C2f; attention among a token set is global.
    """

    def __init__(self, c1: int, c2: int, n: int = 1, a2: bool = True, area: int = 1, residual: bool = False,
                 mlp_ratio: float = 2.0, e: float = 0.5, g: int = 1, shortcut: bool = True,
                 router: RouterSpec = RouterSpec()):
        if not a2:
            raise ValueError("MoDA2C2f needs a2=True (attention blocks); use A2C2f for its C3k variant")
        super().__init__(c1, c2, n, a2, area, residual, mlp_ratio, e, g, shortcut)
        c_ = int(c2 * e)
        self.m = nn.ModuleList(ABlockPair(c_, c_ // 32, mlp_ratio, router) for _ in range(n))
        self.m.apply(ABlock._init_weights)  # Ultralytics' init, convolutions only: routers keep theirs
