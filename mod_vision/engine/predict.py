"""Predictors that attach each image's routed token share to its Results."""

from __future__ import annotations

from ultralytics.models.yolo.detect import DetectionPredictor
from ultralytics.models.yolo.segment import SegmentationPredictor

from ..cfg import apply_routing
from ..nn.routing import routed_blocks, token_share
from .export import check_exported_args, exported_routing, exported_token_share


class RoutedPredictorMixin:
    """Sets the capacity asked for at predict time, and adds to each Results `token_share` (share of routed-block
    tokens processed; None for dense models) and `capacity` (one per routed block; empty for dense models).

    An exported model's capacities are fixed at export and read from its metadata; its token share is then exact
    (static top-k), computed from the input size.
    """

    def setup_source(self, source, *args, **kwargs):
        # Called on every predict() call, also when Ultralytics reuses this predictor with new arguments.
        super().setup_source(source, *args, **kwargs)
        self.exported = exported_routing(self.model)
        if self.exported:
            check_exported_args(self.exported, self.args)
        else:
            apply_routing(self.model, self.args)

    def postprocess(self, preds, img, orig_imgs, **kwargs):
        results = super().postprocess(preds, img, orig_imgs, **kwargs)
        if self.exported:
            capacity = self.exported["capacity"]
            shares = [exported_token_share(self.exported, img.shape[-2:])] * len(results)
        else:
            capacity, share = [b.capacity for b in routed_blocks(self.model)], token_share(self.model)
            shares = [None] * len(results) if share is None else share.tolist()
        for r, s in zip(results, shares):
            r.token_share, r.capacity = s, capacity
        return results


class MoDDetectionPredictor(RoutedPredictorMixin, DetectionPredictor):
    pass


class MoDSegmentationPredictor(RoutedPredictorMixin, SegmentationPredictor):
    pass
