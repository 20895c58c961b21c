"""Box AP and token share at the per-image budget [0, 1], with each deciding router's (one per stride: 8, 16, 32)
threshold set apart. Usage: stride_threshold.py best.pt data.yaml imgsz t8,t16,t32 [...]"""
import sys, os
os.environ.setdefault("YOLO_OFFLINE", "1")
from mod_vision import MoDYOLO
from mod_vision.nn.routing import routed_blocks

w, data, imgsz = sys.argv[1], sys.argv[2], int(sys.argv[3])
for arg in sys.argv[4:]:
    th = [float(v) for v in arg.split(",")]
    m = MoDYOLO(w)
    deciders = [r for r in routed_blocks(m.model) if r.scorer is not None]
    assert len(deciders) == 3
    for d, t in zip(deciders, th):
        d.threshold = t
    r = m.val(data=data, imgsz=imgsz, batch=16, dynamic_capacity=[0.0, 1.0], verbose=False, plots=False)
    print(f"RESULT s8/s16/s32 thresholds {th}: box AP (mAP50-95) {100 * r.box.map:.2f}, token share "
          f"{r.token_share:.3f}", flush=True)
