"""Unit tests of the routing core: k per image, top-k selection, exactness, gradients, batch independence, the record."""

import math

import pytest
import torch
from timm.models.vision_transformer import Block

from mod_vision.nn import (
    MoDViTStage,
    RoutedBlock,
    check_capacity,
    record_routing,
    route_tokens,
    routed_blocks,
    router_aux_loss,
    set_dynamic,
    tokens_for,
)
from mod_vision.nn.routing import ObjectPredictor, object_tokens, router_spec
from mod_vision.nn.vit import routed_indices

torch.manual_seed(0)


def routed(dim=32, heads=2, capacity=0.25, gate="sigmoid"):
    return RoutedBlock(dim, heads, router_spec(capacity=capacity, gate=gate), qkv_bias=True).eval()


def run(block, x, **kw):
    """Forward with a record; returns (output, the block's one BlockRouting)."""
    with record_routing(**kw) as rec:
        y = block(x)
    assert len(rec) == 1
    return y, rec.blocks[0]


@pytest.mark.parametrize("n", [1, 7, 49, 100])
@pytest.mark.parametrize("capacity", [0.01, 0.125, 0.3, 0.5, 1.0])
def test_k_is_ceil_capacity_times_n_per_image(n, capacity):
    _, e = run(routed(capacity=capacity), torch.randn(3, n, 32))
    assert e.index.shape == (3, max(1, math.ceil(capacity * n)))
    assert tokens_for(capacity, n) == max(1, math.ceil(capacity * n))


def test_float_noise_does_not_add_a_token():
    assert tokens_for(0.1, 30) == 3  # 0.1 * 30 == 3.0000000000000004 in floating point


def test_selected_tokens_are_exactly_the_top_scores():
    block = routed(capacity=0.25)
    x = torch.randn(4, 40, 32)
    _, e = run(block, x)
    scores = block.router.scorer(x)
    for b in range(4):
        chosen = set(e.index[b].tolist())
        assert chosen == set(scores[b].topk(10).indices.tolist())
        assert e.index[b].tolist() == sorted(chosen)  # kept in raster order


def test_unselected_tokens_pass_unchanged_and_selected_change():
    block = routed(capacity=0.25)
    x = torch.randn(2, 40, 32)
    y, e = run(block, x)
    mask = e.mask()
    assert mask.sum(1).tolist() == [10, 10]
    assert torch.equal(y[~mask], x[~mask])
    assert not torch.allclose(y[mask], x[mask])


def test_capacity_one_without_gate_equals_plain_block_exactly():
    torch.manual_seed(1)
    block = routed(capacity=1.0, gate=False)
    plain = Block(32, 2, qkv_bias=True).eval()
    plain.load_state_dict({k: v for k, v in block.state_dict().items() if not k.startswith("router.")})
    x = torch.randn(3, 50, 32)
    assert torch.equal(block(x), plain(x))


def test_gate_scales_the_update_by_sigmoid_of_the_score():
    block = routed(capacity=1.0)
    plain_out = Block.forward(block, x := torch.randn(1, 8, 32))
    g = block.router.scorer(x).sigmoid().unsqueeze(-1)
    torch.testing.assert_close(block(x), x + g * (plain_out - x))


def test_gradients_reach_router_and_block():
    block = routed(capacity=0.5).train()
    x = torch.randn(2, 20, 32, requires_grad=True)
    block(x).square().sum().backward()
    assert block.router.scorer.net.weight.grad.abs().sum() > 0
    assert block.attn.qkv.weight.grad.abs().sum() > 0
    assert block.mlp.fc2.weight.grad.abs().sum() > 0
    assert x.grad.abs().sum() > 0


def test_batch_independence():
    stage = MoDViTStage(32, 32, depth=4, routed=2, router=router_spec(capacity=0.3)).eval()
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
        block.router.capacity = bad
    with pytest.raises(ValueError, match=r"range \(0, 1\]"):
        RoutedBlock(32, 2, router_spec(capacity=bad))


def test_capacity_is_changeable_after_construction():
    block = routed(capacity=0.5)
    block.router.capacity = 0.125
    assert run(block, torch.randn(1, 64, 32))[1].index.shape[1] == 8


