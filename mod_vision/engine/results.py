"""`RoutedResults`: Ultralytics' Results plus the routing of the forward that produced them, kept through `new()`,
`cpu()`, `numpy()`, `cuda()`, `to()` and indexing (which all go through `new()`)."""

from __future__ import annotations

from ultralytics.engine.results import Results

import torch

# routing_mode lives beside the one setter whose state it reads (nn/routing/controls.py); still importable from here
from ..nn.routing import DYNAMIC, routed_blocks, routing_mode


class RoutedResults(Results):
    """Results with four more attributes, all describing the forward that ran:

    - `token_share` (float | None): share of routed-block tokens processed for this image; None for dense models;
    - `capacity` (list[float]): one per routed block, the capacity that ran: in static mode the capacity set (k =
      ceil(capacity * N)), in dynamic mode this image's measured share of tokens in that block; empty for dense models;
    - `capacity_mode` ("static" | "dynamic" | None): how k was chosen; None for dense models;
    - `routing` (mod_vision.heatmap.Routing | None): which tokens each routed block processed; None for dense or
      exported models (an exported graph does not return its indices).
    """

    ROUTING_FIELDS = ("token_share", "capacity", "capacity_mode", "routing")
    token_share = capacity_mode = routing = None
    capacity = ()

    @classmethod
    def of(cls, result: Results, **fields) -> RoutedResults:
        """A RoutedResults holding `result`'s data (the same Boxes/Masks objects) and the routing `fields`."""
        out = cls(orig_img=result.orig_img, path=result.path, names=result.names, speed=result.speed)
        out.save_dir = result.save_dir
        for k in result._keys:
            setattr(out, k, getattr(result, k))
        for k, v in fields.items():
            if k not in cls.ROUTING_FIELDS:
                raise KeyError(f"{k!r} is not a routing field; they are {cls.ROUTING_FIELDS}")
            setattr(out, k, v)
        return out

    def new(self) -> RoutedResults:
        return self.of(super().new(), **{k: getattr(self, k) for k in self.ROUTING_FIELDS})


def capacities_that_ran(model, entries: list, n: int) -> list[list[float]]:
    """For each of the n images of one forward, the capacity each routed block ran at: the set capacity in static mode,
    the image's measured share of that block's tokens in dynamic mode (from the forward's routing record `entries`);
    empty lists for a dense model."""
    if entries and routing_mode(model) == DYNAMIC:
        return torch.stack([e.processed().double() / e.tokens for e in entries], 1).tolist()
    return [[b.capacity for b in routed_blocks(model)] for _ in range(n)]
