"""Timing: median ms per image at batch 1 on CPU threads, every arm (and, in a capacity study, every capacity) timed
round-robin in one call, so that machine noise hits them alike."""

from __future__ import annotations

import math
import statistics
from functools import partial
from pathlib import Path

import torch

from .settings import is_stock


def median_ms(calls: list, runs: int, warmup: int, threads: int) -> list[float]:
    """Median ms of each (prepare, run) pair of `calls`, timed round-robin (mod_vision.benchmark.round_robin)."""
    from ..benchmark import round_robin

    torch.set_num_threads(threads)
    with torch.inference_mode():
        times = round_robin(calls, runs=runs, warmup=warmup)
    return [1000 * statistics.median(t) for t in times]


def network(model: str, weights: str | Path | None = None) -> torch.nn.Module:
    """The fused eval network that `latency` times: the model its YAML builds (random weights), or its `weights`."""
    from ultralytics import YOLO

    from .. import MoDYOLO

    return (YOLO if is_stock(model) else MoDYOLO)(str(weights or model)).model.fuse(verbose=False).eval()


def timed(configs: list[tuple], imgsz: int, threads: int, runs: int, warmup: int) -> list[float]:
    """Median ms per image, batch 1, of each (network, capacity) pair, all timed round-robin. The capacity (None: the
    network as it is) is set before each run, since the pairs of one arm share its network."""
    from ..nn.routing import set_static

    x = torch.rand(1, 3, imgsz, imgsz, generator=torch.Generator().manual_seed(0))
    calls = [(None if c is None else partial(set_static, net, c), partial(net, x)) for net, c in configs]
    return median_ms(calls, runs, warmup, threads)


def latency(arms: list[dict], imgsz: int, threads: int, runs: int, weights: dict | None = None,
            warmup: int = 3) -> dict[str, float]:  # fmt: skip
    """Median ms per image of each arm (`as_arm`), batch 1: the model its YAML builds, or its `weights` by arm name."""
    nets = [(network(a["model"], (weights or {}).get(a["name"])), None) for a in arms]
    return dict(zip([a["name"] for a in arms], timed(nets, imgsz, threads, runs, warmup)))


def time_capacities(results: list[dict], imgsz: int, threads: int, runs: int, warmup: int,
                    reference: str | None = None) -> None:  # fmt: skip
    """A capacity study's latency: every result at each capacity it was scored at, on its trained weights, timed
    round-robin in one call, into its scores' `latency_ms`; `latency_ratio` divides by the `reference` arm's latency
    (its first score) of the same split and seed, NaN without one."""
    configs, scores = [], []
    for r in results:
        net = network(r["model"], r["weights"])
        configs += [(net, None if key == "dense" else float(key)) for key in r["eval"]]
        scores += r["eval"].values()
    for score, ms in zip(scores, timed(configs, imgsz, threads, runs, warmup)):
        score["latency_ms"] = ms
    for r in results:
        same = (reference, r.get("split"), r["seed"])
        ref = next((q for q in results if (q["arm"], q.get("split"), q["seed"]) == same), None)
        base = next(iter(ref["eval"].values()))["latency_ms"] if ref else math.nan
        for score in r["eval"].values():
            score["latency_ratio"] = score["latency_ms"] / base
