"""Hostile and careless input through the real CLI (issue 11): every case exits 2 with exactly one line on
stderr, no traceback, and leaves every file as it was (each file under the artifacts folder and the case's
own folder is hashed before and after; the case's TMPDIR is inside its folder, so a leftover temp
folder counts as a change).

Read-only folders and full disks are real: the CLI runs inside a private mount namespace
(``unshare -Urm``: works for root and, where user namespaces are enabled, for ordinary users) on a
read-only bind mount or a tiny tmpfs, and lists that folder afterwards from inside (no partial or temp
file may remain). Where ``unshare`` is not available these cases skip; tests/test_paths.py covers the
same conversions in-process with monkeypatched writes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import resource
import shlex
import shutil
import stat
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from onnx import TensorProto, helper

from assd.data.synthetic import SYNTHETIC_CLASSES
from assd.export import export_onnx
from assd.models import ASSD, feature_sizes, get_config
from assd.models.checkpoint import checkpoint_dict, save_checkpoint
from assd.runtime.metadata import OnnxMetadata, set_metadata
from assd.runtime.postprocess import PostprocessConfig

REPO_ROOT = Path(__file__).resolve().parents[1]
TINY_SIZE = 64  # assd-mini at 64 px: every map exists, the export is ~1 s
CASE_MEMORY_LIMIT = 4 << 30


def tiny_config():
    return dataclasses.replace(get_config("assd-mini", class_names=list(SYNTHETIC_CLASSES)), input_size=TINY_SIZE)


def write_photo(path: Path, seed: int, size=(120, 90)) -> None:
    rng = np.random.default_rng(seed)
    cv2.imwrite(str(path), rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))


def fake_assd_onnx(path: Path, cfg, *, batch: str = "dynamic", op: str = "Identity", conf_classes: int | None = None,
                   props: dict | None = None) -> None:
    """A tiny graph with the assd I/O contract (no weights) and our metadata, optionally damaged."""
    anchors = sum(h * w * n for (h, w), n in zip(feature_sizes(cfg), cfg.anchors_per_location))
    dim = "batch" if batch == "dynamic" else int(batch)
    classes = conf_classes or cfg.num_classes
    graph = helper.make_graph(
        [helper.make_node(op, ["images"], ["loc"]), helper.make_node(op, ["images"], ["conf"])], "fake",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [dim, 3, cfg.input_size, cfg.input_size])],
        [helper.make_tensor_value_info("loc", TensorProto.FLOAT, [dim, anchors, 4]),
         helper.make_tensor_value_info("conf", TensorProto.FLOAT, [dim, anchors, classes])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    set_metadata(model, OnnxMetadata(model_config=cfg, postprocess=PostprocessConfig().to_dict(), outputs="raw",
                                     precision="fp32", batch=batch, version="test"))
    for prop in model.metadata_props:
        if props and prop.key in props:
            prop.value = props[prop.key]
    path.write_bytes(model.SerializeToString())


def write_bad_checkpoint(path: Path, **config_changes) -> None:
    data = checkpoint_dict(ASSD(tiny_config()))
    data["model_config"].update(config_changes)
    data["model"] = {}
    torch.save(data, path)


@pytest.fixture(scope="module")
def art(tmp_path_factory) -> Path:
    """Every input the cases use, made once: tiny checkpoint and ONNX, photos, broken files."""
    folder = tmp_path_factory.mktemp("hostile")
    torch.manual_seed(0)
    model = ASSD(tiny_config()).eval()
    save_checkpoint(model, folder / "mini.pt")
    export_onnx(model, folder / "mini.onnx")
    (folder / "photos").mkdir()
    for index in range(2):
        write_photo(folder / "photos" / f"p{index}.jpg", index)
    (folder / "trunc").mkdir()
    data = (folder / "photos" / "p0.jpg").read_bytes()
    (folder / "trunc" / "t.jpg").write_bytes(data[: len(data) // 2])
    (folder / "coco" / "images").mkdir(parents=True)
    (folder / "coco" / "empty.json").write_text("{}")
    (folder / "coco" / "nocat.json").write_text(json.dumps({"images": [], "annotations": []}))
    (folder / "empty.onnx").write_bytes(b"")
    (folder / "garbage.onnx").write_bytes(b"\x08\x07this is not onnx" * 10)
    cfg = tiny_config()
    fake_assd_onnx(folder / "batch_abc.onnx", cfg, props={"assd.batch": "abc"})
    fake_assd_onnx(folder / "outputs_bad.onnx", cfg, props={"assd.outputs": "everything"})
    fake_assd_onnx(folder / "size_mismatch.onnx", dataclasses.replace(cfg, input_size=96),
                   props={"assd.model_config": cfg.to_json()})
    fake_assd_onnx(folder / "classes_mismatch.onnx", cfg, conf_classes=cfg.num_classes + 3)
    fake_assd_onnx(folder / "batch_mismatch.onnx", cfg, batch="4", props={"assd.batch": "2"})
    fake_assd_onnx(folder / "unknown_op.onnx", cfg, op="NoSuchOperator")
    write_bad_checkpoint(folder / "size_negative.pt", input_size=-5)
    write_bad_checkpoint(folder / "size_huge.pt", input_size=100000)
    (folder / "notadir.txt").write_text("a file, not a folder\n")
    (folder / "report.json").write_text(json.dumps({"format": "assd-bench", "rows": []}))
    (folder / "served.onnx").write_bytes((folder / "mini.onnx").read_bytes())  # what a server would serve
    (folder / "picture.onnx").write_bytes((folder / "photos" / "p1.jpg").read_bytes())  # the kind is its content
    trained = run_case(cli_command(["train", "--model", "assd-mini", "--data", "synthetic:4", "--out", str(folder / "run"),
                                    "--optimizer", "adamw", "--epochs", "1", "--max-steps", "1", "--batch-size", "2"]),
                       folder)  # an AdamW run to resume (one step)
    assert trained.returncode == 0, trained.stderr[-2000:]
    shutil.rmtree(folder / "tmp")
    write_damaged_state_dicts(folder)
    write_engines(folder / "eng")
    write_calibration_caches(folder / "cal", folder / "mini.onnx", folder / "photos")
    (folder / "coco" / "crowd.json").write_text(json.dumps({
        "images": [{"id": 1, "file_name": "a.jpg", "width": 120, "height": 90}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 10, 30, 30], "area": 900,
                         "iscrowd": "yes"}],
        "categories": [{"id": index + 1, "name": name} for index, name in enumerate(SYNTHETIC_CLASSES)]}))
    return folder


def write_damaged_state_dicts(folder: Path) -> None:
    """torchvision-style state_dicts damaged in two ways: a non-string key, NaN weights."""
    torch.save({"backbone.features.0.weight": torch.zeros(2), 7: torch.zeros(2)}, folder / "int_key.pth")
    torch.save({"backbone.features.0.weight": torch.tensor([1.0, float("nan")]),
                "backbone.features.0.bias": torch.zeros(2)}, folder / "nan_weights.pth")


def engine_sidecar(plan: bytes, **changes) -> dict:
    """A complete, valid sidecar of the tiny model for the engine bytes ``plan``, with ``changes``."""
    import hashlib

    from assd.runtime.engine_info import EngineInfo

    cfg = tiny_config()
    info = EngineInfo(tensorrt_version="10.16.1.11", gpu_name="NVIDIA H100", compute_capability="9.0",
                      precision="fp16", input_shape=[3, TINY_SIZE, TINY_SIZE], batch_min=1, batch_opt=8, batch_max=32,
                      onnx_sha256="0" * 64, onnx_file="mini.onnx", model_config=json.loads(cfg.to_json()),
                      postprocess=PostprocessConfig().to_dict(), class_names=list(cfg.class_names),
                      engine_sha256=hashlib.sha256(plan).hexdigest())
    return {**info.to_dict(), **changes}


def write_engines(folder: Path) -> None:
    """Engines whose sidecar is damaged, of another build, or whose file is empty (item 3)."""
    folder.mkdir()
    plan = b"ftrt a serialized plan"
    sidecars = {"list": [1, 2], "batch_text": engine_sidecar(plan, batch_max="32"),
                "thresholds_text": engine_sidecar(plan, postprocess={"score_threshold": "0.5", "nms_iou": 0.45}),
                "batch_huge": engine_sidecar(plan, batch_max=10**9),
                "other_build": engine_sidecar(b"the plan of another build"), "empty": engine_sidecar(b"")}
    for name, sidecar in sidecars.items():
        (folder / f"{name}.engine").write_bytes(b"" if name == "empty" else plan)
        (folder / f"{name}.engine.json").write_text(json.dumps(sidecar))


def write_calibration_caches(folder: Path, onnx_path: Path, photos: Path) -> None:
    """Caches that match ``onnx_path`` and calibrate's default settings, with damaged ranges (item 3)."""
    import onnx

    from assd.calibration.cache import save_cache, sha256_file
    from assd.calibration.cache_checks import quantized_inputs
    from assd.calibration.quantize import calibration_settings, excluded_node_names

    folder.mkdir()
    graph = onnx.load(str(onnx_path)).graph
    needed = quantized_inputs(graph, excluded_node_names(graph))
    settings = calibration_settings(500, str(photos), 99.999)
    damage = {"zero": lambda r: r.update(dict.fromkeys(r, (0.0, 0.0))),
              "nan": lambda r: r.update({needed[1]: (float("nan"), 1.0)}),
              "missing": lambda r: r.pop(needed[2]),
              "huge": lambda r: r.update(dict.fromkeys(r, (-1e30, 1e30)))}
    for name, change in damage.items():
        ranges = {method: dict.fromkeys(needed, (-4.0, 4.0)) for method in ("entropy", "percentile", "max")}
        change(ranges["entropy"])
        save_cache(folder / f"{name}.json", ranges, sha256_file(onnx_path), settings, 2)
    write_calibration_set(folder, tiny_config(), settings, needed)


