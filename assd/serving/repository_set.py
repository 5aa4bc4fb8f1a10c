"""An ``export --triton`` repository is one set: a run id in every model's config, checked when Triton loads it.

The repository is staged and renamed whole (``assd.paths.temp_dir_beside``), so assd never leaves a
mixed one; a person can (a model folder or ``model.plan`` copied in from another repository, an older
step left beside a new one). Every ``config.pbtxt`` carries the run's id (parameter ``assd_run_id``), the
network's also the SHA-256 of the network file it was written with (``assd_network_sha256``) and the Python
steps the ensemble's name (``assd_ensemble``). When Triton loads a Python step, its ``initialize`` calls
``check_repository_set``: the ensemble, the network, the other Python step and the network file must be
of the step's own run, else the step fails to load with one line naming the file, what differs and what
to do (Triton then refuses the ensemble, never serving a mixed set). A repository written before run ids
(no ``assd_run_id`` in the step's own config) is not checked.

Only the standard library here: the Python steps import this module inside the server's Python.
"""

from __future__ import annotations

import hashlib
import re
import uuid
from pathlib import Path

from assd.errors import UserError

RUN_PARAMETER = "assd_run_id"
NETWORK_SHA_PARAMETER = "assd_network_sha256"
ENSEMBLE_PARAMETER = "assd_ensemble"
NETWORK_FILES = ("model.plan", "model.onnx")


def new_repository_run() -> str:
    return uuid.uuid4().hex[:12]


def stamp_configs(configs: dict, name: str, run_id: str, network_sha256: str) -> None:
    """Record ``run_id`` in every ``ModelConfig`` of ``configs`` ({folder: config}), the network file's
    SHA-256 in the network's and the ensemble's name in the Python steps'."""
    for folder, config in configs.items():
        config.parameters[RUN_PARAMETER].string_value = run_id
        if folder == f"{name}_network":
            config.parameters[NETWORK_SHA_PARAMETER].string_value = network_sha256
        elif folder != name:
            config.parameters[ENSEMBLE_PARAMETER].string_value = name


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def config_parameter(config_text: str, key: str) -> str | None:
    """The string value of parameter ``key`` in a ``config.pbtxt`` written by ``text_format`` (None: absent)."""
    match = re.search(rf'key:\s*"{re.escape(key)}"\s*value\s*\{{\s*string_value:\s*"([^"]*)"', config_text)
    return match.group(1) if match else None


def _read_parameter(config_path: Path, key: str) -> str | None:
    try:
        return config_parameter(config_path.read_text(), key)
    except (OSError, UnicodeDecodeError):
        return None


def check_repository_set(model_folder: str | Path, parameters: dict) -> str | None:
    """Refuse (UserError) a repository whose models are not of one ``export --triton`` run. ``model_folder``:
    the loading step's folder (Triton's ``args["model_repository"]``); ``parameters``: its config's
    parameters as Triton passes them ({key: {"string_value": ...}}). Returns the run id (None: a
    repository without run ids)."""
    def own(key: str) -> str | None:
        return (parameters.get(key) or {}).get("string_value") or None

    run_id, name = own(RUN_PARAMETER), own(ENSEMBLE_PARAMETER)
    if run_id is None or name is None:
        return None
    root = Path(model_folder).parent
    advice = f"write the repository again with 'assd export --triton' (one run writes all of {root}'s models)"
    for folder in (name, f"{name}_preprocess", f"{name}_network", f"{name}_postprocess"):
        config = root / folder / "config.pbtxt"
        other = _read_parameter(config, RUN_PARAMETER)
        if other != run_id:
            found = f"run {other}" if other else "no assd run id"
            raise UserError(f"{config}: is of another export --triton run ({found}, {Path(model_folder).name}'s is "
                            f"{run_id}): the repository mixes two runs; {advice}")
    expected = _read_parameter(root / f"{name}_network" / "config.pbtxt", NETWORK_SHA_PARAMETER)
    files = [path for path in (root / f"{name}_network" / "1" / file for file in NETWORK_FILES) if path.is_file()]
    if expected and files and sha256_of(files[0]) != expected:
        raise UserError(f"{files[0]}: is not the network file run {run_id} wrote (SHA-256 differs from its "
                        f"config's {NETWORK_SHA_PARAMETER}): the repository mixes two runs; {advice}")
    return run_id
