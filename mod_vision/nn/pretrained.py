"""Initialise a routed ViT backbone (PatchEmbed + MoDViTStage) from a timm ViT: a timm model name or a local file.

Weights are mapped explicitly, timm's way (`checkpoint_filter_fn`-style): `patch_embed.proj.*` -> PatchEmbed.proj,
`pos_embed` -> MoDViTStage.pos_embed, `blocks.i.*` -> MoDViTStage.blocks.i.*. What the stage cannot use is reported,
never silently dropped: the routers are new (they keep their init), timm's cls/register tokens, final norm and head
are unused, and any other timm weight (a pre-norm, q/k norms...) is an error, since the backbone would not compute what
the timm model computes. Routed blocks are switched to the "unit" gate so that at capacity 1.0 the backbone's features
equal timm's.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from timm.layers import LayerScale, resample_abs_pos_embed, resample_patch_embed
from torch import nn
from ultralytics.utils import LOGGER

from .routing import routed_blocks
from .vit import MoDViTStage, PatchEmbed

WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")
# timm weights a detection backbone has no use for: the class/register/mask tokens, the final norm and the classifier
UNUSED_PREFIXES = ("cls_token", "reg_token", "mask_token", "norm.", "fc_norm.", "head.", "head_drop.", "attn_pool.")
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # timm's defaults


@dataclass
class TimmWeights:
    """A timm ViT state dict and what is known about the model it came from."""

    source: str
    state_dict: dict[str, torch.Tensor]
    num_heads: int | None = None  # not in a state dict: known only from a name, or a config.json beside the file
    mean: tuple[float, ...] | None = None  # the input normalisation the model was trained with
    std: tuple[float, ...] | None = None
    grid: tuple[int, int] | None = None  # token grid of timm's pos_embed
    num_prefix_tokens: int | None = None  # cls/register entries at the start of timm's pos_embed


@dataclass
class TimmLoadReport:
    """What `load_timm_backbone` did: our parameters it set, ours it left at init, timm's it did not use."""

    source: str
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unused: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def offline_help(name: str) -> str:
    return (
        f"Pass a local weights file instead, e.g. timm_weights=/path/to/{name}.safetensors (or .pth). To make one on a "
        f"machine with internet: m = timm.create_model('{name}', pretrained=True); then "
        f"safetensors.torch.save_file(m.state_dict(), '{name}.safetensors') or torch.save(m.state_dict(), "
        f"'{name}.pth'). timm.models.save_for_hf(m, 'dir', safe_serialization=True) also writes a config.json beside "
        f"dir/model.safetensors, from which the input mean/std and head count are read."
    )


def read_timm_weights(source: str | Path) -> TimmWeights:
    """Read a timm ViT's weights from a local .safetensors/.pth file or, by timm model name, from the HF hub."""
    import timm

    path = Path(source)
    if path.is_file():
        return _read_file(path)
    is_name = timm.is_model(str(source)) or str(source).startswith("hf-hub:")
    if not is_name and (path.suffix in WEIGHT_SUFFIXES or len(path.parts) > 1):
        raise FileNotFoundError(f"timm weights file '{source}' not found")
    if not is_name:
        raise ValueError(
            f"timm_weights='{source}' is neither a file nor a timm model name; use a name such as "
            f"'vit_small_patch16_224.augreg_in21k' or 'vit_small_patch14_dinov2.lvd142m' (timm.list_models('vit_*')), "
            f"or a path to a {'/'.join(WEIGHT_SUFFIXES)} file"
        )
    try:
        m = timm.create_model(str(source), pretrained=True)
    except Exception as e:  # hub/network failures come as many types (OSError, HTTP errors, LocalEntryNotFoundError)
        raise RuntimeError(
            f"Could not download the pretrained weights of timm model '{source}' ({type(e).__name__}: {e}). "
            f"{offline_help(str(source))}"
        ) from e
    cfg = m.pretrained_cfg
    return TimmWeights(
        str(source),
        m.state_dict(),
        num_heads=m.blocks[0].attn.num_heads if len(m.blocks) else None,
        mean=tuple(cfg.get("mean", IMAGENET_MEAN)),
        std=tuple(cfg.get("std", IMAGENET_STD)),
        grid=tuple(m.patch_embed.grid_size),
        num_prefix_tokens=0 if m.no_embed_class else m.num_prefix_tokens,
    )


def _read_file(path: Path) -> TimmWeights:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        sd = load_file(str(path), device="cpu")
    else:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model"):  # timm/DeiT training checkpoints wrap the weights
        if isinstance(sd, dict) and isinstance(sd.get(key), dict):
            sd = sd[key]
    if not isinstance(sd, dict):
        raise ValueError(f"{path} does not hold a state dict (got {type(sd).__name__})")
    sd = {k.removeprefix("module."): v for k, v in sd.items()}
    w = TimmWeights(str(path), sd)
    config = path.with_name("config.json")  # written beside model.safetensors by timm's save_for_hf / the HF hub
    if config.is_file():
        c = json.loads(config.read_text())
        pre = c.get("pretrained_cfg", {})
        w.mean, w.std = (tuple(pre["mean"]), tuple(pre["std"])) if "mean" in pre and "std" in pre else (None, None)
        w.num_heads = c.get("model_args", {}).get("num_heads")
    return w


