"""Serving without a server: the request/response contract, URLs and loopback rules, the stub's library
path, the Triton repository (every config.pbtxt parsed by Triton's own protobuf and checked against
the artifact), and the one-line refusals of bad input."""

from __future__ import annotations

import dataclasses
import json
import os
import sys

import cv2
import numpy as np
import onnx
import pytest
import torch

from assd.errors import UserError
from assd.export import export_onnx
from assd.models import build_model
from assd.models.assd import priors_for
from assd.models.presets import get_config
from assd.remote import protocol
from assd.remote.client import is_server_url, parse_server_url
from assd.runtime.postprocess import Detections, PostprocessConfig
from assd.serving.environment import free_port, is_loopback, python_library_dir, stub_library_path


def refusal(capsys, *args) -> str:
    """The one-line error of ``assd ARGS`` run in this process (exit 2 expected)."""
    from assd.cli import main

    with pytest.raises(SystemExit) as exited:
        main(list(args))
    stderr = capsys.readouterr().err
    assert exited.value.code == 2 and stderr.startswith("error: ") and len(stderr.strip().splitlines()) == 1, stderr
    return stderr


def test_decode_image_matches_reading_the_file(voc_mini_root):
    from assd.data.dataset import read_rgb_image

    path = next((voc_mini_root / "VOCdevkit" / "VOC2012" / "JPEGImages").glob("*.jpg"))
    decoded = protocol.decode_image(path.read_bytes())
    assert np.array_equal(decoded, read_rgb_image(str(path)))  # the server sees what assd eval sees


def test_bad_images_are_refused_with_one_line():
    for data, needle in [(b"", "0 bytes"), (b"<html>not an image</html>", "cannot decode"),
                         (b"\0" * (protocol.MAX_ENCODED_BYTES + 1), "MiB of encoded data")]:
        with pytest.raises(protocol.BadRequest, match=needle):
            protocol.decode_image(data)
    with pytest.raises(protocol.BadRequest, match="uint8"):
        protocol.check_pixels(np.zeros((4, 4, 4), np.uint8))
    with pytest.raises(protocol.BadRequest, match="exactly one"):
        protocol.request_images({})


def test_request_images_accepts_bytes_and_pixels():
    pixels = np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    png = cv2.imencode(".png", pixels[:, :, ::-1])[1].tobytes()  # PNG is lossless: same pixels back
    from_bytes = protocol.request_images({protocol.INPUT_ENCODED: np.array([[png], [png]], dtype=np.object_)})
    from_pixels = protocol.request_images({protocol.INPUT_PIXELS: pixels[None]})
    assert len(from_bytes) == 2 and len(from_pixels) == 1
    assert np.array_equal(from_bytes[1], pixels) and np.array_equal(from_pixels[0], pixels)


def test_request_parameters_override_thresholds_within_bounds():
    default = PostprocessConfig()
    assert protocol.request_postprocess(None, default, 200, 21) is default
    assert protocol.request_postprocess({"binary_data_output": True}, default, 200, 21) is default  # Triton's own
    cfg = protocol.request_postprocess({"score_threshold": "0.3", "max_detections": 50}, default, 200, 21)
    assert cfg.score_threshold == 0.3 and cfg.max_detections == 50 and cfg.nms_iou == default.nms_iou
    for parameters, needle in [({"max_detections": 300}, "at most 200"), ({"nms_iou": 2.0}, "NMS IoU"),
                               ({"top_k": "many"}, "request parameters")]:
        with pytest.raises(protocol.BadRequest, match=needle):
            protocol.request_postprocess(parameters, default, 200, 21)


def test_pack_and_unpack_are_inverse():
    dets = [Detections(np.array([[1, 2, 30, 40], [5, 6, 7, 8]], np.float32), np.array([0.9, 0.5], np.float32),
                       np.array([3, 1])), Detections.empty()]
    packed = protocol.pack_detections(dets, rows=5)
    assert packed["boxes"].shape == (2, 5, 4) and packed["classes"].dtype == np.int64
    assert packed["count"].tolist() == [[2], [0]] and packed["scores"][0, 2:].tolist() == [0, 0, 0]
    back = protocol.unpack_detections(packed)
    assert len(back[1]) == 0 and np.array_equal(back[0].boxes, dets[0].boxes)
    assert np.array_equal(back[0].labels, dets[0].labels) and np.array_equal(back[0].scores, dets[0].scores)


