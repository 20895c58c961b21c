"""The COCO evaluator is wired to the right image ids and categories."""

import json

import pytest
import torch

from mod_vision.engine.coco_eval import COCO_METRICS, coco_evaluate
from mod_vision.engine.val import MoDDetectionValidator


def gt_as_predictions(anno: dict, dx: float = 0.0) -> list[dict]:
    return [
        {"image_id": a["image_id"], "category_id": a["category_id"], "score": 1.0,
         "bbox": [a["bbox"][0] + dx * a["bbox"][2], *a["bbox"][1:]], "segmentation": a["segmentation"]}
        for a in anno["annotations"]
    ]  # fmt: skip


@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
def test_ground_truth_as_predictions_gives_ap_one_and_shifted_boxes_less(sample_yaml, iou_type):
    path = sample_yaml.parent / "annotations" / "instances_val.json"
    anno = json.loads(path.read_text())
    perfect = coco_evaluate(path, gt_as_predictions(anno), iou_type)
    assert set(perfect) == set(COCO_METRICS)
    assert perfect["AP"] == pytest.approx(1.0) and perfect["AP50"] == pytest.approx(1.0)
    if iou_type == "bbox":
        shifted = coco_evaluate(path, gt_as_predictions(anno, dx=0.3), iou_type)
        assert shifted["AP"] < 0.5 < perfect["AP"]
    wrong_class = [{**p, "category_id": p["category_id"] % 4 + 1} for p in gt_as_predictions(anno)]
    assert coco_evaluate(path, wrong_class, iou_type)["AP"] == pytest.approx(0.0)


class GroundTruthValidator(MoDDetectionValidator):
    """Replaces the model's predictions with the batch's ground truth (optionally shifted) before the usual pipeline."""

    shift = 0.0

    def update_metrics(self, preds, batch):
        gt = []
        for si in range(len(preds)):
            pb = self._prepare_batch(si, batch)
            boxes = pb["bboxes"].clone()
            boxes[:, [0, 2]] += self.shift * (boxes[:, 2] - boxes[:, 0]).unsqueeze(1)
            gt.append({"bboxes": boxes, "conf": torch.ones(len(boxes)), "cls": pb["cls"].float()})
        super().update_metrics(gt, batch)


def test_validator_maps_image_ids_and_categories(det_run, sample_yaml, tmp_path):
    args = dict(model=str(det_run / "weights" / "best.pt"), data=str(sample_yaml), imgsz=96, batch=4, plots=False)
    perfect = GroundTruthValidator(args={**args, "project": str(tmp_path), "name": "a"})()
    assert perfect["metrics/coco_AP(B)"] > 0.95  # letterbox round trip costs a little IoU, ids and classes must match
    GroundTruthValidator.shift = 0.3
    shifted = GroundTruthValidator(args={**args, "project": str(tmp_path), "name": "b"})()
    assert shifted["metrics/coco_AP(B)"] < 0.5
