"""tools/dynamic_compute.py and tools/predictor_probe.py: their statistics, and the probe on a trained model."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def _tool(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_auc_is_the_rank_statistic():
    auc = _tool("predictor_probe").auc
    target = torch.tensor([0.0, 0.0, 1.0, 1.0])
    assert auc(torch.tensor([0.1, 0.2, 0.3, 0.4]), target) == 1.0
    assert auc(torch.tensor([0.4, 0.3, 0.2, 0.1]), target) == 0.0
    # one of the four (positive, negative) pairs is ordered wrongly
    assert auc(torch.tensor([0.1, 0.35, 0.3, 0.4]), target) == 0.75


def test_bootstrap_gap_brackets_the_difference_of_means():
    gap = _tool("dynamic_compute").bootstrap_gap
    assert gap([0.1] * 10, [0.3] * 10) == pytest.approx((0.2, 0.2))  # no spread, no interval
    lo, hi = gap([0.1, 0.2, 0.3, 0.2], [0.5, 0.6, 0.4, 0.5])
    assert lo < 0.3 < hi and lo > 0  # the means differ by 0.3, and every resample keeps the order
    assert gap([0.1, 0.2], [0.5, 0.6]) == gap([0.1, 0.2], [0.5, 0.6])  # seeded


def test_predictor_probe_reports_every_routed_block(det_run, sample_yaml, capsys):
    from mod_vision import MoDYOLO

    _tool("predictor_probe").main([str(det_run / "weights" / "best.pt"), str(sample_yaml), "--imgsz", "96",
                                   "--fit-steps", "2"])  # fmt: skip
    out = capsys.readouterr().out
    blocks = len(MoDYOLO(det_run / "weights" / "best.pt").model.routed_blocks())
    rows = [line for line in out.splitlines() if line.startswith("| ") and "ObjectPredictor" in line]
    assert [int(r.split("|")[1]) for r in rows] == list(range(blocks))
    assert all(0.0 <= float(r.split("|")[3]) <= 1.0 for r in rows)  # a ROC AUC
    assert "token only: val ROC AUC" in out and "token + image mean: val ROC AUC" in out


def test_predictor_probe_refuses_a_block_out_of_range(det_run, sample_yaml, capsys):
    with pytest.raises(SystemExit):
        _tool("predictor_probe").main([str(det_run / "weights" / "best.pt"), str(sample_yaml), "--block", "9"])
    assert "--block 9 is out of range: the model has 3 routed blocks (0-2)" in capsys.readouterr().err


def test_dynamic_compute_report_counts_every_image_and_compares_static_at_the_same_share(det_run, tmp_path):
    import csv

    tool = _tool("dynamic_compute")
    tool.main(["--weights", str(det_run / "weights" / "best.pt"), "--n-train", "2", "--n-val", "12", "--data-size", "64",
               "96", "--imgsz", "64", "--data-root", str(tmp_path / "data"), "--project", str(tmp_path / "run")])  # fmt: skip
    out = tmp_path / "run" / "report"
    with open(out / "per_image.csv") as f:
        images = list(csv.DictReader(f))
    assert len(images) == 12 and set(images[0]) == {"image", "objects", "background", "token_share"}
    report = (out / "dynamic_compute.md").read_text()
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in report.splitlines() if line.startswith("| ")]
    table = {row[0]: row[1:] for row in cells}
    assert table["all"][0] == "12"
    for bucket in ("0 objects", "1-2 objects", "3+ objects"):
        n = sum(tool.bucket(int(r["objects"])) == bucket for r in images)
        assert table.get(bucket, ["0"])[0] == str(n)
    mean = sum(float(r["token_share"]) for r in images) / 12
    assert float(table["all"][1]) == pytest.approx(mean, abs=5e-4)
    dynamic, static = table["dynamic [0.05, 1.0]"], table["static, same share"]
    assert float(static[2]) == pytest.approx(float(dynamic[2]), abs=0.05)  # static top-k at the dynamic mean share
    # these 12 images hold no empty one, so there is no busy-minus-empty gap to report, and the report says so
    assert not any(r["objects"] == "0" for r in images) and "no gap: the val images lack empty" in report


def test_share_tables_group_images_and_give_the_busy_minus_empty_gap():
    rows = [{"objects": n, "background": bg, "token_share": t}
            for n, bg, t in [(0, "flat", 0.1), (0, "textured", 0.2), (1, "flat", 0.3), (3, "flat", 0.5),
                             (4, "textured", 0.6), (5, "flat", 0.7)]]  # fmt: skip
    groups, gaps = _tool("dynamic_compute").share_tables(rows)
    by_name = {g["group"]: g for g in groups}
    assert by_name["all"]["images"] == 6 and by_name["3+ objects"]["images"] == 3
    assert by_name["flat, 0 objects"]["mean token share"] == pytest.approx(0.1)
    assert "textured, 1-2 objects" not in by_name  # no image there: no row
    gap = {g["background"]: g["3+ objects minus 0 objects (mean token share)"] for g in gaps}
    assert gap == pytest.approx({"all": 0.6 - 0.15, "flat": 0.6 - 0.1, "textured": 0.6 - 0.2})
    assert all(g["95% bootstrap interval"].startswith("[+") for g in gaps)  # every busy image beats every empty one
