"""`mod-vision compare` (mod_vision/compare/): arms trained alike, a CSV and a report, reuse; and its thin tools."""

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


def _study(arm: str, scores: dict, own=None, split="s", seed=0, model="m.yaml", **train) -> dict:
    """A capacity study's result as `run_arm` records it, with `scores` {capacity key: (box AP, latency ms)}."""
    eval_ = {key: {"box_AP": ap, "box_AP50": 2 * ap, "mask_AP": ap / 2, "mask_AP50": ap, "gflops": 1.0,
                   "token_share": None if key == "dense" else float(key), "latency_ms": ms, "latency_ratio": ms / 9}
             for key, (ap, ms) in scores.items()}  # fmt: skip
    return {"arm": arm, "seed": seed, "split": split, "model": model, "train_args": train, "own_capacity": own,
            "eval": eval_}  # fmt: skip


STUDY = [
    _study("c0.5", {"1": (0.10, 10.0), "0.5": (0.12, 8.0), "0.25": (0.11, 6.0)}, own=0.5, capacity=0.5),
    _study("elastic", {"1": (0.13, 10.0), "0.5": (0.125, 8.0), "0.25": (0.124, 6.5)}, own=0.5, capacity=0.5,
           capacity_range=[0.25, 1.0]),
    _study("dense", {"dense": (0.121, 9.0)}),
    _study("yolo", {"dense": (0.115, 7.0)}),
]
TARGETS = [{"arm": "c0.5", "capacity": 0.5, "within": 0.5}, {"arm": "c0.5", "capacity": 0.25, "within": 0.5},
           {"arm": "elastic", "loses_less_than": "c0.5", "from": 0.5, "to": 0.25}]  # fmt: skip


def _study_args(**kw):
    from types import SimpleNamespace

    settings = {"name": "t", "data": {"s": "d.yaml"}, "epochs": 1, "imgsz": 64, "batch": 2, "extra": {}, "threads": 1,
                "runs": 20, "warmup": 1, "latency_imgsz": [64], "capacities": [1.0, 0.5, 0.25], "reference": "dense",
                "baseline": "yolo", "targets": TARGETS}  # fmt: skip
    return SimpleNamespace(**{**settings, **kw})


