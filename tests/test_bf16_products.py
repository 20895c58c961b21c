"""`bf16=True` at val/predict: the token layers' matrix products in bfloat16, everything else float32."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mod_vision import MoDYOLO
from mod_vision.engine.export import check_exported_args
from mod_vision.nn.blocks import bf16_products, linear
from mod_vision.nn.tasks import MoDDetectionModel

from .conftest import IMGSZ


def test_linear_runs_in_bfloat16_only_inside_the_context_in_inference():
    layer = nn.Linear(64, 32)
    t = torch.randn(2, 10, 64)
    exact = torch.nn.functional.linear(t, layer.weight, layer.bias)
    with torch.no_grad():
        assert torch.equal(linear(t, layer.weight, layer.bias, layer), exact)  # outside: float32 itself
        with bf16_products():
            y = linear(t, layer.weight, layer.bias, layer)
    assert y.dtype == torch.float32 and not torch.equal(y, exact)  # rounded through bfloat16, returned as float32
    torch.testing.assert_close(y, exact, rtol=0.05, atol=0.05)
    with bf16_products():  # under autograd (training) the products stay float32
        assert torch.equal(linear(t, layer.weight, layer.bias, layer).detach(), exact.detach())
    with torch.no_grad(), bf16_products(False):
        assert torch.equal(linear(t, layer.weight, layer.bias, layer), exact)


def test_the_bfloat16_weight_follows_a_changed_weight():
    layer = nn.Linear(8, 4)
    t = torch.randn(3, 8)
    with torch.no_grad(), bf16_products():
        before = linear(t, layer.weight, layer.bias, layer)
        layer.weight.mul_(2)  # an in-place change (a fine-tune step, a fused BatchNorm)
        after = linear(t, layer.weight, layer.bias, layer)
    torch.testing.assert_close(after - layer.bias, 2 * (before - layer.bias), rtol=0.02, atol=0.02)


def test_a_routed_models_outputs_stay_float32_and_close_to_float32_products():
    torch.manual_seed(0)
    model = MoDDetectionModel("modnext-det-n.yaml", nc=4, verbose=False).eval()
    x = torch.rand(1, 3, 128, 160)
    with torch.no_grad():
        boxes, _ = model(x)
        with bf16_products():
            boxes16, _ = model(x)
    assert boxes16.dtype == torch.float32 and boxes16.shape == boxes.shape
    xy, xy16 = boxes[:, :4], boxes16[:, :4]  # decoded pixel coordinates: decoding stays float32
    assert (xy16 - xy).abs().max() < 2.0 and not torch.equal(xy16, xy)
    torch.testing.assert_close(boxes16[:, 4:], boxes[:, 4:], rtol=0.05, atol=0.02)  # class probabilities


def test_predict_with_bf16_gives_the_float32_routing_and_near_boxes(sample_yaml):
    model = MoDYOLO("modnext-det-n.yaml")
    image = sorted((sample_yaml.parent / "images" / "val").glob("*.jpg"))[0]
    kw = dict(imgsz=IMGSZ, conf=0.0, max_det=5, verbose=False, capacity=0.5)
    plain, fast = model.predict(image, **kw)[0], model.predict(image, bf16=True, **kw)[0]
    assert fast.token_share == plain.token_share  # the routers ran in float32: the same tokens
    assert fast.boxes.data.dtype == torch.float32 and len(fast.boxes) == len(plain.boxes)
    assert not torch.equal(fast.boxes.data, plain.boxes.data)  # the products did run in bfloat16


def test_val_runs_the_products_in_bfloat16_only_when_asked(sample_yaml, tmp_path):
    from pathlib import Path

    from mod_vision.nn import blocks

    yaml = (Path(__file__).parents[1] / "cfg/models/modnext-det.yaml").read_text().replace("nc: 80", "nc: 4")
    (tmp_path / "modnext4-det.yaml").write_text(yaml)  # the sample data's 4 classes
    model = MoDYOLO(str(tmp_path / "modnext4-det.yaml"))
    seen = []
    model.model.model[3].register_forward_pre_hook(lambda m, inp: seen.append(blocks._BF16.get()))
    for bf16 in (True, False):
        seen.clear()
        model.val(data=str(sample_yaml), imgsz=IMGSZ, batch=8, plots=False, verbose=False, bf16=bf16,
                  project=str(tmp_path))
        assert seen and set(seen) == {bf16}


def test_bf16_is_refused_for_an_exported_model_and_checked_as_a_bool():
    with pytest.raises(ValueError, match=r"^bf16=True needs the PyTorch checkpoint: an exported graph runs at the "
                                         r"precision it was exported with"):
        check_exported_args({"capacity": [0.25]}, type("Args", (), {"bf16": True})())
    check_exported_args({"capacity": [0.25]}, type("Args", (), {"bf16": False})())  # off: nothing to refuse
    with pytest.raises(ValueError, match=r"^bf16 must be True or False, got 'yes'$"):
        MoDYOLO("modnext-det-n.yaml").predict(torch.rand(1, 3, 64, 64), bf16="yes")
    with pytest.raises(ValueError, match=r"^bf16=True is a val/predict key .* an export traces the model in float32"):
        MoDYOLO("modnext-det-n.yaml").export(format="torchscript", imgsz=64, bf16=True)


def test_bf16_on_a_model_of_timm_blocks_says_it_changes_nothing(caplog):
    from mod_vision.nn.blocks import has_token_products

    vit, nxt = MoDYOLO("modvit-det.yaml"), MoDYOLO("modnext-det-n.yaml")
    assert not has_token_products(vit.model) and has_token_products(nxt.model)
    vit.predict(torch.rand(1, 3, 64, 64), bf16=True, verbose=False)
    assert "bf16=True changes nothing for" in caplog.text and "its blocks are timm's" in caplog.text
    caplog.clear()
    nxt.predict(torch.rand(1, 3, 64, 64), bf16=True, verbose=False)
    assert "bf16=True changes nothing" not in caplog.text
