"""One home for each fact: the report helper every tool writes its tables with, the default capacity list, and tools
that import only the package."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from mod_vision.defaults import DEFAULT_CAPACITIES
from mod_vision.report import markdown_table, write_csv

from .test_dynamic_tools import ROOT, _tool


def test_markdown_table_formats_each_kind_of_cell():
    rows = [{"name": "a|b", "n": 3, "x": 0.123456, "d": -0.5, "gone": None},
            {"name": "c", "n": 10, "x": 2.0, "d": 0.25, "gone": ""}]  # fmt: skip
    assert markdown_table(rows, floatfmt={"d": "+.2f"}, missing="-").splitlines() == [
        "| name | n | x | d | gone |",
        "|---|---|---|---|---|",
        "| a\\|b | 3 | 0.123 | -0.50 | - |",  # a pipe cannot split a cell; floats .3g unless the column is named
        "| c | 10 | 2 | +0.25 | - |",
    ]
    # chosen columns, in the order given; a key a row lacks is missing; one format for every float
    assert markdown_table(rows, ["x", "extra"], floatfmt=".1f").splitlines()[2:] == ["| 0.1 |  |", "| 2.0 |  |"]
    assert markdown_table([]) == "|  |\n|"


def test_write_csv_round_trips_and_leaves_absent_keys_empty(tmp_path):
    rows = [{"a": 1, "b": 0.5}, {"a": 2}]
    path = write_csv(tmp_path / "t.csv", rows)
    with open(path) as f:
        assert list(csv.DictReader(f)) == [{"a": "1", "b": "0.5"}, {"a": "2", "b": ""}]


def test_every_default_capacity_list_is_the_one_in_defaults(sample_yaml, tmp_path, monkeypatch):
    """Called without capacities, each entry point runs DEFAULT_CAPACITIES: model.info()'s GFLOPs table, a sweep (the
    API, the function and the CLI), the benchmark and quality_bench."""
    from types import SimpleNamespace

    from mod_vision import MoDYOLO
    from mod_vision.benchmark import benchmark
    from mod_vision.cli import run
    from mod_vision.engine.sweep import capacity_sweep
    from mod_vision.flops import capacity_table

    model, defaults = MoDYOLO("modvit-det.yaml"), list(DEFAULT_CAPACITIES)
    assert [c for c, _ in capacity_table(model.model, imgsz=64)] == defaults
    validated = []

    def val(self, capacity=None, **kwargs):  # a validation that records the capacity it was asked for
        validated.append(capacity)
        (Path(kwargs["project"]) / kwargs["name"]).mkdir(parents=True)  # the run folder a validation makes
        return SimpleNamespace(coco={}, token_share=capacity, box=SimpleNamespace(map=0.0))

    monkeypatch.setattr(MoDYOLO, "val", val)
    args = dict(data=str(sample_yaml), imgsz=64)
    for name, sweep in (
        ("val_sweep", lambda: model.val_sweep(**args, project=str(tmp_path / "api"))),
        ("capacity_sweep", lambda: capacity_sweep(model, **args, project=str(tmp_path / "function"))),
        ("cli", lambda: run(["sweep", "model=modvit-det.yaml", f"data={sample_yaml}", "imgsz=64",
                             f"project={tmp_path / 'cli'}"])),
    ):  # fmt: skip
        validated.clear()
        rows, _ = sweep()
        assert validated == [r["capacity"] for r in rows] == defaults, name
    records = benchmark(imgsz=64, batch=1, runs=2, warmup=0, yolo=None, threads=torch.get_num_threads(),
                        project=str(tmp_path), name="benchmark")  # fmt: skip
    assert [r["capacity"] for r in records if r["part"] == "model" and r["capacity"] != ""] == defaults
    assert _tool("quality_bench").parse_args([]).capacities == defaults


def test_every_tool_loads_from_another_folder_with_only_the_installed_package(tmp_path):
    """In a fresh interpreter started in an empty folder, each tool loads from its file without the repository's
    tests and leaves the import path as it found it (tools reach mod_vision as users do, through the package)."""
    code = textwrap.dedent(
        f"""
        import importlib.util, json, sys
        from pathlib import Path
        path, out = list(sys.path), {{}}
        for f in sorted(Path({str(ROOT / "tools")!r}).glob("*.py")):
            try:
                spec = importlib.util.spec_from_file_location("tool_" + f.stem, f)
                spec.loader.exec_module(importlib.util.module_from_spec(spec))
                out[f.stem] = ("changed sys.path" if sys.path != path else
                               "imported tests" if "tests" in sys.modules else "ok")
            except BaseException as e:
                out[f.stem] = type(e).__name__ + ": " + str(e)
            sys.path[:] = path
            sys.modules.pop("tests", None)
        print(json.dumps(out))
        """
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    p = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    out = json.loads(p.stdout.strip().splitlines()[-1])
    assert sorted(out) == sorted(f.stem for f in (ROOT / "tools").glob("*.py")) and len(out) > 10
    assert {tool: said for tool, said in out.items() if said != "ok"} == {}


def test_model_table_prints_one_row_per_yaml_and_scale():
    table = _tool("model_table").main(["--imgsz", "64", "--yamls", "modvit-det-deep.yaml", "modvit-det-vits.yaml",
                                       "--scales", "n", "s"])  # fmt: skip
    lines = table.splitlines()
    assert lines[0] == "| model | params (M) | capacity | GFLOPs@64 |"
    # a YAML with scales gets one row per scale; the timm-shaped one has none
    assert [line.split(" | ")[0] for line in lines[2:]] == ["| modvit-det-deep-n", "| modvit-det-deep-s", "| modvit-det-vits"]
    assert [line.split(" | ")[2] for line in lines[2:]] == ["0.25", "0.25", "0.5"]


def test_quant_table_reports_deltas_against_fp32_and_failed_variants():
    table = _tool("export_quant_table").quant_table([
        ("PyTorch fp32", (0.5, 0.25, 0.2)), ("ONNX fp16", (0.5, 0.2625, 0.15)), ("ncnn", "failed: ExportOpError: TopK"),
    ])  # fmt: skip
    assert table.splitlines() == [
        "| variant | mAP50(B) | mAP50-95(B) | Δ mAP50-95(B) vs fp32 | mAP50-95(M) | Δ (M) |",
        "|---|---|---|---|---|---|",
        "| PyTorch fp32 | 0.5000 | 0.2500 | +0.0000 | 0.2000 | +0.0000 |",
        "| ONNX fp16 | 0.5000 | 0.2625 | +0.0125 | 0.1500 | -0.0500 |",
        "| ncnn | failed: ExportOpError: TopK |  |  |  |  |",
    ]
    detect_only = _tool("export_quant_table").quant_table([("PyTorch fp32", (0.5, 0.25, None))])
    assert detect_only.splitlines()[0] == "| variant | mAP50(B) | mAP50-95(B) | Δ mAP50-95(B) vs fp32 |"


def test_mjpeg_server_refuses_an_unknown_end_or_a_drop_past_the_last_frame():
    import numpy as np

    from mod_vision.mjpeg import MJPEGServer

    frames = [np.zeros((8, 8, 3), np.uint8)] * 3
    with pytest.raises(ValueError, match="end='hang': use 'close', 'drop', 'stall' or 'reconnect'"):
        MJPEGServer(frames, end="hang")
    with pytest.raises(ValueError, match="needs 0 <= drop_after < 3 \\(the frame count\\), got 3"):
        MJPEGServer(frames, end="drop", drop_after=3)
