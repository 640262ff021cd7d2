"""Hostile and honest provider clients for tests/test_attacks_e2e.py, as processes of their own.

A raw-socket WebSocket client on the standard library and the load generator's
frame codec (``kgw_bench.loadgen.frames``, there with a dev install), so each
process starts fast and owns nothing of the node. Every mode is bounded in time
and prints one JSON object as its last stdout line.

    probe   --url URL --call-id ID --seconds S      640-byte frames every 20 ms, real time
    calls   --url URL --call-ids A,B,... --max-seconds S
                                                    live calls held until stdin closes
    attacks --url URL --call-prefix P               header flood, zero-length frame flood
                                                    and a 60 KB call id, at once
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import select
import socket
import struct
import sys
import threading
import time
from urllib.parse import urlsplit

from kgw_bench.loadgen.frames import (
    OP_BINARY,
    OP_CLOSE,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    client_frame,
    mask,
)

RATE = 16000
FRAME_BYTES = 640  # 20 ms of 16 kHz s16le mono


def start_message(call_id: str) -> str:
    return json.dumps({
        "uuid": call_id, "sample_rate": RATE, "from": "+911111111111", "to": "+912222222222",
        "campaign": "attack-test",
        "metadata": {"welcome_message": "hi", "event": "websocket:connected",
                     "call_type": "inbound"},
    })


def frame(opcode: int, payload: bytes = b"") -> bytes:
    """One client frame, masked with a fresh key of its own (as RFC 6455 asks of clients)."""
    return client_frame(opcode, payload, os.urandom(4))


def close_frame(code: int = 1000) -> bytes:
    return frame(OP_CLOSE, struct.pack("!H", code))


class WS:
    """A raw WebSocket client connection; a reader task answers pings and the close."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.close_code: int | None = None  # the code of the server's close frame
        self.close_reason = ""
        self.closed = asyncio.Event()  # the server's close frame or EOF arrived
        self.text_frames = 0
        self.binary_frames = 0
        self.i_closed = False
        self._task = asyncio.ensure_future(self._read_loop())

    @classmethod
    async def connect(cls, url: str, timeout: float = 5.0) -> WS:
        u = urlsplit(url)
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(u.hostname, u.port), timeout)
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write((f"GET {u.path} HTTP/1.1\r\nHost: {u.hostname}:{u.port}\r\n"
                      "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                      f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
        status = head.split(b"\r\n", 1)[0]
        if b" 101 " not in status + b" ":
            writer.close()
            raise ConnectionError(f"handshake refused: {status!r}")
        return cls(reader, writer)

    async def _read_loop(self) -> None:
        r = self.reader
        try:
            while True:
                b0, b1 = await r.readexactly(2)
                op, n = b0 & 0x0F, b1 & 0x7F
                if n == 126:
                    (n,) = struct.unpack("!H", await r.readexactly(2))
                elif n == 127:
                    (n,) = struct.unpack("!Q", await r.readexactly(8))
                key = await r.readexactly(4) if b1 & 0x80 else b""
                payload = await r.readexactly(n)
                if key:
                    payload = mask(payload, key)
                if op == OP_CLOSE:
                    self.close_code = struct.unpack("!H", payload[:2])[0] if n >= 2 else 1005
                    self.close_reason = payload[2:].decode("utf-8", "replace")
                    if not self.i_closed:
                        self.send_raw(close_frame(self.close_code))
                    break
                if op == OP_PING:
                    self.send_raw(frame(OP_PONG, payload))
                elif op == OP_TEXT:
                    self.text_frames += 1
                elif op == OP_BINARY:
                    self.binary_frames += 1
        except (asyncio.IncompleteReadError, ConnectionError, OSError):
            pass
        finally:
            self.closed.set()
            self.writer.close()

    def send_raw(self, data: bytes) -> None:
        if not self.writer.is_closing():
            self.writer.write(data)

    async def close(self, code: int = 1000, timeout: float = 3.0) -> None:
        """Close handshake from our side; waits for the server's close (bounded)."""
        if not self.closed.is_set():
            self.i_closed = True
            self.send_raw(close_frame(code))
            try:
                await asyncio.wait_for(self.closed.wait(), timeout)
            except TimeoutError:
                pass
        self.writer.close()
        self._task.cancel()


# --- probe -------------------------------------------------------------------------


async def probe(url: str, call_id: str, seconds: float) -> dict[str, object]:
    ws = await WS.connect(url)
    ws.send_raw(frame(OP_TEXT, start_message(call_id).encode()))
    loop = asyncio.get_running_loop()
    pcm = (b"\x10\x27\xf0\xd8" * (FRAME_BYTES // 4))  # +-10000: never silence
    n = int(seconds / 0.02)
    t0 = loop.time()
    late_max = 0.0
    sent = 0
    sent_unix_us: list[int] = []
    for i in range(n):
        due = t0 + i * 0.02
        wait = due - loop.time()
        if wait > 0:
            await asyncio.sleep(wait)
        late_max = max(late_max, loop.time() - due)
        if ws.closed.is_set():
            break
        sent_unix_us.append(round(time.time() * 1e6))
        ws.send_raw(frame(OP_BINARY, pcm))
        sent += 1
    await asyncio.wait_for(ws.writer.drain(), 5)
    server_closed_first = ws.closed.is_set()
    await ws.close(1000)
    return {"call_id": call_id, "frames_sent": sent, "frames_planned": n,
            "max_send_lateness_ms": round(late_max * 1000, 2),
            "sent_unix_us": sent_unix_us,
            "server_closed_first": server_closed_first, "close_code": ws.close_code,
            "text_frames_received": ws.text_frames}


# --- live calls ----------------------------------------------------------------------


async def calls(url: str, call_ids: list[str], max_seconds: float) -> dict[str, object]:
    socks = await asyncio.gather(*(WS.connect(url) for _ in call_ids))
    for ws, cid in zip(socks, call_ids, strict=True):
        ws.send_raw(frame(OP_TEXT, start_message(cid).encode()))
    print(json.dumps({"ready": len(socks)}), flush=True)
    loop = asyncio.get_running_loop()
    stdin_eof = asyncio.Event()
    # The parent closes our stdin to end the calls; a daemon thread waits for that.
    def wait_stdin() -> None:
        sys.stdin.read()
        loop.call_soon_threadsafe(stdin_eof.set)

    threading.Thread(target=wait_stdin, daemon=True).start()
    try:
        await asyncio.wait_for(stdin_eof.wait(), max_seconds)
    except TimeoutError:
        pass
    early = {cid: ws.close_code for ws, cid in zip(socks, call_ids, strict=True)
             if ws.closed.is_set()}
    await asyncio.gather(*(ws.close(1000) for ws in socks))
    return {"calls": len(socks), "closed_by_server_early": early,
            "text_frames_received": {cid: ws.text_frames
                                     for ws, cid in zip(socks, call_ids, strict=True)}}


# --- attacks -------------------------------------------------------------------------


def _header_flood(url: str, total: int, limit_s: float) -> dict[str, object]:
    """Blocking, in a thread: asyncio drops what is still unread in the kernel once a
    write fails, and a server that closes with our flood unread resets the connection,
    so the answer is read with plain recv() calls, before and after the reset."""
    u = urlsplit(url)
    t0 = time.monotonic()
    s = socket.create_connection((u.hostname, u.port), timeout=5)
    s.setblocking(False)
    pending = f"GET {u.path} HTTP/1.1\r\nHost: {u.hostname}\r\n".encode()
    response = bytearray()
    sent = 0
    sent_at_answer: int | None = None
    line_no = 0
    stopped_by = "time limit"
    try:
        while time.monotonic() - t0 < limit_s:
            writing = sent < total
            readable, writable, _ = select.select([s], [s] if writing else [], [], 0.2)
            if readable:
                try:
                    data = s.recv(65536)
                except ConnectionError as e:
                    stopped_by = f"server closed ({type(e).__name__})"
                    break
                if not data:
                    stopped_by = "server closed (EOF)"
                    break
                if sent_at_answer is None:
                    sent_at_answer = sent
                response.extend(data)
            if writable:
                if not pending:
                    lines = [b"X-Flood-%08d: %s\r\n" % (line_no + i, b"a" * 100)
                             for i in range(32)]  # about 4 KB a write
                    line_no += 32
                    pending = b"".join(lines)
                try:
                    n = s.send(pending)
                except (BrokenPipeError, ConnectionResetError) as e:
                    stopped_by = f"server closed ({type(e).__name__})"
                    break
                sent += n
                pending = pending[n:]
    finally:
        # What the server wrote before its close is still readable after a reset.
        s.settimeout(1)
        try:
            while len(response) < 65536:
                data = s.recv(65536)
                if not data:
                    break
                if sent_at_answer is None:
                    sent_at_answer = sent
                response.extend(data)
        except OSError:
            pass
        s.close()
    status = bytes(response).split(b"\r\n", 1)[0].decode("latin-1")
    return {"bytes_sent": sent, "bytes_sent_when_answer_read": sent_at_answer,
            "stopped_by": stopped_by, "status_line": status,
            "seconds": round(time.monotonic() - t0, 3)}


async def header_flood(url: str, total: int = 20_000_000, limit_s: float = 10.0
                       ) -> dict[str, object]:
    """An upgrade request that never ends: header lines until the server closes."""
    return await asyncio.to_thread(_header_flood, url, total, limit_s)


async def zero_frame_flood(url: str, call_id: str, frames: int = 50_000,
                           limit_s: float = 10.0) -> dict[str, object]:
    """A started call, then zero-length binary frames as fast as a flood goes."""
    t0 = time.monotonic()
    ws = await WS.connect(url)
    ws.send_raw(frame(OP_TEXT, start_message(call_id).encode()))
    batch = 100
    sent = 0
    try:
        while sent < frames and not ws.closed.is_set() and time.monotonic() - t0 < limit_s:
            ws.send_raw(b"".join(frame(OP_BINARY) for _ in range(batch)))
            sent += batch
            await asyncio.wait_for(ws.writer.drain(), 5)
            await asyncio.sleep(0.002)  # 50,000 frames/s: 200 times the allowed rate
    except (ConnectionError, OSError, TimeoutError):
        pass
    sent_when_closed = sent
    try:
        await asyncio.wait_for(ws.closed.wait(), max(0.1, limit_s - (time.monotonic() - t0)))
    except TimeoutError:
        pass
    code, reason = ws.close_code, ws.close_reason
    await ws.close(1000, timeout=1)
    return {"call_id": call_id, "frames_sent": sent_when_closed, "frames_planned": frames,
            "close_code": code, "close_reason": reason,
            "seconds": round(time.monotonic() - t0, 3)}


async def long_call_id(url: str, chars: int = 60_000, limit_s: float = 10.0
                       ) -> dict[str, object]:
    t0 = time.monotonic()
    ws = await WS.connect(url)
    call_id = "L" * chars
    message = start_message(call_id)
    ws.send_raw(frame(OP_TEXT, message.encode()))
    try:
        await asyncio.wait_for(ws.closed.wait(), limit_s)
    except TimeoutError:
        pass
    code, reason = ws.close_code, ws.close_reason
    await ws.close(1000, timeout=1)
    return {"call_id_chars": chars, "start_message_bytes": len(message), "close_code": code,
            "close_reason": reason, "seconds": round(time.monotonic() - t0, 3)}


async def attacks(url: str, call_prefix: str) -> dict[str, object]:
    hf, zf, li = await asyncio.gather(
        header_flood(url), zero_frame_flood(url, call_prefix + "-zero"), long_call_id(url),
        return_exceptions=True)
    return {"header_flood": _result(hf), "zero_frames": _result(zf), "long_call_id": _result(li)}


def _result(r: object) -> object:
    return {"error": repr(r)} if isinstance(r, BaseException) else r


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("mode", choices=("probe", "calls", "attacks"))
    p.add_argument("--url", required=True)
    p.add_argument("--call-id", default="")
    p.add_argument("--call-ids", default="")
    p.add_argument("--call-prefix", default="atk")
    p.add_argument("--seconds", type=float, default=18.0)
    p.add_argument("--max-seconds", type=float, default=60.0)
    a = p.parse_args()
    if a.mode == "probe":
        work = probe(a.url, a.call_id, a.seconds)
        bound = a.seconds + 15
    elif a.mode == "calls":
        work = calls(a.url, a.call_ids.split(","), a.max_seconds)
        bound = a.max_seconds + 15
    else:
        work = attacks(a.url, a.call_prefix)
        bound = 40
    result = asyncio.run(asyncio.wait_for(work, bound))
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