def write_calibration_set(folder: Path, cfg, settings, needed: list[str]) -> None:
    """A quantized graph of calibration run aaaa... (``set.int8.onnx``) with a cache of its own run and one
    of another run (issue 25, item 2: calibrate's graph + cache)."""
    import onnx

    from assd.calibration.cache import save_cache
    from assd.calibration.run_set import CALIBRATION_RUN_KEY, mark_graph

    fake_assd_onnx(folder / "set.int8.onnx", cfg, props={"assd.precision": "int8"})
    graph = mark_graph(onnx.load(str(folder / "set.int8.onnx")), "aaaaaaaaaaaa", CALIBRATION_RUN_KEY)
    (folder / "set.int8.onnx").write_bytes(graph.SerializeToString())
    graph.ir_version = 99  # newer than any ONNX Runtime reads: build-engine's fp16 range audit cannot open it
    (folder / "future_ir.int8.onnx").write_bytes(graph.SerializeToString())
    ranges = {method: dict.fromkeys(needed, (-4.0, 4.0)) for method in ("entropy", "percentile", "max")}
    for name, run_id in (("same_run", "aaaaaaaaaaaa"), ("other_run", "bbbbbbbbbbbb")):
        save_cache(folder / f"{name}.json", ranges, "0" * 64, settings, 2, run_id)


_HASHES: dict[tuple, str] = {}  # (path, inode, size, mtime_ns, ctime_ns) -> sha256: a file is re-read when any moves


def _file_hash(path: Path) -> str:
    stat = path.stat()
    key = (str(path), stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns)
    if key not in _HASHES:
        _HASHES[key] = hashlib.sha256(path.read_bytes()).hexdigest()
    return _HASHES[key]


