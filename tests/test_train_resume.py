"""Exact, kill-safe resume (issue 11, items 5, 6, 15, 16): the run's seed and settings come from the
checkpoint and changes are refused; a SIGKILL between the metrics line and ``last.pt`` (or in the middle
of writing it) leaves nothing a resumed run repeats or keeps; clear messages for runs that cannot go on."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from train_helpers import NaNImages, metrics_lines, options, synthetic

from assd.errors import CheckFailed, UserError
from assd.train import train
from assd.train.state import trim_metrics

# Our atomic writes' temp files: .NAME.<pid>-<random>.tmp (assd.paths.temp_file_beside).
OUR_TEMP = re.compile(r"^\.(last\.pt|best\.pt|metrics\.jsonl|curves\.png)\.\d+-[A-Za-z0-9_]+\.tmp$")

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TESTS = Path(__file__).resolve().parent

# Trains 3 epochs of 2 steps and SIGKILLs itself at epoch 2's checkpoint: "before-save" after the epoch's
# metrics line and before last.pt is written; "mid-save" half-way through writing last.pt's temp file.
_KILLED_RUN = """
import os, signal, sys
from pathlib import Path
import torch
torch.set_num_threads(1)
from train_helpers import options, synthetic
import assd.train.trainer as trainer
from assd.train import train

out, where = Path(sys.argv[1]), sys.argv[2]
real_checkpoint_save, real_torch_save = trainer.save_checkpoint, torch.save

def checkpoint_save(model, path, **extra):
    if extra["epoch"] == 2:
        os.kill(os.getpid(), signal.SIGKILL)
    real_checkpoint_save(model, path, **extra)

def torch_save(obj, handle, *args, **kwargs):
    if obj.get("epoch") == 2:
        handle.write(b"the first bytes of a checkpoint")
        handle.flush()
        os.kill(os.getpid(), signal.SIGKILL)
    real_torch_save(obj, handle, *args, **kwargs)

if where == "before-save":
    trainer.save_checkpoint = checkpoint_save
else:
    torch.save = torch_save
train(options(out, epochs=3, data=synthetic(4)))
"""


def _killed_run(out: Path, where: str) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS.parent), str(TESTS)]), "OMP_NUM_THREADS": "1"}
    process = subprocess.run([sys.executable, "-c", _KILLED_RUN, str(out), where], env=env, capture_output=True,
                             text=True, timeout=300, check=False)
    assert process.returncode == -signal.SIGKILL, process.stderr[-2000:]


def _epoch_losses(out: Path) -> list[float]:
    return [line["loss"] for line in metrics_lines(out) if line["type"] == "epoch"]


def test_kill_between_metrics_line_and_checkpoint_does_not_duplicate_epochs(tmp_path, capsys):
    reference = train(options(tmp_path / "reference", epochs=3, data=synthetic(4)))
    out = tmp_path / "run"
    _killed_run(out, "before-save")
    assert [line["epoch"] for line in metrics_lines(out) if line["type"] == "epoch"] == [1, 2]
    assert torch.load(out / "last.pt", weights_only=True)["epoch"] == 1
    train(options(out, model=None, data=synthetic(4), resume=True, epochs=None, progress=True))
    assert "metrics.jsonl: dropped 1 line(s) written after last.pt (step 2)" in capsys.readouterr().err
    assert [line["epoch"] for line in metrics_lines(out) if line["type"] == "epoch"] == [1, 2, 3]
    torch.testing.assert_close(torch.tensor(_epoch_losses(out)), torch.tensor(reference.epoch_losses),
                               rtol=1e-5, atol=1e-6)


def test_kill_during_checkpoint_save_leaves_a_temp_file_the_next_run_removes(tmp_path, capsys):
    out = tmp_path / "run"
    _killed_run(out, "mid-save")
    leftovers = [path.name for path in out.iterdir() if OUR_TEMP.match(path.name)]
    assert len(leftovers) == 1 and leftovers[0].startswith(".last.pt.")
    assert torch.load(out / "last.pt", weights_only=True)["epoch"] == 1  # the last good one
    users = [".last.pt.my-notes.tmp", "last.pt.tmp", ".last.pt.abcd1234.txt"]  # not our pattern: kept
    for name in users:
        (out / name).write_text("mine")
    train(options(out, model=None, data=synthetic(4), resume=True, epochs=None, progress=True))
    assert "removed 1 temp file(s) left by an interrupted save" in capsys.readouterr().err
    assert sorted(path.name for path in out.iterdir() if path.name.startswith((".", "last.pt."))) == sorted(users)


def test_resume_takes_the_seed_from_the_checkpoint_and_refuses_another(tmp_path):
    reference = train(options(tmp_path / "reference", data=synthetic(4), seed=3))
    out = tmp_path / "split"
    first = train(options(out, data=synthetic(4), seed=3, max_steps=1))
    with pytest.raises(UserError, match=r"would change the run: --seed 4 \(run: 3\); --augment none \(run: ssd\)"):
        train(options(out, model=None, data=synthetic(4), resume=True, seed=4, augment="none"))
    rest = train(options(out, model=None, data=synthetic(4), resume=True))  # no --seed: the run's 3
    torch.testing.assert_close(torch.tensor(first.step_losses + rest.step_losses),
                               torch.tensor(reference.step_losses), rtol=1e-5, atol=1e-6)
    assert torch.load(out / "last.pt", weights_only=True)["options"]["seed"] == 3


def test_resume_is_exact_whatever_the_number_of_dataloader_workers(tmp_path):
    """Every worker's stream is a function of (seed, epoch, index): no worker state needs saving."""
    reference = train(options(tmp_path / "reference", data=synthetic(6), workers=0))
    out = tmp_path / "split"
    first = train(options(out, data=synthetic(6), workers=2, max_steps=2))  # mid-epoch, 2 worker processes
    rest = train(options(out, model=None, data=synthetic(6), resume=True, workers=1))
    torch.testing.assert_close(torch.tensor(first.step_losses + rest.step_losses),
                               torch.tensor(reference.step_losses), rtol=1e-5, atol=1e-6)


