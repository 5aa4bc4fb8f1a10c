"""Run monitoring on rank 0: the metrics file (JSONL), TensorBoard scalars and the per-epoch progress bar.

``metrics.jsonl`` gets one JSON object per line: ``{"type": "epoch", ...}`` after every epoch (mean
losses, lr, images/s, seconds) and ``{"type": "val", ...}`` after every validation (mAP). Lines are
appended and flushed, so a resumed run continues the same file.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from tqdm import tqdm

from assd.train.state import METRICS, TENSORBOARD_DIR


def note(message: str, enabled: bool = True) -> None:
    """One line to stderr, without breaking an active progress bar."""
    if enabled:
        tqdm.write(message, file=sys.stderr)


class RunMonitor:
    """Writes metrics (only create it on rank 0) and, if the package is installed, TensorBoard scalars."""

    def __init__(self, out_dir: Path, tensorboard: bool = True, verbose: bool = True):
        self.out_dir = out_dir
        self.metrics_path = out_dir / METRICS
        out_dir.mkdir(parents=True, exist_ok=True)
        self._metrics = open(self.metrics_path, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()
        self._writer = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                note("note: tensorboard is not installed: no TensorBoard scalars (pip install tensorboard)",
                     verbose)
            else:
                self._writer = SummaryWriter(log_dir=str(out_dir / TENSORBOARD_DIR))

    def step(self, global_step: int, scalars: dict[str, float]) -> None:
        if self._writer is not None:
            for key, value in scalars.items():
                self._writer.add_scalar(f"train/{key}", value, global_step)

    def record(self, kind: str, values: dict) -> dict:
        """Append ``{"type": kind, **values}`` to the metrics file; mirror numbers to TensorBoard."""
        line = {"type": kind, **values}
        self._metrics.write(json.dumps(line) + "\n")
        self._metrics.flush()
        if self._writer is not None:
            step = values.get("global_step", 0)
            for key, value in values.items():
                if isinstance(value, (int, float)) and key not in ("epoch", "global_step"):
                    self._writer.add_scalar(f"{kind}/{key}", value, step)
            self._writer.flush()
        return line

    def close(self) -> None:
        self._metrics.close()
        if self._writer is not None:
            self._writer.close()


def progress_bar(epoch: int, epochs: int, total: int, initial: int, enabled: bool) -> tqdm:
    return tqdm(total=total, initial=initial, desc=f"epoch {epoch + 1}/{epochs}", unit="step",
                disable=not enabled, dynamic_ncols=True, leave=True, file=sys.stderr)
