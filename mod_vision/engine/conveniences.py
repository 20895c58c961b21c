"""What mod_vision's trainers do for the user beyond Ultralytics' trainer, none of it about routing.

`TrainerConveniences` is mixed in before Ultralytics' trainer class (`MoDDetectionTrainer`, and so
`MoDSegmentationTrainer`):

- the run-folder lock: a second training into the same `project/name` stops before it writes anything (`RunLock`);
- help for a missing data set: the data YAML's `missing_help` (how to get COCO) with the error;
- a plain line when `close_mosaic` covers the whole run, instead of Ultralytics' "Closing dataloader mosaic" before the
  first epoch, which reads as if mosaic had been on;
- a training progress header whose columns stay apart when a loss name is long (`router_aux`, `router_rank`);
- a results.png that draws the routing columns of results.csv too;
- on a CPU with 8 cores or fewer, every core for torch while it trains (`training_threads`).

Routing itself (the model, the capacity schedules, the router learning rates, the routing figures) is the trainer's,
in `train.py`.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path

import torch

from ultralytics.cfg import get_save_dir
from ultralytics.utils import LOCAL_RANK, LOGGER
from ultralytics.utils.plotting import plot_results

from ..data import with_missing_help
from .runlock import RunLock

PROGRESS_NAMES = {"router_aux": "aux_loss", "router_rank": "rank_loss"}  # loss name -> its progress header column

# Ultralytics' plot_results draws the results.csv columns whose names hold "loss" or "metric"; these say so in the copy
# it plots, so results.png shows routing too (results.csv keeps its names).
PLOTTED_AS = {
    "routing/token_share": "routing/token_share (metric)",
    "train/router_aux": "train/router_aux (loss)",
    "val/router_aux": "val/router_aux (loss)",
    "train/router_rank": "train/router_rank (loss)",
    "val/router_rank": "val/router_rank (loss)",
    "train/distill": "train/distill (loss)",
}


def training_threads(cores: int | None = None) -> int:
    """Torch threads for training on the CPU: every core, up to 8. Ultralytics trains with one core fewer than the
    machine has (at most 8), leaving one to its data loader; on a small machine that is a large share: on 2 cores,
    training modnext-det-n at imgsz 160 with both took 38 s against 51 s for 3 epochs (docs/routing_carries.md)."""
    return max(1, min(8, cores or os.cpu_count() or 1))


class TrainerConveniences:
    """Mixed in before an Ultralytics trainer class; see the module's docstring."""

    run_lock = None

    def __init__(self, *args, **kwargs):
        try:
            super().__init__(*args, **kwargs)
        except BaseException:  # a run that never starts must not keep its folder locked
            self.release_run_lock()
            raise

    def check_resume(self, overrides):
        # The first thing BaseTrainer.__init__ does before it creates the run folder and writes args.yaml into it: the
        # place to lock the folder, so a second run into the same project/name stops before it touches anything.
        super().check_resume(overrides)
        if LOCAL_RANK == -1:  # the launching process; DDP workers train under its lock
            self.args.save_dir = str(get_save_dir(self.args))  # what BaseTrainer would pick; it keeps args.save_dir
            self.run_lock = RunLock(self.args.save_dir).acquire()

    def train(self):
        threads = torch.get_num_threads()
        try:
            if self.device.type == "cpu":
                torch.set_num_threads(training_threads())
            return super().train()
        finally:
            torch.set_num_threads(threads)
            self.release_run_lock()

    def release_run_lock(self) -> None:
        if self.run_lock is not None:
            self.run_lock.release()

    def get_dataset(self):
        try:
            return super().get_dataset()
        except (FileNotFoundError, RuntimeError) as e:
            raise with_missing_help(e, self.args.data) from e

    def progress_string(self):
        # Ultralytics prints each column of the training progress in 11 characters ('%11s' header, '%11.4g' values,
        # formatted inside its training loop): a name of 11 or more runs into its neighbour ('router_auxrouter_rank').
        # The header shows the routing losses as Ultralytics names its own ('box_loss'); results.csv keeps
        # train/router_aux and train/router_rank.
        names = self.loss_names
        self.loss_names = tuple(PROGRESS_NAMES.get(n, n[:10]) for n in names)
        try:
            return super().progress_string()
        finally:
            self.loss_names = names

    def plot_metrics(self):
        with tempfile.TemporaryDirectory() as tmp:
            header, *rows = self.csv.read_text(encoding="utf-8").splitlines()
            header = ",".join(PLOTTED_AS.get(c.strip(), c) for c in header.split(","))
            (Path(tmp) / "results.csv").write_text("\n".join([header, *rows]) + "\n", encoding="utf-8")
            plot_results(file=Path(tmp) / "results.csv")
            if (Path(tmp) / "results.png").exists():
                shutil.move(Path(tmp) / "results.png", self.save_dir / "results.png")
                self.on_plot(self.save_dir / "results.png")

    # Private in BaseTrainer, with no public hook at that point: its training loop calls it when mosaic ends, and it
    # writes the "Closing dataloader mosaic" line (Ultralytics' YOLOE trainer overrides it the same way).
    def _close_dataloader_mosaic(self):
        if self.epoch == 0 and self.args.close_mosaic >= self.epochs:  # mosaic never used: no "closing" before epoch 1
            LOGGER.info(f"close_mosaic={self.args.close_mosaic} covers all {self.epochs} epochs: training without mosaic")
            quiet = DropLogLine("Closing dataloader mosaic")
            LOGGER.addFilter(quiet)
            try:
                return super()._close_dataloader_mosaic()
            finally:
                LOGGER.removeFilter(quiet)
        return super()._close_dataloader_mosaic()


class DropLogLine(logging.Filter):
    def __init__(self, text: str):
        super().__init__()
        self.text = text

    def filter(self, record) -> bool:
        return record.getMessage() != self.text
