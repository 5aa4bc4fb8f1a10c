"""``curves.png``: the learning curve of a run, drawn from its ``metrics.jsonl`` lines after every epoch.

Three panels over epochs: the mean training loss and its loc / conf parts (log scale), the learning
rate (log scale) and the validation mAP (when the run validates). Drawn with matplotlib's Agg canvas on a
``Figure`` of its own (no pyplot state, no display needed) and written atomically.
"""

from __future__ import annotations

import io
from pathlib import Path

from assd.utils import atomic_write_bytes


def render_curves(lines: list[dict], title: str) -> bytes:
    """PNG bytes of the curves in ``lines`` (metrics records: ``type`` ``epoch`` and ``val``)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    epochs = [line for line in lines if line.get("type") == "epoch"]
    vals = [line for line in lines if line.get("type") == "val"]
    figure = Figure(figsize=(12, 3.6), dpi=100)
    FigureCanvasAgg(figure)
    loss_axes, lr_axes, map_axes = figure.subplots(1, 3)
    x = [line["epoch"] for line in epochs]
    for key, label in (("loss", "loss"), ("loc_loss", "loc (smooth L1)"), ("conf_loss", "conf (cross-entropy)")):
        loss_axes.plot(x, [line[key] for line in epochs], marker=".", label=label)
    positive = all(line[key] > 0 for line in epochs for key in ("loss", "loc_loss", "conf_loss"))
    loss_axes.set(title="training loss (mean per epoch)", xlabel="epoch", yscale="log" if positive else "linear")
    loss_axes.legend(fontsize="small")
    lr_axes.plot(x, [line["lr"] for line in epochs], marker=".", color="tab:purple")
    lr_axes.set(title="learning rate (last step of the epoch)", xlabel="epoch", yscale="log")
    if vals:
        map_axes.plot([line["epoch"] for line in vals], [line["mAP"] for line in vals], marker="o",
                      color="tab:green")
        map_axes.set(title=f"validation mAP ({vals[-1].get('metric', '')})", xlabel="epoch", ylim=(0, 1))
    else:
        map_axes.set(title="validation mAP", xlabel="epoch")
        map_axes.text(0.5, 0.5, "no validation\n(--val-data)", ha="center", va="center",
                      transform=map_axes.transAxes)
    for axes in (loss_axes, lr_axes, map_axes):
        axes.grid(alpha=0.3)
    figure.suptitle(title, fontsize="medium")
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def write_curves(lines: list[dict], path: Path, title: str) -> None:
    atomic_write_bytes(path, render_curves(lines, title))
