"""mod_vision's own arguments: their defaults and checks.

They are checked and defaulted by mod_vision's entry points (`MoDYOLO`, its trainer, validator, predictor and exporter,
and the `mod-vision` CLI through them), never added to Ultralytics' global `DEFAULT_CFG`: a stock YOLO model in the same
process must refuse `capacity=` exactly as it does without mod_vision. Each key is checked before any data loads, with
an error that names it.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

from ultralytics.cfg import cfg2dict
from ultralytics.utils import DEFAULT_CFG_DICT

from .nn.policies import POLICIES

EXTRA_ARGS = {
    # (float | list | dict | None) capacity of every routed block (or one per routed block) at train/val/predict/export
    # time; None keeps the model's own. At val/predict it applies to that call only (static top-k for that call, even on
    # a model in dynamic mode); set_capacity() sets the model's default
    "capacity": None,
    # ([min, max] | None) elastic training: each batch trains at a capacity drawn uniformly from this range, so one
    # model serves any budget in it (SparseViT's sampled sparsity)
    "capacity_range": None,
    # (int) epochs over which training capacity ramps linearly from 1.0 (dense) down to its target
    "capacity_warmup": 0,
    # (float) share of training batches run at capacity 1.0 (every token routed), the others at the capacity drawn from
    # capacity_range (or the model's own): the sandwich rule's full network, so the shared weights also learn as the
    # dense twin does. 0: none
    "capacity_full_share": 0.0,
    # (float) weight of inplace distillation: a batch trained below capacity 1.0 also learns the detections of the same
    # model at capacity 1.0 on that batch (class probabilities and box distributions; a forward without grad, the
    # sandwich rule's teacher). 0: off
    "capacity_distill": 0.0,
    # ([min, max] | None) per-image training: each routed block trains on the tokens its object predictor finds in
    # each image, clamped to these capacities, as dynamic mode runs at val/predict, so the model learns in the regime it
    # runs in; needs router_aux > 0 (the predictor's training). None: static (or elastic) top-k
    "dynamic_training": None,
    # (float) weight of the auxiliary loss that trains each routed block's predictor (BCE: does this token overlap a
    # ground-truth box?), which dynamic mode thresholds. The predictor sees detached tokens, so this never changes the
    # detector; 0 leaves the predictor untrained (dynamic mode then has nothing calibrated to go on)
    "router_aux": 0.1,
    # (float) weight of the ranking loss that trains each routed block's scorer (the ranking top-k uses, and the gate)
    # to rank the tokens on ground-truth boxes above the background tokens of the same image (router_rank_loss). The
    # scorer is not detached: the task gradient through the gate still flows. 0: off (the MoD gate alone trains it).
    # Off by default (nothing measured on other data); the main job (cfg/train-sample.yaml) sets 1.0. What it changes
    # on the main job's data (object lift and box AP, with and without it): docs/quality_bench.md, "The ranking loss
    # (router_rank) on the main job's data"
    "router_rank": 0.0,
    # ("bce" | "pairwise") the ranking loss: balanced BCE of the scores against object cover, or pairwise logistic over
    # (object, background) token pairs of an image, which leaves the scores' level (the gate's value) to the task. The
    # two compared: docs/quality_bench.md, "The ranking loss (router_rank) on the main job's data"
    "router_rank_kind": "bce",
    # (bool) the ranking loss trains only the scorers' weights (their input tokens detached for it); False: it also
    # shapes the features the scorers read. The task gradient through the gate reaches both either way
    "router_rank_detach": False,
    # (int) grow the ranking loss's object tokens by this many token cells in every direction, so borders and context
    # count as object; 0: the tokens that overlap a box
    "router_rank_dilate": 0,
    # ([min, max] | False | None) dynamic per-image compute at val/predict time: each image takes as many tokens as its
    # predictor scores above 0.5, clamped to these capacities; False returns to static top-k; None keeps the model's mode
    "dynamic_capacity": None,
    # (str | None) initialise the ViT backbone from a timm ViT when training starts from a model YAML: a timm model
    # name with a pretrained tag (needs internet) or a local .safetensors/.pth file; ignored when starting from a .pt
    "timm_weights": None,
    # (float) learning rate of the router parameters relative to the rest (the optimizer's lr0, or the one chosen by
    # optimizer=auto): routers start from scratch even when the backbone is pretrained
    "router_lr_mult": 1.0,
    # (float) learning rate of the predictors (dynamic mode's, trained by router_aux) relative to the rest: they are
    # probes on detached tokens, so a high rate cannot upset the detector, and it lets them converge in a short run
    "predictor_lr_mult": 10.0,
    # (bool) predict: write routing heatmaps (per-block selected tokens, depth map, compute share) to save_dir/heatmaps,
    # as images for images and as <stem>_depth.mp4 for videos and streams
    "save_heatmap": False,
    # ("topk" | "object" | "random" | "none" | None) val/predict: how routed blocks rank tokens: by the learned scorer
    # (default), by the object predictor (trained on ground-truth object cover), at random (the control that keeps each
    # block's k and learned gate, seeded by `seed`), or "none": no token is processed, every routed block's compute
    # removed (the control that shows what the routed blocks carry)
    "routing": None,
    # (int) train: also save save_dir/routing_val_batch0_epoch<E>.jpg every this many epochs (0: only at the end);
    # needs plots=True
    "heatmap_period": 0,
    # (bool) predict on video, a folder of frames or streams: a token whose input has not changed since it was last
    # computed keeps its cached update (Eventful Transformers' token reuse); one cache per stream (nn/reuse.py)
    "token_reuse": False,
    # (float) token reuse: a token is recomputed when its input moved by more than this, relative (||x - ref|| / ||ref||)
    "reuse_threshold": 0.1,
    # (int) token reuse: every this many frames every routed token is recomputed, so that error cannot accumulate
    "reuse_refresh": 30,
    # (float) token reuse: a frame on which more than this share of tokens changed (a scene cut) is recomputed in full
    "reuse_max_change": 0.5,
    # (bool) val/predict of a PyTorch model on CPU: the token layers' matrix products (the routed MLPs, merges and head
    # branches of modnext and the hybrids; timm's ViT blocks keep theirs) in bfloat16, everything else in float32;
    # several times faster products on a CPU with AVX512-BF16 or AMX, for a small change in the outputs
    # (docs/routing_carries.md, "bfloat16 products")
    "bf16": False,
}

ROUTING_KEYS = ("capacity", "dynamic_capacity")

# How each key of EXTRA_ARGS is checked, by type, as Ultralytics' check_cfg does with CFG_FLOAT_KEYS, CFG_INT_KEYS, ...
# Every key is in exactly one set (tests/test_footprint.py checks it). Where a value names the key's meaning, the error
# message gives it in brackets.
CAPACITY_KEYS = frozenset({"capacity"})  # a capacity in (0, 1], a list with one per routed block, or {index: capacity}
BOUNDS_KEYS = frozenset({"capacity_range", "dynamic_capacity", "dynamic_training"})  # [min, max] capacities, or off
PER_IMAGE_BOUNDS = frozenset({"dynamic_capacity", "dynamic_training"})  # per-image budgets: their min may be 0
NUMBER_KEYS = {  # a number >= 0
    "capacity_warmup": "epochs of the ramp from dense; 0: none",
    "router_aux": "weight of the predictors' auxiliary loss; 0: off",
    "router_rank": "weight of the scorers' ranking loss; 0: off",
    "capacity_distill": "weight of the distillation from capacity 1.0; 0: off",
    "router_lr_mult": "learning rate relative to lr0",
    "predictor_lr_mult": "learning rate relative to lr0",
}
OPTIONAL_KEYS = frozenset({"router_lr_mult", "predictor_lr_mult"})  # None too: as 1, the parameters keep their groups
FINITE_KEYS = {  # nan and inf refused too: the loss would be nan
    "router_rank": "weight of the ranking loss",
    "capacity_distill": "weight of the distillation",
}
SHARE_KEYS = {"capacity_full_share": "share of batches trained at capacity 1.0"}  # a number in [0, 1]
INT_KEYS = {  # an int >= 0
    "router_rank_dilate": "token cells the object targets grow by; 0: none",
    "heatmap_period": "epochs between routing heatmaps; 0: only at the end",
}
BOOL_KEYS = frozenset({"router_rank_detach", "save_heatmap", "token_reuse", "bf16"})
CHOICE_KEYS = {"router_rank_kind": ("pairwise", "bce"), "routing": (None, *POLICIES)}
REUSE_KEYS = ("reuse_threshold", "reuse_refresh", "reuse_max_change")  # checked together, by nn.reuse
SOURCE_KEYS = frozenset({"timm_weights"})  # a timm model name or a weights file, or None


# Each check below takes (value, key), as check_capacity_arg and check_bounds do, and raises a ValueError naming it.


def check_number(value, key: str, integer: bool = False):
    """A number (an int with `integer`) >= 0, for NUMBER_KEYS and INT_KEYS."""
    if value is None and key in OPTIONAL_KEYS:
        return value
    ok = isinstance(value, int) if integer else isinstance(value, (int, float))
    if not ok or isinstance(value, bool) or value < 0:
        kind, what = ("an int", INT_KEYS[key]) if integer else ("a number", NUMBER_KEYS[key])
        raise ValueError(f"{key} must be {kind} >= 0 ({what}), got {value!r}")
    if key in FINITE_KEYS and (value != value or value == float("inf")):
        raise ValueError(f"{key} must be a finite number >= 0 ({FINITE_KEYS[key]}), got {value!r}")
    return value


def check_share(value, key: str) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 <= value <= 1:
        raise ValueError(f"{key} must be a number in [0, 1] ({SHARE_KEYS[key]}), got {value!r}")
    return value


def check_int(value, key: str) -> int:
    return check_number(value, key, integer=True)


def check_bool(value, key: str) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{key} must be True or False, got {value!r}")
    return value


def check_choice(value, key: str):
    choices = CHOICE_KEYS[key]
    if value not in choices:
        named = [c for c in choices if c is not None]
        text = " or ".join(map(repr, named)) if len(named) == 2 else f"one of {', '.join(map(repr, named))}"
        raise ValueError(f"{key} must be {text}{' or None' if None in choices else ''}, got {value!r}")
    return value


def check_reuse(value, key: str):
    from .nn.reuse import check_reuse_args

    defaults = {k: EXTRA_ARGS[k] for k in REUSE_KEYS}
    check_reuse_args(*{**defaults, key: value}.values())
    return value


def check_source(value, key: str):
    if value is not None and not isinstance(value, (str, Path)):
        raise ValueError(f"{key} must be a timm model name or a weights file path, got {value!r}")
    return value


def check_capacity_arg(value, key: str = "capacity"):
    """None, a capacity in (0, 1], a list of them (one per routed block) or {routed block index: capacity}."""
    from .nn.routing import check_capacity

    if value is None:
        return None
    try:
        if isinstance(value, dict):
            return {int(i): check_capacity(c) for i, c in value.items()}
        if isinstance(value, (list, tuple)):
            if not value:
                raise ValueError("capacity must be a float in the range (0, 1], got an empty list")
            return [check_capacity(c) for c in value]
        return check_capacity(value)
    except (ValueError, TypeError) as e:
        raise ValueError(
            f"{key}={value!r} is not valid: {e}. Give one capacity in (0, 1], a list with one per routed block, "
            f"or {{routed block index: capacity}}"
        ) from None


def check_bounds(value, key: str) -> tuple[float, float] | None:
    """None/False/empty, or [min, max] capacities in (0, 1] with min <= max; a per-image budget's min may be 0
    (`check_budget`)."""
    from .nn.routing import check_budget

    if value is None or value is False or (isinstance(value, (list, tuple)) and not value):
        return None
    per_image = key in PER_IMAGE_BOUNDS
    off = " (False or None: static top-k)" if key == "dynamic_capacity" else " (None: fixed capacity)"
    within = "min in [0, 1] and max in (0, 1]" if per_image else "both in (0, 1]"
    return check_budget(value, key, per_image, f"{key} must be [min, max] with {within}{off}, got {value!r}")


def capacity_range(value) -> tuple[float, float] | None:
    """Validate `capacity_range=[min, max]` (None or empty: fixed-capacity training)."""
    return check_bounds(value, "capacity_range")


KEY_CHECKS = (  # each key set and the one check its keys go through
    (CAPACITY_KEYS, check_capacity_arg),
    (BOUNDS_KEYS, check_bounds),
    (NUMBER_KEYS, check_number),
    (SHARE_KEYS, check_share),
    (INT_KEYS, check_int),
    (BOOL_KEYS, check_bool),
    (CHOICE_KEYS, check_choice),
    (REUSE_KEYS, check_reuse),
    (SOURCE_KEYS, check_source),
)


def check_extra_args(args: dict) -> dict:
    """Check the mod_vision keys present in `args` (a dict); raise a ValueError naming the first bad key."""
    for key, value in args.items():
        for keys, check in KEY_CHECKS:
            if key in keys:
                check(value, key)
    return args


def split_extra_args(args) -> tuple[dict, dict]:
    """(Ultralytics' arguments, mod_vision's checked arguments) from a dict, namespace, YAML path or None."""
    args = cfg2dict(args) if args is not None else {}
    ours = check_extra_args({k: v for k, v in args.items() if k in EXTRA_ARGS})
    return {k: v for k, v in args.items() if k not in EXTRA_ARGS}, ours


def with_extra_defaults(cfg=None) -> dict:
    """An Ultralytics base config (default: Ultralytics' defaults) that also knows mod_vision's keys, for an engine's
    `cfg=`: Ultralytics' get_cfg then accepts, and defaults, mod_vision's keys for that engine only."""
    base = DEFAULT_CFG_DICT if cfg is None else cfg2dict(cfg)
    if isinstance(base, SimpleNamespace):
        base = vars(base)
    return {**EXTRA_ARGS, **base}


def has_no_routing(model, key: str, value) -> bool:
    """True, after a warning naming the argument, when `key=value` is given to a model with no routed blocks (a stock
    YOLO checkpoint, a dense YAML): it runs, as a dense baseline must in a side-by-side comparison, but the user asked
    for a compute budget that cannot apply and must not believe it did."""
    from ultralytics.utils import LOGGER

    from .nn.routing import routed_blocks

    if routed_blocks(model):
        return False
    LOGGER.warning(f"{key}={value} ignored: this model has no routed blocks (a dense model), it always runs in full")
    return True


def apply_policy(model, policy: str | None, seed: int = 0) -> None:
    """Set the routing policy of every routed block (`routing=`; None: "topk"). A control ("random", "none") on a model
    without routed blocks is an error: there is nothing to randomise or remove. "random" draws from a generator seeded
    by `seed`, so its numbers can be reproduced."""
    from .nn.routing import routed_blocks, set_routing

    if policy not in (None, "topk") and not routed_blocks(model):
        raise ValueError(f"routing={policy!r} needs a routed model; this one has no routed blocks (a dense model)")
    set_routing(model, policy=policy or "topk", seed=seed)


def apply_capacity(model, capacity) -> None:
    """`capacity=` on a (possibly wrapped) routed model: static top-k at it, ending dynamic mode (`set_routing`); None
    leaves the model as it is; for a dense model, a warning."""
    if capacity is None or has_no_routing(model, "capacity", capacity):
        return
    from .nn.routing import set_routing

    set_routing(model, capacity=capacity)


def apply_routing(model, args) -> None:
    """Apply the routing arguments of an args namespace to a model, with `set_routing`'s meaning: a static `capacity=`
    ends dynamic mode, a `dynamic_capacity=` starts it (False ends it), both set both, and neither leaves the model as
    it is."""
    from .nn.routing import set_routing

    capacity, asked = getattr(args, "capacity", None), getattr(args, "dynamic_capacity", None)
    dynamic = check_bounds(asked, "dynamic_capacity")
    if dynamic and has_no_routing(model, "dynamic_capacity", list(dynamic)):
        return
    routing = {}
    if capacity is not None and not has_no_routing(model, "capacity", capacity):
        routing["capacity"] = capacity
    if dynamic is not None or asked is False:
        routing["dynamic"] = dynamic
    set_routing(model, **routing)
