"""Where calibration may write: never onto an input, only where it can, intermediates in a private folder.

* ``refuse_outputs_on_inputs``: every output path is compared with every input path (resolved, so
  symlinks and ``..`` count; the same inode counts too) and with the other outputs, before any work.
* ``check_writable``: the folder an output goes to exists (or can be made) and is writable, before the
  expensive work, so a read-only target fails in one line instead of after minutes of calibration.
* ``private_workdir``: ONNX Runtime's quantization tools write beside the model they are given (shape
  inference writes ``<stem>-inferred.onnx`` next to it, then deletes it). They are only ever given a
  copy inside one private temporary folder named ``assd-*``, so nothing lands beside the user's model
  and calibration needs no write access to the model's folder.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from assd.errors import UserError

TEMP_PREFIX = "assd-"


def _same(a: Path, b: Path) -> bool:
    if a.resolve() == b.resolve():
        return True
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def refuse_outputs_on_inputs(outputs: dict[str, str | os.PathLike | None],
                             inputs: dict[str, str | os.PathLike | None]) -> None:
    """UserError when an output (``{option: path}``) is one of the inputs or another output."""
    named_outputs = [(label, Path(path)) for label, path in outputs.items() if path]
    named_inputs = [(label, Path(path)) for label, path in inputs.items() if path]
    for index, (label, path) in enumerate(named_outputs):
        for input_label, input_path in named_inputs:
            if _same(path, input_path):
                raise UserError(f"{label} {path}: is the input {input_label} {input_path}: it would be overwritten; "
                                "write the output to another path")
        for other_label, other in named_outputs[index + 1:]:
            if _same(path, other):
                raise UserError(f"{label} {path}: is also {other_label}: give each output its own path")


def check_writable(path: str | os.PathLike, label: str) -> None:
    """UserError unless ``path`` can be written: not a folder, and its nearest existing parent folder is one
    we may write into (missing folders below it are created later)."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{label} {path}: is a folder: pass a file path")
    parent = path.parent if str(path.parent) else Path(".")
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise UserError(f"{label} {path}: {parent} is a file, not a folder: choose another output path")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f"{label} {path}: folder {parent} is not writable: choose another output path")


@contextlib.contextmanager
def private_workdir() -> Iterator[Path]:
    """A private temporary folder (``assd-*``, mode 0700) removed afterwards, even on errors."""
    with tempfile.TemporaryDirectory(prefix=TEMP_PREFIX) as folder:
        yield Path(folder)
