"""Ceiling: the bare aiokafka produce path, with no sockets at all.

Produces what a gateway node would produce for the caller audio of N calls:
one ``InboundRecord`` with a 640-byte ``CallerAudio`` (20 ms of 16 kHz mono
s16le) per call every 20 ms, each encoded fresh with
``gateway.records.encode_inbound`` from model values as the node does, keyed
by the call id, with the node's producer settings (``acks="all"``,
idempotence, ``linger_ms``). Calls are paced in real time with random phases.
One task drives all calls and awaits ``producer.send`` (the enqueue) for each
record, as the node's drain loop does; acknowledgements are counted through
the futures ``send`` returns.

    python -m kgw_bench.bare_produce --kafka HOST:PORT --topic T --calls N --seconds S

Prints ``event=ready`` once the producer is started, produces for S seconds
(SIGTERM or Ctrl-C stop it early), waits for the outstanding acks and prints
one JSON line, then exits 0. ``cpu_s`` and ``wall_s`` cover ready to the last
ack (``cpu_total_s`` includes start-up); ``us_per_record`` is ``cpu_s`` per
record; ``produce_p50_ms``/``produce_p99_ms`` are enqueue-to-ack latencies.
"""

from __future__ import annotations

import argparse
import asyncio
import heapq
import json
import random
import resource
import signal
import struct
import sys
import time
from collections.abc import Sequence
from typing import Any

from aiokafka import AIOKafkaProducer

from gateway import records
from gateway.core import model as m
from gateway.kafka.bus import ensure_topics
from gateway.kafka_access import from_env, target
from gateway.stats import percentiles

RATE = 16000
FRAME_S = 0.020
FRAME_BYTES = 640  # 20 ms of 16 kHz mono s16le
FRAME_SAMPLES = FRAME_BYTES // 2


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


class _Call:
    __slots__ = ("call_id", "key", "seq")

    def __init__(self, call_id: str) -> None:
        self.call_id = call_id
        self.key = call_id.encode()
        self.seq = 0


async def run(args: argparse.Namespace) -> dict[str, Any]:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    await ensure_topics(args.kafka, [(args.topic, args.partitions, args.replication_factor)])
    producer = AIOKafkaProducer(
        **target(args.kafka, from_env()),
        acks="all",
        enable_idempotence=True,
        linger_ms=args.linger_ms,
        client_id=f"bench-produce-{args.node_id}",
    )
    await producer.start()
    # Metadata for the topic now, so the first records do not pay for it.
    await producer.partitions_for(args.topic)

    counts = {"records": 0, "acked": 0, "failed": 0}
    latencies: list[float] = []
    errors: dict[str, int] = {}
    in_flight: set[asyncio.Future[Any]] = set()

    def delivered(fut: asyncio.Future[Any], queued_at: float) -> None:
        in_flight.discard(fut)
        if fut.cancelled() or fut.exception() is not None:
            counts["failed"] += 1
            name = "cancelled" if fut.cancelled() else type(fut.exception()).__name__
            errors[name] = errors.get(name, 0) + 1
        else:
            counts["acked"] += 1
            latencies.append(time.monotonic() - queued_at)

    rng = random.Random(args.seed)
    base_pcm = bytes(rng.getrandbits(8) for _ in range(FRAME_BYTES))
    tail = base_pcm[8:]
    run_id = f"{rng.getrandbits(32):08x}"
    calls = [_Call(f"bench-{run_id}-{i}") for i in range(args.calls)]

    print("event=ready", flush=True)
    cpu0, wall0 = _cpu(), time.monotonic()
    start = loop.time() + 0.05
    end = start + args.seconds
    # (when the next frame of the call is due, call index)
    due = [(start + rng.random() * FRAME_S, i) for i in range(len(calls))]
    heapq.heapify(due)
    topic, node_id = args.topic, args.node_id
    try:
        while due and not stop.is_set():
            when, i = due[0]
            if when >= end:
                break
            delay = when - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
                continue
            heapq.heapreplace(due, (when + FRAME_S, i))
            call = calls[i]
            now = time.time()
            # A fresh PCM object per frame, as a socket read gives the node; the
            # first 8 bytes carry the time, as the load generator's do.
            pcm = struct.pack("<d", now) + tail
            seq = call.seq
            call.seq += 1
            value = records.encode_inbound(m.Inbound(
                call.call_id, seq, now,
                m.CallerAudio(seq=seq, media_position_samples=seq * FRAME_SAMPLES,
                              received_at=now, pcm=pcm, sample_rate=RATE)), node_id)
            queued_at = time.monotonic()
            try:
                fut = await producer.send(topic, value, key=call.key)
            except Exception as e:  # counted; the run goes on
                counts["records"] += 1
                counts["failed"] += 1
                errors[type(e).__name__] = errors.get(type(e).__name__, 0) + 1
                continue
            counts["records"] += 1
            in_flight.add(fut)
            fut.add_done_callback(lambda f, q=queued_at: delivered(f, q))
        await producer.flush()
        if in_flight:
            await asyncio.wait(list(in_flight), timeout=30)
    finally:
        cpu_s, wall_s = _cpu() - cpu0, time.monotonic() - wall0
        await producer.stop()

    produce_ms = percentiles(latencies, (50, 99), scale=1000, ndigits=3)
    n = counts["records"]
    return {
        "calls": args.calls,
        "seconds": args.seconds,
        "records": n,
        "acked": counts["acked"],
        "failed": counts["failed"],
        "failures": errors,
        "cpu_s": round(cpu_s, 4),
        "cpu_total_s": round(_cpu(), 4),
        "wall_s": round(wall_s, 4),
        "us_per_record": round(cpu_s / n * 1e6, 2) if n else None,
        "produce_p50_ms": produce_ms["p50"],
        "produce_p99_ms": produce_ms["p99"],
        # The counters every ceiling prints.
        "frames_in": 0,
        "frames_out": 0,
        "records_produced": counts["acked"],
        "commands_consumed": 0,
        "errors": counts["failed"],
    }


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m kgw_bench.bare_produce",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--kafka", default="127.0.0.1:9092", help="bootstrap servers")
    p.add_argument("--topic", required=True, help="topic to produce to (created if missing)")
    p.add_argument("--calls", type=int, default=1, help="concurrent calls (default 1)")
    p.add_argument("--seconds", type=float, default=10.0, help="how long to produce")
    p.add_argument("--linger-ms", type=int, default=5, help="producer linger (default 5)")
    p.add_argument("--partitions", type=int, default=12,
                   help="partitions if the topic is created (default 12)")
    p.add_argument("--replication-factor", type=int, default=1)
    p.add_argument("--node-id", default="bench", help="node_id written in the records")
    p.add_argument("--seed", type=int, default=None, help="seed for phases and PCM")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.calls < 1 or args.seconds <= 0:
        print("bare_produce: --calls must be >= 1 and --seconds > 0", file=sys.stderr)
        return 2
    result = asyncio.run(run(args))
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
