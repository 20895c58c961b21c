"""`mod-vision MODE key=value ...`: Ultralytics-style commands for routed models.

With no `data=`, `mod-vision train` generates the sample data on first use and trains on it.
"""

from __future__ import annotations

import sys

from .defaults import DEFAULT_CAPACITIES

HELP = """Usage: mod-vision MODE [key=value ...]

MODE:
  train        train a model (default model=modnext-det.yaml; default data: the sample data, generated on first use)
  val          validate; COCO metrics are computed when the data YAML names a `coco_json`
  predict      predict on an image, folder, video, URL/stream or webcam index (source=...)
  heatmap      predict and write routing heatmaps (tokens per routed block, depth map, compute share) to
               <run>/heatmaps: images for images, <stem>_depth.mp4 for videos and streams
  export       export with the routing kept in the graph (format=onnx|openvino|litert|torchscript|coreml|engine)
  sweep        validate at several capacities (capacities=[1.0,0.5,0.25,0.125]): mAP-vs-capacity table and plot
  benchmark    side-by-side latency/FLOPs/memory benchmark (same arguments as tools/benchmark.py, e.g. imgsz=640)
  compare      train arms alike (model YAMLs, mod_vision's or Ultralytics'), COCO box AP per seed and CPU latency:
               arms=[hybrid12-det-n.yaml,yolo11n.yaml] data=sample epochs=40 imgsz=160 seeds=[0,1] latency_imgsz=[640];
               mod_vision's arguments (capacity=...) go to the mod_vision arms; runs/compare/<name>/results.md and .csv
               capacities=[1.0,0.5,0.25]  a capacity study: each arm scored and timed at each capacity
               reference=ARM              the dense twin that latency_ratio and `within` targets are against
               baseline=ARM               judged: is a routed arm more accurate than ARM at equal or lower latency
               targets=[{...}]            judged in the report: {arm,capacity,within} or {arm,loses_less_than,from,to}
  info         print the model summary, and routing-aware GFLOPs at imgsz (default 640) across capacities
  sample-data  write the sample dataset (root=datasets/mod-sample n_train=400 n_val=100 seed=0; scenes=True for the
               "scenes" split: 480-640 px images, many small objects)
  sample-video write a fixed-camera sample video and its COCO ground truth (path=clip.mp4 frames=90 size=[640,480]
               textured=False objects=3 noise=0 scene_cut=None seed=0)
  help         this text

Arguments are Ultralytics' (https://docs.ultralytics.com/usage/cfg/), e.g. epochs=10 imgsz=320 batch=16 device=cpu,
plus mod_vision's:
  capacity=0.25             share of tokens each routed block processes at train/val/predict/export time, in (0, 1]
  capacity_range=[0.125,1]  elastic training: each batch trains at a capacity drawn from this range
  capacity_warmup=3         epochs over which training capacity ramps down from 1.0 to its target
  capacity_full_share=0.5   share of training batches run at capacity 1.0, the others elastic or at the model's own
  capacity_distill=1.0      weight of distilling each batch below capacity 1.0 from the same model at 1.0 (default 0)
  dynamic_training=[0.1,1]  train per image: each block trains on the tokens its predictor finds, within bounds
  router_aux=0.1            weight of the loss that trains the routers' predictors (for dynamic mode)
  router_rank=1.0           weight of the loss that teaches the routers' scorers to rank object tokens first (default 0: off)
  dynamic_capacity=[0.05,1] val/predict: per image, as many tokens as the predictors find on objects, within bounds
  routing=random            val/predict: how routed blocks rank tokens: topk (learned, default), object or random
  save_heatmap=True         predict: also write routing heatmaps (what the heatmap mode does)
  token_reuse=True          predict on video/frames/streams: compute only the tokens whose input changed
  reuse_threshold=0.1       token reuse: relative input change above which a token is recomputed
  reuse_refresh=30          token reuse: every 30 frames every routed token is recomputed
  bf16=True                 val/predict on CPU: the token layers' matrix products in bfloat16 (the rest float32)
  heatmap_period=5          train (plots=True): routing heatmap of a val batch every 5 epochs, and at the end
  timm_weights=FILE|NAME    train: initialise the ViT backbone from timm weights (see cfg/models/*-vits.yaml)
  router_lr_mult=5          train: router learning rate relative to lr0
  predictor_lr_mult=10      train: learning rate of dynamic mode's predictors relative to lr0
Models: cfg/models/modnext-det[-dense].yaml, {hybrid11p,hybrid11,hybrid12,modvit,hybrid}-{det,seg}[-dense].yaml, modvit-{det,seg}-{deep,vits,dinov2s}.yaml; add -n/-s/-m for a scale,
e.g. model=hybrid11p-det-s.yaml,
or a trained checkpoint, e.g. model=runs/detect/train/weights/best.pt

Examples:
  mod-vision train epochs=3 imgsz=320
  mod-vision val model=runs/detect/train/weights/best.pt capacity=0.5
  mod-vision predict model=runs/detect/train/weights/best.pt source=video.mp4 capacity=0.25
  mod-vision heatmap model=runs/detect/train/weights/best.pt source=bus.jpg
"""

