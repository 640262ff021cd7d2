"""The two kinds of error the core raises, and their WebSocket close codes.

``ProtocolError``: the provider sent something we cannot accept; the call is
closed with the error's close code. ``UsageError``: the gateway itself misused
the core (a bug); it must never be caused by network input.
"""

from __future__ import annotations

import enum


class CloseCode(enum.IntEnum):
    """Every close code the gateway sends, in one place (RFC 6455 and 4xxx private)."""

    NORMAL = 1000
    GOING_AWAY = 1001  # node shutting down
    PROTOCOL_ERROR = 1002  # frames in an order the protocol does not allow
    UNSUPPORTED_DATA = 1003  # e.g. audio before the start message
    INVALID_PAYLOAD = 1007  # a start message we cannot parse
    POLICY_VIOLATION = 1008  # flood, auth
    MESSAGE_TOO_BIG = 1009
    INTERNAL_ERROR = 1011
    # Private range: reasons a provider operator may want to tell apart.
    START_TIMEOUT = 4000
    ENDING_TIMEOUT = 4001
    REPLACED = 4002
    IDLE_TIMEOUT = 4003
    NOT_READING = 4004  # provider stopped reading: our write buffer passed its bound


class ProtocolError(Exception):
    """The peer misbehaved. Carries the close code to send and a short reason."""

    def __init__(self, reason: str, close_code: CloseCode = CloseCode.INVALID_PAYLOAD) -> None:
        super().__init__(reason)
        self.reason = reason
        self.close_code = close_code


class UsageError(Exception):
    """The gateway called the core in a way it does not allow: a bug, never the peer's fault."""
