"""One routing decision per stride: routers with `decision: grid` take the decision of the last router that decided on
their token grid in the same forward (a merge's, for its stage, the neck stage and the head level). modnext-det decides
so; its layout, export and token reuse tests (test_inference_layout.py, test_export.py, test_modnext.py) run on it."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mod_vision.nn.blocks import MoDNeXt
from mod_vision.nn.routing import (
    DECISIONS, TokenRouter, record_routing, routed_blocks, router_spec, routing_input, set_dynamic, set_policy,
    set_routing,
)
from mod_vision.nn.tasks import MoDDetectionModel

SHARED = "modnext-det-n.yaml"  # one decision per stride
OWN = str(Path(__file__).parents[1] / "docs/routing_carries/candidates/modnext-own-det.yaml")  # every layer decides


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = MoDDetectionModel(SHARED, nc=4, verbose=False).eval()
    for r in routed_blocks(m):  # well-separated scores: no near-ties in top-k
        if r.scorer is not None:
            torch.nn.init.normal_(r.scorer.net.weight, std=1.0)
    return m


def leaders_of(entries, deciding):
    """For each recorded entry, the entry of the last deciding router on its grid before it (itself if it decides)."""
    last, out = {}, []
    for e, own in zip(entries, deciding):
        if own:
            last[e.grid] = e
        out.append(last[e.grid])
    return out


def test_only_the_merges_decide_and_every_later_layer_on_a_grid_takes_their_decision(model):
    routers = routed_blocks(model)
    assert [r.decision for r in routers] == ["own", "grid"] * 3 + ["grid"] * 5
    assert all((r.scorer is None) == (r.predictor is None) == (r.decision == "grid") for r in routers)
    deciding = [r.decision == "own" for r in routers]
    x = torch.rand(2, 3, 96, 128, generator=torch.Generator().manual_seed(0))
    for mode in ({"capacity": 0.25}, {"capacity": 0.5, "dynamic": (0.001, 1.0), "threshold": -2.0}, {"policy": "random"}):
        with torch.no_grad(), record_routing() as rec:
            set_routing(model, **mode)
            try:
                model(x)
            finally:
                set_routing(model, capacity=0.25, policy="topk")
                set_dynamic(model, (0.0, 1.0))
        assert len(rec) == 11
        for e, lead in zip(rec.blocks, leaders_of(rec.blocks, deciding)):
            assert e.tokens == lead.tokens
            assert torch.equal(e.mask(), lead.mask()), mode
        # three strides, each its own decision: the stride-8 grid routes other tokens than the stride-16 one
        assert len({e.grid for e in rec.blocks}) == 3


def test_a_static_capacity_routes_the_same_share_everywhere_and_none_removes_every_routed_layer(model):
    x = torch.rand(1, 3, 96, 128)
    set_routing(model, capacity=0.25)
    try:
        with torch.no_grad(), record_routing() as rec:
            model(x)
        assert [e.index.shape[1] for e in rec.blocks] == [-(-e.tokens // 4) for e in rec.blocks]
        set_policy(model, "none")
        with torch.no_grad(), record_routing() as rec:
            model(x)
    finally:
        set_policy(model, "topk")
        set_dynamic(model, (0.0, 1.0))
    assert len(rec) == 11 and float(rec.token_share()[0]) == 0.0


def test_training_scores_and_supervises_only_the_deciding_routers():
    torch.manual_seed(0)
    m = MoDDetectionModel(SHARED, nc=4, verbose=False).train()
    set_routing(m, capacity=0.5)
    x = torch.rand(2, 3, 64, 64)
    with record_routing(scores=True, predictions=True) as rec:
        out = m(x)
    scored = [e for e in rec.blocks if e.scores is not None]
    assert len(scored) == len([e for e in rec.blocks if e.predicted is not None]) == 3
    assert all(e.scores.requires_grad for e in scored)
    (out["boxes"].sum() + out["scores"].sum()).backward()
    # the followers' routed layers learn on the tokens they were handed
    assert m.model[3].blocks[0].fc1.conv.weight.grad.abs().sum() > 0
    assert m.model[-1].cv2[0][0].conv.weight.grad.abs().sum() > 0


def test_a_router_that_follows_with_no_decision_on_its_grid_is_one_clear_error():
    stage = MoDNeXt(8, 8, 1, router=router_spec(capacity=0.5, gate="none", decision="grid")).eval()
    x = torch.rand(1, 8, 4, 4)
    with pytest.raises(ValueError, match=r"decision='grid' takes the decision of a router that decided earlier .* "
                                         r"on its token grid \(4, 4\), and none did"):
        with torch.no_grad(), routing_input(torch.rand(1, 3, 16, 16)):
            stage(x)
    with pytest.raises(ValueError, match=r"none did"):  # outside a model's forward there is nothing to follow
        with torch.no_grad():
            stage(x)


def test_a_follower_takes_the_last_decision_on_its_grid():
    leader = MoDNeXt(8, 8, 1, router=router_spec(capacity=0.25, gate="none")).eval()
    other = MoDNeXt(8, 8, 1, router=router_spec(capacity=0.5, gate="none")).eval()
    follower = MoDNeXt(8, 8, 1, router=router_spec(capacity=1.0, gate="none", decision="grid")).eval()
    x = torch.rand(1, 8, 4, 4)
    with torch.no_grad(), routing_input(torch.rand(1, 3, 16, 16)), record_routing() as rec:
        follower(other(leader(x)))
    assert [e.index.shape[1] for e in rec.blocks] == [4, 8, 8]
    assert torch.equal(rec.blocks[2].index, rec.blocks[1].index)


def test_bad_decision_values_are_clear_errors_and_old_routers_decide_for_themselves():
    assert DECISIONS == ("own", "grid")
    with pytest.raises(ValueError, match=r"decision must be one of \('own', 'grid'\), got 'shared'"):
        router_spec(capacity=0.25, decision="shared")
    with pytest.raises(ValueError, match=r"decision must be one of"):
        TokenRouter(8, decision="stride")
    follower = TokenRouter(8, decision="grid")
    with pytest.raises(ValueError, match=r"decision='grid' .* no readout"):
        follower.readout()
    old = TokenRouter(8)
    del old.__dict__["decision"]  # pickled before the option existed
    assert old.decision == "own"

