"""The folder one ``assd serve`` works in, and the removal of those a killed server left behind.

A server stopped in order removes its folder; one killed with SIGKILL cannot (about 22 MB each:
pytriton's copy of tritonserver). Every folder records its owner's process id and start time
(``owner``); a new server removes the folders whose owner is gone (a reused process id has another
start time) before it makes its own.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

PREFIX = "assd-serve-"
OWNER = "owner"


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks after boot (``/proc/PID/stat`` field 22), None when gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _owner_alive(folder: Path) -> bool:
    try:
        pid, started = folder.joinpath(OWNER).read_text().split()
        return _start_time(int(pid)) == started
    except FileNotFoundError:  # a server creating its folder right now writes the owner next
        try:
            return time.time() - folder.stat().st_mtime < 60
        except OSError:
            return False
    except (OSError, ValueError):
        return False


def remove_stale(root: str | None = None) -> list[Path]:
    """Remove the serve folders under ``root`` (the temp folder) whose owner process is gone."""
    removed = []
    for folder in Path(root or tempfile.gettempdir()).glob(f"{PREFIX}*"):
        if folder.is_dir() and not folder.is_symlink() and not _owner_alive(folder):
            shutil.rmtree(folder, ignore_errors=True)
            if not folder.exists():
                removed.append(folder)
    return removed


def make_workspace(pid: int, root: str | None = None) -> Path:
    """A new serve folder owned by process ``pid``."""
    folder = Path(tempfile.mkdtemp(prefix=PREFIX, dir=root))
    folder.joinpath(OWNER).write_text(f"{pid} {_start_time(pid)}\n")
    return folder
