"""Bot audio to the call's sample rate, in bounded pieces.

soxr (libsoxr) does the filtering: a hand-written resampler would alias or
click. Each command's audio is resampled on its own: a stream shared across
commands would hold back the tail of every utterance (about 100 ms at HQ)
until more audio arrives, which a bot that speaks and then waits never sends.
The cost is a small discontinuity at command boundaries (measured: 30 dB SNR
for 20 ms chunks, 54 dB for 100 ms), so bots should send audio in the call's
rate or in chunks of 100 ms or more. Audio already at the call's rate passes
through untouched, bit for bit.

Why pieces: converting a whole 1 MiB command from 8 kHz to 48 kHz takes about
20 ms on one core, every call on the node waiting; ``Converter`` converts
``PIECE_S`` of input at a time (about 0.1 ms), as playout needs it.
"""

from __future__ import annotations

import numpy as np
import soxr

# Input per conversion step: 200 ms of the bot's audio.
PIECE_S = 0.2


def converted_bytes(n_bytes: int, rate: int, call_rate: int) -> int:
    """The size of ``n_bytes`` of s16le PCM at ``rate`` once at ``call_rate`` (before any work)."""
    return n_bytes // 2 * call_rate // rate * 2


def to_call_rate(pcm: bytes, rate: int, call_rate: int) -> bytes:
    """Sample-aligned s16le mono PCM at ``rate`` -> the same at ``call_rate``, all at once."""
    if rate == call_rate or not pcm:
        return pcm
    samples = np.frombuffer(pcm, dtype="<i2")
    out = soxr.resample(samples, rate, call_rate, quality="HQ")
    return bytes(np.asarray(out, dtype="<i2").tobytes())


class Converter:
    """One command's audio, handed out converted a piece at a time."""

    __slots__ = ("_src", "_pos", "_piece", "_stream", "_rate", "_call_rate", "done")

    def __init__(self, pcm: bytes, rate: int, call_rate: int) -> None:
        self._src = pcm
        self._pos = 0
        self._rate = rate
        self._call_rate = call_rate
        self._piece = max(2, int(rate * PIECE_S) * 2)
        self._stream = None if rate == call_rate else soxr.ResampleStream(
            rate, call_rate, 1, dtype="int16", quality="HQ")
        self.done = not pcm

    @property
    def remaining_out_bytes(self) -> int:
        return converted_bytes(len(self._src) - self._pos, self._rate, self._call_rate)

    def next_piece(self) -> bytes:
        """The next piece at the call's rate (possibly empty while soxr fills its delay)."""
        if self.done:
            return b""
        if self._stream is None:  # same rate: no copy, no work
            src, self._src, self.done = self._src, b"", True
            return src
        end = min(len(self._src), self._pos + self._piece)
        piece = np.frombuffer(self._src, dtype="<i2", offset=self._pos,
                              count=(end - self._pos) // 2)
        self._pos = end
        self.done = end >= len(self._src)
        out = self._stream.resample_chunk(piece, last=self.done)
        if self.done:
            self._src, self._pos = b"", 0  # let the bot's buffer go
        return bytes(np.asarray(out, dtype="<i2").tobytes())
