"""Routing heatmaps: result.routing arrays, their mapping back through the letterbox, and the files they are drawn to."""

from __future__ import annotations

import shutil

import cv2
import numpy as np
import pytest
import torch
from ultralytics.data.augment import LetterBox
from ultralytics.utils import ASSETS, ops

from mod_vision import MoDYOLO
from mod_vision.cli import run
from mod_vision.heatmap import Routing
from mod_vision.nn.routing import tokens_for

from .conftest import IMGSZ, TRAIN_ARGS

ROUTED = 3  # routed blocks of modvit-det at scale n


def check_routing(r, orig_shape):
    """The invariants every result's routing must hold."""
    m = r.routing
    h, w = m.input_shape
    assert m.masks.dtype == bool and m.masks.shape == (ROUTED, -(-h // 16), -(-w // 16))
    assert m.orig_shape == orig_shape
    depth = m.depth
    assert depth.shape == m.masks.shape[1:] and np.issubdtype(depth.dtype, np.integer)
    assert depth.min() >= 0 and depth.max() <= ROUTED and (depth == m.masks.sum(0)).all()
    assert m.share == pytest.approx(r.token_share, abs=1e-6)
    assert m.to_image().shape == orig_shape and m.to_image(m.masks).shape == (ROUTED, *orig_shape)


@pytest.fixture
def model(det_run):
    return MoDYOLO(det_run / "weights" / "best.pt")


@pytest.fixture(scope="module")
def tall_image(tmp_path_factory):
    """A non-square image (taller than wide, odd sizes): Ultralytics' bus.jpg resized to 190 x 301."""
    im = cv2.imread(str(ASSETS / "bus.jpg"))
    path = tmp_path_factory.mktemp("tall") / "tall.jpg"
    cv2.imwrite(str(path), cv2.resize(im, (190, 301)))
    return path


@pytest.mark.parametrize("capacity", [0.25, 0.5])
def test_static_masks_take_k_tokens_per_block_on_the_letterboxed_grid(model, tall_image, capacity):
    r = model.predict(tall_image, imgsz=IMGSZ, capacity=capacity, verbose=False)[0]
    check_routing(r, (301, 190))
    # the grid covers the same letterboxed input Ultralytics' LetterBox makes (auto: pad to the stride only)
    assert r.routing.input_shape == LetterBox(IMGSZ, auto=True, stride=32)(image=r.orig_img).shape[:2] == (96, 64)
    n = r.routing.masks[0].size
    assert r.routing.masks.sum((1, 2)).tolist() == [tokens_for(capacity, n)] * ROUTED


def test_dynamic_masks_stay_within_their_bounds(model, sample_yaml):
    model.model.set_dynamic((0.1, 1.0))
    folder = sample_yaml.parent / "images" / "val"
    results = model.predict(folder, imgsz=IMGSZ, batch=4, verbose=False)  # batch > 1: padded per-image selections
    assert len(results) == 8
    for r in results:
        check_routing(r, r.orig_shape)
        n = r.routing.masks[0].size
        sums = r.routing.masks.sum((1, 2))
        assert ((sums >= tokens_for(0.1, n)) & (sums <= n)).all()


@pytest.mark.parametrize("orig_shape", [(301, 190), (120, 333)])
def test_grid_maps_back_to_the_original_image_as_ultralytics_maps_boxes(orig_shape):
    """Each token, drawn alone and mapped to the original image, covers the box that Ultralytics' scale_boxes gives
    for that token's input-pixel square (within a pixel of rounding); tokens in the padding map to nothing."""
    input_shape = LetterBox(160, auto=True, stride=32)(image=np.zeros((*orig_shape, 3), np.uint8)).shape[:2]
    gh, gw = -(-input_shape[0] // 16), -(-input_shape[1] // 16)
    for i, j in [(0, 0), (gh - 1, gw - 1), (gh // 2, gw // 3), (1, gw - 2)]:
        masks = np.zeros((1, gh, gw), bool)
        masks[0, i, j] = True
        mapped = Routing(masks, input_shape, orig_shape).to_image(masks)[0]
        box = torch.tensor([[16.0 * j, 16.0 * i, 16.0 * (j + 1), 16.0 * (i + 1)]])
        x1, y1, x2, y2 = ops.scale_boxes(input_shape, box, orig_shape)[0].tolist()  # clipped to the image
        if x2 - x1 < 1 or y2 - y1 < 1:  # a token of the letterbox padding
            assert not mapped.any()
            continue
        ys, xs = np.nonzero(mapped)
        assert abs(xs.min() - x1) <= 1.5 and abs(xs.max() + 1 - x2) <= 1.5
        assert abs(ys.min() - y1) <= 1.5 and abs(ys.max() + 1 - y2) <= 1.5
    # the whole grid covers the whole image
    depth = Routing(np.ones((2, gh, gw), bool), input_shape, orig_shape).to_image()
    assert depth.shape == orig_shape and (depth == 2).all()


def test_save_heatmap_writes_decodable_images_per_image(model, tall_image, tmp_path):
    twin = tmp_path / "tall.png"  # same stem as tall.jpg: outputs must not overwrite each other
    shutil.copy(tall_image, twin)
    rs = model.predict([tall_image, twin], imgsz=IMGSZ, save_heatmap=True, project=str(tmp_path), name="p", verbose=False)
    folder = tmp_path / "p" / "heatmaps"
    assert model.predictor.save_dir / "heatmaps" == folder
    for stem in ("tall", "tall-2"):
        for name in [f"{stem}_depth.jpg"] + [f"{stem}_block{j}.jpg" for j in range(ROUTED)]:
            im = cv2.imread(str(folder / name))
            assert im is not None and im.shape == (301, 190, 3), name
        panel = cv2.imread(str(folder / f"{stem}_blocks.png"))
        assert panel is not None and panel.shape[1] > panel.shape[0]  # one row: depth + one panel per block
    assert len(list(folder.iterdir())) == 2 * (ROUTED + 2)
    # the overlay is drawn where the depth map is: deeper tokens are brighter
    depth = rs[0].routing.to_image()
    drawn = cv2.cvtColor(cv2.imread(str(folder / "tall_depth.jpg")), cv2.COLOR_BGR2GRAY).astype(float)
    plain = cv2.cvtColor(rs[0].orig_img, cv2.COLOR_BGR2GRAY).astype(float)
    lift = drawn - 0.5 * plain
    lift[:30] = np.nan  # the caption
    means = [np.nanmean(lift[depth == d]) for d in range(ROUTED + 1) if (depth == d)[30:].any()]
    assert means == sorted(means)


def test_save_heatmap_on_video_writes_one_frame_per_frame_at_the_source_fps(model, video, tmp_path):
    results = list(
        model.predict(video, imgsz=IMGSZ, stream=True, save_heatmap=True, project=str(tmp_path), name="v", verbose=False)
    )
    out = tmp_path / "v" / "heatmaps" / "clip_depth.mp4"
    cap = cv2.VideoCapture(str(out))
    assert cap.isOpened() and cap.get(cv2.CAP_PROP_FPS) == pytest.approx(5)
    frames = []
    while (ok := cap.read())[0]:
        frames.append(ok[1])
    cap.release()
    assert len(frames) == len(results) == 6 and frames[0].shape == (96, 128, 3)


def test_cli_heatmap_mode(det_run, tmp_path, capsys):
    src = ASSETS / "bus.jpg"
    folder = run(["heatmap", f"model={det_run / 'weights' / 'best.pt'}", f"source={src}", f"imgsz={IMGSZ}",
                  f"project={tmp_path}", "name=cli"])  # fmt: skip
    assert folder == tmp_path / "cli" / "heatmaps" and str(folder) in capsys.readouterr().out
    im = cv2.imread(str(folder / "bus_depth.jpg"))
    assert im is not None and im.shape == (1080, 810, 3)


def test_dense_and_exported_models_give_no_routing_and_write_no_heatmaps(det_run, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a YAML-built model exports next to its (relative) YAML name
    dense = MoDYOLO("modvit-det-dense.yaml")
    routed_file = MoDYOLO(det_run / "weights" / "best.pt").export(format="torchscript", imgsz=IMGSZ)
    expected_share = {0: None, 1: None, 2: 0.5}  # an exported routed model's share is exact: static top-k, k = 18 of 36
    models = [dense, MoDYOLO(dense.export(format="torchscript", imgsz=IMGSZ), task="detect"), MoDYOLO(routed_file, task="detect")]
    for i, m in enumerate(models):
        r = m.predict(ASSETS / "bus.jpg", imgsz=IMGSZ, save_heatmap=True, project=str(tmp_path), name="x", verbose=False)
        assert r[0].routing is None and r[0].token_share == expected_share[i]
    assert not (tmp_path / "x" / "heatmaps").exists()


def test_training_saves_routing_figure_at_the_end_and_every_period(sample_yaml, runs, det_run):
    model = MoDYOLO("modvit-det.yaml")
    args = {**TRAIN_ARGS, "epochs": 2, "plots": True, "heatmap_period": 1}
    model.train(data=str(sample_yaml), project=str(runs), name="heat", **args)
    save_dir = model.trainer.save_dir
    for name in ("routing_val_batch0.jpg", "routing_val_batch0_epoch1.jpg", "routing_val_batch0_epoch2.jpg"):
        im = cv2.imread(str(save_dir / name))
        assert im is not None and im.shape[0] > 200, name
    assert not (save_dir / "routing_val_batch0_epoch3.jpg").exists()  # final_eval's extra epoch end draws none
    assert not list(det_run.glob("routing_val_batch0*"))  # plots=False: none


def test_segmentation_results_carry_routing_and_heatmaps(seg_run, tall_image, tmp_path):
    model = MoDYOLO(seg_run / "weights" / "best.pt")
    r = model.predict(tall_image, imgsz=IMGSZ, save_heatmap=True, project=str(tmp_path), name="s", verbose=False)[0]
    check_routing(r, (301, 190))
    assert cv2.imread(str(tmp_path / "s" / "heatmaps" / "tall_depth.jpg")).shape == (301, 190, 3)


@pytest.mark.parametrize("period", [-1, 1.5, "5x"])
def test_bad_heatmap_period_is_named(sample_yaml, tmp_path, period):
    with pytest.raises(ValueError, match="heatmap_period must be an int >= 0"):
        MoDYOLO("modvit-det.yaml").train(data=str(sample_yaml), project=str(tmp_path), heatmap_period=period, **TRAIN_ARGS)
