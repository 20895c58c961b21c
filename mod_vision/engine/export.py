"""Export of routed models through Ultralytics' exporter, with the routing kept in the graph.

An exported MoD model must still skip compute on the edge, so export always takes the static top-k path
(k = ceil(capacity * N) per routed block, fixed at export): each routed block becomes TopK, a row Gather and a
ScatterND (or the runtime's equivalent). `MoDExporter` subclasses Ultralytics' `Exporter` and adds, per export:

- the `capacity=` argument applied to a copy of the model (dynamic per-image k switched off);
- for fixed-shape exports, the position embedding resized once to the export grid (a constant, so runtimes without a
  bicubic resize, such as CoreML, need none);
- `capacity` (one per routed block) and `token_stride` in the exported file's metadata, so a predictor can report them;
- a check that the routing ops are really in the saved graph, and that the runtime can run every op in it: an op it
  lacks fails here, naming the op and the format, never at deploy time.
"""

from __future__ import annotations

import ast
import math
import re
from collections import Counter
from copy import deepcopy
from pathlib import Path

import torch
from ultralytics.engine.exporter import Exporter
from ultralytics.utils import DEFAULT_CFG, LOGGER

from ..cfg import apply_capacity, apply_routing, split_extra_args, with_extra_defaults
from ..flops import compute_line
from ..nn.routing import dynamic_bounds, record_routing, routed_blocks, set_dynamic, token_stride, tokens_for
from ..nn.vit import MoDViTStage

# Formats whose conversion of the routing ops is checked (tests/test_export.py); ncnn converts but its runtime has no
# TopK/Gather/Scatter layer, which the export then reports.
FORMATS = ("torchscript", "onnx", "openvino", "engine", "coreml", "litert", "ncnn")
ALIASES = {"tensorrt": "engine", "trt": "engine", "tflite": "litert", "mlpackage": "coreml", "mlprogram": "coreml"}

# Op names of the three routing steps in each saved graph (TensorRT builds from the ONNX graph).
# "gather" and "scatter" are the token-row gather and scatter (RoutedBlock.forward); ONNX/OpenVINO Gather also serves
# shape arithmetic, so only its lower bound means something.
ROUTING_OPS = {
    "onnx": {"topk": "TopK", "gather": "Gather", "scatter": "ScatterND"},
    "openvino": {"topk": "TopK", "gather": "Gather", "scatter": "ScatterNDUpdate"},
    "torchscript": {"topk": "aten::topk", "gather": "aten::index_select", "scatter": "aten::index_put_"},
    "litert": {"topk": "TOPK_V2", "gather": "GATHER", "scatter": "STABLEHLO_SCATTER"},
    "coreml": {"topk": "topk", "gather": "gather", "scatter": "scatter_nd"},
}


class ExportOpError(ValueError):
    """A routed model needs an op that the target format's runtime does not have."""

    def __init__(self, fmt: str, ops):
        ops = sorted(set(ops))
        super().__init__(
            f"format='{fmt}' cannot run op(s) {ops} that this routed model needs (the top-k routing is kept in the "
            f"graph, never densified). Export to one of {[f for f in FORMATS if f not in (fmt, 'ncnn')]} instead."
        )
        self.format, self.ops = fmt, ops


def check_format(fmt: str) -> str:
    """Return the canonical format name, or raise a ValueError listing the supported ones."""
    name = ALIASES.get(str(fmt).lower(), str(fmt).lower())
    if name not in FORMATS:
        raise ValueError(f"format='{fmt}' is not supported for routed mod_vision models. Supported formats: {FORMATS}")
    return name


def routing_op_counts(path: str | Path, fmt: str) -> Counter:
    """Count the routing ops (keys 'topk', 'gather', 'scatter') in a saved export of format `fmt`."""
    fmt, path = check_format(fmt), Path(path)
    if fmt not in ROUTING_OPS:
        raise ValueError(f"no graph reader for format='{fmt}'; readers exist for {sorted(ROUTING_OPS)}")
    ops = Counter(_graph_ops(path, fmt))
    return Counter({step: ops[name] for step, name in ROUTING_OPS[fmt].items()})


def _graph_ops(path: Path, fmt: str) -> list[str]:
    """Every op type in a saved graph."""
    if fmt == "onnx":
        import onnx

        return [n.op_type for n in onnx.load(str(path), load_external_data=False).graph.node]
    if fmt == "openvino":
        import openvino as ov

        xml = next(path.glob("*.xml")) if path.is_dir() else path
        return [op.get_type_name() for op in ov.Core().read_model(str(xml)).get_ordered_ops()]
    if fmt == "torchscript":
        return [n.kind() for n in torch.jit.load(str(path), map_location="cpu").inlined_graph.nodes()]
    if fmt == "litert":
        from ai_edge_litert.interpreter import Interpreter

        # private in LiteRT's Interpreter, but its only way to list a graph's ops (the public API lists tensors)
        return [op["op_name"] for op in Interpreter(str(path))._get_ops_details()]
    if fmt == "coreml":
        import coremltools as ct

        main = ct.utils.load_spec(str(path)).mlProgram.functions["main"]
        return [op.type for op in main.block_specializations[main.opset].operations]
    raise ValueError(f"no graph reader for format='{fmt}'")


