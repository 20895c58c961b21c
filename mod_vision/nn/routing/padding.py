"""Where the padding is: for each token cell of any grid over the network input, whether it is image, one flat colour
(a patch embedding's padding) or mostly Ultralytics' letterbox fill.

Routers rank padding last (the "never padding" policy) and the routing metrics count the cells this finds; both read it
here, so they agree on what padding is.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

import torch
from torch import nn

from .mechanism import tracing


_INPUT: ContextVar[dict | None] = ContextVar("mod_vision_routing_input", default=None)


@contextmanager
def routing_input(image: torch.Tensor) -> Iterator[None]:
    """Let the routers of forwards run inside the block see the network input (B, 3, H, W), to skip constant cells,
    and pass their decisions on to the routers that share them (`forward_state`)."""
    token = _INPUT.set({"image": image, "cells": {}, "decisions": {}})
    try:
        yield
    finally:
        _INPUT.reset(token)


def forward_state() -> dict | None:
    """The state of the forward running inside `routing_input` (its input, padding cells per grid, the routing
    decisions made per grid), or None outside one: what a forward decided lives with that forward, not on modules."""
    return _INPUT.get()


def grid_key(grid: tuple) -> tuple[int, int]:
    """A token grid as a key of the forward's state (padding cells, decisions): while torch.jit traces for export,
    its sizes are 0-dim tensors, which hash by identity (the key never enters the graph: reading their values is
    safe)."""
    if not any(torch.is_tensor(g) for g in grid):
        return tuple(grid)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        return tuple(int(g) for g in grid)


LETTERBOX_FILL = 114 / 255  # Ultralytics' letterbox (and mosaic) fill, as the network sees it


def constant_cells(image: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """(B, h*w) bool: the token cells of a (h, w) grid over `image` that are padding: all one colour (a flat patch of
    exactly one value, the padding a patch embedding adds), or mostly Ultralytics' letterbox fill (a centred letterbox
    splits its band, so a coarse cell can be half fill, half image edge). Max- and average-pooling: every export
    runtime has them."""
    return padding_levels(image, grid) > 0


def padding_levels(image: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """(B, h*w) float: 0 for a real cell, 1 for a cell of one colour, 2 for a cell that is mostly letterbox fill, so
    that when k exceeds the real cells, flat patches run before letterbox padding (see `constant_cells`)."""
    return levels_from_pixels(pixel_extremes(image), grid)


def token_stride(input_shape: tuple[int, int], grid: tuple[int, int]) -> int:
    """Input pixels per token side of a token grid over an input: a power of two (Ultralytics' strides), so grids that
    a patch embedding or strided convolutions ceil-rounded map back to their stride."""
    return 2 ** round(math.log2(max(input_shape[0] / grid[0], input_shape[1] / grid[1])))


BASE_CELL = 8  # padding statistics are gathered per 8x8 pixels once a forward; every token grid pools from them


def pixel_extremes(image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per 8x8 pixel cell: each channel's largest and smallest value (B, 3, H/8, W/8), and the share of its pixels that
    are letterbox fill (B, 1, H/8, W/8); by reshaping rather than max pooling (no indices). The image is zero-padded to
    whole cells, as a patch embedding pads.

    This runs on every forward of every routed model, so it is written for speed: the first reduction takes each
    cell's 8 rows at once, an elementwise extreme of whole contiguous image rows (about 3x faster on CPU than reducing
    the 8 contiguous pixels of a cell row first), and the fill test works in place on its own difference."""
    b, c, h, w = image.shape
    ph, pw = -h % BASE_CELL, -w % BASE_CELL
    if ph or pw:
        image = nn.functional.pad(image, (0, pw, 0, ph))
    gh, gw = (h + ph) // BASE_CELL, (w + pw) // BASE_CELL
    shape = (-1, gh, BASE_CELL, gw, BASE_CELL)  # rank 5 (batch and channels merged): CoreML allows no more
    if not tracing() and c > 1 and image.is_contiguous(memory_format=torch.channels_last):
        # the same reductions on the pixel rows of a channels-last input (what mod_vision's predictor hands the model),
        # without a copy of it in the plain layout
        rows = image.permute(0, 2, 3, 1).reshape(b, gh, BASE_CELL, gw * BASE_CELL * c)
        hi = rows.amax(2).view(b, gh, gw, BASE_CELL, c).amax(3).permute(0, 3, 1, 2)
        lo = rows.amin(2).view(b, gh, gw, BASE_CELL, c).amin(3).permute(0, 3, 1, 2)
    else:
        rows = image.reshape(-1, gh, BASE_CELL, gw * BASE_CELL)  # each cell row's 8 image rows
        hi = rows.amax(2).view(-1, gh, gw, BASE_CELL).amax(3).reshape(b, c, gh, gw)
        lo = rows.amin(2).view(-1, gh, gw, BASE_CELL).amin(3).reshape(b, c, gh, gw)
    if tracing():  # an exported graph has no data-dependent shapes
        fill = (pixel_fill(image).to(image.dtype).reshape(shape)).mean(4).mean(2).reshape(b, 1, gh, gw)
    else:
        fill = fill_share(image, hi, lo)
    return hi, lo, fill


FILL_TOLERANCE = 0.5 / 255  # a pixel is letterbox fill when each channel is this close to LETTERBOX_FILL


def pixel_fill(image: torch.Tensor) -> torch.Tensor:
    """(B, 1, H, W) bool: the pixels of letterbox fill colour. In place on its own difference."""
    return (image - LETTERBOX_FILL).abs_().amax(1, keepdim=True) < FILL_TOLERANCE


def fill_share(image: torch.Tensor, hi: torch.Tensor, lo: torch.Tensor) -> torch.Tensor:
    """(B, 1, H/8, W/8) the share of each 8x8 cell's pixels that are letterbox fill, `pixel_fill`'s exactly, testing
    pixels only in the cells where the channels' extremes leave it open. A pixel value's distance to the fill grows
    away from it, so a cell whose extremes are all within the tolerance is all fill, and one with a channel's extremes
    both beyond it on one side has none: a photograph or a flat frame of another colour tests no pixel."""
    near_hi, near_lo = hi - LETTERBOX_FILL, lo - LETTERBOX_FILL
    every = torch.maximum(near_hi.abs(), near_lo.abs()).amax(1) < FILL_TOLERANCE  # (B, h, w)
    none = ((near_lo >= FILL_TOLERANCE) | (near_hi <= -FILL_TOLERANCE)).any(1)
    fill = every.to(image.dtype)
    mixed = ~every & ~none
    if mixed.any():
        b, c, gh, gw = hi.shape
        cells = image[..., : gh * BASE_CELL, : gw * BASE_CELL]
        cells = cells.unflatten(3, (gw, BASE_CELL)).unflatten(2, (gh, BASE_CELL))  # views, of either layout
        pixels = cells.permute(0, 2, 4, 1, 3, 5)[mixed]  # (M, C, 8, 8) the mixed cells' pixels
        fill[mixed] = pixel_fill(pixels).flatten(1).sum(1).to(image.dtype) / BASE_CELL**2
    return fill.unsqueeze(1)


def levels_from_pixels(pixels: tuple[torch.Tensor, torch.Tensor, torch.Tensor], grid: tuple[int, int]) -> torch.Tensor:
    hi, lo, fill = pixels
    stride = token_stride((hi.shape[-2] * BASE_CELL, hi.shape[-1] * BASE_CELL), grid)
    k = max(1, stride // BASE_CELL)
    if k > 1:
        hi = nn.functional.max_pool2d(hi, k, k, ceil_mode=True)
        lo = -nn.functional.max_pool2d(-lo, k, k, ceil_mode=True)
        fill = nn.functional.avg_pool2d(fill, k, k, ceil_mode=True)
    mostly_fill = (fill[:, 0] > 0.5).to(hi.dtype)
    flat = ((hi - lo).amax(1) < 1 / 255).to(hi.dtype)
    levels = torch.maximum(flat, mostly_fill) + mostly_fill  # arithmetic, not `|`: CoreML has no bitwise or
    levels = levels[:, : grid[0], : grid[1]]
    if levels.shape[-2:] != tuple(grid):  # a grid the image does not tile (a size the model pads further): padding
        levels = nn.functional.pad(levels, (0, grid[1] - levels.shape[-1], 0, grid[0] - levels.shape[-2]), value=2.0)
    return levels.flatten(1)


def current_padding(grid: tuple[int, int] | None) -> torch.Tensor | None:
    """`padding_levels` of the input set by `routing_input`, once per grid and forward; None without one."""
    state = _INPUT.get()
    if state is None or grid is None:
        return None
    key = grid_key(grid)
    if key not in state["cells"]:
        if "pixels" not in state:
            state["pixels"] = pixel_extremes(state["image"])
        state["cells"][key] = levels_from_pixels(state["pixels"], grid)
    return state["cells"][key]
