"""Nothing lost, every user error in one line (issue 25): each case with its behaviour."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from mod_vision import MoDYOLO
from mod_vision.cli import run
from mod_vision.data import make_sample_data, make_sample_video
from mod_vision.data.sample import MARKER
from mod_vision.model import MAX_IMGSZ, UsageError
from mod_vision.nn.routing import routed_blocks

from .conftest import IMGSZ, images_with_broken_files
from .test_budget import DYNAMIC, IMAGE, share

TINY = dict(n_train=2, n_val=2, seed=0, size=(64, 64))


def someones_folder(path: Path) -> Path:
    path.mkdir(parents=True)
    (path / "notes.txt").write_text("my work")
    return path


# --- sample data never deletes what it did not write ---------------------------------------------------------------


def test_sample_data_refuses_a_folder_it_did_not_write_and_keeps_it(tmp_path):
    folder = someones_folder(tmp_path / "mine")
    with pytest.raises(FileExistsError, match=rf"sample data root {folder} exists and was not written by the "
                                              rf"sample-data generator \(no \.mod_vision_sample in it\)"):  # fmt: skip
        make_sample_data(folder, **TINY)
    assert sorted(p.name for p in folder.iterdir()) == ["notes.txt"] and (folder / "notes.txt").read_text() == "my work"


def test_sample_data_root_dot_is_refused_in_one_line_and_the_working_directory_kept(tmp_path, monkeypatch):
    monkeypatch.chdir(someones_folder(tmp_path / "project"))
    with pytest.raises(SystemExit, match=r"^mod-vision sample-data: sample data root .*project exists and was not "):
        run(["sample-data", "root=."])
    assert sorted(p.name for p in Path(".").iterdir()) == ["notes.txt"]


def test_sample_data_root_that_is_a_file_is_refused_and_the_file_kept(tmp_path):
    file = tmp_path / "data.csv"
    file.write_text("a,b\n")
    with pytest.raises(FileExistsError, match=rf"sample data root {file} is a file, not a folder"):
        make_sample_data(file, **TINY)
    assert file.read_text() == "a,b\n"


def test_sample_data_cli_refusal_is_one_line_with_exit_code_2(tmp_path):
    folder = someones_folder(tmp_path / "mine")
    p = subprocess.run([sys.executable, "-m", "mod_vision.cli", "sample-data", f"root={folder}"], capture_output=True,
                       text=True, timeout=300)  # fmt: skip
    assert p.returncode == 2
    assert p.stderr.strip().splitlines() == [
        f"mod-vision sample-data: sample data root {folder} exists and was not written by the sample-data generator "
        f"(no {MARKER} in it): it is not deleted; give a new or empty folder as root="
    ]
    assert (folder / "notes.txt").read_text() == "my work"


def test_sample_data_replaces_its_own_folder_also_one_written_before_the_marker(tmp_path):
    root = tmp_path / "sample"
    make_sample_data(root, **TINY)
    assert (root / MARKER).read_text().startswith("written by mod_vision's sample-data generator")
    (root / "images" / "val" / "stale.jpg").write_bytes(b"left by an earlier run")
    make_sample_data(root, **TINY)  # its own folder: replaced
    assert not (root / "images" / "val" / "stale.jpg").exists() and (root / MARKER).is_file()
    (root / MARKER).unlink()  # as sample data generated before the marker existed: its sample.yaml's header is proof
    make_sample_data(root, **TINY)
    assert (root / MARKER).is_file()
    (root / "my_results.csv").write_text("kept")  # the generator's folder with someone's file in it: refused
    with pytest.raises(FileExistsError, match=r"holds files the sample-data generator did not write \(my_results\.csv\)"):
        make_sample_data(root, **TINY)
    assert (root / "my_results.csv").read_text() == "kept" and (root / "sample.yaml").is_file()


def test_sample_data_into_an_empty_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    assert make_sample_data(tmp_path / "empty", **TINY) == tmp_path / "empty" / "sample.yaml"


def test_cli_train_without_data_refuses_a_sample_folder_it_did_not_write(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    someones_folder(tmp_path / "datasets" / "mod-sample")
    with pytest.raises(SystemExit, match=r"^mod-vision train: no data= given and the sample data cannot be generated: "
                                         r"sample data root .*mod-sample exists and was not written"):  # fmt: skip
        run(["train", "model=modvit-det.yaml", "epochs=1", "imgsz=64"])
    assert sorted(p.name for p in (tmp_path / "datasets" / "mod-sample").iterdir()) == ["notes.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["datasets"]  # no run folder either


def test_sample_video_never_overwrites_a_file_it_did_not_write(tmp_path):
    video = tmp_path / "holiday.mp4"
    video.write_bytes(b"someone's video")
    with pytest.raises(FileExistsError, match=rf"{video} exists and was not written by the sample-video generator"):
        make_sample_video(video, frames=2, size=(64, 48))
    assert video.read_bytes() == b"someone's video"
    gt = tmp_path / "clip.json"
    gt.write_text('{"mine": 1}')
    with pytest.raises(FileExistsError, match=rf"{gt} exists and was not written"):
        run_video = make_sample_video(tmp_path / "clip.mp4", frames=2, size=(64, 48))  # noqa: F841
    assert json.loads(gt.read_text()) == {"mine": 1} and not (tmp_path / "clip.mp4").exists()
    with pytest.raises(SystemExit, match=r"^mod-vision sample-video: .*\.json path, where its ground truth goes"):
        run(["sample-video", f"path={tmp_path / 'x.json'}", "frames=2"])
    ours, _ = make_sample_video(tmp_path / "ours.mp4", frames=2, size=(64, 48))
    make_sample_video(ours, frames=3, size=(64, 48))  # its own: replaced
    assert len(json.loads(ours.with_suffix(".json").read_text())["images"]) == 3


# --- resume of a finished run or a YAML ----------------------------------------------------------------------------


def test_resume_of_a_finished_run_is_refused_and_makes_no_run_folder(det_run, tmp_path, monkeypatch):
    last = det_run / "weights" / "last.pt"
    project = det_run.parent
    before = sorted(p.name for p in project.iterdir())
    monkeypatch.chdir(tmp_path)  # where Ultralytics' default project (runs/) would go
    with pytest.raises(SystemExit, match=rf"^mod-vision train: {last} cannot be resumed: its training to 2 epochs is "
                                         rf"finished, nothing to resume\. Start a new training from its weights "
                                         rf"without resume=True \(model={last}\)$"):  # fmt: skip
        run(["train", f"model={last}", "resume=True"])
    with pytest.raises(UsageError, match=r"cannot be resumed: its training to 2 epochs is finished"):
        MoDYOLO(last).train(resume=True, project=str(project), name="again")
    with pytest.raises(UsageError, match=r"cannot be resumed: its training to 2 epochs is finished"):
        MoDYOLO("modvit-det.yaml").train(resume=str(last), project=str(project))
    assert sorted(p.name for p in project.iterdir()) == before and not list(tmp_path.iterdir())


def test_resume_of_a_yaml_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit, match=r"^mod-vision train: resume=True continues an unfinished training from its "
                                         r"weights/last\.pt; modvit-det\.yaml is a model YAML, there is no training "
                                         r"to resume"):  # fmt: skip
        run(["train", "model=modvit-det.yaml", "resume=True"])
    assert not list(tmp_path.iterdir())  # neither a run folder nor sample data


# --- unreadable files in a folder ----------------------------------------------------------------------------------


@pytest.fixture
def unreadable_folder(sample_yaml, tmp_path) -> tuple[Path, list[str]]:
    """Two sample images, an unreadable video and an unreadable image."""
    folder = tmp_path / "mixed"
    return folder, images_with_broken_files(sample_yaml, folder, ("broken.mp4", "broken.jpg"))


def test_an_unreadable_video_and_image_in_a_folder_are_both_skipped(det_run, unreadable_folder, caplog):
    folder, good = unreadable_folder
    results = MoDYOLO(det_run / "weights" / "best.pt").predict(str(folder), imgsz=IMGSZ, verbose=False)
    assert sorted(Path(r.path).name for r in results) == good
    assert f"skipping {folder / 'broken.mp4'}: OpenCV cannot read it as a video" in caplog.text
    assert f"Image Read Error {folder / 'broken.jpg'}" in caplog.text


def test_heatmap_of_the_folder_writes_the_readable_images(det_run, unreadable_folder, tmp_path):
    folder, good = unreadable_folder
    out = run(["heatmap", f"model={det_run / 'weights' / 'best.pt'}", f"source={folder}", f"imgsz={IMGSZ}",
               f"project={tmp_path}", "name=h"])  # fmt: skip
    assert sorted(p.name for p in out.glob("*_depth.jpg")) == [Path(g).stem + "_depth.jpg" for g in good]


def test_heatmap_of_an_unreadable_image_says_nothing_was_read(det_run, tmp_path, capsys):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    with pytest.raises(SystemExit, match=rf"^mod-vision heatmap: no routing heatmaps written: nothing was predicted, "
                                         rf"no image or frame of source={bad} could be read"):  # fmt: skip
        run(["heatmap", f"model={det_run / 'weights' / 'best.pt'}", f"source={bad}", f"imgsz={IMGSZ}",
             f"project={tmp_path}", "name=h"])  # fmt: skip
    assert "no routed blocks" not in capsys.readouterr().out


# --- a call's routing is that call's -------------------------------------------------------------------------------


@pytest.fixture
def model():
    return MoDYOLO("modvit-det.yaml")  # 3 routed blocks at capacity 0.5


def predict(model, **kw):
    return model.predict(IMAGE, imgsz=128, verbose=False, **kw)[0]


def default(model) -> tuple[str, list[float]]:
    """The model's own routing: (static | dynamic, capacities)."""
    blocks = routed_blocks(model.model)
    return ("dynamic" if blocks[0].dynamic else "static"), [b.capacity for b in blocks]


