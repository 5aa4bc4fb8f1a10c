"""Schedules that follow ``--epochs`` (issue 16): milestones and warm-up scaled with a new epoch count,
explicit milestones taken as is inside the run, the effective schedule printed at start and stored in
the checkpoint and the metrics, kept on resume; out-of-range options refused in one line (issue 11)."""

from __future__ import annotations

import math

import pytest
import torch
from train_helpers import metrics_lines, options, synthetic

from assd.cli import main
from assd.errors import UserError
from assd.train import RECIPES, Recipe, TrainOptions, train
from assd.train.recipes import scale_milestones

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_quick_recipe_milestone_and_warmup_scale_with_epochs():
    recipe = RECIPES["quick"].with_overrides(epochs=150)
    assert (recipe.epochs, recipe.milestones, recipe.warmup_epochs) == (150, (100,), 5.0)
    assert recipe.scaled_from == 30 and recipe.name == "quick+custom"
    assert "lr x0.1 at epochs 100" in recipe.describe() and "scaled from 30 epochs" in recipe.describe()


def test_paper_recipe_milestones_scale_into_a_shorter_run():
    recipe = RECIPES["voc-321"].with_overrides(epochs=60)  # (200, 250) of 280 would never be reached
    assert recipe.milestones == (43, 54)  # 200 * 60 / 280 = 42.9, 250 * 60 / 280 = 53.6
    assert recipe.warmup_epochs == pytest.approx(60 / 280, abs=1e-6)
    longer = RECIPES["coco-513"].with_overrides(epochs=280)
    assert longer.milestones == (160, 260) and longer.warmup_epochs == pytest.approx(2.0)


def test_explicit_milestones_and_warmup_are_taken_as_given():
    recipe = RECIPES["voc-321"].with_overrides(epochs=60, milestones=[40, 50])
    assert (recipe.milestones, recipe.warmup_epochs, recipe.scaled_from) == ((40, 50), 1.0, None)
    recipe = RECIPES["voc-321"].with_overrides(epochs=60, warmup_epochs=2)
    assert (recipe.milestones, recipe.warmup_epochs) == ((43, 54), 2)
    assert RECIPES["voc-321"].with_overrides(epochs=280) is RECIPES["voc-321"]


def test_explicit_milestones_outside_the_run_are_refused():
    with pytest.raises(UserError, match=r"--milestones 200,250 \(beyond the run's 60 epochs.*1\.\.60"):
        RECIPES["voc-321"].with_overrides(epochs=60, milestones=[200, 250])
    with pytest.raises(UserError, match="need increasing epochs"):
        RECIPES["voc-321"].with_overrides(milestones=[250, 200])


def test_scaled_milestones_stay_inside_short_runs():
    assert scale_milestones((200, 250), 280, 1) == ()
    assert scale_milestones((200, 250), 280, 2) == (1,)  # both land on the only epoch boundary
    assert scale_milestones((200, 250), 280, 3) == (2,)
    assert scale_milestones((1,), 100, 10) == (1,)


@pytest.mark.parametrize("field,value,message", [
    ("momentum", 5.0, r"--momentum 5\.0 \(SGD momentum / AdamW beta1: must be in \[0, 1\)\)"),
    ("weight_decay", -1.0, r"--weight-decay -1\.0 \(must be >= 0"),
    ("lr", math.inf, r"--lr inf \(must be > 0 and finite\)"),
    ("lr", math.nan, r"--lr nan"),
    ("warmup_epochs", 40.0, r"--warmup-epochs 40 \(must lie in 0\.\.30"),
    ("warmup_epochs", math.nan, r"--warmup-epochs nan"),
    ("batch_size", 0, r"--batch-size 0 \(must be >= 1\)"),
    ("epochs", 0, r"--epochs 0 \(must be >= 1\)"),
])
def test_out_of_range_recipe_values_are_refused(field, value, message):
    with pytest.raises(UserError, match=message):
        RECIPES["quick"].with_overrides(**{field: value})


@pytest.mark.parametrize("bad,message", [({"seed": -1}, "--seed -1: must be in 0.."), ({"workers": -2}, "--workers"),
                                         ({"augment": "heavy"}, "--augment heavy: use one of ssd, none"),
                                         ({"allow_changes": True}, "--allow-changes only applies with --resume")])
def test_out_of_range_run_options_are_refused(bad, message):
    with pytest.raises(UserError, match=message):
        TrainOptions(**bad).check()


