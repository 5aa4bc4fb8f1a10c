"""The ``assd`` command line: a thin click shell over the Python API.

Each command parses its options, calls one function of the package and prints the result. Errors the
user can fix (``UserError``) print one line and exit 2; failed checks (``CheckFailed``) exit 1.
"""

from __future__ import annotations

import json
import sys

import click

from assd.errors import CheckFailed, UserError


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="assd")
def cli():
    """ASSD: train the attentive SSD detector, export it, build TensorRT engines, benchmark and verify."""


def main(argv=None) -> None:
    """Console-script entry point: runs the group and turns our errors into one-line messages."""
    try:
        cli.main(args=argv, prog_name="assd", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("Aborted.", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except (UserError, CheckFailed) as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        click.echo("Interrupted.", err=True)
        sys.exit(130)


# ---------------------------------------------------------------- models (issue 2)
@cli.command()
@click.argument("model")
@click.option("--num-classes", type=int, default=None, help="Classes including background (default 21, VOC).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of a table.")
def info(model, num_classes, as_json):
    """Describe MODEL (a preset name or a checkpoint): maps, anchors, parameters, GMACs."""
    from assd.models.checkpoint import load_model
    from assd.models.presets import PRESETS, get_config
    from assd.models.stats import count_parameters, describe

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
    click.echo(f"parameters:    {facts['num_params']:,} ({facts['num_params'] / 1e6:.1f}M)")
    click.echo(f"GMACs/image:   {facts['gmacs']:.2f}")


# ---------------------------------------------------------------- evaluation (issue 3)


# ---------------------------------------------------------------- training (issue 4)


# ---------------------------------------------------------------- deploy (issue 5)
@cli.command("export")
@click.argument("model")
@click.option("--onnx", "to_onnx", is_flag=True, help="Export to ONNX (the one artifact format).")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="Output .onnx file.")
@click.option("--opset", type=int, default=18, show_default=True)
@click.option("--batch", default="dynamic", show_default=True, help="'dynamic' or a fixed batch size.")
@click.option("--with-postprocess", is_flag=True, help="Decode + NonMaxSuppression inside the graph.")
@click.option("--attention-op", is_flag=True, help="One ONNX Attention node per map (opset >= 23).")
@click.option("--max-detections", type=int, default=None, help="Detections kept per image (default 200).")
@click.option("--parity-images", type=click.Path(exists=True, file_okay=False), default=None,
              help="Folder of images for the parity check (default: ../shared/data if present, else synthetic).")
@click.option("--no-parity", is_flag=True, help="Skip the ONNX Runtime parity check.")
def export_command(model, to_onnx, output, opset, batch, with_postprocess, attention_op, max_detections,
                   parity_images, no_parity):
    """Export MODEL (checkpoint or preset) to ONNX, then check parity with ONNX Runtime."""
    from assd.export.workflow import export_and_check

    if not to_onnx:
        raise UserError("choose an export format: --onnx (the only format; TensorRT engines come from "
                        "'assd build-engine model.onnx')")
    export_and_check(model, output, opset=opset, batch=batch, with_postprocess=with_postprocess,
                     attention_op=attention_op, max_detections=max_detections, parity_images=parity_images,
                     check_parity=not no_parity, echo=click.echo)



@cli.command()
@click.argument("artifacts", nargs=-1)
@click.option("--batch", "batches", default="1", show_default=True, help="Batch sizes, e.g. 1,8,32.")
@click.option("--iters", type=int, default=20, show_default=True, help="Timed iterations per configuration.")
@click.option("--warmup", type=int, default=3, show_default=True, help="Untimed iterations first.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu or cuda[:N].")
@click.option("--precision", type=click.Choice(["fp32", "fp16", "bf16"]), default="fp32",
              help="For .pt checkpoints / presets (PyTorch backend) only.")
@click.option("--compile", "use_compile", is_flag=True, help="torch.compile the PyTorch artifacts.")
@click.option("--json", "json_out", type=click.Path(dir_okay=False), help="Write the report as JSON.")
@click.option("--csv", "csv_out", type=click.Path(dir_okay=False), help="Write the rows as CSV.")
@click.option("--markdown", "markdown_out", type=click.Path(dir_okay=False), help="Write the table as Markdown.")
@click.option("--report", "reports", multiple=True, type=click.Path(exists=True, dir_okay=False),
              help="Merge saved --json runs (from any machine) into one table instead of measuring.")
def bench(artifacts, batches, iters, warmup, device, precision, use_compile, json_out, csv_out, markdown_out,
          reports):
    """Time ARTIFACTS (.pt, .onnx, .engine, presets): FPS, latency, stages, Table-2 columns."""
    from assd.bench.run import merge_reports, parse_batches, run_bench

    if reports:
        merge_reports(list(reports), markdown_out=markdown_out, csv_out=csv_out, echo=click.echo)
        return
    if not artifacts:
        raise UserError("name at least one artifact (.pt checkpoint, preset, .onnx or .engine), or --report RUN.json")
    run_bench(list(artifacts), parse_batches(batches), iters=iters, warmup=warmup, device=device,
              precision=precision, compile=use_compile, json_out=json_out, csv_out=csv_out,
              markdown_out=markdown_out, echo=click.echo)

# ---------------------------------------------------------------- tensorrt (issue 6)


# ---------------------------------------------------------------- demo (issue 7)


if __name__ == "__main__":
    main()
