"""Who may use a server started by ``assd serve``: the API key, gRPC TLS, and the warning for open addresses.

Triton's HTTP and gRPC endpoints have no authentication of their own. Its restricted-API feature
(``--http-restricted-api`` / ``--grpc-restricted-protocol`` ``API,...:KEY=VALUE``) makes a group of
endpoints answer only requests carrying a header; ``assd serve --api-key KEY`` puts every endpoint
group but ``health`` (liveness/readiness for load balancers) behind ``x-api-key: KEY`` (gRPC clients
send the metadata ``triton-grpc-protocol-x-api-key``, Triton's rule for gRPC). nvidia-pytriton passes
exactly one such restriction to tritonserver, its ``TritonSecurityConfig`` with the header
``triton-access-token``, and sends that header itself while it starts the server; ``pytriton_header``
renames the header for those moments, so the one restriction uses ``x-api-key`` and pytriton's own
calls carry it.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from assd.errors import UserError
from assd.remote.checks import is_loopback
from assd.remote.protocol import API_KEY_HEADER

# Triton's endpoint groups (pytriton's VALID_TRITON_ENDPOINTS). Without a key, pytriton's random token
# guards the administrative ones; statistics stay open for 'assd bench --server'.
ADMIN_ENDPOINTS = ["shared-memory", "model-repository", "trace", "logging"]
KEYED_ENDPOINTS = ["inference", "metadata", "model-config", "statistics", "shared-memory", "model-repository",
                   "trace", "logging"]  # all but "health"
MAX_KEY_CHARS = 4096


def read_api_key(api_key: str | None, api_key_file: str | None) -> str | None:
    """The key of ``--api-key`` or the first line of ``--api-key-file`` (one of them at most)."""
    if api_key is not None and api_key_file is not None:
        raise UserError("give --api-key or --api-key-file, not both")
    if api_key_file is not None:
        try:
            api_key = Path(api_key_file).read_text().strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise UserError(f"--api-key-file {api_key_file}: cannot read it ({getattr(exc, 'strerror', exc)}): "
                            "give a readable text file holding the key") from None
        option = f"--api-key-file {api_key_file}"
    else:
        option = "--api-key"
    if api_key is None:
        return None
    check_key(api_key, option)
    return api_key


def check_key(key: str, option: str) -> None:
    """UserError for a key Triton's option syntax (``API:KEY=VALUE``, one line) or HTTP headers cannot carry."""
    if not key or len(key) > MAX_KEY_CHARS or not key.isprintable() or not key.isascii() or any(
            c in key for c in " ,:=;\"'"):
        raise UserError(f"{option}: the key must be 1..{MAX_KEY_CHARS} printable ASCII characters without "
                        "spaces or any of , : = ; quotes (it travels in an HTTP header and a Triton option)")


def open_address_warning(host: str, api_key: str | None) -> str | None:
    """The one warning for a non-loopback address (None for loopback)."""
    if is_loopback(host):
        return None
    if api_key is None:
        return (f"warning: listening on {host}: every machine that reaches it may run inference and read the "
                "model's metadata (Triton's endpoints have no authentication): add --api-key or keep it behind "
                "a firewall")
    return (f"warning: listening on {host}: requests need the header '{API_KEY_HEADER}', but it travels in "
            "clear text over HTTP (and gRPC without --grpc-ssl-cert): use TLS or a trusted network")


def security_config(api_key: str | None):
    """pytriton's ``TritonSecurityConfig``: the key over every endpoint but health, else its own token."""
    from pytriton.triton import TritonSecurityConfig

    if api_key is None:
        return TritonSecurityConfig(restricted_endpoints=ADMIN_ENDPOINTS)
    return TritonSecurityConfig(access_token=api_key, restricted_endpoints=KEYED_ENDPOINTS)


@contextlib.contextmanager
def pytriton_header(api_key: str | None):
    """While inside (constructing and starting ``Triton``): pytriton's access header is ``x-api-key``."""
    if api_key is None:
        yield
        return
    from pytriton import triton
    from pytriton.client import auth

    saved = triton.TRITON_ACCESS_HEADER, auth.TRITON_ACCESS_HEADER
    triton.TRITON_ACCESS_HEADER = auth.TRITON_ACCESS_HEADER = API_KEY_HEADER
    try:
        yield
    finally:
        triton.TRITON_ACCESS_HEADER, auth.TRITON_ACCESS_HEADER = saved


def tls_settings(cert: str | None, key: str | None, root: str | None) -> dict:
    """``TritonConfig`` fields for gRPC TLS (mutual when ``root`` is given); {} without a certificate."""
    if cert is None and key is None and root is None:
        return {}
    if cert is None or key is None:
        raise UserError("gRPC TLS needs both --grpc-ssl-cert and --grpc-ssl-key (and optionally --grpc-ssl-root "
                        "to require client certificates)")
    for option, path in (("--grpc-ssl-cert", cert), ("--grpc-ssl-key", key), ("--grpc-ssl-root", root)):
        if path is not None and not os.access(path, os.R_OK):
            raise UserError(f"{option} {path}: not a readable file: give a PEM file")
        if path is not None and b"-----BEGIN" not in Path(path).read_bytes()[:4096]:
            raise UserError(f"{option} {path}: not a PEM file (no '-----BEGIN' line)")
    settings = {"grpc_use_ssl": True, "grpc_server_cert": str(Path(cert).resolve()),
                "grpc_server_key": str(Path(key).resolve())}
    if root is not None:
        settings.update(grpc_use_ssl_mutual=True, grpc_root_cert=str(Path(root).resolve()))
    return settings
