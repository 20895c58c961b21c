"""`RoutedDetect`: Ultralytics' Detect head whose per-position work runs only on the positions its routers pick.

Detect's branches are 3x3 convolutions on every position of every level, a third of a small detector's time and all of
it spent on background too. Here the box and class branches run on the routed positions only: each routed position
gathers its 3x3 neighbourhood (so the first layer of each branch is Detect's 3x3 convolution, computed where it is
needed), then pointwise layers. Focus-DETR and Sparse DETR run their heavy stage on selected foreground tokens the same
way. A position that is not routed outputs the level's learned background: a box distribution and class logits that the
loss pulls towards "nothing here". The outputs keep Detect's layout, so Ultralytics' loss, decoding, NMS and exporters
see a Detect head.
"""

from __future__ import annotations

import torch
from torch import nn
from ultralytics.nn.modules import Conv
from ultralytics.nn.modules.head import Detect
from ultralytics.utils.tal import make_anchors

from .blocks import eager_layout, linear, neighbourhoods, pixel_major_weight, pointwise
from .routing import RouterSpec


def tokenwise(layers: nn.Sequential, t: torch.Tensor, pixel_major: bool = False) -> torch.Tensor:
    """A stack of 1x1 convolutions (Ultralytics `Conv`s, then a plain `nn.Conv2d`) applied to (B, K, C) tokens; with
    `pixel_major`, the first reads pixel-major 3x3 neighbourhoods (`neighbourhoods`)."""
    for i, m in enumerate(layers):
        if isinstance(m, Conv):
            t = pointwise(m, t, pixel_major_weight(m) if pixel_major and i == 0 else None)
        else:
            t = linear(t, m.weight.flatten(1), m.bias, m)
    return t


class RoutedDetect(Detect):
    """Detect whose box and class branches run on routed positions (`router` with a capacity) or on all (without a
    capacity: the dense twin).

    YAML: `[[15, 12, 9], 1, RoutedDetect, [nc, {capacity: 0.25}]]`, Detect's arguments then mod_vision's keywords.
    """

    token_products = True  # its branches run through `linear` (`bf16_products`)

    def __init__(self, nc: int = 80, reg_max: int = 16, end2end: bool = False, ch: tuple[int, ...] = (),
                 router: RouterSpec = RouterSpec()):
        if end2end:
            raise ValueError("RoutedDetect has no one-to-one (end2end) branch; use end2end=False")
        super().__init__(nc, reg_max, False, ch)
        c2, c3 = max((16, ch[0] // 4, self.reg_max * 4)), max(ch[0], min(self.nc, 100))  # Detect's widths
        # the first layer of each branch reads a 3x3 neighbourhood: Detect's 3x3 convolution, as a linear map
        self.cv2 = nn.ModuleList(
            nn.Sequential(Conv(9 * x, c2, 1), Conv(c2, c2, 1), nn.Conv2d(c2, 4 * reg_max, 1)) for x in ch
        )
        self.cv3 = nn.ModuleList(nn.Sequential(Conv(9 * x, c3, 1), Conv(c3, c3, 1), nn.Conv2d(c3, nc, 1)) for x in ch)
        # an Identity in a dense twin's slot keeps the level's index in `routers`
        self.routers = nn.ModuleList(router.make(x) or nn.Identity() for x in ch)
        self.background = nn.Parameter(torch.zeros(self.nl, self.no))

    def forward_head(self, x: list[torch.Tensor], box_head=None, cls_head=None) -> dict[str, torch.Tensor]:
        if box_head is None or cls_head is None:
            return {}
        # In eager inference the box distances (DFL) are computed for the routed positions only, beside their raw
        # outputs; every other position has the background's. Detect would run DFL's softmax on every anchor: most of
        # a flat frame's head. Training needs only the raw outputs; exports keep Detect's decoding; a gate scales the
        # raw update after `branches` sees it, so gated routers keep it too.
        decode = not (self.training or self.export or torch.compiler.is_compiling()) and all(
            getattr(r, "gate", "none") == "none" for r in self.routers)
        nb = 4 * self.reg_max
        levels = []
        for i, (feat, router) in enumerate(zip(x, self.routers)):
            b, _, h, w = feat.shape
            background = self.background[i]
            if decode:
                # the background's distances; detached outside autograd, where a parameter's view has no grad_fn
                # and torch's module tracker (FLOP counting) refuses it as a module input
                far = background[:nb].view(1, nb, 1)
                far = self.dfl(far if torch.is_grad_enabled() else far.detach()).view(4)
                background = torch.cat([background, far])

            fast = eager_layout(feat)  # pixel-major neighbourhoods: no transposing copy of the rows read

            def branches(t, attn_mask=None, i=i, background=background, fast=fast):
                out = torch.cat([tokenwise(box_head[i], t, fast), tokenwise(cls_head[i], t, fast)], -1)
                if not decode:
                    return out
                dist = self.dfl((background[:nb] + out[..., :nb]).transpose(1, 2)).transpose(1, 2)
                return torch.cat([out, dist - background[self.no :]], -1)  # an update, as the raw outputs'

            def read(index, feat=feat, fast=fast):
                return neighbourhoods(feat, index, fast)

            base = background.expand(b, h * w, len(background))
            if isinstance(router, nn.Identity):
                out = base + branches(read(torch.arange(h * w, device=feat.device).expand(b, -1)))
            else:
                out = router.add_to(base, feat.flatten(2).transpose(1, 2), branches, (h, w), read)
            levels.append(out)
        # (B, no (+4), A), Detect's layout: one copy of the levels' rows joined, then views of it
        out = torch.cat(levels, 1).transpose(1, 2)
        preds = {"boxes": out[:, :nb], "scores": out[:, nb : self.no], "feats": x}
        if decode:
            preds["distances"] = out[:, self.no :]
        return preds

    def _get_decode_boxes(self, x: dict[str, torch.Tensor]) -> torch.Tensor:
        """Detect's decoding, from the distances forward_head computed where it has them."""
        if "distances" not in x:
            return super()._get_decode_boxes(x)
        shape = x["feats"][0].shape  # Detect's anchor cache, as in Detect._get_decode_boxes
        if self.dynamic or self.shape != shape:
            self.anchors, self.strides = (a.transpose(0, 1) for a in make_anchors(x["feats"], self.stride, 0.5))
            self.shape = shape
        return self.decode_bboxes(x["distances"], self.anchors.unsqueeze(0)) * self.strides

    def bias_init(self):
        """Detect's bias priors, and a background that starts at them: no object, Detect's class prior."""
        super().bias_init()
        with torch.no_grad():
            for i, (a, b) in enumerate(zip(self.cv2, self.cv3)):
                self.background[i, : 4 * self.reg_max] = a[-1].bias
                self.background[i, 4 * self.reg_max :] = b[-1].bias
                a[-1].bias.zero_()
                b[-1].bias.zero_()
