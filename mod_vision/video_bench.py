"""Shared by the video benchmark tools (tools/video_reuse.py, tools/reuse_bound.py): one predict pass over a clip with
or without token reuse, and the forward time split by layer kind."""

from __future__ import annotations

import time
from pathlib import Path

PER_FRAME = "per-frame"


def run_clip(model, video: Path, imgsz: int, threshold: float | None = None, capacity: float | None = None,
             refresh: int = 30) -> list[dict]:
    """Per frame: inference ms, token share, detections (xyxy, conf, cls) at conf 0.001. `threshold` None predicts
    frame by frame; a number turns on token reuse with that reuse_threshold and `refresh`."""
    kw = dict(imgsz=imgsz, conf=0.001, verbose=False, stream=True)
    if capacity is not None:
        kw["capacity"] = capacity
    if threshold is not None:
        kw.update(token_reuse=True, reuse_threshold=threshold, reuse_refresh=refresh)
    return [
        {"ms": r.speed["inference"], "share": r.token_share, "boxes": r.boxes.data.cpu().numpy()}
        for r in model.predict(str(video), **kw)
    ]


def layer_kinds(model) -> dict[int, str]:
    """Top-level layer index -> 'head' (the last layer), 'routed' (a layer that holds routers: the only work token
    reuse can skip) or 'dense'."""
    from mod_vision.nn.routing import routed_blocks

    return {m.i: "head" if m is model.model[-1] else "routed" if routed_blocks(m) else "dense" for m in model.model}


def profile(yolo, video: Path, imgsz: int, threshold: float | None = None, **kw) -> dict[str, float]:
    """Share of the forward time per layer kind, from forward hooks on the top-level layers over one clip pass
    (`run_clip`'s settings)."""
    run_clip(yolo, video, imgsz, threshold, **kw)  # sets up the predictor (fused model)
    model = yolo.predictor.model.model
    kinds, spent, start = layer_kinds(model), {}, {}
    hooks = []
    for m in model.model:
        hooks.append(m.register_forward_pre_hook(lambda mod, inp: start.__setitem__(mod.i, time.perf_counter())))
        hooks.append(m.register_forward_hook(
            lambda mod, inp, out: spent.__setitem__(kinds[mod.i], spent.get(kinds[mod.i], 0) + time.perf_counter() - start[mod.i])))  # fmt: skip
    try:
        run_clip(yolo, video, imgsz, threshold, **kw)
    finally:
        for h in hooks:
            h.remove()
    total = sum(spent.values())
    return {k: v / total for k, v in sorted(spent.items())}


PRODUCTS = ("aten::addmm", "aten::mm", "aten::bmm", "aten::matmul", "aten::_scaled_dot_product_flash_attention_for_cpu")


def op_split(
    yolo, video: Path, imgsz: int, threshold: float | None = None, set_up: bool = True, **kw
) -> dict[str, float]:
    """ms per frame of one clip pass (`run_clip`'s settings) spent in matrix products (what routing and reuse skip:
    the routed tokens' heavy work) and in every other operator (torch.profiler's self CPU time). `set_up=False` when
    a pass with the same settings has just run (`profile`): the predictor is then ready, and no unprofiled pass is
    needed."""
    from torch.profiler import ProfilerActivity, profile as torch_profile

    if set_up:
        run_clip(yolo, video, imgsz, threshold, **kw)  # sets up the predictor (fused model), unprofiled
    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        frames = len(run_clip(yolo, video, imgsz, threshold, **kw))
    ops = prof.key_averages()
    products = sum(e.self_cpu_time_total for e in ops if e.key in PRODUCTS) / 1000 / frames
    total = sum(e.self_cpu_time_total for e in ops) / 1000 / frames
    return {"matrix products ms": products, "other operators ms": total - products}

