"""mod_vision's YAML parser and the routed model classes that use it.

Ultralytics' `parse_model` computes output channels per known class and assumes `c2 = c1` for any other class, without
passing it `c1`. Rather than fork that function, `parse_model` below lets Ultralytics parse a copy of the YAML in which
each mod_vision layer is stood in for by a 1x1 `Conv` with the same channel argument: Ultralytics then applies its own
width multiple, max_channels and depth multiple to it, and every later layer (Concat, Detect, Segment) sees the right
channels. The stand-ins are then swapped for the real layers, built with the (c1, c2, depth) that Ultralytics computed;
a routed layer's router keywords become its one `RouterSpec` there (`build`).

Only mod_vision's model classes use this parser (`mod_parser`, around their own construction): stock Ultralytics models
in the same process keep Ultralytics' parser, and mod_vision's layer names never enter `ultralytics.nn.tasks`.
"""

from __future__ import annotations

import copy
import inspect
import math
import re
import threading
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn
from ultralytics.nn import tasks as ul_tasks
from ultralytics.nn.modules import Conv
from ultralytics.nn.tasks import DetectionModel, SegmentationModel
from ultralytics.utils import LOGGER, YAML

from .blocks import MoDA2C2f, MoDDown, MoDNeXt, UpAdd
from .head import RoutedDetect
from .routing import (
    LETTERBOX_FILL,
    ROUTER_KEYWORDS,
    TokenRouter,
    capacity_distill_loss,
    record_routing,
    routed_blocks,
    router_aux_loss,
    router_rank_loss,
    router_spec,
    routing_input,
    routing_kept,
    set_routing,
)
from .routing.mechanism import tracing
from .vit import MoDViTStage, PatchEmbed

# Layers named in YAMLs. A layer listed in REPEATED gets the (depth-scaled) repeat count as its third argument,
# like Ultralytics' C2f/C3k2, instead of being repeated as an nn.Sequential.
MOD_LAYERS = {"PatchEmbed": PatchEmbed, "MoDViTStage": MoDViTStage, "MoDA2C2f": MoDA2C2f, "MoDNeXt": MoDNeXt,
              "MoDDown": MoDDown, "UpAdd": UpAdd, "RoutedDetect": RoutedDetect}
REPEATED = {MoDViTStage, MoDA2C2f, MoDNeXt}
# What Ultralytics parses in a layer's place (see the module docstring): a 1x1 Conv with the layer's channel argument,
# unless named here. UpAdd outputs its last input's channels, as CBFuse does; RoutedDetect is parsed as Detect.
STAND_INS = {UpAdd: "CBFuse", RoutedDetect: "Detect"}

_upstream_parse_model = ul_tasks.parse_model


def _check_layer_names(d: dict) -> None:
    """Raise a ValueError naming any module that neither Ultralytics nor mod_vision defines."""
    for i, (_, _, m, _) in enumerate(d.get("backbone", []) + d.get("head", [])):
        known = m.startswith(("nn.", "torchvision.ops.")) or m in MOD_LAYERS or isinstance(vars(ul_tasks).get(m), type)
        if not known:
            raise ValueError(
                f"Unknown module '{m}' in layer {i} of the model YAML. mod_vision layers are {sorted(MOD_LAYERS)}; "
                f"Ultralytics layers are the classes in ultralytics.nn.modules (e.g. Conv, C3k2, Detect, Segment)."
            )


def build(cls: type, *args, **kw) -> nn.Module:
    """`cls(*args, **kw)` from a YAML row's arguments. A routed layer takes one `router`, which a YAML writes as the
    keywords `capacity`, `router_hidden` and `gate`, or with the capacity in the router's place (`MoDViTStage`'s
    `[768, 2, 0.5]`): here they become its `RouterSpec`, the layer's default router filling in what they leave out."""
    params = inspect.signature(cls).parameters
    if "router" not in params:
        return cls(*args, **kw)
    default, slot = params["router"].default, list(params).index("router")
    given = {k: kw.pop(k) for k in list(kw) if k in ROUTER_KEYWORDS}
    if len(args) <= slot:
        return cls(*args, router=router_spec(default, **given), **kw)
    if "capacity" in given:
        raise TypeError(f"{cls.__name__} got a capacity both in the router's place and as a keyword")
    return cls(*args[:slot], router_spec(default, **given, capacity=args[slot]), *args[slot + 1 :], **kw)


