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
"""

from __future__ import annotations

import contextlib
import errno
import functools
import os
import re
import shutil
import stat
import tempfile
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path

from assd.errors import UserError

TEMP_DIR_PREFIX = "assd-"
_TEMP_DIR_PATTERN = re.compile(r"^assd-[a-z0-9-]+?-(\d+)-[a-z0-9_]+$")
LEGACY_TEMP_AGE_S = 3600  # temp files of older assd versions carry no pid: stale after an hour
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


PathLike = str | os.PathLike


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


# ---------------------------------------------------------------- the output policy: special files, kinds

TEXT, ONNX, TORCH, ENGINE, IMAGE, BINARY, EMPTY = "text", "onnx", "torch", "engine", "image", "binary", "empty"
_KIND_NAMES = {TEXT: "a text file (JSON, Markdown, CSV)", ONNX: "an ONNX model", TORCH: "a PyTorch checkpoint",
               ENGINE: "a TensorRT engine", IMAGE: "an image", BINARY: "a binary file"}
_SUFFIX_KINDS = {**dict.fromkeys((".json", ".jsonl", ".md", ".markdown", ".csv", ".txt", ".log", ".pbtxt"), TEXT),
                 ".onnx": ONNX, **dict.fromkeys((".pt", ".pth", ".ckpt"), TORCH),
                 **dict.fromkeys((".engine", ".plan", ".trt"), ENGINE),
                 **dict.fromkeys((".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff"), IMAGE)}
_OPTION_KINDS = {"--json": TEXT, "--csv": TEXT, "--markdown": TEXT, "--calib-cache": TEXT,
                 "the engine sidecar": TEXT, "the precision graph": ONNX, "--timing-cache": BINARY}
REPLACEABLE_KINDS = {TEXT: {TEXT}, ONNX: {ONNX}, TORCH: {TORCH}, ENGINE: {ENGINE, BINARY}, IMAGE: {IMAGE},
                     BINARY: {BINARY, ENGINE}}  # output kind -> existing kinds it may replace (an empty file: any)
_IMAGE_MAGIC = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF87a", b"GIF89a", b"BM", b"II*\x00", b"MM\x00*")
_ONNX_FIELD_TAGS = {0x12, 0x1A, 0x22, 0x28, 0x32, 0x3A, 0x42, 0x52, 0x72}  # ModelProto fields after ir_version
_FD_LINK = re.compile(r"^/(?:proc/(?:self|\d+)|dev)/fd/(\d+)$")
_kind_change_allowed = False
_CHECKED: set[str] = set()  # outputs check_outputs accepted (resolved paths)


def allow_kind_change(allowed: bool) -> None:
    """``--force``: let this process replace an existing output of another kind (set by the CLI)."""
    global _kind_change_allowed
    _kind_change_allowed = bool(allowed)


def accepted_by_check(path: PathLike) -> bool:
    """True when ``check_outputs`` accepted ``path`` as an output in this process (``--force`` decided)."""
    return str(_resolved(path)) in _CHECKED


def output_kind(path: PathLike, option: str | None = None) -> str | None:
    """The kind of file an output is (``TEXT``, ``ONNX``, ...): by its option, else its suffix; None: unknown."""
    return _OPTION_KINDS.get(option or "") or _SUFFIX_KINDS.get(Path(path).suffix.lower())


def data_kind(head: bytes, path: PathLike | None = None) -> str:
    """The kind of a file from its first bytes (content, not name). ``path``: an engine is also recognised
    by its ``.json`` sidecar (``assd build-engine`` writes one beside every engine)."""
    if not head:
        return EMPTY
    if head.startswith(_IMAGE_MAGIC) or (head[:4] == b"RIFF" and head[8:12] == b"WEBP"):
        return IMAGE
    if head.startswith(b"PK\x03\x04"):  # torch.save's zip archive holds <name>/data.pkl
        return TORCH if b"data.pkl" in head or b"/version" in head else BINARY
    if head[0] == 0x80 and len(head) > 1 and 2 <= head[1] <= 5:  # a pickle: torch.save's legacy format
        return TORCH
    if b"ftrt" in head[:32] or b"ptrt" in head[:32]:  # TensorRT plan magic
        return ENGINE
    if path is not None and Path(f"{path}.json").is_file() and Path(path).suffix in (".engine", ".plan", ".trt"):
        return ENGINE
    if len(head) > 2 and head[0] == 0x08 and 1 <= head[1] <= 20 and head[2] in _ONNX_FIELD_TAGS:
        return ONNX  # protobuf: field 1 (ir_version) varint, then another ModelProto field
    try:
        head[:-4].decode("utf-8") if len(head) >= 4096 else head.decode("utf-8")
    except UnicodeDecodeError:
        return BINARY
    return BINARY if b"\x00" in head else TEXT


def file_kind(path: PathLike) -> str:
    """``data_kind`` of an existing regular file (its first 4 KB)."""
    with open(path, "rb") as handle:
        return data_kind(handle.read(4096), path)


def _special_kind(mode: int) -> str | None:
    for test, name in ((stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"), (stat.S_ISDIR, "a folder")):
        if test(mode):
            return name
    return None if stat.S_ISREG(mode) else "not a regular file"


def stream_fd(path: PathLike) -> int | None:
    """The file descriptor of this process that ``path`` names (``/dev/stdout``, ``/dev/fd/N``,
    ``/proc/self/fd/N``, or a symlink to one), else None: writing such a path writes that descriptor."""
    current = os.path.abspath(path)
    for _ in range(40):
        match = _FD_LINK.match(current)
        if match and (current.startswith(("/dev/", "/proc/self/")) or current.split("/")[2] == str(os.getpid())):
            return int(match.group(1))
        if not os.path.islink(current):
            return None
        current = os.path.normpath(os.path.join(os.path.dirname(current), os.readlink(current)))
    return None


def is_special(path: PathLike) -> bool:
    """True when ``path`` exists (symlinks followed) and is not a regular file or folder, or names one of
    this process's file descriptors."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return stream_fd(path) is not None
    return not stat.S_ISREG(mode) and not stat.S_ISDIR(mode) or stream_fd(path) is not None


