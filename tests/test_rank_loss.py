"""The scorers' ranking loss (router_rank): its value, what it trains, degenerate ground truth, its arguments."""

from __future__ import annotations

import csv
import math

import pytest
import torch

from mod_vision import MoDYOLO
from mod_vision.cfg import EXTRA_ARGS, check_extra_args
from mod_vision.nn import MoDDetectionModel, load_model_yaml, record_routing, routed_blocks
from mod_vision.nn.routing import (
    BlockRouting,
    RoutingRecord,
    dilate_tokens,
    object_tokens,
    router_rank_loss,
    router_spec,
    set_routing,
)
from mod_vision.nn.vit import MoDViTStage

from .conftest import TRAIN_ARGS


def one_block_record(scores: torch.Tensor, grid: tuple[int, int]) -> RoutingRecord:
    rec = RoutingRecord(scores=True)
    rec.add(BlockRouting(torch.zeros(scores.shape[0], 1, dtype=torch.long), None, scores.shape[1], grid, scores))
    return rec


def softplus(x: float) -> float:
    return math.log1p(math.exp(x))


def test_pairwise_loss_equals_the_hand_computed_value():
    # 2x2 grid, one image with a box on the top-left cell only, a second image with no object (no pair: left out)
    scores = torch.tensor([[2.0, 0.0, 1.0, -1.0], [5.0, -3.0, 0.0, 0.0]], requires_grad=True)
    boxes, index = torch.tensor([[0.25, 0.25, 0.4, 0.4]]), torch.tensor([0])
    assert object_tokens((2, 2), boxes, index, 2).tolist() == [[1, 0, 0, 0], [0, 0, 0, 0]]
    loss = router_rank_loss(one_block_record(scores, (2, 2)), boxes, index, kind="pairwise")
    expected = (softplus(0 - 2) + softplus(1 - 2) + softplus(-1 - 2)) / 3
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    loss.backward()
    # d/ds_o = -mean sigmoid(s_b - s_o); the empty image gets no gradient
    sig = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    assert scores.grad[0, 0].item() == pytest.approx(-(sig(-2) + sig(-1) + sig(-3)) / 3, rel=1e-5)
    assert scores.grad[1].abs().sum() == 0


def test_pairwise_loss_ignores_the_scores_level_and_bce_does_not():
    scores = torch.tensor([[2.0, 0.0, 1.0, -1.0]])
    boxes, index = torch.tensor([[0.25, 0.25, 0.4, 0.4]]), torch.tensor([0])
    for kind, same in (("pairwise", True), ("bce", False)):
        a = router_rank_loss(one_block_record(scores.requires_grad_(), (2, 2)), boxes, index, kind=kind)
        b = router_rank_loss(one_block_record((scores + 3).requires_grad_(), (2, 2)), boxes, index, kind=kind)
        assert torch.isclose(a, b).item() is same


def test_large_grids_score_a_random_subset_of_pairs_close_to_all_of_them():
    torch.manual_seed(0)
    grid = (40, 40)  # imgsz 640 at stride 16
    scores = torch.randn(2, 1600, requires_grad=True)
    boxes, index = torch.tensor([[0.3, 0.4, 0.3, 0.2], [0.7, 0.6, 0.2, 0.4]]), torch.tensor([0, 1])
    exact = router_rank_loss(one_block_record(scores, grid), boxes, index, "pairwise", max_tokens=1600)
    sampled = router_rank_loss(one_block_record(scores, grid), boxes, index, "pairwise", max_tokens=1024)
    assert torch.isfinite(sampled) and abs(sampled.item() - exact.item()) < 0.05 * exact.item()
    sampled.backward()
    assert 0 < (scores.grad != 0).sum(1).max() <= 1024  # only the sampled tokens get a gradient


def test_bce_loss_equals_the_hand_computed_value():
    scores = torch.tensor([[2.0, 0.0, 1.0, -1.0]], requires_grad=True)
    boxes, index = torch.tensor([[0.25, 0.25, 0.4, 0.4]]), torch.tensor([0])
    loss = router_rank_loss(one_block_record(scores, (2, 2)), boxes, index, kind="bce")
    pos_weight = 3.0  # 3 background tokens per object token in the batch
    expected = (pos_weight * -math.log(1 / (1 + math.exp(-2.0))) + softplus(0.0) + softplus(1.0) + softplus(-1.0)) / 4
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_dilation_grows_the_object_tokens_by_whole_cells():
    t = torch.zeros(1, 25)
    t[0, 12] = 1  # the centre of a 5x5 grid
    assert dilate_tokens(t, (5, 5), 0).sum() == 1
    grown = dilate_tokens(t, (5, 5), 1).view(5, 5)
    assert grown.sum() == 9 and grown[1:4, 1:4].all()
    assert dilate_tokens(t, (5, 5), 2).sum() == 25


