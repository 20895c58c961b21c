"""Predictors that attach each image's routed token share and routing maps to its Results, and draw heatmaps."""

from __future__ import annotations

import glob
import os
from pathlib import Path

import cv2
import numpy as np
import torch
from ultralytics.models.yolo.detect import DetectionPredictor
from ultralytics.models.yolo.segment import SegmentationPredictor
from ultralytics.utils import DEFAULT_CFG, LOGGER

from ..cfg import apply_policy, split_extra_args, with_extra_defaults
from ..heatmap import depth_image, reuse_image, routing_maps, save_image_heatmaps
from ..nn.blocks import bf16_products
from ..nn.reuse import TokenReuse, reusing
from ..nn.routing import STATIC, join_images, record_routing, routed_blocks, routing_mode, set_routing
from .export import apply_or_check_routing, exported_token_share
from .results import RoutedResults, capacities_that_ran


class RoutedPredictorMixin:
    """Sets the routing asked for at predict time (`capacity=`, `dynamic_capacity=`), and returns `RoutedResults`:
    each with the `token_share`, `capacity` and `capacity_mode` that ran on that image, and its `routing`.

    An exported model's capacities are fixed at export and read from its metadata; its token share is then exact
    (static top-k), computed from the input size. With `save_heatmap=True`, writes heatmaps to save_dir/heatmaps: per
    image <stem>_depth.jpg, <stem>_block<j>.jpg and <stem>_blocks.png; per video or stream <stem>_depth.mp4 with each
    frame's compute share.
    """

    def __init__(self, cfg=DEFAULT_CFG, overrides=None, _callbacks=None):
        split_extra_args(overrides)  # mod_vision's keys are checked here, before any source is opened
        super().__init__(with_extra_defaults(cfg), overrides, _callbacks)
        # after postprocess, outside the timed section: drawing must not count as the model's postprocess time
        if save_heatmaps_callback not in self.callbacks["on_predict_postprocess_end"]:  # the model's dict is shared
            self.add_callback("on_predict_postprocess_end", save_heatmaps_callback)

    def setup_source(self, source, *args, **kwargs):
        # Called on every predict() call, also when Ultralytics reuses this predictor with new arguments.
        source = self.without_unreadable_videos(source)
        super().setup_source(source, *args, **kwargs)  # a stream that cannot be opened: its error names the URL
        self.exported = apply_or_check_routing(self.model, self.args)
        self.set_policy()
        self._heatmap_stems, self._warned_no_routing = {}, False
        self.token_cache = self.new_token_cache()  # a new source starts with an empty cache

    def set_policy(self) -> None:
        """`routing=`: how this predict call's routed blocks rank tokens (None: the learned scorer, "topk"); the
        ranking of an exported graph is fixed, so asking it for another is refused, not ignored."""
        policy = getattr(self.args, "routing", None)
        if self.exported:
            if policy not in (None, "topk"):
                raise ValueError(
                    f"routing={policy} needs the PyTorch checkpoint: an exported graph ranks tokens by its scorer "
                    f"(top-k); predict with the .pt, or without routing="
                )
            return
        apply_policy(self.model, policy, self.args.seed)

    def stream_inference(self, *args, **kwargs):
        try:
            yield from super().stream_inference(*args, **kwargs)
        finally:  # routing= is this call's, not a lasting change to the model (as in validation)
            if self.model is not None:
                set_routing(self.model, policy="topk")

    def without_unreadable_videos(self, source):
        """The source, or for a folder (or list of files) holding a video OpenCV cannot open, which would stop
        Ultralytics' loader before the first image: an Ultralytics loader over the other files, each such video left
        out with a warning naming it. Ultralytics' loader reads images one by one and skips unreadable ones with a
        warning; a list of paths handed to it as a list would be opened all at once instead, and one unreadable image
        would stop the run."""
        files = without_unreadable_videos(source)
        if files is source:
            return source
        from ultralytics.data.loaders import LoadImagesAndVideos, SourceTypes

        loader = LoadImagesAndVideos(
            files, batch=self.args.batch, vid_stride=self.args.vid_stride, channels=getattr(self.model, "channels", 3)
        )
        loader.source_type = SourceTypes()  # files, as Ultralytics types a folder
        return loader

    def new_token_cache(self) -> TokenReuse | None:
        """The token-reuse cache for this source (`token_reuse=True`), or None."""
        if not getattr(self.args, "token_reuse", False):
            return None
        if self.exported:
            raise ValueError(
                "token_reuse=True needs the PyTorch checkpoint: an exported graph has no token cache (its inputs and "
                "outputs are the image and the detections); predict with the .pt, or without token_reuse"
            )
        return TokenReuse(self.args.reuse_threshold, self.args.reuse_refresh, self.args.reuse_max_change)

    def preprocess(self, im):
        """Ultralytics' preprocessing, except that for a routed PyTorch model the float image is made channels-last
        straight from the decoded pixels (which are channels-last already): the layout the model runs in eager
        inference (RoutedModelMixin.predict), so no forward copies the input into it. Ultralytics lays the pixels out
        channel-first here; the model then copied them back, several ms of an empty frame's forward at 1280."""
        if isinstance(im, torch.Tensor) or self.exported or not routed_blocks(self.model):
            return super().preprocess(im)
        # BGR to RGB by OpenCV on the pixels: torch's flip of a 3-wide innermost dimension is several times slower
        # (pre_transform's letterbox gives every image a channel axis, one-channel ones too)
        im = [cv2.cvtColor(x, cv2.COLOR_BGR2RGB) if x.shape[-1] == 3 else x for x in self.pre_transform(im)]
        im = torch.from_numpy(im[0]).unsqueeze(0) if len(im) == 1 else torch.from_numpy(np.stack(im))
        im = im.to(self.device)
        im = (im.half() if self.model.fp16 else im.float()).div_(255)
        return im.permute(0, 3, 1, 2)  # (n, c, h, w), channels-last memory

    def inference(self, im, *args, **kwargs):
        cache = getattr(self, "token_cache", None)
        with bf16_products(getattr(self.args, "bf16", False)):  # an exported model refused it at set-up
            if self.exported or not routed_blocks(self.model):
                self.routing_record = None
                return self.run_frames(im, cache, *args, **kwargs)
            with record_routing() as self.routing_record:
                return self.run_frames(im, cache, *args, **kwargs)

    def run_frames(self, im, cache: TokenReuse | None, *args, **kwargs):
        """The forward, with token reuse when a cache is given. A stream batch holds one frame per stream: one forward,
        a cache row per stream. Any other batch (a video's consecutive frames, a folder of frames) is one sequence:
        frame after frame through the one cache row. A black frame in a stream (Ultralytics' reader hands one on when
        the stream drops, before it reconnects) resets that stream's row."""
        if cache is None:
            return super().inference(im, *args, **kwargs)
        sources = [f.shape for f in self.batch[1]]  # frames of another size never reuse each other's tokens
        if self.dataset.mode == "stream" or len(im) == 1:
            lost = [not np.any(f) for f in self.batch[1]] if self.dataset.mode == "stream" else None
            cache.begin(im, lost, sources)
            with reusing(cache):
                return super().inference(im, *args, **kwargs)
        outs, record, forwards = [], self.routing_record, []
        for frame, source in zip(im.split(1), sources):
            cache.begin(frame, source_shapes=[source])
            with reusing(cache):
                outs.append(super().inference(frame, *args, **kwargs))
            if record is not None:
                forwards.append(record.take())
        if record is not None:
            record.blocks = join_images(forwards)
        return cat_batches(outs)

    def postprocess(self, preds, img, orig_imgs, **kwargs):
        results = super().postprocess(preds, img, orig_imgs, **kwargs)
        n = len(results)
        if self.exported:
            capacities, mode = [self.exported["capacity"]] * n, STATIC
            shares = [exported_token_share(self.exported, img.shape[-2:])] * n
            routings = [None] * n
        else:
            record = getattr(self, "routing_record", None)
            entries = record.blocks if record is not None else []
            share, mode = record and record.token_share(), routing_mode(self.model)
            shares = [None] * n if share is None else share.tolist()
            capacities = capacities_that_ran(self.model, entries, n)
            routings = routing_maps(record, img.shape[2:], [r.orig_shape for r in results]) or [None] * n
        return [
            RoutedResults.of(r, token_share=s, capacity=c, capacity_mode=mode, routing=m)
            for r, s, c, m in zip(results, shares, capacities, routings)
        ]

    def save_heatmaps(self, results) -> None:
        """Heatmap images per image; for videos and streams one video per source in Ultralytics' vid_writer dict (which
        its predictor releases when the run ends, however it ends)."""
        folder = Path(self.save_dir) / "heatmaps"
        paths = self.batch[0]
        for i, r in enumerate(results):
            if r.routing is None:
                if not self._warned_no_routing:
                    LOGGER.warning("save_heatmap: this model reports no routing (dense or exported), no heatmaps")
                    self._warned_no_routing = True
                continue
            mode, p = self.dataset.mode, Path(paths[i])
            key = {"video": paths[i], "stream": i}.get(mode)  # one output per video file or stream slot
            # a stream's "path" is its cleaned URL or webcam index: keep all of it, it has no file suffix to drop
            stem = self._heatmap_stem(p.name if mode == "stream" else p.stem, key)
            if key is not None:
                frame = depth_image(r.orig_img, r.routing) if r.routing.computed is None else reuse_image(r.orig_img, r.routing)
                self._write_heatmap_frame(folder / f"{stem}_depth.mp4", frame, i)
            else:
                save_image_heatmaps(r.orig_img, r.routing, folder, stem)

    def _heatmap_stem(self, stem: str, key) -> str:
        """A unique output stem per image, and a stable one per video file or stream slot (bus.jpg + bus.png ->
        bus, bus-2), as Ultralytics names its own outputs."""
        if key is not None and key in self._heatmap_stems:
            return self._heatmap_stems[key]
        taken, base, k = set(self._heatmap_stems.values()), stem, 1
        while base in taken:
            k += 1
            base = f"{stem}-{k}"
        self._heatmap_stems[key if key is not None else object()] = base
        return base

    def _write_heatmap_frame(self, path: Path, frame, i: int) -> None:
        if path not in self.vid_writer:
            fps = max(1, source_fps(self.dataset, i) / self.args.vid_stride)  # skipped frames must not shorten it
            path.parent.mkdir(parents=True, exist_ok=True)
            self.vid_writer[path] = cv2.VideoWriter(
                str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (frame.shape[1], frame.shape[0])
            )
        self.vid_writer[path].write(frame)


