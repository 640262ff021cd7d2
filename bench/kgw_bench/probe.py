"""The benchmark's view from the bus: when caller audio becomes visible to a consumer.

Run as its own process (``python -m kgw_bench.probe``) so that its work
is not charged to the gateway. For every audio record it takes the time it was
read minus the time the gateway received the frame (``received_unix_us``):
both are this machine's wall clock. Latency samples are kept only inside the
measurement window; audio bytes are counted over the whole run, to find
frames lost.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import signal
import time

from aiokafka import AIOKafkaConsumer, TopicPartition

from gateway.kafka_access import from_env, target
from gateway.records import decode_inbound
from gateway.stats import summary

FETCH_WAIT_MS = int(os.environ.get("KGW_BENCH_FETCH_WAIT_MS", "100"))
FETCH_MIN_BYTES = int(os.environ.get("KGW_BENCH_FETCH_MIN_BYTES", "1"))


async def probe(bootstrap: str, topic: str, window: tuple[float, float],
                stop: asyncio.Event) -> dict[str, object]:
    consumer = AIOKafkaConsumer(**target(bootstrap, from_env()), enable_auto_commit=False,
                                fetch_max_wait_ms=FETCH_WAIT_MS, fetch_min_bytes=FETCH_MIN_BYTES,
                                max_partition_fetch_bytes=4 << 20)
    await consumer.start()
    try:
        parts = consumer.partitions_for_topic(topic)
        while not parts:
            await asyncio.sleep(0.2)
            await consumer._client.force_metadata_update()
            parts = consumer.partitions_for_topic(topic)
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        for tp in tps:
            await consumer.position(tp)
        print("event=probe_ready", flush=True)
        lat_us: list[int] = []
        audio_records = audio_bytes = calls = ended = 0
        lo_us, hi_us = int(window[0] * 1e6), int(window[1] * 1e6)
        while not stop.is_set():
            batches = await consumer.getmany(timeout_ms=100, max_records=5000)
            now_us = time.time_ns() // 1000
            for msgs in batches.values():
                for msg in msgs:
                    rec = decode_inbound(msg.value)
                    kind = rec.WhichOneof("body")
                    if kind == "audio":
                        audio_records += 1
                        audio_bytes += len(rec.audio.pcm)
                        got = rec.audio.received_unix_us
                        if lo_us <= got <= hi_us:
                            lat_us.append(now_us - got)
                    elif kind == "started":
                        calls += 1
                    elif kind == "ended":
                        ended += 1
    finally:
        await consumer.stop()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "calls_started": calls, "calls_ended": ended,
        "audio_records": audio_records, "audio_bytes": audio_bytes,
        "inbound_latency_ms": summary(lat_us, (50, 95, 99), scale=0.001, ndigits=3),
        "cpu_s": round(usage.ru_utime + usage.ru_stime, 3),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--kafka", required=True)
    p.add_argument("--topic", required=True)
    p.add_argument("--window-start", type=float, required=True, help="epoch seconds")
    p.add_argument("--window-end", type=float, required=True, help="epoch seconds")
    args = p.parse_args()

    async def run() -> dict[str, object]:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        return await probe(args.kafka, args.topic, (args.window_start, args.window_end), stop)

    print(json.dumps(asyncio.run(run())), flush=True)


if __name__ == "__main__":
    main()
