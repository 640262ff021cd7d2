"""``replay`` end to end: a call placed through a node, then placed again from the bus.

The node runs in this process on Twisted's asyncio reactor; the simulated
provider and the replay run as their own processes (Autobahn serves one
framework per process). No bot: the test answers each call with one play
command, sent once all its caller audio is on the inbound topic.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from gateway.core import model as m
from gateway.core.wav import encode_wav
from gateway.testing import CommandSender, InboundReader
from tests.test_end_to_end import (
    RATE,
    audio_of,
    in_twisted,
    known_audio,
    node_config,
    reading,
    running_node,
    simulate,
    url_of,
)

pytestmark = pytest.mark.broker

ANSWER = (np.sin(np.arange(RATE * 3 // 2) * 0.05) * 8000).astype("<i2").tobytes()  # 1.5 s


async def _answer_when_heard(inbound: InboundReader, sender: CommandSender, call_id: str,
                             caller_bytes: int) -> None:
    """Play ANSWER to the call once all its caller audio is on the bus (a bot's reply)."""
    def heard(r: Any) -> bool:
        return sum(len(a.pcm) for a in audio_of(r.by_call.get(call_id, []))) >= caller_bytes

    await inbound.wait_for(heard, timeout=90)
    started = inbound.by_call[call_id][0].started
    await sender.send(started.reply_topic, call_id, m.PlayAudio(ANSWER, RATE))


async def _replay(args: list[str]) -> tuple[int, dict[str, Any], str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway.replay", "--json", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    lines = out.decode().strip().splitlines()
    assert lines, f"replay printed nothing; stderr: {err.decode()[-2000:]}"
    return proc.returncode or 0, json.loads(lines[-1]), out.decode()


@in_twisted
async def test_replay_sends_the_recorded_caller_audio_bit_exact_under_a_new_id(
        kafka_bootstrap: str, topic_prefix: str, tmp_path: Path) -> None:
    """The replay of a call is a new call <id>-replay-1 with the recorded start fields,
    whose caller audio on the inbound topic equals the original's byte for byte, and
    whose JSON sets its turn latencies beside the original's."""
    sent = known_audio(1.6, seed=7)
    wav = tmp_path / "in.wav"
    wav.write_bytes(encode_wav(sent, RATE))
    config = node_config(kafka_bootstrap, topic_prefix)
    sender = CommandSender(kafka_bootstrap)
    await sender.start()
    try:
        async with running_node(config) as node, \
                reading(InboundReader(kafka_bootstrap, topic_prefix)) as inbound:
            # The original call; its id is the simulator's, learnt from the bus.
            placing = asyncio.ensure_future(simulate(url_of(node), [
                "--audio", str(wav), "--seconds", "1.6", "--linger-s", "2.5"]))
            await inbound.wait_for(lambda r: bool(r.started_calls()), timeout=60)
            call_id = inbound.started_calls()[0].call_id
            await _answer_when_heard(inbound, sender, call_id, len(sent))
            (call,) = (await placing)["calls"]
            assert call["call_id"] == call_id and call["ended"] == "caller_hangup"
            await inbound.wait_for(lambda r: r.ended(call_id) is not None)

            new_id = f"{call_id}-replay-1"
            answering = asyncio.ensure_future(
                _answer_when_heard(inbound, sender, new_id, len(sent)))
            status, result, out = await _replay([
                "--kafka", kafka_bootstrap, "--topic-prefix", topic_prefix,
                "--call-id", call_id, "--url", url_of(node), "--linger-s", "2.5"])
            await answering
            assert status == 0, out
            assert result["call_id"] == new_id
            assert result["ended"] == "caller_hangup"
            assert result["audio_sent_ms"] == pytest.approx(1600)
            assert result["audio_heard_ms"] == pytest.approx(1500)
            await inbound.wait_for(lambda r: r.ended(new_id) is not None)
            # Each answered turn was observed by the node's histogram as it happened.
            observed = node.metrics.registry.get_sample_value("kgw_turn_latency_seconds_count")
            assert observed == 2

        original, again = inbound.by_call[call_id], inbound.by_call[new_id]
        assert b"".join(a.pcm for a in audio_of(again)) == \
            b"".join(a.pcm for a in audio_of(original)) == sent
        fields = json.loads(original[0].started.provider_fields_json)
        assert json.loads(again[0].started.provider_fields_json) == {**fields, "uuid": new_id}
        ended = inbound.ended(call_id).ended
        assert result["original"] == {"turns": ended.turns,
                                      "turn_latency_ms": list(ended.turn_latency_ms)}
        assert ended.turns == 1
        replayed = inbound.ended(new_id).ended
        assert result["replay"] == {"turns": 1,
                                    "turn_latency_ms": list(replayed.turn_latency_ms)}
    finally:
        await sender.stop()
