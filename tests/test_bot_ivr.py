"""``bot ivr`` on a scripted call (gateway.testing.ScriptedCall), in call time, no broker.

The call is at 16 kHz, the prompt at 22050 Hz (1.5 s: 24000 samples at the call's
rate). Caller chunks are 20 ms (320 samples). Speech is a constant level well above
the threshold, silence is zeros, so every instant below is worked out by hand.
"""

from __future__ import annotations

import argparse
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from gateway import sdk
from gateway.bot import ivr
from gateway.core import model as m
from gateway.core.wav import encode_wav
from gateway.settings import SettingError, from_args
from gateway.testing import ScriptedCall, run_async

RATE = 16000
POLICY = ivr.IvrPolicy(speech_dbfs=-40.0, barge_in_ms=200, end_silence_ms=600,
                       max_answer_s=5.0, no_answer_s=3.0, transfer_min_answer_ms=1500)


def speech(seconds: float) -> np.ndarray:
    """A constant level of 1000 (-30.3 dBFS RMS): speech for a -40 dBFS threshold."""
    return np.full(round(seconds * RATE), 1000, dtype=np.int16)


def kinds(sc: ScriptedCall) -> list[str]:
    return [type(c.body).__name__ for c in sc.commands]


def run_call(script: Callable[[ScriptedCall], Awaitable[None]], policy: ivr.IvrPolicy = POLICY,
             **kw: Any) -> ScriptedCall:
    async def main() -> ScriptedCall:
        async with ScriptedCall(ivr.IvrBot(policy), sample_rate=RATE, realtime=False,
                                **kw) as sc:
            await script(sc)
        return sc
    return run_async(main())


def test_shipped_prompt_is_at_another_rate_than_calls() -> None:
    """The shipped prompt is 1.5 s at 22050 Hz, the goodbye 0.5 s: the node converts them."""
    pcm, rate = ivr.load_clip("", "prompt.wav")
    assert (rate, len(pcm)) == (22050, 33075 * 2)
    pcm, rate = ivr.load_clip("", "goodbye.wav")
    assert (rate, len(pcm)) == (22050, 2 * 5512 * 2)  # round(0.25 s * 22050) a tone


def test_barge_in_clears_the_prompt_and_the_long_answer_is_transferred() -> None:
    """Speech from 0.3 s clears the prompt at 0.5 s (200 ms of it), the mark comes back
    CLEARED with the 500 ms heard; 2 s of speech then 600 ms of silence: transferred."""
    async def script(sc: ScriptedCall) -> None:
        await sc.silence(0.3)
        await sc.say(speech(2.0))
        await sc.silence(1.0)

    sc = run_call(script)
    assert kinds(sc) == ["PlayAudio", "Mark", "ClearAudio", "Transfer"]
    play = sc.commands[0].body
    assert isinstance(play, m.PlayAudio) and (play.sample_rate, len(play.pcm)) == (22050, 66150)
    # 11025 of the prompt's 33075 samples played: 8000 of 24000 at the call's rate.
    assert sc.events == [sdk.PlaybackCleared(16000),
                         sdk.MarkResult("prompt", sdk.MarkOutcome.CLEARED, 500)]
    assert sc.transferred == {"reason": "ivr", "answer_ms": "2000"}
    assert sc.end == sdk.CallEnd("transferred")
    assert sc.played_pcm() == [(play.pcm[: 11025 * 2], 22050)]


def test_speech_shorter_than_barge_in_does_not_clear() -> None:
    """180 ms of speech over the prompt (under 200 ms) clears nothing: the mark is REACHED."""
    async def script(sc: ScriptedCall) -> None:
        await sc.silence(0.5)
        await sc.say(speech(0.18))
        await sc.silence(1.5)

    sc = run_call(script)
    assert "ClearAudio" not in kinds(sc)
    assert sc.events == [sdk.MarkResult("prompt", sdk.MarkOutcome.REACHED, 1500)]


def test_no_barge_in_long_answer_is_transferred() -> None:
    """Silence over the prompt: mark REACHED at 1.5 s with 1500 ms heard; then 1.6 s of
    speech (not under 1500 ms) and 600 ms of silence: transferred with answer_ms 1600."""
    async def script(sc: ScriptedCall) -> None:
        await sc.silence(2.0)
        await sc.say(speech(1.6))
        await sc.silence(1.0)

    sc = run_call(script)
    assert kinds(sc) == ["PlayAudio", "Mark", "Transfer"]
    assert sc.events == [sdk.MarkResult("prompt", sdk.MarkOutcome.REACHED, 1500)]
    assert sc.transferred == {"reason": "ivr", "answer_ms": "1600"}
    assert not sc.hung_up


def test_no_barge_in_short_answer_hears_goodbye_and_is_hung_up() -> None:
    """1.4 s of speech after the prompt (under 1500 ms): goodbye, then the hang-up once the
    goodbye has played; the caller heard the prompt and the goodbye in full."""
    async def script(sc: ScriptedCall) -> None:
        await sc.silence(2.0)
        await sc.say(speech(1.4))
        await sc.silence(3.0)  # the decision at 4.0 s, the goodbye until 4.5 s

    sc = run_call(script)
    assert kinds(sc) == ["PlayAudio", "Mark", "PlayAudio", "HangUp"]
    assert sc.hung_up and sc.transferred is None
    prompt, goodbye = ivr.load_clip("", "prompt.wav"), ivr.load_clip("", "goodbye.wav")
    assert sc.played_pcm() == [prompt, goodbye]
    assert sc.now == pytest.approx(4.5)  # the feed stopped when the call ended


