"""Small shared helpers: atomic file writes (temp file in the same folder, then rename).

A failed write (disk full, read-only folder, a parent that is a file) is one ``UserError`` line naming
the file and the errno, and leaves neither a partial file at ``path`` nor a temp file beside it; temp
files of killed processes are removed by the next write of the same file (``assd.paths``). The output
policy applies (``assd.paths.output_target``): a symlink is written through to its file, a text report
given a device or FIFO (``/dev/stdout``) is written through it, nothing else special is ever replaced,
and a file of another kind is not replaced without ``--force``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from assd.paths import TEXT, data_kind, output_target, temp_file_beside, write_through, writing


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
