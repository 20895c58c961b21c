"""`set_routing`, the one setter of a model's routing: every order of calls ends in the state its docstring gives, the
setters at every level (nn.routing, the model, MoDYOLO, the cfg keys) are calls of it and agree, and a bad value is
refused with the message it always had, changing nothing."""

from __future__ import annotations

import itertools
from types import SimpleNamespace

import pytest
import torch

from mod_vision import MoDYOLO
from mod_vision.cfg import apply_capacity, apply_policy, apply_routing
from mod_vision.engine.results import routing_mode as results_routing_mode
from mod_vision.nn.routing import (
    dynamic_bounds,
    routed_blocks,
    routing_mode,
    set_capacity,
    set_dynamic,
    set_policy,
    set_routing,
    set_static,
)
from mod_vision.nn.tasks import MoDDetectionModel

YAML = "modvit-det.yaml"  # 3 routed blocks at capacity 0.5, static top-k
CAPACITY, DYNAMIC, POLICY = 0.25, (0.1, 0.5), "random"
CALLS = {"capacity": dict(capacity=CAPACITY), "dynamic": dict(dynamic=DYNAMIC), "policy": dict(policy=POLICY)}


@pytest.fixture(scope="module")
def built():
    torch.manual_seed(0)
    return MoDDetectionModel(YAML, verbose=False).eval()


@pytest.fixture
def model(built):
    set_routing(built, capacity=0.5, dynamic=False, threshold=0.0, policy="topk")  # as built, for each test
    return built


def state(model) -> list[tuple]:
    """What each router routes by: capacity, dynamic bounds, threshold, policy, whether it has a random source."""
    return [(b.capacity, b.dynamic, b.threshold, b.policy, b.random_source is not None) for b in routed_blocks(model)]


def expected(order: tuple[str, ...]) -> list[tuple]:
    """The docstring's rule: a capacity ends dynamic mode and dynamic starts it, so the later of the two decides the
    mode; the policy changes neither; what no call gives stays as built."""
    capacity = CAPACITY if "capacity" in order else 0.5
    dynamic = "dynamic" in order and ("capacity" not in order or order.index("dynamic") > order.index("capacity"))
    policy = POLICY if "policy" in order else "topk"
    return [(capacity, DYNAMIC if dynamic else None, 0.0, policy, policy == "random")] * 3


ORDERS = [p for n in range(1, 4) for p in itertools.permutations(CALLS, n)]


@pytest.mark.parametrize("order", ORDERS, ids="-".join)
def test_every_order_of_calls_ends_as_the_docstring_says(model, order):
    for name in order:
        set_routing(model, **CALLS[name])
    assert state(model) == expected(order)
    mode = "dynamic" if expected(order)[0][1] else "static"
    assert routing_mode(model) == results_routing_mode(model) == mode  # the reader reads what the setter wrote
    assert dynamic_bounds(model) == (DYNAMIC if mode == "dynamic" else None)


def test_dynamic_false_or_none_ends_dynamic_mode_and_keeps_the_capacities(model):
    for off in (False, None):
        set_routing(model, capacity=[0.25, 0.5, 1.0])
        set_routing(model, dynamic=DYNAMIC)
        assert set_routing(model, dynamic=off) == [0.25, 0.5, 1.0]
        assert routing_mode(model) == "static"


def test_capacity_and_dynamic_in_one_call_set_both(model):
    assert set_routing(model, capacity={0: 1.0}, dynamic=list(DYNAMIC)) == [1.0, 0.5, 0.5]
    assert dynamic_bounds(model) == DYNAMIC  # a list given, the (min, max) tuple kept


def test_threshold_and_policy_alone_keep_capacity_and_mode(model):
    set_routing(model, capacity=CAPACITY, dynamic=DYNAMIC)
    set_routing(model, threshold=0.5)
    set_routing(model, policy="object")
    assert state(model) == [(CAPACITY, DYNAMIC, 0.5, "object", False)] * 3


def test_the_random_policy_is_seeded_and_a_lone_seed_is_refused(model):
    states = []
    for seed in (3, 3, 4):
        set_routing(model, policy="random", seed=seed)
        states.append(routed_blocks(model)[0].random_source.get_state())
    assert torch.equal(states[0], states[1]) and not torch.equal(states[0], states[2])
    assert len({id(b.random_source) for b in routed_blocks(model)}) == 1  # one generator for the model
    with pytest.raises(ValueError, match="give it with policy="):
        set_routing(model, seed=1)


# --- every setter is a call of set_routing ---------------------------------------------------------------------------

def nn_level(model, capacity=None, dynamic=None):
    set_capacity(model, capacity) if capacity is not None else set_dynamic(model, dynamic)


def model_level(model, capacity=None, dynamic=None):
    model.set_capacity(capacity) if capacity is not None else model.set_dynamic(dynamic)


def modyolo_level(yolo, capacity=None, dynamic=None):
    yolo.set_capacity(capacity) if capacity is not None else yolo.set_dynamic(dynamic)


def cfg_level(model, capacity=None, dynamic=None):
    apply_routing(model, SimpleNamespace(capacity=capacity, dynamic_capacity=False if dynamic is None else dynamic))


SEQUENCES = [
    [dict(dynamic=DYNAMIC), dict(capacity=CAPACITY)],  # set_capacity in dynamic mode: static at that capacity
    [dict(capacity=[0.25, 0.5, 1.0]), dict(dynamic=DYNAMIC)],
    [dict(dynamic=DYNAMIC), dict(capacity={2: 1.0})],  # a per-block capacity ends dynamic mode too
    [dict(dynamic=DYNAMIC), dict(dynamic=None)],
]


