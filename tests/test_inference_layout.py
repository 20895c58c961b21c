"""Eager inference runs our models on channels-last maps, with faster paths that must compute what the plain paths
compute: the patch merge's router read as one strided convolution, neighbourhoods gathered without a padded copy,
the padding statistics reduced rows first, the head's levels joined once, and a fused stage's position term added by
its own kernel."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mod_vision.nn.blocks import MoDDown, MoDNeXt, neighbourhoods, pixel_major_patches
from mod_vision.nn.reuse import TokenReuse, reusing
from mod_vision.nn.routing import pixel_extremes, record_routing, router_spec
from mod_vision.nn.tasks import MoDDetectionModel, channels_last

CL = torch.channels_last


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return MoDDetectionModel("modnext-det-n.yaml", nc=4, verbose=False).eval()


def test_pixel_extremes_are_each_8x8_cells_channel_max_and_min_with_a_zero_border():
    img = torch.rand(2, 3, 100, 84, generator=torch.Generator().manual_seed(0))
    hi, lo, _ = pixel_extremes(img)
    padded = F.pad(img, (0, 4, 0, 4))  # to whole cells, as a patch embedding pads
    assert hi.shape == lo.shape == (2, 3, 13, 11)
    assert torch.equal(hi, F.max_pool2d(padded, 8))
    assert torch.equal(lo, -F.max_pool2d(-padded, 8))
    traced = torch.jit.trace(lambda x: pixel_extremes(x)[0], img)
    assert torch.equal(traced(img), hi)


def test_pixel_extremes_and_fill_are_the_same_on_a_channels_last_input():
    from mod_vision.nn.routing.padding import LETTERBOX_FILL

    img = torch.rand(2, 3, 100, 84, generator=torch.Generator().manual_seed(0))
    img[:, :, :21] = LETTERBOX_FILL  # a letterbox band that ends inside a cell row: cells of mixed fill
    img[1, :, 40:56, 8:24] = 0.25  # one-colour cells
    plain = pixel_extremes(img)
    assert 0 < float(plain[2][:, 0, 2].min()) < 1  # the band's last cell row is part fill
    for a, b in zip(plain, pixel_extremes(img.contiguous(memory_format=CL))):
        assert torch.equal(a, b)


@pytest.mark.parametrize("h,w", [(5, 6), (1, 7), (4, 1)])
def test_neighbourhoods_are_the_unfolded_3x3_input_of_the_tokens_asked_for_in_eager_and_traced_graphs(h, w):
    torch.manual_seed(0)
    x = torch.randn(2, 4, h, w).contiguous(memory_format=CL)
    index = torch.stack([torch.randperm(h * w)[: min(4, h * w)] for _ in range(2)])
    unfolded = F.unfold(x, 3, padding=1).transpose(1, 2)  # (B, N, C*9): channel-major, then row, then column
    expected = unfolded.gather(1, index[..., None].expand(-1, -1, unfolded.shape[-1]))
    assert torch.equal(neighbourhoods(x, index), expected)
    assert torch.equal(neighbourhoods(x.contiguous(), index), expected)  # a map in the other layout
    traced = torch.jit.trace(neighbourhoods, (x, index))  # exports pad the map instead
    assert torch.equal(traced(x, index), expected)


def test_pixel_major_patches_hold_the_unshuffled_patches_with_each_pixels_channels_together():
    x = torch.randn(2, 3, 4, 6).contiguous(memory_format=CL)
    unshuffled = F.pixel_unshuffle(x, 2).flatten(2).transpose(1, 2)  # channel 4c + 2i + j
    rows = pixel_major_patches(x)  # channel (2i + j) * C + c
    assert rows.shape == unshuffled.shape == (2, 6, 12)
    assert torch.equal(rows.view(2, 6, 4, 3).transpose(2, 3).reshape(2, 6, 12), unshuffled)


@pytest.mark.parametrize("dynamic,hidden", [(None, 0), ((0.05, 1.0), 0), ((0.05, 1.0), 8)])
def test_the_merge_routes_the_same_patches_to_the_same_values_on_a_channels_last_map(dynamic, hidden):
    """The patch router's readout as one 2x2 stride-2 convolution (channels-last, outside autograd) picks the same
    tokens, with the same scores, and outputs what the unshuffled path outputs, static or per image, with a linear
    scorer or an MLP one."""
    torch.manual_seed(0)
    down = MoDDown(8, 16, router_spec(capacity=0.25, gate="sigmoid", router_hidden=hidden)).eval()
    down.router.dynamic = dynamic
    x = torch.randn(2, 8, 12, 16)
    with torch.no_grad():
        with record_routing(scores=True, predictions=True) as plain_rec:
            plain = down(x)
        with record_routing(scores=True, predictions=True) as fast_rec:
            fast = down(x.contiguous(memory_format=CL))
    (p,), (f,) = plain_rec.blocks, fast_rec.blocks
    assert torch.equal(p.index, f.index)
    assert torch.allclose(p.scores, f.scores, atol=1e-5) and torch.allclose(p.predicted, f.predicted, atol=1e-5)
    assert fast.shape == plain.shape == (2, 16, 6, 8)
    assert torch.allclose(fast, plain, atol=1e-5)
    with torch.enable_grad():  # training keeps the plain path: the scorer reads the unshuffled tokens
        down.train()
        out = down(x.contiguous(memory_format=CL).requires_grad_())
        out.sum().backward()
    assert down.router.scorer.readout().grad is not None


def test_channels_last_input_only_in_eager_inference():
    model = MoDDetectionModel("modnext-det-n.yaml", nc=4, verbose=False).eval()  # its own: training moves BN stats
    x = torch.rand(2, 3, 64, 64)
    seen = []
    hook = model.model[0].register_forward_pre_hook(lambda m, inp: seen.append(inp[0].is_contiguous(memory_format=CL)))
    try:
        with torch.no_grad():
            model(x)
        model.train()
        model(x)
        model.eval()
        model.model[-1].export = True
        with torch.no_grad():
            model(x)
    finally:
        hook.remove()
    assert seen == [True, False, False]
    model.model[-1].export = False
    assert channels_last(model, x).is_contiguous(memory_format=CL)
    image = x[0]
    assert channels_last(model, image) is image  # not a batch of maps: as it comes


def test_a_fused_stage_adds_its_position_term_through_its_kernel_in_eager_inference_only():
    torch.manual_seed(0)
    stage = MoDNeXt(16, 16, 1, router=router_spec(capacity=0.5, gate="none"), reads=3)
    with torch.no_grad():  # BatchNorm statistics that are not the identity
        stage.pe.bn.running_mean.uniform_(-1, 1), stage.pe.bn.running_var.uniform_(0.5, 2)
    stage.eval()
    x = torch.randn(2, 16, 12, 10)
    with torch.no_grad():
        expected = x + stage.pe(x)
        xc = x.contiguous(memory_format=CL)
        assert torch.equal(stage.position_mixed(xc), xc + stage.pe(xc))  # unfused: the plain sum
        stage.pe.conv = torch.nn.utils.fusion.fuse_conv_bn_eval(stage.pe.conv, stage.pe.bn)  # as Ultralytics fuses
        del stage.pe.bn
        stage.pe.forward = stage.pe.forward_fuse
        folded = stage.position_mixed(x.contiguous(memory_format=CL))
        assert torch.allclose(folded, expected, atol=1e-5)
        assert torch.equal(stage.position_mixed(x), x + stage.pe(x))  # the plain layout: the plain sum
    xc = x.contiguous(memory_format=CL)
    with torch.enable_grad():
        assert torch.equal(stage.position_mixed(xc), xc + stage.pe(xc))  # under autograd: the plain sum


@pytest.mark.parametrize("fused", [False, True])
def test_a_model_detects_the_same_on_either_layout(model, fused):
    """The whole forward on a channels-last input (the default in eager inference) equals it on the plain layout: the
    same routed tokens in every layer and the same decoded boxes and scores; fused too (as predict runs it)."""
    import copy

    import mod_vision.nn.tasks as tasks

    if fused:
        model = copy.deepcopy(model).fuse(verbose=False)
    x = torch.rand(2, 3, 96, 128, generator=torch.Generator().manual_seed(1))
    outs, records = [], []
    for layout in (lambda m, t: t, channels_last):
        tasks.channels_last, saved = layout, tasks.channels_last
        try:
            with torch.no_grad(), record_routing() as rec:
                outs.append(model(x)[0])
        finally:
            tasks.channels_last = saved
        records.append(rec.blocks)
    assert len(records[0]) == len(records[1]) == 11
    for a, b in zip(*records):
        assert torch.equal(a.mask(), b.mask())
    assert torch.allclose(outs[0], outs[1], atol=1e-3)


def test_token_reuse_of_a_channels_last_merge_recomputes_only_moved_patches():
    torch.manual_seed(0)
    down = MoDDown(8, 16, router_spec(capacity=1.0, gate="none")).eval()
    x = torch.randn(1, 8, 8, 8).contiguous(memory_format=CL)
    moved = x.clone()
    moved[..., :2, :2] += 1  # one patch
    cache = TokenReuse(threshold=0.01)
    computed = []
    for frame in (x, x, moved):
        cache.begin(torch.zeros(1, 3, 32, 32))
        with torch.no_grad(), reusing(cache), record_routing() as rec:
            out = down(frame)
        computed.append(int(rec.blocks[0].processed()[0]))
    with torch.no_grad():
        assert torch.allclose(out, down(moved), atol=1e-5)
    assert computed == [16, 0, 1]


def test_the_predictor_hands_a_routed_model_its_input_channels_last_with_ultralytics_values(monkeypatch):
    import cv2
    from ultralytics.models.yolo.detect import DetectionPredictor
    from ultralytics.utils import ASSETS

    from mod_vision import MoDYOLO
    from mod_vision.engine.predict import MoDDetectionPredictor

    model = MoDYOLO("modnext-det-n.yaml")
    seen = []
    hook = model.model.register_forward_pre_hook(lambda m, inp: seen.append(inp[0]))
    try:
        ours = model.predict(ASSETS / "bus.jpg", imgsz=160, conf=0.0, verbose=False)[0]
        image = cv2.imread(str(ASSETS / "bus.jpg"))
        made = model.predictor.preprocess([image])
        theirs = DetectionPredictor.preprocess(model.predictor, [image])
        assert made.is_contiguous(memory_format=CL) and not theirs.is_contiguous(memory_format=CL)
        assert torch.equal(made, theirs)
        assert seen[-1].is_contiguous(memory_format=CL)  # the forward got it so: no copy into that layout
        monkeypatch.setattr(MoDDetectionPredictor, "preprocess", DetectionPredictor.preprocess)  # Ultralytics' own
        plain = model.predict(ASSETS / "bus.jpg", imgsz=160, conf=0.0, verbose=False)[0]
    finally:
        hook.remove()
    assert not seen[-1].is_contiguous(memory_format=CL)
    assert len(ours.boxes) > 0
    torch.testing.assert_close(ours.boxes.data, plain.boxes.data)