def test_routing_pattern_every_other_block_first_dense():
    assert routed_indices(6, 2) == [1, 3, 5]
    assert routed_indices(6, 3) == [2, 5]
    assert routed_indices(6, 0) == []
    assert routed_indices(6, [0, 4]) == [0, 4]
    assert routed_indices(6, "1:") == [1, 2, 3, 4, 5]
    assert routed_indices(6, "0::2") == [0, 2, 4]
    with pytest.raises(ValueError, match="is not a slice"):
        routed_indices(6, "every")
    with pytest.raises(ValueError, match="outside a stage of depth 6"):
        routed_indices(6, [7])
    stage = MoDViTStage(64, 64, depth=4, routed=2, router=router_spec(capacity=[0.5, 0.25]))
    kinds = [type(b).__name__ for b in stage.blocks]
    assert kinds == ["Block", "RoutedBlock", "Block", "RoutedBlock"]
    assert [b.router.capacity for b in stage.blocks if isinstance(b, RoutedBlock)] == [0.5, 0.25]
    with pytest.raises(ValueError, match="3 capacities given for 2 routed blocks"):
        MoDViTStage(64, 64, depth=4, routed=2, router=router_spec(capacity=[0.5, 0.25, 0.1]))
    with pytest.raises(ValueError, match="keeps its width"):
        MoDViTStage(64, 32, depth=2)


@pytest.mark.parametrize("hw", [(1, 1), (3, 5), (7, 7), (10, 4)])
def test_stage_any_token_grid(hw):
    stage = MoDViTStage(32, 32, depth=2, routed=2, router=router_spec(capacity=0.25)).eval()
    x = torch.randn(2, 32, *hw)
    assert stage(x).shape == x.shape


# --- gates -------------------------------------------------------------------------------------------------------


def test_unit_gate_is_one_forward_but_trains_the_router():
    torch.manual_seed(2)
    unit = routed(capacity=0.5, gate="unit").train()
    ungated = routed(capacity=0.5, gate="none").train()
    ungated.load_state_dict(unit.state_dict())
    x = torch.randn(2, 30, 32)
    torch.testing.assert_close(unit(x), ungated(x), rtol=0, atol=1e-6)
    unit(x).square().sum().backward()
    assert unit.router.scorer.net.weight.grad.abs().sum() > 0


def test_unknown_gate_is_rejected_with_the_choices():
    with pytest.raises(ValueError, match=r"gate must be one of \('sigmoid', 'unit', 'none'\)"):
        RoutedBlock(32, 2, router_spec(gate="relu"))


# --- dynamic per-image k -----------------------------------------------------------------------------------------


def dynamic_block(bias: float = 0.0, bounds=(0.1, 1.0)):
    block = routed(capacity=0.5)
    block.router.predictor.net[-1].bias.data.fill_(bias)
    block.router.dynamic = bounds
    return block


def test_dynamic_k_is_the_tokens_above_threshold_within_bounds():
    block = dynamic_block()
    x = torch.randn(1, 50, 32)
    _, e = run(block, x)
    above = int((block.router.predictor(x) > 0).sum())
    assert e.index.shape[1] == min(max(above, 5), 50)
    assert e.valid is None  # one image: nothing padded
    # scores all far below / above the threshold: k clamps to the min / max capacity
    for bias, k in [(-50.0, 5), (50.0, 25)]:
        assert run(dynamic_block(bias, bounds=(0.1, 0.5)), x)[1].index.shape[1] == k


def test_dynamic_one_image_equals_static_at_its_own_k():
    block = dynamic_block()
    x = torch.randn(1, 40, 32)
    y, e = run(block, x)
    k = e.index.shape[1]
    block.router.dynamic = None
    block.router.capacity = k / 40
    torch.testing.assert_close(block(x), y, rtol=0, atol=0)


def test_dynamic_batch_pads_without_mixing_images():
    torch.manual_seed(3)
    block = dynamic_block()
    x = torch.randn(3, 40, 32)
    x[1] *= 3  # a different score distribution, so images ask for different k
    together, e = run(block, x)
    masks = e.mask()
    alone, ks = [], []
    for i in range(3):
        y, ei = run(block, x[i : i + 1])
        alone.append(y)
        ks.append(ei.index.shape[1])
    assert len(set(ks)) > 1, "the test needs images that ask for different k"
    assert masks.sum(1).tolist() == ks  # padding tokens are not counted as processed
    torch.testing.assert_close(together, torch.cat(alone), rtol=1e-5, atol=1e-5)
    assert torch.equal(together[~masks], x[~masks])


