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
def _postprocess_from_options(score_threshold, nms_iou, top_k, max_detections):
    from assd.runtime.postprocess import PostprocessConfig

    return PostprocessConfig(score_threshold=score_threshold, nms_iou=nms_iou, top_k=top_k,
                             max_detections=max_detections)


def _postprocess_click_options(score_threshold: float):
    """--score-threshold, --nms-iou, --top-k and --max-detections (post-processing thresholds)."""
    def decorate(command):
        command = click.option("--max-detections", type=int, default=200, show_default=True,
                               help="Detections kept per image after NMS.")(command)
        command = click.option("--top-k", type=int, default=200, show_default=True,
                               help="Candidates per class entering NMS.")(command)
        command = click.option("--nms-iou", type=float, default=0.45, show_default=True,
                               help="NMS IoU threshold.")(command)
        return click.option("--score-threshold", type=float, default=score_threshold, show_default=True,
                            help="Keep class scores above this.")(command)
    return decorate


@cli.command("eval")
@click.option("--model", "model_path", type=click.Path(dir_okay=False),
              help="Artifact to evaluate: checkpoint (.pt), .onnx or .engine.")
@click.option("--detections", "detections_path", type=click.Path(dir_okay=False),
              help="Evaluate precomputed detections (COCO results JSON) instead of a model.")
@click.option("--data", "data_spec", required=True,
              help="voc:ROOT[:SETS], coco:IMAGES_DIR:ANNOTATIONS_JSON or synthetic[:N].")
@click.option("--metric", type=click.Choice(["voc07", "voc12", "coco"]), default=None,
              help="voc07 (11-point), voc12 (all-point) or coco. Default: coco for COCO data, else voc07.")
@click.option("--json", "json_out", type=click.Path(dir_okay=False), help="Write the result as JSON.")
@click.option("--limit", type=int, default=None, help="Evaluate the first N images only.")
@click.option("--batch-size", type=int, default=8, show_default=True)
@click.option("--device", default="auto", show_default=True, help="auto, cpu or cuda[:N].")
@_postprocess_click_options(score_threshold=0.01)
def eval_command(model_path, detections_path, data_spec, metric, json_out, limit, batch_size, device,
                 score_threshold, nms_iou, top_k, max_detections):
    """Per-class AP and mAP of a checkpoint (or of a detections file) on a dataset."""
    from assd.data import parse_data_spec
    from assd.evaluation import FirstImages, check_class_names, evaluate_detections
    from assd.evaluation.report import ap_table
    from assd.evaluation.results_json import load_coco_results
    from assd.utils import atomic_write_json

    if (model_path is None) == (detections_path is None):
        raise UserError("assd eval: give either --model CHECKPOINT or --detections FILE.json (exactly one)")
    dataset = parse_data_spec(data_spec, train=False)
    if limit is not None:
        dataset = FirstImages(dataset, limit)
    if model_path is not None:
        from assd.evaluation import predict_dataset
        from assd.models.assd import priors_for
        from assd.runtime.runners import open_runner

        runner = open_runner(model_path, device=device)  # .pt checkpoint, .onnx or .engine
        cfg = runner.cfg
        check_class_names(cfg.class_names, dataset, model_path)
        pp_cfg = _postprocess_from_options(score_threshold, nms_iou, top_k, max_detections)
        runner.check_batch(batch_size)
        detections = predict_dataset(runner.infer, dataset, cfg.input_size, cfg.mean, cfg.std, priors_for(cfg),
                                     cfg.variances, pp_cfg, batch_size, runner.device, progress=True)
        result = evaluate_detections(detections, dataset, metric, pp_cfg)
    else:
        result = evaluate_detections(load_coco_results(detections_path, dataset), dataset, metric)
    click.echo(ap_table(result, dataset.class_names))
    if result.summary:
        click.echo(result.summary)
    click.echo(f"mAP ({result.metric}, {result.num_images} images): {result.mAP:.4f}")
    if json_out:
        record = result.to_dict()
        record.setdefault("postprocess", None)  # unknown for a detections file
        record.update({"model": model_path, "detections": detections_path, "data": data_spec, "limit": limit})
        atomic_write_json(json_out, record)


