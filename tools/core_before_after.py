"""Latency of one model YAML built by an earlier commit's mod_vision/nn and by this one, timed round-robin in one run.

The earlier package is read with `git show` into a temporary folder and loaded as the package `oldnn` (its modules
import each other relatively). Its `register()` replaced Ultralytics' parser globally, so the parser is put back after building.

Usage: python tools/core_before_after.py --commit 77a0c69 --model modvit-det-n.yaml --imgsz 640 --capacities 1 0.25
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("YOLO_OFFLINE", "1")

import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def old_package(commit: str) -> Path:
    folder = Path(tempfile.mkdtemp()) / "oldnn"
    folder.mkdir()
    # -r: the package has subpackages (nn/routing/) at later commits
    names = subprocess.run(["git", "ls-tree", "-r", "--name-only", commit, "mod_vision/nn/"], cwd=ROOT, check=True,
                           capture_output=True, text=True).stdout.split()  # fmt: skip
    for name in names:
        text = subprocess.run(["git", "show", f"{commit}:{name}"], cwd=ROOT, check=True, capture_output=True).stdout
        target = folder / Path(name).relative_to("mod_vision/nn")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(text)
    return folder.parent


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--commit", required=True)
    p.add_argument("--model", default="modvit-det-n.yaml")
    p.add_argument("--imgsz", type=int, default=640)
    p.add_argument("--capacities", type=float, nargs="+", default=[1.0, 0.25])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--runs", type=int, default=15)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)

    from ultralytics.nn import tasks as ul

    folder = old_package(a.commit) / "oldnn"
    spec = importlib.util.spec_from_file_location("oldnn", folder / "__init__.py", submodule_search_locations=[str(folder)])
    oldnn = importlib.util.module_from_spec(spec)
    sys.modules["oldnn"] = oldnn  # its modules import each other relatively, through this name
    upstream = ul.parse_model
    spec.loader.exec_module(oldnn)
    import oldnn.routing
    import oldnn.tasks

    oldnn.tasks.MODEL_DIR = ROOT / "cfg" / "models"
    if hasattr(oldnn.tasks, "register"):  # earlier commits replaced Ultralytics' parser globally; later ones scope it
        oldnn.tasks.register()
    old = oldnn.tasks.MoDDetectionModel(oldnn.tasks.load_model_yaml(a.model), verbose=False).fuse(verbose=False).eval()
    ul.parse_model = upstream

    from mod_vision.benchmark import round_robin
    from mod_vision.nn.routing import set_capacity
    from mod_vision.nn.tasks import MoDDetectionModel, load_model_yaml

    new = MoDDetectionModel(load_model_yaml(a.model), verbose=False).fuse(verbose=False).eval()
    rows = []
    for c in a.capacities:
        rows += [(f"{a.commit} @ {c:g}", old, lambda c=c: oldnn.routing.set_capacity(old, c))]
        rows += [(f"this tree @ {c:g}", new, lambda c=c: set_capacity(new, c))]
    x = torch.rand(1, 3, a.imgsz, a.imgsz)
    with torch.inference_mode():
        times = round_robin([(prep, lambda m=m: m(x)) for _, m, prep in rows], runs=a.runs, warmup=3)
    for (name, _, _), t in zip(rows, times):
        print(f"{name:24s} {1000 * statistics.median(t):8.1f} ms")


if __name__ == "__main__":
    main()