@pytest.mark.parametrize(
    "bounds, match",
    [((0.5, 0.1), "min 0.5 is above max 0.1"), ((0.1,), r"needs \[min, max\]"), (0.5, r"needs \[min, max\]"),
     ((-0.1, 1.0), r"min must be a float in the range \[0, 1\]"), ((0.0, 0.0), r"range \(0, 1\]")],
)
def test_set_dynamic_rejects_bad_bounds(bounds, match):
    stage = MoDViTStage(32, 32, depth=2, routed=2)
    with pytest.raises(ValueError, match=match):
        set_dynamic(stage, bounds)


def test_set_dynamic_and_back_to_static():
    stage = MoDViTStage(32, 32, depth=4, routed=2, router=router_spec(capacity=0.25)).eval()
    set_dynamic(stage, (0.1, 0.9), threshold=0.5)
    assert all(b.dynamic == (0.1, 0.9) and b.threshold == 0.5 for b in routed_blocks(stage))
    set_dynamic(stage, None)
    with record_routing() as rec:
        stage(torch.randn(2, 32, 5, 8))
    assert [m.sum(-1).tolist() for m in rec.masks()] == [[10, 10], [10, 10]]  # static k = ceil(0.25 * 40)


# --- masks, share and the auxiliary loss ------------------------------------------------------------------------


def test_record_masks_and_token_share_agree_with_k():
    stage = MoDViTStage(32, 32, depth=4, routed=2, router=router_spec(capacity=[0.5, 0.125])).eval()
    with record_routing() as rec:
        pass
    assert rec.token_share() is None  # nothing routed
    with record_routing() as rec:
        stage(torch.randn(2, 32, 4, 8))
    masks = rec.masks()
    assert [m.shape for m in masks] == [(2, 32), (2, 32)] and masks[0].dtype == torch.bool
    assert [m.sum(-1).tolist() for m in masks] == [[16, 16], [4, 4]]
    assert rec.grids() == [(4, 8), (4, 8)]
    torch.testing.assert_close(rec.token_share(), torch.full((2,), 20 / 64, dtype=torch.float64))


def test_nothing_is_recorded_or_kept_on_modules_without_a_record():
    """A forward without a record leaves every module as it was: its state_dict, and every other attribute (none added,
    none set anew, no container filled), so no routing outlives the call."""
    stage = MoDViTStage(32, 32, depth=2, routed=2, router=router_spec(capacity=0.5)).eval()

    def attributes() -> dict:  # each module's attributes but its parameters, buffers and submodules (the state_dict's)
        skip = {"_parameters", "_buffers", "_modules"}
        return {(name, k): v for name, m in stage.named_modules() for k, v in vars(m).items() if k not in skip}

    def contents(v):  # what a container holds, by identity
        if isinstance(v, dict):
            return [(k, id(x)) for k, x in v.items()]
        return [id(x) for x in v] if isinstance(v, (list, tuple, set)) else None

    before, attrs = {k: v.clone() for k, v in stage.state_dict().items()}, attributes()
    held = {k: contents(v) for k, v in attrs.items()}
    stage(torch.randn(1, 32, 4, 4))
    after = attributes()
    assert after.keys() == attrs.keys()
    assert [k for k, v in after.items() if v is not attrs[k] or contents(v) != held[k]] == []
    assert all(torch.equal(before[k], v) for k, v in stage.state_dict().items())


def test_route_tokens_is_a_pure_gather_block_scatter():
    x = torch.arange(2 * 5 * 3, dtype=torch.float32).view(2, 5, 3)
    index = torch.tensor([[0, 3], [4, 1]])
    y = route_tokens(x, index, lambda t: t * 10, gate=torch.tensor([[1.0, 0.5], [0.0, 1.0]]))
    expected = x.clone()
    expected[0, 0] = x[0, 0] * 10
    expected[0, 3] = x[0, 3] + 0.5 * 9 * x[0, 3]
    expected[1, 1] = x[1, 1] * 10  # image 1, gate 1 on token 1 and 0 on token 4
    torch.testing.assert_close(y, expected)
    assert torch.equal(x, torch.arange(30, dtype=torch.float32).view(2, 5, 3))  # input untouched
    # inputs= is what the block reads; the update is added to x
    z = route_tokens(x, index, lambda t: t + 1, inputs=x * 0)
    assert torch.equal(z[0, 0], x[0, 0] + 1) and torch.equal(z[0, 1], x[0, 1])


