"""Shared fixtures: a tiny sample dataset and tiny models trained on it once per session (CPU, imgsz 96).

Tests that train are marked `slow` and run only with `--runslow`, as in Ultralytics' own tests/conftest.py. A test
trains when it uses one of the training fixtures below (`@training_fixture`), itself or through a fixture that depends
on one; a test that calls `.train(` itself carries `@pytest.mark.slow`.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import pytest

os.environ.setdefault("YOLO_OFFLINE", "1")  # no attempt to reach the network for fonts or assets
os.environ.setdefault("YOLO_AUTOINSTALL", "false")

IMGSZ = 96
TRAIN_ARGS = dict(epochs=1, imgsz=IMGSZ, batch=8, workers=0, device="cpu", plots=False, seed=0, exist_ok=True)
TRAINING_FIXTURES: set[str] = set()  # the names of the fixtures that train; filled by @training_fixture
RUN_SLOW = False  # --runslow, set by pytest_configure


def training_fixture(fn):
    """A session fixture that trains: every test that depends on it is slow. One requested by a test that is not
    (through `request.getfixturevalue`, which collection cannot see) skips it, without --runslow."""
    TRAINING_FIXTURES.add(fn.__name__)

    @functools.wraps(fn)
    def guarded(*args, **kwargs):
        if not RUN_SLOW:
            pytest.skip(f"{fn.__name__} trains a model: run with --runslow")
        return fn(*args, **kwargs)

    return pytest.fixture(scope="session")(guarded)


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", default=False, help="also run the tests that train (slow)")


def pytest_configure(config):
    global RUN_SLOW
    RUN_SLOW = config.getoption("--runslow")
    config.addinivalue_line("markers", "slow: the test trains a model; it runs only with --runslow")


def pytest_collection_modifyitems(config, items):
    skip = pytest.mark.skip(reason="trains a model: run with --runslow")
    for item in items:
        if TRAINING_FIXTURES & set(getattr(item, "fixturenames", ())):  # fixturenames: the closure, indirect ones too
            item.add_marker(pytest.mark.slow)  # marked with --runslow too, so that -m "not slow" selects alike
        if item.get_closest_marker("slow") and not RUN_SLOW:
            item.add_marker(skip)


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


@training_fixture
def det_run(sample_yaml, runs) -> Path:
    return _train("modvit-det.yaml", sample_yaml, runs, "det", epochs=2)


@training_fixture
def hybrid_run(sample_yaml, runs) -> Path:
    """The fast hybrid (patch stem, routed attention at strides 16 and 32), tiny run."""
    return _train("hybrid11p-det-n.yaml", sample_yaml, runs, "hybrid", epochs=2)


@training_fixture
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
