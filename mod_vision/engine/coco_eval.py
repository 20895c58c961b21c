"""COCO metrics from a COCO-format annotation json, through faster-coco-eval (the evaluator Ultralytics itself uses)."""

from __future__ import annotations

from pathlib import Path

from ultralytics.utils import LOGGER

# our name -> faster-coco-eval's stats_as_dict key
COCO_METRICS = {"AP": "AP_all", "AP50": "AP_50", "AP75": "AP_75", "APs": "AP_small", "APm": "AP_medium", "APl": "AP_large"}


def coco_evaluate(anno: str | Path | dict, predictions: list[dict], iou_type: str = "bbox", img_ids=None, verbose=True):
    """Evaluate COCO-format predictions against ground truth; returns {AP, AP50, AP75, APs, APm, APl}.

    Args:
        anno: annotation json path, or the loaded dict.
        predictions: COCO result dicts (image_id, category_id, score, and bbox or segmentation).
        iou_type: 'bbox' or 'segm'.
        img_ids: evaluate on these image ids only (the images the validator saw); default all in `anno`.
    """
    from faster_coco_eval import COCO, COCOeval_faster

    gt = COCO(str(anno) if isinstance(anno, Path) else anno)
    if not predictions:
        return dict.fromkeys(COCO_METRICS, 0.0)
    dt = gt.loadRes(predictions)
    ev = COCOeval_faster(gt, dt, iouType=iou_type, print_function=LOGGER.info if verbose else (lambda *a: None))
    if img_ids is not None:
        ev.params.imgIds = list(img_ids)
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    return {k: float(ev.stats_as_dict[v]) for k, v in COCO_METRICS.items()}


def coco_json_for(data: dict, split: str) -> Path | None:
    """The COCO annotation json a data YAML names for a split (`coco_json: {val: ...}`), resolved against its path."""
    spec = (data.get("coco_json") or {}).get(split)
    if not spec:
        return None
    path = Path(spec)
    if not path.is_absolute():
        path = Path(data.get("path", "")) / path
    return path if path.is_file() else None