def test_detect_in_pixels_groups_thresholds_and_scales_per_image():
    cfg = dataclasses.replace(get_config("assd-mini", class_names=["a", "b"]), input_size=128)
    priors = priors_for(cfg)
    generator = torch.Generator().manual_seed(0)
    loc = torch.randn(3, priors.shape[0], 4, generator=generator) * 0.1
    conf = torch.randn(3, priors.shape[0], 3, generator=generator)
    strict, loose = PostprocessConfig(score_threshold=0.5, max_detections=20), PostprocessConfig()
    sizes = [(100, 200), (50, 60), (100, 200)]
    mixed = protocol.detect_in_pixels(loc, conf, sizes, cfg, [loose, strict, loose], priors)
    from assd.runtime.postprocess import detect

    for index, cfg_used in [(0, loose), (1, strict), (2, loose)]:
        height, width = sizes[index]
        alone = detect(loc[index:index + 1], conf[index:index + 1], cfg, cfg_used, priors)[0].to_pixels(width, height)
        assert np.array_equal(mixed[index].boxes, alone.boxes) and np.array_equal(mixed[index].scores, alone.scores)
    assert len(mixed[1]) == 20 and len(mixed[0]) == len(mixed[2]) == 200 and mixed[1].scores.min() > 0.5
    assert mixed[0].boxes[:, 2].max() <= 200 and mixed[0].boxes[:, 3].max() <= 100 < mixed[0].boxes[:, 2].max()


def test_server_urls_take_any_host():
    assert parse_server_url("http://127.0.0.1:8000/assd").endpoint == "127.0.0.1:8000"
    grpc = parse_server_url("grpc://localhost:8001")
    assert (grpc.protocol, grpc.model, grpc.transport, grpc.tls) == ("grpc", "assd", "grpc", False)
    assert parse_server_url("http://[::1]:8000/m").host == "[::1]"
    remote = parse_server_url("grpcs://detector.example.com:443/assd")  # parsed only: nothing is sent
    assert (remote.host, remote.transport, remote.tls) == ("detector.example.com", "grpc", True)
    assert parse_server_url("http://10.1.2.3:8000/assd").endpoint == "10.1.2.3:8000"
    assert is_server_url("http://x:1/m") and is_server_url("grpcs://x:1/m") and not is_server_url("model.onnx")
    assert is_loopback("127.0.0.2") and is_loopback("::1") and not is_loopback("10.0.0.1")
    assert not is_loopback("example.com")  # names other than localhost are never resolved
    for url, needle in [("ftp://127.0.0.1:1/a", "not a server URL"), ("http://127.0.0.1/assd", "not a server URL"),
                        ("http://127.0.0.1:99999/assd", "not in 1..65535")]:
        with pytest.raises(UserError, match=needle):
            parse_server_url(url)


def test_stub_library_path_puts_this_interpreters_libpython_first():
    library_dir = python_library_dir()
    if library_dir is None:
        assert stub_library_path("/a") == "/a"  # a static interpreter: nothing to add
        return
    assert os.path.exists(os.path.join(library_dir, f"libpython{sys.version_info[0]}.{sys.version_info[1]}.so.1.0"))
    assert stub_library_path(None) == library_dir
    assert stub_library_path(f"/x:{library_dir}:/y") == f"{library_dir}:/x:/y"


@pytest.fixture(scope="module")
def small_onnx(tmp_path_factory):
    cfg = dataclasses.replace(get_config("assd-mini", class_names=["cat", "dog"]), input_size=128)
    path = tmp_path_factory.mktemp("serving") / "small.onnx"
    export_onnx(build_model(cfg).eval(), path)
    return path


def _parse(path):
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


def _dims(tensors):
    from tritonclient.grpc import model_config_pb2

    return {t.name: (model_config_pb2.DataType.Name(t.data_type), list(t.dims)) for t in tensors}


