"""Small shared helpers: atomic file writes (temp file in the same folder, then rename).

A failed write (disk full, read-only folder, a parent that is a file) is one ``UserError`` line naming
the file and the errno, and leaves neither a partial file at ``path`` nor a temp file beside it; temp
files of killed processes are removed by the next write of the same file (``assd.paths``). The output
policy applies (``output_target``): a symlink is written through to its file, a text report
given a device or FIFO (``/dev/stdout``) is written through it, nothing else special is ever replaced,
and a file of another kind is not replaced without ``--force``.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from pathlib import Path

from assd.paths import (
    BINARY,
    REPLACEABLE_KINDS,
    TEXT,
    PathLike,
    accepted_by_check,
    check_output_policy,
    data_kind,
    is_special,
    stream_fd,
    temp_file_beside,
    writing,
)


def output_target(path: PathLike, kind: str) -> Path | None:
    """Where an atomic write of ``kind`` data to ``path`` goes: the real file behind a symlink (the link
    stays), or None when ``path`` is a special file a text output is written through (``write_through``).
    The policy is applied again here, so a writer no ``check_outputs`` saw cannot damage either; outputs
    ``check_outputs`` already accepted are not re-checked for kind (``--force`` was decided there)."""
    if is_special(path):
        check_output_policy("output", path, TEXT if kind == TEXT else BINARY, force=True)
        return None
    target = Path(os.path.realpath(path)) if os.path.islink(path) else Path(path)
    if kind in REPLACEABLE_KINDS and not accepted_by_check(target):
        check_output_policy("output", target, kind)
    return target


def write_through(path: PathLike, data: bytes) -> None:
    """Write ``data`` into the special file ``path`` (a descriptor of ours, a character device, a FIFO)
    without replacing it, as ``cat > path`` does."""
    fd = stream_fd(path)
    if fd is None:
        with open(path, "wb") as handle:  # O_TRUNC does nothing to a device or FIFO
            handle.write(data)
        return
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def atomic_write_bytes(path: str | os.PathLike, data: bytes, kind: str | None = None) -> None:
    """Write ``data`` to ``path`` so that readers see either the old file or the whole new one. ``kind``:
    what ``data`` is (``assd.paths.TEXT``, ...; default: recognised from its first bytes)."""
    target = output_target(path, kind or data_kind(data[:4096]))
    if target is None:
        with writing(path):
            write_through(path, data)
        return
    path = target
    with writing(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = temp_file_beside(path)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
            os.chmod(tmp_name, 0o644)  # mkstemp creates 0600; outputs are ordinary files
            os.replace(tmp_name, path)
        except BaseException:
            Path(tmp_name).unlink(missing_ok=True)
            raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"), TEXT)


def atomic_write_json(path: str | os.PathLike, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")
