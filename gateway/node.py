"""A gateway node: the provider-facing server, the bus, and the calls between them.

The node owns the registry of live calls and routes each command to the one
socket that holds its call. Reactor and clock are passed in.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiokafka.errors import KafkaError
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IListeningPort
from twisted.logger import Logger

from gateway.adapter.registry import Registry
from gateway.adapter.server import ProviderFactory, ProviderProtocol
from gateway.bridge import wait_deferred
from gateway.config import NodeConfig
from gateway.core import model as m
from gateway.core.call import State
from gateway.core.errors import CloseCode
from gateway.core.playout import AudioBudget
from gateway.kafka.bus import Bus
from gateway.lease.keeper import LeaseKeeper
from gateway.ops.logs import printable
from gateway.ops.metrics import LoopLag, Metrics

log = Logger()


class Node:
    def __init__(self, config: NodeConfig, reactor: Any, metrics: Metrics | None = None,
                 clock: Any = None, bus: Any = None, handshake_clock: Any = None) -> None:
        """``bus``: the Kafka side (default: a ``gateway.kafka.bus.Bus``; tests pass
        ``gateway.testing.RecordingBus``). ``handshake_clock``: Autobahn's handshake
        timers (default: the global reactor)."""
        self.config = config
        self.reactor = reactor
        # Timeouts, flood checks and playout pacing run on this clock: monotonic
        # in a running node (gateway.clock.LoopClock), so a wall-clock step ends
        # no call. Default: the reactor's own.
        self.clock = clock or reactor
        self.metrics = metrics or Metrics()
        self.metrics.max_sockets.set(config.max_sockets)
        self._loop_lag = LoopLag(self.clock, self.metrics.loop_lag)
        self.registry: Registry[ProviderProtocol] = Registry()
        self.sockets: set[ProviderProtocol] = set()
        self.accepting = False
        # Bot audio held by all calls together (--playout-node-bytes).
        self.audio_budget = AudioBudget(config.playout_node_bytes)
        self.bus = bus if bus is not None else Bus(config, self.metrics, clock=self.clock)
        self.bus.attach(on_command=self._on_command, on_fatal=self._bus_failed,
                        on_end_delivered=lambda call_id: self.lease.end_delivered(call_id))
        # The node's lease on the nodes topic: its calls end even if it dies (gateway.lease.rules).
        self.lease = self._new_lease()
        # Set when the node must stop on its own (its bus failed for good): the
        # entry point exits non-zero, so the orchestrator restarts it.
        self.failed = asyncio.Event()
        self.failure = ""
        self.factory = ProviderFactory(config, clock=self.clock, metrics=self.metrics,
                                       host=self, budget=self.audio_budget,
                                       handshake_clock=handshake_clock)
        self._port: IListeningPort | None = None
        self._status_port: IListeningPort | None = None
        self._all_closed = asyncio.Event()
        self._all_closed.set()

    # --- lifecycle -------------------------------------------------------------

    async def start(self) -> None:
        """Status first (so /readyz says 503 while Kafka is away), then the bus, retried
        until Kafka answers, then the provider port: a call must never start before its
        commands can be received."""
        c = self.config
        if c.metrics_listen:
            from gateway.ops.status import status_site

            site = status_site(lambda: self.ready, self.metrics.registry)
            self._status_port = await wait_deferred(
                serverFromString(self.reactor, c.metrics_listen).listen(site))
            self._loop_lag.start()  # only measured where it is scraped
        await self.bus.start()
        # Ends the calls a previous run with this id left, before any new call.
        await self._start_lease()
        if c.reuse_port:
            self._port = self._listen_shared()
        else:
            self._port = await wait_deferred(serverFromString(self.reactor, c.listen)
                                             .listen(self.factory))
        self.accepting = True
        log.info("node {node_id} listening on {addr}; commands on {topic}", node_id=c.node_id,
                 addr=self.address, topic=c.commands_topic)
        if c.protected_mode:
            log.warn("protected mode: no --auth-token and no --allow-from, so sockets are "
                     "accepted from loopback only; set --allow-unauthenticated to accept any "
                     "address on purpose")

    def _listen_shared(self) -> IListeningPort:
        """The tcp: --listen port bound with SO_REUSEPORT (which Twisted's endpoint strings
        cannot ask for), so that the other workers of ``serve --workers`` listen on it too."""
        from gateway.workers.endpoints import TcpListen, reuse_port_socket

        listen = TcpListen.from_endpoint(self.config.listen)
        assert listen is not None, "NodeConfig.check refuses --reuse-port with other endpoints"
        sock = reuse_port_socket(listen)
        try:
            port: IListeningPort = self.reactor.adoptStreamPort(
                sock.fileno(), sock.family, self.factory)
        finally:
            sock.close()  # the port holds a duplicate of the descriptor
        return port

    def _new_lease(self) -> LeaseKeeper:
        # A new call's records wait in the bus until a lease listing it is on the broker.
        return LeaseKeeper(self.config, delivered=self.bus.idle, on_listed=self.bus.release)

    async def _start_lease(self) -> None:
        """Kafka may go away between the bus's start and the lease's: retried, like the bus."""
        delay = 0.5
        while True:
            try:
                await self.lease.start()
                return
            except (KafkaError, OSError) as e:
                log.warn("lease not started ({err}); retrying", err=type(e).__name__)
                await self.lease.stop()
                self.lease = self._new_lease()
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)

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
        # carry through. kgw_kafka_up is for alerting. A bus that failed for good is
        # another matter: this node can no longer deliver, the others can.
        return self.accepting and self.bus.healthy

    async def shutdown(self) -> None:
        """Stop accepting, let calls finish within the drain timeout, end the rest, flush."""
        self.accepting = False
        if self._port is not None:
            await wait_deferred(self._port.stopListening())
        # A node whose bus failed does not drain: its records have nowhere to go.
        drain_s = 0.0 if self.failed.is_set() else self.config.drain_timeout_s
        if self.sockets and drain_s:
            log.info("draining {n} calls for up to {t}s", n=len(self.sockets), t=drain_s)
            try:
                await asyncio.wait_for(self._all_closed.wait(), drain_s)
            except TimeoutError:
                pass
        detail = f"node stopping: {self.failure}" if self.failure else "node shutting down"
        for proto in list(self.sockets):
            proto.end(m.EndReason.NODE_SHUTDOWN, detail, CloseCode.GOING_AWAY)
        if self.sockets:
            # The close handshake times out after 5 s in Autobahn; then the TCP
            # connection is dropped and onClose runs.
            try:
                await asyncio.wait_for(self._all_closed.wait(), 7)
            except TimeoutError:
                log.error("{n} sockets still open at shutdown", n=len(self.sockets))
        await self.bus.stop()
        if self._status_port is not None:
            self._loop_lag.stop()
            await wait_deferred(self._status_port.stopListening())
        await self.lease.stop()

    def _bus_failed(self, why: str) -> None:
        """The bus cannot go on: stop being ready and let the entry point shut down (which
        ends every call NODE_SHUTDOWN and flushes what it can) and exit non-zero."""
        log.error("node {node_id} stopping: {why}", node_id=self.config.node_id, why=why)
        self.failure = why
        self.accepting = False
        self.failed.set()

    # --- from sockets ----------------------------------------------------------------

    def publish(self, rec: m.Inbound) -> None:
        if isinstance(rec.body, m.CallEnded):  # exactly one per call (gateway.core.call)
            self.metrics.call_duration.observe(rec.body.duration_ms / 1000)
        self.bus.publish(rec)

    def publish_outbound(self, rec: m.Outbound) -> None:
        self.bus.publish_outbound(rec)

    @property
    def open_sockets(self) -> int:
        return len(self.sockets)

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
        # Before the call's started record is published (the adapter runs its effects
        # after this): the bus holds the call's records until the lease lists it.
        self.bus.hold(call_id)
        self.lease.call_started(call_id)
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
            self.lease.call_ended(call.call_id)
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
