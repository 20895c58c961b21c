"""Training and resume: one (split, arm, seed) trained, scored and recorded in results/, a finished record or training
reused, an interrupted one resumed from its last.pt."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from .evaluation import evaluate, sweep
from .settings import is_stock, label


SHARED = ("data", "epochs", "imgsz", "batch", "extra")  # settings a finished result must match to be reused


def finished(checkpoint: Path) -> bool:
    """Ultralytics marks a checkpoint whose training ended (optimizer stripped) with epoch -1."""
    return torch.load(checkpoint, map_location="cpu", weights_only=False).get("epoch", -1) == -1


def train_arm(arm: str, folder: Path, **train) -> Path:
    """Train one arm into `folder` (Ultralytics' run folder), resume it from an unfinished last.pt, or reuse it when
    its training ended; returns best.pt (last.pt where no best was saved)."""
    from ultralytics import YOLO

    from .. import MoDYOLO

    cls = YOLO if is_stock(arm) else MoDYOLO
    folder = Path(folder).resolve()  # Ultralytics nests a relative project under its runs/
    last, best = folder / "weights" / "last.pt", folder / "weights" / "best.pt"
    weights = lambda: best if best.is_file() else last  # noqa: E731
    if (last.is_file() and finished(last)) or (best.is_file() and not last.is_file()):
        print(f"[compare] {folder.name}: trained, reusing {weights()}", flush=True)
        return weights()
    if last.is_file():
        print(f"[compare] {folder.name}: resuming from {last}", flush=True)
        cls(str(last)).train(resume=True)
    else:
        cls(arm).train(project=str(folder.parent), name=folder.name, exist_ok=True, **train)
    return weights()


def run_arm(arm: dict, seed: int, split: str | None, data: str, run: Path, args, backgrounds: dict) -> dict | None:
    """Train, score and record one (split, arm, seed), or reuse its record when made with the same settings; None
    where there is no record and `args.train` is off. A capacity study scores it at each of `args.capacities`."""
    tag = tag_of(split, arm["name"], seed)
    out, settings = run / "results" / f"{tag}.json", settings_of(arm, data, args)
    if out.exists():
        done = json.loads(out.read_text())
        if done["settings"] != settings:
            raise SystemExit(f"{out} was made with other settings {done['settings']}, not {settings}; use another name")
        where = f"{split}/" if split else ""
        print(f"[compare] {where}{label(arm['name'])} seed {seed}: done, reusing {out}", flush=True)
        return done
    if not args.train:
        return None
    # fp32 on every device (Ultralytics turns AMP on for a GPU), so that arms trained on different machines compare
    train = dict(data=data, epochs=args.epochs, imgsz=args.imgsz, batch=args.batch, seed=seed, workers=args.workers,
                 plots=False, device=args.device, amp=False)  # fmt: skip
    mod_args = {} if is_stock(arm["model"]) else args.extra
    best = train_arm(arm["model"], run / "train" / tag, **{**train, **mod_args, **arm["train"]})
    val = dict(project=str((run / "val").resolve()), exist_ok=True, device=args.device, workers=args.workers)
    record = {"arm": arm["name"], "seed": seed, "split": split, "model": arm["model"], "train_args": arm["train"],
              "settings": settings, "weights": str(best)}  # fmt: skip
    if args.capacities is None:
        record.update(evaluate(best, data, args.imgsz, args.batch, backgrounds, name=tag, **val))
    else:
        record["own_capacity"], record["eval"] = sweep(best, data, args.imgsz, args.batch, args.capacities, tag,
                                                       backgrounds, **val)  # fmt: skip
    out.write_text(json.dumps(record, indent=1))
    return record


def settings_of(arm: dict, data: str, args) -> dict:
    """What a finished result must match to be reused: the shared settings, an arm's own model and training arguments
    where it has them (a bare model YAML records none, as results from before arms had them), a study's capacities."""
    settings = {**{k: getattr(args, k) for k in SHARED}, "data": data}
    if arm["train"] or arm["name"] != arm["model"]:
        settings.update(model=arm["model"], train=arm["train"])
    if args.capacities is not None:
        settings["capacities"] = args.capacities
    return json.loads(json.dumps(settings))  # as a result's json holds them: tuples become lists


def tag_of(split: str | None, name: str, seed: int) -> str:
    """The name of one (split, arm, seed) in results/, train/ and val/: [<split>__]<arm>__s<seed>."""
    return "__".join([*([split] if split else []), label(name), f"s{seed}"])


def weights_of(r: dict, run: Path) -> str:
    """A result's trained weights (results saved before "weights" was recorded: its run folder's best.pt)."""
    return r.get("weights") or str(run / "train" / tag_of(r.get("split"), r["arm"], r["seed"]) / "weights" / "best.pt")


def first_seeds(results: list[dict]) -> dict:
    """Each (split, arm)'s first result, in the order the arms were given."""
    first = {}
    for r in results:
        first.setdefault((r.get("split"), r["arm"]), r)
    return first
