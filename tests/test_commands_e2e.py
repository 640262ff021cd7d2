"""Commands end to end, over real sockets and the real broker: an uninterruptible prompt
through a clear, and a capture pause.

The node runs in this process; the simulated caller is its own process; the test is the bot,
sending commands with ``gateway.testing.CommandSender`` and reading the topics back.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from test_end_to_end import (
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

from gateway.core import model as m
from gateway.core.wav import decode_wav, encode_wav
from gateway.node import Node
from gateway.records import playback_kind
from gateway.testing import CommandSender, InboundReader, OutboundReader

pytestmark = pytest.mark.broker


@dataclass
class Rig:
    """A running node, readers of both call topics, and a command sender: the test is the bot."""

    node: Node
    inbound: InboundReader
    outbound: OutboundReader
    sender: CommandSender
    reply_topic: str = ""
    call_id: str = ""

    async def answer(self) -> None:
        """Wait for the one call to start; keep its reply topic and call id."""
        await self.inbound.wait_for(lambda r: bool(r.started_calls()), timeout=30)
        (start,) = self.inbound.started_calls()
        self.reply_topic, self.call_id = start.started.reply_topic, start.call_id

    async def send(self, body: m.CommandBody) -> None:
        await self.sender.send(self.reply_topic, self.call_id, body)


@asynccontextmanager
async def rig(bootstrap: str, prefix: str) -> AsyncIterator[Rig]:
    async with AsyncExitStack() as stack:
        enter = stack.enter_async_context
        node = await enter(running_node(node_config(bootstrap, prefix)))
        inbound = await enter(reading(InboundReader(bootstrap, prefix)))
        outbound = await enter(reading(OutboundReader(bootstrap, prefix)))
        sender = CommandSender(bootstrap)
        await sender.start()
        stack.push_async_callback(sender.stop)
        yield Rig(node, inbound, outbound, sender)


def _playbacks(recs: list[Any]) -> list[Any]:
    return [r for r in recs if r.WhichOneof("body") == "playback"]


@in_twisted
async def test_an_uninterruptible_prompt_survives_a_clear_and_is_heard_in_full(
        kafka_bootstrap: str, topic_prefix: str, tmp_path: Path) -> None:
    """A clear sent while an uninterruptible notice plays drops the interruptible prompt queued
    behind it, not the notice: the caller hears the notice bit for bit and nothing else, its
    mark is reached with the whole notice heard, and the prompt's mark is cleared."""
    notice = known_audio(2.5, seed=11)
    prompt = known_audio(2.0, seed=12)
    async with rig(kafka_bootstrap, topic_prefix) as bot:

        async def play() -> None:
            await bot.answer()
            await bot.send(m.PlayAudio(notice, RATE, uninterruptible=True))
            await bot.send(m.Mark("notice-done"))
            await bot.send(m.PlayAudio(prompt, RATE))
            await bot.send(m.Mark("prompt-done"))
            # Clear once the notice is being played.
            await bot.outbound.wait_for(lambda r: any(
                x.WhichOneof("body") == "audio" for x in r.by_call[bot.call_id]), timeout=30)
            await asyncio.sleep(0.3)
            await bot.send(m.ClearAudio())

        result, _ = await asyncio.gather(simulate(url_of(bot.node), [
            "--seconds", "4", "--linger-s", "1", "--out", str(tmp_path)]), play())
        inbound = bot.inbound
        (call,) = result["calls"]
        call_id = call["call_id"]
        assert call["ended"] == "caller_hangup"
        heard, heard_rate = decode_wav((tmp_path / f"{call_id}.heard.wav").read_bytes())
        assert heard_rate == RATE
        assert heard == notice

        await inbound.wait_for(lambda r: r.ended(call_id) is not None)
        events = [(playback_kind(r), r.playback.mark_name, r.playback.samples,
                   r.playback.heard_ms) for r in _playbacks(inbound.by_call[call_id])]
        assert events == [
            (m.PlaybackKind.CLEARED, "", len(prompt) // 2, 0),
            (m.PlaybackKind.MARK_REACHED, "notice-done", 0, 2500),
            (m.PlaybackKind.MARK_CLEARED, "prompt-done", 0, 0),
        ]


@in_twisted
async def test_a_capture_pause_withholds_caller_audio_and_reports_the_range(
        kafka_bootstrap: str, topic_prefix: str, tmp_path: Path) -> None:
    """Between PauseCapture and ResumeCapture the inbound topic carries no caller audio for the
    call, only one CaptureWithheld with the range; audio resumes after it with the position
    jumped by exactly the withheld samples, seq gap-free, and the published PCM is the caller's
    less the withheld range."""
    sent = known_audio(4.0, seed=21)
    wav = tmp_path / "in.wav"
    wav.write_bytes(encode_wav(sent, RATE))
    async with rig(kafka_bootstrap, topic_prefix) as bot:

        async def pause() -> None:
            await bot.answer()
            await bot.inbound.wait_for(lambda r: len(audio_of(r.by_call[bot.call_id])) >= 25)
            await bot.send(m.PauseCapture())
            await asyncio.sleep(1.0)
            await bot.send(m.ResumeCapture())

        result, _ = await asyncio.gather(simulate(url_of(bot.node), [
            "--audio", str(wav), "--seconds", "4", "--linger-s", "0.5"]), pause())
        inbound = bot.inbound
        (call,) = result["calls"]
        call_id = call["call_id"]
        assert call["ended"] == "caller_hangup"
        await inbound.wait_for(lambda r: r.ended(call_id) is not None)
        recs = inbound.by_call[call_id]
        kinds = [r.WhichOneof("body") for r in recs]
        assert kinds.count("capture_withheld") == 1
        at = kinds.index("capture_withheld")
        w = recs[at].capture_withheld
        before, after = audio_of(recs[:at]), audio_of(recs[at + 1:])
        assert before and after
        # Nothing but the CaptureWithheld between the last chunk before and the first after.
        assert kinds[at - 1] == "audio" and kinds[at + 1] == "audio"

        assert w.samples > 0 and w.frames == w.samples // 320  # the simulator's 20 ms frames
        assert w.first_media_position_samples == sum(len(a.pcm) // 2 for a in before)
        assert after[0].media_position_samples == w.first_media_position_samples + w.samples
        chunks = before + after
        assert [c.seq for c in chunks] == list(range(len(chunks)))
        start, end = 2 * w.first_media_position_samples, 2 * (w.first_media_position_samples
                                                              + w.samples)
        assert b"".join(c.pcm for c in before) == sent[:start]
        assert b"".join(c.pcm for c in after) == sent[end:]
        assert before[-1].received_unix_us <= w.first_received_unix_us \
            <= w.last_received_unix_us <= after[0].received_unix_us
        assert w.paused_unix_us <= w.first_received_unix_us
        assert 0.7 < w.samples / RATE < 1.6  # about the second the bot waited
        assert recs[-1].ended.audio_samples == len(sent) // 2
