"""Weight converters: other implementations' trained SSD-family weights -> assd checkpoints.

``convert_weights(source_file, output, source="torchvision-ssd300" | "assd-pytorch")`` reads the file
(``torch.load(weights_only=True)``), maps every tensor strictly onto the preset that reproduces that
implementation's conventions (``ssd300-coco``, ``assd513-authors``; see docs/models.md), and writes
an ordinary assd checkpoint atomically. The checkpoint then goes through ``assd export``,
``build-engine``, ``eval-engine`` and ``predict`` like a trained one. Imports only ``assd.models``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from types import ModuleType

from assd.convert import assd_pytorch, torchvision_ssd
from assd.convert.state_dict import load_mapped, read_state_dict
from assd.errors import UserError
from assd.models import ASSD, get_config
from assd.models.checkpoint import save_checkpoint
from assd.paths import check_outputs

SOURCES: dict[str, ModuleType] = {"torchvision-ssd300": torchvision_ssd, "assd-pytorch": assd_pytorch}


@dataclass(frozen=True)
class Conversion:
    """What ``convert_weights`` wrote: the checkpoint, its preset, classes and tensor count."""

    output: str
    model: str
    num_classes: int
    tensors: int


def _num_classes(state_dict: dict, layout: ModuleType, anchors: int, where: str) -> int:
    weight = state_dict.get(layout.CLASS_HEAD)
    if weight is None or weight.ndim != 4 or weight.shape[0] % anchors or weight.shape[0] // anchors < 2:
        raise UserError(f"{where}: no usable '{layout.CLASS_HEAD}' tensor ({anchors} anchors x classes "
                        f"outputs): expected {layout.EXPECTED}")
    return int(weight.shape[0]) // anchors


def convert_weights(source_file: str | os.PathLike, output: str | os.PathLike, source: str,
                    model: str | None = None) -> Conversion:
    """Convert ``source_file`` (a ``source`` implementation's state_dict) into the assd checkpoint ``output``.

    Args:
        source: ``"torchvision-ssd300"`` or ``"assd-pytorch"``.
        model: the assd preset to map onto (default: the one with that implementation's conventions).
            The class count comes from the file (91 COCO slots for torchvision's COCO weights, with
            COCO's names on their ids; 21: VOC's names).
    """
    if source not in SOURCES:
        raise UserError(f"--from {source}: use one of {', '.join(SOURCES)}")
    layout = SOURCES[source]
    preset = model or layout.DEFAULT_MODEL
    anchors = get_config(preset).anchors_per_location[0]
    check_outputs([source_file], files={"-o": output}, kinds={"-o": "torch"})
    state_dict = read_state_dict(source_file, layout.EXPECTED)
    num_classes = _num_classes(state_dict, layout, anchors, str(source_file))
    network = ASSD(get_config(preset, num_classes=num_classes))
    what = f"{layout.EXPECTED} matching the '{preset}' network"
    load_mapped(network, state_dict, layout.source_key, str(source_file), what, getattr(layout, "adapt", None))
    save_checkpoint(network.eval(), output, converted_from={"source": source, "file": os.fspath(source_file)})
    return Conversion(str(output), preset, num_classes, len(state_dict))
