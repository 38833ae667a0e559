"""Loopback ports for the dev cluster's servers and fake pods.

Data flow: :func:`free_port` asks the kernel for a free port on 127.0.0.1 (a
server started later binds it, so another process may grab it in between: callers
that picked a port themselves retry when :func:`log_says_port_taken`);
:func:`check_port_free` turns a port the user asked for that is already taken into
a :class:`PortInUseError` that names the option.

No state; safe from any thread.
"""

from __future__ import annotations

import errno
import socket

from limpet.devcluster.errors import PortInUseError


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def check_port_free(port: int, what: str) -> None:
    """Raise :class:`PortInUseError` if something already listens on 127.0.0.1:``port``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        # Like the Go servers: a port held only by TIME_WAIT connections is free.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                raise PortInUseError(
                    f"port {port} on 127.0.0.1 (asked for the {what}) is already in use by "
                    "another process; choose another port, or 0 to pick a free one"
                ) from None
            raise


def log_says_port_taken(text: str) -> bool:
    """Whether a Go server's log says it could not bind its port."""
    return "address already in use" in text.lower()
