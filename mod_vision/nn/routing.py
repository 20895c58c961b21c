"""Mixture-of-Depths token routing: the one place where top-k, gather, block and scatter happen.

A routed block scores every token, runs its transformer block on the k = ceil(capacity * N) best-scoring tokens of each
image, and scatters the gated update back. Unselected tokens pass on the residual path unchanged, so the feature map
stays complete for dense heads (SViT's finding) and a token skipped here can be picked again by a later block.
"""

from __future__ import annotations

import math

import torch
from timm.models.vision_transformer import Block
from torch import nn


def check_capacity(capacity: float) -> float:
    """Return capacity as a float, or raise a ValueError that names the valid range."""
    if isinstance(capacity, bool) or not isinstance(capacity, (int, float)) or not 0.0 < float(capacity) <= 1.0:
        raise ValueError(f"capacity must be a float in the range (0, 1], got {capacity!r}")
    return float(capacity)


def tokens_for(capacity: float, n: int) -> int:
    """Return k = ceil(capacity * n), at least one token, at most n."""
    # round() first so that float noise such as 0.1 * 30 = 3.0000000000000004 does not add a token
    return max(1, min(n, math.ceil(round(capacity * n, 6))))


class Router(nn.Module):
    """Scores each token with one scalar: a linear map, or a 2-layer MLP (SViT found the MLP gate as good as complex ones)."""

    def __init__(self, dim: int, hidden: int = 0):
        super().__init__()
        if hidden:
            self.net = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, 1))
        else:
            self.net = nn.Linear(dim, 1)
        for m in self.net.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, N, C) tokens -> (B, N) scores."""
        return self.net(x).squeeze(-1)


class RoutedBlock(Block):
    """A timm ViT `Block` that only processes the top-scoring tokens of each image.

    It subclasses timm's Block so its parameter names are timm's (plus `router.*`), and timm weights load directly.
    The block's residual update is multiplied by `sigmoid(score)`: that product is what lets the task loss train the
    router. With `gate=False` and capacity 1.0 the output equals the plain block's output exactly.

    Attributes:
        capacity (float): share of tokens processed, in (0, 1]; settable after construction.
        last_index (torch.Tensor | None): (B, k) indices of the tokens selected by the latest forward, sorted.
        last_tokens (int): N of the latest forward.
    """

    def __init__(self, dim: int, num_heads: int, capacity: float = 0.125, router_hidden: int = 0, gate: bool = True, **kwargs):
        super().__init__(dim, num_heads, **kwargs)
        self.router = Router(dim, router_hidden)
        self.capacity = capacity
        self.gate = gate
        self.last_index = None
        self.last_tokens = 0

    @property
    def capacity(self) -> float:
        return self._capacity

    @capacity.setter
    def capacity(self, value: float) -> None:
        self._capacity = check_capacity(value)

    # The capacity travels in the state_dict, so it survives what rebuilds a model from its weights: Ultralytics'
    # trainer (YAML + load), EMA copies and resume. float64 keeps it exact through .half() and the EMA's averaging.
    def get_extra_state(self) -> torch.Tensor:
        return torch.tensor(self.capacity, dtype=torch.float64)

    def set_extra_state(self, state: torch.Tensor) -> None:
        self.capacity = round(float(state), 6)

    def select(self, scores: torch.Tensor) -> torch.Tensor:
        """Return the (B, k) indices of the top-k scores per image, sorted by position.

        Sorting keeps tokens in raster order, so capacity 1.0 is the identity permutation (exactness) and the gather
        reads memory mostly forward.
        """
        k = tokens_for(self.capacity, scores.shape[1])
        return scores.topk(k, dim=1, sorted=False).indices.sort(dim=1).values

    def forward(self, x: torch.Tensor, attn_mask=None, is_causal: bool = False) -> torch.Tensor:
        """(B, N, C) -> (B, N, C); the whole batch is gathered and scattered at once, with no loop over images."""
        scores = self.router(x)
        index = self.select(scores)
        self.last_index, self.last_tokens = index.detach(), x.shape[1]
        gather_index = index.unsqueeze(-1).expand(-1, -1, x.shape[-1])
        selected = x.gather(1, gather_index)
        processed = super().forward(selected)
        if self.gate:
            g = scores.gather(1, index).sigmoid().unsqueeze(-1)
            processed = selected + g * (processed - selected)
        return x.scatter(1, gather_index, processed)


def routed_blocks(model: nn.Module) -> list[RoutedBlock]:
    """Return the routed blocks of a model in forward order (also through Ultralytics' AutoBackend)."""
    # AutoBackend keeps the PyTorch model on a backend object, not as a submodule
    native = getattr(getattr(model, "backend", None), "model", None)
    model = native if isinstance(native, nn.Module) else model
    return [m for m in model.modules() if isinstance(m, RoutedBlock)]


def set_capacity(model: nn.Module, capacity: float | list[float] | dict[int, float]) -> list[float]:
    """Set the capacity of all routed blocks (a float), or per routed block (a list, or {block index: capacity}).

    Returns the capacities now in force, in forward order.
    """
    blocks = routed_blocks(model)
    if isinstance(capacity, (list, tuple)):
        if len(capacity) != len(blocks):
            raise ValueError(f"{len(capacity)} capacities given for {len(blocks)} routed blocks")
        capacity = dict(enumerate(capacity))
    if isinstance(capacity, dict):
        bad = [i for i in capacity if not 0 <= int(i) < len(blocks)]
        if bad:
            raise ValueError(f"routed block indices {bad} out of range for {len(blocks)} routed blocks")
        values = {int(i): check_capacity(c) for i, c in capacity.items()}
    else:
        values = dict.fromkeys(range(len(blocks)), check_capacity(capacity))
    for i, c in values.items():
        blocks[i].capacity = c
    return [b.capacity for b in blocks]


def token_share(model: nn.Module) -> torch.Tensor | None:
    """Per image of the latest forward, the share of tokens processed by the routed blocks: sum(k) / sum(N).

    Returns a (B,) tensor, or None if the model has no routed block or has not run yet.
    """
    blocks = [b for b in routed_blocks(model) if b.last_index is not None]
    if not blocks:
        return None
    done = sum(torch.full((b.last_index.shape[0],), b.last_index.shape[1], dtype=torch.float32) for b in blocks)
    return done / sum(b.last_tokens for b in blocks)
