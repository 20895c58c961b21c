"""Validators that add COCO metrics (from the dataset's own COCO json) and the routed token share to Ultralytics'."""

from __future__ import annotations

from pathlib import Path

import torch
from ultralytics.data.utils import check_det_dataset
from ultralytics.models.yolo.detect import DetectionValidator
from ultralytics.models.yolo.segment import SegmentationValidator
from ultralytics.utils import LOGGER
from ultralytics.utils.metrics import DetMetrics, SegmentMetrics

from ..cfg import EXTRA_ARGS, apply_policy, split_extra_args
from ..data import with_missing_help
from ..nn.blocks import bf16_products
from ..nn.routing import DYNAMIC, STATIC, record_routing, routing_mode, set_routing, token_share
from .routing_metrics import RoutingQuality
from .coco_eval import COCO_METRICS, COCOEvalError, coco_category_ids, coco_evaluate, coco_image_ids, coco_json_for, load_coco_json
from .export import apply_or_check_routing, exported_token_share
from .results import capacities_that_ran


class RoutedDetMetrics(DetMetrics):
    """Ultralytics' detection metrics and what the validation of a routed model adds to them.

    `results_dict` also holds the COCO metrics and the routing columns (`routing_results`); `keys`, `fitness` and
    `summary` stay Ultralytics' (the summary is per class, and routing is per routed block, not per class).

    Attributes:
        coco (dict[str, float]): COCO AP/AP50/AP75/APs/APm/APl against the data's COCO json, as
            {'metrics/coco_AP(B)': ...} (masks as (M)); empty without a json. A failed COCO evaluation raises
            COCOEvalError: it never leaves this empty as if none had been asked for.
        coco_json (Path | None): the json scored against; None: no COCO metrics were asked for, and
            `coco_eval.box_ap` gives Ultralytics' mAP, named so.
        token_share (float | None): the mean share of routed-block tokens processed; None for a dense model. An
            exported model's is exact, from the capacities in its metadata (static top-k).
        routing (dict[str, list[dict]]): routing quality per image kind ('all', and each background kind the COCO
            json records, e.g. 'flat', 'textured'): per routed block, its object_lift, object_recall and padding_share
            (None where undefined); empty for a dense or an exported model.
        capacity_mode (str | None): "static" or "dynamic"; None for a dense model.
        capacity (list[float]): per routed block, the capacity that ran: the set one in static mode, the mean measured
            share over the images in dynamic mode; empty for a dense model.
    """

    def __init__(self, names: dict[int, str] | None = None) -> None:
        super().__init__(names)
        self.start(None, None, [])

    def start(self, coco_json: Path | None, capacity_mode: str | None, capacity: list[float]) -> None:
        """Clear the routing and COCO fields for a new validation (the trainer's validator runs every epoch)."""
        self.coco, self.coco_json, self.token_share, self.routing = {}, coco_json, None, {}
        self.capacity_mode, self.capacity = capacity_mode, capacity

    @property
    def routing_results(self) -> dict[str, float]:
        """The routing columns of results.csv: `routing/token_share` and, per routed block j over all images,
        `routing/object_lift_b<j>`, `routing/object_recall_b<j>`, `routing/padding_share_b<j>`. An undefined value
        (a block that processed no token, as a per-image budget with a min of 0 allows; data with no object) is 0,
        never NaN, and never left out: the trainer writes results.csv's header at its first epoch, so every epoch must
        give the same columns."""
        out = {} if self.token_share is None else {"routing/token_share": self.token_share}
        for j, block in enumerate(self.routing.get("all", [])):
            out.update({f"routing/{k}_b{j}": 0.0 if v is None else v for k, v in block.items()})
        return out

    @property
    def results_dict(self) -> dict[str, float]:
        return {**super().results_dict, **self.coco, **self.routing_results}


class RoutedSegmentMetrics(RoutedDetMetrics, SegmentMetrics):
    """Ultralytics' segmentation metrics with the routed fields of `RoutedDetMetrics` (COCO metrics for masks too)."""