def snapshot(*roots: Path) -> dict[str, str]:
    """Every file (content hash) and folder under ``roots``, except ONNX Runtime's ``$TMPDIR/.ses`` (a
    session id it keeps in the temp folder of every machine; not ours, not the user's)."""
    state = {}
    for root in roots:
        for path in sorted(root.rglob("*")):
            if path.name == ".ses" and path.parent.name == "tmp":
                continue
            mode = path.lstat().st_mode
            if stat.S_ISLNK(mode):
                state[str(path)] = f"link to {os.readlink(path)}"
            elif stat.S_ISDIR(mode):
                state[str(path)] = "dir"
            else:  # a FIFO is recorded as one, never read (reading it would wait for a writer)
                state[str(path)] = _file_hash(path) if stat.S_ISREG(mode) else f"special {stat.S_IFMT(mode):o}"
    return state


def cli_command(args: list[str]) -> list[str]:
    return [sys.executable, "-m", "assd.cli", *args]


def _limit_memory() -> None:
    """A case that allocates what it should have refused fails with MemoryError instead of waking the
    OOM killer on a shared machine (heap and anonymous mappings only; libraries are not counted)."""
    resource.setrlimit(resource.RLIMIT_DATA, (CASE_MEMORY_LIMIT, CASE_MEMORY_LIMIT))


def run_case(command: list[str], cwd: Path) -> subprocess.CompletedProcess:
    tmp = cwd / "tmp"
    tmp.mkdir(exist_ok=True)
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "TMPDIR": str(tmp), "OMP_NUM_THREADS": "1"}
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=300, check=False,
                          preexec_fn=_limit_memory)


def assert_one_line_refusal(result: subprocess.CompletedProcess, expected: str) -> None:
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, f"exit {result.returncode}\nstdout: {result.stdout}\nstderr: {result.stderr}"
    assert "Traceback" not in result.stderr
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ") and expected in lines[0], lines[0]


