"""The training loop: ``train(TrainOptions) -> TrainResult``, for one process or many under ``torchrun``.

One epoch: every process takes its shard of the data (``ResumableSampler``), runs forward (optionally
under autocast), computes the MultiBox loss, averages the loss parts over processes (that also lets every
process see a NaN at the same step and stop together), back-propagates (DDP averages the gradients) and
steps the optimizer at the schedule's lr. After each epoch rank 0 writes a metrics line, validates when
due, writes ``best.pt`` on a better mAP, then ``last.pt``, then redraws ``curves.png``; the other ranks
wait. A resumed run takes its recipe and settings from the checkpoint (``assd.train.resume``).
The run is built by ``assd.train.setup.RunSetup`` (data, recipe, model, loader, optimizer, resume).
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import torch

from assd.errors import CheckFailed, UserError
from assd.models.checkpoint import save_checkpoint
from assd.train import distributed
from assd.train.batchnorm import freeze_batchnorm
from assd.train.monitor import note, progress_bar
from assd.train.options import TrainOptions, TrainResult
from assd.train.resume import epoch_partial, resumed_epoch_sums
from assd.train.schedule import lr_at, set_lr
from assd.train.setup import RunSetup
from assd.train.state import BEST, LAST, describe_run, rng_states
from assd.train.validation import validate


def train(options: TrainOptions) -> TrainResult:
    """Train (or continue training) the model described by ``options``; see ``TrainOptions``."""
    ctx = distributed.setup(options.device)
    try:
        return Trainer(options, ctx).run()
    finally:
        distributed.cleanup(ctx)


class Trainer(RunSetup):
    """The training loop over what ``RunSetup`` built: epochs, steps, validation, checkpoints."""

    # ---------------------------------------------------------------- run
    def run(self) -> TrainResult:
        result = TrainResult(out_dir=self.out, last_checkpoint=self.out / LAST, best_checkpoint=None,
                             recipe=self.recipe, epochs_completed=self.epoch, global_step=self.global_step,
                             finished=False, best_map=self.best_map)
        try:
            while self.epoch < self.recipe.epochs and not self._step_limit_reached():
                epoch_line = self._train_epoch(result)
                if epoch_line is None:  # max_steps stopped the run inside the epoch
                    self._save(self.out / LAST)
                    break
                self.epoch, self.step_in_epoch = self.epoch + 1, 0
                result.epoch_losses.append(epoch_line["loss"])
                self._log("epoch", epoch_line, result)
                self._end_of_epoch(result)
            if self.epoch >= self.recipe.epochs and self.global_step == result.global_step:
                note(f"{self.out}: nothing to do, the run already finished {self.recipe.epochs} epochs "
                     "(pass --epochs N to train longer)", self.verbose)
        except BaseException:
            self._remove_empty_out_dir()
            raise
        finally:
            if self.monitor is not None:
                self.monitor.close()
        distributed.barrier(self.ctx)
        best = self.out / BEST
        result.best_checkpoint = best if self.best_map is not None and best.exists() else None
        result.epochs_completed, result.global_step = self.epoch, self.global_step
        result.finished, result.best_map = self.epoch >= self.recipe.epochs, self.best_map
        return result

    def _remove_empty_out_dir(self) -> None:
        """A new run that failed before writing anything leaves no empty folder behind."""
        if self.ctx.is_main and self.created_out and self.out.is_dir() and not any(self.out.iterdir()):
            self.out.rmdir()

    def _step_limit_reached(self) -> bool:
        return self.opts.max_steps is not None and self.global_step >= self.opts.max_steps

    def _end_of_epoch(self, result: TrainResult) -> None:
        is_last = self.epoch >= self.recipe.epochs
        improved = False
        if self.val_set is not None and (self.epoch % self.opts.val_every == 0 or is_last):
            if self.ctx.is_main:
                improved = self._validate(result)
            distributed.barrier(self.ctx)
        if improved:  # before last.pt: a kill in between redoes the epoch, which writes best.pt again
            self._save(self.out / BEST)
        self._save(self.out / LAST)
        if self.monitor is not None:
            self.monitor.plot()

    def _validate(self, result: TrainResult) -> bool:
        self.model.eval()
        try:
            evaluation = validate(self.model, self.val_set, self.val_metric, self.recipe.batch_size, self.device)
        finally:
            self.model.train()
        improved = self.best_map is None or evaluation.mAP > self.best_map
        if improved:
            self.best_map, self.best_epoch = float(evaluation.mAP), self.epoch
        self._log("val", {"epoch": self.epoch, "global_step": self.global_step, "metric": self.val_metric,
                          "mAP": float(evaluation.mAP), "best_mAP": self.best_map}, result)
        return improved

    def _train_epoch(self, result: TrainResult) -> dict | None:
        """One epoch (or its rest, when resuming); the epoch's metrics, or None if ``max_steps`` hit."""
        batch = self.recipe.batch_size
        self.sampler.set_position(self.epoch, self.step_in_epoch * batch)
        self.net.train()
        if self.settings["freeze_bn"]:
            freeze_batchnorm(self.model)
        sums, before = resumed_epoch_sums(self.epoch_partial, self.epoch, self.step_in_epoch)
        steps, started = 0, time.perf_counter()
        self.epoch_sums, self.epoch_partial = sums, None  # _save stores the sums of a run stopped mid-epoch
        with progress_bar(self.epoch, self.recipe.epochs, self.steps_per_epoch, self.step_in_epoch,
                          self.verbose) as bar:
            for images, targets in self.loader:
                lr = lr_at(self.recipe, self.epoch, self.step_in_epoch, self.steps_per_epoch)
                parts = self._train_step(images, targets, lr)
                sums += torch.tensor(parts)
                steps += 1
                result.step_losses.append(parts[0])
                images_per_s = steps * batch * self.ctx.world_size / (time.perf_counter() - started)
                bar.set_postfix(loss=f"{parts[0]:.3f}", loc=f"{parts[1]:.3f}", conf=f"{parts[2]:.3f}",
                                lr=f"{lr:.2e}", img_s=f"{images_per_s:.1f}")
                bar.update(1)
                if self.monitor is not None:
                    self.monitor.step(self.global_step, {"loss": parts[0], "loc_loss": parts[1],
                                                         "conf_loss": parts[2], "lr": lr})
                if self._step_limit_reached() and self.step_in_epoch < self.steps_per_epoch:
                    return None
        seconds = time.perf_counter() - started
        mean = (sums / max(before + steps, 1)).tolist()  # every step of the epoch, before a resume too
        return {"epoch": self.epoch + 1, "global_step": self.global_step, "loss": mean[0], "loc_loss": mean[1],
                "conf_loss": mean[2], "lr": lr, "steps": before + steps, "seconds": round(seconds, 3),
                "img_per_s": round(steps * batch * self.ctx.world_size / seconds, 3)}

    def _train_step(self, images: torch.Tensor, targets: list[dict], lr: float) -> tuple[float, float, float]:
        images = images.to(self.device, non_blocking=True)
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        set_lr(self.optimizer, lr)
        with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
            loc, conf = self.net(images)
        losses = self.criterion(loc, conf, targets)
        parts = torch.stack([losses["loss"], losses["loc_loss"], losses["conf_loss"]]).detach()
        loss, loc_loss, conf_loss = distributed.average(parts, self.ctx).tolist()
        if not math.isfinite(loss):
            self._stop_on_bad_loss(loss, loc_loss, conf_loss)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(losses["loss"]).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.global_step += 1
        self.step_in_epoch += 1
        return loss, loc_loss, conf_loss

    def _stop_on_bad_loss(self, loss: float, loc_loss: float, conf_loss: float) -> None:
        where = f"training loss became {loss} (loc {loc_loss}, conf {conf_loss}) at step {self.global_step + 1}, " \
                f"epoch {self.epoch + 1}: stopped"
        if self.saved is None:
            raise CheckFailed(f"{where} before any checkpoint was written: lower --lr (or lengthen "
                              "--warmup-epochs) and run again, or check the data")
        raise CheckFailed(f"{where}; the last good checkpoint {self.out / LAST} ({self.saved}) is kept: lower --lr "
                          "(or lengthen --warmup-epochs) and continue it with --resume --allow-changes, or check "
                          "the data")

    # ---------------------------------------------------------------- files
    def _log(self, kind: str, values: dict, result: TrainResult) -> None:
        if self.monitor is not None:
            result.history.append(self.monitor.record(kind, values))
        if kind == "val":
            note(f"epoch {values['epoch']}: {values['metric']} mAP {values['mAP']:.4f} (best "
                 f"{values['best_mAP']:.4f})", self.verbose)

    def _save(self, path: Path) -> None:
        if not self.ctx.is_main:
            return
        finished = self.epoch >= self.recipe.epochs
        try:
            save_checkpoint(
                self.model, path, optimizer=self.optimizer.state_dict(),
                scaler=self.scaler.state_dict() if self.scaler.is_enabled() else None,
                scheduler={"schedule": "linear warm-up + multistep", "lr": self.optimizer.param_groups[0]["lr"]},
                epoch=self.epoch, step_in_epoch=self.step_in_epoch, global_step=self.global_step,
                global_batch=self.recipe.batch_size * self.ctx.world_size, recipe=self.recipe.to_dict(),
                options=self.record, best_map=self.best_map, best_epoch=self.best_epoch, rng=rng_states(),
                finished=finished, epoch_partial=epoch_partial(self))
        except UserError as exc:
            kept = (f"{self.out / LAST} still holds {self.saved}: --resume continues from there"
                    if self.saved else "no checkpoint of this run was written yet")
            raise UserError(f"{exc}; {kept}") from None
        if path.name == LAST:
            self.saved = describe_run({"epoch": self.epoch, "global_step": self.global_step,
                                       "recipe": {"epochs": self.recipe.epochs}, "finished": finished})
