"""COCO metrics from a COCO-format annotation json, through faster-coco-eval (the evaluator Ultralytics itself uses).

Why not Ultralytics' own COCO path (`DetectionValidator.eval_json` and `coco_evaluate`): it scores against
`annotations/instances_val2017.json` only when the val split is COCO's `val2017.txt` (image ids from the file names as
integers, COCO's 80-to-91 class map), against an LVIS file for LVIS, and for any other detect data against ground truth
it rebuilds from the YOLO labels; it cannot score against the data set's own COCO json (`coco_json:` in the data YAML),
with that json's image ids (matched here by file name) and category ids (matched by name), and for other segment data
it runs no COCO evaluation at all. It turns a failed evaluation into a warning, so a run would report Ultralytics' mAP
where COCO AP was asked for (here the validator raises COCOEvalError). And it returns no AP75 and no COCO numbers of
their own: it writes COCO's AP over Ultralytics' `metrics/mAP50-95(B)` (for COCO and LVIS) and APs/APm/APl as
`metrics/mAP_small(B)`..., where mod_vision keeps COCO's numbers apart (`metrics.coco`). What is shared: the evaluator,
Ultralytics' `pred_to_json` (the validator only sets its `class_map` and the image ids), and its `save_json` switch.
`coco_evaluate` here is also used without a validator (tools/video_reuse.py).
"""

from __future__ import annotations

import json
from pathlib import Path

from ultralytics.utils import LOGGER

# our name -> faster-coco-eval's stats_as_dict key
COCO_METRICS = {"AP": "AP_all", "AP50": "AP_50", "AP75": "AP_75", "APs": "AP_small", "APm": "AP_medium", "APl": "AP_large"}


def coco_evaluate(anno: str | Path | dict, predictions: list[dict], iou_type: str = "bbox", img_ids=None, verbose=True):
    """Evaluate COCO-format predictions against ground truth; returns {AP, AP50, AP75, APs, APm, APl}.

    Args:
        anno: annotation json path, or the loaded dict.
        predictions: COCO result dicts (image_id, category_id, score, and bbox or segmentation).
        iou_type: 'bbox' or 'segm'.
        img_ids: evaluate on these image ids only (the images the validator saw); default all in `anno`.
    """
    from faster_coco_eval import COCO, COCOeval_faster

    gt = COCO(str(anno) if isinstance(anno, Path) else anno)
    if not predictions:
        return dict.fromkeys(COCO_METRICS, 0.0)
    dt = gt.loadRes(predictions)
    ev = COCOeval_faster(gt, dt, iouType=iou_type, print_function=LOGGER.info if verbose else (lambda *a: None))
    if img_ids is not None:
        ev.params.imgIds = list(img_ids)
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    return {k: float(ev.stats_as_dict[v]) for k, v in COCO_METRICS.items()}


class COCOEvalError(RuntimeError):
    """COCO evaluation against the json a data YAML names failed: the run has no COCO metrics to report."""


# what a validation without a COCO json reports instead: Ultralytics' box mAP (its own matcher and interpolation),
# named as such wherever it is shown
ULTRALYTICS_BOX_AP = {"AP": ("map", "Ultralytics box mAP50-95"), "AP50": ("map50", "Ultralytics box mAP50")}


def box_ap(metrics, which: str = "AP") -> tuple[float, str]:
    """(value, name of the metric) of a validation's box AP ('AP' or 'AP50'): COCO's, from faster-coco-eval, when the
    data named a COCO json; else Ultralytics' mAP, named so, never under COCO's name. A validation against a COCO json
    without COCO metrics raises instead of falling back."""
    if getattr(metrics, "coco_json", None):
        key = f"metrics/coco_{which}(B)"
        if key not in metrics.coco:
            raise COCOEvalError(f"the validation against {metrics.coco_json} has no {key}: its COCO evaluation did not run")
        return float(metrics.coco[key]), f"COCO box {which} (faster-coco-eval)"
    attr, name = ULTRALYTICS_BOX_AP[which]
    return float(getattr(metrics.box, attr)), name


