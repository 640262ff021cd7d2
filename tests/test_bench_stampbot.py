"""The benchmark's stamp bot (kgw_bench.stampbot) on a real broker."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from gateway import records, topics
from gateway.core import model as m
from gateway.proto.knowlarity.gateway.v1 import command_pb2
from kgw_bench.loadgen import noise_template
from kgw_bench.stampbot import run_stamp_bot

TEMPLATE = noise_template()


def _start(call_id: str) -> m.CallStart:
    return m.CallStart(call_id=call_id, sample_rate=16000, caller="+919800000001",
                       callee="+918000000000", direction=m.Direction.INBOUND,
                       provider_campaign="", fields={"uuid": call_id}, shape="json",
                       raw=json.dumps({"uuid": call_id}))


async def _create_topics(bootstrap: str, prefix: str, reply: str) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topics.inbound_topic(prefix), 2, 1),
                                   NewTopic(reply, 1, 1)])
    finally:
        await admin.close()


async def _call_and_answer(bootstrap: str, prefix: str, reply: str,
                           caller_stamp: int) -> Any:
    """Produce a started and an audio record; return the command read from ``reply``."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    consumer = AIOKafkaConsumer(reply, bootstrap_servers=bootstrap,
                                auto_offset_reset="earliest", enable_auto_commit=False)
    await producer.start()
    await consumer.start()
    try:
        now = time.time()
        pcm = caller_stamp.to_bytes(8, "little") + TEMPLATE[8:]
        for rec in (m.Inbound("c1", 0, now, m.CallStarted(_start("c1"), reply, "/x")),
                    m.Inbound("c1", 1, now, m.CallerAudio(0, 0, now, pcm, 16000))):
            await producer.send_and_wait(topics.inbound_topic(prefix),
                                         records.encode_inbound(rec, "n1"), key=b"c1")
        return await asyncio.wait_for(consumer.getone(), 30)
    finally:
        await consumer.stop()
        await producer.stop()


def _check_command(msg: Any, caller_stamp: int) -> int:
    assert msg.key == b"c1"
    pb = command_pb2.Command()
    pb.ParseFromString(msg.value)
    assert pb.call_id == "c1" and pb.WhichOneof("body") == "play"
    assert pb.play.sample_rate == 16000
    assert pb.play.pcm[8:] == TEMPLATE[8:]  # the same PCM ...
    stamp = int.from_bytes(pb.play.pcm[:8], "little")  # ... stamped by the bot
    assert stamp == pb.sent_unix_us and stamp > caller_stamp
    return stamp


@pytest.mark.broker
def test_stamp_bot_answers_audio_with_its_own_stamp(kafka_bootstrap: str,
                                                    topic_prefix: str) -> None:
    reply = topics.commands_topic(topic_prefix, "n1")
    caller_stamp = time.time_ns() // 1000 - 3000  # "sent" 3 ms ago

    async def scenario() -> tuple[Any, dict[str, Any]]:
        await _create_topics(kafka_bootstrap, topic_prefix, reply)
        ready, stop = asyncio.Event(), asyncio.Event()
        bot = asyncio.ensure_future(run_stamp_bot(kafka_bootstrap, topic_prefix,
                                                  f"g-{topic_prefix}", ready=ready, stop=stop,
                                                  warmup_s=0.0))
        try:
            await asyncio.wait_for(asyncio.shield(ready.wait()), 60)
            msg = await _call_and_answer(kafka_bootstrap, topic_prefix, reply, caller_stamp)
        finally:
            stop.set()
        return msg, await bot

    with ThreadPoolExecutor(1) as pool:  # --reactor=asyncio runs a loop on this thread
        msg, result = pool.submit(asyncio.run, scenario()).result(timeout=120)
    _check_command(msg, caller_stamp)
    assert result["started"] == 1 and result["audio_records"] == 1
    assert result["commands_sent"] == result["commands_acked"] == 1
    assert result["send_failures"] == result["bad_records"] == 0
    assert result["inbound_latency_ms"]["count"] == 1
    assert result["inbound_latency_ms"]["p50"] >= 3.0
    assert result["cpu_s"] > 0 and result["errors"] == []


@pytest.mark.broker
def test_stamp_bot_command_line_says_ready_and_prints_counters(kafka_bootstrap: str,
                                                               topic_prefix: str) -> None:
    reply = topics.commands_topic(topic_prefix, "n1")
    caller_stamp = time.time_ns() // 1000
    with ThreadPoolExecutor(2) as pool:
        pool.submit(asyncio.run, _create_topics(kafka_bootstrap, topic_prefix, reply)).result()
        bot = subprocess.Popen(
            [sys.executable, "-m", "kgw_bench.stampbot", "--kafka", kafka_bootstrap,
             "--topic-prefix", topic_prefix, "--group-id", f"g-{topic_prefix}",
             "--warmup-s", "0"],
            stdout=subprocess.PIPE, text=True)
        try:
            assert bot.stdout is not None
            line = pool.submit(bot.stdout.readline).result(timeout=60)
            assert line.startswith("event=stampbot_ready partitions="), line
            msg = pool.submit(asyncio.run, _call_and_answer(
                kafka_bootstrap, topic_prefix, reply, caller_stamp)).result(timeout=60)
        finally:
            bot.send_signal(signal.SIGTERM)
            out, _ = bot.communicate(timeout=30)
    _check_command(msg, caller_stamp)
    assert bot.returncode == 0
    result = json.loads(out.splitlines()[-1])
    assert result["commands_sent"] == result["commands_acked"] == 1
    assert result["cpu_s"] > 0