# (id, arguments with {art} = the artifacts folder and {out} = the case's own folder, expected text)
CASES = [
    # Outputs landing on inputs (items 2, 4)
    ("bench-json-onto-model", "bench {art}/mini.onnx --json {art}/mini.onnx", "is an input of this command"),
    ("eval-json-onto-checkpoint", "eval --model {art}/mini.pt --data synthetic:2 --json {art}/mini.pt",
     "is an input of this command"),
    ("eval-json-onto-coco-annotations", ("eval --model {art}/mini.pt --data coco:{art}/coco/images:{art}/coco/nocat.json"
     " --json {art}/coco/nocat.json"), "is an input of this command"),
    ("eval-engine-json-onto-reference", ("eval-engine {art}/mini.onnx --data synthetic:2 --reference {art}/mini.pt "
     "--json {art}/mini.pt"), "is an input of this command"),
    ("export-output-symlink-to-checkpoint", "export --onnx {art}/mini.pt -o {out}/link.onnx",
     "is an input of this command"),
    ("predict-out-is-source-folder", "predict --model {art}/mini.pt {art}/photos --out {art}/photos",
     "is an input folder of this command"),
    ("attention-output-name-is-the-image", "attention --model {art}/mini.pt {out}/attention_grid.png --out {out}",
     "is an input of this command"),
    ("bench-two-outputs-one-file", "bench {art}/mini.onnx --csv {out}/r.txt --markdown {out}/r.txt",
     "is also the output of --csv"),
    ("bench-report-merged-onto-itself", "bench --report {art}/report.json --markdown {art}/report.json",
     "is an input of this command"),
    ("build-engine-timing-cache-onto-onnx", ("build-engine {art}/mini.onnx -o {out}/m.engine "
     "--timing-cache {art}/mini.onnx"), "is an input of this command"),
    # Outputs that cannot be written, refused before the work (item 7)
    ("eval-json-parent-is-a-file", "eval --model {art}/mini.pt --data synthetic:2 --json {art}/notadir.txt/r.json",
     "ENOTDIR"),
    ("bench-json-symlink-loop", "bench {art}/mini.onnx --json {out}/loop.json", "cannot resolve this path"),
    ("eval-unknown-device", "eval --model {art}/mini.pt --data synthetic:2 --device tpu", "--device tpu: not a device"),
    ("bench-json-is-a-folder", "bench {art}/mini.onnx --json {art}/photos", "is a directory"),
    ("predict-out-is-a-file", "predict --model {art}/mini.pt {art}/photos --out {art}/notadir.txt",
     "is a file"),
    # ONNX files whose metadata is broken or disagrees with the graph (items 8, 16)
    ("bench-empty-onnx", "bench {art}/empty.onnx", "empty file (0 bytes)"),
    ("bench-garbage-onnx", "bench {art}/garbage.onnx", "not a readable ONNX file"),
    ("bench-metadata-batch-abc", "bench {art}/batch_abc.onnx", "assd.batch is 'abc'"),
    ("eval-metadata-outputs-unknown", "eval --model {art}/outputs_bad.onnx --data synthetic:2",
     "assd.outputs is 'everything'"),
    ("eval-engine-metadata-size-vs-graph", "eval-engine {art}/size_mismatch.onnx --data synthetic:2",
     "'images' is [?x3x96x96], expected [?x3x64x64]"),
    ("bench-metadata-classes-vs-graph", "bench {art}/classes_mismatch.onnx", "'conf' is"),
    ("bench-metadata-batch-vs-graph", "bench {art}/batch_mismatch.onnx", "'images' is [4x3x64x64]"),
    ("bench-onnxruntime-cannot-load", "bench {art}/unknown_op.onnx", "ONNX Runtime cannot load it"),
    ("attention-with-onnx", "attention --model {art}/mini.onnx {art}/photos/p0.jpg --out {out}/att",
     "need a .pt checkpoint"),
    # Out-of-range options and absurd checkpoints (item 10)
    ("export-opset-5", "export --onnx {art}/mini.pt -o {out}/m.onnx --opset 5", "--opset 5: assd exports opsets 16..23"),
    ("export-opset-99", "export --onnx {art}/mini.pt -o {out}/m.onnx --opset 99", "assd exports opsets"),
    ("eval-engine-tolerance-negative", "eval-engine {art}/mini.onnx --data synthetic:2 --tolerance -1",
     "--tolerance -1.0: must be a finite"),
    ("eval-engine-tolerance-nan", "eval-engine {art}/mini.onnx --data synthetic:2 --tolerance nan",
     "--tolerance nan: must be a finite"),
    ("eval-checkpoint-input-size-negative", "eval --model {art}/size_negative.pt --data synthetic:2",
     "input_size -5 is not a whole number of pixels"),
    ("bench-checkpoint-input-size-huge", "bench {art}/size_huge.pt", "input_size 100000 is not"),
    ("info-checkpoint-input-size-huge", "info {art}/size_huge.pt", "input_size 100000 is not"),
    ("info-absurd-class-count", "info assd-mini --num-classes 1000000000", "--num-classes 1000000000: must be at least 2 and at most"),
    ("bench-iters-zero", "bench {art}/mini.onnx --iters 0", "need iters >= 1"),
    ("eval-batch-size-zero", "eval --model {art}/mini.pt --data synthetic:2 --batch-size 0", "--batch-size 0"),
    ("eval-nms-iou-nan", "eval --model {art}/mini.pt --data synthetic:2 --nms-iou nan", "NMS IoU threshold nan"),
    ("predict-score-threshold-2", "predict --model {art}/mini.pt {art}/photos --out {out}/p --score-threshold 2",
     "score threshold 2.0"),
    # Memory refused with the estimate before allocating (item 11)
    ("bench-onnx-batch-500000", "bench {art}/mini.onnx --batch 500000", "GB is"),
    ("bench-checkpoint-batch-200000", "bench {art}/mini.pt --batch 200000", "GB is"),
    ("eval-batch-size-500000", "eval --model {art}/mini.pt --data synthetic:2 --batch-size 500000", "GB is"),
    ("export-fixed-batch-500000", "export --onnx {art}/mini.pt -o {out}/m.onnx --batch 500000", "GB is"),
    # Data (items 9, 12, 14)
    ("eval-coco-without-categories", "eval --model {art}/mini.pt --data coco:{art}/coco/images:{art}/coco/nocat.json",
     "'categories' is missing"),
    ("eval-coco-empty-object", "eval --model {art}/mini.pt --data coco:{art}/coco/images:{art}/coco/empty.json",
     "'images' is missing"),
    ("predict-truncated-jpeg", "predict --model {art}/mini.pt {art}/trunc/t.jpg --out {out}/p",
     "truncated or malformed JPEG"),
    ("export-parity-images-checked-before-writing", ("export --onnx {art}/mini.pt -o {out}/m.onnx "
     "--parity-images {art}/trunc"), "truncated or malformed JPEG"),
    # The other stages' commands: training, calibration, conversion, the precision debugger
    ("train-momentum-5", "train --model assd-mini --data synthetic:4 --out {out}/run --momentum 5",
     "bad --momentum 5.0"),
    ("train-weight-decay-negative", "train --model assd-mini --data synthetic:4 --out {out}/run --weight-decay -1",
     "bad --weight-decay -1.0"),
    ("train-out-is-the-image-folder", ("train --model assd-mini --data coco:{art}/coco/images:{art}/coco/nocat.json "
     "--out {art}/coco/images"), "is an input folder of this command"),
    ("calibrate-cache-onto-model", ("calibrate {art}/mini.onnx -o {out}/m.int8.onnx --calib-data {art}/photos "
     "--calib-cache {art}/mini.onnx"), "is the input ONNX"),
    ("calibrate-parity-images-negative", ("calibrate {art}/mini.onnx -o {out}/m.int8.onnx --calib-data {art}/photos "
     "--parity-images -1"), "--parity-images -1"),
    ("convert-onto-its-source", "convert {art}/mini.pt -o {art}/mini.pt --from torchvision-ssd300",
     "is an input of this command"),
    ("convert-foreign-file", "convert {art}/garbage.onnx -o {out}/c.pt --from torchvision-ssd300",
     "not a readable torch state_dict"),
    ("debug-precision-onto-its-input", ("debug-precision {art}/mini.onnx --data synthetic:2 --reference {art}/mini.pt "
     "-o {art}/mini.onnx"), "is the input ONNX"),
    # The output policy (issue 25, item 1): special files are never replaced, other kinds need --force
    ("convert-onto-symlink-to-dev-null", "convert {art}/garbage.onnx -o {out}/null.pt --from torchvision-ssd300",
     "is a character device, not a regular file"),
    ("export-onto-a-fifo", "export --onnx {art}/mini.pt -o {out}/fifo.onnx --no-parity", "is a FIFO"),
    ("bench-server-json-onto-served-onnx", "bench --server http://127.0.0.1:9/assd --json {art}/served.onnx",
     "holds an ONNX model, not a text file"),
    ("eval-url-json-onto-checkpoint", "eval --model http://127.0.0.1:9/assd --data synthetic:2 --json {art}/mini.pt",
     "holds a PyTorch checkpoint"),
    ("bench-markdown-onto-an-image", "bench {art}/mini.onnx --markdown {art}/photos/p1.jpg", "holds an image"),
    ("export-onto-an-image-named-onnx", "export --onnx {art}/mini.pt -o {art}/picture.onnx --no-parity",
     "holds an image"),
    # Output sets (item 2): an engine beside the sidecar of another build, calibrate's graph + another run's cache
    ("bench-engine-of-another-build", "bench {art}/eng/other_build.engine", "not the one its sidecar describes"),
    ("build-engine-int8-graph-with-cache-of-another-run", ("build-engine {art}/cal/set.int8.onnx -o {out}/m.engine "
     "--int8 --calib-cache {art}/cal/other_run.json"), "not one calibrate output set"),
    ("build-engine-graph-onnx-runtime-cannot-read", "build-engine {art}/cal/future_ir.int8.onnx -o {out}/m.engine --int8",
     "future_ir.int8.onnx: ONNX Runtime cannot load it to measure its fp16 range"),
    # Damaged files (item 3)
    ("bench-sidecar-is-a-list", "bench {art}/eng/list.engine", "not an assd engine sidecar"),
    ("bench-sidecar-batch-text", "bench {art}/eng/batch_text.engine", "batch_min/opt/max [1, 8, '32']"),
    ("eval-engine-sidecar-thresholds-text", "eval-engine {art}/eng/thresholds_text.engine --data synthetic:2",
     "thresholds must be finite numbers"),
    ("bench-sidecar-batch-huge", "bench {art}/eng/batch_huge.engine", "must be whole numbers in 1..65536"),
    ("bench-empty-engine", "bench {art}/eng/empty.engine", "the engine is an empty file (0 bytes)"),
    ("calibrate-cache-ranges-zero", ("calibrate {art}/mini.onnx -o {out}/m.int8.onnx --calib-data {art}/photos "
     "--calib-method entropy --calib-cache {art}/cal/zero.json"), "(lowest must be below highest)"),
    ("calibrate-cache-ranges-nan", ("calibrate {art}/mini.onnx -o {out}/m.int8.onnx --calib-data {art}/photos "
     "--calib-method entropy --calib-cache {art}/cal/nan.json"), "which is not finite"),
    ("calibrate-cache-tensor-missing", ("calibrate {art}/mini.onnx -o {out}/m.int8.onnx --calib-data {art}/photos "
     "--calib-method entropy --calib-cache {art}/cal/missing.json"), "no entropy range for 1 quantized tensor"),
    ("calibrate-cache-ranges-huge", ("calibrate {art}/mini.onnx -o {out}/m.int8.onnx --calib-data {art}/photos "
     "--calib-method entropy --calib-cache {art}/cal/huge.json"), "beyond any activation"),
    ("convert-non-string-keys", "convert {art}/int_key.pth -o {out}/c.pt --from torchvision-ssd300",
     "key(s) are not tensor names (7, a int)"),
    ("convert-nan-weights", "convert {art}/nan_weights.pth -o {out}/c.pt --from torchvision-ssd300",
     "(backbone.features.0.weight) tensor(s) hold NaN or infinite values"),
    ("build-engine-workspace-nan", "build-engine {art}/mini.onnx -o {out}/m.engine --workspace nan",
     "--workspace nan: must be a positive number"),
    ("build-engine-workspace-inf", "build-engine {art}/mini.onnx -o {out}/m.engine --workspace inf",
     "--workspace inf: must be a positive number"),
    ("train-resume-switching-optimizer", ("train --data synthetic:4 --out {art}/run --resume --allow-changes "
     "--optimizer sgd"), "trained with AdamW; its optimizer state cannot continue with SGD"),
    ("eval-coco-iscrowd-yes", "eval --model {art}/mini.pt --data coco:{art}/coco/images:{art}/coco/crowd.json",
     "has iscrowd 'yes'"),
    ("train-assd513-batch-256", "train --model assd513 --data synthetic:4 --batch-size 256 --out {out}/run",
     "GB is"),
    # Contradicting or ignored options (item 4)
    ("build-engine-fp16-and-int8", "build-engine {art}/mini.onnx -o {out}/m.engine --fp16 --int8",
     "--fp16 and --int8 contradict each other"),
    ("bench-server-with-batch", "bench --server http://127.0.0.1:9/assd --batch 8", "--batch: has no effect with --server"),
    ("bench-images-without-server", "bench {art}/mini.onnx --images {art}/photos", "--images: has no effect without"),
    ("eval-url-with-device", "eval --model http://127.0.0.1:9/assd --data synthetic:2 --device cuda",
     "--device: has no effect with a server URL"),
    ("build-engine-batch-1e8", "build-engine {art}/mini.onnx -o {out}/m.engine --batch 1:1:100000000",
     "MAX <= 65536"),
]


