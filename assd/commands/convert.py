"""``assd convert``: another implementation's trained weights -> an assd checkpoint (issue 12)."""

from __future__ import annotations

import click

from assd.commands.outputs import force_option


@click.command("convert")
@force_option
@click.argument("source_file", metavar="SRC", type=click.Path(dir_okay=False))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="Checkpoint (.pt) to write.")
@click.option("--from", "source", required=True, type=click.Choice(["torchvision-ssd300", "assd-pytorch"]),
              help="Who wrote SRC: torchvision's ssd300_vgg16 state_dict, or the ASSD authors' code "
                   "(github yijingru/ASSD-Pytorch, ASSD513).")
@click.option("--model", default=None,
              help="assd preset to map onto [default: ssd300-coco / assd513-authors, which reproduce the "
                   "source's conventions].")
def convert_command(source_file, output, source, model):
    """Convert SRC into an assd checkpoint with the source's conventions (strict: every tensor used)."""
    from assd.convert import convert_weights

    result = convert_weights(source_file, output, source, model)
    click.echo(f"wrote {result.output}: {result.model}, {result.num_classes} classes (incl. background), "
               f"{result.tensors} tensors mapped from {source_file}")
