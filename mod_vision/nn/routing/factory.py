"""How a routed block gets its router: a `RouterSpec` is given once to the block, which calls `make(dim)` for each
router it owns, as timm's blocks take `attn_layer` and `mlp_layer`. A block never names the router's settings, so a new
setting (a scorer kind, say) is a field here and reaches every routed block kind unchanged.

`router_spec` is the one translation from a YAML layer's keywords (`capacity`, `router_hidden`, `gate`, `decision`,
`train_capacity`) to a spec.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from .mechanism import check_capacity
from .router import TokenRouter, check_decision, check_gate

# YAML keyword -> RouterSpec field
ROUTER_KEYWORDS = {"capacity": "capacity", "router_hidden": "hidden", "gate": "gate", "decision": "decision",
                   "train_capacity": "train_capacity"}


@dataclass(frozen=True)
class RouterSpec:
    """What each router of a routed block is built with; `make(dim)` builds one.

    Args:
        capacity: share of tokens routed, in (0, 1]; None builds no router, so the block runs densely (its dense twin).
        hidden: 0 for a linear scorer, else the hidden width of a 2-layer MLP scorer (checked by the scorer).
        gate: what multiplies a routed token's update, one of GATES (`check_gate`; see `TokenRouter`).
        decision: "own", or "grid": take the decision of the last router that decided on the same token grid in the
            forward (see `TokenRouter`).
        train_capacity: None, or the capacity in (0, 1] at which this router trains whatever the trainer draws for the
            others (elastic ranges, warm-ups); only a router that decides has one (see `TokenRouter`).
    """

    capacity: float | None = 0.25
    hidden: int = 0
    gate: str = "sigmoid"
    decision: str = "own"
    train_capacity: float | None = None

    def __post_init__(self):
        # checked here rather than when a router is made, so that a dense twin's YAML is held to the same values
        if self.capacity is not None:
            object.__setattr__(self, "capacity", check_capacity(self.capacity))
        object.__setattr__(self, "gate", check_gate(self.gate))
        check_decision(self.decision)
        if self.train_capacity is not None:
            if self.decision == "grid":
                raise ValueError("train_capacity is a deciding router's (decision: own): a router with decision: grid "
                                 "takes its grid's decision, in training too")
            object.__setattr__(self, "train_capacity", check_capacity(self.train_capacity, "train_capacity"))

    def make(self, dim: int) -> TokenRouter | None:
        """A router for `dim`-wide tokens, or None when the spec has no capacity (the dense twin)."""
        if self.capacity is None:
            return None
        return TokenRouter(dim, self.capacity, self.hidden, self.gate, decision=self.decision,
                           train_capacity=self.train_capacity)


DENSE = RouterSpec(capacity=None)  # no router: the dense twin


def router_spec(default: RouterSpec = RouterSpec(), **keywords) -> RouterSpec | list[RouterSpec]:
    """The spec a YAML layer's router keywords (`capacity`, `router_hidden`, `gate`, `decision`, `train_capacity`)
    describe, `default`'s values for those not given. A list of capacities, one per routed block of a stage
    (`MoDViTStage`), gives a list of specs."""
    unknown = sorted(set(keywords) - set(ROUTER_KEYWORDS))
    if unknown:
        raise TypeError(f"unknown router keywords {unknown}; a router takes {list(ROUTER_KEYWORDS)}")
    fields = {ROUTER_KEYWORDS[k]: v for k, v in keywords.items()}
    capacity = fields.pop("capacity", default.capacity)
    if isinstance(capacity, (list, tuple)):
        return [replace(default, **fields, capacity=c) for c in capacity]
    return replace(default, **fields, capacity=capacity)
