"""End to end through Ultralytics: train, val with COCO metrics, predict on images/folders/video, save/load/resume."""

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from ultralytics.utils import ASSETS

from mod_vision import MoDYOLO
from mod_vision.nn import TokenRouter

from .conftest import IMGSZ, TRAIN_ARGS


def read_csv(path):
    with open(path) as f:
        return [{k.strip(): v for k, v in row.items()} for row in csv.DictReader(f)]


def test_detect_training_writes_token_share_and_coco_metrics(det_run):
    rows = read_csv(det_run / "results.csv")
    assert len(rows) == 2
    # n scale: 3 routed blocks at capacity 0.5 over a 6 x 6 token grid -> 18 / 36 tokens
    assert [float(r["routing/token_share"]) for r in rows] == [0.5, 0.5]
    assert (det_run / "weights" / "best.pt").is_file() and (det_run / "weights" / "last.pt").is_file()


@pytest.mark.parametrize("capacity,share", [(None, 0.5), (1.0, 1.0), (0.25, 0.25)])
def test_val_reports_coco_metrics_and_share_at_any_capacity(det_run, sample_yaml, tmp_path, capacity, share):
    model = MoDYOLO(det_run / "weights" / "best.pt")
    metrics = model.val(data=str(sample_yaml), imgsz=IMGSZ, batch=4, capacity=capacity, project=str(tmp_path), plots=False)
    coco = metrics.coco
    assert set(coco) == {f"metrics/coco_{k}(B)" for k in ("AP", "AP50", "AP75", "APs", "APm", "APl")}
    assert 0.0 <= coco["metrics/coco_AP(B)"] <= coco["metrics/coco_AP50(B)"] <= 1.0
    assert metrics.token_share == pytest.approx(share)


def test_segment_training_and_mask_coco_metrics(seg_run, sample_yaml, tmp_path):
    assert "routing/token_share" in read_csv(seg_run / "results.csv")[0]
    metrics = MoDYOLO(seg_run / "weights" / "best.pt").val(
        data=str(sample_yaml), imgsz=IMGSZ, batch=4, project=str(tmp_path), plots=False
    )
    keys = metrics.coco
    assert "metrics/coco_AP(B)" in keys and "metrics/coco_AP(M)" in keys and "metrics/coco_AP75(M)" in keys
    results = MoDYOLO(seg_run / "weights" / "best.pt").predict(ASSETS / "bus.jpg", imgsz=IMGSZ, conf=0.0, max_det=5)
    assert results[0].masks is not None and results[0].token_share == pytest.approx(0.5, abs=0.02)


@pytest.mark.slow  # trains: det_run or seg_run, requested by name
@pytest.mark.parametrize("run", ["det_run", "seg_run"])
def test_val_returns_ultralytics_metrics_subclassed_with_the_routing_fields(request, sample_yaml, tmp_path, run):
    from ultralytics.utils.metrics import DetMetrics, SegmentMetrics

    from mod_vision.engine.val import RoutedDetMetrics, RoutedSegmentMetrics

    assert RoutedDetMetrics().results_dict == DetMetrics().results_dict  # nothing measured, nothing added
    m = MoDYOLO(request.getfixturevalue(run) / "weights" / "best.pt").val(
        data=str(sample_yaml), imgsz=IMGSZ, batch=4, project=str(tmp_path), plots=False
    )
    kind = (RoutedSegmentMetrics, SegmentMetrics) if run == "seg_run" else (RoutedDetMetrics, DetMetrics)
    assert type(m) is kind[0] and isinstance(m, kind[1])
    assert isinstance(m.token_share, float) and (m.capacity_mode, m.capacity) == ("static", [0.5] * 3)
    assert m.coco_json.name == "instances_val.json" and "metrics/coco_AP(B)" in m.coco
    assert all(isinstance(v, float) for v in m.coco.values())
    assert set(m.routing) == {"all", "flat", "textured"} and len(m.routing["all"]) == 3
    assert set(m.routing["all"][0]) == {"object_lift", "object_recall", "padding_share"}
    # results_dict: Ultralytics' keys and fitness first, then COCO's metrics and the routing columns
    stats = m.results_dict
    assert list(stats)[: len(m.keys) + 1] == [*m.keys, "fitness"]
    assert {k: stats[k] for k in m.coco} == m.coco and stats["routing/token_share"] == m.token_share
    assert {"routing/object_lift_b0", "routing/padding_share_b2"} <= set(stats)


