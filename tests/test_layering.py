"""Imports flow one way (DEVELOPERS.md, docs/architecture.md): every package of ``assd`` imports only the
packages before it in ``STAGES``, at the top of a module or inside a function (lazy imports count too)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "assd"
# Lowest first. A package may import those before it; nothing may import the ones after it.
STAGES = ("errors", "paths", "utils", "models", "runtime", "data", "remote", "detector", "export", "calibration",
          "evaluation", "train", "bench", "precision", "engine", "serving", "convert", "demo", "commands", "cli")


def _stage_of(path: Path) -> str:
    parts = path.relative_to(PACKAGE).parts
    return parts[0] if len(parts) > 1 else path.stem


def _imported_stages(path: Path) -> set[str]:
    """The ``assd`` packages one module imports (``import assd`` alone names none)."""
    stages = set()
    for node in ast.walk(ast.parse(path.read_text())):
        modules = []
        if isinstance(node, ast.Import):
            modules = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            modules = [node.module] + ([f"{node.module}.{a.name}" for a in node.names] if node.module == "assd"
                                       else [])
        stages.update(module.split(".")[1] for module in modules if module.startswith("assd."))
    return stages


MODULES = sorted(p for p in PACKAGE.rglob("*.py") if p.stem != "__main__")


def test_every_package_has_a_stage():
    unknown = sorted({_stage_of(path) for path in MODULES} - set(STAGES) - {"__init__"})
    assert not unknown, f"add {unknown} to STAGES in tests/test_layering.py and to docs/architecture.md"


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_module_imports_only_earlier_stages(path):
    stage = _stage_of(path)
    if stage == "__init__":
        return
    allowed = set(STAGES[:STAGES.index(stage) + 1])
    upward = sorted(_imported_stages(path) - allowed)
    assert not upward, f"{path.relative_to(PACKAGE)} ({stage}) imports later stages {upward}"