def parse_model(d: dict, ch: int, verbose: bool = True):
    """Drop-in for Ultralytics' parse_model that also builds mod_vision layers with correct channels (see module doc)."""
    _check_layer_names(d)
    layers = d["backbone"] + d["head"]
    ours = {i: (MOD_LAYERS[m], args) for i, (_, _, m, args) in enumerate(layers) if m in MOD_LAYERS}
    if not ours:
        return _upstream_parse_model(d, ch, verbose)
    d = copy.deepcopy(d)
    nb = len(d["backbone"])
    for i, (cls, args) in ours.items():
        row = d["backbone"][i] if i < nb else d["head"][i - nb]
        stand_in = STAND_INS.get(cls, "Conv")
        row[2], row[3] = stand_in, {"Conv": [args[0], 1, 1] if args else [], "CBFuse": [[0]], "Detect": args[:1]}[stand_in]
    model, save = _upstream_parse_model(d, ch, verbose=False)
    for i, (cls, args) in ours.items():
        stand_in = model[i]
        kw = args[-1] if args and isinstance(args[-1], dict) else {}  # YAML `[384, 2, {gate: unit}]` keywords
        if cls is UpAdd:
            layer = UpAdd()
        elif cls is RoutedDetect:
            ch_in = [seq[0].conv.in_channels for seq in stand_in.cv2]
            layer = build(RoutedDetect, stand_in.nc, stand_in.reg_max, False, ch_in, **kw)
        else:
            repeats = len(stand_in) if isinstance(stand_in, nn.Sequential) else 1
            conv = (stand_in[0] if repeats > 1 else stand_in).conv
            c1, c2, rest = conv.in_channels, conv.out_channels, list(args[1:])
            if kw:
                rest.pop()
            if cls in REPEATED:
                layer = build(cls, c1, c2, repeats, *rest, **kw)
            else:
                layer = nn.Sequential(*(build(cls, c1 if j == 0 else c2, c2, *rest, **kw) for j in range(repeats)))
                layer = layer[0] if repeats == 1 else layer
        layer.i, layer.f, layer.type = stand_in.i, stand_in.f, f"{cls.__module__}.{cls.__name__}"
        layer.np = sum(p.numel() for p in layer.parameters())
        model[i] = layer
    if verbose:
        LOGGER.info(f"\n{'':>3}{'from':>20}{'params':>10}  {'module':<45}")
        for m in model:
            LOGGER.info(f"{m.i:>3}{m.f!s:>20}{m.np:10.0f}  {m.type:<45}")
    return model, save


MODEL_DIR = Path(__file__).resolve().parents[2] / "cfg" / "models"


def find_model_yaml(cfg: str | Path) -> tuple[Path, str | None]:
    """(the YAML file, the scale letter in the name or None) for a model name or path: 'modvit-det-s.yaml' is
    cfg/models/modvit-det.yaml at scale 's'. A bare name is looked up in the repo's cfg/models/."""
    path = Path(cfg)
    match = re.fullmatch(r"(.+)-([nslmx])", path.stem)
    candidates = [path, MODEL_DIR / path.name]
    if match:
        base = path.with_name(match[1] + path.suffix)
        candidates += [base, MODEL_DIR / base.name]
    found = next((p for p in candidates if p.is_file()), None)
    if found is None:
        raise FileNotFoundError(f"model YAML '{cfg}' not found; looked in {[str(p) for p in candidates]}")
    return found, match[2] if match and found.stem == match[1] else None


def load_model_yaml(cfg: str | Path | dict) -> dict:
    """Load a model YAML, Ultralytics-style names included (see find_model_yaml).

    Without a scale letter in the name, the YAML's own `scale:` key is used (Ultralytics' loader would drop it and warn).
    """
    if isinstance(cfg, dict):
        return cfg
    found, scale = find_model_yaml(cfg)
    d = YAML.load(found)
    scale = scale or d.get("scale")
    if d.get("scales") and scale and scale not in d["scales"]:
        raise ValueError(f"scale '{scale}' not in {list(d['scales'])} of {found}")
    d["scale"], d["yaml_file"] = scale, str(cfg)
    return d


def dense_twin_yaml(cfg: str | Path) -> str:
    """The dense twin a routed model YAML names (`dense_twin:`), at the routed model's scale: 'modvit-det-dense-s.yaml'."""
    spec = load_model_yaml(cfg)
    if not spec.get("dense_twin"):
        raise ValueError(f"{cfg} names no `dense_twin`; pass the dense twin's YAML with --dense")
    return Path(spec["dense_twin"]).stem + (f"-{spec['scale']}" if spec.get("scale") else "") + ".yaml"


_parser_lock = threading.RLock()


