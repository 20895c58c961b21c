"""tools/quality_bench.py: split data YAMLs select the right images; a tiny bench run gives real, finite results."""

from __future__ import annotations

import csv
import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("quality_bench", ROOT / "tools" / "quality_bench.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _dataset_ids(data_yaml: Path, part: str) -> set[int]:
    """Image ids of the dataset Ultralytics builds from a data YAML, through the trainer's own code path."""
    from ultralytics.cfg import get_cfg
    from ultralytics.data.build import build_yolo_dataset
    from ultralytics.data.utils import check_det_dataset

    data = check_det_dataset(str(data_yaml))
    ds = build_yolo_dataset(get_cfg(overrides={"imgsz": 64}), data[part], 4, data, mode="val")
    return {int(Path(f).stem) for f in ds.im_files}


def test_split_yamls_select_one_background_kind(bench, sample_yaml, tmp_path):
    import shutil

    root = tmp_path / "sample"
    shutil.copytree(sample_yaml.parent, root)
    (root / "sample.yaml").write_text(sample_yaml.read_text().replace(str(sample_yaml.parent), str(root)))
    yamls = bench.write_split_yamls(root / "sample.yaml")
    assert set(yamls) == {"textured", "flat"}
    for part in ("train", "val"):
        images = json.loads((root / "annotations" / f"instances_{part}.json").read_text())["images"]
        by_kind = {k: {im["id"] for im in images if im["background"] == k} for k in ("flat", "textured")}
        assert by_kind["flat"] and by_kind["textured"]  # the sample holds both kinds, so the check can fail
        for kind, path in yamls.items():
            assert _dataset_ids(path, part) == by_kind[kind]


def test_split_yaml_missing_list_names_the_file(bench, tmp_path):
    (tmp_path / "sample.yaml").write_text(f"path: {tmp_path}\ntrain: images/train\nval: images/val\nnames: {{0: a}}\n")
    with pytest.raises(FileNotFoundError, match="train_textured.txt"):
        bench.write_split_yamls(tmp_path / "sample.yaml")


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--extra", "capacity_warmup"], "KEY=VALUE"),
        (["--extra", "capacity=0.3"], "set per arm"),
        (["--extra", "capacity_range=[0.2,1]"], "set per arm"),
    ],
)
def test_bad_extra_is_refused(bench, argv, message):
    with pytest.raises(SystemExit, match=message):
        bench.parse_args(argv)


def test_extra_values_parse_as_yaml_and_reach_routed_arms_only(bench):
    from mod_vision.compare import as_arm

    args = bench.parse_args(["--extra", "capacity_warmup=2", "router_aux=0.1", "capacity_range_note=[1, 2]"])
    assert args.extra == {"capacity_warmup": 2, "router_aux": 0.1, "capacity_range_note": [1, 2]}
    own = lambda arm: as_arm(bench.arm_spec(arm, args))["train"]  # noqa: E731  (what compare trains the arm with)
    assert own("mod-c0.25") == {**args.extra, "capacity": 0.25}
    assert own("mod-elastic")["capacity_range"] == [0.125, 1.0]
    assert own("dense") == {} and own("yolo11n") == {}


def test_too_few_latency_runs_is_refused(bench, capsys):
    with pytest.raises(SystemExit):
        bench.parse_args(["--latency-runs", "5"])
    assert "at least 20" in capsys.readouterr().err


def test_negative_router_hidden_is_refused(bench, capsys):
    with pytest.raises(SystemExit):
        bench.parse_args(["--router-hidden", "-64"])
    assert "--router-hidden must be 0" in capsys.readouterr().err


