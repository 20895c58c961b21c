"""Side-by-side CPU/GPU latency benchmark: a routed model across capacities, its dense twin, and YOLO11/YOLO26.

One run measures every row on identical inputs, interleaving rows round-robin within each repetition so that machine
noise (shared CPUs) hits all rows alike; speedups are ratios from that one run. Rows per (imgsz, batch):
  - the routed model (whole detector) at each capacity, and its dense twin;
  - the same two as backbone-only rows (patch embedding + transformer stage, no pyramid or head);
  - YOLO11n/s and YOLO26n/s built from Ultralytics' own YAMLs (random weights: latency does not need trained ones).
Per row: params, routing-aware GFLOPs, median latency and its spread (p10-p90) over `runs` timed forwards after
`warmup`, peak tensor memory of one forward, speedup over the dense twin, the FLOP-ideal speedup and their ratio.

Usage:
    python tools/benchmark.py --model modvit-det-n.yaml --imgsz 640 1280 --batch 1 8 --threads 2
    mod-vision benchmark imgsz=640 batch=1
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from .defaults import DEFAULT_CAPACITIES
from .flops import gflops
from .nn.routing import routed_blocks, set_static
from .nn.blocks import MoDA2C2f
from .nn.vit import MoDViTStage
from .report import markdown_table, write_csv

DEFAULT_YOLO = ("yolo11n.yaml", "yolo11s.yaml", "yolo26n.yaml", "yolo26s.yaml")


@dataclass
class Row:
    name: str
    part: str  # "model" or "backbone"
    net: nn.Module
    capacity: float | None = None  # None: not routed
    family: str = "mod"  # speedups are over this family's dense row ("mod") or not computed ("yolo")
    times: list = field(default_factory=list)

    def prepare(self) -> None:
        if self.capacity is not None:
            set_static(self.net, self.capacity)  # a row times its capacity, not a per-image budget


def backbone_of(model: nn.Module) -> nn.Sequential:
    """Ultralytics layers up to and including the backbone's last attention layer (a straight chain in our YAMLs)."""
    layers = list(model.model)
    n_backbone = len(model.yaml["backbone"])
    last = max(i for i, m in enumerate(layers[:n_backbone]) if isinstance(m, (MoDViTStage, MoDA2C2f)))
    if any(m.f != -1 for m in layers[1 : last + 1]):
        raise ValueError("backbone-only rows need a straight chain of layers up to the transformer stage")
    return nn.Sequential(*layers[: last + 1])


def build_rows(model: str, dense: str | None, capacities, yolo) -> list[Row]:
    from ultralytics import YOLO

    from .nn.tasks import MoDDetectionModel, MoDSegmentationModel, dense_twin_yaml, load_model_yaml

    def load(cfg):
        cls = MoDSegmentationModel if "-seg" in Path(cfg).stem else MoDDetectionModel
        return cls(load_model_yaml(cfg), verbose=False).fuse(verbose=False).eval()

    routed = load(model)
    if not routed_blocks(routed):
        raise ValueError(f"{model} has no routed blocks; pass a routed model and its dense twin with --dense")
    if dense is None:  # the routed YAML names its twin; keep the routed model's scale
        dense = dense_twin_yaml(model)
    twin = load(dense)
    rows = [Row(f"{Path(dense).stem} (dense twin)", "model", twin)]
    rows += [Row(f"{Path(model).stem} @ {c:g}", "model", routed, c) for c in capacities]
    rows += [Row(f"{Path(dense).stem} (dense twin)", "backbone", backbone_of(twin))]
    rows += [Row(f"{Path(model).stem} @ {c:g}", "backbone", backbone_of(routed), c) for c in capacities]
    for y in yolo:
        rows.append(Row(Path(y).stem, "model", YOLO(y).model.fuse(verbose=False).eval(), family="yolo"))
    return rows


def peak_memory_mb(net: nn.Module, x: torch.Tensor) -> float:
    """Peak of tensor memory allocated during one forward (profiler allocation/free events, CPU or CUDA)."""
    if x.is_cuda:
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        net(x)
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    from torch.profiler import ProfilerActivity, profile

    prof = profile(activities=[ProfilerActivity.CPU], profile_memory=True)
    with native_stderr_silenced():  # the profiler's native library prints 'USDT: profiler_start' (and _stop) there
        prof.start()
    try:
        net(x)
    finally:
        with native_stderr_silenced():
            prof.stop()
    deltas = sorted(
        (e.time_range.start, e.cpu_memory_usage if e.name == "[memory]" else e.self_cpu_memory_usage)
        for e in prof.events()
    )
    cur = peak = 0
    for _, d in deltas:
        cur += d
        peak = max(peak, cur)
    return peak / 2**20


