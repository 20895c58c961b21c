"""Token reuse across video frames: the mechanism, the cache's state rules, the predictor, the sample video, bad input."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import torch

from mod_vision import MoDYOLO
from mod_vision.data import make_sample_video
from mod_vision.mjpeg import MJPEGServer
from mod_vision.nn.blocks import ABlockPair
from mod_vision.nn.reuse import TokenReuse, cell_means, reusing
from mod_vision.nn.routing import RoutedBlock, record_routing, route_tokens, router_spec, topk_raster
from mod_vision.nn.tasks import MoDDetectionModel

from .conftest import IMGSZ


def forward(model, x, cache=None):
    """(detections, record) of one forward, under `cache` when given."""
    if cache is not None:
        cache.begin(x)
    with torch.no_grad(), reusing(cache), record_routing() as rec:
        return model(x)[0], rec


@pytest.fixture(scope="module")
def vit():
    torch.manual_seed(0)
    return MoDDetectionModel("modvit-det-deep-n.yaml", nc=4, verbose=False).eval()


@pytest.fixture(scope="module")
def hybrid():
    torch.manual_seed(0)
    return MoDDetectionModel("hybrid11-det-n.yaml", nc=4, verbose=False).eval()


# ----------------------------------------------------------------------------------------------------------------------
# The mechanism


@pytest.mark.parametrize("kind", ["timm", "ablock"])
def test_every_routed_token_computed_is_the_routed_block(kind):
    """With every routed token computed (the first frame), reuse gives what route_tokens gives, padded dynamic-mode
    rows included; then an identical frame computes nothing and returns the same tokens."""
    torch.manual_seed(0)
    if kind == "timm":
        blk = RoutedBlock(64, 4, router_spec(capacity=0.5)).eval()
        layers, run = (blk,), super(RoutedBlock, blk).forward
    else:
        pair = ABlockPair(64, 2, router=router_spec(capacity=0.5)).eval()
        layers, run = pair.blocks, pair.run
    x = torch.randn(2, 20, 64)
    index = topk_raster(torch.randn(2, 20), 10)
    valid = torch.ones(2, 10, dtype=torch.bool)
    valid[1, 7:] = False  # image 1 asks for 7 tokens only
    gate = torch.rand(2, 20)
    with torch.no_grad():
        expected = route_tokens(x, index, run, gate.gather(1, index), valid)
        from mod_vision.nn.reuse import reuse_step

        cache = TokenReuse(threshold=0.0)
        cache.begin(torch.zeros(2, 3, 8, 8))
        with reusing(cache):
            out, routed, computed = reuse_step(x, index, valid, layers, gate)
        assert torch.allclose(out, expected, atol=1e-5)
        assert computed.equal(routed) and routed.sum(1).tolist() == [10, 7]
        cache.begin(torch.zeros(2, 3, 8, 8))
        with reusing(cache):
            again, _, computed = reuse_step(x, index, valid, layers, gate)
    assert not computed.any()
    assert torch.equal(again, out)


def test_first_frame_equals_per_frame_forward_and_a_still_frame_computes_nothing(vit, hybrid):
    x = torch.rand(1, 3, 128, 160)
    for model in (vit, hybrid):
        plain, rec = forward(model, x)
        cache = TokenReuse(threshold=0.05)
        first, rec1 = forward(model, x, cache)
        assert torch.allclose(first, plain, atol=1e-3, rtol=1e-4)
        assert float(rec1.token_share()) == pytest.approx(float(rec.token_share()))
        still, rec2 = forward(model, x, cache)
        assert float(rec2.token_share()) == 0.0
        assert torch.allclose(still, plain, atol=1e-3, rtol=1e-4)


def test_a_local_change_computes_only_tokens_near_it(vit):
    x = torch.rand(1, 3, 128, 128)
    cache = TokenReuse(threshold=0.0)  # any change counts: the computed sets are then exact
    _, first = forward(vit, x, cache)
    i, j = divmod(int(first.blocks[0].index[0, 0]), 8)  # a patch the first routed block processes
    y = x.clone()
    y[..., 16 * i : 16 * i + 16, 16 * j : 16 * j + 16] = torch.rand(3, 16, 16)  # one 16x16 patch of 64
    _, rec = forward(vit, y, cache)
    patch = torch.zeros(8, 8, dtype=torch.bool)
    patch[i, j] = True
    touched = patch.flatten()  # tokens whose input differs from the last frame's: the patch, then what blocks changed
    for e, before in zip(rec.blocks, first.blocks):
        new = ~before.mask()[0]  # tokens this block routes for the first time: nothing cached
        assert e.computed[0].equal(e.mask()[0] & (touched | new))
        touched = touched | e.computed[0]
    assert touched.sum() < 8


def test_streams_in_one_batch_never_mix(vit):
    """Row 0 still, row 1 changing: row 0 computes nothing, and each row's output is what that stream alone gives."""
    a, b1, b2 = torch.rand(3, 1, 3, 96, 96)
    cache, alone_a, alone_b = TokenReuse(), TokenReuse(), TokenReuse()
    forward(vit, torch.cat([a, b1]), cache)
    both, rec = forward(vit, torch.cat([a, b2]), cache)
    forward(vit, a, alone_a)
    out_a, _ = forward(vit, a, alone_a)
    forward(vit, b1, alone_b)
    out_b, _ = forward(vit, b2, alone_b)
    share = rec.token_share()
    assert share[0] == 0 and share[1] > 0.2
    assert torch.allclose(both[:1], out_a, atol=1e-4) and torch.allclose(both[1:], out_b, atol=1e-4)


