"""Export keeps the routing: each runtime's outputs against PyTorch, routing ops in the saved graph, metadata, errors.

Each format is exported once per module and reused, from a controlled copy of each of the session's tiny trained models
(imgsz 96; `controlled`): those score below 0.01 everywhere, so after NMS there would be nothing to compare. The copy
keeps the trained weights and sets the biases of the head's last layers: a grid of confident, non-overlapping boxes at
strides 16 and 32 (one class per stride), nothing above 0.01 at stride 8, and masks with the protos' spatial structure.
Tolerances: raw head outputs within BOX_ATOL + BOX_RTOL x value (decoded boxes, pixels at imgsz 96) and RAW_ATOL
(class scores in [0, 1], mask coefficients, protos) of PyTorch; after NMS, each image has at least MIN_CONFIDENT
detections above MATCH_CONF in both runtimes, and each of them has a same-class partner with box IoU >= 0.9 (and mask
IoU >= 0.9) in the other runtime's results.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import IMGSZ

pytest.importorskip("onnxruntime", reason="the [export] extra is not installed")

BOX_ATOL, BOX_RTOL, RAW_ATOL = 1e-2, 1e-3, 5e-3
MATCH_CONF = 0.05
MIN_CONFIDENT = 10  # detections above MATCH_CONF per image, in each runtime, for the after-NMS comparison to count
CONFIDENT = {1: 0.5, 2: 0.7}  # the controlled copy's score by head level (strides 16 and 32) for that level's class
BACKGROUND = 1e-4  # its other scores: below predict's conf (0.01 here) and val's (0.001)
RUNTIME_FORMATS = ["onnx", "openvino", "torchscript", "litert"]
# task -> its session run: the MoD-ViT detector and segmenter, and the multi-stride hybrid (a detector)
RUNS = {"detect": lambda d, s, h: d, "segment": lambda d, s, h: s, "hybrid": lambda d, s, h: h}


@pytest.fixture(scope="module")
def weights(det_run, seg_run, hybrid_run, images, tmp_path_factory):
    """weights(task) -> the module's checkpoint for the task: the controlled copy of its session run, made once."""
    cache = {}

    def get(task):
        if task not in cache:
            src = RUNS[task](det_run, seg_run, hybrid_run) / "weights" / "best.pt"
            dst = tmp_path_factory.mktemp(f"{task}-controlled") / "best.pt"
            cache[task] = controlled(src, dst, letterboxed(images))
        return cache[task]

    return get


@pytest.fixture(scope="module")
def export(weights, tmp_path_factory):
    """export(task, format, **kw) -> path of the exported file (of `weights(task)`), exported once per arguments."""
    from mod_vision import MoDYOLO

    cache = {}

    def get(task, fmt, **kw):
        key = (task, fmt, tuple(sorted(kw.items())))
        if key not in cache:
            d = tmp_path_factory.mktemp(f"{task}-{fmt}")
            pt = shutil.copy(weights(task), d / "best.pt")
            cache[key] = MoDYOLO(pt).export(format=fmt, imgsz=IMGSZ, **kw)
        return cache[key]

    return get


