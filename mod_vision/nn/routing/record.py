"""What a forward routed, as a record of that forward: processed indices, token grids, optionally scores and predictor
logits, one `BlockRouting` per routed block call.

Recording is opt-in (`with record_routing() as rec:`): nothing is recorded, and no mask is built, when nobody asks.
Nothing about a forward is kept on the modules, so nothing of it reaches a checkpoint.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

import torch
from torch import nn

from ..reuse import index_mask


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
    from .controls import native_model  # here, not at the top: controls needs the router, which needs this module

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


def record_computed(computed: torch.Tensor) -> None:
    """Under token reuse: which routed tokens the block call just recorded computed on this frame."""
    record = active_record()
    if record is not None:
        record.blocks[-1].computed = computed
