"""The benchmark's bot: answers every caller audio record at once, stamped.

A member of a consumer group on ``<prefix>.calls.inbound`` (asyncio +
aiokafka). For every ``audio`` record it immediately sends a ``PlayAudio``
command carrying the same PCM, except that the first 8 bytes are replaced by
the command's own ``sent_unix_us`` (int64 little-endian, read right before the
send; ``Command.sent_unix_us`` holds the same value), to the reply topic the
call's ``started`` record named, keyed by call id. The load generator
(``kgw_bench.loadgen``) reads that stamp back out of the ``playAudio``
frame, so its latency is bot -> Kafka -> gateway -> caller.

The caller's own stamp (the load generator writes its send time into the same
8 bytes) is read on the way in: ``inbound_latency_ms`` is caller -> gateway ->
Kafka -> this bot, over the calls' audio after their first ``warmup_s``.

No delay, no per-call logic, no echo of anything but audio: it must cost
little per record, since it shares the machine with what it measures. So the
commands of one ``getmany`` fetch go out as one record batch per reply-topic
partition (``send_batch``; the partition is the default murmur2 partitioner's
choice for the call-id key, computed once per call), not one ``send`` each.
aiokafka keeps one produce request in flight per broker, so while the previous
batch is unacknowledged the loop waits before stamping the next fetch's
commands: stamps are taken as close to the actual send as aiokafka allows.

``python -m kgw_bench.stampbot --kafka HOST:PORT --topic-prefix P --group-id G``
prints ``event=stampbot_ready ...`` once it holds partitions and knows their
positions, runs until SIGTERM/SIGINT, then prints one JSON line of counters.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import signal
import sys
import time
from array import array
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener
from aiokafka.errors import IllegalStateError, KafkaError
from aiokafka.partitioner import DefaultPartitioner

from gateway import records, topics
from gateway.core import model as m
from gateway.kafka_access import from_env, target
from gateway.stats import summary

__all__ = ["run_stamp_bot", "main"]

STAMP_BYTES = 8
POLL_MS = 100  # getmany timeout: also how soon a stop request is seen
# The broker answers a fetch as soon as it has this much, or after POLL_MS...
# with fetch_min_bytes=1 every consumer spins fetch after fetch, each returning
# a record or two: on a 2-core machine the broker then eats the CPU the
# gateway is measured on. Set by env for experiments.
FETCH_MIN_BYTES = int(os.environ.get("KGW_BENCH_FETCH_MIN_BYTES", "1"))
SHUTDOWN_TIMEOUT_S = 10.0
MAX_LATENCY_US = 600_000_000  # a "stamp" further off than this is not one (not our caller)
WAITING_LOG_EVERY_S = 15.0
MAX_BATCH_BYTES = 512 * 1024


class _Assignment(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self) -> None:
        self.changed = asyncio.Event()

    def on_partitions_revoked(self, revoked: object) -> None:
        pass

    def on_partitions_assigned(self, assigned: object) -> None:
        self.changed.set()


def _fmt_tps(tps: Any) -> str:
    return ",".join(sorted(f"{tp.topic}[{tp.partition}]" for tp in tps))


async def _signal_ready(consumer: AIOKafkaConsumer, assignment: _Assignment, topic: str,
                        ready: asyncio.Event | None, announce: bool) -> None:
    """Set ``ready`` once partitions are assigned and their start positions known.

    As in ``gateway.bot.echo``: with ``latest``, a record produced after the
    assignment but before the position lookup would otherwise be skipped.
    """
    while True:
        try:
            await asyncio.wait_for(assignment.changed.wait(), WAITING_LOG_EVERY_S)
        except TimeoutError:
            print(f"event=stampbot_waiting_for_partitions topic={topic}", file=sys.stderr,
                  flush=True)
            continue
        assignment.changed.clear()
        assigned = consumer.assignment()
        if not assigned:
            continue
        try:
            for tp in assigned:
                await consumer.position(tp)
        except IllegalStateError:
            continue  # revoked meanwhile; the next assignment sets the event again
        if announce:
            print(f"event=stampbot_ready partitions={_fmt_tps(assigned)}", flush=True)
        if ready is not None:
            ready.set()
        return


async def stop_clients(consumer: AIOKafkaConsumer, producer: AIOKafkaProducer,
                       errors: list[str]) -> None:
    """A bench bot's clients stopped within bounds; a failed flush is one of its errors."""
    with contextlib.suppress(Exception):
        await consumer.stop()
    try:
        await asyncio.wait_for(producer.flush(), SHUTDOWN_TIMEOUT_S)
    except (TimeoutError, KafkaError) as e:
        errors.append(f"flush: {e!r}")
    with contextlib.suppress(TimeoutError, KafkaError):
        await asyncio.wait_for(producer.stop(), SHUTDOWN_TIMEOUT_S)