def without_unreadable_videos(source):
    """For a folder (or list of files) holding a video OpenCV cannot open, the list of its other files, each such video
    left out with a warning naming it; any other source (one file, a stream, a glob, an array, a folder without such
    a video) is returned unchanged, and so is one whose media files are all unreadable videos, for Ultralytics to
    report."""
    from ultralytics.data.utils import IMG_FORMATS, VID_FORMATS

    if isinstance(source, (str, Path)) and Path(source).is_dir():
        # the files Ultralytics' loader takes from a folder
        files = sorted(glob.glob(os.path.join(glob.escape(str(Path(source).absolute())), "*.*")))
    elif isinstance(source, (list, tuple)) and source and all(isinstance(f, (str, Path)) for f in source):
        files = [str(f) for f in source]
        if not all(Path(f).is_file() for f in files):  # URLs, globs: Ultralytics' own business
            return source
    else:
        return source
    suffix = lambda f: f.rsplit(".", 1)[-1].lower()  # noqa: E731
    broken = []
    for f in files:
        if suffix(f) in VID_FORMATS:
            cap = cv2.VideoCapture(f)
            if not (cap.isOpened() and cap.read()[0]):
                broken.append(f)
            cap.release()
    media = [f for f in files if suffix(f) in IMG_FORMATS | VID_FORMATS]
    if not broken or len(broken) == len(media):
        return source
    for f in broken:
        LOGGER.warning(f"skipping {f}: OpenCV cannot read it as a video")
    return [f for f in files if f not in broken]


