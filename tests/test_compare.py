"""`mod-vision compare` (mod_vision/compare.py): arms trained alike, a CSV and a report, reuse; and its thin tools."""

from __future__ import annotations

import csv

import pytest

from mod_vision.cli import main
from tests.test_dynamic_tools import _tool

ARMS = "arms=[modvit-det.yaml,yolo11n.yaml]"


@pytest.mark.slow  # trains
def test_compare_two_arms_writes_csv_and_report_and_reuses_finished_arms(sample_yaml, tmp_path, capsys):
    argv = ["compare", "name=t", f"project={tmp_path}", ARMS, f"data={sample_yaml}", "epochs=1", "imgsz=64", "batch=8",
            "seeds=[0]", "workers=0", "latency_imgsz=[64]", "runs=2"]  # fmt: skip
    main(argv)
    run = tmp_path / "t"
    with open(run / "results-sample-e1-i64.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["arm"], r["seed"]) for r in rows] == [("modvit-det", "0"), ("yolo11n", "0")]
    for r in rows:
        assert 0 <= float(r["box_AP"]) <= 1 and float(r["ms@64"]) > 0
        assert r["box_AP_flat"] and r["box_AP_textured"]  # the sample data records its background kinds
    assert rows[1]["token_share"] == ""  # a stock arm routes nothing
    text = (run / "results.md").read_text()
    assert text.splitlines()[3] == "mod-vision " + " ".join(argv)  # the command line at the top
    header = next(line for line in text.splitlines() if line.startswith("| arm"))
    for column in ("seeds", "box AP (per seed)", "box AP (mean)", "box AP50 (mean)", "box AP flat (mean)",
                   "box AP textured (mean)", "token share", "ms @ 64"):  # fmt: skip
        assert column in header
    assert any(line.startswith("| modvit-det |") for line in text.splitlines())
    assert any(line.startswith("| yolo11n |") for line in text.splitlines())

    weights = run / "train" / "modvit-det__s0" / "weights" / "best.pt"
    stamp = weights.stat().st_mtime_ns
    capsys.readouterr()
    main(argv)
    assert "modvit-det seed 0: done, reusing" in capsys.readouterr().out
    assert weights.stat().st_mtime_ns == stamp


@pytest.mark.parametrize(
    "arg, message",
    [
        ("arms=[nope-det.yaml]", "unknown arm 'nope-det.yaml'"),
        ("epochs=0", "epochs must be an integer >= 1"),
        ("epoch=3", "unknown argument 'epoch' (did you mean epochs"),
    ],
)
def test_bad_arguments_are_one_line_and_exit_2(arg, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["compare", f"project={tmp_path}", "latency_imgsz=[]", arg])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("mod-vision compare: ") and message in err and "\n" not in err


def test_detector_compare_tool_times_arms_without_training(sample_yaml, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = _tool("detector_compare").main(["--name", "t", "--data", str(sample_yaml), "--arms", "yolo11n.yaml",
                                           "modvit-det.yaml", "--no-train", "--latency-imgsz", "64", "--runs", "2"])
    assert path == tmp_path / "runs" / "detector_compare" / "t" / "results.md" or path.resolve() == (
        tmp_path / "runs" / "detector_compare" / "t" / "results.md")
    text = path.read_text()
    assert "python tools/detector_compare.py --name t" in text
    assert sum(line.startswith(("| yolo11n |", "| modvit-det |")) for line in text.splitlines()) == 2


def test_benchmark_tool_runs_one_tiny_row(tmp_path):
    records = _tool("benchmark").main(["--model", "modvit-det-n.yaml", "--imgsz", "64", "--batch", "1", "--capacities",
                                       "0.5", "--yolo", "--runs", "2", "--warmup", "0", "--threads", "1", "--project",
                                       str(tmp_path), "--name", "b"])  # fmt: skip
    assert records and all(r["imgsz"] == 64 for r in records)
