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
``warmup_epochs`` epochs. Every field can be overridden (``Recipe.with_overrides``, CLI options).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from assd.errors import UserError

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

    def __post_init__(self):
        problems = []
        if self.optimizer not in OPTIMIZERS:
            problems.append(f"optimizer '{self.optimizer}' (use {' or '.join(OPTIMIZERS)})")
        if not self.lr > 0:
            problems.append(f"lr {self.lr} (must be > 0)")
        if self.batch_size < 1:
            problems.append(f"batch size {self.batch_size} (must be >= 1)")
        if self.epochs < 1:
            problems.append(f"epochs {self.epochs} (must be >= 1)")
        if self.warmup_epochs < 0 or not 0 < self.warmup_factor <= 1:
            problems.append(f"warm-up {self.warmup_epochs} epochs from x{self.warmup_factor} "
                            "(need epochs >= 0 and 0 < factor <= 1)")
        if list(self.milestones) != sorted(self.milestones) or any(m < 1 for m in self.milestones):
            problems.append(f"milestones {list(self.milestones)} (need increasing epochs >= 1)")
        if problems:
            raise UserError(f"recipe {self.name}: bad " + "; bad ".join(problems))

    def with_overrides(self, **values) -> Recipe:
        """A copy with the given fields changed (``None`` values are ignored); the name gets ``+custom``."""
        changes = {key: value for key, value in values.items() if value is not None}
        unknown = set(changes) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise UserError(f"unknown recipe fields {sorted(unknown)}")
        if "milestones" in changes:
            changes["milestones"] = tuple(int(m) for m in changes["milestones"])
        if not changes or all(getattr(self, key) == value for key, value in changes.items()):
            return self
        name = changes.pop("name", self.name if self.name.endswith("+custom") else f"{self.name}+custom")
        return dataclasses.replace(self, name=name, **changes)

    def to_dict(self) -> dict:
        data = dataclasses.asdict(self)
        data["milestones"] = list(self.milestones)
        return data

    @classmethod
    def from_dict(cls, data: dict) -> Recipe:
        values = dict(data)
        values["milestones"] = tuple(values.get("milestones", ()))
        return cls(**values)


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
