"""Run monitoring on rank 0: the metrics file (JSONL), ``curves.png``, TensorBoard scalars and the
per-epoch progress bar.

``metrics.jsonl`` gets one JSON object per line: ``{"type": "schedule", ...}`` (the effective schedule
and settings, once per call of ``train``, before its first other line), ``{"type": "epoch", ...}``
after every epoch (mean losses, lr, images/s, seconds) and ``{"type": "val", ...}`` after every
validation (mAP). Lines are appended and flushed, so a resumed run continues the same file (after
``state.trim_metrics`` dropped any line written after the checkpoint it resumes from).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from tqdm import tqdm

from assd.train.curves import write_curves
from assd.train.state import CURVES, METRICS, TENSORBOARD_DIR, write_error

WRITE_ADVICE = "free space, then --resume (checkpoints already written are kept), or pass another --out"


def note(message: str, enabled: bool = True) -> None:
    """One line to stderr, without breaking an active progress bar."""
    if enabled:
        tqdm.write(message, file=sys.stderr)


class RunMonitor:
    """Writes metrics and ``curves.png`` (only create it on rank 0) and, if the package is installed,
    TensorBoard scalars. Nothing is written before the first record or step: a run that fails early
    leaves no empty files. ``header`` (the effective schedule) goes in before this call's first line."""

    def __init__(self, out_dir: Path, tensorboard: bool = True, verbose: bool = True, header: dict | None = None,
                 title: str = ""):
        self.out_dir, self.verbose, self.title = out_dir, verbose, title
        self.metrics_path = out_dir / METRICS
        self.lines = read_metrics(self.metrics_path)
        self._pending = [header] if header else []
        self._metrics = None
        self._writer = None
        self._summary_writer = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                note("note: tensorboard is not installed: no TensorBoard scalars (pip install tensorboard)",
                     verbose)
            else:
                self._summary_writer = SummaryWriter

    def _tensorboard(self):
        if self._writer is None and self._summary_writer is not None:
            self._writer = self._summary_writer(log_dir=str(self.out_dir / TENSORBOARD_DIR))
        return self._writer

    def step(self, global_step: int, scalars: dict[str, float]) -> None:
        writer = self._tensorboard()
        if writer is not None:
            for key, value in scalars.items():
                writer.add_scalar(f"train/{key}", value, global_step)

    def record(self, kind: str, values: dict) -> dict:
        """Append ``{"type": kind, **values}`` to the metrics file; mirror numbers to TensorBoard."""
        line = {"type": kind, **values}
        self._append(self._pending + [line])
        self._pending = []
        writer = self._tensorboard()
        if writer is not None:
            step = values.get("global_step", 0)
            for key, value in values.items():
                if isinstance(value, (int, float)) and key not in ("epoch", "global_step"):
                    writer.add_scalar(f"{kind}/{key}", value, step)
            writer.flush()
        return line

    def _append(self, lines: list[dict]) -> None:
        try:
            if self._metrics is None:
                self._metrics = open(self.metrics_path, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()
            self._metrics.write("".join(json.dumps(line) + "\n" for line in lines))
            self._metrics.flush()
        except OSError as exc:
            raise write_error(self.metrics_path, exc, WRITE_ADVICE) from None
        self.lines.extend(lines)

    def plot(self) -> None:
        """Redraw ``curves.png`` from every metrics line of the run so far."""
        path = self.out_dir / CURVES
        try:
            write_curves(self.lines, path, self.title)
        except OSError as exc:
            raise write_error(path, exc, WRITE_ADVICE) from None
        except ImportError:
            note(f"note: matplotlib is not installed: no {CURVES} (pip install matplotlib)", self.verbose)
            self.verbose = False  # said once

    def close(self) -> None:
        if self._metrics is not None:
            self._metrics.close()
        if self._writer is not None:
            self._writer.close()


def read_metrics(path: Path) -> list[dict]:
    """The records of a metrics file (none when it does not exist)."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def progress_bar(epoch: int, epochs: int, total: int, initial: int, enabled: bool) -> tqdm:
    return tqdm(total=total, initial=initial, desc=f"epoch {epoch + 1}/{epochs}", unit="step",
                disable=not enabled, dynamic_ncols=True, leave=True, file=sys.stderr)
