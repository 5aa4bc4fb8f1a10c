"""Real engines on a real GPU: tests that fail the first time they run on a broken engine path.

All marked ``tensorrt`` (conftest skips them, with a message, without TensorRT and a CUDA GPU). Every
engine is compared with ONNX Runtime on the *same* graph it was built from, on the same images:
fp32 tightly, fp16 within half-precision rounding, int8 no further from its Q/DQ graph than that graph
is from fp32 (the parity ``assd calibrate`` measures). ``scripts/gpu_acceptance.sh`` runs them.
"""

from __future__ import annotations

import pytest
import torch

from assd.engine.build import CalibrationOptions, EngineOptions, build_engine
from assd.errors import UserError

pytestmark = pytest.mark.tensorrt


@pytest.fixture(scope="module")
def mini_onnx(tmp_path_factory):
    from assd.export import export_onnx
    from assd.models import build_model

    torch.manual_seed(0)
    model = build_model("assd-mini").eval()
    with torch.no_grad():  # moderate logits: random ResNet-style stacks otherwise reach ~1e5
        for head in model.conf_heads:
            head.weight.mul_(0.05)
    path = tmp_path_factory.mktemp("gpu") / "mini.onnx"
    export_onnx(model, path)
    return path


@pytest.fixture(scope="module")
def engines(mini_onnx, tmp_path_factory):
    """fp32, fp16 and int8 engines of mini.onnx, batch profile 1:2:4, and the graph each was built from."""
    folder = tmp_path_factory.mktemp("engines")
    built = {}
    for precision in ("fp32", "fp16", "int8"):
        calibration = CalibrationOptions(data="synthetic:8", images=8, method="max")
        options = EngineOptions(precision=precision, batch="1:2:4", calibration=calibration)
        engine = folder / f"mini.{precision}.engine"
        info = build_engine(str(mini_onnx), str(engine), options, echo=print)
        graph = mini_onnx if precision == "fp32" else folder / f"mini.{precision}.onnx"
        built[precision] = (engine, graph, info)
    return built


def _images(batch: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, 256, 256, generator=generator)


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float().cpu() - b.float().cpu()).abs().max()) / max(1.0, float(b.abs().max()))


def _ort(graph) -> object:
    from assd.runtime.onnxruntime_runner import OnnxRuntimeRunner

    return OnnxRuntimeRunner(str(graph), torch.device("cpu"))


@pytest.mark.parametrize("precision, tolerance", [("fp32", 1e-4), ("fp16", 1e-2)])
def test_engine_matches_onnxruntime_on_its_own_graph(engines, precision, tolerance):
    from assd.runtime.tensorrt_runner import TensorRTRunner

    engine, graph, info = engines[precision]
    assert info.tf32 is False and info.precision == precision
    runner, reference = TensorRTRunner(str(engine), "cuda"), _ort(graph)
    for batch in (1, 4):  # both ends of the profile
        images = _images(batch, seed=batch)
        (loc, conf), (ref_loc, ref_conf) = runner.infer(images), reference.infer(images)
        assert loc.is_cuda and loc.shape == ref_loc.shape and conf.shape == ref_conf.shape
        assert _relative(conf, ref_conf) <= tolerance and _relative(loc, ref_loc) <= tolerance


def test_int8_engine_is_as_close_to_its_qdq_graph_as_that_graph_is_to_fp32(engines, mini_onnx):
    from assd.runtime.tensorrt_runner import TensorRTRunner

    engine, graph, _ = engines["int8"]
    images = _images(2, seed=3)
    _, engine_conf = TensorRTRunner(str(engine), "cuda").infer(images)
    _, qdq_conf = _ort(graph).infer(images)
    _, fp32_conf = _ort(mini_onnx).infer(images)
    assert _relative(engine_conf, qdq_conf) <= max(_relative(qdq_conf, fp32_conf), 1e-3)


def test_cuda_graph_replays_new_images_like_the_graphless_runner(engines):
    from assd.runtime.tensorrt_runner import TensorRTRunner

    engine, _, _ = engines["fp16"]
    plain, graphed = TensorRTRunner(str(engine), "cuda"), TensorRTRunner(str(engine), "cuda", cuda_graph=True)
    for step, batch in enumerate([1, 3, 1, 3]):  # capture with one set of images, replay with others
        images = _images(batch, seed=100 + step)
        (loc, conf), (ref_loc, ref_conf) = graphed.infer(images), plain.infer(images)
        assert torch.equal(loc, ref_loc) and torch.equal(conf, ref_conf)


def test_caller_on_a_non_default_stream_and_a_batch_below_the_profile_minimum(engines, mini_onnx, tmp_path):
    from assd.runtime.tensorrt_runner import TensorRTRunner

    engine, _, _ = engines["fp32"]
    runner = TensorRTRunner(str(engine), "cuda")
    images = _images(2, seed=7)
    reference = runner.infer(images)
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        on_stream = [t.clone() for t in runner.infer(images.cuda())]  # read on the caller's stream
    stream.synchronize()
    assert all(torch.equal(a, b) for a, b in zip(on_stream, reference))
    padded = tmp_path / "min2.engine"
    build_engine(str(mini_onnx), str(padded), EngineOptions(precision="fp32", batch="2:2:4"), echo=print)
    loc, conf = TensorRTRunner(str(padded), "cuda").infer(images[:1])
    assert loc.shape[0] == 1 and _relative(conf, reference[1][:1]) <= 1e-4


def test_version_compatible_build_runs_here(mini_onnx, tmp_path):
    from assd.runtime.tensorrt_runner import TensorRTRunner

    engine = tmp_path / "vc.engine"
    info = build_engine(str(mini_onnx), str(engine), EngineOptions(precision="fp32", batch="1:1:2",
                                                                   version_compatible=True), echo=print)
    assert info.version_compatible
    loc, _ = TensorRTRunner(str(engine), "cuda").infer(_images(2, seed=9))
    assert torch.isfinite(loc).all()


def test_detections_engine_gives_the_onnxruntime_detections(tmp_path):
    from assd.export import export_onnx
    from assd.export.parity import match_detections
    from assd.models import build_model
    from assd.runtime.tensorrt_runner import TensorRTRunner

    torch.manual_seed(3)
    model = build_model("assd-mini").eval()
    with torch.no_grad():
        for head in model.conf_heads:
            head.weight.mul_(0.02)
    onnx_path, engine = tmp_path / "pp.onnx", tmp_path / "pp.engine"
    export_onnx(model, onnx_path, with_postprocess=True)
    build_engine(str(onnx_path), str(engine), EngineOptions(precision="fp32", batch="1:2:2"), echo=print)
    images = _images(2, seed=11)
    got = TensorRTRunner(str(engine), "cuda").infer_detections(images).unpad()
    expected = _ort(onnx_path).infer_detections(images).unpad()
    for want, have in zip(expected, got):
        matched, score_diff = match_detections(want, have, iou_threshold=0.99)
        assert matched >= 0.99 * len(want) and score_diff < 1e-3


def test_corrupt_engine_is_a_one_line_error(engines, tmp_path):
    from assd.runtime.tensorrt_runner import TensorRTRunner

    engine, _, _ = engines["fp32"]
    corrupt = tmp_path / "corrupt.engine"
    corrupt.write_bytes(engine.read_bytes()[: len(engine.read_bytes()) // 2])
    (tmp_path / "corrupt.engine.json").write_text((engine.parent / f"{engine.name}.json").read_text())
    with pytest.raises(UserError, match="could not deserialize the engine") as error:
        TensorRTRunner(str(corrupt), "cuda")
    assert "\n" not in str(error.value)
