"""Whether TensorRT can be used here, asked in the order that gives the most useful one-line error.

1. Is the ``tensorrt`` package installed? (looked up without importing it)
2. Is there a CUDA device? (asked through torch, before any TensorRT object exists)
3. Does ``import tensorrt`` work? (a broken install, e.g. missing CUDA libraries)

``tensorrt`` is only ever imported through ``import_tensorrt`` so that the rest of assd (and its
tests) works on machines without it.
"""

from __future__ import annotations

import importlib
import importlib.util

import torch

from assd.errors import UserError

INSTALL_HINT = "pip install -e .[tensorrt] (TensorRT needs an NVIDIA GPU and driver)"


def require_tensorrt(what: str) -> None:
    """UserError saying exactly what is missing for ``what`` (e.g. "building an engine")."""
    if importlib.util.find_spec("tensorrt") is None:
        raise UserError(f"{what} needs TensorRT, which is not installed: {INSTALL_HINT}")
    if not torch.cuda.is_available():
        raise UserError(f"{what} needs a CUDA GPU; none is available on this machine (torch.cuda.is_available() "
                        "is False): run it on a machine with an NVIDIA GPU")


def import_tensorrt(what: str):
    """The ``tensorrt`` module, after ``require_tensorrt``."""
    require_tensorrt(what)
    try:
        return importlib.import_module("tensorrt")
    except (ImportError, OSError) as exc:
        raise UserError(f"{what}: TensorRT is installed but cannot be imported ({str(exc).splitlines()[0]}): "
                        f"reinstall it ({INSTALL_HINT})") from None