def test_an_owned_input_takes_the_updates_in_place_only_outside_autograd():
    """owned=True lets route_tokens write into the caller's new tensor instead of a copy when no gradient is recorded;
    otherwise, and for an expanded base (a parameter's rows), the input is never written."""
    index = torch.tensor([[1], [2]])
    fresh = lambda: torch.zeros(2, 4, 3)  # noqa: E731
    with torch.no_grad():
        x = fresh()
        y = route_tokens(x, index, lambda t: t + 1, owned=True)
        assert y.data_ptr() == x.data_ptr() and x[0, 1].eq(1).all() and x[0, 0].eq(0).all()
        x = fresh()
        y = route_tokens(x, index, lambda t: t + 1)  # not owned: a copy
        assert y.data_ptr() != x.data_ptr() and x.eq(0).all() and y[1, 2].eq(1).all()
        background = torch.zeros(3)
        base = background.expand(2, 4, 3)
        y = route_tokens(base, index, lambda t: torch.ones_like(t), owned=True, delta=True, inputs=base)
        assert background.eq(0).all() and y[0, 1].eq(1).all() and y.sum() == 6
    x = fresh().requires_grad_()
    x2 = x * 1  # a new tensor inside autograd: not written, so x2 stays what its backward expects
    y = route_tokens(x2, index, lambda t: t * 3, owned=True)
    assert x2.eq(0).all()
    y.sum().backward()
    assert x.grad[0, 1].eq(3).all() and x.grad[0, 0].eq(1).all()


def test_random_policy_keeps_k_and_the_learned_gate_but_not_the_ranking():
    torch.manual_seed(4)
    block = routed(capacity=0.25)
    x = torch.randn(8, 64, 32)
    _, learned = run(block, x)
    block.router.policy = "random"
    _, rand = run(block, x)
    assert rand.index.shape == learned.index.shape
    assert not torch.equal(rand.index, learned.index)
    with pytest.raises(ValueError, match="routing policy must be one of"):
        block.router.policy = "best"


def test_object_tokens_marks_every_cell_a_box_overlaps():
    # image 1 has a box spanning x 0.25-0.5 (columns 1.5-3 of 6) and y 0-0.5 (rows 0-2 of 4); image 0 has none
    boxes = torch.tensor([[0.375, 0.25, 0.25, 0.5]])
    target = object_tokens((4, 6), boxes, torch.tensor([1.0]), batch_size=2).view(2, 4, 6)
    expected = torch.zeros(2, 4, 6)
    expected[1, 0:2, 1:3] = 1  # column 1 is half covered: any overlap counts
    assert torch.equal(target, expected)
    # two overlapping boxes in one image count once; no box at all gives an all-zero target
    two = object_tokens((4, 6), boxes.repeat(2, 1), torch.tensor([0, 0]), batch_size=1)
    assert torch.equal(two, expected[1].view(1, -1))
    assert object_tokens((4, 6), torch.zeros(0, 4), torch.zeros(0), batch_size=3).sum() == 0


def test_aux_loss_teaches_the_predictor_object_cover_and_leaves_the_router_alone():
    stage = MoDViTStage(32, 32, depth=2, routed=2, router=router_spec(capacity=0.25)).train()
    router = routed_blocks(stage)[0]
    with record_routing(predictions=True) as rec:
        stage(torch.randn(2, 32, 4, 5))
    assert rec.grids() == [(4, 5)]
    predicted = rec.blocks[0].predicted.detach()
    boxes, image_index = torch.tensor([[0.5, 0.5, 0.2, 0.25]]), torch.tensor([1])
    loss = router_aux_loss(rec, boxes, image_index)
    target = object_tokens((4, 5), boxes, image_index, 2)
    assert target[0].sum() == 0 and target[1].sum() == 2  # the box covers cell column 2, rows 1-2
    pos_weight = torch.tensor(38 / 2)  # balanced: 38 background tokens for 2 object tokens in the batch
    expected = torch.nn.functional.binary_cross_entropy_with_logits(predicted, target, pos_weight=pos_weight)
    torch.testing.assert_close(loss.detach(), expected)
    loss.backward()
    assert router.predictor.net[0].weight.grad.abs().sum() > 0
    assert router.scorer.net.weight.grad is None and stage.blocks[1].attn.qkv.weight.grad is None
    with record_routing(predictions=True) as rec:
        stage.eval()(torch.randn(1, 32, 5, 5))
    assert router_aux_loss(rec, boxes, image_index) is None  # eval predictions carry no grad