def test_a_calls_capacity_does_not_stay_on_the_model(model):
    assert predict(model, capacity=0.25).token_share == share(0.25)
    assert default(model) == ("static", [0.5] * 3)
    assert predict(model).token_share == share(0.5)


def test_set_capacity_is_the_default_a_call_overrides_once(model):
    model.set_capacity({0: 0.25, 2: 1.0})
    assert predict(model, capacity=0.125).capacity == [0.125] * 3
    assert predict(model).capacity == [0.25, 0.5, 1.0]
    assert default(model) == ("static", [0.25, 0.5, 1.0])


def test_a_dynamic_call_then_a_static_default(model):
    assert predict(model, dynamic_capacity=DYNAMIC).capacity_mode == "dynamic"
    r = predict(model)
    assert (r.capacity_mode, r.capacity, r.token_share) == ("static", [0.5] * 3, share(0.5))


def test_set_dynamic_is_the_default_until_set_capacity(model):
    model.set_dynamic(DYNAMIC)
    assert predict(model).capacity_mode == "dynamic"
    r = predict(model, capacity=0.25)
    assert (r.capacity_mode, r.token_share) == ("static", share(0.25))
    assert predict(model).capacity_mode == "dynamic" and default(model)[0] == "dynamic"
    model.set_capacity(0.25)  # a static capacity ends dynamic mode
    assert predict(model).capacity_mode == "static" and default(model) == ("static", [0.25] * 3)


