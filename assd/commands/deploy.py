"""``assd export``, ``assd bench``, ``assd eval-engine``: the CPU-verifiable deploy loop (issue 5)."""

from __future__ import annotations

import click

from assd.commands.outputs import force_option, refuse_unused_options
from assd.commands.runtime_options import parse_backends, runner_options, runtime_click_options
from assd.commands.serve import client_options
from assd.errors import UserError


@click.command("export")
@force_option
@click.argument("model")
@click.option("--onnx", "to_onnx", is_flag=True, help="Export to ONNX (the one artifact format).")
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Output .onnx file.")
@click.option("--opset", type=int, default=18, show_default=True, help="ONNX opset, 16..23.")
@click.option("--batch", default="dynamic", show_default=True, help="'dynamic' or a fixed batch size.")
@click.option("--with-postprocess", is_flag=True, help="Decode + NonMaxSuppression inside the graph.")
@click.option("--attention-op", is_flag=True, help="One ONNX Attention node per map (opset >= 23).")
@click.option("--max-detections", type=int, default=None,
              help="Detections kept per image (default: the model's, 200 for assd presets).")
@click.option("--parity-images", type=click.Path(exists=True, file_okay=False), default=None,
              help="Folder of images for the parity check (default: ../shared/data if present, else synthetic).")
@click.option("--no-parity", is_flag=True, help="Skip the ONNX Runtime parity check.")
@click.option("--precision", type=click.Choice(["fp32", "fp16"]), default="fp32", show_default=True,
              help="fp16: half-precision graph, attention scores/softmax and I/O in fp32 (int8: 'assd calibrate').")
@click.option("--triton", "triton_repo", type=click.Path(file_okay=False), default=None,
              help="Write a Triton model repository for MODEL (.onnx or .engine) into this new folder instead.")
@click.option("--max-batch", type=int, default=8, show_default=True, help="--triton: max batch of a dynamic ONNX file.")
def export_command(model, to_onnx, output, opset, batch, with_postprocess, attention_op, max_detections,
                   parity_images, no_parity, precision, triton_repo, max_batch):
    """Export MODEL (checkpoint or preset) to ONNX, then check parity with ONNX Runtime."""
    from assd.export.workflow import export_and_check

    if triton_repo is not None:  # 'assd export --triton REPO ARTIFACT' (assd/serving/repository.py)
        from assd.serving.repository import write_repository

        if to_onnx or output:
            raise UserError("--triton writes a model repository from an .onnx or .engine file: give no --onnx or -o")
        from assd.paths import check_outputs
        from assd.runtime.runners import artifact_files

        check_outputs(artifact_files(model), folders={"--triton": (triton_repo, [])})
        write_repository(triton_repo, model, max_batch=max_batch, echo=click.echo)
        return
    if output is None:
        raise UserError("give the output file: -o model.onnx")
    if not to_onnx:
        raise UserError("choose an export format: --onnx (the only format; TensorRT engines come from "
                        "'assd build-engine model.onnx')")
    export_and_check(model, output, opset=opset, batch=batch, with_postprocess=with_postprocess,
                     attention_op=attention_op, max_detections=max_detections, parity_images=parity_images,
                     check_parity=not no_parity, echo=click.echo, precision=precision)



@click.command()
@force_option
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
              help="Merge saved --json runs (from any machine) into one table instead of measuring: "
                   "--report A.json B.json ... (every file named is merged).")
@click.option("--cuda-graph", is_flag=True, help="TensorRT engines: replay one captured CUDA graph per batch size.")
@click.option("--server", default=None, help="Load a served model instead: http://HOST:PORT/MODEL or grpc://...")
@click.option("--concurrency", default="1,2,4,8", show_default=True, help="--server: requests in flight, per level.")
@click.option("--requests", "num_requests", type=int, default=None, help="--server: requests per level (default 200).")
@click.option("--seconds", type=float, default=None, help="--server: seconds per level (instead of --requests).")
@click.option("--images", multiple=True, help="--server: image files/folders to send (default: synthetic pixels).")
@client_options
@click.option("--source", "video", default=None, type=click.Path(dir_okay=False),
              help="A video: end-to-end FPS of Detector.stream on it next to the model-only FPS, per artifact and batch.")