def test_the_loss_needs_the_token_grid_and_a_known_kind():
    with pytest.raises(ValueError, match="no token grid"):
        router_rank_loss(one_block_record(torch.zeros(1, 6, requires_grad=True), None), torch.zeros(0, 4),
                         torch.zeros(0))
    with pytest.raises(ValueError, match="pairwise"):
        router_rank_loss(one_block_record(torch.zeros(1, 4, requires_grad=True), (2, 2)), torch.zeros(0, 4),
                         torch.zeros(0), kind="hinge")


def test_scores_carry_grad_only_in_training():
    stage = MoDViTStage(16, 16, depth=1, routed="0:", router=router_spec(capacity=0.5))
    with record_routing(scores=True) as rec:
        stage.train()(torch.randn(2, 16, 4, 4))
    assert rec.blocks[0].scores.requires_grad
    with record_routing(scores=True) as rec:
        stage.eval()(torch.randn(2, 16, 4, 4))
    assert not rec.blocks[0].scores.requires_grad
    assert router_rank_loss(rec, torch.tensor([[0.5, 0.5, 0.5, 0.5]]), torch.tensor([0])) is None


@pytest.mark.parametrize("kind", ["bce", "pairwise"])
def test_the_loss_trains_the_scorer_to_rank_objects_first(kind):
    # tokens: per-image random background, objects = background + a fixed direction on a random 2x2 patch
    torch.manual_seed(0)
    # k = 8 of 64 = the 4 object cells x 2 images
    stage = MoDViTStage(16, 16, depth=1, routed="0:", router=router_spec(capacity=0.125))
    router = stage.blocks[0].router
    direction = torch.randn(16, 1, 1)

    def images(n):
        x = torch.randn(n, 16, 1, 1).expand(-1, -1, 8, 8) + 0.3 * torch.randn(n, 16, 8, 8)
        x = x.clone()
        boxes = []
        for i in range(n):
            r, c = torch.randint(0, 7, (2,)).tolist()
            x[i, :, r:r + 2, c:c + 2] += direction
            boxes.append([(c + 1) / 8, (r + 1) / 8, 2 / 8 - 1e-3, 2 / 8 - 1e-3])
        return x, torch.tensor(boxes), torch.arange(n)

    def recall():
        x, boxes, index = images(32)
        with record_routing() as rec:
            stage.eval()(x)
        target = object_tokens((8, 8), boxes, index, 32).bool()
        return (rec.blocks[0].mask() & target).sum().item() / target.sum().item()

    with torch.no_grad():  # start from a scorer that ranks the objects last
        w = router.scorer.net.weight
        w.copy_(-direction.view(1, -1) / direction.norm() * w.norm())
    before = recall()
    opt = torch.optim.Adam(router.scorer.parameters(), 1e-2)
    for _ in range(60):
        x, boxes, index = images(16)
        with record_routing(scores=True) as rec:
            stage.train()(x)
        loss = router_rank_loss(rec, boxes, index, kind=kind)
        opt.zero_grad()
        loss.backward()
        assert router.scorer.net.weight.grad.abs().sum() > 0
        opt.step()
    after = recall()
    assert before < 0.2 and after > 0.9, (before, after)


def hybrid_with(**args):
    from ultralytics.cfg import get_cfg

    model = MoDDetectionModel(load_model_yaml("hybrid11-det-n.yaml"), nc=4, verbose=False).train()
    model.args = get_cfg(overrides={})
    for k, v in {**EXTRA_ARGS, **args}.items():
        setattr(model.args, k, v)
    return model


def batch_with(boxes, index, n=2, size=64):
    return {"img": torch.rand(n, 3, size, size), "batch_idx": torch.as_tensor(index, dtype=torch.float),
            "cls": torch.zeros(len(index), 1), "bboxes": torch.as_tensor(boxes, dtype=torch.float).reshape(-1, 4)}


