"""Importing and using mod_vision leaves stock Ultralytics as it is; mod_vision's own keys are checked by its own entry
points, before any data loads, with errors that name the key."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from ultralytics import YOLO
from ultralytics.models.yolo.detect import DetectionTrainer
from ultralytics.utils import DEFAULT_CFG, DEFAULT_CFG_DICT

from mod_vision import MoDYOLO
from mod_vision.cfg import EXTRA_ARGS, check_extra_args
from mod_vision.cli import run
from mod_vision.engine.train import MoDDetectionTrainer
from mod_vision.nn import MoDDetectionModel
from mod_vision.nn.policies import POLICIES
from mod_vision.nn.tasks import find_model_yaml, load_model_yaml

from .conftest import TRAIN_ARGS

IMAGE = np.zeros((64, 64, 3), dtype=np.uint8)

# What Ultralytics' DetectionModel builds: a stock YAML's layers and parameter count, and what it says to a YAML that
# names mod_vision's layers. The same function runs here and in a fresh interpreter without mod_vision (STOCK).
PARSED = textwrap.dedent(
    f"""
    def parsed():
        import ultralytics.nn.tasks as t
        from ultralytics.utils import YAML
        stock = t.DetectionModel("yolo11n.yaml", verbose=False)
        try:
            t.DetectionModel(YAML.load({str(find_model_yaml("modvit-det.yaml")[0])!r}), verbose=False)
            mod = None
        except Exception as e:
            mod = [type(e).__name__, str(e)]
        return dict(layers=[type(m).__name__ for m in stock.model], params=sum(p.numel() for p in stock.parameters()),
                    mod=mod)
    """
)
_namespace = {}
exec(PARSED, _namespace)  # noqa: S102
parsed = _namespace["parsed"]

# In a fresh interpreter without mod_vision: Ultralytics' default keys, what its parser builds, and what a stock YOLO11n
# says to capacity= (on a first predict, and on a predict that reuses the predictor).
STOCK = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    {imports}
    from ultralytics import YOLO
    from ultralytics.utils import DEFAULT_CFG_DICT
    {parsed}
    img, out = np.zeros((64, 64, 3), dtype=np.uint8), {{}}
    for case in ("first", "reused"):
        model = YOLO("yolo11n.yaml")
        if case == "reused":
            model.predict(img, imgsz=64, verbose=False)
        try:
            model.predict(img, imgsz=64, verbose=False, capacity=0.5)
            out[case] = None
        except Exception as e:
            out[case] = [type(e).__name__, str(e)]
    out["keys"] = sorted(DEFAULT_CFG_DICT)
    out["parser"] = parsed()
    out["mod_vision"] = "mod_vision" in sys.modules
    print(json.dumps(out))
    """
)


def stock_run(imports: str = "") -> dict:
    code = STOCK.format(imports=imports, parsed=PARSED)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def without_mod_vision() -> dict:
    out = stock_run()
    assert out["mod_vision"] is False
    return out


def test_parser_and_default_config_are_ultralytics_own_after_a_mod_predict(without_mod_vision):
    MoDYOLO("modvit-det.yaml").predict(IMAGE, imgsz=64, capacity=0.5, verbose=False)
    # a stock YAML builds as without mod_vision, and a YAML naming mod_vision's layers is refused as without it
    assert without_mod_vision["parser"]["mod"] == ["KeyError", "'PatchEmbed'"]
    assert parsed() == without_mod_vision["parser"]
    assert sorted(DEFAULT_CFG_DICT) == without_mod_vision["keys"]
    assert not any(hasattr(DEFAULT_CFG, k) for k in EXTRA_ARGS)


