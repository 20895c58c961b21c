"""Where the compute went, as numbers: per routed block, how object-focused its processed tokens were.

For one image and one routed block, each token's object cover is the share of its cell inside a ground-truth box. Over
a validation set, per block:
  - object lift: mean cover of the processed tokens / mean cover of all tokens (1 is chance; at capacity c the best
    possible is about min(1/c, 1/cover));
  - object recall: the share of object tokens (cells a box overlaps) that were processed;
  - padding share: the share of processed tokens whose cell is mostly letterbox padding.
Undefined values (no object in the data) are None, never NaN.
"""

from __future__ import annotations

from collections import defaultdict

import torch

from ..nn.routing import BlockRouting, box_overlaps, object_tokens, padding_levels


# A share, not object_tokens' 0/1: lift weighs cells by box cover (object_tokens is cover > 0; both rasterise with
# box_overlaps)
def object_cover(grid: tuple[int, int], boxes: torch.Tensor, image_index: torch.Tensor, batch_size: int) -> torch.Tensor:
    """(B, h*w) in [0, 1]: the share of each token cell covered by its image's boxes (normalized xywh, clipped to the
    image; overlapping boxes count once per cell up to 1, by taking the largest single-box cover)."""
    h, w = grid
    cover = torch.zeros(batch_size, h, w, device=boxes.device)
    if len(boxes):
        oy, ox = box_overlaps(grid, boxes)
        per_box = oy[:, :, None] * ox[:, None, :]  # (M, H, W)
        for i in image_index.long().unique():
            cover[i] = per_box[image_index.long() == i].amax(0)
    return cover.flatten(1)


def padding_cells(image: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """(B, h*w) bool: cells of the grid over `image` (B, 3, H, W in [0, 1]) that are mostly letterbox padding, by the
    routers' own rule (`padding_levels` 2; cells wholly beyond the image count as padding); flat cells do not count."""
    return padding_levels(image, grid) > 1


class RoutingQuality:
    """Accumulates the per-block sums over a validation run; `summary()` gives the metrics, per background kind too."""

    def __init__(self):
        self.sums = defaultdict(lambda: torch.zeros(6, dtype=torch.float64))  # (kind, block) -> sums, see update()

    def update(self, entries: list[BlockRouting], batch: dict, kinds: list[str] | None = None) -> None:
        img = batch["img"]
        img = img.float() / 255 if img.dtype == torch.uint8 else img.float()
        b = img.shape[0]
        boxes, index = batch["bboxes"].float().cpu(), batch["batch_idx"].cpu()
        kinds = kinds or ["all"] * b
        for j, e in enumerate(entries):
            if e.grid is None:
                continue
            m = e.mask().cpu().double()
            cover = object_cover(e.grid, boxes, index, b).double()
            obj = object_tokens(e.grid, boxes, index, b).double()
            pad = padding_cells(img.cpu(), e.grid).double()
            for i in range(b):
                row = torch.stack([(cover[i] * m[i]).sum(), m[i].sum(), cover[i].sum(), torch.tensor(float(m.shape[1])),
                                   (obj[i] * m[i]).sum() / 1.0, (pad[i] * m[i]).sum()])  # fmt: skip
                objects = obj[i].sum()
                for kind in {kinds[i], "all"}:
                    self.sums[(kind, j)] += row
                    self.sums[(kind, j, "objects")] += torch.tensor([objects, 0, 0, 0, 0, 0], dtype=torch.float64)

    def summary(self) -> dict:
        """{kind: [{'object_lift', 'object_recall', 'padding_share'} per routed block]}; None where undefined."""
        out = {}
        for key, (cov_done, done, cov_all, n, obj_done, pad_done) in self.sums.items():
            if len(key) == 3:
                continue
            kind, j = key
            objects = float(self.sums[(kind, j, "objects")][0])
            lift = None if cov_all <= 0 or done <= 0 else float((cov_done / done) / (cov_all / n))
            recall = None if objects <= 0 else float(obj_done / objects)
            share = None if done <= 0 else float(pad_done / done)
            out.setdefault(kind, {})[j] = {"object_lift": lift, "object_recall": recall, "padding_share": share}
        return {k: [v[j] for j in sorted(v)] for k, v in out.items()}
