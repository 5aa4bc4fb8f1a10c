"""``assd train`` (issue 4)."""

from __future__ import annotations

import os

import click

from assd.errors import UserError


def _milestones(text: str | None) -> tuple[int, ...] | None:
    if text is None:
        return None
    try:
        return tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise UserError(f"--milestones {text}: expected epochs separated by commas, e.g. 200,250") from None


@click.command("train")
@click.option("--model", default=None, help="Preset to train, e.g. assd321, assd513, assd-mini (optional with --resume).")
@click.option("--data", "data_spec", default=None,
              help="voc:ROOT[:SETS], coco:IMAGES:JSON or synthetic[:N] (optional with --resume).")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Run folder: last.pt, best.pt, metrics.jsonl, curves.png, tensorboard/.")
@click.option("--recipe", default=None, help="voc-321, voc-513, coco-321, coco-513 or quick (default: by model and data).")
@click.option("--epochs", type=int, default=None,
              help="Override the recipe's epochs (its milestones and warm-up scale with it unless given).")
@click.option("--batch-size", type=int, default=None, help="Images per process (per GPU); overrides the recipe.")
@click.option("--lr", type=float, default=None, help="Peak learning rate; overrides the recipe.")
@click.option("--momentum", type=float, default=None, help="SGD momentum (AdamW beta1); overrides the recipe.")
@click.option("--weight-decay", type=float, default=None, help="Overrides the recipe.")
@click.option("--milestones", default=None,
              help="Epochs of the x0.1 lr steps, e.g. 200,250 (within --epochs); overrides the recipe.")
@click.option("--warmup-epochs", type=float, default=None, help="Linear lr warm-up length (0 = none).")
@click.option("--optimizer", type=click.Choice(["sgd", "adamw"]), default=None, help="Overrides the recipe.")
@click.option("--workers", type=int, default=2, show_default=True, help="DataLoader workers per process.")
@click.option("--device", default=None, help="cpu, cuda or cuda:N (default: cuda when available).")
@click.option("--resume", is_flag=True, help="Continue the run in --out from last.pt (exactly, with its settings).")
@click.option("--allow-changes", is_flag=True,
              help="With --resume: continue under options that differ from the run's (otherwise refused).")
@click.option("--force", is_flag=True, help="Start over in an --out that holds a run (deletes its files).")
@click.option("--backbone-weights", default="none", show_default=True,
              help="imagenet, a torchvision state_dict file, or none.")
@click.option("--val-data", default=None, help="Data spec to validate on (mAP; keeps best.pt).")
@click.option("--val-every", type=int, default=1, show_default=True, help="Validate every N epochs (and after the last).")
@click.option("--val-metric", type=click.Choice(["voc07", "voc12", "coco"]), default=None,
              help="Validation metric (default: coco for COCO data, else voc07).")
@click.option("--seed", type=int, default=None, help="Seeds init, sample order and augmentation (default 0).")
@click.option("--augment", type=click.Choice(["ssd", "none"]), default=None,
              help="ssd: SSD's augmentation (default); none: only the resize (debug data, overfit checks).")
@click.option("--amp", type=click.Choice(["none", "bf16", "fp16"]), default=None,
              help="Mixed precision (default none; fp16 needs CUDA).")
@click.option("--sync-bn", is_flag=True, default=None, help="SyncBatchNorm across GPU processes (torchrun).")
@click.option("--freeze-bn", is_flag=True, default=None,
              help="BatchNorm keeps its running statistics (allows --batch-size 1).")
@click.option("--channels-last/--no-channels-last", default=None, help="NHWC layout (default: on for CUDA).")
@click.option("--max-steps", type=int, default=None, help="Stop after N optimizer steps in total (smoke tests).")
@click.option("--no-progress", is_flag=True, help="No progress bar or notes.")
@click.option("--no-tensorboard", is_flag=True, help="Do not write TensorBoard scalars.")
def train_command(model, data_spec, out_dir, recipe, epochs, batch_size, lr, momentum, weight_decay, milestones,
                  warmup_epochs, optimizer, workers, device, resume, allow_changes, force, backbone_weights, val_data,
                  val_every, val_metric, seed, augment, amp, sync_bn, freeze_bn, channels_last, max_steps,
                  no_progress, no_tensorboard):
    """Train an ASSD model on VOC, COCO or synthetic data (multi-GPU: torchrun --no-python assd train ...)."""
    from assd.train import TrainOptions, train

    result = train(TrainOptions(
        model=model, data=data_spec, out=out_dir, recipe=recipe, epochs=epochs, batch_size=batch_size, lr=lr,
        momentum=momentum, weight_decay=weight_decay, milestones=_milestones(milestones),
        warmup_epochs=warmup_epochs, optimizer=optimizer, workers=workers, device=device, resume=resume,
        allow_changes=allow_changes, force=force, backbone_weights=backbone_weights, val_data=val_data,
        val_every=val_every, val_metric=val_metric, seed=seed, augment=augment, amp=amp, sync_bn=sync_bn,
        freeze_bn=freeze_bn, channels_last=channels_last, max_steps=max_steps, progress=not no_progress,
        tensorboard=not no_tensorboard))
    if int(os.environ.get("RANK", "0")) != 0:
        return
    status = "finished" if result.finished else "stopped"
    click.echo(f"{status} at epoch {result.epochs_completed}/{result.recipe.epochs}, step {result.global_step} "
               f"(recipe {result.recipe.name})")
    if result.epoch_losses:
        click.echo(f"mean loss per epoch: {result.epoch_losses[0]:.3f} (first) -> {result.epoch_losses[-1]:.3f} (last)")
    elif result.step_losses:
        click.echo(f"loss per step: {result.step_losses[0]:.3f} (first) -> {result.step_losses[-1]:.3f} (last)")
    click.echo(f"checkpoint: {result.last_checkpoint}")
    if result.best_checkpoint is not None:
        click.echo(f"best:       {result.best_checkpoint} (mAP {result.best_map:.4f})")