def test_stock_yolo_refuses_capacity_exactly_as_without_mod_vision(without_mod_vision):
    with_it = stock_run("import mod_vision; mod_vision.MoDYOLO('modvit-det.yaml').predict(np.zeros((64, 64, 3), dtype=np.uint8), imgsz=64, verbose=False)")
    assert with_it["mod_vision"] is True
    for case in ("first", "reused"):
        assert without_mod_vision[case][0] == "SyntaxError" and "'capacity' is not a valid YOLO argument" in without_mod_vision[case][1]
        assert with_it[case] == without_mod_vision[case]
    assert with_it["keys"] == without_mod_vision["keys"] and with_it["parser"] == without_mod_vision["parser"]


def test_stock_yaml_in_this_process_builds_with_ultralytics_parser_and_refuses_capacity():
    model = YOLO("yolo11n.yaml")
    assert type(model.model).__name__ == "DetectionModel"
    with pytest.raises(SyntaxError, match="'capacity' is not a valid YOLO argument"):
        model.predict(IMAGE, imgsz=64, capacity=0.5, verbose=False)
    with pytest.raises(SyntaxError, match="'capacity_range' is not a valid YOLO argument"):
        DetectionTrainer(overrides={"model": "yolo11n.yaml", "capacity_range": [0.2, 0.8]})


def test_parser_is_restored_when_a_mod_model_fails_to_build(without_mod_vision):
    spec = load_model_yaml("modvit-det.yaml")
    spec["backbone"][1][2] = "NoSuchLayer"
    with pytest.raises(ValueError, match="Unknown module 'NoSuchLayer' in layer 1"):
        MoDDetectionModel(spec, verbose=False)
    assert parsed() == without_mod_vision["parser"]  # Ultralytics' parser, not mod_vision's


def test_mod_model_keeps_its_name_scale_and_export_args():
    model = MoDYOLO("modvit-det-s.yaml")
    assert model.model.yaml["scale"] == "s" and len(model.model.capacities()) == 6
    assert model.overrides["model"] == model.cfg == model.model.args["model"] == "modvit-det-s.yaml"


BAD = [
    ("capacity_warmup", "abc", "capacity_warmup must be a number >= 0 .*got 'abc'"),
    ("capacity_warmup", -1, "capacity_warmup must be a number >= 0 .*got -1"),
    ("capacity_full_share", 2, r"capacity_full_share must be a number in \[0, 1\] .*got 2"),
    ("capacity_distill", -1, "capacity_distill must be a number >= 0 .*got -1"),
    ("router_aux", "abc", "router_aux must be a number >= 0 .*got 'abc'"),
    ("router_aux", -1, "router_aux must be a number >= 0 .*got -1"),
    ("dynamic_capacity", 0.5,
     r"dynamic_capacity must be \[min, max\] with min in \[0, 1\] and max in \(0, 1\] \(False or None: static"),
    ("dynamic_capacity", [-0.5, 1],
     r"dynamic_capacity=\[-0.5, 1\]: a per-image budget's min must be a float in the range \[0, 1\]"),
    ("capacity_range", [0, 1], r"capacity_range=\[0, 1\]: capacity must be a float in the range \(0, 1\]"),
    ("dynamic_capacity", [0.5, 0.1], "dynamic_capacity min 0.5 is above max 0.1"),
    ("capacity", "abc", r"capacity='abc' is not valid: capacity must be a float in the range \(0, 1\]"),
    ("capacity", [0.5, 2], r"capacity=\[0.5, 2\] is not valid"),
    ("capacity_range", 0.5, r"capacity_range must be \[min, max\]"),
    ("router_lr_mult", -1, "router_lr_mult must be a number >= 0 .*got -1"),
    ("predictor_lr_mult", "x", "predictor_lr_mult must be a number >= 0 .*got 'x'"),
    ("heatmap_period", -1, "heatmap_period must be an int >= 0"),
    ("heatmap_period", 1.5, "heatmap_period must be an int >= 0"),
    ("save_heatmap", "yes", "save_heatmap must be True or False"),
]