def controlled(src, dst, im: torch.Tensor):
    """Write to `dst` a copy of the checkpoint `src` whose Detect or Segment head is confident in a set way; return it.

    Only the biases of the last layer of each branch change; the trained weights stay and still add their (small)
    position-dependent part to every output.
    - classes: on level i in CONFIDENT, class i % nc scores about CONFIDENT[i] at every position; every other score is
      about BACKGROUND;
    - boxes: the DFL bins favour short distances (bias -0.7 x bin: about one stride to each side), so each box is about
      two strides wide, centred on its anchor; boxes of one level overlap with IoU <= 1/3, so NMS (IoU 0.7) suppresses
      none of them and no near-tie of scores can change which it keeps;
    - mask coefficients: one direction in proto space, from the protos of the images `im`: their main spatial variation
      (orthogonal to their mean), offset by the mean so that 70% of the pixels are inside: masks keep the protos'
      spatial structure (Ultralytics drops a detection whose mask is empty, in either runtime alike).
    The raw-output check runs on this copy too: its class scores, near 0.5, are where a difference in logits shows most.
    """
    from ultralytics.nn.modules.head import Detect

    ckpt = torch.load(src, map_location="cpu", weights_only=False)
    model = (ckpt.get("ema") or ckpt["model"]).float().eval()
    head = model.model[-1]
    assert isinstance(head, Detect) and not hasattr(head, "background") and not head.end2end, type(head)
    with torch.no_grad():
        coef = None
        if hasattr(head, "proto"):
            protos = []
            hook = head.proto.register_forward_hook(lambda m, x, y: protos.append(y))
            model(im)
            hook.remove()
            p = protos[0].double().transpose(0, 1).flatten(1)  # (masks, pixels)
            mean = p.mean(1) / p.mean(1).norm()
            varied = p - p.mean(1, keepdim=True)
            varied -= mean[:, None] * (mean @ varied)
            main = torch.linalg.svd(varied, full_matrices=False).U[:, 0]
            coef = main - (main @ p).quantile(0.3) / (mean @ p).median() * mean
            coef *= 100 / coef.norm()  # the sign of coef . protos is the mask; the trained part stays small beside it
        for i in range(head.nl):
            score = torch.full((head.nc,), BACKGROUND, dtype=torch.float64)
            if i in CONFIDENT:
                score[i % head.nc] = CONFIDENT[i]
            head.cv3[i][-1].bias.copy_(torch.logit(score))
            head.cv2[i][-1].bias.copy_((-0.7 * torch.arange(head.reg_max)).repeat(4))
            if coef is not None:
                head.cv4[i][-1].bias.copy_(coef)
    ckpt["model"], ckpt["ema"] = model, None
    torch.save(ckpt, dst)
    return dst


@pytest.fixture(scope="module")
def images(sample_yaml):
    return sorted((sample_yaml.parent / "images" / "val").glob("*.jpg"))[:4]


def letterboxed(images, size=IMGSZ) -> torch.Tensor:
    import cv2
    from ultralytics.data.augment import LetterBox

    lb = LetterBox((size, size), auto=False)
    ims = [lb(image=cv2.imread(str(f)))[..., ::-1].transpose(2, 0, 1) for f in images]
    return torch.from_numpy(np.ascontiguousarray(np.stack(ims))).float() / 255


def heads(y) -> list[torch.Tensor]:
    """The raw head outputs, [boxes+scores(+mask coefficients), (protos)], from any runtime's or PyTorch's output."""
    if isinstance(y, torch.Tensor):
        return [y]
    if isinstance(y[0], torch.Tensor) and len(y) > 1 and isinstance(y[1], torch.Tensor) and y[1].ndim == 4:
        return [y[0], y[1]]
    return heads(y[0])


def run(path, im) -> list[torch.Tensor]:
    from ultralytics.nn.autobackend import AutoBackend

    if str(path).rstrip("/").endswith("_openvino_model"):
        return run_openvino_f32(path, im)
    model = AutoBackend(str(path), device=torch.device("cpu"), verbose=False)
    with torch.no_grad():
        return [torch.cat(t) for t in zip(*(heads(model(x[None])) for x in im))]


def run_openvino_f32(path, im) -> list[torch.Tensor]:
    """OpenVINO in f32: on CPUs with bf16 units its default precision is bf16 (a runtime choice, also for dense
    models), which is compared after NMS instead."""
    import openvino as ov
    from pathlib import Path

    xml = next(Path(path).glob("*.xml"))
    model = ov.Core().compile_model(str(xml), "CPU", {"INFERENCE_PRECISION_HINT": ov.Type.f32})
    outs = [[torch.from_numpy(v) for v in model(x[None].numpy()).values()] for x in im]
    return [torch.cat(t) for t in zip(*outs)]


def routed(pt) -> int:
    from mod_vision import MoDYOLO

    return len(MoDYOLO(pt).model.routed_blocks())


def assert_raw_close(out: torch.Tensor, ref: torch.Tensor, protos: bool = False):
    assert out.shape == ref.shape
    out, ref = out.float(), ref.float()
    if not protos:
        torch.testing.assert_close(out[:, :4], ref[:, :4], atol=BOX_ATOL, rtol=BOX_RTOL)
        out, ref = out[:, 4:], ref[:, 4:]
    torch.testing.assert_close(out, ref, atol=RAW_ATOL, rtol=0)


