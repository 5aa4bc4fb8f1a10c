"""An ``assd export --triton`` repository, run by a real tritonserver.

nvidia-pytriton's tritonserver has the Python backend but not the ONNX Runtime or TensorRT backends, so
the network step cannot load as written (its config is checked in test_serving_units.py). These tests
load the whole repository with that one step made a Python stand-in (same name, tensors and batching,
running the step's own ``model.onnx``: tests/triton_network_standin.py): the ``assd_preprocess`` and
``assd_postprocess`` models and the ensemble run as written. Checked: each Python step's output against
the direct runner's, and the ensemble's detections. Skipped where the serve extra is not installed.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("pytriton", reason="the serve extra is not installed (pip install -e '.[serve]')")
tritonclient_http = pytest.importorskip("tritonclient.http", reason="the serve extra is not installed")

from assd.data.dataset import read_rgb_image
from assd.export import export_onnx
from assd.models import build_model
from assd.models.presets import get_config
from assd.remote.client import error_message
from assd.remote.protocol import unpack_detections
from assd.runtime.postprocess import PostprocessConfig
from assd.runtime.preprocess import preprocess
from assd.runtime.runners import open_runner
from assd.serving.environment import free_port, use_this_interpreter_for_stubs
from assd.serving.repository import write_repository


@pytest.fixture(scope="module")
def python_steps(tmp_path_factory):
    """(tritonclient, ONNX file, host:port) with a tritonserver serving the repository (stand-in network)."""
    from pytriton.triton import Triton, TritonConfig, TritonSecurityConfig

    folder = tmp_path_factory.mktemp("repository")
    torch.manual_seed(0)
    model = build_model(dataclasses.replace(get_config("assd-mini"), input_size=128)).eval()
    with torch.no_grad():
        for head in model.conf_heads:
            head.weight.mul_(0.2)
    export_onnx(model, folder / "small.onnx")
    repo = write_repository(folder / "repo", str(folder / "small.onnx"), max_batch=4, echo=lambda _: None)
    python_only = folder / "python_only"  # the repository, its network step replaced by a Python stand-in
    shutil.copytree(repo, python_only)
    standin_network(python_only / "assd_network")
    saved = os.environ.get("LD_LIBRARY_PATH")
    use_this_interpreter_for_stubs()
    http = free_port()
    config = TritonConfig(model_repository=python_only, http_address="127.0.0.1", http_port=http,
                          grpc_address="127.0.0.1", grpc_port=free_port(), metrics_address="127.0.0.1",
                          metrics_port=free_port(), exit_timeout_secs=10)
    try:
        with Triton(config=config, security_config=TritonSecurityConfig(restricted_endpoints=[])):
            client = tritonclient_http.InferenceServerClient(f"127.0.0.1:{http}")
            yield client, folder / "small.onnx", f"127.0.0.1:{http}"
            client.close()  # an open connection would hold the server's shutdown for exit_timeout_secs
    finally:
        if saved is None:
            os.environ.pop("LD_LIBRARY_PATH", None)
        else:
            os.environ["LD_LIBRARY_PATH"] = saved


def standin_network(folder):
    """Make ``folder`` (the ``assd_network`` step) a Python-backend model with the same name, tensors and
    batching, running its ``1/model.onnx`` (tests/triton_network_standin.py)."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2 as pb

    config = text_format.Parse((folder / "config.pbtxt").read_text(), pb.ModelConfig())
    assert config.backend == "onnxruntime" and config.default_model_filename == "model.onnx"
    config.backend, config.default_model_filename = "python", ""
    del config.model_warmup[:]  # random-data warm-up: a GPU backend's concern
    config.instance_group[0].kind = pb.ModelInstanceGroup.Kind.KIND_CPU
    (folder / "config.pbtxt").write_text(text_format.MessageToString(config))
    shutil.copyfile(Path(__file__).parent / "triton_network_standin.py", folder / "1" / "model.py")


def _tensor(name, array, datatype):
    tensor = tritonclient_http.InferInput(name, list(array.shape), datatype)
    tensor.set_data_from_numpy(array)
    return tensor


