"""What the eager-only fast paths save on a frame: the same model and frames timed round-robin in one run, with the
fast paths on and off (off: as while torch.export traces, when route_tokens copies every base, RoutedDetect runs
Detect's decoding on every anchor, and the letterbox share tests every pixel).

    python tools/floor_ab.py runs/.../best.pt --imgsz 1280 --runs 9
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import time
from pathlib import Path
from unittest import mock

import torch


def sibling(name: str):
    """A tool beside this one, loaded from its file (the import path stays as the user set it)."""
    spec = importlib.util.spec_from_file_location("tool_" + name, Path(__file__).with_name(name + ".py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main(argv: list[str] | None = None) -> list[dict]:
    frame_cost = sibling("frame_cost")
    frames, letterboxed = frame_cost.frames, frame_cost.letterboxed

    from mod_vision import MoDYOLO
    from mod_vision.nn.routing import routing_input

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("weights")
    p.add_argument("--imgsz", type=int, default=1280)
    p.add_argument("--runs", type=int, default=9)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    model = MoDYOLO(a.weights).model.eval().fuse(verbose=False)
    inputs = {name: letterboxed(img, a.imgsz) for name, img in frames().items() if name in ("flat", "busy")}

    def forward(x, fast):
        with routing_input(x), mock.patch("torch.compiler.is_compiling", return_value=not fast):
            model(x)

    times = {(f, fast): [] for f in inputs for fast in (True, False)}
    with torch.inference_mode():
        for key in times:
            forward(inputs[key[0]], key[1])
        for _ in range(a.runs):
            for (f, fast), ts in times.items():
                start = time.perf_counter()
                forward(inputs[f], fast)
                ts.append(time.perf_counter() - start)
    rows = [{"frame": f, "fast paths": "on" if fast else "off", "ms": 1000 * statistics.median(ts)}
            for (f, fast), ts in times.items()]
    for r in rows:
        print(f"{a.imgsz} {r['frame']:5s} fast paths {r['fast paths']:3s} {r['ms']:7.1f} ms")
    return rows


if __name__ == "__main__":
    main()
