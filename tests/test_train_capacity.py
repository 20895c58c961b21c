"""`train_capacity`: a deciding router that trains at its own capacity whatever the trainer draws for the others, and
routes at inference as any other router."""

from __future__ import annotations

import pytest
import torch

from mod_vision.nn.blocks import MoDNeXt
from mod_vision.nn.routing import TokenRouter, record_routing, routed_blocks, router_spec, routing_input, set_routing
from mod_vision.nn.tasks import MoDDetectionModel

YAML = """
nc: 4
scale: n
scales:
  n: [0.50, 0.25, 1024]
backbone:
  - [-1, 1, Conv, [128, 4, 4, 0]]
  - [-1, 1, MoDDown, [256, {capacity: 0.25, gate: none}]]
  - [-1, 2, MoDNeXt, [256, {capacity: 0.25, gate: none, decision: grid}]]
  - [-1, 1, MoDDown, [512, {capacity: 0.25, gate: none, train_capacity: 1.0}]]
  - [-1, 2, MoDNeXt, [512, {capacity: 0.25, gate: none, decision: grid}]]
head:
  - [[2, 4], 1, RoutedDetect, [nc, {capacity: 0.25, gate: none, decision: grid}]]
"""


@pytest.fixture
def model(tmp_path):
    path = tmp_path / "train-capacity-det.yaml"
    path.write_text(YAML)
    torch.manual_seed(0)
    return MoDDetectionModel(str(path), verbose=False)


def shares(model, x) -> list[float]:
    with record_routing() as rec:
        model(x)
    return [round(e.mask().float().mean().item(), 4) for e in rec.blocks]


def test_the_yaml_keyword_reaches_the_deciding_router_only(model):
    assert [r.train_capacity for r in routed_blocks(model)] == [None, None, 1.0, None, None, None]


def test_a_router_with_a_training_capacity_trains_at_it_whatever_the_others_are_set_to(model):
    x = torch.rand(2, 3, 128, 128)
    model.train()
    set_routing(model, capacity=0.25)
    # stride 8: the merge, its stage and the head level at 0.25; stride 16: the merge, its stage and the head level
    # at 1.0 (the stage and the head level take the merge's decision)
    assert shares(model, x) == [0.25, 0.25, 1.0, 1.0, 0.25, 1.0]
    set_routing(model, capacity=0.5)
    assert shares(model, x) == [0.5, 0.5, 1.0, 1.0, 0.5, 1.0]
    for r in routed_blocks(model):  # per-image training (dynamic_training) does not move it either
        r.train_dynamic = (0.0, 1.0)
    assert shares(model, x)[2:4] == [1.0, 1.0]


def test_at_inference_the_router_routes_as_set(model):
    x = torch.rand(2, 3, 128, 128)
    model.eval()
    set_routing(model, capacity=0.25)
    with torch.no_grad():
        assert shares(model, x) == [0.25] * 6


def test_a_capacity_of_one_in_training_equals_the_same_layer_without_the_option():
    torch.manual_seed(0)
    trained_full = MoDNeXt(8, 8, 1, router=router_spec(capacity=0.25, gate="none", train_capacity=1.0)).train()
    plain = MoDNeXt(8, 8, 1, router=router_spec(capacity=1.0, gate="none")).train()
    plain.load_state_dict(trained_full.state_dict(), strict=False)  # the capacity travels in the state: not it
    plain.router.capacity = 1.0
    x = torch.rand(2, 8, 4, 4)
    with routing_input(torch.rand(2, 3, 16, 16)):
        torch.testing.assert_close(trained_full(x), plain(x))


def test_bad_training_capacities_are_clear_errors_and_old_routers_have_none():
    with pytest.raises(ValueError, match=r"^train_capacity must be a float in the range \(0, 1\], got 1.5$"):
        router_spec(capacity=0.25, train_capacity=1.5)
    with pytest.raises(ValueError, match=r"train_capacity is a deciding router's \(decision: own\)"):
        router_spec(capacity=0.25, decision="grid", train_capacity=1.0)
    with pytest.raises(ValueError, match=r"^train_capacity must be a float in the range \(0, 1\], got 0$"):
        TokenRouter(8, train_capacity=0)
    old = TokenRouter(8)
    del old.__dict__["train_capacity"]  # pickled before the option existed
    assert old.train_capacity is None
