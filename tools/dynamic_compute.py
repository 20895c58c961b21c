"""Dynamic compute per image: does an empty or flat image use fewer tokens than a busy one?

Trains a routed model on the sample data with the auxiliary predictor loss (or takes --weights), predicts the val
images one at a time in dynamic mode (each routed block takes the tokens its predictor scores above 0.5, within
[min, max] capacity), and reports the token share per image grouped by object count and background, the gap between
busy and empty images with a bootstrap interval, and val mAP in dynamic mode against static top-k at the same mean
share, as markdown and CSV.

    python tools/dynamic_compute.py --model modvit-det-deep.yaml --epochs 40 --imgsz 128 --n-train 400 --n-val 400 \
        --data-size 128 192 --data-root datasets/mod-dynamic-deep --capacity-range 0.25 1  # ~9 min on 2 CPU cores
    python tools/dynamic_compute.py --weights runs/detect/train/weights/best.pt
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
from pathlib import Path

from mod_vision import MoDYOLO
from mod_vision.data import make_sample_data
from mod_vision.report import markdown_table, write_csv


def groups_of(data_yaml: Path) -> dict[str, tuple[int, str]]:
    """Val image stem -> (object count, background) from the sample data's COCO json."""
    coco = json.loads((data_yaml.parent / "annotations" / "instances_val.json").read_text())
    counts = {im["id"]: 0 for im in coco["images"]}
    for a in coco["annotations"]:
        counts[a["image_id"]] += 1
    return {Path(im["file_name"]).stem: (counts[im["id"]], im["background"]) for im in coco["images"]}


def bucket(n: int) -> str:
    return "0 objects" if n == 0 else "1-2 objects" if n <= 2 else "3+ objects"


def bootstrap_gap(a: list[float], b: list[float], n: int = 2000, seed: int = 0) -> tuple[float, float]:
    """95% percentile bootstrap interval of mean(b) - mean(a), resampling the images of each group."""
    rng = random.Random(seed)
    gaps = sorted(statistics.mean(rng.choices(b, k=len(b))) - statistics.mean(rng.choices(a, k=len(a))) for _ in range(n))
    return gaps[int(0.025 * n)], gaps[int(0.975 * n) - 1]