def test_study_report_has_a_row_per_arm_and_capacity_and_the_ap_by_capacity(tmp_path):
    from mod_vision.compare import study_report

    text = study_report(STUDY, tmp_path, _study_args(), "cmd").read_text()
    with open(tmp_path / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["split", "arm", "trained at", "capacity", "box_AP", "box_AP50", "mask_AP", "mask_AP50",
                             "GFLOPs", "latency_ms", "latency_ratio", "token_share"]  # fmt: skip
    assert [(r["arm"], r["trained at"], r["capacity"]) for r in rows] == [
        ("c0.5", "0.5", "1"), ("c0.5", "0.5", "0.5"), ("c0.5", "0.5", "0.25"), ("elastic", "elastic 0.25-1", "1"),
        ("elastic", "elastic 0.25-1", "0.5"), ("elastic", "elastic 0.25-1", "0.25"), ("dense", "dense", "dense"),
        ("yolo", "dense", "dense")]  # fmt: skip
    assert rows[-1]["token_share"] == "nan" and float(rows[2]["box_AP"]) == 0.11
    with open(tmp_path / "capacity.csv") as f:
        by_capacity = list(csv.DictReader(f))
    # the routed arms only, one row per metric, AP at each capacity
    assert [(r["arm"], r["metric"]) for r in by_capacity] == [
        ("c0.5", "box_AP"), ("c0.5", "mask_AP"), ("elastic", "box_AP"), ("elastic", "mask_AP")]  # fmt: skip
    assert [float(by_capacity[2][c]) for c in ("1", "0.5", "0.25")] == [0.13, 0.125, 0.124]
    assert "## AP against capacity (routed arms)" in text and text.splitlines()[3] == "cmd"
    for name in ("ap_vs_latency.png", "ap_vs_capacity.png"):
        assert (tmp_path / name).stat().st_size > 0


def test_study_targets_are_judged_on_their_numbers():
    from mod_vision.compare import verdicts

    box = [line for line in verdicts(STUDY, TARGETS, "dense", "yolo") if line.startswith("- s box_AP: ")]
    assert len(box) == 4
    assert "c0.5 at 0.5 = 12.00 vs dense 12.10" in box[0] and "**holds** (-0.10)" in box[0]
    assert "c0.5 at 0.25 = 11.00" in box[1] and "**does not hold** (-1.10)" in box[1]
    assert "elastic 12.50 -> 12.40 (-0.10), c0.5 12.00 -> 11.00 (-1.00) -> **holds**" in box[2]
    # the one routed capacity more accurate than the baseline (11.50 AP at 7 ms) and no slower
    assert box[3].endswith("(11.50 AP, 7.0 ms) at equal or lower latency -> **holds: elastic@0.25 12.40 AP at 6.5 ms**")
    # a target whose numbers were not measured is left out: no reference arm, no "within" verdicts
    no_dense = [r for r in STUDY if r["arm"] != "dense"]
    assert not any(" vs dense " in line for line in verdicts(no_dense, TARGETS, "dense", None))


def test_capacity_timing_sets_latency_and_the_ratio_to_the_reference_of_the_same_split():
    from mod_vision.compare import time_capacities

    routed = lambda split: {"arm": "r", "seed": 0, "split": split, "model": "modvit-det-n.yaml",  # noqa: E731
                            "weights": "modvit-det-n.yaml", "eval": {"1": {}, "0.25": {}}}  # random weights
    dense = {"arm": "dense", "seed": 0, "split": "s", "model": "modvit-det-dense-n.yaml",
             "weights": "modvit-det-dense-n.yaml", "eval": {"dense": {}}}  # fmt: skip
    results = [routed("s"), dense, routed("t")]
    time_capacities(results, imgsz=64, threads=1, runs=2, warmup=0, reference="dense")
    assert all(s["latency_ms"] > 0 for r in results for s in r["eval"].values())
    ref = dense["eval"]["dense"]["latency_ms"]
    assert dense["eval"]["dense"]["latency_ratio"] == 1.0
    assert results[0]["eval"]["0.25"]["latency_ratio"] == results[0]["eval"]["0.25"]["latency_ms"] / ref
    assert all(s["latency_ratio"] != s["latency_ratio"] for s in results[2]["eval"].values())  # NaN: no reference in t


@pytest.mark.parametrize(
    "args, message",
    [
        (["arms=[{'name':'a'}]"], "needs 'model'"),
        (["arms=[{'name':'a','model':'modvit-det-n.yaml'},{'name':'a','model':'modvit-det-n.yaml','capacity':0.5}]"],
         "two arms share a name"),
        (["capacities=[0.5,2]"], "capacities must be a list of capacities in (0, 1]"),
        (["baseline=yolo11n.yaml"], "baseline belong to a capacity study"),
        (["capacities=[0.5]", "latency_imgsz=[64,128]"], "at one size"),
        (["capacities=[0.5]", "reference=dense"], "reference='dense' is not one of the arms"),
        (["capacities=[0.5]", "targets=[{'arm':'yolo11n.yaml','capacity':0.5}]"],
         "a target is {arm, capacity, within}"),
        (["capacities=[0.5]", "targets=[{'arm':'yolo11n.yaml','capacity':0.5,'within':1}]"], "give reference=ARM"),
    ],
)
def test_bad_capacity_study_arguments_are_one_line_and_exit_2(args, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["compare", f"project={tmp_path}", "latency_imgsz=[]", *args])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("mod-vision compare: ") and message in err and "\n" not in err


@pytest.mark.slow  # trains
def test_capacity_study_of_two_arms_of_one_yaml_scores_each_capacity_and_reuses_finished_arms(sample_yaml, tmp_path,
                                                                                               capsys):  # fmt: skip
    arms = ("arms=[{'name':'c0.5','model':'modvit-det-n.yaml','capacity':0.5},"
            "{'name':'c0.25','model':'modvit-det-n.yaml','capacity':0.25},'modvit-det-dense-n.yaml']")  # fmt: skip
    argv = ["compare", "name=s", f"project={tmp_path}", arms, f"data={sample_yaml}", "epochs=1", "imgsz=64", "batch=8",
            "workers=0", "latency_imgsz=[64]", "runs=2", "capacities=[1.0,0.25]", "reference=modvit-det-dense-n.yaml",
            "targets=[{'arm':'c0.25','capacity':0.25,'within':1.0}]"]  # fmt: skip
    main(argv)
    run = tmp_path / "s"
    with open(run / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["arm"], r["trained at"], r["capacity"]) for r in rows] == [
        ("c0.5", "0.5", "1"), ("c0.5", "0.5", "0.25"), ("c0.25", "0.25", "1"), ("c0.25", "0.25", "0.25"),
        ("modvit-det-dense-n", "dense", "dense")]  # fmt: skip
    assert "box_AP_flat" in rows[0] and "mask_AP" in rows[0]  # one data set of both kinds; a detect model: no masks
    for r in rows:
        assert 0 <= float(r["box_AP"]) <= 1 and float(r["latency_ms"]) > 0 and float(r["box_AP_textured"]) >= 0
        assert r["mask_AP"] == "nan"
    c05 = {r["capacity"]: r for r in rows if r["arm"] == "c0.5"}
    assert float(c05["0.25"]["GFLOPs"]) < float(c05["1"]["GFLOPs"]) and float(c05["0.25"]["token_share"]) < 0.5
    assert rows[-1]["latency_ratio"] == "1.0"
    text = (run / "results.md").read_text()
    assert "- box_AP: c0.25 at 0.25 = " in text  # the target, judged against the reference
    assert (run / "train" / "c0.25__s0" / "weights" / "best.pt").is_file()

    stamp = (run / "results" / "c0.25__s0.json").stat().st_mtime_ns
    capsys.readouterr()
    main(argv)
    assert "c0.25 seed 0: done, reusing" in capsys.readouterr().out
    assert (run / "results" / "c0.25__s0.json").stat().st_mtime_ns == stamp
    with pytest.raises(SystemExit):  # other capacities: the finished arms' scores would not fit the report
        main([*argv[:-3], "capacities=[1.0,0.5]", argv[-2], argv[-1]])
    assert "was made with other settings" in capsys.readouterr().err


