"""mod_vision: Mixture-of-Depths token-routed ViT detectors and segmenters for Ultralytics."""

__version__ = "0.1.0"

from .cfg import register_args as _register_args
from .nn import register as _register_layers

_register_layers()
_register_args()

from .model import MoDYOLO  # noqa: E402

__all__ = ["MoDYOLO", "__version__"]
