"""Everything a training run needs, built from ``TrainOptions`` (and the checkpoint when resuming).

``RunSetup.__init__`` checks the output folder (rank 0, outcome broadcast), reads the checkpoint to
resume from, opens the data, plans the recipe and run settings (the checkpoint's on resume:
``assd.train.resume``), refuses a batch that cannot fit (``assd.train.memory``), then builds the model
(DDP-wrapped under torchrun), the loader, the optimizer and the run folder's monitor. The loop itself
is ``assd.train.trainer.Trainer``, a ``RunSetup``.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from assd.data import collate_detection, data_spec_inputs
from assd.errors import UserError
from assd.models import ModelConfig, build_model, get_config
from assd.train import distributed
from assd.train.batchnorm import prepare_batchnorm
from assd.train.inputs import data_fingerprint, open_dataset, with_augment
from assd.train.loss import MultiBoxLoss
from assd.train.memory import check_training_memory
from assd.train.monitor import RunMonitor, note
from assd.train.options import RUN_SETTING_DEFAULTS, TrainOptions
from assd.train.recipes import PAPER_RECIPES, default_recipe_name, get_recipe
from assd.train.resume import check_optimizer_switch, plan_resume
from assd.train.sampling import ResumableSampler, SeededSamples
from assd.train.schedule import apply_recipe, build_optimizer, check_optimizer_kind
from assd.train.state import (
    LAST,
    describe_run,
    prepare_out_dir,
    restore_rng_states,
    start_run_folder,
    unusable,
)
from assd.train.validation import default_metric


def _check_settings(settings: dict, ctx: distributed.DistContext) -> None:
    """Refuse settings this machine cannot run (after a resumed run's settings were restored)."""
    if settings["amp"] == "fp16" and ctx.device.type != "cuda":
        raise UserError("--amp fp16 needs a CUDA GPU: use --amp bf16 on CPU, or none")
    if settings["sync_bn"] and not (ctx.distributed and ctx.device.type == "cuda"):
        raise UserError("--sync-bn needs several GPU processes (torchrun --nproc-per-node N): drop it here")


class RunSetup:
    """Builds everything a run needs from ``TrainOptions`` (and the checkpoint when resuming)."""

    def __init__(self, opts: TrainOptions, ctx: distributed.DistContext):
        opts.check()
        self.opts, self.ctx, self.device = opts, ctx, ctx.device
        self.out = Path(opts.out)
        self.verbose = opts.progress and ctx.is_main
        state = self._start_state()
        record = state.get("options", {}) if state else {}
        cfg = self._model_config(state)
        data = opts.data if opts.data is not None else record.get("data")
        if data is None:
            raise UserError("--data is required: pass a data spec such as voc:ROOT, coco:IMAGES:JSON or synthetic")
        train_set = open_dataset(data, cfg, train=True)
        if state is None:
            cfg = cfg.with_classes(train_set.class_names)
        elif tuple(train_set.class_names) != tuple(cfg.class_names):
            raise UserError(f"{data}: its classes differ from the checkpoint's ({len(cfg.class_names)} classes): "
                            "resume on the data the run started with")
        self.cfg = cfg
        fingerprint = data_fingerprint(train_set)
        self._plan(state, train_set.name, fingerprint)
        _check_settings(self.settings, ctx)
        self.train_set = with_augment(train_set, self.settings["augment"])
        self.val_set = None
        val_data = opts.val_data if opts.val_data is not None else record.get("val_data")
        if val_data is not None:
            self.val_set = open_dataset(val_data, cfg, train=False)
            if tuple(self.val_set.class_names) != tuple(cfg.class_names):
                raise UserError(f"{val_data}: validation classes differ from the training data's: "
                                "validate on the same kind of data")
        self.val_metric = opts.val_metric or record.get("val_metric") or default_metric(self.val_set)
        self.record = {"data": str(getattr(train_set, "source", data)), "data_fingerprint": fingerprint,
                       "val_data": None if val_data is None else str(getattr(self.val_set, "source", val_data)),
                       "val_every": opts.val_every, "val_metric": self.val_metric, "workers": opts.workers,
                       "backbone_weights": record.get("backbone_weights") if state else opts.backbone_weights,
                       **self.settings}
        self._build_model(state)
        self._build_loader()
        self._build_optimizer(state)
        self.epoch = state["epoch"] if state else 0
        self.step_in_epoch = state["step_in_epoch"] if state else 0
        self.global_step = state["global_step"] if state else 0
        self.epoch_partial = state.get("epoch_partial") if state else None  # loss sums of the epoch's first steps
        self.best_map = state.get("best_map") if state else None
        self.best_epoch = state.get("best_epoch") if state else None
        self.saved = describe_run(state) if state else None  # what last.pt holds
        if state:
            self._check_resume_position(state)
            try:
                restore_rng_states(state["rng"])
            except (KeyError, TypeError, ValueError, RuntimeError, AttributeError) as exc:
                raise unusable(self.out, f"bad RNG states: {type(exc).__name__} {str(exc)[:120]}") from None
        self.monitor = None
        self.created_out = not self.out.exists()
        if ctx.is_main:  # only now that everything else checked out
            for line in start_run_folder(self.out, state["global_step"] if state else None, opts.force):
                note(f"note: {line}", self.verbose)
            self.monitor = RunMonitor(self.out, opts.tensorboard, self.verbose, header=self._schedule_line(state),
                                      title=f"{self.out.name}: {cfg.name} on {self.record['data']}")

    # ---------------------------------------------------------------- setup
    def _start_state(self) -> dict | None:
        """Rank 0 checks ``out`` (refusing to overwrite a run) and reads the checkpoint to resume from;
        every rank gets the outcome, so an error stops all of them."""
        payload = None
        if self.ctx.is_main:
            try:
                payload = ("ok", prepare_out_dir(self.out, self.opts.resume, self.opts.force,
                                                   data_spec_inputs(self.opts.data)))
            except UserError as exc:
                payload = ("error", str(exc))
        status, value = distributed.broadcast_from_main(payload, self.ctx)
        if status == "error":
            raise UserError(value)
        return value

    def _model_config(self, state: dict | None) -> ModelConfig:
        wanted = self.opts.model
        wanted_name = wanted.name if isinstance(wanted, ModelConfig) else wanted
        if state is not None:
            cfg = ModelConfig.from_dict(state["model_config"])
            if wanted_name is not None and wanted_name != cfg.name:
                raise UserError(f"--model {wanted_name}: the run in {self.out} trains {cfg.name}: "
                                "drop --model or pass the same one")
            return cfg
        if wanted is None:
            raise UserError("--model is required for a new run: pass a preset name (e.g. assd-mini, assd321)")
        return wanted if isinstance(wanted, ModelConfig) else get_config(wanted)

    def _plan(self, state: dict | None, data_kind: str, fingerprint: dict) -> None:
        """``self.recipe`` (the effective schedule) and ``self.settings`` (seed, augment, amp, BatchNorm):
        the checkpoint's on resume (``resume.plan_resume`` refuses changes), else the options and defaults."""
        self.changes = []
        if state is not None:
            plan = plan_resume(self.opts, state, fingerprint, self.out / LAST)
            self.recipe, self.settings, self.changes = plan.recipe, plan.settings, plan.changes
            check_optimizer_switch(state, self.recipe.optimizer, self.out / LAST)  # before any note: one line
            self._check_memory()
            allowed = [change for change in self.changes if change not in plan.adjusted]
            if allowed:
                note(f"note: continuing with changed options (--allow-changes): {'; '.join(allowed)}", self.verbose)
            for change in plan.adjusted:
                note(f"note: schedule changed by the new --epochs: {change}", self.verbose)
        else:
            name = self.opts.recipe or default_recipe_name(self.cfg.input_size, self.cfg.backbone, data_kind)
            self.recipe = get_recipe(name).with_overrides(**self.opts.recipe_overrides())
            given = self.opts.run_settings()
            self.settings = {key: default if given[key] is None else given[key]
                             for key, default in RUN_SETTING_DEFAULTS.items()}
            self._check_memory()
        note(self.recipe.describe(self.ctx.world_size) + f"; seed {self.settings['seed']}, augment "
             f"{self.settings['augment']}", self.verbose)

    def _check_memory(self) -> None:
        """Refuse a batch that cannot fit before anything of its size is allocated (assd/train/memory.py)."""
        check_training_memory(self.cfg, self.recipe.batch_size, self.recipe.optimizer, self.device,
                              f"train {self.cfg.name}")

    def _schedule_line(self, state: dict | None) -> dict:
        """The metrics file's record of this call's effective schedule and settings."""
        return {"type": "schedule", "epoch": self.epoch, "global_step": self.global_step,
                "resumed": state is not None, "changes": self.changes, "processes": self.ctx.world_size,
                "global_batch": self.recipe.batch_size * self.ctx.world_size, "recipe": self.recipe.to_dict(),
                **self.settings}

    def _build_model(self, state: dict | None) -> None:
        torch.manual_seed(self.settings["seed"])
        weights = self.opts.backbone_weights
        if state is not None and weights not in (None, "none"):
            note(f"note: --backbone-weights {weights} ignored: resuming from {self.out / LAST}", self.verbose)
        if state is None and weights in (None, "none") and self.recipe.name.split("+")[0] in PAPER_RECIPES:
            note(f"note: {self.cfg.backbone} starts from random weights; the paper's recipes assume ImageNet "
                 "weights (--backbone-weights imagenet or a torchvision state_dict file)", self.verbose)
        model = build_model(self.cfg, backbone_weights=None if state is not None else weights)
        if state is not None:
            try:
                model.load_state_dict(state["model"])
            except (RuntimeError, KeyError, TypeError) as exc:
                detail = [line.strip() for line in str(exc).splitlines() if line.strip()][-1:] or [repr(exc)]
                raise unusable(self.out, f"its weights do not fit its model config: {detail[0][:120]}") from None
        model = prepare_batchnorm(model, self.recipe.batch_size, self.settings, self.ctx.world_size)
        self.channels_last = self.opts.channels_last if self.opts.channels_last is not None else (
            self.device.type == "cuda")
        model.to(self.device, memory_format=torch.channels_last if self.channels_last else torch.contiguous_format)
        self.model = model
        self.net = model
        if self.ctx.distributed:
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            self.net = DistributedDataParallel(model, device_ids=device_ids)
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # fixed input size
        self.criterion = MultiBoxLoss(model.priors_cxcywh, self.cfg.variances).to(self.device)

    def _build_loader(self) -> None:
        samples = SeededSamples(self.train_set, self.settings["seed"])
        self.sampler = ResumableSampler(samples, self.ctx.world_size, self.ctx.rank, self.settings["seed"])
        batch = self.recipe.batch_size
        self.steps_per_epoch = self.sampler.num_samples // batch
        if self.steps_per_epoch == 0:
            raise UserError(f"{self.record['data']}: {len(self.train_set)} images are fewer than one batch "
                            f"({batch} per process x {self.ctx.world_size} processes): lower --batch-size")
        self.loader = DataLoader(samples, batch_size=batch, sampler=self.sampler, num_workers=self.opts.workers,
                                 collate_fn=collate_detection, pin_memory=self.device.type == "cuda",
                                 drop_last=True)

    def _build_optimizer(self, state: dict | None) -> None:
        self.optimizer = build_optimizer(self.model, self.recipe)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.settings["amp"] == "fp16")
        if state is not None:
            check_optimizer_kind(state, self.optimizer, self.out / LAST)
            try:
                self.optimizer.load_state_dict(state["optimizer"])
            except (ValueError, KeyError) as exc:
                raise UserError(f"{self.out / LAST}: optimizer state does not fit ({exc}): resume with the "
                                "run's optimizer") from None
            if state.get("scaler") and self.scaler.is_enabled():
                self.scaler.load_state_dict(state["scaler"])
        apply_recipe(self.optimizer, self.recipe, self.recipe.lr)
        self.amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.settings["amp"])

    def _check_resume_position(self, state: dict) -> None:
        global_batch = self.recipe.batch_size * self.ctx.world_size
        if self.step_in_epoch and state.get("global_batch") != global_batch:
            raise UserError(f"{self.out / LAST}: stopped in the middle of an epoch with {state.get('global_batch')} "
                            f"images per step, now {global_batch}: resume with the same --batch-size and "
                            "number of processes")
        if self.step_in_epoch >= self.steps_per_epoch:
            self.epoch, self.step_in_epoch = self.epoch + 1, 0
        note(f"resuming {self.out / LAST}: epoch {self.epoch + 1}, step {self.step_in_epoch + 1} of "
             f"{self.steps_per_epoch}, global step {self.global_step}", self.verbose)