@contextmanager
def native_stderr_silenced():
    """File descriptor 2 to /dev/null for the duration: silences what native code writes to stderr, which Python's
    sys.stderr and logging do not reach. Kept around the profiler's start and stop only, so no warning of the
    measured forward is lost."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)


def round_robin(calls: list, runs: int, warmup: int) -> list[list[float]]:
    """Seconds per timed call of each (prepare, run) pair, timed round-robin: every repetition runs each pair once, so
    machine noise hits all of them alike. `prepare` (or None) runs untimed before each `run`, e.g. to set a capacity."""
    for prepare, run in calls:
        for _ in range(warmup):
            if prepare:
                prepare()
            run()
    times = [[] for _ in calls]
    for _ in range(runs):
        for (prepare, run), t in zip(calls, times):
            if prepare:
                prepare()
            start = time.perf_counter()
            run()
            t.append(time.perf_counter() - start)
    return times


def time_rows(rows: list[Row], x: torch.Tensor, runs: int, warmup: int) -> None:
    sync = torch.cuda.synchronize if x.is_cuda else (lambda: None)

    def forward(net):
        def run():
            sync()
            net(x)
            sync()

        return run

    times = round_robin([(r.prepare, forward(r.net)) for r in rows], runs, warmup)
    for r, t in zip(rows, times):
        r.times = t


def summarize(rows: list[Row], imgsz: int, batch: int, x: torch.Tensor) -> list[dict]:
    out, dense = [], {}
    for r in rows:
        r.prepare()
        q = statistics.quantiles(r.times, n=10)
        rec = {
            "imgsz": imgsz, "batch": batch, "part": r.part, "row": r.name,
            "capacity": "" if r.capacity is None else r.capacity,
            "params_M": sum(p.numel() for p in r.net.parameters()) / 1e6,
            "gflops": gflops(r.net, imgsz) * batch,
            "latency_ms": statistics.median(r.times) * 1e3, "p10_ms": q[0] * 1e3, "p90_ms": q[-1] * 1e3,
            "peak_mem_MB": peak_memory_mb(r.net, x),
        }
        if r.family == "mod" and r.capacity is None:
            dense[r.part] = rec
        ref = dense.get(r.part)  # YOLO rows too: how they compare with the dense twin
        if ref is not None:
            rec["speedup"] = ref["latency_ms"] / rec["latency_ms"]
            rec["ideal_speedup"] = ref["gflops"] / rec["gflops"]
            rec["share_of_ideal"] = rec["speedup"] / rec["ideal_speedup"]
        out.append(rec)
    return out


COLUMNS = ("imgsz", "batch", "part", "row", "capacity", "params_M", "gflops", "latency_ms", "p10_ms", "p90_ms",
           "peak_mem_MB", "speedup", "ideal_speedup", "share_of_ideal")


def targets(records: list[dict]) -> list[str]:
    """The latency targets, checked on the batch-1, 640 rows (or the smallest setting run): the backbone reaches 90% of
    its FLOP-ideal speedup at every capacity, the whole model is 1.6x faster than its dense twin at capacity 0.25, and
    the routers cost at most 5% at capacity 1.0."""
    setting = min({(r["imgsz"], r["batch"]) for r in records}, key=lambda s: (s[1], abs(s[0] - 640)))
    rs = [r for r in records if (r["imgsz"], r["batch"]) == setting and "speedup" in r and r["capacity"] != ""]
    lines = [f"targets at imgsz {setting[0]}, batch {setting[1]}:"]
    bb = [r for r in rs if r["part"] == "backbone" and r["capacity"] < 1]
    if bb:
        worst = min(bb, key=lambda r: r["share_of_ideal"])
        ok = worst["share_of_ideal"] >= 0.9
        lines.append(f"  backbone >= 90% of FLOP-ideal speedup at every capacity: {'MET' if ok else 'MISSED'} "
                     f"(lowest {worst['share_of_ideal']:.0%} at capacity {worst['capacity']:g})")
    for r in rs:
        if r["part"] == "model" and r["capacity"] == 0.25:
            lines.append(f"  whole model at capacity 0.25 >= 1.6x dense twin: {'MET' if r['speedup'] >= 1.6 else 'MISSED'}"
                         f" ({r['speedup']:.2f}x; FLOP ideal {r['ideal_speedup']:.2f}x)")
        if r["part"] == "model" and r["capacity"] == 1.0:
            cost = 1 / r["speedup"] - 1
            lines.append(f"  routers cost <= 5% at capacity 1.0: {'MET' if cost <= 0.05 else 'MISSED'} ({cost:+.1%})")
    return lines


def plot(records: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    settings = sorted({(r["imgsz"], r["batch"]) for r in records})
    fig, axes = plt.subplots(1, len(settings), figsize=(5 * len(settings), 4), squeeze=False, tight_layout=True)
    for ax, (imgsz, batch) in zip(axes[0], settings):
        for part, color in (("model", "C0"), ("backbone", "C1")):
            rs = [r for r in records if (r["imgsz"], r["batch"], r["part"]) == (imgsz, batch, part)]
            dense = next((r for r in rs if r["capacity"] == "" and "speedup" in r), None)
            routed = sorted((r for r in rs if r["capacity"] != ""), key=lambda r: r["capacity"])
            if not dense or not routed:
                continue
            caps = [r["capacity"] for r in routed]
            ax.plot(caps, [r["latency_ms"] for r in routed], "o-", color=color, label=f"{part}: measured")
            ax.plot(caps, [dense["latency_ms"] / r["ideal_speedup"] for r in routed], "--", color=color,
                    label=f"{part}: FLOP ideal")
            ax.axhline(dense["latency_ms"], color=color, lw=0.8, ls=":", label=f"{part}: dense twin")
        ax.set(xscale="log", xlabel="capacity", ylabel="median latency (ms)", title=f"imgsz {imgsz}, batch {batch}")
        ax.set_xscale("log", base=2)
        ax.legend(fontsize=7)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def benchmark(
    model: str = "modvit-det-n.yaml",
    dense: str | None = None,
    imgsz=(640, 1280),
    batch=(1, 8),
    capacities=DEFAULT_CAPACITIES,
    yolo=DEFAULT_YOLO,
    threads: int | None = None,
    runs: int = 20,
    warmup: int = 3,
    device: str = "cpu",
    project: str = "runs/benchmark",
    name: str = "run",
) -> list[dict]:
    """Run the benchmark; writes results.md, results.csv and latency_vs_capacity.png into an incremented run folder."""
    from ultralytics.utils import LOGGER
    from ultralytics.utils.files import increment_path

    as_tuple = lambda v: tuple(v) if isinstance(v, (list, tuple)) else (v,)  # noqa: E731
    imgsz, batch, capacities = as_tuple(imgsz), as_tuple(batch), as_tuple(capacities)
    yolo = tuple(y for y in as_tuple(yolo or ()) if str(y).lower() not in {"none", "false", ""})
    if runs < 20:
        LOGGER.warning(f"runs={runs}: fewer than 20 timed runs give a noisy median")
    threads = int(threads or os.cpu_count())
    torch.set_num_threads(threads)
    save_dir = increment_path(Path(project) / name, mkdir=True)
    rows = build_rows(model, dense, capacities, yolo)
    for r in rows:
        r.net.to(device)
    records = []
    with torch.inference_mode():
        for s in imgsz:
            for b in batch:
                x = torch.rand(b, 3, s, s, generator=torch.Generator().manual_seed(0)).to(device)
                LOGGER.info(f"benchmark: imgsz {s}, batch {b}, {len(rows)} rows x {runs} runs, {threads} threads")
                time_rows(rows, x, runs, warmup)
                records += summarize(rows, s, b, x)
    header = f"device {device}, torch {torch.__version__}, {threads} threads, {runs} runs after {warmup} warm-up\n\n"
    report = header + markdown_table(records, COLUMNS) + "\n\n" + "\n".join(targets(records)) + "\n"
    (save_dir / "results.md").write_text(report)
    write_csv(save_dir / "results.csv", records, COLUMNS)
    plot(records, save_dir / "latency_vs_capacity.png")
    LOGGER.info(f"{report}\nbenchmark saved to {save_dir}")
    return records


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="modvit-det-n.yaml", help="routed model YAML")
    p.add_argument("--dense", default=None, help="dense twin YAML (default: the one the routed YAML names, `dense_twin:`)")
    p.add_argument("--imgsz", type=int, nargs="+", default=[640, 1280])
    p.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    p.add_argument("--capacities", type=float, nargs="+", default=list(DEFAULT_CAPACITIES))
    p.add_argument("--yolo", nargs="*", default=list(DEFAULT_YOLO), help="Ultralytics YAMLs to compare (none: skip)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: all CPUs)")
    p.add_argument("--runs", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--device", default="cpu")
    p.add_argument("--project", default="runs/benchmark")
    p.add_argument("--name", default="run")
    return benchmark(**vars(p.parse_args(argv)))
