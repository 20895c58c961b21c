"""`MoDYOLO`: the Ultralytics Model interface (train/val/predict/export/info) for token-routed models."""

from __future__ import annotations

from contextlib import contextmanager
from functools import partial
from pathlib import Path
from types import SimpleNamespace

from torch import nn
from ultralytics.engine.model import Model

from .cfg import EXTRA_ARGS, apply_routing, check_extra_args
from .defaults import DEFAULT_CAPACITIES
from .engine.predict import MoDDetectionPredictor, MoDSegmentationPredictor
from .engine.results import routing_mode
from .engine.train import MoDDetectionTrainer, MoDSegmentationTrainer
from .engine.val import MoDDetectionValidator, MoDSegmentationValidator
from .nn.routing import routed_blocks
from .nn.tasks import MoDDetectionModel, MoDSegmentationModel, find_model_yaml, load_model_yaml


def routed_capacities(model) -> list[float]:
    """Capacities of the routed blocks, [] for a model without any (also a stock Ultralytics model)."""
    return [b.capacity for b in routed_blocks(model)]


class MoDYOLO(Model):
    """Like `YOLO`, for mod_vision YAMLs and checkpoints.

    Examples:
        >>> model = MoDYOLO("modvit-det.yaml")  # or "modvit-det-s.yaml" for scale s, or a path
        >>> model.train(data="data/sample.yaml", epochs=1, imgsz=160)
        >>> results = model.predict("bus.jpg", capacity=0.25)  # a compute budget chosen at predict time
        >>> results[0].token_share

    The routing that runs is the one set last, by `set_capacity()`, or by `capacity=` / `dynamic_capacity=` given to
    predict or val (which set it on the model, as set_capacity does). A static capacity ends dynamic mode.
    """

    _spec = None  # the mod_vision model spec being built by _new

    def __init__(self, model: str | Path = "modvit-det.yaml", task: str | None = None, verbose: bool = False):
        super().__init__(model=model, task=task, verbose=verbose)

    def _new(self, cfg: str, task=None, verbose=False) -> None:
        # Ultralytics' YAML loader knows neither cfg/models/ nor names with a scale letter ('modvit-det-s.yaml'): it
        # reads the resolved file (for the task), the model class gets mod_vision's spec (see _smart_load), and the
        # name asked for stays the model's name, as Ultralytics records it for a YOLO YAML.
        self._spec = load_model_yaml(cfg)
        try:
            super()._new(str(find_model_yaml(cfg)[0]), task=task, verbose=verbose)
        finally:
            self._spec = None
        self.cfg = self.model_name = self.overrides["model"] = self.model.args["model"] = str(cfg)

    def _smart_load(self, key: str):
        cls = super()._smart_load(key)
        if key == "model" and self._spec is not None:
            return partial(_build_from_spec, cls, self._spec)
        return cls

    def predict(self, source=None, stream: bool = False, predictor=None, **kwargs):
        kwargs.update(self._routing_for_call(kwargs))
        with self._extra_args_known():
            return super().predict(source, stream, predictor, **kwargs)

    def val(self, validator=None, **kwargs):
        kwargs.update(self._routing_for_call(kwargs))
        return super().val(validator, **kwargs)

    def _routing_for_call(self, kwargs: dict) -> dict:
        """Check mod_vision's keys of a predict/val call and set the routing they ask for on this model; return the
        routing now in force, in full, for the predictor or validator to run (it runs a copy of the model)."""
        check_extra_args({k: v for k, v in kwargs.items() if k in EXTRA_ARGS})
        capacity, dynamic = kwargs.get("capacity"), kwargs.get("dynamic_capacity")
        if capacity is not None and dynamic:
            raise ValueError(
                f"capacity={capacity} (static top-k) and dynamic_capacity={dynamic} (per-image k) were both given; "
                f"give one: the routing that runs is the one set last"
            )
        if not isinstance(self.model, nn.Module) or not routed_blocks(self.model):
            return {}  # an exported file checks them against its metadata; a dense model has no routing to set
        apply_routing(self.model, SimpleNamespace(capacity=capacity, dynamic_capacity=dynamic))
        blocks = routed_blocks(self.model)
        return {
            "capacity": [b.capacity for b in blocks],
            "dynamic_capacity": list(blocks[0].dynamic) if routing_mode(self.model) == "dynamic" else False,
        }

    @contextmanager
    def _extra_args_known(self):
        """When Model.predict reuses its predictor, it checks the call's arguments against Ultralytics' defaults plus
        `self.overrides`: mod_vision's keys are made known there for this call only, not in Ultralytics' defaults."""
        overrides = self.overrides
        self.overrides = {**EXTRA_ARGS, **overrides}
        try:
            yield
        finally:
            self.overrides = overrides

    def train(self, trainer=None, **kwargs):
        # Ultralytics rebuilds a YAML-built model from its YAML path inside the trainer; pass on the capacities set
        # on this one so they are not silently reset.
        if not self.ckpt and kwargs.get("capacity") is None and self.model.yaml.get("capacities"):
            kwargs["capacity"] = self.model.yaml["capacities"]
        if not self.ckpt and not kwargs.get("timm_weights") and getattr(self, "timm_weights", None):
            kwargs["timm_weights"] = self.timm_weights  # for the same reason: the trainer loads them again
        return super().train(trainer=trainer, **kwargs)

    def load_timm(self, source: str | Path) -> MoDYOLO:
        """Initialise the ViT backbone from a timm ViT (a timm model name, or a local .safetensors/.pth file).

        `train()` then starts from these weights too (it passes them on as `timm_weights`); the report of what was
        loaded is `self.timm_report`. For other normalisation options, see `mod_vision.nn.pretrained.load_timm_backbone`.
        """
        from .nn.pretrained import load_timm_backbone

        self._check_is_pytorch_model()
        self.timm_report = load_timm_backbone(self.model, source)
        self.timm_weights = str(source)
        return self

    def info(self, detailed: bool = False, verbose: bool = True, imgsz: int = 640):
        """Ultralytics' summary, then routing-aware GFLOPs at imgsz: now, and across capacities 1.0/0.5/0.25/0.125."""
        from ultralytics.utils import LOGGER

        from .flops import capacity_table, gflops

        out = super().info(detailed=detailed, verbose=verbose)
        now = gflops(self.model, imgsz)
        table = capacity_table(self.model, imgsz)
        if verbose:
            caps = ", ".join(f"{c:g}" for c in routed_capacities(self.model)) or "dense: no routed blocks"
            LOGGER.info(f"routing-aware GFLOPs at {imgsz}: {now:.2f} (capacities: {caps})")
            for c, g in table:
                LOGGER.info(f"  capacity {c:<6g} {g:8.2f} GFLOPs")
        return {"summary": out, "gflops": now, "capacity_gflops": dict(table)}

    def val_sweep(self, capacities=DEFAULT_CAPACITIES, **kwargs):
        """Validate at each capacity; returns (rows, save_dir) and writes a mAP-vs-capacity table (csv, md) and plot."""
        from .engine.sweep import capacity_sweep

        return capacity_sweep(self, capacities, **kwargs)

    def export(self, **kwargs) -> str:
        """Ultralytics' export (same arguments and defaults) through `MoDExporter`: the static top-k routing stays in
        the graph, `capacity=` fixes the capacities exported, and they are written to the file's metadata."""
        from .engine.export import MoDExporter

        self._check_is_pytorch_model()
        custom = {"imgsz": self.model.args["imgsz"], "batch": 1, "data": None, "device": None, "verbose": False}
        args = {**self.overrides, **custom, **kwargs, "mode": "export"}  # Model.export's precedence
        return MoDExporter(overrides=args, _callbacks=self.callbacks)(model=self.model)

    def set_capacity(self, capacity) -> MoDYOLO:
        """Set routed-block capacity globally (float) or per routed block (list or {index: capacity}); this ends
        dynamic mode (the routing that runs is the one set last)."""
        self.model.set_capacity(capacity)
        return self

    @property
    def task_map(self) -> dict:
        return {
            "detect": {
                "model": MoDDetectionModel,
                "trainer": MoDDetectionTrainer,
                "validator": MoDDetectionValidator,
                "predictor": MoDDetectionPredictor,
            },
            "segment": {
                "model": MoDSegmentationModel,
                "trainer": MoDSegmentationTrainer,
                "validator": MoDSegmentationValidator,
                "predictor": MoDSegmentationPredictor,
            },
        }


def _build_from_spec(cls, spec: dict, cfg_dict: dict, **kwargs):
    """Build a mod_vision model class from mod_vision's spec of the YAML, not Ultralytics' reading of it."""
    return cls(spec, **kwargs)