@cli.command("predict")
@click.option("--model", "model_path", required=True, type=click.Path(dir_okay=False),
              help="Checkpoint (.pt), .onnx or .engine.")
@click.argument("sources", nargs=-1, required=True)
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Folder for detections.json and the images with boxes drawn.")
@click.option("--batch-size", type=int, default=8, show_default=True)
@click.option("--device", default="auto", show_default=True, help="auto, cpu or cuda[:N].")
@_postprocess_click_options(score_threshold=0.3)
def predict_command(model_path, sources, out_dir, batch_size, device, score_threshold, nms_iou, top_k, max_detections):
    """Detect objects in SOURCES (image files or folders): detections.json + images with boxes drawn."""
    from assd.evaluation.predict import collect_images, predict_images, write_predictions
    from assd.models.assd import priors_for
    from assd.runtime.runners import open_runner

    paths = collect_images(sources)
    pp_cfg = _postprocess_from_options(score_threshold, nms_iou, top_k, max_detections)
    runner = open_runner(model_path, device=device)  # .pt checkpoint, .onnx or .engine
    runner.check_batch(batch_size)
    detections = predict_images(runner.infer, paths, runner.cfg, priors_for(runner.cfg), pp_cfg, runner.device,
                                batch_size)
    json_path = write_predictions(out_dir, paths, detections, runner.cfg.class_names, pp_cfg)
    total = sum(len(dets) for dets in detections)
    click.echo(f"{total} detections in {len(paths)} images -> {json_path} and {len(paths)} drawn images in {out_dir}")


@cli.command("attention")
@click.option("--model", "model_path", required=True, type=click.Path(dir_okay=False), help="Checkpoint (.pt).")
@click.argument("image", type=click.Path(dir_okay=False))
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Folder for the PNGs.")
@click.option("--query", default=None, help="X,Y pixel of the query position (default: best detection's center).")
@click.option("--maps", "maps_spec", default="all", show_default=True, help="'all' or map indices, e.g. 0,1,2.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu or cuda[:N].")
def attention_command(model_path, image, out_dir, query, maps_spec, device):
    """Attention maps of one query position on every prediction map (the paper's Figure 3)."""
    from pathlib import Path

    from assd.data.dataset import read_rgb_image
    from assd.evaluation.attention_maps import attention_maps, write_attention
    from assd.models.checkpoint import load_checkpoint
    from assd.runtime.runners import resolve_device

    query_xy = _parse_number_list(query, "--query", "X,Y in pixels, e.g. 120,80", float, 2) if query else None
    maps = None if maps_spec == "all" else _parse_number_list(maps_spec, "--maps", "'all' or indices, e.g. 0,2", int)
    torch_device = resolve_device(device)
    model = load_checkpoint(model_path).to(torch_device)
    pixels = read_rgb_image(image)
    results, query_xy, how = attention_maps(model, pixels, query_xy, maps)
    written = write_attention(out_dir, pixels, results, query_xy, how, image_name=str(image))
    click.echo(f"query ({query_xy[0]:.0f}, {query_xy[1]:.0f}): {how}")
    click.echo(f"{len(written)} images -> {Path(out_dir)} (grid: {written[-1].name})")


def _parse_number_list(text: str, option: str, expected: str, kind, count: int | None = None) -> list:
    try:
        values = [kind(part) for part in text.split(",")]
    except ValueError:
        raise UserError(f"{option} {text}: expected {expected}") from None
    if count is not None and len(values) != count:
        raise UserError(f"{option} {text}: expected {expected}")
    return values


# ---------------------------------------------------------------- training (issue 4)
def _milestones(text: str | None) -> tuple[int, ...] | None:
    if text is None:
        return None
    try:
        return tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise UserError(f"--milestones {text}: expected epochs separated by commas, e.g. 200,250") from None


