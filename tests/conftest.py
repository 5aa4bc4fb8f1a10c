"""Shared test fixtures: where the real test data is, and skips for what this machine lacks."""

from __future__ import annotations

import os

# Idle torch/OpenMP threads sleep instead of spinning: on a shared 2-core machine spinning made CPU
# training up to 6x slower (measured in docs/training.md). Must be set before torch is imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
VOC_MINI = SHARED_DATA / "voc-mini"
COCO128 = SHARED_DATA / "coco128"


def _require(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"real test data not found at {path} (only present beside the project checkout)")
    return path


@pytest.fixture
def voc_mini_root() -> Path:
    """``../shared/data/voc-mini`` (VOCdevkit layout, VOC2012 trainval, 100 images); skips when absent."""
    return _require(VOC_MINI)


@pytest.fixture
def coco128_root() -> Path:
    """``../shared/data/coco128`` (train2017/ + annotations/instances_train2017.json); skips when absent."""
    return _require(COCO128)


@pytest.fixture
def one_torch_thread():
    """Tiny models: one intra-op thread. On a shared 2-core machine two spinning OpenMP threads can make
    these steps 20x slower, and one thread loses nothing at this size."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def pytest_collection_modifyitems(config, items):
    has_cuda = torch.cuda.is_available()
    try:
        import tensorrt  # noqa: F401
        has_trt = has_cuda
    except Exception:  # noqa: BLE001 - any failure here means "unreadable": reported as one line
        has_trt = False
    for item in items:
        if "gpu" in item.keywords and not has_cuda:
            item.add_marker(pytest.mark.skip(reason="needs a CUDA GPU; none on this machine"))
        if "tensorrt" in item.keywords and not has_trt:
            item.add_marker(pytest.mark.skip(reason="needs TensorRT (pip install -e '.[tensorrt-cu12]' or "
                                                        "'.[tensorrt-cu13]') and a CUDA GPU"))
