"""pytest plugin for tools/ultralytics_suite.sh: before Ultralytics' own tests are collected, import mod_vision and run a
routed model through it (build from YAML, predict with a capacity), so that they run in a process where mod_vision
has done what a user's session does."""

from __future__ import annotations


def pytest_configure(config) -> None:
    import numpy as np

    import mod_vision

    model = mod_vision.MoDYOLO("modvit-det.yaml")
    model.predict(np.zeros((64, 64, 3), dtype=np.uint8), imgsz=64, capacity=0.5, verbose=False)
