"""timm ViT initialisation (mod_vision.nn.pretrained), router learning rate groups and the routed training recipe.

Checkpoints are saved by the tests from small timm models built with pretrained=False, so no network is needed.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import timm
import torch
from safetensors.torch import save_file
from timm.layers import resample_patch_embed
from timm.models.vision_transformer import VisionTransformer
from ultralytics.cfg import get_cfg
from ultralytics.utils import YAML

from mod_vision import MoDYOLO
from mod_vision.cfg import with_extra_defaults
from mod_vision.engine.train import MoDDetectionTrainer, capacity_range, routing_param_groups
from mod_vision.nn import MoDDetectionModel, routed_blocks
from mod_vision.nn.pretrained import IMAGENET_MEAN, IMAGENET_STD, load_timm_backbone, read_timm_weights
from mod_vision.nn.routing import set_capacity

from .conftest import TRAIN_ARGS

WIDTH, DEPTH, HEADS = 64, 4, 2
ATOL = 1e-5  # the unit gate adds selected + (processed - selected): float rounding only, no approximation


def tiny_yaml(depth=DEPTH, width=WIDTH, **stage_kw) -> dict:
    """A routed ViT (every other block routed) with a tiny head; stage_kw are MoDViTStage keywords."""
    stage_kw = {"pos_grid": 4, **stage_kw}
    return {
        "nc": 2,
        "backbone": [[-1, 1, "PatchEmbed", [width, 16]], [-1, depth, "MoDViTStage", [width, 2, 0.5, 32, stage_kw]]],
        "head": [[1, 1, "Conv", [32, 1, 1]], [[2, 2, 2], 1, "Detect", ["nc"]]],
    }


def tiny_model(**kw) -> MoDDetectionModel:
    return MoDDetectionModel(tiny_yaml(**kw), verbose=False).eval()


@pytest.fixture(scope="module")
def vit16(tmp_path_factory):
    """A patch-16 timm ViT without class token (so its forward_features are patch tokens only), saved as .pth."""
    torch.manual_seed(0)
    vit = VisionTransformer(
        img_size=64, patch_size=16, embed_dim=WIDTH, depth=DEPTH, num_heads=HEADS, class_token=False, global_pool="avg"
    ).eval()
    path = tmp_path_factory.mktemp("timm") / "vit16.pth"
    torch.save(vit.state_dict(), path)
    return vit, path


@pytest.fixture(scope="module")
def dinov2(tmp_path_factory):
    """A DINOv2-architecture ViT (patch 14, LayerScale, class token) with small dims, saved as .safetensors."""
    torch.manual_seed(1)
    vit = timm.create_model(
        "vit_small_patch14_dinov2", pretrained=False, img_size=56, embed_dim=WIDTH, depth=DEPTH, num_heads=HEADS
    ).eval()
    with torch.no_grad():  # DINOv2's init 1e-5 would make every block nearly the identity and the test toothless
        for name, p in vit.named_parameters():
            if name.endswith(".gamma"):
                p.uniform_(0.5, 1.5)
    path = tmp_path_factory.mktemp("timm") / "dinov2.safetensors"
    save_file(vit.state_dict(), str(path))
    return vit, path


def normalized(x):
    return (x - torch.tensor(IMAGENET_MEAN)[:, None, None]) / torch.tensor(IMAGENET_STD)[:, None, None]


def backbone_tokens(model, x):
    """(B, N, C) tokens after the MoDViTStage of a tiny model."""
    return model.model[1](model.model[0](x)).flatten(2).transpose(1, 2)


def test_patch16_backbone_features_equal_timm_at_capacity_1(vit16):
    vit, path = vit16
    model = tiny_model()
    report = load_timm_backbone(model, path)
    # 2 routed blocks, each with a new linear router (w, b) and a 2-layer predictor (2 x w, b)
    assert all(".router." in k or ".predictor." in k for k in report.missing) and len(report.missing) == 2 * (2 + 4)
    assert set(report.unused) == {"fc_norm.weight", "fc_norm.bias", "head.weight", "head.bias"}
    assert {b.gate for b in routed_blocks(model)} == {"unit"}
    x = torch.rand(2, 3, 64, 64)  # Ultralytics' [0, 1] input; timm gets it normalised (folded into our patch embed)
    with torch.no_grad():
        ref = vit.forward_features(normalized(x))  # no class token and fc_norm pooling: norm is Identity here
        set_capacity(model, 1.0)
        torch.testing.assert_close(backbone_tokens(model, x), ref, atol=ATOL, rtol=ATOL)
        set_capacity(model, 0.5)  # the routed blocks really skip tokens below 1.0, so the check above has teeth
        assert (backbone_tokens(model, x) - ref).abs().max() > 1e-2


def test_patch14_layerscale_blocks_equal_timm_and_embeddings_are_resampled(dinov2):
    vit, path = dinov2
    model = tiny_model(init_values=1e-5)
    report = load_timm_backbone(model, path, normalize=False)
    assert "patch embedding resampled from (14, 14) to (16, 16) (FlexiViT)" in report.notes
    assert set(report.unused) == {"cls_token", "norm.weight", "norm.bias", "pos_embed[:, :1] (cls/register tokens)"}
    stage = model.model[1]
    torch.testing.assert_close(stage.blocks[1].ls1.gamma, vit.blocks[1].ls1.gamma, atol=0, rtol=0)
    # pos grid 4 = timm's 56 / 14: the patch entries, without the class token's, in (1, C, H, W)
    torch.testing.assert_close(stage.pos_embed.flatten(2).transpose(1, 2), vit.pos_embed[:, 1:], atol=0, rtol=0)
    expected = resample_patch_embed(vit.patch_embed.proj.weight.detach(), [16, 16])
    torch.testing.assert_close(model.model[0].proj.weight, expected, atol=0, rtol=0)
    set_capacity(model, 1.0)
    with torch.no_grad():
        tokens = vit._pos_embed(vit.patch_embed(normalized(torch.rand(2, 3, 56, 56))))  # class token included
        torch.testing.assert_close(run_blocks(stage.blocks, tokens), run_blocks(vit.blocks, tokens), atol=ATOL, rtol=ATOL)


def run_blocks(blocks, t):
    for blk in blocks:
        t = blk(t)
    return t


def test_normalisation_is_folded_into_patch_embedding(vit16):
    vit, path = vit16
    model = tiny_model()
    load_timm_backbone(model, path, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model.model[0](x), vit.patch_embed.proj((x - 0.5) / 0.5), atol=ATOL, rtol=ATOL)


def test_width_mismatch_names_source_and_both_widths(vit16):
    _, path = vit16
    with pytest.raises(ValueError, match=rf"width mismatch: {path} is a ViT of width 64, depth 4; .* width 96, depth 4"):
        load_timm_backbone(tiny_model(width=96), path)


def test_depth_mismatch_names_source_and_both_depths(vit16):
    _, path = vit16
    with pytest.raises(ValueError, match=r"depth mismatch: .* width 64, depth 4; .* width 64, depth 6"):
        load_timm_backbone(tiny_model(depth=6), path)


def test_layerscale_mismatch_says_what_to_set(dinov2, vit16):
    with pytest.raises(ValueError, match=r"uses LayerScale .* add \{init_values: 1.0e-5\}"):
        load_timm_backbone(tiny_model(), dinov2[1])
    with pytest.raises(ValueError, match=r"has no LayerScale .* remove init_values"):
        load_timm_backbone(tiny_model(init_values=1e-5), vit16[1])


def test_weights_the_stage_cannot_hold_are_an_error(tmp_path):
    vit = VisionTransformer(img_size=64, patch_size=16, embed_dim=WIDTH, depth=DEPTH, num_heads=HEADS, pre_norm=True)
    torch.save(vit.state_dict(), tmp_path / "prenorm.pth")
    with pytest.raises(ValueError, match=r"cannot hold.*norm_pre\.weight"):
        load_timm_backbone(tiny_model(), tmp_path / "prenorm.pth")


def test_offline_name_says_to_pass_a_file(monkeypatch, tmp_path):
    import huggingface_hub.constants as hub

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(tmp_path))  # an empty cache, even where the weights are cached
    name = "vit_tiny_patch16_224.augreg_in21k"
    with pytest.raises(RuntimeError, match=rf"'{name}'.*timm_weights=/path/to/{name}\.safetensors.*pretrained=True"):
        read_timm_weights(name)


@pytest.mark.parametrize(
    "source,error,match",
    [("not_a_timm_model", ValueError, "neither a file nor a timm model name"), ("missing.pth", FileNotFoundError, "not found")],
)
def test_bad_source(source, error, match):
    with pytest.raises(error, match=match):
        read_timm_weights(source)


def test_unit_gate_survives_a_rebuild_from_the_yaml(vit16):
    model = tiny_model()
    load_timm_backbone(model, vit16[1])
    rebuilt = MoDDetectionModel(model.yaml, verbose=False)
    assert {b.gate for b in routed_blocks(rebuilt)} == {"unit"}


def test_trainer_skips_timm_weights_when_starting_from_a_checkpoint(vit16):
    model = tiny_model()
    before = model.model[0].proj.weight.clone()
    trainer = SimpleNamespace(args=SimpleNamespace(timm_weights=str(vit16[1])))
    MoDDetectionTrainer.load_timm_weights(trainer, model, weights=tiny_model())
    assert torch.equal(model.model[0].proj.weight, before)


def test_routing_param_groups_scale_router_and_predictor_lr_only():
    model = tiny_model()
    opt = torch.optim.SGD([{"params": [p for p in model.parameters()], "lr": 0.01, "param_group": "weight"}])
    parts = {"router": "scorer", "predictor": "predictor"}  # the lr multipliers' names -> the router's parts
    ids = {n: {id(p) for b in routed_blocks(model) for p in getattr(b, m).parameters()} for n, m in parts.items()}
    routing_param_groups(opt, model, router=3.0, predictor=10)
    for name, lr in (("router", 0.03), ("predictor", 0.1)):
        mine = [g for g in opt.param_groups if g.get(name)]
        assert [g["lr"] for g in mine] == [pytest.approx(lr)] and {id(p) for p in mine[0]["params"]} == ids[name]
    rest = [g for g in opt.param_groups if not g.get("router") and not g.get("predictor")]
    assert [g["lr"] for g in rest] == [0.01] and not (ids["router"] | ids["predictor"]) & {id(p) for p in rest[0]["params"]}
    assert sum(len(g["params"]) for g in opt.param_groups) == len(list(model.parameters()))
    with pytest.raises(ValueError, match="router_lr_mult must be a number >= 0"):
        routing_param_groups(opt, model, router=-1)
    with pytest.raises(ValueError, match="predictor_lr_mult must be a number >= 0, got 'x'"):
        routing_param_groups(opt, model, predictor="x")


def test_recipe_keys_are_valid_cfg_keys():
    recipe = YAML.load(Path(__file__).parents[1] / "cfg" / "recipe-routed.yaml")
    args = get_cfg(with_extra_defaults(), recipe)  # raises on a key Ultralytics and mod_vision do not know
    assert args.capacity_warmup > 0 and args.router_lr_mult > 0 and args.router_aux > 0
    assert capacity_range(args.capacity_range) == tuple(recipe["capacity_range"])


@pytest.mark.slow  # trains
def test_training_starts_from_timm_weights_with_router_lr_group(vit16, sample_yaml, runs, tmp_path):
    vit, path = vit16
    cfg = tmp_path / "tiny-vit.yaml"
    YAML.save(cfg, tiny_yaml(pos_grid=14))
    expected = tiny_model(pos_grid=14)
    load_timm_backbone(expected, path, verbose=False)
    seen = {}

    def on_train_start(trainer):
        m = trainer.model
        seen["patch"] = torch.equal(m.model[0].proj.weight, expected.model[0].proj.weight)
        seen["block"] = torch.equal(m.model[1].blocks[0].attn.qkv.weight, vit.blocks[0].attn.qkv.weight)
        seen["gate"] = {b.gate for b in routed_blocks(m)}
        groups = trainer.optimizer.param_groups
        seen["lr"] = sorted({g["initial_lr"] / groups[0]["initial_lr"] for g in groups if g.get("router")})

    model = MoDYOLO(str(cfg))
    model.add_callback("on_train_start", on_train_start)
    args = {**TRAIN_ARGS, "optimizer": "SGD", "lr0": 0.01, "router_lr_mult": 3.0, "timm_weights": str(path)}
    model.train(data=str(sample_yaml), project=str(runs), name="timm", **args)
    assert seen == {"patch": True, "block": True, "gate": {"unit"}, "lr": [pytest.approx(3.0)]}
    best = MoDYOLO(Path(model.trainer.save_dir) / "weights" / "best.pt")
    assert {b.gate for b in routed_blocks(best.model)} == {"unit"}