def exported_routing(model) -> dict | None:
    """{'capacity': [...], 'token_strides': [...]} (one per routed block) from an exported model's metadata (an
    AutoBackend), or None."""
    meta = getattr(model, "metadata", None) or {}
    if "capacity" not in meta:
        return None
    capacity, strides = meta["capacity"], meta.get("token_strides")
    capacity = ast.literal_eval(capacity) if isinstance(capacity, str) else capacity  # ONNX/CoreML keep strings
    strides = ast.literal_eval(strides) if isinstance(strides, str) else strides
    return {"capacity": [float(c) for c in capacity], "token_strides": [int(s) for s in strides]}


def check_exported_args(routing: dict, args) -> None:
    """Raise if predict/val asks an exported model for a capacity other than the one fixed at export."""
    capacity = getattr(args, "capacity", None)
    if capacity is not None:
        caps = routing["capacity"]
        asked = list(capacity) if isinstance(capacity, (list, tuple)) else [capacity] * len(caps)
        if [float(c) for c in asked] != caps:
            raise ValueError(
                f"capacity={capacity} asked of an exported model whose capacities are fixed at export to {caps}; "
                f"re-export with capacity={capacity} (model.export(format=..., capacity=...)) or leave capacity unset"
            )
    if getattr(args, "dynamic_capacity", None):
        raise ValueError("dynamic_capacity is not available for exported models: export uses static top-k routing")
    if getattr(args, "bf16", False):
        raise ValueError(
            "bf16=True needs the PyTorch checkpoint: an exported graph runs at the precision it was exported with; "
            "predict or val with the .pt, or without bf16"
        )


def apply_or_check_routing(model, args) -> dict | None:
    """Predict/val set-up: apply the routing arguments to a PyTorch model; for an exported file, whose routing is fixed
    in its graph, check them against its metadata instead (refuse, don't ignore). Returns the exported routing or None."""
    exported = exported_routing(model)
    if exported:
        check_exported_args(exported, args)
    else:
        apply_routing(model, args)
    return exported


def exported_token_share(routing: dict, shape: tuple[int, int]) -> float:
    """Share of routed-block tokens an exported model processes for an input of `shape` (h, w): exact, since static
    top-k processes k = ceil(capacity * N) tokens of every image."""
    caps, strides = routing["capacity"], routing["token_strides"]
    if not caps:
        return 1.0
    ns = [math.ceil(shape[0] / s) * math.ceil(shape[1] / s) for s in strides]
    return sum(tokens_for(c, n) for c, n in zip(caps, ns)) / sum(ns)


