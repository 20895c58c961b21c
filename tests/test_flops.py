"""Routing-aware FLOPs: routed blocks count at k tokens, checked against an analytic count."""

import math

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from mod_vision import MoDYOLO
from mod_vision.flops import CAPACITIES, capacity_table, gflops
from mod_vision.nn import MoDViTStage
from mod_vision.nn.routing import router_spec


def analytic_block(tokens: int, dim: int) -> int:
    """qkv (3C²) + proj (C²) + MLP (8C²) per token, and QKᵀ plus AV (2·T²·C), at 2 FLOPs per multiply-add."""
    return 2 * tokens * 12 * dim * dim + 4 * tokens * tokens * dim


@pytest.mark.parametrize("capacity", CAPACITIES)
def test_stage_flops_match_analytic_count_at_k_tokens(capacity):
    dim, h, w, depth = 64, 10, 12, 4
    n = h * w
    stage = MoDViTStage(dim, dim, depth=depth, routed=2, router=router_spec(capacity=capacity)).eval()
    k = math.ceil(capacity * n)
    expected = 2 * analytic_block(n, dim) + 2 * (analytic_block(k, dim) + 2 * n * dim)  # + linear routers on all N
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        stage(torch.zeros(1, dim, h, w))
    assert counter.get_total_flops() == pytest.approx(expected, rel=0.01)


def test_model_flops_fall_with_capacity_and_capacities_are_restored():
    model = MoDYOLO("modvit-det.yaml")
    model.set_capacity([0.5, 0.25, 1.0])
    table = capacity_table(model.model, imgsz=320)
    assert [c for c, _ in table] == list(CAPACITIES)
    values = [g for _, g in table]
    assert values == sorted(values, reverse=True) and len(set(values)) == 4
    assert model.model.capacities() == [0.5, 0.25, 1.0]
    dense = gflops(MoDYOLO("modvit-det-dense.yaml").model, 320)
    assert dense < values[0] < dense * 1.01  # capacity 1.0 = dense + routers, which are cheap


def test_info_reports_routing_aware_gflops():
    info = MoDYOLO("modvit-det.yaml").info(verbose=False, imgsz=320)
    assert info["gflops"] == pytest.approx(info["capacity_gflops"][0.5])
    assert set(info["capacity_gflops"]) == set(CAPACITIES)


def test_compute_line_says_routed_at_which_size_and_capacity_beside_every_token():
    import re

    from mod_vision.flops import compute_line
    from mod_vision.nn.tasks import MoDDetectionModel, load_model_yaml

    model = MoDDetectionModel(load_model_yaml("hybrid11-det-n.yaml"), nc=4, verbose=False)
    line = compute_line(model, 160)
    now, full = map(float, re.search(r"at 160x160: ([\d.]+) at capacity 0.25 \(([\d.]+) with every token", line).groups())
    assert 0 < now < full
    assert [b.capacity for b in model.routed_blocks()] == [0.25] * len(model.routed_blocks())  # restored
    dense = MoDDetectionModel(load_model_yaml("hybrid11-det-dense-n.yaml"), nc=4, verbose=False)
    assert "(no routed blocks)" in compute_line(dense, 160)
