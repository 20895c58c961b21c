"""An empty scene costs almost nothing: a per-image budget whose min is 0 routes no token of an image whose predictors
want none, and a batch where no image wants one skips the routed work; and the eager path that reads 3x3
neighbourhoods pixel-major (no transposing copy) computes what the channel-major path computes."""

from __future__ import annotations

import pytest
import torch

from mod_vision.nn.blocks import NeighbourhoodMLP, centre, neighbourhoods, pixel_major_weight
from mod_vision.nn.reuse import TokenReuse, reusing
from mod_vision.nn.routing import (
    TokenRouter, record_routing, routed_blocks, routing_input, set_dynamic, set_policy, set_routing,
)
from mod_vision.nn.tasks import MoDDetectionModel

YAML = "modnext-det-n.yaml"


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return MoDDetectionModel(YAML, nc=4, verbose=False).eval()


def test_the_yaml_budget_lets_an_image_route_nothing(model):
    assert all(r.dynamic == (0.0, 1.0) for r in routed_blocks(model))


def counting(calls: list):
    def block(t, attn_mask=None):
        calls.append(t.shape[1])
        return t + 1
    return block


def test_a_zero_floor_skips_the_block_when_no_image_wants_a_token_and_pads_when_one_does():
    torch.manual_seed(0)
    router = TokenRouter(8, capacity=0.5, gate="none").eval()
    router.dynamic = (0.0, 1.0)
    x = torch.randn(2, 16, 8)
    with torch.no_grad():
        router.predictor.net[-1].bias.fill_(-50.0)  # no token is wanted
        calls = []
        with record_routing() as rec:
            out = router(x, counting(calls), (4, 4))
        assert calls == [] and out is x  # the block never ran, the tokens pass unchanged
        assert rec.blocks[0].index.shape == (2, 0) and float(rec.token_share()[0]) == 0.0
        router.dynamic = (0.001, 1.0)  # a floor above 0 routes at least one token per image
        calls = []
        router(x, counting(calls), (4, 4))
        assert calls == [1]
        # one image wants tokens, the other none: the batch pads to the first's k, the second keeps its tokens
        router.dynamic = (0.0, 1.0)
        router.predictor.forward = lambda t: torch.tensor([[5.0], [-5.0]]).expand(2, 16)  # image 0 wants every token
        calls = []
        out = router(x, counting(calls), (4, 4))
        assert calls == [16]
        assert torch.equal(out[0], x[0] + 1) and torch.equal(out[1], x[1])


def test_an_empty_frame_through_the_model_equals_the_routed_compute_removed(model):
    flat = torch.full((1, 3, 96, 128), 0.4)  # every cell one colour: padding, which no budget wants
    with torch.no_grad(), record_routing() as rec:
        empty = model(flat)[0]
    assert len(rec) == 11 and float(rec.token_share()[0]) == 0.0
    assert all(e.index.shape[1] == 0 for e in rec.blocks)
    set_policy(model, "none")
    try:
        with torch.no_grad():
            removed = model(flat)[0]
    finally:
        set_policy(model, "topk")
    assert torch.equal(empty, removed)
    # the same frame with a floor routes tokens and gives other outputs
    set_dynamic(model, (0.01, 1.0))
    try:
        with torch.no_grad(), record_routing() as rec:
            floored = model(flat)[0]
    finally:
        set_dynamic(model, (0.0, 1.0))
    assert float(rec.token_share()[0]) > 0.0 and not torch.equal(floored, empty)


def test_a_batch_with_an_empty_frame_gives_each_image_its_own_result(model):
    busy = torch.rand(1, 3, 96, 128, generator=torch.Generator().manual_seed(1))
    flat = torch.full((1, 3, 96, 128), 0.4)
    set_routing(model, threshold=-3.0)  # the untrained predictors want tokens of the busy frame
    try:
        with torch.no_grad():
            alone = [model(x)[0] for x in (busy, flat)]
            together = model(torch.cat([busy, flat]))[0]
    finally:
        set_routing(model, threshold=0.0)
    torch.testing.assert_close(together, torch.cat(alone), rtol=1e-4, atol=1e-3)


