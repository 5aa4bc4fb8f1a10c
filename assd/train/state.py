"""What a training checkpoint holds besides the weights, and how a run starts (fresh or resumed).

Everything stored is ``torch.load(weights_only=True)``-loadable: tensors, dicts, lists, numbers,
strings, None. ``last.pt`` (every epoch, and when ``max_steps`` stops a run) and ``best.pt`` (best
validation mAP) are ``assd.models.checkpoint`` files with these extra keys:

    optimizer, scheduler, scaler      state_dicts (scaler: None without fp16 AMP)
    epoch                             epochs completed
    step_in_epoch                     optimizer steps done in the epoch after those (0 at epoch ends)
    global_step                       optimizer steps in total
    global_batch                      images per step over all processes (resuming mid-epoch needs it)
    recipe                            Recipe.to_dict(): the effective schedule
    options                           the run's settings (data spec and fingerprint, seed, augment, amp,
                                      sync_bn, freeze_bn, validation ...)
    best_map, best_epoch              best validation mAP so far (None without validation)
    rng                               torch / cuda / numpy / python RNG states of rank 0
    finished                          all epochs done
"""

from __future__ import annotations

import json
import random
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from assd import paths
from assd.errors import UserError
from assd.models.checkpoint import read_checkpoint
from assd.models.config import ModelConfig
from assd.train.recipes import Recipe
from assd.utils import atomic_write_text

LAST = "last.pt"
BEST = "best.pt"
METRICS = "metrics.jsonl"
CURVES = "curves.png"
TENSORBOARD_DIR = "tensorboard"
RUN_FILES = (LAST, BEST, METRICS, CURVES)  # what a run writes into --out (besides tensorboard/)
RESUME_KEYS = {"model_config": dict, "model": dict, "optimizer": dict, "recipe": dict, "epoch": int,
               "step_in_epoch": int, "global_step": int, "rng": dict}  # what --resume reads from last.pt


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


def write_error(path: Path, exc: OSError, advice: str) -> UserError:
    """One line for a failed write: the path, the errno name and its text, what to do."""
    error = paths.write_error(path, exc)
    return error if error is not None else UserError(f"{path}: cannot write ({exc}): {advice}")


def check_writable(out: Path, inputs: Sequence[str] = ()) -> None:
    """Refuse, before any work, an ``out`` that is a file, cannot be created (a file on the way), lies on a
    read-only file system or in a folder we may not write, or is (or holds) one of the run's ``inputs``."""
    paths.check_outputs(list(inputs), folders={"--out": (out, [*RUN_FILES, TENSORBOARD_DIR])})


def unusable(out: Path, reason: str) -> UserError:
    """The one line for a ``last.pt`` in ``out`` that cannot be continued."""
    return UserError(f"{out}: its {LAST} is unusable ({reason}): pass --force to start over (deletes the "
                     "run's files) or another --out")


def _read_run_checkpoint(last: Path, out: Path) -> dict:
    try:
        return read_checkpoint(last)
    except UserError as exc:
        raise unusable(out, str(exc).removeprefix(f"{last}: ").split(": pass ")[0]) from None


def _check_resumable(state: dict, last: Path, out: Path) -> None:
    """Every key the resume path reads, of the right kind (``RESUME_KEYS``), and a recipe and model config
    that load: a checkpoint with our header but cut or edited is refused here, not by a traceback later."""
    if "optimizer" not in state and "recipe" not in state:
        raise UserError(f"{last}: a model-only checkpoint, without training state: cannot --resume from it")
    wrong = [key for key, kind in RESUME_KEYS.items() if not isinstance(state.get(key), kind)]
    if not isinstance(state.get("options", {}), dict):
        wrong.append("options")
    if wrong:
        raise unusable(out, f"missing or malformed: {', '.join(wrong)}")
    try:
        Recipe.from_dict(state["recipe"])
        ModelConfig.from_dict(state["model_config"])
    except (TypeError, ValueError, KeyError, UserError) as exc:
        raise unusable(out, f"bad recipe or model config: {str(exc).splitlines()[0][:160]}") from None


def prepare_out_dir(out: Path, resume: bool, force: bool, inputs: Sequence[str] = ()) -> dict | None:
    """Check ``out`` against ``--resume`` / ``--force`` before any work; the checkpoint to resume from, or None.

    A folder that already holds a run (``last.pt`` or ``best.pt``) is never overwritten silently:
    ``--resume`` continues it; with ``--force`` the caller deletes what the previous run wrote
    (``start_run_folder``) once the new run's settings have been checked.
    """
    last = out / LAST
    check_writable(out, inputs)
    if resume:
        if not last.is_file():
            raise UserError(f"{last}: nothing to resume (no checkpoint): drop --resume to start a new run there")
        state = _read_run_checkpoint(last, out)
        _check_resumable(state, last, out)
        return state
    if force:
        return None
    if last.exists():
        state = _read_run_checkpoint(last, out)
        raise UserError(f"{out}: already holds a training run ({describe_run(state)}): pass --resume to "
                        "continue it, --force to start over (deletes its checkpoints and logs) or another --out")
    if (out / BEST).exists():
        raise UserError(f"{out}: holds the {BEST} of an earlier run (without {LAST}): pass --force to start over "
                        "(deletes it) or another --out")
    return None


def start_run_folder(out: Path, global_step: int | None, force: bool) -> list[str]:
    """Make ``out`` ready once every check passed (rank 0): with ``force`` delete the previous run's files;
    delete our own stale temp files (a kill during an atomic save leaves them); drop the metrics lines
    written after the checkpoint (``global_step``; None = a new run). Returns notes on what was removed."""
    if force:
        for name in (LAST, BEST, METRICS, CURVES):
            (out / name).unlink(missing_ok=True)
        shutil.rmtree(out / TENSORBOARD_DIR, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    notes = []
    stale = [removed for name in RUN_FILES for removed in paths.clean_stale_temp_files(out / name)]
    if stale:
        notes.append(f"removed {len(stale)} temp file(s) left by an interrupted save in {out}")
    dropped = trim_metrics(out / METRICS, global_step)
    if dropped:
        where = f"after {LAST} (step {global_step})" if global_step is not None else f"by a run without {LAST}"
        notes.append(f"{out / METRICS}: dropped {dropped} line(s) written {where}")
    return notes


def trim_metrics(path: Path, global_step: int | None) -> int:
    """Keep the lines of ``path`` written up to the checkpoint at ``global_step`` (None: keep none), so a
    resumed run never repeats an epoch there: a kill between a metrics line and the checkpoint save leaves
    lines the resumed run writes again. A line cut by a kill is dropped too. Returns how many were dropped."""
    if not path.exists():
        return 0
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    kept = []
    for line in lines:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if global_step is not None and isinstance(record, dict) and record.get("global_step", 0) <= global_step:
            kept.append(line)
    if not kept:
        path.unlink()
    elif len(kept) < len(lines):
        atomic_write_text(path, "\n".join(kept) + "\n")
    return len(lines) - len(kept)
