"""Arguments mod_vision adds to Ultralytics' configuration, so `key=value` checks accept them everywhere."""

from ultralytics.utils import DEFAULT_CFG, DEFAULT_CFG_DICT

EXTRA_ARGS = {
    # (float | list | None) capacity of every routed block (or one per routed block) at train/val/predict/export time;
    # None keeps the model's own
    "capacity": None,
}


def register_args() -> None:
    for key, value in EXTRA_ARGS.items():
        DEFAULT_CFG_DICT.setdefault(key, value)
        if not hasattr(DEFAULT_CFG, key):
            setattr(DEFAULT_CFG, key, value)


def apply_capacity(model, capacity) -> None:
    """Set the capacity of a (possibly wrapped) routed model when `capacity` is given; a no-op for dense models."""
    if capacity is None:
        return
    from .nn.routing import set_capacity

    set_capacity(model, capacity)
