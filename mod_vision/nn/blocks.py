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

import torch
import torch.nn.functional as F
from torch import nn
from ultralytics.nn.modules import Conv
from ultralytics.nn.modules.block import A2C2f, ABlock

from .reuse import reuse_step, reuses_tokens
from .routing import TokenRouter


class TokenABlock(ABlock):
    """YOLO12's ABlock as a transformer block over a (B, K, C) token set: global attention, then the MLP.

    The 1x1 convolutions (and their BatchNorms, fused at inference) run on the tokens as a (B, C, K, 1) map."""

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


def pointwise(conv: Conv, t: torch.Tensor) -> torch.Tensor:
    """An Ultralytics 1x1 `Conv` applied to (B, K, C) tokens. Once fused (inference: the BatchNorm folded into the
    convolution) it is a matmul on the tokens; before, it runs as a (B, C, K, 1) map so its BatchNorm trains as usual."""
    if hasattr(conv, "bn"):
        return conv(t.transpose(1, 2).unsqueeze(-1)).squeeze(-1).transpose(1, 2)
    return conv.act(F.linear(t, conv.conv.weight.flatten(1), conv.conv.bias))


class ABlockPair(nn.Module):
    """A2C2f's unit, two ABlocks on a (B, C, H, W) map, with a depthwise position term; routed when given a capacity."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 1.2, capacity: float | None = None,
                 router_hidden: int = 0, gate: str = "sigmoid"):
        super().__init__()
        self.pe = Conv(dim, dim, 7, 1, 3, g=dim, act=False)
        self.blocks = nn.ModuleList(TokenABlock(dim, num_heads, mlp_ratio) for _ in range(2))
        self.router = None if capacity is None else TokenRouter(dim, capacity, router_hidden, gate)

    def run(self, t: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        for blk in self.blocks:
            t = blk(t, attn_mask)
        return t

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        t = (x + self.pe(x)).flatten(2).transpose(1, 2)  # dense and cheap: every token gets position and local mixing
        if self.router is not None:
            out = self.router(t, self.run, (h, w), layers=self.blocks)
        else:
            out = reuse_step(t, None, None, self.blocks, None)[0] if reuses_tokens(self) else self.run(t)
        return out.transpose(1, 2).reshape(b, c, h, w)


class MoDA2C2f(A2C2f):
    """Ultralytics' A2C2f whose attention pairs run on token sets: routed (`capacity` in (0, 1]) or dense (None).

    YAML: `[-1, 4, MoDA2C2f, [512, True, 4, {capacity: 0.25}]]`, A2C2f's arguments then mod_vision's keywords. `area` is
    accepted for YAML compatibility with A2C2f; attention among a token set is global.
    """

    def __init__(self, c1: int, c2: int, n: int = 1, a2: bool = True, area: int = 1, residual: bool = False,
                 mlp_ratio: float = 2.0, e: float = 0.5, g: int = 1, shortcut: bool = True,
                 capacity: float | None = 0.25, router_hidden: int = 0, gate: str = "sigmoid"):
        if not a2:
            raise ValueError("MoDA2C2f needs a2=True (attention blocks); use A2C2f for its C3k variant")
        super().__init__(c1, c2, n, a2, area, residual, mlp_ratio, e, g, shortcut)
        c_ = int(c2 * e)
        self.m = nn.ModuleList(ABlockPair(c_, c_ // 32, mlp_ratio, capacity, router_hidden, gate) for _ in range(n))
        self.m.apply(ABlock._init_weights)  # Ultralytics' init, convolutions only: routers keep theirs
