"""Score scale and gate of the processed tokens at the model's capacity, for the first 32 val images of the main job's data.

Usage (repo root): python docs/quality_bench/r4-rank/gate_scale.py r4-base r4-rank r4-rank-w01 r4-rank-bce
"""
import sys, glob, torch, cv2, numpy as np
from mod_vision import MoDYOLO
from mod_vision.nn import record_routing
files = sorted(glob.glob("datasets/mod-main/images/val/*.jpg"))[:32]
x = torch.stack([torch.from_numpy(cv2.resize(cv2.imread(f), (160, 160))[..., ::-1].copy()).permute(2, 0, 1) for f in files]).float() / 255
for name in sys.argv[1:]:
    m = MoDYOLO(f"runs/detector_compare/{name}/train/hybrid11-det-n__s0/weights/best.pt").model.float().eval()
    with torch.no_grad(), record_routing(scores=True) as rec:
        m(x)
    out = []
    for i, e in enumerate(rec.blocks):
        s = e.scores; sel = s.gather(1, e.index)
        out.append(f"b{i} score mean {s.mean():.2f} std {s.std():.2f} | gate of processed tokens mean {sel.sigmoid().mean():.3f} min {sel.sigmoid().min():.3f}")
    print(name, *out, sep="\n  ")
