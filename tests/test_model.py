"""Model construction from YAML: channels, scales, dense twins, any input size, clear errors."""

import pytest
import torch
from ultralytics.nn.modules import Detect, Segment

from mod_vision import MoDYOLO
from mod_vision.nn import MoDA2C2f, MoDViTStage, PatchEmbed, RoutedBlock, record_routing, routed_blocks
from mod_vision.nn.head import RoutedDetect
from mod_vision.nn.tasks import MODEL_DIR, load_model_yaml

YAMLS = sorted(p.name for p in MODEL_DIR.glob("*.yaml"))


def test_all_shipped_yamls_are_found():
    assert set(YAMLS) == {
        f"{arch}-{task}{dense}.yaml"
        for arch in ("modvit", "hybrid", "hybrid11", "hybrid11p", "hybrid12")
        for task in ("det", "seg")
        for dense in ("", "-dense")
    } | {"modvit-det-deep.yaml", "modvit-seg-deep.yaml", "modnext-det.yaml", "modnext-det-dense.yaml"} | {
        f"modvit-{task}-{vit}.yaml" for task in ("det", "seg") for vit in ("vits", "vits-dense", "dinov2s")  # timm weights
    }


# the DINOv2 YAMLs (LayerScale, 37x37 position grid) have no shipped twin
@pytest.mark.parametrize("name", [n for n in YAMLS if not n.endswith(("-dense.yaml", "dinov2s.yaml"))])
def test_every_routed_yaml_names_a_dense_twin_with_the_same_weights_but_routers(name):
    twin_name = load_model_yaml(name)["dense_twin"]
    routed, twin = MoDYOLO(name).model, MoDYOLO(twin_name).model
    assert not twin.capacities()
    routing = (".router.", ".routers.", ".predictor.", "_extra_state")
    shapes = {k: v.shape for k, v in routed.state_dict().items() if not any(t in k for t in routing)}
    assert shapes == {k: v.shape for k, v in twin.state_dict().items()}


def test_deep_routing_routes_every_block_after_the_first_at_any_depth():
    for scale, depth in (("n", 6), ("s", 12)):
        stage = next(m for m in MoDYOLO(f"modvit-det-deep-{scale}.yaml").model.modules() if isinstance(m, MoDViTStage))
        assert [isinstance(b, RoutedBlock) for b in stage.blocks] == [False] + [True] * (depth - 1)


@pytest.mark.parametrize("name", YAMLS)
def test_yaml_builds_with_correct_channels_and_heads(name):
    model = MoDYOLO(name).model
    head = model.model[-1]
    assert isinstance(head, Segment if "-seg" in name else Detect)
    assert head.stride.tolist() == [8.0, 16.0, 32.0]
    if name.startswith(("hybrid11", "hybrid12")):  # attention in MoDA2C2f layers: heads of 32 channels, pairs routed
        layers = [m for m in model.model if isinstance(m, MoDA2C2f)]
        # hybrid11p also has routed attention in its backbone at stride 16
        assert len(layers) == (3 if name.startswith("hybrid11p") else 2)
        assert all(p.blocks[0].attn.head_dim == 32 for m in layers for p in m.m)
        assert (len(routed_blocks(model)) == 0) == name.endswith("-dense.yaml")
        model.eval()
        y = model(torch.zeros(1, 3, 64, 96))[0]
        y = y[0] if isinstance(y, (tuple, list)) else y
        assert y.shape[:2] == (1, 4 + 80 + (32 if "-seg" in name else 0))
        return
    if name.startswith("modnext"):  # every stage, patch merge and head level routed; none in the dense twin
        assert isinstance(head, RoutedDetect)
        kinds = [type(m).__name__ for m in model.model]
        assert kinds.count("MoDDown") == 3 and kinds.count("MoDNeXt") == 5
        assert len(routed_blocks(model)) == (0 if name.endswith("-dense.yaml") else 3 + 5 + 3)
        model.eval()
        assert model(torch.zeros(1, 3, 64, 96))[0].shape == (1, 4 + 80, 8 * 12 + 4 * 6 + 2 * 3)
        return
    stage = next(m for m in model.modules() if isinstance(m, MoDViTStage))
    dim = stage.pos_embed.shape[1]
    # the layer feeding the stage produces exactly the stage's width (not the c2 = c1 fallback)
    feeder = model.model[stage.i - 1]
    out_ch = feeder.proj.out_channels if isinstance(feeder, PatchEmbed) else feeder.conv.out_channels
    assert out_ch == dim
    assert stage.blocks[0].attn.num_heads == max(1, round(dim / 64))
    routed = [b for b in stage.blocks if isinstance(b, RoutedBlock)]
    assert (len(routed) == 0) == name.endswith("-dense.yaml")
    model.eval()
    y = model(torch.zeros(1, 3, 64, 96))[0]
    y = y[0] if isinstance(y, (tuple, list)) else y  # segment heads return (boxes+masks coefs, protos)
    assert y.shape[:2] == (1, 4 + 80 + (32 if "-seg" in name else 0))


