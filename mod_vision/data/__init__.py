from __future__ import annotations

from pathlib import Path

from .sample import CLASSES, SAMPLE_ROOT, make_sample_data
from .video import make_sample_video


def sample_data_yaml(root: str | Path = SAMPLE_ROOT, **kwargs) -> Path:
    """The sample data YAML under `root`, generated on first use."""
    yaml_path = Path(root) / "sample.yaml"
    return yaml_path.resolve() if yaml_path.is_file() else make_sample_data(root, **kwargs)


def with_missing_help(error: Exception, data) -> Exception:
    """Add a data YAML's `missing_help` (how to get the dataset) to a dataset-not-found error."""
    try:
        from ultralytics.utils import YAML

        text = YAML.load(data).get("missing_help") if str(data).endswith((".yaml", ".yml")) else None
    except Exception:
        text = None
    return FileNotFoundError(f"{error}\n{text}") if text else error


__all__ = ["CLASSES", "SAMPLE_ROOT", "make_sample_data", "make_sample_video", "sample_data_yaml", "with_missing_help"]
