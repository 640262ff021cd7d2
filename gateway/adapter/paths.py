"""Which WebSocket request paths are the provider's call streams (pure, no I/O)."""

from __future__ import annotations


def match_path(path: str, accepted: tuple[str, ...]) -> tuple[bool, str | None]:
    """Is this one of our paths (with any prefix)? Returns (ok, call id from the path).

    ``/v2/login/vaani/knowlarity/setup-call-streams`` matches the documented
    suffix; ``/knowlarity-stream/<id>`` matches with ``<id>`` as the call id.
    """
    path = path.rstrip("/")
    for suffix in accepted:
        if path.endswith(suffix):
            return True, None
        head, _, last = path.rpartition("/")
        if last and head.endswith(suffix):
            return True, last
    return False, None
