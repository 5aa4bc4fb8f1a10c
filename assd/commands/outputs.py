"""``--force`` of the commands that write files: replace an existing output of another kind.

The output policy (``assd.paths``, docs/reliability.md) refuses to replace an existing file whose kind
(by content: ONNX, checkpoint, engine, image, text) differs from what the command writes; ``--force``
lifts that refusal for this run. Devices, FIFOs and sockets are never replaced, with or without it.
Also the option checks the commands share: ``refuse_unused_options`` (an option given where it has no
effect is one line, not silently ignored) and ``exclusive_flag`` (``--fp16 --int8`` contradict).
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


def refuse_unused_options(names: dict[str, str], why: str) -> None:
    """UserError (one line) when any option of ``names`` ({parameter name: option as typed}) was given on
    the command line although ``why`` says it has no effect: an ignored option is a silent wrong answer."""
    from assd.errors import UserError

    ctx = click.get_current_context()
    given = [option for name, option in names.items()
             if ctx.get_parameter_source(name) == click.core.ParameterSource.COMMANDLINE]
    if given:
        raise UserError(f"{', '.join(given)}: {'has' if len(given) == 1 else 'have'} no effect {why}: leave "
                        f"{'it' if len(given) == 1 else 'them'} out")


def exclusive_flag(dest: str, value: str, option: str, help: str):
    """A flag that sets the command's ``dest`` parameter to ``value`` (``--fp16`` -> ``precision="fp16"``);
    two different flags of one ``dest`` given together contradict each other (click's shared-destination
    flags keep the last one silently)."""
    def callback(ctx, _param, given: bool):
        from assd.errors import UserError

        ctx.params.setdefault(dest, None)
        if given:
            chosen = ctx.meta.setdefault(f"assd.{dest}", [])
            chosen.append(option)
            if len(set(chosen)) > 1:
                raise UserError(f"{' and '.join(dict.fromkeys(chosen))} contradict each other: give one of them")
            ctx.params[dest] = value
        return given
    return click.option(option, f"{dest}_{value}", is_flag=True, expose_value=False, callback=callback, help=help)
