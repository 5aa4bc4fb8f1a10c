"""``assd serve``: an artifact behind a real Triton Inference Server (issue 15)."""

from __future__ import annotations

import click


def client_options(command):
    """``--api-key`` and ``--timeout`` of the commands that talk to a server URL."""
    command = click.option("--timeout", type=float, default=60.0, show_default=True,
                           help="URL: seconds per request (connecting and reading).")(command)
    return click.option("--api-key", default=None, envvar="ASSD_API_KEY", show_envvar=True,
                        help="URL: the key of 'assd serve --api-key' (sent as the header x-api-key).")(command)


@click.command("serve")
@click.argument("artifact")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on (0.0.0.0 or :: for every interface: then use --api-key).")
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
@click.option("--api-key", default=None, help="Require the header 'x-api-key: KEY' on every endpoint but health.")
@click.option("--api-key-file", default=None, type=click.Path(dir_okay=False),
              help="Read the key from this file (keeps it out of shell history).")
@click.option("--grpc-ssl-cert", default=None, type=click.Path(dir_okay=False), help="gRPC TLS: server certificate (PEM).")
@click.option("--grpc-ssl-key", default=None, type=click.Path(dir_okay=False), help="gRPC TLS: server key (PEM).")
@click.option("--grpc-ssl-root", default=None, type=click.Path(dir_okay=False),
              help="gRPC TLS: root certificate (PEM); clients must then present a certificate it signed.")
def serve_command(artifact, host, http_port, grpc_port, metrics_port, max_batch, max_queue_delay_us, instances,
                  model_name, device, api_key, api_key_file, grpc_ssl_cert, grpc_ssl_key, grpc_ssl_root):
    """Serve ARTIFACT (.pt, .onnx, .engine, preset) on Triton: encoded images or pixels in, detections out."""
    from assd.serving.access import read_api_key
    from assd.serving.server import ServeOptions, serve

    options = ServeOptions(host=host, http_port=http_port, grpc_port=grpc_port, metrics_port=metrics_port,
                           max_batch=max_batch, max_queue_delay_us=max_queue_delay_us, instances=instances,
                           model_name=model_name, device=device, api_key=read_api_key(api_key, api_key_file),
                           grpc_ssl_cert=grpc_ssl_cert, grpc_ssl_key=grpc_ssl_key, grpc_ssl_root=grpc_ssl_root)
    serve(artifact, options, echo=click.echo, log=lambda line: click.echo(line, err=True))
