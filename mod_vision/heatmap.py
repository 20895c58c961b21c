"""Routing heatmaps: which tokens each routed block processed, as arrays (`Routing`) and as pictures.

Maps are laid out on the routed stage's token grid, which covers the network input: Ultralytics' letterboxed image,
further padded at the bottom/right by PatchEmbed (or ceil-rounded by strided convolutions) to whole tokens. `Routing`
maps them back to the original image with Ultralytics' own letterbox inverse (`ops.scale_masks`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path

import cv2
import numpy as np
import torch
from ultralytics.utils import ops
from ultralytics.utils.plotting import Annotator

from .nn.routing import BlockRouting, RoutingRecord, token_stride

COLORMAP = cv2.COLORMAP_INFERNO  # dark = skipped / shallow, bright = processed / deep; readable in grey too
ALPHA = 0.5  # weight of the colormap over the image
MAX_SIDE = 1920  # heatmaps are drawn with the long side at most this: RAM and file sizes stay bounded on huge images


@dataclass
class Routing:
    """One image's routing in one forward.

    Attributes:
        blocks: per routed block, its (h, w) bool map of processed tokens on its own token grid (blocks of a multi-stride
            model sit on different grids).
        input_shape: (H, W) of the network input the grids cover (letterboxed image).
        orig_shape: (H0, W0) of the original image.
    """

    blocks: list[np.ndarray]
    input_shape: tuple[int, int]
    orig_shape: tuple[int, int]
    computed: list[np.ndarray] | None = None  # token reuse: per block, the routed tokens computed on this frame

    def __post_init__(self):
        if isinstance(self.blocks, np.ndarray):  # (R, h, w): all blocks on one grid
            self.blocks = list(self.blocks)

    @property
    def reused(self) -> list[np.ndarray] | None:
        """Token reuse: per block, the routed tokens that kept their cached update on this frame; None without reuse."""
        return None if self.computed is None else [m & ~c for m, c in zip(self.blocks, self.computed)]

    @property
    def grid(self) -> tuple[int, int]:
        """The finest token grid among the blocks: the one the depth picture is drawn on."""
        return max((m.shape for m in self.blocks), key=lambda s: s[0] * s[1])

    @property
    def masks(self) -> np.ndarray:
        """(R, h, w) bool on the finest grid: each block's processed tokens (a coarser block's token covers several cells)."""
        return np.stack([self.regrid(m, self.grid) for m in self.blocks])

    @property
    def depth(self) -> np.ndarray:
        """(h, w) int on the finest grid: how many routed blocks processed each place, in [0, R]."""
        return self.masks.sum(0, dtype=np.int64)

    @property
    def share(self) -> float:
        """Share of routed-block tokens processed (under token reuse: computed), over all blocks' own tokens
        (result.token_share's definition)."""
        done = self.blocks if self.computed is None else self.computed
        return float(sum(m.sum() for m in done) / sum(m.size for m in self.blocks))

    def stride(self, grid: tuple[int, int] | None = None) -> int:
        """Input pixels per token side of a grid (default the finest): a power of two that covers the input."""
        (h, w), (hi, wi) = grid or self.grid, self.input_shape
        return max(token_stride((hi, wi), (h, w)), math.ceil(hi / h), math.ceil(wi / w))

    def regrid(self, m: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
        """A token map moved to another block's grid, through input pixels (grids of strides 16 and 32 need not nest
        exactly when the input is not a multiple of 32)."""
        if m.shape[-2:] == tuple(grid):
            return m
        s = self.stride(grid)
        return self.to_input(m)[..., ::s, ::s][..., : grid[0], : grid[1]]

    def to_input(self, grid: np.ndarray | None = None) -> np.ndarray:
        """(..., h, w) token-grid map (default: depth) -> (..., H, W) on the network input; tokens become squares."""
        grid = self.depth if grid is None else np.asarray(grid)
        s = self.stride(grid.shape[-2:])
        return grid.repeat(s, -2).repeat(s, -1)[..., : self.input_shape[0], : self.input_shape[1]]

    def to_image(self, grid: np.ndarray | None = None) -> np.ndarray:
        """(..., h, w) token-grid map (default: depth) -> (..., H0, W0) on the original image, letterbox undone."""
        x = self.to_input(grid)
        lead = x.shape[:-2]
        t = torch.from_numpy(np.ascontiguousarray(x.reshape(1, -1, *x.shape[-2:]), dtype=np.float32))
        out = ops.scale_masks(t, self.orig_shape[:2], mode="nearest")[0].numpy()
        out = out > 0.5 if x.dtype == bool else out.round().astype(x.dtype)
        return out.reshape(*lead, *out.shape[-2:])


def routing_maps(entries: list[BlockRouting] | RoutingRecord | None, input_shape, orig_shapes) -> list[Routing] | None:
    """One `Routing` per image of one forward, from its record entries, on inputs of `input_shape` (H, W); None when
    there is no routing to show (a dense model, or nothing recorded)."""
    if isinstance(entries, RoutingRecord):
        entries = entries.blocks
    if not entries:
        return None
    per_block, computed = [], []
    for e in entries:
        if e.grid is None or e.grid[0] * e.grid[1] != e.tokens:
            raise RuntimeError(f"a routed block saw {e.tokens} tokens but recorded the token grid {e.grid}")
        per_block.append(e.mask().view(-1, *e.grid).cpu().numpy())
        if e.computed is not None:
            computed.append(e.computed.view(-1, *e.grid).cpu().numpy())
    return [
        Routing([m[i] for m in per_block], tuple(input_shape[-2:]), tuple(s[:2]),
                [c[i] for c in computed] if computed else None)
        for i, s in enumerate(orig_shapes)
    ]  # fmt: skip


def colorize(image: np.ndarray, heat: np.ndarray, vmax: float) -> np.ndarray:
    """Blend a colormapped (H, W) heat map in [0, vmax] over a BGR uint8 image of the same size."""
    heat = np.clip(heat.astype(np.float32) / max(vmax, 1e-9), 0, 1)
    colored = cv2.applyColorMap((heat * 255).astype(np.uint8), COLORMAP)
    return cv2.addWeighted(np.ascontiguousarray(image), 1 - ALPHA, colored, ALPHA, 0)


def bounded(image: np.ndarray, routing: Routing, max_side: int = MAX_SIDE) -> tuple[np.ndarray, Routing]:
    """The image shrunk to a long side of at most `max_side`, and its routing mapped to that size instead."""
    h, w = image.shape[:2]
    scale = max_side / max(h, w)
    if scale >= 1:
        return image, routing
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA), replace(routing, orig_shape=(size[1], size[0]))


def caption(image: np.ndarray, text: str, bottom: bool = False) -> np.ndarray:
    """Write `text` on a dark box at the top left, or bottom left (Ultralytics' Annotator, cv2 fonts: no download)."""
    lw = max(1, round(min(image.shape[:2]) / 250))
    ann = Annotator(np.ascontiguousarray(image), line_width=lw, pil=False)
    h = cv2.getTextSize(text, 0, fontScale=ann.sf, thickness=ann.tf)[0][1]
    ann.text((2, image.shape[0] - h - 8 if bottom else h + 5), text, box_color=(32, 32, 32))
    return ann.result()


def share_text(routing: Routing) -> str:
    return f"compute share {routing.share:.2f} ({len(routing.masks)} routed blocks)"


def depth_legend(routing: Routing) -> str:
    return f"dark: no routed block, bright: all {len(routing.masks)}"


def depth_image(image: np.ndarray, routing: Routing, text: str | None = None) -> np.ndarray:
    """The original BGR image (long side at most MAX_SIDE) with the depth map overlaid, the compute share written on
    it, and what the colours mean."""
    image, routing = bounded(image, routing)
    heat = colorize(image, routing.to_image(), len(routing.masks))
    return caption(caption(heat, text or share_text(routing)), depth_legend(routing), bottom=True)


REUSE_COLORS = {"computed": (0, 140, 255), "reused": (255, 160, 0)}  # BGR: orange computed, blue reused; skipped: none


def reuse_image(image: np.ndarray, routing: Routing) -> np.ndarray:
    """Token reuse's picture of one frame: on the finest grid, places computed by some routed block (orange), places
    routed but only reused (blue), and places no routed block touched (the image as it is)."""
    image, routing = bounded(image, routing)
    fine = routing.grid
    computed = np.any([routing.regrid(c, fine) for c in routing.computed], 0)
    reused = np.any([routing.regrid(r, fine) for r in routing.reused], 0) & ~computed
    out = np.ascontiguousarray(image).copy()
    for name, where in (("computed", computed), ("reused", reused)):
        cells = routing.to_image(where)
        out[cells] = (out[cells] * (1 - ALPHA) + np.array(REUSE_COLORS[name]) * ALPHA).astype(np.uint8)
    text = f"computed {routing.share:.3f} of routed-block tokens"
    return caption(caption(out, text), "orange: computed, blue: reused from cache, clear: skipped", bottom=True)


def block_images(image: np.ndarray, routing: Routing) -> list[np.ndarray]:
    """Per routed block, the original image (long side at most MAX_SIDE) with that block's selected tokens bright and
    the skipped ones dark."""
    image, routing = bounded(image, routing)
    return [
        caption(caption(colorize(image, m, 1), f"routed block {j}: {grid.mean():.2f} of tokens"),
                "bright: processed, dark: skipped", bottom=True)
        for j, (m, grid) in enumerate(zip(routing.to_image(routing.masks), routing.masks))
    ]  # fmt: skip


def panel_figure(rows: list[tuple[np.ndarray, Routing, str]], fname: str | Path) -> Path:
    """One figure: per row (image, routing, title), the depth overlay then one panel per routed block.

    Uses matplotlib's object API on an Agg canvas: no global backend switch, bundled DejaVu font only.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize
    from matplotlib.figure import Figure

    cols = 1 + max(len(r.masks) for _, r, _ in rows)
    fig = Figure(figsize=(2.6 * cols, 2.4 * len(rows) + 0.4), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(rows), cols, squeeze=False)
    for ax_row, (image, routing, title) in zip(axes, rows):
        image, routing = bounded(image, routing)
        r = len(routing.masks)
        panels = [colorize(image, routing.to_image(), r)] + [colorize(image, m, 1) for m in routing.to_image(routing.masks)]
        names = [f"{title}\ndepth, share {routing.share:.2f}"] + [
            f"block {j}: {m.mean():.2f} tokens" for j, m in enumerate(routing.masks)
        ]
        for ax, im, name in zip(ax_row, panels, names):
            ax.imshow(im[..., ::-1])
            ax.set_title(name, fontsize=8)
        for ax in ax_row:
            ax.axis("off")
        bar = ScalarMappable(Normalize(0, r), cmap="inferno")  # the same map as cv2.COLORMAP_INFERNO
        cbar = fig.colorbar(bar, ax=ax_row[0], fraction=0.046, pad=0.02, ticks=range(r + 1))
        cbar.ax.tick_params(labelsize=7)
        cbar.set_label("routed blocks", fontsize=7)
    fig.suptitle(
        "depth: routed blocks each token went through (colour bar); block panels: bright = processed, dark = skipped",
        fontsize=9,
    )
    fig.savefig(fname, dpi=110)
    return Path(fname)


def save_image_heatmaps(image: np.ndarray, routing: Routing, folder: Path, stem: str) -> list[Path]:
    """Write <stem>_depth.jpg, <stem>_block<j>.jpg per routed block and the <stem>_blocks.png panel grid."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"{stem}_depth.jpg"]
    cv2.imwrite(str(paths[0]), depth_image(image, routing))
    for j, im in enumerate(block_images(image, routing)):
        paths.append(folder / f"{stem}_block{j}.jpg")
        cv2.imwrite(str(paths[-1]), im)
    paths.append(panel_figure([(image, routing, stem)], folder / f"{stem}_blocks.png"))
    return paths
