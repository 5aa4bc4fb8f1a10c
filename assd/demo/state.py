"""The demo's memory of finished steps: ``OUT/demo_state.json``.

One entry per finished step: the step's ``key`` (its settings and a fingerprint of every input file),
its ``result`` (JSON values), the files it wrote (relative to ``OUT``), how long it took and when it
finished. A step is reused only when its key is the same now and all its files still exist; a step
whose input changed (say, a new checkpoint) has a different key, so everything downstream of a redone
step is redone too.
"""

from __future__ import annotations

import datetime
import json
import os
from pathlib import Path

from assd.utils import atomic_write_json

STATE_FILE = "demo_state.json"
STATE_FORMAT = "assd-demo-state"
STATE_VERSION = 1


def fingerprint(path: str | os.PathLike) -> list[int]:
    """``[size in bytes, modification time in ns]`` of a file: it changes whenever the file is rewritten
    (every writer in assd replaces files atomically)."""
    stat = Path(path).stat()
    return [stat.st_size, stat.st_mtime_ns]


class DemoState:
    """Finished steps of the demo in ``out`` (empty with ``force``, or when the file is unreadable)."""

    def __init__(self, out: Path, force: bool = False):
        self.path = out / STATE_FILE
        self.out = out
        self.steps: dict[str, dict] = {}
        if not force:
            self.steps = self._read()

    def _read(self) -> dict[str, dict]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        if not isinstance(data, dict) or data.get("format") != STATE_FORMAT or data.get("version") != STATE_VERSION:
            return {}
        steps = data.get("steps")
        return steps if isinstance(steps, dict) else {}

    def reusable(self, name: str, key: dict) -> dict | None:
        """The stored entry of step ``name`` when its key equals ``key`` and its files exist, else None."""
        entry = self.steps.get(name)
        if not isinstance(entry, dict) or entry.get("key") != json.loads(json.dumps(key)):
            return None
        if not all((self.out / path).exists() for path in entry.get("outputs", [])):
            return None
        return entry

    def record(self, name: str, key: dict, result: dict, outputs: list[str], seconds: float) -> dict:
        """Store a finished step and rewrite the state file (atomically); returns the entry."""
        entry = {"key": key, "result": result, "outputs": list(outputs), "seconds": round(seconds, 2),
                 "finished_at": datetime.datetime.now().astimezone().isoformat(timespec="seconds")}
        self.steps[name] = json.loads(json.dumps(entry))
        atomic_write_json(self.path, {"format": STATE_FORMAT, "version": STATE_VERSION, "steps": self.steps})
        return self.steps[name]
