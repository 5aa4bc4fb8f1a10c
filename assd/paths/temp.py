"""Temp files and folders of our atomic writes, and the removal of those left by killed processes.

``temp_file_beside(path)``: ``.NAME.<pid>-<random>.tmp`` beside ``path``; ``temp_dir_beside(path)``: a
folder output staged as ``.NAME.<pid>-<random>.tmpdir``; ``temp_dir(purpose)``: a private
``<tmp>/assd-<purpose>-<pid>-<random>``. Stale ones (their process is gone; pid-less names of older
versions after an hour) are removed when the next one is made; only these patterns are ever touched.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

PathLike = str | os.PathLike

TEMP_DIR_PREFIX = "assd-"
_TEMP_DIR_PATTERN = re.compile(r"^assd-[a-z0-9-]+?-(\d+)-[a-z0-9_]+$")
LEGACY_TEMP_AGE_S = 3600  # temp files of older assd versions carry no pid: stale after an hour


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # a process of another user
        return True
    return True


def _stale(pid_text: str | None, path: Path) -> bool:
    if pid_text is not None:
        return not _pid_alive(int(pid_text))
    try:
        return time.time() - path.stat().st_mtime > LEGACY_TEMP_AGE_S
    except OSError:
        return False


def clean_stale_temp_files(path: PathLike, names: Sequence[str] | None = None) -> list[Path]:
    """Remove ``.NAME.*.tmp`` files beside ``path`` (NAME = its file name) left by dead processes; only
    names of our own atomic-write pattern are touched. ``names``: the folder's entries when the caller
    has listed it already. Returns what was removed."""
    path = Path(path)
    pattern = re.compile(rf"^\.{re.escape(path.name)}\.(?:(\d+)-)?[A-Za-z0-9_]+\.tmp$")
    removed = []
    try:
        candidates = [path.parent / name for name in names] if names is not None else list(path.parent.iterdir())
    except OSError:
        return removed
    for candidate in candidates:
        match = pattern.match(candidate.name)
        if match and candidate.is_file() and not candidate.is_symlink() and _stale(match.group(1), candidate):
            with contextlib.suppress(OSError):
                candidate.unlink()
                removed.append(candidate)
    return removed


def temp_file_beside(path: PathLike) -> tuple[int, str]:
    """``(fd, name)`` of a new, empty temp file for an atomic write of ``path`` (stale ones cleaned first)."""
    path = Path(path)
    clean_stale_temp_files(path, _temp_names_at_start(str(path.parent.resolve())))
    return tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}-", suffix=".tmp", dir=path.parent)


def temp_dir_beside(path: PathLike) -> Path:
    """A new folder ``.NAME.<pid>-<random>.tmpdir`` beside ``path`` for a folder output built whole and
    then renamed into place (``export --triton``), after removing stale ones of the same ``NAME`` (their
    process is gone; the older pid-less ``.NAME.<random>`` folders after an hour) - so a ``kill -9``
    mid-write leaves nothing behind for good."""
    path = Path(path)
    pattern = re.compile(rf"^\.{re.escape(path.name)}\.(?:(\d+)-[A-Za-z0-9_]+\.tmpdir|[a-z0-9_]{{8}})$")
    with contextlib.suppress(OSError):
        for candidate in path.parent.iterdir():
            match = pattern.match(candidate.name)
            if match and candidate.is_dir() and not candidate.is_symlink() and _stale(match.group(1), candidate):
                shutil.rmtree(candidate, ignore_errors=True)
    return Path(tempfile.mkdtemp(prefix=f".{path.name}.{os.getpid()}-", suffix=".tmpdir", dir=path.parent))


@functools.lru_cache(maxsize=256)
def _temp_names_at_start(folder: str) -> tuple[str, ...]:
    """The ``.*.tmp`` entries of ``folder`` when this process first wrote there: a command writing
    thousands of files into one folder (predict) lists it once, not once per file. Temp files of killed
    processes exist before we start; one left by a process killed later is removed by the next command."""
    try:
        return tuple(name for name in os.listdir(folder) if name.startswith(".") and name.endswith(".tmp"))
    except OSError:
        return ()


def clean_stale_temp_dirs(root: PathLike | None = None) -> list[Path]:
    """Remove ``assd-<purpose>-<pid>-*`` folders in the temp folder whose process is gone."""
    root = Path(root or tempfile.gettempdir())
    removed = []
    try:
        candidates = list(root.iterdir())
    except OSError:
        return removed
    for candidate in candidates:
        match = _TEMP_DIR_PATTERN.match(candidate.name)
        if match and candidate.is_dir() and not candidate.is_symlink() and not _pid_alive(int(match.group(1))):
            shutil.rmtree(candidate, ignore_errors=True)
            removed.append(candidate)
    return removed


@contextlib.contextmanager
def temp_dir(purpose: str) -> Iterator[Path]:
    """A private temp folder ``assd-<purpose>-<pid>-<random>`` (removed on exit, stale ones first)."""
    if not re.fullmatch(r"[a-z0-9]+(-[a-z0-9]+)*", purpose):
        raise ValueError(f"temp_dir purpose {purpose!r}: lowercase words joined by '-'")
    clean_stale_temp_dirs()
    with tempfile.TemporaryDirectory(prefix=f"{TEMP_DIR_PREFIX}{purpose}-{os.getpid()}-") as folder:
        yield Path(folder)