def test_scene_cut_and_periodic_refresh_recompute_everything(vit):
    x, cut = torch.rand(2, 1, 3, 96, 96)
    cache = TokenReuse(threshold=0.05, refresh=3, max_change=0.5)
    shares = []
    for frame in (x, x, cut, x, x, x):
        out, rec = forward(vit, frame, cache)
        shares.append(float(rec.token_share()))
        if frame is cut:
            assert torch.allclose(out, forward(vit, cut)[0], atol=1e-3, rtol=1e-4)  # no stale tokens after a cut
    full = shares[0]
    # frame 0: nothing cached; 2: a cut (and 2 is not a refresh frame); 3: back to x, a cut again; 3 is also a refresh
    assert shares == [full, 0.0, full, full, 0.0, 0.0]
    cache = TokenReuse(threshold=0.05, refresh=2)  # a still scene: only the refreshes compute
    assert [float(forward(vit, x, cache)[1].token_share()) for _ in range(5)] == [full, 0.0, full, 0.0, full]


def test_image_size_or_batch_change_resets_the_cache(vit):
    cache = TokenReuse()
    forward(vit, torch.rand(1, 3, 96, 96), cache)
    assert len(cache.blocks) and cache.frame == 1
    full = float(forward(vit, torch.rand(1, 3, 96, 128), cache)[1].token_share())
    assert cache.frame == 1 and cache.shape[0] == (1, 3, 96, 128) and full > 0.2  # a reset: a first frame again
    forward(vit, torch.rand(2, 3, 96, 128), cache)
    assert cache.frame == 1 and cache.shape[0] == (2, 3, 96, 128)


def test_lost_stream_slot_is_reset_alone(vit):
    x = torch.rand(2, 3, 96, 96)
    cache = TokenReuse()
    forward(vit, x, cache)
    cache.begin(x, lost=[False, True])
    with torch.no_grad(), reusing(cache), record_routing() as rec:
        vit(x)
    share = rec.token_share()
    assert share[0] == 0 and share[1] > 0.2


def test_reuse_never_runs_in_training(vit):
    model = MoDDetectionModel("modvit-det-deep-n.yaml", nc=4, verbose=False).train()
    cache = TokenReuse()
    cache.begin(torch.zeros(1, 3, 64, 64))
    with reusing(cache):
        model.predict(torch.rand(1, 3, 64, 64))
    assert cache.blocks == []


