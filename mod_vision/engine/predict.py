"""Predictors that attach each image's routed token share to its Results."""

from __future__ import annotations

from ultralytics.models.yolo.detect import DetectionPredictor
from ultralytics.models.yolo.segment import SegmentationPredictor

from ..cfg import apply_routing
from ..nn.routing import token_share


class RoutedPredictorMixin:
    """Sets the capacity asked for at predict time, and adds `result.token_share` (None for dense or exported models)."""

    def setup_source(self, source, *args, **kwargs):
        # Called on every predict() call, also when Ultralytics reuses this predictor with new arguments.
        super().setup_source(source, *args, **kwargs)
        apply_routing(self.model, self.args)

    def postprocess(self, preds, img, orig_imgs, **kwargs):
        results = super().postprocess(preds, img, orig_imgs, **kwargs)
        share = token_share(self.model)
        for i, r in enumerate(results):
            r.token_share = None if share is None else float(share[i])
        return results


class MoDDetectionPredictor(RoutedPredictorMixin, DetectionPredictor):
    pass


class MoDSegmentationPredictor(RoutedPredictorMixin, SegmentationPredictor):
    pass
