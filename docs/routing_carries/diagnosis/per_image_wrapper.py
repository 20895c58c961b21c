"""The wrapper that ran the per-image training runs `trained_per_image_*` (before `dynamic_training=` existed): it
patches `TokenRouter.select` so that a router in training chooses each image's k from its object predictor, clamped to
TRAIN_DYN, as `dynamic_training=[0.1, 1.0]` now does; then runs tools/detector_compare.py with the given arguments.
The model was the gated modnext-det of then (`candidates/modnext-gated-det.yaml`).

    TRAIN_DYN=0.1,1.0 python docs/routing_carries/diagnosis/per_image_wrapper.py --name diag-dyn --data sample \
        --epochs 30 --imgsz 160 --batch 16 --arms modnext-det-n.yaml --seeds 0 --extra router_rank=1.0 router_rank_kind=bce
"""
import os
import runpy
import sys

import mod_vision.nn.routing.router as R

BOUNDS = tuple(float(v) for v in os.environ.get("TRAIN_DYN", "0.1,1.0").split(","))
select = R.TokenRouter.select


def per_image_select(self, scores, predicted, padding=None):
    if self.training and predicted is not None:
        dynamic, self.dynamic = self.dynamic, BOUNDS
        self.training = False  # select's test for "dynamic mode applies"
        try:
            return select(self, scores, predicted, padding)
        finally:
            self.training, self.dynamic = True, dynamic
    return select(self, scores, predicted, padding)


R.TokenRouter.select = per_image_select
sys.argv = ["tools/detector_compare.py", *sys.argv[1:]]
runpy.run_path("tools/detector_compare.py", run_name="__main__")
