"""TensorRTRunner against a fake TensorRT that enforces the documented runtime contract (tests/fake_tensorrt.py).

Each test names the issue-13 defect it guards; each would fail on the runner as it was before the fix
(one shared context for every captured graph, ignored capture failures, inference-mode static buffers,
unaligned addresses, unchecked TensorRT results, profile minimum > 1).
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.machinery
import importlib.util
import json
import logging

import numpy as np
import pytest
import torch
from fake_tensorrt import FakeCuda, FakeEngine, detection_outputs, fake_tensorrt_module, raw_outputs

from assd.errors import UserError
from assd.models import get_config
from assd.runtime import tensorrt_execution, tensorrt_runner
from assd.runtime.engine_info import EngineInfo, sidecar_path
from assd.runtime.padded import PaddedDetections
from assd.runtime.postprocess import PostprocessConfig
from assd.runtime.tensorrt_execution import ALIGNMENT, aligned_empty, as_aligned
from assd.runtime.tensorrt_runner import TensorRTRunner

CFG = dataclasses.replace(get_config("assd-mini", num_classes=3), input_size=32)
PP = {"score_threshold": 0.01, "nms_iou": 0.45, "top_k": 200, "max_detections": 4}


def _info(**changes) -> EngineInfo:
    info = EngineInfo(tensorrt_version="10.16.1.11", gpu_name="NVIDIA L4", compute_capability="8.9", precision="fp32",
                      input_shape=[3, 32, 32], batch_min=1, batch_opt=4, batch_max=8, onnx_sha256="0" * 64,
                      onnx_file="tiny.onnx", model_config=json.loads(CFG.to_json()), postprocess=PP,
                      class_names=list(CFG.class_names))
    return dataclasses.replace(info, **changes)


@pytest.fixture
def fake(monkeypatch, tmp_path):
    """(make_runner, engine, cuda): runners over a fake engine, on CPU tensors."""
    cuda = FakeCuda()
    state = {"engine": FakeEngine(cuda)}
    real_find, real_import = importlib.util.find_spec, importlib.import_module
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: (
        importlib.machinery.ModuleSpec("tensorrt", None) if name == "tensorrt" else real_find(name, *a)))
    monkeypatch.setattr(importlib, "import_module", lambda name, *a: (
        fake_tensorrt_module(state["engine"]) if name == "tensorrt" else real_import(name, *a)))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(tensorrt_execution, "cuda", cuda)
    monkeypatch.setattr(tensorrt_execution, "cudart", cuda)
    monkeypatch.setattr(tensorrt_runner, "engine_device", lambda path, device: torch.device("cpu"))

    def make_runner(info: EngineInfo | None = None, engine: FakeEngine | None = None, plan=b"fake plan", **kwargs):
        info = info or _info()
        state["engine"] = engine or FakeEngine(cuda, profile=tuple(
            (batch, *info.input_shape) for batch in (info.batch_min, info.batch_opt, info.batch_max)),
            detections=info.outputs == "detections")
        path = tmp_path / "tiny.engine"
        path.write_bytes(plan)
        sidecar_path(path).write_text(json.dumps(info.to_dict()))
        return TensorRTRunner(str(path), "cuda", **kwargs)

    return make_runner, state, cuda


def _images(batch: int, seed: int) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).normal(size=(batch, 3, 32, 32)).astype(np.float32))


# ------------------------------------------------------------------------------------ 1-3: CUDA graphs
def test_cuda_graph_per_batch_size_replays_new_images_like_the_graphless_runner(fake, caplog):
    """Item 1: capture with images A, replay with images B, batch sizes interleaved 1, 3, 1, 3.
    Each capture needs its warm-up enqueue (the fake invalidates a capture without one)."""
    make_runner, state, cuda = fake
    graphed = make_runner(cuda_graph=True)
    engine = state["engine"]
    for step, batch in enumerate([1, 3, 1, 3, 3, 1]):
        images = _images(batch, seed=step)  # new images every call: the first call of a size captures
        loc, conf = graphed.infer(images)
        expected_loc, expected_conf = raw_outputs(images.numpy())
        np.testing.assert_allclose(loc.numpy(), expected_loc, rtol=1e-6)
        np.testing.assert_allclose(conf.numpy(), expected_conf, rtol=1e-6)
    assert cuda.replays == 6 and not [r for r in caplog.records if "capture failed" in r.getMessage()]
    captured = engine.contexts[1:]  # contexts[0] is the graph-less one
    assert len(captured) == 2 and [set(c.shapes_seen) for c in captured] == [{(1, 3, 32, 32)}, {(3, 3, 32, 32)}]
    assert all(c.device_memory == engine.contexts[0].device_memory for c in captured)  # one shared block


def test_graph_outputs_are_not_overwritten_by_the_next_replay(fake):
    make_runner, _, _ = fake
    graphed = make_runner(cuda_graph=True)
    first, _ = graphed.infer(_images(2, seed=1))
    kept = first.clone()
    graphed.infer(_images(2, seed=2))
    assert torch.equal(first, kept)


@pytest.mark.parametrize("failure", ["capture_fails", "capture_invalidates"])
def test_failed_capture_runs_without_graphs_and_says_so_once(fake, caplog, failure):
    """Item 2: execute_async_v3 returning False (or an invalidated capture) drops the graph."""
    make_runner, state, _ = fake
    graphed = make_runner(cuda_graph=True)
    setattr(state["engine"], failure, True)
    with caplog.at_level(logging.WARNING, logger="assd.runtime"):
        for step, batch in enumerate([1, 3, 1]):
            images = _images(batch, seed=10 + step)
            loc, _ = graphed.infer(images)
            np.testing.assert_allclose(loc.numpy(), raw_outputs(images.numpy())[0], rtol=1e-6)
    warnings = [r.getMessage() for r in caplog.records if "CUDA graph capture failed" in r.getMessage()]
    assert len(warnings) == 1 and "without CUDA graphs" in warnings[0]


def test_graphs_work_inside_and_outside_inference_mode(fake):
    """Item 3: static buffers made under inference_mode must still take copy_ outside it (and vice versa)."""
    make_runner, _, _ = fake
    graphed = make_runner(cuda_graph=True)
    with torch.inference_mode():
        graphed.infer(_images(2, seed=1))
    images = _images(2, seed=2)
    loc, _ = graphed.infer(images)
    np.testing.assert_allclose(loc.numpy(), raw_outputs(images.numpy())[0], rtol=1e-6)
    with torch.inference_mode():
        graphed.infer(_images(2, seed=3))


def test_a_failed_capture_leaves_no_cuda_error_behind(fake):
    """trtexec clears the error a failed capture leaves pending (cudaGetLastError); the fake raises it at
    the next launch otherwise."""
    make_runner, state, cuda = fake
    graphed = make_runner(cuda_graph=True)
    state["engine"].capture_invalidates = True
    images = _images(2, seed=3)
    loc, _ = graphed.infer(images)
    assert cuda.pending_error is None
    np.testing.assert_allclose(loc.numpy(), raw_outputs(images.numpy())[0], rtol=1e-6)


def test_engine_stream_waits_for_the_callers_stream_both_ways(fake):
    """A caller on its own stream: the engine's launch must wait for it (the input) and the caller must wait
    for the engine (the outputs are NaN until the engine's stream has run)."""
    make_runner, _, cuda = fake
    for graphs in (False, True):
        runner = make_runner(cuda_graph=graphs)
        with cuda.stream(cuda.Stream()):
            for batch in (2, 2):
                images = _images(batch, seed=batch)
                loc, conf = runner.infer(images)
                assert not torch.isnan(loc).any()
                np.testing.assert_allclose(conf.numpy(), raw_outputs(images.numpy())[1], rtol=1e-6)


def test_the_fake_stream_refuses_a_sync_during_capture_and_a_launch_without_a_wait():
    """The fake itself: what CUDA forbids during a capture, and a launch racing the caller's stream."""
    from fake_cuda import CudaRaceError

    cuda = FakeCuda()
    stream = cuda.Stream()
    with cuda.stream(stream):
        with pytest.raises(CudaRaceError, match="without waiting for the caller's stream"):
            stream.launch(lambda: None, "probe")
        graph = cuda.CUDAGraph()
        graph.capture_begin()
        with pytest.raises(RuntimeError, match="not permitted when stream is capturing"):
            stream.synchronize()
        with pytest.raises(RuntimeError, match="previous error during capture"):
            graph.capture_end()
    assert cuda.cudaGetLastError() != 0 and cuda.cudaGetLastError() == 0


def test_user_managed_device_memory_must_be_set_and_large_enough(fake):
    make_runner, state, cuda = fake
    runner = make_runner(engine=FakeEngine(cuda, memory_size=1 << 20))
    images = _images(1, seed=4)
    np.testing.assert_allclose(runner.infer(images)[0].numpy(), raw_outputs(images.numpy())[0], rtol=1e-6)
    context = state["engine"].contexts[0]
    assert context.device_memory[1] == 1 << 20 and runner.executor.memory.numel() >= 1 << 20
    context.set_device_memory(context.device_memory[0], 1024)  # smaller than device_memory_size_v2
    with pytest.raises(UserError, match="TensorRT refused execute_async_v3"):
        runner.infer(images)


def test_a_version_compatible_engine_is_deserialized_with_host_code_allowed(fake):
    make_runner, _, cuda = fake
    runner = make_runner(_info(version_compatible=True), engine=FakeEngine(cuda, version_compatible=True))
    images = _images(2, seed=5)
    np.testing.assert_allclose(runner.infer(images)[0].numpy(), raw_outputs(images.numpy())[0], rtol=1e-6)
    assert runner.runtime.engine_host_code_allowed is True


# ------------------------------------------------------------------------------------ 4: alignment
def test_aligned_buffers_and_misaligned_views_are_copied():
    for dtype in (torch.float32, torch.float16, torch.int64, torch.uint8):
        for shape in [(1,), (3, 5), (2, 3, 7)]:
            tensor = aligned_empty(shape, dtype, torch.device("cpu"))
            assert tensor.data_ptr() % ALIGNMENT == 0 and tuple(tensor.shape) == shape and tensor.is_contiguous()
    storage = aligned_empty((1000,), torch.float32, torch.device("cpu"))
    storage.copy_(torch.arange(1000, dtype=torch.float32))  # uninitialized memory may hold NaN (never equal)
    view = storage[16:16 + 96].view(2, 3, 4, 4)  # contiguous, 64 bytes past an aligned address
    copied = as_aligned(view)
    assert view.data_ptr() % ALIGNMENT != 0 and copied.data_ptr() % ALIGNMENT == 0 and torch.equal(copied, view)
    assert as_aligned(storage) is storage


def test_a_misaligned_slice_of_a_batch_runs(fake):
    """Item 4: a contiguous slice with a storage offset is not 256-byte aligned; the fake refuses it."""
    make_runner, _, _ = fake
    runner = make_runner()
    storage = aligned_empty((4 * 3 * 32 * 32 + 16,), torch.float32, torch.device("cpu"))
    storage.copy_(torch.randn(storage.numel()))
    images = storage[16:16 + 2 * 3 * 32 * 32].view(2, 3, 32, 32)
    assert images.data_ptr() % ALIGNMENT != 0
    loc, conf = runner.infer(images)
    expected_loc, expected_conf = raw_outputs(images.numpy())
    np.testing.assert_allclose(loc.numpy(), expected_loc, rtol=1e-6)
    np.testing.assert_allclose(conf.numpy(), expected_conf, rtol=1e-6)


# ------------------------------------------------------------------------------------ 5: checked calls
def test_inputs_are_checked_against_the_engine_before_binding(fake):
    make_runner, _, _ = fake
    runner = make_runner()
    with pytest.raises(UserError, match=r"input of shape \(2, 3, 16, 16\); the engine takes \[B, 3, 32, 32\]"):
        runner.infer(torch.zeros(2, 3, 16, 16))
    with pytest.raises(UserError, match="input of shape"):
        runner.infer(torch.zeros(3, 32, 32))
    with pytest.raises(UserError, match="batch 9 is outside the engine's range 1..8"):
        runner.infer(torch.zeros(9, 3, 32, 32))


def test_unchecked_tensorrt_results_become_one_line_errors(fake):
    make_runner, state, _ = fake
    runner = make_runner()
    state["engine"].profile = ((1, 3, 32, 32), (2, 3, 32, 32), (2, 3, 32, 32))  # set_input_shape now refuses 4
    with pytest.raises(UserError, match=r"TensorRT refused set_input_shape\('images', \(4, 3, 32, 32\)\)"):
        runner.infer(torch.zeros(4, 3, 32, 32))
    state["engine"].execute_ok = False
    with pytest.raises(UserError, match="TensorRT refused execute_async_v3"):
        runner.infer(torch.zeros(1, 3, 32, 32))


def test_engine_and_sidecar_must_agree_and_corrupt_plans_are_one_line_errors(fake, tmp_path):
    make_runner, _, cuda = fake
    with pytest.raises(UserError, match="could not deserialize the engine .*rebuild it"):
        make_runner(plan=b"corrupt")
    mismatched = FakeEngine(cuda, profile=((1, 3, 32, 32), (8, 3, 32, 32), (16, 3, 32, 32)))
    with pytest.raises(UserError, match="the engine's input profile is .* its sidecar says"):
        make_runner(engine=mismatched)
    with pytest.raises(UserError, match="engine tensors are .* its sidecar says"):
        make_runner(_info(outputs="detections"), engine=FakeEngine(cuda))


# ------------------------------------------------------------------------------------ 11: profile minimum
def test_a_batch_below_the_profile_minimum_is_padded_and_unpadded(fake):
    make_runner, state, _ = fake
    runner = make_runner(_info(batch_min=4, batch_opt=4, batch_max=8))
    images = _images(3, seed=5)
    loc, conf = runner.infer(images)
    assert loc.shape[0] == 3
    np.testing.assert_allclose(conf.numpy(), raw_outputs(images.numpy())[1], rtol=1e-6)
    assert state["engine"].contexts[0].shapes_seen == [(4, 3, 32, 32)]
    runner.check_batch(1)  # smaller batches are accepted up front (eval/predict's last batch)


# ------------------------------------------------------------------------------------ 7: detections engines
def test_detections_engine_returns_padded_detections_and_refuses_raw_infer(fake):
    make_runner, _, _ = fake
    runner = make_runner(_info(outputs="detections"))
    images = _images(3, seed=6)
    with pytest.raises(UserError, match="exported --with-postprocess, it outputs detections"):
        runner.infer(images)
    result = runner.infer_outputs(images)
    assert isinstance(result, PaddedDetections)
    boxes, scores, classes, count = detection_outputs(images.numpy())
    dets = result.unpad()
    assert [len(d) for d in dets] == count.tolist()
    np.testing.assert_allclose(dets[2].scores, scores[2, :2])
    np.testing.assert_allclose(dets[2].boxes, boxes[2, :2])
    assert dets[2].labels.tolist() == classes[2, :2].tolist()
    stricter = result.unpad(PostprocessConfig(score_threshold=0.7, max_detections=4))
    assert [len(d) for d in stricter] == [0, 1, 1]
    with pytest.raises(UserError, match="only a higher score threshold or fewer detections"):
        result.unpad(PostprocessConfig(nms_iou=0.5, max_detections=4))


def test_the_fake_cuda_offers_only_torch_cuda_api_with_its_parameter_names():
    import inspect

    from fake_cuda import FakeGraph, FakeStream

    real = {FakeCuda: torch.cuda, FakeStream: torch.cuda.Stream, FakeGraph: torch.cuda.CUDAGraph}
    for fake, torch_side in real.items():
        for name, member in vars(fake).items():
            if name.startswith("_") or not callable(member) or name in ("check_error", "cudaGetLastError",
                                                                         "invalidate_capture", "forbid_in_capture",
                                                                         "launch", "flush"):
                continue  # the fake's own machinery (cudaGetLastError stands for the CUDA runtime's)
            params = list(inspect.signature(member).parameters)[0 if fake is FakeCuda else 1:]
            params = [p for p in params if p != "self"]
            real_params = [p for p in inspect.signature(getattr(torch_side, name)).parameters if p != "self"]
            assert real_params[:len(params)] == params, (fake.__name__, name, params, real_params)


def test_the_cuda_error_is_read_from_the_runtime_torch_loaded():
    """The real (not fake) cudaGetLastError binding: the libcudart mapped into this process by torch."""
    from assd.runtime.tensorrt_execution import _CudaRuntime

    path = _CudaRuntime._loaded_path()
    if path is None:
        pytest.skip("this torch loaded no CUDA runtime library (a CPU-only build)")
    assert "libcudart.so" in path and isinstance(_CudaRuntime().cudaGetLastError(), int)
