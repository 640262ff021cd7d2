"""A lean Knowlarity load generator: many calls per process, cheap per frame.

The general simulator (``gateway.simulator``, Autobahn) costs several times
more CPU per frame, which on a small shared machine makes it the bottleneck of
a benchmark. This one is asyncio with a minimal RFC 6455 client written here
on plain non-blocking sockets (no Autobahn, no Twisted, no asyncio transports):

- every call connects, checks the ``101`` and ``Sec-WebSocket-Accept``, sends
  the documented start message (``encode_start``, a uuid4 call id), then
  streams 20 ms frames of 16 kHz PCM (640 bytes) for ``seconds``;
- a frame's PCM is a fixed noise template whose first 8 bytes are a stamp:
  the send time in µs since the epoch, int64 little-endian, read right before
  the write. Each call's masked frame (one random mask key per connection) is
  built once; per frame only the 8 stamp bytes are masked (one integer XOR)
  and joined to the prebuilt parts;
- ONE scheduler per process drives everything in ticks (``tick_ms``, 1 ms by
  default): each tick reads every socket that has data (one private epoll,
  polled without waiting) and sends every frame now due (a heap of due
  times). Call ``i``'s frame ``k`` is due at ``t0_i + k * 20 ms``, ``t0_i``
  uniformly random in the 20 ms after its handshake (random phases); call
  starts can be spread over ``ramp`` s. The event loop wakes about once per
  tick whatever the number of calls, instead of once per frame;
- receive times are the kernel's (``SO_TIMESTAMPNS``), so a read deferred to
  the next tick, or a generator process not scheduled at once, does not add
  to the measured latency (``read_delay_ms`` reports how late reads were);
- ``playAudio`` frames from the gateway are not JSON-parsed: the base64
  content is located by ``find`` and only the 16 characters around each
  stamp are decoded. A clip holding several 640-byte chunks (the gateway joins
  queued bot audio up to ``--playout-clip-ms``) yields one stamp per chunk.
  latency = receive time - stamp; the stamp bot writes its own send time
  there, so this is bot -> Kafka -> gateway -> caller;
- a hang-up or transfer frame makes the call close with 1000, as the provider
  does; after its last frame a call lingers until every chunk it sent has come
  back (or ``linger`` s), then hangs up with 1000.

``python -m gateway.bench.loadgen --url URL --calls N --seconds S --json``
prints one JSON object as its last line; ``--procs P`` runs P child processes
and aggregates them (latency percentiles over all their samples).
``run_load`` is the same, in-process, for one process. Linux only (epoll,
SO_TIMESTAMPNS); ws:// only.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import contextlib
import hashlib
import heapq
import json
import os
import random
import resource
import select
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import urllib.parse
import uuid
from array import array
from typing import Any

from gateway.core.knowlarity import encode_start

__all__ = ["run_load", "noise_template", "summarize", "main"]

SAMPLE_RATE = 16000
FRAME_BYTES = 640  # 20 ms of s16le mono at 16 kHz
PERIOD_US = 20_000
STAMP_BYTES = 8
LATE_US = 5_000  # a frame sent later than this after its due time counts as late
WAV_HEADER_BYTES = 44
MAX_LATENCY_US = 600_000_000  # a "stamp" further off than this is not one
MAX_MESSAGE_BYTES = 16 << 20
MAX_ERRORS = 20
OPEN_TIMEOUT_S = 10.0
CLOSE_TIMEOUT_S = 5.0
LINGER_S = 2.0
TICK_MS = 1.0  # the scheduler's period: reads and due frames are handled once per tick

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)  # Linux; the module lacks the name
_TIMESPEC = struct.Struct("@qq")  # struct timespec on 64-bit Linux
_ANCILLARY_BYTES = socket.CMSG_SPACE(_TIMESPEC.size)
_AUDIO_KEY = b'"audioContent":"'
_AUDIO_KEY_LEN = len(_AUDIO_KEY)
_EQ = ord("=")

_CONNECTING, _OPEN, _CLOSING, _CLOSED = range(4)

# How a call ended.
COMPLETED = "completed"  # streamed everything, then hung up with 1000
HUNG_UP = "hung_up"  # the gateway sent a hang-up or transfer frame
SERVER_CLOSED = "server_closed"  # the gateway closed the socket first
LOST = "lost"  # TCP went away without a close handshake
PROTOCOL_ERROR = "protocol_error"  # the gateway broke RFC 6455; closed with 1002/1009
FAILED = "failed"  # never connected (TCP, HTTP or handshake)
STOPPED = "stopped"  # stopped early (signal)


def noise_template(seed: int = 20240607) -> bytes:
    """640 bytes of loud-ish noise (about -14 dBFS RMS): the PCM of every frame."""
    rng = random.Random(seed)
    samples = array("h", (rng.randint(-12000, 12000) for _ in range(FRAME_BYTES // 2)))
    if sys.byteorder != "little":
        samples.byteswap()
    return samples.tobytes()


def _mask(data: bytes, key: bytes) -> bytes:
    """RFC 6455 masking by one big-integer XOR (no per-byte Python loop)."""
    n = len(data)
    if not n:
        return b""
    keys = (key * (n // 4 + 1))[:n]
    return (int.from_bytes(data, "little") ^ int.from_bytes(keys, "little")).to_bytes(n, "little")


def _client_frame(opcode: int, payload: bytes, key: bytes) -> bytes:
    n = len(payload)
    if n < 126:
        head = bytes((0x80 | opcode, 0x80 | n))
    elif n < 65536:
        head = bytes((0x80 | opcode, 0xFE)) + n.to_bytes(2, "big")
    else:
        head = bytes((0x80 | opcode, 0xFF)) + n.to_bytes(8, "big")
    return head + key + _mask(payload, key)


def _accept_for(key: bytes) -> str:
    return base64.b64encode(hashlib.sha1(key + _GUID).digest()).decode("ascii")


class _Target:
    """Where to connect, from a ws:// URL."""

    def __init__(self, url: str) -> None:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme == "wss":
            raise ValueError("wss:// is not supported (plain sockets, no TLS); use ws://")
        if parts.scheme != "ws" or not parts.hostname:
            raise ValueError(f"not a ws:// URL: {url!r}")
        self.host = parts.hostname
        self.port = parts.port or 80
        host = f"[{self.host}]" if ":" in self.host else self.host
        self.host_header = host if self.port == 80 else f"{host}:{self.port}"
        self.path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")


