"""One home for each fact: the report helper every tool writes its tables with, the default capacity list, and tools
that import only the package."""

from __future__ import annotations

import ast
import csv
import inspect

import pytest

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


def test_every_default_capacity_list_is_the_one_in_defaults():
    from mod_vision import MoDYOLO
    from mod_vision.benchmark import benchmark
    from mod_vision.engine.sweep import capacity_sweep
    from mod_vision.flops import capacity_table

    for fn in (MoDYOLO.val_sweep, capacity_sweep, capacity_table, benchmark):
        assert inspect.signature(fn).parameters["capacities"].default is DEFAULT_CAPACITIES, fn.__qualname__
    assert _tool("quality_bench").parse_args([]).capacities == list(DEFAULT_CAPACITIES)


@pytest.mark.parametrize("tool", sorted(p.stem for p in (ROOT / "tools").glob("*.py")))
def test_tools_import_only_the_package(tool):
    tree = ast.parse((ROOT / "tools" / f"{tool}.py").read_text())
    imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert "tests" not in imported
    assert "sys.path" not in ast.unparse(tree)  # no path tricks to reach modules outside the package


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