def test_a_stream_calls_capacity_ends_with_its_generator(model):
    stream = model.predict([IMAGE, IMAGE], imgsz=128, stream=True, capacity=0.25, verbose=False)
    assert next(stream).token_share == share(0.25)
    stream.close()
    assert default(model) == ("static", [0.5] * 3) and predict(model).token_share == share(0.5)
    assert [r.token_share for r in model.predict([IMAGE, IMAGE], imgsz=128, stream=True, capacity=1.0)] == [1.0, 1.0]
    assert predict(model).token_share == share(0.5)


def test_a_val_calls_capacity_does_not_stay(det_run, sample_yaml, tmp_path):
    model = MoDYOLO(det_run / "weights" / "best.pt")  # trained at capacity 0.5: the checkpoint's default
    m = model.val(data=str(sample_yaml), imgsz=IMGSZ, batch=4, capacity=0.25, project=str(tmp_path), plots=False)
    assert m.capacity == [0.25] * 3
    assert default(model) == ("static", [0.5] * 3) and predict(model).capacity == [0.5] * 3


def test_routing_policy_per_predict_call(model):
    seen = []
    model.add_callback("on_predict_batch_start", lambda p: seen.append({b.policy for b in routed_blocks(p.model)}))
    predict(model, routing="random")
    predict(model)
    assert seen == [{"random"}, {"topk"}]
    assert {b.policy for b in routed_blocks(model.model)} == {"topk"}
    with pytest.raises(ValueError, match=r"routing must be .*'topk', 'object', 'random'.* got 'best'"):
        predict(model, routing="best")