@pytest.mark.parametrize("calls", SEQUENCES, ids=str)
def test_the_setters_of_every_level_agree(calls):
    models = {}
    for name, setter in (("set_routing", None), ("nn", nn_level), ("model", model_level), ("cfg", cfg_level),
                         ("MoDYOLO", modyolo_level)):
        yolo = MoDYOLO(YAML)
        for call in calls:
            if setter is None:
                set_routing(yolo.model, **call)
            else:
                setter(yolo if name == "MoDYOLO" else yolo.model, **call)
        models[name] = state(yolo.model)
    assert all(s == models["set_routing"] for s in models.values()), models


def test_set_static_is_set_capacity(model):
    set_routing(model, dynamic=DYNAMIC)
    assert set_static(model, CAPACITY) == [CAPACITY] * 3 and routing_mode(model) == "static"
    assert set_static is set_capacity


def test_apply_capacity_and_apply_policy_are_set_routing(model):
    set_routing(model, dynamic=DYNAMIC)
    apply_capacity(model, None)  # None: capacity= not given
    assert routing_mode(model) == "dynamic"
    apply_capacity(model, CAPACITY)
    apply_policy(model, None)  # the learned scorer
    assert state(model) == [(CAPACITY, None, 0.0, "topk", False)] * 3
    set_policy(model, POLICY, 5)
    seeded = routed_blocks(model)[0].random_source.get_state()
    apply_policy(model, POLICY, 5)
    assert torch.equal(routed_blocks(model)[0].random_source.get_state(), seeded)


# --- bad values: the messages they always had, and nothing changed ----------------------------------------------------

BAD = [
    (dict(capacity=1.5), r"range \(0, 1\]"),
    (dict(capacity={3: 0.5}), r"indices \[3\] out of range for 3 routed blocks"),
    (dict(capacity=[0.5, 0.5]), "2 capacities given for 3 routed blocks"),
    (dict(dynamic=(0.5, 0.1)), "min 0.5 is above max 0.1"),
    (dict(dynamic=(0.1,)), r"needs \[min, max\]"),
    (dict(dynamic=0.5), r"needs \[min, max\]"),
    (dict(dynamic=(-0.1, 1.0)), r"min must be a float in the range \[0, 1\]"),
    (dict(dynamic=(0.0, 0.0)), r"range \(0, 1\]"),  # a min of 0 is valid, a max of 0 is not
    (dict(policy="best"), "routing policy must be one of"),
    (dict(capacity=0.25, policy="best"), "routing policy must be one of"),  # the good capacity is not set either
]


@pytest.mark.parametrize("call, match", BAD, ids=str)
def test_a_bad_value_is_refused_and_changes_nothing(model, call, match):
    set_routing(model, dynamic=DYNAMIC)
    before = state(model)
    with pytest.raises(ValueError, match=match):
        set_routing(model, **call)
    assert state(model) == before


@pytest.mark.parametrize("call, match", [c for c in BAD if "policy" not in c[0]], ids=str)
def test_bad_values_give_the_same_message_through_every_setter(model, call, match):
    (key, value), = call.items()
    with pytest.raises(ValueError, match=match):
        set_capacity(model, value) if key == "capacity" else set_dynamic(model, value)
    with pytest.raises(ValueError, match=match):
        model.set_capacity(value) if key == "capacity" else model.set_dynamic(value)


def test_modyolo_names_its_argument_in_a_bad_dynamic_value():
    yolo = MoDYOLO(YAML)
    with pytest.raises(ValueError, match=r"dynamic_capacity must be \[min, max\]"):
        yolo.set_dynamic(0.5)
    with pytest.raises(ValueError, match=r"range \(0, 1\]"):
        yolo.set_capacity(1.5)
    with pytest.raises(ValueError, match="out of range for 3 routed blocks"):
        yolo.set_capacity({3: 0.5})


def test_a_yaml_sets_its_per_image_budgets_threshold_and_a_checkpoint_keeps_it(tmp_path):
    """`dynamic_threshold` in a model YAML: the logit its per-image budget counts a token wanted above. Setting the
    bounds alone keeps it; MoDYOLO.set_dynamic(threshold=) changes it; a saved model loads with it; a bad value is
    one clear error."""
    from mod_vision.nn.tasks import load_model_yaml

    spec = {**load_model_yaml("modnext-det-n.yaml"), "dynamic_threshold": -1.5}
    model = MoDDetectionModel(spec, nc=4, verbose=False)
    assert {r.threshold for r in routed_blocks(model)} == {-1.5}
    model.set_dynamic((0.1, 1.0))
    assert {r.threshold for r in routed_blocks(model)} == {-1.5} and dynamic_bounds(model) == (0.1, 1.0)
    yolo = MoDYOLO("modnext-det-n.yaml")
    assert {r.threshold for r in routed_blocks(yolo.model)} == {0.0}  # a YAML without the key: probability 0.5
    yolo.set_dynamic([0.01, 1.0], threshold=-2)
    assert {r.threshold for r in routed_blocks(yolo.model)} == {-2.0}
    yolo.save(tmp_path / "m.pt")
    assert {r.threshold for r in routed_blocks(MoDYOLO(tmp_path / "m.pt").model)} == {-2.0}
    for bad in ("low", float("nan"), True):
        with pytest.raises(ValueError, match=r"dynamic_threshold must be a finite number \(a predictor logit\), got"):
            MoDDetectionModel({**spec, "dynamic_threshold": bad}, nc=4, verbose=False)
        with pytest.raises(ValueError, match="dynamic_threshold must be a finite number"):
            yolo.set_dynamic([0.01, 1.0], threshold=bad)
    assert {r.threshold for r in routed_blocks(yolo.model)} == {-2.0}  # a refused value changed nothing
