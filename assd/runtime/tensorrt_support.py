"""Whether TensorRT can be used here, asked in the order that gives the most useful one-line error.

1. Is the ``tensorrt`` package installed? (looked up without importing it)
2. Is there a CUDA device? (asked through torch, before any TensorRT object exists)
3. Does ``import tensorrt`` work? (a broken install, e.g. missing CUDA libraries)
4. Is it TensorRT 10 or newer? (the APIs assd uses)

``tensorrt`` is only ever imported through ``import_tensorrt`` so that the rest of assd (and its
tests) works on machines without it.
"""

from __future__ import annotations

import importlib
import importlib.util

import torch

from assd.errors import UserError

EXTRAS = {"12": "tensorrt-cu12", "13": "tensorrt-cu13"}  # pyproject.toml extras, one per CUDA major


def install_hint() -> str:
    """The pip line for the TensorRT wheels matching this torch's CUDA major version (NVIDIA publishes
    ``tensorrt-cu12`` and ``tensorrt-cu13``; the libraries must match the CUDA runtime torch loads)."""
    cuda = torch.version.cuda
    extra = EXTRAS.get(cuda.split(".")[0]) if cuda else None
    if extra:
        return f"pip install -e '.[{extra}]' (torch here is built for CUDA {cuda}; TensorRT needs an NVIDIA GPU)"
    return ("pip install -e '.[tensorrt-cu12]' or '.[tensorrt-cu13]', matching torch's CUDA major "
            f"(this torch: {'CUDA ' + cuda if cuda else 'CPU-only'}; TensorRT needs an NVIDIA GPU)")


def require_tensorrt(what: str) -> None:
    """UserError saying exactly what is missing for ``what`` (e.g. "building an engine")."""
    if importlib.util.find_spec("tensorrt") is None:
        raise UserError(f"{what} needs TensorRT, which is not installed: {install_hint()}")
    if not torch.cuda.is_available():
        raise UserError(f"{what} needs a CUDA GPU; none is available on this machine (torch.cuda.is_available() "
                        "is False): run it on a machine with an NVIDIA GPU")


def import_tensorrt(what: str):
    """The ``tensorrt`` module, after ``require_tensorrt``; TensorRT 10 or newer."""
    from assd.runtime.engine_info import OLDEST_TENSORRT, parse_version

    require_tensorrt(what)
    try:
        trt = importlib.import_module("tensorrt")
    except (ImportError, OSError) as exc:
        raise UserError(f"{what}: TensorRT is installed but cannot be imported ({str(exc).splitlines()[0]}): "
                        f"reinstall it ({install_hint()})") from None
    if parse_version(trt.__version__)[:2] < OLDEST_TENSORRT:
        raise UserError(f"{what}: TensorRT {trt.__version__} is too old: assd uses the TensorRT 10/11 APIs: "
                        f"{install_hint()}")
    return trt
