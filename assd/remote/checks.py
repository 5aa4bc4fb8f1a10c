"""The serve extra's client packages, and loopback addresses (for the warning of 'assd serve --host')."""

from __future__ import annotations

import ipaddress

from assd.errors import UserError

SERVE_EXTRA_HINT = "install the serve extra: pip install -e '.[serve]'"


def require_serve_extra(what: str) -> None:
    """UserError naming the missing package when nvidia-pytriton / tritonclient are not installed."""
    for module in ("pytriton", "tritonclient.http", "tritonclient.grpc"):
        try:
            __import__(module)
        except ImportError as exc:
            raise UserError(f"{what} needs nvidia-pytriton and tritonclient ({exc.name} is missing): "
                            f"{SERVE_EXTRA_HINT}") from None


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and literal loopback addresses (``127.0.0.0/8``, ``::1``); names other than
    ``localhost`` are never resolved."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
