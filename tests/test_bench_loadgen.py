"""The lean load generator (kgw_bench.loadgen) against a small in-test echo server.

The server (the ``websockets`` library) answers every binary frame with a
``playAudio`` frame carrying the same PCM, so every frame the generator sends
must come back with its stamp. No timing assertions: only counts.
"""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from websockets.asyncio.server import ServerConnection, serve
from websockets.http11 import Response

from gateway.core.knowlarity import (
    AudioContentType,
    encode_hang_up,
    encode_play_audio,
    parse_start,
)
from kgw_bench.loadgen import FRAME_BYTES, noise_template, run_load
from kgw_bench.loadgen import call as calls
from kgw_bench.loadgen.scheduler import LoadGen

T = TypeVar("T")
TEMPLATE = noise_template()


def _in_thread(scenario: Callable[[], Awaitable[T]]) -> T:
    # --reactor=asyncio keeps a loop running on this thread, so asyncio.run needs another one.
    async def main() -> T:
        return await scenario()

    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, main()).result(timeout=60)


class EchoServer:
    """Echoes caller audio as playAudio; can join clips, fragment messages and hang up."""

    def __init__(self, *, content_type: AudioContentType = AudioContentType.WAVE,
                 join: int = 1, fragment: bool = False, hang_up_after: int | None = None,
                 refuse: bool = False) -> None:
        self.content_type = content_type
        self.join = join
        self.fragment = fragment
        self.hang_up_after = hang_up_after
        self.refuse = refuse
        self.call_ids: list[str] = []
        self.frames_in: dict[str, int] = {}
        self.close_codes: dict[str, int | None] = {}
        self.bad_frames = 0
        self.hung_up: str | None = None
        self.port = 0

    async def handler(self, ws: ServerConnection) -> None:
        start = parse_start(str(await ws.recv()), fallback_call_id="?")
        assert start.sample_rate == 16000
        cid = start.call_id
        self.call_ids.append(cid)
        n = 0
        held: list[bytes] = []
        try:
            async for msg in ws:
                if isinstance(msg, str):
                    continue
                n += 1
                if len(msg) != FRAME_BYTES or msg[8:] != TEMPLATE[8:]:
                    self.bad_frames += 1
                held.append(msg)
                if len(held) >= self.join:
                    text = encode_play_audio(b"".join(held), 16000, self.content_type)
                    held.clear()
                    if self.fragment:
                        half = len(text) // 2
                        await ws.send(iter([text[:half], text[half:]]))
                    else:
                        await ws.send(text)
                if n == self.hang_up_after and self.hung_up is None:
                    self.hung_up = cid
                    await ws.send(encode_hang_up())
        finally:
            self.frames_in[cid] = n
            self.close_codes[cid] = ws.close_code

    def process_request(self, ws: ServerConnection, request: Any) -> Response | None:
        if self.refuse:
            return ws.respond(404, "no such stream\n")
        return None

    async def run(self, body: Callable[[str], Awaitable[T]], **serve_kw: Any) -> T:
        async with serve(self.handler, "127.0.0.1", 0, compression=None,
                         process_request=self.process_request, **serve_kw) as server:
            self.port = server.sockets[0].getsockname()[1]
            return await body(f"ws://127.0.0.1:{self.port}/vaani/knowlarity/setup-call-streams")


def test_every_frame_is_sent_echoed_and_timed() -> None:
    """4 calls x 1 s: 50 frames each, all echoed, one latency sample per frame, pings answered."""
    server = EchoServer()

    async def body(url: str) -> dict[str, Any]:
        return await run_load(url, calls=4, seconds=1.0, warmup=0.0)

    # A short ping interval: a generator that failed to pong would be closed (1011).
    r = _in_thread(lambda: server.run(body, ping_interval=0.2, ping_timeout=0.5))
    assert r["calls_connected"] == r["calls_completed"] == 4
    assert r["calls_failed"] == 0 and r["errors"] == []
    assert r["frames_per_call"] == 50
    assert r["frames_sent"] == r["frames_expected"] == 200
    assert r["play_frames_received"] == r["play_chunks_received"] == 200
    lat = r["command_latency_ms"]
    assert lat["count"] == 200 and r["bad_stamps"] == 0
    assert 0 < lat["p50"] <= lat["p95"] <= lat["p99"] <= lat["max"]
    assert r["send_lag_ms"]["count"] == 200
    assert r["late_frames"] >= 0 and r["cpu_s"] > 0 and r["wall_s"] > 0
    # The server saw 4 distinct calls, every frame intact, and a 1000 close on each.
    assert len(set(server.call_ids)) == 4 and server.bad_frames == 0
    assert sorted(server.frames_in.values()) == [50, 50, 50, 50]
    assert list(server.close_codes.values()) == [1000] * 4


def test_joined_fragmented_raw_clips_yield_a_stamp_per_chunk() -> None:
    """Clips of 2 frames (raw), sent as 2 fragments: one latency sample per 640-byte chunk."""
    server = EchoServer(content_type=AudioContentType.RAW, join=2, fragment=True)

    async def body(url: str) -> dict[str, Any]:
        return await run_load(url, calls=2, seconds=0.6, warmup=0.0)

    r = _in_thread(lambda: server.run(body))
    assert r["frames_sent"] == 60 and r["calls_completed"] == 2
    assert r["play_frames_received"] == 30
    assert r["play_chunks_received"] == 60
    assert r["command_latency_ms"]["count"] == 60 and r["bad_stamps"] == 0
    assert r["other_text_frames"] == 0 and r["bad_play_frames"] == 0


