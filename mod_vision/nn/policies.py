"""Routing policies: how a router ranks the tokens its top-k picks from. The names are the values of `routing=`.

- "topk": the learned scorer's ranking (what a trained model runs);
- "object": the object predictor's ranking (trained on ground-truth object cover: Focus-DETR's foreground selection);
- "random": a random ranking, the control that shows what the learned ranking is worth (each block keeps its k and its
  learned gate), drawn from a generator seeded by the caller so the control can be reproduced;
- "none": no token at all, every routed block's compute removed, the control that shows what the routed blocks carry.
"""

from __future__ import annotations

import torch

POLICIES = ("topk", "object", "random", "none")


def check_policy(policy: str) -> str:
    if policy not in POLICIES:
        raise ValueError(f"routing policy must be one of {POLICIES}, got {policy!r}")
    return policy


def ranking(policy: str, scores: torch.Tensor, predicted: torch.Tensor | None,
            generator: torch.Generator | None = None) -> torch.Tensor:
    """(B, N) values whose top-k the router takes, under `policy` ("topk", "object" or "random")."""
    if policy == "random":
        return torch.rand(scores.shape, generator=generator, device=scores.device).to(scores.dtype)
    if policy == "object":
        return predicted
    return scores