class RoutedValidatorMixin:
    """COCO AP/AP50/AP75/APs/APm/APl against the json annotations, and the routed token share and routing quality,
    beside Ultralytics' metrics: `model.val()` returns a `RoutedDetMetrics` (`RoutedSegmentMetrics`). Asking an
    exported model for another capacity than its own raises, as predict does.

    Ultralytics rebuilds ground truth from YOLO labels for custom detect data and looks for an LVIS file for custom
    segment data; evaluating against the dataset's own COCO json instead is what a COCO user expects, and it covers
    masks too.
    """

    iou_types = {"bbox": "B"}
    metrics_class = RoutedDetMetrics
    routing_record = anno_json = None
    _is_custom_json = False

    def __init__(self, dataloader=None, save_dir=None, args=None, _callbacks=None):
        # Ultralytics' validator checks its args against its own defaults: mod_vision's keys are taken out, checked
        # (before any data loads) and put back with their defaults
        args, ours = split_extra_args(args)
        super().__init__(dataloader, save_dir, args, _callbacks)
        for k, v in {**EXTRA_ARGS, **ours}.items():
            setattr(self.args, k, v)
        self.metrics = self.metrics_class()

    # Ultralytics rebuilds ground truth from the YOLO labels when save_json is on for data that is neither COCO nor
    # LVIS (its "custom json"); with the dataset's own COCO json there is nothing to rebuild.
    @property
    def is_custom_json(self) -> bool:
        return self._is_custom_json and not self.anno_json

    @is_custom_json.setter
    def is_custom_json(self, value: bool) -> None:
        self._is_custom_json = value

    def __call__(self, trainer=None, model=None):
        if trainer is None:  # a trainer's validator gets the trainer's data, checked there
            self.check_dataset()
        try:
            # bf16 is a val/predict key: validation inside training stays float32 (an exported model refuses it in
            # its routing check)
            bf16 = trainer is None and getattr(self.args, "bf16", False)
            with record_routing() as self.routing_record, bf16_products(bf16):
                return super().__call__(trainer, model)
        finally:  # routing="random" or "none" is this validation's control, not a lasting change to the model
            if getattr(self, "policy_model", None) is not None:
                set_routing(self.policy_model, policy="topk")
                self.policy_model = None

    def check_dataset(self) -> None:
        """A data YAML whose images are missing raises `DatasetNotFound` with the YAML's `missing_help` (how to get
        COCO), as the trainer does. Ultralytics' validator checks the data inline in its `__call__`, after the model
        loads and with no method to override, so the same check runs here first; a dataset on disk passes unchanged and
        Ultralytics' own check then runs as before."""
        data = self.args.data
        if self.args.task == "classify" or not str(data).endswith((".yaml", ".yml")):
            return  # Ultralytics' other data forms (ndjson, classify folders) are converted and checked by it alone
        try:
            check_det_dataset(data, split=self.args.split)
        except FileNotFoundError as e:
            raise with_missing_help(e, data) from e

    def preprocess(self, batch):
        if self.routing_record is not None:
            self.routing_record.take()  # what ran before this batch's forward (warm-up) is not this batch's
        return super().preprocess(batch)

    def init_metrics(self, model: torch.nn.Module) -> None:
        self.anno_json = coco_json_for(self.data, self.args.split or "val")
        if self.anno_json:
            self.args.save_json = True
        super().init_metrics(model)
        self.exported = apply_or_check_routing(model, self.args)  # routing of an exported file, else None
        self.token_shares, self.block_shares, self.routing_model = [], [], model
        mode = STATIC if self.exported else routing_mode(model)
        capacity = self.exported["capacity"] if self.exported else capacities_that_ran(model, [], 1)[0]
        self.metrics.start(self.anno_json, mode, capacity)
        self.routing_quality = RoutingQuality()
        self.backgrounds = {}  # image file name -> background kind, where the COCO json records one (sample data)
        if not self.exported:
            self.policy_model = model
            apply_policy(model, getattr(self.args, "routing", None), self.args.seed)
        if self.anno_json:
            self.map_to_coco_json()

    def update_metrics(self, preds, batch) -> None:
        if self.exported:
            n = len(batch["im_file"])
            share = torch.full((n,), exported_token_share(self.exported, batch["img"].shape[-2:]), dtype=torch.float64)
        else:
            entries = self.routing_record.take() if self.routing_record is not None else []
            share = token_share(entries)
            if entries and self.metrics.capacity_mode == DYNAMIC:
                self.block_shares += capacities_that_ran(self.routing_model, entries, len(batch["im_file"]))
            if entries:
                kinds = [self.backgrounds.get(Path(f).name, "all") for f in batch["im_file"]]
                self.routing_quality.update(entries, batch, kinds)
        if share is not None:
            self.token_shares.append(share)
        super().update_metrics(preds, batch)

    def get_stats(self) -> dict:
        # the routing fields are set after Ultralytics' stats are read from results_dict, so results.csv keeps
        # Ultralytics' columns (and, in training with a COCO json, its COCO ones) first and the routing columns last
        stats = super().get_stats()
        self.metrics.token_share = float(torch.cat(self.token_shares).mean()) if self.token_shares else None
        if self.block_shares:  # dynamic mode: the mean measured share per block
            self.metrics.capacity = torch.tensor(self.block_shares, dtype=torch.float64).mean(0).tolist()
        self.metrics.routing = self.routing_quality.summary()
        return {**stats, **self.metrics.routing_results}

    def print_results(self) -> None:
        super().print_results()
        if self.metrics.token_share is not None:  # routing at a glance, each epoch in training too
            LOGGER.info(f"{'routed token share':>22s} {self.metrics.token_share:10.3f}")
        for kind, blocks in self.metrics.routing.items():
            text = "  ".join(
                f"b{j} lift {fmt(b['object_lift'])} recall {fmt(b['object_recall'])} pad {fmt(b['padding_share'])}"
                for j, b in enumerate(blocks)
            )
            LOGGER.info(f"{'routing (' + kind + ')':>22s} {text}")

    def map_to_coco_json(self) -> None:
        """Class index -> the json's category id (Ultralytics' `class_map`, which `pred_to_json` writes) and val image
        -> the json's image id, both checked before any inference: a mismatch fails now, not as silently wrong AP."""
        key = (self.anno_json, self.anno_json.stat().st_mtime_ns)
        if getattr(self, "_coco_key", None) != key:  # the trainer's validator runs every epoch: read the json once
            self._coco_gt, self._coco_key = load_coco_json(self.anno_json), key
        if len(self.names) != len(self.data["names"]):  # predicted classes would index past the json's categories
            raise ValueError(
                f"the model predicts {len(self.names)} classes but the data YAML {self.data.get('yaml_file', '')} names "
                f"{len(self.data['names'])}: COCO metrics against {self.anno_json} need the model trained on these classes"
            )
        self.class_map = coco_category_ids(self._coco_gt["categories"], self.data["names"], self.anno_json)
        self.coco_image_ids = coco_image_ids(self._coco_gt["images"], self.dataloader.dataset.im_files, self.anno_json)
        self.backgrounds = {Path(str(im.get("file_name", ""))).name: im["background"] for im in self._coco_gt["images"]
                            if im.get("background")}  # fmt: skip

    def pred_to_json(self, predn, pbatch) -> None:
        start = len(self.jdict)
        super().pred_to_json(predn, pbatch)
        if self.anno_json:
            image_id = self.coco_image_ids.get(pbatch["im_file"])
            if image_id is None:  # not in the json (warned at init_metrics): nothing to score it against
                del self.jdict[start:]
            for p in self.jdict[start:]:
                p["image_id"] = image_id

    def eval_json(self, stats: dict) -> dict:
        if not self.anno_json:
            return super().eval_json(stats)
        ids = sorted(set(self.coco_image_ids.values()))
        for iou_type, suffix in self.iou_types.items():
            try:  # the full COCO table once, at the final validation; each epoch's line below is enough in training
                coco = coco_evaluate(self.anno_json, self.jdict, iou_type, img_ids=ids, verbose=not self.training)
            except Exception as e:
                # the data asks for COCO metrics: a run without them must not pass as one with them (tools would
                # report Ultralytics' mAP where COCO AP was asked for)
                raise COCOEvalError(
                    f"COCO {iou_type} evaluation against {self.anno_json} failed: {type(e).__name__}: {e}. The data "
                    f"YAML names this json for COCO metrics: fix the json, or remove its coco_json entry to validate "
                    f"with Ultralytics' mAP only"
                ) from e
            coco = {f"metrics/coco_{k}({suffix})": v for k, v in coco.items()}
            stats.update(coco)
            self.metrics.coco.update(coco)  # Model.val() returns self.metrics, not the stats dict
            LOGGER.info(f"COCO {iou_type} ({self.anno_json.name}): " + "  ".join(f"{k} {v:.4f}" for k, v in coco.items()))
        return stats


def fmt(v) -> str:
    return "-" if v is None else f"{v:.2f}"


class MoDDetectionValidator(RoutedValidatorMixin, DetectionValidator):
    pass


class MoDSegmentationValidator(RoutedValidatorMixin, SegmentationValidator):
    iou_types = {"bbox": "B", "segm": "M"}
    metrics_class = RoutedSegmentMetrics


__all__ = [
    "COCO_METRICS", "MoDDetectionValidator", "MoDSegmentationValidator", "RoutedDetMetrics", "RoutedSegmentMetrics"
]
