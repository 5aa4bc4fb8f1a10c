"""The training loop: recipes and schedule, checkpoints, exact resume, refusals, NaN stop, DDP (2 gloo
processes) and ``assd train`` on the real voc-mini photos. Models are tiny (ResNet18 at 64 px) or
``assd-mini`` for a couple of steps, so everything runs in seconds on 2 CPU cores."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from train_helpers import NaNImages, metrics_lines, options, synthetic

from assd.cli import main
from assd.errors import CheckFailed, UserError
from assd.models.checkpoint import load_checkpoint
from assd.train import RECIPES, Recipe, default_recipe_name, train
from assd.train.sampling import ResumableSampler, SeededSamples
from assd.train.schedule import lr_at

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ---------------------------------------------------------------- recipes and schedule
def test_paper_recipes():
    expected = {"voc-321": (10, 280, (200, 250)), "voc-513": (8, 180, (120, 170)),
                "coco-321": (10, 160, (100, 150)), "coco-513": (8, 140, (80, 130))}
    for name, (batch, epochs, milestones) in expected.items():
        recipe = RECIPES[name]
        assert (recipe.batch_size, recipe.epochs, recipe.milestones) == (batch, epochs, milestones)
        assert (recipe.optimizer, recipe.lr, recipe.momentum, recipe.weight_decay, recipe.gamma) == (
            "sgd", 1e-3, 0.9, 5e-4, 0.1)


def test_default_recipe_follows_model_size_and_data():
    assert default_recipe_name(321, "resnet101", "voc") == "voc-321"
    assert default_recipe_name(513, "resnet101", "voc") == "voc-513"
    assert default_recipe_name(300, "vgg16", "coco") == "coco-321"
    assert default_recipe_name(512, "vgg16", "coco") == "coco-513"
    assert default_recipe_name(256, "resnet18", "voc") == "quick"
    assert default_recipe_name(513, "resnet101", "synthetic") == "quick"


def test_overrides_rename_the_recipe_and_are_validated():
    recipe = RECIPES["voc-321"].with_overrides(epochs=10, milestones=[6, 8], lr=None)
    assert (recipe.name, recipe.epochs, recipe.milestones, recipe.lr) == ("voc-321+custom", 10, (6, 8), 1e-3)
    assert RECIPES["voc-321"].with_overrides(epochs=280) is RECIPES["voc-321"]
    with pytest.raises(UserError, match="milestones"):
        RECIPES["voc-321"].with_overrides(milestones=[250, 200])
    assert Recipe.from_dict(recipe.to_dict()) == recipe


def test_lr_schedule_warms_up_linearly_then_steps_at_milestones():
    recipe = Recipe("t", lr=1.0, epochs=10, milestones=(4, 8), warmup_epochs=1.0, warmup_factor=0.1)
    assert lr_at(recipe, 0, 0, 10) == pytest.approx(0.1)
    assert lr_at(recipe, 0, 5, 10) == pytest.approx(0.55)
    assert lr_at(recipe, 1, 0, 10) == pytest.approx(1.0)
    assert lr_at(recipe, 3, 9, 10) == pytest.approx(1.0)
    assert lr_at(recipe, 4, 0, 10) == pytest.approx(0.1)
    assert lr_at(recipe, 8, 3, 10) == pytest.approx(0.01)


def test_sampler_order_is_seeded_by_epoch_and_resumable():
    samples = SeededSamples(synthetic(10), seed=3)
    sampler = ResumableSampler(samples, num_replicas=2, rank=1, seed=3)
    sampler.set_position(epoch=4)
    full = list(sampler)
    assert len(full) == 5 and all(epoch == 4 for epoch, _ in full)
    sampler.set_position(epoch=4, skip=2)
    assert list(sampler) == full[2:] and len(sampler) == 3
    sampler.set_position(epoch=5)
    assert [index for _, index in sampler] != [index for _, index in full]


def test_seeded_samples_repeat_their_augmentation_and_leave_global_rng_alone():
    samples = SeededSamples(synthetic(4), seed=0)
    before = torch.get_rng_state()
    first, again, other_epoch = samples[(0, 1)], samples[(0, 1)], samples[(1, 1)]
    assert torch.equal(torch.get_rng_state(), before)
    assert torch.equal(first[0], again[0]) and torch.equal(first[1]["boxes"], again[1]["boxes"])
    assert not torch.equal(first[0], other_epoch[0])


# ---------------------------------------------------------------- runs, checkpoints, resume
def test_run_writes_reloadable_checkpoint_and_metrics(tmp_path):
    result = train(options(tmp_path / "run", data=synthetic(4)))
    assert result.finished and result.epochs_completed == 2 and result.global_step == 4
    assert len(result.step_losses) == 4 and all(torch.isfinite(torch.tensor(result.step_losses)))
    state = torch.load(result.last_checkpoint, weights_only=True)
    assert state["epoch"] == 2 and state["step_in_epoch"] == 0 and state["finished"]
    assert state["recipe"]["epochs"] == 2 and state["options"]["data"] == "synthetic:4:0"
    model = load_checkpoint(result.last_checkpoint)
    assert model.cfg.class_names == synthetic().class_names and model.cfg.num_classes == 5
    lines = metrics_lines(tmp_path / "run")
    assert [line["type"] for line in lines] == ["schedule", "epoch", "epoch"]
    assert [line["epoch"] for line in lines[1:]] == [1, 2]
    assert lines[0]["recipe"] == state["recipe"] and lines[0]["seed"] == 0 and lines[0]["augment"] == "ssd"


def test_resume_continues_with_the_same_next_step_losses(tmp_path):
    six = synthetic(6)  # 3 steps per epoch
    reference = train(options(tmp_path / "straight", data=six))
    interrupted = train(options(tmp_path / "split", data=six, max_steps=2))  # stops in the middle of epoch 1
    assert not interrupted.finished and interrupted.global_step == 2
    across_epochs = train(options(tmp_path / "split", data=six, resume=True, max_steps=4, model=None))
    rest = train(options(tmp_path / "split", data=six, resume=True, model=None))
    resumed = interrupted.step_losses + across_epochs.step_losses + rest.step_losses
    assert rest.finished and len(resumed) == len(reference.step_losses)
    torch.testing.assert_close(torch.tensor(resumed), torch.tensor(reference.step_losses), rtol=1e-5, atol=1e-6)
    straight = load_checkpoint(reference.last_checkpoint).state_dict()
    split = load_checkpoint(rest.last_checkpoint).state_dict()
    for key, value in straight.items():
        torch.testing.assert_close(split[key], value, rtol=1e-4, atol=1e-5)


def test_validation_keeps_best_checkpoint(tmp_path):
    result = train(options(tmp_path / "run", epochs=1, val_data=synthetic(3, train_mode=False, start=100)))
    assert result.best_checkpoint is not None and result.best_checkpoint.exists()
    assert result.best_map is not None and 0.0 <= result.best_map <= 1.0
    kinds = [line["type"] for line in metrics_lines(tmp_path / "run")]
    assert kinds == ["schedule", "epoch", "val"]


def test_refuses_to_overwrite_a_run_without_resume_or_force(tmp_path):
    out = tmp_path / "run"
    with pytest.raises(UserError, match="nothing to resume"):
        train(options(out, resume=True))
    train(options(out, epochs=1, max_steps=1))
    with pytest.raises(UserError, match="already holds a training run"):
        train(options(out, epochs=1))
    with pytest.raises(UserError, match="trains tiny-test"):
        train(options(out, resume=True, model="assd-mini"))
    result = train(options(out, epochs=1, max_steps=2, force=True))
    assert result.global_step == 2 and len(result.step_losses) == 2


def test_nan_loss_stops_with_check_failed_and_keeps_last_good_checkpoint(tmp_path):
    out = tmp_path / "run"
    train(options(out, epochs=1, max_steps=1))
    good = (out / "last.pt").read_bytes()
    with pytest.raises(CheckFailed, match="loss became nan.*last good checkpoint .* is kept.*--resume --allow-changes"):
        train(options(out, resume=True, epochs=2, data=NaNImages(), model=None))
    assert (out / "last.pt").read_bytes() == good


def test_bf16_autocast_and_channels_last_run_on_cpu(tmp_path):
    result = train(options(tmp_path / "run", amp="bf16", channels_last=True, max_steps=2))
    assert result.global_step == 2 and all(torch.isfinite(torch.tensor(result.step_losses)))


@pytest.mark.parametrize("bad,message", [({"amp": "fp16"}, "needs a CUDA GPU"), ({"sync_bn": True}, "several GPU"),
                                         ({"resume": True, "force": True}, "contradict")])
def test_options_that_cannot_work_here_are_refused(tmp_path, bad, message):
    with pytest.raises(UserError, match=message):
        train(options(tmp_path / "run", **bad))
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------- DDP
def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _ddp_worker(rank: int, world_size: int, port: int, out: str, report_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world_size),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    result = train(options(Path(out), epochs=1))
    weights = load_checkpoint(result.last_checkpoint).state_dict() if rank == 0 else None
    torch.save({"losses": result.step_losses, "weights": weights}, Path(report_dir) / f"rank{rank}.pt")


def test_ddp_two_cpu_processes_train_in_step(tmp_path):
    out, reports = tmp_path / "run", tmp_path / "reports"
    reports.mkdir()
    mp.spawn(_ddp_worker, args=(2, _free_port(), str(out), str(reports)), nprocs=2, join=True)
    rank0 = torch.load(reports / "rank0.pt", weights_only=True)
    rank1 = torch.load(reports / "rank1.pt", weights_only=True)
    assert len(rank0["losses"]) == 2  # 8 images / (2 processes x 2 per batch)
    assert rank0["losses"] == rank1["losses"]  # losses are averaged over the processes
    state = torch.load(out / "last.pt", weights_only=True)
    assert state["global_batch"] == 4 and state["epoch"] == 1
    assert sorted(p.name for p in out.iterdir()) == ["curves.png", "last.pt", "metrics.jsonl"]


# ---------------------------------------------------------------- the command line on real photos
def test_assd_train_cli_on_voc_mini(voc_mini_root, tmp_path, capsys):
    out = tmp_path / "run"
    args = ["train", "--model", "assd-mini", "--data", f"voc:{voc_mini_root}", "--out", str(out), "--epochs", "1",
            "--batch-size", "2", "--max-steps", "2", "--workers", "0", "--device", "cpu", "--no-progress"]
    main(args)
    printed = capsys.readouterr().out
    assert "stopped at epoch 0/1, step 2 (recipe quick+custom)" in printed
    model = load_checkpoint(out / "last.pt")
    assert model.cfg.name == "assd-mini" and len(model.cfg.class_names) == 20
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2
    assert "already holds a training run" in capsys.readouterr().err