def _backbone(model: nn.Module) -> tuple[PatchEmbed, MoDViTStage]:
    embeds = [m for m in model.modules() if isinstance(m, PatchEmbed)]
    stages = [m for m in model.modules() if isinstance(m, MoDViTStage)]
    if len(embeds) != 1 or len(stages) != 1:
        raise ValueError(
            f"timm ViT weights load into a model with one PatchEmbed and one MoDViTStage (cfg/models/modvit-*.yaml); "
            f"this model has {len(embeds)} PatchEmbed and {len(stages)} MoDViTStage layers"
        )
    return embeds[0], stages[0]


def _depth(sd: dict) -> int:
    ids = {int(m[1]) for k in sd if (m := re.match(r"blocks\.(\d+)\.", k))}
    return max(ids) + 1 if ids else 0


def _prefix_tokens(w: TimmWeights, n: int) -> int:
    """Entries of timm's pos_embed before the patch grid (cls + register tokens, or none with `no_embed_class`)."""
    if w.num_prefix_tokens is not None:
        return w.num_prefix_tokens
    sd = w.state_dict
    tokens = ("cls_token" in sd) + (sd["reg_token"].shape[1] if "reg_token" in sd else 0)
    for p in (tokens, 0):
        if math.isqrt(n - p) ** 2 == n - p:
            return p
    raise ValueError(f"{w.source}: pos_embed has {n} entries, not a square grid after {tokens} prefix tokens")