def test_aux_loss_needs_the_token_grid():
    block = routed(capacity=0.5).train()  # run without a grid: nothing tells it the layout
    with record_routing(predictions=True) as rec:
        block(torch.randn(1, 12, 32))
    with pytest.raises(ValueError, match=r"12 tokens but no token grid"):
        router_aux_loss(rec, torch.zeros(0, 4), torch.zeros(0))


@pytest.mark.parametrize(
    "boxes, index",
    [
        (torch.tensor([[1.2, 1.3, 0.5, 0.5], [-0.5, 0.5, 0.2, 0.2]]), torch.tensor([0, 1])),  # outside the image
        (torch.tensor([[0.5, 0.5, 0.0, 0.0]]), torch.tensor([0])),  # zero area
        (torch.zeros(0, 4), torch.zeros(0)),  # no object in the batch
    ],
)
def test_aux_loss_is_finite_for_degenerate_ground_truth(boxes, index):
    stage = MoDViTStage(32, 32, depth=2, routed=2, router=router_spec(capacity=0.25)).train()
    with record_routing(predictions=True) as rec:
        stage(torch.randn(2, 32, 4, 4))
    loss = router_aux_loss(rec, boxes, index)
    assert torch.isfinite(loss)
    assert object_tokens((4, 4), boxes, index, 2).sum() == 0  # nothing outside the image or without area is marked


def test_object_predictor_sees_the_image_it_is_in():
    predictor = ObjectPredictor(8, 16)
    x = torch.randn(1, 10, 8)
    other = x.clone()
    other[0, 1:] += 1.0  # the same first token in a different image
    assert not torch.allclose(predictor(x)[0, 0], predictor(other)[0, 0])
    perm = torch.randperm(10)  # and no dependence on token order beyond that
    torch.testing.assert_close(predictor(x[:, perm]), predictor(x)[:, perm])


def test_trained_predictor_gives_empty_images_fewer_tokens_than_busy_ones():
    # Each image: a random background colour with noise, and 0-6 objects of random colours, each on a 2x2 cell patch.
    # Object and background colours come from the same distribution, so only the image's context tells them apart.
    torch.manual_seed(0)
    stage = MoDViTStage(16, 16, depth=1, routed="0:", router=router_spec(capacity=0.5))
    opt = torch.optim.Adam(stage.blocks[0].router.predictor.parameters(), 1e-2)

    def images(n_objects):
        x = torch.randn(len(n_objects), 16, 1, 1).expand(-1, -1, 8, 8) + 0.1 * torch.randn(len(n_objects), 16, 8, 8)
        boxes, index = [], []
        for i, n in enumerate(n_objects):
            for _ in range(n):
                r, c = torch.randint(0, 7, (2,)).tolist()
                x[i, :, r : r + 2, c : c + 2] = torch.randn(16, 1, 1)
                boxes.append([(c + 1) / 8, (r + 1) / 8, 2 / 8, 2 / 8])
                index.append(i)
        return x, torch.tensor(boxes).view(-1, 4), torch.tensor(index)

    for _ in range(150):
        x, boxes, index = images(torch.randint(0, 7, (16,)).tolist())
        with record_routing(predictions=True) as rec:
            stage.train()(x)
        loss = router_aux_loss(rec, boxes, index)
        opt.zero_grad()
        loss.backward()
        opt.step()
    set_dynamic(stage, (1 / 64, 1.0))
    stage.eval()

    def share(n_objects):  # one image at a time, so each share is the image's own
        with record_routing() as rec:
            stage(images([n_objects])[0])
        return rec.token_share().item()

    def shares(n_objects):
        return [share(n_objects) for _ in range(10)]

    empty, few, busy = shares(0), shares(2), shares(6)
    assert max(empty) < min(busy), (empty, busy)
    assert sum(empty) < sum(few) < sum(busy)


def test_static_inference_does_not_run_the_predictor():
    block = routed(capacity=0.5)
    calls = []
    block.router.predictor.register_forward_hook(lambda *a: calls.append(1))
    run(block, torch.randn(1, 20, 32))
    assert not calls
    block.router.dynamic = (0.1, 1.0)
    _, e = run(block, torch.randn(1, 20, 32), predictions=True)
    assert calls and e.predicted.shape == (1, 20)


@pytest.mark.parametrize("hidden", [-64, 1.5])
def test_bad_router_hidden_is_refused_at_build(hidden):
    with pytest.raises(ValueError, match=f"router_hidden must be 0 .* got {hidden}"):
        MoDViTStage(32, 32, depth=2, routed=2, router=router_spec(router_hidden=hidden))
