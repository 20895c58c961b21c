"""The router factory: a `RouterSpec` builds a routed block's routers, and a YAML layer's router keywords become one."""

import copy

import pytest
import torch

from mod_vision.nn import MoDDetectionModel, load_model_yaml
from mod_vision.nn.blocks import MoDNeXt
from mod_vision.nn.routing import RouterSpec, TokenRouter, routed_blocks, router_spec


def test_a_spec_builds_a_router_with_its_capacity_gate_and_scorer():
    router = router_spec(capacity=0.3, router_hidden=16, gate="unit").make(24)
    assert isinstance(router, TokenRouter)
    assert router.capacity == 0.3 and router.gate == "unit"
    assert router.scorer.net[0].in_features == 24 and router.scorer.net[0].out_features == 16  # the MLP scorer
    assert isinstance(RouterSpec().make(24).scorer.net, torch.nn.Linear)  # hidden 0: a linear scorer


def test_each_make_is_a_new_router():
    """Two routers made from one spec share no weights: training one leaves the other's scores as they were."""
    spec = router_spec(capacity=0.5)
    a, b = spec.make(8), spec.make(8)
    before = {k: v.clone() for k, v in b.state_dict().items()}
    assert before and list(a.parameters())
    with torch.no_grad():
        for p in a.parameters():
            p.add_(1.0)
    assert b.state_dict().keys() == before.keys()
    assert all(torch.equal(v, before[k]) for k, v in b.state_dict().items())


def test_no_capacity_builds_no_router_and_the_block_runs_dense():
    assert router_spec(capacity=None).make(16) is None
    stage = MoDNeXt(16, 16, 1, router=router_spec(capacity=None))
    assert stage.router is None and not routed_blocks(stage)


def test_a_layer_default_fills_in_what_the_keywords_leave_out():
    default = RouterSpec(capacity=0.125, gate="unit")
    assert router_spec(default, router_hidden=8) == RouterSpec(0.125, 8, "unit")
    assert router_spec(default, capacity=[0.5, 0.25]) == [RouterSpec(0.5, 0, "unit"), RouterSpec(0.25, 0, "unit")]


@pytest.mark.parametrize("bad", [0, 1.5, -0.1, "0.5", True])
def test_a_bad_capacity_is_refused_with_the_range(bad):
    with pytest.raises(ValueError, match=r"capacity must be a float in the range \(0, 1\]"):
        router_spec(capacity=bad)


def test_a_bad_gate_is_refused_with_the_choices():
    with pytest.raises(ValueError, match=r"gate must be one of \('sigmoid', 'unit', 'none'\), got 'relu'"):
        router_spec(gate="relu")
    with pytest.raises(ValueError, match=r"gate must be one of"):
        router_spec(capacity=None, gate="relu")  # a dense twin's keywords are held to the same values


def test_an_unknown_router_keyword_is_refused():
    with pytest.raises(TypeError, match=r"unknown router keywords \['hidden'\]"):
        router_spec(hidden=8)


def test_a_yaml_layer_routes_with_the_gate_and_capacity_its_keywords_name():
    spec = copy.deepcopy(load_model_yaml("modnext-det-n.yaml"))
    layers = spec["backbone"] + spec["head"]
    stage = next(row for row in layers if row[2] == "MoDNeXt")
    stage[3] = [stage[3][0], {"capacity": 0.25, "gate": "unit"}]
    model = MoDDetectionModel(spec, nc=4, verbose=False)
    (layer,) = (m for m in model.model if getattr(m, "i", None) == layers.index(stage))
    assert layer.router.gate == "unit" and layer.router.capacity == 0.25
    others = [r for r in routed_blocks(model) if r is not layer.router]
    assert others and all(r.gate == "none" for r in others)  # the gate modnext-det's own keywords name: none


def test_a_yaml_capacity_in_the_router_place_routes_each_vit_block():
    spec = load_model_yaml("modvit-det-vits.yaml")  # MoDViTStage [384, 2, 0.5, {gate: unit, ...}]
    routers = routed_blocks(MoDDetectionModel(copy.deepcopy(spec), nc=4, verbose=False))
    assert len(routers) == 6 and all(r.capacity == 0.5 and r.gate == "unit" for r in routers)
