"""Token-wise layers train exactly as the convolutions they stand for: the same values and the same gradients."""

import torch
import torch.nn.functional as F
from torch import nn
from ultralytics.nn.modules import Conv

from mod_vision.nn.blocks import pointwise
from mod_vision.nn.head import neighbourhoods, tokenwise


def branch(c_in: int) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(Conv(c_in, 16, 1), Conv(16, 16, 1), nn.Conv2d(16, 5, 1)).double()


def test_pointwise_gradients_match_the_convolution_in_training():
    # torch's BatchNorm2d backward on a (B, C, K, 1) view of (B, K, C) tokens gives wrong gradients on the CPU; a
    # pointwise layer must not inherit that: its gradients equal those of the same Conv run on a map
    conv = branch(8)[0].train()
    x = torch.randn(2, 8, 6, 7, dtype=torch.double)
    weights = torch.randn(2, 16, 6, 7, dtype=torch.double)
    on_map = (conv(x) * weights).sum()
    on_tokens = (pointwise(conv, x.flatten(2).transpose(1, 2)) * weights.flatten(2).transpose(1, 2)).sum()
    assert torch.allclose(on_map, on_tokens)
    for p in (conv.conv.weight, conv.bn.weight, conv.bn.bias):
        (g_map,) = torch.autograd.grad(on_map, p, retain_graph=True)
        (g_tok,) = torch.autograd.grad(on_tokens, p, retain_graph=True)
        assert torch.allclose(g_map, g_tok, atol=1e-10), p.shape


def test_stacked_pointwise_layers_pass_gradcheck():
    layers = branch(8).train()
    tokens = torch.randn(2, 42, 8, dtype=torch.double, requires_grad=True)
    weights = torch.randn(2, 42, 5, dtype=torch.double)
    assert torch.autograd.gradcheck(lambda t: (tokenwise(layers, t) * weights).sum(), (tokens,))


def test_pointwise_updates_running_statistics_like_the_convolution():
    a, b = branch(8)[0].train(), branch(8)[0].train()
    x = torch.randn(2, 8, 6, 7, dtype=torch.double)
    a(x)
    pointwise(b, x.flatten(2).transpose(1, 2))
    assert torch.allclose(a.bn.running_mean, b.bn.running_mean)
    assert torch.allclose(a.bn.running_var, b.bn.running_var)
    assert int(a.bn.num_batches_tracked) == int(b.bn.num_batches_tracked) == 1


def test_neighbourhoods_are_a_3x3_convolutions_unfolded_input():
    x = torch.randn(2, 5, 4, 6)
    index = torch.tensor([[0, 7, 23], [5, 12, 18]])  # corners, edges and the inside
    unfolded = F.unfold(x, 3, padding=1).transpose(1, 2)  # (B, N, 9C)
    assert torch.equal(neighbourhoods(x, index), unfolded.gather(1, index[..., None].expand(-1, -1, 45)))


def test_a_branch_on_neighbourhoods_is_the_3x3_branch_on_the_map_values_and_gradients():
    layers = branch(9 * 8).train()
    x = torch.randn(2, 8, 6, 7, dtype=torch.double, requires_grad=True)
    b, _, h, w = x.shape
    weights = torch.randn(2, h * w, 5, dtype=torch.double)
    every = torch.arange(h * w).expand(b, -1)
    on_tokens = (tokenwise(layers, neighbourhoods(x, every)) * weights).sum()
    on_map = (layers(F.unfold(x, 3, padding=1).view(b, -1, h, w)).flatten(2).transpose(1, 2) * weights).sum()
    assert torch.allclose(on_map, on_tokens)
    g_tok = torch.autograd.grad(on_tokens, [x, layers[0].conv.weight])
    g_map = torch.autograd.grad(on_map, [x, layers[0].conv.weight])
    for a, b_ in zip(g_tok, g_map):
        assert torch.allclose(a, b_, atol=1e-10)
