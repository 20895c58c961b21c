"""The per-token scorers a router owns: `Scorer` ranks tokens and sets their gate, `ObjectPredictor` says whether a
token lies on an object (dynamic mode's k and the "object" policy)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


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