# --- image sizes -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("imgsz", [100000, [64, MAX_IMGSZ + 1]])
def test_imgsz_above_the_limit_is_refused_before_anything_is_allocated(model, imgsz):
    match = rf"imgsz={imgsz!r} is above the limit of {MAX_IMGSZ} px per side".replace("[", r"\[").replace("]", r"\]")
    for call in (lambda: model.predict(IMAGE, imgsz=imgsz), lambda: model.val(data="x.yaml", imgsz=imgsz),
                 lambda: model.train(data="x.yaml", imgsz=imgsz), lambda: model.export(imgsz=imgsz)):  # fmt: skip
        with pytest.raises(UsageError, match=match):
            call()
    with pytest.raises(SystemExit, match=rf"^mod-vision predict: {match}; give imgsz <= {MAX_IMGSZ}$"):
        run(["predict", "model=x.pt", "source=bus.jpg", f"imgsz={imgsz}".replace(" ", "")])
    model.predict(IMAGE, imgsz=128, verbose=False)  # the limit leaves ordinary sizes alone


# --- a stock Ultralytics YAML ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("name, cls", [("yolo11n.yaml", "YOLO"), ("yolov8n-seg.yaml", "YOLO"), ("rtdetr-l.yaml", "RTDETR")])
def test_a_stock_ultralytics_yaml_says_which_class_loads_it(name, cls):
    with pytest.raises(UsageError, match=rf"^{name} is a stock Ultralytics model, not a mod_vision one: load it with "
                                         rf"ultralytics\.{cls}\('{name}'\)"):  # fmt: skip
        MoDYOLO(name)


def test_cli_stock_yaml_is_one_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit, match=r"^mod-vision train: yolo11n\.yaml is a stock Ultralytics model"):
        run(["train", "model=yolo11n.yaml", "data=x.yaml"])
    assert not list(tmp_path.iterdir())


# --- capacity warm-up longer than the run ----------------------------------------------------------------------------


@pytest.mark.parametrize("warmup, warned", [(3, True), (1, False)])
def test_capacity_warmup_longer_than_epochs_is_a_warning(sample_yaml, tmp_path, caplog, warmup, warned):
    from mod_vision.engine.train import MoDDetectionTrainer

    trainer = MoDDetectionTrainer(overrides=dict(model="modvit-det.yaml", data=str(sample_yaml), epochs=1, imgsz=64,
                                                 capacity_warmup=warmup, project=str(tmp_path), name="w"))  # fmt: skip
    trainer.release_run_lock()
    line = f"capacity_warmup={warmup} is longer than epochs=1: training stops 33% of the way down the ramp"
    assert (line in caplog.text) is warned
    assert ("is longer than epochs" in caplog.text) is warned


# --- val and sweep without COCO on disk say how to get it, as train does -------------------------------------------


@pytest.fixture
def coco_nowhere(tmp_path) -> Path:
    """The repository's data/coco.yaml, its `path` pointing at a folder that does not exist."""
    from mod_vision.nn.tasks import MODEL_DIR

    data = tmp_path / "coco.yaml"
    src = (MODEL_DIR.parents[1] / "data" / "coco.yaml").read_text()
    data.write_text(src.replace("path: ../datasets/coco", f"path: {tmp_path / 'nowhere'}"))
    return data


@pytest.mark.parametrize("mode", ["val", "sweep", "train"])
def test_cli_without_coco_on_disk_says_how_to_get_it_in_one_line(coco_nowhere, tmp_path, monkeypatch, mode):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as e:
        run([mode, "model=modvit-det.yaml", f"data={coco_nowhere}", "imgsz=64"])
    text = str(e.value.code)
    assert text.startswith(f"mod-vision {mode}: Dataset '{coco_nowhere}'") and "\n" not in text
    assert f"missing path '{tmp_path / 'nowhere'}" in text
    assert "COCO was not found. Download train2017, val2017 and the 2017 annotations from cocodataset.org" in text
    assert not (tmp_path / "runs").exists()  # nothing made: no run folder for a run that cannot start


def test_val_api_without_coco_on_disk_raises_file_not_found_with_the_help(coco_nowhere):
    from mod_vision.data import DatasetNotFound

    with pytest.raises(DatasetNotFound, match=r"(?s)images not found.*COCO was not found\. Download"):
        MoDYOLO("modvit-det.yaml").val(data=str(coco_nowhere), imgsz=64)
    assert issubclass(DatasetNotFound, FileNotFoundError)  # what Ultralytics raises for a missing dataset


# --- cfg= named as the README names it works from any working directory ----------------------------------------------


class _Stop(Exception):
    pass


