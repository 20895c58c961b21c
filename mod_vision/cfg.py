"""Arguments mod_vision adds to Ultralytics' configuration, so `key=value` checks accept them everywhere."""

from ultralytics.utils import DEFAULT_CFG, DEFAULT_CFG_DICT

EXTRA_ARGS = {
    # (float | list | None) capacity of every routed block (or one per routed block) at train/val/predict/export time;
    # None keeps the model's own
    "capacity": None,
    # ([min, max] | None) elastic training: each batch trains at a capacity drawn uniformly from this range, so one
    # model serves any budget in it (SparseViT's sampled sparsity)
    "capacity_range": None,
    # (int) epochs over which training capacity ramps linearly from 1.0 (dense) down to its target
    "capacity_warmup": 0,
    # (float) weight of the auxiliary loss that trains each routed block's predictor (BCE: does this token overlap a
    # ground-truth box?), which dynamic mode thresholds. The predictor sees detached tokens, so this never changes the
    # detector; 0 leaves the predictor untrained (dynamic mode then has nothing calibrated to go on)
    "router_aux": 0.1,
    # ([min, max] | False | None) dynamic per-image compute at val/predict time: each image takes as many tokens as its
    # predictor scores above 0.5, clamped to these capacities; False returns to static top-k
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
    # ("topk" | "random" | None) val: how routed blocks rank tokens; "random" is the control that keeps each block's k
    # and learned gate but picks tokens at random, so learned-against-random AP is one command
    "routing": None,
    # (int) train: also save save_dir/routing_val_batch0_epoch<E>.jpg every this many epochs (0: only at the end);
    # needs plots=True
    "heatmap_period": 0,
}


def register_args() -> None:
    for key, value in EXTRA_ARGS.items():
        DEFAULT_CFG_DICT.setdefault(key, value)
        if not hasattr(DEFAULT_CFG, key):
            setattr(DEFAULT_CFG, key, value)


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


def apply_capacity(model, capacity) -> None:
    """Set the capacity of a (possibly wrapped) routed model when `capacity` is given; for a dense model, a warning."""
    if capacity is None or has_no_routing(model, "capacity", capacity):
        return
    from .nn.routing import set_capacity

    set_capacity(model, capacity)


def apply_routing(model, args) -> None:
    """Apply the routing arguments of an Ultralytics args namespace (capacity, dynamic_capacity) to a model."""
    from .nn.routing import set_dynamic

    apply_capacity(model, getattr(args, "capacity", None))
    dynamic = getattr(args, "dynamic_capacity", None)
    if dynamic and has_no_routing(model, "dynamic_capacity", dynamic):
        return
    if dynamic is not None:
        set_dynamic(model, tuple(dynamic) if dynamic else None)
