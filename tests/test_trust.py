"""Silent wrong results, lost work, newcomer traps and late errors (issue 16): each behaviour with its test."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from mod_vision.cli import run

from .conftest import IMGSZ
from .test_coco_eval import GroundTruthValidator


def copy_data(sample_yaml: Path, root: Path, edit_json=None, rename=None) -> Path:
    """A copy of the sample data under root; `edit_json(anno)` edits the val json in place, `rename(name) -> name`
    renames val images (and their labels, and the json's file names)."""
    shutil.copytree(sample_yaml.parent, root)
    for cache in root.rglob("*.cache"):
        cache.unlink()
    anno_path = root / "annotations" / "instances_val.json"
    anno = json.loads(anno_path.read_text())
    if rename:
        for im in anno["images"]:
            new = rename(im["file_name"])
            (root / "images" / "val" / im["file_name"]).rename(root / "images" / "val" / new)
            label = root / "labels" / "val" / (Path(im["file_name"]).stem + ".txt")
            if label.exists():
                label.rename(label.with_name(Path(new).stem + ".txt"))
            im["file_name"] = new
    if edit_json:
        edit_json(anno)
    anno_path.write_text(json.dumps(anno))
    yaml = root / "sample.yaml"
    yaml.write_text(yaml.read_text().replace(str(sample_yaml.parent), str(root)))
    return yaml


def recategorise(mapping: dict[int, int]):
    """Edit: the json's category ids (1..4 in the sample data) become mapping[old id]."""

    def edit(anno):
        for c in anno["categories"]:
            c["id"] = mapping[c["id"]]
        for a in anno["annotations"]:
            a["category_id"] = mapping[a["category_id"]]

    return edit


def gt_validate(det_run, data, tmp_path, name):
    GroundTruthValidator.shift = 0.0
    args = dict(model=str(det_run / "weights" / "best.pt"), data=str(data), imgsz=IMGSZ, batch=4, plots=False)
    v = GroundTruthValidator(args={**args, "project": str(tmp_path), "name": name})
    return v(), v


@pytest.mark.parametrize(
    "mapping", [{1: 0, 2: 1, 3: 2, 4: 3}, {1: 7, 2: 3, 3: 42, 4: 90}], ids=["ids-0-to-3", "ids-with-gaps"]
)
def test_coco_category_ids_are_the_jsons_own(det_run, sample_yaml, tmp_path, mapping):
    data = copy_data(sample_yaml, tmp_path / "d", edit_json=recategorise(mapping))
    stats, v = gt_validate(det_run, data, tmp_path, "v")
    assert v.class_map == [mapping[i] for i in (1, 2, 3, 4)]  # circle, square, triangle, star
    written = json.loads((v.save_dir / "predictions.json").read_text())
    assert {p["category_id"] for p in written} <= set(mapping.values())
    assert stats["metrics/coco_AP(B)"] > 0.95  # ground truth scored as predictions: the classes line up


def test_coco_json_with_other_category_names_is_refused_showing_both(det_run, sample_yaml, tmp_path):
    def rename_star(anno):
        anno["categories"][3]["name"] = "hexagon"

    data = copy_data(sample_yaml, tmp_path / "d", edit_json=rename_star)
    with pytest.raises(ValueError, match="do not match the data YAML's names") as e:
        gt_validate(det_run, data, tmp_path, "v")
    text = str(e.value)
    assert "hexagon" in text and "'star'" in text and "instances_val.json" in text


def test_coco_json_named_but_missing_is_an_error_naming_it(det_run, sample_yaml, tmp_path):
    data = copy_data(sample_yaml, tmp_path / "d")
    (tmp_path / "d" / "annotations" / "instances_val.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"coco_json val: .*instances_val\.json .*does not exist"):
        gt_validate(det_run, data, tmp_path, "v")


def test_coco_image_ids_are_matched_by_the_jsons_file_names(det_run, sample_yaml, tmp_path):
    def shift_ids(anno):  # ids no longer equal the (renamed, non-numeric) file stems
        for im in anno["images"]:
            im["id"] += 1000
        for a in anno["annotations"]:
            a["image_id"] += 1000

    data = copy_data(sample_yaml, tmp_path / "d", edit_json=shift_ids, rename=lambda n: f"shape_{n}")
    stats, v = gt_validate(det_run, data, tmp_path, "v")
    anno = json.loads((tmp_path / "d" / "annotations" / "instances_val.json").read_text())
    by_name = {im["file_name"]: im["id"] for im in anno["images"]}
    assert {Path(f).name: i for f, i in v.coco_image_ids.items()} == by_name
    written = json.loads((v.save_dir / "predictions.json").read_text())
    assert {p["image_id"] for p in written} <= set(by_name.values()) and written
    assert stats["metrics/coco_AP(B)"] > 0.95


def test_coco_json_without_any_val_image_fails_loudly(det_run, sample_yaml, tmp_path):
    def other_names(anno):
        for im in anno["images"]:
            im["file_name"] = "elsewhere_" + im["file_name"]

    data = copy_data(sample_yaml, tmp_path / "d", edit_json=other_names)
    with pytest.raises(ValueError, match=r"none of the 8 val images is in .*elsewhere_"):
        gt_validate(det_run, data, tmp_path, "v")
