"""Training on the CPU uses every core for torch (up to 8), where Ultralytics leaves one to its data loader."""

from __future__ import annotations

import pytest
import torch

from mod_vision.engine.conveniences import training_threads

from .conftest import TRAIN_ARGS


def test_training_threads_are_every_core_up_to_eight():
    assert [training_threads(c) for c in (1, 2, 8, 64)] == [1, 2, 8, 8]


@pytest.mark.slow  # trains
def test_cpu_training_runs_on_every_core_and_then_restores_the_thread_count(sample_yaml, tmp_path):
    from ultralytics.utils import NUM_THREADS

    from mod_vision import MoDYOLO

    seen = []
    model = MoDYOLO("modnext-det-n.yaml")
    model.add_callback("on_train_batch_start", lambda trainer: seen.append(torch.get_num_threads()))
    model.train(data=str(sample_yaml), project=str(tmp_path), name="threads", **TRAIN_ARGS)
    assert seen and set(seen) == {training_threads()}
    assert torch.get_num_threads() == NUM_THREADS  # as Ultralytics' device selection left it