# ----------------------------------------------------------------------------------------------------------------------
# The predictor


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return make_sample_video(tmp_path_factory.mktemp("clip") / "clip.mp4", frames=12, size=(128, 96), objects=2,
                             radius=(0.15, 0.25), seed=0)  # fmt: skip


# low enough that the tiny session model detects something in every frame: the comparisons below need detections
CONF = 1e-6


def boxes_of(results):
    return [r.boxes.data for r in results]


def assert_same_boxes(a: torch.Tensor, b: torch.Tensor, atol: float = 1e-3) -> None:
    """The same detections: as many (allclose would broadcast a (1, 6) against a (0, 6) tensor), at least one (empty
    against empty proves nothing), each close."""
    assert a.shape == b.shape and len(a), f"{tuple(a.shape)} vs {tuple(b.shape)}"
    assert torch.allclose(a, b, atol=atol), (a - b).abs().max()


def test_video_with_token_reuse_computes_fewer_tokens_and_reports_reuse(det_run, clip, tmp_path):
    model = MoDYOLO(det_run / "weights" / "best.pt")
    video, _ = clip
    plain = list(model.predict(str(video), stream=True, imgsz=IMGSZ, verbose=False, conf=CONF))
    reused = list(model.predict(str(video), stream=True, imgsz=IMGSZ, verbose=False, conf=CONF, token_reuse=True,
                                save_heatmap=True, project=str(tmp_path), name="r"))  # fmt: skip
    assert len(reused) == len(plain) == 12
    assert reused[0].token_share == pytest.approx(plain[0].token_share)
    assert_same_boxes(reused[0].boxes.data, plain[0].boxes.data)
    assert all(r.token_share < 0.6 * p.token_share for r, p in zip(reused[1:], plain[1:]))
    for r in reused:
        assert r.token_share == pytest.approx(r.routing.share)
        for routed, computed, kept in zip(r.routing.blocks, r.routing.computed, r.routing.reused):
            assert np.array_equal(routed, computed | kept) and not (computed & kept).any()
    assert plain[3].routing.computed is None and plain[3].routing.reused is None
    (heat,) = (tmp_path / "r" / "heatmaps").glob("*_depth.mp4")
    cap = cv2.VideoCapture(str(heat))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 12
    cap.release()


def test_after_a_scene_cut_the_result_is_the_per_frame_result(det_run, tmp_path):
    model = MoDYOLO(det_run / "weights" / "best.pt")
    video, _ = make_sample_video(tmp_path / "cut.mp4", frames=10, size=(128, 96), objects=2, radius=(0.15, 0.25),
                                 textured=True, scene_cut=6, seed=2)  # fmt: skip
    plain = list(model.predict(str(video), stream=True, imgsz=IMGSZ, verbose=False, conf=CONF))
    reused = list(model.predict(str(video), stream=True, imgsz=IMGSZ, verbose=False, conf=CONF, token_reuse=True))
    assert reused[5].token_share < 0.6 * plain[5].token_share  # reuse before the cut
    cut, ref = reused[6], plain[6]
    assert cut.token_share == pytest.approx(ref.token_share)  # the cut frame is computed in full
    assert_same_boxes(cut.boxes.data, ref.boxes.data)  # no stale boxes


def test_token_reuse_off_and_single_images_behave_as_without_it(det_run, sample_yaml):
    model = MoDYOLO(det_run / "weights" / "best.pt")
    images = sorted((sample_yaml.parent / "images" / "val").glob("*.jpg"))[:4]  # unrelated images, several sizes
    assert len({cv2.imread(str(f)).shape for f in images}) > 1
    plain = model.predict([str(f) for f in images], imgsz=IMGSZ, verbose=False, conf=CONF)
    assert model.predictor.token_cache is None
    off = model.predict([str(f) for f in images], imgsz=IMGSZ, verbose=False, conf=CONF, token_reuse=False)
    on = model.predict([str(f) for f in images], imgsz=IMGSZ, verbose=False, conf=CONF, token_reuse=True)
    for p, a, b in zip(plain, off, on):
        assert len(p.boxes) and torch.equal(p.boxes.data, a.boxes.data) and a.token_share == p.token_share
        assert_same_boxes(p.boxes.data, b.boxes.data)
        # letterboxed to different shapes, so each is a first frame: everything routed is computed
        assert b.token_share == pytest.approx(p.token_share)
    single = model.predict(str(images[0]), imgsz=IMGSZ, verbose=False, conf=CONF, token_reuse=True)[0]
    assert_same_boxes(single.boxes.data, plain[0].boxes.data)


