"""Trainers for routed models. They live in an importable module so Ultralytics' DDP launcher can pickle them."""

from __future__ import annotations

import random
from copy import copy
from pathlib import Path
from types import SimpleNamespace

import torch

from ultralytics.models.yolo.detect import DetectionTrainer
from ultralytics.models.yolo.segment import SegmentationTrainer
from ultralytics.nn.tasks import load_checkpoint
from ultralytics.utils import DEFAULT_CFG, LOGGER, RANK
from ultralytics.utils.torch_utils import unwrap_model

from ..cfg import EXTRA_ARGS, capacity_range, check_bounds, split_extra_args, with_extra_defaults
from ..flops import compute_line
from ..nn.pretrained import load_timm_backbone
from ..nn.routing import dynamic_bounds, record_routing, routed_blocks, set_routing
from ..nn.tasks import MoDDetectionModel, MoDSegmentationModel
from .conveniences import TrainerConveniences
from .val import MoDDetectionValidator, MoDSegmentationValidator


def per_image_training(args) -> tuple[float, float] | None:
    """`dynamic_training=[min, max]` checked against the arguments it cannot go with."""
    bounds = check_bounds(getattr(args, "dynamic_training", None), "dynamic_training")
    if bounds is None:
        return None
    if args.capacity_range or args.capacity_warmup or args.capacity_full_share or args.capacity_distill:
        raise ValueError(
            f"dynamic_training={list(bounds)} chooses k per image; capacity_range, capacity_warmup, "
            f"capacity_full_share and capacity_distill work per batch: give one"
        )
    if not args.router_aux:
        raise ValueError(
            f"dynamic_training={list(bounds)} needs router_aux > 0: the object predictors that choose each image's "
            f"tokens are trained by it"
        )
    return bounds


