"""The runtime stage imports nothing "above" it (DEVELOPERS.md: imports flow one way; runtime never imports
train or export), and its runner modules do not import each other in a circle (issue 13, structure)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

RUNTIME = Path(__file__).resolve().parents[1] / "assd" / "runtime"
# Stages after the runtime in the pipeline (docs/architecture.md): the runtime may import none of them.
LATER_STAGES = ("assd.export", "assd.train", "assd.calibration", "assd.evaluation", "assd.bench", "assd.demo",
                "assd.data", "assd.commands", "assd.cli")
MODULES = sorted(f"assd.runtime.{path.stem}" for path in RUNTIME.glob("*.py") if path.stem != "__init__")


def _imported_names(path: Path) -> set[str]:
    """Every module ``path`` imports, at the top or inside functions (lazy imports count too)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


@pytest.mark.parametrize("module", MODULES)
def test_runtime_module_imports_no_later_stage(module):
    names = _imported_names(RUNTIME / f"{module.rsplit('.', 1)[1]}.py")
    offending = sorted(name for name in names if name.startswith(LATER_STAGES))
    assert not offending, f"{module} imports {offending}"


def test_importing_every_runtime_module_loads_no_later_stage():
    code = ("import sys\n" + "".join(f"import {module}\n" for module in MODULES)
            + f"print(sorted(m for m in sys.modules if m.startswith({LATER_STAGES!r})))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                            cwd=RUNTIME.parents[1])
    assert result.stdout.strip() == "[]", result.stdout


def test_backend_modules_do_not_import_the_dispatcher():
    """``runners.open_runner`` imports the backends; no backend imports ``runners`` (no circle)."""
    for path in RUNTIME.glob("*_runner.py"):
        assert not any(name.startswith("assd.runtime.runners") for name in _imported_names(path)), path.name
