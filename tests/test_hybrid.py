"""The routed A2C2f (MoDA2C2f) and the multi-stride hybrid: exactness, routing per stride, sizes, capacities, record."""

import math

import pytest
import torch

from mod_vision.nn import MoDA2C2f, MoDDetectionModel, load_model_yaml, record_routing, routed_blocks, set_capacity
from mod_vision.nn.blocks import ABlockPair
from mod_vision.nn.routing import router_spec, tokens_for

torch.manual_seed(0)
HYBRID = "hybrid12-det-n.yaml"


def pair_twins(capacity):
    routed = ABlockPair(64, 2, 2.0, router_spec(capacity=capacity, gate="none")).eval()
    dense = ABlockPair(64, 2, 2.0, router_spec(capacity=None)).eval()
    dense.load_state_dict({k: v for k, v in routed.state_dict().items() if not k.startswith("router.")})
    return routed, dense


def test_routed_pair_at_capacity_one_without_gate_equals_its_dense_twin():
    routed, dense = pair_twins(1.0)
    x = torch.randn(2, 64, 5, 7)
    torch.testing.assert_close(routed(x), dense(x), rtol=1e-6, atol=1e-6)


def test_routed_pair_runs_attention_only_on_the_tokens_it_picks():
    routed, _ = pair_twins(0.25)
    x = torch.randn(2, 64, 6, 6)
    with record_routing() as rec:
        y = routed(x)
    (entry,) = rec.blocks
    assert entry.grid == (6, 6) and entry.index.shape == (2, tokens_for(0.25, 36))
    mask = entry.mask().view(2, 1, 6, 6).expand_as(x)
    position = x + routed.pe(x)  # the dense part: every token gets the depthwise position conv
    assert torch.equal(y[~mask], position[~mask])
    assert not torch.allclose(y[mask], position[mask])


def test_routed_pair_is_batch_independent():
    routed, _ = pair_twins(0.3)
    a, b = torch.randn(1, 64, 4, 5), torch.randn(1, 64, 4, 5)
    torch.testing.assert_close(routed(a), routed(torch.cat([a, b]))[:1], rtol=1e-5, atol=1e-5)


def test_moda2c2f_keeps_a2c2f_interface_and_refuses_c3k_mode():
    m = MoDA2C2f(64, 128, n=2, a2=True, area=4, router=router_spec(capacity=0.5)).eval()
    assert m(torch.randn(1, 64, 8, 8)).shape == (1, 128, 8, 8)
    assert len(routed_blocks(m)) == 2  # one router per ABlock pair
    dense = MoDA2C2f(64, 128, n=2, router=router_spec(capacity=None))
    assert not routed_blocks(dense)
    with pytest.raises(ValueError, match="needs a2=True"):
        MoDA2C2f(64, 128, n=1, a2=False)


@pytest.fixture(scope="module")
def hybrid():
    return MoDDetectionModel(load_model_yaml(HYBRID), nc=4, verbose=False).eval()


def test_hybrid_routes_at_two_strides_and_reports_each_grid(hybrid):
    with record_routing() as rec:
        hybrid(torch.randn(1, 3, 128, 96))
    grids = rec.grids()
    assert set(grids) == {(8, 6), (4, 3)}  # stride 16 and stride 32
    n = {g: g[0] * g[1] for g in grids}
    done = sum(tokens_for(0.25, n[g]) for g in grids)  # (8, 6): 12 of 48 tokens; (4, 3): 3 of 12
    assert rec.token_share().item() == pytest.approx(done / sum(n[g] for g in grids))


@pytest.fixture(scope="module")
def patch_stem_hybrid():
    return MoDDetectionModel(load_model_yaml("hybrid11p-det-n.yaml"), nc=4, verbose=False).eval()


@pytest.mark.parametrize("hw", [(16, 16), (20, 44), (8, 8), (1, 1), (3, 5), (22, 46)])
@pytest.mark.parametrize("model", ["hybrid", "patch_stem_hybrid"])
def test_hybrid_takes_inputs_smaller_than_its_largest_stride(model, hw, request):
    """Also sizes under the 4x4 patch stem's kernel, and sizes that are no multiple of it (the model pads its input)."""
    out = request.getfixturevalue(model)(torch.zeros(1, 3, *hw))
    assert out[0].shape[:2] == (1, 4 + 4) and torch.isfinite(out[0]).all()


def test_per_block_capacities_for_a_multi_stage_model(hybrid):
    blocks = routed_blocks(hybrid)
    set_capacity(hybrid, [1.0] + [0.125] * (len(blocks) - 1))
    assert [b.capacity for b in blocks] == [1.0] + [0.125] * (len(blocks) - 1)
    set_capacity(hybrid, {len(blocks) - 1: 0.5})
    assert blocks[-1].capacity == 0.5
    with pytest.raises(ValueError, match=rf"3 capacities given for {len(blocks)} routed blocks \(layer 6 \(MoDA2C2f\): \d+, layer 8 \(MoDA2C2f\): \d+\)"):
        set_capacity(hybrid, [0.5] * 3)
    with pytest.raises(ValueError, match=r"indices \[99\] out of range .* \(layer 6 \(MoDA2C2f\)"):
        set_capacity(hybrid, {99: 0.5})
    set_capacity(hybrid, 0.25)


def test_hybrid_has_a_dense_twin_with_the_same_weights_layout():
    from mod_vision.nn.tasks import dense_twin_yaml

    twin_yaml = dense_twin_yaml(HYBRID)
    assert twin_yaml == "hybrid12-det-dense-n.yaml"
    routed = MoDDetectionModel(load_model_yaml(HYBRID), nc=4, verbose=False)
    twin = MoDDetectionModel(load_model_yaml(twin_yaml), nc=4, verbose=False)
    assert not routed_blocks(twin)
    routed_keys = {k for k in routed.state_dict() if ".router." not in k}
    assert routed_keys == set(twin.state_dict())


def test_hybrid_trains_one_step_with_the_aux_loss_on_both_grids():
    model = MoDDetectionModel(load_model_yaml(HYBRID), nc=4, verbose=False).train()
    from ultralytics.cfg import get_cfg

    model.args = get_cfg(overrides={})
    model.args.router_aux = 0.1
    batch = {"img": torch.rand(2, 3, 64, 64), "batch_idx": torch.tensor([0.0, 1.0]), "cls": torch.tensor([[0.0], [1.0]]),
             "bboxes": torch.tensor([[0.5, 0.5, 0.3, 0.3], [0.2, 0.3, 0.2, 0.2]])}  # fmt: skip
    loss, items = model.loss(batch)
    assert math.isfinite(float(loss.sum())) and "router_aux" in items
    loss.sum().backward()
    router = routed_blocks(model)[-1]  # a stride-32 block: its predictor learned from its own grid's target
    assert router.predictor.net[0].weight.grad.abs().sum() > 0
