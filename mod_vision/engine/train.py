"""Trainers for routed models. They live in an importable module so Ultralytics' DDP launcher can pickle them."""

from __future__ import annotations

from copy import copy

from ultralytics.models.yolo.detect import DetectionTrainer
from ultralytics.models.yolo.segment import SegmentationTrainer
from ultralytics.utils import RANK

from ..data import with_missing_help
from ..nn.tasks import MoDDetectionModel, MoDSegmentationModel
from .val import MoDDetectionValidator, MoDSegmentationValidator


class MoDDetectionTrainer(DetectionTrainer):
    model_class, validator_class = MoDDetectionModel, MoDDetectionValidator

    def get_model(self, cfg=None, weights=None, verbose=True):
        model = self.model_class(cfg, nc=self.data["nc"], ch=self.data["channels"], verbose=verbose and RANK == -1)
        model = self.set_model_names_for_load(model)
        if weights:
            model.load(weights)
        if self.args.capacity is not None:  # also how MoDYOLO.train carries capacities set on a YAML-built model
            model.set_capacity(self.args.capacity)
        return model

    def get_dataset(self):
        try:
            return super().get_dataset()
        except (FileNotFoundError, RuntimeError) as e:
            raise with_missing_help(e, self.args.data) from e

    def get_validator(self):
        return self.validator_class(self.test_loader, save_dir=self.save_dir, args=copy(self.args), _callbacks=self.callbacks)


class MoDSegmentationTrainer(MoDDetectionTrainer, SegmentationTrainer):
    model_class, validator_class = MoDSegmentationModel, MoDSegmentationValidator
