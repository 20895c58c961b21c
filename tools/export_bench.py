"""Does the routing speedup survive export? Latency of onnxruntime, OpenVINO and PyTorch at capacities 1.0/0.5/0.25
against the dense twin, in one run.

Randomly initialised models (latency does not depend on training), batch 1, threads set explicitly for every runtime.
Rows are timed round-robin (one run of each row per round) so machine noise hits every row alike; the table reports
the median and the interquartile range over the rounds, the speedup over the same runtime's dense twin, and
"retained" = exported speedup / PyTorch speedup at the same capacity (target >= 0.8).

    python tools/export_bench.py                              # modvit-det-n, imgsz 640, 30 rounds, 2 threads
    python tools/export_bench.py model=modvit-det-s.yaml imgsz=320 runs=20 threads=4

Writes runs/export_bench/<name>/{bench.md, bench.csv} and prints the table.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

from mod_vision import MoDYOLO
from mod_vision.benchmark import round_robin
from mod_vision.nn.tasks import dense_twin_yaml
from mod_vision.report import markdown_table, write_csv

CAPACITIES = (1.0, 0.5, 0.25)


def runners(model_yaml: str, capacity: float | None, imgsz: int, threads: int, out: Path) -> dict:
    """{runtime: callable} for one model (capacity None: the dense twin)."""
    import onnxruntime as ort
    import openvino as ov

    m = MoDYOLO(model_yaml)
    if capacity is not None:
        m.set_capacity(capacity)
    tag = "dense" if capacity is None else f"c{capacity:g}"
    d = out / tag
    d.mkdir(parents=True, exist_ok=True)
    m.model.pt_path = str(d / f"{tag}.pt")  # the exporter names its files after this
    f_onnx = m.export(format="onnx", imgsz=imgsz)
    f_ov = m.export(format="openvino", imgsz=imgsz)
    torch_model = m.model.fuse().eval()
    x = torch.rand(1, 3, imgsz, imgsz)

    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    sess = ort.InferenceSession(f_onnx, opts, providers=["CPUExecutionProvider"])
    core = ov.Core()
    compiled = core.compile_model(
        str(next(Path(f_ov).glob("*.xml"))),
        "CPU",
        {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": ov.Type.f32},
    )
    xn = x.numpy()

    def run_torch():
        with torch.inference_mode():
            torch_model(x)

    return {
        "pytorch": run_torch,
        "onnxruntime": lambda: sess.run(None, {"images": xn}),
        "openvino": lambda: compiled(xn),
    }


def main(argv: list[str]) -> Path:
    args = dict(a.split("=", 1) for a in argv)
    model_yaml = args.get("model", "modvit-det.yaml")
    imgsz, runs, warmup = int(args.get("imgsz", 640)), int(args.get("runs", 30)), int(args.get("warmup", 5))
    threads = int(args.get("threads", 2))
    torch.set_num_threads(threads)
    out = Path(args.get("project", "runs/export_bench")) / args.get("name", f"{Path(model_yaml).stem}-{imgsz}")
    out.mkdir(parents=True, exist_ok=True)

    dense_yaml = dense_twin_yaml(model_yaml)
    rows = {}
    for cap in (None, *CAPACITIES):
        for rt, fn in runners(model_yaml if cap else dense_yaml, cap, imgsz, threads, out).items():
            rows[(rt, cap)] = fn
    measured = round_robin([(None, fn) for fn in rows.values()], runs, warmup)
    times = {k: [1000 * t for t in ts] for k, ts in zip(rows, measured)}

    med = {k: float(np.median(v)) for k, v in times.items()}
    iqr = {k: tuple(np.percentile(v, [25, 75])) for k, v in times.items()}
    records = []
    for rt in ("pytorch", "onnxruntime", "openvino"):
        for cap in (None, *CAPACITIES):
            k = (rt, cap)
            speedup = med[(rt, None)] / med[k]
            torch_speedup = med[("pytorch", None)] / med[("pytorch", cap)]
            retained = speedup / torch_speedup if cap is not None and rt != "pytorch" else None
            lo, hi = iqr[k]
            records.append(dict(runtime=rt, capacity=cap or "dense", median_ms=med[k], q25_ms=lo, q75_ms=hi,
                                speedup=speedup, retained=retained))
    shown = [{"runtime": r["runtime"], "capacity": f"{r['capacity']:g}" if r["capacity"] != "dense" else "dense",
              "latency ms": f"{r['median_ms']:.1f} ({r['q25_ms']:.1f}-{r['q75_ms']:.1f})",
              "speedup vs dense": r["speedup"], "retained (vs PyTorch speedup)": r["retained"]} for r in records]
    table = (f"model {model_yaml} vs {dense_yaml}, imgsz {imgsz}, batch 1, {threads} threads, {runs} rounds after "
             f"{warmup} warm-up, median ms (IQR)\n\n" + markdown_table(shown, floatfmt=".2f"))
    (out / "bench.md").write_text(table + "\n")
    write_csv(out / "bench.csv", records)
    print(table)
    print(f"\nwritten: {out / 'bench.md'}, {out / 'bench.csv'}")
    return out


if __name__ == "__main__":
    main(sys.argv[1:])
