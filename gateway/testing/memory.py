"""In-memory stand-ins for a node's edges, for tests without a broker or a socket.

``RecordingBus`` takes the place of ``gateway.kafka.bus.Bus``: it keeps what the node
publishes, in order, and feeds the node commands as the broker would.
``node_in_memory`` builds a real ``Node`` on Twisted's ``MemoryReactorClock``
with such a bus and a clock of its own for Autobahn's handshake timers; drive
its sockets with ``gateway.testing.FakeProvider``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock

from gateway.config import NodeConfig
from gateway.core import model as m
from gateway.node import Node


class RecordingBus:
    """Stands in for ``gateway.kafka.bus.Bus``: keeps what the node hands it, in order."""

    delivering = True
    healthy = True

    def __init__(self) -> None:
        self.inbound: list[m.Inbound] = []
        self.outbound: list[m.Outbound] = []
        self._on_command: Callable[[m.Command], None] = lambda cmd: None

    def attach(self, *, on_command: Callable[[m.Command], None], **_other: Any) -> None:
        self._on_command = on_command

    def feed(self, cmd: m.Command) -> None:
        """A command arrives from the bus, as the node's command consumer delivers it."""
        self._on_command(cmd)

    def publish(self, rec: m.Inbound) -> None:
        self.inbound.append(rec)

    def publish_outbound(self, rec: m.Outbound) -> None:
        self.outbound.append(rec)

    def hold(self, call_id: str) -> None:
        """The real bus holds a new call's records until the lease lists it; here, nothing."""

    def release(self, call_ids: Iterable[str]) -> None:
        pass

    def idle(self) -> bool:
        return True

    def bodies(self, call_id: str | None = None) -> list[Any]:
        return [r.body for r in self.inbound if call_id is None or r.call_id == call_id]

    def ends(self) -> list[m.CallEnded]:
        return [b for b in self.bodies() if isinstance(b, m.CallEnded)]


def node_in_memory(config: NodeConfig | None = None) -> tuple[Node, RecordingBus, Clock]:
    """A node on a MemoryReactorClock with a RecordingBus, accepting sockets.

    Returns the node, its bus and the clock of Autobahn's handshake timers (kept
    apart, so that the node's clock shows only the gateway's own timers).
    """
    bus, handshakes = RecordingBus(), Clock()
    node = Node(config or NodeConfig(), MemoryReactorClock(), bus=bus,
                handshake_clock=handshakes)
    node.accepting = True
    return node, bus, handshakes