def test_every_mod_vision_key_is_in_exactly_one_typed_key_set():
    from mod_vision import cfg

    assert sorted(k for keys, _ in cfg.KEY_CHECKS for k in keys) == sorted(EXTRA_ARGS)
    assert cfg.OPTIONAL_KEYS | set(cfg.FINITE_KEYS) <= set(cfg.NUMBER_KEYS)  # refinements of the number check


@pytest.mark.parametrize(
    "key_set, bad, match",
    [("CAPACITY_KEYS", 2, r"^{key}=2 is not valid: "),
     ("BOUNDS_KEYS", [0.5, 0.1], r"^{key} min 0.5 is above max 0.1$"),
     ("NUMBER_KEYS", -1, r"^{key} must be a number >= 0 \(.+\), got -1$"),
     ("SHARE_KEYS", 1.5, r"^{key} must be a number in \[0, 1\] \(.+\), got 1.5$"),
     ("INT_KEYS", 1.5, r"^{key} must be an int >= 0 \(.+\), got 1.5$"),
     ("BOOL_KEYS", "yes", r"^{key} must be True or False, got 'yes'$"),
     ("CHOICE_KEYS", "x", r"^{key} must be .+, got 'x'$"),
     ("REUSE_KEYS", -1, r"^{key} must be "),
     ("SOURCE_KEYS", 3, r"^{key} must be a timm model name or a weights file path, got 3$")],
)  # fmt: skip
def test_each_typed_key_set_is_checked_by_its_function(key_set, bad, match):
    from mod_vision import cfg

    for key in getattr(cfg, key_set):
        assert check_extra_args({key: EXTRA_ARGS[key]}) == {key: EXTRA_ARGS[key]}  # the default passes
        with pytest.raises(ValueError, match=match.format(key=key)):
            check_extra_args({key: bad})


@pytest.mark.parametrize(
    "key, bad, message",
    [("router_rank_kind", "hinge", "router_rank_kind must be 'pairwise' or 'bce', got 'hinge'"),
     ("routing", "all", f"routing must be one of {', '.join(map(repr, POLICIES))} or None, got 'all'"),
     ("router_rank", float("inf"), "router_rank must be a finite number >= 0 (weight of the ranking loss), got inf"),
     ("router_lr_mult", "x", "router_lr_mult must be a number >= 0 (learning rate relative to lr0), got 'x'"),
     ("router_rank_dilate", -1, "router_rank_dilate must be an int >= 0 (token cells the object targets grow by; 0: "
                                "none), got -1"),
     ("capacity_full_share", -0.5, "capacity_full_share must be a number in [0, 1] (share of batches trained at "
                                   "capacity 1.0), got -0.5"),
     ("capacity_distill", float("nan"), "capacity_distill must be a finite number >= 0 (weight of the distillation), "
                                        "got nan")],
)  # fmt: skip
def test_key_set_errors_read_as_written(key, bad, message):
    with pytest.raises(ValueError) as e:
        check_extra_args({key: bad})
    assert str(e.value) == message
    assert check_extra_args({"router_lr_mult": None, "routing": None}) == {"router_lr_mult": None, "routing": None}


@pytest.mark.parametrize("key, value, match", BAD)
def test_bad_mod_vision_key_fails_training_before_data_loads(key, value, match, tmp_path):
    # the data YAML does not exist: an error about the key proves it was checked before any data was looked for
    with pytest.raises(ValueError, match=match):
        MoDYOLO("modvit-det.yaml").train(data=str(tmp_path / "missing.yaml"), project=str(tmp_path), **{**TRAIN_ARGS, key: value})
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("key, value, match", [b for b in BAD if b[0] in {"capacity", "dynamic_capacity", "save_heatmap"}])
def test_bad_mod_vision_key_fails_predict_and_val_first(key, value, match, tmp_path):
    model = MoDYOLO("modvit-det.yaml")
    with pytest.raises(ValueError, match=match):
        model.predict(IMAGE, imgsz=64, **{key: value})
    with pytest.raises(ValueError, match=match):
        model.val(data=str(tmp_path / "missing.yaml"), **{key: value})
    with pytest.raises(ValueError, match=match):
        model.export(format="onnx", **{key: value})