DEFAULT_MODEL = "modnext-det.yaml"  # the recommended model (docs/routing_carries.md)
MODES = ("train", "val", "sweep", "predict", "heatmap", "export", "info")


def parse_args(argv: list[str]) -> dict:
    from ultralytics.cfg import parse_key_value_pair

    out = {}
    for a in argv:
        if "=" not in a:
            raise SystemExit(f"mod-vision: expected key=value, got '{a}'. Run 'mod-vision help'.")
        k, v = parse_key_value_pair(a)
        out[k] = v
    return out


TRACEBACK_ENV = "MOD_VISION_TRACEBACK"  # set to 1 for the full traceback of a user error instead of its one line
USER_ERROR = 2  # the exit code of a request that cannot be carried out as given (argparse's, and `yolo`'s)


def main(argv: list[str] | None = None) -> None:
    """Console entry point: exit 0 on success; a user error (a bad argument, a file or data set not there, a source
    that cannot be reached) prints one line, `mod-vision MODE: what was wrong and what is valid`, and exits 2. The full
    traceback is shown only with MOD_VISION_TRACEBACK=1."""
    import os
    import traceback

    try:
        run(sys.argv[1:] if argv is None else argv)
    except SystemExit as e:
        if not isinstance(e.code, str):  # an exit status, not a refusal
            raise
        if os.environ.get(TRACEBACK_ENV) == "1":
            traceback.print_exception(e)
        print(e.code, file=sys.stderr)
        raise SystemExit(USER_ERROR) from None
    except (ValueError, TypeError, FileNotFoundError, ConnectionError, SyntaxError, OSError) as e:
        if os.environ.get(TRACEBACK_ENV) == "1":
            raise
        mode = next(iter(sys.argv[1:] if argv is None else argv), "")
        print(f"mod-vision {mode}: {one_line(e)} (MOD_VISION_TRACEBACK=1 shows where)", file=sys.stderr)
        raise SystemExit(USER_ERROR) from None


def check_sizes(mode: str, args: dict) -> None:
    """imgsz and batch, checked before a model or data loads (Ultralytics would fail deep inside torch or its loader,
    or try to allocate tens of GB for one huge image)."""
    from .model import MAX_IMGSZ

    if "imgsz" in args:
        v = args["imgsz"]
        sizes = list(v) if isinstance(v, (list, tuple)) else [v]
        if not 1 <= len(sizes) <= 2 or not all(isinstance(x, int) and not isinstance(x, bool) and x > 0 for x in sizes):
            raise SystemExit(f"mod-vision {mode}: imgsz must be a positive integer or [height, width], got imgsz={v!r}")
        if max(sizes) > MAX_IMGSZ:
            raise SystemExit(
                f"mod-vision {mode}: imgsz={v!r} is above the limit of {MAX_IMGSZ} px per side; "
                f"give imgsz <= {MAX_IMGSZ}"
            )
    # train also takes batch=-1 (auto) and fractions of GPU memory: Ultralytics checks those
    if "batch" in args and mode != "train":
        v = args["batch"]
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise SystemExit(f"mod-vision {mode}: batch must be an integer >= 1, got batch={v!r}")