@cli.command("train")
@click.option("--model", default=None, help="Preset to train, e.g. assd321, assd513, assd-mini (optional with --resume).")
@click.option("--data", "data_spec", default=None,
              help="voc:ROOT[:SETS], coco:IMAGES:JSON or synthetic[:N] (optional with --resume).")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Run folder: last.pt, best.pt, metrics.jsonl, tensorboard/.")
@click.option("--recipe", default=None, help="voc-321, voc-513, coco-321, coco-513 or quick (default: by model and data).")
@click.option("--epochs", type=int, default=None, help="Override the recipe's epochs.")
@click.option("--batch-size", type=int, default=None, help="Images per process (per GPU); overrides the recipe.")
@click.option("--lr", type=float, default=None, help="Peak learning rate; overrides the recipe.")
@click.option("--momentum", type=float, default=None, help="SGD momentum (AdamW beta1); overrides the recipe.")
@click.option("--weight-decay", type=float, default=None, help="Overrides the recipe.")
@click.option("--milestones", default=None, help="Epochs of the x0.1 lr steps, e.g. 200,250; overrides the recipe.")
@click.option("--warmup-epochs", type=float, default=None, help="Linear lr warm-up length (0 = none).")
@click.option("--optimizer", type=click.Choice(["sgd", "adamw"]), default=None, help="Overrides the recipe.")
@click.option("--workers", type=int, default=2, show_default=True, help="DataLoader workers per process.")
@click.option("--device", default=None, help="cpu, cuda or cuda:N (default: cuda when available).")
@click.option("--resume", is_flag=True, help="Continue the run in --out from last.pt (exactly).")
@click.option("--force", is_flag=True, help="Start over in an --out that holds a run (deletes its files).")
@click.option("--backbone-weights", default="none", show_default=True,
              help="imagenet, a torchvision state_dict file, or none.")
@click.option("--val-data", default=None, help="Data spec to validate on (mAP; keeps best.pt).")
@click.option("--val-every", type=int, default=1, show_default=True, help="Validate every N epochs (and after the last).")
@click.option("--val-metric", type=click.Choice(["voc07", "voc12", "coco"]), default=None,
              help="Validation metric (default: coco for COCO data, else voc07).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--amp", type=click.Choice(["none", "bf16", "fp16"]), default="none", show_default=True,
              help="Mixed precision (fp16 needs CUDA).")
@click.option("--sync-bn", is_flag=True, help="SyncBatchNorm across GPU processes (torchrun).")
@click.option("--channels-last/--no-channels-last", default=None, help="NHWC layout (default: on for CUDA).")
@click.option("--max-steps", type=int, default=None, help="Stop after N optimizer steps in total (smoke tests).")
@click.option("--no-progress", is_flag=True, help="No progress bar or notes.")
@click.option("--no-tensorboard", is_flag=True, help="Do not write TensorBoard scalars.")
def train_command(model, data_spec, out_dir, recipe, epochs, batch_size, lr, momentum, weight_decay, milestones,
                  warmup_epochs, optimizer, workers, device, resume, force, backbone_weights, val_data, val_every,
                  val_metric, seed, amp, sync_bn, channels_last, max_steps, no_progress, no_tensorboard):
    """Train an ASSD model on VOC, COCO or synthetic data (multi-GPU: torchrun --no-python assd train ...)."""
    import os

    from assd.train import TrainOptions, train

    result = train(TrainOptions(
        model=model, data=data_spec, out=out_dir, recipe=recipe, epochs=epochs, batch_size=batch_size, lr=lr,
        momentum=momentum, weight_decay=weight_decay, milestones=_milestones(milestones),
        warmup_epochs=warmup_epochs, optimizer=optimizer, workers=workers, device=device, resume=resume,
        force=force, backbone_weights=backbone_weights, val_data=val_data, val_every=val_every,
        val_metric=val_metric, seed=seed, amp=amp, sync_bn=sync_bn, channels_last=channels_last,
        max_steps=max_steps, progress=not no_progress, tensorboard=not no_tensorboard))
    if int(os.environ.get("RANK", "0")) != 0:
        return
    status = "finished" if result.finished else "stopped"
    click.echo(f"{status} at epoch {result.epochs_completed}/{result.recipe.epochs}, step {result.global_step} "
               f"(recipe {result.recipe.name})")
    if result.epoch_losses:
        click.echo(f"mean loss per epoch: {result.epoch_losses[0]:.3f} (first) -> {result.epoch_losses[-1]:.3f} (last)")
    elif result.step_losses:
        click.echo(f"loss per step: {result.step_losses[0]:.3f} (first) -> {result.step_losses[-1]:.3f} (last)")
    click.echo(f"checkpoint: {result.last_checkpoint}")
    if result.best_checkpoint is not None:
        click.echo(f"best:       {result.best_checkpoint} (mAP {result.best_map:.4f})")



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
@click.option("--precision", type=click.Choice(["fp32", "fp16"]), default="fp32", show_default=True,
              help="fp16: half-precision graph, attention scores/softmax and I/O in fp32 (int8: 'assd calibrate').")