def test_cli_checks_mod_vision_keys_before_data(sample_yaml, tmp_path):
    with pytest.raises(ValueError, match="capacity_warmup must be a number >= 0 .*got 'abc'"):
        run(["train", f"data={sample_yaml}", "capacity_warmup=abc", f"project={tmp_path}", "device=cpu"])
    with pytest.raises(ValueError, match=r"dynamic_capacity must be \[min, max\]"):
        run(["val", f"data={sample_yaml}", "dynamic_capacity=0.5", f"project={tmp_path}", "device=cpu"])
    assert not list(tmp_path.iterdir())  # no run folder: refused before anything started


def test_batches_are_preprocessed_as_ultralytics_does_and_the_schedule_runs_at_batch_start(sample_yaml, tmp_path):
    """A routed trainer gives the batch tensors Ultralytics' trainer gives for the same batch, and preprocessing leaves
    the routing as set: the capacity schedule (here elastic) is applied by the trainer's on_train_batch_start
    callbacks."""
    common = {"data": str(sample_yaml), "imgsz": 64, "project": str(tmp_path), "device": "cpu"}
    stock = DetectionTrainer(overrides={**common, "model": "yolo11n.yaml", "name": "stock"})
    routed = {**common, "model": "modvit-det.yaml", "name": "mod", "capacity_range": [0.2, 0.3]}
    trainer = MoDDetectionTrainer(overrides=routed)
    try:
        assert trainer.args.capacity_warmup == 0 and trainer.args.router_aux == EXTRA_ARGS["router_aux"]  # defaulted here
        g = torch.Generator().manual_seed(0)
        batch = {"img": torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8, generator=g),
                 "cls": torch.tensor([[0.0], [1.0]]), "bboxes": torch.rand(2, 4, generator=g),
                 "batch_idx": torch.tensor([0.0, 1.0]), "im_file": ["a.jpg", "b.jpg"]}  # fmt: skip
        trainer.model, trainer.epoch = trainer.get_model("modvit-det.yaml", verbose=False), 0  # as at the first batch
        own = trainer.model.capacities()
        ours, theirs = trainer.preprocess_batch(copy.deepcopy(batch)), stock.preprocess_batch(copy.deepcopy(batch))
        assert ours.keys() == theirs.keys() == batch.keys() and ours["im_file"] == theirs["im_file"]
        for k in ("img", "cls", "bboxes", "batch_idx"):
            assert ours[k].dtype == theirs[k].dtype and torch.equal(ours[k], theirs[k]), k
        assert ours["img"].dtype == torch.float32 and torch.equal(ours["img"], batch["img"].float() / 255)
        assert trainer.model.capacities() == own == [0.5] * 3  # preprocessing sets no capacity
        trainer.run_callbacks("on_train_batch_start")
        drawn = trainer.model.capacities()
        assert drawn == [drawn[0]] * 3 and 0.2 <= drawn[0] <= 0.3  # the batch's capacity, drawn from capacity_range
    finally:
        trainer.release_run_lock()


def test_val_scores_against_the_datasets_coco_json_without_rebuilding_ground_truth(det_run, sample_yaml, tmp_path):
    model, seen = MoDYOLO(det_run / "weights" / "best.pt"), {}
    model.add_callback("on_val_end", lambda v: seen.update(anno=v.anno_json, custom=v.is_custom_json, gdict=v.gdict))
    metrics = model.val(data=str(sample_yaml), imgsz=96, batch=4, project=str(tmp_path), plots=False, verbose=False)
    assert seen["anno"].name == "instances_val.json" and seen["custom"] is False and seen["gdict"] is None
    assert "metrics/coco_AP(B)" in metrics.coco
