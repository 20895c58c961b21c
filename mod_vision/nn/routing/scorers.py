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

    def readout(self) -> torch.Tensor:
        """(R, C): the weights of the first layer, the only one that reads the tokens."""
        return self.layers()[0].weight

    def from_readout(self, y: torch.Tensor) -> torch.Tensor:
        """(B, N) scores from y, the tokens times `readout()` (B, N, R), computed by the caller (as a convolution)."""
        return self.after_first(y + self.layers()[0].bias)

    def layers(self) -> list[nn.Module]:
        return list(self.net) if isinstance(self.net, nn.Sequential) else [self.net]

    def after_first(self, h: torch.Tensor) -> torch.Tensor:
        """(B, N) outputs from the first layer's (B, N, R) outputs: the layers after it."""
        for m in self.layers()[1:]:
            h = m(h)
        return h.squeeze(-1)


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
        first = self.net[0]
        dim = x.shape[-1]
        w = first.weight
        h = F.linear(x, w[:, :dim]) + F.linear(x.mean(1, keepdim=True), w[:, dim:], first.bias)
        return self.after_first(h)

    def readout(self) -> torch.Tensor:
        """(2R, C): the first layer's token half, then its mean half (the mean of the tokens read by the mean half is
        the mean of the tokens' readouts, so both halves read each token)."""
        w = self.net[0].weight
        dim = w.shape[1] // 2
        return torch.cat([w[:, :dim], w[:, dim:]])

    def from_readout(self, y: torch.Tensor) -> torch.Tensor:
        """(B, N) logits from y, the tokens times `readout()` (B, N, 2R)."""
        r = y.shape[-1] // 2
        return self.after_first(y[..., :r] + y[..., r:].mean(1, keepdim=True) + self.net[0].bias)