def test_triton_repository_configs_match_the_onnx_artifact(small_onnx, tmp_path):
    pytest.importorskip("tritonclient.grpc", reason="the serve extra is not installed (pip install -e '.[serve]')")
    from assd.serving.repository import write_repository

    repo = write_repository(tmp_path / "repo", str(small_onnx), max_batch=4, echo=lambda _: None)
    graph = onnx.load(str(small_onnx), load_external_data=False).graph
    onnx_shapes = {v.name: ([d.dim_value for d in v.type.tensor_type.shape.dim][1:], v.type.tensor_type.elem_type)
                   for v in [*graph.input, *graph.output]}
    configs = {folder.name: _parse(folder / "config.pbtxt") for folder in repo.iterdir()}
    assert set(configs) == {"assd", "assd_preprocess", "assd_network", "assd_postprocess"}
    assert all(config.name == name and config.max_batch_size == 4 for name, config in configs.items())
    network = configs["assd_network"]
    assert network.backend == "onnxruntime" and (repo / "assd_network" / "1" / "model.onnx").is_file()
    for name, (dtype, dims) in {**_dims(network.input), **_dims(network.output)}.items():
        assert dims == onnx_shapes[name][0] and (dtype, onnx_shapes[name][1]) == ("TYPE_FP32", onnx.TensorProto.FLOAT)
    assert network.dynamic_batching.max_queue_delay_microseconds > 0 and network.instance_group[0].count == 1
    assert [w.batch_size for w in network.model_warmup] == [1, 4]
    assert not network.optimization.cuda.graphs  # CUDA graphs are TensorRT's
    # The ensemble's steps are wired tensor to tensor with the shapes and types each step declares.
    ensemble = configs["assd"]
    produced = _dims(ensemble.input)
    for step in ensemble.ensemble_scheduling.step:
        model = configs[step.model_name]
        inputs, outputs = _dims(model.input), _dims(model.output)
        assert all(produced[outer] == inputs[inner] for inner, outer in step.input_map.items())
        produced.update({outer: outputs[inner] for inner, outer in step.output_map.items()})
    assert {name: produced[name] for name in protocol.OUTPUTS} == _dims(ensemble.output)
    assert _dims(ensemble.output)["boxes"] == ("TYPE_FP32", [200, 4])
    post = configs["assd_postprocess"]
    assert json.loads(post.parameters["assd_model_config"].string_value)["class_names"] == ["cat", "dog"]
    assert (repo / "assd_postprocess" / "1" / "model.py").read_text().startswith('"""``<name>_postprocess``')


def test_triton_repository_of_a_model_without_a_per_image_cap(tmp_path):
    """An artifact with max_detections None (the ``assd513-authors`` convention) gets top_k x foreground
    classes rows in every detection output (TypeError / a config without dims before)."""
    pytest.importorskip("tritonclient.grpc", reason="the serve extra is not installed (pip install -e '.[serve]')")
    from assd.serving.repository import write_repository

    cfg = dataclasses.replace(get_config("assd-mini", class_names=["cat", "dog"]), input_size=128)
    export_onnx(build_model(cfg).eval(), tmp_path / "uncapped.onnx", postprocess={"top_k": 30, "max_detections": None})
    repo = write_repository(tmp_path / "repo", str(tmp_path / "uncapped.onnx"), max_batch=2, echo=lambda _: None)
    for model in ("assd", "assd_postprocess"):
        assert _dims(_parse(repo / model / "config.pbtxt").output)["boxes"] == ("TYPE_FP32", [60, 4])


def test_triton_repository_for_an_engine_keeps_the_plan_plain(small_onnx, tmp_path):
    """No TensorRT needed: the repository copies the plan and reads its sidecar."""
    pytest.importorskip("tritonclient.grpc", reason="the serve extra is not installed (pip install -e '.[serve]')")
    from assd.runtime.engine_info import SIDECAR_VERSION
    from assd.runtime.metadata import read_metadata
    from assd.serving.repository import write_repository

    metadata = read_metadata(small_onnx)
    engine = tmp_path / "small.engine"
    engine.write_bytes(b"plan bytes as TensorRT serialized them")
    sidecar = {"format": "assd-engine", "version": SIDECAR_VERSION, "tensorrt_version": "10.3.0", "gpu_name": "GPU",
               "compute_capability": "8.9", "precision": "fp16", "input_shape": [3, 128, 128], "batch_min": 1,
               "batch_opt": 4, "batch_max": 16, "onnx_sha256": "0" * 64, "onnx_file": "small.onnx",
               "model_config": metadata.model_config.to_dict(), "postprocess": metadata.postprocess}
    (tmp_path / "small.engine.json").write_text(json.dumps(sidecar))
    repo = write_repository(tmp_path / "repo", str(engine), max_batch=2, echo=lambda _: None)
    network = _parse(repo / "assd_network" / "config.pbtxt")
    assert network.platform == "tensorrt_plan" and network.max_batch_size == 16  # the profile's max, not --max-batch
    assert _dims(network.input)["images"] == ("TYPE_FP32", sidecar["input_shape"])
    assert network.optimization.cuda.graphs and [g.batch_size for g in network.optimization.cuda.graph_spec] == [1, 16]
    assert (repo / "assd_network" / "1" / "model.plan").read_bytes() == engine.read_bytes()
    assert (repo / "assd_network" / "1" / "model.plan.json").read_bytes() == (tmp_path / "small.engine.json").read_bytes()
    sidecar["batch_min"] = 2
    (tmp_path / "small.engine.json").write_text(json.dumps(sidecar))
    with pytest.raises(UserError, match="starts at batch 2"):
        write_repository(tmp_path / "repo2", str(engine), echo=lambda _: None)


