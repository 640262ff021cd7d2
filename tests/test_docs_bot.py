"""The complete bot printed in docs/bots.md, run as printed: in memory and on a broker."""

from __future__ import annotations

import re
import types
from pathlib import Path

import numpy as np
import pytest
from test_bots_scale import config
from test_end_to_end import in_twisted, reading, running_node, simulate, url_of

from gateway.core import model as m
from gateway.core.wav import decode_wav, encode_wav
from gateway.sdk import BotSettings
from gateway.testing import InboundReader, ScriptedCall, run_async, running_bot

DOC = Path(__file__).parent.parent / "docs" / "bots.md"
RATE = 8000


def the_bot() -> types.ModuleType:
    text = DOC.read_text()
    block = re.search(r"<!-- minimal-bot -->\n```python\n(.*?)```\n<!-- /minimal-bot -->",
                      text, re.S)
    assert block, "the minimal bot's markers are missing from docs/bots.md"
    code = block.group(1)
    assert len(code.splitlines()) < 40, "the guide promises a bot in under 40 lines"
    module = types.ModuleType("repeat_bot")
    exec(compile(code, str(DOC), "exec"), module.__dict__)  # noqa: S102 - our own doc
    return module


def speech(seconds: float, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    return rng.integers(-8000, 8000, int(RATE * seconds), dtype=np.int16).astype("<i2").tobytes()


def quiet(seconds: float) -> bytes:
    return bytes(2 * int(RATE * seconds))


TURNS = [speech(0.5, 1), speech(0.3, 2), speech(0.4, 3)]


def test_the_guide_s_bot_in_memory() -> None:
    """A beep, each of three utterances played back after its pause, then the hang-up."""
    bot = the_bot()

    async def scenario() -> list[m.Command]:
        async with ScriptedCall(bot.handle, sample_rate=RATE, realtime=False) as sc:
            for turn in TURNS:
                await sc.say(turn)
                await sc.silence(1.5)  # the pause ends the turn; the playback is heard
            await sc.wait_for(m.HangUp, timeout=5)
        return sc.commands

    commands = run_async(scenario())
    plays = [c.body for c in commands if isinstance(c.body, m.PlayAudio)]
    assert len(plays) == 4 and len(plays[0].pcm) == 2 * RATE // 5  # the 200 ms beep
    assert [p.pcm for p in plays[1:]] == TURNS
    assert [type(c.body) for c in commands[-2:]] == [m.Mark, m.HangUp]


@pytest.mark.broker
@in_twisted
async def test_the_guide_s_bot_on_a_broker(kafka_bootstrap: str, topic_prefix: str,
                                           tmp_path: Path) -> None:
    """The same bot against a node: the caller hears the beep and its own three turns,
    and the bot hangs up."""
    bot = the_bot()
    audio = tmp_path / "caller.wav"
    audio.write_bytes(encode_wav(b"".join(t + quiet(1.5) for t in TURNS), RATE))
    settings = BotSettings(kafka=kafka_bootstrap, topic_prefix=topic_prefix,
                           group_id=topic_prefix + "-repeat")
    async with running_node(config(kafka_bootstrap, topic_prefix, "n1")) as node, \
            reading(InboundReader(kafka_bootstrap, topic_prefix)), \
            running_bot(bot.handle, settings):
        result = await simulate(url_of(node), [
            "--audio", str(audio), "--seconds", "6.6", "--linger-s", "3",
            "--out", str(tmp_path)])
    (call,) = result["calls"]
    assert call["ended"] == "bot_hangup", call
    heard, rate = decode_wav((tmp_path / f"{call['call_id']}.heard.wav").read_bytes())
    assert rate == RATE
    for turn in TURNS:
        assert turn in heard, "the caller hears each turn played back byte for byte"
