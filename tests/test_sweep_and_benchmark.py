"""The capacity sweep (mAP vs capacity) and the latency benchmark: outputs and their invariants, never timings."""

from __future__ import annotations

import csv
import math

import cv2
import pytest

from mod_vision import MoDYOLO
from mod_vision.cli import run


def test_capacity_sweep_table_plot_and_restored_capacity(det_run, sample_yaml, tmp_path):
    model = MoDYOLO(det_run / "weights" / "best.pt")
    own = model.model.capacities()
    rows, save_dir = model.val_sweep((1.0, 0.25), data=str(sample_yaml), imgsz=96, batch=8, project=str(tmp_path))
    assert [r["capacity"] for r in rows] == [1.0, 0.25]
    assert rows[0]["gflops"] > rows[1]["gflops"]
    assert rows[0]["token_share"] == pytest.approx(1.0) and rows[1]["token_share"] == pytest.approx(0.25, abs=0.05)
    assert all(0 <= r["coco_AP(B)"] <= 1 for r in rows)
    assert model.model.capacities() == own
    with open(save_dir / "capacity_sweep.csv") as f:
        assert [float(r["capacity"]) for r in csv.DictReader(f)] == [1.0, 0.25]
    assert "| capacity |" in (save_dir / "capacity_sweep.md").read_text()
    assert cv2.imread(str(save_dir / "capacity_sweep.png")) is not None


def test_capacity_sweep_takes_per_block_schedules(det_run, sample_yaml, tmp_path):
    """A per-block schedule (SparseViT's per-layer sparsity) is one row, validated at exactly that schedule."""
    model = MoDYOLO(det_run / "weights" / "best.pt")
    own = model.model.capacities()
    r = len(own)
    assert r >= 2  # so the schedule below differs per block
    schedule = [1.0] + [0.25] * (r - 1)
    rows, save_dir = model.val_sweep((0.25, schedule), data=str(sample_yaml), imgsz=96, batch=8, project=str(tmp_path))
    label = "[" + ", ".join(f"{c:g}" for c in schedule) + "]"
    assert [row["capacity"] for row in rows] == [0.25, label]
    # 1.0 in the first block and 0.25 elsewhere: more tokens and FLOPs than 0.25 everywhere, exactly the mean share
    assert rows[1]["gflops"] > rows[0]["gflops"]
    tokens = (96 // 16) ** 2
    assert rows[1]["token_share"] == pytest.approx((tokens + (r - 1) * math.ceil(0.25 * tokens)) / (r * tokens))
    assert (save_dir / ("capacity_" + "-".join(f"{c:g}" for c in schedule))).is_dir()
    assert model.model.capacities() == own
    with open(save_dir / "capacity_sweep.csv") as f:
        assert [row["capacity"] for row in csv.DictReader(f)] == ["0.25", label]
    assert cv2.imread(str(save_dir / "capacity_sweep.png")) is not None
    with pytest.raises(ValueError, match=f"1 capacities given for {r} routed blocks"):
        model.val_sweep(([0.5],), data=str(sample_yaml), imgsz=96, project=str(tmp_path))


def test_capacity_sweep_of_a_dense_model_is_refused(sample_yaml):
    with pytest.raises(ValueError, match="no routed blocks"):
        MoDYOLO("modvit-det-dense.yaml").val_sweep((1.0,), data=str(sample_yaml))


def test_benchmark_rows_flops_and_outputs(tmp_path):
    records = run(["benchmark", "imgsz=64", "batch=1", "runs=2", "warmup=0", "yolo=yolo11n.yaml", "threads=1",
                   f"project={tmp_path}", "name=b", "capacities=[1.0,0.5,0.125]"])
    parts = [(r["part"], r["capacity"]) for r in records]
    assert parts == [("model", ""), ("model", 1.0), ("model", 0.5), ("model", 0.125),
                     ("backbone", ""), ("backbone", 1.0), ("backbone", 0.5), ("backbone", 0.125), ("model", "")]
    for part in ("model", "backbone"):
        rs = [r for r in records if r["part"] == part and r["row"].startswith("modvit")]
        dense, routed = rs[0], rs[1:]
        assert [r["gflops"] for r in routed] == sorted((r["gflops"] for r in routed), reverse=True)
        for r in routed:
            assert r["ideal_speedup"] == pytest.approx(dense["gflops"] / r["gflops"])
            assert r["share_of_ideal"] == pytest.approx(r["speedup"] / r["ideal_speedup"])
            assert r["p10_ms"] <= r["latency_ms"] <= r["p90_ms"] and r["peak_mem_MB"] > 0
    assert records[-1]["row"] == "yolo11n"
    out = tmp_path / "b"
    assert "targets at imgsz 64, batch 1" in (out / "results.md").read_text()
    with open(out / "results.csv") as f:
        assert len(list(csv.DictReader(f))) == len(records)
    assert cv2.imread(str(out / "latency_vs_capacity.png")) is not None


def test_benchmark_rejects_a_model_without_routing(tmp_path):
    with pytest.raises(ValueError, match="has no routed blocks"):
        run(["benchmark", "model=modvit-det-dense.yaml", "imgsz=64", "runs=1", f"project={tmp_path}"])