def test_a_batch_of_video_frames_is_one_sequence(det_run, clip):
    model = MoDYOLO(det_run / "weights" / "best.pt")
    video, _ = clip
    one = list(model.predict(str(video), stream=True, imgsz=IMGSZ, verbose=False, conf=CONF, token_reuse=True))
    four = list(model.predict(str(video), stream=True, imgsz=IMGSZ, verbose=False, conf=CONF, token_reuse=True,
                              batch=4))  # fmt: skip
    assert [r.token_share for r in four] == pytest.approx([r.token_share for r in one])
    for a, b in zip(one, four):
        assert_same_boxes(a.boxes.data, b.boxes.data)


@pytest.mark.timeout(120)
def test_a_stream_that_drops_and_reconnects_resets_its_cache(det_run, sample_yaml):
    model = MoDYOLO(det_run / "weights" / "best.pt")
    frame = cv2.resize(cv2.imread(str(sorted((sample_yaml.parent / "images" / "val").glob("*.jpg"))[0])), (128, 96))
    frames = [frame] * 10
    with MJPEGServer(frames, end="reconnect", drop_after=4, fps=20) as server:
        results = list(model.predict(server.url, stream=True, imgsz=IMGSZ, verbose=False, stream_buffer=True,
                                     conf=CONF, token_reuse=True))  # fmt: skip
    black = [i for i, r in enumerate(results) if not r.orig_img.any()]
    assert black and black[0] < len(results) - 1  # the drop's black frame, then the reconnected stream
    full = results[0].token_share
    after = results[black[0] + 1]
    assert results[black[0]].token_share == pytest.approx(full)  # the lost slot was reset
    assert after.token_share == pytest.approx(full)  # the reconnected frame is computed in full...
    plain = model.predict(after.orig_img, imgsz=IMGSZ, verbose=False, conf=CONF)[0]
    assert_same_boxes(after.boxes.data, plain.boxes.data)  # ...and equals a per-frame predict
    assert results[black[0] + 2].token_share < 0.5 * full  # then reuse starts again


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"reuse_threshold": -0.1}, "reuse_threshold must be a number >= 0"),
        ({"reuse_threshold": "low"}, "reuse_threshold must be a number >= 0"),
        ({"reuse_refresh": 0}, "reuse_refresh must be an int >= 1"),
        ({"reuse_refresh": 2.5}, "reuse_refresh must be an int >= 1"),
        ({"reuse_max_change": 0}, r"reuse_max_change must be a share in \(0, 1\]"),
        ({"token_reuse": "yes"}, "token_reuse must be True or False"),
    ],
)
def test_bad_reuse_arguments_name_the_key(det_run, clip, kwargs, match):
    model = MoDYOLO(det_run / "weights" / "best.pt")
    with pytest.raises(ValueError, match=match):
        model.predict(str(clip[0]), imgsz=IMGSZ, verbose=False, **{"token_reuse": True, **kwargs})


def test_an_exported_model_refuses_token_reuse(det_run, clip, tmp_path):
    pytest.importorskip("onnxruntime")
    import shutil

    weights = tmp_path / "best.pt"
    shutil.copy(det_run / "weights" / "best.pt", weights)
    onnx = MoDYOLO(weights).export(format="onnx", imgsz=IMGSZ)
    with pytest.raises(ValueError, match="token_reuse=True needs the PyTorch checkpoint"):
        MoDYOLO(onnx, task="detect").predict(str(clip[0]), imgsz=IMGSZ, verbose=False, token_reuse=True)


