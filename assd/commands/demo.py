"""``assd demo``: the whole pipeline offline (issue 7)."""

from __future__ import annotations

import click


@click.command("demo")
@click.option("--out", "out_dir", default="runs/demo", show_default=True,
              help="Folder for everything written; finished steps there are reused by the next run.")
@click.option("--data", "data_spec", default="synthetic", show_default=True,
              help="Training data: synthetic[:N[:START]] (validated on the next, held-out images), "
                   "voc:ROOT[:SETS] or coco:IMAGES:JSON (validated on --val-data, else on the training set).")
@click.option("--val-data", default=None, help="Data spec to validate on (same classes as --data).")
@click.option("--quick", is_flag=True, help="Small budget: about a minute on a 2-core CPU (low mAP).")
@click.option("--force", is_flag=True, help="Redo every step, including training.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu or cuda[:N].")
@click.option("--no-progress", is_flag=True, help="No progress bars or step details on stderr.")
def demo_command(out_dir, data_spec, val_data, quick, force, device, no_progress):
    """The whole pipeline offline: train assd-mini, evaluate, export ONNX, FP16/INT8 graphs (+ TensorRT
    engines with a GPU), eval-engine and bench each, draw detections and attention maps; one summary."""
    from assd.data import data_spec_inputs
    from assd.demo import DemoOptions, run_demo
    from assd.paths import check_outputs

    check_outputs([*data_spec_inputs(data_spec), *data_spec_inputs(val_data)], folders={"--out": (out_dir, [])})
    run_demo(DemoOptions(out=out_dir, data=data_spec, val_data=val_data, quick=quick, force=force, device=device,
                         progress=not no_progress), echo=click.echo)
