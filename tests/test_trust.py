"""Silent wrong results, lost work, newcomer traps and late errors (issue 16): each behaviour with its test."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from mod_vision.cli import run

from .conftest import IMGSZ
from .test_coco_eval import GroundTruthValidator


def copy_data(sample_yaml: Path, root: Path, edit_json=None, rename=None) -> Path:
    """A copy of the sample data under root; `edit_json(anno)` edits the val json in place, `rename(name) -> name`
    renames val images (and their labels, and the json's file names)."""
    shutil.copytree(sample_yaml.parent, root)
    for cache in root.rglob("*.cache"):
        cache.unlink()
    anno_path = root / "annotations" / "instances_val.json"
    anno = json.loads(anno_path.read_text())
    if rename:
        for im in anno["images"]:
            new = rename(im["file_name"])
            (root / "images" / "val" / im["file_name"]).rename(root / "images" / "val" / new)
            label = root / "labels" / "val" / (Path(im["file_name"]).stem + ".txt")
            if label.exists():
                label.rename(label.with_name(Path(new).stem + ".txt"))
            im["file_name"] = new
    if edit_json:
        edit_json(anno)
    anno_path.write_text(json.dumps(anno))
    yaml = root / "sample.yaml"
    yaml.write_text(yaml.read_text().replace(str(sample_yaml.parent), str(root)))
    return yaml


def recategorise(mapping: dict[int, int]):
    """Edit: the json's category ids (1..4 in the sample data) become mapping[old id]."""

    def edit(anno):
        for c in anno["categories"]:
            c["id"] = mapping[c["id"]]
        for a in anno["annotations"]:
            a["category_id"] = mapping[a["category_id"]]

    return edit


def gt_validate(det_run, data, tmp_path, name):
    GroundTruthValidator.shift = 0.0
    args = dict(model=str(det_run / "weights" / "best.pt"), data=str(data), imgsz=IMGSZ, batch=4, plots=False)
    v = GroundTruthValidator(args={**args, "project": str(tmp_path), "name": name})
    return v(), v


@pytest.mark.parametrize(
    "mapping", [{1: 0, 2: 1, 3: 2, 4: 3}, {1: 7, 2: 3, 3: 42, 4: 90}], ids=["ids-0-to-3", "ids-with-gaps"]
)
def test_coco_category_ids_are_the_jsons_own(det_run, sample_yaml, tmp_path, mapping):
    data = copy_data(sample_yaml, tmp_path / "d", edit_json=recategorise(mapping))
    stats, v = gt_validate(det_run, data, tmp_path, "v")
    assert v.class_map == [mapping[i] for i in (1, 2, 3, 4)]  # circle, square, triangle, star
    written = json.loads((v.save_dir / "predictions.json").read_text())
    assert {p["category_id"] for p in written} <= set(mapping.values())
    assert stats["metrics/coco_AP(B)"] > 0.95  # ground truth scored as predictions: the classes line up


def test_coco_json_with_other_category_names_is_refused_showing_both(det_run, sample_yaml, tmp_path):
    def rename_star(anno):
        anno["categories"][3]["name"] = "hexagon"

    data = copy_data(sample_yaml, tmp_path / "d", edit_json=rename_star)
    with pytest.raises(ValueError, match="do not match the data YAML's names") as e:
        gt_validate(det_run, data, tmp_path, "v")
    text = str(e.value)
    assert "hexagon" in text and "'star'" in text and "instances_val.json" in text


def test_coco_json_named_but_missing_is_an_error_naming_it(det_run, sample_yaml, tmp_path):
    data = copy_data(sample_yaml, tmp_path / "d")
    (tmp_path / "d" / "annotations" / "instances_val.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"coco_json val: .*instances_val\.json .*does not exist"):
        gt_validate(det_run, data, tmp_path, "v")


def test_coco_image_ids_are_matched_by_the_jsons_file_names(det_run, sample_yaml, tmp_path):
    def shift_ids(anno):  # ids no longer equal the (renamed, non-numeric) file stems
        for im in anno["images"]:
            im["id"] += 1000
        for a in anno["annotations"]:
            a["image_id"] += 1000

    data = copy_data(sample_yaml, tmp_path / "d", edit_json=shift_ids, rename=lambda n: f"shape_{n}")
    stats, v = gt_validate(det_run, data, tmp_path, "v")
    anno = json.loads((tmp_path / "d" / "annotations" / "instances_val.json").read_text())
    by_name = {im["file_name"]: im["id"] for im in anno["images"]}
    assert {Path(f).name: i for f, i in v.coco_image_ids.items()} == by_name
    written = json.loads((v.save_dir / "predictions.json").read_text())
    assert {p["image_id"] for p in written} <= set(by_name.values()) and written
    assert stats["metrics/coco_AP(B)"] > 0.95


def test_coco_json_without_any_val_image_fails_loudly(det_run, sample_yaml, tmp_path):
    def other_names(anno):
        for im in anno["images"]:
            im["file_name"] = "elsewhere_" + im["file_name"]

    data = copy_data(sample_yaml, tmp_path / "d", edit_json=other_names)
    with pytest.raises(ValueError, match=r"none of the 8 val images is in .*elsewhere_"):
        gt_validate(det_run, data, tmp_path, "v")


# --- a CLI resume keeps its run's data and settings ---------------------------------------------------------------


class Interrupt(Exception):
    pass


def interrupt_after_first_epoch(trainer):
    if trainer.epoch == 0:
        raise Interrupt  # after last.pt of epoch 1 is saved, as a killed run leaves it


@pytest.mark.slow  # trains
def test_cli_resume_keeps_the_runs_data_imgsz_and_batch(sample_yaml, tmp_path, monkeypatch):
    from ultralytics.utils import YAML

    from mod_vision import MoDYOLO

    model = MoDYOLO("modvit-det.yaml")
    model.add_callback("on_model_save", interrupt_after_first_epoch)
    with pytest.raises(Interrupt):
        model.train(data=str(sample_yaml), epochs=2, imgsz=64, batch=4, workers=0, plots=False, project=str(tmp_path),
                    name="r", device="cpu")  # fmt: skip
    run_dir = tmp_path / "r"
    assert not (run_dir / "run.lock").exists()  # the interrupted run let go of its folder
    monkeypatch.chdir(tmp_path)  # where the CLI would generate the sample data
    run(["train", f"model={run_dir / 'weights' / 'last.pt'}", "resume=True"])
    args = YAML.load(run_dir / "args.yaml")
    assert (args["data"], args["imgsz"], args["batch"], args["epochs"]) == (str(sample_yaml), 64, 4, 2)
    assert not (tmp_path / "datasets").exists()  # no sample data was generated
    assert len((run_dir / "results.csv").read_text().splitlines()) == 3  # header and epochs 1 and 2
    assert not (run_dir / "run.lock").exists()


def test_cli_resume_true_without_model_names_what_is_missing():
    with pytest.raises(SystemExit, match=r"resume=True needs model=.*last\.pt"):
        run(["train", "resume=True"])


# --- a lock on the run folder ------------------------------------------------------------------------------------


def test_second_run_into_a_folder_in_use_refuses_naming_folder_and_process(sample_yaml, tmp_path):
    import subprocess
    import sys

    from mod_vision import MoDYOLO
    from mod_vision.engine.runlock import RunFolderLocked, RunLock

    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        folder = tmp_path / "shared"
        folder.mkdir()
        (folder / "run.lock").write_text(json.dumps({"pid": other.pid, "host": __import__("socket").gethostname()}))
        with pytest.raises(RunFolderLocked, match=rf"run folder {folder} is in use by another training, process {other.pid}"):
            MoDYOLO("modvit-det.yaml").train(data=str(sample_yaml), epochs=1, imgsz=64, batch=4, workers=0, plots=False,
                                            project=str(tmp_path), name="shared", exist_ok=True, device="cpu")  # fmt: skip
        assert sorted(p.name for p in folder.iterdir()) == ["run.lock"]  # nothing of the other run was touched
        assert RunLock(folder).owner()["pid"] == other.pid
    finally:
        other.kill()
        other.wait()


def test_stale_lock_of_a_dead_process_is_taken_over_with_a_warning(tmp_path, caplog):
    import subprocess
    import sys

    from mod_vision.engine.runlock import RunLock

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "run.lock").write_text(json.dumps({"pid": gone.pid, "host": __import__("socket").gethostname()}))
    lock = RunLock(folder).acquire()
    assert f"locked by process {gone.pid}, which is gone" in caplog.text
    assert lock.owner()["pid"] == __import__("os").getpid()
    lock.release()
    assert not (folder / "run.lock").exists()


# --- models without routed blocks ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def stock_checkpoint(tmp_path_factory) -> Path:
    """A stock Ultralytics YOLO11n checkpoint for the sample data's 4 classes (random weights, Ultralytics' own YAML)."""
    from ultralytics import YOLO
    from ultralytics.nn.tasks import yaml_model_load
    from ultralytics.utils import YAML

    folder = tmp_path_factory.mktemp("stock")
    YAML.save(folder / "yolo11n.yaml", {**yaml_model_load("yolo11n.yaml"), "nc": 4})
    YOLO(folder / "yolo11n.yaml").save(folder / "yolo11n.pt")
    return folder / "yolo11n.pt"


def no_routing_warnings(caplog, key="capacity"):
    return caplog.text.count(f"{key}=0.25 ignored: this model has no routed blocks")


def test_capacity_for_a_model_without_routed_blocks_is_a_warning_at_predict_val_and_export(
    stock_checkpoint, sample_yaml, tmp_path, caplog
):
    from ultralytics.utils import ASSETS

    from mod_vision import MoDYOLO

    model = MoDYOLO(stock_checkpoint)
    r = model.predict(ASSETS / "bus.jpg", imgsz=64, capacity=0.25)
    assert no_routing_warnings(caplog) == 1 and r[0].token_share is None and r[0].capacity == []
    caplog.clear()
    m = model.val(data=str(sample_yaml), imgsz=64, capacity=0.25, plots=False, project=str(tmp_path), name="v")
    assert no_routing_warnings(caplog) == 1 and m.token_share is None
    caplog.clear()
    MoDYOLO(stock_checkpoint).export(format="torchscript", imgsz=64, capacity=0.25)
    assert no_routing_warnings(caplog) == 1


def test_info_and_heatmap_on_a_model_without_routed_blocks(stock_checkpoint, tmp_path, capsys, caplog):
    from ultralytics.utils import ASSETS

    info = run(["info", f"model={stock_checkpoint}", "imgsz=64"])
    assert info["capacity_gflops"] == {} and info["gflops"] > 0
    assert "dense: no routed blocks" in caplog.text
    folder = run(["heatmap", f"model={stock_checkpoint}", f"source={ASSETS / 'bus.jpg'}", "imgsz=64",
                  f"project={tmp_path}", "name=h"])  # fmt: skip
    assert folder is None and not (tmp_path / "h" / "heatmaps").exists()
    out = capsys.readouterr().out
    assert "no routing heatmaps written" in out and "written to" not in out


# --- what a newcomer trips over ------------------------------------------------------------------------------------


def test_cli_predict_without_model_refuses_instead_of_random_weights():
    with pytest.raises(SystemExit, match=r"predict needs model=.*random weights"):
        run(["predict", "source=bus.jpg"])
    with pytest.raises(SystemExit, match=r"heatmap needs model="):
        run(["heatmap", "source=bus.jpg"])


def test_cli_val_without_data_says_which_data_is_needed():
    with pytest.raises(SystemExit, match=r"val needs data=.*sample\.yaml"):
        run(["val", "model=modvit-det.yaml", "imgsz=64"])


def test_cli_export_without_the_export_extra_names_it(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "onnx", None)  # as if onnx were not installed
    with pytest.raises(SystemExit, match=r"needs the Python package 'onnx'.*\[export\]"):
        run(["export", "model=modvit-det.yaml", "format=onnx", "imgsz=64"])


# --- late or cryptic errors ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value, match",
    [("abc", r"capacities must be a non-empty list.*got 'abc'"), ("[]", r"got \[\]"),
     ("[0.5,0]", r"entry 0 is invalid .*range \(0, 1\]"), ("[[0.5]]", r"entry \[0.5\] is invalid \(1 capacities given for \d+ routed blocks")],
)  # fmt: skip
def test_cli_sweep_bad_capacities_fail_before_any_validation(det_run, sample_yaml, tmp_path, value, match):
    best = det_run / "weights" / "best.pt"
    with pytest.raises(ValueError, match=match):
        run(["sweep", f"model={best}", f"data={sample_yaml}", f"capacities={value}", "imgsz=64",
             f"project={tmp_path}", "name=s"])  # fmt: skip
    assert not list(tmp_path.rglob("capacity_*"))  # not one validation ran


