"""Where calibration may write: never onto an input, only where it can, intermediates in a private folder.

* ``refuse_outputs_on_inputs``: every output path is compared with every named input path (resolved, so
  symlinks and ``..`` count; the same inode counts too) and with the other outputs; the message names
  the input (``-o m.onnx: is the input ONNX ...``).
* ``check_graph_outputs``: the one check of ``calibrate``, ``debug-precision`` and the accuracy gate
  before any work: ``-o`` ends in ``.onnx``, it and ``--calib-cache`` (and a report folder) land on no
  input (data-spec files and folders included) and are writable (``assd.paths.check_outputs``), and the
  cache file is ours (``assd.calibration.cache.check_cache_path``).
* ``private_workdir``: ONNX Runtime's quantization tools write beside the model they are given (shape
  inference writes ``<stem>-inferred.onnx`` next to it, then deletes it). They are only ever given a
  copy inside one private temporary folder (``assd.paths.temp_dir``: ``assd-calibration-<pid>-*``, so a
  killed run's folder is removed by the next assd command), and nothing lands beside the user's model.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path

from assd.calibration.cache import check_cache_path
from assd.errors import UserError
from assd.paths import check_outputs, temp_dir

PathOrNone = str | os.PathLike | None


def _same(a: Path, b: Path) -> bool:
    if a.resolve() == b.resolve():
        return True
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def refuse_outputs_on_inputs(outputs: Mapping[str, PathOrNone], inputs: Mapping[str, PathOrNone]) -> None:
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


def check_graph_outputs(output: str, cache: str | None, inputs: Mapping[str, PathOrNone],
                        data_specs: Iterable[str | None] = (),
                        folders: Mapping[str, tuple[PathOrNone, Sequence[str]]] | None = None) -> None:
    """Refuse, before any work, a graph output ``output`` / ``--calib-cache`` ``cache`` (and ``folders``)
    that is not .onnx, lands on one of ``inputs`` ({label: path}) or the files of ``data_specs``, cannot
    be written, or (the cache) is a file that is not ours."""
    from assd.data import data_spec_inputs

    if not str(output).endswith(".onnx"):
        raise UserError(f"-o {output}: the output graph's file must end in .onnx")
    folder_outputs = {option: folder for option, (folder, _names) in (folders or {}).items()}
    refuse_outputs_on_inputs({"-o": output, "--calib-cache": cache, **folder_outputs}, inputs)
    read = [*inputs.values(), *(path for spec in data_specs for path in data_spec_inputs(spec))]
    check_outputs(read, files={"-o": output, "--calib-cache": cache}, folders=folders)
    if cache:
        check_cache_path(cache)


@contextlib.contextmanager
def private_workdir() -> Iterator[Path]:
    """A private temporary folder (``assd-calibration-<pid>-*``, mode 0700) removed afterwards, even on errors."""
    with temp_dir("calibration") as folder:
        yield folder