async def run_stamp_bot(bootstrap: str, prefix: str, group_id: str, *,
                        ready: asyncio.Event | None, stop: asyncio.Event,
                        linger_ms: int = 1, from_beginning: bool = False,
                        warmup_s: float = 2.0, announce: bool = False) -> dict[str, Any]:
    """Answer audio records until ``stop`` is set; return the counters.

    ``ready`` is set once the bot holds partitions of the inbound topic and
    knows where it starts reading them. Raises ``KafkaError`` if the broker
    cannot be reached at start.
    """
    inbound = topics.inbound_topic(prefix)
    cpu0 = time.process_time()
    kafka = target(bootstrap, from_env())  # the access settings bench handed on
    consumer = AIOKafkaConsumer(
        **kafka,
        group_id=group_id,
        client_id="kgw-stampbot",
        auto_offset_reset="earliest" if from_beginning else "latest",
        enable_auto_commit=True,
        fetch_max_wait_ms=POLL_MS,
        fetch_min_bytes=FETCH_MIN_BYTES,
    )
    producer = AIOKafkaProducer(
        **kafka,
        client_id="kgw-stampbot",
        acks="all",
        enable_idempotence=True,
        linger_ms=linger_ms,
        # One record batch holds all of a fetch's commands for a partition (default 16 KiB:
        # ~20 commands, and a second batch for a partition waits for the first to be sent).
        max_batch_size=MAX_BATCH_BYTES,
    )
    assignment = _Assignment()
    consumer.subscribe([inbound], listener=assignment)
    try:
        await producer.start()
        await consumer.start()
    except BaseException:
        with contextlib.suppress(Exception):
            await consumer.stop()
        with contextlib.suppress(Exception):
            await producer.stop()
        raise

    counts = {"records": 0, "audio_records": 0, "started": 0, "ended": 0, "other_records": 0,
              "bad_records": 0, "records_without_start": 0, "short_audio": 0,
              "commands_sent": 0, "commands_acked": 0, "send_failures": 0, "batches": 0,
              "max_batch": 0, "bad_stamps": 0}
    errors: list[str] = []
    inbound_lat = array("q")  # caller stamp -> this bot, µs
    # call id -> (reply topic, sample rate, key, µs after which latency counts, (topic, partition))
    calls: dict[str, tuple[str, int, bytes, int, tuple[str, int]]] = {}
    warmup_us = round(warmup_s * 1_000_000)

    def acked(fut: asyncio.Future[Any], n: int) -> None:
        if fut.cancelled() or fut.exception() is not None:
            failed(asyncio.CancelledError() if fut.cancelled() else fut.exception(), n)
        else:
            counts["commands_acked"] += n

    def failed(e: BaseException | None, n: int = 1) -> None:
        counts["send_failures"] += n
        if len(errors) < 10:
            errors.append(repr(e))

    async def submit(builder: Any, topic: str, partition: int, n: int) -> None:
        try:
            fut = await producer.send_batch(builder, topic, partition=partition)
        except KafkaError as e:
            failed(e, n)
            return
        counts["commands_sent"] += n
        fut.add_done_callback(lambda f: acked(f, n))

    partitioner = DefaultPartitioner()
    partitions: dict[str, list[int]] = {}  # reply topic -> its partitions

    async def partition_for(topic: str, key: bytes) -> int:
        known = partitions.get(topic)
        if known is None:
            known = partitions[topic] = sorted(await producer.partitions_for(topic))
        return int(partitioner(key, known, known))

    decode = records.decode_inbound
    encode = records.encode_command
    command, play = m.Command, m.PlayAudio
    clock = time.time_ns
    ready_task = asyncio.ensure_future(
        _signal_ready(consumer, assignment, inbound, ready, announce))
    try:
        while not stop.is_set():
            batches = await consumer.getmany(timeout_ms=POLL_MS)
            if not batches:
                continue
            # The commands of this fetch, one record batch per (reply topic, partition):
            # send_batch costs far less per record than producer.send.
            out: dict[tuple[str, int], list[Any]] = {}
            size = audio_n = bad_stamps = 0
            for batch in batches.values():
                size += len(batch)
                for msg in batch:
                    try:
                        rec = decode(msg.value)
                    except records.BadRecord:
                        counts["bad_records"] += 1
                        continue
                    kind = rec.WhichOneof("body")
                    if kind == "audio":
                        audio_n += 1
                        call = calls.get(rec.call_id)
                        if call is None:
                            counts["records_without_start"] += 1
                            continue
                        audio = rec.audio
                        pcm = audio.pcm
                        if len(pcm) < STAMP_BYTES:
                            counts["short_audio"] += 1
                            continue
                        now = clock() // 1000
                        if now >= call[3]:
                            d = now - int.from_bytes(pcm[:STAMP_BYTES], "little")
                            if 0 <= d < MAX_LATENCY_US:
                                inbound_lat.append(d)
                            else:
                                bad_stamps += 1
                        stamp = clock() // 1000
                        value = encode(command(
                            call_id=rec.call_id,
                            body=play(pcm=stamp.to_bytes(STAMP_BYTES, "little")
                                      + pcm[STAMP_BYTES:],
                                      sample_rate=audio.sample_rate or call[1]),
                            sent_at=stamp / 1_000_000,
                        ))
                        tp = call[4]
                        pending = out.get(tp)
                        if pending is None:
                            pending = out[tp] = [producer.create_batch(), 0]
                        if pending[0].append(timestamp=None, key=call[2], value=value) is None:
                            await submit(pending[0], tp[0], tp[1], pending[1])  # full
                            pending[0], pending[1] = producer.create_batch(), 0
                            pending[0].append(timestamp=None, key=call[2], value=value)
                        pending[1] += 1
                    elif kind == "started":
                        counts["started"] += 1
                        st = rec.started
                        key = rec.call_id.encode()
                        try:
                            tp = (st.reply_topic, await partition_for(st.reply_topic, key))
                        except KafkaError as e:
                            failed(e, 0)
                            continue
                        calls[rec.call_id] = (st.reply_topic, st.sample_rate, key,
                                              clock() // 1000 + warmup_us, tp)
                    elif kind == "ended":
                        counts["ended"] += 1
                        calls.pop(rec.call_id, None)
                    else:
                        counts["other_records"] += 1
            for (topic, partition), (builder, n) in out.items():
                await submit(builder, topic, partition, n)
            counts["batches"] += 1
            counts["records"] += size
            counts["audio_records"] += audio_n
            counts["bad_stamps"] += bad_stamps
            if size > counts["max_batch"]:
                counts["max_batch"] = size
    finally:
        ready_task.cancel()
        await asyncio.gather(ready_task, return_exceptions=True)
        await stop_clients(consumer, producer, errors)
    # Both read before the summary's sort, which is no part of answering records.
    usage = resource.getrusage(resource.RUSAGE_SELF)
    run_cpu_s = time.process_time() - cpu0
    result: dict[str, Any] = dict(counts)
    result["live_calls"] = len(calls)
    result["inbound_latency_ms"] = summary(inbound_lat, (50, 95, 99), scale=0.001, ndigits=3)
    result["cpu_s"] = round(usage.ru_utime + usage.ru_stime, 3)
    result["run_cpu_s"] = round(run_cpu_s, 3)
    handled = counts["records"]
    result["cpu_us_per_record"] = round(result["run_cpu_s"] * 1e6 / handled, 2) if handled \
        else None
    result["errors"] = errors
    return result


# --- the command line -------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m kgw_bench.stampbot",
                                description="The benchmark's bot (see module doc).")
    p.add_argument("--kafka", required=True, help="bootstrap servers, HOST:PORT[,...]")
    p.add_argument("--topic-prefix", required=True, help="topic name prefix")
    p.add_argument("--group-id", default="kgw-bench-stampbot", help="consumer group id")
    p.add_argument("--linger-ms", type=int, default=1, help="producer linger (default 1)")
    p.add_argument("--from-beginning", action="store_true",
                   help="with no committed offset, start at the oldest record")
    p.add_argument("--warmup-s", type=float, default=2.0,
                   help="inbound latency ignores each call's first W s (default 2)")
    return p


async def _main(args: argparse.Namespace) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    return await run_stamp_bot(args.kafka, args.topic_prefix, args.group_id, ready=None,
                               stop=stop, linger_ms=args.linger_ms,
                               from_beginning=args.from_beginning, warmup_s=args.warmup_s,
                               announce=True)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        topics.check_name_part("topic prefix", args.topic_prefix)
    except ValueError as e:
        print(f"stampbot: {e}", file=sys.stderr)
        return 2
    try:
        result = asyncio.run(_main(args))
    except KafkaError as e:
        print(f"event=stampbot_failed error={e!r}", file=sys.stderr, flush=True)
        return 1
    print(json.dumps(result, separators=(",", ":")), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