@contextmanager
def mod_parser():
    """Ultralytics' model classes call the module-level `ultralytics.nn.tasks.parse_model` from their __init__, with no
    hook to pass another parser: mod_vision's is installed there for the construction of one mod_vision model, and
    Ultralytics' own is back when it ends, also on error. A stock model built meanwhile in another thread would get
    mod_vision's parser, which hands any YAML without mod_vision layers to Ultralytics' parser unchanged."""
    with _parser_lock:
        previous, ul_tasks.parse_model = ul_tasks.parse_model, parse_model
        try:
            yield
        finally:
            ul_tasks.parse_model = previous


def check_threshold(value) -> float:
    """A per-image budget's threshold (`dynamic_threshold`): the predictor logit it counts a token wanted above, a
    finite number. Lower routes more tokens where the predictors are unsure."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"dynamic_threshold must be a finite number (a predictor logit), got {value!r}")
    return float(value)


def channels_last(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The input in channels-last memory for eager inference: the dense stride-4 layers (a patch stem, a depthwise
    3x3, the 2x2 means) run several times faster so on CPU, and the token layers then read and write the maps without
    transposes. Training, tracing and exports keep the input as it comes (an exported graph has no memory format)."""
    if model.training or x.ndim != 4 or tracing():
        return x
    if getattr(model.model[-1], "export", False):
        return x
    return x.contiguous(memory_format=torch.channels_last)


class RoutedModelMixin:
    """Routing controls shared by the routed detection and segmentation models."""

    def __init__(self, cfg, ch=3, nc=None, verbose=True):
        with mod_parser():
            super().__init__(load_model_yaml(cfg), ch=ch, nc=nc, verbose=verbose)
        # conv pyramids (FPN concatenations) need inputs padded to their largest stride; a patch embedding pads itself,
        # and its ViT stages take any grid, so ViT models keep their exact token grid
        self.max_stride = None if any(isinstance(m, PatchEmbed) for m in self.modules()) else int(self.stride.max())
        if self.yaml.get("capacities"):
            self.set_capacity(self.yaml["capacities"])
        if self.yaml.get("dynamic_capacity"):  # the YAML's default budget at val/predict: per image
            # its threshold 0.0 (probability 0.5) when the YAML names none
            self.set_dynamic(self.yaml["dynamic_capacity"], check_threshold(self.yaml.get("dynamic_threshold", 0.0)))

    def routed_blocks(self) -> list[TokenRouter]:
        return routed_blocks(self)

    def set_capacity(self, capacity: float | dict[int, float] | list[float]) -> None:
        """Set capacity of all routed blocks (a float), or per block (a list, or {routed block index: capacity}).

        Static top-k then runs at these capacities: this ends dynamic mode (`set_routing(capacity=)`).
        """
        # recorded in the model's YAML dict, so a model rebuilt from it keeps them
        self.yaml["capacities"] = set_routing(self, capacity=capacity)

    def capacities(self) -> list[float]:
        return [b.capacity for b in self.routed_blocks()]

    def set_dynamic(self, bounds: tuple[float, float] | None, threshold: float | None = None) -> None:
        """Per-image k from the predictors' threshold within (min, max) capacity; None returns to static top-k
        (`set_routing(dynamic=, threshold=)`). `threshold` None keeps the routers' own."""
        set_routing(self, dynamic=bounds, **({} if threshold is None else {"threshold": threshold}))

    def predict(self, x, *args, **kwargs):
        """Ultralytics' forward, on an input padded at the bottom and right to a multiple of the largest stride.

        A conv pyramid with upsampling needs it (an FPN cannot concatenate a 1x1 stride-32 map upsampled to 2x2 with a
        1x1 stride-16 map); boxes keep their coordinates, as nothing moves at the top left. The predictor's letterbox
        already does this; a direct call with any size now works too."""
        s = getattr(self, "max_stride", None)  # a Python int: exporters must not trace a read of the stride tensor
        if s and isinstance(x, torch.Tensor) and x.ndim == 4:
            ph, pw = -x.shape[-2] % s, -x.shape[-1] % s
            if ph or pw:
                x = torch.nn.functional.pad(x, (0, pw, 0, ph), value=LETTERBOX_FILL)
        if not isinstance(x, torch.Tensor):
            return super().predict(x, *args, **kwargs)
        with routing_input(x):  # routers rank constant cells (padding) last
            return super().predict(channels_last(self, x), *args, **kwargs)

    def loss(self, batch, preds=None):
        """The task loss, plus `router_aux` x the auxiliary predictor loss, `router_rank` x the scorers' ranking loss
        and `capacity_distill` x the distillation from capacity 1.0 (each its own loss column: `router_aux`,
        `router_rank`, `distill`)."""
        args = getattr(self, "args", None)

        def arg(key, default):
            value = args.get(key) if isinstance(args, dict) else getattr(args, key, None)
            return default if value is None else value

        # the teacher first: the hooks below must see the scorer calls of the student's forward only
        distilled = preds is None and arg("capacity_distill", 0.0) > 0
        teacher = self.full_capacity_outputs(batch["img"]) if distilled else None
        rank_weight = arg("router_rank", 0.0)
        detach = rank_weight > 0 and preds is None and bool(arg("router_rank_detach", False))
        seen, hooks = [], []
        if detach:  # each scorer's input, in call order (one scorer call per recorded block)
            hooks = [r.scorer.register_forward_hook(lambda m, i, o: seen.append((m, i[0])))
                     for r in self.routed_blocks() if r.scorer is not None]  # routers that decide
        try:
            with record_routing(predictions=preds is None, scores=preds is None) as record:
                outputs = self.forward(batch["img"]) if preds is None else preds
                loss, items = super().loss(batch, outputs)
        finally:
            for h in hooks:
                h.remove()
        scored = [e for e in record.blocks if e.scores is not None]
        if detach and len(seen) == len(scored):
            # the ranking loss then trains the scorers' weights only, not the features they read
            for e, (scorer, x) in zip(scored, seen):
                if e.scores is not None and e.scores.requires_grad:
                    e.scores = scorer(x.detach())
        bs = batch["img"].shape[0]
        extra = []
        aux = router_aux_loss(record, batch["bboxes"], batch["batch_idx"])
        if aux is not None and arg("router_aux", 0.0) > 0:
            extra.append((arg("router_aux", 0.0), aux, "router_aux"))
        if rank_weight > 0:
            rank = router_rank_loss(record, batch["bboxes"], batch["batch_idx"], arg("router_rank_kind", "bce"),
                                    arg("router_rank_dilate", 0))
            if rank is None and preds is None and record.blocks:  # no image with both kinds of token: a column of 0
                rank = next(e.scores for e in record.blocks if e.scores is not None).sum() * 0
            if rank is not None:
                extra.append((rank_weight, rank, "router_rank"))
        if distilled:  # a column on every batch: 0 where nothing was distilled
            distill = torch.zeros((), device=loss.device)
            if teacher is not None:
                cls, box = capacity_distill_loss(outputs, teacher, self.model[-1].reg_max)
                distill = arg("cls", 0.5) * cls + arg("dfl", 1.5) * box  # the gains of the class and DFL losses
            extra.append((arg("capacity_distill", 0.0), distill, "distill"))
        for weight, value, name in extra:
            loss = torch.cat([loss.reshape(-1), (weight * value * bs).reshape(1)])
            items = {**items, name: value.detach()}
        return loss, items

    def full_capacity_outputs(self, img: torch.Tensor) -> dict | None:
        """The training outputs of this model at capacity 1.0, without grad: the teacher of `capacity_distill`. None
        when the batch already trains at capacity 1.0 (or the model has no routed block): nothing to distill."""
        routers = self.routed_blocks()
        if not self.training or not routers or all(r.capacity >= 1.0 for r in routers):
            return None
        with torch.no_grad(), routing_kept(self), batch_norm_stats_kept(self):
            set_routing(self, capacity=1.0)
            return self.forward(img)