def load_timm_backbone(
    model: nn.Module,
    source: str | Path | TimmWeights,
    normalize: bool = True,
    mean: tuple[float, ...] | None = None,
    std: tuple[float, ...] | None = None,
    verbose: bool = True,
) -> TimmLoadReport:
    """Load a timm ViT into the PatchEmbed + MoDViTStage backbone of `model` and set its routed blocks' gate to "unit".

    Args:
        model: a model built from a cfg/models/modvit-*.yaml (or anything with one PatchEmbed and one MoDViTStage).
        source: a timm model name with a pretrained tag (downloaded through timm, needs internet), or a local
            .safetensors/.pth file of a timm ViT state dict.
        normalize: fold the timm model's input normalisation ((x - mean) / std) into the patch embedding, since
            Ultralytics feeds images in [0, 1]; the backbone then computes on raw images what timm computes on
            normalised ones.
        mean, std: override the normalisation; by default the timm model's (a name, or a file with a config.json
            beside it), else timm's ImageNet default.

    Returns:
        A TimmLoadReport. Raises a ValueError when width, depth, heads, LayerScale or the weights' layout do not fit.
    """
    w = source if isinstance(source, TimmWeights) else read_timm_weights(source)
    sd, src = w.state_dict, w.source
    embed, stage = _backbone(model)
    if "patch_embed.proj.weight" not in sd or "pos_embed" not in sd:
        raise ValueError(
            f"{src} is not a timm VisionTransformer with an absolute position embedding (no patch_embed.proj.weight "
            f"or pos_embed); its first keys are {list(sd)[:6]}"
        )
    proj = sd["patch_embed.proj.weight"]
    width, depth = proj.shape[0], _depth(sd)
    ours_w, ours_d, heads = stage.pos_embed.shape[1], len(stage.blocks), stage.blocks[0].attn.num_heads
    yaml_file = getattr(model, "yaml", {}).get("yaml_file", "the model YAML")
    have = f"{src} is a ViT of width {width}, depth {depth}; the MoDViTStage of {yaml_file} has width {ours_w}, depth {ours_d}"
    hint = "use a YAML that matches, e.g. modvit-det-vits.yaml for ViT-S (384, 12), modvit-det-m.yaml for ViT-B (768, 12)"
    if width != ours_w:
        raise ValueError(f"width mismatch: {have}; {hint}")
    if depth != ours_d:
        raise ValueError(f"depth mismatch: {have}; {hint}")
    if w.num_heads is not None and w.num_heads != heads:
        raise ValueError(
            f"{src} has {w.num_heads} attention heads, the MoDViTStage {heads} (width / head_dim); set head_dim to "
            f"{width // w.num_heads} in {yaml_file}"
        )
    if proj.shape[1] != embed.proj.in_channels:
        raise ValueError(f"{src} takes {proj.shape[1]} input channels, the model {embed.proj.in_channels}")
    has_ls = any(k.endswith(".ls1.gamma") for k in sd)
    stage_ls = isinstance(stage.blocks[0].ls1, LayerScale)
    if has_ls != stage_ls:
        fix = "add {init_values: 1.0e-5} to the MoDViTStage arguments (as in modvit-det-dinov2s.yaml)" if has_ls else (
            "remove init_values from the MoDViTStage arguments")
        raise ValueError(
            f"{src} {'uses' if has_ls else 'has no'} LayerScale (blocks.i.ls1.gamma, e.g. DINOv2) but the MoDViTStage "
            f"of {yaml_file} {'has none' if has_ls else 'has it'}: {fix}"
        )

    report = TimmLoadReport(src)
    ours = stage.state_dict()
    stage_sd, unmapped = {}, []
    for k, v in sd.items():
        if k.startswith("blocks."):
            if k not in ours or ours[k].shape != v.shape:
                unmapped.append(f"{k} {tuple(v.shape)}")
            else:
                stage_sd[k] = v
        elif k.startswith(UNUSED_PREFIXES):
            report.unused.append(k)
        elif k not in {"patch_embed.proj.weight", "patch_embed.proj.bias", "pos_embed"}:
            unmapped.append(k)
    if unmapped:
        raise ValueError(
            f"{src} has weights the MoDViTStage cannot hold, so it would not compute what the timm model does: "
            f"{unmapped[:8]}{' ...' if len(unmapped) > 8 else ''} (e.g. a pre-norm or q/k-norm ViT, or another mlp_ratio)"
        )

    # position embedding: drop cls/register entries, resample the grid to the stage's, as (1, C, H, W)
    pos = sd["pos_embed"]
    prefix = _prefix_tokens(w, pos.shape[1])
    old = w.grid or (math.isqrt(pos.shape[1] - prefix),) * 2
    grid = tuple(stage.pos_embed.shape[-2:])
    pos = resample_abs_pos_embed(pos[:, prefix:].float(), list(grid), list(old), num_prefix_tokens=0)
    stage_sd["pos_embed"] = pos.reshape(1, *grid, width).permute(0, 3, 1, 2)
    if tuple(old) != grid:
        report.notes.append(f"pos_embed resampled from {old[0]}x{old[1]} to {grid[0]}x{grid[1]} tokens")
    if prefix:
        report.unused.append(f"pos_embed[:, :{prefix}] (cls/register tokens)")

    missing = [k for k in stage.load_state_dict(stage_sd, strict=False).missing_keys if not k.endswith("_extra_state")]
    report.missing = missing
    new = (".router.", ".predictor.")  # routing modules a timm ViT does not have
    if any(not any(n in k for n in new) for k in missing):
        raise ValueError(f"{src} lacks weights of the MoDViTStage: {[k for k in missing if not any(n in k for n in new)]}")

    # patch embedding: FlexiViT resampling to our patch size (e.g. DINOv2's 14 -> 16), then the input normalisation
    weight, bias = proj.float(), sd.get("patch_embed.proj.bias")
    bias = torch.zeros(width) if bias is None else bias.float()
    patch = tuple(embed.proj.kernel_size)
    if tuple(weight.shape[-2:]) != patch:
        report.notes.append(f"patch embedding resampled from {tuple(weight.shape[-2:])} to {patch} (FlexiViT)")
        weight = resample_patch_embed(weight, list(patch))
    if normalize:
        mean = torch.tensor(mean or w.mean or IMAGENET_MEAN)
        std = torch.tensor(std or w.std or IMAGENET_STD)
        weight = weight / std[None, :, None, None]
        bias = bias - (weight * mean[None, :, None, None]).sum((1, 2, 3))
        report.notes.append(f"input normalisation mean={[round(v, 4) for v in mean.tolist()]} std={[round(v, 4) for v in std.tolist()]} folded into the patch embedding")
    embed.proj.load_state_dict({"weight": weight, "bias": bias})
    e, st = getattr(embed, "i", "patch_embed"), getattr(stage, "i", "stage")  # names as in model.model's state dict
    report.loaded = [f"{e}.proj.weight", f"{e}.proj.bias"] + [f"{st}.{k}" for k in stage_sd]

    set_unit_gate(model, stage, report)
    if verbose:
        LOGGER.info(
            f"timm weights {src}: loaded {len(report.loaded)} tensors; new (kept at init): {len(missing)} router/predictor "
            f"tensors; unused: {report.unused}; {'; '.join(report.notes)}"
        )
    return report


def set_unit_gate(model: nn.Module, stage: MoDViTStage, report: TimmLoadReport) -> None:
    """Switch the stage's routed blocks to the "unit" gate, recorded in the model's YAML dict like capacities are, so
    a model rebuilt from it (fine-tuning from a checkpoint) keeps it."""
    blocks = routed_blocks(stage)
    changed = sorted({b.gate for b in blocks if b.gate != "unit"})
    if changed:
        report.notes.append(f"gate of the routed blocks set to 'unit' (was {changed})")
    for b in blocks:
        b.gate = "unit"
    yaml, i = getattr(model, "yaml", None), getattr(stage, "i", None)
    if blocks and isinstance(yaml, dict) and i is not None:
        args = (yaml["backbone"] + yaml["head"])[i][3]
        if args and isinstance(args[-1], dict):
            args[-1]["gate"] = "unit"
        else:
            args.append({"gate": "unit"})
