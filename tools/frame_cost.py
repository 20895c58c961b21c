"""What a frame costs: forward time of a flat, a sparse and a busy frame, against YOLO11n, and where a flat frame's time goes.

Each frame is letterboxed as the predictor letterboxes it and run through the model's forward at batch 1 with the
model's default routing (a checkpoint keeps the budget it was trained with: per image for modnext-det), every frame and
model timed round-robin in one run. Frames: `flat` (one grey), `sparse` (two small shapes on a flat field), `busy`
(40 shapes on a photograph). YOLO11n has random weights: its forward does not depend on them. Each model gets the
input its predictor makes: ours channels-last (mod_vision's predictor makes the float image so, straight from the
decoded pixels), YOLO11n the plain layout, as Ultralytics runs it, and, for a like-for-like figure, the same
channels-last input.

    python tools/frame_cost.py runs/.../best.pt --imgsz 640 1280 --threads 2 --runs 7 --out docs/routing_carries/frame_cost.md
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

import cv2
import numpy as np
import torch


def frames(size: tuple[int, int] = (720, 1280)) -> dict[str, np.ndarray]:
    """BGR frames of one size: flat, sparse and busy (seeded, the sample data's shapes and textures)."""
    from mod_vision.data.sample import _shape_polygon, _textures

    h, w = size
    rng = np.random.default_rng(0)
    flat = np.full((h, w, 3), 96, np.uint8)
    sparse = flat.copy()
    busy = np.ascontiguousarray(cv2.resize(_textures()[4], (w, h)))  # a photograph
    for img, n, radius in ((sparse, 2, 0.04), (busy, 40, 0.05)):
        for _ in range(n):
            r = radius * min(h, w)
            cls, cx, cy = int(rng.integers(4)), rng.uniform(r, w - r), rng.uniform(r, h - r)
            poly = _shape_polygon(cls, cx, cy, r, rng.uniform(0, 2 * np.pi))
            color = tuple(int(c) for c in rng.integers(0, 256, 3))
            cv2.fillPoly(img, [np.round(poly).astype(np.int32)], color, lineType=cv2.LINE_AA)
    return {"flat": flat, "sparse": sparse, "busy": busy}


def letterboxed(img: np.ndarray, imgsz: int, stride: int = 32) -> torch.Tensor:
    """The (1, 3, H, W) input the predictor makes of one BGR image (Ultralytics' LetterBox, auto=False: square)."""
    from ultralytics.data.augment import LetterBox

    out = LetterBox((imgsz, imgsz), auto=False, stride=stride)(image=img)
    return torch.from_numpy(np.ascontiguousarray(out[..., ::-1].transpose(2, 0, 1))).float().unsqueeze(0) / 255


def parts_of(model) -> dict[str, list[torch.nn.Module]]:
    """The modules whose time makes up what a flat frame still spends: the dense stem and the head; with `methods()`,
    the dense position terms and the routers' decisions; the rest of the forward is everything else."""
    from mod_vision.nn.routing import TokenRouter

    layers = list(model.model)
    return {
        "stem (dense, stride 4)": [m for m in layers[:2] if not any(isinstance(s, TokenRouter) for s in m.modules())],
        "head (all of it)": [layers[-1]],
    }


def methods() -> dict[str, tuple[type, str]]:
    """Parts timed by wrapping a method rather than by module hooks, because the fast eager paths do their work
    without calling a submodule: a stage adds its depthwise position term through its own kernel
    (`TokenStage.position_mixed`), and a router decides from the scores it reads (`TokenRouter.decide`: scoring,
    selection, and on the first call of a forward the padding statistics; a patch merge's router reads its patches
    as one strided convolution inside the merge, and that convolution counts in the merge's layer)."""
    from mod_vision.nn.blocks import TokenStage
    from mod_vision.nn.routing import TokenRouter

    return {"position terms (dense depthwise)": (TokenStage, "position_mixed"),
            "routers (decisions, padding statistics)": (TokenRouter, "decide")}


def timed(fn, runs: int) -> float:
    start = time.perf_counter()
    for _ in range(runs):
        fn()
    return (time.perf_counter() - start) / runs


def measure(weights: str, imgsz: list[int], threads: int, runs: int, yolo: str = "yolo11n.yaml",
            dynamic: tuple[float, float] | None = None, threshold: float | None = None,
            against: str | None = None, bf16: bool = False) -> tuple[list, list]:
    from ultralytics import YOLO

    from mod_vision import MoDYOLO
    from mod_vision.nn.blocks import bf16_products
    from mod_vision.nn.routing import record_routing, set_routing

    torch.set_num_threads(threads)
    ours = MoDYOLO(weights).model.float().eval().fuse(verbose=False)
    if dynamic is not None:  # another per-image budget than the checkpoint's own
        ours.set_dynamic(tuple(dynamic))
    if threshold is not None:  # the predictor logit the per-image budget counts a token wanted above
        set_routing(ours, threshold=threshold)
    peer = YOLO(yolo).model.float().eval().fuse(verbose=False)
    # another checkpoint of ours (a design to compare), at its own default routing, in the same round-robin
    other = None if against is None else MoDYOLO(against).model.float().eval().fuse(verbose=False)
    rows, parts_rows = [], []
    for size in imgsz:
        inputs = {k: letterboxed(v, size) for k, v in frames().items()}
        # our input as our predictor makes it
        cl = {k: x.contiguous(memory_format=torch.channels_last) for k, x in inputs.items()}
        shares = {}
        with torch.inference_mode():
            for k, x in cl.items():
                for key, model in (("ours", ours), ("other", other)):
                    if model is not None:
                        with record_routing() as rec:
                            model(x)
                        shares[key, k] = float(rec.token_share()[0]) if len(rec) else None
            for k, x in inputs.items():  # warm-up
                ours(cl[k]), peer(x), peer(cl[k])
                if bf16:
                    with bf16_products():
                        ours(cl[k])
                    with torch.autocast("cpu", dtype=torch.bfloat16):
                        peer(x)
                if other is not None:
                    other(cl[k])
            times = defaultdict(list)
            for _ in range(runs):  # round-robin: every (model, frame) once per round
                for k, x in inputs.items():
                    times[("ours", k)].append(timed(lambda: ours(cl[k]), 1))
                    times[("yolo", k)].append(timed(lambda: peer(x), 1))
                    times[("yolo-cl", k)].append(timed(lambda: peer(cl[k]), 1))
                    if bf16:  # ours with bfloat16 products; YOLO11n with every convolution in bfloat16 (autocast)
                        with bf16_products():
                            times[("ours-bf16", k)].append(timed(lambda: ours(cl[k]), 1))
                        with torch.autocast("cpu", dtype=torch.bfloat16):
                            times[("yolo-bf16", k)].append(timed(lambda: peer(x), 1))
                    if other is not None:
                        times[("other", k)].append(timed(lambda: other(cl[k]), 1))
        ms = {key: 1000 * statistics.median(v) for key, v in times.items()}
        for k in inputs:
            share = shares["ours", k]
            rows.append({"imgsz": size, "frame": k, "token share": f"{share:.3f}" if share is not None else "",
                         "ms (ours)": f"{ms[('ours', k)]:.1f}", "ms (YOLO11n)": f"{ms[('yolo', k)]:.1f}",
                         "vs busy (ours)": f"{ms[('ours', k)] / ms[('ours', 'busy')]:.2f}",
                         "speed vs YOLO11n": f"{ms[('yolo', k)] / ms[('ours', k)]:.2f}x",
                         "ms (YOLO11n, channels-last)": f"{ms[('yolo-cl', k)]:.1f}",
                         "speed vs it": f"{ms[('yolo-cl', k)] / ms[('ours', k)]:.2f}x"})  # fmt: skip
            if bf16:
                rows[-1].update({"ms (ours, bf16 products)": f"{ms[('ours-bf16', k)]:.1f}",
                                 "ms (YOLO11n, bf16 autocast)": f"{ms[('yolo-bf16', k)]:.1f}",
                                 "bf16 speed vs YOLO11n fp32 / bf16": f"{ms[('yolo', k)] / ms[('ours-bf16', k)]:.2f}x / "
                                                                      f"{ms[('yolo-bf16', k)] / ms[('ours-bf16', k)]:.2f}x"})
            if other is not None:
                share = shares["other", k]
                rows[-1].update({"token share (against)": f"{share:.3f}" if share is not None else "",
                                 "ms (against)": f"{ms[('other', k)]:.1f}",
                                 "vs busy (against)": f"{ms[('other', k)] / ms[('other', 'busy')]:.2f}",
                                 "speed vs against": f"{ms[('other', k)] / ms[('ours', k)]:.2f}x"})  # fmt: skip
        parts_rows.append(flat_profile(ours, cl["flat"], size, runs, ms[("ours", "flat")]))
    return rows, parts_rows


def preprocess_costs(weights: str, imgsz: list[int], runs: int, yolo: str = "yolo11n.yaml") -> list[dict]:
    """ms to make the busy frame's input, by each predictor's own `preprocess` (letterbox, layout, float), round-robin:
    ours makes it channels-last, Ultralytics' channel-first; the forward times above start from these inputs."""
    from ultralytics import YOLO

    from mod_vision import MoDYOLO

    image = frames()["busy"]
    rows = []
    for size in imgsz:
        predictors = {}
        for name, model in (("ours", MoDYOLO(weights)), ("YOLO11n", YOLO(yolo))):
            model.predict(image, imgsz=size, verbose=False)  # sets the predictor up at this size
            predictors[name] = model.predictor
        times = defaultdict(list)
        for _ in range(runs):
            for name, predictor in predictors.items():
                times[name].append(timed(lambda: predictor.preprocess([image]), 1))
        row = {"imgsz": size, "input": "x".join(map(str, predictors["ours"].preprocess([image]).shape[2:]))}
        row.update({f"preprocess ms ({k})": f"{1000 * statistics.median(v):.2f}" for k, v in times.items()})
        rows.append(row)
    return rows


def flat_profile(model, x: torch.Tensor, size: int, runs: int, total_ms: float) -> dict:
    """ms per part of a flat frame's forward (forward hooks; a part's time includes what it calls), and per top-level
    layer (`L<i> <type>`)."""
    hooks = []
    parts = parts_of(model)
    wrapped = methods()
    parts.update({f"L{m.i} {type(m).__name__}": [m] for m in model.model})
    names = list(parts)
    names[1:1] = wrapped  # the wrapped parts after the stem, before the head and the layers
    spent = dict.fromkeys(names, 0.0)
    saved = {name: getattr(cls, attr) for name, (cls, attr) in wrapped.items()}
    for name, (cls, attr) in wrapped.items():
        def timed_call(*args, name=name, **kwargs):
            start = time.perf_counter()
            try:
                return saved[name](*args, **kwargs)
            finally:
                spent[name] += time.perf_counter() - start

        setattr(cls, attr, timed_call)
    for name, modules in parts.items():
        for m in modules:
            def pre(mod, inp, name=name):
                mod._frame_cost_t0 = time.perf_counter()

            def post(mod, inp, out, name=name):
                spent[name] += time.perf_counter() - mod._frame_cost_t0

            hooks += [m.register_forward_pre_hook(pre), m.register_forward_hook(post)]
    try:
        with torch.inference_mode():
            for _ in range(runs):
                model(x)
    finally:
        for h in hooks:
            h.remove()
        for name, (cls, attr) in wrapped.items():
            setattr(cls, attr, saved[name])
    row = {"imgsz": size, "flat frame, ms": f"{total_ms:.1f}"}
    row.update({k: f"{1000 * v / runs:.1f}" for k, v in spent.items()})
    return row


def main(argv=None) -> Path | None:
    from mod_vision.report import markdown_table

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("weights", help="a routed checkpoint (its default routing runs)")
    p.add_argument("--imgsz", nargs="+", type=int, default=[640, 1280])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--runs", type=int, default=7)
    p.add_argument("--dynamic", nargs=2, type=float, default=None, metavar=("MIN", "MAX"),
                   help="per-image budget bounds (capacities) instead of the checkpoint's own")
    p.add_argument("--threshold", type=float, default=None,
                   help="the predictor logit the per-image budget counts a token wanted above (default: the model's)")
    p.add_argument("--against", default=None, metavar="WEIGHTS",
                   help="another routed checkpoint timed in the same round-robin, at its own default routing")
    p.add_argument("--bf16", action="store_true",
                   help="also time ours with bfloat16 products (bf16=True) and YOLO11n under bfloat16 autocast")
    p.add_argument("--out", default=None, help="write the tables to this markdown file")
    a = p.parse_args(argv)
    rows, parts = measure(a.weights, a.imgsz, a.threads, a.runs, dynamic=a.dynamic, threshold=a.threshold,
                          against=a.against, bf16=a.bf16)
    torch.set_num_threads(a.threads)
    pre = preprocess_costs(a.weights, a.imgsz, a.runs)
    command = "python tools/frame_cost.py " + " ".join(sys.argv[1:] if argv is None else argv)
    by_part = [{k: v for k, v in r.items() if not k.startswith("L")} for r in parts]
    by_layer = [{k: v for k, v in r.items() if k == "imgsz" or k.startswith("L")} for r in parts]
    text = "\n".join([f"```\n{command}\n```", "", markdown_table(rows, list(rows[0])), "",
                      "Where a flat frame's time goes (ms; forward hooks, a part includes what it calls):", "",
                      markdown_table(by_part, list(dict.fromkeys(k for r in by_part for k in r))), "",
                      "The same, per top-level layer (L<index> <type>):", "",
                      markdown_table(by_layer, list(dict.fromkeys(k for r in by_layer for k in r))), "",
                      "What each predictor's preprocessing of the busy frame costs (the inputs the forwards start "
                      "from):",
                      "", markdown_table(pre, list(pre[0]))])  # fmt: skip
    print(text)
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(text + "\n")
        return Path(a.out)
    return None


if __name__ == "__main__":
    main()
