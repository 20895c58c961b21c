"""The router, the policy of routing: a scorer (which tokens matter), a selection policy (how many and which: static
top-k, dynamic threshold, or the random-ranking control) and the gate.

A routed block is a block plus a router: `RoutedBlock` (timm's ViT block) here, `ABlockPair` (two of YOLO12's attention
blocks) in nn/blocks.py. Across video frames the router also applies the reuse rule (nn/reuse.py): of the tokens it
routes, only those whose input changed are computed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from timm.models.vision_transformer import Block
from torch import nn

from ..policies import check_policy, ranking
from ..reuse import gather_rows, reuse_delta, reuse_step, reuses_tokens
from .mechanism import check_capacity, route_tokens, tokens_for, topk_raster
from .padding import current_padding, forward_state, grid_key
from .record import BlockRouting, active_record, record_computed
from .scorers import ObjectPredictor, Scorer

if TYPE_CHECKING:  # the factory builds TokenRouters, so it imports this module
    from .factory import RouterSpec


GATES = ("sigmoid", "unit", "none")
DECISIONS = ("own", "grid")


def check_decision(decision: str) -> str:
    """A router's decision kind, one of DECISIONS (see `TokenRouter`)."""
    if decision not in DECISIONS:
        raise ValueError(f"decision must be one of {DECISIONS}, got {decision!r}")
    return decision


def check_gate(gate: str | bool | None) -> str:
    """A gate's name, one of GATES; True means "sigmoid", False and None mean "none"."""
    name = {True: "sigmoid", False: "none", None: "none"}.get(gate, gate)
    if name not in GATES:
        raise ValueError(f"gate must be one of {GATES}, got {gate!r}")
    return name


@dataclass
class Decision:
    """What a router decided for one forward of its block."""

    index: torch.Tensor  # (B, K) tokens to process, raster order
    valid: torch.Tensor | None  # (B, K) bool, which of them are real (dynamic mode), or None: all
    gate: torch.Tensor | None  # (B, K) multiplier of their updates, or None: 1
    scores: torch.Tensor  # (B, N) the scorer's scores


