"""How long ``audit`` takes for one long call on a busy topic, from the bus alone.

    python -m kgw_bench.audit_cost [--kafka HOST:PORT] [--minutes 10] [--busy-calls 24]

Writes, as a node would, one call of ``--minutes`` (16 kHz, a record each 20 ms,
a bot clip of 1 s every 4 s) among ``--busy-calls`` other calls spread over
``--partitions`` inbound partitions: half of them in the ``--minutes`` before it
started, half while it ran. Then it audits the call three ways and prints each
figure: as ``audit --call-id`` finds it (its start from the ``calls.started``
topic), with no started record to go by (``--lookback-s`` back to the start of
the busy traffic), and the files alone (timeline, WAV, PNG, HTML). Figures,
not assertions: run it on the machine you deploy to.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import heapq
import json
import resource
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from aiokafka import AIOKafkaProducer

from gateway import topics
from gateway.audit import reading
from gateway.audit.command import AuditSettings, write_call
from gateway.audit.timeline import build
from gateway.kafka.bus import ensure_topics
from gateway.proto.knowlarity.gateway.v1 import inbound_pb2, outbound_pb2

RATE = 16000
FRAME = 320  # samples: 20 ms
CLIP_EVERY = 200  # frames: a 1 s bot clip every 4 s of caller audio
CLIP = RATE  # samples


def _pcm(rng: np.random.Generator, samples: int) -> bytes:
    return rng.integers(-8000, 8000, samples, dtype=np.int16).astype("<i2").tobytes()


def _records(call_id: str, start_us: int, frames: int, rng: np.random.Generator,
             with_clips: bool) -> Iterator[tuple[str, bytes, bytes, int]]:
    """(topic suffix, key, value, timestamp ms) of one call, in time order."""
    seq = 0
    key = call_id.encode()

    def inbound(at_us: int, **body: object) -> tuple[str, bytes, bytes, int]:
        nonlocal seq
        rec = inbound_pb2.InboundRecord(call_id=call_id, node_id="bench", time_unix_us=at_us,
                                        record_seq=seq, **body)
        seq += 1
        return "inbound", key, rec.SerializeToString(), at_us // 1000

    started = inbound(start_us, started=inbound_pb2.CallStarted(
        sample_rate=RATE, caller="+910000000000", callee="+911111111111",
        raw_start_message=json.dumps({"uuid": call_id})))
    yield started
    yield "started", key, started[2], started[3]
    for k in range(frames):
        at = start_us + (k + 1) * 20_000
        yield inbound(at, audio=inbound_pb2.CallerAudio(
            media_position_samples=k * FRAME, pcm=_pcm(rng, FRAME), received_unix_us=at,
            sample_rate=RATE))
        if with_clips and k % CLIP_EVERY == CLIP_EVERY - 1:
            out = outbound_pb2.OutboundRecord(
                call_id=call_id, node_id="bench", sent_unix_us=at + 300_000,
                audio=outbound_pb2.AudioSent(pcm=_pcm(rng, CLIP), sample_rate=RATE,
                                             media_position_samples=(k // CLIP_EVERY) * CLIP))
            yield "outbound", key, out.SerializeToString(), (at + 300_000) // 1000
    end = start_us + (frames + 1) * 20_000
    yield inbound(end, ended=inbound_pb2.CallEnded(
        reason=inbound_pb2.END_REASON_CALLER_HANGUP, duration_ms=(end - start_us) // 1000))


async def _write(servers: str, prefix: str, calls: list[tuple[str, int, bool]],
                 frames: int) -> int:
    producer = AIOKafkaProducer(bootstrap_servers=servers, linger_ms=20, acks=1,
                                max_batch_size=1 << 20, max_request_size=8 << 20)
    await producer.start()
    rng = np.random.default_rng(1)
    sent = 0
    try:
        streams = [_records(cid, start, frames, rng, clips) for cid, start, clips in calls]
        # Interleaved by time, as a node writes its calls (each stream is in time order).
        pending = []
        for suffix, key, value, ts_ms in heapq.merge(*streams, key=lambda r: r[3]):
            pending.append(await producer.send(f"{prefix}.calls.{suffix}", value, key=key,
                                               timestamp_ms=ts_ms))
            sent += 1
            if len(pending) >= 20_000:
                await asyncio.gather(*pending)
                pending.clear()
        await asyncio.gather(*pending)
    finally:
        await producer.stop()
    return sent


async def measure(servers: str, minutes: float, busy: int, partitions: int) -> None:
    prefix = "auditcost" + uuid.uuid4().hex[:8]
    names = [topics.inbound_topic(prefix), topics.outbound_topic(prefix),
             topics.started_topic(prefix)]
    await ensure_topics(servers, [(n, partitions, 1) for n in names])
    frames = int(minutes * 60 * 50)
    span_us = frames * 20_000
    t0 = int(time.time() * 1e6) - span_us - 60_000_000  # the call ended a minute ago
    target = "call-under-audit"
    calls = [(target, t0, True)]
    calls += [(f"busy-{i}", t0 - span_us if i % 2 else t0, True) for i in range(busy)]
    began = time.perf_counter()
    written = await _write(servers, prefix, calls, frames)
    print(f"wrote {written} records ({len(calls)} calls of {minutes:g} min, {partitions} "
          f"partitions) in {time.perf_counter() - began:.1f} s")
    n = reading.partition_of(target.encode(), partitions)
    sharing = sum(1 for cid, _, _ in calls[1:] if reading.partition_of(cid.encode(),
                                                                      partitions) == n)
    print(f"the audited call's partition {n} also holds {sharing} busy calls")

    for label, kwargs in (
            ("from its start (calls.started)", {"since_us": None, "lookback_s": 86400}),
            ("no start known: lookback to the busy traffic",
             {"since_us": t0 - span_us - 1_000_000, "lookback_s": 86400})):
        began = time.perf_counter()
        got = await reading.fetch_call(servers, prefix, target, **kwargs)
        took = time.perf_counter() - began
        print(f"read {label}: {took:.2f} s, {len(got.inbound)} inbound and "
              f"{len(got.outbound)} outbound records of the call")
    began = time.perf_counter()
    timeline = build(got.inbound, got.outbound)
    built = time.perf_counter() - began
    with tempfile.TemporaryDirectory() as out:
        began = time.perf_counter()
        # As audit writes them: a WAV over its embedding bound is linked, not embedded.
        embed = int(AuditSettings().embed_audio_max_mb * 1e6)
        paths = write_call(timeline, Path(out), embed_max_bytes=embed)
        wrote = time.perf_counter() - began
        sizes = ", ".join(f"{p.suffix} {p.stat().st_size / 1e6:.1f} MB" for p in paths)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"timeline {built:.2f} s; files {wrote:.2f} s ({sizes}); peak RSS {rss:.0f} MB")


@contextlib.contextmanager
def _broker(servers: str) -> Iterator[str]:
    if servers:
        yield servers
        return
    from gateway.localkafka import LocalKafka

    with LocalKafka(heap_mb=1024, fast_start=False) as kafka:
        yield kafka.bootstrap


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kgw_bench.audit_cost", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kafka", default="", help="a broker to use (default: one of our own)")
    parser.add_argument("--minutes", type=float, default=10.0, help="the audited call's length")
    parser.add_argument("--busy-calls", type=int, default=24, help="other calls on the topic")
    parser.add_argument("--partitions", type=int, default=12, help="inbound partitions")
    args = parser.parse_args(argv)
    with _broker(args.kafka) as servers:
        asyncio.run(measure(servers, args.minutes, args.busy_calls, args.partitions))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
