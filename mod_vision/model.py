"""`MoDYOLO`: the Ultralytics Model interface (train/val/predict/export/info) for token-routed models."""

from __future__ import annotations

from contextlib import contextmanager
from functools import partial
from pathlib import Path
from types import SimpleNamespace

from torch import nn
from ultralytics.engine.model import Model
from ultralytics.utils import LOGGER

from .cfg import EXTRA_ARGS, apply_routing, check_bounds, check_extra_args
from .defaults import DEFAULT_CAPACITIES
from .engine.predict import MoDDetectionPredictor, MoDSegmentationPredictor
from .engine.train import MoDDetectionTrainer, MoDSegmentationTrainer
from .engine.val import MoDDetectionValidator, MoDSegmentationValidator
from .nn.blocks import has_token_products
from .nn.routing import dynamic_bounds, routed_blocks, routing_mode, routing_restorer
from .nn.tasks import (
    MODEL_DIR, MoDDetectionModel, MoDSegmentationModel, check_threshold, find_model_yaml, load_model_yaml,
)


MAX_IMGSZ = 8192  # px per side: the largest imgsz accepted (train/val/predict/export and the CLI)


class UsageError(ValueError):
    """A request that cannot be carried out as given; the `mod-vision` CLI prints it as one line."""


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

    The model's routing is its default: `set_capacity()` and `set_dynamic()` set it (the one set last runs; a static
    capacity ends dynamic mode), and a checkpoint keeps the one it was trained with. The routing arguments of one
    predict or val call (`capacity=`, `dynamic_capacity=`, `routing=`) apply to that call only: the model's default is
    back when the call returns (for `stream=True`, when its generator finishes or is closed).
    """

    _spec = None  # the mod_vision model spec being built by _new

    def __init__(self, model: str | Path = "modvit-det.yaml", task: str | None = None, verbose: bool = False):
        super().__init__(model=model, task=task, verbose=verbose)

    # Model._new is private, but it is where Model.__init__ builds a model from a YAML, with no public hook there
    def _new(self, cfg: str, task=None, verbose=False) -> None:
        # Ultralytics' YAML loader knows neither cfg/models/ nor names with a scale letter ('modvit-det-s.yaml'): it
        # reads the resolved file (for the task), the model class gets mod_vision's spec (see _smart_load), and the
        # name asked for stays the model's name, as Ultralytics records it for a YOLO YAML.
        check_not_stock_yaml(cfg)
        self._spec = load_model_yaml(cfg)
        try:
            super()._new(str(find_model_yaml(cfg)[0]), task=task, verbose=verbose)
        finally:
            self._spec = None
        self.cfg = self.model_name = self.overrides["model"] = self.model.args["model"] = str(cfg)

    # Model._smart_load is private, but it is the one place _new takes the model class from task_map, so the class
    # built can be handed mod_vision's spec
    def _smart_load(self, key: str):
        cls = super()._smart_load(key)
        if key == "model" and self._spec is not None:
            return partial(_build_from_spec, cls, self._spec)
        return cls

    def predict(self, source=None, stream: bool = False, predictor=None, **kwargs):
        check_imgsz(kwargs.get("imgsz"), "predict")
        unwatch = self._static_size_watched(kwargs.get("imgsz"), "on_predict_start")
        try:
            with self._routing_for_call(kwargs) as restore:
                with self._extra_args_known():
                    out = super().predict(source, stream, predictor, **kwargs)
        except BaseException:
            unwatch()
            raise
        if stream:  # a generator has not run yet: its predictor sets the call's routing on the model when it starts
            return restored_after(out, lambda: (restore and restore(), unwatch()))
        unwatch()
        return out

    def val(self, validator=None, **kwargs):
        check_imgsz(kwargs.get("imgsz"), "val")
        unwatch = self._static_size_watched(kwargs.get("imgsz"), "on_val_start")
        try:
            with self._routing_for_call(kwargs):
                return super().val(validator, **kwargs)
        finally:
            unwatch()

    def _static_size_watched(self, asked, event: str):
        """For an exported file, a callback (removed by the returned function) that warns in one line when the file's
        static input size replaced the call's imgsz: Ultralytics' predictor and validator run such a file at its
        exported size whatever imgsz= asks, and say nothing."""
        if asked is None or isinstance(self.model, nn.Module):
            return lambda: None

        def warn(runner):
            ran = runner.imgsz if event == "on_predict_start" else runner.args.imgsz
            if square(ran) != square(asked):
                h, w = square(ran)
                LOGGER.warning(
                    f"imgsz={asked} ignored: {self.model_name} was exported with a static input of {h}x{w} and runs at "
                    f"that size; export with imgsz={asked} (or dynamic=True) to run at another size"
                )

        self.add_callback(event, warn)
        return lambda: warn in self.callbacks[event] and self.callbacks[event].remove(warn)

    @contextmanager
    def _routing_for_call(self, kwargs: dict):
        """Check mod_vision's keys of a predict/val call and put the routing that call runs, in full, in `kwargs`
        (the predictor or validator sets it on the model it runs, which may be a copy); the model's own routing is
        restored on exit. Yields the restoring function (None for a model without routed blocks)."""
        check_extra_args({k: v for k, v in kwargs.items() if k in EXTRA_ARGS})
        capacity, dynamic = kwargs.get("capacity"), kwargs.get("dynamic_capacity")
        if capacity is not None and dynamic:
            raise ValueError(
                f"capacity={capacity} (static top-k) and dynamic_capacity={dynamic} (per-image k) were both given; "
                f"give one"
            )
        if kwargs.get("bf16") is True and isinstance(self.model, nn.Module) and not has_token_products(self.model):
            LOGGER.warning(f"bf16=True changes nothing for {self.model_name}: its blocks are timm's, whose matrix "
                           f"products stay float32 (bf16 runs the products of mod_vision's token layers)")
        if not isinstance(self.model, nn.Module) or not routed_blocks(self.model):
            yield None  # an exported file checks them against its metadata; a dense model has no routing to set
            return
        restore = routing_restorer(self.model)
        try:
            apply_routing(self.model, SimpleNamespace(capacity=capacity, dynamic_capacity=dynamic))
            # both keys, False included: the predictor's or validator's apply_routing then leaves the model it runs
            # (a copy, maybe) routed exactly as this one now is
            bounds = dynamic_bounds(self.model)
            kwargs["capacity"] = routed_capacities(self.model)
            kwargs["dynamic_capacity"] = list(bounds) if bounds else False
            yield restore
        finally:
            restore()

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
        check_imgsz(kwargs.get("imgsz"), "train")
        if kwargs.get("cfg"):
            kwargs["cfg"] = find_cfg_yaml(kwargs["cfg"])
        resume = kwargs.get("resume")
        if resume is True:
            check_resumable(self.ckpt, self.ckpt_path or self.model_name)
        elif isinstance(resume, (str, Path)) and Path(resume).is_file():
            from ultralytics.nn.tasks import torch_safe_load

            check_resumable(torch_safe_load(resume)[0], resume)
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

        self._check_is_pytorch_model()  # private in Model: its own guard, so the error is the one train/export give
        self.timm_report = load_timm_backbone(self.model, source)
        self.timm_weights = str(source)
        return self

    def info(self, detailed: bool = False, verbose: bool = True, imgsz: int = 640):
        """Ultralytics' summary, then routing-aware GFLOPs at imgsz: now, and across capacities 1.0/0.5/0.25/0.125."""
        from .flops import capacity_table, gflops

        out = super().info(detailed=detailed, verbose=verbose)
        now = gflops(self.model, imgsz)
        table = capacity_table(self.model, imgsz)
        if verbose:
            caps = ", ".join(f"{c:g}" for c in routed_capacities(self.model)) or "dense: no routed blocks"
            routing = f"capacities: {caps}"
            if routing_mode(self.model) == "dynamic":
                routing = f"per-image budget {list(routed_blocks(self.model)[0].dynamic)}, on a zero image"
            LOGGER.info(f"routing-aware GFLOPs at {imgsz}: {now:.2f} ({routing})")
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

        check_imgsz(kwargs.get("imgsz"), "export")
        self._check_is_pytorch_model()  # private in Model: Model.export runs it first; this replaces Model.export
        custom = {"imgsz": self.model.args["imgsz"], "batch": 1, "data": None, "device": None, "verbose": False}
        args = {**self.overrides, **custom, **kwargs, "mode": "export"}  # Model.export's precedence
        return MoDExporter(overrides=args, _callbacks=self.callbacks)(model=self.model)

    def set_capacity(self, capacity) -> MoDYOLO:
        """Set the model's default routed-block capacity, globally (float) or per routed block (list or
        {index: capacity}); this ends dynamic mode (`set_routing(capacity=)`: the routing that runs is the one set
        last)."""
        self.model.set_capacity(capacity)
        return self

    def set_dynamic(self, bounds, threshold: float | None = None) -> MoDYOLO:
        """Make dynamic per-image k the model's default (what `dynamic_capacity=` does for one call): each image takes
        as many tokens as its predictors find on objects (logit above `threshold`; None keeps the model's, its YAML's
        `dynamic_threshold`), within `bounds` = [min, max] capacities; None or False returns to static top-k at the set
        capacities."""
        self._check_is_pytorch_model()  # private in Model: its own guard, so the error is the one train/export give
        threshold = None if threshold is None else check_threshold(threshold)
        self.model.set_dynamic(check_bounds(bounds, "dynamic_capacity"), threshold)
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


