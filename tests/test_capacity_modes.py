"""Elastic capacity, capacity warm-up, the auxiliary router loss and dynamic compute, through the real trainer."""

from __future__ import annotations

import csv
import math

import pytest

from mod_vision import MoDYOLO

from .conftest import TRAIN_ARGS


def _train_recording(sample_yaml, runs, name, **kw):
    """Train 2 tiny epochs; return (model, capacities seen per batch by the trained model)."""
    model = MoDYOLO("modvit-det.yaml")
    seen = []
    model.add_callback("on_train_batch_end", lambda t: seen.append(t.model.capacities()))
    model.train(data=str(sample_yaml), project=str(runs), name=name, **{**TRAIN_ARGS, "epochs": 2, **kw})
    return model, seen


@pytest.mark.slow  # trains
def test_elastic_training_draws_a_capacity_per_batch_and_keeps_the_models_own(sample_yaml, runs):
    model, seen = _train_recording(sample_yaml, runs, "elastic", capacity_range=[0.2, 0.8])
    assert len(seen) == 6  # 24 images / batch 8 x 2 epochs
    firsts = [caps[0] for caps in seen]
    assert all(caps == [caps[0]] * len(caps) for caps in seen)  # one draw per batch, for every routed block
    assert all(0.2 <= c <= 0.8 for c in firsts) and len(set(firsts)) == len(firsts)
    # the EMA (validated and saved) keeps the YAML's capacity
    assert MoDYOLO(model.trainer.best).model.capacities() == [0.5] * 3  # scale n: 6 blocks, every other routed


@pytest.mark.slow  # trains
def test_capacity_warmup_ramps_down_from_dense(sample_yaml, runs):
    _, seen = _train_recording(sample_yaml, runs, "warmup", capacity_warmup=2)
    firsts = [caps[0] for caps in seen]
    assert firsts == sorted(firsts, reverse=True) and len(set(firsts)) == 6
    assert firsts[0] > 0.9 and firsts[-1] == pytest.approx(0.5)


@pytest.mark.slow  # trains
def test_capacity_full_share_trains_that_share_of_batches_dense(sample_yaml, runs):
    _, seen = _train_recording(sample_yaml, runs, "full-share", capacity_range=[0.2, 0.8], capacity_full_share=0.5)
    firsts = [caps[0] for caps in seen]
    assert len(firsts) == 6 and all(caps == [caps[0]] * len(caps) for caps in seen)
    assert all(c == 1.0 or 0.2 <= c <= 0.8 for c in firsts)
    assert 0 < firsts.count(1.0) < 6  # seed 0 draws 1.0 for some batches, a range capacity for the others
    _, dense = _train_recording(sample_yaml, runs, "full-share-1", capacity_range=[0.2, 0.8], capacity_full_share=1.0)
    assert [caps[0] for caps in dense] == [1.0] * 6