class _Call:
    """One call: a non-blocking socket, its handshake, frame parser and close handshake.

    No asyncio transport: the scheduler's tick calls ``_readable`` when the
    socket has data (read with ``recvmsg_into`` into the process's one receive
    buffer, with the kernel's receive timestamp) and writes frames with
    ``socket.send``; only bytes the kernel refuses are buffered here (and
    written from the event loop's writer callback).
    """

    def __init__(self, gen: _Gen, index: int) -> None:
        self.gen = gen
        self.index = index
        self.call_id = str(uuid.uuid4())
        self.key = os.urandom(4)  # this connection's mask key, for every frame it sends
        self.mask64 = int.from_bytes(self.key * 2, "little")
        self.ws_key = base64.b64encode(os.urandom(16))
        self.sock: socket.socket | None = None
        self.fd = -1
        self.out = bytearray()  # bytes the kernel did not take yet
        self.close_when_flushed = False
        self.state = _CONNECTING
        self.hs_buf = bytearray()
        self.buf: bytearray | bytes = b""  # a partial frame left from the last read
        self.frag_op = 0
        self.frags: list[bytes] = []
        self.frag_bytes = 0
        self.head = b""  # frame header + mask key
        self.tail = b""  # the masked template after the stamp
        self.t0_us = 0
        self.warm_until_us = 0
        self.n_frames = gen.n_frames
        self.frames_sent = 0
        self.streamed = False
        self.play_frames = 0
        self.play_chunks = 0
        self.ended = ""
        self.connected = False  # the handshake succeeded
        self.close_code: int | None = None  # the code the gateway sent, if it closed
        self.timer: asyncio.TimerHandle | None = None
        self.done: asyncio.Future[None] = gen.loop.create_future()

    # --- the socket -------------------------------------------------------------

    async def connect(self, family: int, address: Any) -> None:
        """Connect and send the upgrade request; raises OSError or TimeoutError."""
        gen = self.gen
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if gen.kernel_stamps:
                try:
                    sock.setsockopt(socket.SOL_SOCKET, _SO_TIMESTAMPNS, 1)
                except OSError:
                    gen.kernel_stamps = False
            await asyncio.wait_for(gen.loop.sock_connect(sock, address), gen.open_timeout)
        except BaseException:
            sock.close()
            raise
        if self.state != _CONNECTING:  # stopped while connecting
            sock.close()
            return
        self.sock = sock
        self.fd = sock.fileno()
        gen.watch(self)
        t = gen.target
        request = (
            f"GET {t.path} HTTP/1.1\r\nHost: {t.host_header}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {self.ws_key.decode()}\r\n"
            "Sec-WebSocket-Version: 13\r\nUser-Agent: kgw-loadgen\r\n\r\n"
        )
        self.timer = gen.loop.call_later(gen.open_timeout, self._open_timed_out)
        self._send(request.encode("ascii"))

    def _readable(self) -> None:
        gen = self.gen
        sock = self.sock
        assert sock is not None
        try:
            n, ancillary, _, _ = sock.recvmsg_into(gen.rxbufs, _ANCILLARY_BYTES)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as e:
            self._teardown(e)
            return
        if not n:
            self._teardown(None)  # EOF
            return
        now = time.time_ns() // 1000
        if ancillary:
            # The only control message asked for: SCM_TIMESTAMPNS, a struct timespec.
            sec, ns = _TIMESPEC.unpack_from(ancillary[0][2])
            rx = sec * 1_000_000 + ns // 1000
            gen.read_delays.append(now - rx)
        else:
            rx = now
        self._received(n, rx)

    def _received(self, n: int, rx: int) -> None:
        """``n`` bytes were read into the shared buffer, received at ``rx`` µs."""
        gen = self.gen
        if self.state == _CONNECTING:
            self._handshake(bytes(gen.rxview[:n]))
        elif self.buf:
            self.buf += gen.rxview[:n]
            self._parse(self.buf, len(self.buf), rx)
        else:
            self._parse(gen.rxbuf, n, rx)

    def _send(self, data: bytes) -> None:
        if self.state == _CLOSED:
            return
        if self.out:
            self.out += data
            return
        try:
            n = self.sock.send(data)  # type: ignore[union-attr]
        except (BlockingIOError, InterruptedError):
            n = 0
        except OSError as e:
            self._teardown(e)
            return
        if n < len(data):
            self._keep(data, n)

    def _keep(self, data: bytes, sent: int) -> None:
        """Hold what the kernel did not take and write it when the socket is writable."""
        self.out += memoryview(data)[sent:]
        self.gen.loop.add_writer(self.fd, self._writable)

    def _writable(self) -> None:
        try:
            n = self.sock.send(self.out)  # type: ignore[union-attr]
        except (BlockingIOError, InterruptedError):
            return
        except OSError as e:
            self._teardown(e)
            return
        gen = self.gen
        gen.max_unsent = max(gen.max_unsent, len(self.out))
        del self.out[:n]
        if not self.out:
            gen.loop.remove_writer(self.fd)
            if self.close_when_flushed:
                self._teardown(None)

    def _finish(self) -> None:
        """Close the socket once what is queued has been written."""
        if self.out:
            self.close_when_flushed = True
        else:
            self._teardown(None)

    def _teardown(self, exc: BaseException | None) -> None:
        if self.state == _CLOSED:
            return
        prior = self.state
        self.state = _CLOSED
        self._cancel_timer()
        if self.sock is not None:
            self.gen.unwatch(self)
            if self.out:
                self.gen.loop.remove_writer(self.fd)
            self.sock.close()
        if not self.ended:
            if prior == _CONNECTING:
                self.ended = FAILED
                self.gen.error(f"connection lost during the handshake: {exc or 'EOF'}")
            else:
                self.ended = LOST
                self.gen.error(f"connection lost without a close: {exc or 'EOF'}")
        if not self.done.done():
            self.done.set_result(None)

    def _parse(self, buf: bytearray, n: int, rx: int) -> None:
        """Handle the whole frames in ``buf[:n]``; keep the rest for the next read."""
        pos = 0
        while n - pos >= 2:
            b1 = buf[pos + 1]
            length = b1 & 0x7F
            hdr = 2
            if length == 126:
                if n - pos < 4:
                    break
                length = (buf[pos + 2] << 8) | buf[pos + 3]
                hdr = 4
            elif length == 127:
                if n - pos < 10:
                    break
                length = int.from_bytes(buf[pos + 2:pos + 10], "big")
                hdr = 10
            if b1 & 0x80:
                self._protocol_error("masked frame from the server")
                return
            if length > MAX_MESSAGE_BYTES:
                self._protocol_error(f"frame of {length} bytes", 1009)
                return
            end = pos + hdr + length
            if end > n:
                break
            b0 = buf[pos]
            start = pos + hdr
            pos = end
            if b0 == 0x81 and not self.frag_op:
                self._on_text(buf, start, end, rx)  # the hot path: a whole text frame, in place
            else:
                self._on_frame(b0, bytes(buf[start:end]), rx)
            if self.state == _CLOSED:
                return
        self.buf = bytearray(buf[pos:n]) if pos < n else b""

    # --- handshake ------------------------------------------------------------

    def _handshake(self, data: bytes) -> None:
        self.hs_buf += data
        end = self.hs_buf.find(b"\r\n\r\n")
        if end < 0:
            if len(self.hs_buf) > 16384:
                self._fail("HTTP response header too long")
            return
        head = bytes(self.hs_buf[:end]).decode("latin-1")
        rest = bytes(self.hs_buf[end + 4:])
        self.hs_buf = bytearray()
        lines = head.split("\r\n")
        status = lines[0].split(" ", 2)
        if len(status) < 2 or status[1] != "101":
            self._fail(f"handshake refused: {lines[0][:120]!r}")
            return
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        if headers.get("upgrade", "").lower() != "websocket":
            self._fail(f"handshake: Upgrade is {headers.get('upgrade')!r}")
            return
        if "upgrade" not in headers.get("connection", "").lower():
            self._fail(f"handshake: Connection is {headers.get('connection')!r}")
            return
        if headers.get("sec-websocket-accept") != _accept_for(self.ws_key):
            self._fail("handshake: wrong Sec-WebSocket-Accept")
            return
        self._cancel_timer()
        self._opened()
        if rest and self.state == _OPEN:
            self.buf = bytearray(rest)
            self._parse(self.buf, len(self.buf), time.time_ns() // 1000)

    def _opened(self) -> None:
        gen = self.gen
        self.state = _OPEN
        self.connected = True
        self.head = b"\x82\xfe" + FRAME_BYTES.to_bytes(2, "big") + self.key
        self.tail = _mask(gen.template, self.key)[STAMP_BYTES:]
        start = encode_start(self.call_id, SAMPLE_RATE, f"+9198{self.index:08d}", "+918000000000")
        self._send(_client_frame(0x1, start.encode("utf-8"), self.key))
        gen.opened(self)
        if gen.stopping:
            self.stop()

    def _open_timed_out(self) -> None:
        self.timer = None
        if self.state == _CONNECTING:
            self._fail(f"no handshake within {self.gen.open_timeout:g} s")

    def _fail(self, why: str) -> None:
        self.ended = FAILED
        self.gen.error(why)
        self._teardown(None)

    # --- frames from the server ----------------------------------------------------

    def _on_frame(self, b0: int, payload: bytes, rx: int) -> None:
        op = b0 & 0x0F
        fin = b0 & 0x80
        if b0 & 0x70:
            self._protocol_error("reserved bits set (no extension was negotiated)")
            return
        if op >= 0x8:
            if not fin or len(payload) > 125:
                self._protocol_error("fragmented or oversized control frame")
            elif op == 0x9:  # ping
                if self.state == _OPEN:
                    self._send(_client_frame(0xA, payload, self.key))
            elif op == 0x8:
                self._on_close(payload)
            elif op != 0xA:
                self._protocol_error(f"unknown control opcode {op}")
            return
        if op == 0x0:
            if not self.frag_op:
                self._protocol_error("continuation frame without a start")
                return
            self.frags.append(bytes(payload))
            self.frag_bytes += len(payload)
            if self.frag_bytes > MAX_MESSAGE_BYTES:
                self._protocol_error("fragmented message too large", 1009)
                return
            if fin:
                op, message = self.frag_op, b"".join(self.frags)
                self.frag_op, self.frags, self.frag_bytes = 0, [], 0
                self._on_message(op, message, rx)
            return
        if self.frag_op:
            self._protocol_error("new message inside a fragmented one")
            return
        if op not in (0x1, 0x2):
            self._protocol_error(f"unknown opcode {op}")
            return
        if not fin:
            self.frag_op, self.frags, self.frag_bytes = op, [bytes(payload)], len(payload)
            return
        self._on_message(op, payload, rx)

    def _on_message(self, op: int, message: bytes, rx: int) -> None:
        if op == 0x1:
            self._on_text(message, 0, len(message), rx)
        else:
            self.gen.binary_frames += 1  # the gateway must never send binary

    def _on_text(self, msg: bytes | bytearray, a: int, b: int, rx: int) -> None:
        """A text message, ``msg[a:b]``, received at ``rx`` (µs since the epoch).

        playAudio frames are not JSON-parsed: the base64 content is found with
        ``find`` and only the 16 characters around each stamp are decoded.
        """
        gen = self.gen
        i = msg.find(_AUDIO_KEY, a, b)
        if i < 0 or msg.find(b'"playAudio"', a, i) < 0:
            gen.other_text += 1
            return
        s = i + _AUDIO_KEY_LEN
        if msg.startswith(b'None"', s, b):
            if msg.find(b'"asr_disconnect=true', s, b) >= 0:
                gen.hangup_frames += 1
                if self.state == _OPEN:
                    self.ended = HUNG_UP
                    self._close(1000)
            else:
                gen.other_text += 1
            return
        e = msg.find(b'"', s, b)
        if e < 0 or (e - s) % 4:
            gen.bad_play += 1
            return
        self.play_frames += 1
        size = (e - s) // 4 * 3 - (msg[e - 1] == _EQ) - (msg[e - 2] == _EQ)
        p = WAV_HEADER_BYTES if msg.find(b'"wave"', a, i) >= 0 else 0
        pcm = size - p
        if pcm > 0:
            self.play_chunks += (pcm + FRAME_BYTES - 1) // FRAME_BYTES
            if rx >= self.warm_until_us:
                lat = gen.lat
                a2b = binascii.a2b_base64
                last = size - STAMP_BYTES
                while p <= last:
                    g = p // 3
                    c = s + 4 * g
                    r = p - 3 * g
                    try:
                        raw = a2b(msg[c:min(c + 16, e)])
                    except (binascii.Error, ValueError):
                        gen.bad_play += 1
                        break
                    d = rx - int.from_bytes(raw[r:r + STAMP_BYTES], "little")
                    if 0 <= d < MAX_LATENCY_US:
                        lat.append(d / 1000.0)
                    else:
                        gen.bad_stamps += 1
                    p += FRAME_BYTES
        if self.streamed and self.play_chunks >= self.frames_sent and self.state == _OPEN:
            self.ended = COMPLETED
            self._close(1000)

    def _on_close(self, payload: bytes) -> None:
        code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
        if self.state == _OPEN:
            # The gateway closed first: answer with its code, as the RFC asks.
            self.close_code = code
            if not self.ended:
                self.ended = SERVER_CLOSED
            self.state = _CLOSING
            self._send(_client_frame(0x8, payload[:2], self.key))
        self._finish()

    # --- ending -----------------------------------------------------------------

    def stream_done(self) -> None:
        """Called by the scheduler after the last frame: wait for the echoes, then hang up."""
        self.streamed = True
        if self.play_chunks >= self.frames_sent:
            self.ended = COMPLETED
            self._close(1000)
        else:
            self.timer = self.gen.loop.call_later(self.gen.linger, self._linger_over)

    def _linger_over(self) -> None:
        self.timer = None
        if self.state == _OPEN:
            self.ended = COMPLETED
            self._close(1000)

    def stop(self) -> None:
        """End the call now (the run was interrupted)."""
        if self.state == _OPEN:
            self.ended = self.ended or STOPPED
            self._close(1000)
        elif self.state == _CONNECTING:
            self._fail("stopped before the handshake completed")

    def _protocol_error(self, why: str, code: int = 1002) -> None:
        self.gen.error(f"protocol error from the server: {why}")
        if self.state == _OPEN:
            self.ended = self.ended or PROTOCOL_ERROR
            self._close(code)
        else:
            self._teardown(None)

    def _close(self, code: int) -> None:
        """Start the close handshake; the socket closes when the server answers."""
        if self.state != _OPEN:
            return
        self.state = _CLOSING
        self._cancel_timer()
        self._send(_client_frame(0x8, code.to_bytes(2, "big"), self.key))
        if self.state == _CLOSING:
            self.timer = self.gen.loop.call_later(CLOSE_TIMEOUT_S, self._close_timed_out)

    def _close_timed_out(self) -> None:
        self.timer = None
        if self.state != _CLOSED:
            self.gen.error(f"no close from the server within {CLOSE_TIMEOUT_S:g} s; aborted")
            self._teardown(None)

    def _cancel_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None


class _Gen:
    """The calls of one process, their single frame scheduler and the counters."""

    def __init__(self, url: str, calls: int, seconds: float, warmup: float, ramp: float,
                 linger: float, open_timeout: float, kernel_stamps: bool = True,
                 tick_ms: float = TICK_MS) -> None:
        if calls < 1:
            raise ValueError(f"calls must be at least 1; got {calls}")
        if seconds <= 0 or warmup < 0 or ramp < 0 or linger < 0 or open_timeout <= 0:
            raise ValueError("seconds and open_timeout must be > 0; warmup, ramp, linger >= 0")
        if not 0.1 <= tick_ms <= 10:
            raise ValueError(f"tick_ms must be within 0.1..10; got {tick_ms}")
        self.target = _Target(url)
        self.loop = asyncio.get_running_loop()
        self.calls_n = calls
        self.seconds = seconds
        self.n_frames = max(1, round(seconds * 1000_000 / PERIOD_US))
        self.warmup_us = round(warmup * 1_000_000)
        self.ramp = ramp
        self.linger = linger
        self.open_timeout = open_timeout
        self.template = noise_template()
        # One receive buffer for every call: each read is parsed before the next one,
        # and recv_into a preallocated buffer is much cheaper than recv() of a new one.
        self.rxbuf = bytearray(256 * 1024)
        self.rxview = memoryview(self.rxbuf)
        self.rxbufs = [self.rxview]
        self.kernel_stamps = kernel_stamps and sys.platform.startswith("linux")
        self.read_delays = array("q")  # read time - kernel receive time, µs
        self.max_unsent = 0
        self.calls: list[_Call] = []
        self.heap: list[tuple[int, int, _Call]] = []
        self.timer: asyncio.TimerHandle | None = None
        self.tick_us = round(tick_ms * 1000)
        # The calls' sockets, polled for reading in each tick (not by the event loop).
        self.epoll = select.epoll()
        self.by_fd: dict[int, _Call] = {}
        self.lat = array("d")  # command latency samples, ms
        self.lags = array("q")  # send lag per frame, µs
        self.late = 0
        self.other_text = 0
        self.binary_frames = 0
        self.bad_play = 0
        self.bad_stamps = 0
        self.hangup_frames = 0
        self.errors: list[str] = []
        self.error_count = 0
        self.stopping = False
        self.stop_event = asyncio.Event()

    def error(self, text: str) -> None:
        self.error_count += 1
        if len(self.errors) < MAX_ERRORS:
            self.errors.append(text)

    # --- placing calls --------------------------------------------------------------

    async def run(self) -> None:
        t = self.target
        try:
            infos = await self.loop.getaddrinfo(t.host, t.port, type=socket.SOCK_STREAM)
        except OSError as e:
            self.error(f"cannot resolve {t.host}: {e}")
            self.calls = [_Call(self, i) for i in range(self.calls_n)]
            for call in self.calls:
                call.ended = FAILED
            return
        self.family, self.address = infos[0][0], infos[0][4]
        start = self.loop.time()
        places = [asyncio.ensure_future(self._place(i, start + i * self.ramp / self.calls_n))
                  for i in range(self.calls_n)]
        # One watchdog for the run, not a timer per call (timers cost every loop turn).
        budget = (self.ramp + 2 * self.open_timeout + self.seconds + self.linger
                  + 2 * CLOSE_TIMEOUT_S)
        _, pending = await asyncio.wait(places, timeout=budget)
        if pending:
            self.error(f"{len(pending)} calls still open after {budget:.1f} s; aborted")
            for call in self.calls:
                if call.state != _CLOSED:
                    call.ended = call.ended or LOST
                    call._teardown(None)
            for task in pending:
                task.cancel()
            await asyncio.wait(pending, timeout=CLOSE_TIMEOUT_S)
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.epoll.close()

    async def _place(self, i: int, at: float) -> None:
        delay = at - self.loop.time()
        if delay > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop_event.wait(), delay)  # the ramp
        call = _Call(self, i)
        self.calls.append(call)
        if self.stopping:
            call.ended = STOPPED
            return
        try:
            await call.connect(self.family, self.address)
        except (OSError, TimeoutError) as e:
            call.ended = FAILED
            t = self.target
            self.error(f"connect to {t.host}:{t.port}: {type(e).__name__}: {e}")
            return
        await call.done

    def stop(self) -> None:
        self.stopping = True
        self.stop_event.set()
        for call in self.calls:
            call.stop()

    # --- the one scheduler -----------------------------------------------------------

    def watch(self, call: _Call) -> None:
        self.epoll.register(call.fd, select.EPOLLIN)
        self.by_fd[call.fd] = call
        if self.timer is None:
            self._arm(time.time_ns() // 1000)

    def unwatch(self, call: _Call) -> None:
        if self.by_fd.pop(call.fd, None) is not None:
            self.epoll.unregister(call.fd)

    def opened(self, call: _Call) -> None:
        now = time.time_ns() // 1000
        call.t0_us = now + int(random.random() * PERIOD_US)  # random phase
        call.warm_until_us = now + self.warmup_us
        heapq.heappush(self.heap, (call.t0_us, call.index, call))

    def _arm(self, now_us: int) -> None:
        """Wake for the next tick: every ``tick_us`` while sockets are open."""
        if self.by_fd:
            wake = now_us + self.tick_us
        elif self.heap:
            wake = self.heap[0][0]
        else:
            return
        self.timer = self.loop.call_at(self.loop.time() + (wake - now_us) / 1e6, self._tick)

    def _tick(self) -> None:
        """Read every socket with data, then send every frame now due: one wake-up for all."""
        self.timer = None
        by_fd = self.by_fd
        if by_fd:
            for fd, _ in self.epoll.poll(0, len(by_fd)):
                call = by_fd.get(fd)
                if call is not None:
                    try:
                        call._readable()
                    except Exception as e:  # a bug must not stop every other call
                        self.error(f"reading call {call.index}: {type(e).__name__}: {e}")
                        call.ended = call.ended or PROTOCOL_ERROR
                        call._teardown(e)
        heap = self.heap
        lags = self.lags
        clock = time.time_ns
        late = 0
        now = clock() // 1000
        while heap:
            entry = heap[0]
            due = entry[0]
            if due > now:
                break
            call = entry[2]
            if call.state != _OPEN:
                heapq.heappop(heap)
                continue
            now = clock() // 1000
            frame = call.head + (now ^ call.mask64).to_bytes(8, "little") + call.tail
            call._send(frame)
            if call.state == _CLOSED:  # the send failed and tore the call down
                continue
            lag = now - due
            lags.append(lag)
            if lag > LATE_US:
                late += 1
            k = call.frames_sent = call.frames_sent + 1
            if k >= call.n_frames:
                heapq.heappop(heap)
                call.stream_done()
            else:
                heapq.heapreplace(heap, (call.t0_us + k * PERIOD_US, entry[1], call))
        self.late += late
        self._arm(now)

    # --- the result ---------------------------------------------------------------------

    def result(self) -> dict[str, Any]:
        ended: dict[str, int] = {}
        codes: dict[str, int] = {}
        for call in self.calls:
            how = call.ended or LOST
            ended[how] = ended.get(how, 0) + 1
            if call.close_code is not None:
                codes[str(call.close_code)] = codes.get(str(call.close_code), 0) + 1
        connected = sum(1 for c in self.calls if c.connected)
        return {
            "calls": self.calls_n,
            "calls_connected": connected,
            "calls_failed": ended.get(FAILED, 0),
            "calls_completed": ended.get(COMPLETED, 0),
            "calls_hung_up": ended.get(HUNG_UP, 0),
            "calls_closed_by_server": ended.get(SERVER_CLOSED, 0),
            "calls_lost": ended.get(LOST, 0),
            "calls_stopped": ended.get(STOPPED, 0),
            "calls_protocol_error": ended.get(PROTOCOL_ERROR, 0),
            "server_close_codes": codes,
            "frames_per_call": self.n_frames,
            "frames_expected": connected * self.n_frames,
            "frames_sent": sum(c.frames_sent for c in self.calls),
            "play_frames_received": sum(c.play_frames for c in self.calls),
            "play_chunks_received": sum(c.play_chunks for c in self.calls),
            "hangup_frames_received": self.hangup_frames,
            "other_text_frames": self.other_text,
            "binary_frames_received": self.binary_frames,
            "bad_play_frames": self.bad_play,
            "bad_stamps": self.bad_stamps,
            "late_frames": self.late,
            "max_unsent_bytes": self.max_unsent,
            "kernel_rx_stamps": self.kernel_stamps and len(self.read_delays) > 0,
        }


def _percentiles(samples: Any, quantiles: tuple[int, ...], scale: float = 1.0) -> dict[str, Any]:
    import numpy as np

    out: dict[str, Any] = {"count": len(samples)}
    if not len(samples):
        out.update({f"p{q}": None for q in quantiles})
        out["max"] = None
        return out
    a = np.frombuffer(samples, dtype=np.float64 if samples.typecode == "d" else np.int64)
    values = np.percentile(a, quantiles)
    for q, v in zip(quantiles, values, strict=True):
        out[f"p{q}"] = round(float(v) * scale, 3)
    out["max"] = round(float(a.max()) * scale, 3)
    return out


def summarize(counts: dict[str, Any], lat: array, lags: array, read_delays: array, *,
              run_cpu_s: float, wall_s: float, errors: list[str],
              error_count: int) -> dict[str, Any]:
    """The result object: counters plus latency, send-lag and read-delay percentiles, CPU."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu_s = usage.ru_utime + usage.ru_stime + children.ru_utime + children.ru_stime
    frames = counts["frames_sent"] + counts["play_frames_received"]
    result = dict(counts)
    result["command_latency_ms"] = _percentiles(lat, (50, 95, 99))
    result["send_lag_ms"] = _percentiles(lags, (50, 99), scale=0.001)
    result["read_delay_ms"] = _percentiles(read_delays, (50, 99), scale=0.001)
    result.update({
        "cpu_s": round(cpu_s, 3),
        "run_cpu_s": round(run_cpu_s, 3),
        "cpu_us_per_frame": round(run_cpu_s * 1e6 / frames, 2) if frames else None,
        "wall_s": round(wall_s, 3),
        "error_count": error_count,
        "errors": errors[:MAX_ERRORS],
    })
    return result


async def _run(url: str, calls: int, seconds: float, warmup: float, ramp: float, *,
               linger: float = LINGER_S, open_timeout: float = OPEN_TIMEOUT_S,
               kernel_stamps: bool = True, tick_ms: float = TICK_MS,
               start_at: float | None = None,
               stop: asyncio.Event | None = None) -> tuple[dict[str, Any], _Gen]:
    gen = _Gen(url, calls, seconds, warmup, ramp, linger, open_timeout, kernel_stamps, tick_ms)
    if start_at is not None:
        await asyncio.sleep(max(0.0, start_at - time.time()))
    cpu0, wall0 = time.process_time(), time.monotonic()
    watcher = None
    if stop is not None:
        async def watch() -> None:
            await stop.wait()
            gen.stop()
        watcher = asyncio.ensure_future(watch())
    try:
        await gen.run()
    finally:
        if watcher is not None:
            watcher.cancel()
    run_cpu_s, wall_s = time.process_time() - cpu0, time.monotonic() - wall0
    result = summarize(gen.result(), gen.lat, gen.lags, gen.read_delays, run_cpu_s=run_cpu_s,
                       wall_s=wall_s, errors=gen.errors, error_count=gen.error_count)
    result["procs"] = 1
    return result, gen


async def run_load(url: str, calls: int, seconds: float, warmup: float = 2.0,
                   ramp: float = 0.0, *, linger: float = LINGER_S,
                   open_timeout: float = OPEN_TIMEOUT_S, kernel_stamps: bool = True,
                   tick_ms: float = TICK_MS, stop: asyncio.Event | None = None) -> dict[str, Any]:
    """Place ``calls`` calls of ``seconds`` each in this process and return the result.

    Starts are spread over ``ramp`` s; latency samples from each call's first
    ``warmup`` s are dropped. Receive times are the kernel's (SO_TIMESTAMPNS)
    unless ``kernel_stamps`` is false or unavailable, then the time of the read.
    ``cpu_s`` is this whole process (and its reaped children), ``run_cpu_s`` the
    process's CPU during the run only; both count anything else the process
    runs meanwhile (e.g. a server in the same loop). Setting ``stop`` ends every
    call early with 1000. Never raises for what the network or the server does:
    that is in the counters and ``errors``.
    """
    result, _ = await _run(url, calls, seconds, warmup, ramp, linger=linger,
                           open_timeout=open_timeout, kernel_stamps=kernel_stamps,
                           tick_ms=tick_ms, stop=stop)
    return result


# --- several processes -------------------------------------------------------------------

_SUMMED = ("calls", "calls_connected", "calls_failed", "calls_completed", "calls_hung_up",
           "calls_closed_by_server", "calls_lost", "calls_stopped", "calls_protocol_error",
           "frames_expected", "frames_sent", "play_frames_received", "play_chunks_received",
           "hangup_frames_received", "other_text_frames", "binary_frames_received",
           "bad_play_frames", "bad_stamps", "late_frames")
_SAMPLES = (("lat", "d"), ("lag", "q"), ("rd", "q"))


def _child_command(args: argparse.Namespace, calls: int, start_at: float,
                   samples_out: str) -> list[str]:
    cmd = [sys.executable, "-m", "gateway.bench.loadgen", "--url", args.url,
           "--calls", str(calls), "--seconds", repr(args.seconds), "--warmup", repr(args.warmup),
           "--ramp", repr(args.ramp), "--linger", repr(args.linger),
           "--open-timeout", repr(args.open_timeout), "--tick-ms", repr(args.tick_ms),
           "--procs", "1", "--json",
           "--start-at", repr(start_at), "--samples-out", samples_out]
    if args.no_kernel_stamps:
        cmd.append("--no-kernel-stamps")
    return cmd


def _run_procs(args: argparse.Namespace) -> dict[str, Any]:
    wall0 = time.monotonic()
    procs = min(args.procs, args.calls)
    start_at = time.time() + 0.5 + 0.1 * procs  # children import (~0.2 s), then start together
    children: list[subprocess.Popen[str]] = []
    parts: list[dict[str, Any]] = []
    errors: list[str] = []
    samples = {name: array(code) for name, code in _SAMPLES}
    def forward(signum: int, frame: object) -> None:
        # Children stop their calls (1000) and report; we aggregate what they report.
        for child in children:
            if child.poll() is None:
                child.send_signal(signum)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM)}
    with tempfile.TemporaryDirectory(prefix="kgw-loadgen-") as tmp:
        try:
            for j in range(procs):
                n = args.calls // procs + (1 if j < args.calls % procs else 0)
                cmd = _child_command(args, n, start_at, os.path.join(tmp, f"c{j}"))
                children.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True))
            for j, child in enumerate(children):
                out, _ = child.communicate()
                lines = [line for line in out.splitlines() if line.strip()]
                try:
                    parts.append(json.loads(lines[-1]))
                except (IndexError, ValueError):
                    errors.append(f"child {j} exited {child.returncode} without a result")
                    continue
                errors += [f"[{j}] {e}" for e in parts[-1].get("errors", [])]
                for name, _ in _SAMPLES:
                    with contextlib.suppress(OSError), open(
                            os.path.join(tmp, f"c{j}.{name}"), "rb") as f:
                        samples[name].frombytes(f.read())
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            for child in children:
                if child.poll() is None:
                    child.send_signal(signal.SIGINT)
                    child.wait()
    counts: dict[str, Any] = {key: sum(p.get(key, 0) for p in parts) for key in _SUMMED}
    counts["calls"] = args.calls
    counts["frames_per_call"] = parts[0]["frames_per_call"] if parts else 0
    counts["max_unsent_bytes"] = max((p.get("max_unsent_bytes", 0) for p in parts), default=0)
    counts["kernel_rx_stamps"] = bool(parts) and all(p.get("kernel_rx_stamps") for p in parts)
    codes: dict[str, int] = {}
    for p in parts:
        for code, n in p.get("server_close_codes", {}).items():
            codes[code] = codes.get(code, 0) + n
    counts["server_close_codes"] = codes
    error_count = sum(p.get("error_count", 0) for p in parts) + (len(children) - len(parts))
    result = summarize(counts, samples["lat"], samples["lag"], samples["rd"],
                       run_cpu_s=sum(p.get("run_cpu_s", 0.0) for p in parts),
                       wall_s=time.monotonic() - wall0, errors=errors, error_count=error_count)
    result["procs"] = len(children)
    return result


# --- the command line -----------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m gateway.bench.loadgen",
                                description="Lean Knowlarity load generator (see module doc).")
    p.add_argument("--url", required=True, help="ws:// URL of the gateway")
    p.add_argument("--calls", type=int, required=True, help="concurrent calls (over all procs)")
    p.add_argument("--seconds", type=float, required=True, help="audio each call streams")
    p.add_argument("--warmup", type=float, default=2.0,
                   help="drop latency samples from each call's first W s (default 2)")
    p.add_argument("--procs", type=int, default=1, help="processes to spread the calls over")
    p.add_argument("--ramp", type=float, default=0.0, help="spread call starts over R s")
    p.add_argument("--linger", type=float, default=LINGER_S,
                   help="after its last frame, wait up to this long for echoes (default 2)")
    p.add_argument("--open-timeout", type=float, default=OPEN_TIMEOUT_S)
    p.add_argument("--tick-ms", type=float, default=TICK_MS,
                   help="scheduler period: sockets are read and due frames sent once per tick")
    p.add_argument("--no-kernel-stamps", action="store_true",
                   help="take receive times when read, not the kernel's SO_TIMESTAMPNS")
    p.add_argument("--json", action="store_true", help="print only the JSON result line")
    p.add_argument("--start-at", type=float, default=None, help=argparse.SUPPRESS)
    p.add_argument("--samples-out", default=None, help=argparse.SUPPRESS)
    return p


async def _main_one(args: argparse.Namespace) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    result, gen = await _run(args.url, args.calls, args.seconds, args.warmup, args.ramp,
                             linger=args.linger, open_timeout=args.open_timeout,
                             kernel_stamps=not args.no_kernel_stamps, tick_ms=args.tick_ms,
                             start_at=args.start_at, stop=stop)
    if args.samples_out:
        for name, samples in (("lat", gen.lat), ("lag", gen.lags), ("rd", gen.read_delays)):
            with open(f"{args.samples_out}.{name}", "wb") as f:
                samples.tofile(f)
    return result


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.procs < 1 or args.calls < 1:
        print("loadgen: --procs and --calls must be at least 1", file=sys.stderr)
        return 2
    try:
        _Target(args.url)
    except ValueError as e:
        print(f"loadgen: {e}", file=sys.stderr)
        return 2
    if args.procs > 1:
        result = _run_procs(args)
    else:
        result = asyncio.run(_main_one(args))
    if not args.json:
        lat, lag = result["command_latency_ms"], result["send_lag_ms"]
        print(f"calls {result['calls_connected']}/{result['calls']} connected, "
              f"frames sent {result['frames_sent']}, play frames {result['play_frames_received']}"
              f", latency p50 {lat['p50']} p99 {lat['p99']} max {lat['max']} ms "
              f"({lat['count']} samples), late frames {result['late_frames']}, "
              f"send lag p99 {lag['p99']} ms, cpu {result['run_cpu_s']} s "
              f"({result['cpu_us_per_frame']} us/frame)")
    print(json.dumps(result, separators=(",", ":")), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
