"""What serving needs from this machine: the ``serve`` extra, a Python-backend stub that runs *this*
interpreter, and free ports.

The stub problem. ``tritonserver`` runs Python models in ``triton_python_backend_stub``, a separate
program that embeds Python. nvidia-pytriton ships one stub per Python minor version, each linked
against ``libpython3.X.so.1.0`` by name only (its RPATH names pytriton's own libraries, which do not
include libpython). The dynamic loader therefore takes the *system's* libpython of that minor version
(Debian 12: 3.11.2) while the stub's ``sys.path`` is this interpreter's standard library (e.g. pyenv's
3.11.7): a 3.11.2 runtime executing 3.11.7's ``multiprocessing`` fails during model initialisation
(``'_thread.RLock' object has no attribute '_recursion_count'``). Putting this interpreter's own
library directory first on ``LD_LIBRARY_PATH`` (inherited by tritonserver and its stubs) makes the stub
load the libpython whose standard library it runs. Interpreters built without a shared libpython
cannot be fixed this way; they work only when the system's libpython is the same patch release.
"""

from __future__ import annotations

import os
import socket
import sysconfig

from assd.errors import UserError
from assd.remote.checks import SERVE_EXTRA_HINT, is_loopback, require_serve_extra  # noqa: F401


def python_library_dir() -> str | None:
    """The folder holding this interpreter's shared libpython, or None when it is linked statically."""
    if not sysconfig.get_config_var("Py_ENABLE_SHARED"):
        return None
    return sysconfig.get_config_var("LIBDIR")


def stub_library_path(current: str | None) -> str | None:
    """``LD_LIBRARY_PATH`` with this interpreter's library folder first (``current`` when there is none)."""
    library_dir = python_library_dir()
    if library_dir is None:
        return current
    others = [part for part in (current or "").split(os.pathsep) if part and part != library_dir]
    return os.pathsep.join([library_dir, *others])


def use_this_interpreter_for_stubs() -> None:
    """Set ``LD_LIBRARY_PATH`` in this process's environment, which pytriton copies into tritonserver's."""
    value = stub_library_path(os.environ.get("LD_LIBRARY_PATH"))
    if value:
        os.environ["LD_LIBRARY_PATH"] = value






def check_port_free(host: str, port: int, option: str) -> None:
    """UserError when ``host:port`` cannot be bound (in use, or a port number out of range)."""
    if not 1 <= port <= 65535:
        raise UserError(f"{option} {port}: must be a port number in 1..65535")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as servers do: TIME_WAIT is not "in use"
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise UserError(f"{option} {port}: cannot listen on {host}:{port} ({exc.strerror}): choose a free "
                            "port") from None


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now (the kernel's choice)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]
