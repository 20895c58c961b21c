"""`mod-vision compare`'s arms and settings: an arm from its YAML or dict, the data sets, the background kinds' data
YAMLs, the key=value arguments, and the one-line refusals of settings that cannot run, before any training."""

from __future__ import annotations

from pathlib import Path


PREFIX = "mod-vision compare"
BACKGROUNDS = ("flat", "textured")  # the sample data's kinds, each with its lists (train_<kind>.txt, val_<kind>.txt)


def is_stock(arm: str) -> bool:
    """An Ultralytics model (yolo11n.yaml, yolo26n-seg.yaml): trained and loaded with `ultralytics.YOLO`."""
    return Path(arm).name.startswith("yolo")


def as_arm(value) -> dict:
    """An arm as `compare` takes it: a model YAML, which also names the arm, or {"model": YAML, "name": NAME, **its own
    training arguments}. Returns {"name", "model", "train"}."""
    if not isinstance(value, dict):
        return {"name": str(value), "model": str(value), "train": {}}
    spec = dict(value)
    model = spec.pop("model", None)
    if not isinstance(model, str):
        raise SystemExit(f"{PREFIX}: an arm given as a dict needs 'model': a model YAML, got {value!r}")
    return {"name": str(spec.pop("name", model)), "model": model, "train": spec}


def label(name: str) -> str:
    """An arm in tables and file names: a model file by its stem (hybrid12-det-n), another name as it is (mod-c0.5)."""
    return Path(name).stem if Path(name).suffix in {".yaml", ".yml", ".pt"} else name


def as_list(value, kind=str) -> list:
    """A list argument as `key=value` gives it: a list, one value, or a string '[a,b]' / 'a,b' (smart_value leaves a
    list of names unparsed)."""
    if isinstance(value, str):
        value = [v.strip() for v in value.strip("[]").split(",") if v.strip()]
    return [kind(v) for v in (value if isinstance(value, (list, tuple)) else [value])]


def parse_extra(items: list[str] | None) -> dict:
    """`KEY=VALUE` items, values parsed as YAML (2, 0.1, [0.25, 1.0]): the tools' `--extra`."""
    import yaml

    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"--extra takes KEY=VALUE, got {item!r}")
        out[key] = yaml.safe_load(value)
    return out


def data_sets(data) -> dict:
    """{split: data YAML}: {None: data} for one data set ('sample': the sample data, generated on first use), or the
    named data sets of data={split: YAML}."""
    if isinstance(data, dict):
        return {str(k): str(v) for k, v in data.items()}
    if data == "sample":
        from ..data import sample_data_yaml

        data = sample_data_yaml()
    return {None: str(data)}


def split_yamls(data: str | Path, folder: Path, stem: str, parts=("val",), kinds=BACKGROUNDS,
                required: bool = False) -> dict[str, str]:  # fmt: skip
    """One data YAML per background kind whose `parts` are that kind's lists (val_flat.txt, ...), written to
    `folder/<stem>_<kind>.yaml`. A kind without its lists is left out, or with `required` raises. The COCO json stays
    the full one: the validator scores only the image ids its loader holds, so each is that kind's AP."""
    from ultralytics.utils import YAML

    spec = YAML.load(data)
    root = Path(spec.get("path") or Path(data).parent)
    out = {}
    for kind in kinds:
        missing = [root / f"{part}_{kind}.txt" for part in parts if not (root / f"{part}_{kind}.txt").is_file()]
        if missing and required:
            raise FileNotFoundError(f"{missing[0]} missing; splits are 'flat' and 'textured'")
        if not missing:
            path = Path(folder) / f"{stem}_{kind}.yaml"
            YAML.save(path, {**{k: v for k, v in spec.items() if k != "yaml_file"}, "path": str(root),
                             **{part: f"{part}_{kind}.txt" for part in parts}})  # fmt: skip
            out[kind] = str(path)
    return out


