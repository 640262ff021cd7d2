"""Topic names, in one place so nodes, bots and tests agree on them."""

from __future__ import annotations

import re

# Kafka's legal topic characters; node ids end up in topic names.
_LEGAL = re.compile(r"^[A-Za-z0-9._-]+$")


def check_name_part(what: str, value: str) -> str:
    if not value or not _LEGAL.match(value):
        raise ValueError(f"{what} {value!r} must be non-empty and use only A-Z a-z 0-9 . _ -")
    return value


def inbound_topic(prefix: str) -> str:
    """Caller audio and call events, keyed by call id: what bots consume."""
    return f"{prefix}.calls.inbound"


def outbound_topic(prefix: str) -> str:
    """Bot audio and control frames exactly as sent to the provider, for audit."""
    return f"{prefix}.calls.outbound"


def commands_topic(prefix: str, node_id: str) -> str:
    """One node's own commands topic: the reply address in CallStarted."""
    return f"{prefix}.calls.commands.{node_id}"


def nodes_topic(prefix: str) -> str:
    """Compacted, one partition: each node's lease (heartbeat, epoch, the calls it holds)."""
    return f"{prefix}.nodes"
