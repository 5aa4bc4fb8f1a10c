"""``deploy/kubernetes/assd-serve.yaml`` is valid Kubernetes (its JSON schemas, offline) and runs a real
``assd serve`` command line with probes on Triton's health endpoints."""

from __future__ import annotations

from pathlib import Path

import click
import pytest

yaml = pytest.importorskip("yaml", reason="PyYAML is not installed")
kubernetes_validate = pytest.importorskip("kubernetes_validate", reason="kubernetes-validate is not installed "
                                          "(pip install -e '.[dev]')")

MANIFEST = Path(__file__).resolve().parents[1] / "deploy" / "kubernetes" / "assd-serve.yaml"
KUBERNETES = "1.30.0"  # the oldest release the manifest promises to work with (docs/serving.md)


def resources() -> dict[str, dict]:
    return {doc["kind"]: doc for doc in yaml.safe_load_all(MANIFEST.read_text()) if doc}


def test_manifest_matches_the_kubernetes_schemas():
    found = resources()
    assert set(found) == {"Deployment", "Service"}
    for resource in found.values():
        kubernetes_validate.validate(resource, KUBERNETES, strict=True)  # raises ValidationError
    broken = dict(found["Service"], spec={"ports": [{"port": "eight thousand"}]})
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES, strict=True)


def test_deployment_serves_with_health_probes_and_metrics():
    deployment, service = resources()["Deployment"], resources()["Service"]
    assert deployment["spec"]["replicas"] > 1
    pod = deployment["spec"]["template"]
    [container] = pod["spec"]["containers"]
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert ports == {"http": 8000, "grpc": 8001, "metrics": 8002}
    assert container["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert pod["metadata"]["annotations"]["prometheus.io/port"] == str(ports["metrics"])
    assert {port["targetPort"] for port in service["spec"]["ports"]} == set(ports)
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    # the container's command line is one 'assd serve' accepts, with the ports the probes use
    from assd.commands.serve import serve_command

    program, command, *args = container["args"]
    assert (program, command) == ("assd", "serve")
    context = serve_command.make_context("serve", list(args))
    assert context.params["host"] == "0.0.0.0" and context.params["http_port"] == ports["http"]
    assert context.params["api_key_file"] == "/etc/assd/api-key"
    mounts = {mount["mountPath"] for mount in container["volumeMounts"]}
    assert "/etc/assd" in mounts and "/dev/shm" in mounts
    with pytest.raises(click.UsageError):
        serve_command.make_context("serve", [*args, "--no-such-option"])
