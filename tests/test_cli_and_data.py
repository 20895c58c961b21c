"""The sample-data generator and the CLI's main job."""

import json

import numpy as np
import pytest

from mod_vision.cli import run
from mod_vision.data import make_sample_data


def test_sample_data_is_deterministic_and_complete(tmp_path):
    a = make_sample_data(tmp_path / "a", n_train=12, n_val=6, seed=3, size=(64, 96))
    b = make_sample_data(tmp_path / "b", n_train=12, n_val=6, seed=3, size=(64, 96))
    ja = json.loads((a.parent / "annotations" / "instances_train.json").read_text())
    jb = json.loads((b.parent / "annotations" / "instances_train.json").read_text())
    assert ja == jb
    assert {c["name"] for c in ja["categories"]} == {"circle", "square", "triangle", "star"}
    for ann in ja["annotations"]:
        assert set(ann) >= {"bbox", "segmentation", "area", "iscrowd", "category_id", "image_id"}
        assert ann["area"] > 0 and ann["iscrowd"] == 0 and len(ann["segmentation"][0]) >= 6
    kinds = {im["background"] for im in ja["images"]}
    assert kinds == {"flat", "textured"}
    with_objects = {a["image_id"] for a in ja["annotations"]}
    labels = sorted((a.parent / "labels" / "train").glob("*.txt"))
    assert len(labels) == len(with_objects)  # images without objects have no label file: background images
    rows = [line.split() for f in labels for line in f.read_text().splitlines()]
    assert len(rows) == len(ja["annotations"])
    assert all(len(r) >= 7 and 0 <= int(r[0]) < 4 and all(0 <= float(x) <= 1 for x in r[1:]) for r in rows)
    c = make_sample_data(tmp_path / "c", n_train=12, n_val=6, seed=4, size=(64, 96))
    assert json.loads((c.parent / "annotations" / "instances_train.json").read_text()) != ja


def test_sample_data_has_empty_images(tmp_path):
    y = make_sample_data(tmp_path / "d", n_train=60, n_val=2, seed=0, size=(64, 64))
    j = json.loads((y.parent / "annotations" / "instances_train.json").read_text())
    empty = {im["id"] for im in j["images"]} - {a["image_id"] for a in j["annotations"]}
    assert 0 < len(empty) < 20


@pytest.mark.slow  # trains
def test_cli_train_without_data_uses_generated_sample_data(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    metrics = run(["train", "epochs=1", "imgsz=64", "batch=16", "workers=0", "plots=False", f"project={tmp_path}"])
    assert (tmp_path / "datasets" / "mod-sample" / "sample.yaml").is_file()
    assert set(metrics.coco) >= {"metrics/coco_AP(B)", "metrics/coco_AP50(B)"}
    assert np.isfinite(metrics.coco["metrics/coco_AP(B)"])
    from ultralytics.utils import YAML

    args = YAML.load(next(tmp_path.glob("train*/args.yaml")))
    assert args["epochs"] == 1 and args["router_rank"] == 1.0  # the command line over cfg/train-sample.yaml's keys


def test_cli_val_and_predict(det_run, sample_yaml, video, tmp_path):
    best = str(det_run / "weights" / "best.pt")
    m = run(["val", f"model={best}", f"data={sample_yaml}", "imgsz=96", "capacity=0.25", f"project={tmp_path}"])
    assert m.token_share == pytest.approx(0.25)
    run(["predict", f"model={best}", f"source={video}", "imgsz=96", "save=True", f"project={tmp_path}", "name=p"])
    assert list((tmp_path / "p").glob("clip.*"))


def test_scenes_split_has_larger_images_and_more_smaller_objects(tmp_path):
    import json

    plain = json.loads((make_sample_data(tmp_path / "p", n_train=20, n_val=4, seed=0).parent / "annotations" /
                        "instances_train.json").read_text())  # fmt: skip
    scenes = json.loads((make_sample_data(tmp_path / "s", n_train=30, n_val=4, seed=0, scenes=True).parent /
                         "annotations" / "instances_train.json").read_text())  # fmt: skip
    assert all(480 <= im["width"] <= 640 and 480 <= im["height"] <= 640 for im in scenes["images"])
    rel = lambda d: [a["area"] / (im["width"] * im["height"])  # noqa: E731 object area over image area
                     for a in d["annotations"] for im in d["images"] if im["id"] == a["image_id"]]
    assert len(scenes["annotations"]) > 2 * len(plain["annotations"])
    assert sorted(rel(scenes))[len(rel(scenes)) // 2] < sorted(rel(plain))[len(rel(plain)) // 2] / 4  # median smaller
    assert any(a > 0.02 for a in rel(scenes))  # a few large ones too
    with_objects = {a["image_id"] for a in scenes["annotations"]}
    assert any(im["id"] not in with_objects for im in scenes["images"])  # and some empty images
