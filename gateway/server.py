"""The Autobahn adapter: one provider socket in, the per-call core's effects out.

Thin on purpose: the handshake (path, optional auth, subprotocol) is decided
here; every frame goes to ``gateway.core.call.Call`` and what it returns is
carried out. No Knowlarity JSON is read or written in this module.
"""

from __future__ import annotations

import hmac
import ipaddress
import uuid
from typing import TYPE_CHECKING

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.util import encode_truncate
from autobahn.websocket.types import ConnectionDeny, ConnectionRequest
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger

from gateway.core import model as m
from gateway.core.call import Call, State
from gateway.core.errors import CloseCode
from gateway.paths import match_path

if TYPE_CHECKING:
    from gateway.node import Node

log = Logger()


class ProviderProtocol(WebSocketServerProtocol):
    factory: ProviderFactory
    call: Call | None = None

    # --- handshake -----------------------------------------------------------

    def onConnect(self, request: ConnectionRequest) -> str | None:
        node = self.factory.node
        c = node.config
        why = self._refusal(request)
        if why is not None:
            status, reason = why
            node.metrics.sockets_refused.labels(reason).inc()
            log.warn("refused socket from {peer} on {path}: {why}", peer=request.peer,
                     path=request.path, why=reason)
            raise ConnectionDeny(status, reason)
        _ok, path_id = match_path(request.path, c.paths)
        self._request_path = request.path
        self._provisional_id = path_id or str(uuid.uuid4())
        # mod_audio_fork may ask for a subprotocol; refusing it fails the call.
        return request.protocols[0] if request.protocols else None

    def _refusal(self, request: ConnectionRequest) -> tuple[int, str] | None:
        node = self.factory.node
        c = node.config
        if not node.accepting:
            return 503, "node is draining"
        if not match_path(request.path, c.paths)[0]:
            return 404, "unknown path"
        if c.allow_from:
            host = self.transport.getPeer().host
            try:
                addr = ipaddress.ip_address(host)
            except ValueError:
                return 403, "peer address not allowed"
            if not any(addr in net for net in c.allow_from):
                return 403, "peer address not allowed"
        if c.auth_token:
            given = (request.params.get("token") or [""])[0]
            header = request.headers.get("authorization", "")
            if header.lower().startswith("bearer "):
                given = header[7:].strip()
            if not hmac.compare_digest(given.encode(), c.auth_token.encode()):
                return 401, "bad or missing token"
        return None

    # --- frames ----------------------------------------------------------------

    def onOpen(self) -> None:
        node = self.factory.node
        self._timers: dict[str, IDelayedCall] = {}
        self._closing_by_core = False
        self.call = Call(node.config.call, provisional_id=self._provisional_id,
                         reply_topic=node.config.commands_topic,
                         request_path=self._request_path)
        node.socket_opened(self)
        self._run(self.call.opened(node.clock.seconds()))

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        call = self.call
        if call is None:
            return
        node = self.factory.node
        now = node.clock.seconds()
        metrics = node.metrics
        metrics.bytes_in.inc(len(payload))
        if isBinary:
            metrics.frames_in_binary.inc()
            self._run(call.on_binary(payload, now))
            return
        metrics.frames_in_text.inc()
        # Autobahn has already refused invalid UTF-8 in text frames.
        text = payload.decode("utf-8")
        awaiting = call.state is State.AWAITING_START
        effects = call.on_text(text, now)
        if awaiting and call.state is not State.AWAITING_START and call.end_reason is None:
            # Started: the call id is known. An older socket with the same id is
            # ended first, so its CallEnded precedes this CallStarted on the bus.
            node.call_started(self)
        self._run(effects)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        call = self.call
        if call is None:
            return  # the handshake was refused
        node = self.factory.node
        now = node.clock.seconds()
        effects: list[m.Effect] = []
        if self.failedByMe and not self._closing_by_core:
            # Autobahn refused a frame itself (too big, bad UTF-8, bad framing).
            # The reason it sent in its close frame says what was wrong.
            sent = (self.localCloseReason or b"").decode("utf-8", "replace")
            why = sent or self.wasNotCleanReason or "invalid frame"
            code = self.localCloseCode or CloseCode.PROTOCOL_ERROR
            log.warn("call {call_id}: {why} (close {code})", call_id=call.call_id, why=why,
                     code=code)
            effects = call.end(m.EndReason.PROTOCOL_ERROR, why, code, now)
        effects += call.on_socket_closed(code, wasClean, now)
        self._run(effects)
        for dc in self._timers.values():
            if dc.active():
                dc.cancel()
        self._timers.clear()
        node.socket_closed(self)

    # --- from the node ------------------------------------------------------------

    def command(self, cmd: m.Command) -> None:
        if self.call is not None and self._can_send:
            self._run(self.call.on_command(cmd, self.factory.node.clock.seconds()))

    def end(self, reason: m.EndReason, detail: str, code: int) -> None:
        if self.call is not None:
            self._run(self.call.end(reason, detail, code, self.factory.node.clock.seconds()))

    @property
    def _can_send(self) -> bool:
        # Between a close (the provider's, or Autobahn's own refusal) and
        # onClose, Autobahn refuses to send (sendMessage raises Disconnected);
        # onClose will end the call, so commands and timers have nothing to do.
        return self.state == self.STATE_OPEN

    # --- effects --------------------------------------------------------------------

    def _run(self, effects: list[m.Effect]) -> None:
        node = self.factory.node
        for e in effects:
            if isinstance(e, m.Publish):
                node.publish(e.record)
            elif isinstance(e, m.SendText):
                data = e.text.encode()
                self.sendMessage(data, isBinary=False)
                node.metrics.frames_out.inc()
                node.metrics.bytes_out.inc(len(data))
            elif isinstance(e, m.PublishOutbound):
                node.bus.publish_outbound(e.record)
            elif isinstance(e, m.SetTimer):
                dc = self._timers.get(e.name)
                if dc is not None and dc.active():
                    dc.reset(e.delay)
                else:
                    self._timers[e.name] = node.clock.callLater(e.delay, self._fire, e.name)
            elif isinstance(e, m.CancelTimer):
                dc = self._timers.pop(e.name, None)
                if dc is not None and dc.active():
                    dc.cancel()
            elif isinstance(e, m.CloseSocket):
                self._closing_by_core = True
                log.info("call {call_id}: closing socket ({code} {reason})",
                         call_id=self.call.call_id if self.call else "?", code=e.code,
                         reason=e.reason)
                # sendCloseFrame, not sendClose: Autobahn's public method refuses
                # the standard error codes (1002, 1007, 1008, ...) we need to send.
                self.sendCloseFrame(int(e.code), encode_truncate(e.reason, 123))

    def _fire(self, name: str) -> None:
        self._timers.pop(name, None)
        if self.call is not None and self._can_send:
            self._run(self.call.on_timer(name, self.factory.node.clock.seconds()))


class ProviderFactory(WebSocketServerFactory):
    protocol = ProviderProtocol

    def __init__(self, node: Node, url: str = "ws://0.0.0.0") -> None:
        super().__init__(url)
        self.noisy = False  # no "Starting/Stopping factory" lines
        self.node = node
        c = node.config
        self.setProtocolOptions(
            maxFramePayloadSize=c.max_frame_bytes,
            maxMessagePayloadSize=c.max_frame_bytes,
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