def _run_hostile_case(art: Path, folder: Path, args: str):
    """``(files before, files after, result)`` of one case run in its own ``folder``."""
    (folder / "tmp").mkdir()
    if "link.onnx" in args:
        (folder / "link.onnx").symlink_to(art / "mini.pt")
    if "loop.json" in args:
        (folder / "loop.json").symlink_to(folder / "loop.json")
    if "attention_grid.png" in args:
        write_photo(folder / "attention_grid.png", 3)
    if "{out}/null." in args:  # a symlink to the character device, inside the case's folder
        (folder / f"null{args.split('{out}/null', 1)[1].split()[0]}").symlink_to(os.devnull)
    if "{out}/fifo." in args:
        os.mkfifo(folder / f"fifo{args.split('{out}/fifo', 1)[1].split()[0]}")
    before = snapshot(art, folder)
    result = run_case(cli_command(shlex.split(args.format(art=art, out=folder))), folder)
    return before, snapshot(art, folder), result


@pytest.fixture(scope="module")
def hostile_results(art, tmp_path_factory) -> dict:
    """Every case of ``CASES``, run once, two subprocesses at a time (each starts Python, torch and
    ONNX Runtime: ~3 s of CPU), each in its own folder; the tests below check one result each."""
    folders = {case_id: tmp_path_factory.mktemp(case_id) for case_id, _, _ in CASES}
    with ThreadPoolExecutor(max_workers=min(2, os.cpu_count() or 1)) as pool:
        futures = {case_id: pool.submit(_run_hostile_case, art, folders[case_id], args) for case_id, args, _ in CASES}
        return {case_id: future.result() for case_id, future in futures.items()}