def test_warmup_drops_early_samples() -> None:
    server = EchoServer()

    async def body(url: str) -> dict[str, Any]:
        return await run_load(url, calls=1, seconds=0.4, warmup=10.0)

    r = _in_thread(lambda: server.run(body))
    assert r["play_frames_received"] == 20
    assert r["command_latency_ms"]["count"] == 0 and r["command_latency_ms"]["p50"] is None


def test_a_hang_up_frame_makes_the_caller_close_that_socket() -> None:
    server = EchoServer(hang_up_after=10)

    async def body(url: str) -> dict[str, Any]:
        return await run_load(url, calls=2, seconds=0.6, warmup=0.0)

    r = _in_thread(lambda: server.run(body))
    assert server.hung_up is not None
    assert r["calls_hung_up"] == 1 and r["calls_completed"] == 1
    assert r["hangup_frames_received"] == 1
    # The hung-up caller closed with 1000 and stopped streaming at once.
    assert server.close_codes[server.hung_up] == 1000
    assert server.frames_in[server.hung_up] < 20
    assert r["frames_sent"] < 60


def test_refused_and_unreachable_calls_are_counted() -> None:
    server = EchoServer(refuse=True)

    async def body(url: str) -> dict[str, Any]:
        refused = await run_load(url, calls=2, seconds=0.2, warmup=0.0)
        # Port 9 (discard): nothing listens there on a test machine.
        unreachable = await run_load("ws://127.0.0.1:9/x", calls=1, seconds=0.2)
        return {"refused": refused, "unreachable": unreachable}

    r = _in_thread(lambda: server.run(body))
    refused, unreachable = r["refused"], r["unreachable"]
    assert refused["calls_failed"] == 2 and refused["calls_connected"] == 0
    assert refused["frames_sent"] == 0
    assert any("404" in e for e in refused["errors"])
    assert unreachable["calls_failed"] == 1 and unreachable["errors"]


def test_command_line_spreads_calls_over_processes_and_aggregates() -> None:
    server = EchoServer()

    async def body(url: str) -> subprocess.CompletedProcess[str]:
        cmd = [sys.executable, "-m", "kgw_bench.loadgen", "--url", url, "--calls", "3",
               "--seconds", "0.4", "--warmup", "0", "--procs", "2", "--json"]
        return await asyncio.to_thread(subprocess.run, cmd, capture_output=True, text=True,
                                       timeout=30)

    done = _in_thread(lambda: server.run(body))
    assert done.returncode == 0, done.stderr
    r = json.loads(done.stdout.splitlines()[-1])
    assert r["procs"] == 2 and r["calls"] == r["calls_connected"] == 3
    assert r["frames_sent"] == r["play_frames_received"] == 60
    assert r["command_latency_ms"]["count"] == 60 and r["send_lag_ms"]["count"] == 60
    assert r["cpu_s"] > 0 and r["run_cpu_s"] > 0
    assert len(set(server.call_ids)) == 3


def _server_frame(b0: int, payload: bytes) -> bytes:
    n = len(payload)
    if n < 126:
        return bytes((b0, n)) + payload
    if n < 65536:
        return bytes((b0, 126)) + n.to_bytes(2, "big") + payload
    return bytes((b0, 127)) + n.to_bytes(8, "big") + payload


def _unmask(frame: bytes) -> tuple[int, bytes]:
    assert frame[1] & 0x80, "client frames must be masked"
    n = frame[1] & 0x7F
    key, payload = frame[2:6], frame[6:6 + n]
    return frame[0], bytes(b ^ key[i % 4] for i, b in enumerate(payload))


def test_frames_split_across_reads_fragments_pings_and_close() -> None:
    """The parser, fed 7 bytes per read: clips, a fragmented message, ping, hang-up, close."""

    async def scenario() -> None:
        gen = LoadGen("ws://127.0.0.1:1/x", 1, 1.0, 0.0, 0.0, 1.0, 1.0)
        ours, theirs = socket.socketpair()
        ours.setblocking(False)
        call = calls.Call(gen, 0)
        call.sock, call.fd, call.state = ours, ours.fileno(), calls.OPEN
        stamp = time.time_ns() // 1000
        pcm = stamp.to_bytes(8, "little") + TEMPLATE[8:]
        raw_clip = encode_play_audio(pcm * 2, 16000, AudioContentType.RAW).encode()
        half = len(raw_clip) // 2

        def feed(data: bytes) -> None:
            for i in range(0, len(data), 7):
                piece = data[i:i + 7]
                gen.rxbuf[:len(piece)] = piece
                call._received(len(piece), stamp + 2500)  # "received" 2.5 ms after the stamp

        feed(_server_frame(0x81, encode_play_audio(pcm, 16000).encode())
             + _server_frame(0x89, b"hi")
             + _server_frame(0x01, raw_clip[:half])
             + _server_frame(0x80, raw_clip[half:])
             + _server_frame(0x81, b'{"type":"somethingElse"}'))
        assert (call.play_frames, call.play_chunks) == (2, 3)
        assert list(gen.lat) == [2.5, 2.5, 2.5]
        assert gen.other_text == 1 and gen.bad_play == gen.bad_stamps == 0
        assert _unmask(theirs.recv(100)) == (0x8A, b"hi")  # the pong, masked

        feed(_server_frame(0x81, encode_hang_up().encode()))
        assert call.ended == calls.HUNG_UP and call.state == calls.CLOSING
        assert _unmask(theirs.recv(100)) == (0x88, (1000).to_bytes(2, "big"))
        feed(_server_frame(0x88, (1000).to_bytes(2, "big")))
        assert call.state == calls.CLOSED and call.done.done()
        assert theirs.recv(100) == b""  # the generator closed its socket
        theirs.close()

    _in_thread(scenario)