@pytest.mark.slow  # trains
def test_router_aux_loss_is_trained_and_logged(sample_yaml, runs):
    import torch

    from mod_vision.nn.routing import routed_blocks

    model, _ = _train_recording(sample_yaml, runs, "aux", router_aux=0.5)
    with open(model.trainer.save_dir / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 and all(math.isfinite(float(r["train/router_aux"])) for r in rows)  # a column per epoch

    # the loss the trainer logs trains the predictors: a few steps on one fixed batch, predictors only, lower it
    trainer = model.trainer
    net = trainer.model.train()
    batch = trainer.preprocess_batch(next(iter(trainer.train_loader)))
    predictors = [p for b in routed_blocks(net) for p in b.predictor.parameters()]
    opt = torch.optim.Adam(predictors, lr=1e-2)
    losses = []
    for _ in range(20):
        opt.zero_grad()
        loss, items = net(batch)
        losses.append(float(items["router_aux"]))
        loss.sum().backward()
        assert all(p.grad is not None for p in predictors)
        opt.step()
    assert losses[-1] < 0.9 * losses[0], losses  # 0.80 -> 0.67 on the session's tiny run


@pytest.mark.parametrize("bad, match", [([0.8, 0.2], "min 0.8 is above max 0.2"), ([0.5], r"\[min, max\]"), ([0, 1], r"\(0, 1\]")])
def test_bad_capacity_range_fails_before_training(sample_yaml, runs, bad, match):
    with pytest.raises(ValueError, match=match):
        MoDYOLO("modvit-det.yaml").train(data=str(sample_yaml), project=str(runs), name="bad", capacity_range=bad, **TRAIN_ARGS)


def test_dynamic_compute_at_predict_and_val(det_run, sample_yaml, tmp_path):
    model = MoDYOLO(det_run / "weights" / "best.pt")
    images = sorted((sample_yaml.parent / "images" / "val").glob("*.jpg"))
    results = model.predict(images, imgsz=96, batch=4, dynamic_capacity=[0.1, 0.9], verbose=False)
    shares = [r.token_share for r in results]
    assert all(0.1 - 1e-6 <= s <= 0.9 + 1e-6 for s in shares)
    # the same image alone gets the same share: padding in a batch does not change an image's compute
    alone = model.predict(images[0], imgsz=96, verbose=False, dynamic_capacity=[0.1, 0.9])[0].token_share
    assert alone == pytest.approx(shares[0])
    metrics = model.val(data=str(sample_yaml), imgsz=96, batch=4, project=str(tmp_path), dynamic_capacity=[0.1, 0.9])
    assert 0.1 - 1e-6 <= metrics.token_share <= 0.9 + 1e-6
    # dynamic_capacity=False returns to static top-k at the model's own capacity
    static = model.predict(images[0], imgsz=96, verbose=False, dynamic_capacity=False)[0].token_share
    assert static == pytest.approx(0.5, abs=0.02)


@pytest.mark.slow  # trains
def test_dynamic_training_picks_each_images_k_within_bounds(sample_yaml, runs, monkeypatch):
    """dynamic_training=[min, max]: in training each image's k is its predictor's count, clamped, as at val/predict;
    the saved model does not carry it."""
    import torch

    from mod_vision.nn.routing import TokenRouter, routed_blocks, tokens_for

    shares, select = [], TokenRouter.select

    def spy(self, scores, predicted, padding=None):
        index, valid = select(self, scores, predicted, padding)
        if self.training:
            kept = valid.sum(1) if valid is not None else torch.full((scores.shape[0],), index.shape[1])
            n = scores.shape[1]
            shares.extend((k, tokens_for(0.05, n), tokens_for(0.95, n)) for k in kept.tolist())
        return index, valid

    monkeypatch.setattr(TokenRouter, "select", spy)
    model, _ = _train_recording(sample_yaml, runs, "per-image", dynamic_training=[0.05, 0.95])
    assert len(shares) == 6 * 8 * 3  # 6 batches of 8 images, 3 routed blocks
    assert all(lo <= k <= hi for k, lo, hi in shares)
    assert len({k for k, _, _ in shares}) > 2  # chosen per image, not one k per batch
    assert all(b.train_dynamic is None for b in routed_blocks(MoDYOLO(model.trainer.best).model))


@pytest.mark.parametrize("kw, match", [
    ({"capacity_range": [0.25, 1.0]}, "chooses k per image; capacity_range, capacity_warmup, capacity_full_share and capacity_distill"),
    ({"capacity_full_share": 0.5}, "work per batch: give one"),
    ({"capacity_distill": 1.0}, "work per batch: give one"),
    ({"router_aux": 0}, "needs router_aux > 0"),
    ({}, r"dynamic_training must be \[min, max\]"),
])
def test_dynamic_training_refuses_what_it_cannot_go_with(sample_yaml, runs, kw, match):
    bounds = [0.5] if not kw else [0.1, 1.0]
    with pytest.raises(ValueError, match=match):
        MoDYOLO("modvit-det.yaml").train(data=str(sample_yaml), project=str(runs), name="bad-per-image",
                                         dynamic_training=bounds, **kw, **TRAIN_ARGS)
    assert not (runs / "bad-per-image").exists()  # refused before a run folder was made