class MoDExporter(Exporter):
    """Ultralytics' Exporter for routed models; see the module docstring for what it adds."""

    def __init__(self, cfg=DEFAULT_CFG, overrides=None, _callbacks=None):
        split_extra_args(overrides)  # mod_vision's keys are checked here, before anything is built
        super().__init__(with_extra_defaults(cfg), overrides, _callbacks)

    def __call__(self, model: torch.nn.Module) -> str:
        fmt = self.args.format = check_format(self.args.format)
        if getattr(self.args, "bf16", False):
            raise ValueError(
                "bf16=True is a val/predict key (the PyTorch model's products in bfloat16); an export traces the "
                "model in float32: export without it (half=True or int8=True where the format has them)"
            )
        model = deepcopy(model)  # the capacity given here must not change the caller's model
        capacity = getattr(self.args, "capacity", None)
        bounds = dynamic_bounds(model)
        apply_capacity(model, capacity)
        if bounds is not None and capacity is None:  # the model's default is per image, which no static graph holds
            LOGGER.warning(f"{fmt} export: this model's per-image budget (dynamic_capacity={list(bounds)}) needs "
                           f"shapes that depend on the image; the graph routes its static capacities "
                           f"{sorted(set(b.capacity for b in routed_blocks(model)))} (pass capacity= to choose)")
        set_dynamic(model, None)  # export is always the static top-k path
        for b in routed_blocks(model):  # k computed in the graph (from N) only where the input shape may change
            b.export_dynamic_shapes = bool(self.args.dynamic)
        self.routed = len(routed_blocks(model))
        self.deciding = sum(b.decision == "own" for b in routed_blocks(model))  # the others take their grid's decision
        self._check_simplify(fmt)
        f = super().__call__(model)
        if f and self.routed:
            self._check_export(Path(f), fmt)
        return f

    def _check_simplify(self, fmt: str) -> None:
        """Without onnxslim (mod_vision's [export] extra installs it), ONNX-based exports run with simplify=False and
        one warning: Ultralytics' default simplify=True would otherwise try to pip-install it (AutoUpdate)."""
        from importlib.util import find_spec

        from ultralytics.engine.exporter import export_formats

        formats = export_formats()
        uses = {f: "simplify" in a for f, a in zip(formats["Argument"], formats["Arguments"])}
        if self.args.simplify and uses.get(fmt) and find_spec("onnxslim") is None:
            self.args.simplify = False
            LOGGER.warning(
                f"{fmt} export: onnxslim is not installed, exporting without ONNX graph simplification (simplify=False); "
                f"mod_vision's export extra installs it: pip install -e '.[export]'"
            )

    def run_callbacks(self, event: str):
        if event == "on_export_start":
            self._prepare_routing()
        super().run_callbacks(event)

    def _prepare_routing(self) -> None:
        """Record routing metadata from the exported copy and, for fixed shapes, bake position embeddings."""
        grids = {}
        hooks = [
            m.register_forward_pre_hook(lambda m, args: grids.__setitem__(m, tuple(args[0].shape[-2:])))
            for m in self.model.modules()
            if isinstance(m, MoDViTStage)
        ]
        with torch.no_grad(), record_routing() as record:
            self.model(self.im)
        for h in hooks:
            h.remove()
        blocks = routed_blocks(self.model)
        if blocks:
            self.metadata["capacity"] = [b.capacity for b in blocks]
            self.metadata["token_strides"] = [token_stride(self.im.shape[2:], e.grid) for e in record.blocks]
            LOGGER.info(f"{self.args.format} export: {compute_line(self.model, tuple(self.im.shape[2:]))}")
        if not self.args.dynamic:
            for stage, (h, w) in grids.items():
                stage.pos_embed = torch.nn.Parameter(stage.position_embedding(h, w).detach(), requires_grad=False)

    def export_ncnn(self, prefix=""):
        # PNNX writes layers it cannot map to ncnn under their torch names (torch.topk, aten::scatter...), and may then
        # fail on its own Python rendering of them; either way, the ncnn layer list tells which ops ncnn lacks.
        error = None
        try:
            f = super().export_ncnn()
        except Exception as e:
            error, f = e, str(self.file).replace(self.file.suffix, "_ncnn_model/")
        param = Path(f) / "model.ncnn.param"
        if param.exists():
            import ncnn

            types = [line.split()[0] for line in param.read_text().splitlines()[2:] if line.strip()]
            missing = [t for t in types if ncnn.layer_to_index(t) < 0]
            if missing:
                raise ExportOpError("ncnn", missing) from error
        if error:
            raise error
        return f

    def export_openvino(self, prefix=""):
        try:
            return super().export_openvino()
        except Exception as e:  # OpenVINO's frontend lists the ops it has no conversion rule for
            ops = re.search(r"No conversion rule found for operations: ([^\n]+)", str(e))
            if ops:
                raise ExportOpError("openvino", [o.strip() for o in ops[1].split(",")]) from e
            raise

    def export_coreml(self, prefix=""):
        try:
            return super().export_coreml()
        except NotImplementedError as e:  # coremltools' torch frontend names the op it has no conversion for
            op = re.search(r"op '([^']+)'", str(e))
            raise ExportOpError("coreml", [op[1] if op else str(e)]) from e

    def _check_export(self, f: Path, fmt: str) -> None:
        """The routing ops are in the saved graph (a top-k per deciding router and a gather and a scatter per routed
        block at least), and the runtime loads it."""
        if fmt == "litert":
            from ai_edge_litert.interpreter import Interpreter

            try:
                Interpreter(str(f))
            except ValueError as e:  # "Didn't find op for builtin opcode 'X'": fail now, not on the device
                op = re.search(r"opcode '([^']+)'", str(e))
                raise ExportOpError("litert", [op[1] if op else str(e)]) from e
        if fmt in ROUTING_OPS:
            counts = routing_op_counts(f, fmt)
            if counts["topk"] < self.deciding or min(counts["gather"], counts["scatter"]) < self.routed:
                raise RuntimeError(
                    f"the {fmt} graph lost its routing: {dict(counts)} routing ops for {self.routed} routed blocks"
                )
            LOGGER.info(f"routing kept in the {fmt} graph: {dict(counts)} for {self.routed} routed blocks")
