"""How long predict takes to give up on a stalled stream (connection open, no frames), with the current environment.

    python tools/stream_stall.py MODEL.pt                                             # OpenCV's default: ~30 s
    OPENCV_FFMPEG_CAPTURE_OPTIONS="rw_timeout;3000000" python tools/stream_stall.py MODEL.pt   # ~3 s

Serves 3 sample-data frames over MJPEG on loopback (`mod_vision.mjpeg.MJPEGServer`), then stalls.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import cv2

from mod_vision import MoDYOLO
from mod_vision.data import make_sample_data
from mod_vision.mjpeg import MJPEGServer


def main(model: str) -> None:
    data = make_sample_data(Path(tempfile.mkdtemp()) / "sample", n_train=1, n_val=4, seed=0, size=(96, 128))
    frames = [cv2.resize(cv2.imread(str(f)), (128, 96)) for f in sorted((data.parent / "images" / "val").glob("*.jpg"))]
    m = MoDYOLO(model)
    with MJPEGServer(frames, end="stall", drop_after=3) as server:
        t = time.monotonic()
        results = list(m.predict(server.url, stream=True, imgsz=96, verbose=False, stream_buffer=True))
        dt = time.monotonic() - t
    print(f"OPENCV_FFMPEG_CAPTURE_OPTIONS={os.environ.get('OPENCV_FFMPEG_CAPTURE_OPTIONS')!r}: "
          f"{len(results)} results, predict returned after {dt:.1f} s")  # fmt: skip


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model", help="a routed model's .pt (or YAML)")
    main(p.parse_args().model)
