"""Mixture-of-Depths token routing: the one place where top-k, gather, block and scatter happen.

A routed block scores every token, runs its transformer block on the k = ceil(capacity * N) best-scoring tokens of each
image, and scatters the gated update back. Unselected tokens pass on the residual path unchanged, so the feature map
stays complete for dense heads (SViT's finding) and a token skipped here can be picked again by a later block.
"""

from __future__ import annotations

import math

import torch
from timm.models.vision_transformer import Block
from torch import nn


def check_capacity(capacity: float) -> float:
    """Return capacity as a float, or raise a ValueError that names the valid range."""
    if isinstance(capacity, bool) or not isinstance(capacity, (int, float)) or not 0.0 < float(capacity) <= 1.0:
        raise ValueError(f"capacity must be a float in the range (0, 1], got {capacity!r}")
    return float(capacity)


def tokens_for(capacity: float, n: int | torch.Tensor) -> int | torch.Tensor:
    """Return k = ceil(capacity * n), at least one token, at most n.

    `n` is a tensor while torch.jit / torch.onnx trace a model for export: k is then computed in the graph, in integer
    arithmetic on capacity in millionths, so an export with dynamic shapes keeps k = ceil(capacity * N) at every input
    size (the same k as eager mode for any capacity given to 6 decimals) instead of the traced size's k.
    """
    if isinstance(n, torch.Tensor):
        millionths = round(capacity * 1_000_000)
        return torch.minimum((n * millionths + 999_999) // 1_000_000, n).clamp(min=1)
    # round() first so that float noise such as 0.1 * 30 = 3.0000000000000004 does not add a token
    return max(1, min(n, math.ceil(round(capacity * n, 6))))


class Router(nn.Module):
    """Scores each token with one scalar: a linear map, or a 2-layer MLP (SViT found the MLP gate as good as complex ones)."""

    def __init__(self, dim: int, hidden: int = 0):
        super().__init__()
        if not isinstance(hidden, int) or hidden < 0:
            raise ValueError(f"router_hidden must be 0 (linear router) or a positive hidden width, got {hidden!r}")
        if hidden:
            self.net = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, 1))
        else:
            self.net = nn.Linear(dim, 1)
        for m in self.net.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, N, C) tokens -> (B, N) scores."""
        return self.net(x).squeeze(-1)


class ObjectPredictor(Router):
    """Says whether a token lies on an object: a 2-layer MLP on each token joined with its image's mean token.

    The mean is DynamicViT's global feature: "background" is only defined relative to the rest of the image (a red
    patch is an object on grass and the background on a red wall). It helped, without being what makes dynamic mode
    work: in the README's dynamic-compute run, busy images took 0.216 more of their tokens than empty ones with it and
    0.149 more with a per-token MLP (one training run each, overlapping bootstrap intervals).
    """

    def __init__(self, dim: int, hidden: int):
        super().__init__(2 * dim, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(torch.cat([x, x.mean(1, keepdim=True).expand_as(x)], -1))


GATES = ("sigmoid", "unit", "none")


class RoutedBlock(Block):
    """A timm ViT `Block` that only processes the top-scoring tokens of each image.

    It subclasses timm's Block so its parameter names are timm's (plus `router.*`), and timm weights load directly.

    Gates (what multiplies the block's residual update of a selected token):
        "sigmoid": sigmoid(score), as in the MoD paper; the product is what lets the task loss train the router.
        "unit": sigmoid(score) / sigmoid(score).detach(), exactly 1 in the forward pass, with the gradient of
            log-sigmoid for the router. A pretrained dense ViT therefore starts out computing what it computed before.
        "none": no gate (the router then gets no gradient from the task loss); capacity 1.0 equals the plain block.

    Two ways to choose tokens:
        static (default, the exported path): k = ceil(capacity * N) per image, fixed shapes.
        dynamic (`dynamic=(min_capacity, max_capacity)`): an auxiliary predictor, as in the MoD paper (`ObjectPredictor`
            on the stop-gradient tokens, trained by `router_aux_loss` to say whether a token lies on an object), decides
            how many tokens each image takes: those it scores above `threshold`, clamped to [min, max] capacity; the
            router's ranking decides which. A separate predictor keeps its calibration free of the task loss, which
            pushes router scores up wherever a block's update helps. In a batch, images are padded to the largest k: padded tokens
            are masked out of attention and their update is dropped, so each image's output does not depend on the
            others; the compute saving is real at batch 1 (or when images need similar k).

    Attributes:
        capacity (float): share of tokens processed in static mode, in (0, 1]; settable after construction.
        last_index (torch.Tensor | None): (B, K) indices of the tokens processed by the latest forward, sorted.
        last_valid (torch.Tensor | None): (B, K) bool, which of last_index were really processed (dynamic mode with
            padding), or None when all were.
        last_scores (torch.Tensor | None): (B, N) router scores of the latest forward (detached).
        last_predicted (torch.Tensor | None): (B, N) predictor logits of the latest forward that ran it (training or
            dynamic mode; with grad while training, for the auxiliary loss).
        last_tokens (int): N of the latest forward.
        last_grid (tuple[int, int] | None): the (H, W) token grid of the latest forward, set by the stage that runs the
            block; `router_aux_loss` lays ground-truth boxes out on it.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        capacity: float = 0.125,
        router_hidden: int = 0,
        gate: str | bool = "sigmoid",
        **kwargs,
    ):
        super().__init__(dim, num_heads, **kwargs)
        self.router = Router(dim, router_hidden)
        self.predictor = ObjectPredictor(dim, max(16, dim // 8))
        self.capacity = capacity
        self.gate = {True: "sigmoid", False: "none", None: "none"}.get(gate, gate)
        if self.gate not in GATES:
            raise ValueError(f"gate must be one of {GATES}, got {gate!r}")
        self.dynamic: tuple[float, float] | None = None
        self.export_dynamic_shapes = False
        self.threshold = 0.0  # a score of 0 is sigmoid 0.5, the auxiliary loss's decision boundary
        self.last_index = self.last_valid = self.last_scores = self.last_predicted = None
        self.last_tokens = 0
        self.last_grid: tuple[int, int] | None = None

    @property
    def capacity(self) -> float:
        return self._capacity

    @capacity.setter
    def capacity(self, value: float) -> None:
        self._capacity = check_capacity(value)

    # The capacity travels in the state_dict, so it survives what rebuilds a model from its weights: Ultralytics'
    # trainer (YAML + load), EMA copies and resume. float64 keeps it exact through .half() and the EMA's averaging.
    def get_extra_state(self) -> torch.Tensor:
        return torch.tensor(self.capacity, dtype=torch.float64)

    def set_extra_state(self, state: torch.Tensor) -> None:
        self.capacity = round(float(state), 6)

    def select(self, scores: torch.Tensor, predicted: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Return the (B, K) indices of the tokens to process per image, sorted by position, and their validity mask.

        Sorting keeps tokens in raster order, so capacity 1.0 is the identity permutation (exactness) and the gather
        reads memory mostly forward. The mask is None when every index is processed (always in static mode).
        """
        n = scores.shape[1]
        if self.dynamic is None:
            # While tracing for export, n is a tensor: k stays in the graph only for exports with dynamic shapes (the
            # exporter sets `export_dynamic_shapes`); a constant k lets a runtime plan fixed shapes and fuse the
            # block's matmuls (onnxruntime left MatMul+Add unfused, not Gemm, with k computed in the graph).
            dynamic_shapes = getattr(self, "export_dynamic_shapes", False)  # absent in blocks pickled before it existed
            k = tokens_for(self.capacity, n if dynamic_shapes or not torch.is_tensor(n) else int(n))
            top = scores.topk(k, dim=1).indices
            # Raster order through a second top-k (of the negated positions as floats, exact below 2**24 tokens) and a
            # gather rather than a sort: every export runtime has a float TopK, while LiteRT's interpreter has no Sort
            # (and lowers an int or values-only top-k to one). sorted=True above: CoreML's iOS16 opset has no unsorted
            # top-k. All of it is free in eager mode.
            return top.gather(1, (-top.float()).topk(k, dim=1).indices), None
        lo, hi = (tokens_for(c, n) for c in self.dynamic)
        want = (predicted > self.threshold).sum(1).clamp(lo, hi)  # (B,) tokens each image asks for
        k = int(want.max())
        top = scores.topk(k, dim=1).indices  # best first, so the first want[b] are image b's own
        valid = torch.arange(k, device=scores.device) < want[:, None]
        index, order = top.sort(dim=1)
        valid = valid.gather(1, order)
        return index, None if bool(valid.all()) else valid

    def forward(self, x: torch.Tensor, attn_mask=None, is_causal: bool = False) -> torch.Tensor:
        """(B, N, C) -> (B, N, C); the whole batch is gathered and scattered at once, with no loop over images."""
        scores = self.router(x)
        predicted = None
        if self.training or self.dynamic is not None:  # the static inference (and exported) path never runs it
            predicted = self.predictor(x.detach())
            self.last_predicted = predicted if self.training else predicted.detach()
        index, valid = self.select(scores, predicted)
        self.last_index, self.last_valid, self.last_tokens = index.detach(), valid, x.shape[1]
        self.last_scores = scores.detach()
        b, n, c = x.shape
        # Whole rows of the flattened (B*N, C) tokens are gathered and scattered (ONNX Gather/ScatterND), rather than
        # one element per channel through an index expanded over C (GatherElements/ScatterElements, which reads a
        # B*k*C index tensor): the same values, and in onnxruntime's profile ScatterElements was 3-7% of the time.
        rows = (index + torch.arange(b, device=x.device).unsqueeze(1) * n).flatten()
        flat = x.reshape(-1, c)
        selected = flat.index_select(0, rows).view(b, -1, c)
        # padded tokens (dynamic mode, batch > 1) are hidden from attention as keys
        mask = None if valid is None else valid[:, None, None, :]
        processed = super().forward(selected, attn_mask=mask)
        if self.gate != "none":
            g = scores.gather(1, index).sigmoid().unsqueeze(-1)
            if self.gate == "unit":
                g = g / g.detach()
            processed = selected + g * (processed - selected)
        if valid is not None:
            processed = torch.where(valid.unsqueeze(-1), processed, selected)
        out = flat.clone()
        out[rows] = processed.reshape(-1, c)  # in place on a copy: OpenVINO converts index_put_, not index_put
        return out.view(b, n, c)


def native_model(model: nn.Module) -> nn.Module:
    """The PyTorch model inside Ultralytics' AutoBackend (which keeps it on a backend object, not as a submodule)."""
    native = getattr(getattr(model, "backend", None), "model", None)
    return native if isinstance(native, nn.Module) else model


def routed_blocks(model: nn.Module) -> list[RoutedBlock]:
    """Return the routed blocks of a model in forward order (also through Ultralytics' AutoBackend)."""
    return [m for m in native_model(model).modules() if isinstance(m, RoutedBlock)]


def set_capacity(model: nn.Module, capacity: float | list[float] | dict[int, float]) -> list[float]:
    """Set the capacity of all routed blocks (a float), or per routed block (a list, or {block index: capacity}).

    Returns the capacities now in force, in forward order.
    """
    blocks = routed_blocks(model)
    if isinstance(capacity, (list, tuple)):
        if len(capacity) != len(blocks):
            raise ValueError(f"{len(capacity)} capacities given for {len(blocks)} routed blocks")
        capacity = dict(enumerate(capacity))
    if isinstance(capacity, dict):
        bad = [i for i in capacity if not 0 <= int(i) < len(blocks)]
        if bad:
            raise ValueError(f"routed block indices {bad} out of range for {len(blocks)} routed blocks")
        values = {int(i): check_capacity(c) for i, c in capacity.items()}
    else:
        values = dict.fromkeys(range(len(blocks)), check_capacity(capacity))
    for i, c in values.items():
        blocks[i].capacity = c
    return [b.capacity for b in blocks]


def set_dynamic(model: nn.Module, bounds: tuple[float, float] | None, threshold: float = 0.0) -> None:
    """Switch routed blocks to dynamic per-image k (the tokens their predictors score above `threshold`, clamped to
    `bounds` capacities), or back to static top-k with `bounds=None`."""
    if bounds is not None:
        if len(bounds) != 2:
            raise ValueError(f"dynamic capacity needs (min, max), got {bounds!r}")
        lo, hi = map(check_capacity, bounds)
        if lo > hi:
            raise ValueError(f"dynamic capacity min {lo} is above max {hi}")
        bounds = (lo, hi)
    for b in routed_blocks(model):
        b.dynamic, b.threshold = bounds, float(threshold)


def routing_masks(model: nn.Module) -> torch.Tensor | None:
    """(B, R, N) bool: which tokens each of the R routed blocks processed in the latest forward (None before any)."""
    blocks = [b for b in routed_blocks(model) if b.last_index is not None]
    if not blocks:
        return None
    masks = []
    for b in blocks:
        m = torch.zeros(b.last_index.shape[0], b.last_tokens, dtype=torch.bool, device=b.last_index.device)
        src = torch.ones_like(b.last_index, dtype=torch.bool) if b.last_valid is None else b.last_valid
        masks.append(m.scatter(1, b.last_index, src))
    return torch.stack(masks, 1)


def token_share(model: nn.Module) -> torch.Tensor | None:
    """Per image of the latest forward, the share of tokens processed by the routed blocks: sum(k) / sum(N).

    Returns a (B,) tensor, or None if the model has no routed block or has not run yet.
    """
    masks = routing_masks(model)
    return None if masks is None else masks.float().mean((1, 2)).cpu()


def object_tokens(
    grid: tuple[int, int], boxes: torch.Tensor, image_index: torch.Tensor, batch_size: int
) -> torch.Tensor:
    """(B, H*W) float: 1 where a token's cell of the (H, W) grid overlaps one of its image's boxes.

    `boxes` are (M, 4) normalized xywh, as in an Ultralytics batch's "bboxes", with `image_index` (M,) their image
    ("batch_idx"). The grid is taken to tile the image exactly, as it does at training sizes (multiples of the stride).
    """
    h, w = grid
    target = torch.zeros(batch_size, h, w, device=boxes.device)
    if len(boxes):
        xy, half = boxes[:, :2], boxes[:, 2:] / 2
        lo = ((xy - half) * boxes.new_tensor([w, h])).floor()
        hi = ((xy + half) * boxes.new_tensor([w, h])).ceil()
        cols, rows = torch.arange(w, device=boxes.device), torch.arange(h, device=boxes.device)
        in_x = (cols >= lo[:, :1]) & (cols < hi[:, :1])  # (M, W)
        in_y = (rows >= lo[:, 1:]) & (rows < hi[:, 1:])  # (M, H)
        cells = (in_y[:, :, None] & in_x[:, None, :]).float()  # (M, H, W)
        target.index_add_(0, image_index.long(), cells)
    return (target > 0).float().flatten(1)


def router_aux_loss(model: nn.Module, boxes: torch.Tensor, image_index: torch.Tensor) -> torch.Tensor | None:
    """The auxiliary predictor loss: BCE teaching each routed block's predictor which tokens lie on an object.

    `boxes` (M, 4) normalized xywh and `image_index` (M,) are the batch's ground truth (Ultralytics' "bboxes" and
    "batch_idx"). The MoD paper trains its predictor on top-k membership instead; that target was measured here and
    gives no per-image compute: the router's top-k over a batch was no smaller on empty images than on busy ones (in
    400 val images, empty ones took 0.19 of their tokens and 3+-object ones 0.17). Object cover is the quantity dynamic
    mode should follow (Focus-DETR's foreground supervision). Object tokens are weighted by the batch's background to
    object ratio (balanced BCE): with the plain BCE, a predictor unsure of most tokens (on the features of a model
    trained for minutes) stayed below 0.5 everywhere, so every image took the minimum capacity; balanced, a token is
    above 0.5 when it looks more like an object than the base rate does, and the count above 0.5 follows the object
    cover. Only the predictor learns from it (its input is detached). Returns the mean over routed blocks, or None when
    no block kept predictions with grad (eval mode, or no routed block).
    """
    losses, targets = [], {}  # the blocks of a stage share one token grid, so one target per grid
    for b in routed_blocks(model):
        p = b.last_predicted
        if p is None or not p.requires_grad:
            continue
        b.last_predicted = None  # drop the graph reference; the model may be deep-copied (EMA, checkpoints)
        grid = b.last_grid
        if grid is None or grid[0] * grid[1] != p.shape[1]:
            raise ValueError(
                f"routed block has {p.shape[1]} tokens but its token grid is {grid}: run it in a stage that sets last_grid"
            )
        if grid not in targets:
            target = object_tokens(grid, boxes.to(p.device), image_index.to(p.device), p.shape[0]).to(p.dtype)
            cover = target.mean().clamp(1e-3, 1 - 1e-3)
            targets[grid] = target, (1 - cover) / cover  # balanced: see the docstring
        target, pos_weight = targets[grid]
        losses.append(nn.functional.binary_cross_entropy_with_logits(p, target, pos_weight=pos_weight))
    return torch.stack(losses).mean() if losses else None
