"""``assd info`` and the CLI's one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from assd.models import build_model
from assd.models.checkpoint import save_checkpoint


def run_assd(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "assd.cli", *args], check=False, capture_output=True, text=True, timeout=300)


def test_info_json_has_the_contract_keys():
    result = run_assd("info", "assd513", "--json")
    assert result.returncode == 0, result.stderr
    facts = json.loads(result.stdout)
    assert facts["model"] == "assd513" and facts["input_size"] == 513
    assert facts["num_anchors"] == 25_844 and facts["num_params"] == 67_546_820
    assert facts["feature_maps"] == [[65, 65], [33, 33], [17, 17], [9, 9], [5, 5], [3, 3], [1, 1]]
    assert 50 < facts["gmacs"] < 100


def test_info_table_and_num_classes():
    result = run_assd("info", "assd321", "--num-classes", "81")
    assert result.returncode == 0, result.stderr
    assert "total anchors: 10,352" in result.stdout and "81 classes" in result.stdout


def test_info_on_a_checkpoint(tmp_path):
    model = build_model("assd-mini")
    save_checkpoint(model, tmp_path / "mini.pt")
    result = run_assd("info", str(tmp_path / "mini.pt"), "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["num_params"] == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("args,needle", [
    (("info", "assd999"), "neither a checkpoint file nor a preset"),
    (("info", "assd513", "--num-classes", "1"), "at least 2"),
    (("info", "assd513", "--num-classes", "x"), "not a valid integer"),
])
def test_bad_input_gives_one_line_error_and_exit_2(args, needle):
    result = run_assd(*args)
    assert result.returncode == 2
    assert needle in result.stderr
    assert "Traceback" not in result.stderr


def test_corrupt_checkpoint_is_a_one_line_error(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"garbage")
    result = run_assd("info", str(bad))
    assert result.returncode == 2 and "not a readable torch checkpoint" in result.stderr
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(2)}, foreign)
    result = run_assd("info", str(foreign))
    assert result.returncode == 2 and "not an assd checkpoint" in result.stderr
