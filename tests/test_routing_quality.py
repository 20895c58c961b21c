"""Routing quality as numbers (object lift, recall, padding share), the never-padding policy and the random control."""

import pytest
import torch

from mod_vision.engine.routing_metrics import RoutingQuality, object_cover, padding_cells
from mod_vision.nn import MoDDetectionModel, load_model_yaml, record_routing, routed_blocks
from mod_vision.nn.routing import BlockRouting, constant_cells, routing_input

PAD = 114 / 255


def test_object_cover_is_the_share_of_each_cell_inside_a_box():
    # a box over x 0.125-0.5, y 0-0.5 of a 4x4 grid: cells x 0.5-2, y 0-2
    cover = object_cover((4, 4), torch.tensor([[0.3125, 0.25, 0.375, 0.5]]), torch.tensor([0]), 1).view(4, 4)
    expected = torch.zeros(4, 4)
    expected[0:2, 0] = 0.5
    expected[0:2, 1] = 1.0
    torch.testing.assert_close(cover, expected)


@pytest.mark.parametrize(
    "boxes", [torch.tensor([[1.5, 1.5, 0.2, 0.2]]), torch.tensor([[0.5, 0.5, 0.0, 0.0]]), torch.zeros(0, 4)]
)
def test_degenerate_boxes_cover_nothing_and_give_no_nan(boxes):
    cover = object_cover((3, 3), boxes, torch.zeros(len(boxes)), 2)
    assert torch.isfinite(cover).all() and cover.sum() == 0


def test_padding_cells_are_the_mostly_letterboxed_ones():
    img = torch.rand(1, 3, 64, 64)
    img[..., 40:, :] = PAD  # bottom 24 rows padding: on a 4x4 grid (16 px cells) row 3 is all padding, row 2 half
    pad = padding_cells(img, (4, 4)).view(4, 4)
    assert pad[3].all() and not pad[:3].any()


def entry(mask):
    b, n = mask.shape
    k = int(mask.sum(1).max())
    index = torch.stack([row.nonzero().flatten() for row in mask])
    assert index.shape == (b, k)
    side = int(n**0.5)
    return BlockRouting(index, None, n, (side, side))


def test_lift_recall_and_padding_share_from_known_masks():
    img = torch.rand(1, 3, 64, 64)
    img[..., 48:, :] = PAD  # grid row 3 is padding
    boxes = torch.tensor([[0.125, 0.125, 0.25, 0.25]])  # exactly cell (0, 0)
    batch = {"img": img, "bboxes": boxes, "batch_idx": torch.tensor([0.0])}
    mask = torch.zeros(1, 16, dtype=torch.bool)
    mask[0, [0, 1, 12, 13]] = True  # the object cell, one background cell, two padding cells
    q = RoutingQuality()
    q.update([entry(mask)], batch)
    (block,) = q.summary()["all"]
    # cover of processed 1/4 over cover of all 1/16: lift 4; the one object token processed; 2 of 4 on padding
    assert block == {"object_lift": pytest.approx(4.0), "object_recall": 1.0, "padding_share": 0.5}


def test_lift_is_undefined_not_nan_without_objects():
    q = RoutingQuality()
    mask = torch.zeros(2, 16, dtype=torch.bool)
    mask[:, :4] = True
    q.update([entry(mask)], {"img": torch.rand(2, 3, 64, 64), "bboxes": torch.zeros(0, 4), "batch_idx": torch.zeros(0)})
    (block,) = q.summary()["all"]
    assert block["object_lift"] is None and block["object_recall"] is None and block["padding_share"] == 0.0


def test_constant_cells_follow_the_grid_of_each_stride():
    img = torch.rand(2, 3, 64, 96)
    img[0, :, :, 64:] = PAD  # image 0: right third is letterbox
    c16 = constant_cells(img, (4, 6)).view(2, 4, 6)
    assert c16[0, :, 4:].all() and not c16[0, :, :4].any() and not c16[1].any()
    c32 = constant_cells(img, (2, 3)).view(2, 2, 3)
    assert c32[0, :, 2].all() and not c32[0, :, :2].any()
    # a grid the image does not tile (a patch embedding pads 40 px to 48): the partial cells are judged by their pixels
    partial = torch.rand(1, 3, 40, 40)
    partial[..., 32:, :] = PAD
    assert constant_cells(partial, (3, 3)).view(3, 3)[2].all() and not constant_cells(partial, (3, 3)).view(3, 3)[:2].any()