class MoDDetectionTrainer(TrainerConveniences, DetectionTrainer):
    """Ultralytics' detection trainer for a routed model: the routed model and its timm initialisation, the router and
    predictor learning rates, the capacity schedules and the routing figures (both as callbacks). The rest of what it
    adds to Ultralytics' trainer, none of it routing (the run-folder lock, help for missing data, ...), comes from
    `TrainerConveniences` (engine/conveniences.py)."""

    model_class, validator_class = MoDDetectionModel, MoDDetectionValidator

    def __init__(self, cfg=DEFAULT_CFG, overrides=None, _callbacks=None):
        # mod_vision's keys are checked before Ultralytics' __init__ locks the run folder and loads the data, and are
        # known to this trainer only
        split_extra_args(overrides)
        per_image_training(SimpleNamespace(**{**EXTRA_ARGS, **(overrides or {})}))
        super().__init__(with_extra_defaults(cfg), overrides, _callbacks)
        self.check_capacity_warmup()
        for event, fn in (
            ("on_train_batch_start", training_capacity_callback),
            ("on_fit_epoch_end", routing_plot_epoch),
            ("on_train_end", routing_plot_final),
        ):
            if fn not in self.callbacks[event]:
                self.add_callback(event, fn)

    def check_capacity_warmup(self) -> None:
        """A ramp longer than the run never reaches the capacity the model is validated and saved with: said at start."""
        warmup, epochs = self.args.capacity_warmup or 0, self.args.epochs
        if warmup > epochs and RANK in {-1, 0}:
            LOGGER.warning(
                f"capacity_warmup={warmup} is longer than epochs={epochs}: training stops {epochs / warmup:.0%} of the "
                f"way down the ramp from capacity 1.0, never at the capacity it is validated and saved with"
            )

    def get_model(self, cfg=None, weights=None, verbose=True):
        model = self.model_class(cfg, nc=self.data["nc"], ch=self.data["channels"], verbose=verbose and RANK == -1)
        model = self.set_model_names_for_load(model)
        if weights:
            model.load(weights)
        self.load_timm_weights(model, weights)
        if self.args.capacity is not None:  # also how MoDYOLO.train carries capacities set on a YAML-built model
            model.set_capacity(self.args.capacity)
        if verbose and RANK in {-1, 0}:  # beside Ultralytics' summary line, what the routed model really costs
            LOGGER.info(compute_line(model, self.args.imgsz))
            ungated = [b for b in routed_blocks(model) if b.gate == "none"]
            if ungated and not self.args.router_rank:
                LOGGER.warning(
                    f"router_rank=0: {len(ungated)} routers have no gate, so only the ranking loss trains their "
                    f"scorers, and they would keep their initial weights; train with router_rank=1.0"
                )
        return model

    def load_timm_weights(self, model, weights) -> None:
        """Initialise the backbone from `timm_weights` when training starts from a YAML (not from a checkpoint, whose
        weights already include the backbone, nor on resume)."""
        source = getattr(self.args, "timm_weights", None)
        if not source:
            return
        if weights:
            LOGGER.info(f"timm_weights={source} not loaded: training starts from checkpoint weights")
            return
        load_timm_backbone(model, source, verbose=RANK in {-1, 0})

    def build_optimizer(self, model, *args, **kwargs):
        optimizer = super().build_optimizer(model, *args, **kwargs)
        return routing_param_groups(
            optimizer, model, router=self.args.router_lr_mult, predictor=self.args.predictor_lr_mult
        )

    def set_training_capacity(self) -> None:
        """Capacity for this batch (run by the `on_train_batch_start` callback): elastic (drawn from capacity_range) or
        the model's own, ramped from dense during capacity_warmup epochs; 1.0 for a capacity_full_share of the batches.
        The EMA, and so validation and the saved checkpoint, keep the model's own capacity."""
        model = unwrap_model(self.model)
        if not hasattr(self, "_target_capacities"):
            self._target_capacities = model.capacities()
            self._capacity_rng = random.Random(self.args.seed + max(RANK, 0))
            self._batch_in_epoch, self._epoch_seen = 0, self.epoch
            self._range = capacity_range(self.args.capacity_range)
            self._per_image = per_image_training(self.args)
            for router in routed_blocks(model):  # the training model only: the EMA (val, checkpoints) runs as set
                router.train_dynamic = self._per_image
        if not self._target_capacities or self._per_image:  # a dense model, or k chosen per image
            return
        if self._epoch_seen != self.epoch:
            self._batch_in_epoch, self._epoch_seen = 0, self.epoch
        self._batch_in_epoch += 1
        caps = self._target_capacities
        if self._range:
            caps = [self._capacity_rng.uniform(*self._range)] * len(caps)
        warmup = self.args.capacity_warmup or 0
        if warmup > 0:
            done = min(1.0, (self.epoch + self._batch_in_epoch / max(len(self.train_loader), 1)) / warmup)
            caps = [1.0 - done * (1.0 - c) for c in caps]
        share = self.args.capacity_full_share
        if share and self._capacity_rng.random() < share:
            caps = [1.0] * len(caps)
        # The training model alone (the EMA is a copy made before the first batch). dynamic= keeps its dynamic mode,
        # which a capacity alone would end: a router in training never reads it, but this stays a capacity change
        set_routing(model, capacity=caps, dynamic=dynamic_bounds(model))

    def get_validator(self):
        return self.validator_class(self.test_loader, save_dir=self.save_dir, args=copy(self.args), _callbacks=self.callbacks)

    # Routing heatmaps of a fixed val batch, like Ultralytics' val_batch plots: at the end of training (best.pt) and,
    # with heatmap_period=N, every N epochs (EMA weights). Registered as callbacks so the training loop stays upstream's.
    HEATMAP_IMAGES = 4

    def plot_routing(self, model, fname: str) -> Path | None:
        """Save a figure of the first val images: depth map and each routed block's tokens. None for a dense model."""
        from ..heatmap import panel_figure, routing_maps

        ds = self.test_loader.dataset
        n = min(len(ds), self.HEATMAP_IMAGES, self.test_loader.batch_size)  # one val batch, so one letterbox shape
        batch = ds.collate_fn([ds[i] for i in range(n)])
        p = next(model.parameters())
        model.eval()
        with torch.no_grad(), record_routing() as record:
            model(batch["img"].to(p.device, p.dtype) / 255)
        shape = tuple(batch["img"].shape[2:])
        routings = routing_maps(record, shape, [shape] * n)
        if routings is None:
            return None
        images = batch["img"].permute(0, 2, 3, 1).numpy()[..., ::-1]  # the loader's RGB -> BGR, as OpenCV draws
        rows = [(im, r, Path(f).name) for im, r, f in zip(images, routings, batch["im_file"])]
        path = panel_figure(rows, self.save_dir / fname)
        self.on_plot(path)
        return path


