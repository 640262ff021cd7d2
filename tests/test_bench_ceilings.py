"""The benchmark's ceiling servers (kgw_bench), each run as the harness runs it: a process.

Each prints ``event=ready``, does its job, and on SIGTERM (or, for
bare_produce, by itself) prints one JSON line of counters and exits 0.
Clients run under ``asyncio.run`` in a worker thread, since ``--reactor=asyncio``
keeps a loop running on the test's own thread.
"""

from __future__ import annotations

import asyncio
import json
import os
import queue
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from websockets.asyncio.client import connect

from gateway import records
from gateway.core import model as m
from gateway.core.knowlarity import HangUpFrame, PlayFrame, decode_gateway_frame, encode_start
from gateway.ports import free_port

T = TypeVar("T")
RATE = 16000
PATH = "/vaani/knowlarity/setup-call-streams"
ROOT = Path(__file__).resolve().parent.parent


def run_async(coro: Coroutine[Any, Any, T]) -> T:
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()



class Ceiling:
    """A ceiling process whose stdout lines are collected by a thread."""

    def __init__(self, module: str, *args: str) -> None:
        # stderr to a file: a pipe nobody reads could fill and stall the child.
        self.err = tempfile.TemporaryFile("w+")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", f"kgw_bench.{module}", *args], cwd=ROOT,
            stdout=subprocess.PIPE, stderr=self.err, text=True)
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.stdout: list[str] = []
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.stdout.append(line.rstrip("\n"))
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def wait_ready(self, timeout: float = 60) -> None:
        while True:
            line = self.lines.get(timeout=timeout)
            if line == "event=ready":
                return
            if line is None:
                raise AssertionError(f"exited before ready: {self._stderr()}")

    def result(self, timeout: float = 60) -> dict[str, Any]:
        """Wait for the exit (status 0) and return the JSON line it printed last."""
        rc = self.proc.wait(timeout)
        stderr = self._stderr()
        assert rc == 0, f"exit status {rc}: {stderr}"
        while self.lines.get(timeout=5) is not None:
            pass
        assert self.stdout.count("event=ready") == 1, self.stdout
        out: dict[str, Any] = json.loads(self.stdout[-1])
        for key in ("frames_in", "frames_out", "records_produced", "commands_consumed",
                    "errors"):
            assert isinstance(out[key], int), key
        return out

    def stop(self) -> dict[str, Any]:
        self.proc.send_signal(signal.SIGTERM)
        return self.result()

    def _stderr(self) -> str:
        self.err.seek(0)
        return self.err.read()[-2000:]

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.err.close()


@contextmanager
def ceiling(module: str, *args: str) -> Iterator[Ceiling]:
    c = Ceiling(module, *args)
    try:
        c.wait_ready()
        yield c
    finally:
        c.kill()


def frames(n: int) -> list[bytes]:
    return [os.urandom(640) for _ in range(n)]


async def call_and_listen(port: int, pcm: list[bytes], until_hang_up: bool
                          ) -> tuple[list[bytes], bool]:
    """Places one call, sends ``pcm`` paced at 20 ms; returns the PCM heard and if hung up."""
    heard: list[bytes] = []
    hung_up = False
    url = f"ws://127.0.0.1:{port}{PATH}"
    async with connect(url, compression=None, max_size=None) as ws:
        await ws.send(encode_start("bench-call", RATE, "+911", "+912"))

        async def listen() -> None:
            nonlocal hung_up
            async for text in ws:
                assert isinstance(text, str)
                frame = decode_gateway_frame(text, call_sample_rate=RATE)
                if isinstance(frame, HangUpFrame):
                    hung_up = True
                    return
                assert isinstance(frame, PlayFrame) and frame.sample_rate == RATE
                heard.append(frame.pcm)
                if not until_hang_up and len(heard) == len(pcm):
                    return

        listener = asyncio.ensure_future(listen())
        for chunk in pcm:
            await ws.send(chunk)
            await asyncio.sleep(0.02)
        await asyncio.wait_for(listener, 60)
    return heard, hung_up


def test_bare_autobahn_answers_each_audio_frame_with_a_play_audio_of_the_same_pcm() -> None:
    """The bare Autobahn ceiling sends every caller frame back as a wave playAudio, bit for bit."""
    port = free_port()
    sent = frames(5)
    with ceiling("bare_autobahn", "--listen", f"tcp:{port}:interface=127.0.0.1") as server:
        heard, _ = run_async(call_and_listen(port, sent, until_hang_up=False))
        out = server.stop()
    assert heard == sent
    assert out["frames_in"] == 6  # the start message and five audio frames
    assert out["frames_out"] == 5
    assert out["errors"] == 0
    assert out["records_produced"] == out["commands_consumed"] == 0


