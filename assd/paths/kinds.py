"""The output policy's file kinds and special files (``assd.paths``, docs/reliability.md section 1).

An existing output that is not a regular file (device, FIFO, socket, or a symlink to one) is never
replaced: text reports are written *through* it (``-o /dev/stdout``, a FIFO), everything else is
refused; an existing regular file whose kind (``file_kind``: by content) differs from the output's kind
(``output_kind``: by option and suffix) is refused unless ``--force`` (``allow_kind_change``).
"""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

from assd.errors import UserError

PathLike = str | os.PathLike

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



def allow_kind_change(allowed: bool) -> None:
    """``--force``: let this process replace an existing output of another kind (set by the CLI)."""
    global _kind_change_allowed
    _kind_change_allowed = bool(allowed)


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

