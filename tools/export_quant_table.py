"""mAP of each exported precision against the fp32 PyTorch model, on a data YAML. Trains nothing.

    python tools/export_quant_table.py model=runs/detect/train/weights/best.pt data=path/to/sample.yaml imgsz=160

Variants: PyTorch fp32; ONNX fp32 and fp16 (quantize=16); OpenVINO fp32, fp16 and int8 (NNCF, calibrated on `data`);
LiteRT fp32 and int8 (static, calibrated on `data`). Each is exported from a copy of the checkpoint in its own folder,
then validated with Ultralytics' validator (batch 1, device cpu). Writes <project>/<name>/quant.md and prints it.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from ultralytics import YOLO

from mod_vision import MoDYOLO
from mod_vision.model import routed_capacities
from mod_vision.report import markdown_table

VARIANTS = [  # (name, format, quantize)
    ("ONNX fp32", "onnx", None),
    ("ONNX fp16", "onnx", 16),
    ("OpenVINO fp32", "openvino", None),
    ("OpenVINO fp16", "openvino", 16),
    ("OpenVINO int8", "openvino", 8),
    ("LiteRT fp32", "litert", None),
    ("LiteRT int8", "litert", 8),
]


def quant_table(rows: list[tuple[str, tuple | str]]) -> str:
    """The Markdown table of (variant, (mAP50(B), mAP50-95(B), mAP50-95(M) or None) or an error text), with each
    variant's change against the first row (the fp32 PyTorch model)."""
    ref = rows[0][1]
    seg = ref[2] is not None
    table = []
    for name, m in rows:
        if isinstance(m, str):  # a failed variant: its error in the first metric column
            table.append({"variant": name, "mAP50(B)": m})
            continue
        row = {"variant": name, "mAP50(B)": m[0], "mAP50-95(B)": m[1], "Δ mAP50-95(B) vs fp32": m[1] - ref[1]}
        if seg:
            row.update({"mAP50-95(M)": m[2], "Δ (M)": m[2] - ref[2]})
        table.append(row)
    columns = ["variant", "mAP50(B)", "mAP50-95(B)", "Δ mAP50-95(B) vs fp32"] + (["mAP50-95(M)", "Δ (M)"] if seg else [])
    return markdown_table(table, columns, floatfmt={c: "+.4f" if c.startswith("Δ") else ".4f" for c in columns})


def main(argv: list[str]) -> str:
    args = dict(a.split("=", 1) for a in argv)
    pt, data, imgsz = Path(args["model"]), args["data"], int(args.get("imgsz", 640))
    out = Path(args.get("project", "runs/export_quant")) / args.get("name", pt.parent.parent.name or "model")
    out.mkdir(parents=True, exist_ok=True)
    # rect=False: square letterboxed inputs for PyTorch too, as the fixed-shape exports get (else N tokens differ)
    val = dict(data=data, imgsz=imgsz, batch=1, device="cpu", plots=False, verbose=False, rect=False)

    def metrics(model, **kw):
        m = model.val(**val, **kw)
        seg = getattr(m, "seg", None)
        return m.box.map50, m.box.map, (seg.map if seg is not None else None)

    # the reference runs the static capacities an export fixes in its graph, also for a model whose own budget is
    # per image (dynamic mode cannot be exported)
    model = MoDYOLO(pt)
    capacities = routed_capacities(model.model)
    rows = [("PyTorch fp32", metrics(model, capacity=capacities or None))]
    for name, fmt, q in VARIANTS:
        d = out / name.replace(" ", "-")
        d.mkdir(exist_ok=True)
        copy = shutil.copy(pt, d / pt.name)
        try:
            f = MoDYOLO(copy).export(format=fmt, imgsz=imgsz, quantize=q, data=data if q == 8 else None)
            rows.append((name, metrics(YOLO(f, task=MoDYOLO(copy).task))))
        except Exception as e:  # a failing variant is reported in the table, not hidden
            rows.append((name, f"failed: {type(e).__name__}: {str(e).splitlines()[0][:120]}"))

    table = quant_table(rows)
    (out / "quant.md").write_text(f"model {pt}, data {data}, imgsz {imgsz}\n\n{table}\n")
    print(table)
    return table


if __name__ == "__main__":
    main(sys.argv[1:])
