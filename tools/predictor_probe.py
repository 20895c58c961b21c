"""How well do a routed model's predictors (dynamic mode's) find the objects? A diagnosis for tools/dynamic_compute.py.

Runs the model in static top-k mode over a dataset's val images (Ultralytics' val loader, letterboxed to --imgsz) and
reports, per routed block, its predictor's ROC AUC against object cover (does a token's cell overlap a ground-truth
box), and the share of tokens it scores above 0.5 on empty and on busy images next to their true object cover.

With --fit-steps N it also fits fresh predictors for 1 block (--block) on the frozen tokens of the training images
(no augmentation), with and without the image's mean token as context, to tell a weak predictor from weak features.

    python tools/predictor_probe.py runs/dynamic_compute/train/weights/best.pt datasets/mod-dynamic/sample.yaml --imgsz 256
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from mod_vision import MoDYOLO
from mod_vision.nn.routing import ObjectPredictor, Scorer, object_tokens, record_routing, routed_blocks
from mod_vision.report import markdown_table
from ultralytics.cfg import get_cfg
from ultralytics.data import build_yolo_dataset
from ultralytics.data.utils import check_det_dataset


def auc(scores: torch.Tensor, target: torch.Tensor) -> float:
    """ROC AUC of scores for a 0/1 target (Mann-Whitney rank statistic; ties broken by order)."""
    y, rank = target.flatten(), scores.flatten().argsort().argsort().float()
    pos, neg = y.sum(), (1 - y).sum()
    return float((rank[y == 1].sum() - pos * (pos - 1) / 2) / (pos * neg))


def block_inputs(model, data: dict, split: str, imgsz: int, batch: int = 16):
    """Per routed block the (B, N, C) input tokens of every image of a split, with their object-cover targets and
    object counts. Images are letterboxed squares, so every batch has the same grid."""
    blocks = routed_blocks(model)
    seen = {i: [] for i in range(len(blocks))}
    hooks = [b.register_forward_pre_hook(lambda m, a, i=i: seen[i].append(a[0].detach())) for i, b in enumerate(blocks)]
    ds = build_yolo_dataset(get_cfg(overrides={"imgsz": imgsz}), data[split], batch, data, mode="val", stride=32)
    targets, counts = [], []
    for start in range(0, len(ds), batch):
        b = ds.collate_fn([ds[j] for j in range(start, min(start + batch, len(ds)))])
        n = b["img"].shape[0]
        with torch.no_grad(), record_routing() as record:
            model(b["img"].float() / 255)
        targets.append(object_tokens(record.blocks[0].grid, b["bboxes"], b["batch_idx"], n))
        counts.append(torch.bincount(b["batch_idx"].long(), minlength=n))
    for h in hooks:
        h.remove()
    return [torch.cat(seen[i]) for i in range(len(blocks))], torch.cat(targets), torch.cat(counts)


def fit(predictor, tokens, target, steps: int, batch: int = 16) -> torch.nn.Module:
    torch.manual_seed(0)
    opt = torch.optim.Adam(predictor.parameters(), 1e-3)
    for step in range(steps):
        i = torch.randint(0, len(tokens), (batch,))
        loss = F.binary_cross_entropy_with_logits(predictor(tokens[i]), target[i])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return predictor


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("weights")
    p.add_argument("data", help="dataset YAML with val (and, for --fit-steps, train) images")
    p.add_argument("--imgsz", type=int, default=128)
    p.add_argument("--fit-steps", type=int, default=0, help="also fit fresh predictors for this many Adam steps")
    p.add_argument("--block", type=int, default=0, help="routed block whose tokens --fit-steps uses")
    a = p.parse_args(argv)

    model = MoDYOLO(a.weights).model.float().eval()
    n_blocks = len(routed_blocks(model))
    if not n_blocks:
        p.error(f"{a.weights} has no routed block, so no predictor to probe")
    if not 0 <= a.block < n_blocks:
        p.error(f"--block {a.block} is out of range: the model has {n_blocks} routed blocks (0-{n_blocks - 1})")
    data = check_det_dataset(a.data)
    tokens, target, counts = block_inputs(model, data, "val", a.imgsz)
    empty, busy = counts == 0, counts >= 3
    print(f"{len(counts)} val images ({int(empty.sum())} empty, {int(busy.sum())} with 3+ objects); true object cover: "
          f"empty 0, 3+ objects {target[busy].mean():.3f}")  # fmt: skip
    rows = []
    for i, (b, x) in enumerate(zip(routed_blocks(model), tokens)):
        if b.predictor is None:  # a router that takes its grid's decision has no predictor of its own
            continue
        with torch.no_grad():
            score = b.predictor(x)
        above = (score > 0).float().mean(1)  # logit > 0: probability above 0.5
        rows.append({"routed block": i, "predictor": type(b.predictor).__name__, "ROC AUC": auc(score, target),
                     "share > 0.5, empty": above[empty].mean().item(),
                     "share > 0.5, 3+ objects": above[busy].mean().item()})
    print(markdown_table(rows, floatfmt=".3f"))
    if a.fit_steps:
        train_tokens, train_target, _ = block_inputs(model, data, "train", a.imgsz)
        x, xt = tokens[a.block], train_tokens[a.block]
        dim = x.shape[-1]
        print(f"\nfresh predictors on block {a.block}'s frozen tokens, {a.fit_steps} Adam steps (lr 1e-3, batch 16):")
        for name, predictor in (("token only", Scorer(dim, 64)), ("token + image mean", ObjectPredictor(dim, 64))):
            fit(predictor, xt, train_target, a.fit_steps)
            with torch.no_grad():
                print(f"  {name}: val ROC AUC {auc(predictor(x), target):.3f}")


if __name__ == "__main__":
    main()
