"""The capacity sweep (mAP vs capacity) and the latency benchmark: outputs and their invariants, never timings."""

from __future__ import annotations

import csv
import math

import cv2
import pytest
import torch

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


def test_benchmark_rows_flops_and_outputs(tmp_path, capfd):
    records = run(["benchmark", "imgsz=64", "batch=1", "runs=2", "warmup=0", "yolo=yolo11n.yaml", "threads=1",
                   f"project={tmp_path}", "name=b", "capacities=[1.0,0.5,0.125]"])
    parts = [(r["part"], r["capacity"]) for r in records]
    assert parts == [("model", ""), ("model", 1.0), ("model", 0.5), ("model", 0.125),
                     ("backbone", ""), ("backbone", 1.0), ("backbone", 0.5), ("backbone", 0.125), ("model", "")]
    for part in ("model", "backbone"):
        rs = [r for r in records if r["part"] == part and r["row"].startswith("modvit")]
        dense, routed = rs[0], rs[1:]
        assert [r["gflops"] for r in routed] == sorted((r["gflops"] for r in routed), reverse=True)
        # capacity 1.0 processes every token, as the dense twin does, plus the routers: no FLOP saving to expect
        assert routed[0]["capacity"] == 1.0 and 0.9 < routed[0]["ideal_speedup"] <= 1.0
        assert routed[-1]["ideal_speedup"] > 1.0  # capacity 0.125 skips most tokens
        for r in routed:
            assert r["p10_ms"] <= r["latency_ms"] <= r["p90_ms"] and r["peak_mem_MB"] > 0
    assert records[-1]["row"] == "yolo11n"
    assert "USDT" not in capfd.readouterr().err  # the CPU profiler's native start/stop lines are not shown
    out = tmp_path / "b"
    assert "targets at imgsz 64, batch 1" in (out / "results.md").read_text()
    with open(out / "results.csv") as f:
        assert len(list(csv.DictReader(f))) == len(records)
    assert cv2.imread(str(out / "latency_vs_capacity.png")) is not None


def test_benchmark_summary_of_hand_built_rows_with_known_flops_times_and_memory():
    """Two 1x1 convolutions, whose FLOPs (2 per multiply-add) and output sizes are known, timed by hand: each derived
    column against its value worked out here."""
    from torch import nn

    from mod_vision.benchmark import Row, summarize

    imgsz, x = 8, torch.zeros(1, 3, 8, 8)
    wide = Row("wide", "model", nn.Conv2d(3, 8, 1, bias=False).eval(), times=[0.004] * 10)  # the dense reference
    narrow = Row("narrow", "model", nn.Conv2d(3, 2, 1, bias=False).eval(), family="yolo", times=[0.002] * 10)
    with torch.inference_mode():
        a, b = summarize([wide, narrow], imgsz, 1, x)
    assert a["gflops"] == pytest.approx(2 * 8 * 3 * 64 / 1e9) and b["gflops"] == pytest.approx(2 * 2 * 3 * 64 / 1e9)
    assert a["params_M"] == pytest.approx(24 / 1e6) and b["params_M"] == pytest.approx(6 / 1e6)
    assert [a["p10_ms"], a["latency_ms"], a["p90_ms"], b["latency_ms"]] == pytest.approx([4.0, 4.0, 4.0, 2.0])
    assert a["peak_mem_MB"] == pytest.approx(8 * 64 * 4 / 2**20)  # one float32 output of 8 x 8 x 8
    assert a["speedup"] == pytest.approx(1.0) and a["ideal_speedup"] == pytest.approx(1.0)
    # half the time at a quarter of the FLOPs: 2x measured, 4x FLOP-ideal, half of the ideal reached
    assert b["speedup"] == pytest.approx(2.0) and b["ideal_speedup"] == pytest.approx(4.0)
    assert b["share_of_ideal"] == pytest.approx(0.5)


def test_peak_memory_on_cpu_prints_nothing_from_the_profiler(capfd):
    from torch import nn

    from mod_vision.benchmark import peak_memory_mb

    peak = peak_memory_mb(nn.Conv2d(3, 4, 3, bias=False).eval(), torch.zeros(1, 3, 8, 8))
    assert peak == pytest.approx(4 * 6 * 6 * 4 / 2**20)  # one float32 output of 4 x 6 x 6
    out = capfd.readouterr()
    assert "USDT" not in out.err and "profiler_start" not in out.err and not out.out


def test_benchmark_rejects_a_model_without_routing(tmp_path):
    with pytest.raises(ValueError, match="has no routed blocks"):
        run(["benchmark", "model=modvit-det-dense.yaml", "imgsz=64", "runs=1", f"project={tmp_path}"])