def test_trained_latency_times_each_arms_first_seed_and_only_arms_with_results(tmp_path, monkeypatch):
    import torch

    from mod_vision import compare as harness
    from mod_vision.compare import timing

    loaded = []

    def network(model, weights=None):  # records which weights each timed network would load
        loaded.append((model, weights))
        return torch.nn.Identity()

    monkeypatch.setattr(timing, "network", network)
    scores = {"box_AP": 0.2, "box_AP50": 0.3, "token_share": 0.5}
    results = [{"arm": "a.yaml", "seed": 1, "weights": "a1.pt", **scores},
               {"arm": "a.yaml", "seed": 2, "weights": "a2.pt", **scores},
               {"arm": "b.yaml", "seed": 1, **scores}]  # fmt: skip  (b: a result saved before weights were recorded)
    args = _study_args(data="d.yaml", latency_imgsz=[32], runs=2, warmup=0, trained_latency=True, capacities=None)
    harness.report_arms(results, [harness.as_arm(a) for a in ("a.yaml", "b.yaml", "c.yaml")], tmp_path, args, "cmd")
    assert loaded == [("a.yaml", "a1.pt"), ("b.yaml", str(tmp_path / "train" / "b__s1" / "weights" / "best.pt"))]
    with open(tmp_path / "results-d-e1-i64.csv") as f:
        assert [(r["arm"], float(r["ms@32"]) > 0) for r in csv.DictReader(f)] == [("a", True)] * 2 + [("b", True)]


def test_routing_quality_section_covers_each_routed_arm_once(det_run, sample_yaml, tmp_path):
    from types import SimpleNamespace

    from ultralytics import YOLO

    from mod_vision.compare import routing_quality_section

    dense = tmp_path / "dense.pt"
    YOLO("yolo11n.yaml").save(dense)
    data, best = {"data": str(sample_yaml)}, str(det_run / "weights" / "best.pt")
    routed = {"arm": "modvit-det.yaml", "settings": data, "weights": best}
    results = [{**routed, "seed": 0}, {**routed, "seed": 1, "weights": "not read: not the first seed"},
               {"arm": "yolo11n.yaml", "seed": 0, "settings": data, "weights": str(dense)}]
    text = routing_quality_section(results, tmp_path, SimpleNamespace(imgsz=64, batch=8))
    titles = [line for line in text.splitlines() if line.startswith("## ")]
    assert titles == ["## Routing quality: modvit-det (first seed)"]  # the dense arm has no routing to measure
    assert sum(line.startswith("| 0.25 | random |") for line in text.splitlines()) == 1  # the control at each capacity
