"""Object supervision of the routers: which tokens of a grid lie on ground-truth boxes, and the losses that teach the
object predictor (`router_aux_loss`) and the scorer (`router_rank_loss`) to follow them."""

from __future__ import annotations

import torch
from torch import nn

from .record import RoutingRecord


def box_overlaps(grid: tuple[int, int], boxes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """How far each box covers each row and each column of the (H, W) grid, in cells: (M, H) and (M, W), each in
    [0, 1]; `boxes` are (M, 4) normalized xywh, clipped to the image. The one box-to-grid rasteriser of the routing
    loss (`object_tokens`: the cells a box overlaps) and the routing metrics (`object_cover`: the share it covers)."""
    h, w = grid
    xy, half = boxes[:, :2], boxes[:, 2:] / 2
    lo = (xy - half).clamp(0, 1) * boxes.new_tensor([w, h])
    hi = (xy + half).clamp(0, 1) * boxes.new_tensor([w, h])
    cols, rows = torch.arange(w, device=boxes.device), torch.arange(h, device=boxes.device)
    oy = (torch.minimum(hi[:, 1:], rows + 1) - torch.maximum(lo[:, 1:], rows)).clamp(min=0)
    ox = (torch.minimum(hi[:, :1], cols + 1) - torch.maximum(lo[:, :1], cols)).clamp(min=0)
    return oy, ox


def object_tokens(
    grid: tuple[int, int], boxes: torch.Tensor, image_index: torch.Tensor, batch_size: int
) -> torch.Tensor:
    """(B, H*W) float: 1 where a token's cell of the (H, W) grid overlaps one of its image's boxes.

    `boxes` are (M, 4) normalized xywh, as in an Ultralytics batch's "bboxes", with `image_index` (M,) their image
    ("batch_idx"). The grid is taken to tile the image exactly, as it does at training sizes (multiples of the stride).
    Boxes are clipped to the image; empty ones mark nothing.
    """
    h, w = grid
    target = torch.zeros(batch_size, h, w, device=boxes.device)
    if len(boxes):
        oy, ox = box_overlaps(grid, boxes)
        cells = ((oy[:, :, None] > 0) & (ox[:, None, :] > 0)).float()  # (M, H, W)
        target.index_add_(0, image_index.long(), cells)
    return (target > 0).float().flatten(1)


def router_aux_loss(record: RoutingRecord, boxes: torch.Tensor, image_index: torch.Tensor) -> torch.Tensor | None:
    """The auxiliary predictor loss: BCE teaching each routed block's predictor which tokens lie on an object.

    `record` is the training forward's (with predictions); `boxes` (M, 4) normalized xywh and `image_index` (M,) are the
    batch's ground truth (Ultralytics' "bboxes" and "batch_idx"). Object cover is what dynamic mode should follow
    (Focus-DETR's foreground supervision; the MoD paper's top-k target gives busy and empty images the same k here, see
    docs/dynamic_compute.md). Object tokens are weighted by the batch's background-to-object ratio (balanced BCE):
    unbalanced, a predictor unsure of most tokens stays below 0.5 everywhere. Only the predictor learns from it (its
    input is detached). Returns the mean over routed blocks, or None when nothing was recorded with grad.
    """
    losses, targets = [], {}  # blocks on one token grid share one target
    for e in record.blocks:
        p = e.predicted
        if p is None or not p.requires_grad:
            continue
        if e.grid is None or e.grid[0] * e.grid[1] != p.shape[1]:
            raise ValueError(f"routed block has {p.shape[1]} tokens but no token grid ({e.grid}): its caller must pass grid=")
        if e.grid not in targets:
            target = object_tokens(e.grid, boxes.to(p.device), image_index.to(p.device), p.shape[0]).to(p.dtype)
            cover = target.mean().clamp(1e-3, 1 - 1e-3)
            targets[e.grid] = target, (1 - cover) / cover
        target, pos_weight = targets[e.grid]
        losses.append(nn.functional.binary_cross_entropy_with_logits(p, target, pos_weight=pos_weight))
    return torch.stack(losses).mean() if losses else None


def dilate_tokens(target: torch.Tensor, grid: tuple[int, int], cells: int) -> torch.Tensor:
    """(B, H*W) 0/1 token target grown by `cells` grid cells in every direction (a (2c+1)^2 max filter): object borders
    and their immediate context count as object."""
    if cells <= 0:
        return target
    t = target.view(-1, 1, *grid)
    return nn.functional.max_pool2d(t, 2 * cells + 1, stride=1, padding=cells).flatten(1)


RANK_KINDS = ("pairwise", "bce")


def router_rank_loss(
    record: RoutingRecord,
    boxes: torch.Tensor,
    image_index: torch.Tensor,
    kind: str = "bce",
    dilate: int = 0,
    max_tokens: int = 1024,
) -> torch.Tensor | None:
    """The ranking loss: teaches each routed block's *scorer* (the ranking that top-k uses, and the gate) to put the
    tokens on ground-truth objects above the background tokens of the same image (Focus-DETR's foreground supervision,
    applied to the MoD router itself rather than a side predictor).

    `record` is the training forward's, with scores recorded with grad (`record_routing(scores=True)` in training mode);
    `boxes` (M, 4) normalized xywh and `image_index` (M,) as in `router_aux_loss`. The target is `object_tokens` on the
    block's grid, grown by `dilate` cells (`dilate_tokens`). The scorer is not detached: the task gradient through the
    gate still flows, this loss adds to it.

    kind:
        "pairwise": per image, the mean over (object token o, background token b) pairs of softplus(s_b - s_o), the
            logistic (RankNet) surrogate of 1 - AUC. It depends only on score differences within an image, so it leaves
            the scores' level, which sets the gate's value, to the task loss. Images with no object or no background
            token have no pair and add nothing; the loss is the mean over images that have pairs. It takes O(B N^2)
            memory: a grid of more than `max_tokens` tokens (imgsz 640 at stride 16 has 1600) is scored on a random
            subset of that many tokens, the same for every image, which keeps the pairs' mean in expectation.
        "bce": balanced BCE of the scores against the target (object tokens weighted by the batch's background-to-object
            ratio), as `router_aux_loss` does for the predictor; this also pulls the gate of background tokens to 0.
    Returns the mean over routed blocks, or None when nothing was recorded with grad (or no image had a pair).
    """
    if kind not in RANK_KINDS:
        raise ValueError(f"router rank loss kind must be one of {RANK_KINDS}, got {kind!r}")
    losses, targets = [], {}
    for e in record.blocks:
        s = e.scores
        if s is None or not s.requires_grad:
            continue
        if e.grid is None or e.grid[0] * e.grid[1] != s.shape[1]:
            raise ValueError(
                f"routed block has {s.shape[1]} tokens but no token grid ({e.grid}): its caller must pass grid="
            )
        if e.grid not in targets:
            t = object_tokens(e.grid, boxes.to(s.device), image_index.to(s.device), s.shape[0])
            targets[e.grid] = dilate_tokens(t, e.grid, dilate).to(s.dtype)
        target = targets[e.grid]
        s = s.float()
        if kind == "bce":
            cover = target.mean().clamp(1e-3, 1 - 1e-3)
            weight = (1 - cover) / cover
            losses.append(nn.functional.binary_cross_entropy_with_logits(s, target.float(), pos_weight=weight))
            continue
        if s.shape[1] > max_tokens:
            keep = torch.randperm(s.shape[1], device=s.device)[:max_tokens]
            s, target = s[:, keep], target[:, keep]
        pos, neg = target > 0.5, target <= 0.5  # (B, N)
        pairs = pos[:, :, None] & neg[:, None, :]  # (B, N_o, N_b): o object, b background, same image
        n = pairs.sum((1, 2))  # (B,)
        has = n > 0
        if not bool(has.any()):
            continue
        diff = s[:, None, :] - s[:, :, None]  # [b, o, j] = s_j - s_o
        per_image = (nn.functional.softplus(diff) * pairs).sum((1, 2)) / n.clamp(min=1)
        losses.append(per_image[has].mean())
    return torch.stack(losses).mean() if losses else None


def capacity_distill_loss(student: dict, teacher: dict, reg_max: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Inplace distillation (slimmable networks' sandwich rule): a training forward at a capacity below 1 learns the
    detection outputs of the same model at capacity 1.0, computed on the same batch without grad.

    `student` and `teacher` are Detect's training outputs ({"boxes": (B, 4 * reg_max, A) logits, "scores": (B, nc, A)
    logits}). Returns (class term, box term):
    - class: the binary KL divergence of the student's class probabilities from the teacher's, summed, normalised by
      the teacher's summed probabilities (as Ultralytics normalises its class loss by the target scores' sum);
    - box: the KL divergence of each side's distance distribution (DFL's bins) from the teacher's, each anchor
      weighted by the teacher's top class probability, so the background's boxes, which nothing reads, barely count.
    """
    t = teacher["scores"].detach().float()
    s = student["scores"].float()
    p = t.sigmoid()
    entropy = nn.functional.binary_cross_entropy_with_logits(t, p, reduction="sum")
    cls = (nn.functional.binary_cross_entropy_with_logits(s, p, reduction="sum") - entropy) / p.sum().clamp(min=1)
    b, _, a = s.shape
    log_t = teacher["boxes"].detach().float().view(b, 4, reg_max, a).log_softmax(2)
    log_s = student["boxes"].float().view(b, 4, reg_max, a).log_softmax(2)
    kl = (log_t.exp() * (log_t - log_s)).sum(2).mean(1)  # (B, A)
    weight = p.amax(1)
    box = (kl * weight).sum() / weight.sum().clamp(min=1e-6)
    return cls, box
