"""The Autobahn adapter: one provider socket in, the per-call core's effects out.

Thin on purpose: the handshake (path, optional auth, subprotocol) is decided
here; every frame goes to ``gateway.core.call.Call`` and what it returns is
carried out. No Knowlarity JSON is read or written in this module.

Limits that hold before any byte is parsed live here too, in the order a
hostile peer meets them: the address allow-list and the connection cap at TCP
accept (``buildProtocol``), the size of the HTTP upgrade request
(``dataReceived``), the socket caps and auth at the handshake, and the write
buffer to a provider that stops reading.
"""

from __future__ import annotations

import hmac
import ipaddress
import uuid
from typing import Any, Protocol

from autobahn.twisted.util import peer2str
from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.util import encode_truncate
from autobahn.websocket.types import ConnectionDeny, ConnectionRequest
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IAddress, IDelayedCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from gateway.adapter.eager import send_eagerly
from gateway.adapter.paths import match_path
from gateway.config import NodeConfig
from gateway.core import model as m
from gateway.core.call import Call
from gateway.core.errors import CloseCode
from gateway.core.playout import AudioBudget
from gateway.ops.logs import printable
from gateway.ops.metrics import Metrics


class CallHost(Protocol):
    """What the adapter needs of its owner (the node implements it): whether to take
    sockets, how many are open or waiting, and where calls and their records go."""

    @property
    def accepting(self) -> bool: ...

    @property
    def open_sockets(self) -> int: ...

    @property
    def awaiting_start(self) -> int: ...

    def socket_opened(self, proto: ProviderProtocol) -> None: ...

    def call_started(self, proto: ProviderProtocol) -> None: ...

    def socket_closed(self, proto: ProviderProtocol) -> None: ...

    def publish(self, rec: m.Inbound) -> None: ...

    def publish_outbound(self, rec: m.Outbound) -> None: ...

log = Logger()

_END_OF_REQUEST = b"\r\n\r\n"
_TOO_LARGE = (b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
              b"Connection: close\r\nContent-Length: 0\r\n\r\n")


class _WriteWatch:
    """A streaming producer on the transport, only to learn when its buffer is full.

    Twisted pauses a registered producer once a transport holds more than its
    buffer size (64 KiB); what the gateway writes while paused is what a
    provider that stopped reading makes it hold.
    """

    def __init__(self) -> None:
        self.paused = False
        self.written_while_paused = 0

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False
        self.written_while_paused = 0

    def stopProducing(self) -> None:
        self.paused = False


