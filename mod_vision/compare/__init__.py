"""`mod-vision compare`: detectors side by side, trained alike, scored by one evaluator and timed round-robin.

Every arm (a mod_vision YAML, or an Ultralytics one such as yolo11n.yaml, which trains with `ultralytics.YOLO`) trains
from scratch on the same data with the same epochs, imgsz, batch and augmentation, once per seed; the mod_vision arms
also get `extra`, mod_vision's training arguments. An arm may also be a dict, {"name": ..., "model": YAML, **its own
training arguments}, so that one YAML trained at capacity 0.5 and at 0.25 makes two arms. Each is scored by
mod_vision's validator: COCO box AP (and mask AP for a segment model) against the data's COCO json, and on data that
records background kinds (the sample data's val_flat.txt, val_textured.txt) the AP of each kind. Latency: batch 1,
`threads` CPU threads, every arm timed round-robin in one call (as `yolo benchmark` times formats one after another,
but interleaved so that machine noise hits every arm alike), on random weights or, with `trained_latency=True`, on
each arm's first trained seed.

A capacity study (`capacities=[1.0,0.5,0.25,0.125]`) scores each routed arm at each capacity, with its routing-aware
GFLOPs, and times each (arm, capacity) on its trained weights at the one `latency_imgsz`; `latency_ratio` divides by
the `reference` arm's latency (the dense twin). Its `data` may name several data sets, {split: data YAML}, each arm
trained on each. Its report judges `targets` ({"arm", "capacity", "within"}: AP within that many points of the
reference; {"arm", "loses_less_than", "from", "to"}: AP lost between two capacities against another arm) and whether
a routed arm beats the `baseline` arm at equal or lower latency; it writes results.md (one row per arm and capacity,
AP against capacity, the verdicts), results.csv, capacity.csv, ap_vs_latency.png and ap_vs_capacity.png.

Resumable: each (split, arm, seed) writes <run>/results/[<split>__]<arm>__s<seed>.json when done, and a rerun reuses
it; an interrupted training resumes from its last.pt. Results: <run>/results-<data>-e<epochs>-i<imgsz>.csv, one row
per arm and seed (a CSV named by its configuration, as timm's benchmark results are), and the report <run>/results.md
with its command line at the top, plus ap_vs_latency.png. `routing_quality=True` appends, for each routed arm's first
seed, the table of `routing_quality_rows` (learned against random ranking at each capacity, object lift and recall,
padding share).

    mod-vision compare name=main arms=[hybrid12-det-n.yaml,yolo11n.yaml] data=sample epochs=40 imgsz=160 seeds=[0,1]
    mod-vision compare name=study "arms=[{'name':'c0.5','model':'modvit-seg-n.yaml','capacity':0.5},'yolo11n-seg.yaml']"
        capacities=[1.0,0.5,0.25] latency_imgsz=[160]

One module per concern, everything public importable from here:

- settings: an arm from its YAML or dict, the data sets, the background kinds' data YAMLs, the key=value arguments,
  and the one-line refusals of settings that cannot run;
- training: one (split, arm, seed) trained, scored and recorded, reused or resumed;
- evaluation: COCO AP by mod_vision's validator (at each capacity in a study) and the routing quality tables;
- timing: median latency, every arm (and capacity) timed round-robin;
- reporting: results.md, the CSV named by its configuration, ap_vs_latency.png and the routing quality section;
- study: a capacity study's rows, targets and verdicts, CSVs and plots.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

from .evaluation import evaluate, routing_quality_rows, routing_quality_text, sweep
from .reporting import (
    ap_metric,
    csv_name,
    figure,
    header,
    plot,
    report,
    report_arms,
    routing_quality_section,
    write_results_csv,
)
from .settings import (
    BACKGROUNDS,
    PREFIX,
    as_arm,
    as_list,
    check_arm,
    check_settings,
    check_study,
    cli_args,
    data_sets,
    is_stock,
    label,
    parse_extra,
    split_yamls,
)
from .study import (
    STUDY_METRICS,
    ap_points,
    beats,
    capacity_rows,
    draw_arm,
    key_columns,
    loses_less,
    plot_study,
    study_report,
    study_rows,
    trained_at,
    verdicts,
    within,
)
from .timing import latency, median_ms, network, time_capacities, timed
from .training import SHARED, finished, first_seeds, run_arm, settings_of, tag_of, train_arm, weights_of


def compare(arms=("hybrid12-det-n.yaml", "yolo11n.yaml"), data="sample", name: str = "compare",
            project: str = "runs/compare", seeds=(0,), epochs: int = 40, imgsz: int = 160, batch: int = 16,
            workers: int = 2, latency_imgsz=(640,), threads: int = 2, runs: int = 20, warmup: int = 3,
            trained_latency: bool = False, routing_quality: bool = False, train: bool = True, extra: dict | None = None,
            capacities=None, reference: str | None = None, baseline: str | None = None, targets=(),
            device: str = "cpu", command: str | None = None) -> Path:  # fmt: skip
    """Train, evaluate and time `arms` (see the module's docstring); returns the report results.md."""
    arms, seeds, latency_imgsz = as_list(arms, as_arm), as_list(seeds, int), as_list(latency_imgsz, int)
    capacities = None if capacities is None else as_list(capacities, float)
    targets = [targets] if isinstance(targets, (dict, str)) else list(targets or ())
    check_settings(arms, seeds, latency_imgsz, extra, epochs=epochs, imgsz=imgsz, batch=batch, workers=workers,
                   threads=threads, runs=runs, warmup=warmup)  # fmt: skip
    check_study(arms, capacities, latency_imgsz, data, reference, baseline, targets)
    for model in dict.fromkeys(a["model"] for a in arms):
        check_arm(model)
    datas = data_sets(data)
    args = SimpleNamespace(name=name, data=datas.get(None, datas), epochs=epochs, imgsz=imgsz, batch=batch,
                           extra=extra or {}, threads=threads, runs=runs, warmup=warmup, latency_imgsz=latency_imgsz,
                           trained_latency=trained_latency, capacities=capacities, reference=reference,
                           baseline=baseline, targets=targets, workers=workers, device=device, train=train)  # fmt: skip
    shown = {k: v for k, v in vars(args).items() if k != "threads" and v not in (None, [], {})}
    command = command or f"{PREFIX} " + " ".join(f"{k}={v}" for k, v in shown.items())
    run = Path(project) / name
    (run / "results").mkdir(parents=True, exist_ok=True)
    # a data name Ultralytics resolves itself (coco8.yaml) records no background kinds, and named data sets (a study's
    # splits) are scored on their own val lists only
    one = datas.get(None)
    backgrounds = split_yamls(one, run, "data_val") if train and one and Path(one).is_file() else {}
    results = [r for split, path in datas.items() for seed in seeds for arm in arms
               if (r := run_arm(arm, seed, split, path, run, args, backgrounds)) is not None]  # fmt: skip
    if capacities is None:
        path = report_arms(results, arms, run, args, command)
    else:
        if latency_imgsz:
            time_capacities(results, latency_imgsz[0], threads, runs, warmup, reference)
        path = study_report(results, run, args, command)
    if routing_quality:
        path.write_text(path.read_text() + routing_quality_section(results, run, args))
    print(path.read_text())
    return path


__all__ = [
    "BACKGROUNDS", "PREFIX", "SHARED", "STUDY_METRICS", "ap_metric", "ap_points", "as_arm", "as_list", "beats",
    "capacity_rows", "check_arm", "check_settings", "check_study", "cli_args", "compare", "csv_name", "data_sets",
    "draw_arm", "evaluate", "figure", "finished", "first_seeds", "header", "is_stock", "key_columns", "label",
    "latency", "loses_less", "median_ms", "network", "parse_extra", "plot", "plot_study", "report", "report_arms",
    "routing_quality_rows", "routing_quality_section", "routing_quality_text", "run_arm", "settings_of",
    "split_yamls", "study_report", "study_rows", "sweep", "tag_of", "time_capacities", "timed", "train_arm",
    "trained_at", "verdicts", "weights_of", "within", "write_results_csv",
]