def run(argv: list[str]):
    """Run one mode and return what it returns (metrics, results, export path...). A request that cannot be carried
    out as given (`UsageError`, or a generator refusing its output path) ends as one line: SystemExit."""
    if not argv or argv[0] in {"help", "-h", "--help"}:
        print(HELP)
        return None
    mode, args = argv[0], parse_args(argv[1:])
    if mode == "sample-data":
        from .data import make_sample_data

        check_keys(mode, args, make_sample_data)
        try:
            path = make_sample_data(**args)
        except (FileExistsError, ValueError) as e:
            raise SystemExit(f"mod-vision sample-data: {e}") from e
        print(f"sample data written: {path}")
        return path
    if mode == "sample-video":
        from .data import make_sample_video

        check_keys(mode, args, make_sample_video)
        if isinstance(args.get("size"), list):
            args["size"] = tuple(args["size"])
        try:
            video, gt = make_sample_video(args.pop("path", "clip.mp4"), **args)
        except (FileExistsError, ValueError) as e:
            raise SystemExit(f"mod-vision sample-video: {e}") from e
        print(f"sample video written: {video} (ground truth {gt})")
        return video, gt

    if mode == "compare":
        from .compare import cli_args, compare

        args = cli_args(args)
        check_keys(mode, args, compare)
        return compare(**{"command": " ".join(["mod-vision", *argv]), **args})

    from .data import DatasetNotFound
    from .model import UsageError

    try:
        return run_model_mode(mode, args)
    except (UsageError, DatasetNotFound) as e:
        raise SystemExit(f"mod-vision {mode}: {one_line(e)}") from e


def check_keys(mode: str, args: dict, fn=None) -> None:
    """Refuse, in one line, a key that the mode does not take: a generator's parameters (`fn`), or Ultralytics' and
    mod_vision's arguments (Ultralytics would print its whole help and a traceback for it)."""
    import difflib
    import inspect

    if fn is not None:
        valid = set(inspect.signature(fn).parameters)
    else:
        from ultralytics.utils import DEFAULT_CFG_DICT

        from .cfg import EXTRA_ARGS

        valid = set(DEFAULT_CFG_DICT) | set(EXTRA_ARGS) | {"model", "data", "cfg", "capacities"}
    for key in args:
        if key not in valid:
            close = difflib.get_close_matches(key, sorted(valid), n=3)
            hint = f" (did you mean {' or '.join(close)}?)" if close else ""
            where = f"{fn.__name__}'s parameters: {', '.join(sorted(valid))}" if fn is not None else (
                "Ultralytics' arguments (https://docs.ultralytics.com/usage/cfg/) and mod_vision's (mod-vision help)")
            raise SystemExit(f"mod-vision {mode}: unknown argument '{key}'{hint}. Valid: {where}")


def check_model_file(mode: str, args: dict) -> None:
    """A model= that names a file (not a YAML name that cfg/models/ resolves) must exist: Ultralytics would try to
    download it, with warnings, and then fail."""
    from pathlib import Path

    model = args.get("model")
    if isinstance(model, str) and Path(model).suffix not in {"", ".yaml", ".yml"} and not Path(model).exists():
        raise SystemExit(f"mod-vision {mode}: model file '{model}' not found (give a trained checkpoint such as "
                         f"runs/detect/train/weights/best.pt, an exported model, or a model YAML)")


def one_line(error: Exception) -> str:
    """An error's message on one line (a dataset error carries Ultralytics' message and the data YAML's help on
    lines of their own)."""
    return " ".join(line.strip() for line in str(error).splitlines() if line.strip())


