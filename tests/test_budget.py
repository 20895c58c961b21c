"""A call's compute budget (capacity=, dynamic_capacity=) runs for that call only; set_capacity() and set_dynamic() set
the model's default, which runs when a call gives none: in predict, val and the sweep, in every order. Each result and
each val reports the mode and capacities that ran."""

from __future__ import annotations

import math

import numpy as np
import pytest
from ultralytics.engine.results import Results

from mod_vision import MoDYOLO
from mod_vision.engine.results import RoutedResults, routing_mode

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


def default(model) -> tuple[str, list[float]]:
    """The model's own routing, which runs when a call gives none: (mode, capacities)."""
    return routing_mode(model.model), model.model.capacities()


def assert_static(r, c):
    assert r.capacity_mode == "static" and r.capacity == [c] * 3
    assert r.token_share == share(c)  # exact: static top-k processes ceil(c * N) of N tokens in every routed block


def assert_dynamic(r):
    assert r.capacity_mode == "dynamic"
    assert all(share(DYNAMIC[0]) <= c <= share(DYNAMIC[1]) for c in r.capacity)  # measured on this image, per block
    assert r.token_share == pytest.approx(sum(r.capacity) / 3)


def test_capacity_argument_runs_for_its_call_and_set_capacity_sets_the_default(model):
    assert_static(predict(model, capacity=0.25), 0.25)
    assert_static(predict(model), 0.5)  # the model's own capacity again
    model.set_capacity(1.0)
    assert_static(predict(model), 1.0)
    assert_static(predict(model, capacity=0.3), 0.3)  # ceil(19.2) = 20 of 64 tokens
    assert predict(model).token_share == 1.0 and default(model) == ("static", [1.0] * 3)


def test_a_static_call_over_a_dynamic_default(model):
    model.set_dynamic(DYNAMIC)
    assert_dynamic(predict(model))
    assert_static(predict(model, capacity=1.0), 1.0)
    assert_dynamic(predict(model))
    assert default(model) == ("dynamic", [0.5] * 3)


def test_set_capacity_ends_dynamic_mode_and_false_runs_static(model):
    model.set_dynamic(DYNAMIC)
    model.set_capacity(0.3)
    assert_static(predict(model), 0.3)
    assert_dynamic(predict(model, dynamic_capacity=DYNAMIC))
    assert_static(predict(model), 0.3)
    model.set_dynamic(DYNAMIC)
    assert_static(predict(model, dynamic_capacity=False), 0.3)  # static top-k at the capacity set before
    assert default(model) == ("dynamic", [0.3] * 3)


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
    assert_static(predict(model), 0.5)  # val's capacity= was that call's; the checkpoint's own runs again
    model.set_capacity(1.0)
    m = val(model, sample_yaml, tmp_path)
    assert (m.capacity_mode, m.capacity, m.token_share) == ("static", [1.0] * 3, 1.0)
    m = val(model, sample_yaml, tmp_path, dynamic_capacity=DYNAMIC)
    lo, hi = share(0.1, VAL_N) - 1e-6, share(0.5, VAL_N) + 1e-6  # float32 shares
    assert m.capacity_mode == "dynamic" and all(lo <= c <= hi for c in m.capacity)
    assert m.token_share == pytest.approx(sum(m.capacity) / 3)
    assert_static(predict(model), 1.0)
    predict(model, capacity=0.3)
    m = val(model, sample_yaml, tmp_path)  # predict's capacity= was that call's
    assert (m.capacity_mode, m.capacity, m.token_share) == ("static", [1.0] * 3, 1.0)
    model.set_dynamic(DYNAMIC)
    assert val(model, sample_yaml, tmp_path).capacity_mode == "dynamic"
    m = val(model, sample_yaml, tmp_path, capacity=0.3)
    assert (m.capacity_mode, m.capacity) == ("static", [0.3] * 3)
    assert m.token_share == pytest.approx(share(0.3, VAL_N), abs=1e-7)  # 30 of 100 tokens, up to float32
    assert default(model) == ("dynamic", [1.0] * 3)


def test_sweep_measures_static_budgets_and_restores_the_routing_set_before(trained, sample_yaml, tmp_path):
    model = trained
    model.set_dynamic(DYNAMIC)
    rows, _ = model.val_sweep((1.0, 0.25), data=str(sample_yaml), imgsz=128, batch=4, project=str(tmp_path), plots=False)
    assert [r["token_share"] for r in rows] == [1.0, share(0.25, VAL_N)]
    assert_dynamic(predict(model))  # the sweep did not change the model's routing
    model.set_capacity(0.3)
    model.val_sweep((0.5,), data=str(sample_yaml), imgsz=128, batch=4, project=str(tmp_path), plots=False)
    assert_static(predict(model), 0.3)
    assert default(model) == ("static", [0.3] * 3)