def test_predict_image_folder_and_budget(det_run, sample_yaml):
    model = MoDYOLO(det_run / "weights" / "best.pt")
    r = model.predict(ASSETS / "bus.jpg", imgsz=IMGSZ)
    assert len(r) == 1 and r[0].orig_shape == (1080, 810) and 0 < r[0].token_share <= 1
    folder = sample_yaml.parent / "images" / "val"
    rs = model.predict(folder, imgsz=IMGSZ, capacity=0.25)
    assert len(rs) == len(list(folder.glob("*.jpg")))
    assert all(x.token_share == pytest.approx(0.25, abs=0.05) for x in rs)
    assert model.predict(ASSETS / "bus.jpg", imgsz=IMGSZ, capacity=1.0)[0].token_share == 1.0


def test_predict_video_gives_per_frame_results_with_shares(det_run, video):
    model = MoDYOLO(det_run / "weights" / "best.pt")
    results = list(model.predict(video, imgsz=IMGSZ, stream=True))
    assert len(results) == 6
    assert [r.path for r in results] == [str(video)] * 6
    assert all(r.token_share == pytest.approx(0.5, abs=0.05) for r in results)


def test_checkpoint_loads_in_a_new_process_with_both_classes(det_run):
    best = det_run / "weights" / "best.pt"
    code = (
        "import mod_vision, sys\n"
        "from mod_vision import MoDYOLO\n"
        "from ultralytics import YOLO, ASSETS\n"
        f"m = MoDYOLO(r'{best}'); y = YOLO(r'{best}')\n"
        "assert type(m.model).__name__ == type(y.model).__name__ == 'MoDDetectionModel'\n"
        "print(m.model.capacities(), len(y.predict(ASSETS / 'bus.jpg', imgsz=96, verbose=False)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "[0.5, 0.5, 0.5] 1" in out.stdout


def test_checkpoint_loads_with_plain_yolo_without_an_explicit_import(det_run):
    """Unpickling the checkpoint imports mod_vision itself (its classes are named in the pickle), so plain YOLO just works."""
    code = (
        "import sys\n"
        "from ultralytics import YOLO, ASSETS\n"
        "assert 'mod_vision' not in sys.modules\n"
        f"r = YOLO(r'{det_run / 'weights' / 'best.pt'}').predict(ASSETS / 'bus.jpg', imgsz=96, verbose=False)\n"
        "print('mod_vision' in sys.modules, len(r))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().endswith("True 1")


def test_checkpoint_without_mod_vision_installed_names_it(det_run):
    code = (
        "import sys; sys.modules['mod_vision'] = None  # as if mod_vision were not installed\n"
        "from ultralytics import YOLO\n"
        f"YOLO(r'{det_run / 'weights' / 'best.pt'}')\n"
    )
    env = {**os.environ, "YOLO_AUTOINSTALL": "false", "YOLO_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode != 0
    assert "ModuleNotFoundError" in out.stderr and "mod_vision" in out.stderr.splitlines()[-1]


def test_routing_state_survives_fuse_half_save_and_load(det_run, tmp_path):
    model = MoDYOLO(det_run / "weights" / "best.pt")
    model.set_capacity({0: 0.25, 2: 1.0})
    caps = model.model.capacities()
    model.model.fuse()
    assert model.model.capacities() == caps
    half = model.model.half()
    assert half.capacities() == caps
    path = tmp_path / "custom.pt"
    model.save(path)
    assert MoDYOLO(path).model.capacities() == caps
    state = model.model.state_dict()
    assert [float(v) for k, v in state.items() if k.endswith("_extra_state")] == caps


class StopAfterFirstEpoch(Exception):
    pass


@pytest.mark.slow  # trains
def test_capacity_survives_training_and_resume(sample_yaml, runs):
    model = MoDYOLO("modvit-det.yaml")
    model.set_capacity(0.25)

    def stop(trainer):
        if trainer.epoch == 0:
            raise StopAfterFirstEpoch

    model.add_callback("on_fit_epoch_end", stop)
    with pytest.raises(StopAfterFirstEpoch):
        model.train(data=str(sample_yaml), project=str(runs), name="resume", **{**TRAIN_ARGS, "epochs": 2})
    last = Path(runs) / "resume" / "weights" / "last.pt"
    ckpt = torch.load(last, weights_only=False)
    assert ckpt["epoch"] == 0
    assert [b.capacity for b in ckpt["ema"].modules() if isinstance(b, TokenRouter)] == [0.25] * 3
    resumed = MoDYOLO(last)
    resumed.train(resume=True)
    rows = read_csv(Path(runs) / "resume" / "results.csv")
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    assert [float(r["routing/token_share"]) for r in rows] == [0.25, 0.25]
    assert MoDYOLO(Path(runs) / "resume" / "weights" / "best.pt").model.capacities() == [0.25] * 3
