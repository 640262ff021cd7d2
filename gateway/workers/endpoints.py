"""A worker's own endpoints: the shared provider port (SO_REUSEPORT) and its metrics port.

Twisted cannot set SO_REUSEPORT from an endpoint string, so a worker makes its
listening socket here and hands it to ``reactor.adoptStreamPort``. Only plain
``tcp:``/``tcp6:`` endpoints can be shared that way: TLS, PROXY-protocol and
UNIX endpoints wrap or replace the TCP port and are refused with ``--workers``
above 1 (``NodeConfig.check``). Each worker binds its own socket to the same
port; the kernel (Linux) spreads new connections over them by a hash of the
4-tuple, so one busy worker does not starve the others of accepts.
"""

from __future__ import annotations

import re
import socket
from dataclasses import dataclass

__all__ = ["TcpListen", "port_of", "reserve", "reuse_port_socket", "with_port"]

SHAREABLE = ("tcp", "tcp6")
# Endpoints whose first argument is the port, so a worker's metrics port can be derived.
PORTED = ("tcp", "tcp6", "ssl")

_UNESCAPED_COLON = re.compile(r"(?<!\\):")


def _parts(text: str) -> list[str]:
    # Twisted escapes ':' inside values with a backslash (a Windows path, an IPv6 address).
    return _UNESCAPED_COLON.split(text)


def _port_index(parts: list[str]) -> int | None:
    """Where the port is in ``parts`` (the kind first): ``port=N`` or the first positional."""
    for i, p in enumerate(parts[1:], 1):
        if p.startswith("port="):
            return i
    for i, p in enumerate(parts[1:], 1):
        if "=" not in p:
            return i
    return None


def port_of(text: str) -> int | None:
    """The port of a ``tcp:``, ``tcp6:`` or ``ssl:`` endpoint string; None for others."""
    parts = _parts(text.strip())
    i = _port_index(parts)
    if parts[0] not in PORTED or i is None:
        return None
    value = parts[i].removeprefix("port=")
    return int(value) if value.isdigit() else None


def with_port(text: str, port: int) -> str:
    """The same endpoint string on another port (only for those ``port_of`` reads)."""
    parts = _parts(text.strip())
    i = _port_index(parts)
    if parts[0] not in PORTED or i is None:
        raise ValueError(f"{text!r} has no port to change")
    parts[i] = ("port=" if parts[i].startswith("port=") else "") + str(port)
    return ":".join(parts)


@dataclass(frozen=True)
class TcpListen:
    """A plain TCP listen endpoint, as Twisted's ``tcp:PORT:interface=..:backlog=..`` means it."""

    family: socket.AddressFamily
    port: int
    interface: str
    backlog: int = 50

    @classmethod
    def from_endpoint(cls, text: str) -> TcpListen | None:
        """None for an endpoint that is not plain ``tcp:``/``tcp6:``."""
        kind, *args = _parts(text.strip())
        if kind not in SHAREABLE:
            return None
        names = ["port", "interface", "backlog"]
        given: dict[str, str] = {}
        for a in args:
            key, eq, value = a.partition("=")
            if eq:
                given[key] = value
            elif names:
                given[names[0]] = a
            names = [n for n in names if n not in given]
        family = socket.AF_INET6 if kind == "tcp6" else socket.AF_INET
        interface = given.get("interface", "").replace("\\:", ":")
        return cls(family, int(given.get("port", "0")),
                   interface or ("::" if kind == "tcp6" else "0.0.0.0"),
                   int(given.get("backlog", "50")))


def _bound(listen: TcpListen, port: int) -> socket.socket:
    s = socket.socket(listen.family, socket.SOCK_STREAM)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as Twisted's own ports
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        s.bind((listen.interface, port))
    except BaseException:
        s.close()
        raise
    return s


def reserve(listen: TcpListen) -> socket.socket:
    """A socket bound (SO_REUSEPORT) but not listening: it holds the port for the
    supervisor's lifetime, so a worker's restart finds it free to everyone else, and
    with port 0 it picks the port every worker is then given. It takes no connection."""
    return _bound(listen, listen.port)


def reuse_port_socket(listen: TcpListen) -> socket.socket:
    """A non-blocking listening socket sharing ``listen``'s port with the other workers."""
    s = _bound(listen, listen.port)
    try:
        s.listen(listen.backlog)
        s.setblocking(False)
    except BaseException:
        s.close()
        raise
    return s
