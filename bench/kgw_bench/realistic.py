"""The realistic workload's pure parts: the conversation, the bot's turn-taking, the stamp.

A call is a conversation. The caller speaks for a few seconds (the load
generator's noise template: loud, broadband, what the echo workload sends all
the time), then is quiet (silent frames, still stamped); the bot answers each
turn like a TTS bot, with an utterance produced at 24 kHz (so the node
resamples it to the call's 16 kHz), followed by a mark, played out paced as
the node does by default. One turn in four (seeded) is barged in: the caller
speaks again before the utterance ends and the bot sends ``clear``.

``conversation(seed, call_index, seconds)`` is the script both sides read:
the caller for when to speak, the bot for how long each answer is (a TTS
bot's text decides that, not the caller). The bot does NOT read the turn
boundaries from it: it finds them in the audio it reads from the bus, with an
energy check per record (``is_speech``), as any voice bot has to. That is
honest (what the node carries is what decides) and cheap (one numpy
reduction per record); the stamp bytes at the head of every caller frame are
left out of it.

The stamp: the echo workload overwrites the first 8 bytes of each chunk with
the send time, and the caller reads them back. Bytes do not survive a
24 -> 16 kHz resampler, so here the first 24 ms of each utterance carry the
low 32 bits of the bot's send time (µs) as 24 symbols of 2 bits, each a DC
level held for 1 ms: 4 sync symbols, 16 for the stamp, 4 for a checksum.
soxr (HQ) keeps such levels within about 1100 of 32767 at the symbol
centres; the levels are 8000 apart. The caller decodes it at the head of a
playAudio clip (where an utterance starts after silence); ``command``
latency in this workload is thus bot send -> first audio of the answer at the
caller, one sample per utterance. Later clips of an utterance are paced by
the node (``--playout-lead-ms``) and would measure the pacing, not the path.
"""

from __future__ import annotations

import random
import sys
from array import array
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np


WORKLOADS = ("realistic", "echo")
DEFAULT_SEED = 20261202

CALL_RATE = 16000
TTS_RATE = 24000
FRAME_S = 0.02
ENDPOINT_S = 0.5  # this much quiet ends the caller's turn (a usual VAD endpoint)
SPEECH_RMS = 500.0  # int16 units; the noise template is about 6000, silence 0
STAMP_SAMPLES = 4  # the caller's 8-byte stamp at the head of each 320-sample frame

# The conversation's shape, seconds.
SPEECH_S = (1.5, 4.0)
UTTERANCE_S = (1.0, 4.0)
GAP_S = (0.6, 1.5)  # after the bot's answer ends, before the caller speaks again
BARGE_EVERY = 4  # about one turn in this many is barged in
BARGE_AT = (0.3, 0.6)  # the caller barges in this far into the answer (fraction)
LATENCY_ALLOWANCE_S = 0.3  # answers start about this long after the endpoint
TAIL_S = 1.0  # quiet after the last answer before the caller hangs up


@dataclass(frozen=True)
class Turn:
    """One exchange: the caller speaks, is quiet, the bot answers (or is barged in)."""

    start_s: float  # the caller starts speaking, from the call's first frame
    speech_s: float
    pause_s: float  # quiet after the speech, until the next turn's speech
    utterance_s: float  # the bot's answer, a whole number of 20 ms frames
    barged: bool  # the caller speaks again before the answer has ended

    @property
    def end_s(self) -> float:
        return self.start_s + self.speech_s + self.pause_s


def _frames(s: float) -> float:
    return round(round(s / FRAME_S) * FRAME_S, 2)


