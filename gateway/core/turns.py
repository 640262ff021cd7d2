"""Turn latency: from the end of the caller's speech to the first bot audio sent after it.

The node sees both sides of a call, so it can measure what the caller feels. A
cheap energy detector runs on each caller frame the call receives (published,
held for aggregation or withheld by a capture pause alike: only its energy is
looked at, nothing is kept):

- a frame is *loud* when the RMS of its PCM is at least ``THRESHOLD_RMS``;
- an utterance is a run of frames, loud ones no more than ``HANGOVER_MS`` of
  caller audio apart, holding at least ``MIN_SPEECH_MS`` of loud audio (so a
  click or a cough of one frame is not a turn);
- the utterance has *ended* once ``HANGOVER_MS`` of quiet audio followed its last
  loud frame, or a bot clip is sent ``HANGOVER_MS`` after its end with no loud
  frame since (a caller stream that stops sending frames is quiet too); the end
  of speech is that frame's receive time plus its duration.

The first bot clip sent at or after the end of speech takes the turn:
``latency = clip send time - end of speech``, both on the node's clock. A clip
sent before the hangover has passed is held as the candidate; if the caller
speaks again within the hangover, that was the bot talking into a pause, and
the candidate is dropped. A turn never measured (the call ends first) is not
counted.

Known limits, by design of a cheap detector: echo of the bot on the caller's
line reads as caller speech; a bot prompt still playing from before a barge-in
takes the turn like a reply would.

Cost: about 2.6 µs per 20 ms frame at 16 kHz, 2.4 of them the RMS, on a 2-core
machine (the benchmark's ``turn_cost`` script prints it; see the README).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# s16 RMS; 500 is about -36 dBFS: above line noise (-50 dBFS and below on a
# phone line), well under speech at a handset (-30 to -15 dBFS).
THRESHOLD_RMS = 500
# Quiet caller audio after the last loud frame that ends an utterance: longer than
# the pauses between words, shorter than the wait for an answer.
HANGOVER_MS = 500
# Loud audio an utterance needs before its end counts as a turn.
MIN_SPEECH_MS = 100
# Latencies an ``ended`` record lists; later turns are only counted (``turns``).
MAX_LISTED_TURNS = 256

_THRESHOLD_SQ = float(THRESHOLD_RMS) ** 2


def mean_square(pcm: bytes) -> float:
    """Mean square of s16le PCM (an even number of bytes, at least 2)."""
    x = np.frombuffer(pcm, dtype="<i2").astype(np.float64)
    return float(np.dot(x, x)) / len(x)


@dataclass(frozen=True)
class TurnSummary:
    turns: int
    # The first MAX_LISTED_TURNS latencies, in ms, in the order they happened.
    latencies_ms: tuple[int, ...]


class TurnMeter:
    """One call's turns. Feed it caller frames and the bot clips sent; each method
    returns the latency (seconds) of a turn that has just been measured, or None."""

    def __init__(self, sample_rate: int) -> None:
        self._rate = sample_rate
        self._hangover = HANGOVER_MS * sample_rate // 1000
        self._hangover_s = HANGOVER_MS / 1000
        self._min_speech = MIN_SPEECH_MS * sample_rate // 1000
        self._loud = 0  # loud samples in the current utterance
        self._quiet = 0  # quiet samples since its last loud frame
        self._speech_end: float | None = None  # end of the utterance's last loud frame
        self._ended = False  # hangover passed: waiting for the bot
        self._candidate: float | None = None  # first clip sent after _speech_end
        self._turns = 0
        self._latencies: list[int] = []

    def caller_audio(self, pcm: bytes, received_at: float) -> float | None:
        samples = len(pcm) // 2
        if not samples:
            return None
        if mean_square(pcm) >= _THRESHOLD_SQ:
            if self._ended:
                self._loud = 0  # a new utterance; the last one's turn went unanswered
            self._ended = False
            self._candidate = None
            self._loud += samples
            self._quiet = 0
            self._speech_end = received_at + samples / self._rate
            return None
        if self._speech_end is None or self._ended:
            return None
        self._quiet += samples
        if self._quiet < self._hangover:
            return None
        if self._loud < self._min_speech:
            self._reset()
            return None
        self._ended = True
        if self._candidate is not None:
            return self._take(self._candidate)
        return None

    def bot_audio(self, sent_at: float) -> float | None:
        end = self._speech_end
        if end is None or sent_at < end:
            return None
        if not self._ended and sent_at - end >= self._hangover_s:
            # No loud frame for the hangover: the caller is quiet, or sends nothing.
            if self._loud < self._min_speech:
                self._reset()
                return None
            self._ended = True
        if self._ended:
            return self._take(sent_at if self._candidate is None else self._candidate)
        if self._candidate is None:
            self._candidate = sent_at
        return None

    def summary(self) -> TurnSummary:
        return TurnSummary(self._turns, tuple(self._latencies))

    def _take(self, sent_at: float) -> float:
        assert self._speech_end is not None
        latency = sent_at - self._speech_end
        self._turns += 1
        if len(self._latencies) < MAX_LISTED_TURNS:
            self._latencies.append(round(latency * 1000))
        self._reset()
        return latency

    def _reset(self) -> None:
        self._loud = self._quiet = 0
        self._speech_end = self._candidate = None
        self._ended = False
