"""The README's two set-up commands are what CI runs (issue 20): `.ci/run` reads them from README.md and adds
no set-up step of its own, and `constraints.txt` pins every package the project asks for."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
from readme_commands import readme_commands

tomllib = pytest.importorskip("tomllib", reason="tomllib is in the standard library from Python 3.11")


def _requirement_names(requirements):
    return {re.split(r"[\s<>=!~;\[]", req.strip(), maxsplit=1)[0].lower().replace("_", "-") for req in requirements}


def test_readme_has_the_two_commands_with_the_constraints():
    commands = readme_commands((ROOT / "README.md").read_text())
    assert commands["demo"].startswith("python3 -m venv .venv && ")
    assert commands["demo"].endswith("&& .venv/bin/assd demo")
    for name, command in commands.items():
        assert "pip install -c constraints.txt -e " in command, name
        # run_readme_command.sh splits at ' && ': each step must stand alone
        assert "cd " not in command and "'&&" not in command and '"&&' not in command, name
    assert "pytest" in commands["tests"] and "'.[dev]'" in commands["tests"]


def test_ci_runs_the_readme_commands_and_installs_nothing_else():
    ci = [line for line in (ROOT / ".ci" / "run").read_text().splitlines() if not line.lstrip().startswith("#")]
    code = "\n".join(ci)
    assert "scripts/run_readme_command.sh demo" in code and "scripts/run_readme_command.sh tests" in code
    assert not re.search(r"\bpip3?\b|-m venv", code)


def test_readme_commands_script_prints_them_in_order():
    out = subprocess.run([sys.executable, str(ROOT / "scripts" / "readme_commands.py")], capture_output=True,
                         text=True, check=True).stdout.splitlines()
    commands = readme_commands((ROOT / "README.md").read_text())
    assert out == [commands["demo"], commands["tests"]]


@pytest.mark.parametrize("text", ["no blocks at all",
                                  "<!-- command: demo -->\n```bash\na\nb\n```\n<!-- command: tests -->\n```bash\nc\n```"])
def test_readme_commands_refuses_a_readme_without_exactly_one_line_each(text):
    with pytest.raises(ValueError):
        readme_commands(text)


def test_constraints_pin_every_requirement():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    wanted = _requirement_names(project["dependencies"] + extras["dev"] + extras["serve"]) - {"assd"}
    pinned = {line.split("==")[0].strip().lower().replace("_", "-")
              for line in (ROOT / "constraints.txt").read_text().splitlines() if "==" in line and not line.startswith("#")}
    missing = sorted(wanted - pinned)
    assert not missing, f"constraints.txt lacks {missing}: run scripts/refresh_constraints.sh"