def box_iou(a, b):
    from ultralytics.utils.metrics import box_iou as iou

    return iou(torch.as_tensor(a), torch.as_tensor(b))


def assert_same_detections(ref, out, masks: bool):
    """Each image has at least MIN_CONFIDENT detections above MATCH_CONF in each result, and every one of them has a
    same-class partner in the other result (boxes and masks overlap)."""
    assert len(ref) == len(out)
    for r, o in zip(ref, out):
        for a, b in ((r, o), (o, r)):
            keep = a.boxes.conf > MATCH_CONF
            assert keep.sum() >= MIN_CONFIDENT, f"{int(keep.sum())} detections above {MATCH_CONF}: too few to compare"
            assert len(b.boxes), "detections in one runtime, none in the other"
            iou = box_iou(a.boxes.xyxy[keep], b.boxes.xyxy)
            iou[a.boxes.cls[keep][:, None] != b.boxes.cls[None]] = 0
            best, j = iou.max(1)
            assert (best >= 0.9).all(), f"unmatched detections: best IoUs {best.tolist()}"
            if masks:
                ma, mb = a.masks.data[keep], b.masks.data[j]
                inter, union = (ma * mb).sum((1, 2)), ((ma + mb) > 0).sum((1, 2)).clamp(min=1)
                assert (inter / union >= 0.9).all(), f"masks differ: IoUs {(inter / union).tolist()}"


@pytest.mark.parametrize("task", ["detect", "segment", "hybrid"])
@pytest.mark.parametrize("fmt", RUNTIME_FORMATS)
def test_runtime_matches_pytorch(export, weights, images, sample_yaml, fmt, task):
    from ultralytics import YOLO

    from mod_vision import MoDYOLO
    from mod_vision.engine.export import routing_op_counts

    pt = weights(task)
    f = export(task, fmt)

    # the graph is routed, not densified: every routed block has its top-k, gathers and scatter
    counts = routing_op_counts(f, fmt)
    r = routed(pt)
    assert r > 0 and counts["topk"] >= r and counts["gather"] >= r and counts["scatter"] == r, counts

    im = letterboxed(images)
    ref, out = run(pt, im), run(f, im)
    assert len(ref) == len(out) == (2 if task == "segment" else 1)
    for i, (a, b) in enumerate(zip(ref, out)):
        assert_raw_close(b, a, protos=i == 1)

    # final detections (and masks) after NMS, through mod_vision's predictor
    kw = dict(imgsz=IMGSZ, conf=0.01, verbose=False)
    kind = "segment" if task == "segment" else "detect"
    ref, out = MoDYOLO(pt).predict(images, **kw), MoDYOLO(f, task=kind).predict(images, **kw)
    assert_same_detections(ref, out, masks=task == "segment")
    assert out[0].capacity == MoDYOLO(pt).model.capacities()

    # Ultralytics' own predict and val on the exported file
    stock = YOLO(f, task=kind)
    res = stock.predict(images, **kw)
    assert len(res) == len(images) and all(r.boxes is not None for r in res)
    metrics = stock.val(data=str(sample_yaml), imgsz=IMGSZ, batch=1, device="cpu", plots=False, verbose=False)
    ref_metrics = YOLO(pt).val(data=str(sample_yaml), imgsz=IMGSZ, batch=1, device="cpu", plots=False, verbose=False)
    assert metrics.box.map50 == pytest.approx(ref_metrics.box.map50, abs=0.02)