class ProviderProtocol(WebSocketServerProtocol):
    factory: ProviderFactory
    call: Call | None = None
    _request_refused = False
    _counted = False
    # Behind a PROXY-protocol load balancer (``haproxy:`` endpoints): the caller's address
    # is known only once the PROXY header is read, just before the first request byte.
    _check_peer = False

    # --- before the handshake ------------------------------------------------

    def connectionMade(self) -> None:
        send_eagerly(self.transport)
        super().connectionMade()

    def dataReceived(self, data: bytes) -> None:
        """Autobahn buffers the upgrade request without a bound and rescans it on every
        read; refuse it once it passes ``max_request_bytes`` without ending."""
        if self._request_refused:
            return
        if self._check_peer and not self._peer_allowed():
            return
        if self.state == self.STATE_CONNECTING:
            limit = self.factory.config.max_request_bytes
            pending = len(self.data) + len(data)
            if pending > limit and (self.data + data).find(_END_OF_REQUEST, 0, limit + 4) < 0:
                self._request_refused = True
                self._refuse("request too large", f"upgrade request over {limit} bytes")
                self.transport.write(_TOO_LARGE)
                self.transport.loseConnection()
                return
        super().dataReceived(data)

    def _peer_allowed(self) -> bool:
        """The allow-list on the proxied address (the PROXY header's source)."""
        self._check_peer = False
        addr = self.transport.getPeer()
        self.peer = peer2str(self.transport)  # Autobahn took the balancer's at connectionMade
        if _allowed(addr, self.factory.allowed_networks):
            return True
        self._request_refused = True
        self.factory.metrics.sockets_refused.labels("address not allowed").inc()
        log.warn("refused connection from {peer} (through the load balancer): address not "
                 "allowed", peer=printable(str(getattr(addr, "host", addr))))
        self.transport.abortConnection()
        return False

    def connectionLost(self, reason: Failure = ConnectionDone) -> None:  # type: ignore[assignment]
        if self._counted:
            self._counted = False
            self.factory.connections -= 1
        super().connectionLost(reason)

    def _refuse(self, why: str, detail: str = "", path: str = "") -> None:
        self.factory.metrics.sockets_refused.labels(why).inc()
        log.warn("refused socket from {peer}{on}: {why}", peer=printable(self.peer),
                 on=f" on {printable(path)}" if path else "", why=detail or why)

    # --- handshake -----------------------------------------------------------

    def onConnect(self, request: ConnectionRequest) -> str | None:
        c = self.factory.config
        why = self._refusal(request)
        if why is not None:
            status, reason = why
            self._refuse(reason, path=request.path)
            raise ConnectionDeny(status, reason)
        _ok, path_id = match_path(request.path, c.paths)
        self._request_path = request.path
        self._provisional_id = path_id or str(uuid.uuid4())
        # mod_audio_fork may ask for a subprotocol; refusing it fails the call.
        return request.protocols[0] if request.protocols else None

    def _refusal(self, request: ConnectionRequest) -> tuple[int, str] | None:
        host, c = self.factory.host, self.factory.config
        if not host.accepting:
            return 503, "node is draining"
        if not match_path(request.path, c.paths)[0]:
            return 404, "unknown path"
        if c.auth_token:
            given = (request.params.get("token") or [""])[0]
            header = request.headers.get("authorization", "")
            if header.lower().startswith("bearer "):
                given = header[7:].strip()
            if not hmac.compare_digest(given.encode(), c.auth_token.encode()):
                return 401, "bad or missing token"
        # After auth, so that an unauthenticated peer learns nothing of the load.
        if host.open_sockets >= c.max_sockets:
            return 503, "node at its socket limit"
        if host.awaiting_start >= c.max_awaiting_start:
            return 503, "too many sockets awaiting a start message"
        return None

    # --- frames ----------------------------------------------------------------

    def onOpen(self) -> None:
        f = self.factory
        self._timers: dict[str, IDelayedCall] = {}
        self._closing_by_core = False
        self._write_watch = _WriteWatch()
        self.transport.registerProducer(self._write_watch, True)
        self.call = Call(f.config.call, provisional_id=self._provisional_id,
                         reply_topic=f.config.commands_topic,
                         request_path=self._request_path, budget=f.budget)
        f.host.socket_opened(self)
        self._run(self.call.opened(f.clock.seconds()))

    def onMessageEnd(self) -> None:
        """Autobahn's, less its "message" event: that fires a Deferred and two callbacks per
        frame for listeners registered with ``on("message")``, and the gateway has none."""
        if not self.failedByMe:
            self._onMessage(b"".join(self.message_data), self.message_is_binary)
        self.message_data = None

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        call = self.call
        if call is None:
            return
        f = self.factory
        now = f.clock.seconds()
        metrics = f.metrics
        metrics.bytes_in.inc(len(payload))
        if isBinary:
            metrics.frames_in_binary.inc()
            self._run(call.on_binary(payload, now))
            return
        metrics.frames_in_text.inc()
        # Autobahn has already refused invalid UTF-8 in text frames.
        self._run(call.on_text(payload.decode("utf-8"), now))

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        call = self.call
        if call is None:
            return  # the handshake was refused
        f = self.factory
        now = f.clock.seconds()
        effects: list[m.Effect] = []
        if self.failedByMe and not self._closing_by_core:
            # Autobahn refused a frame itself (too big, bad UTF-8, bad framing).
            # The reason it sent in its close frame says what was wrong.
            sent = (self.localCloseReason or b"").decode("utf-8", "replace")
            why = sent or self.wasNotCleanReason or "invalid frame"
            code = self.localCloseCode or CloseCode.PROTOCOL_ERROR
            log.warn("call {call_id}: {why} (close {code})", call_id=printable(call.call_id),
                     why=printable(why),
                     code=code)
            effects = call.end(m.EndReason.PROTOCOL_ERROR, why, code, now)
        effects += call.on_socket_closed(code, wasClean, now)
        self._run(effects)
        for dc in self._timers.values():
            if dc.active():
                dc.cancel()
        self._timers.clear()
        f.host.socket_closed(self)

    # --- from the node ------------------------------------------------------------

    def command(self, cmd: m.Command) -> None:
        if self.call is not None and self._can_send:
            self._run(self.call.on_command(cmd, self.factory.clock.seconds()))

    def end(self, reason: m.EndReason, detail: str, code: int) -> None:
        if self.call is not None:
            self._run(self.call.end(reason, detail, code, self.factory.clock.seconds()))

    @property
    def _can_send(self) -> bool:
        # Between a close (the provider's, or Autobahn's own refusal) and
        # onClose, Autobahn refuses to send (sendMessage raises Disconnected);
        # onClose will end the call, so commands and timers have nothing to do.
        return self.state == self.STATE_OPEN

    # --- effects --------------------------------------------------------------------

    def _run(self, effects: list[m.Effect]) -> None:
        f = self.factory
        for e in effects:
            if isinstance(e, m.Publish):
                f.host.publish(e.record)
            elif isinstance(e, m.SendText):
                self._send_text(e.text.encode())
            elif isinstance(e, m.PublishOutbound):
                f.host.publish_outbound(e.record)
            elif isinstance(e, m.SetTimer):
                dc = self._timers.get(e.name)
                if dc is not None and dc.active():
                    dc.reset(e.delay)
                else:
                    self._timers[e.name] = f.clock.callLater(e.delay, self._fire, e.name)
            elif isinstance(e, m.CancelTimer):
                dc = self._timers.pop(e.name, None)
                if dc is not None and dc.active():
                    dc.cancel()
            elif isinstance(e, m.CallIdentified):
                # Before the CallStarted that follows: the host ends an older socket
                # of the same call id first, so its CallEnded precedes this start.
                f.host.call_started(self)
            elif isinstance(e, m.TurnMeasured):
                f.metrics.turn_latency.observe(e.latency)
            elif isinstance(e, m.CloseSocket):
                self._closing_by_core = True
                log.info("call {call_id}: closing socket ({code} {reason})",
                         call_id=printable(self.call.call_id) if self.call else "?",
                         code=e.code, reason=printable(e.reason))
                # sendCloseFrame, not sendClose: Autobahn's public method refuses
                # the standard error codes (1002, 1007, 1008, ...) we need to send.
                self.sendCloseFrame(int(e.code), encode_truncate(e.reason, 123))

    def _send_text(self, data: bytes) -> None:
        """One text frame, unless the provider has stopped reading what we send.

        sendFrame, not sendMessage: Autobahn's message limit is the *incoming*
        one (``--max-frame-bytes``) and would refuse our own playAudio frames.
        """
        if self.state != self.STATE_OPEN:
            return
        f = self.factory
        watch = self._write_watch
        if watch.paused:
            watch.written_while_paused += len(data)
            limit = f.config.max_write_buffer_bytes
            if watch.written_while_paused > limit and self.call is not None:
                detail = f"provider stopped reading: over {limit} bytes waiting to be sent"
                log.warn("call {call_id}: {why}", call_id=self.call.call_id, why=detail)
                f.metrics.sockets_not_reading.inc()
                self._run(self.call.end(m.EndReason.PROTOCOL_ERROR, detail,
                                        CloseCode.NOT_READING, f.clock.seconds()))
                # Its close frame would wait behind what it does not read.
                self.transport.abortConnection()
                return
        self.sendFrame(opcode=1, payload=data)
        f.metrics.frames_out.inc()
        f.metrics.bytes_out.inc(len(data))

    def _fire(self, name: str) -> None:
        self._timers.pop(name, None)
        if self.call is not None and self._can_send:
            self._run(self.call.on_timer(name, self.factory.clock.seconds()))


