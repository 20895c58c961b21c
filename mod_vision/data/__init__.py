from __future__ import annotations

from pathlib import Path

from .sample import CLASSES, SAMPLE_ROOT, make_sample_data
from .video import make_sample_video


def sample_data_yaml(root: str | Path = SAMPLE_ROOT, **kwargs) -> Path:
    """The sample data YAML under `root`, generated on first use."""
    yaml_path = Path(root) / "sample.yaml"
    return yaml_path.resolve() if yaml_path.is_file() else make_sample_data(root, **kwargs)


class DatasetNotFound(FileNotFoundError):
    """The images or lists a data YAML names are not on disk; the `mod-vision` CLI prints it as one line."""


def with_missing_help(error: Exception, data) -> Exception:
    """A dataset-not-found error (Ultralytics' FileNotFoundError, or its trainer's RuntimeError around one) as a
    `DatasetNotFound`, with the data YAML's `missing_help` (how to get the dataset) added where it has one. Any other
    error is returned as it is."""
    try:
        from ultralytics.utils import YAML

        text = YAML.load(data).get("missing_help") if str(data).endswith((".yaml", ".yml")) else None
    except Exception:
        text = None
    if text:
        return DatasetNotFound(f"{error}\n{text}")
    if isinstance(error, FileNotFoundError) or isinstance(error.__cause__, FileNotFoundError):
        return DatasetNotFound(str(error))
    return error


__all__ = ["CLASSES", "DatasetNotFound", "SAMPLE_ROOT", "make_sample_data", "make_sample_video", "sample_data_yaml", "with_missing_help"]