@pytest.mark.slow  # trains
def test_tiny_run_gives_finite_results_and_resumes(bench, tmp_path, capsys):
    argv = ["--name", "tiny", "--out", str(tmp_path), "--epochs", "1", "--imgsz", "64", "--n-train", "32", "--n-val",
            "16", "--data-size", "64", "96", "--arms", "mod-elastic", "yolo11n", "--splits", "textured",
            "--latency-runs", "20", "--warmup", "1"]  # fmt: skip
    md = bench.main(argv)
    run = md.parent
    routed = json.loads((run / "results" / "textured__mod-elastic__s0.json").read_text())
    yolo = json.loads((run / "results" / "textured__yolo11n__s0.json").read_text())
    assert routed["train_args"] == {"capacity": 0.5, "capacity_range": [0.125, 1.0]}
    assert routed["own_capacity"] == 0.5  # elastic training keeps the model's own capacity in the checkpoint
    assert list(routed["eval"]) == ["1", "0.5", "0.25", "0.125"] and list(yolo["eval"]) == ["dense"]
    for result in (routed, yolo):
        for v in result["eval"].values():
            for key in ("box_AP", "box_AP50", "mask_AP", "mask_AP50"):
                assert math.isfinite(v[key]) and 0.0 <= v[key] <= 1.0, (key, v)
            assert v["gflops"] > 0
    flops = [routed["eval"][c]["gflops"] for c in ("1", "0.5", "0.25", "0.125")]
    assert flops == sorted(flops, reverse=True) and flops[0] > flops[-1]
    shares = [routed["eval"][c]["token_share"] for c in ("1", "0.5", "0.25", "0.125")]
    assert shares[0] == 1.0 and shares == sorted(shares, reverse=True) and shares[-1] < 0.5
    # every output stays in the run folder (Ultralytics would put a relative or unnamed one under its RUNS_DIR)
    assert sorted(p.name for p in (run / "val").iterdir()) == sorted(
        [f"textured__mod-elastic__s0__{c}" for c in ("1", "0.5", "0.25", "0.125")] + ["textured__yolo11n__s0__dense"])
    assert (run / "train" / "textured__mod-elastic__s0" / "weights" / "best.pt").is_file()
    for name in ("results.md", "results.csv", "capacity.csv", "ap_vs_latency.png", "ap_vs_capacity.png"):
        assert (run / name).stat().st_size > 0
    # without the dense twin and mod-c0.5 only the YOLO11n target can be judged, once for boxes and once for masks
    verdicts = [line for line in md.read_text().splitlines() if line.startswith("- textured ")]
    assert [line.split(":")[0] for line in verdicts] == ["- textured box_AP", "- textured mask_AP"]
    assert all("more accurate than yolo11n" in line for line in verdicts)
    with open(run / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["arm"], r["capacity"]) for r in rows] == [("mod-elastic", c) for c in ("1", "0.5", "0.25", "0.125")] + [
        ("yolo11n", "dense")]  # fmt: skip
    assert all(float(r["latency_ms"]) > 0 for r in rows)  # measured for every row
    assert all(r["latency_ratio"] == "nan" for r in rows)  # no dense twin among the arms: no ratio, not a made-up one

    # a rerun reuses the finished arms; other settings under the same name are refused
    stamp = (run / "results" / "textured__mod-elastic__s0.json").stat().st_mtime_ns
    capsys.readouterr()
    bench.main(argv)
    assert "textured/mod-elastic seed 0: done, reusing" in capsys.readouterr().out
    assert (run / "results" / "textured__mod-elastic__s0.json").stat().st_mtime_ns == stamp
    with pytest.raises(SystemExit, match="use another name"):
        bench.main([*argv[:-4], "--epochs", "2", "--latency-runs", "20"])


@pytest.mark.parametrize("family", ["modvit", "modvit-deep", "hybrid"])
def test_family_and_mlp_router_pick_the_models(bench, family, tmp_path):
    from mod_vision.nn.routing import routed_blocks
    from mod_vision.nn.tasks import MoDSegmentationModel

    args = bench.parse_args(["--family", family, "--out", str(tmp_path), "--name", "f"])
    routed, dense = bench.arm_spec("mod-c0.5", args)["model"], bench.arm_spec("dense", args)["model"]
    base = {"modvit": "modvit-seg", "modvit-deep": "modvit-seg-deep", "hybrid": "hybrid-seg"}[family]
    assert routed == f"{base}-n.yaml"
    assert dense == bench.YAML.load(ROOT / "cfg" / "models" / f"{base}.yaml")["dense_twin"].replace(".yaml", "-n.yaml")
    assert not routed_blocks(MoDSegmentationModel(dense, nc=4, verbose=False))
    linear = routed_blocks(MoDSegmentationModel(routed, nc=4, verbose=False))
    assert linear and all(isinstance(b.scorer.net, torch.nn.Linear) for b in linear)

    args = bench.parse_args(["--family", family, "--router-hidden", "32", "--out", str(tmp_path), "--name", "f"])
    mlp_yaml = bench.arm_spec("mod-c0.25", args)["model"]
    assert Path(mlp_yaml).parent == tmp_path / "f" / "models"  # a copy in the run folder, cfg/models untouched
    mlp = routed_blocks(MoDSegmentationModel(mlp_yaml, nc=4, verbose=False))
    assert len(mlp) == len(linear)  # only the router changed: same blocks routed
    assert all([m.out_features for m in b.scorer.net if isinstance(m, torch.nn.Linear)] == [32, 1] for b in mlp)
    assert bench.arm_spec("dense", args)["model"] == dense