def square(imgsz) -> tuple[int, int]:
    """An imgsz (one side, or [h, w]) as (h, w)."""
    return tuple(imgsz) * (3 - len(imgsz)) if isinstance(imgsz, (list, tuple)) else (imgsz, imgsz)


def restored_after(results, restore):
    """Yield from a predict generator, then (finished, failed or closed) restore the model's routing."""
    try:
        yield from results
    finally:
        restore()


def check_resumable(ckpt: dict | None, name) -> None:
    """Refuse a resume that Ultralytics would turn into a new training from scratch settings (after a warning) or
    fail late on: resume continues an unfinished training from its weights/last.pt. Raised before any run folder is
    made."""
    if not ckpt:
        raise UsageError(
            f"resume=True continues an unfinished training from its weights/last.pt; {name} is a model YAML, there is "
            f"no training to resume: train without resume=True"
        )
    if ckpt.get("epoch", -1) < 0 or ckpt.get("optimizer") is None:
        epochs = (ckpt.get("train_args") or {}).get("epochs")
        done = f"its training to {epochs} epochs is finished" if epochs else "it holds no training state"
        raise UsageError(
            f"{name} cannot be resumed: {done}, nothing to resume. Start a new training from its weights without "
            f"resume=True (model={name})"
        )


def find_cfg_yaml(cfg: str | Path) -> str:
    """A `cfg=` file (training defaults, e.g. cfg/recipe-routed.yaml): as given where it exists relative to the working
    directory, else in the repository's cfg/ folder, so the name the README gives works from any directory, as model
    YAML names do ('cfg/recipe-routed.yaml' or 'recipe-routed.yaml')."""
    path = Path(cfg)
    candidates = [path, MODEL_DIR.parents[1] / path, MODEL_DIR.parent / path.name]
    found = next((p for p in candidates if p.is_file()), None)
    if found is None:
        raise UsageError(f"cfg={cfg} not found; looked in {', '.join(dict.fromkeys(str(p) for p in candidates))}")
    return str(found)


