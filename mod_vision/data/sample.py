"""Deterministic sample data: shapes on flat and on textured backgrounds, as a COCO json dataset plus Ultralytics labels.

Flat backgrounds are Mixture-of-Depths' best case (most patches can skip compute); textures cut from scikit-image's
bundled photographs are the honest case. Some images hold no object at all. Labels are written as COCO json first
(boxes, polygons, area, iscrowd) and converted to Ultralytics polygon labels with Ultralytics' own `convert_coco`, the
path a real COCO user takes. Polygon labels serve both tasks: Ultralytics derives detect boxes from them.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

CLASSES = ("circle", "square", "triangle", "star")
SAMPLE_ROOT = Path("datasets/mod-sample")
TEXTURES = ("grass", "gravel", "brick", "coffee", "astronaut", "chelsea", "rocket", "coins", "camera")


def _textures() -> list[np.ndarray]:
    import skimage.data

    out = []
    for name in TEXTURES:
        im = getattr(skimage.data, name)()
        im = cv2.cvtColor(im, cv2.COLOR_GRAY2BGR) if im.ndim == 2 else cv2.cvtColor(im[..., :3], cv2.COLOR_RGB2BGR)
        out.append(im)
    return out


def _shape_polygon(cls: int, cx: float, cy: float, r: float, angle: float) -> np.ndarray:
    """(P, 2) polygon of a shape of radius r centred at (cx, cy)."""
    if cls == 0:  # circle
        t = np.linspace(0, 2 * np.pi, 32, endpoint=False)
        radii = np.full_like(t, r)
    elif cls == 1:  # square
        t = np.linspace(0, 2 * np.pi, 4, endpoint=False) + np.pi / 4
        radii = np.full_like(t, r)
    elif cls == 2:  # triangle
        t = np.linspace(0, 2 * np.pi, 3, endpoint=False)
        radii = np.full_like(t, r)
    else:  # five-pointed star
        t = np.linspace(0, 2 * np.pi, 10, endpoint=False)
        radii = np.where(np.arange(10) % 2 == 0, r, r * 0.45)
    t = t + angle
    return np.stack([cx + radii * np.cos(t), cy + radii * np.sin(t)], 1)


def _background(rng, h: int, w: int, textured: bool, textures: list[np.ndarray]) -> np.ndarray:
    if not textured:
        return np.full((h, w, 3), rng.integers(0, 256, 3), np.uint8)
    tex = textures[rng.integers(len(textures))]
    scale = max(h / tex.shape[0], w / tex.shape[1], 1.0)
    if scale > 1:
        tex = cv2.resize(tex, None, fx=scale, fy=scale)
    y, x = rng.integers(0, tex.shape[0] - h + 1), rng.integers(0, tex.shape[1] - w + 1)
    return np.ascontiguousarray(tex[y : y + h, x : x + w])


RADII = ((1.0, 0.05, 0.2),)  # (weight, smallest, largest) radius as a share of the short side: one uniform range
# The "scenes" split: larger images, many small objects, some medium and a few large ones
SCENES = dict(size=(480, 640), max_objects=24, radii=((0.6, 0.015, 0.04), (0.3, 0.04, 0.1), (0.1, 0.1, 0.2)))


def _radius(rng, radii) -> float:
    if len(radii) == 1:  # one range: the draw the sample data has always made (same images for the same seed)
        return rng.uniform(*radii[0][1:])
    weights = np.array([r[0] for r in radii], dtype=float)
    _, lo, hi = radii[rng.choice(len(radii), p=weights / weights.sum())]
    return rng.uniform(lo, hi)


def _image(rng, h, w, textured, textures, max_objects, radii=RADII):
    """One image and its objects as (class, polygon) pairs; objects never overlap so the polygons are the true masks."""
    img = _background(rng, h, w, textured, textures)
    objects, boxes = [], []
    for _ in range(rng.integers(1, max_objects + 1) if rng.random() > 0.1 else 0):  # about 10% are empty
        for _try in range(20):
            r = _radius(rng, radii) * min(h, w)
            cx, cy = rng.uniform(r, w - r), rng.uniform(r, h - r)
            box = (cx - r - 2, cy - r - 2, cx + r + 2, cy + r + 2)
            if all(box[2] < b[0] or box[0] > b[2] or box[3] < b[1] or box[1] > b[3] for b in boxes):
                break
        else:
            continue
        cls = int(rng.integers(len(CLASSES)))
        poly = _shape_polygon(cls, cx, cy, r, rng.uniform(0, 2 * np.pi))
        color = tuple(int(c) for c in rng.integers(0, 256, 3))
        cv2.fillPoly(img, [np.round(poly).astype(np.int32)], color, lineType=cv2.LINE_AA)
        objects.append((cls, poly))
        boxes.append(box)
    return img, objects


def _annotation(ann_id: int, image_id: int, cls: int, poly: np.ndarray, w: int, h: int) -> dict:
    poly = np.clip(poly, 0, [w, h])
    x0, y0 = poly.min(0)
    x1, y1 = poly.max(0)
    return {
        "id": ann_id,
        "image_id": image_id,
        "category_id": cls + 1,
        "segmentation": [np.round(poly, 2).ravel().tolist()],
        "area": float(cv2.contourArea(poly.astype(np.float32))),
        "bbox": [round(float(x0), 2), round(float(y0), 2), round(float(x1 - x0), 2), round(float(y1 - y0), 2)],
        "iscrowd": 0,
    }


MARKER = ".mod_vision_sample"  # in every root the generator writes: the proof that it may delete and rewrite it
MARKER_TEXT = "written by mod_vision's sample-data generator (mod_vision.data.make_sample_data), which may replace it\n"
YAML_HEADER = "# mod_vision sample data"  # the first line of the sample.yaml it writes
# what the generator writes at the top of its root; Ultralytics adds its label caches inside labels/
WRITTEN = {MARKER, "sample.yaml", "images", "labels", "annotations"} | {
    f"{split}_{kind}.txt" for split in ("train", "val") for kind in ("flat", "textured")
}


def check_sample_root(root: Path) -> None:
    """Refuse a root the generator may not replace: a file, or a folder that holds anything it did not write.

    A folder may be replaced when it does not exist, is empty, or holds the generator's marker (or, for sample data
    generated before the marker existed, a sample.yaml whose first line is the generator's header) and nothing beyond
    the files and folders the generator writes. Anything else (the working directory, a dataset, a project) is someone
    else's work."""
    if not root.exists():
        return
    if not root.is_dir():
        raise FileExistsError(f"sample data root {root} is a file, not a folder: give a new or empty folder as root=")
    entries = {p.name for p in root.iterdir()}
    if not entries:
        return
    yaml = root / "sample.yaml"
    first_line = ""
    if yaml.is_file():
        with open(yaml, errors="replace") as f:
            first_line = f.readline(200)
    if MARKER not in entries and not first_line.startswith(YAML_HEADER):
        raise FileExistsError(
            f"sample data root {root} exists and was not written by the sample-data generator (no {MARKER} in it): "
            f"it is not deleted; give a new or empty folder as root="
        )
    others = sorted(entries - WRITTEN)
    if others:
        shown = ", ".join(others[:5]) + (f" and {len(others) - 5} more" if len(others) > 5 else "")
        raise FileExistsError(
            f"sample data root {root} holds files the sample-data generator did not write ({shown}): it is not "
            f"deleted; move them out, or give a new or empty folder as root="
        )