def run_model_mode(mode: str, args: dict):
    """The modes that load a model."""
    from . import MoDYOLO
    from .data import sample_data_yaml

    if mode == "benchmark":
        from .benchmark import benchmark

        check_keys(mode, args, benchmark)
        for key, least in (("imgsz", 1), ("batch", 1), ("runs", 1), ("warmup", 0)):  # one value or a list of them
            values = args.get(key, least)
            values = values if isinstance(values, (list, tuple)) else [values]
            if not values or not all(isinstance(v, int) and not isinstance(v, bool) and v >= least for v in values):
                raise SystemExit(f"mod-vision benchmark: {key} must be an integer >= {least} or a list of them, "
                                 f"got {key}={args[key]!r}")
        return benchmark(**args)
    if mode not in MODES:
        raise SystemExit(f"mod-vision: unknown mode '{mode}'. Modes: {', '.join(MODES)}, benchmark, compare, sample-data, sample-video, help")
    check_keys(mode, args)
    check_sizes(mode, args)
    check_model_file(mode, args)
    if args.get("cfg"):
        from .model import find_cfg_yaml

        args["cfg"] = find_cfg_yaml(args["cfg"])
    if mode in {"predict", "heatmap"} and "model" not in args:
        raise SystemExit(
            f"mod-vision {mode} needs model=, a trained checkpoint such as model=runs/detect/train/weights/best.pt "
            f"(`mod-vision train` writes one): the default {DEFAULT_MODEL} has random weights and detects nothing"
        )
    resume = args.get("resume")
    if mode == "train" and resume is True and "model" not in args:
        raise SystemExit("mod-vision train resume=True needs model=, the run's checkpoint: model=runs/.../weights/last.pt")
    model = MoDYOLO(args.pop("model", DEFAULT_MODEL))
    if mode == "train" and "data" not in args and not resume:  # a resume keeps its run's data and settings
        from ultralytics.utils import YAML

        from .nn.tasks import MODEL_DIR

        defaults = MODEL_DIR.parent / "train-sample.yaml"
        try:
            data = sample_data_yaml()
        except FileExistsError as e:  # a folder in the way that the generator did not write
            raise SystemExit(f"mod-vision train: no data= given and the sample data cannot be generated: {e}") from e
        args = {**YAML.load(defaults), **args, "data": str(data)}
        print(f"mod-vision train: no data= given, training on the sample data {args['data']} with {defaults.name}")
    if mode in {"val", "sweep"} and "data" not in args and not model.overrides.get("data"):
        raise SystemExit(
            f"mod-vision {mode} needs data=, a data YAML (e.g. data=datasets/mod-sample/sample.yaml, the sample data "
            f"that `mod-vision sample-data` or `mod-vision train` writes, or data=data/coco.yaml): this model does not "
            f"record the data it was trained on"
        )
    if mode == "sweep":
        return model.val_sweep(args.pop("capacities", DEFAULT_CAPACITIES), **args)
    if mode == "info":
        return model.info(detailed=bool(args.get("detailed", False)), imgsz=int(args.get("imgsz", 640)))
    if mode in {"predict", "heatmap"}:
        if mode == "heatmap":
            args["save_heatmap"] = True
        args.setdefault("stream", True)  # a generator keeps memory flat on long videos
        args.setdefault("save", mode == "predict")  # as `yolo predict` does: annotated images/videos in the run folder
        predicted = sum(1 for _ in model.predict(**args))
        if mode == "heatmap":
            folder = model.predictor.save_dir / "heatmaps"
            if not predicted:
                raise SystemExit(
                    f"mod-vision heatmap: no routing heatmaps written: nothing was predicted, no image or frame of "
                    f"source={args.get('source')} could be read (see the warnings above)"
                )
            if not folder.is_dir():
                print("no routing heatmaps written: this model reports no routing (it has no routed blocks)")
                return None
            print(f"routing heatmaps written to {folder}")
            return folder
        return None
    if mode == "export":
        try:
            return model.export(**args)
        except ImportError as e:
            raise SystemExit(
                f"mod-vision export format={args.get('format', 'torchscript')} needs the Python package "
                f"'{e.name or e}', which is not installed. Install mod_vision's export extra: pip install -e '.[export]' "
                f"(in a clone of this repository)"
            ) from e
    return getattr(model, mode)(**args)


if __name__ == "__main__":
    main()