@pytest.mark.parametrize("cfg", ["cfg/recipe-routed.yaml", "recipe-routed.yaml"])
def test_train_cfg_from_another_directory_is_the_repos_recipe(sample_yaml, tmp_path, monkeypatch, cfg):
    from ultralytics.utils import YAML

    from mod_vision.cfg import EXTRA_ARGS
    from mod_vision.nn.tasks import MODEL_DIR

    monkeypatch.chdir(tmp_path)
    recipe = YAML.load(MODEL_DIR.parent / "recipe-routed.yaml")
    assert recipe["capacity_warmup"] != EXTRA_ARGS["capacity_warmup"]  # so the recipe's value shows it was read
    seen = {}

    def stop(trainer):  # the settings the run would train with; no epoch needed
        seen.update(warmup=trainer.args.capacity_warmup, lr_mult=trainer.args.router_lr_mult)
        raise _Stop

    model = MoDYOLO("modvit-det.yaml")
    model.add_callback("on_pretrain_routine_start", stop)
    with pytest.raises(_Stop):
        model.train(cfg=cfg, data=str(sample_yaml), imgsz=64, epochs=1, device="cpu", workers=0, plots=False,
                    project=str(tmp_path / "runs"), name="recipe")  # fmt: skip
    assert seen == {"warmup": recipe["capacity_warmup"], "lr_mult": recipe["router_lr_mult"]}


def test_cli_cfg_that_exists_nowhere_is_one_line_naming_where_it_looked(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit, match=r"^mod-vision train: cfg=cfg/nothere\.yaml not found; looked in "
                                         r"cfg/nothere\.yaml, \S+/cfg/nothere\.yaml$"):  # fmt: skip
        run(["train", "model=modvit-det.yaml", "cfg=cfg/nothere.yaml", "data=x.yaml"])
    assert not list(tmp_path.iterdir())


