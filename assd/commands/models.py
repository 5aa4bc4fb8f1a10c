"""``assd info``: describe a preset or checkpoint (issue 2)."""

from __future__ import annotations

import json

import click

from assd.errors import UserError


@click.command()
@click.argument("model")
@click.option("--num-classes", type=int, default=None, help="Classes including background (default 21, VOC).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of a table.")
def info(model, num_classes, as_json):
    """Describe MODEL (a preset name or a checkpoint): maps, anchors, parameters, GMACs."""
    from assd.models.checkpoint import load_model
    from assd.models.limits import MAX_CLASSES
    from assd.models.presets import PRESETS, get_config
    from assd.models.stats import count_parameters, describe

    if num_classes is not None and not 2 <= num_classes <= MAX_CLASSES:  # before any name list is built
        raise UserError(f"--num-classes {num_classes}: must be at least 2 and at most {MAX_CLASSES} (background "
                        "included)")
    if model in PRESETS:
        facts = describe(get_config(model, num_classes=num_classes))
    else:
        if num_classes is not None:
            raise UserError("--num-classes applies to preset names only; a checkpoint carries its own classes")
        net = load_model(model)
        facts = describe(net.cfg, num_params=count_parameters(net))
    if as_json:
        click.echo(json.dumps(facts))
        return
    click.echo(f"{facts['model']}: {facts['backbone']}, input {facts['input_size']}x{facts['input_size']}, "
               f"{facts['num_classes']} classes (incl. background), attention={facts['attention']}, "
               f"fusion={facts['fusion']}")
    click.echo(f"{'map':>4} {'size':>9} {'channels':>9} {'anchors/loc':>12} {'anchors':>8}")
    rows = zip(facts["feature_maps"], facts["feature_channels"], facts["anchors_per_location"])
    for index, ((height, width), channels, per_loc) in enumerate(rows):
        click.echo(f"{index:>4} {f'{height}x{width}':>9} {channels:>9} {per_loc:>12} {height * width * per_loc:>8}")
    click.echo(f"total anchors: {facts['num_anchors']:,}")
    if facts["conventions"]:
        label_ids = facts["conventions"].get("label_ids")
        shown = {**facts["conventions"], **({"label_ids": f"{len(label_ids)} ids"} if label_ids else {})}
        click.echo("conventions:   " + ", ".join(f"{key}={value}" for key, value in shown.items()))
    click.echo(f"parameters:    {facts['num_params']:,} ({facts['num_params'] / 1e6:.1f}M)")
    click.echo(f"GMACs/image:   {facts['gmacs']:.2f}")
