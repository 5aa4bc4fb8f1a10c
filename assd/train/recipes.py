"""Training recipes: the paper's schedules (section 4) and a quick one for CPU runs of ``assd-mini``.

Paper: SGD, momentum 0.9, weight decay 5e-4, lr 1e-3; 10 images per GPU at 321 and 8 at 513 (on 8 GPUs);
the lr is multiplied by 0.1 at each milestone epoch:

=========  ======  ==========  ==========================
recipe     epochs  milestones  data
=========  ======  ==========  ==========================
voc-321    280     200, 250    VOC07+12 trainval
voc-513    180     120, 170    VOC07+12 trainval
coco-321   160     100, 150    COCO trainval35k
coco-513   140     80, 130     COCO trainval35k
=========  ======  ==========  ==========================

Our addition (not in the paper): a linear warm-up of the lr from ``warmup_factor * lr`` over the first
``warmup_epochs`` epochs. Every field can be overridden (``Recipe.with_overrides``, CLI options); a new
epoch count without explicit milestones scales the milestones and the warm-up with it.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from assd.errors import UserError
from assd.models.config import unknown_fields

OPTIMIZERS = ("sgd", "adamw")


@dataclass(frozen=True)
class Recipe:
    """How to train: optimizer, schedule and batch.

    Attributes:
        name: recipe name (``voc-321`` ...), or the base name plus ``+overrides`` when changed.
        optimizer: ``"sgd"`` (with momentum) or ``"adamw"`` (momentum is then beta1).
        lr: peak learning rate, for ``batch_size`` images per process.
        momentum, weight_decay: optimizer settings.
        batch_size: images per process (per GPU).
        epochs: total epochs.
        milestones: epochs at which the lr is multiplied by ``gamma``.
        gamma: lr decay factor at each milestone.
        warmup_epochs: length of the linear warm-up in epochs (fractions allowed; 0 = none).
        warmup_factor: lr multiplier at the first step of the warm-up.
        scaled_from: when ``epochs`` was overridden without milestones, the recipe's own epochs (the
            milestones and warm-up were scaled from those); None otherwise.
    """

    name: str
    optimizer: str = "sgd"
    lr: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 5e-4
    batch_size: int = 10
    epochs: int = 280
    milestones: tuple[int, ...] = (200, 250)
    gamma: float = 0.1
    warmup_epochs: float = 1.0
    warmup_factor: float = 0.001
    scaled_from: int | None = None

    def __post_init__(self):
        problems = []
        if self.optimizer not in OPTIMIZERS:
            problems.append(f"--optimizer {self.optimizer} (use {' or '.join(OPTIMIZERS)})")
        if not 0 < self.lr < math.inf:
            problems.append(f"--lr {self.lr} (must be > 0 and finite)")
        if not 0 <= self.momentum < 1:
            problems.append(f"--momentum {self.momentum} (SGD momentum / AdamW beta1: must be in [0, 1))")
        if not 0 <= self.weight_decay < math.inf:
            problems.append(f"--weight-decay {self.weight_decay} (must be >= 0 and finite)")
        if self.batch_size < 1:
            problems.append(f"--batch-size {self.batch_size} (must be >= 1)")
        if self.epochs < 1:  # the warm-up and milestone checks below would only echo it
            problems.append(f"--epochs {self.epochs} (must be >= 1)")
        elif not 0 <= self.warmup_epochs <= self.epochs:
            problems.append(f"--warmup-epochs {self.warmup_epochs:g} (must lie in 0..{self.epochs}, the run's epochs)")
        if not 0 < self.warmup_factor <= 1 or not 0 < self.gamma <= 1:
            problems.append(f"warm-up factor {self.warmup_factor} / gamma {self.gamma} (need 0 < value <= 1)")
        if list(self.milestones) != sorted(set(self.milestones)) or any(m < 1 for m in self.milestones):
            problems.append(f"--milestones {_listed(self.milestones)} (need increasing epochs >= 1)")
        elif self.epochs >= 1 and any(m > self.epochs for m in self.milestones):
            problems.append(f"--milestones {_listed(self.milestones)} (beyond the run's {self.epochs} epochs, so "
                            f"the lr would never decay there: give epochs in 1..{self.epochs})")
        if problems:
            raise UserError(f"recipe {self.name}: bad " + "; bad ".join(problems))

    def with_overrides(self, **values) -> Recipe:
        """A copy with the given fields changed (``None`` values are ignored); the name gets ``+custom``.

        A new ``epochs`` without explicit ``milestones`` scales the milestones (and, unless given too, the
        warm-up) by ``epochs / self.epochs``, so the lr decays at the same fractions of the run
        (``scaled_from`` then records the recipe's own epochs)."""
        changes = {key: value for key, value in values.items() if value is not None}
        if unknown := unknown_fields(self, changes):
            raise UserError(f"unknown recipe fields {unknown}")
        if "milestones" in changes:
            changes["milestones"] = tuple(int(m) for m in changes["milestones"])
        epochs = changes.get("epochs", self.epochs)
        if epochs != self.epochs and epochs >= 1 and "milestones" not in changes:
            changes["milestones"] = scale_milestones(self.milestones, self.epochs, epochs)
            changes.setdefault("warmup_epochs", round(self.warmup_epochs * epochs / self.epochs, 6))
            changes["scaled_from"] = self.scaled_from or self.epochs
        if not changes or all(getattr(self, key) == value for key, value in changes.items()):
            return self
        name = changes.pop("name", self.name if self.name.endswith("+custom") else f"{self.name}+custom")
        return dataclasses.replace(self, name=name, **changes)

    def describe(self, processes: int = 1) -> str:
        """One line: the effective schedule (what ``assd train`` prints at start)."""
        scaled = f" (milestones and warm-up scaled from {self.scaled_from} epochs)" if self.scaled_from else ""
        decay = f"lr x{self.gamma:g} at epochs {_listed(self.milestones)}" if self.milestones else "no lr decay"
        return (f"schedule {self.name}: {self.epochs} epochs, {self.optimizer} lr {self.lr:g} (momentum "
                f"{self.momentum:g}, weight decay {self.weight_decay:g}), batch {self.batch_size} x {processes} "
                f"process(es), {decay}, warm-up {self.warmup_epochs:g} epoch(s) from x{self.warmup_factor:g}"
                + scaled)

    def to_dict(self) -> dict:
        data = dataclasses.asdict(self)
        data["milestones"] = list(self.milestones)
        return data

    @classmethod
    def from_dict(cls, data: dict) -> Recipe:
        values = dict(data)
        values["milestones"] = tuple(values.get("milestones", ()))
        return cls(**values)


def _listed(milestones) -> str:
    return ",".join(str(m) for m in milestones) or "none"


def scale_milestones(milestones: tuple[int, ...], epochs_from: int, epochs_to: int) -> tuple[int, ...]:
    """Milestones at the same fractions of a run of ``epochs_to`` epochs: rounded, kept inside
    ``1..epochs_to - 1`` (so each still decays the lr), duplicates merged; none for a 1-epoch run."""
    if epochs_to < 2:
        return ()
    return tuple(sorted({min(max(round(m * epochs_to / epochs_from), 1), epochs_to - 1) for m in milestones}))


RECIPES: dict[str, Recipe] = {
    "voc-321": Recipe("voc-321", batch_size=10, epochs=280, milestones=(200, 250)),
    "voc-513": Recipe("voc-513", batch_size=8, epochs=180, milestones=(120, 170)),
    "coco-321": Recipe("coco-321", batch_size=10, epochs=160, milestones=(100, 150)),
    "coco-513": Recipe("coco-513", batch_size=8, epochs=140, milestones=(80, 130)),
    # Not from the paper: what made assd-mini learn voc-mini and synthetic data fastest on a 2-core CPU
    # (measurements in docs/training.md).
    "quick": Recipe("quick", optimizer="adamw", lr=1e-3, weight_decay=1e-4, batch_size=8, epochs=30,
                    milestones=(20,), warmup_epochs=1.0, warmup_factor=0.01),
}


PAPER_RECIPES = ("voc-321", "voc-513", "coco-321", "coco-513")


def get_recipe(name: str) -> Recipe:
    if name not in RECIPES:
        raise UserError(f"unknown recipe '{name}': choose one of {', '.join(RECIPES)}")
    return RECIPES[name]


def default_recipe_name(input_size: int, backbone: str, data_kind: str) -> str:
    """``quick`` for the small CPU model (ResNet18) and synthetic data; otherwise the paper's recipe for
    the data (COCO or VOC-style) at the nearer of the two paper resolutions (321 / 513)."""
    if backbone == "resnet18" or data_kind == "synthetic":
        return "quick"
    size = "321" if input_size < (321 + 513) / 2 else "513"
    return f"{'coco' if data_kind == 'coco' else 'voc'}-{size}"
