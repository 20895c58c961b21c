"""`MoDYOLO`: the Ultralytics Model interface (train/val/predict/export/info) for token-routed models."""

from __future__ import annotations

from pathlib import Path

from ultralytics.engine.model import Model
from ultralytics.nn.tasks import guess_model_task
from ultralytics.utils import DEFAULT_CFG_DICT, RANK

from .defaults import DEFAULT_CAPACITIES
from .engine.predict import MoDDetectionPredictor, MoDSegmentationPredictor
from .engine.train import MoDDetectionTrainer, MoDSegmentationTrainer
from .engine.val import MoDDetectionValidator, MoDSegmentationValidator
from .nn.routing import routed_blocks
from .nn.tasks import MoDDetectionModel, MoDSegmentationModel, load_model_yaml


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
    """

    def __init__(self, model: str | Path = "modvit-det.yaml", task: str | None = None, verbose: bool = False):
        super().__init__(model=model, task=task, verbose=verbose)

    def _new(self, cfg: str, task=None, model=None, verbose=False) -> None:
        """Build from a YAML; as Model._new, but resolving mod_vision names and scales (see load_model_yaml)."""
        cfg_dict = load_model_yaml(cfg)
        self.cfg = cfg
        self.task = task or guess_model_task(cfg_dict)
        self.model = (model or self._smart_load("model"))(cfg_dict, verbose=verbose and RANK == -1)
        self.overrides["model"] = self.cfg
        self.overrides["task"] = self.task
        self.model.args = {**DEFAULT_CFG_DICT, **self.overrides}  # lets export run from a YAML-built model
        self.model.task = self.task
        self.model_name = cfg

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
        """Set routed-block capacity globally (float) or per routed block (list or {index: capacity})."""
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
