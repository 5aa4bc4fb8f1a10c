"""Where outputs may go: never onto an input, writable before the work starts, one line when writing fails.

Every command that writes files uses these few functions (the API other stages adopt):

``check_outputs(inputs, files=..., folders=...)``
    Before any expensive work. ``inputs``: every file or folder the command reads (``None`` entries are
    skipped). ``files``: ``{option: path}`` of output files; ``folders``: ``{option: (folder, names)}``
    of output folders with the names the command will write inside them. Refuses (``UserError``, one
    line) an output that resolves (symlinks followed) onto an input or into an input folder (a data root
    stands for all its files), an output folder that is an input folder, two options naming one file, an output file that is a folder, and an output whose parent is
    a file or is not writable (a read-only file system, no permission). Missing parent folders are fine
    when they can be created.
``writing(path)``
    Context manager around a late write: ``OSError`` (ENOSPC, EROFS, EACCES, ENOTDIR, ...) and torch's
    ``RuntimeError`` on a full disk ("unexpected pos", "file write failed") become one ``UserError``
    naming the path and the errno. ``write_error(path, exc)`` builds that error.
``temp_file_beside(path)``
    ``(fd, name)`` of a new temp file ``.NAME.<pid>-<random>.tmp`` in ``path``'s folder (for atomic
    writes: write, then ``os.replace``), after removing stale ones of the same ``NAME`` (their process
    is gone) - so a ``kill -9`` leaves nothing behind for good.
``temp_dir(purpose)``
    Context manager: a private temp folder ``<tmp>/assd-<purpose>-<pid>-<random>``, removed on exit;
    stale ``assd-*`` folders of dead processes are removed first.

The output policy (docs/reliability.md, section 1) that ``check_outputs`` and the atomic writers share:
an existing output that is not a regular file (device, FIFO, socket, or a symlink to one) is never
replaced: text reports are written *through* it (``-o /dev/stdout``, a FIFO), everything else is
refused; an existing regular file whose kind (``file_kind``: by content) differs from the output's kind
(``output_kind``: by option and suffix) is refused unless ``--force`` (``allow_kind_change``). The
writers (``assd.utils.output_target``) apply it again, and write symlinks through to their files.
``temp_dir_beside(path)`` stages a folder output (stale ones of killed processes removed first).

The guard lives here; the file kinds and special files in ``assd.paths.kinds``, the temp files and
folders in ``assd.paths.temp`` (their names are importable from ``assd.paths`` too).
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path

from assd.errors import UserError
from assd.paths.kinds import (
    BINARY,
    EMPTY,
    ENGINE,
    IMAGE,
    ONNX,
    REPLACEABLE_KINDS,
    TEXT,
    TORCH,
    PathLike,
    allow_kind_change,
    check_output_policy,
    data_kind,
    file_kind,
    is_special,
    output_kind,
    stream_fd,
)
from assd.paths.temp import (
    LEGACY_TEMP_AGE_S,
    TEMP_DIR_PREFIX,
    clean_stale_temp_dirs,
    clean_stale_temp_files,
    temp_dir,
    temp_dir_beside,
    temp_file_beside,
)

__all__ = ["BINARY", "EMPTY", "ENGINE", "IMAGE", "LEGACY_TEMP_AGE_S", "ONNX", "REPLACEABLE_KINDS", "TEMP_DIR_PREFIX",
           "TEXT", "TORCH", "PathLike", "accepted_by_check", "allow_kind_change", "check_output_policy",
           "check_outputs", "clean_stale_temp_dirs", "clean_stale_temp_files", "data_kind", "file_kind", "is_special",
           "output_kind", "stream_fd", "temp_dir", "temp_dir_beside", "temp_file_beside", "write_error", "writing"]

_HINTS = {
    errno.ENOSPC: "the disk is full: free space or choose another location",
    errno.EDQUOT: "the disk quota is exceeded: free space or choose another location",
    errno.EROFS: "the file system is read-only: choose another location",
    errno.EACCES: "no permission to write there: choose another location",
    errno.EPERM: "no permission to write there: choose another location",
    errno.ENOTDIR: "a parent of it is a file, not a folder: choose another location",
    errno.EISDIR: "it is a folder: give a file name",
    errno.ENAMETOOLONG: "the name is too long: choose a shorter path",
}
_TORCH_DISK_FULL = ("unexpected pos", "file write failed")


def _resolved(path: PathLike) -> Path:
    try:
        return Path(path).expanduser().resolve()
    except (RuntimeError, OSError) as exc:  # a symlink loop (RuntimeError before Python 3.13)
        raise UserError(f"{path}: cannot resolve this path ({exc}): remove the symlink loop or choose another "
                        "path") from None


def _errno_text(code: int) -> str:
    return f"{errno.errorcode.get(code, code)}: {os.strerror(code)}"


def write_error(path: PathLike, exc: BaseException) -> UserError | None:
    """The one-line ``UserError`` for a failed write of ``path``, or None when ``exc`` is not a filesystem
    failure (an ``OSError``, or torch's ``RuntimeError`` on a full disk)."""
    cause = exc
    while cause is not None and not isinstance(cause, OSError):  # torch raises its own error on top of it
        cause = cause.__cause__ or cause.__context__
    if cause is not None and cause.errno is not None:
        code = cause.errno
    elif isinstance(exc, RuntimeError) and any(text in str(exc) for text in _TORCH_DISK_FULL):
        code = errno.ENOSPC if _free_bytes(Path(path).parent) == 0 else errno.EIO
    else:
        return None
    hint = _HINTS.get(code, "check the location and try again")
    return UserError(f"{path}: cannot write ({_errno_text(code)}): {hint}")


@contextlib.contextmanager
def writing(path: PathLike) -> Iterator[None]:
    """Turn a filesystem failure while writing ``path`` into one ``UserError`` line (see ``write_error``)."""
    try:
        yield
    except (OSError, RuntimeError) as exc:
        error = write_error(path, exc)
        if error is None:
            raise
        raise error from None


def _free_bytes(folder: Path) -> int | None:
    try:
        stats = os.statvfs(folder)
    except OSError:
        return None
    return stats.f_bavail * stats.f_frsize


def _existing_ancestor(path: Path) -> Path:
    ancestor = path
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    return ancestor


def _check_writable(option: str, path: Path, is_folder: bool) -> None:
    """UserError unless ``path`` (a file or a folder to create/fill) can be written by this process."""
    target = path if is_folder else path.parent
    if not is_folder and path.is_dir():
        raise UserError(f"{path} ({option}): cannot write ({_errno_text(errno.EISDIR)}): {_HINTS[errno.EISDIR]}")
    if is_folder and path.exists() and not path.is_dir():
        raise UserError(f"{path} ({option}): cannot write ({_errno_text(errno.ENOTDIR)}): it is a file, not a "
                        "folder: choose a folder")
    ancestor = _existing_ancestor(target)
    if not ancestor.is_dir():
        raise UserError(f"{path} ({option}): cannot write ({_errno_text(errno.ENOTDIR)}): {ancestor} is a file, "
                        "not a folder: choose another location")
    # A read-only mount first: root passes os.access's permission check but still cannot write there.
    code = errno.EROFS if _read_only(ancestor) else None if os.access(ancestor, os.W_OK | os.X_OK) else errno.EACCES
    if code is not None:
        raise UserError(f"{path} ({option}): cannot write ({_errno_text(code)}): {_HINTS[code]}")


def _read_only(folder: Path) -> bool:
    try:
        return bool(os.statvfs(folder).f_flag & os.ST_RDONLY)
    except OSError:
        return False



_CHECKED: set[str] = set()  # outputs check_outputs accepted (resolved paths)


def accepted_by_check(path: PathLike) -> bool:
    """True when ``check_outputs`` accepted ``path`` as an output in this process (``--force`` decided)."""
    return str(_resolved(path)) in _CHECKED


def check_outputs(inputs: Iterable[PathLike | None], files: Mapping[str, PathLike | None] | None = None,
                  folders: Mapping[str, tuple[PathLike | None, Sequence[str]]] | None = None,
                  kinds: Mapping[str, str] | None = None) -> None:
    """Refuse, before any work, outputs that would land on an input, cannot be written or would replace
    what the output policy protects (module docstring). ``kinds``: ``{option: kind}`` where the option's
    name and the file's suffix do not say what it writes."""
    input_paths = {_resolved(path): Path(path) for path in inputs if path is not None and Path(path).exists()}
    input_folders = [resolved for resolved in input_paths if resolved.is_dir()]
    claimed: dict[Path, str] = {}

    def refuse_inside_input_folder(option: str, path: Path) -> None:
        # A data root stands for every file below it (annotations, split lists, images): nothing goes there.
        resolved = _resolved(path)
        for folder in input_folders:
            if folder in resolved.parents:
                raise UserError(f"{path} ({option}): is inside the input folder {input_paths[folder]} of this "
                                "command; outputs never go among the inputs: choose a path outside it")

    def claim(option: str, path: Path) -> None:
        refuse_inside_input_folder(option, path)
        resolved = _resolved(path)
        if resolved in input_paths:
            original = input_paths[resolved]
            same = "" if Path(path) == original else f" ({original})"
            raise UserError(f"{path} ({option}): is an input of this command{same}; writing it would destroy the "
                            "input: choose another output path")
        if resolved in claimed and claimed[resolved] != option:
            raise UserError(f"{path} ({option}): is also the output of {claimed[resolved]}: give each output its "
                            "own path")
        claimed[resolved] = option

    given = {option: path for option, path in (files or {}).items() if path is not None}
    for option, path in given.items():  # collisions first: "X is also the output of Y" says the most
        if stream_fd(path) is None:
            _check_writable(option, Path(path), is_folder=False)
            claim(option, Path(path))
    for option, path in given.items():
        check_output_policy(option, path, (kinds or {}).get(option))
        if stream_fd(path) is None:
            _CHECKED.add(str(_resolved(path)))
    for option, (folder, names) in (folders or {}).items():
        if folder is None:
            continue
        folder = Path(folder)
        _check_writable(option, folder, is_folder=True)
        if _resolved(folder) in input_paths:
            raise UserError(f"{folder} ({option}): is an input folder of this command; writing into it would mix "
                            "outputs with (or replace) the inputs: choose another folder")
        refuse_inside_input_folder(option, folder)
        for name in names:
            claim(option, folder / name)
            check_output_policy(option, folder / name, force=True)  # the command owns its folder's files
            _CHECKED.add(str(_resolved(folder / name)))

