"""Inplace distillation from capacity 1.0 (`capacity_distill`) and dense batches in elastic training
(`capacity_full_share`): the loss, the teacher forward and the trainer columns."""

from __future__ import annotations

import csv

import pytest
import torch

from mod_vision import MoDYOLO
from mod_vision.nn.routing import capacity_distill_loss, record_routing, routed_blocks, set_routing

from .conftest import TRAIN_ARGS

REG_MAX, NC, ANCHORS = 16, 3, 10


def _outputs(seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {"boxes": torch.randn(2, 4 * REG_MAX, ANCHORS, generator=g),
            "scores": torch.randn(2, NC, ANCHORS, generator=g)}  # fmt: skip


def test_distill_loss_is_zero_for_the_teachers_own_outputs_and_positive_otherwise():
    teacher = _outputs(0)
    cls, box = capacity_distill_loss(teacher, teacher, REG_MAX)
    assert cls.abs().item() < 1e-5 and box.abs().item() < 1e-6
    cls, box = capacity_distill_loss(_outputs(1), teacher, REG_MAX)
    assert cls.item() > 0 and box.item() > 0


def test_distill_loss_trains_the_student_only():
    teacher = {k: v.requires_grad_() for k, v in _outputs(0).items()}
    student = {k: v.requires_grad_() for k, v in _outputs(1).items()}
    sum(capacity_distill_loss(student, teacher, REG_MAX)).backward()
    assert all(v.grad is not None and v.grad.abs().sum() > 0 for v in student.values())
    assert all(v.grad is None for v in teacher.values())


def test_distill_box_term_weighs_anchors_by_the_teachers_class_probability():
    teacher, student = _outputs(0), _outputs(0)
    teacher["scores"][:, :, 0] = -30.0  # anchor 0: the teacher sees no object there
    student["boxes"][:, :, 0] += 5 * torch.randn(2, 4 * REG_MAX)
    assert capacity_distill_loss(student, teacher, REG_MAX)[1].item() < 1e-9  # its boxes do not count
    student = _outputs(0)
    student["boxes"][:, :, 1] += 5 * torch.randn(2, 4 * REG_MAX)  # an anchor the teacher scores
    assert capacity_distill_loss(student, teacher, REG_MAX)[1].item() > 1e-3


def test_full_capacity_outputs_run_at_capacity_one_and_leave_the_routing_as_it_was():
    model = MoDYOLO("modnext-det-n.yaml").model.train()
    set_routing(model, capacity=0.25)
    with record_routing() as record:
        out = model.full_capacity_outputs(torch.rand(2, 3, 64, 64))
    assert len(record) == len(routed_blocks(model)) and record.token_share().tolist() == [1.0, 1.0]
    assert out["scores"].shape[:2] == (2, 80) and not out["scores"].requires_grad
    assert model.capacities() == [0.25] * len(routed_blocks(model))
    set_routing(model, capacity=1.0)
    with record_routing() as record:
        assert model.full_capacity_outputs(torch.rand(2, 3, 64, 64)) is None  # nothing to distill
    assert not len(record)
    model.eval()
    set_routing(model, capacity=0.25)
    assert model.full_capacity_outputs(torch.rand(2, 3, 64, 64)) is None  # validation has no teacher


def test_the_teacher_forward_leaves_the_batch_norm_running_statistics_as_they_were():
    model = MoDYOLO("modnext-det-n.yaml").model.train()
    set_routing(model, capacity=0.25)
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    before = [(m.running_mean.clone(), m.running_var.clone(), int(m.num_batches_tracked)) for m in norms]
    img = torch.rand(2, 3, 64, 64)
    assert model.full_capacity_outputs(img) is not None
    for m, (mean, var, count) in zip(norms, before):
        assert torch.equal(m.running_mean, mean) and torch.equal(m.running_var, var)
        assert int(m.num_batches_tracked) == count
    with torch.no_grad():
        model(img)  # the student's own forward does update them
    assert any(not torch.equal(m.running_mean, mean) for m, (mean, _, _) in zip(norms, before))


def _distill_column(sample_yaml, runs, name, **kw) -> list[float]:
    model = MoDYOLO("modvit-det.yaml")
    capacities = []
    model.add_callback("on_train_batch_end", lambda t: capacities.append(t.model.capacities()[0]))
    model.train(data=str(sample_yaml), project=str(runs), name=name, **{**TRAIN_ARGS, "epochs": 2, **kw})
    with open(model.trainer.save_dir / "results.csv") as f:
        rows = list(csv.DictReader(f))
    return [float(r["train/distill"]) for r in rows], capacities


@pytest.mark.slow  # trains
def test_training_with_distillation_logs_its_loss_and_keeps_each_batchs_capacity(sample_yaml, runs):
    column, capacities = _distill_column(sample_yaml, runs, "distill", capacity_range=[0.2, 0.8], capacity_distill=1.0)
    assert len(column) == 2 and all(v > 0 for v in column)
    assert len(capacities) == 6 and all(0.2 <= c <= 0.8 for c in capacities)  # the teacher's 1.0 was undone
    column, capacities = _distill_column(sample_yaml, runs, "distill-dense", capacity_range=[0.2, 0.8],
                                         capacity_full_share=1.0, capacity_distill=1.0)  # fmt: skip
    assert column == [0.0, 0.0] and capacities == [1.0] * 6  # every batch dense: nothing to distill


@pytest.mark.slow  # trains
def test_a_segmentation_model_distils_its_detections_too(sample_yaml, runs):
    model = MoDYOLO("modvit-seg.yaml")
    model.train(data=str(sample_yaml), project=str(runs), name="distill-seg", capacity_range=[0.2, 0.8],
                capacity_distill=1.0, **TRAIN_ARGS)  # fmt: skip
    with open(model.trainer.save_dir / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 1 and float(rows[0]["train/distill"]) > 0 and float(rows[0]["train/seg_loss"]) > 0
