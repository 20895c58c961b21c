"""One smoke test for each tool that had none: it runs on tiny inputs and gives the output its docstring promises."""

from __future__ import annotations

import pytest

from tests.test_dynamic_tools import _tool


def test_core_before_after_times_the_committed_and_the_working_nn(capsys):
    _tool("core_before_after").main(
        ["--commit", "HEAD", "--model", "modvit-det-n.yaml", "--imgsz", "64", "--runs", "1", "--capacities", "0.5"]
    )
    lines = [line for line in capsys.readouterr().out.splitlines() if line.endswith(" ms")]
    assert [line.split(" @ ")[0].strip() for line in lines] == ["HEAD", "this tree"]
    assert all(float(line.split()[-2]) > 0 for line in lines)


def test_export_bench_times_each_runtime_against_its_dense_twin(tmp_path):
    pytest.importorskip("openvino")
    out = _tool("export_bench").main(
        ["model=modvit-det-n.yaml", "imgsz=64", "runs=1", "warmup=0", f"project={tmp_path}", "name=smoke"]
    )
    table = (tmp_path / "smoke" / "bench.md").read_text()
    for runtime in ("pytorch", "onnxruntime", "openvino"):
        rows = [line for line in table.splitlines() if line.startswith(f"| {runtime} |")]
        assert [r.split("|")[2].strip() for r in rows] == ["dense", "1", "0.5", "0.25"], (runtime, rows)
    assert (tmp_path / "smoke" / "bench.csv").is_file() and out == tmp_path / "smoke"


def test_stream_stall_returns_after_the_capture_timeout(monkeypatch, capsys):
    monkeypatch.setenv("OPENCV_FFMPEG_CAPTURE_OPTIONS", "rw_timeout;1000000")  # 1 s instead of OpenCV's 30
    _tool("stream_stall").main("modvit-det-n.yaml")
    (line,) = [line for line in capsys.readouterr().out.splitlines() if "predict returned after" in line]
    results, seconds = int(line.split(": ")[1].split()[0]), float(line.split("after ")[1].split()[0])
    assert results >= 3 and seconds < 15, line  # the frames served before the stall, then it gives up


def test_floor_ab_times_each_frame_with_the_fast_paths_on_and_off():
    rows = _tool("floor_ab").main(["modnext-det-n.yaml", "--imgsz", "64", "--runs", "1"])
    assert [(r["frame"], r["fast paths"]) for r in rows] == [("flat", "on"), ("flat", "off"), ("busy", "on"),
                                                            ("busy", "off")]
    assert all(r["ms"] > 0 for r in rows)
