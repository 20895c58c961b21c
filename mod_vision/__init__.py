"""mod_vision: Mixture-of-Depths token-routed ViT detectors and segmenters for Ultralytics.

Importing it changes nothing in Ultralytics: mod_vision's parser and arguments are used by its own classes only.
"""

__version__ = "0.1.0"

from .model import MoDYOLO  # noqa: E402

__all__ = ["MoDYOLO", "__version__"]
