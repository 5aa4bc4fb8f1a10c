"""``TrainOptions`` (what ``assd train`` and the Python API accept) and ``TrainResult`` (what a run gives)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from torch.utils.data import Dataset

from assd.errors import UserError
from assd.models.config import ModelConfig
from assd.train.recipes import Recipe

AMP_MODES = ("none", "bf16", "fp16")
AUGMENTATIONS = ("ssd", "none")
MAX_SEED = 2**63 - 1
# Settings that shape the run besides the recipe, with their values for a new run; ``None`` in
# ``TrainOptions`` means "not given": a new run takes these defaults, a resumed one the checkpoint's.
RUN_SETTING_DEFAULTS = {"seed": 0, "augment": "ssd", "amp": "none", "sync_bn": False, "freeze_bn": False}


@dataclass
class TrainOptions:
    """One training run.

    Attributes:
        model: preset name or ``ModelConfig`` (optional with ``resume``: the checkpoint has it). Its class
            names are replaced by the training data's.
        data: data spec (``voc:ROOT[:SETS]``, ``coco:IMAGES:JSON``, ``synthetic[:N]``) or a dataset object
            already serving training samples at the model's input size. Optional with ``resume``.
        out: folder for ``last.pt``, ``best.pt``, ``metrics.jsonl`` and ``tensorboard/``.
        recipe: recipe name (default: chosen from the model's input size and the data kind).
        epochs ... optimizer: override the recipe's values (None keeps the recipe's).
        workers: DataLoader worker processes per training process.
        device: ``cpu``, ``cuda`` or ``cuda:N`` (default: cuda if available); under torchrun each process
            takes ``cuda:LOCAL_RANK``.
        resume: continue the run in ``out`` from ``last.pt``; force: start over in a folder holding a run.
        backbone_weights: ``imagenet``, a torchvision state_dict path or ``none`` (fresh runs only).
        val_data: spec or dataset to validate on (mAP; keeps ``best.pt``); val_every: every N epochs
            (and after the last one); val_metric: ``voc07``/``voc12``/``coco`` (default by data kind).
        seed: seeds the weights' init, the sample order (by seed + epoch) and every sample's augmentation
            (default 0).
        augment: ``ssd`` (SSD's augmentation, the default) or ``none`` (only the resize: for debugging a
            dataset or checking that a model can fit a handful of images).
        amp: ``none`` (default), ``bf16`` or ``fp16`` (fp16 uses a GradScaler; needs CUDA).
        sync_bn: SyncBatchNorm across processes (multi-GPU only).
        freeze_bn: BatchNorm layers use their running statistics and do not update them (lets a model
            train on one image per process).
        seed, augment, amp, sync_bn, freeze_bn: None = not given: a resumed run keeps the checkpoint's.
        allow_changes: with ``resume``, continue under options that differ from the run's (otherwise they
            are refused: an exact resume reuses everything that determines the run).
        channels_last: NHWC memory layout (default: on for CUDA).
        max_steps: stop after this many optimizer steps in total (tests, smoke runs); ``last.pt`` is
            written there and ``resume`` continues from that exact step.
        progress: progress bar and one-line notes on stderr (rank 0 only).
        tensorboard: write TensorBoard scalars to ``out/tensorboard`` when the package is installed.
    """

    model: str | ModelConfig | None = None
    data: str | Dataset | None = None
    out: str | Path = "runs/train"
    recipe: str | None = None
    epochs: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    momentum: float | None = None
    weight_decay: float | None = None
    milestones: tuple[int, ...] | None = None
    warmup_epochs: float | None = None
    optimizer: str | None = None
    workers: int = 2
    device: str | None = None
    resume: bool = False
    force: bool = False
    backbone_weights: str | None = None
    val_data: str | Dataset | None = None
    val_every: int = 1
    val_metric: str | None = None
    seed: int | None = None
    augment: str | None = None
    amp: str | None = None
    sync_bn: bool | None = None
    freeze_bn: bool | None = None
    allow_changes: bool = False
    channels_last: bool | None = None
    max_steps: int | None = None
    progress: bool = True
    tensorboard: bool = True

    def recipe_overrides(self) -> dict:
        return {"epochs": self.epochs, "batch_size": self.batch_size, "lr": self.lr, "momentum": self.momentum,
                "weight_decay": self.weight_decay, "milestones": self.milestones,
                "warmup_epochs": self.warmup_epochs, "optimizer": self.optimizer}

    def run_settings(self) -> dict:
        """The run-shaping settings given (None = not given); see ``RUN_SETTING_DEFAULTS``."""
        return {key: getattr(self, key) for key in RUN_SETTING_DEFAULTS}

    def check(self) -> None:
        """One-line ``UserError`` for out-of-range values (recipe values are checked by ``Recipe``)."""
        if self.resume and self.force:
            raise UserError("--resume and --force contradict each other: pass one")
        if self.allow_changes and not self.resume:
            raise UserError("--allow-changes only applies with --resume: drop it")
        if self.amp is not None and self.amp not in AMP_MODES:
            raise UserError(f"--amp {self.amp}: use one of {', '.join(AMP_MODES)}")
        if self.augment is not None and self.augment not in AUGMENTATIONS:
            raise UserError(f"--augment {self.augment}: use one of {', '.join(AUGMENTATIONS)}")
        if self.seed is not None and not 0 <= self.seed <= MAX_SEED:
            raise UserError(f"--seed {self.seed}: must be in 0..{MAX_SEED}")
        if self.val_every < 1:
            raise UserError(f"--val-every {self.val_every}: must be >= 1")
        if self.max_steps is not None and self.max_steps < 1:
            raise UserError(f"--max-steps {self.max_steps}: must be >= 1")
        if self.workers < 0:
            raise UserError(f"--workers {self.workers}: must be >= 0")


@dataclass
class TrainResult:
    """What a call of ``train`` did.

    Attributes:
        out_dir: the run folder; last_checkpoint / best_checkpoint: ``last.pt`` / ``best.pt`` (None
            without validation).
        recipe: the recipe used (overrides applied).
        epochs_completed, global_step: where the run stands now.
        finished: all of the recipe's epochs are done (False when ``max_steps`` stopped it).
        step_losses: total loss of every optimizer step taken in this call (mean over processes).
        epoch_losses: mean loss of every epoch completed in this call.
        best_map: best validation mAP of the run so far (None without validation).
        history: the metrics lines written in this call.
    """

    out_dir: Path
    last_checkpoint: Path
    best_checkpoint: Path | None
    recipe: Recipe
    epochs_completed: int
    global_step: int
    finished: bool
    step_losses: list[float] = field(default_factory=list)
    epoch_losses: list[float] = field(default_factory=list)
    best_map: float | None = None
    history: list[dict] = field(default_factory=list)
