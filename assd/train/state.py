"""What a training checkpoint holds besides the weights, and how a run starts (fresh or resumed).

Everything stored is ``torch.load(weights_only=True)``-loadable: tensors, dicts, lists, numbers,
strings, None. ``last.pt`` (every epoch, and when ``max_steps`` stops a run) and ``best.pt`` (best
validation mAP) are ``assd.models.checkpoint`` files with these extra keys:

    optimizer, scheduler, scaler      state_dicts (scaler: None without fp16 AMP)
    epoch                             epochs completed
    step_in_epoch                     optimizer steps done in the epoch after those (0 at epoch ends)
    global_step                       optimizer steps in total
    global_batch                      images per step over all processes (resuming mid-epoch needs it)
    recipe                            Recipe.to_dict()
    options                           the run's settings (data spec, seed, amp ...)
    best_map, best_epoch              best validation mAP so far (None without validation)
    rng                               torch / cuda / numpy / python RNG states of rank 0
    finished                          all epochs done
"""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import numpy as np
import torch

from assd.errors import UserError
from assd.models.checkpoint import read_checkpoint

LAST = "last.pt"
BEST = "best.pt"
METRICS = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"


def rng_states() -> dict:
    """The global RNG states, as weights_only-loadable values."""
    name, keys, pos, has_gauss, cached_gaussian = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else []
    return {
        "torch": torch.get_rng_state(),
        "cuda": list(cuda),
        "numpy": {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached_gaussian)},
        "python": [version, list(internal), gauss_next],
    }


def restore_rng_states(states: dict) -> None:
    torch.set_rng_state(states["torch"])
    if states.get("cuda") and torch.cuda.is_available() and len(states["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(states["cuda"])
    numpy_state = states["numpy"]
    np.random.set_state((numpy_state["name"], numpy_state["keys"].numpy().astype(np.uint32), numpy_state["pos"],
                         numpy_state["has_gauss"], numpy_state["cached_gaussian"]))
    version, internal, gauss_next = states["python"]
    random.setstate((version, tuple(internal), gauss_next))


def describe_run(state: dict) -> str:
    recipe = state.get("recipe") or {}
    return (f"epoch {state.get('epoch', '?')}/{recipe.get('epochs', '?')}, step {state.get('global_step', '?')}"
            + (", finished" if state.get("finished") else ""))


def prepare_out_dir(out: Path, resume: bool, force: bool) -> dict | None:
    """Check ``out`` against ``--resume`` / ``--force``; the checkpoint to resume from, or None.

    A folder that already holds a run (``last.pt``) is never overwritten silently: ``--resume`` continues
    it; with ``--force`` the caller deletes what the previous run wrote (``clear_previous_run``) once the
    new run's settings have been checked.
    """
    last = out / LAST
    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: --out exists and is not a folder: pass a folder for the run's files")
    if resume:
        if not last.is_file():
            raise UserError(f"{last}: nothing to resume (no checkpoint): drop --resume to start a new run there")
        state = read_checkpoint(last)
        if "optimizer" not in state or "recipe" not in state:
            raise UserError(f"{last}: a model-only checkpoint, without training state: cannot --resume from it")
        return state
    if last.exists() and not force:
        state = read_checkpoint(last)
        raise UserError(f"{out}: already holds a training run ({describe_run(state)}): pass --resume to "
                        "continue it, --force to start over (deletes its checkpoints and logs) or another --out")
    return None


def clear_previous_run(out: Path) -> None:
    """Delete what an earlier run wrote into ``out`` (``--force``): checkpoints, metrics, TensorBoard logs."""
    for name in (LAST, BEST, METRICS):
        (out / name).unlink(missing_ok=True)
    shutil.rmtree(out / TENSORBOARD_DIR, ignore_errors=True)