def export_command(model, to_onnx, output, opset, batch, with_postprocess, attention_op, max_detections,
                   parity_images, no_parity, precision):
    """Export MODEL (checkpoint or preset) to ONNX, then check parity with ONNX Runtime."""
    from assd.export.workflow import export_and_check

    if not to_onnx:
        raise UserError("choose an export format: --onnx (the only format; TensorRT engines come from "
                        "'assd build-engine model.onnx')")
    export_and_check(model, output, opset=opset, batch=batch, with_postprocess=with_postprocess,
                     attention_op=attention_op, max_detections=max_detections, parity_images=parity_images,
                     check_parity=not no_parity, echo=click.echo, precision=precision)



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


@cli.command("eval-engine")
@click.argument("artifact")
@click.option("--data", "data_spec", required=True, help="voc:ROOT[:SETS], coco:IMAGES:JSON or synthetic[:N].")
@click.option("--reference", default=None, help="The PyTorch checkpoint the artifact was made from.")
@click.option("--metric", type=click.Choice(["voc07", "voc12", "coco"]), default=None,
              help="Default: coco for COCO data, voc07 otherwise.")
@click.option("--tolerance", type=float, default=None,
              help="Allowed |Δ mAP| in points (default by precision: fp32 0.1, fp16 0.3, int8 1.0).")
@click.option("--batch-size", type=int, default=8, show_default=True)
@click.option("--device", default="auto", show_default=True)
@click.option("--limit", type=int, default=None, help="Evaluate only the first N images.")
@click.option("--json", "json_out", type=click.Path(dir_okay=False), help="Write the result as JSON.")
def eval_engine_command(artifact, data_spec, reference, metric, tolerance, batch_size, device, limit, json_out):
    """mAP of ARTIFACT (.onnx, .engine, .pt) vs the PyTorch reference on the same images; exit 1 when
    |Δ mAP| exceeds the tolerance."""
    from assd.evaluation.engine_parity import check_parity, eval_engine, print_parity
    from assd.utils import atomic_write_json

    parity = eval_engine(artifact, data_spec, reference=reference, metric=metric, tolerance=tolerance,
                         batch_size=batch_size, device=device, limit=limit)
    print_parity(parity, artifact, reference, click.echo)
    if json_out:
        atomic_write_json(json_out, {"artifact_path": artifact, "reference_path": reference, "data": data_spec,
                                     **parity.to_dict()})
        click.echo(f"wrote {json_out}")
    check_parity(parity)