def test_export_triton_cli_refuses_bad_input(small_onnx, tmp_path, capsys):
    fixed = tmp_path / "fixed.onnx"
    export_onnx(build_model(dataclasses.replace(get_config("assd-mini"), input_size=128)).eval(), fixed, batch=2)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    for args, needle in [((str(fixed),), "fixed batch of 2"), (("model.pt",), "from an .onnx or .engine"),
                         ((str(small_onnx), "--max-batch", "0"), "--max-batch 0"),
                         ((str(small_onnx), "--max-batch", "100000000"), "must be in 1..1024"),
                         ((str(small_onnx), "--onnx"), "give no --onnx")]:
        assert needle in refusal(capsys, "export", "--triton", str(tmp_path / "repo"), *args)
    assert "not an empty folder" in refusal(capsys, "export", "--triton", str(tmp_path / "full"), str(small_onnx))
    assert not (tmp_path / "repo").exists() and [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_serving_commands_refuse_bad_options(small_onnx, capsys):
    cases = [(("serve", str(small_onnx), "--http-port", "9000", "--grpc-port", "9000"), "must differ"),
             (("serve", str(small_onnx), "--api-key", "a:b"), "without spaces"),
             (("serve", str(small_onnx), "--api-key", "k", "--api-key-file", "f"), "not both"),
             (("serve", str(small_onnx), "--api-key-file", "/nonexistent/key"), "cannot read it"),
             (("serve", str(small_onnx), "--grpc-ssl-cert", str(small_onnx)), "both --grpc-ssl-cert and --grpc-ssl-key"),
             (("serve", str(small_onnx), "--grpc-ssl-cert", str(small_onnx), "--grpc-ssl-key", str(small_onnx)),
              "not a PEM file"),
             (("serve", str(small_onnx), "--instances", "0"), "--instances 0"),
             (("serve", str(small_onnx), "--instances", "100000"), "--instances 100000"),
             (("serve", str(small_onnx), "--max-batch", "5000"), "must be in 1..1024"),
             (("serve", str(small_onnx), "--model-name", "a/b"), "model name 'a/b'"),
             (("bench", "--server", "http://127.0.0.1:8000/assd", "--timeout", "0"), "--timeout 0"),
             (("bench", "--server", "http://127.0.0.1:8000/assd", "--requests", "5", "--seconds", "2"), "not both"),
             (("bench", "--server", "http://127.0.0.1:8000/assd", "--concurrency", "0"), "--concurrency 0"),
             (("bench", "--server", "http://127.0.0.1:8000/assd", "model.onnx"), "give no ARTIFACTS"),
             ]
    try:
        import tritonclient.http  # noqa: F401 - the serve extra: a client can try to connect
        cases.append((("bench", "--server", f"http://127.0.0.1:{free_port()}/assd", "--requests", "1"),
                      "no Triton server answers"))
        detections_onnx = small_onnx.parent / "detections.onnx"
        export_onnx(build_model(dataclasses.replace(get_config("assd-mini"), input_size=128)).eval(),
                    detections_onnx, with_postprocess=True)
        ports = [arg for option in ("--http-port", "--grpc-port", "--metrics-port") for arg in (option, str(free_port()))]
        cases.append((("serve", str(detections_onnx), *ports), "serve an export without --with-postprocess"))
    except ImportError:
        cases.append((("bench", "--server", "http://127.0.0.1:8000/assd"), "pip install -e '.[serve]'"))
    for args, needle in cases:
        assert needle in refusal(capsys, *args), args


def test_detector_callable_pads_fixed_batches_and_answers_per_request(tmp_path, voc_mini_root):
    """The callable each model instance of ``assd serve`` runs, called with a batch of requests, without a server."""
    from assd.data.dataset import read_rgb_image
    from assd.evaluation.predict import predict_images
    from assd.runtime.runners import open_runner
    from assd.serving.served import DetectorCallable, ServedRequest

    model = build_model(dataclasses.replace(get_config("assd-mini"), input_size=128)).eval()
    export_onnx(model, tmp_path / "fixed2.onnx", batch=2)
    export_onnx(model, tmp_path / "dynamic.onnx")
    runner, dynamic = open_runner(str(tmp_path / "fixed2.onnx"), device="cpu"), open_runner(str(tmp_path / "dynamic.onnx"))
    pp_cfg = PostprocessConfig.from_dict(runner.postprocess)
    callable_ = DetectorCallable(runner, pp_cfg, rows=pp_cfg.max_detections, info_json='{"format": "x"}')
    path = next((voc_mini_root / "VOCdevkit" / "VOC2012" / "JPEGImages").glob("*.jpg"))
    request = ServedRequest({protocol.INPUT_ENCODED: np.array([[path.read_bytes()]], np.object_)},
                            requested_output_names=(*protocol.OUTPUTS, protocol.OUTPUT_INFO))
    [response] = callable_([request])  # one image into a batch-2 network: padded
    direct = predict_images(dynamic.infer, [path], runner.cfg, pp_cfg, batch_size=1)[0]
    served = protocol.unpack_detections(response)[0]
    assert np.array_equal(served.labels, direct.labels)  # the two graphs differ in the last bits only
    np.testing.assert_allclose(served.boxes, direct.boxes, rtol=0, atol=1e-3)
    np.testing.assert_allclose(served.scores, direct.scores, rtol=0, atol=1e-5)
    assert response[protocol.OUTPUT_INFO].tolist() == [[b'{"format": "x"}']]
    quiet = ServedRequest({protocol.INPUT_PIXELS: read_rgb_image(str(path))[None]}, parameters={"max_detections": 5},
                          requested_output_names=protocol.OUTPUTS)
    bad = ServedRequest({protocol.INPUT_ENCODED: np.array([[b"nope"]], np.object_)})
    bad_threshold = ServedRequest({protocol.INPUT_PIXELS: read_rgb_image(str(path))[None]},
                                  parameters={"score_threshold": "high"})
    [response] = callable_([quiet])
    assert response["count"].tolist() == [[5]] and protocol.OUTPUT_INFO not in response
    first, refused, second, refused_too = callable_([quiet, bad, request, bad_threshold])  # one batch
    assert isinstance(refused, protocol.BadRequest) and str(refused).startswith("image 0: 4 bytes")
    assert isinstance(refused_too, protocol.BadRequest) and "score_threshold" in str(refused_too)
    assert first["count"].tolist() == [[5]]
    assert all(np.array_equal(second[name], response_alone) for name, response_alone in
               callable_([request])[0].items())
    assert callable_([bad])[0].args == refused.args  # nothing to run: no network call


def test_request_parameters_of_a_model_without_a_per_image_cap():
    """``assd513-authors`` keeps top_k per class and no per-image cap: rows = top_k x foreground classes."""
    default = PostprocessConfig(top_k=10, max_detections=None)
    rows = default.max_per_image(21)
    assert rows == 200
    assert protocol.request_postprocess({"top_k": 5}, default, rows, 21).top_k == 5
    assert protocol.request_postprocess({"max_detections": 50}, default, rows, 21).max_detections == 50
    with pytest.raises(protocol.BadRequest, match="at most 200"):
        protocol.request_postprocess({"top_k": 11}, default, rows, 21)


def test_a_url_that_is_not_an_assd_model_is_one_line():
    from assd.remote.client import ServedModel, parse_server_url

    address = parse_server_url("http://127.0.0.1:8000/assd", "--model")
    for text in ["not json", '{"format": "other"}', '{"format": "assd-served-model"}', "[]"]:
        with pytest.raises(UserError, match="not a model served by 'assd serve'"):
            ServedModel.from_json(text, address)
