"""A gateway node: the provider-facing server, the bus, and the calls between them.

The node owns the registry of live calls and routes each command to the one
socket that holds its call. Reactor and clock are passed in.
"""

from __future__ import annotations

import asyncio
from typing import Any

from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IListeningPort
from twisted.logger import Logger

from gateway.bridge import wait_deferred
from gateway.bus import Bus
from gateway.config import NodeConfig
from gateway.core import model as m
from gateway.core.call import State
from gateway.core.errors import CloseCode
from gateway.core.playout import AudioBudget
from gateway.logs import printable
from gateway.metrics import Metrics
from gateway.registry import Registry
from gateway.server import ProviderFactory, ProviderProtocol

log = Logger()


class Node:
    def __init__(self, config: NodeConfig, reactor: Any, metrics: Metrics | None = None,
                 clock: Any = None) -> None:
        self.config = config
        self.reactor = reactor
        # Timeouts, flood checks and playout pacing run on this clock: monotonic
        # in a running node (gateway.clock.LoopClock), so a wall-clock step ends
        # no call. Default: the reactor's own.
        self.clock = clock or reactor
        self.metrics = metrics or Metrics()
        self.registry: Registry[ProviderProtocol] = Registry()
        self.sockets: set[ProviderProtocol] = set()
        self.accepting = False
        # Bot audio held by all calls together (--playout-node-bytes).
        self.audio_budget = AudioBudget(config.playout_node_bytes)
        self.bus = Bus(config, self.metrics, self._on_command, self.clock)
        self.factory = ProviderFactory(self)
        self._port: IListeningPort | None = None
        self._status_port: IListeningPort | None = None
        self._all_closed = asyncio.Event()
        self._all_closed.set()

    # --- lifecycle -------------------------------------------------------------

    async def start(self) -> None:
        """Bus first: a call must never start before its commands can be received."""
        c = self.config
        await self.bus.start()
        self._port = await wait_deferred(serverFromString(self.reactor, c.listen)
                                         .listen(self.factory))
        if c.metrics_listen:
            from gateway.status import status_site

            self._status_port = await wait_deferred(
                serverFromString(self.reactor, c.metrics_listen).listen(status_site(self)))
        self.accepting = True
        log.info("node {node_id} listening on {addr}; commands on {topic}", node_id=c.node_id,
                 addr=self.address, topic=c.commands_topic)
        if c.protected_mode:
            log.warn("protected mode: no --auth-token and no --allow-from, so sockets are "
                     "accepted from loopback only; set --allow-unauthenticated to accept any "
                     "address on purpose")

    @property
    def address(self) -> Any:
        return self._port.getHost() if self._port else None

    @property
    def status_address(self) -> Any:
        return self._status_port.getHost() if self._status_port else None

    @property
    def ready(self) -> bool:
        # Not tied to Kafka: an outage hits every node alike, and taking them
        # all out of the load balancer would refuse calls the buffer could
        # carry through. kgw_kafka_up is for alerting.
        return self.accepting

    async def shutdown(self) -> None:
        """Stop accepting, let calls finish within the drain timeout, end the rest, flush."""
        self.accepting = False
        if self._port is not None:
            await wait_deferred(self._port.stopListening())
        if self.sockets:
            log.info("draining {n} calls for up to {t}s", n=len(self.sockets),
                     t=self.config.drain_timeout_s)
            try:
                await asyncio.wait_for(self._all_closed.wait(), self.config.drain_timeout_s)
            except TimeoutError:
                pass
        for proto in list(self.sockets):
            proto.end(m.EndReason.NODE_SHUTDOWN, "node shutting down", CloseCode.GOING_AWAY)
        if self.sockets:
            # The close handshake times out after 5 s in Autobahn; then the TCP
            # connection is dropped and onClose runs.
            try:
                await asyncio.wait_for(self._all_closed.wait(), 7)
            except TimeoutError:
                log.error("{n} sockets still open at shutdown", n=len(self.sockets))
        await self.bus.stop()
        if self._status_port is not None:
            await wait_deferred(self._status_port.stopListening())

    # --- from sockets ----------------------------------------------------------------

    def publish(self, rec: m.Inbound) -> None:
        self.bus.publish(rec)

    @property
    def awaiting_start(self) -> int:
        """Open sockets that have not sent their start message yet."""
        return sum(1 for p in self.sockets
                   if p.call is not None and p.call.state is State.AWAITING_START)

    def socket_opened(self, proto: ProviderProtocol) -> None:
        self.sockets.add(proto)
        self._all_closed.clear()
        self.metrics.live_calls.set(len(self.sockets))

    def call_started(self, proto: ProviderProtocol) -> None:
        assert proto.call is not None
        call_id = proto.call.call_id
        previous = self.registry.add(call_id, proto)
        self.metrics.calls_started.inc()
        log.info("call {call_id} started ({rate} Hz) from {peer}", call_id=call_id,
                 rate=proto.call.sample_rate, peer=proto.peer)
        if previous is not None and previous is not proto:
            # The new socket passed every check the first one did (allow-list,
            # token, caps) before it got here.
            self.metrics.calls_replaced.inc()
            log.warn("call {call_id}: a second socket arrived; ending the first", call_id=call_id)
            previous.end(m.EndReason.REPLACED, "a new socket arrived for this call id",
                         CloseCode.REPLACED)

    def socket_closed(self, proto: ProviderProtocol) -> None:
        self.sockets.discard(proto)
        self.metrics.live_calls.set(len(self.sockets))
        if not self.sockets:
            self._all_closed.set()
        call = proto.call
        if call is None:
            return
        self.registry.remove(call.call_id, proto)
        if call.end_reason is None:
            self.metrics.sockets_closed_unstarted.inc()
            log.info("socket {call_id} closed before a start message",
                     call_id=printable(call.call_id))
        else:
            self.metrics.calls_ended.labels(call.end_reason.value).inc()
            log.info("call {call_id} ended: {reason}", call_id=call.call_id,
                     reason=call.end_reason.value)

    # --- from the bus ------------------------------------------------------------------

    def _on_command(self, cmd: m.Command) -> None:
        proto = self.registry.get(cmd.call_id)
        if proto is None:
            self.metrics.commands.labels("unknown_call").inc()
            log.debug("command for unknown call {call_id} dropped", call_id=cmd.call_id)
            return
        self.metrics.commands.labels("rejected" if isinstance(cmd.body, m.Refused) else "ok").inc()
        proto.command(cmd)
