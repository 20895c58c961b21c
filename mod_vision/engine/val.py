"""Validators that add COCO metrics (from the dataset's own COCO json) and the routed token share to Ultralytics'."""

from __future__ import annotations

from pathlib import Path

import torch
from ultralytics.models.yolo.detect import DetectionValidator
from ultralytics.models.yolo.segment import SegmentationValidator
from ultralytics.utils import LOGGER

from ..cfg import EXTRA_ARGS, split_extra_args
from ..nn.routing import token_share
from .coco_eval import COCO_METRICS, coco_evaluate, coco_json_for
from .export import apply_or_check_routing, exported_token_share
from .results import STATIC, capacities_that_ran, routing_mode


class RoutedValidatorMixin:
    """COCO AP/AP50/AP75/APs/APm/APl against the json annotations, plus `routing/token_share` in the stats.

    `model.val()` returns Ultralytics' metrics object with more attributes: `coco` ({'metrics/coco_AP(B)': ...}, masks
    as (M)), `token_share` (mean share of routed-block tokens processed; None for dense models), `capacity_mode`
    ("static" or "dynamic"; None for dense models) and `capacity` (per routed block, the capacity that ran: the set one
    in static mode, the mean measured share over the images in dynamic mode). An exported model's share is exact, from
    the capacities in its metadata (static top-k), and asking it for another capacity raises, as predict does.

    Ultralytics rebuilds ground truth from YOLO labels for custom detect data and looks for an LVIS file for custom
    segment data; evaluating against the dataset's own COCO json instead is what a COCO user expects, and it covers
    masks too.
    """

    iou_types = {"bbox": "B"}
    anno_json, _is_custom_json = None, False

    def __init__(self, dataloader=None, save_dir=None, args=None, _callbacks=None):
        # Ultralytics' validator checks its args against its own defaults: mod_vision's keys are taken out, checked
        # (before any data loads) and put back with their defaults
        args, ours = split_extra_args(args)
        super().__init__(dataloader, save_dir, args, _callbacks)
        for k, v in {**EXTRA_ARGS, **ours}.items():
            setattr(self.args, k, v)

    # Ultralytics rebuilds ground truth from the YOLO labels when save_json is on for data that is neither COCO nor
    # LVIS (its "custom json"); with the dataset's own COCO json there is nothing to rebuild.
    @property
    def is_custom_json(self) -> bool:
        return self._is_custom_json and not self.anno_json

    @is_custom_json.setter
    def is_custom_json(self, value: bool) -> None:
        self._is_custom_json = value

    def init_metrics(self, model: torch.nn.Module) -> None:
        self.anno_json = coco_json_for(self.data, self.args.split or "val")
        if self.anno_json:
            self.args.save_json = True
        super().init_metrics(model)
        self.exported = apply_or_check_routing(model, self.args)  # routing of an exported file, else None
        self.routing_model = model
        self.token_shares, self.block_shares = [], []
        self.metrics.coco, self.metrics.token_share = {}, None
        self.metrics.capacity_mode = STATIC if self.exported else routing_mode(model)
        self.metrics.capacity = self.exported["capacity"] if self.exported else capacities_that_ran(model, 1)[0]

    def update_metrics(self, preds, batch) -> None:
        if self.exported:
            n = len(batch["im_file"])
            share = torch.full((n,), exported_token_share(self.exported, batch["img"].shape[-2:]), dtype=torch.float64)
        else:
            share = token_share(self.routing_model)
            if share is not None:
                self.block_shares += capacities_that_ran(self.routing_model, len(share))
        if share is not None:
            self.token_shares.append(share)
        super().update_metrics(preds, batch)

    def get_stats(self) -> dict:
        stats = super().get_stats()
        self.metrics.token_share = float(torch.cat(self.token_shares).mean()) if self.token_shares else None
        if self.block_shares and self.metrics.capacity_mode == "dynamic":
            self.metrics.capacity = torch.tensor(self.block_shares, dtype=torch.float64).mean(0).tolist()
        if self.metrics.token_share is not None:
            stats["routing/token_share"] = self.metrics.token_share
        return stats

    def eval_json(self, stats: dict) -> dict:
        if not self.anno_json:
            return super().eval_json(stats)
        ids = [int(Path(f).stem) for f in self.dataloader.dataset.im_files if Path(f).stem.isnumeric()]
        for iou_type, suffix in self.iou_types.items():
            try:
                coco = coco_evaluate(self.anno_json, self.jdict, iou_type, img_ids=ids)
            except Exception as e:  # a metric failure must not lose the Ultralytics metrics already computed
                LOGGER.warning(f"COCO {iou_type} evaluation against {self.anno_json} failed: {e}")
                continue
            coco = {f"metrics/coco_{k}({suffix})": v for k, v in coco.items()}
            stats.update(coco)
            self.metrics.coco.update(coco)  # Model.val() returns self.metrics, not the stats dict
            LOGGER.info(f"COCO {iou_type} ({self.anno_json.name}): " + "  ".join(f"{k} {v:.4f}" for k, v in coco.items()))
        return stats


class MoDDetectionValidator(RoutedValidatorMixin, DetectionValidator):
    pass


class MoDSegmentationValidator(RoutedValidatorMixin, SegmentationValidator):
    iou_types = {"bbox": "B", "segm": "M"}


__all__ = ["COCO_METRICS", "MoDDetectionValidator", "MoDSegmentationValidator"]