class TokenRouter(nn.Module):
    """Decides which tokens of each image a routed block processes, and how much each update counts.

    Args:
        dim: token width.
        capacity: share of tokens processed in static mode, in (0, 1]; settable later (`set_capacity`).
        hidden: 0 for a linear scorer, else the hidden width of a 2-layer MLP scorer.
        gate: what multiplies a chosen token's update:
            "sigmoid": sigmoid(score), as in the MoD paper; the product is what lets the task loss train the scorer.
            "unit": exactly 1 in the forward pass with the gradient of log-sigmoid, so a pretrained dense ViT starts
                out computing what it computed before.
            "none": no gate (the scorer then gets no gradient from the task loss).
        policy: "topk" (the scorer's best k), "object" (the k tokens the object predictor, trained on ground-truth
            object cover, rates highest: Focus-DETR's foreground selection) or "random" (k random tokens: the control
            that shows what a ranking is worth). The gate always uses the scorer's scores. "none" processes no token:
            the block's routed compute removed, the control that shows what the routed blocks carry.
        decision: "own" (this router scores the tokens and decides) or "grid" (it has no scorer or predictor and
            takes the decision of the last router that decided on the same token grid earlier in the forward: one
            decision per stride, shared by a merge, its stage, the neck and the head level, costs one scoring pass
            instead of several, and a frame where that router finds nothing runs nothing routed at the stride).
        train_capacity: None, or the capacity at which this router trains, whatever the trainer sets (an elastic range,
            a warm-up, per-image training): a router at a coarse stride trained at 1.0 gives every later layer there
            and the head's level their whole grid in training, while inference routes it as any other.

    Dynamic mode (`dynamic=(min, max)` capacities) lets each image choose its k: the tokens its object predictor (the
    MoD paper's auxiliary predictor, trained by `router_aux_loss` on detached tokens) scores above `threshold`, clamped
    to the bounds (a min of 0 lets an image want none: when no image of a batch does, the block's routed work is
    skipped); the scorer's ranking decides which. Batches pad to the largest k; padded tokens are masked out of
    attention and keep their value, so an image's output does not depend on its batch-mates. It is an inference mode: a
    router in training mode runs its static capacity, unless `train_dynamic=(min, max)` makes training choose k per
    image the same way (so a model learns in the regime it runs in).
    """

    random_source: torch.Generator | None = None  # the "random" policy's generator (`set_policy`); a class default
    # too, so that routers pickled in checkpoints from before it existed load
    train_dynamic: tuple[float, float] | None = None  # set by the trainer (`dynamic_training=`); a class default too
    decision = "own"  # a class default too: checkpoints from before shared decisions have none
    train_capacity: float | None = None  # a class default too: checkpoints from before the option have none

    def __init__(
        self, dim: int, capacity: float = 0.25, hidden: int = 0, gate: str | bool = "sigmoid", policy: str = "topk",
        decision: str = "own", train_capacity: float | None = None,
    ):
        super().__init__()
        self.decision = check_decision(decision)
        self.train_capacity = None if train_capacity is None else check_capacity(train_capacity, "train_capacity")
        own = decision == "own"
        self.scorer = Scorer(dim, hidden) if own else None
        self.predictor = ObjectPredictor(dim, max(16, dim // 8)) if own else None
        self.capacity = capacity
        self.gate = check_gate(gate)
        self.policy = policy
        self.random_source = None
        self.dynamic: tuple[float, float] | None = None
        self.threshold = 0.0  # logit 0 is probability 0.5, the auxiliary loss's decision boundary
        self.skip_constant = True  # the "never padding" policy: constant cells rank last (see `select`)
        self.export_dynamic_shapes = False  # set by the exporter: k computed in the graph from N

    @property
    def capacity(self) -> float:
        return self._capacity

    @capacity.setter
    def capacity(self, value: float) -> None:
        self._capacity = check_capacity(value)

    @property
    def policy(self) -> str:
        return self._policy

    @policy.setter
    def policy(self, value: str) -> None:
        self._policy = check_policy(value)

    # The capacity travels in the state_dict, so it survives what rebuilds a model from its weights: Ultralytics'
    # trainer (YAML + load), EMA copies and resume. float64 keeps it exact through .half() and the EMA's averaging.
    def get_extra_state(self) -> torch.Tensor:
        return torch.tensor(self.capacity, dtype=torch.float64)

    def set_extra_state(self, state: torch.Tensor) -> None:
        self.capacity = round(float(state), 6)

    def select(
        self, scores: torch.Tensor, predicted: torch.Tensor | None, padding: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(B, K) indices to process per image, in raster order, and their validity mask (None: all valid).

        `padding` (B, N) levels (`padding_levels`: 1 one-colour cell, 2 letterbox fill) rank after every real token,
        fill last, so they run only when k exceeds the real tokens; dynamic mode never counts them as wanted."""
        n = scores.shape[1]
        ranked = ranking(self.policy, scores, predicted, self.random_source)
        if padding is not None and self.skip_constant:
            # a margin far beyond any score, finite so every runtime's TopK takes it
            ranked = ranked - padding.to(ranked.dtype) * 1e4
            if predicted is not None:
                predicted = predicted.masked_fill(padding > 0, -1e4)
        if self.training and self.train_capacity is not None:
            return topk_raster(ranked, tokens_for(self.train_capacity, n)), None
        bounds = self.train_dynamic if self.training else self.dynamic
        if bounds is None or predicted is None:  # static top-k (a router in training without a predictor's output too)
            # While tracing, n is a tensor: k stays in the graph only for exports with dynamic shapes; a constant k lets
            # a runtime plan fixed shapes and fuse the block's matmuls.
            k = tokens_for(self.capacity, n if self.export_dynamic_shapes or not torch.is_tensor(n) else int(n))
            return topk_raster(ranked, k), None
        lo, hi = (0 if c == 0 else tokens_for(c, n) for c in bounds)  # a min of 0: an image may want none
        want = (predicted > self.threshold).sum(1).clamp(lo, hi)  # (B,) tokens each image asks for
        k = int(want.max())
        if k == 0:  # no image wants a token: the block's routed work is skipped (`routes_nothing`)
            return scores.new_zeros(scores.shape[0], 0, dtype=torch.long), None
        top = ranked.topk(k, dim=1).indices  # best first, so the first want[b] are image b's own
        valid = torch.arange(k, device=scores.device) < want[:, None]
        index, order = top.sort(dim=1)
        valid = valid.gather(1, order)
        return index, None if bool(valid.all()) else valid

    def readout(self) -> torch.Tensor:
        """(R, C): the weights with which the scorer, then the object predictor, read each token (their first layers,
        stacked): a layer that can compute them more cheaply than from token rows (as one strided convolution over a
        map's patches) passes the product to `decide` as `readout=`. Only a router that decides has one."""
        if self.scorer is None:
            raise ValueError("a router with decision='grid' takes its grid's decision and reads no tokens: no readout")
        return torch.cat([self.scorer.readout(), self.predictor.readout()])

    def decide(self, x: torch.Tensor, grid: tuple[int, int] | None = None,
               readout: torch.Tensor | None = None) -> Decision | None:
        """Which of the (B, N, C) tokens `x` to process and how much each update counts, recorded in the active
        routing record; None under the "none" policy (the routed compute removed: nothing is processed). `readout`,
        outside autograd: the tokens times `readout()` (B, N, R), computed by the caller; x is then only its shape."""
        record = active_record()
        if self.policy == "none":
            if record is not None:
                empty = torch.zeros(x.shape[0], 0, dtype=torch.long, device=x.device)
                record.add(BlockRouting(empty, None, x.shape[1], grid))
            return None
        predicted = None
        if self.decision == "grid":
            index, valid, scores = self.followed(grid)
        else:
            want_pred = ((self.train_dynamic if self.training else self.dynamic) is not None or self.policy == "object"
                         or (record is not None and record.keep_predictions))
            if readout is not None:
                r = self.scorer.readout().shape[0]
                scores = self.scorer.from_readout(readout[..., :r])
                predicted = self.predictor.from_readout(readout[..., r:]) if want_pred else None
            else:
                scores = self.scorer(x)
                predicted = self.predictor(x.detach()) if want_pred else None
            index, valid = self.select(scores, predicted, current_padding(grid))
            state = forward_state()
            if state is not None and grid is not None:
                state["decisions"][grid_key(grid)] = index, valid, scores
        if record is not None:
            record.add(
                BlockRouting(
                    index.detach(),
                    valid,
                    x.shape[1],
                    grid,
                    None if not record.keep_scores or self.decision == "grid"
                    else scores if self.training else scores.detach(),  # rank loss
                    None if predicted is None or not record.keep_predictions
                    else predicted if self.training else predicted.detach(),  # the aux loss trains only in training
                )
            )
        gate = None
        if self.gate != "none":
            gate = scores.gather(1, index).sigmoid()
            if self.gate == "unit":
                gate = gate / gate.detach()
        return Decision(index, valid, gate, scores)

    def followed(self, grid: tuple[int, int] | None) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """The index, validity and scores the last deciding router on `grid` chose in this forward."""
        state = forward_state()
        decided = None if state is None or grid is None else state["decisions"].get(grid_key(grid))
        if decided is None:
            where = None if grid is None else grid_key(grid)
            raise ValueError(
                f"a router with decision='grid' takes the decision of a router that decided earlier in the same "
                f"forward on its token grid {where}, and none did: give an earlier layer on that grid its own decision "
                f"(decision: own), and run the model's forward (the decisions live in its routing_input)"
            )
        return decided

    def forward(
        self,
        x: torch.Tensor,
        block: Callable[[torch.Tensor], torch.Tensor],
        grid: tuple[int, int] | None = None,
        inputs: torch.Tensor | None = None,
        layers: Sequence[nn.Module] = (),
        owned: bool = False,
    ) -> torch.Tensor:
        """Route (B, N, C) tokens through `block` (see `route_tokens`, also for `owned`); `grid` is their (h, w)
        layout, for the record.

        `layers` are the block's transformer layers, for token reuse across video frames (nn/reuse.py): under an active
        `TokenReuse`, only the routed tokens whose input changed are computed."""
        decision = self.decide(x, grid)
        if routes_nothing(decision, self):
            return x
        if reuses_tokens(self):
            if not layers or inputs is not None:
                raise ValueError("token reuse needs the routed block's transformer layers (layers=) and no inputs=")
            # the gate of every token, as in the routed path: sigmoid(score), or exactly 1 ("unit", "none")
            gate = decision.scores.sigmoid() if self.gate == "sigmoid" else None
            out, _, computed = reuse_step(x, decision.index, decision.valid, layers, gate)
            record_computed(computed)
            return out
        return route_tokens(x, decision.index, block, decision.gate, decision.valid, inputs, owned=owned)

    def add_to(self, base: torch.Tensor, features: torch.Tensor, update: Callable[[torch.Tensor], torch.Tensor],
               grid: tuple[int, int] | None = None, read: Callable[[torch.Tensor], torch.Tensor] | None = None,
               owned: bool = False, readout: torch.Tensor | None = None) -> torch.Tensor:
        """For a layer that changes width: `base` (B, N, C_out) plus the gated `update` of the routed tokens of
        `features` (B, N, C_in), which the scorer reads; the other tokens output `base`. `read`, a function of the
        (B, K) index, gives what `update` reads instead of the features' rows (their neighbourhoods, say); `owned` as
        in `route_tokens`. With `readout` (see `decide`) and `read`, `features` give only their shape."""
        decision = self.decide(features, grid, readout)
        if routes_nothing(decision, self):
            return base
        if reuses_tokens(self):
            gate = decision.scores.sigmoid() if self.gate == "sigmoid" else None
            rows = read or (lambda index: gather_rows(features, index))
            out, _, computed = reuse_delta(base, features, decision.index, decision.valid, rows, update, gate, owned)
            record_computed(computed)
            return out
        return route_tokens(base, decision.index, update, decision.gate, decision.valid, read or features, delta=True,
                            owned=owned)


def routes_nothing(decision: Decision | None, router: TokenRouter) -> bool:
    """Whether a block call has no routed work: the "none" policy, or a per-image budget under which no image of the
    batch wanted a token (an empty scene). Under token reuse the call still runs, which keeps its cache in step."""
    return decision is None or (decision.index.shape[1] == 0 and not reuses_tokens(router))


class RoutedBlock(Block):
    """A timm ViT `Block` that processes only the tokens its `router` picks.

    It subclasses timm's Block, so its parameter names are timm's (plus `router.*`) and timm weights load directly.
    """

    def __init__(self, dim: int, num_heads: int, router: RouterSpec, **kwargs):
        check_capacity(router.capacity)  # a routed block always has a router: no capacity is the dense `Block`
        super().__init__(dim, num_heads, **kwargs)
        self.router = router.make(dim)

    def forward(self, x: torch.Tensor, grid: tuple[int, int] | None = None) -> torch.Tensor:
        """(B, N, C) -> (B, N, C); the whole batch is gathered and scattered at once, with no loop over images."""
        return self.router(x, super().forward, grid, layers=(self,))
