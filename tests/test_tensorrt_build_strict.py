"""build-engine against a fake TensorRT builder that fails where TensorRT fails (issue 22, item 4): the
strongly-typed flag per version, a parser that refuses ops, a builder that returns None, timing caches."""

from __future__ import annotations

import pytest
from fake_tensorrt import FakeBuilder, FakeOnnxParser, fake_builder_module
from test_tensorrt import _tiny_assd_onnx
from test_tensorrt_build import fake_builder  # noqa: F401 - the fixture

from assd.engine.build import EngineOptions, build_engine
from assd.errors import UserError


def _build(tmp_path, options: EngineOptions | None = None, name="tiny.engine"):
    onnx_path = tmp_path / "tiny.onnx"
    if not onnx_path.exists():
        _tiny_assd_onnx(onnx_path)
    messages = []
    build_engine(str(onnx_path), str(tmp_path / name), options or EngineOptions(), echo=messages.append)
    return messages


@pytest.mark.parametrize("version, bit", [("10.16.1.11", 1 << 1), ("11.4.0.106", 1 << 0)])
def test_networks_are_created_strongly_typed_with_the_versions_flag_bit(fake_builder, tmp_path, version, bit):  # noqa: F811
    """STRONGLY_TYPED is member 1 in TensorRT 10 (bit 1; bit 0 is the deprecated EXPLICIT_BATCH) and 0 in 11."""
    fake_builder["module"] = module = fake_builder_module(version)
    _build(tmp_path)
    network = FakeBuilder.network
    assert network.flags == bit and network.strongly_typed
    assert network.get_flag(module.NetworkDefinitionCreationFlag.STRONGLY_TYPED)


def test_a_parser_failure_names_the_node_and_writes_no_engine(fake_builder, tmp_path):  # noqa: F811
    FakeOnnxParser.unsupported = ("Conv",)
    with pytest.raises(UserError, match=r"ONNX parser failed at node .*\(Conv\): No importer registered for op: "
                                         r"Conv \(\+\d+ more errors\)"):
        _build(tmp_path)
    assert not (tmp_path / "tiny.engine").exists()


def test_an_unreadable_graph_is_a_parser_failure(fake_builder, tmp_path, monkeypatch):  # noqa: F811
    from assd.engine import build

    _tiny_assd_onnx(tmp_path / "tiny.onnx")
    damaged = tmp_path / "damaged.onnx"
    damaged.write_bytes(b"not onnx")
    monkeypatch.setattr(build, "compose_precision_graph", lambda *args, **kwargs: str(damaged))
    with pytest.raises(UserError, match="ONNX parser failed: Failed to parse ONNX model"):
        _build(tmp_path)


def test_a_build_that_returns_none_is_one_line_and_writes_nothing(fake_builder, tmp_path):  # noqa: F811
    FakeBuilder.fails = True
    with pytest.raises(UserError, match="TensorRT could not build an engine"):
        _build(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.onnx"]


def test_timing_cache_is_written_then_read_and_used(fake_builder, tmp_path):  # noqa: F811
    cache = tmp_path / "timing.cache"
    first = _build(tmp_path, EngineOptions(timing_cache=str(cache)))
    assert f"timing cache {cache}: new" in first and cache.is_file() and FakeBuilder.timing_hits == 0
    second = _build(tmp_path, EngineOptions(timing_cache=str(cache)), name="again.engine")
    assert f"timing cache {cache}: read" in second
    assert FakeBuilder.timing_hits == len(FakeBuilder.network.layers) > 0  # every layer's timing reused


@pytest.mark.parametrize("content", [b"garbage", "other-version"])
def test_a_timing_cache_tensorrt_cannot_use_is_refused(fake_builder, tmp_path, content):  # noqa: F811
    cache = tmp_path / "timing.cache"
    if content == "other-version":
        fake_builder["module"] = fake_builder_module("10.15.1.29")
        _build(tmp_path, EngineOptions(timing_cache=str(cache)), name="old.engine")
        fake_builder["module"] = fake_builder_module()
    else:
        cache.write_bytes(content)
    before = cache.read_bytes()
    with pytest.raises(UserError, match="--timing-cache .*TensorRT cannot use this file"):
        _build(tmp_path, EngineOptions(timing_cache=str(cache)))
    assert cache.read_bytes() == before and not (tmp_path / "tiny.engine").exists()
