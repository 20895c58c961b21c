"""Diagnostic: box AP and token share at the per-image budget with each deciding router's wanted set dilated by a k x k window
(inference only). Usage: dilate.py best.pt data.yaml imgsz k8,k16,k32 [...]"""
import sys, os
os.environ.setdefault("YOLO_OFFLINE", "1")
import torch.nn.functional as F
from mod_vision import MoDYOLO
from mod_vision.nn.routing import routed_blocks
from mod_vision.nn.routing.router import TokenRouter

orig_decide, orig_select = TokenRouter.decide, TokenRouter.select
def decide(self, x, grid=None, readout=None):
    self._grid = grid
    return orig_decide(self, x, grid, readout)
def select(self, scores, predicted, padding=None):
    k = getattr(self, "_dilate", 1)
    if k > 1 and predicted is not None and not self.training and self._grid is not None:
        h, w = self._grid
        pool = lambda t: F.max_pool2d(t.view(-1, 1, h, w), k, 1, k // 2).view(t.shape)
        predicted = pool(predicted)
        scores = pool(scores)
    return orig_select(self, scores, predicted, padding)
TokenRouter.decide, TokenRouter.select = decide, select

w, data, imgsz = sys.argv[1], sys.argv[2], int(sys.argv[3])
for arg in sys.argv[4:]:
    ks = [int(v) for v in arg.split(",")]
    m = MoDYOLO(w)
    deciders = [r for r in routed_blocks(m.model) if r.scorer is not None]
    for d, k in zip(deciders, ks):
        d._dilate = k
    r = m.val(data=data, imgsz=imgsz, batch=16, dynamic_capacity=[0.0, 1.0], verbose=False, plots=False)
    print(f"RESULT dilation s8/s16/s32 {ks}: box AP {100 * r.box.map:.2f}, token share {r.token_share:.3f}", flush=True)
