"""Diagnostic: box AP at the per-image budget with the head's routers replaced by dense (every position), and with
the routers of stages, merges, head routed as usual."""
import sys, os
os.environ.setdefault("YOLO_OFFLINE", "1")
import torch
from torch import nn
from mod_vision import MoDYOLO
from mod_vision.nn.head import RoutedDetect

w = sys.argv[1]
for variant in ("as trained", "head dense"):
    m = MoDYOLO(w)
    if variant == "head dense":
        head = [x for x in m.model.modules() if isinstance(x, RoutedDetect)][0]
        head.routers = nn.ModuleList(nn.Identity() for _ in head.routers)
    r = m.val(data="datasets/mod-sample/sample.yaml", imgsz=160, batch=16, dynamic_capacity=[0.0, 1.0], verbose=False, plots=False)
    print(f"RESULT {variant}: box AP {100 * r.box.map:.2f}", flush=True)