def training_capacity_callback(trainer) -> None:
    if hasattr(trainer, "set_training_capacity"):
        trainer.set_training_capacity()


def routing_plot_epoch(trainer) -> None:
    period, epoch = trainer.args.heatmap_period, trainer.epoch
    if not (trainer.args.plots and period and RANK in {-1, 0} and hasattr(trainer, "plot_routing")):
        return
    # final_eval re-fires on_fit_epoch_end with epoch = epochs; that one is the final plot's business
    if epoch < trainer.epochs and (epoch + 1) % period == 0:
        trainer.plot_routing(trainer.ema.ema, f"routing_val_batch0_epoch{trainer.epoch + 1}.jpg")


def routing_plot_final(trainer) -> None:
    if trainer.args.plots and hasattr(trainer, "plot_routing"):
        model = load_checkpoint(trainer.best, device=trainer.device)[0] if trainer.best.exists() else trainer.ema.ema
        trainer.plot_routing(model, "routing_val_batch0.jpg")


class MoDSegmentationTrainer(MoDDetectionTrainer, SegmentationTrainer):
    model_class, validator_class = MoDSegmentationModel, MoDSegmentationValidator


def routing_param_groups(optimizer, model, **lr_mults: float | None):
    """Move the parameters of each routed block's `router` and/or `predictor` (the keyword names) into param groups of
    their own: copies of their source groups (same decay, same Ultralytics warm-up role) with lr x the multiplier,
    marked with the module name (`g["router"] = True`). A multiplier of 1 (or None) leaves that module where it is.

    Ultralytics' `build_optimizer` makes its groups and constructs the optimizer in one step, with no hook to add
    groups; this runs right after it, before the optimizer has any state, and moves parameters with the optimizer's
    own `add_param_group` rather than building a second optimizer."""
    blocks = routed_blocks(unwrap_model(model))
    for name, lr_mult in lr_mults.items():
        if lr_mult is None:
            continue
        if isinstance(lr_mult, bool) or not isinstance(lr_mult, (int, float)) or lr_mult < 0:
            raise ValueError(f"{name}_lr_mult must be a number >= 0, got {lr_mult!r}")
        if lr_mult == 1:
            continue
        module = {"router": "scorer", "predictor": "predictor"}[name]  # the router's own parts
        parts = [getattr(b, module) for b in blocks]
        mine = {id(p) for part in parts if part is not None for p in part.parameters()}  # routers that decide
        if not mine:
            continue
        for g in list(optimizer.param_groups):
            moved = [p for p in g["params"] if id(p) in mine]
            if moved:
                g["params"] = [p for p in g["params"] if id(p) not in mine]
                optimizer.add_param_group({**g, "params": moved, "lr": g["lr"] * float(lr_mult), name: True})
        LOGGER.info(f"{name}_lr_mult={lr_mult}: {len(mine)} {name} parameters in their own param groups")
    return optimizer


__all__ = ["MoDDetectionTrainer", "MoDSegmentationTrainer", "capacity_range", "routing_param_groups"]