def conversation(seed: int, call_index: int, seconds: float) -> tuple[Turn, ...]:
    """The turns of call ``call_index`` that fit in ``seconds``; the same for the same seed."""
    rng = random.Random(f"{seed}/{call_index}")
    turns: list[Turn] = []
    t = _frames(rng.uniform(0.0, 1.0))  # callers do not all start speaking at once
    while True:
        speech = _frames(rng.uniform(*SPEECH_S))
        utterance = _frames(rng.uniform(*UTTERANCE_S))
        barged = rng.randrange(BARGE_EVERY) == 0
        answer_at = ENDPOINT_S + LATENCY_ALLOWANCE_S
        if barged:
            pause = answer_at + rng.uniform(*BARGE_AT) * utterance
        else:
            pause = answer_at + utterance + rng.uniform(*GAP_S)
        pause = _frames(pause)
        # The last turn must leave room for its whole answer before the caller hangs up.
        if t + speech + answer_at + utterance + TAIL_S > seconds:
            break
        turns.append(Turn(t, speech, pause, utterance, barged))
        t = _frames(t + speech + pause)
    if turns and turns[-1].barged:
        # No turn follows to barge in with: the caller listens to the end, then hangs up.
        last = turns[-1]
        turns[-1] = replace(last, barged=False, pause_s=_frames(
            ENDPOINT_S + LATENCY_ALLOWANCE_S + last.utterance_s + TAIL_S))
    return tuple(turns)


def speaking(turns: tuple[Turn, ...], n_frames: int) -> bytes:
    """Per caller frame, 1 while the caller speaks and 0 while it is quiet."""
    out = bytearray(n_frames)
    for turn in turns:
        a = round(turn.start_s / FRAME_S)
        b = min(n_frames, a + round(turn.speech_s / FRAME_S))
        out[a:b] = b"\x01" * max(0, b - a)
    return bytes(out)


# --- the bot's side ----------------------------------------------------------------


def is_speech(pcm: bytes, frame_bytes: int = 640) -> bool:
    """A cheap energy check: RMS of the record's samples, the callers' stamps left out."""
    import numpy as np  # here: the load generator imports this module, and needs no numpy

    n = len(pcm) // 2
    if n <= STAMP_SAMPLES:
        return False
    samples = np.frombuffer(pcm, dtype="<i2", count=n)
    per = frame_bytes // 2
    if n % per == 0:
        samples = samples.reshape(-1, per)[:, STAMP_SAMPLES:]
    else:
        samples = samples[STAMP_SAMPLES:]
    energy = float(np.mean(np.square(samples, dtype=np.float64)))
    return energy >= SPEECH_RMS * SPEECH_RMS


LISTENING, HEARING, ANSWERING = "listening", "hearing", "answering"


@dataclass(frozen=True)
class Play:
    """Answer: play turn ``turn``'s utterance, then the mark ``mark``."""

    turn: int
    utterance_s: float
    mark: str


@dataclass(frozen=True)
class Clear:
    """The caller barged in: drop the answer not yet played."""

    mark: str


class TurnTaker:
    """One call's turn-taking, pure: caller audio and mark results in, Play / Clear out.

    Listening until speech is heard; then a turn ends after ``ENDPOINT_S`` of
    quiet and the answer is played (state ``answering`` until its mark is
    reported, reached or cleared); speech while answering is a barge-in.
    """

    def __init__(self, turns: tuple[Turn, ...], fallback_seed: int = DEFAULT_SEED) -> None:
        self._turns = turns
        self._rng = random.Random(fallback_seed)
        self.state = LISTENING
        self.quiet_s = 0.0
        self.answered = 0
        self.barge_ins = 0
        self.mark = ""

    def audio(self, speech: bool, duration_s: float) -> Play | Clear | None:
        if speech:
            self.quiet_s = 0.0
            if self.state == ANSWERING:
                self.state = HEARING
                self.barge_ins += 1
                return Clear(self.mark)
            self.state = HEARING
            return None
        if self.state != HEARING:
            return None
        self.quiet_s += duration_s
        if self.quiet_s + 1e-9 < ENDPOINT_S:
            return None
        k = self.answered
        self.answered += 1
        self.state = ANSWERING
        self.quiet_s = 0.0
        self.mark = f"turn-{k}"
        if k < len(self._turns):
            length = self._turns[k].utterance_s
        else:  # the bot heard more turns than the script has (noise): any length will do
            length = _frames(self._rng.uniform(*UTTERANCE_S))
        return Play(k, length, self.mark)

    def mark_done(self, name: str) -> None:
        """The node reported the mark (reached or cleared): the answer is over."""
        if self.state == ANSWERING and name == self.mark:
            self.state = LISTENING


# --- the utterance and its stamp ------------------------------------------------------

