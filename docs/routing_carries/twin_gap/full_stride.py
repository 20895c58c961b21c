"""Experiment: the merges of the given output widths (and every router that follows their decision) route every
token, in training and at inference; everything else as detector_compare runs it. FULL_WIDTHS=256 (stride 32 at n)."""
import os, sys
sys.path.insert(0, "tools")
import torch
from mod_vision.nn.blocks import MoDDown
from mod_vision.nn.routing.router import TokenRouter
widths = {int(w) for w in os.environ["FULL_WIDTHS"].split(",")}
import functools
init = MoDDown.__init__
@functools.wraps(init)
def __init__(self, c1, c2, *a, **k):
    init(self, c1, c2, *a, **k)
    if self.router is not None and c2 in widths:
        self.router.full = True
MoDDown.__init__ = __init__
select = TokenRouter.select
def full_select(self, scores, predicted, padding=None):
    if getattr(self, "full", False):
        b, n = scores.shape[:2]
        return torch.arange(n, device=scores.device).expand(b, n), None
    return select(self, scores, predicted, padding)
TokenRouter.select = full_select
import detector_compare
detector_compare.main(sys.argv[1:])
