"""An IVR on the bot SDK: ``knowlarity-gateway bot ivr``. One question, one decision.

Each call hears the prompt (a WAV at its own rate, 22050 Hz as shipped: the
node converts it to the call's rate) and a mark after it. A caller who talks
over the prompt for ``barge_in_ms`` cuts it short (a clear: barge-in). Once the
prompt has been heard in full or cut, the answer is measured: from its first
speech to its last, ending after ``end_silence_ms`` of silence or at
``max_answer_s``; an answer not begun within ``no_answer_s`` is none. Speech is
a chunk whose RMS is at or above ``speech_dbfs``. Then the rule in ``RULE``.

A call taken over mid-way (``joined_late``: its first owner played the prompt)
skips the prompt and listens for the answer at once.
"""

from __future__ import annotations

import argparse
import asyncio
import enum
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from gateway import sdk
from gateway.core import wav
from gateway.settings import (
    Setting,
    add_settings,
    from_args,
    nested,
    non_negative,
    positive,
    with_defaults,
)

log = logging.getLogger(__name__)

PROMPT_MARK = "prompt"
RULE = ("The rule: an answer of at least --transfer-min-answer-ms is transferred with the "
        "parameters reason=ivr and answer_ms=<the answer's length in ms>; a shorter answer, "
        "or none, hears the goodbye and the call is hung up.")
_FULL_SCALE = 32768.0


@dataclass(frozen=True)
class IvrPolicy:
    """How the IVR listens and decides (see the module docstring and ``RULE``)."""

    speech_dbfs: float = -35.0
    barge_in_ms: int = 200
    end_silence_ms: int = 800
    max_answer_s: float = 10.0
    no_answer_s: float = 5.0
    transfer_min_answer_ms: int = 1500
    prompt: str = ""  # a WAV file; empty: the one shipped in gateway/bot/prompts
    goodbye: str = ""

    @property
    def speech_rms(self) -> float:
        """The RMS (int16 units) at and above which a chunk is speech."""
        return _FULL_SCALE * math.pow(10.0, self.speech_dbfs / 20.0)


@dataclass(frozen=True)
class IvrBotSettings:
    bot: sdk.BotSettings = sdk.BotSettings(group_id="knowlarity-ivr-bot")
    policy: IvrPolicy = IvrPolicy()


def _dbfs(text: str) -> float:
    value = float(text)
    if not value <= 0:
        raise ValueError(f"must be <= 0 dBFS, got {text!r}")
    return value


def _wav_file(text: str) -> str:
    """A readable mono 16-bit PCM WAV file, or empty (the shipped clip)."""
    if text:
        try:
            wav.decode_wav(Path(text).read_bytes())
        except OSError as e:
            raise ValueError(f"cannot read {text}: {e.strerror}") from None
    return text


def _ivr(name: str, env: str, help: str, parse: Callable[[str], Any]) -> Setting:
    return Setting(name, f"KGW_IVR_{env}", None, help, parse, path=f"policy.{name}")