LEVELS = (-12000, -4000, 4000, 12000)
SYMBOL_MS = 1
SYNC = (0, 3, 1, 2)
STAMP_SYMBOLS = 16
CHECK_SYMBOLS = 4
SYMBOLS = len(SYNC) + STAMP_SYMBOLS + CHECK_SYMBOLS
PREAMBLE_MS = SYMBOLS * SYMBOL_MS
STAMP_MASK = 0xFFFFFFFF


def _check(stamp32: int) -> int:
    return (sum(stamp32.to_bytes(4, "little")) ^ 0xA5) & 0xFF


def _symbols(stamp_us: int) -> list[int]:
    s = stamp_us & STAMP_MASK
    bits = s | (_check(s) << 32)
    return list(SYNC) + [(bits >> (2 * i)) & 3 for i in range(STAMP_SYMBOLS + CHECK_SYMBOLS)]


def utterance(seconds: float, seed: int, rate: int = TTS_RATE) -> np.ndarray:
    """A speech-like answer (noise under a syllable-rate envelope), int16 at ``rate``.

    A whole number of 20 ms frames, and room for the stamp at its head.
    """
    import numpy as np

    n = max(round(seconds / FRAME_S), PREAMBLE_MS // 20 + 1) * round(rate * FRAME_S)
    gen = np.random.default_rng(seed)
    noise = gen.uniform(-1.0, 1.0, n)
    t = np.arange(n) / rate
    envelope = 0.55 + 0.45 * np.sin(2 * np.pi * 4.0 * t + gen.uniform(0, 2 * np.pi))
    return (noise * envelope * 9000).astype("<i2")


def stamp(pcm: np.ndarray, stamp_us: int, rate: int = TTS_RATE) -> bytes:
    """``pcm`` with its first ``PREAMBLE_MS`` replaced by the stamp; the bytes to send."""
    import numpy as np

    per = rate * SYMBOL_MS // 1000
    head = np.repeat(np.array([LEVELS[s] for s in _symbols(stamp_us)], dtype="<i2"), per)
    out = pcm.copy()
    out[:len(head)] = head
    return out.tobytes()


def read_stamp(pcm: bytes | bytearray | memoryview, at: int = 0,
               rate: int = CALL_RATE) -> int | None:
    """The low 32 bits of the stamp at byte ``at`` of s16le ``pcm``, or None if there is none."""
    per = rate * SYMBOL_MS // 1000
    need = SYMBOLS * per * 2
    if len(pcm) - at < need:
        return None
    samples = array("h", bytes(pcm[at:at + need]))
    if sys.byteorder != "little":
        samples.byteswap()
    lo, hi = per // 4, per - per // 4  # the symbol's middle: away from the filter's ringing
    symbols = []
    for i in range(SYMBOLS):
        window = samples[i * per + lo:i * per + hi]
        level = sum(window) / len(window)
        symbols.append(0 if level < -8000 else 1 if level < 0 else 2 if level < 8000 else 3)
    if tuple(symbols[:len(SYNC)]) != SYNC:
        return None
    bits = 0
    for i, s in enumerate(symbols[len(SYNC):]):
        bits |= s << (2 * i)
    s32, check = bits & STAMP_MASK, bits >> 32
    return s32 if check == _check(s32) else -1


def latency_us(rx_us: int, stamp32: int) -> int:
    """Receive time minus the stamp, given only the stamp's low 32 bits (71 min of range)."""
    return (rx_us - stamp32) & STAMP_MASK


CHUNK_SAMPLES = 320  # 20 ms at 16 kHz: what the caller counts
CLIP_SAMPLES = 3200  # the node's default --playout-clip-ms 200, at 16 kHz


def played_after_clear(answer_samples: int, reported_dropped: int) -> int:
    """How much of an answer reached the caller, given the samples a clear reported dropped.

    The node sends an answer in whole clips; a clear drops the clips not yet sent.
    Its report is an estimate from the resampler's input and output queues, short
    by what the resampler holds inside (about 500 samples at 24 -> 16 kHz), so
    "answer less reported" is rounded down to whole clips: exact while that
    shortfall stays under one clip. Nothing reported dropped: it all went out.
    """
    if reported_dropped <= 0:
        return answer_samples
    return max(0, answer_samples - reported_dropped) // CLIP_SAMPLES * CLIP_SAMPLES