def test_the_fill_share_tests_pixels_only_where_extremes_leave_it_open_and_equals_the_pixel_count():
    """pixel_extremes' letterbox share per 8x8 cell equals counting fill pixels, on cells all fill, partly fill (a band
    edge off the cell grid, a fill-coloured patch, one channel only at the fill value) and without fill; and the
    traced (exported) computation gives the same."""
    from mod_vision.nn.routing import pixel_extremes
    from mod_vision.nn.routing.padding import pixel_fill

    img = torch.rand(2, 3, 100, 84, generator=torch.Generator().manual_seed(0))
    img[:, :, :13] = PAD  # a band ending mid-cell
    img[1, :, 40:47, 20:31] = PAD
    img[0, 1, 50:60, 50:60] = PAD  # one channel at the fill value: not fill
    padded = torch.nn.functional.pad(img, (0, 4, 0, 4))
    counted = pixel_fill(padded).float().view(2, 1, 13, 8, 11, 8).sum((3, 5)) / 64
    share = pixel_extremes(img)[2]
    assert torch.equal(share, counted)
    # rows 0-7 fill, 8-12 of the next cell row; the last cell column is half the zeros that pad 84 to 88
    assert share[0, 0, 0, :10].eq(1).all() and share[0, 0, 1, :10].eq(5 / 8).all() and share[0, 0, 0, 10] == 0.5
    assert share[0, 0, 2:].eq(0).all()
    assert share[1, 0, 5, 2] > 0 and share[1, 0, 5, 2] < 1
    traced = torch.jit.trace(lambda x: pixel_extremes(x)[2], img)
    assert torch.equal(traced(img), counted)


@pytest.fixture(scope="module")
def hybrid():
    return MoDDetectionModel(load_model_yaml("hybrid12-det-n.yaml"), nc=4, verbose=False).eval()


def test_routers_never_pick_padding_while_real_tokens_remain(hybrid):
    img = torch.rand(2, 3, 256, 256)
    img[0, :, 128:] = PAD  # image 0: bottom half letterbox
    with record_routing() as rec:
        hybrid(img)
    assert rec.blocks
    for e in rec.blocks:
        pad = constant_cells(img, e.grid)
        picked = torch.zeros_like(pad).scatter(1, e.index, True)
        assert not (picked[0] & pad[0]).any()  # k is a quarter of the tokens; half are real
    # and image 1 is routed as if image 0 were not there (batch independence)
    with record_routing() as alone:
        hybrid(img[1:])
    assert all(torch.equal(a.index, b.index[1:]) for a, b in zip(alone.blocks, rec.blocks))


def test_padding_policy_also_holds_when_k_exceeds_the_real_tokens(hybrid):
    img = torch.rand(1, 3, 256, 256)
    img[..., 32:, :] = PAD  # only the top eighth is real: k = ceil(0.25 N) is larger
    with record_routing() as rec, torch.no_grad():
        hybrid(img)
    for e in rec.blocks:
        pad = constant_cells(img, e.grid)[0]
        picked = torch.zeros_like(pad).scatter(0, e.index[0], True)
        assert picked[~pad].all()  # every real token is processed before any padding


def test_random_policy_at_val_is_the_control_and_does_not_stay(det_run, sample_yaml, tmp_path):
    from mod_vision import MoDYOLO

    model = MoDYOLO(det_run / "weights" / "best.pt")
    learned = model.val(data=str(sample_yaml), imgsz=96, batch=8, plots=False, project=str(tmp_path), name="a")
    rand = model.val(data=str(sample_yaml), imgsz=96, batch=8, plots=False, routing="random", project=str(tmp_path),
                     name="b")  # fmt: skip
    assert rand.token_share == pytest.approx(learned.token_share)  # same k: only the choice of tokens differs
    assert {b.policy for b in routed_blocks(model.model)} == {"topk"}
    for m in (learned, rand):
        blocks = m.routing["all"]
        assert len(blocks) == len(routed_blocks(model.model))
        assert all(b["padding_share"] is not None and 0 <= b["padding_share"] <= 1 for b in blocks)
        assert all(b["object_lift"] is None or b["object_lift"] >= 0 for b in blocks)
    # the sample data's COCO json records each image's background, so each kind has its own routing metrics
    assert set(learned.routing) == set(rand.routing) == {"all", "flat", "textured"}
    # random ranking picks other tokens than the learned one (same k): the share of object tokens it routes differs
    picked = lambda m: [(b["object_recall"], b["object_lift"]) for b in m.routing["all"]]  # noqa: E731
    assert picked(rand) != picked(learned)
    # and it did not stay: the next validation routes exactly as the first one did
    again = model.val(data=str(sample_yaml), imgsz=96, batch=8, plots=False, project=str(tmp_path), name="c")
    assert picked(again) == picked(learned) and again.token_share == learned.token_share


