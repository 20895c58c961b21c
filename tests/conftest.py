"""Shared fixtures: a tiny sample dataset and tiny models trained on it once per session (CPU, imgsz 96)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("YOLO_OFFLINE", "1")  # no attempt to reach the network for fonts or assets
os.environ.setdefault("YOLO_AUTOINSTALL", "false")

IMGSZ = 96
TRAIN_ARGS = dict(epochs=1, imgsz=IMGSZ, batch=8, workers=0, device="cpu", plots=False, seed=0, exist_ok=True)


@pytest.fixture(scope="session")
def sample_yaml(tmp_path_factory) -> Path:
    from mod_vision.data import make_sample_data

    return make_sample_data(tmp_path_factory.mktemp("data") / "sample", n_train=24, n_val=8, seed=0, size=(96, 128))


@pytest.fixture(scope="session")
def runs(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("runs")


def _train(model_yaml, data, runs, name, **kw):
    from mod_vision import MoDYOLO

    model = MoDYOLO(model_yaml)
    model.train(data=str(data), project=str(runs), name=name, **{**TRAIN_ARGS, **kw})
    return Path(model.trainer.save_dir)


@pytest.fixture(scope="session")
def det_run(sample_yaml, runs) -> Path:
    return _train("modvit-det.yaml", sample_yaml, runs, "det", epochs=2)


@pytest.fixture(scope="session")
def hybrid_run(sample_yaml, runs) -> Path:
    """The fast hybrid (patch stem, routed attention at strides 16 and 32), tiny run."""
    return _train("hybrid11p-det-n.yaml", sample_yaml, runs, "hybrid", epochs=2)


@pytest.fixture(scope="session")
def seg_run(sample_yaml, runs) -> Path:
    return _train("modvit-seg.yaml", sample_yaml, runs, "seg")


@pytest.fixture(scope="session")
def video(tmp_path_factory, sample_yaml) -> Path:
    """An mp4 written by OpenCV from the sample val images."""
    import cv2

    path = tmp_path_factory.mktemp("video") / "clip.mp4"
    frames = sorted((sample_yaml.parent / "images" / "val").glob("*.jpg"))[:6]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 5, (128, 96))
    for f in frames:
        writer.write(cv2.resize(cv2.imread(str(f)), (128, 96)))
    writer.release()
    assert path.stat().st_size > 0
    return path


def images_with_broken_files(sample_yaml: Path, folder: Path, broken: tuple[str, ...]) -> list[str]:
    """Fill `folder` with two sample val images and, for each name in `broken`, a file that is no image or video;
    return the images' names, sorted."""
    import shutil

    folder.mkdir()
    images = sorted((sample_yaml.parent / "images" / "val").glob("*.jpg"))[:2]
    for f in images:
        shutil.copy(f, folder / f.name)
    for name in broken:
        (folder / name).write_bytes(b"not a video or an image")
    return sorted(f.name for f in images)