def test_cli_cfg_from_another_directory_reaches_the_data_check(coco_nowhere, tmp_path, monkeypatch):
    """The recipe is found (an unresolved cfg= fails first, in Ultralytics' check_yaml): the run stops at the data."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit, match=r"^mod-vision train: Dataset .*COCO was not found"):
        run(["train", "model=modvit-det.yaml", "cfg=cfg/recipe-routed.yaml", f"data={coco_nowhere}"])


# --- output noise ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("task", ["detect", "segment"])
def test_training_progress_header_has_one_padded_column_per_loss(sample_yaml, tmp_path, task):
    from mod_vision.engine.train import MoDDetectionTrainer, MoDSegmentationTrainer

    cls = MoDSegmentationTrainer if task == "segment" else MoDDetectionTrainer
    model = "modvit-seg.yaml" if task == "segment" else "modvit-det.yaml"
    trainer = cls(overrides=dict(model=model, data=str(sample_yaml), epochs=1, imgsz=64, project=str(tmp_path), name="h"))
    trainer.release_run_lock()
    losses = ("box_loss", *(("seg_loss",) if task == "segment" else ()), "cls_loss", "dfl_loss")  # Ultralytics' own
    trainer.loss_names = (*losses, "router_aux", "router_rank")
    header = trainer.progress_string().lstrip("\n")
    # Ultralytics prints each value in 11 characters: the header has one 11-character column per value, each padded
    assert len(header) == 11 * (4 + len(trainer.loss_names))
    columns = [header[i : i + 11] for i in range(0, len(header), 11)]
    assert all(c.startswith(" ") for c in columns), columns
    assert [c.strip() for c in columns] == ["Epoch", "GPU_mem", *losses, "aux_loss", "rank_loss", "Instances", "Size"]
    assert trainer.loss_names[-2:] == ("router_aux", "router_rank")  # results.csv's names are kept


# --- a failed COCO evaluation fails; without a COCO json the AP is Ultralytics', named so -----------------------------


def test_a_failed_coco_evaluation_raises_instead_of_passing_as_a_warning(det_run, sample_yaml, tmp_path, monkeypatch):
    import mod_vision.engine.val as val
    from mod_vision.engine.coco_eval import COCOEvalError

    def broken(*args, **kwargs):
        raise ValueError("no 'annotations' list")

    monkeypatch.setattr(val, "coco_evaluate", broken)
    json_file = sample_yaml.parent / "annotations" / "instances_val.json"
    with pytest.raises(COCOEvalError, match=rf"^COCO bbox evaluation against {json_file} failed: ValueError: no "
                                            rf"'annotations' list\. The data YAML names this json for COCO metrics"):  # fmt: skip
        MoDYOLO(det_run / "weights" / "best.pt").val(data=str(sample_yaml), imgsz=IMGSZ, batch=8, plots=False,
                                                     project=str(tmp_path))  # fmt: skip


def test_box_ap_is_cocos_with_a_coco_json_and_ultralytics_named_so_without(det_run, sample_yaml, tmp_path):
    from ultralytics.utils import YAML

    from mod_vision.engine.coco_eval import COCOEvalError, box_ap

    model = MoDYOLO(det_run / "weights" / "best.pt")
    kw = dict(imgsz=IMGSZ, batch=8, plots=False, project=str(tmp_path))
    coco = model.val(data=str(sample_yaml), **kw)
    assert coco.coco_json == sample_yaml.parent / "annotations" / "instances_val.json"
    assert box_ap(coco) == (coco.coco["metrics/coco_AP(B)"], "COCO box AP (faster-coco-eval)")
    assert box_ap(coco, "AP50") == (coco.coco["metrics/coco_AP50(B)"], "COCO box AP50 (faster-coco-eval)")
    coco.coco.clear()  # as a COCO evaluation that did not run would leave it
    with pytest.raises(COCOEvalError, match="has no metrics/coco_AP\\(B\\): its COCO evaluation did not run"):
        box_ap(coco)

    plain = tmp_path / "no_coco.yaml"
    YAML.save(plain, {k: v for k, v in YAML.load(sample_yaml).items() if k not in {"coco_json", "yaml_file"}})
    m = model.val(data=str(plain), **kw)
    assert m.coco_json is None and m.coco == {}
    assert box_ap(m) == (float(m.box.map), "Ultralytics box mAP50-95")
    assert box_ap(m, "AP50") == (float(m.box.map50), "Ultralytics box mAP50")


# --- every CLI user error is one line, exit code 2 ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "args,line",
    [
        (["train", "foo=bar"], r"^mod-vision train: unknown argument 'foo'\. Valid: Ultralytics' arguments"),
        (["train", "epoch=3"], r"^mod-vision train: unknown argument 'epoch' \(did you mean epochs"),
        (["val", "model=nothere.pt", "data=x.yaml"], r"^mod-vision val: model file 'nothere\.pt' not found"),
        (["benchmark", "imgsz=abc"], r"^mod-vision benchmark: imgsz must be an integer >= 1 or a list of them"),
        (["sample-data", "n_train=abc", "root={tmp}/s"], r"^mod-vision sample-data: n_train must be an integer >= 1"),
        (["sample-data", "n_train=-5", "root={tmp}/s"], r"^mod-vision sample-data: n_train must be an integer >= 1"),
        (["sample-video", "frames=0", "path={tmp}/v.mp4"], r"^mod-vision sample-video: frames must be an integer >= 1"),
        (["sample-video", "size=[0,0]", "path={tmp}/v.mp4"], r"^mod-vision sample-video: size must be \[width, height\]"),
        (["sample-video", "colour=red", "path={tmp}/v.mp4"], r"^mod-vision sample-video: unknown argument 'colour'"),
    ],
)
def test_cli_user_errors_are_one_line_with_exit_code_2_and_write_nothing(args, line, tmp_path):
    import re

    p = subprocess.run([sys.executable, "-m", "mod_vision.cli", *(a.format(tmp=tmp_path) for a in args)],
                       capture_output=True, text=True, timeout=300, cwd=tmp_path)  # fmt: skip
    assert p.returncode == 2, p.stderr[-2000:]
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and re.match(line, lines[0]), lines
    assert sorted(f.name for f in tmp_path.iterdir()) == []  # no run folder, no data, no video


def test_cli_user_error_traceback_on_request(tmp_path):
    env = {**__import__("os").environ, "MOD_VISION_TRACEBACK": "1"}
    p = subprocess.run([sys.executable, "-m", "mod_vision.cli", "sample-video", "frames=0", f"path={tmp_path}/v.mp4"],
                       capture_output=True, text=True, timeout=300, env=env)  # fmt: skip
    assert p.returncode == 2 and "Traceback (most recent call last)" in p.stderr
    assert "ValueError: frames must be an integer >= 1, got frames=0" in p.stderr  # the cause, where it was raised
    assert p.stderr.strip().splitlines()[-1].startswith("mod-vision sample-video: frames must be")