async def echo_bot(bootstrap: str, prefix: str, hang_up_after: int, stop: asyncio.Event,
                   seen: list[Any]) -> None:
    """Plays each caller frame straight back; hangs up after ``hang_up_after`` frames."""
    inbound = f"{prefix}.calls.inbound"
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True)
    await consumer.start()
    await producer.start()
    try:
        tps = [TopicPartition(inbound, p) for p in range(12)]  # the bridge's default
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        reply: dict[str, str] = {}
        while not stop.is_set():
            batches = await consumer.getmany(timeout_ms=200)
            for msgs in batches.values():
                for msg in msgs:
                    rec = records.decode_inbound(msg.value)
                    seen.append(rec)
                    kind = rec.WhichOneof("body")
                    if kind == "started":
                        reply[rec.call_id] = rec.started.reply_topic
                        continue
                    if kind != "audio":
                        continue
                    key = rec.call_id.encode()
                    play = m.PlayAudio(rec.audio.pcm, rec.audio.sample_rate)
                    await producer.send(reply[rec.call_id],
                                        records.encode_command(m.Command(rec.call_id, play)),
                                        key=key)
                    if rec.audio.seq + 1 == hang_up_after:
                        await producer.send(
                            reply[rec.call_id],
                            records.encode_command(m.Command(rec.call_id, m.HangUp())), key=key)
    finally:
        await consumer.stop()
        await producer.stop()


async def call_through_bot(port: int, bootstrap: str, prefix: str, pcm: list[bytes],
                           hang_up_after: int) -> tuple[list[bytes], bool, list[Any]]:
    stop = asyncio.Event()
    seen: list[Any] = []
    bot = asyncio.ensure_future(echo_bot(bootstrap, prefix, hang_up_after, stop, seen))
    try:
        heard, hung_up = await call_and_listen(port, pcm, until_hang_up=True)
        # The CallEnded follows the close.
        for _ in range(100):
            if any(r.WhichOneof("body") == "ended" for r in seen):
                break
            await asyncio.sleep(0.1)
    finally:
        stop.set()
        await bot
    return heard, hung_up, seen


@pytest.mark.broker
def test_peer_bridge_round_trips_caller_audio_through_kafka_and_a_bot(
    kafka_bootstrap: str, topic_prefix: str
) -> None:
    """The peer bridge publishes the gateway's records and plays a bot's commands on the call."""
    port = free_port()
    sent = frames(8)
    with ceiling("peer_bridge", "--listen-port", str(port), "--kafka", kafka_bootstrap,
                 "--topic-prefix", topic_prefix, "--node-id", "peer") as server:
        heard, hung_up, seen = run_async(
            call_through_bot(port, kafka_bootstrap, topic_prefix, sent, hang_up_after=5))
        out = server.stop()
    assert heard == sent[:5]
    assert hung_up
    kinds = [r.WhichOneof("body") for r in seen]
    assert kinds == ["started"] + ["audio"] * len(sent) + ["ended"], kinds
    started, audio, ended = seen[0], seen[1:-1], seen[-1]
    assert started.call_id == "bench-call"
    assert started.started.reply_topic == f"{topic_prefix}.calls.commands.peer"
    assert started.started.sample_rate == RATE
    assert [r.record_seq for r in seen] == list(range(len(seen)))
    assert [a.audio.pcm for a in audio] == sent
    assert [a.audio.seq for a in audio] == list(range(len(sent)))
    assert [a.audio.media_position_samples for a in audio] == [320 * i for i in range(len(sent))]
    assert records.end_reason(ended) is m.EndReason.BOT_HANGUP
    assert out["calls"] == 1
    assert out["frames_in"] == 1 + len(sent)
    assert out["frames_out"] == 6  # five playAudio and the hang-up
    assert out["records_produced"] == len(seen)
    assert out["commands_consumed"] >= 6
    assert out["errors"] == 0


async def read_all(bootstrap: str, topic: str, partitions: int = 12) -> list[Any]:
    """Every record in the topic, decoded."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        # After the seek: aiokafka 0.14 fetches nothing if end_offsets comes first.
        total = sum((await consumer.end_offsets(tps)).values())
        out: list[Any] = []
        for _ in range(60):
            if len(out) >= total:
                break
            for msgs in (await consumer.getmany(timeout_ms=1000)).values():
                out += [records.decode_inbound(msg.value) for msg in msgs]
        return out
    finally:
        await consumer.stop()


@pytest.mark.broker
def test_bare_produce_has_every_record_it_produced_acknowledged(
    kafka_bootstrap: str, topic_prefix: str
) -> None:
    """Two calls for one second give about 100 records, every one acknowledged and in the topic."""
    topic = f"{topic_prefix}.produce"
    c = Ceiling("bare_produce", "--kafka", kafka_bootstrap, "--topic", topic, "--calls", "2",
                "--seconds", "1")
    try:
        c.wait_ready()
        out = c.result()
    finally:
        c.kill()
    assert out["records"] > 0
    assert out["acked"] == out["records"] == out["records_produced"]
    assert out["failed"] == out["errors"] == 0
    assert out["us_per_record"] > 0
    assert out["produce_p50_ms"] <= out["produce_p99_ms"]
    produced = run_async(read_all(kafka_bootstrap, topic))
    assert len(produced) == out["records"]
    assert all(r.WhichOneof("body") == "audio" and len(r.audio.pcm) == 640 for r in produced)
    by_call: dict[str, list[int]] = {}
    for r in produced:
        by_call.setdefault(r.call_id, []).append(r.audio.seq)
    assert len(by_call) == 2
    assert all(seqs == list(range(len(seqs))) for seqs in by_call.values())