def cat_batches(outs: list):
    """One model output from per-frame outputs: tensors concatenated on the batch axis, tuples, lists and dicts by
    element (the nesting of Ultralytics' Detect and Segment outputs)."""
    first = outs[0]
    if isinstance(first, torch.Tensor):
        return torch.cat(outs)
    if isinstance(first, (list, tuple)):
        return type(first)(cat_batches(list(parts)) for parts in zip(*outs))
    if isinstance(first, dict):
        return {k: cat_batches([o[k] for o in outs]) for k in first}
    return first


def source_fps(dataset, i: int) -> float:
    """Frame rate of source i: a video's (one float), a stream's (one per stream), a screen's (a fixed 30)."""
    fps = dataset.fps
    fps = fps[i] if isinstance(fps, (list, tuple)) else fps
    return fps if fps and 0 < fps < 1000 else 30  # Ultralytics' fallback for a missing or bogus rate


def save_heatmaps_callback(predictor) -> None:
    if getattr(predictor.args, "save_heatmap", False) and hasattr(predictor, "save_heatmaps"):
        predictor.save_heatmaps(predictor.results)


class MoDDetectionPredictor(RoutedPredictorMixin, DetectionPredictor):
    pass


class MoDSegmentationPredictor(RoutedPredictorMixin, SegmentationPredictor):
    pass
