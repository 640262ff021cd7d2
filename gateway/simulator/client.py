"""Places simulated Knowlarity calls: Autobahn's WebSocket client on asyncio.

Importing this module commits the process's Autobahn (through txaio) to
asyncio; a process whose Autobahn already runs on Twisted cannot import it.
``gateway.simulator`` imports it only when a call is placed.
"""

from __future__ import annotations

import asyncio
import random
import ssl
import uuid
from dataclasses import replace

from autobahn.asyncio.websocket import WebSocketClientFactory, WebSocketClientProtocol

from gateway.core import knowlarity
from gateway.core.errors import ProtocolError
from gateway.simulator import model
from gateway.simulator.audio import build_frames, speech_like
from gateway.simulator.model import CallOptions, CallResult

__all__ = ["place_call", "place_calls", "frames_for"]

_NORMAL_CLOSE = 1000
_GRACE_S = 10.0  # on top of every timeout the call can legitimately take


def frames_for(options: CallOptions) -> tuple[bytes, ...]:
    """The binary frames the call sends: ``options.frames`` or its audio cut to size."""
    if options.frames is not None:
        return tuple(options.frames)
    count = round(options.seconds * 1000 / options.frame_ms)
    pcm = options.pcm
    if pcm is None:
        pcm = speech_like(options.sample_rate, options.seconds, options.seed)
    return build_frames(pcm, options.frame_bytes, count)


async def place_call(url: str, options: CallOptions) -> CallResult:
    """Place one call against the gateway at ``url`` and return what happened.

    Never raises for anything the network or the gateway does; that is in the result.
    """
    return await _Call(url, options, frames_for(options)).run()


async def place_calls(
    url: str, options: CallOptions, calls: int, ramp_s: float = 0
) -> list[CallResult]:
    """Place ``calls`` concurrent calls, their starts spread evenly over ``ramp_s`` seconds.

    All calls send the same audio. A given ``options.call_id`` becomes
    ``<call_id>-<i>`` when there is more than one call.
    """
    if calls < 1:
        raise ValueError(f"calls must be at least 1; got {calls}")
    if ramp_s < 0:
        raise ValueError(f"ramp_s must be >= 0; got {ramp_s}")
    shared = replace(options, frames=frames_for(options))  # built once for every call
    loop = asyncio.get_running_loop()
    start = loop.time()

    async def one(i: int) -> CallResult:
        delay = start + i * ramp_s / calls - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        call_options = shared
        if options.call_id is not None and calls > 1:
            call_options = replace(shared, call_id=f"{options.call_id}-{i}")
        return await place_call(url, call_options)

    return list(await asyncio.gather(*(one(i) for i in range(calls))))


class _Protocol(WebSocketClientProtocol):
    def onOpen(self) -> None:
        self.factory.call.on_open(self)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        self.factory.call.on_message(payload, isBinary)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        self.factory.call.on_close(code, reason)


