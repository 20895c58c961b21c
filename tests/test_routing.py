"""Unit tests of the routing rule: k per image, top-k selection, exactness, gradients, batch independence."""

import math

import pytest
import torch
from timm.models.vision_transformer import Block

from mod_vision.nn import MoDViTStage, RoutedBlock, check_capacity, tokens_for
from mod_vision.nn.vit import routed_indices

torch.manual_seed(0)


def routed(dim=32, heads=2, capacity=0.25, **kw):
    return RoutedBlock(dim, heads, capacity=capacity, qkv_bias=True, **kw).eval()


@pytest.mark.parametrize("n", [1, 7, 49, 100])
@pytest.mark.parametrize("capacity", [0.01, 0.125, 0.3, 0.5, 1.0])
def test_k_is_ceil_capacity_times_n_per_image(n, capacity):
    block = routed(capacity=capacity)
    block(torch.randn(3, n, 32))
    assert block.last_index.shape == (3, max(1, math.ceil(capacity * n)))
    assert tokens_for(capacity, n) == max(1, math.ceil(capacity * n))


def test_float_noise_does_not_add_a_token():
    assert tokens_for(0.1, 30) == 3  # 0.1 * 30 == 3.0000000000000004 in floating point


def test_selected_tokens_are_exactly_the_top_scores():
    block = routed(capacity=0.25)
    x = torch.randn(4, 40, 32)
    block(x)
    scores = block.router(x)
    for b in range(4):
        chosen = set(block.last_index[b].tolist())
        assert chosen == set(scores[b].topk(10).indices.tolist())
        assert block.last_index[b].tolist() == sorted(chosen)  # kept in raster order


def test_unselected_tokens_pass_unchanged_and_selected_change():
    block = routed(capacity=0.25)
    x = torch.randn(2, 40, 32)
    y = block(x)
    mask = torch.zeros(2, 40, dtype=torch.bool)
    mask.scatter_(1, block.last_index, True)
    assert torch.equal(y[~mask], x[~mask])
    assert not torch.allclose(y[mask], x[mask])


def test_capacity_one_without_gate_equals_plain_block_exactly():
    torch.manual_seed(1)
    block = routed(capacity=1.0, gate=False)
    plain = Block(32, 2, qkv_bias=True).eval()
    plain.load_state_dict({k: v for k, v in block.state_dict().items() if not k.startswith(("router.", "_extra"))})
    x = torch.randn(3, 50, 32)
    assert torch.equal(block(x), plain(x))


def test_gate_scales_the_update_by_sigmoid_of_the_score():
    block = routed(capacity=1.0)
    plain_out = Block.forward(block, x := torch.randn(1, 8, 32))
    g = block.router(x).sigmoid().unsqueeze(-1)
    torch.testing.assert_close(block(x), x + g * (plain_out - x))


def test_gradients_reach_router_and_block():
    block = routed(capacity=0.5).train()
    x = torch.randn(2, 20, 32, requires_grad=True)
    block(x).square().sum().backward()
    assert block.router.net.weight.grad.abs().sum() > 0
    assert block.attn.qkv.weight.grad.abs().sum() > 0
    assert block.mlp.fc2.weight.grad.abs().sum() > 0
    assert x.grad.abs().sum() > 0


def test_batch_independence():
    stage = MoDViTStage(32, 32, depth=4, routed=2, capacity=0.3).eval()
    a, b = torch.randn(1, 32, 6, 7), torch.randn(1, 32, 6, 7)
    alone = stage(a)
    together = stage(torch.cat([a, b, b]))[:1]
    torch.testing.assert_close(alone, together, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("bad", [0, 0.0, -0.1, 1.01, 2, "0.5", None, True, float("nan")])
def test_capacity_out_of_range_raises_value_error_naming_the_range(bad):
    with pytest.raises(ValueError, match=r"range \(0, 1\]"):
        check_capacity(bad)
    block = routed()
    with pytest.raises(ValueError, match=r"range \(0, 1\]"):
        block.capacity = bad
    with pytest.raises(ValueError, match=r"range \(0, 1\]"):
        RoutedBlock(32, 2, capacity=bad)


def test_capacity_is_changeable_after_construction():
    block = routed(capacity=0.5)
    block.capacity = 0.125
    block(torch.randn(1, 64, 32))
    assert block.last_index.shape[1] == 8


def test_routing_pattern_every_other_block_first_dense():
    assert routed_indices(6, 2) == [1, 3, 5]
    assert routed_indices(6, 3) == [2, 5]
    assert routed_indices(6, 0) == []
    assert routed_indices(6, [0, 4]) == [0, 4]
    with pytest.raises(ValueError, match="outside a stage of depth 6"):
        routed_indices(6, [7])
    stage = MoDViTStage(64, 64, depth=4, routed=2, capacity=[0.5, 0.25])
    kinds = [type(b).__name__ for b in stage.blocks]
    assert kinds == ["Block", "RoutedBlock", "Block", "RoutedBlock"]
    assert [b.capacity for b in stage.blocks if isinstance(b, RoutedBlock)] == [0.5, 0.25]
    with pytest.raises(ValueError, match="3 capacities given for 2 routed blocks"):
        MoDViTStage(64, 64, depth=4, routed=2, capacity=[0.5, 0.25, 0.1])
    with pytest.raises(ValueError, match="keeps its width"):
        MoDViTStage(64, 32, depth=2)


@pytest.mark.parametrize("hw", [(1, 1), (3, 5), (7, 7), (10, 4)])
def test_stage_any_token_grid(hw):
    stage = MoDViTStage(32, 32, depth=2, routed=2, capacity=0.25).eval()
    x = torch.randn(2, 32, *hw)
    assert stage(x).shape == x.shape