def test_preprocess_and_postprocess_steps_give_the_direct_runners_results(python_steps, voc_mini_root):
    client, onnx_path, _ = python_steps
    runner = open_runner(str(onnx_path), device="cpu")
    paths = sorted((voc_mini_root / "VOCdevkit" / "VOC2012" / "JPEGImages").glob("*.jpg"))[:3]
    encoded = np.array([[path.read_bytes()] for path in paths], dtype=np.object_)  # one request, three images
    pre = client.infer("assd_preprocess", [_tensor("image_bytes", encoded, "BYTES")])
    pixels = [read_rgb_image(str(path)) for path in paths]
    np.testing.assert_array_equal(pre.as_numpy("images"), preprocess(pixels, runner.cfg).numpy())
    assert pre.as_numpy("image_size").tolist() == [list(image.shape[:2]) for image in pixels]

    loc, conf = runner.infer(torch.from_numpy(pre.as_numpy("images").copy()))
    post = client.infer("assd_postprocess", [_tensor("loc", loc.numpy(), "FP32"), _tensor("conf", conf.numpy(), "FP32"),
                                             _tensor("image_size", pre.as_numpy("image_size"), "INT32")])
    served = unpack_detections({name: post.as_numpy(name) for name in ("boxes", "scores", "classes", "count")})
    from assd.evaluation.predict import predict_images

    direct = predict_images(runner.infer, paths, runner.cfg, PostprocessConfig.from_dict(runner.postprocess),
                            batch_size=3)
    for mine, theirs in zip(served, direct, strict=True):
        assert len(mine) == len(theirs) > 0
        np.testing.assert_array_equal(mine.labels, theirs.labels)
        np.testing.assert_array_equal(mine.scores, theirs.scores)
        np.testing.assert_array_equal(mine.boxes, theirs.boxes)


def test_preprocess_step_answers_a_bad_image_alone(python_steps, voc_mini_root):
    client, _, _ = python_steps
    with pytest.raises(Exception) as refused:  # tritonclient's InferenceServerException
        client.infer("assd_preprocess", [_tensor("image_bytes", np.array([[b"not an image"]], np.object_), "BYTES")])
    assert "cannot decode" in error_message(refused.value)
    good = next((voc_mini_root / "VOCdevkit" / "VOC2012" / "JPEGImages").glob("*.jpg")).read_bytes()
    result = client.infer("assd_preprocess", [_tensor("image_bytes", np.array([[good]], np.object_), "BYTES")])
    assert result.as_numpy("images").shape == (1, 3, 128, 128)


def test_the_ensemble_runs_in_tritonserver_with_a_stand_in_network(python_steps, voc_mini_root):
    """The repository's ensemble itself (Triton's ensemble scheduler, the two Python steps as written, the
    network step's config with a Python stand-in running its model.onnx): concurrent requests, one of them
    not an image, give the direct runner's detections and one error."""
    from concurrent.futures import ThreadPoolExecutor

    from assd.evaluation.predict import predict_images

    _, onnx_path, endpoint = python_steps
    runner = open_runner(str(onnx_path), device="cpu")
    paths = sorted((voc_mini_root / "VOCdevkit" / "VOC2012" / "JPEGImages").glob("*.jpg"))[:4]
    direct = predict_images(runner.infer, paths, runner.cfg, PostprocessConfig.from_dict(runner.postprocess),
                            batch_size=1)
    payloads = [path.read_bytes() for path in paths] + [b"not an image"]

    def ask(data):
        http = tritonclient_http.InferenceServerClient(endpoint)
        try:
            result = http.infer("assd", [_tensor("image_bytes", np.array([[data]], np.object_), "BYTES")])
            return unpack_detections({name: result.as_numpy(name) for name in ("boxes", "scores", "classes", "count")})[0]
        except Exception as exc:  # noqa: BLE001 - the refusal is checked below
            return error_message(exc)
        finally:
            http.close()

    with ThreadPoolExecutor(len(payloads)) as pool:
        *served, refused = pool.map(ask, payloads)
    assert "cannot decode" in refused
    for mine, theirs in zip(served, direct, strict=True):
        assert len(mine) == len(theirs) > 0
        np.testing.assert_array_equal(mine.labels, theirs.labels)
        np.testing.assert_allclose(mine.scores, theirs.scores, rtol=0, atol=1e-6)
        np.testing.assert_allclose(mine.boxes, theirs.boxes, rtol=0, atol=1e-3)