# ----------------------------------------------------------------------------------------------------------------------
# The sample video


def test_sample_video_has_per_frame_ground_truth_moving_objects_noise_and_a_cut(tmp_path):
    video, gt = make_sample_video(tmp_path / "v.mp4", frames=30, size=(160, 120), objects=4, noise=2.0,
                                  scene_cut=20, seed=1)  # fmt: skip
    coco = json.loads(gt.read_text())
    assert [im["frame"] for im in coco["images"]] == list(range(30))
    assert {c["name"] for c in coco["categories"]} == {"circle", "square", "triangle", "star"}
    per_frame = [[a for a in coco["annotations"] if a["image_id"] == im["id"]] for im in coco["images"]]
    assert all(len(p) <= 4 for p in per_frame) and len({len(p) for p in per_frame}) > 1  # objects enter or leave
    for a in coco["annotations"]:
        x, y, w, h = a["bbox"]
        assert w > 0 and h > 0 and x >= 0 and y >= 0 and x + w <= 160.01 and y + h <= 120.01
    cap = cv2.VideoCapture(str(video))
    frames = []
    while (ok := cap.read())[0]:
        frames.append(ok[1].astype(np.float32))
    assert len(frames) == 30 and frames[0].shape == (120, 160, 3)
    step = [np.abs(frames[i] - frames[i - 1]).mean() for i in range(1, 30)]
    assert step[19] > 5 * np.median(step)  # frame 20 is a new scene
    assert 0.5 < np.median(step) < 10  # noise: no two frames alike, but no cut either


