"""``assd eval``, ``assd attention`` (issue 3); ``assd predict`` is ``predict.py``."""

from __future__ import annotations

from pathlib import Path

import click

from assd.commands.outputs import force_option, refuse_unused_options
from assd.commands.runtime_options import runner_options, runtime_click_options
from assd.commands.serve import client_options
from assd.errors import UserError


def _check_batch_size(batch_size: int) -> None:
    if batch_size < 1:
        raise UserError(f"--batch-size {batch_size}: must be at least 1")


def _open_checked_runner(model_path: str, device: str, batch_size: int, command: str, options: dict):
    """The runner for ``model_path`` (.pt, .onnx, .engine) with ``options`` (backend, threads, hint),
    refused when ``batch_size`` is more than it accepts or than memory holds."""
    from assd.models.limits import check_runners_memory
    from assd.runtime.runners import open_runner

    runner = open_runner(model_path, device=device, **options)
    runner.check_batch(batch_size)
    check_runners_memory([runner], batch_size, command)
    return runner


def _use_real_image_sizes(dataset) -> None:
    """The one size rule for detection files too (no image is loaded): see ``DetectionDataset.use_image_size``."""
    base = getattr(dataset, "dataset", dataset)  # through FirstImages
    if hasattr(base, "use_real_image_sizes"):
        base.use_real_image_sizes(len(dataset))


def _postprocess_from_options(model_cfg, score_threshold, nms_iou, top_k, max_detections):
    """The model's post-processing defaults (its conventions' top_k / max_detections) with the options;
    ``model_cfg`` None: the generic defaults (to validate the options before any work)."""
    from assd.runtime.postprocess import PostprocessConfig

    options = {"score_threshold": score_threshold, "nms_iou": nms_iou, "top_k": top_k, "max_detections": max_detections}
    if model_cfg is None:
        return PostprocessConfig(**{key: value for key, value in options.items() if value is not None})
    return PostprocessConfig.for_model(model_cfg, **options)


def _postprocess_click_options(score_threshold: float):
    """--score-threshold, --nms-iou, --top-k and --max-detections (post-processing thresholds)."""
    def decorate(command):
        command = click.option("--max-detections", type=int, default=None,
                               help="Detections kept per image after NMS [default: the model's, 200 for "
                                    "assd presets].")(command)
        command = click.option("--top-k", type=int, default=None,
                               help="Candidates per class entering NMS [default: the model's, 200 for assd "
                                    "presets].")(command)
        command = click.option("--nms-iou", type=float, default=0.45, show_default=True,
                               help="NMS IoU threshold.")(command)
        return click.option("--score-threshold", type=float, default=score_threshold, show_default=True,
                            help="Keep class scores above this.")(command)
    return decorate


@click.command("eval")
@force_option
@click.option("--model", "model_path", type=click.Path(dir_okay=False),
              help="Artifact to evaluate: checkpoint (.pt), .onnx, .engine, or a server URL http://HOST:PORT/MODEL.")
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
@client_options
@runtime_click_options()
def eval_command(model_path, detections_path, data_spec, metric, json_out, limit, batch_size, device,
                 score_threshold, nms_iou, top_k, max_detections, api_key, timeout, backend, threads, performance_hint):
    """Per-class AP and mAP of a checkpoint (or of a detections file) on a dataset."""
    _check_batch_size(batch_size)  # options first: before the heavy imports
    options = runner_options(backend, threads, performance_hint)
    from assd.data import data_spec_inputs, parse_data_spec
    from assd.evaluation import FirstImages, check_class_names, evaluate_detections
    from assd.evaluation.report import ap_table
    from assd.evaluation.results_json import load_coco_results
    from assd.paths import check_outputs
    from assd.remote.client import is_server_url
    from assd.runtime.runners import artifact_files
    from assd.utils import atomic_write_json

    if (model_path is None) == (detections_path is None):
        raise UserError("assd eval: give either --model CHECKPOINT or --detections FILE.json (exactly one)")
    if model_path is None or model_path.startswith(("http://", "grpc://")):
        refuse_unused_options({"device": "--device"}, "with a server URL (the server chooses its device)"
                              if model_path else "with --detections (no model runs)")
    check_outputs([*artifact_files(model_path), detections_path, *data_spec_inputs(data_spec)],
                  files={"--json": json_out})
    pp_cfg = _postprocess_from_options(None, score_threshold, nms_iou, top_k, max_detections)  # options checked
    dataset = parse_data_spec(data_spec, train=False)
    if limit is not None:
        dataset = FirstImages(dataset, limit)
    if model_path is not None and is_server_url(model_path):  # served by 'assd serve'
        from assd.serving.accuracy import evaluate_via_server

        if options["backend"] != "auto":
            raise UserError(f"--backend {backend}: a served model runs on the server's backend: leave --backend out")
        result = evaluate_via_server(model_path, dataset, metric, pp_cfg, in_flight=batch_size, api_key=api_key,
                                     timeout=timeout)
    elif model_path is not None:
        from assd.evaluation import predict_dataset

        runner = _open_checked_runner(model_path, device, batch_size, "eval", options)
        cfg = runner.cfg
        check_class_names(cfg, dataset, model_path)
        pp_cfg = _postprocess_from_options(cfg, score_threshold, nms_iou, top_k, max_detections)
        detections = predict_dataset(runner.infer_outputs, dataset, cfg, pp_cfg, batch_size, runner.device,
                                     progress=True)
        result = evaluate_detections(detections, dataset, metric, pp_cfg)
    else:
        _use_real_image_sizes(dataset)
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


@click.command("attention")
@force_option
@click.option("--model", "model_path", required=True, type=click.Path(dir_okay=False), help="Checkpoint (.pt).")
@click.argument("image", type=click.Path(dir_okay=False))
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Folder for the PNGs.")
@click.option("--query", default=None, help="X,Y pixel of the query position (default: best detection's center).")
@click.option("--maps", "maps_spec", default="all", show_default=True, help="'all' or map indices, e.g. 0,1,2.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu or cuda[:N].")
def attention_command(model_path, image, out_dir, query, maps_spec, device):
    """Attention maps of one query position on every prediction map (the paper's Figure 3)."""
    if Path(model_path).suffix.lower() in (".onnx", ".engine", ".plan", ".trt"):  # before the heavy imports
        raise UserError(f"{model_path}: attention maps need a .pt checkpoint (they are read inside the PyTorch "
                        "network): pass the checkpoint this file was exported from")
    from assd.data import read_rgb_image
    from assd.evaluation.attention_maps import attention_file_names, attention_maps, write_attention
    from assd.models.checkpoint import load_checkpoint
    from assd.models.limits import check_memory
    from assd.paths import check_outputs
    from assd.runtime.runners import resolve_device

    query_xy = _parse_number_list(query, "--query", "X,Y in pixels, e.g. 120,80", float, 2) if query else None
    maps = None if maps_spec == "all" else _parse_number_list(maps_spec, "--maps", "'all' or indices, e.g. 0,2", int)
    torch_device = resolve_device(device)
    pixels = read_rgb_image(image)
    model = load_checkpoint(model_path)
    check_outputs([model_path, image], folders={"--out": (out_dir, attention_file_names(model, maps))})
    check_memory(model.cfg, 1, torch_device, what=f"attention {model_path}", hint="use a smaller model")
    model = model.to(torch_device)
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