@pytest.mark.parametrize("case_id, expected", [pytest.param(i, e, id=i) for i, _, e in CASES])
def test_hostile_input_is_one_line_and_changes_nothing(hostile_results, case_id, expected):
    before, after, result = hostile_results[case_id]
    assert_one_line_refusal(result, expected)
    assert after == before, "a file was created or changed"


def test_predict_into_the_folder_of_a_source_image_never_replaces_it(art, tmp_path):
    source = tmp_path / "photo.jpg"
    write_photo(source, 7)
    original = source.read_bytes()
    result = run_case(cli_command(["predict", "--model", str(art / "mini.pt"), str(source), "--out", str(tmp_path)]),
                      tmp_path)
    assert result.returncode == 0, result.stderr
    assert source.read_bytes() == original
    assert (tmp_path / "photo_2.jpg").is_file() and (tmp_path / "detections.json").is_file()


def _has_private_mounts() -> bool:
    try:
        return subprocess.run(["unshare", "-Urm", "true"], check=False, capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


needs_mounts = pytest.mark.skipif(not _has_private_mounts(),
                                  reason="no private mount namespace (unshare -Urm); tests/test_paths.py covers "
                                         "these faults with monkeypatched writes")


def run_in_mount_namespace(setup: str, folder: Path, args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """Run the CLI after ``setup`` (mount commands) in a private namespace, then list ``folder`` there."""
    cli = " ".join(shlex.quote(part) for part in cli_command(args))
    script = f"{setup} && {cli}; rc=$?; echo '--- listing'; ls -A {shlex.quote(str(folder))}; exit $rc"
    return run_case(["unshare", "-Urm", "sh", "-c", script], cwd)


def listing(result: subprocess.CompletedProcess) -> list[str]:
    return result.stdout.split("--- listing", 1)[1].split()


@needs_mounts
def test_read_only_folder_is_refused_before_the_work(art, tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    setup = f"mount --bind {folder} {folder} && mount -o remount,bind,ro {folder}"
    (tmp_path / "tmp").mkdir()
    before = snapshot(art, tmp_path)
    result = run_in_mount_namespace(setup, folder, ["eval", "--model", str(art / "mini.pt"), "--data", "synthetic:2",
                                                    "--json", str(folder / "r.json")], tmp_path)
    assert_one_line_refusal(result, "EROFS")
    assert "read-only" in result.stderr and listing(result) == []
    assert snapshot(art, tmp_path) == before


@needs_mounts
def test_disk_full_during_export_is_one_line_and_leaves_nothing(art, tmp_path):
    folder = tmp_path / "full"
    folder.mkdir()
    result = run_in_mount_namespace(f"mount -t tmpfs -o size=256k tmpfs {folder}", folder,
                                    ["export", "--onnx", str(art / "mini.pt"), "-o", str(folder / "m.onnx"),
                                     "--no-parity"], tmp_path)
    assert_one_line_refusal(result, "ENOSPC")
    assert str(folder / "m.onnx") in result.stderr and listing(result) == []  # no partial file, no temp file


@needs_mounts
def test_disk_full_when_predict_draws_images_is_one_line(art, tmp_path):
    folder = tmp_path / "full"
    folder.mkdir()
    fill = f"mount -t tmpfs -o size=64k tmpfs {folder} && head -c 60000 /dev/zero > {folder}/filler"
    result = run_in_mount_namespace(fill, folder, ["predict", "--model", str(art / "mini.pt"), str(art / "photos"),
                                                   "--out", str(folder)], tmp_path)
    assert_one_line_refusal(result, "ENOSPC")
    assert not any(name.endswith(".tmp") for name in listing(result))


@needs_mounts
def test_torch_save_on_a_full_disk_becomes_one_enospc_error(tmp_path):
    """torch reports a full disk as RuntimeError("... unexpected pos ...") or "file write failed";
    ``assd.paths.writing`` names the file and ENOSPC (what checkpoint saves wrap)."""
    folder = tmp_path / "full"
    folder.mkdir()
    code = ("import torch; from assd.paths import writing\n"
            f"with writing('{folder}/last.pt'):\n    torch.save({{'w': torch.zeros(1 << 20)}}, '{folder}/last.pt')")
    script = (f"mount -t tmpfs -o size=256k tmpfs {folder} && {shlex.quote(sys.executable)} -c {shlex.quote(code)}")
    result = run_case(["unshare", "-Urm", "sh", "-c", script], tmp_path)
    assert result.returncode == 1 and "UserError" in result.stderr
    assert f"{folder}/last.pt: cannot write (ENOSPC" in result.stderr.strip().splitlines()[-1]


# ---------------------------------------------------------------- metadata vs graph, in-process (item 8)

@pytest.mark.parametrize("changes, message", [
    ({"props": {"assd.batch": "-3"}}, "assd.batch is '-3'"),
    ({"props": {"assd.precision": "fp8"}}, "assd.precision is 'fp8'"),
    ({"props": {"assd.postprocess": '{"nms_iou": 7}'}}, "assd.postprocess: NMS IoU threshold 7"),
    ({"props": {"assd.postprocess": "[1, 2]"}}, "assd.postprocess is not a JSON object"),
    ({"props": {"assd.model_config": "{not json"}}, "damaged assd metadata"),
    ({"batch": "3"}, "assd.batch is 'dynamic' but the graph's batch is fixed at 3"),
])
def test_metadata_is_validated_against_the_graph(tmp_path, changes, message):
    from assd.errors import UserError
    from assd.runtime.metadata import read_metadata

    path = tmp_path / "m.onnx"
    props = changes.get("props", {})
    if "batch" in changes:  # a fixed-batch graph whose metadata still says dynamic
        fake_assd_onnx(path, tiny_config(), batch=changes["batch"], props={"assd.batch": "dynamic"})
    else:
        fake_assd_onnx(path, tiny_config(), props=props)
    with pytest.raises(UserError, match="m.onnx: ") as error:
        read_metadata(path)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_consistent_fake_graph_passes_the_metadata_check(tmp_path):
    from assd.runtime.metadata import read_metadata

    fake_assd_onnx(tmp_path / "ok.onnx", tiny_config(), batch="2")
    assert read_metadata(tmp_path / "ok.onnx").fixed_batch == 2


# ---------------------------------------------------------------- the output policy's positive side (issue 25)

def test_text_report_is_written_through_a_symlink_to_the_null_device(art, tmp_path):
    """``--json null.json`` (a symlink to /dev/null inside the test's folder) writes through the link:
    the link and the device stay as they are (the atomic writer used to replace the device with a file)."""
    link = tmp_path / "null.json"
    link.symlink_to(os.devnull)
    result = run_case(cli_command(["eval", "--model", str(art / "mini.pt"), "--data", "synthetic:2", "--json",
                                   str(link)]), tmp_path)
    assert result.returncode == 0, result.stderr
    assert link.is_symlink() and os.readlink(link) == os.devnull
    assert stat.S_ISCHR(os.stat(os.devnull).st_mode)  # read only: the real device is never written by a test


def test_text_report_is_written_through_a_fifo_to_its_reader(art, tmp_path):
    fifo = tmp_path / "report.json"
    os.mkfifo(fifo)
    with ThreadPoolExecutor(max_workers=1) as pool:
        received = pool.submit(lambda: fifo.read_bytes())  # blocks until the command opens the FIFO
        result = run_case(cli_command(["eval", "--model", str(art / "mini.pt"), "--data", "synthetic:2", "--json",
                                       str(fifo)]), tmp_path)
        if result.returncode != 0:  # unblock the reader before failing
            with open(fifo, "wb"):
                pass
        assert result.returncode == 0, result.stderr
        assert json.loads(received.result(timeout=60))["metric"] == "voc07"
    assert stat.S_ISFIFO(fifo.lstat().st_mode)


def test_force_replaces_an_output_of_another_kind_and_symlinks_are_written_through(art, tmp_path):
    onnx_copy = tmp_path / "old.onnx"
    onnx_copy.write_bytes((art / "mini.onnx").read_bytes())
    args = ["eval", "--model", str(art / "mini.pt"), "--data", "synthetic:2", "--json", str(onnx_copy)]
    assert run_case(cli_command(args), tmp_path).returncode == 2
    result = run_case(cli_command([*args, "--force"]), tmp_path)
    assert result.returncode == 0, result.stderr
    assert json.loads(onnx_copy.read_text())["metric"] == "voc07"
    target, link = tmp_path / "real.json", tmp_path / "link.json"
    target.write_text("{}")
    link.symlink_to(target.name)
    assert run_case(cli_command([*args[:-1], str(link)]), tmp_path).returncode == 0
    assert link.is_symlink() and json.loads(target.read_text())["metric"] == "voc07"


@pytest.mark.parametrize("head, kind", [
    (b"\x89PNG\r\n\x1a\n....", "image"), (b"\xff\xd8\xff\xe0", "image"), (b"PK\x03\x04archive/data.pkl", "torch"),
    (b"\x80\x02}q\x00", "torch"), (b"\x08\x08\x12\x07pytorch", "onnx"), (b'{"a": 1}\n', "text"),
    (b"| a | b |\n", "text"), (b"\x00\x01\x02\xff\xfe", "binary"), (b"", "empty")])
def test_file_kinds_are_recognised_by_content(head, kind):
    from assd.paths import data_kind

    assert data_kind(head) == kind


def test_stale_triton_staging_folders_are_removed_and_live_ones_kept(tmp_path):
    """``export --triton REPO`` killed mid-write left ``.REPO.<random>/`` for good; the next run's
    ``temp_dir_beside`` removes ours of dead processes (pid in the name; pid-less ones after an hour)."""
    from assd.paths import LEGACY_TEMP_AGE_S, temp_dir_beside

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True).stdout.strip()
    stale = tmp_path / f".repo.{dead}-abc123.tmpdir"
    live = tmp_path / f".repo.{os.getpid()}-def456.tmpdir"
    legacy_old, legacy_new, other = tmp_path / ".repo.k3j4h5g6", tmp_path / ".repo.a1b2c3d4", tmp_path / ".other.x1y2z3w4"
    for folder in (stale, live, legacy_old, legacy_new, other):
        (folder / "assd_network" / "1").mkdir(parents=True)
    old = os.stat(legacy_old).st_mtime - LEGACY_TEMP_AGE_S - 60
    os.utime(legacy_old, (old, old))
    made = temp_dir_beside(tmp_path / "repo")
    assert made.name.startswith(f".repo.{os.getpid()}-") and made.is_dir()
    assert not stale.exists() and not legacy_old.exists()
    assert live.exists() and legacy_new.exists() and other.exists()


def test_a_recipe_beside_the_report_of_another_run_is_refused(tmp_path):
    """debug-precision killed between its report files leaves a folder mixing two runs: the recipe names
    its run, table.json embeds the recipe of its own; a mismatched pair is one line."""
    from assd.calibration.recipe import KeptLayer, Recipe, load_recipe
    from assd.calibration.run_set import graph_run_id, mark_graph
    from assd.errors import UserError

    recipe = Recipe("int8", [KeptLayer("backbone.conv1", "node_Conv_1")], model="assd-mini", run_id="aaaaaaaaaaaa")
    recipe.save(tmp_path / "recipe.json")
    (tmp_path / "table.json").write_text(json.dumps({"recipe": {**recipe.to_dict(), "run_id": "aaaaaaaaaaaa"}}))
    assert load_recipe(tmp_path / "recipe.json").run_id == "aaaaaaaaaaaa"
    (tmp_path / "table.json").write_text(json.dumps({"recipe": {**recipe.to_dict(), "run_id": "bbbbbbbbbbbb"}}))
    with pytest.raises(UserError, match="is of another debug-precision run") as error:
        load_recipe(tmp_path / "recipe.json")
    assert "\n" not in str(error.value)
    graph = helper.make_model(helper.make_graph([], "g", [], []))
    assert graph_run_id(mark_graph(mark_graph(graph, "x"), "bbbbbbbbbbbb")) == "bbbbbbbbbbbb"


def test_calibrate_marks_its_graph_and_cache_with_one_run_and_a_mixed_pair_is_refused(art, tmp_path):
    """calibrate's graph + cache (issue 25, item 2): the cache records the run that measured it, the graph
    its own run and the run of its ranges; reusing the cache for another graph keeps working, and a graph
    beside a cache rewritten by a later run (a run stopped between its two files) is refused in one line."""
    import onnx

    from assd.calibration.cache import cache_run_id
    from assd.calibration.quantize import quantize_int8
    from assd.calibration.run_set import CALIBRATION_RUN_KEY, check_graph_cache_set, graph_run_id
    from assd.errors import UserError

    cache = tmp_path / "c.json"

    def calibrate(name: str, images: int = 2) -> onnx.ModelProto:
        quantize_int8(str(art / "mini.onnx"), str(tmp_path / name), str(art / "photos"), num_images=images,
                      cache_path=str(cache), echo=lambda _: None)
        return onnx.load(str(tmp_path / name), load_external_data=False)

    first = calibrate("a.int8.onnx")
    measured = cache_run_id(cache)
    assert measured and graph_run_id(first) == measured and graph_run_id(first, CALIBRATION_RUN_KEY) == measured
    second = calibrate("b.int8.onnx")  # the cache reused, not rewritten: b holds run a's ranges
    assert cache_run_id(cache) == measured and graph_run_id(second) != measured
    assert graph_run_id(second, CALIBRATION_RUN_KEY) == measured
    assert check_graph_cache_set(tmp_path / "b.int8.onnx", cache) == measured
    calibrate("c.int8.onnx", images=1)  # other settings: the cache is measured again by this run
    assert cache_run_id(cache) not in (None, measured)
    with pytest.raises(UserError, match="not one calibrate output set") as error:
        check_graph_cache_set(tmp_path / "a.int8.onnx", cache)
    assert "\n" not in str(error.value) and str(cache) in str(error.value)
    assert check_graph_cache_set(art / "mini.onnx", cache) is None  # an fp32 graph: the cache calibrates it


def test_a_quantized_graph_with_the_cache_of_its_own_run_is_accepted(art, tmp_path):
    from assd.calibration.run_set import check_graph_cache_set

    assert check_graph_cache_set(art / "cal" / "set.int8.onnx", art / "cal" / "same_run.json") == "aaaaaaaaaaaa"
    older = json.loads((art / "cal" / "other_run.json").read_text())
    del older["run_id"]  # a cache written before run ids: nothing to compare
    (tmp_path / "older.json").write_text(json.dumps(older))
    assert check_graph_cache_set(art / "cal" / "set.int8.onnx", tmp_path / "older.json") is None


def _load_step(repo: Path, step: str, monkeypatch):
    """The repository's Python step ``assd_<step>`` as Triton's Python backend loads it (a stand-in for
    ``triton_python_backend_utils``, which only exists inside the server)."""
    import importlib.util
    import types

    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", types.ModuleType("triton_python_backend_utils"))
    spec = importlib.util.spec_from_file_location(f"step_{step}", repo / f"assd_{step}" / "1" / "model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.TritonPythonModel()


def _step_args(repo: Path, step: str) -> dict:
    from google.protobuf import json_format, text_format
    from tritonclient.grpc import model_config_pb2 as pb

    config = text_format.Parse((repo / f"assd_{step}" / "config.pbtxt").read_text(), pb.ModelConfig())
    return {"model_config": json_format.MessageToJson(config, preserving_proto_field_name=True),
            "model_repository": str(repo / f"assd_{step}"), "model_version": "1"}


def test_a_triton_repository_mixing_two_runs_does_not_load(art, tmp_path, monkeypatch):
    """export --triton's repository (issue 25, item 2): every config carries the run id, the network's the
    SHA-256 of its file; a Python step refuses to load (one line) beside a model or network file of
    another run, so Triton never serves a mixed set."""
    pytest.importorskip("tritonclient.grpc", reason="the serve extra is not installed")
    from assd.errors import UserError
    from assd.serving.repository import write_repository

    first, second = (write_repository(tmp_path / name, str(art / "mini.onnx"), max_batch=2, echo=lambda _: None)
                     for name in ("r1", "r2"))
    for step in ("preprocess", "postprocess"):
        _load_step(first, step, monkeypatch).initialize(_step_args(first, step))  # one run: loads
    shutil.rmtree(first / "assd_network")
    shutil.copytree(second / "assd_network", first / "assd_network")
    for step in ("preprocess", "postprocess"):
        with pytest.raises(UserError, match="is of another export --triton run") as error:
            _load_step(first, step, monkeypatch).initialize(_step_args(first, step))
        assert "\n" not in str(error.value) and "assd_network/config.pbtxt" in str(error.value)
    shutil.copyfile(art / "served.onnx", second / "assd_network" / "1" / "model.onnx")  # same bytes: accepted
    _load_step(second, "preprocess", monkeypatch).initialize(_step_args(second, "preprocess"))
    (second / "assd_network" / "1" / "model.onnx").write_bytes((art / "garbage.onnx").read_bytes())
    with pytest.raises(UserError, match="is not the network file run"):
        _load_step(second, "postprocess", monkeypatch).initialize(_step_args(second, "postprocess"))
