"""The compute budget that runs is the one set last (capacity=, dynamic_capacity= or set_capacity()), in predict, val
and the sweep, in every order; each result and each val reports the mode and capacities that ran."""

from __future__ import annotations

import math

import numpy as np
import pytest
from ultralytics.engine.results import Results

from mod_vision import MoDYOLO
from mod_vision.engine.results import RoutedResults, routing_mode
from mod_vision.nn.routing import routed_blocks

IMAGE = np.random.RandomState(0).randint(0, 255, (128, 128, 3), dtype=np.uint8)  # 8 x 8 = 64 tokens at stride 16
N = 64
VAL_N = 100  # Ultralytics' rect val batches of the sample images are 160 x 160 at imgsz 128: a 10 x 10 token grid
DYNAMIC = [0.1, 0.5]


def share(c: float, n: int = N) -> float:
    return math.ceil(c * n) / n


@pytest.fixture
def model():
    return MoDYOLO("modvit-det.yaml")  # 3 routed blocks at capacity 0.5


def predict(model, **kw) -> RoutedResults:
    return model.predict(IMAGE, imgsz=128, verbose=False, **kw)[0]


def ran(model) -> tuple[str, list[float]]:
    """(mode, capacities) in the blocks that ran: the predictor's copy of the model, not only the user's."""
    blocks = routed_blocks(model.predictor.model)
    return routing_mode(model.predictor.model), [b.capacity for b in blocks]


def assert_static(r, model, c):
    assert r.capacity_mode == "static" and r.capacity == [c] * 3
    assert r.token_share == share(c)  # exact: static top-k processes ceil(c * N) of N tokens in every routed block
    assert ran(model) == ("static", [c] * 3)
    assert routing_mode(model.model) == "static" and model.model.capacities() == [c] * 3


def assert_dynamic(r, model):
    assert r.capacity_mode == "dynamic" and ran(model)[0] == "dynamic" and routing_mode(model.model) == "dynamic"
    assert all(share(DYNAMIC[0]) <= c <= share(DYNAMIC[1]) for c in r.capacity)  # measured on this image, per block
    assert r.token_share == pytest.approx(sum(r.capacity) / 3)


def test_capacity_argument_holds_until_set_capacity_replaces_it(model):
    assert_static(predict(model, capacity=0.25), model, 0.25)
    assert_static(predict(model), model, 0.25)  # set last by capacity=, not re-applied from an earlier call
    model.set_capacity(1.0)
    r = predict(model)
    assert_static(r, model, 1.0) and r.token_share == 1.0
    assert_static(predict(model, capacity=0.3), model, 0.3)  # ceil(19.2) = 20 of 64 tokens
    assert predict(model).token_share == 20 / 64


def test_static_capacity_ends_dynamic_mode(model):
    assert_dynamic(predict(model, dynamic_capacity=DYNAMIC), model)
    assert_dynamic(predict(model), model)  # dynamic stays until something else is set
    r = predict(model, capacity=1.0)
    assert_static(r, model, 1.0) and r.token_share == 1.0


def test_set_capacity_ends_dynamic_mode_and_false_returns_to_static(model):
    predict(model, dynamic_capacity=DYNAMIC)
    model.set_capacity(0.3)
    assert_static(predict(model), model, 0.3)
    assert_dynamic(predict(model, dynamic_capacity=DYNAMIC), model)
    assert_static(predict(model, dynamic_capacity=False), model, 0.3)  # back to the capacity set before


def test_capacity_and_dynamic_capacity_together_are_refused(model):
    with pytest.raises(ValueError, match=r"capacity=0.25 \(static top-k\) and dynamic_capacity=\[0.1, 0.5\]"):
        predict(model, capacity=0.25, dynamic_capacity=DYNAMIC)


def test_stream_predict_runs_the_budget_set_by_its_call(model):
    predict(model, capacity=0.25)
    model.set_capacity(1.0)
    assert [r.token_share for r in model.predict([IMAGE, IMAGE], imgsz=128, stream=True, verbose=False)] == [1.0, 1.0]


def test_results_keep_their_routing_through_new_cpu_numpy_to_and_indexing(model):
    r = predict(model, capacity=0.25)
    assert isinstance(r, RoutedResults) and isinstance(r, Results) and r.routing is not None
    for out in (r.new(), r.cpu(), r.numpy(), r.to("cpu"), r[:1]):
        assert type(out) is RoutedResults
        assert (out.token_share, out.capacity, out.capacity_mode) == (0.25, [0.25] * 3, "static")
        assert out.routing is r.routing
    assert r.cpu().routing.masks.shape == (3, 8, 8)
    assert len(r.cpu().boxes) == len(r.boxes)


def test_dense_results_report_no_routing():
    r = MoDYOLO("modvit-det-dense.yaml").predict(IMAGE, imgsz=128, verbose=False)[0]
    assert (r.token_share, r.capacity, r.capacity_mode, r.routing) == (None, [], None, None)
    assert r.cpu().capacity == []


@pytest.fixture
def trained(det_run):
    return MoDYOLO(det_run / "weights" / "best.pt")  # trained on the sample data's classes, 3 routed blocks at 0.5


def val(model, sample_yaml, tmp_path, **kw):
    return model.val(data=str(sample_yaml), imgsz=128, batch=4, project=str(tmp_path), plots=False, verbose=False, **kw)


def test_val_in_every_order_with_predict_and_set_capacity(trained, sample_yaml, tmp_path):
    model = trained
    m = val(model, sample_yaml, tmp_path, capacity=0.25)
    assert (m.capacity_mode, m.capacity, m.token_share) == ("static", [0.25] * 3, share(0.25, VAL_N))
    assert_static(predict(model), model, 0.25)  # val's capacity= was set last
    model.set_capacity(1.0)
    m = val(model, sample_yaml, tmp_path)
    assert (m.capacity_mode, m.capacity, m.token_share) == ("static", [1.0] * 3, 1.0)
    m = val(model, sample_yaml, tmp_path, dynamic_capacity=DYNAMIC)
    lo, hi = share(0.1, VAL_N) - 1e-6, share(0.5, VAL_N) + 1e-6  # float32 shares
    assert m.capacity_mode == "dynamic" and all(lo <= c <= hi for c in m.capacity)
    assert m.token_share == pytest.approx(sum(m.capacity) / 3)
    assert_dynamic(predict(model), model)  # val's dynamic_capacity= was set last
    predict(model, capacity=0.3)
    m = val(model, sample_yaml, tmp_path)  # predict's capacity= was set last
    assert (m.capacity_mode, m.capacity) == ("static", [0.3] * 3)
    assert m.token_share == pytest.approx(share(0.3, VAL_N), abs=1e-7)  # 30 of 100 tokens, up to float32


def test_sweep_measures_static_budgets_and_restores_the_routing_set_before(trained, sample_yaml, tmp_path):
    model = trained
    predict(model, dynamic_capacity=DYNAMIC)
    rows, _ = model.val_sweep((1.0, 0.25), data=str(sample_yaml), imgsz=128, batch=4, project=str(tmp_path), plots=False)
    assert [r["token_share"] for r in rows] == [1.0, share(0.25, VAL_N)]
    assert_dynamic(predict(model), model)  # the sweep did not change the model's routing
    model.set_capacity(0.3)
    model.val_sweep((0.5,), data=str(sample_yaml), imgsz=128, batch=4, project=str(tmp_path), plots=False)
    assert_static(predict(model), model, 0.3)
