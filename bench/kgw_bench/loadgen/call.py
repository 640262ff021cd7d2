"""One call of the load generator: a non-blocking socket, its handshake, frame parser and close.

The scheduler (``scheduler.LoadGen``) owns the calls: it reads their sockets
once per tick and writes their due frames; a call reports back to it (errors,
counters, latency samples) through ``self.gen``.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import os
import socket
import struct
import time
import urllib.parse
import uuid
from typing import TYPE_CHECKING, Any

from gateway.core.knowlarity import encode_start
from kgw_bench.loadgen.frames import (
    AUDIO_KEY,
    AUDIO_KEY_LEN,
    EQ,
    FRAME_BYTES,
    MAX_LATENCY_US,
    MAX_MESSAGE_BYTES,
    SAMPLE_RATE,
    STAMP_BYTES,
    WAV_HEADER_BYTES,
    accept_for,
    client_frame,
    mask,
)
from kgw_bench.realistic import PREAMBLE_MS, latency_us, read_stamp

if TYPE_CHECKING:
    from kgw_bench.loadgen.scheduler import LoadGen

OPEN_TIMEOUT_S = 10.0
CLOSE_TIMEOUT_S = 5.0
LINGER_S = 2.0

STAMP_HEAD_BYTES = PREAMBLE_MS * SAMPLE_RATE // 1000 * 2  # the answer's stamp at 16 kHz
_SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)  # Linux; the module lacks the name
_TIMESPEC = struct.Struct("@qq")  # struct timespec on 64-bit Linux
_ANCILLARY_BYTES = socket.CMSG_SPACE(_TIMESPEC.size)

CONNECTING, OPEN, CLOSING, CLOSED = range(4)

# How a call ended.
COMPLETED = "completed"  # streamed everything, then hung up with 1000
HUNG_UP = "hung_up"  # the gateway sent a hang-up or transfer frame
SERVER_CLOSED = "server_closed"  # the gateway closed the socket first
LOST = "lost"  # TCP went away without a close handshake
PROTOCOL_ERROR = "protocol_error"  # the gateway broke RFC 6455; closed with 1002/1009
FAILED = "failed"  # never connected (TCP, HTTP or handshake)
STOPPED = "stopped"  # stopped early (signal)

class Target:
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


class Call:
    """One call: a non-blocking socket, its handshake, frame parser and close handshake.

    No asyncio transport: the scheduler's tick calls ``readable`` when the
    socket has data (read with ``recvmsg_into`` into the process's one receive
    buffer, with the kernel's receive timestamp) and writes frames with
    ``socket.send``; only bytes the kernel refuses are buffered here (and
    written from the event loop's writer callback).
    """

    def __init__(self, gen: LoadGen, index: int) -> None:
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
        self.state = CONNECTING
        self.hs_buf = bytearray()
        self.buf: bytearray | bytes = b""  # a partial frame left from the last read
        self.frag_op = 0
        self.frags: list[bytes] = []
        self.frag_bytes = 0
        self.head = b""  # frame header + mask key
        self.tail = b""  # the masked template after the stamp
        # The realistic workload: per frame 1 while speaking (see kgw_bench.realistic),
        # and the masked tails of a speech and of a quiet frame.
        self.script: bytes | None = None
        self.tails: tuple[bytes, bytes] = (b"", b"")
        self.answers = 0  # realistic: answers whose stamped head arrived
        if gen.scripts is not None:
            self._on_text = self._on_text_realistic  # type: ignore[method-assign]
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
        if self.state != CONNECTING:  # stopped while connecting
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
        self.send(request.encode("ascii"))

    def readable(self) -> None:
        gen = self.gen
        sock = self.sock
        assert sock is not None
        try:
            n, ancillary, _, _ = sock.recvmsg_into(gen.rxbufs, _ANCILLARY_BYTES)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as e:
            self.teardown(e)
            return
        if not n:
            self.teardown(None)  # EOF
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
        if self.state == CONNECTING:
            self._handshake(bytes(gen.rxview[:n]))
        elif self.buf:
            self.buf += gen.rxview[:n]
            self._parse(self.buf, len(self.buf), rx)
        else:
            self._parse(gen.rxbuf, n, rx)

    def send(self, data: bytes) -> None:
        if self.state == CLOSED:
            return
        if self.out:
            self.out += data
            return
        try:
            n = self.sock.send(data)  # type: ignore[union-attr]
        except (BlockingIOError, InterruptedError):
            n = 0
        except OSError as e:
            self.teardown(e)
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
            self.teardown(e)
            return
        gen = self.gen
        gen.max_unsent = max(gen.max_unsent, len(self.out))
        del self.out[:n]
        if not self.out:
            gen.loop.remove_writer(self.fd)
            if self.close_when_flushed:
                self.teardown(None)

    def _finish(self) -> None:
        """Close the socket once what is queued has been written."""
        if self.out:
            self.close_when_flushed = True
        else:
            self.teardown(None)

    def teardown(self, exc: BaseException | None) -> None:
        if self.state == CLOSED:
            return
        prior = self.state
        self.state = CLOSED
        self._cancel_timer()
        if self.sock is not None:
            self.gen.unwatch(self)
            if self.out:
                self.gen.loop.remove_writer(self.fd)
            self.sock.close()
        if not self.ended:
            if prior == CONNECTING:
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
            if self.state == CLOSED:
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
        if headers.get("sec-websocket-accept") != accept_for(self.ws_key):
            self._fail("handshake: wrong Sec-WebSocket-Accept")
            return
        self._cancel_timer()
        self._opened()
        if rest and self.state == OPEN:
            self.buf = bytearray(rest)
            self._parse(self.buf, len(self.buf), time.time_ns() // 1000)

    def _opened(self) -> None:
        gen = self.gen
        self.state = OPEN
        self.connected = True
        self.head = b"\x82\xfe" + FRAME_BYTES.to_bytes(2, "big") + self.key
        self.tail = mask(gen.template, self.key)[STAMP_BYTES:]
        campaign = ""
        if gen.scripts is not None:
            self.script = gen.scripts[self.index]
            quiet = mask(bytes(FRAME_BYTES), self.key)[STAMP_BYTES:]
            self.tails = (quiet, self.tail)
            self.tail = self.tails[self.script[0]]
            # The talk bot finds this call's script by it.
            campaign = f"bench-{gen.index_base + self.index}"
        start = encode_start(self.call_id, SAMPLE_RATE, f"+9198{self.index:08d}", "+918000000000",
                             campaign=campaign)
        self.send(client_frame(0x1, start.encode("utf-8"), self.key))
        gen.opened(self)
        if gen.stopping:
            self.stop()

    def _open_timed_out(self) -> None:
        self.timer = None
        if self.state == CONNECTING:
            self._fail(f"no handshake within {self.gen.open_timeout:g} s")

    def _fail(self, why: str) -> None:
        self.ended = FAILED
        self.gen.error(why)
        self.teardown(None)

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
                if self.state == OPEN:
                    self.send(client_frame(0xA, payload, self.key))
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

    def _play_audio(self, msg: bytes | bytearray, a: int, b: int
                    ) -> tuple[int, int, int, int] | None:
        """Where a playAudio frame's base64 audio is in ``msg[a:b]``: (start, end, offset of
        the PCM in the decoded bytes, PCM bytes); None for any other text frame (counted,
        and a hang-up frame acted on)."""
        gen = self.gen
        i = msg.find(AUDIO_KEY, a, b)
        if i < 0 or msg.find(b'"playAudio"', a, i) < 0:
            gen.other_text += 1
            return None
        s = i + AUDIO_KEY_LEN
        if msg.startswith(b'None"', s, b):
            if msg.find(b'"asr_disconnect=true', s, b) >= 0:
                gen.hangup_frames += 1
                if self.state == OPEN:
                    self.ended = HUNG_UP
                    self._close(1000)
            else:
                gen.other_text += 1
            return None
        e = msg.find(b'"', s, b)
        if e < 0 or (e - s) % 4:
            gen.bad_play += 1
            return None
        self.play_frames += 1
        size = (e - s) // 4 * 3 - (msg[e - 1] == EQ) - (msg[e - 2] == EQ)
        p = WAV_HEADER_BYTES if msg.find(b'"wave"', a, i) >= 0 else 0
        return s, e, p, size - p

    def _on_text(self, msg: bytes | bytearray, a: int, b: int, rx: int) -> None:
        """A text message, ``msg[a:b]``, received at ``rx`` (µs since the epoch).

        playAudio frames are not JSON-parsed: the base64 content is found with
        ``find`` and only the 16 characters around each stamp are decoded.
        """
        gen = self.gen
        found = self._play_audio(msg, a, b)
        if found is None:
            return
        s, e, p, pcm = found
        if pcm > 0:
            self.play_chunks += (pcm + FRAME_BYTES - 1) // FRAME_BYTES
            if rx >= self.warm_until_us:
                lat = gen.lat
                a2b = binascii.a2b_base64
                last = p + pcm - STAMP_BYTES  # the decoded size
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
        if self.streamed and self.play_chunks >= self.frames_sent and self.state == OPEN:
            self.ended = COMPLETED
            self._close(1000)

    def _on_text_realistic(self, msg: bytes | bytearray, a: int, b: int, rx: int) -> None:
        """A text message in the realistic workload: one latency sample per answer.

        The bot's answers are resampled by the node, so no byte of them survives
        as it was sent: the stamp is a run of DC levels at the answer's head
        (``realistic.read_stamp``), looked for at the head of every clip.
        """
        gen = self.gen
        found = self._play_audio(msg, a, b)
        if found is None:
            return
        s, e, p, pcm = found
        if pcm <= 0:
            return
        self.play_chunks += (pcm + FRAME_BYTES - 1) // FRAME_BYTES
        need = p + STAMP_HEAD_BYTES
        if pcm < STAMP_HEAD_BYTES:
            return
        try:
            raw = binascii.a2b_base64(msg[s:min(s + (need + 2) // 3 * 4, e)])
        except (binascii.Error, ValueError):
            gen.bad_play += 1
            return
        stamp32 = read_stamp(raw, p)
        if stamp32 is None:
            return  # not the head of an answer
        if stamp32 < 0:
            gen.bad_stamps += 1
            return
        self.answers += 1
        if rx >= self.warm_until_us:
            d = latency_us(rx, stamp32)
            if d < MAX_LATENCY_US:
                gen.lat.append(d / 1000.0)
            else:
                gen.bad_stamps += 1

    def _on_close(self, payload: bytes) -> None:
        code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
        if self.state == OPEN:
            # The gateway closed first: answer with its code, as the RFC asks.
            self.close_code = code
            if not self.ended:
                self.ended = SERVER_CLOSED
            self.state = CLOSING
            self.send(client_frame(0x8, payload[:2], self.key))
        self._finish()

    # --- ending -----------------------------------------------------------------

    def stream_done(self) -> None:
        """Called by the scheduler after the last frame: wait for the echoes, then hang up."""
        self.streamed = True
        # Realistic: the script leaves room for the last answer; the caller then hangs up.
        if self.script is not None or self.play_chunks >= self.frames_sent:
            self.ended = COMPLETED
            self._close(1000)
        else:
            self.timer = self.gen.loop.call_later(self.gen.linger, self._linger_over)

    def _linger_over(self) -> None:
        self.timer = None
        if self.state == OPEN:
            self.ended = COMPLETED
            self._close(1000)

    def stop(self) -> None:
        """End the call now (the run was interrupted)."""
        if self.state == OPEN:
            self.ended = self.ended or STOPPED
            self._close(1000)
        elif self.state == CONNECTING:
            self._fail("stopped before the handshake completed")

    def _protocol_error(self, why: str, code: int = 1002) -> None:
        self.gen.error(f"protocol error from the server: {why}")
        if self.state == OPEN:
            self.ended = self.ended or PROTOCOL_ERROR
            self._close(code)
        else:
            self.teardown(None)

    def _close(self, code: int) -> None:
        """Start the close handshake; the socket closes when the server answers."""
        if self.state != OPEN:
            return
        self.state = CLOSING
        self._cancel_timer()
        self.send(client_frame(0x8, code.to_bytes(2, "big"), self.key))
        if self.state == CLOSING:
            self.timer = self.gen.loop.call_later(CLOSE_TIMEOUT_S, self._close_timed_out)

    def _close_timed_out(self) -> None:
        self.timer = None
        if self.state != CLOSED:
            self.gen.error(f"no close from the server within {CLOSE_TIMEOUT_S:g} s; aborted")
            self.teardown(None)

    def _cancel_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