# The SDK's settings under ``bot`` (their defaults from IvrBotSettings: its own group
# id), then the IVR's own; each default written once, in the dataclasses above.
IVR_BOT_SETTINGS: tuple[Setting, ...] = with_defaults((
    *(replace(s, default=None) for s in nested(sdk.BOT_SETTINGS, "bot")),
    _ivr("speech_dbfs", "SPEECH_DBFS", "caller audio at or above this RMS level is speech",
         _dbfs),
    _ivr("barge_in_ms", "BARGE_IN_MS", "speech this long over the prompt cuts it short",
         positive(int)),
    _ivr("end_silence_ms", "END_SILENCE_MS", "the answer ends after this much silence",
         positive(int)),
    _ivr("max_answer_s", "MAX_ANSWER_S", "the answer ends this long after it began",
         positive(float)),
    _ivr("no_answer_s", "NO_ANSWER_S",
         "no speech this long after the prompt: no answer", positive(float)),
    _ivr("transfer_min_answer_ms", "TRANSFER_MIN_ANSWER_MS",
         "an answer at least this long is transferred, a shorter one hung up", non_negative(int)),
    _ivr("prompt", "PROMPT", "the question, a mono 16-bit WAV file at any rate (empty: the "
         "shipped 1.5 s chime)", _wav_file),
    _ivr("goodbye", "GOODBYE", "played before hanging up, a WAV file (empty: the shipped one)",
         _wav_file),
), IvrBotSettings())


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of ``knowlarity-gateway bot ivr``; each also reads its environment variable."""
    add_settings(parser, IVR_BOT_SETTINGS)
    parser.epilog = RULE


def load_clip(path: str, shipped: str) -> tuple[bytes, int]:
    """``(pcm, rate)`` of the WAV at ``path``, or of ``prompts/<shipped>`` in this package."""
    data = (Path(path).read_bytes() if path
            else resources.files("gateway.bot").joinpath("prompts", shipped).read_bytes())
    return wav.decode_wav(data)


# --- one call's listening (pure) -----------------------------------------------


class Heard(enum.Enum):
    NOTHING = "nothing"
    BARGE_IN = "barge_in"  # clear the prompt
    ANSWER_OVER = "answer_over"  # decide


class Listener:
    """Caller chunks in, by their stream positions: barge-in, then the answer's extent."""

    def __init__(self, policy: IvrPolicy, rate: int) -> None:
        self._p = policy
        self._rate = rate
        self.barged_in = False
        self._run_from: int | None = None  # where the speech over the prompt began
        self._listen_from: int | None = None
        self._answer: tuple[int, int] | None = None  # first and past-last sample of speech

    @property
    def answer_ms(self) -> int:
        if self._answer is None:
            return 0
        first, end = self._answer
        return min((end - first) * 1000 // self._rate, round(self._p.max_answer_s * 1000))

    def _ms(self, samples: int) -> float:
        return samples * 1000 / self._rate

    def _is_speech(self, chunk: sdk.Audio) -> bool:
        samples = chunk.samples.astype(np.float64)
        return bool(samples.size) and math.sqrt(np.mean(samples * samples)) >= self._p.speech_rms

    def hear(self, chunk: sdk.Audio, prompt_playing: bool) -> Heard:
        speech = self._is_speech(chunk)
        end = chunk.position + len(chunk.pcm) // 2
        if prompt_playing and not self.barged_in:
            if not speech:
                self._run_from = None
                return Heard.NOTHING
            start = chunk.position if self._run_from is None else self._run_from
            self._run_from = start
            if self._ms(end - start) < self._p.barge_in_ms:
                return Heard.NOTHING
            self.barged_in = True
            self._answer = (start, end)  # the barge-in is the answer begun
            return Heard.BARGE_IN
        if self._listen_from is None:
            self._listen_from = chunk.position
        if speech:
            self._answer = (chunk.position if self._answer is None else self._answer[0], end)
        if self._answer is None:
            over = self._ms(end - self._listen_from) >= self._p.no_answer_s * 1000
        else:
            first, last = self._answer
            over = (self._ms(end - last) >= self._p.end_silence_ms
                    or self._ms(end - first) >= self._p.max_answer_s * 1000)
        return Heard.ANSWER_OVER if over else Heard.NOTHING


# --- the handler ----------------------------------------------------------------------


class IvrBot:
    """The SDK handler: ``await IvrBot(policy)(call)`` runs one call."""

    def __init__(self, policy: IvrPolicy) -> None:
        self.policy = policy
        self.prompt = load_clip(policy.prompt, "prompt.wav")
        self.goodbye = load_clip(policy.goodbye, "goodbye.wav")

    async def __call__(self, call: sdk.Call) -> None:
        listener = Listener(self.policy, call.info.sample_rate)
        prompt: asyncio.Future[sdk.MarkResult] | None = None
        if not call.info.joined_late:
            await call.play(*self.prompt)
            prompt = await call.send_mark(PROMPT_MARK)
        # A mark's result is seen with the next caller chunk (every 20 ms or so).
        async for chunk in call.audio():
            heard = listener.hear(chunk, prompt_playing=prompt is not None and not prompt.done())
            if heard is Heard.BARGE_IN:
                await call.clear()
            elif heard is Heard.ANSWER_OVER:
                break
        else:
            return  # the call ended first
        answer_ms = listener.answer_ms
        transfer = answer_ms >= self.policy.transfer_min_answer_ms
        log.info("event=ivr_decided call_id=%s answer_ms=%d barged_in=%s decision=%s",
                 call.call_id, answer_ms, listener.barged_in, "transfer" if transfer else "hangup",
                 extra={"call_id": call.call_id})
        if transfer:
            await call.transfer({"reason": "ivr", "answer_ms": str(answer_ms)})
        else:
            await call.play(*self.goodbye)
            await call.hang_up()


# --- the command line ----------------------------------------------------------------


def run(args: argparse.Namespace) -> int:
    """Entry point for ``knowlarity-gateway bot ivr``: 0 on a clean stop. A bad setting
    raises ``SettingError`` naming it (``gateway.cli.main`` prints it and exits 2)."""
    settings: IvrBotSettings = from_args(IvrBotSettings(), IVR_BOT_SETTINGS, args)
    return sdk.main(IvrBot(settings.policy), settings=settings.bot)