class _Call:
    """The state of one call, driven by the protocol's callbacks and its own timer."""

    def __init__(self, url: str, options: CallOptions, frames: tuple[bytes, ...]) -> None:
        self.url = url
        self.options = options
        self.frames = frames
        self.period = options.frame_ms / 1000
        self.call_id = options.call_id or str(uuid.uuid4())
        self.loop = asyncio.get_running_loop()
        self.done: asyncio.Future[None] = self.loop.create_future()
        self.proto: _Protocol | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.ended: str | None = None
        self.started_at = self.loop.time()
        self.opened_at: float | None = None
        self.t0 = 0.0  # when the start message went out; frame k is due at t0 + k * period
        self.closed_at: float | None = None
        self.first_audio_at: float | None = None
        self.frames_sent = 0
        self.bytes_sent = 0
        self.heard: list[bytes] = []
        self.heard_ms = 0.0
        self.play_frames = 0
        self.binary_frames = 0
        self.undecodable = 0
        self.off_rate = 0
        self.parameters: tuple[tuple[str, str], ...] = ()
        self.close_code: int | None = None
        self.close_reason = ""
        self.events: list[object] = []

    async def run(self) -> CallResult:
        opts = self.options
        try:
            factory = WebSocketClientFactory(
                self.url, protocols=list(opts.subprotocols) or None, loop=self.loop
            )
        except Exception as error:  # autobahn raises plain Exception for a bad URL
            return self._result(model.CONNECT_FAILED, f"bad URL {self.url!r}: {error}")
        factory.protocol = _Protocol
        factory.call = self
        factory.setProtocolOptions(
            openHandshakeTimeout=opts.open_timeout, closeHandshakeTimeout=opts.close_timeout
        )
        tls = None
        if factory.isSecure:
            tls = ssl.create_default_context()
            if not opts.verify_tls:
                tls.check_hostname = False
                tls.verify_mode = ssl.CERT_NONE
        connect = self.loop.create_connection(factory, factory.host, factory.port, ssl=tls)
        try:
            transport, _ = await asyncio.wait_for(connect, opts.open_timeout)
        except (OSError, TimeoutError) as error:
            return self._result(model.CONNECT_FAILED, _describe(error))
        budget = 2 * opts.open_timeout + opts.close_timeout + opts.linger + _GRACE_S
        budget += self._due(len(self.frames))
        try:
            await asyncio.wait_for(asyncio.shield(self.done), budget)
        except TimeoutError:
            self._stop()
            transport.abort()
            return self._result(model.ERROR, f"call still open after {budget:.1f} s; aborted")
        except asyncio.CancelledError:
            self._stop()
            transport.abort()
            raise
        if self.opened_at is None:
            return self._result(model.CONNECT_FAILED, self.close_reason or "handshake failed")
        return self._result(self.ended or model.GATEWAY_CLOSED)

    # --- protocol callbacks -------------------------------------------------

    def on_open(self, proto: _Protocol) -> None:
        opts = self.options
        self.proto = proto
        self.opened_at = self.loop.time()
        text = opts.start_message
        if text is None:
            text = knowlarity.encode_start(
                self.call_id,
                opts.sample_rate,
                opts.caller or _random_mobile(),
                opts.to,
                call_type=opts.call_type,
                campaign=opts.campaign,
            )
        proto.sendMessage(text.encode("utf-8"), isBinary=False)
        self.t0 = self.loop.time()
        if self.frames:
            self._send_next()
        else:
            self.timer = self.loop.call_at(self.t0 + opts.linger, self._caller_hangs_up)

    def on_message(self, payload: bytes, is_binary: bool) -> None:
        if is_binary:
            self.binary_frames += 1
            return
        now = self.loop.time()
        try:
            # Autobahn has already checked that a text frame is valid UTF-8.
            frame = knowlarity.decode_gateway_frame(
                payload.decode("utf-8"), call_sample_rate=self.options.sample_rate
            )
        except ProtocolError:
            self.undecodable += 1
            return
        self.events.append(frame)
        if isinstance(frame, knowlarity.PlayFrame):
            self.play_frames += 1
            if self.first_audio_at is None:
                self.first_audio_at = now
            self.heard.append(frame.pcm)
            self.heard_ms += len(frame.pcm) * 500 / frame.sample_rate
            if frame.sample_rate != self.options.sample_rate:
                self.off_rate += 1
        elif isinstance(frame, knowlarity.HangUpFrame):
            self._end(model.BOT_HANGUP)
        elif isinstance(frame, knowlarity.TransferFrame):
            if self.ended is None:
                self.parameters = frame.parameters
            self._end(model.TRANSFERRED)

    def on_close(self, code: int | None, reason: str | None) -> None:
        self._stop()
        self.closed_at = self.loop.time()
        self.close_code = code
        self.close_reason = reason or ""
        if not self.done.done():
            self.done.set_result(None)

    # --- streaming and hanging up ------------------------------------------

    def _send_next(self) -> None:
        self.timer = None
        proto = self.proto
        if self.ended is not None or proto is None or proto.state != proto.STATE_OPEN:
            return  # the gateway is closing the socket: its close decides the end
        k = self.frames_sent
        frame = self.frames[k]
        proto.sendMessage(frame, isBinary=True)
        self.frames_sent = k + 1
        self.bytes_sent += len(frame)
        if k + 1 < len(self.frames):
            self.timer = self.loop.call_at(self.t0 + self._due(k + 1), self._send_next)
        else:
            # The caller stops talking when the last frame's audio is over, then lingers.
            stream_end = self.t0 + self._due(k) + len(frame) / 2 / self.options.sample_rate
            self.timer = self.loop.call_at(stream_end + self.options.linger, self._caller_hangs_up)

    def _due(self, k: int) -> float:
        """Seconds after the start message that frame k goes out (k = len: the end)."""
        offsets = self.options.frame_offsets_s
        if offsets is None:
            return k * self.period
        if k < len(offsets):
            return offsets[k]
        if not offsets:
            return 0.0
        return offsets[-1] + len(self.frames[-1]) / 2 / self.options.sample_rate

    def _caller_hangs_up(self) -> None:
        self.timer = None
        self._end(model.CALLER_HANGUP)

    def _end(self, how: str) -> None:
        """Close the socket as the provider does, once, whoever ended the call."""
        if self.ended is not None:
            return
        proto = self.proto
        if proto is None or proto.state != proto.STATE_OPEN:
            return  # the gateway closed first; on_close records that
        self.ended = how
        self._stop()
        proto.sendClose(code=_NORMAL_CLOSE)

    def _stop(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _result(self, ended: str, error: str = "") -> CallResult:
        end = self.closed_at if self.closed_at is not None else self.loop.time()
        began = self.opened_at if self.opened_at is not None else self.started_at
        first_audio = None
        if self.first_audio_at is not None:
            first_audio = (self.first_audio_at - self.t0) * 1000
        return CallResult(
            call_id=self.call_id,
            ended=ended,
            sample_rate=self.options.sample_rate,
            connected=self.opened_at is not None,
            frames_sent=self.frames_sent,
            bytes_sent=self.bytes_sent,
            audio_received_ms=self.heard_ms,
            play_frames=self.play_frames,
            duration_s=end - began,
            time_to_first_audio_ms=first_audio,
            transfer_parameters=self.parameters,
            close_code=self.close_code,
            close_reason=self.close_reason,
            error=error,
            binary_frames=self.binary_frames,
            undecodable_frames=self.undecodable,
            off_rate_play_frames=self.off_rate,
            heard_pcm=b"".join(self.heard),
            sent_pcm=b"".join(self.frames[: self.frames_sent]),
            events=self.events,
        )


def _random_mobile() -> str:
    return f"+91{random.randint(6, 9)}{random.randrange(10**9):09d}"


def _describe(error: BaseException) -> str:
    if isinstance(error, TimeoutError):
        return "timed out connecting"
    return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
