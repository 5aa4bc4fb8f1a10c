"""``assd serve``: an artifact behind a real Triton Inference Server (issue 15)."""

from __future__ import annotations

import click


@click.command("serve")
@click.argument("artifact")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on (loopback only here).")
@click.option("--http-port", type=int, default=8000, show_default=True)
@click.option("--grpc-port", type=int, default=8001, show_default=True)
@click.option("--metrics-port", type=int, default=8002, show_default=True, help="Prometheus metrics.")
@click.option("--max-batch", type=int, default=8, show_default=True,
              help="Largest batch Triton's dynamic batcher forms (capped by the artifact's own maximum).")
@click.option("--max-queue-delay-us", type=int, default=2000, show_default=True,
              help="How long a request may wait for others to join its batch.")
@click.option("--instances", type=int, default=1, show_default=True, help="Model instances (one runner each).")
@click.option("--model-name", default="assd", show_default=True, help="Name clients address the model by.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu or cuda[:N] (for .pt and .onnx).")
def serve_command(artifact, host, http_port, grpc_port, metrics_port, max_batch, max_queue_delay_us, instances,
                  model_name, device):
    """Serve ARTIFACT (.pt, .onnx, .engine, preset) on Triton: encoded images or pixels in, detections out."""
    from assd.serving.server import ServeOptions, serve

    serve(artifact, ServeOptions(host=host, http_port=http_port, grpc_port=grpc_port, metrics_port=metrics_port,
                                 max_batch=max_batch, max_queue_delay_us=max_queue_delay_us, instances=instances,
                                 model_name=model_name, device=device), echo=click.echo)