def test_token_reuse_runs_an_empty_frame(model):
    flat = torch.full((1, 3, 96, 128), 0.4)
    with torch.no_grad():
        plain = model(flat)[0]
    cache = TokenReuse(threshold=0.05)
    for _ in range(2):
        cache.begin(flat)
        with torch.no_grad(), reusing(cache), record_routing() as rec:
            out = model(flat)[0]
        assert float(rec.token_share()[0]) == 0.0
        torch.testing.assert_close(out, plain)


def test_pixel_major_neighbourhoods_are_the_channel_major_ones_reordered():
    torch.manual_seed(0)
    x = torch.randn(2, 5, 6, 7).contiguous(memory_format=torch.channels_last)
    index = torch.tensor([[0, 6, 20, 41], [3, 7, 35, 40]])  # corners, edges and inside
    with torch.no_grad():
        channel = neighbourhoods(x, index)
        pixel = neighbourhoods(x, index, pixel_major=True)
    assert torch.equal(pixel.view(2, 4, 9, 5).transpose(2, 3).reshape(2, 4, 45), channel)
    assert torch.equal(centre(pixel, True), centre(channel)) and torch.equal(centre(channel), x.flatten(2).transpose(
        1, 2).gather(1, index[..., None].expand(-1, -1, 5)))
    with pytest.raises(ValueError, match="channels-last map in eager inference"):
        neighbourhoods(x.contiguous(), index, pixel_major=True)


def test_the_pixel_major_weight_reads_the_same_convolution_and_follows_weight_changes():
    torch.manual_seed(0)
    mlp = NeighbourhoodMLP(4, 2.0).eval()
    x = torch.randn(1, 4, 5, 5).contiguous(memory_format=torch.channels_last)
    index = torch.tensor([[0, 12, 24]])
    with torch.no_grad():
        channel = mlp(neighbourhoods(x, index))
        pixel = mlp(neighbourhoods(x, index, pixel_major=True), pixel_major=True)
        torch.testing.assert_close(pixel, channel)
        first = pixel_major_weight(mlp.fc1)
        assert pixel_major_weight(mlp.fc1) is first  # reordered once
        mlp.fc1.conv.weight.mul_(2)  # a weight that changes (an optimizer step, an EMA update) is reordered again
        assert pixel_major_weight(mlp.fc1) is not first
        torch.testing.assert_close(mlp(neighbourhoods(x, index, pixel_major=True), pixel_major=True),
                                   mlp(neighbourhoods(x, index)))


def test_the_eager_fast_path_of_the_model_equals_its_plain_path(model):
    x = torch.rand(1, 3, 96, 128, generator=torch.Generator().manual_seed(2))
    set_routing(model, threshold=-3.0)
    try:
        with torch.inference_mode(), routing_input(x):
            fast = model(x)[0]
        with torch.enable_grad():  # autograd: the channel-major path, no eager shortcuts
            plain = model(x)[0].detach()
    finally:
        set_routing(model, threshold=0.0)
    torch.testing.assert_close(fast, plain, rtol=1e-4, atol=1e-3)


def test_results_csv_columns_stay_the_same_when_a_block_processed_nothing():
    """The trainer writes results.csv's header once: a validation where a block processed no token (an empty budget)
    must give the same routing columns as one where it did, its undefined lift and padding share as 0."""
    from mod_vision.engine.val import RoutedDetMetrics

    def columns(lift, share):
        m = RoutedDetMetrics()
        m.token_share = 0.0 if lift is None else 0.2
        m.routing = {"all": [{"object_lift": lift, "object_recall": 0.0 if lift is None else 0.9,
                              "padding_share": share}] * 2}
        return m.routing_results

    empty, busy = columns(None, None), columns(2.5, 0.1)
    assert list(empty) == list(busy) == ["routing/token_share"] + [
        f"routing/{k}_b{j}" for j in range(2) for k in ("object_lift", "object_recall", "padding_share")]
    assert empty["routing/object_lift_b1"] == 0.0 and busy["routing/object_lift_b1"] == 2.5