def coco_json_for(data: dict, split: str) -> Path | None:
    """The COCO annotation json a data YAML names for a split (`coco_json: {val: ...}`), resolved against its path.

    None when the YAML names none for this split; a named json that is not on disk raises: silently validating without
    the COCO metrics the YAML asks for would look like a successful run.
    """
    spec = (data.get("coco_json") or {}).get(split)
    if not spec:
        return None
    path = Path(spec)
    if not path.is_absolute():
        path = Path(data.get("path", "")) / path
    if not path.is_file():
        raise FileNotFoundError(
            f"coco_json {split}: {path} is named in the data YAML {data.get('yaml_file', '')} but does not exist; "
            f"fix the path, or remove the coco_json entry to validate without COCO metrics"
        )
    return path


def load_coco_json(path: Path) -> dict:
    """The json's `categories` and `images` (what the class and image-id maps need)."""
    with open(path, encoding="utf-8") as f:
        gt = json.load(f)
    if not isinstance(gt, dict) or not isinstance(gt.get("categories"), list) or not isinstance(gt.get("images"), list):
        raise ValueError(f"{path} is not a COCO annotation json: it needs 'categories' and 'images' lists")
    return {"categories": gt["categories"], "images": gt["images"]}


def coco_category_ids(categories: list[dict], names: dict[int, str], source) -> list[int]:
    """Class index -> the json's own category id, matched by name (so 0-based ids, ids with gaps and COCO's 1..90
    all score the right class). Raises, showing both lists, unless the json's category names are the data's names."""
    json_ids = {}
    for c in categories:
        if "name" not in c or "id" not in c:
            raise ValueError(f"{source}: every category needs an 'id' and a 'name', got {c}")
        if c["name"] in json_ids:
            raise ValueError(f"{source}: category name '{c['name']}' appears twice (ids {json_ids[c['name']]}, {c['id']})")
        json_ids[c["name"]] = c["id"]
    ours = [names[i] for i in sorted(names)]
    if sorted(json_ids) != sorted(ours):
        theirs = {i: n for n, i in sorted(json_ids.items(), key=lambda x: x[1])}
        raise ValueError(
            f"the categories of {source} do not match the data YAML's names, so COCO metrics would score the wrong "
            f"classes.\n  json categories (id: name): {theirs}\n  data YAML names (class: name): "
            f"{dict(enumerate(ours))}\n  only in the json: {sorted(set(json_ids) - set(ours))}; only in the YAML: "
            f"{sorted(set(ours) - set(json_ids))}"
        )
    return [json_ids[n] for n in ours]


def coco_image_ids(images: list[dict], im_files: list[str], source) -> dict[str, int]:
    """Image file -> the json's image id, matched by file name as the json records it (`images[].file_name`: a name, or
    a relative path that ends the image's path; a unique base name also matches). Images the json lacks are left out
    with a warning; none matching raises."""
    by_name = {}
    for im in images:
        name = str(im.get("file_name", "")).replace("\\", "/")
        by_name.setdefault(Path(name).name, []).append((name, im["id"]))
    out, ambiguous = {}, []
    for f in im_files:
        posix = Path(f).as_posix()
        hits = [i for name, i in by_name.get(Path(f).name, []) if posix == name or posix.endswith("/" + name.lstrip("/"))]
        hits = hits or [i for _, i in by_name.get(Path(f).name, [])]  # a unique base name suffices
        if len(hits) == 1:
            out[f] = hits[0]
        elif hits:
            ambiguous.append(f)
    if ambiguous:
        raise ValueError(f"{source}: several json images share the file name of {ambiguous[0]} (and {len(ambiguous) - 1} more)")
    if not out:
        example = Path(im_files[0]).name if im_files else "-"
        recorded = [im.get("file_name") for im in images[:3]]
        raise ValueError(
            f"none of the {len(im_files)} val images is in {source}: images are matched by file name (e.g. "
            f"'{example}'), and the json records file names such as {recorded}. Point coco_json at this split's "
            f"annotations, or remove the coco_json entry to validate without COCO metrics"
        )
    if len(out) < len(im_files):
        missing = [Path(f).name for f in im_files if f not in out]
        LOGGER.warning(
            f"{len(missing)} of {len(im_files)} val images are not in {source} (e.g. {missing[:3]}): COCO metrics leave "
            f"them out"
        )
    return out