# ---------------------------------------------------------------- tensorrt (issue 6)
def _calibration_options(command):
    """The --calib-* options shared by 'calibrate' and 'build-engine --int8'."""
    options = [
        click.option("--calib-images", type=int, default=500, show_default=True,
                     help="Calibration images (evenly spaced over the source)."),
        click.option("--calib-method", type=click.Choice(["entropy", "percentile", "max"]), default="entropy",
                     show_default=True, help="How activation ranges are chosen from the measured values."),
        click.option("--calib-cache", type=click.Path(dir_okay=False), default=None,
                     help="JSON cache of the ranges: reused when the ONNX file and settings match, else rewritten."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


@cli.command("calibrate")
@click.argument("onnx_file", type=click.Path(dir_okay=False))
@click.option("--calib-data", required=True,
              help="Calibration images: a folder, or voc:ROOT[:SETS], coco:IMAGES:JSON, synthetic[:N].")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="Output .int8.onnx file.")
@_calibration_options
@click.option("--calib-percentile", type=float, default=99.999, show_default=True,
              help="Percentile of |x| kept (--calib-method percentile).")
@click.option("--parity-images", type=int, default=8, show_default=True,
              help="Images of --calib-data for the int8-vs-fp32 parity report (0: skip).")
def calibrate_command(onnx_file, calib_data, output, calib_images, calib_method, calib_cache, calib_percentile,
                      parity_images):
    """INT8 post-training quantization of the fp32 ONNX_FILE to a Q/DQ graph (TensorRT's explicit
    quantization): per-channel int8 Conv weights, calibrated per-tensor activations, attention in float."""
    from assd.calibration.workflow import calibrate_and_report

    calibrate_and_report(onnx_file, output, calib_data, num_images=calib_images, method=calib_method,
                         cache_path=calib_cache, percentile=calib_percentile, parity_images=parity_images,
                         echo=click.echo)


@cli.command("build-engine")
@click.argument("onnx_file", type=click.Path(dir_okay=False))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="Output .engine file.")
@click.option("--fp32", "precision", flag_value="fp32", help="Build the fp32 graph as is.")
@click.option("--fp16", "precision", flag_value="fp16", help="Convert an fp32 graph to fp16 first (default: "
              "the ONNX file's own precision).")
@click.option("--int8", "precision", flag_value="int8", help="Calibrate an fp32 graph to int8 Q/DQ first "
              "(needs --calib-data).")
@click.option("--batch", default=None, help="Optimization profile MIN:OPT:MAX (default 1:8:32, or the fixed batch).")
@click.option("--workspace", type=float, default=None, help="Builder workspace limit in GB (default: TensorRT's).")
@click.option("--timing-cache", type=click.Path(dir_okay=False), default=None,
              help="Timing cache file: read when present, written after the build.")
@click.option("--calib-data", default=None, help="Calibration images for --int8 (folder or data spec).")
@_calibration_options
@click.option("--version-compatible", is_flag=True, help="Engine runs on this TensorRT version or newer.")
@click.option("--hardware-compat", type=click.Choice(["none", "same-cc", "ampere+"]), default="none",
              show_default=True, help="GPUs the engine may run on besides this one's architecture.")
def build_engine_command(onnx_file, output, precision, batch, workspace, timing_cache, calib_data, calib_images,
                         calib_method, calib_cache, version_compatible, hardware_compat):
    """Build a strongly typed TensorRT engine (+ OUTPUT.json sidecar) from an assd ONNX_FILE."""
    from assd.export.engine import CalibrationOptions, EngineOptions, build_engine

    options = EngineOptions(
        precision=precision, batch=batch, workspace_gb=workspace, timing_cache=timing_cache,
        version_compatible=version_compatible, hardware_compat=hardware_compat,
        calibration=CalibrationOptions(data=calib_data, images=calib_images, method=calib_method, cache=calib_cache))
    build_engine(onnx_file, output, options, echo=click.echo)



# ---------------------------------------------------------------- demo (issue 7)
@cli.command("demo")
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
    from assd.demo import DemoOptions, run_demo

    run_demo(DemoOptions(out=out_dir, data=data_spec, val_data=val_data, quick=quick, force=force, device=device,
                         progress=not no_progress), echo=click.echo)



if __name__ == "__main__":
    main()
