"""Test doubles and harness pieces shipped with the product (as ``treq.testing`` is).

In memory (no broker, no socket): ``RecordingBus`` and ``node_in_memory`` for a
node whose edges are recorded, ``FakeProvider`` for a provider socket driven
through Autobahn's real handshake, ``ScriptedCall`` for a bot on the SDK driven
by a scripted caller against ``PlayoutModel``, a model of the node's playout
(``run_async`` runs such a test's coroutine beside pytest's asyncio reactor).
Against a real broker: ``InboundReader`` and ``OutboundReader`` group a topic's
records by call, ``StateReader`` reads the call-state topic, ``CommandSender``
sends commands as a bot does, ``running_bot`` runs an SDK bot for a block.
"""

from gateway.testing.bots import PlayoutModel, ScriptedCall, run_async
from gateway.testing.broker import (
    CommandSender,
    InboundReader,
    OutboundReader,
    StateReader,
    TopicReader,
    running_bot,
)
from gateway.testing.memory import RecordingBus, node_in_memory
from gateway.testing.provider import FakeProvider, client_frame, parse_server_frames

__all__ = [
    "CommandSender",
    "FakeProvider",
    "InboundReader",
    "OutboundReader",
    "PlayoutModel",
    "RecordingBus",
    "ScriptedCall",
    "StateReader",
    "TopicReader",
    "client_frame",
    "node_in_memory",
    "parse_server_frames",
    "run_async",
    "running_bot",
]