@contextmanager
def batch_norm_stats_kept(model: nn.Module):
    """Put every BatchNorm's running statistics back on exit. A teacher forward in training mode normalises with its
    own batch statistics, as the student's does, but must not fold them into the running statistics that inference
    uses: those are the student's, at the budgets it trains at."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    saved = [[b.clone() for b in (m.running_mean, m.running_var, m.num_batches_tracked)] for m in norms]
    try:
        yield
    finally:
        with torch.no_grad():
            for m, (mean, var, count) in zip(norms, saved):
                m.running_mean.copy_(mean), m.running_var.copy_(var), m.num_batches_tracked.copy_(count)


class MoDDetectionModel(RoutedModelMixin, DetectionModel):
    """Ultralytics DetectionModel whose YAML may use mod_vision's routed layers."""

    def __init__(self, cfg="modvit-det.yaml", ch=3, nc=None, verbose=True):
        super().__init__(cfg, ch=ch, nc=nc, verbose=verbose)


class MoDSegmentationModel(RoutedModelMixin, SegmentationModel):
    """Ultralytics SegmentationModel whose YAML may use mod_vision's routed layers."""

    def __init__(self, cfg="modvit-seg.yaml", ch=3, nc=None, verbose=True):
        super().__init__(cfg, ch=ch, nc=nc, verbose=verbose)

