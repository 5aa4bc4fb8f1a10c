"""What ``--resume`` keeps: everything that determines the steps ahead, so a resumed run continues exactly.

The checkpoint holds the effective recipe (epochs, milestones, warm-up, lr, batch, optimizer), the
run's settings (seed, augmentation, AMP, BatchNorm mode: ``RUN_SETTING_DEFAULTS``) and a fingerprint
of the training data. On resume, an option left out takes the run's value; an option given with
another value would change the run mid-way and is refused, each named with the run's value, unless
``--allow-changes``. ``--epochs`` may move the end of the run (not before the epochs already done);
the milestones stay where they are (they are not rescaled on resume), except that those past an earlier
end are dropped (and a warm-up longer than the run is cut at its end), which ``changes`` records.

The sample order and every sample's augmentation are functions of ``(seed, epoch, index)``
(``assd.train.sampling``), so restoring the seed and the position (epoch, step in the epoch) restores
every DataLoader worker's stream; the global RNG states are restored as well (``state.rng_states``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from assd.errors import UserError
from assd.train.inputs import same_data
from assd.train.options import RUN_SETTING_DEFAULTS, TrainOptions
from assd.train.recipes import Recipe, get_recipe


@dataclass
class ResumePlan:
    """A resumed run's recipe and settings, and what differs from the run as it was (``changes``: the
    options allowed by ``--allow-changes`` and, in ``adjusted`` too, what an earlier ``--epochs`` cut)."""

    recipe: Recipe
    settings: dict
    changes: list[str] = field(default_factory=list)
    adjusted: list[str] = field(default_factory=list)  # the part of ``changes`` a shorter --epochs implies


def _shown(value) -> str:
    if isinstance(value, (tuple, list)):
        return ",".join(str(v) for v in value) or "none"
    return f"{value:g}" if isinstance(value, float) else str(value)


def _option(key: str) -> str:
    return "--" + key.replace("_", "-")


def plan_resume(opts: TrainOptions, state: dict, fingerprint: dict, checkpoint: Path) -> ResumePlan:
    """The recipe and settings to continue ``state`` with; ``UserError`` for options that would change the
    run (without ``opts.allow_changes``) and for an ``--epochs`` before the epochs already done."""
    record = state.get("options") or {}
    stored = Recipe.from_dict(state["recipe"])
    changes, settings = [], {}
    for key, default in RUN_SETTING_DEFAULTS.items():
        kept, given = record.get(key, default), getattr(opts, key)
        settings[key] = kept if given is None else given
        if given is not None and given != kept:
            changes.append(f"{_option(key)} {_shown(given)} (run: {_shown(kept)})")
    if opts.recipe is not None and opts.recipe != stored.name.split("+")[0]:
        changes.append(f"--recipe {opts.recipe} (run: {stored.name})")
    overrides = opts.recipe_overrides()
    for key, given in overrides.items():
        kept = getattr(stored, key)
        if key != "epochs" and given is not None and (tuple(given) if key == "milestones" else given) != kept:
            changes.append(f"{_option(key)} {_shown(given)} (run: {_shown(kept)})")
    if not same_data(record.get("data_fingerprint"), fingerprint):
        then, now = record["data_fingerprint"]["images"], fingerprint["images"]
        spec = record.get("data") if opts.data is None else getattr(opts.data, "source", opts.data)
        changes.append(f"--data {spec} ({now} images; the run's "
                       f"data: {then} images" + (", other image ids)" if then == now else ")"))
    done = state["epoch"] + (1 if state.get("step_in_epoch") else 0)
    if opts.epochs is not None and opts.epochs < done:
        raise UserError(f"--epochs {opts.epochs}: the run in {checkpoint.parent} has already done {done} epochs: "
                        f"pass --epochs {done + 1} or more to train longer, or drop --epochs")
    if changes and not opts.allow_changes:
        raise UserError(f"{checkpoint}: resuming would change the run: {'; '.join(changes)}: an exact resume "
                        "reuses the run's settings: drop these options, or add --allow-changes to continue "
                        "under the new ones")
    if opts.recipe is not None:  # a new recipe, on purpose (--allow-changes): as for a new run
        return ResumePlan(get_recipe(opts.recipe).with_overrides(**overrides), settings, changes)
    kept, notes = _fit_to_new_end(stored, overrides)
    recipe = stored.with_overrides(**{**overrides, **kept})
    return ResumePlan(recipe, settings, changes + notes, notes)


def _fit_to_new_end(stored: Recipe, overrides: dict) -> tuple[dict, list[str]]:
    """The stored milestones (not rescaled to a new ``--epochs``) and warm-up, less what lies past a new,
    earlier end (``--epochs`` without ``--milestones`` / ``--warmup-epochs``); and a line per change."""
    epochs = overrides.get("epochs") or stored.epochs
    kept, notes = {"milestones": overrides.get("milestones") or stored.milestones}, []
    if overrides.get("milestones") is None and any(m > epochs for m in stored.milestones):
        kept["milestones"] = tuple(m for m in stored.milestones if m <= epochs)
        notes.append(f"--milestones {_shown(kept['milestones'])} (run: {_shown(stored.milestones)}; the ones "
                     f"past the new end, --epochs {epochs}, are dropped)")
    if overrides.get("warmup_epochs") is None and stored.warmup_epochs > epochs:
        kept["warmup_epochs"] = float(epochs)
        notes.append(f"--warmup-epochs {epochs} (run: {_shown(stored.warmup_epochs)}; cut at the new end, "
                     f"--epochs {epochs})")
    return kept, notes


def epoch_partial(trainer) -> dict | None:
    """What a checkpoint written in the middle of an epoch keeps of it: the float64 sums of the losses
    (total, loc, conf) of its steps so far, so the resumed run's epoch means (``metrics.jsonl``) equal an
    uninterrupted run's bit for bit; None at an epoch's end."""
    sums = getattr(trainer, "epoch_sums", None)
    if not trainer.step_in_epoch or sums is None:
        return None
    return {"epoch": trainer.epoch, "steps": trainer.step_in_epoch, "sums": [float(v) for v in sums.tolist()]}


def resumed_epoch_sums(partial: dict | None, epoch: int, step_in_epoch: int):
    """``(loss sums, steps they cover)`` an epoch starts from: the checkpoint's ``epoch_partial`` when it
    resumes that epoch at that step, else zeros (a checkpoint of an older assd has none: its epoch mean
    covers the resumed steps only)."""
    import torch

    sums = torch.zeros(3, dtype=torch.float64)
    try:
        if partial and partial["epoch"] == epoch and partial["steps"] == step_in_epoch and step_in_epoch:
            sums += torch.tensor([float(v) for v in partial["sums"]], dtype=torch.float64)
            return sums, step_in_epoch
    except (KeyError, TypeError, ValueError, RuntimeError):
        pass
    return torch.zeros(3, dtype=torch.float64), 0


def check_optimizer_switch(state: dict, optimizer: str, where) -> None:
    """UserError (one line) when ``--allow-changes --optimizer`` names another optimizer than the run's:
    its state (momentum buffers, Adam moments) cannot continue in another optimizer."""
    from assd.errors import UserError

    saved = (state.get("recipe") or {}).get("optimizer") if isinstance(state.get("recipe"), dict) else None
    if saved in ("sgd", "adamw") and saved != optimizer:
        names = {"sgd": "SGD", "adamw": "AdamW"}
        raise UserError(f"{where}: the run was trained with {names[saved]}; its optimizer state cannot continue with "
                        f"{names.get(optimizer, optimizer)} (--optimizer): resume with the run's optimizer, or start a "
                        "new run in another --out")