@pytest.mark.parametrize("kwargs,match", [({"objects": 0}, "objects must be 1-6"), ({"scene_cut": 40}, "scene_cut must be")])
def test_sample_video_bad_arguments(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_sample_video(tmp_path / "v.mp4", frames=30, **kwargs)


def test_sample_video_from_the_cli(tmp_path):
    from mod_vision.cli import run

    video, gt = run(["sample-video", f"path={tmp_path / 'c.mp4'}", "frames=5", "size=[96,64]", "objects=2"])
    cap = cv2.VideoCapture(str(video))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 5 and cap.get(cv2.CAP_PROP_FRAME_WIDTH) == 96
    cap.release()
    assert len(json.loads(gt.read_text())["images"]) == 5


def test_video_reuse_tool_reports_per_frame_and_reuse_rows(det_run, tmp_path):
    from tests.test_dynamic_tools import _tool

    tool = _tool("video_reuse")
    out = tool.main(["--weights", str(det_run / "weights" / "best.pt"), "--imgsz", str(IMGSZ), "--frames", "8",
                     "--size", "128", "96", "--objects", "2", "--backgrounds", "flat", "--noise", "0", "2",
                     "--thresholds", "0.05", "0.5", "--reps", "2", "--profile", "--out", str(tmp_path), "--name", "t"])  # fmt: skip
    import csv

    rows = list(csv.DictReader(open(out / "results.csv")))
    assert len(rows) == 2 * 3  # 2 clips x (per-frame + 2 thresholds)
    for clip in ("flat-noise0", "flat-noise2"):
        base, low, high = (r for r in rows if r["clip"] == clip)
        assert base["reuse_threshold"] == "per-frame" and float(base["speedup"]) == 1.0
        assert float(base["fewer tokens"]) == 1.0 and float(base["AP - per-frame"]) == 0.0
        assert float(high["token share"]) <= float(low["token share"]) < float(base["token share"])  # monotonic
    text = (out / "results.md").read_text()
    assert "tools/video_reuse.py --weights" in text and "routed share" in text
    assert (out / "reuse_threshold.png").stat().st_size > 0 and len(list((out / "clips").glob("*.json"))) == 2


def test_reuse_bound_tool_bound_of_a_known_split(tmp_path, monkeypatch):
    """With the routed layers at 3/4 of the frame time, reuse can make the forward at most 4x faster (the rest runs
    in full); at 1/2, 2x."""
    from mod_vision import video_bench
    from tests.test_dynamic_tools import _tool

    splits = iter([{"routed": 0.75, "dense": 0.2, "head": 0.05}, {"routed": 0.5, "dense": 0.4, "head": 0.1}])
    monkeypatch.setattr(video_bench, "profile", lambda *a, **k: next(splits))
    rows = _tool("reuse_bound").main(["hybrid11p-det-n.yaml", "--imgsz", str(IMGSZ), "--frames", "2", "--size", "128",
                                      "96", "--out", str(tmp_path)])  # fmt: skip
    assert [(r["reuse_threshold"], r["routed"], r["dense"], r["head"]) for r in rows] == [
        ("per-frame", 0.75, 0.2, 0.05), (0.1, 0.5, 0.4, 0.1)]  # fmt: skip
    assert [r["bound on the reuse speedup"] for r in rows] == pytest.approx([4.0, 2.0])


def test_reuse_bound_tool_splits_the_frame_time_by_layer_kind(tmp_path, monkeypatch):
    """Each routed attention layer is made to take 50 ms longer (a forward hook that sleeps, timed inside the tool's
    own hooks), so the routed layers must be most of the frame time, far more than the few ms the whole tiny model takes."""
    import time

    from mod_vision import video_bench
    from mod_vision.nn.blocks import MoDA2C2f
    from mod_vision.nn.vit import MoDViTStage
    from tests.test_dynamic_tools import _tool

    run_clip = video_bench.run_clip
    slowed = []

    def slow_attention(yolo, *args, **kwargs):  # the first pass builds the predictor's model: slow it before timing
        out = run_clip(yolo, *args, **kwargs)
        for m in yolo.predictor.model.model.model:
            if isinstance(m, (MoDA2C2f, MoDViTStage)) and m not in slowed:
                m.register_forward_hook(lambda *_: time.sleep(0.05))
                slowed.append(m)
        return out

    monkeypatch.setattr(video_bench, "run_clip", slow_attention)
    rows = _tool("reuse_bound").main(["hybrid11p-det-n.yaml", "--imgsz", str(IMGSZ), "--frames", "4", "--size", "128",
                                      "96", "--out", str(tmp_path)])  # fmt: skip
    assert slowed  # hybrid11p's routed attention layers
    assert [r["reuse_threshold"] for r in rows] == ["per-frame", 0.1]
    for r in rows:
        assert r["model"] == "hybrid11p-det-n"
        assert r["routed"] > 0.8 and 0 < r["dense"] < 0.2 and 0 < r["head"] < 0.2
        assert r["routed"] + r["dense"] + r["head"] == pytest.approx(1.0)
        assert r["bound on the reuse speedup"] > 5


def test_layer_kinds_name_every_layer_that_holds_routers_routed():
    from mod_vision import MoDYOLO
    from mod_vision.video_bench import layer_kinds

    model = MoDYOLO("modnext-det-n.yaml").model
    kinds = layer_kinds(model)
    # the stem and its depthwise 3x3, the FPN's 1x1 laterals and upsample-adds run densely; merges and stages route
    assert [i for i, k in kinds.items() if k == "dense"] == [0, 1, 8, 9, 11, 12]
    assert [i for i, k in kinds.items() if k == "routed"] == [2, 3, 4, 5, 6, 7, 10, 13]
    assert kinds[14] == "head" and len(kinds) == 15


@pytest.mark.parametrize("size", [(64, 96), (70, 52)])
@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_cell_means_are_the_8x8_average_pool_in_either_layout_and_at_any_size(size, layout):
    image = torch.rand(2, 3, *size).contiguous(memory_format=layout)
    expected = torch.nn.functional.avg_pool2d(image, 8, 8, ceil_mode=True)
    means = cell_means(image)
    assert means.shape == (2, 3, -(-size[0] // 8), -(-size[1] // 8))
    torch.testing.assert_close(means, expected)