def check_imgsz(imgsz, mode: str) -> None:
    """Refuse an imgsz above MAX_IMGSZ on either side before anything is allocated (one image at imgsz=100000 needs
    tens of GB before the model sees it)."""
    sizes = imgsz if isinstance(imgsz, (list, tuple)) else [imgsz]
    if any(isinstance(x, (int, float)) and not isinstance(x, bool) and x > MAX_IMGSZ for x in sizes):
        raise UsageError(
            f"{mode}: imgsz={imgsz!r} is above the limit of {MAX_IMGSZ} px per side; give imgsz <= {MAX_IMGSZ}"
        )


def stock_ultralytics_yaml(cfg) -> str | None:
    """The Ultralytics class that loads `cfg` when it names a model YAML Ultralytics ships (yolo11n.yaml,
    rtdetr-l.yaml, ...) and is not a file on disk; else None. mod_vision's own YAMLs are named hybrid*/modvit*."""
    import re

    import ultralytics

    path = Path(str(cfg))
    if path.suffix not in {".yaml", ".yml"} or path.exists():
        return None
    shipped = {f.stem for f in (Path(ultralytics.__file__).parent / "cfg" / "models").rglob("*.y*ml")}
    unscaled = re.sub(r"(\d+)([nslmx])(.+)?$", r"\1\3", path.stem)  # yolo11n -> yolo11, as Ultralytics reads it
    if path.stem not in shipped and unscaled not in shipped:
        return None
    return "RTDETR" if path.stem.startswith("rtdetr") else "YOLO"


def check_not_stock_yaml(cfg) -> None:
    cls = stock_ultralytics_yaml(cfg)
    if cls:
        raise UsageError(
            f"{cfg} is a stock Ultralytics model, not a mod_vision one: load it with ultralytics.{cls}('{cfg}'). "
            f"MoDYOLO builds mod_vision's routed models, e.g. MoDYOLO('hybrid11p-det.yaml')"
        )


def _build_from_spec(cls, spec: dict, cfg_dict: dict, **kwargs):
    """Build a mod_vision model class from mod_vision's spec of the YAML, not Ultralytics' reading of it."""
    return cls(spec, **kwargs)
