"""The MoDNeXt family: routed patch merges, routed MLP stages and the routed Detect head, and the routing controls."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mod_vision import MoDYOLO
from mod_vision.nn.blocks import MoDDown, MoDNeXt
from mod_vision.nn.head import RoutedDetect
from mod_vision.nn.reuse import TokenReuse, reusing
from mod_vision.nn.routing import (
    dynamic_bounds, record_routing, routed_blocks, router_spec, set_dynamic, set_policy, set_routing,
)
from mod_vision.nn.tasks import MoDDetectionModel


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return MoDDetectionModel("modnext-det-n.yaml", nc=4, verbose=False).eval()


def same_weights(routed: torch.nn.Module, dense: torch.nn.Module) -> None:
    state = {k: v for k, v in routed.state_dict().items() if "router" not in k}
    dense.load_state_dict(state)


def test_patch_merge_is_a_2x2_stride_2_merge_on_its_base():
    torch.manual_seed(0)
    x = torch.randn(2, 8, 10, 12)
    mean = MoDDown(8, 16, router_spec(capacity=None)).eval()
    merged = mean.merge(F.pixel_unshuffle(x, 2))  # the 1x1 conv over the stacked 2x2 pixels
    assert torch.allclose(mean(x), F.avg_pool2d(x, 2).repeat(1, 2, 1, 1) + merged, atol=1e-6)
    depthwise = MoDDown(8, 16, router_spec(capacity=None), base="depthwise").eval()
    assert torch.allclose(depthwise(x), depthwise.base(x) + depthwise.merge(F.pixel_unshuffle(x, 2)), atol=1e-6)
    assert mean(torch.randn(1, 8, 9, 11)).shape == (1, 16, 5, 6)  # odd grids round up, as a strided conv
    with pytest.raises(ValueError, match="multiple of c1"):
        MoDDown(8, 12, base="depthwise")


@pytest.mark.parametrize("channels_last", [False, True])
def test_patches_are_the_unshuffled_rows_of_the_tokens_asked_for(channels_last):
    """The merge's input for routed tokens is read from the map, as pixel_unshuffle would lay it out, in either of the
    layouts a MoDDown receives (a conv's output, or a token map from `as_map`)."""
    from mod_vision.nn.blocks import patches

    x = torch.randn(2, 3, 6, 8)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    index = torch.tensor([[0, 5, 11], [3, 4, 7]])
    unshuffled = F.pixel_unshuffle(x, 2).flatten(2).transpose(1, 2)
    assert torch.equal(patches(x, index), unshuffled.gather(1, index[..., None].expand(-1, -1, 12)))


@pytest.mark.parametrize("layer", ["down", "down-mean-router", "stage", "stage-reads-3", "head"])
def test_routed_layer_at_capacity_1_without_gate_is_its_dense_twin(layer):
    torch.manual_seed(0)
    ungated, no_router = router_spec(capacity=1.0, gate="none"), router_spec(capacity=None)
    if layer.startswith("down"):
        reads = "mean" if layer == "down-mean-router" else "patch"
        routed, dense = MoDDown(8, 16, ungated, router_reads=reads), MoDDown(8, 16, no_router)
        x = torch.randn(2, 8, 6, 10)
        assert routed.router.scorer.net.in_features == (8 if reads == "mean" else 32)
    elif layer.startswith("stage"):
        reads = 3 if layer == "stage-reads-3" else 1
        routed, dense = MoDNeXt(16, 16, 2, router=ungated, reads=reads), MoDNeXt(16, 16, 2, router=no_router, reads=reads)
        x = torch.randn(2, 16, 5, 7)
    else:
        routed, dense = RoutedDetect(4, 16, False, (16, 32), ungated), RoutedDetect(4, 16, False, (16, 32), no_router)
        x = [torch.randn(2, 16, 8, 8), torch.randn(2, 32, 4, 4)]
    same_weights(routed.eval(), dense.eval())
    with torch.no_grad():
        a, b = routed(x), dense(x)
    if layer == "head":
        a, b = a[1], b[1]  # the raw outputs (dict) beside the decoded ones
        assert torch.allclose(a["boxes"], b["boxes"], atol=1e-5) and torch.allclose(a["scores"], b["scores"], atol=1e-5)
    else:
        assert torch.allclose(a, b, atol=1e-5)


def test_a_token_no_router_picks_costs_no_merge_and_no_mlp():
    """At capacity 1/N only one token per image is merged or run through the MLPs: every other output token is its
    dense part alone (the depthwise base, the position term)."""
    torch.manual_seed(0)
    down = MoDDown(8, 16, router_spec(capacity=1e-6)).eval()
    x = torch.randn(1, 8, 6, 6)
    with torch.no_grad(), record_routing() as rec:
        out = down(x)
    picked = rec.blocks[0].index[0].item()
    base = F.avg_pool2d(x, 2).repeat(1, 2, 1, 1).flatten(2)[0]
    changed = (out.flatten(2)[0] != base).any(0)
    assert changed.nonzero().flatten().tolist() == [picked]


def test_a_stage_reading_neighbourhoods_is_a_3x3_convolution_on_routed_tokens_only():
    """MoDNeXt(reads=3): a routed token's first MLP layer is a 3x3 convolution of the stage's mixed map (zero beyond
    its border); a token the router skips is the mixed map alone."""
    from mod_vision.nn.blocks import pointwise

    torch.manual_seed(0)
    stage = MoDNeXt(8, 8, 1, mlp_ratio=2, router=router_spec(capacity=0.3, gate="none"), reads=3).eval()
    x = torch.randn(1, 8, 5, 6)
    with torch.no_grad(), record_routing() as rec:
        out = stage(x).flatten(2)[0].T  # (N, C)
        mixed = x + stage.pe(x)
        mlp = stage.blocks[0]
        hidden = F.conv2d(mixed, mlp.fc1.conv.weight.view(-1, 8, 3, 3), padding=1)  # the 3x3 convolution
        hidden = mlp.fc1.act(mlp.fc1.bn(hidden)).flatten(2)[0].T
        expected = mixed.flatten(2)[0].T + pointwise(mlp.fc2, hidden[None])[0]
    routed = rec.blocks[0].mask()[0]
    assert routed.sum() == 9  # ceil(0.3 * 30)
    assert torch.allclose(out[routed], expected[routed], atol=1e-5)
    assert torch.equal(out[~routed], mixed.flatten(2)[0].T[~routed])
    with pytest.raises(ValueError, match=r"MoDNeXt reads=1 \(each token\) or 3 \(its 3x3 neighbourhood\), got 5"):
        MoDNeXt(8, 8, reads=5)


def test_the_head_outputs_its_background_where_nothing_is_routed():
    torch.manual_seed(0)
    head = RoutedDetect(4, 16, False, (16,), router_spec(capacity=0.25)).eval()
    head.stride = torch.tensor([8.0])
    head.bias_init()
    with torch.no_grad(), record_routing() as rec:
        raw = head([torch.randn(1, 16, 4, 4)])[1]
    out = torch.cat([raw["boxes"], raw["scores"]], 1)[0].T  # (N, no)
    routed = rec.blocks[0].mask()[0]
    assert routed.sum() == 4  # ceil(0.25 * 16)
    assert torch.equal(out[~routed], head.background[0].expand(12, -1))
    assert not torch.equal(out[routed], head.background[0].expand(4, -1))


@pytest.mark.parametrize("capacity", [0.25, None])
def test_the_head_decodes_routed_positions_as_detect_decodes_every_position(capacity):
    """In inference RoutedDetect computes box distances (DFL) only where it routed, the background's elsewhere; the
    decoded boxes are Detect's decoding of the same raw outputs (routed, and the dense twin)."""
    from ultralytics.nn.modules.head import Detect

    torch.manual_seed(0)
    head = RoutedDetect(4, 16, False, (16, 32), router_spec(capacity=capacity, gate="none")).eval()
    head.stride = torch.tensor([8.0, 16.0])
    head.bias_init()
    with torch.no_grad():
        head.background.add_(torch.randn_like(head.background))  # a trained background is not the priors
        y, raw = head([torch.randn(2, 16, 8, 8), torch.randn(2, 32, 4, 4)])
        plain = {k: v for k, v in raw.items() if k != "distances"}
        expected = Detect._get_decode_boxes(head, plain)
    assert raw["distances"].shape == (2, 4, 80)
    torch.testing.assert_close(y[:, :4], expected, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(y[:, 4:], raw["scores"].sigmoid())
    head.train()
    assert "distances" not in head([torch.randn(2, 16, 8, 8), torch.randn(2, 32, 4, 4)])  # training: raw outputs only
    gated = RoutedDetect(4, 16, False, (16,), router_spec(capacity=0.25, gate="sigmoid")).eval()
    gated.stride = torch.tensor([8.0])
    with torch.no_grad():
        assert "distances" not in gated([torch.randn(1, 16, 4, 4)])[1]  # a gate scales the update after the branches


def test_routing_none_removes_every_routed_layer_and_detects_nothing(model):
    x = torch.rand(1, 3, 96, 128)
    set_policy(model, "none")
    try:
        with torch.no_grad(), record_routing() as rec:
            y = model(x)[0]
    finally:
        set_policy(model, "topk")
    assert len(rec) == len(routed_blocks(model)) == 11
    assert float(rec.token_share()[0]) == 0.0
    # no routed head position: every anchor of a level scores that level's background
    head = model.model[-1]
    per_level = y[0, 4:].split([h * w for h, w in ((12, 16), (6, 8), (3, 4))], dim=1)
    for level, scores in enumerate(per_level):
        assert torch.allclose(scores, head.background[level, 64:].sigmoid()[:, None].expand_as(scores))
    with torch.no_grad():
        assert not torch.equal(model(x)[0], y)  # routed, the same model computes something


def test_random_policy_is_seeded(model):
    x = torch.rand(1, 3, 96, 128)
    set_dynamic(model, None)
    indices = []
    try:
        for seed in (0, 0, 1):
            set_policy(model, "random", seed)
            with torch.no_grad(), record_routing() as rec:
                model(x)
            indices.append(torch.cat([e.index.flatten() for e in rec.blocks]))
    finally:
        set_policy(model, "topk")
        set_dynamic(model, (0.0, 1.0))
    assert torch.equal(indices[0], indices[1])
    assert not torch.equal(indices[0], indices[2])


def test_the_yaml_sets_a_per_image_budget_that_training_does_not_use(model):
    assert all(r.dynamic == (0.0, 1.0) for r in routed_blocks(model))
    x = torch.rand(2, 3, 64, 64)
    train = MoDDetectionModel("modnext-det-n.yaml", nc=4, verbose=False).train()
    # as the trainer sets its batch capacity: the YAML's per-image budget stays on (a capacity alone would end it)
    set_routing(train, capacity=0.5, dynamic=dynamic_bounds(train))
    assert dynamic_bounds(train) == (0.0, 1.0)
    with record_routing() as rec:
        train(x)
    # static top-k at the training capacity in every block, whatever the (untrained) predictors say
    assert all(e.valid is None and e.index.shape[1] == -(-e.tokens // 2) for e in rec.blocks)


def test_token_reuse_covers_every_routed_layer(model):
    """Under token reuse the first frame is the plain forward; a repeated frame recomputes no token in any routed layer
    (merges, MLP stages, head) and gives the same detections; a local change recomputes some tokens, not all."""
    x = torch.rand(1, 3, 96, 128)
    with torch.no_grad(), record_routing() as plain_rec:
        plain = model(x)[0]
    cache = TokenReuse(threshold=0.05)
    outs, shares = [], []
    moved = x.clone()
    moved[..., 40:56, 48:64] = 1 - moved[..., 40:56, 48:64]
    for frame in (x, x, moved):
        cache.begin(frame)
        with torch.no_grad(), reusing(cache), record_routing() as rec:
            outs.append(model(frame)[0])
        shares.append(float(rec.token_share()[0]))
    assert torch.allclose(outs[0], plain, atol=1e-4)
    assert shares[0] == pytest.approx(float(plain_rec.token_share()[0]))
    assert shares[1] == 0.0 and torch.allclose(outs[1], plain, atol=1e-4)
    assert 0.0 < shares[2] < shares[0]


def test_routing_none_on_a_dense_model_is_one_clear_error(tmp_path):
    dense = MoDYOLO("modnext-det-dense-n.yaml")
    with pytest.raises(ValueError, match=r"routing='none' needs a routed model; this one has no routed blocks"):
        dense.predict(torch.rand(1, 3, 64, 64), routing="none", verbose=False)


def test_the_object_predictor_reads_each_token_with_its_image_mean():
    from mod_vision.nn.routing import ObjectPredictor, Scorer

    torch.manual_seed(0)
    predictor = ObjectPredictor(32, 16)
    x = torch.randn(2, 50, 32)
    joined = torch.cat([x, x.mean(1, keepdim=True).expand_as(x)], -1)  # the definition: [token, image mean]
    assert torch.allclose(predictor(x), Scorer.forward(predictor, joined), atol=1e-6)


def test_frame_cost_tool_times_three_frames_against_yolo11n_and_profiles_the_flat_one(tmp_path):
    from tests.test_dynamic_tools import _tool

    out = tmp_path / "cost.md"
    _tool("frame_cost").main(["modnext-det-n.yaml", "--imgsz", "64", "--runs", "1", "--out", str(out)])
    text = out.read_text()
    rows = {line.split("|")[2].strip(): line.split("|") for line in text.splitlines() if line.startswith("| 64 |")}
    assert {"flat", "sparse", "busy"} <= set(rows)
    # a flat frame is all constant cells: its routers take the per-image budget's minimum, never more than a busy frame
    assert float(rows["flat"][3]) <= float(rows["busy"][3])
    assert float(rows["busy"][6]) == pytest.approx(1.0)  # the busy frame is its own reference
    assert "routers (decisions, padding statistics)" in text and "position terms (dense depthwise)" in text
    assert "L14 RoutedDetect" in text
    assert "against" not in text


def test_frame_cost_tool_times_a_second_design_in_the_same_round_robin(tmp_path):
    from tests.test_dynamic_tools import _tool
    from tests.test_shared_decision import OWN

    out = tmp_path / "cost.md"
    _tool("frame_cost").main(["modnext-det-n.yaml", "--against", OWN, "--imgsz", "64", "--runs", "1",
                              "--out", str(out)])
    lines = out.read_text().splitlines()
    header = [c.strip() for c in next(line for line in lines if line.startswith("| imgsz | frame")).split("|")]
    table = lines[lines.index(next(line for line in lines if line.startswith("| imgsz | frame"))):]
    table = table[: table.index("")]  # the frame table, up to the profile's
    rows = {r[2]: r for r in ([c.strip() for c in line.split("|")] for line in table if line.startswith("| 64 |"))}
    col = {name: header.index(name) for name in ("ms (against)", "vs busy (against)", "speed vs against",
                                                 "token share (against)", "ms (ours)")}
    assert set(rows) == {"flat", "sparse", "busy"}
    assert float(rows["busy"][col["vs busy (against)"]]) == pytest.approx(1.0)
    for r in rows.values():  # the speed ratio is the two times' ratio, within what rounding them to 0.1 ms leaves
        against, ours = float(r[col["ms (against)"]]), float(r[col["ms (ours)"]])
        low, high = (against - 0.05) / (ours + 0.05), (against + 0.05) / max(ours - 0.05, 1e-9)
        assert low - 0.01 <= float(r[col["speed vs against"]].rstrip("x")) <= high + 0.01
        assert 0.0 < float(r[col["token share (against)"]]) <= 1.0


def test_a_router_pickled_before_the_random_source_existed_still_routes():
    from mod_vision.nn.routing import TokenRouter

    router = TokenRouter(8, capacity=0.5)
    del router.__dict__["random_source"]  # what unpickling an older checkpoint's router gives
    router.policy = "random"
    index, valid = router.select(torch.randn(2, 10), None)
    assert index.shape == (2, 5) and valid is None


def test_bad_layer_arguments_are_clear_errors():
    with pytest.raises(ValueError, match=r"MoDNeXt keeps its width: input 16 and output 32 channels differ"):
        MoDNeXt(16, 32)
    with pytest.raises(ValueError, match=r"MoDDown base must be 'depthwise' or 'mean', got 'max'"):
        MoDDown(8, 16, base="max")
    with pytest.raises(ValueError, match=r"MoDDown router_reads must be 'patch' or 'mean', got 'pixels'"):
        MoDDown(8, 16, router_reads="pixels")
    with pytest.raises(ValueError, match=r"RoutedDetect has no one-to-one \(end2end\) branch"):
        RoutedDetect(4, 16, True, (16,))


@pytest.mark.slow
@pytest.mark.parametrize("rank", [0.0, 1.0])
def test_training_ungated_routers_without_the_ranking_loss_says_so(sample_yaml, tmp_path, rank):
    """modnext-det's routed updates are not gated, so only the ranking loss trains its scorers: training it with
    router_rank=0 says in one line that they would keep their initial weights; with the loss on, nothing is said."""
    import logging

    from ultralytics.utils import LOGGER

    from tests.conftest import TRAIN_ARGS

    said = []
    handler = logging.Handler()
    handler.emit = lambda record: said.append(record.getMessage())
    LOGGER.addHandler(handler)
    try:
        MoDYOLO("modnext-det-n.yaml").train(data=str(sample_yaml), project=str(tmp_path), name="r", router_rank=rank,
                                            **TRAIN_ARGS)
    finally:
        LOGGER.removeHandler(handler)
    lines = [m for m in said if "routers have no gate" in m]
    if rank:
        assert lines == []
    else:
        assert len(lines) == 1 and "router_rank=0: 11 routers have no gate" in lines[0]
        assert lines[0].endswith("they would keep their initial weights; train with router_rank=1.0")


def test_heatmaps_show_every_routed_layer_on_its_own_grid(model):
    """A modnext forward's routing maps hold its 11 routed layers on their own grids (strides 8, 16 and 32), each with
    exactly the tokens its router took, and the depth picture counts them on the finest grid."""
    from mod_vision.heatmap import routing_maps

    from mod_vision.nn.routing import routing_kept

    with routing_kept(model), torch.no_grad(), record_routing() as rec:
        set_routing(model, capacity=0.25)
        model(torch.rand(1, 3, 96, 128))
    maps = routing_maps(rec, (96, 128), [(96, 128)])[0]
    assert len(maps.blocks) == 11
    assert {m.shape for m in maps.blocks} == {(12, 16), (6, 8), (3, 4)}
    for m, entry in zip(maps.blocks, rec.blocks):
        assert m.sum() == entry.index.shape[1] == -(-m.size // 4)
    assert maps.grid == (12, 16) and maps.depth.max() <= 11 and maps.depth.sum() > 0


def test_flops_count_the_routed_work_at_each_capacity(model):
    """FLOP counting (torch's module tracker) runs through every routed layer in inference, and counts less routed work
    at a lower capacity: the neighbourhood MLPs and the routed head included."""
    from mod_vision.flops import capacity_table

    (c1, full), (c2, quarter) = capacity_table(model, 96, (1.0, 0.25))
    assert (c1, c2) == (1.0, 0.25) and 0 < quarter < 0.5 * full
