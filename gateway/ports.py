"""Free TCP ports on 127.0.0.1, for the local broker, the dev command and tests."""

from __future__ import annotations

import socket


def free_ports(count: int = 1, preferred: int | None = None) -> list[int]:
    """``count`` distinct ports unused on 127.0.0.1; the first is ``preferred`` if it is free.

    Each socket is held open until all are picked, so no pick repeats an earlier one.
    (A port can still be taken by someone else between this call and its use.)
    """
    held: list[socket.socket] = []
    try:
        for i in range(count):
            s = socket.socket()
            held.append(s)
            try:
                s.bind(("127.0.0.1", preferred if i == 0 and preferred else 0))
            except OSError:
                s.bind(("127.0.0.1", 0))
        return [int(s.getsockname()[1]) for s in held]
    finally:
        for s in held:
            s.close()


def free_port() -> int:
    """One port unused on 127.0.0.1."""
    return free_ports(1)[0]


def free_port_run(count: int) -> int:
    """The first of ``count`` consecutive ports unused on 127.0.0.1 (``serve --workers``
    puts worker k's metrics on the given port + k)."""
    for _ in range(50):
        first = free_port()
        if all(_free(first + k) for k in range(1, count)):
            return first
    raise RuntimeError(f"no run of {count} free ports found")


def _free(port: int) -> bool:
    if port > 65535:
        return False
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True