def check_output_policy(option: str, path: PathLike, kind: str | None = None, force: bool | None = None) -> None:
    """Refuse (``UserError``) an existing ``path`` the output policy protects (module docstring): a special
    file that a non-text output would replace, or a regular file of another kind than ``kind`` (default:
    ``output_kind``) unless ``force`` (default: the CLI's ``--force``)."""
    kind = kind or output_kind(path, option)
    force = _kind_change_allowed if force is None else force
    try:
        mode = os.stat(path).st_mode
    except OSError:
        mode = None
    fd = stream_fd(path)
    if fd is not None or mode is not None and not stat.S_ISREG(mode) and not stat.S_ISDIR(mode):
        if kind == TEXT and (fd is not None or stat.S_ISCHR(mode) or stat.S_ISFIFO(mode)):
            return  # written through (write_through): what '-o /dev/stdout' or a FIFO means
        special = f"file descriptor {fd} of this process" if fd is not None else _special_kind(mode)
        raise UserError(f"{path} ({option}): is {special}, not a regular file; assd never replaces devices, FIFOs, "
                        "sockets or descriptors (only text reports are written through them): choose a regular file "
                        "path")
    if mode is None or not stat.S_ISREG(mode) or kind is None or force:
        return
    try:
        existing = file_kind(path)
    except OSError:
        return  # unreadable: the write itself will say why
    if existing != EMPTY and existing not in REPLACEABLE_KINDS[kind]:
        raise UserError(f"{path} ({option}): exists and holds {_KIND_NAMES[existing]}, not {_KIND_NAMES[kind]}; "
                        "it is not replaced by another kind of file: choose another path, or pass --force to replace it")


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
