"""What ``assd demo`` runs: its options, how much work each step does (``Budget``) and on which data
(``DataPlan``: training, validation and calibration specs)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from assd.errors import UserError

MODEL = "assd-mini"
DEFAULT_OUT = "runs/demo"


@dataclass
class DemoOptions:
    """One ``assd demo`` run.

    Attributes:
        out: folder for every file the demo writes (and its state file, to reuse finished steps).
        data: training data spec (default: the built-in synthetic set, sized by the budget).
        val_data: spec to validate on (default: held-out synthetic images for synthetic data, else the
            first images of ``data``).
        quick: the small budget (about a minute on a 2-core CPU; low but finite mAP).
        force: redo every step instead of reusing the finished ones in ``out``.
        device: ``auto``, ``cpu`` or ``cuda[:N]``.
        progress: progress bars and step details on stderr.
    """

    out: str | Path = DEFAULT_OUT
    data: str = "synthetic"
    val_data: str | None = None
    quick: bool = False
    force: bool = False
    device: str = "auto"
    progress: bool = True


@dataclass(frozen=True)
class Budget:
    """How much work each step does.

    The CPU budgets are sized from measurements on a 2-core CPU (``docs/demo.md``): default mode well
    under 10 minutes with a clearly non-zero mAP, quick mode well under 2 minutes.

    Attributes:
        train_images: images of the synthetic training set (when ``--data`` is plain ``synthetic``).
        epochs: training epochs (``quick`` recipe, lr x0.1 at 80% of them).
        max_steps: cap on optimizer steps for real data sets, so a large one cannot take hours.
        val_images: images evaluated.
        calib_images, parity_images: INT8 calibration images and images of its parity check.
        bench_batches, bench_iters, bench_warmup: benchmark configuration.
        draw_images, attention_images: images drawn with detections / with attention maps.
        workers: DataLoader workers for training.
    """

    name: str
    train_images: int
    epochs: int
    max_steps: int
    val_images: int
    calib_images: int
    parity_images: int
    bench_batches: tuple[int, ...]
    bench_iters: int
    bench_warmup: int
    draw_images: int
    attention_images: int
    workers: int

    @property
    def milestone(self) -> int:
        return max(1, round(0.8 * self.epochs))

    def to_dict(self) -> dict:
        data = dataclasses.asdict(self)
        data["bench_batches"] = list(self.bench_batches)
        return data


BUDGETS = {
    "cpu": Budget("cpu", train_images=320, epochs=5, max_steps=200, val_images=64, calib_images=64,
                  parity_images=4, bench_batches=(1,), bench_iters=20, bench_warmup=3, draw_images=4,
                  attention_images=2, workers=0),
    "cpu-quick": Budget("cpu-quick", train_images=96, epochs=2, max_steps=24, val_images=16, calib_images=16,
                        parity_images=2, bench_batches=(1,), bench_iters=5, bench_warmup=1, draw_images=2,
                        attention_images=1, workers=0),
    "gpu": Budget("gpu", train_images=2000, epochs=10, max_steps=2500, val_images=200, calib_images=200,
                  parity_images=8, bench_batches=(1, 8), bench_iters=100, bench_warmup=10, draw_images=4,
                  attention_images=2, workers=4),
    "gpu-quick": Budget("gpu-quick", train_images=200, epochs=2, max_steps=50, val_images=32, calib_images=32,
                        parity_images=2, bench_batches=(1, 8), bench_iters=20, bench_warmup=3, draw_images=2,
                        attention_images=1, workers=4),
}


def get_budget(device_type: str, quick: bool) -> Budget:
    return BUDGETS[("gpu" if device_type == "cuda" else "cpu") + ("-quick" if quick else "")]


@dataclass(frozen=True)
class DataPlan:
    """Which data each step uses.

    Attributes:
        train: training spec (also the calibration images' source: the INT8 ranges never see validation images).
        val: validation spec; val_limit: evaluate only its first images (None: all).
        val_note: how the validation images relate to the training ones, for the summary.
        synthetic: the training data is the synthetic set (its size fixes the number of steps).
    """

    train: str
    val: str
    val_limit: int | None
    val_note: str
    synthetic: bool

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _parse(spec: str, what: str):
    from assd.data import parse_data_spec

    try:
        return parse_data_spec(spec)
    except UserError as exc:
        raise UserError(f"{what}: {exc}") from None


def plan_data(options: DemoOptions, budget: Budget) -> DataPlan:
    """The ``DataPlan`` for ``options``; every spec is opened once here, so bad input fails before any work.

    Synthetic data is validated on the next (never trained on) synthetic images; other data on
    ``--val-data`` when given, else on the first ``budget.val_images`` images of the training set itself
    (said so in the summary).
    """
    data = options.data.strip()
    train_set = _parse(data, "--data")
    synthetic = train_set.name == "synthetic"
    if synthetic:
        if data == "synthetic":  # the plain spec: the budget's size
            train_set = _parse(f"synthetic:{budget.train_images}", "--data")
        train = f"synthetic:{train_set.num_images}:{train_set.start}"
    else:
        train = data
    if options.val_data is not None:
        val_set = _parse(options.val_data.strip(), "--val-data")
        val, note = options.val_data.strip(), f"--val-data {options.val_data.strip()}"
    elif synthetic:
        first = train_set.start + train_set.num_images
        val = f"synthetic:{budget.val_images}:{first}"
        val_set = _parse(val, "--data")
        note = f"held-out synthetic images {first}..{first + budget.val_images - 1}"
    else:
        val, val_set = data, train_set
        note = "the training set itself: no held-out split, pass --val-data SPEC for one"
    if tuple(val_set.class_names) != tuple(train_set.class_names):
        raise UserError(f"--val-data {val}: its classes ({', '.join(list(val_set.class_names)[:4])}, ...) are not "
                        f"those of --data {data} ({', '.join(list(train_set.class_names)[:4])}, ...): validate on "
                        "the same kind of data")
    limit = budget.val_images if len(val_set) > budget.val_images else None
    if limit is not None:
        note += f", first {limit} of {len(val_set)} images"
    return DataPlan(train=train, val=val, val_limit=limit, val_note=note, synthetic=synthetic)