def test_resume_on_other_data_is_refused(tmp_path):
    out = tmp_path / "run"
    train(options(out, data=synthetic(4), max_steps=1))
    with pytest.raises(UserError, match=r"--data synthetic:6:0 \(6 images; the run's data: 4 images\)"):
        train(options(out, model=None, data=synthetic(6), resume=True))
    with pytest.raises(UserError, match=r"\(4 images; the run's data: 4 images, other image ids\)"):
        train(options(out, model=None, data=synthetic(4, start=10), resume=True))


def test_resume_with_fewer_epochs_than_done_is_refused(tmp_path):
    out = tmp_path / "run"
    train(options(out, data=synthetic(4)))
    with pytest.raises(UserError, match="has already done 2 epochs: pass --epochs 3 or more to train longer"):
        train(options(out, model=None, data=synthetic(4), resume=True, epochs=1))
    finished = train(options(out, model=None, data=synthetic(4), resume=True, epochs=2))
    assert finished.finished and finished.epochs_completed == 2 and not finished.step_losses


@pytest.mark.parametrize("resume", [False, True])
def test_corrupt_last_checkpoint_points_to_force(tmp_path, resume):
    out = tmp_path / "run"
    out.mkdir()
    (out / "last.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match=r"run: its last.pt is unusable \(not a readable torch checkpoint.*--force"):
        train(options(out, resume=resume))
    assert train(options(out, force=True, max_steps=1)).global_step == 1


def test_nan_before_any_checkpoint_says_run_again_and_leaves_nothing(tmp_path):
    out = tmp_path / "run"
    with pytest.raises(CheckFailed, match="stopped before any checkpoint was written: lower --lr .* run again") as info:
        train(options(out, data=NaNImages()))
    assert "--resume" not in str(info.value)
    assert not out.exists()  # no empty metrics.jsonl, no empty folder


def test_metrics_of_a_run_that_never_saved_are_replaced_not_appended(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "metrics.jsonl").write_text('{"type": "epoch", "epoch": 1, "global_step": 2, "loss": 9.0}\n')
    train(options(out, data=synthetic(4), epochs=1))
    assert [line["type"] for line in metrics_lines(out)] == ["schedule", "epoch"]


def test_trim_metrics_keeps_lines_up_to_the_checkpoint_and_drops_a_torn_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"type": "schedule", "global_step": 0}\n{"type": "epoch", "global_step": 4}\n'
                    '{"type": "val", "global_step": 4}\n{"type": "epoch", "global_step": 8}\n{"type": "ep')
    assert trim_metrics(path, 4) == 2
    assert [line.count("global_step") for line in path.read_text().splitlines()] == [1, 1, 1]
    assert trim_metrics(path, 4) == 0
    assert trim_metrics(path, None) == 3 and not path.exists()


@pytest.mark.parametrize("edit,reason", [
    (lambda state: state.pop("rng"), r"missing or malformed: rng"),
    (lambda state: [state.pop("epoch"), state.pop("global_step")], r"missing or malformed: epoch, global_step"),
    (lambda state: state["model"].pop(next(iter(state["model"]))), r"its weights do not fit its model config: "),
    (lambda state: state["rng"].pop("numpy"), r"bad RNG states: KeyError"),
])
def test_a_cut_or_edited_last_checkpoint_is_refused_in_one_line(tmp_path, edit, reason):
    out = tmp_path / "run"
    train(options(out, data=synthetic(4), max_steps=1))
    state = torch.load(out / "last.pt", weights_only=True)
    edit(state)
    torch.save(state, out / "last.pt")
    with pytest.raises(UserError, match=rf"run: its last.pt is unusable \({reason}.*--force .* or another --out"):
        train(options(out, model=None, data=synthetic(4), resume=True))


def test_mid_epoch_resume_logs_the_epoch_means_of_an_uninterrupted_run(tmp_path):
    """The checkpoint of a run stopped inside an epoch keeps the loss sums of the epoch's first steps
    (``epoch_partial``): the resumed epoch's mean covers all its steps (it averaged only the steps after
    the resume, 22.218 vs 22.836 in the issue) and metrics.jsonl equals the uninterrupted run's."""
    reference = tmp_path / "reference"
    train(options(reference, epochs=2, data=synthetic(8)))  # 4 steps per epoch
    out = tmp_path / "run"
    train(options(out, epochs=2, data=synthetic(8), max_steps=2))  # stops after step 2 of epoch 1
    assert torch.load(out / "last.pt", weights_only=True)["epoch_partial"]["steps"] == 2
    train(options(out, model=None, data=synthetic(8), resume=True, epochs=None))
    fields = ("epoch", "global_step", "loss", "loc_loss", "conf_loss", "lr", "steps")
    resumed, uninterrupted = ([{key: line[key] for key in fields} for line in metrics_lines(folder)
                               if line["type"] == "epoch"] for folder in (out, reference))
    assert resumed == uninterrupted and [line["steps"] for line in resumed] == [4, 4]
