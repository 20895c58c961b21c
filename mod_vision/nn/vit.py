"""ViT pieces usable as Ultralytics YAML layers: a patch embedding and a (routed) transformer stage.

Both take and return (B, C, H, W) maps, so they compose with Ultralytics' convolutions, heads and plotting. The simple
feature pyramid of ViTDet is written in the YAMLs with stock Ultralytics layers (ConvTranspose, Conv, MaxPool).
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from timm.layers import LayerNorm, trunc_normal_
from timm.models.vision_transformer import Block, init_weights_vit_timm
from torch import nn

from .blocks import derived
from .reuse import reuse_step, reuses_tokens
from .routing import RoutedBlock, RouterSpec
from .routing.mechanism import tracing


class PatchEmbed(nn.Module):
    """Non-overlapping patch embedding (timm's `patch_embed.proj`), padding the input up to a multiple of the patch.

    Padding (rather than failing) means any input size works, including an image smaller than one patch.
    """

    def __init__(self, c1: int, c2: int, patch: int = 16):
        super().__init__()
        self.patch = patch
        self.proj = nn.Conv2d(c1, c2, patch, patch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ph, pw = -x.shape[-2] % self.patch, -x.shape[-1] % self.patch
        if ph or pw:
            x = F.pad(x, (0, pw, 0, ph))
        return self.proj(x)


def routed_indices(depth: int, routed: int | str | Sequence[int] | None) -> list[int]:
    """Which blocks of a stage are routed.

    `routed` is a period p (blocks p-1, 2p-1, ... are routed, so p=2 is every other block with the first one dense, the
    MoD paper's best pattern), a slice string such as "1:" (every block after the first; it survives depth scaling,
    unlike a list), 0/None for a dense stage, or an explicit list of block indices.
    """
    if not routed:
        return []
    if isinstance(routed, str):
        parts = routed.split(":")
        if len(parts) not in (2, 3) or not all(p.strip().lstrip("-").isdigit() or not p.strip() for p in parts):
            raise ValueError(f"routing pattern '{routed}' is not a slice such as '1:' or '0::2'")
        return list(range(depth))[slice(*(int(p) if p.strip() else None for p in parts))]
    if isinstance(routed, int):
        if routed < 1:
            raise ValueError(f"routing period must be >= 1, got {routed}")
        return [i for i in range(depth) if i % routed == routed - 1]
    bad = [i for i in routed if not 0 <= i < depth]
    if bad:
        raise ValueError(f"routed block indices {bad} are outside a stage of depth {depth}")
    return sorted(set(routed))


# stage -> (key, resized position embedding); off the modules, so that checkpoints and deep copies never carry it
_RESIZED_POS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


class MoDViTStage(nn.Module):
    """A stack of ViT blocks with an absolute position embedding, some blocks routed Mixture-of-Depths style.

    Args:
        c1, c2: input and output channels (must be equal: a ViT stage keeps its width).
        depth: number of blocks (the YAML repeat count, scaled by the model's depth multiple).
        routed: routing pattern, see `routed_indices`.
        router: the router of every routed block, or one per routed block (their capacities, say). Its gate "unit"
            makes a pretrained dense ViT start out computing what it computed before.
        head_dim: channels per attention head; heads = c2 // head_dim, so width scaling also scales heads.
        mlp_ratio: MLP hidden width over c2.
        pos_grid: side of the learned position-embedding grid, bicubically resized to each input's token grid.
        drop_path: stochastic depth rate, increasing linearly over the blocks as in timm.
        init_values: LayerScale initial value (timm's `init_values`, e.g. 1e-5 for DINOv2), or None for no LayerScale;
            it must match the weights a stage loads, as LayerScale adds parameters (`ls1.gamma`, `ls2.gamma`).

    In a YAML, arguments after the channels can be given positionally or as a trailing mapping of keyword arguments,
    the router's as `capacity` (also positional, in the router's place: one value or one per routed block),
    `router_hidden` and `gate`, e.g. `[384, 2, 0.5, {gate: unit, init_values: 1.0e-5}]`.
    """

    def __init__(
        self,
        c1: int,
        c2: int,
        depth: int = 12,
        routed: int | str | Sequence[int] | None = 2,
        router: RouterSpec | Sequence[RouterSpec] = RouterSpec(capacity=0.125),
        head_dim: int = 64,
        mlp_ratio: float = 4.0,
        pos_grid: int = 14,
        drop_path: float = 0.0,
        init_values: float | None = None,
    ):
        super().__init__()
        if c1 != c2:
            raise ValueError(f"MoDViTStage keeps its width: input channels {c1} != output channels {c2}")
        heads = max(1, round(c2 / head_dim))
        while c2 % heads:
            heads -= 1
        routed_ids = routed_indices(depth, routed)
        routers = [router] * len(routed_ids) if isinstance(router, RouterSpec) else list(router)
        if len(routers) != len(routed_ids):
            raise ValueError(f"{len(routers)} capacities given for {len(routed_ids)} routed blocks {routed_ids}")
        routers = dict(zip(routed_ids, routers))
        dpr = [x.item() for x in torch.linspace(0, drop_path, depth)]
        # timm's ViT defaults (qkv bias, LayerNorm with eps 1e-6), so that timm ViT weights compute what they did in timm
        common = dict(mlp_ratio=mlp_ratio, qkv_bias=True, norm_layer=LayerNorm, init_values=init_values or None)
        self.blocks = nn.ModuleList(
            RoutedBlock(c2, heads, routers[i], drop_path=dpr[i], **common)
            if i in routers
            else Block(c2, heads, drop_path=dpr[i], **common)
            for i in range(depth)
        )
        self.pos_embed = nn.Parameter(torch.zeros(1, c2, pos_grid, pos_grid))
        trunc_normal_(self.pos_embed, std=0.02)
        for name, m in self.blocks.named_modules():
            if "router" not in name:  # the router keeps its own init
                init_weights_vit_timm(m)

    def position_embedding(self, h: int, w: int) -> torch.Tensor:
        """The learned grid resized to h x w tokens (train at 640, predict at any stride-multiple size).

        Inference reuses the last resize while the weights, size, device and dtype are unchanged: a video runs every
        frame at one size, and the bicubic resize costs about as much as a routed block at a few tokens. Training and
        tracing (export) always resize, so that the graph and the gradients see the resize."""
        pos = self.pos_embed
        if pos.shape[-2:] == (h, w):
            return pos
        if self.training or torch.is_grad_enabled() or tracing():
            return F.interpolate(pos, size=(h, w), mode="bicubic", align_corners=False)
        key = (h, w, pos._version, pos.data_ptr(), pos.device, pos.dtype, torch.is_inference_mode_enabled())
        return derived(_RESIZED_POS, self, key,
                       lambda: F.interpolate(pos, size=(h, w), mode="bicubic", align_corners=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        x = x + self.position_embedding(h, w).to(x.dtype)
        t = x.flatten(2).transpose(1, 2)  # (B, N, C) tokens in raster order
        reuse = reuses_tokens(self)
        for blk in self.blocks:
            if isinstance(blk, RoutedBlock):
                t = blk(t, (h, w))
            else:  # across video frames a dense block also computes only the tokens whose input changed
                t = reuse_step(t, None, None, (blk,), None)[0] if reuse else blk(t)
        return t.transpose(1, 2).reshape(b, c, h, w)