class ProviderFactory(WebSocketServerFactory):
    protocol = ProviderProtocol

    def __init__(self, config: NodeConfig, *, clock: Any, metrics: Metrics, host: CallHost,
                 budget: AudioBudget, handshake_clock: Any = None,
                 url: str = "ws://0.0.0.0") -> None:
        """``clock`` runs the calls' timers; ``handshake_clock``, if given, Autobahn's own
        (opening and closing handshake timeouts), which otherwise use the global reactor."""
        # server=None: no Server header naming Autobahn and its version.
        super().__init__(url, server=None)
        self.noisy = False  # no "Starting/Stopping factory" lines
        self.config, self.clock, self.metrics = config, clock, metrics
        self.host, self.budget = host, budget
        if handshake_clock is not None:
            # Autobahn keeps its timers in a private batched timer built on the global
            # reactor; this one place replaces it.
            self._batched_timer = _ClockTimer(handshake_clock)
        self.connections = 0
        c = config
        self.allowed_networks = c.allowed_networks
        # haproxy:...: the address at accept is the balancer's; the list applies to the
        # proxied one, checked by the protocol when the PROXY header has been read.
        self._behind_proxy = c.listen.startswith("haproxy:")
        self.setProtocolOptions(
            maxFramePayloadSize=c.max_frame_bytes,
            maxMessagePayloadSize=c.max_frame_bytes,
            # No status page, and so no ?redirect= to anywhere: a GET without an
            # upgrade gets 426.
            webStatus=False,
            # Knowlarity's client pings idle sockets itself; we only answer.
            autoPingInterval=0,
            # Refused frames (too big, bad UTF-8, ...) get a close frame with
            # their code (1009, 1007, ...); Autobahn's default drops the TCP
            # connection without one.
            failByDrop=False,
            openHandshakeTimeout=10,
            closeHandshakeTimeout=5,
            # Small frames should leave at once: latency over throughput.
            tcpNoDelay=True,
        )

    def buildProtocol(self, addr: IAddress) -> ProviderProtocol | None:  # type: ignore[override]
        """At TCP accept, before any byte is read: the allow-list and the connection cap.
        Returning None makes Twisted close the connection at once."""
        metrics = self.metrics
        networks = self.allowed_networks
        if networks and not self._behind_proxy and not _allowed(addr, networks):
            metrics.sockets_refused.labels("address not allowed").inc()
            log.warn("refused connection from {peer}: address not allowed",
                     peer=printable(str(getattr(addr, "host", addr))))
            return None
        c = self.config
        if self.connections >= c.max_sockets + c.max_awaiting_start:
            metrics.sockets_refused.labels("connection limit").inc()
            return None
        proto = super().buildProtocol(addr)
        assert isinstance(proto, ProviderProtocol)
        proto._counted = True
        proto._check_peer = self._behind_proxy and bool(networks)
        self.connections += 1
        return proto


class _ClockTimer:
    """Autobahn's batched-timer interface (``call_later``) on a clock of our choosing."""

    def __init__(self, clock: Any) -> None:
        self._clock = clock

    def call_later(self, delay: float, func: Any, *args: Any, **kw: Any) -> Any:
        return self._clock.callLater(delay, func, *args, **kw)


def _allowed(addr: IAddress, networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]
             ) -> bool:
    try:
        ip = ipaddress.ip_address(getattr(addr, "host", ""))
    except ValueError:
        return False  # a UNIX socket or the like: not on any allow-list
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return any(ip in net for net in networks)
