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
