"""Topic and record header names, in one place so nodes, bots and tests agree on them."""

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


def state_topic(prefix: str) -> str:
    """Compacted, keyed and partitioned like inbound: each live call's started record, a
    tombstone once it ended. A bot handed an inbound partition mid-call reads the state
    partition of the same number from the beginning to learn the calls it never saw start."""
    return f"{prefix}.calls.state"


def started_topic(prefix: str) -> str:
    """Every call's started record again (same bytes and headers), keyed and partitioned
    like inbound and kept as long as the audio: where ``audit`` learns when an ended call
    began, so it reads the call's partitions from there and not from hours before."""
    return f"{prefix}.calls.started"


def outbound_topic(prefix: str) -> str:
    """Bot audio and control frames exactly as sent to the provider, for audit."""
    return f"{prefix}.calls.outbound"


def commands_topic(prefix: str, node_id: str) -> str:
    """One node's own commands topic: the reply address in CallStarted."""
    return f"{prefix}.calls.commands.{node_id}"


def nodes_topic(prefix: str) -> str:
    """Compacted, one partition: each node's lease (heartbeat, epoch, the calls it holds)."""
    return f"{prefix}.nodes"


# Every record the gateway writes names what it is, so kcat, Kafka Connect or any generic
# consumer can decode it without knowing the topic (a tombstone carries none):
HEADER_TYPE = "kgw-type"  # the value's protobuf message, fully qualified
HEADER_SCHEMA = "kgw-schema"  # the schemas' major version: "1" is package knowlarity.gateway.v1
SCHEMA_VERSION = "1"
INBOUND_TYPE = "knowlarity.gateway.v1.InboundRecord"  # calls.inbound, calls.state, calls.started
OUTBOUND_TYPE = "knowlarity.gateway.v1.OutboundRecord"  # calls.outbound
COMMAND_TYPE = "knowlarity.gateway.v1.Command"  # calls.commands.<node>
NODE_RECORD_TYPE = "knowlarity.gateway.v1.NodeRecord"  # nodes


def type_headers(message_type: str) -> list[tuple[str, bytes]]:
    """The headers that name a record's message type and schema version."""
    return [(HEADER_TYPE, message_type.encode()), (HEADER_SCHEMA, SCHEMA_VERSION.encode())]


# Headers of every inbound record of a call, and of its state record (UTF-8 values), so
# that a bot that never saw the call's started record can still answer it:
HEADER_REPLY_TOPIC = "kgw-reply-topic"  # where the call's commands go (its node's commands topic)
HEADER_SAMPLE_RATE = "kgw-sample-rate"  # the call's audio rate in Hz, decimal ASCII ("16000")
HEADER_NODE_ID = "kgw-node-id"  # the node that holds the call's socket


def call_headers(reply_topic: str, sample_rate: int, node_id: str) -> list[tuple[str, bytes]]:
    """The headers of one call's inbound records, as Kafka clients take them: (name, value)
    pairs, its type first."""
    return [*type_headers(INBOUND_TYPE), (HEADER_REPLY_TOPIC, reply_topic.encode()),
            (HEADER_SAMPLE_RATE, str(sample_rate).encode()),
            (HEADER_NODE_ID, node_id.encode())]
