"""tools/detector_compare.py: settings checks, finished-run detection and the report, without training."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from tests.test_dynamic_tools import _tool


def test_extra_needs_key_value_and_parses_yaml(tmp_path):
    tool = _tool("detector_compare")
    args = tool.parse_args(["--data", str(tmp_path / "d.yaml"), "--extra", "capacity_range=[0.25,1.0]", "router_aux=0.2"])
    assert args.extra == {"capacity_range": [0.25, 1.0], "router_aux": 0.2}
    with pytest.raises(SystemExit):
        tool.parse_args(["--data", "d.yaml", "--extra", "capacity_range"])


def test_finished_checkpoints_are_told_apart(tmp_path):
    tool = _tool("detector_compare")
    torch.save({"epoch": -1}, tmp_path / "done.pt")
    torch.save({"epoch": 3}, tmp_path / "mid.pt")
    assert tool.finished(tmp_path / "done.pt") and not tool.finished(tmp_path / "mid.pt")


def test_report_gives_per_seed_and_mean_ap_and_latency_rows(tmp_path):
    tool = _tool("detector_compare")
    results = [
        {"arm": "a.yaml", "seed": 0, "box_AP": 0.2, "box_AP50": 0.3, "token_share": 0.25},
        {"arm": "a.yaml", "seed": 1, "box_AP": 0.3, "box_AP50": 0.4, "token_share": 0.25},
        {"arm": "yolo11n.yaml", "seed": 0, "box_AP": 0.1, "box_AP50": 0.2, "token_share": None},
    ]
    lat = {640: {"a.yaml": 10.0, "yolo11n.yaml": 12.0, "yolo12n.yaml": 15.0}}
    args = SimpleNamespace(name="t", data="d.yaml", epochs=1, imgsz=64, batch=2, extra={}, threads=2, runs=20)
    text = tool.report(results, lat, tmp_path, args, "python tools/detector_compare.py").read_text()
    rows = {line.split("|")[1].strip(): line for line in text.splitlines() if line.startswith("| ") and "---" not in line}
    assert "20.00 / 30.00" in rows["a"] and "| 25.00 |" in rows["a"] and "| 0.250 |" in rows["a"] and "10.0" in rows["a"]
    assert "| 10.00 |" in rows["yolo11n"] and "12.0" in rows["yolo11n"]
    assert "15.0" in rows["yolo12n"]  # timed only, not trained: a latency row
    assert (tmp_path / "ap_vs_latency.png").stat().st_size > 0


def test_background_splits_score_each_kind_on_its_own_val_list(tmp_path):
    from ultralytics.utils import YAML

    from mod_vision.data import make_sample_data

    tool = _tool("detector_compare")
    data = make_sample_data(tmp_path / "d", n_train=2, n_val=6, size=(64, 64))
    splits = tool.background_splits(str(data), tmp_path)
    assert set(splits) == {"flat", "textured"}
    for kind, path in splits.items():
        spec = YAML.load(path)
        assert spec["val"] == f"val_{kind}.txt" and spec["names"] == YAML.load(data)["names"]
        assert (Path(spec["path"]) / spec["val"]).is_file()
    plain = tmp_path / "plain.yaml"
    YAML.save(plain, {"path": str(tmp_path), "val": "images", "names": {0: "a"}})
    assert tool.background_splits(str(plain), tmp_path) == {}


def test_report_shows_background_columns_when_every_seed_has_them(tmp_path):
    tool = _tool("detector_compare")
    results = [
        {"arm": "yolo11n.yaml", "seed": 0, "box_AP": 0.1, "box_AP50": 0.2, "token_share": None},
        {"arm": "a.yaml", "seed": 0, "box_AP": 0.2, "box_AP50": 0.3, "box_AP_flat": 0.3, "box_AP_textured": 0.1,
         "token_share": 0.25},
    ]
    args = SimpleNamespace(name="t", data="d.yaml", epochs=1, imgsz=64, batch=2, extra={}, threads=2, runs=20)
    text = tool.report(results, {}, tmp_path, args, "cmd").read_text()
    header = next(line for line in text.splitlines() if line.startswith("| arm"))
    assert "box AP flat (mean)" in header and "box AP textured (mean)" in header
    row = next(line for line in text.splitlines() if line.startswith("| a "))
    assert "| 30.00 | 10.00 |" in row


def test_report_shows_mask_ap_only_when_every_seed_of_an_arm_has_it(tmp_path):
    tool = _tool("detector_compare")
    results = [
        {"arm": "yolo11n-seg.yaml", "seed": 0, "box_AP": 0.1, "box_AP50": 0.2, "mask_AP": 0.05, "token_share": None},
        {"arm": "yolo11n-seg.yaml", "seed": 1, "box_AP": 0.2, "box_AP50": 0.3, "mask_AP": 0.15, "token_share": None},
        {"arm": "a.yaml", "seed": 0, "box_AP": 0.2, "box_AP50": 0.3, "token_share": 0.25},
    ]
    args = SimpleNamespace(name="t", data="d.yaml", epochs=1, imgsz=64, batch=2, extra={}, threads=2, runs=20)
    text = tool.report(results, {}, tmp_path, args, "cmd").read_text()
    rows = {line.split("|")[1].strip(): line for line in text.splitlines() if line.startswith("| ") and "---" not in line}
    assert "| 5.00 / 15.00 | 10.00 |" in rows["yolo11n-seg"]
    assert "5.00" not in rows["a"] and rows["a"].rstrip().endswith("|")