def test_capacity_chosen_at_export_is_in_metadata_and_results(export, weights, images, sample_yaml):
    """capacity= at export fixes k in the graph, is written to the metadata, and predicting or validating from the file
    reports it."""
    from ultralytics.nn.autobackend import AutoBackend

    from mod_vision import MoDYOLO
    from mod_vision.engine.export import exported_routing
    from mod_vision.nn.routing import tokens_for

    pt = weights("detect")
    f = export("detect", "onnx", capacity=0.25)
    r = routed(pt)
    assert exported_routing(AutoBackend(f, verbose=False))["capacity"] == [0.25] * r

    res = MoDYOLO(f).predict(images[:1], imgsz=IMGSZ, verbose=False)[0]
    n = (IMGSZ // 16) ** 2
    assert res.capacity == [0.25] * r
    assert res.token_share == tokens_for(0.25, n) / n  # exact: static top-k
    # PyTorch at the same capacity gives the same share and the same raw outputs
    model = MoDYOLO(pt).set_capacity(0.25)
    ref = model.predict(images[:1], imgsz=IMGSZ, verbose=False)[0]
    assert ref.token_share == res.token_share and ref.capacity == res.capacity
    im = letterboxed(images[:2])
    model.model.eval()
    with torch.no_grad():
        expected = torch.cat([heads(model.model.fuse()(x[None]))[0] for x in im])
    assert_raw_close(run(f, im)[0], expected)
    # the default export keeps the model's own capacity, so the two graphs differ
    assert exported_routing(AutoBackend(export("detect", "onnx"), verbose=False))["capacity"] != [0.25] * r

    with pytest.raises(ValueError, match=r"fixed at export.*re-export with capacity=0.5"):
        MoDYOLO(f).predict(images[:1], imgsz=IMGSZ, capacity=0.5, verbose=False)

    # val on the file: the exact share in its metrics, and another capacity refused rather than silently ignored
    kw = dict(data=str(sample_yaml), imgsz=IMGSZ, batch=2, device="cpu", plots=False, verbose=False)
    assert MoDYOLO(f).val(**kw).token_share == tokens_for(0.25, n) / n
    with pytest.raises(ValueError, match=r"fixed at export.*re-export with capacity=0.5"):
        MoDYOLO(f).val(capacity=0.5, **kw)


def test_onnx_dynamic_batch_and_size(export, weights, sample_yaml):
    """dynamic=True: batch 2 and another image size give PyTorch's outputs (k follows N = tokens of the input)."""
    import onnxruntime as ort

    from mod_vision import MoDYOLO

    f = export("detect", "onnx", dynamic=True)
    model = MoDYOLO(weights("detect")).model.fuse().eval()
    session = ort.InferenceSession(f, providers=["CPUExecutionProvider"])
    val = sorted((sample_yaml.parent / "images" / "val").glob("*.jpg"))
    for batch, size in ((2, IMGSZ), (1, 128), (2, 160)):
        im = letterboxed(val[:batch], size)
        with torch.no_grad():
            expected = heads(model(im))[0]
        out = torch.from_numpy(session.run(None, {"images": im.numpy()})[0])
        assert_raw_close(out, expected)


def test_coreml_converts_with_routing(export, det_run, seg_run):
    """No CoreML runtime on Linux: the conversion succeeds, the saved spec loads and validates, routing ops included."""
    ct = pytest.importorskip("coremltools")
    from mod_vision.engine.export import routing_op_counts

    for task, run_dir in (("detect", det_run), ("segment", seg_run)):
        f = export(task, "coreml")
        spec = ct.models.MLModel(str(f), skip_model_load=True).get_spec()  # parses the package and its weights
        assert spec.WhichOneof("Type") == "mlProgram"
        assert spec.description.metadata.userDefined["capacity"]
        r = routed(run_dir / "weights" / "best.pt")
        counts = routing_op_counts(f, "coreml")
        assert counts["topk"] >= r and counts["scatter"] == r, counts


def test_unsupported_format_lists_supported(det_run):
    from mod_vision import MoDYOLO
    from mod_vision.engine.export import FORMATS

    with pytest.raises(ValueError, match=r"format='paddle' is not supported.*onnx.*openvino.*litert"):
        MoDYOLO(det_run / "weights" / "best.pt").export(format="paddle", imgsz=IMGSZ)
    with pytest.raises(ValueError, match="Supported formats"):
        MoDYOLO(det_run / "weights" / "best.pt").export(format="no-such-format", imgsz=IMGSZ)
    assert "onnx" in FORMATS and "paddle" not in FORMATS


def test_op_missing_in_runtime_fails_at_export(det_run, tmp_path):
    """ncnn has no TopK/Gather/Scatter layer: the export fails naming the ops and the format, not at deploy time."""
    pytest.importorskip("ncnn")
    from mod_vision import MoDYOLO
    from mod_vision.engine.export import ExportOpError

    pt = shutil.copy(det_run / "weights" / "best.pt", tmp_path / "best.pt")
    with pytest.raises(ExportOpError, match=r"format='ncnn' cannot run op\(s\).*torch\.topk") as e:
        MoDYOLO(pt).export(format="ncnn", imgsz=IMGSZ)
    assert "torch.topk" in e.value.ops and e.value.format == "ncnn"


def test_cli_export(det_run, tmp_path):
    from mod_vision.cli import run as cli
    from mod_vision.engine.export import routing_op_counts

    pt = shutil.copy(det_run / "weights" / "best.pt", tmp_path / "best.pt")
    f = cli(["export", f"model={pt}", "format=torchscript", f"imgsz={IMGSZ}", "capacity=0.5"])
    assert routing_op_counts(f, "torchscript")["topk"] >= routed(pt)


def test_a_routing_record_of_an_exported_model_is_refused_with_the_reason(export):
    from ultralytics.nn.autobackend import AutoBackend

    from mod_vision.nn import record_routing

    backend = AutoBackend(export("detect", "onnx"), device=torch.device("cpu"), verbose=False)
    with pytest.raises(ValueError, match="exported models do not return their routing"):
        with record_routing(backend):
            pass


def test_onnx_export_without_onnxslim_skips_simplify_with_one_warning(tmp_path, monkeypatch):
    """Without the [export] extra's onnxslim, Ultralytics' simplify=True would try to pip-install it: the export runs
    with simplify=False instead, and says so once."""
    import sys

    import ultralytics.engine.exporter as exporter

    from mod_vision import MoDYOLO

    monkeypatch.chdir(tmp_path)
    monkeypatch.setitem(sys.modules, "onnxslim", None)  # not importable
    asked = []
    check = exporter.check_requirements
    monkeypatch.setattr(exporter, "check_requirements", lambda req, *a, **k: asked.append(str(req)) or check(req, *a, **k))
    import logging

    from ultralytics.utils import LOGGER

    said = []  # Ultralytics' LOGGER writes to the stream it was given at import: read its records, not the stream
    handler = logging.Handler()
    handler.emit = lambda record: said.append(record.getMessage())
    LOGGER.addHandler(handler)
    try:
        f = MoDYOLO("modvit-det.yaml").export(format="onnx", imgsz=64)
    finally:
        LOGGER.removeHandler(handler)
    assert str(f).endswith(".onnx") and (tmp_path / f).is_file()
    assert asked and not any("onnxslim" in r for r in asked)  # never requested, so never auto-installed
    lines = [m for m in said if "onnxslim" in m]
    assert len(lines) == 1 and lines[0].endswith(
        "onnx export: onnxslim is not installed, exporting without ONNX graph simplification (simplify=False); "
        "mod_vision's export extra installs it: pip install -e '.[export]'"), lines


def test_another_imgsz_on_a_static_export_is_said_once(export, images, sample_yaml):
    """A file exported with a static size runs at that size (Ultralytics takes it from the metadata): predict and val
    asked for another imgsz say so in one line each; asked for the exported size, or for nothing, they say nothing."""
    import logging

    from ultralytics.utils import LOGGER

    from mod_vision import MoDYOLO

    f = export("detect", "onnx")
    said = []
    handler = logging.Handler()
    handler.emit = lambda record: said.append(record.getMessage())
    LOGGER.addHandler(handler)
    try:
        model = MoDYOLO(f)
        registered = ours(model)
        res = model.predict(images[:1], imgsz=2 * IMGSZ, verbose=False)
        assert len(res) == 1 and len(said_ignored(said)) == 1
        assert said_ignored(said)[0].startswith(f"imgsz={2 * IMGSZ} ignored: ") and (
            f"static input of {IMGSZ}x{IMGSZ}" in said_ignored(said)[0])
        list(model.predict(images[:1], imgsz=2 * IMGSZ, stream=True, verbose=False))  # the generator warns too
        model.predict(images[:1], imgsz=IMGSZ, verbose=False)
        model.predict(images[:1], verbose=False)
        assert len(said_ignored(said)) == 2
        model.val(data=str(sample_yaml), imgsz=[2 * IMGSZ, IMGSZ], batch=1, plots=False, verbose=False)
        assert len(said_ignored(said)) == 3 and said_ignored(said)[2].startswith(f"imgsz={[2 * IMGSZ, IMGSZ]} ignored")
        model.val(data=str(sample_yaml), imgsz=IMGSZ, batch=1, plots=False, verbose=False)
        assert len(said_ignored(said)) == 3
        assert ours(model) == registered  # each call's check leaves with it
    finally:
        LOGGER.removeHandler(handler)


def ours(model) -> dict:
    """mod_vision's callbacks on the model at the start of predict and val (Ultralytics adds its own as it goes)."""
    events = ("on_predict_start", "on_val_start")
    return {e: [c for c in model.callbacks[e] if c.__module__.startswith("mod_vision")] for e in events}


def said_ignored(said: list[str]) -> list[str]:
    """The static-size warnings among the logged lines, without Ultralytics' "WARNING" prefix."""
    return [m.split("WARNING ⚠️ ")[-1] for m in said if " ignored: " in m and "static input" in m]


OWN = str(Path(__file__).parents[1] / "docs/routing_carries/candidates/modnext-own-det.yaml")  # every layer decides


@pytest.mark.parametrize(
    "fmt, cfg, deciding", [("onnx", "modnext-det-n.yaml", 3), ("openvino", "modnext-det-n.yaml", 3), ("onnx", OWN, 11)]
)
def test_modnext_exports_with_every_routed_layer_in_the_graph(fmt, cfg, deciding, images, tmp_path):
    """modnext-det (routed merges, neighbourhood-reading MLP stages, the routed head) exports with each router's top-k,
    gathers and scatter in the graph, and the runtime's raw outputs match PyTorch's at the exported capacity. With one
    decision per stride (`decision: grid`, modnext-det's), only the deciding routers' top-k are in the graph, and every
    routed layer still gathers and scatters; the candidate in which every routed layer decides has a top-k each."""
    import logging

    from ultralytics.utils import LOGGER

    from mod_vision import MoDYOLO
    from mod_vision.engine.export import routing_op_counts

    torch.manual_seed(0)
    model = MoDYOLO(cfg)
    model.model.model[-1].bias_init()  # Detect's priors (a trained model has them), so scores are not all near 0.5
    for router in model.model.routed_blocks():  # well-separated scores, as trained ones are: no near-ties in top-k
        if router.scorer is not None:
            torch.nn.init.normal_(router.scorer.net.weight, std=1.0)
    pt = tmp_path / "modnext.pt"
    model.save(pt)
    said = []
    handler = logging.Handler()
    handler.emit = lambda record: said.append(record.getMessage())
    LOGGER.addHandler(handler)
    try:
        f = MoDYOLO(pt).export(format=fmt, imgsz=IMGSZ, capacity=0.25)
        assert not [m for m in said if "per-image budget" in m]  # a capacity was chosen: nothing to say
        if fmt == "onnx":  # the model's own default is per image: the graph's static capacities are said once
            MoDYOLO(pt).export(format=fmt, imgsz=IMGSZ)
            (line,) = [m for m in said if "per-image budget" in m]
            budget = list(map(float, model.model.yaml["dynamic_capacity"]))  # [0.0, 1.0]; the per-layer candidate's
            assert f"onnx export: this model's per-image budget (dynamic_capacity={budget}) needs" in line  # 0.001
            assert line.endswith("routes its static capacities [0.25] (pass capacity= to choose)")
    finally:
        LOGGER.removeHandler(handler)
    counts, r = routing_op_counts(f, fmt), routed(pt)
    assert r == 11 and counts["topk"] >= deciding and counts["gather"] >= r and counts["scatter"] == r, counts
    if deciding < r:  # a router takes its decision in two TopKs (best k, then raster order)
        assert counts["topk"] == 2 * deciding, counts
    # a little noise: on an exactly flat field, conv features tie exactly, and runtimes may break top-k ties by other
    # rules (ONNX's TopK takes the lower index; torch's CPU top-k does not promise an order), routing another of the
    # tied tokens (docs/export.md, "Ties")
    im = (letterboxed(images) + 0.02 * torch.rand(len(images), 3, IMGSZ, IMGSZ, generator=torch.Generator().manual_seed(0)))
    im = im.clamp(0, 1)
    static = tmp_path / "modnext-0.25.pt"
    MoDYOLO(pt).set_capacity(0.25).save(static)
    ref, out = run(static, im), run(f, im)
    assert len(ref) == len(out) == 1
    assert_raw_close(out[0], ref[0])
