"""The realistic workload's bot: answers each caller turn like a TTS bot, stamped.

A consumer-group member on ``<prefix>.calls.inbound`` like the stamp bot
(``kgw_bench.stampbot``, whose readiness handshake it shares). Per call a
``realistic.TurnTaker`` reads the caller's audio (an energy check per
record): after the caller's turn ends it sends one ``PlayAudio`` at 24 kHz
(1 to 4 s, the call's script says how long) whose head carries the send time
(``realistic.stamp``), then a ``Mark``; caller speech before the mark is
reported is a barge-in, answered with ``ClearAudio``.

Counters for the harness: ``expected_chunks`` is the 20 ms chunks the caller
should receive: every answer's length at 16 kHz, less what a clear dropped
(``realistic.played_after_clear``).

``python -m kgw_bench.talkbot --kafka HOST:PORT --topic-prefix P --group-id G
[--seed N]`` prints ``event=stampbot_ready ...`` once it holds partitions,
runs until SIGTERM/SIGINT, then prints one JSON line of counters.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import resource
import signal
import sys
import time
from array import array
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.errors import KafkaError

from gateway import records, topics
from gateway.core import model as m
from gateway.kafka_access import from_env, target
from gateway.stats import summary
from kgw_bench import realistic as rl
from kgw_bench.stampbot import (
    MAX_LATENCY_US,
    POLL_MS,
    STAMP_BYTES,
    _Assignment,
    _signal_ready,
    stop_clients,
)

SCRIPT_HORIZON_S = 3600.0  # the script is read this far; calls are far shorter
CAMPAIGN_PREFIX = "bench-"  # the load generator names each call's index in its campaign


@dataclass
class _Call:
    reply_topic: str
    key: bytes
    rate: int
    index: int
    taker: rl.TurnTaker
    warm_until_us: int
    answer_samples: int = 0  # the last answer's length at the call's rate


def call_index(campaign: str) -> int:
    """The load generator's call index from the start message's campaign, else 0."""
    if campaign.startswith(CAMPAIGN_PREFIX):
        with contextlib.suppress(ValueError):
            return int(campaign[len(CAMPAIGN_PREFIX):])
    return 0


async def run_talk_bot(bootstrap: str, prefix: str, group_id: str, *, seed: int,
                       stop: asyncio.Event, warmup_s: float = 2.0,
                       announce: bool = False) -> dict[str, Any]:
    inbound = topics.inbound_topic(prefix)
    cpu0 = time.process_time()
    kafka = target(bootstrap, from_env())
    consumer = AIOKafkaConsumer(**kafka, group_id=group_id, client_id="kgw-talkbot",
                                auto_offset_reset="latest", enable_auto_commit=True,
                                fetch_max_wait_ms=POLL_MS)
    producer = AIOKafkaProducer(**kafka, client_id="kgw-talkbot", acks="all",
                                enable_idempotence=True, linger_ms=1)
    assignment = _Assignment()
    consumer.subscribe([inbound], listener=assignment)
    await producer.start()
    await consumer.start()
    counts = {"records": 0, "audio_records": 0, "started": 0, "ended": 0, "other_records": 0,
              "bad_records": 0, "records_without_start": 0, "commands_sent": 0,
              "commands_acked": 0, "send_failures": 0, "utterances": 0, "clears": 0,
              "marks_reached": 0, "marks_cleared": 0, "audio_dropped_samples": 0,
              "expected_chunks": 0, "cleared_chunks": 0, "bad_stamps": 0}
    errors: list[str] = []
    inbound_lat = array("q")
    calls: dict[str, _Call] = {}
    warmup_us = round(warmup_s * 1_000_000)
    clock = time.time_ns

    def acked(fut: asyncio.Future[Any]) -> None:
        if fut.cancelled() or fut.exception() is not None:
            counts["send_failures"] += 1
            if len(errors) < 10:
                errors.append(repr(fut.exception() if not fut.cancelled() else "cancelled"))
        else:
            counts["commands_acked"] += 1

    async def send(call_id: str, call: _Call, body: Any, at: int) -> None:
        value = records.encode_command(m.Command(call_id=call_id, body=body,
                                                 sent_at=at / 1_000_000))
        try:
            fut = await producer.send(call.reply_topic, value, key=call.key)
        except KafkaError as e:
            counts["send_failures"] += 1
            errors.append(repr(e))
            return
        counts["commands_sent"] += 1
        fut.add_done_callback(acked)

    async def act(call_id: str, call: _Call, action: rl.Play | rl.Clear) -> None:
        if isinstance(action, rl.Clear):
            counts["clears"] += 1
            await send(call_id, call, m.ClearAudio(), clock() // 1000)
            return
        body = rl.utterance(action.utterance_s, seed * 1_000_003 + call.index * 1009 + action.turn)
        at = clock() // 1000  # stamped right before the send, as the stamp bot does
        pcm = rl.stamp(body, at)
        counts["utterances"] += 1
        call.answer_samples = len(pcm) // 2 * call.rate // rl.TTS_RATE
        counts["expected_chunks"] += call.answer_samples // rl.CHUNK_SAMPLES
        await send(call_id, call, m.PlayAudio(pcm=pcm, sample_rate=rl.TTS_RATE), at)
        await send(call_id, call, m.Mark(action.mark), clock() // 1000)

    ready_task = asyncio.ensure_future(_signal_ready(consumer, assignment, inbound, None,
                                                     announce))
    try:
        while not stop.is_set():
            batches = await consumer.getmany(timeout_ms=POLL_MS)
            for batch in batches.values():
                for msg in batch:
                    counts["records"] += 1
                    try:
                        rec = records.decode_inbound(msg.value)
                    except records.BadRecord:
                        counts["bad_records"] += 1
                        continue
                    kind = rec.WhichOneof("body")
                    call = calls.get(rec.call_id)
                    if kind == "started":
                        counts["started"] += 1
                        st = rec.started
                        index = call_index(st.provider_campaign)
                        calls[rec.call_id] = _Call(
                            st.reply_topic, rec.call_id.encode(), st.sample_rate or 16000,
                            index, rl.TurnTaker(rl.conversation(seed, index, SCRIPT_HORIZON_S),
                                                fallback_seed=seed + index),
                            clock() // 1000 + warmup_us)
                    elif call is None:
                        counts["records_without_start"] += 1
                    elif kind == "audio":
                        counts["audio_records"] += 1
                        audio = rec.audio
                        pcm = audio.pcm
                        now = clock() // 1000
                        if len(pcm) >= STAMP_BYTES and now >= call.warm_until_us:
                            d = now - int.from_bytes(pcm[:STAMP_BYTES], "little")
                            if 0 <= d < MAX_LATENCY_US:
                                inbound_lat.append(d)
                            else:
                                counts["bad_stamps"] += 1
                        rate = audio.sample_rate or call.rate
                        action = call.taker.audio(rl.is_speech(pcm), len(pcm) / 2 / rate)
                        if action is not None:
                            await act(rec.call_id, call, action)
                    elif kind == "playback":
                        pb = rec.playback
                        what = records.playback_kind(rec)
                        if what in (m.PlaybackKind.MARK_REACHED, m.PlaybackKind.MARK_CLEARED):
                            counts["marks_reached" if what == m.PlaybackKind.MARK_REACHED
                                   else "marks_cleared"] += 1
                            call.taker.mark_done(pb.mark_name)
                        elif what == m.PlaybackKind.CLEARED:
                            played = rl.played_after_clear(call.answer_samples, pb.samples)
                            chunks = (call.answer_samples - played) // rl.CHUNK_SAMPLES
                            counts["cleared_chunks"] += chunks
                            counts["expected_chunks"] -= chunks
                        elif what == m.PlaybackKind.AUDIO_DROPPED:
                            counts["audio_dropped_samples"] += pb.samples
                    elif kind == "ended":
                        counts["ended"] += 1
                        calls.pop(rec.call_id, None)
                    else:
                        counts["other_records"] += 1
    finally:
        ready_task.cancel()
        await asyncio.gather(ready_task, return_exceptions=True)
        await stop_clients(consumer, producer, errors)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    result: dict[str, Any] = dict(counts)
    result["barge_ins"] = counts["clears"]
    result["live_calls"] = len(calls)
    result["inbound_latency_ms"] = summary(inbound_lat, (50, 95, 99), scale=0.001, ndigits=3)
    result["cpu_s"] = round(usage.ru_utime + usage.ru_stime, 3)
    result["run_cpu_s"] = round(time.process_time() - cpu0, 3)
    result["errors"] = errors
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m kgw_bench.talkbot",
                                description="The realistic workload's bot (see module doc).")
    p.add_argument("--kafka", required=True)
    p.add_argument("--topic-prefix", required=True)
    p.add_argument("--group-id", default="kgw-bench-talkbot")
    p.add_argument("--seed", type=int, default=rl.DEFAULT_SEED)
    p.add_argument("--warmup-s", type=float, default=2.0)
    args = p.parse_args(argv)

    async def run() -> dict[str, Any]:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        return await run_talk_bot(args.kafka, args.topic_prefix, args.group_id,
                                  seed=args.seed, stop=stop, warmup_s=args.warmup_s,
                                  announce=True)

    try:
        result = asyncio.run(run())
    except KafkaError as e:
        print(f"event=talkbot_failed error={e!r}", file=sys.stderr, flush=True)
        return 1
    print(json.dumps(result, separators=(",", ":")), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