def share_tables(rows: list[dict]) -> tuple[list[dict], list[dict]]:
    """Per-image token shares summed up: by object count and background, and the busy-minus-empty gap with its
    bootstrap interval (overall and per background; a row only where both groups have images)."""
    keys = [("all", lambda r: True)]
    keys += [(b, lambda r, b=b: bucket(r["objects"]) == b) for b in ("0 objects", "1-2 objects", "3+ objects")]
    keys += [(k, lambda r, k=k: r["background"] == k) for k in ("flat", "textured")]
    # per background too: texture itself draws tokens, so the object-count effect is clearest with it held fixed
    keys += [(f"{k}, {b}", lambda r, k=k, b=b: r["background"] == k and bucket(r["objects"]) == b)
             for k in ("flat", "textured") for b in ("0 objects", "1-2 objects", "3+ objects")]  # fmt: skip
    shares = [(name, [r["token_share"] for r in rows if keep(r)]) for name, keep in keys]
    groups = [{"group": name, "images": len(s), "mean token share": statistics.mean(s),
               "median": statistics.median(s), "min": min(s), "max": max(s)} for name, s in shares if s]  # fmt: skip
    # "measurably fewer": the gap between busy and empty images, with a bootstrap interval over images
    gaps = []
    for k in ("all", "flat", "textured"):
        empty = [r["token_share"] for r in rows if r["objects"] == 0 and k in ("all", r["background"])]
        busy = [r["token_share"] for r in rows if r["objects"] >= 3 and k in ("all", r["background"])]
        if empty and busy:
            lo, hi = bootstrap_gap(empty, busy)
            gap = statistics.mean(busy) - statistics.mean(empty)
            gaps.append({"background": k, "3+ objects minus 0 objects (mean token share)": gap,
                         "95% bootstrap interval": f"[{lo:+.3f}, {hi:+.3f}]"})
    return groups, gaps


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--weights", default=None, help="a trained routed .pt (default: train one)")
    p.add_argument("--model", default="modvit-det.yaml")
    p.add_argument("--data-root", default="datasets/mod-dynamic")
    p.add_argument("--n-train", type=int, default=200)
    p.add_argument("--n-val", type=int, default=80)
    p.add_argument("--data-size", type=int, nargs=2, default=[192, 320], help="min, max sample image side")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--imgsz", type=int, default=256)
    p.add_argument("--router-aux", type=float, default=0.1)
    p.add_argument("--predictor-lr-mult", type=float, default=None, help="predictors' lr over lr0 (default: cfg's)")
    p.add_argument("--capacity-range", type=float, nargs=2, default=None, help="elastic training range (default: fixed)")
    p.add_argument("--bounds", type=float, nargs=2, default=[0.05, 1.0], help="dynamic [min, max] capacity")
    p.add_argument("--seed", type=int, default=0, help="training seed (the data's is fixed)")
    p.add_argument("--project", default="runs/dynamic_compute")
    a = p.parse_args(argv)

    data = make_sample_data(a.data_root, n_train=a.n_train, n_val=a.n_val, seed=1, size=tuple(a.data_size))
    if a.weights is None:
        model = MoDYOLO(a.model)
        model.train(data=str(data), epochs=a.epochs, imgsz=a.imgsz, batch=16, workers=2, seed=a.seed, plots=False,
                    router_aux=a.router_aux, capacity_range=a.capacity_range, project=str(Path(a.project).resolve()),
                    name="train", **({} if a.predictor_lr_mult is None else {"predictor_lr_mult": a.predictor_lr_mult}))
        weights = model.trainer.best
    else:
        weights = a.weights
    model = MoDYOLO(weights)
    groups = groups_of(data)
    images = sorted((data.parent / "images" / "val").glob("*.jpg"))
    rows = []
    # batch 1: each image's compute is its own (in a batch, images are padded to the largest k)
    for r in model.predict(images, imgsz=a.imgsz, dynamic_capacity=a.bounds, stream=True, verbose=False):
        n, background = groups[Path(r.path).stem]
        rows.append({"image": Path(r.path).name, "objects": n, "background": background, "token_share": r.token_share})

    out = Path(a.project).resolve() / "report"
    out.mkdir(parents=True, exist_ok=True)
    write_csv(out / "per_image.csv", rows)
    command = "python tools/dynamic_compute.py " + " ".join(argv if argv is not None else sys.argv[1:])
    groups, gaps = share_tables(rows)

    # What the per-image budget costs or buys: val AP in dynamic mode against static top-k at the same mean share
    def val(mode: str, **routing) -> dict:
        m = model.val(data=str(data), imgsz=a.imgsz, batch=16, project=str(out), name="val", exist_ok=True, plots=False,
                      verbose=False, **routing)
        return {"val mode": mode, "box mAP50-95": m.box.map, "mAP50": m.box.map50, "mean token share": m.token_share}

    dynamic = val(f"dynamic {a.bounds}", dynamic_capacity=a.bounds)
    static = val("static, same share", capacity=round(dynamic["mean token share"], 4), dynamic_capacity=False)
    lines = [f"`{command}`", "", f"weights {weights}, dynamic bounds {a.bounds}, imgsz {a.imgsz}, {len(rows)} val images",
             "", markdown_table(groups, floatfmt=".3f"), "",
             markdown_table(gaps, floatfmt="+.3f") if gaps else "no gap: the val images lack empty or 3+-object ones", "",
             markdown_table([dynamic, static], floatfmt={"box mAP50-95": ".4f", "mAP50": ".4f", "mean token share": ".3f"})]  # fmt: skip
    report = "\n".join(lines) + "\n"
    (out / "dynamic_compute.md").write_text(report)
    print(report)
    print(f"saved to {out}")


if __name__ == "__main__":
    main()