def test_model_loss_adds_the_rank_column_and_trains_every_scorer():
    model = hybrid_with(router_rank=1.0, router_aux=0.0)
    batch = batch_with([[0.5, 0.5, 0.3, 0.3], [0.2, 0.3, 0.2, 0.2]], [0, 1])
    loss, items = model.loss(batch)
    assert "router_rank" in items and "router_aux" not in items and len(loss) == 4
    torch.testing.assert_close(loss[-1], items["router_rank"] * 2)  # weight x loss x batch size, like the task's
    loss[-1].backward()  # the rank term alone reaches every routed block's scorer, and the features under it
    for router in routed_blocks(model):
        assert router.scorer.net.weight.grad.abs().sum() > 0
    assert model.model[0].conv.weight.grad.abs().sum() > 0  # not detached: it also shapes the tokens it scores

    detached = hybrid_with(router_rank=1.0, router_aux=0.0, router_rank_detach=True)
    detached.load_state_dict(model.state_dict())
    loss, items = detached.loss(batch)
    loss[-1].backward()  # detached: the scorers learn from it, the features under them do not
    assert all(r.scorer.net.weight.grad.abs().sum() > 0 for r in routed_blocks(detached))
    g = detached.model[0].conv.weight.grad
    assert g is None or g.abs().sum() == 0

    # with distillation too: its teacher's forward (at capacity 1.0, before the student's) must not count as the
    # student's scorer calls, or the detach would be skipped
    both = hybrid_with(router_rank=1.0, router_aux=0.0, router_rank_detach=True, capacity_distill=1.0)
    both.load_state_dict(model.state_dict())
    set_routing(both, capacity=0.5)
    loss, items = both.loss(batch)
    assert list(items)[-2:] == ["router_rank", "distill"] and items["distill"] > 0
    loss[-2].backward()  # the rank term
    g = both.model[0].conv.weight.grad
    assert g is None or g.abs().sum() == 0

    assert EXTRA_ARGS["router_rank"] == 0 and EXTRA_ARGS["router_rank_kind"] == "bce"  # opt-in (measured: AP cost)
    off = hybrid_with(router_rank=0.0, router_aux=0.0)
    loss, items = off.loss(batch)
    assert "router_rank" not in items and len(loss) == 3


@pytest.mark.parametrize("kind", ["pairwise", "bce"])
@pytest.mark.parametrize(
    "boxes, index",
    [
        ([[1.2, 1.3, 0.5, 0.5], [-0.5, 0.5, 0.2, 0.2]], [0, 1]),  # outside the image
        ([[0.5, 0.5, 0.0, 0.0]], [0]),  # zero area
        (torch.zeros(0, 4), []),  # no object in the batch
    ],
)
def test_model_loss_is_finite_for_degenerate_ground_truth(boxes, index, kind):
    model = hybrid_with(router_rank=1.0, router_rank_kind=kind, router_rank_dilate=1)
    loss, items = model.loss(batch_with(boxes, index))
    assert torch.isfinite(loss).all() and math.isfinite(float(items["router_rank"]))
    loss.sum().backward()
    for router in routed_blocks(model):
        assert torch.isfinite(router.scorer.net.weight.grad).all()


@pytest.mark.parametrize(
    "key, bad",
    [("router_rank", -1.0), ("router_rank", "high"), ("router_rank", True), ("router_rank", float("nan")),
     ("router_rank", float("inf")), ("router_rank_kind", "hinge"), ("router_rank_detach", "yes"), ("router_rank_dilate", 1.5),
     ("router_rank_dilate", -1)],
)  # fmt: skip
def test_bad_rank_arguments_name_the_key(key, bad):
    with pytest.raises(ValueError, match=key):
        check_extra_args({key: bad})


def test_bad_rank_weight_fails_before_training(sample_yaml, runs):
    with pytest.raises(ValueError, match="router_rank"):
        MoDYOLO("hybrid11-det-n.yaml").train(data=str(sample_yaml), project=str(runs), name="bad_rank", router_rank=-2,
                                             **TRAIN_ARGS)


@pytest.mark.slow  # trains
def test_rank_loss_is_trained_and_logged_by_the_trainer(sample_yaml, runs):
    model = MoDYOLO("hybrid11-det-n.yaml")
    model.train(data=str(sample_yaml), project=str(runs), name="rank", router_rank=1.0, **{**TRAIN_ARGS, "epochs": 1})
    assert model.trainer.args.router_rank_kind == "bce"
    with open(model.trainer.save_dir / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert rows and all(float(r["train/router_rank"]) > 0 for r in rows)
