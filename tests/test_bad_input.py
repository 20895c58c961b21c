"""Bad input gets a clear error or a safe skip."""

import shutil
from pathlib import Path

import pytest
from ultralytics.utils import ASSETS

from mod_vision import MoDYOLO
from mod_vision.cli import run

from .conftest import TRAIN_ARGS


@pytest.fixture
def broken_data(sample_yaml, tmp_path):
    """A copy of the sample data with one corrupt image and one malformed label file."""
    root = tmp_path / "broken"
    shutil.copytree(sample_yaml.parent, root)
    images = sorted((root / "images" / "train").glob("*.jpg"))
    images[0].write_bytes(b"this is not a jpeg")
    label = root / "labels" / "train" / (images[1].stem + ".txt")
    label.write_text("0 0.5 0.5\nnot numbers at all\n")
    for cache in root.rglob("*.cache"):
        cache.unlink()
    yaml = root / "sample.yaml"
    yaml.write_text(yaml.read_text().replace(str(sample_yaml.parent), str(root)))
    return yaml, images[0].name, images[1].name


@pytest.mark.slow  # trains
def test_corrupt_image_and_label_are_skipped_and_training_continues(broken_data, tmp_path, caplog):
    yaml, bad_image, bad_label = broken_data
    model = MoDYOLO("modvit-det.yaml")
    model.train(data=str(yaml), project=str(tmp_path), name="t", **TRAIN_ARGS)
    assert (tmp_path / "t" / "weights" / "last.pt").is_file()
    text = caplog.text
    assert bad_image in text and bad_label in text  # each skip is reported with its file
    reason = next(line for line in text.splitlines() if bad_image in line)
    assert "cannot identify image file" in reason and "pi_heif" not in reason  # the reason is the image, not a module
    train_files = [f.split("/")[-1] for f in model.trainer.train_loader.dataset.im_files]
    assert bad_image not in train_files and bad_label not in train_files
    assert len(train_files) == 22


def test_missing_dataset_says_where_it_looked_and_how_to_get_coco(tmp_path):
    data = tmp_path / "coco.yaml"
    src = (__import__("mod_vision").nn.tasks.MODEL_DIR.parents[1] / "data" / "coco.yaml").read_text()
    data.write_text(src.replace("path: ../datasets/coco", f"path: {tmp_path / 'nowhere'}"))
    with pytest.raises(FileNotFoundError) as e:
        MoDYOLO("modvit-det.yaml").train(data=str(data), project=str(tmp_path), **TRAIN_ARGS)
    assert "nowhere" in str(e.value) and "cocodataset.org" in str(e.value)


def test_predict_capacity_out_of_range(det_run):
    model = MoDYOLO(det_run / "weights" / "best.pt")
    with pytest.raises(ValueError, match=r"range \(0, 1\]"):
        model.predict(ASSETS / "bus.jpg", imgsz=96, capacity=0)


def test_odd_predict_sizes_are_letterboxed(det_run):
    model = MoDYOLO(det_run / "weights" / "best.pt")
    for imgsz in (97, (75, 130), 20):
        r = model.predict(ASSETS / "zidane.jpg", imgsz=imgsz)
        assert r[0].orig_shape == (720, 1280) and r[0].token_share > 0


def test_cli_rejects_unknown_mode_and_bad_args():
    with pytest.raises(SystemExit, match="unknown mode 'fly'"):
        run(["fly"])
    with pytest.raises(SystemExit, match="expected key=value, got 'epochs'"):
        run(["train", "epochs"])


def test_cli_help_lists_modes_and_capacity(capsys):
    run(["help"])
    out = capsys.readouterr().out
    for word in ("train", "val", "predict", "export", "sample-data", "capacity="):
        assert word in out


def test_a_broken_video_in_a_folder_of_images_is_skipped_and_the_images_predicted(det_run, sample_yaml, tmp_path, caplog):
    from .conftest import images_with_broken_files

    folder = tmp_path / "mixed"
    images = images_with_broken_files(sample_yaml, folder, ("broken.mp4",))
    results = MoDYOLO(det_run / "weights" / "best.pt").predict(str(folder), imgsz=96, verbose=False)
    assert sorted(Path(r.path).name for r in results) == images
    assert "broken.mp4" in caplog.text and "cannot read it as a video" in caplog.text