def check_arm(arm: str) -> None:
    """Build the arm once before any training, so that a misspelt YAML fails now and not after hours of other arms."""
    from ultralytics import YOLO

    from .. import MoDYOLO

    try:
        (YOLO if is_stock(arm) else MoDYOLO)(arm)
    except Exception as e:  # Ultralytics raises FileNotFoundError, KeyError or AssertionError for a YAML it lacks
        raise SystemExit(f"{PREFIX}: unknown arm '{arm}' ({type(e).__name__}: {' '.join(str(e).split())[:200]}); "
                         f"arms are model YAMLs: mod_vision's (cfg/models/) or Ultralytics' (yolo11n.yaml)") from e


def check_settings(arms: list[dict], seeds: list[int], latency_imgsz: list[int], extra, **counts) -> None:
    """Refuse, in one line and before any training, settings that cannot run (`counts`: integer settings)."""
    for key, value in counts.items():
        least = 0 if key in ("workers", "warmup") else 1
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise SystemExit(f"{PREFIX}: {key} must be an integer >= {least}, got {key}={value!r}")
    labels = [label(a["name"]) for a in arms]
    if not arms or not seeds:
        raise SystemExit(f"{PREFIX}: give at least one arm and one seed, got arms={labels} seeds={seeds}")
    if len(set(labels)) < len(labels):
        raise SystemExit(f"{PREFIX}: two arms share a name ({labels}); give each dict arm its own 'name'")
    if any(s <= 0 for s in latency_imgsz):
        raise SystemExit(f"{PREFIX}: latency_imgsz must be positive sizes (or [] for no timing), got {latency_imgsz}")
    if not isinstance(extra or {}, dict):
        raise SystemExit(f"{PREFIX}: extra must be a dict of mod_vision training arguments, got extra={extra!r}")


def check_study(arms: list[dict], capacities, latency_imgsz: list[int], data, reference, baseline, targets) -> None:
    """Refuse, in one line, a capacity study's settings that cannot run, and study settings without `capacities`."""
    names = [a["name"] for a in arms]
    if capacities is None:
        given = [k for k, v in (("data={split: YAML}", isinstance(data, dict)), ("baseline", baseline),
                                ("targets", targets)) if v]  # fmt: skip
        if given:
            raise SystemExit(f"{PREFIX}: {', '.join(given)} belong to a capacity study: give capacities=[...]")
    elif not capacities or not all(0 < c <= 1 for c in capacities):
        raise SystemExit(f"{PREFIX}: capacities must be a list of capacities in (0, 1], got capacities={capacities}")
    elif len(latency_imgsz) > 1:
        raise SystemExit(f"{PREFIX}: a capacity study times each arm at each capacity at one size; give "
                         f"latency_imgsz=[SIZE] (or [] for no timing), got {latency_imgsz}")  # fmt: skip
    if isinstance(data, dict) and not data:
        raise SystemExit(f"{PREFIX}: data={{}} names no split")
    for key, arm in (("reference", reference), ("baseline", baseline)):
        if arm is not None and arm not in names:
            raise SystemExit(f"{PREFIX}: {key}={arm!r} is not one of the arms {names}")
    shapes = ({"arm", "capacity", "within"}, {"arm", "loses_less_than", "from", "to"})
    for t in targets:
        if not isinstance(t, dict) or set(t) not in shapes:
            raise SystemExit(f"{PREFIX}: a target is {{arm, capacity, within}} or {{arm, loses_less_than, from, to}}, "
                             f"got {t!r}")  # fmt: skip
        if {t["arm"], t.get("loses_less_than", t["arm"])} - set(names):
            raise SystemExit(f"{PREFIX}: target {t!r} names an arm that is not one of {names}")
        if "within" in t and reference is None:
            raise SystemExit(f"{PREFIX}: target {t!r} is judged against the reference arm: give reference=ARM")


def cli_args(args: dict) -> dict:
    """`mod-vision compare` key=value arguments: mod_vision's training arguments (capacity=, router_aux=, ...) go to
    the mod_vision arms' `extra`; the rest are `compare`'s own."""
    from ..cfg import EXTRA_ARGS

    extra = {k: args.pop(k) for k in list(args) if k in EXTRA_ARGS}
    return {**args, "extra": {**args.get("extra", {}), **extra}} if extra else args
