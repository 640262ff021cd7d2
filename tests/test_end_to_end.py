"""End to end over real sockets and the real broker.

The gateway node and the echo bot run in this process on Twisted's asyncio
reactor; the simulated provider runs as its own process (``python -m
gateway.simulator``), as Knowlarity would, since Autobahn serves one
framework per process.
"""

from __future__ import annotations

import asyncio
import functools
import json
import sys
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import pytest_twisted
from twisted.internet import reactor

from gateway.bot.echo import EchoBotSettings, run_echo_bot
from gateway.bot.echo_logic import EchoPolicy
from gateway.bridge import as_deferred
from gateway.config import NodeConfig
from gateway.core import model as m
from gateway.core.wav import decode_wav, encode_wav
from gateway.node import Node
from gateway.records import end_reason
from gateway.sdk import BotSettings
from gateway.testing import CommandSender, InboundReader, OutboundReader

pytestmark = pytest.mark.broker

RATE = 16000
PATH = "/v2/login/vaani/knowlarity/setup-call-streams"


def known_audio(seconds: float, seed: int) -> bytes:
    """Loud noise: never silence to the bot, and any reordering or loss shows."""
    n = int(RATE * seconds) // 320 * 320  # whole 20 ms frames
    rng = np.random.default_rng(seed)
    return rng.integers(-12000, 12000, n, dtype=np.int16).astype("<i2").tobytes()


def node_config(bootstrap: str, prefix: str, node_id: str = "n1") -> NodeConfig:
    return NodeConfig(listen="tcp:0:interface=127.0.0.1", kafka=bootstrap, node_id=node_id,
                      topic_prefix=prefix, metrics_listen="", inbound_partitions=3,
                      linger_ms=1, drain_timeout_s=1)


@asynccontextmanager
async def running_node(config: NodeConfig) -> AsyncIterator[Node]:
    node = Node(config, reactor)
    await node.start()
    try:
        yield node
    finally:
        await node.shutdown()


@asynccontextmanager
async def running_bot(bootstrap: str, prefix: str, policy: EchoPolicy) -> AsyncIterator[None]:
    ready, stop = asyncio.Event(), asyncio.Event()
    settings = EchoBotSettings(
        bot=BotSettings(kafka=bootstrap, topic_prefix=prefix, group_id=prefix + "-bot"),
        policy=policy)
    task = asyncio.ensure_future(run_echo_bot(settings, ready=ready, stop=stop))
    await asyncio.wait_for(ready.wait(), 60)
    try:
        yield
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


@asynccontextmanager
async def reading(reader: Any) -> AsyncIterator[Any]:
    await reader.start()
    try:
        yield reader
    finally:
        await reader.stop()


def url_of(node: Node) -> str:
    return f"ws://127.0.0.1:{node.address.port}{PATH}"


async def simulate(url: str, args: Sequence[str]) -> dict[str, Any]:
    """Run the simulator as the provider would be: its own process. Returns its JSON."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway.simulator", "--url", url, "--json", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    lines = out.decode().strip().splitlines()
    assert lines, f"simulator printed nothing; stderr: {err.decode()[-2000:]}"
    result: dict[str, Any] = json.loads(lines[-1])
    return result


def audio_of(records: list[Any]) -> list[Any]:
    return [r.audio for r in records if r.WhichOneof("body") == "audio"]


def in_twisted(scenario: Any) -> Any:
    """Run an asyncio scenario on the reactor's loop from a pytest-twisted test."""
    @functools.wraps(scenario)
    async def test(*args: Any, **kwargs: Any) -> None:
        await as_deferred(scenario(*args, **kwargs))

    return pytest_twisted.ensureDeferred(test)


