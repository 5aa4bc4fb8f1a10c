"""``assd export --triton REPO ARTIFACT``: a native Triton model repository for production GPU servers.

    REPO/<name>/               ensemble (what clients call): image_bytes BYTES [1] -> boxes, scores,
                               classes, count (``protocol.py``, the outputs of ``assd serve``)
    REPO/<name>_preprocess/    Python backend: decode + ``assd.runtime.preprocess`` -> images, image_size
    REPO/<name>_network/       ``tensorrt_plan`` (1/model.plan, the engine's sidecar beside it as
                               1/model.plan.json) or ``onnxruntime`` (1/model.onnx): images -> loc, conf
    REPO/<name>_postprocess/   Python backend: ``assd.runtime.postprocess.detect`` -> padded pixel boxes

Every ``config.pbtxt`` carries the run's id, checked when Triton loads a Python step
(``assd.serving.repository_set``). Every ``config.pbtxt`` is built as Triton's own ``ModelConfig`` protobuf (``tritonclient.grpc.
model_config_pb2``) and written in its text format. The network gets ``max_batch_size`` = the engine's
profile maximum (``--max-batch`` for a dynamic ONNX file), dynamic batching, one GPU instance, warm-up
at batch 1 and at the maximum, and for TensorRT CUDA graphs captured at those batch sizes. The Python
models need assd installed in the server's Python (see docs/serving.md).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from assd.errors import UserError
from assd.models.config import ModelConfig
from assd.paths import temp_dir_beside
from assd.remote.protocol import INPUT_ENCODED, OUTPUTS, check_serving_options
from assd.runtime.postprocess import PostprocessConfig
from assd.serving.environment import require_serve_extra
from assd.serving.repository_set import new_repository_run, sha256_of, stamp_configs

PYTHON_MODELS = Path(__file__).parent / "triton_python"
QUEUE_DELAY_US = 2000


@dataclass(frozen=True)
class NetworkArtifact:
    """What the repository needs to know about the network file."""

    path: Path
    kind: str  # "onnx" or "engine"
    cfg: ModelConfig
    postprocess: PostprocessConfig
    max_batch: int
    precision: str

    @property
    def num_anchors(self) -> int:
        from assd.models.assd import priors_for

        return int(priors_for(self.cfg).shape[0])

    @property
    def rows(self) -> int:
        """Detection rows per image in the padded outputs (the per-image cap, or top_k per class without one)."""
        return self.postprocess.max_per_image(self.cfg.num_classes)

    def shapes(self) -> dict[str, list[int]]:
        """Per-image shapes (no batch dimension) of the network's tensors, all float32 (assd's I/O contract)."""
        size = self.cfg.input_size
        return {"images": [3, size, size], "loc": [self.num_anchors, 4],
                "conf": [self.num_anchors, self.cfg.num_classes]}


def inspect_artifact(artifact: str, max_batch: int) -> NetworkArtifact:
    """The network of ``artifact`` (``.onnx`` or ``.engine``); UserError for what Triton could not batch."""
    path = Path(artifact)
    suffix = path.suffix.lower()
    if suffix == ".onnx":
        from assd.runtime.metadata import read_metadata

        metadata = read_metadata(path)
        if metadata.outputs != "raw":
            raise UserError(f"{path}: exported --with-postprocess; the repository's post-processing step needs the "
                            "raw (loc, conf) outputs: export without --with-postprocess")
        if metadata.fixed_batch is not None:
            raise UserError(f"{path}: has a fixed batch of {metadata.fixed_batch}; Triton's dynamic batcher sends any "
                            "batch from 1 up: export with --batch dynamic")
        from onnx.external_data_helper import uses_external_data

        from assd.runtime.metadata import load_onnx

        if any(uses_external_data(tensor) for tensor in load_onnx(path, load_weights=False).graph.initializer):
            raise UserError(f"{path}: keeps its weights in external data files; the repository takes one "
                            "self-contained .onnx file: re-export it with 'assd export --onnx'")
        return NetworkArtifact(path, "onnx", metadata.model_config, PostprocessConfig.from_dict(metadata.postprocess),
                               max_batch, metadata.precision)
    if suffix in (".engine", ".plan", ".trt"):
        from assd.runtime.engine_info import read_engine_info

        info = read_engine_info(path)
        if info.outputs != "raw":
            raise UserError(f"{path}: built from a --with-postprocess graph: build the engine from a raw export")
        if info.batch_min > 1:
            raise UserError(f"{path}: its optimization profile starts at batch {info.batch_min}; Triton sends batches "
                            "from 1: rebuild it with a minimum batch of 1")
        return NetworkArtifact(path, "engine", info.config, PostprocessConfig.from_dict(info.postprocess),
                               info.batch_max, info.precision)
    raise UserError(f"{path}: a Triton repository is made from an .onnx or .engine file (checkpoints: "
                    "'assd export --onnx' first)")


def _tensor(pb, message, name: str, data_type: str, dims: list[int]):
    tensor = message.add(name=name, data_type=pb.DataType.Value(data_type))
    tensor.dims.extend(dims)
    return tensor


def _string_parameter(config, key: str, value: str) -> None:
    config.parameters[key].string_value = value


def network_config(pb, name: str, network: NetworkArtifact):
    """``<name>_network``: the ONNX file or engine with dynamic batching, warm-up and (TensorRT) CUDA graphs."""
    shapes = network.shapes()
    config = pb.ModelConfig(name=f"{name}_network", max_batch_size=network.max_batch)
    if network.kind == "engine":
        config.platform, config.default_model_filename = "tensorrt_plan", "model.plan"
    else:
        config.backend, config.default_model_filename = "onnxruntime", "model.onnx"
    _tensor(pb, config.input, "images", "TYPE_FP32", shapes["images"])
    for output in ("loc", "conf"):
        _tensor(pb, config.output, output, "TYPE_FP32", shapes[output])
    config.dynamic_batching.max_queue_delay_microseconds = QUEUE_DELAY_US
    config.instance_group.add(count=1, kind=pb.ModelInstanceGroup.Kind.KIND_GPU)
    batch_sizes = sorted({1, network.max_batch})
    for batch in batch_sizes:
        warmup = config.model_warmup.add(name=f"random_batch_{batch}", batch_size=batch, count=1)
        warmup.inputs["images"].data_type = pb.DataType.Value("TYPE_FP32")
        warmup.inputs["images"].dims.extend(shapes["images"])
        warmup.inputs["images"].random_data = True
    if network.kind == "engine":
        config.optimization.cuda.graphs = True
        for batch in batch_sizes:
            spec = config.optimization.cuda.graph_spec.add(batch_size=batch)
            spec.input["images"].dim.extend(shapes["images"])
    return config


def python_config(pb, name: str, step: str, network: NetworkArtifact):
    """``<name>_preprocess`` / ``<name>_postprocess``: Python-backend models configured by their parameters."""
    config = pb.ModelConfig(name=f"{name}_{step}", backend="python", max_batch_size=network.max_batch)
    shapes, rows = network.shapes(), network.rows
    if step == "preprocess":
        _tensor(pb, config.input, INPUT_ENCODED, "TYPE_STRING", [1])
        _tensor(pb, config.output, "images", "TYPE_FP32", shapes["images"])
        _tensor(pb, config.output, "image_size", "TYPE_INT32", [2])
    else:
        for tensor in ("loc", "conf"):
            _tensor(pb, config.input, tensor, "TYPE_FP32", shapes[tensor])
        _tensor(pb, config.input, "image_size", "TYPE_INT32", [2])
        _detection_outputs(pb, config.output, rows)
        _string_parameter(config, "assd_postprocess", json.dumps(network.postprocess.to_dict()))
    _string_parameter(config, "assd_model_config", network.cfg.to_json())
    config.dynamic_batching.max_queue_delay_microseconds = QUEUE_DELAY_US
    config.instance_group.add(count=1, kind=pb.ModelInstanceGroup.Kind.KIND_CPU)
    return config


def _detection_outputs(pb, message, rows: int) -> None:
    dims = {"boxes": [rows, 4], "scores": [rows], "classes": [rows], "count": [1]}
    types = {"boxes": "TYPE_FP32", "scores": "TYPE_FP32", "classes": "TYPE_INT64", "count": "TYPE_INT64"}
    for output in OUTPUTS:
        _tensor(pb, message, output, types[output], dims[output])


def ensemble_config(pb, name: str, network: NetworkArtifact):
    """``<name>``: image bytes -> preprocess -> network -> postprocess -> detections."""
    config = pb.ModelConfig(name=name, platform="ensemble", max_batch_size=network.max_batch)
    _tensor(pb, config.input, INPUT_ENCODED, "TYPE_STRING", [1])
    _detection_outputs(pb, config.output, network.rows)
    steps = [(f"{name}_preprocess", {INPUT_ENCODED: INPUT_ENCODED}, {"images": "images", "image_size": "image_size"}),
             (f"{name}_network", {"images": "images"}, {"loc": "loc", "conf": "conf"}),
             (f"{name}_postprocess", {"loc": "loc", "conf": "conf", "image_size": "image_size"},
              {output: output for output in OUTPUTS})]
    for model_name, input_map, output_map in steps:
        step = config.ensemble_scheduling.step.add(model_name=model_name, model_version=-1)
        step.input_map.update(input_map)
        step.output_map.update(output_map)
    return config


def repository_configs(name: str, network: NetworkArtifact) -> dict[str, object]:
    """``{model folder: ModelConfig protobuf}`` of the whole repository."""
    require_serve_extra("assd export --triton")
    from tritonclient.grpc import model_config_pb2 as pb

    return {name: ensemble_config(pb, name, network), f"{name}_preprocess": python_config(pb, name, "preprocess", network),
            f"{name}_network": network_config(pb, name, network),
            f"{name}_postprocess": python_config(pb, name, "postprocess", network)}


def write_repository(repo: str, artifact: str, max_batch: int = 8, name: str = "assd",
                     echo: Callable[[str], None] = print) -> Path:
    """Write the repository for ``artifact`` into the new (or empty) folder ``repo``, atomically."""
    from google.protobuf import text_format

    repo_path = Path(repo)
    if repo_path.exists() and (not repo_path.is_dir() or any(repo_path.iterdir())):
        raise UserError(f"{repo_path}: exists and is not an empty folder: choose a new folder for the repository")
    check_serving_options(name, max_batch)
    network = inspect_artifact(artifact, max_batch)
    configs = repository_configs(name, network)
    stamp_configs(configs, name, new_repository_run(), sha256_of(network.path))  # one set (repository_set.py)
    repo_path.parent.mkdir(parents=True, exist_ok=True)
    try:
        staging = temp_dir_beside(repo_path)  # stale ones of killed runs removed first
    except OSError as exc:
        raise UserError(f"{repo_path}: cannot write there ({exc.strerror}): choose another folder") from None
    try:
        for folder, config in configs.items():
            (staging / folder / "1").mkdir(parents=True)
            (staging / folder / "config.pbtxt").write_text(text_format.MessageToString(config))
        _copy_network(network, staging / f"{name}_network" / "1")
        for step in ("preprocess", "postprocess"):
            shutil.copyfile(PYTHON_MODELS / f"{step}_model.py", staging / f"{name}_{step}" / "1" / "model.py")
        if repo_path.exists():
            repo_path.rmdir()
        staging.rename(repo_path)
    except OSError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        raise UserError(f"{repo_path}: writing the repository failed ({exc.strerror}): check the disk and "
                        "permissions") from None
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    echo(f"wrote {repo_path}: ensemble '{name}' = {name}_preprocess -> {name}_network "
         f"[{'tensorrt_plan' if network.kind == 'engine' else 'onnxruntime'} {network.precision}, max batch "
         f"{network.max_batch}] -> {name}_postprocess")
    return repo_path


def _copy_network(network: NetworkArtifact, version_dir: Path) -> None:
    if network.kind == "onnx":
        shutil.copyfile(network.path, version_dir / "model.onnx")
        return
    from assd.runtime.engine_info import sidecar_path

    shutil.copyfile(network.path, version_dir / "model.plan")  # the plan stays plain: no header, no metadata
    shutil.copyfile(sidecar_path(network.path), version_dir / "model.plan.json")