def make_sample_data(
    root: str | Path = SAMPLE_ROOT,
    n_train: int = 400,
    n_val: int = 100,
    seed: int = 0,
    size: tuple[int, int] = (192, 320),
    max_objects: int = 6,
    textured_share: float = 0.5,
    radii: tuple[tuple[float, float, float], ...] = RADII,
    scenes: bool = False,
) -> Path:
    """Write the sample dataset under `root` and return the path of its data YAML.

    `radii` are (weight, smallest, largest) object radius ranges as shares of the image's short side, one drawn per
    object by weight. `scenes=True` writes the "scenes" split instead (`SCENES`: 480-640 px images with up to 24
    objects, most of them small, some medium, a few large), where routing has room to matter.

    Image ids are numeric file stems, unique across splits, so Ultralytics' COCO json predictions match the json's ids.
    Each json image entry also records its `background` ('flat' or 'textured'); `val_flat.txt` and `val_textured.txt`
    list the val images of each kind, for evaluating the two cases apart.

    An existing `root` is replaced only when the generator wrote it (see `check_sample_root`); otherwise a
    FileExistsError names it and nothing is touched.
    """
    for key, value in (("n_train", n_train), ("n_val", n_val)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{key} must be an integer >= 1 (images to write), got {key}={value!r}")
    from ultralytics.data.converter import convert_coco
    from ultralytics.utils import LOGGER

    if scenes:
        size, max_objects, radii = SCENES["size"], SCENES["max_objects"], SCENES["radii"]
    root = Path(root).resolve()
    check_sample_root(root)  # before anything is written or logged
    start = time.perf_counter()
    LOGGER.info(
        f"Generating the mod_vision sample data in {root}: {n_train} train and {n_val} val images of shapes on flat and "
        f"textured backgrounds, with COCO json and Ultralytics labels (seed {seed})..."
    )
    # what is inside goes, the folder itself stays (it may be the working directory, or a mount point)
    for entry in root.iterdir() if root.exists() else ():
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()
    root.mkdir(parents=True, exist_ok=True)
    # written first, so that a generation stopped halfway still leaves a folder the next run may replace
    (root / MARKER).write_text(MARKER_TEXT)
    rng = np.random.default_rng(seed)
    textures = _textures()
    categories = [{"id": i + 1, "name": n, "supercategory": "shape"} for i, n in enumerate(CLASSES)]
    image_id, ann_id = 0, 0
    for split, count in (("train", n_train), ("val", n_val)):
        (root / "images" / split).mkdir(parents=True)
        images, annotations, lists = [], [], {"flat": [], "textured": []}
        for _ in range(count):
            image_id += 1
            h, w = (int(v) for v in rng.integers(size[0], size[1] + 1, 2))
            textured = bool(rng.random() < textured_share)
            img, objects = _image(rng, h, w, textured, textures, max_objects, radii)
            name = f"{image_id:012d}.jpg"
            cv2.imwrite(str(root / "images" / split / name), img, [cv2.IMWRITE_JPEG_QUALITY, 92])
            kind = "textured" if textured else "flat"
            images.append({"id": image_id, "file_name": name, "width": w, "height": h, "background": kind})
            lists[kind].append(f"./images/{split}/{name}")
            for cls, poly in objects:
                ann_id += 1
                annotations.append(_annotation(ann_id, image_id, cls, poly, w, h))
        (root / "annotations").mkdir(exist_ok=True)
        coco = {"info": {"description": "mod_vision sample data", "seed": seed}, "images": images,
                "annotations": annotations, "categories": categories}  # fmt: skip
        (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(coco))
        for kind, files in lists.items():
            (root / f"{split}_{kind}.txt").write_text("\n".join(files) + "\n")

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "converted"
        convert_coco(str(root / "annotations"), str(out), use_segments=True, cls91to80=False)
        shutil.move(str(out / "labels"), str(root / "labels"))

    yaml_path = root / "sample.yaml"
    names = "\n".join(f"  {i}: {n}" for i, n in enumerate(CLASSES))
    yaml_path.write_text(
        f"# mod_vision sample data (seed {seed}): written by `mod-vision sample-data`\n"
        f"path: {root}\ntrain: images/train\nval: images/val\n"
        f"coco_json: # COCO ground truth, used by the validator for COCO metrics\n"
        f"  train: annotations/instances_train.json\n  val: annotations/instances_val.json\n"
        f"names:\n{names}\n"
    )
    LOGGER.info(f"Sample data written in {time.perf_counter() - start:.1f}s: {yaml_path}")
    return yaml_path