def test_no_answer_is_hung_up() -> None:
    """Silence throughout: no answer 3 s after listening began (1.48 s, the chunk the mark
    came back with), so at 4.48 s the goodbye, and the hang-up once it has played."""
    async def script(sc: ScriptedCall) -> None:
        await sc.silence(6.0)

    sc = run_call(script)
    assert kinds(sc) == ["PlayAudio", "Mark", "PlayAudio", "HangUp"]
    assert sc.hung_up and sc.now == pytest.approx(4.98)


def test_answer_ends_at_max_answer() -> None:
    """Speech that never stops is cut at max_answer_s: 5 s, transferred as 5000 ms."""
    async def script(sc: ScriptedCall) -> None:
        await sc.silence(1.6)
        await sc.say(speech(8.0))

    sc = run_call(script)
    assert sc.transferred == {"reason": "ivr", "answer_ms": "5000"}


def test_a_late_joiner_skips_the_prompt() -> None:
    """A call taken over mid-way plays no prompt and decides on the answer at once."""
    async def script(sc: ScriptedCall) -> None:
        await sc.say(speech(0.5))
        await sc.silence(2.0)

    sc = run_call(script, joined_late=True)
    assert kinds(sc) == ["PlayAudio", "HangUp"]  # the goodbye: 500 ms is short
    assert sc.hung_up


def test_caller_hangs_up_mid_prompt() -> None:
    """The caller hanging up during the prompt ends the handler with no decision."""
    async def script(sc: ScriptedCall) -> None:
        await sc.silence(0.4)
        await sc.hang_up()

    sc = run_call(script)
    assert kinds(sc) == ["PlayAudio", "Mark"]
    assert sc.end == sdk.CallEnd("caller_hangup")


# --- settings ----------------------------------------------------------------------


def test_settings_nest_the_sdk_under_bot_with_the_ivr_group() -> None:
    """Defaults come from the dataclasses: the IVR's own group id, the SDK's other values."""
    by_env = {s.env: s for s in ivr.IVR_BOT_SETTINGS}
    assert by_env["KGW_BOT_GROUP"].default == "knowlarity-ivr-bot"
    assert by_env["KGW_BOT_GROUP"].target == "bot.group_id"
    assert by_env["KGW_BOT_MAX_BACKLOG_S"].target == "bot.limits.max_backlog_s"
    assert by_env["KGW_IVR_TRANSFER_MIN_ANSWER_MS"].default == "1500"
    settings = from_args(ivr.IvrBotSettings(), ivr.IVR_BOT_SETTINGS, None,
                         {"KGW_IVR_BARGE_IN_MS": "350", "KGW_BOT_MAX_BACKLOG_S": "4"})
    assert settings.policy.barge_in_ms == 350
    assert settings.bot.limits.max_backlog_s == 4.0
    assert settings.bot.group_id == "knowlarity-ivr-bot"


@pytest.mark.parametrize("env, value, named", [
    ("KGW_IVR_PROMPT", "/nonexistent/prompt.wav", "--prompt"),
    ("KGW_IVR_SPEECH_DBFS", "3", "--speech-dbfs"),
    ("KGW_IVR_BARGE_IN_MS", "0", "--barge-in-ms"),
])
def test_a_bad_setting_is_named(env: str, value: str, named: str) -> None:
    """A bad value fails at start, naming the flag and the variable."""
    with pytest.raises(SettingError, match=f"{named} / {env}"):
        from_args(ivr.IvrBotSettings(), ivr.IVR_BOT_SETTINGS, None, {env: value})


def test_help_states_the_rule() -> None:
    """--help ends with the decision rule and lists the IVR's flags."""
    parser = argparse.ArgumentParser(prog="knowlarity-gateway bot ivr")
    ivr.add_arguments(parser)
    text = " ".join(parser.format_help().split())
    assert "at least --transfer-min-answer-ms is transferred" in text
    assert "--no-answer-s KGW_IVR_NO_ANSWER_S" in text


def test_run_refuses_a_bad_setting_before_any_broker(monkeypatch: pytest.MonkeyPatch) -> None:
    """run() raises the SettingError (gateway.cli prints it, exit 2) before connecting."""
    monkeypatch.setenv("KGW_IVR_BARGE_IN_MS", "0")
    parser = argparse.ArgumentParser()
    ivr.add_arguments(parser)
    with pytest.raises(SettingError, match="--barge-in-ms / KGW_IVR_BARGE_IN_MS"):
        ivr.run(parser.parse_args([]))


def test_a_prompt_of_ones_own_is_played_at_its_rate(tmp_path: Path) -> None:
    """--prompt: the given WAV (8 kHz here) is played as it is; the node converts it."""
    path = tmp_path / "question.wav"
    path.write_bytes(encode_wav(bytes(1600), 8000))

    async def script(sc: ScriptedCall) -> None:
        await sc.silence(0.2)

    sc = run_call(script, ivr.IvrPolicy(prompt=str(path)))
    play = sc.commands[0].body
    assert isinstance(play, m.PlayAudio) and (play.sample_rate, len(play.pcm)) == (8000, 1600)
    assert sc.events == [sdk.MarkResult("prompt", sdk.MarkOutcome.REACHED, 100)]