@click.option("--frames", type=int, default=32, show_default=True, help="--source: frames per measurement.")
@click.option("--rounds", type=int, default=3, show_default=True, help="--source: interleaved rounds (medians).")
@runtime_click_options(several=True)
def bench(artifacts, batches, iters, warmup, device, precision, use_compile, json_out, csv_out, markdown_out,
          reports, cuda_graph, server, concurrency, num_requests, seconds, images, api_key, timeout, video, frames,
          rounds, backend, threads, performance_hint):
    """Time ARTIFACTS (.pt, .onnx, .engine, presets): FPS, latency, stages, Table-2 columns."""
    from assd.bench.run import merge_reports, parse_batches, report_files, run_bench

    if server is not None:  # a model served by 'assd serve' (or a repository from 'assd export --triton')
        from assd.serving.loadtest import parse_concurrency, run_server_bench

        if artifacts or reports:
            raise UserError("--server measures a running server: give no ARTIFACTS or --report with it")
        refuse_unused_options({"batches": "--batch", "iters": "--iters", "warmup": "--warmup", "device": "--device",
                               "precision": "--precision", "use_compile": "--compile", "csv_out": "--csv",
                               "cuda_graph": "--cuda-graph", "video": "--source", "backend": "--backend",
                               "threads": "--threads", "performance_hint": "--performance-hint"},
                              "with --server (the server batches requests itself; use --concurrency)")
        run_server_bench(server, parse_concurrency(concurrency), num_requests, seconds, list(images) or None,
                         json_out=json_out, markdown_out=markdown_out, echo=click.echo, api_key=api_key,
                         timeout=timeout)
        return
    if video is not None:  # end to end on a video vs model only (assd/bench/source.py)
        from assd.bench.source import run_source_bench

        if not artifacts:
            raise UserError("--source VIDEO times artifacts on it: name at least one (.pt, preset, .onnx, .engine)")
        run_source_bench(list(artifacts), parse_batches(batches), video, frames=frames, rounds=rounds, device=device,
                         json_out=json_out, markdown_out=markdown_out, echo=click.echo)
        return
    refuse_unused_options({"concurrency": "--concurrency", "num_requests": "--requests", "seconds": "--seconds",
                           "images": "--images", "api_key": "--api-key"}, "without --server")
    if reports:
        merge_reports(report_files(list(reports), list(artifacts)), markdown_out=markdown_out, csv_out=csv_out,
                      echo=click.echo)
        return
    if not artifacts:
        raise UserError("name at least one artifact (.pt checkpoint, preset, .onnx or .engine), or --report RUN.json")
    run_bench(list(artifacts), parse_batches(batches), iters=iters, warmup=warmup, device=device,
              precision=precision, compile=use_compile, json_out=json_out, csv_out=csv_out,
              markdown_out=markdown_out, cuda_graph=cuda_graph, echo=click.echo, backends=parse_backends(backend),
              threads=threads, performance_hint=performance_hint)


@click.command("eval-engine")
@force_option
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
@client_options
@runtime_click_options()
def eval_engine_command(artifact, data_spec, reference, metric, tolerance, batch_size, device, limit, json_out,
                        api_key, timeout, backend, threads, performance_hint):
    """mAP of ARTIFACT (.onnx, .engine, .pt) vs the PyTorch reference on the same images; exit 1 when
    |Δ mAP| exceeds the tolerance."""
    from assd.data import data_spec_inputs
    from assd.evaluation.engine_parity import check_parity, eval_engine, print_parity
    from assd.paths import check_outputs
    from assd.remote.client import is_server_url
    from assd.runtime.runners import artifact_files
    from assd.utils import atomic_write_json

    options = runner_options(backend, threads, performance_hint)
    served = is_server_url(artifact)  # a model served by 'assd serve'
    client = {"runner_options": options}
    if served:
        from assd.serving.accuracy import eval_engine_via_server as eval_engine

        if options["backend"] != "auto":
            raise UserError(f"--backend {backend}: a served model runs on the server's backend: leave --backend out")
        client = {"api_key": api_key, "timeout": timeout}
    check_outputs([*([] if served else artifact_files(artifact)), *artifact_files(reference),
                   *data_spec_inputs(data_spec)], files={"--json": json_out})
    parity = eval_engine(artifact, data_spec, reference=reference, metric=metric, tolerance=tolerance,
                         batch_size=batch_size, device=device, limit=limit, **client)
    print_parity(parity, artifact, reference, click.echo)
    if json_out:
        atomic_write_json(json_out, {"artifact_path": artifact, "reference_path": reference, "data": data_spec,
                                     **parity.to_dict()})
        click.echo(f"wrote {json_out}")
    check_parity(parity)
