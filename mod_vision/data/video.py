"""A sample fixed-camera video with ground truth: shapes moving over a still flat or photographic background.

The shapes are the sample data's (same classes, same drawing), each moving in a straight line at its own speed; some
enter or leave the frame during the clip. Optional Gaussian sensor noise (per frame, per pixel) and a scene cut (a new
background and new objects from that frame on). The ground truth is a COCO json with one image entry per frame
(`frame`: its index in the video) and the visible part of each object's polygon, so predictions are scored with the
same COCO evaluator as everything else.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from .sample import CLASSES, _annotation, _background, _shape_polygon, _textures

DESCRIPTION = "mod_vision sample video"  # the ground truth's info.description: the proof that the generator wrote it


@dataclass
class Mover:
    cls: int
    color: tuple[int, int, int]
    radius: float
    start: np.ndarray  # (x, y) centre at frame 0 of its scene
    velocity: np.ndarray  # pixels per frame
    angle: float
    spin: float  # radians per frame

    def polygon(self, t: int) -> np.ndarray:
        c = self.start + t * self.velocity
        return _shape_polygon(self.cls, c[0], c[1], self.radius, self.angle + t * self.spin)


def _movers(rng, w: int, h: int, n: int, radius: tuple[float, float]) -> list[Mover]:
    """n shapes: about half in view from the start, the others entering from an edge; all at different speeds."""
    out = []
    for i in range(n):
        r = rng.uniform(*radius) * min(w, h)
        speed = rng.uniform(0.3, 3.0) * (1 + i)  # pixels per frame, one speed per object
        if i % 2 == 0:  # in view at the start, somewhere inside
            start = np.array([rng.uniform(r, w - r), rng.uniform(r, h - r)])
            heading = rng.uniform(0, 2 * np.pi)
        else:  # enters: starts just outside an edge, heads across the frame
            edge = rng.integers(4)
            start = np.array([[-r, rng.uniform(r, h - r)], [w + r, rng.uniform(r, h - r)],
                              [rng.uniform(r, w - r), -r], [rng.uniform(r, w - r), h + r]][edge])  # fmt: skip
            target = np.array([rng.uniform(0.3, 0.7) * w, rng.uniform(0.3, 0.7) * h])
            heading = np.arctan2(*(target - start)[::-1])
        velocity = speed * np.array([np.cos(heading), np.sin(heading)])
        color = tuple(int(c) for c in rng.integers(0, 256, 3))
        out.append(Mover(int(rng.integers(len(CLASSES))), color, r, start, velocity, rng.uniform(0, 2 * np.pi),
                         rng.uniform(-0.03, 0.03)))  # fmt: skip
    return out


def make_sample_video(
    path: str | Path,
    frames: int = 90,
    size: tuple[int, int] = (640, 480),
    textured: bool = False,
    objects: int = 3,
    radius: tuple[float, float] = (0.06, 0.12),
    noise: float = 0.0,
    scene_cut: int | None = None,
    fps: float = 15,
    seed: int = 0,
) -> tuple[Path, Path]:
    """Write an mp4 (OpenCV's mp4v) at `path` and its COCO ground truth beside it (`<stem>.json`); return both paths.
    Files already there are replaced only when this generator wrote them (`check_video_paths`).

    Args:
        size: (width, height) in pixels.
        objects: moving shapes per scene (1-6 gives the brief's fixed-camera scene).
        radius: each shape's radius as a share of the short side, drawn uniformly (0.06-0.12: a few percent of the
            frame each).
        noise: standard deviation of Gaussian sensor noise on 8-bit pixels, new on every frame (0: none).
        scene_cut: the frame from which a new background and new shapes are shown (None: one scene).
    """
    if isinstance(frames, bool) or not isinstance(frames, int) or frames < 1:
        raise ValueError(f"frames must be an integer >= 1, got frames={frames!r}")
    if (not isinstance(size, (list, tuple)) or len(size) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 16 for v in size)):
        raise ValueError(f"size must be [width, height] in pixels, each an integer >= 16, got size={size!r}")
    path, (w, h) = Path(path), size
    if not 1 <= objects <= 6:
        raise ValueError(f"objects must be 1-6 moving shapes, got {objects}")
    if scene_cut is not None and not 0 < scene_cut < frames:
        raise ValueError(f"scene_cut must be a frame index in 1..{frames - 1}, got {scene_cut}")
    check_video_paths(path)
    rng = np.random.default_rng(seed)
    textures = _textures() if textured else []
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
    if not writer.isOpened():
        raise RuntimeError(f"OpenCV cannot write {path}")
    images, annotations = [], []
    scene_start, scene = 0, None
    for t in range(frames):
        if scene is None or t == scene_cut:
            scene_start = t
            scene = _background(rng, h, w, textured, textures), _movers(rng, w, h, objects, radius)
        background, movers = scene
        img = background.copy()
        image_id = t + 1
        for m in movers:
            poly = m.polygon(t - scene_start)
            if (poly[:, 0].max() <= 0) or (poly[:, 1].max() <= 0) or (poly[:, 0].min() >= w) or (poly[:, 1].min() >= h):
                continue  # out of view
            cv2.fillPoly(img, [np.round(poly).astype(np.int32)], m.color, lineType=cv2.LINE_AA)
            visible = _visible(poly, w, h)
            if visible is not None:
                annotations.append(_annotation(len(annotations) + 1, image_id, m.cls, visible, w, h))
        if noise:
            img = np.clip(img + rng.normal(0, noise, img.shape), 0, 255).astype(np.uint8)
        writer.write(img)
        images.append({"id": image_id, "file_name": f"{path.stem}_{t:06d}.jpg", "width": w, "height": h, "frame": t,
                       "background": "textured" if textured else "flat"})  # fmt: skip
    writer.release()
    categories = [{"id": i + 1, "name": n, "supercategory": "shape"} for i, n in enumerate(CLASSES)]
    info = {"description": DESCRIPTION, "seed": seed, "noise": noise, "scene_cut": scene_cut, "fps": fps}
    gt = path.with_suffix(".json")
    gt.write_text(json.dumps({"info": info, "images": images, "annotations": annotations, "categories": categories}))
    return path, gt


def check_video_paths(path: Path) -> None:
    """Refuse to overwrite what the generator did not write: the video and its `<stem>.json` may be replaced only when
    that json is the generator's own ground truth (its info.description); a path that is a folder, or a json path
    (which the ground truth would overwrite), is refused too."""
    gt = path.with_suffix(".json")
    if path.suffix.lower() == ".json":
        raise ValueError(f"sample video path {path} is a .json path, where its ground truth goes: give a video path")
    if path.is_dir():
        raise FileExistsError(f"sample video path {path} is a folder: give a video file path, e.g. {path / 'clip.mp4'}")
    if not (path.exists() or gt.exists()):
        return
    try:
        ours = json.loads(gt.read_text()).get("info", {}).get("description") == DESCRIPTION
    except (OSError, ValueError, AttributeError):
        ours = False
    if not ours:
        taken = " and ".join(str(p) for p in (path, gt) if p.exists())
        raise FileExistsError(
            f"{taken} exists and was not written by the sample-video generator: it is not overwritten; "
            f"give another path="
        )


def _visible(poly: np.ndarray, w: int, h: int, min_pixels: float = 16.0) -> np.ndarray | None:
    """The part of a polygon inside the frame (Sutherland-Hodgman against the 4 edges; shapes are convex or stars,
    and a star's clipped outline still bounds its visible pixels), or None when less than `min_pixels` of it shows."""
    pts = [tuple(p) for p in poly]
    for axis, limit, keep_below in ((0, 0, False), (0, w, True), (1, 0, False), (1, h, True)):
        inside = (lambda p: p[axis] <= limit) if keep_below else (lambda p: p[axis] >= limit)
        out = []
        for a, b in zip(pts, pts[1:] + pts[:1]):
            if inside(b):
                if not inside(a):
                    out.append(_cross(a, b, axis, limit))
                out.append(b)
            elif inside(a):
                out.append(_cross(a, b, axis, limit))
        pts = out
        if not pts:
            return None
    clipped = np.array(pts, dtype=np.float64)
    if len(clipped) < 3 or cv2.contourArea(clipped.astype(np.float32)) < min_pixels:
        return None
    return clipped


def _cross(a, b, axis: int, limit: float) -> tuple[float, float]:
    t = (limit - a[axis]) / (b[axis] - a[axis])
    return a[0] + t * (b[0] - a[0]), a[1] + t * (b[1] - a[1])
