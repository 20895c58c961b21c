"""Does the routed model lose AP at capacity 1.0 because its BatchNorm running statistics were gathered on routed
subsets? Re-estimate every BatchNorm's running statistics at a fixed capacity on 320 training images (no gradient, no
augmentation, 4 passes), then validate again at that capacity.

    python docs/routing_carries/diagnosis/bn_recalibration.py \
        runs/detector_compare/rc-main-modnext/train/modnext-det-n__s0/weights/best.pt 1.0 \
        | tee docs/routing_carries/diagnosis/bn_recalibration_s0.txt
"""

import glob
import os
import sys

import cv2
import numpy as np
import torch

os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("YOLO_AUTOINSTALL", "false")

from ultralytics.data.augment import LetterBox  # noqa: E402

from mod_vision import MoDYOLO  # noqa: E402
from mod_vision.nn.routing import set_static  # noqa: E402

torch.set_num_threads(2)
weights, capacity = sys.argv[1], float(sys.argv[2])
data, imgsz = "datasets/mod-sample/sample.yaml", 160


def box_ap(model) -> float:
    return 100 * model.val(data=data, imgsz=imgsz, batch=16, capacity=capacity, verbose=False, plots=False).box.map


model = MoDYOLO(weights)
print(f"capacity {capacity}: box AP {box_ap(model):.2f} with the trained running statistics", flush=True)
files = sorted(glob.glob("datasets/mod-sample/images/train/*"))[:320]
letterbox = LetterBox((imgsz, imgsz), auto=False)
images = np.stack([letterbox(image=cv2.imread(f))[..., ::-1] for f in files])
x = torch.from_numpy(images.copy()).permute(0, 3, 1, 2).float() / 255
net = model.model.eval()
set_static(net, capacity)
for m in net.modules():
    if isinstance(m, torch.nn.BatchNorm2d):  # pointwise() reads the same running buffers and momentum
        m.reset_running_stats()
        m.momentum = 0.1
        m.train()
with torch.no_grad():
    for start in list(range(0, len(x), 16)) * 4:
        net(x[start : start + 16])
net.eval()
print(f"capacity {capacity}: box AP {box_ap(model):.2f} with running statistics re-estimated at this capacity")