def test_routing_quality_tool_compares_learned_and_random_at_each_capacity(det_run, sample_yaml, tmp_path):
    from tests.test_dynamic_tools import _tool

    out = tmp_path / "q.md"
    text = _tool("routing_quality").main(
        [str(det_run / "weights" / "best.pt"), str(sample_yaml), "--imgsz", "96", "--capacities", "1.0", "0.25",
         "--dynamic", "0.02", "0.5", "--out", str(out)]  # fmt: skip
    )
    assert "box AP: COCO box AP (faster-coco-eval) x 100" in text.splitlines()  # the sample data names a COCO json
    rows = [line for line in text.splitlines() if line.startswith(("| 1 |", "| 0.25 |"))]
    assert [r.split("|")[2].strip() for r in rows] == ["learned", "random", "learned", "random"]
    shares = [float(r.split("|")[4]) for r in rows]
    assert shares[0] == shares[1] == 1.0 and shares[2] == shares[3] < 0.5  # the control keeps k
    (removed,) = [line for line in text.splitlines() if "none (routed compute removed)" in line]
    assert float(removed.split("|")[4]) == 0.0  # no router processed a token
    (dynamic,) = [line for line in text.splitlines() if line.startswith("| per image [0.02, 0.5] |")]
    assert 0.02 <= float(dynamic.split("|")[4]) <= 0.5  # each image's own k, within the bounds asked
    assert out.read_text().strip() == text.strip()


def test_routing_quality_tool_sets_the_per_image_budgets_threshold(det_run, sample_yaml):
    """--threshold: a token counts as wanted above this predictor logit; far below every logit each image takes its
    budget's maximum (letterbox padding is never wanted), far above them its minimum."""
    from tests.test_dynamic_tools import _tool

    shares = {}
    for threshold in ("-100", "100"):
        text = _tool("routing_quality").main(
            [str(det_run / "weights" / "best.pt"), str(sample_yaml), "--imgsz", "96", "--capacities", "1.0",
             "--rankings", "topk", "--dynamic", "0.02", "0.5", "--threshold", threshold]  # fmt: skip
        )
        (row,) = [line for line in text.splitlines() if line.startswith("| per image [0.02, 0.5] |")]
        shares[threshold] = float(row.split("|")[4])
    assert 0.02 <= shares["100"] < 0.05
    assert 0.2 < shares["-100"] <= 0.5


def test_routing_quality_tool_refuses_a_dense_model(tmp_path):
    from ultralytics import YOLO

    from tests.test_dynamic_tools import _tool

    pt = tmp_path / "dense.pt"
    YOLO("yolo11n.yaml").save(pt)
    with pytest.raises(SystemExit):
        _tool("routing_quality").main([str(pt), "data.yaml"])


def test_the_loss_targets_are_the_cells_the_metrics_see_covered():
    """One rasteriser: a token is an object token for the routing loss exactly where the metrics' object cover is
    above 0, and a box of no size marks nothing in either."""
    import torch

    from mod_vision.engine.routing_metrics import object_cover
    from mod_vision.nn.routing import object_tokens

    g = torch.Generator().manual_seed(0)
    boxes = torch.rand(12, 4, generator=g) * torch.tensor([1.0, 1.0, 0.5, 0.5])
    index = torch.randint(0, 3, (12,), generator=g)
    for grid in ((5, 7), (4, 4)):
        assert torch.equal(object_tokens(grid, boxes, index, 3), (object_cover(grid, boxes, index, 3) > 0).float())
    point, first = torch.tensor([[0.5, 0.5, 0.0, 0.0]]), torch.zeros(1)
    assert object_tokens((3, 3), point, first, 1).sum() == 0 == object_cover((3, 3), point, first, 1).sum()