def test_cli_predict_batch_zero_and_info_imgsz_zero_name_the_key():
    with pytest.raises(SystemExit, match=r"predict: batch must be an integer >= 1, got batch=0"):
        run(["predict", "model=x.pt", "source=bus.jpg", "batch=0"])
    with pytest.raises(SystemExit, match=r"info: imgsz must be a positive integer or \[height, width\], got imgsz=0"):
        run(["info", "imgsz=0"])


def test_heatmaps_of_a_huge_image_are_drawn_at_a_bounded_size_with_a_legend(tmp_path):
    import cv2
    import numpy as np

    from mod_vision.heatmap import MAX_SIDE, Routing, depth_image, save_image_heatmaps

    rng = np.random.default_rng(0)
    image = np.full((4000, 6000, 3), 90, np.uint8)  # H0, W0
    routing = Routing(rng.random((3, 40, 40)) < 0.5, (640, 640), (4000, 6000))
    paths = save_image_heatmaps(image, routing, tmp_path, "huge")
    assert [p.name for p in paths] == ["huge_depth.jpg", "huge_block0.jpg", "huge_block1.jpg", "huge_block2.jpg",
                                       "huge_blocks.png"]  # fmt: skip
    for p in paths[:-1]:
        assert cv2.imread(str(p)).shape == (MAX_SIDE * 2 // 3, MAX_SIDE, 3)
    assert max(cv2.imread(str(paths[-1])).shape[:2]) < MAX_SIDE
    small = np.full((96, 128, 3), 90, np.uint8)  # small images keep their size
    plain = Routing(np.ones((3, 6, 8), bool), (96, 128), (96, 128))
    assert depth_image(small, plain).shape == small.shape
    # the legend is drawn: a bottom strip differs from the same overlay without it
    from mod_vision.heatmap import caption, colorize

    bare = caption(colorize(small, plain.to_image(), 3), "x")
    assert (depth_image(small, plain, "x")[-20:] != bare[-20:]).any()


def test_generating_sample_data_says_what_where_and_how_long(tmp_path, caplog):
    from mod_vision.data import make_sample_data

    yaml = make_sample_data(tmp_path / "s", n_train=3, n_val=2, seed=1, size=(64, 64))
    text = caplog.text
    assert f"Generating the mod_vision sample data in {tmp_path / 's'}: 3 train and 2 val images" in text
    assert f"s: {yaml}" in text and "Sample data written in " in text


def test_results_png_plots_token_share_and_router_loss(tmp_path, monkeypatch):
    from types import SimpleNamespace

    from mod_vision.engine import conveniences
    from mod_vision.engine.train import MoDDetectionTrainer

    csv = tmp_path / "results.csv"
    csv.write_text("epoch,time,train/box_loss,train/router_aux,metrics/mAP50(B),routing/token_share,val/box_loss,"
                   "val/router_aux\n1,1,2.0,0.7,0.1,0.5,2.1,0.6\n2,2,1.5,0.6,0.2,0.5,1.9,0.5\n")  # fmt: skip
    plotted, real = [], conveniences.plot_results

    def spy(file, **kw):
        plotted.extend(Path(file).read_text().splitlines()[0].split(","))
        return real(file=file, **kw)

    monkeypatch.setattr(conveniences, "plot_results", spy)
    seen = []
    fake = SimpleNamespace(csv=csv, save_dir=tmp_path, on_plot=seen.append)
    MoDDetectionTrainer.plot_metrics(fake)
    # plot_results draws every column whose name holds "loss" or "metric"
    drawn = [c for c in plotted if "loss" in c or "metric" in c]
    assert {"routing/token_share (metric)", "train/router_aux (loss)", "val/router_aux (loss)"} <= set(drawn)
    assert seen == [tmp_path / "results.png"] and (tmp_path / "results.png").stat().st_size > 0
    assert csv.read_text().startswith("epoch,time,train/box_loss,train/router_aux,")  # the csv keeps its names


@pytest.mark.slow  # trains
def test_close_mosaic_covering_every_epoch_is_said_plainly(sample_yaml, tmp_path, caplog):
    from mod_vision import MoDYOLO

    model = MoDYOLO("modvit-det.yaml")
    model.train(data=str(sample_yaml), epochs=1, imgsz=64, batch=8, workers=0, plots=False, close_mosaic=10,
                project=str(tmp_path), name="m", device="cpu")  # fmt: skip
    assert "close_mosaic=10 covers all 1 epochs: training without mosaic" in caplog.text
    assert "Closing dataloader mosaic" not in caplog.text
    assert "routed token share" in caplog.text  # the val line shows routing