@in_twisted
async def test_call_audio_reaches_kafka_and_echo_comes_back(
        kafka_bootstrap: str, topic_prefix: str, tmp_path: Path) -> None:
    """Caller PCM lands on the inbound topic byte for byte and gap-free, the echo bot's
    audio returns as playAudio with the same PCM, the audit topic holds what was sent,
    and the caller's hang-up ends the call with that reason."""
    sent = known_audio(1.6, seed=1)
    wav = tmp_path / "in.wav"
    wav.write_bytes(encode_wav(sent, RATE))
    policy = EchoPolicy(echo_delay_ms=200, silence_hangup_s=0, max_call_s=0)
    config = node_config(kafka_bootstrap, topic_prefix)
    async with running_node(config) as node, \
            running_bot(kafka_bootstrap, topic_prefix, policy), \
            reading(InboundReader(kafka_bootstrap, topic_prefix)) as inbound, \
            reading(OutboundReader(kafka_bootstrap, topic_prefix)) as outbound:
        result = await simulate(url_of(node), [
            "--audio", str(wav), "--seconds", "1.6", "--linger-s", "2.5", "--out", str(tmp_path)])
        (call,) = result["calls"]
        call_id = call["call_id"]
        assert call["ended"] == "caller_hangup"
        assert call["frames_sent"] == len(sent) // 640

        await inbound.wait_for(lambda r: r.ended(call_id) is not None)
        recs = inbound.by_call[call_id]
        assert recs[0].WhichOneof("body") == "started"
        started = recs[0].started
        assert started.sample_rate == RATE
        assert started.reply_topic == config.commands_topic
        assert started.request_path == PATH
        assert json.loads(started.provider_fields_json)["uuid"] == call_id
        assert [r.record_seq for r in recs] == list(range(len(recs)))
        chunks = audio_of(recs)
        assert [c.seq for c in chunks] == list(range(len(chunks)))
        assert b"".join(c.pcm for c in chunks) == sent
        positions = [c.media_position_samples for c in chunks]
        sizes = [len(c.pcm) // 2 for c in chunks]
        assert positions == [sum(sizes[:i]) for i in range(len(sizes))]
        assert end_reason(recs[-1]) is m.EndReason.CALLER_HANGUP
        assert sum(1 for r in recs if r.WhichOneof("body") == "ended") == 1

        heard, heard_rate = decode_wav((tmp_path / f"{call_id}.heard.wav").read_bytes())
        assert heard_rate == RATE
        greeting_len = len(heard) - len(sent)
        assert greeting_len > 0, "the bot greets before it echoes"
        assert heard[greeting_len:] == sent

        await outbound.wait_for(
            lambda r: sum(len(x.audio.pcm) for x in r.by_call[call_id]) >= len(heard))
        audited = b"".join(x.audio.pcm for x in outbound.by_call[call_id]
                           if x.WhichOneof("body") == "audio")
        assert audited == heard


@in_twisted
async def test_bot_hang_up_sends_the_documented_frame(
        kafka_bootstrap: str, topic_prefix: str) -> None:
    """A bot's hang-up reaches the provider as playAudio with textContent
    asr_disconnect=true, and the call ends as a bot hang-up once the provider closes."""
    policy = EchoPolicy(echo_delay_ms=100, silence_hangup_s=0, max_call_s=1.0)
    async with running_node(node_config(kafka_bootstrap, topic_prefix)) as node, \
            running_bot(kafka_bootstrap, topic_prefix, policy), \
            reading(InboundReader(kafka_bootstrap, topic_prefix)) as inbound, \
            reading(OutboundReader(kafka_bootstrap, topic_prefix)) as outbound:
        result = await simulate(url_of(node), ["--seconds", "6", "--linger-s", "1"])
        (call,) = result["calls"]
        assert call["ended"] == "bot_hangup"
        call_id = call["call_id"]
        await inbound.wait_for(lambda r: r.ended(call_id) is not None)
        assert end_reason(inbound.ended(call_id)) is m.EndReason.BOT_HANGUP
        await outbound.wait_for(lambda r: any(
            x.WhichOneof("body") == "control" for x in r.by_call[call_id]))
        (control,) = [x.control for x in outbound.by_call[call_id]
                      if x.WhichOneof("body") == "control"]
        assert json.loads(control.frame) == {
            "type": "playAudio",
            "data": {"audioContentType": "wave", "audioContent": "None",
                     "textContent": "asr_disconnect=true"},
        }


@in_twisted
async def test_transfer_carries_parameters_in_order(
        kafka_bootstrap: str, topic_prefix: str) -> None:
    """A transfer command with parameters reaches the provider as
    asr_disconnect=true,parameter1=...,... in the bot's order and ends the call as transferred."""
    params = (("parameter1", "default"), ("queue", "sales"), ("agent", "42"))
    async with running_node(node_config(kafka_bootstrap, topic_prefix)) as node, \
            reading(InboundReader(kafka_bootstrap, topic_prefix)) as inbound, \
            reading(OutboundReader(kafka_bootstrap, topic_prefix)) as outbound:
        sender = CommandSender(kafka_bootstrap)
        await sender.start()

        async def bot() -> None:
            await inbound.wait_for(lambda r: bool(r.started_calls()), timeout=30)
            (start,) = inbound.started_calls()
            await sender.send(start.started.reply_topic, start.call_id, m.Transfer(params))

        try:
            result, _ = await asyncio.gather(
                simulate(url_of(node), ["--seconds", "8", "--linger-s", "1"]), bot())
        finally:
            await sender.stop()
        (call,) = result["calls"]
        assert call["ended"] == "transferred"
        assert [tuple(p) for p in call["transfer_parameters"]] == list(params)
        call_id = call["call_id"]
        await inbound.wait_for(lambda r: r.ended(call_id) is not None)
        assert end_reason(inbound.ended(call_id)) is m.EndReason.TRANSFERRED
        await outbound.wait_for(lambda r: bool(r.by_call[call_id]))
        (control,) = [x.control for x in outbound.by_call[call_id]
                      if x.WhichOneof("body") == "control"]
        assert json.loads(control.frame)["data"]["textContent"] == \
            "asr_disconnect=true,parameter1=default,queue=sales,agent=42"


@in_twisted
async def test_commands_reach_only_the_node_holding_the_call(
        kafka_bootstrap: str, topic_prefix: str) -> None:
    """With two nodes, each call's reply address is its own node's topic, and a mark sent
    there is acted on by that node alone."""
    base = node_config(kafka_bootstrap, topic_prefix)
    async with running_node(replace(base, node_id="a")) as node_a, \
            running_node(replace(base, node_id="b")) as node_b, \
            reading(InboundReader(kafka_bootstrap, topic_prefix)) as inbound:
        sender = CommandSender(kafka_bootstrap)
        await sender.start()

        async def bot() -> None:
            await inbound.wait_for(lambda r: len(r.started_calls()) == 4, timeout=30)
            for start in inbound.started_calls():
                await sender.send(start.started.reply_topic, start.call_id,
                                  m.Mark("mark-" + start.call_id))
                await sender.send(start.started.reply_topic, start.call_id, m.HangUp())

        try:
            results = await asyncio.gather(
                simulate(url_of(node_a), ["--calls", "2", "--seconds", "8", "--linger-s", "1"]),
                simulate(url_of(node_b), ["--calls", "2", "--seconds", "8", "--linger-s", "1"]),
                bot())
        finally:
            await sender.stop()
        by_node = {"a": results[0]["calls"], "b": results[1]["calls"]}
        for node_id, calls in by_node.items():
            for call in calls:
                assert call["ended"] == "bot_hangup"
                recs = inbound.by_call[call["call_id"]]
                assert recs[0].node_id == node_id
                assert recs[0].started.reply_topic.endswith(f".calls.commands.{node_id}")
                marks = [r.playback.mark_name for r in recs if r.WhichOneof("body") == "playback"
                         and r.playback.mark_name]
                assert marks == ["mark-" + call["call_id"]]
        for node in (node_a, node_b):
            reg = node.metrics.registry
            assert (reg.get_sample_value("kgw_commands_total", {"outcome": "unknown_call"})
                    or 0.0) == 0  # never counted: no sample at all
            assert reg.get_sample_value("kgw_commands_total", {"outcome": "ok"}) == 4