@pytest.mark.parametrize("scale,dim,depth", [("n", 192, 6), ("s", 384, 12), ("m", 768, 12)])
def test_scales_set_width_depth_and_heads(scale, dim, depth):
    d = load_model_yaml(f"modvit-det-{scale}.yaml")
    assert d["scale"] == scale
    stage = next(m for m in MoDYOLO(f"modvit-det-{scale}.yaml").model.modules() if isinstance(m, MoDViTStage))
    assert stage.pos_embed.shape[1] == dim and len(stage.blocks) == depth
    assert stage.blocks[0].attn.num_heads == dim // 64


def test_unknown_scale_and_missing_yaml():
    with pytest.raises(ValueError, match="scale 'x' not in"):
        load_model_yaml("modvit-det-x.yaml")
    with pytest.raises(FileNotFoundError, match="no-such-model.yaml"):
        MoDYOLO("no-such-model.yaml")


def test_unknown_module_error_names_it(tmp_path):
    text = (MODEL_DIR / "modvit-det.yaml").read_text().replace("MoDViTStage", "MoDViTStaeg")
    (tmp_path / "typo.yaml").write_text(text)
    with pytest.raises(ValueError, match="Unknown module 'MoDViTStaeg' in layer 1"):
        MoDYOLO(str(tmp_path / "typo.yaml"))


@pytest.mark.parametrize("hw", [(64, 64), (100, 130), (33, 47), (8, 8), (1, 1), (320, 96)])
def test_any_input_size_gives_full_outputs(hw):
    """Sizes not divisible by the stride, and an image smaller than one patch, run without a shape error."""
    model = MoDYOLO("modvit-det.yaml").model.eval()
    with record_routing() as rec:
        y = model(torch.rand(2, 3, *hw))[0]
    h, w = -(-hw[0] // 16), -(-hw[1] // 16)  # token grid after padding to whole patches
    anchors = 4 * h * w + h * w + -(-h // 2) * -(-w // 2)  # P3 (upsampled), P4, P5 (ceil-mode pooled)
    assert y.shape == (2, 4 + 80, anchors)
    share = rec.token_share()
    assert share.shape == (2,) and 0 < float(share[0]) <= 1


def test_set_capacity_global_and_per_block():
    model = MoDYOLO("modvit-det-s.yaml")
    model.set_capacity(0.25)
    assert model.model.capacities() == [0.25] * 6
    model.set_capacity({0: 1.0, 5: 0.125})
    assert model.model.capacities() == [1.0, 0.25, 0.25, 0.25, 0.25, 0.125]
    model.set_capacity([0.5] * 6)
    assert model.model.capacities() == [0.5] * 6
    with pytest.raises(ValueError, match=r"range \(0, 1\]"):
        model.set_capacity(1.5)
    with pytest.raises(ValueError, match="out of range for 6 routed blocks"):
        model.set_capacity({6: 0.5})
    with pytest.raises(ValueError, match="2 capacities given for 6 routed blocks"):
        model.set_capacity([0.5, 0.5])


def test_token_share_follows_capacity():
    model = MoDYOLO("modvit-det.yaml").model.eval()
    x = torch.rand(1, 3, 160, 160)  # 10 x 10 = 100 tokens
    shares = []
    for c in (1.0, 0.5, 0.25, 0.125):
        model.set_capacity(c)
        with record_routing() as rec:
            model(x)
        shares.append(float(rec.token_share()[0]))
    assert shares == pytest.approx([1.0, 0.5, 0.25, 0.13])  # k = ceil(0.125 * 100) = 13


def test_position_embedding_resize_is_reused_in_inference_only_while_the_weights_hold():
    import torch.nn.functional as F

    stage = MoDViTStage(32, 32, depth=2, pos_grid=4).eval()
    resize = lambda: F.interpolate(stage.pos_embed, size=(3, 5), mode="bicubic", align_corners=False)  # noqa: E731
    with torch.inference_mode():
        first = stage.position_embedding(3, 5)
        assert torch.equal(first, resize()) and stage.position_embedding(3, 5) is first
        assert stage.position_embedding(5, 3).shape[-2:] == (5, 3)  # another size: resized anew
    with torch.no_grad():
        stage.pos_embed.add_(1.0)  # new weights (an optimizer step, a loaded state dict): resized anew
    with torch.inference_mode():
        assert torch.equal(stage.position_embedding(3, 5), resize())
    stage.train()
    out = stage.position_embedding(3, 5)
    out.sum().backward()  # training always resizes, with the gradient reaching the learned grid
    assert stage.pos_embed.grad is not None and stage.pos_embed.grad.abs().sum() > 0
