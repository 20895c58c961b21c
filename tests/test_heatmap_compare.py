"""tools/heatmap_compare.py: one figure of several models' routing on the same images."""

from __future__ import annotations

import cv2
import pytest

from tests.test_dynamic_tools import _tool


def test_rows_per_model_and_image_in_one_figure(det_run, sample_yaml, tmp_path):
    tool = _tool("heatmap_compare")
    best = det_run / "weights" / "best.pt"
    images = [str(p) for p in sorted((sample_yaml.parent / "images" / "val").glob("*.jpg"))[:2]]
    one = tool.main(["--weights", f"a={best}", "--images", images[0], "--imgsz", "96", "--out", str(tmp_path / "1.png")])
    four = tool.main(["--weights", f"a={best}", f"b={best}", "--images", *images, "--imgsz", "96", "--capacity",
                      "0.5", "--out", str(tmp_path / "4.png")])  # fmt: skip
    h1, h4 = cv2.imread(str(one)).shape[0], cv2.imread(str(four)).shape[0]
    assert h4 > 3 * h1  # a row per (model, image): four rows against one


def test_bad_arguments_are_named(tmp_path):
    tool = _tool("heatmap_compare")
    with pytest.raises(SystemExit):
        tool.parse_args(["--weights", "no-label.pt", "--images", "x.jpg", "--out", "o.png"])
    with pytest.raises(SystemExit):
        tool.parse_args(["--weights", f"a={tmp_path / 'missing.pt'}", "--images", "x.jpg", "--out", "o.png"])
