"""Prediction on a live stream: an MJPEG-over-HTTP server on loopback, read by Ultralytics' LoadStreams (OpenCV FFmpeg)."""

from __future__ import annotations

import socket
import time

import cv2
import numpy as np
import pytest

from mod_vision import MoDYOLO
from mod_vision.mjpeg import MJPEGServer

from .conftest import IMGSZ


@pytest.fixture(scope="module")
def frames(sample_yaml) -> list[np.ndarray]:
    """Distinct sample-data images, all 96 x 128 (a stream keeps one frame size)."""
    files = sorted((sample_yaml.parent / "images" / "val").glob("*.jpg")) + sorted(
        (sample_yaml.parent / "images" / "train").glob("*.jpg")
    )
    return [cv2.resize(cv2.imread(str(f)), (128, 96)) for f in files[:30]]


@pytest.fixture
def model(det_run):
    return MoDYOLO(det_run / "weights" / "best.pt")


def served_index(image: np.ndarray, frames: list[np.ndarray]) -> int | None:
    """Which served frame a received image is (JPEG round trip: small differences), or None for a filler frame."""
    errors = [np.abs(image.astype(np.int16) - f).mean() for f in frames]
    best = int(np.argmin(errors))
    return best if errors[best] < 4 else None


def predict_stream(model, url, **kwargs):
    return list(model.predict(url, stream=True, imgsz=IMGSZ, verbose=False, **kwargs))


@pytest.mark.timeout(120)
def test_stream_frames_get_shares_routing_and_heatmap_video_and_predict_ends_with_the_stream(model, frames, tmp_path):
    n = 8
    with MJPEGServer(frames[:n], end="close", fps=20) as server:
        results = predict_stream(model, server.url, stream_buffer=True, save_heatmap=True, project=str(tmp_path), name="s")
    got = [served_index(r.orig_img, frames[:n]) for r in results]
    real = [g for g in got if g is not None]
    assert real == list(range(n))  # every frame, in order (stream_buffer=True drops none)
    # when the read fails at the end, Ultralytics' reader hands on one black frame before it gives up
    assert len(results) - len(real) <= 1 and all(not r.orig_img.any() for r, g in zip(results, got) if g is None)
    for r in results:
        assert r.token_share == pytest.approx(0.5, abs=0.05)
        h, w = r.routing.input_shape
        assert r.routing.masks.shape == (3, h // 16, w // 16) and max(h, w) == IMGSZ
        assert r.routing.share == pytest.approx(r.token_share)
    (video,) = (tmp_path / "s" / "heatmaps").glob("*_depth.mp4")
    assert "127.0.0.1" in video.name
    cap = cv2.VideoCapture(str(video))
    count = 0
    while cap.read()[0]:
        count += 1
    assert count == len(results) and (cap.get(cv2.CAP_PROP_FRAME_WIDTH), cap.get(cv2.CAP_PROP_FRAME_HEIGHT)) == (128, 96)
    cap.release()


@pytest.mark.timeout(120)
def test_predict_ends_when_the_stream_drops_mid_frame_and_keeps_the_frames_it_got(model, frames):
    with MJPEGServer(frames[:12], end="drop", drop_after=5, fps=20) as server:
        results = predict_stream(model, server.url, stream_buffer=True)
    real = [g for g in (served_index(r.orig_img, frames[:12]) for r in results) if g is not None]
    assert 1 <= len(real) <= 5 and real == list(range(len(real)))  # a prefix of what was sent, never the cut frame
    assert all(r.routing is not None for r in results)


@pytest.mark.timeout(60)
def test_a_stalled_stream_ends_after_the_ffmpeg_read_timeout(model, frames, monkeypatch):
    """A camera that keeps the connection open but sends nothing: OpenCV's FFmpeg reader waits 30 s by default; the
    FFmpeg option rw_timeout (microseconds), passed through OPENCV_FFMPEG_CAPTURE_OPTIONS, shortens that."""
    monkeypatch.setenv("OPENCV_FFMPEG_CAPTURE_OPTIONS", "rw_timeout;2000000")
    with MJPEGServer(frames[:6], end="stall", drop_after=3) as server:
        results = predict_stream(model, server.url, stream_buffer=True)
    assert [g for g in (served_index(r.orig_img, frames[:6]) for r in results) if g is not None] == [0, 1, 2]


@pytest.mark.timeout(120)
def test_stream_buffer_false_keeps_only_the_newest_frame_when_the_model_is_slower(model, frames):
    """A fast stream (30 frames at once) and a consumer slowed to <= 10 frames/s: without the buffer, frames that
    arrive while the model is busy are dropped; with it (up to 30 frames), every frame is processed."""
    model.add_callback("on_predict_batch_end", lambda predictor: time.sleep(0.1))
    try:
        counts = {}
        for buffer in (True, False):
            with MJPEGServer(frames, end="close") as server:
                results = predict_stream(model, server.url, stream_buffer=buffer)
            counts[buffer] = len([r for r in results if served_index(r.orig_img, frames) is not None])
    finally:
        model.callbacks["on_predict_batch_end"].pop()
    assert counts[True] == len(frames) == 30
    assert counts[False] < len(frames) // 2


def test_stream_that_cannot_be_opened_names_the_url(model):
    with socket.socket() as s:  # a loopback port where nothing listens
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/stream"
    with pytest.raises(ConnectionError, match=f"Failed to open {url}"):
        predict_stream(model, url)


@pytest.mark.parametrize(
    "fps,i,expected", [(29.97, 0, 29.97), ([25.0, 12.0], 1, 12.0), (30, 0, 30), (0.0, 0, 30), ([90000.0], 0, 30)]
)
def test_heatmap_video_fps_follows_the_source(fps, i, expected):
    """Videos have one rate, stream loaders one per stream, the screen loader a fixed int; missing/RTP-clock rates fall
    back to 30 as in Ultralytics."""
    from types import SimpleNamespace

    from mod_vision.engine.predict import source_fps

    assert source_fps(SimpleNamespace(fps=fps), i) == expected
