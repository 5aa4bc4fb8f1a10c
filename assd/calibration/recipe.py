"""Mixed precision recipes: which layers stay in higher precision, and why; recorded in graphs and files.

A recipe file (written by ``assd debug-precision`` and gated builds, read by ``--keep-high``)::

    {"format": "assd-precision-recipe", "version": 1, "precision": "int8", "model": "assd-mini",
     "tolerance_points": 1.0, "delta_map_points": {"low": -12.3, "final": -0.4},
     "calibration": {"method": "max", ...},
     "kept_high": [{"layer": "backbone.layer3.0.conv2", "node": "node_Conv_694", "macs_share": 0.05,
                    "why": "kept high alone: -12.30 -> -0.40 points; ..."}]}

The graph made from it carries ``assd.kept_high`` in its ONNX metadata (``{"precision": ..., "layers":
[...]}``), which ``assd build-engine`` copies into the engine's sidecar.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import onnx

from assd.calibration.run_set import check_recipe_set
from assd.errors import UserError
from assd.utils import atomic_write_json

RECIPE_FORMAT = "assd-precision-recipe"
RECIPE_VERSION = 1
KEPT_HIGH_KEY = "assd.kept_high"


@dataclass
class KeptLayer:
    layer: str  # layer name (the PyTorch module path of the Conv's weight, or the node name)
    node: str  # ONNX node name in the graph the recipe was made from
    macs_share: float = 0.0  # fraction of the model's MACs
    why: str = ""


@dataclass
class Recipe:
    precision: str  # "int8" or "fp16"
    kept_high: list[KeptLayer]
    model: str = ""
    tolerance_points: float | None = None
    delta_map_points: dict = field(default_factory=dict)  # {"low": ..., "final": ...}
    calibration: dict | None = None
    run_id: str = ""  # of the debug-precision run that wrote it (assd.calibration.run_set)
    backend: dict | None = None  # the runtime that measured it: {"name": "openvino", "version", "threads", ...}

    @property
    def layer_names(self) -> list[str]:
        return [kept.layer for kept in self.kept_high]

    def to_dict(self) -> dict:
        data = asdict(self)
        return {"format": RECIPE_FORMAT, "version": RECIPE_VERSION, **data}

    def save(self, path: str | Path) -> None:
        atomic_write_json(path, self.to_dict())


def _kept_layer(item) -> KeptLayer:
    """One ``kept_high`` entry; TypeError unless it is an object with a string ``layer`` (and ``node``)."""
    if not isinstance(item, dict) or not isinstance(item.get("layer"), str) or not isinstance(item.get("node", ""), str):
        raise TypeError(f"kept_high entry {item!r:.60} needs a string 'layer' and 'node'")
    return KeptLayer(**item)


def load_recipe(path: str | Path) -> Recipe:
    """The recipe at ``path``; UserError (one line) when it is missing or not a recipe."""
    path = Path(path)
    try:
        content = json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"--keep-high {path}: no such recipe file (made by 'assd debug-precision')") from None
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise UserError(f"--keep-high {path}: unreadable recipe ({type(exc).__name__}): pass the recipe.json "
                        "written by 'assd debug-precision'") from None
    if not isinstance(content, dict) or content.get("format") != RECIPE_FORMAT:
        raise UserError(f"--keep-high {path}: not an assd precision recipe (no '{RECIPE_FORMAT}' marker): pass the "
                        "recipe.json written by 'assd debug-precision'")
    if content.get("version") != RECIPE_VERSION:
        raise UserError(f"--keep-high {path}: recipe version {content.get('version')} is not supported "
                        f"(expects {RECIPE_VERSION}): run 'assd debug-precision' again")
    try:
        kept = [_kept_layer(item) for item in content["kept_high"]]
        recipe = Recipe(precision=content["precision"], kept_high=kept, model=content.get("model", ""),
                        tolerance_points=content.get("tolerance_points"),
                        delta_map_points=content.get("delta_map_points") or {}, calibration=content.get("calibration"),
                        run_id=str(content.get("run_id") or ""), backend=content.get("backend"))
    except (KeyError, TypeError) as exc:
        raise UserError(f"--keep-high {path}: damaged recipe ({type(exc).__name__}: {exc}): run "
                        "'assd debug-precision' again") from None
    check_recipe_set(path, recipe.run_id)
    return recipe


def resolve_layers(requested: list[str], layers: dict[str, str], source: str) -> list[str]:
    """Node names of ``requested`` layers (layer or node names) given ``layers`` = {node: layer name}."""
    by_name = {name: node for node, name in layers.items()}
    nodes, unknown = [], []
    for name in requested:
        node = by_name.get(name) or (name if name in layers else None)
        if node is None:
            unknown.append(name)
        elif node not in nodes:
            nodes.append(node)
    if unknown:
        raise UserError(f"{source}: {len(unknown)} layer(s) not in this model ({', '.join(unknown[:3])}"
                        f"{', ...' if len(unknown) > 3 else ''}): the recipe was made for another model")
    return nodes


def set_kept_high(model: onnx.ModelProto, precision: str, layer_names: list[str]) -> None:
    """Record the kept-high layers in the graph's metadata (``assd.kept_high``), replacing any earlier one."""
    kept = [p for p in model.metadata_props if p.key != KEPT_HIGH_KEY]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    model.metadata_props.add(key=KEPT_HIGH_KEY, value=json.dumps({"precision": precision, "layers": layer_names}))


def read_kept_high(model_or_path: onnx.ModelProto | str | Path) -> list[str]:
    """The kept-high layer names recorded in a graph's metadata ([] when none, or unreadable)."""
    model = model_or_path
    if not isinstance(model, onnx.ModelProto):
        try:
            model = onnx.load(str(model_or_path), load_external_data=False)
        except Exception:  # noqa: BLE001 - an unreadable graph records nothing; its loaders report it
            return []
    value = next((p.value for p in model.metadata_props if p.key == KEPT_HIGH_KEY), None)
    try:
        layers = json.loads(value)["layers"] if value else []
    except (ValueError, KeyError, TypeError):
        return []
    return [str(name) for name in layers] if isinstance(layers, list) else []