def test_cli_refuses_momentum_5_in_one_line_before_touching_the_out_folder(tmp_path, capsys):
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--model", "assd-mini", "--data", "synthetic:4", "--out", str(out), "--momentum", "5",
              "--device", "cpu", "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and len(err.splitlines()) == 1 and "--momentum 5.0" in err
    assert "Traceback" not in err and not out.exists()


def test_effective_schedule_is_printed_stored_and_followed(tmp_path, capsys):
    result = train(options(tmp_path / "run", recipe="quick", epochs=3, data=synthetic(4), progress=True))
    printed = capsys.readouterr().err
    assert ("schedule quick+custom: 3 epochs, adamw lr 0.001 (momentum 0.9, weight decay 0.0001), batch 2 x 1 "
            "process(es), lr x0.1 at epochs 2, warm-up 0.1 epoch(s) from x0.01 (milestones and warm-up scaled "
            "from 30 epochs); seed 0, augment ssd") in printed
    stored = torch.load(result.last_checkpoint, weights_only=True)["recipe"]
    assert stored == result.recipe.to_dict() and stored["milestones"] == [2] and stored["scaled_from"] == 30
    lines = metrics_lines(tmp_path / "run")
    assert lines[0]["type"] == "schedule" and lines[0]["recipe"] == stored and not lines[0]["resumed"]
    assert [line["lr"] for line in lines[1:]] == pytest.approx([1e-3, 1e-3, 1e-4])  # decays at epoch 2


def test_resume_keeps_the_schedule_and_a_longer_run_keeps_its_milestones(tmp_path):
    out = tmp_path / "run"
    first = train(options(out, recipe="quick", epochs=3, data=synthetic(4), max_steps=3))
    resumed = train(options(out, model=None, data=synthetic(4), resume=True, epochs=None, batch_size=None, lr=None))
    assert resumed.recipe == first.recipe and resumed.finished
    longer = train(options(out, model=None, data=synthetic(4), resume=True, epochs=6))
    assert longer.recipe.milestones == (2,) and longer.recipe.epochs == 6 and longer.epochs_completed == 6
    schedules = [line for line in metrics_lines(out) if line["type"] == "schedule"]
    assert [line["recipe"]["epochs"] for line in schedules] == [3, 3, 6]
    assert [line["resumed"] for line in schedules] == [False, True, True]


def test_resume_refuses_a_changed_schedule_unless_allowed(tmp_path):
    out = tmp_path / "run"
    train(options(out, recipe="quick", epochs=3, data=synthetic(4), max_steps=1))
    with pytest.raises(UserError, match=r"would change the run: --lr 0.01 \(run: 0.001\); --milestones 1 \(run: 2\): "
                                        "an exact resume .* --allow-changes"):
        train(options(out, model=None, data=synthetic(4), resume=True, epochs=None, milestones=(1,), lr=0.01))
    result = train(options(out, model=None, data=synthetic(4), resume=True, epochs=None, milestones=(1,),
                           allow_changes=True))
    assert result.recipe.milestones == (1,) and result.recipe.epochs == 3 and result.finished
    schedule = [line for line in metrics_lines(out) if line["type"] == "schedule"][-1]
    assert schedule["resumed"] and schedule["changes"] == ["--milestones 1 (run: 2)"]


def test_recipe_dicts_of_older_checkpoints_still_load():
    old = {key: value for key, value in RECIPES["voc-513"].to_dict().items() if key != "scaled_from"}
    assert Recipe.from_dict(old) == RECIPES["voc-513"]


def test_epochs_0_reports_only_the_epochs_problem():
    with pytest.raises(UserError) as info:
        RECIPES["quick"].with_overrides(epochs=0)
    assert str(info.value) == "recipe quick+custom: bad --epochs 0 (must be >= 1)"


def test_a_shorter_epochs_on_resume_drops_the_milestones_past_the_new_end(tmp_path, capsys):
    out = tmp_path / "run"
    first = train(options(out, recipe="quick", epochs=4, data=synthetic(4), max_steps=2))
    assert first.recipe.milestones == (3,)
    shorter = train(options(out, model=None, data=synthetic(4), resume=True, epochs=2, batch_size=None, lr=None,
                            progress=True))
    assert shorter.recipe.milestones == () and shorter.recipe.epochs == 2 and shorter.finished
    change = "--milestones none (run: 3; the ones past the new end, --epochs 2, are dropped)"
    assert f"note: schedule changed by the new --epochs: {change}" in capsys.readouterr().err
    schedule = [line for line in metrics_lines(out) if line["type"] == "schedule"][-1]
    assert schedule["resumed"] and schedule["changes"] == [change]
