"""Diagnostic: BatchNorm running statistics re-estimated on the training images at one routing (`dyn`: the per-image
budget [0, 1]; a number: that capacity), box AP before and after at that routing. Usage:
bn_recalibrate.py best.pt data.yaml imgsz dyn|CAPACITY [augmented|letterboxed]"""
import sys, os
os.environ.setdefault("YOLO_OFFLINE", "1")
import torch
from torch import nn
from mod_vision import MoDYOLO
from mod_vision.nn.routing.controls import set_routing
from ultralytics.cfg import get_cfg
from ultralytics.data import build_yolo_dataset, build_dataloader
from ultralytics.data.utils import check_det_dataset

w, data_yaml, imgsz, mode = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
augmented = (sys.argv[5] if len(sys.argv) > 5 else "augmented") == "augmented"
passes = 2
torch.manual_seed(0)
kw = dict(dynamic_capacity=[0.0, 1.0]) if mode == "dyn" else dict(capacity=float(mode))
def val(m, tag):
    r = m.val(data=data_yaml, imgsz=imgsz, batch=16, verbose=False, plots=False, **kw)
    print(f"RESULT {mode} {tag}: box AP {100 * r.box.map:.2f}", flush=True)
m = MoDYOLO(w)
val(m, "as trained")
data = check_det_dataset(data_yaml)
cfg = get_cfg(overrides={"imgsz": imgsz, "batch": 16})
ds = build_yolo_dataset(cfg, data["train"], 16, data, mode="train" if augmented else "val", stride=32)
dl = build_dataloader(ds, 16, 0, shuffle=augmented)
net = m.model.float().eval()
if mode == "dyn":
    set_routing(net, dynamic=(0.0, 1.0))
else:
    set_routing(net, capacity=float(mode))
bns = [b for b in net.modules() if isinstance(b, nn.BatchNorm2d)]
for b in bns:
    b.reset_running_stats(); b.train()
step = 0
with torch.no_grad():
    for _ in range(passes):
        for batch in dl:
            step += 1
            for b in bns:
                b.momentum = 1.0 / step
            net(batch["img"].float() / 255)
for b in bns:
    b.eval()
val(m, f"recalibrated ({'augmented' if augmented else 'letterboxed'} training images)")
