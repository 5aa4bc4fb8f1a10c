"""``--force`` of the commands that write files: replace an existing output of another kind.

The output policy (``assd.paths``, docs/reliability.md) refuses to replace an existing file whose kind
(by content: ONNX, checkpoint, engine, image, text) differs from what the command writes; ``--force``
lifts that refusal for this run. Devices, FIFOs and sockets are never replaced, with or without it.
"""

from __future__ import annotations

import click


def _set_force(_ctx, _param, value: bool) -> bool:
    from assd.paths import allow_kind_change

    allow_kind_change(value)
    return value


def force_option(command):
    """The ``--force`` flag (not passed to the command: it sets ``assd.paths.allow_kind_change``)."""
    return click.option("--force", is_flag=True, expose_value=False, callback=_set_force, is_eager=True,
                        help="Replace an existing output even when it holds another kind of file "
                             "(a model, checkpoint, engine, image).")(command)
