"""What the echo bot decides for one call, with no I/O: audio and the time in, commands out.

``EchoCall`` greets, holds each caller chunk until shortly before its due time
(the time the node received it plus the echo delay), then plays it back byte
for byte, timed to the caller's stream (``at_caller_ms``) so the node starts it
the delay after the caller spoke it whatever the bus's latency, and
decides to hang up on silence or on a too-long call. Times are seconds from
one monotonic clock the caller chooses (the event loop's); nothing here reads
a clock. ``gateway.bot.echo`` runs one per call on the SDK, which routes
records, joins calls taken over mid-way and forgets lost ones.
"""

from __future__ import annotations

import functools
import math
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from gateway.core import model as m

GREETING_MARK = "greeting-done"

# The greeting chime: two tones, each with short fades so they do not click.
_CHIME_TONES_HZ = (660.0, 880.0)
_CHIME_TONE_S = 0.150
_CHIME_FADE_S = 0.010
_CHIME_AMPLITUDE = 0.3  # of full scale, about -13 dBFS RMS
_FULL_SCALE = 32768.0
# A held chunk is sent this long before it is due, timed for the node to start it
# on the dot: the bus's way to the node, tens of ms, with room.
SEND_AHEAD_S = 0.25


class PolicyError(ValueError):
    """A behaviour setting out of range; ``setting`` names it as the operator wrote it."""

    def __init__(self, setting: str, message: str) -> None:
        super().__init__(f"{setting}: {message}")
        self.setting = setting
        self.reason = message


@dataclass(frozen=True)
class EchoPolicy:
    """How the echo bot behaves; 0 disables the silence and max-call limits."""

    echo_delay_ms: int = 300
    silence_dbfs: float = -45.0
    silence_hangup_s: float = 8.0
    # Wall time (the bot's monotonic clock) since the bot saw ``started``, not
    # media time: a caller stream that stalls must still not hold the call open.
    max_call_s: float = 120.0

    def __post_init__(self) -> None:
        delay = self.echo_delay_ms
        if isinstance(delay, bool) or not isinstance(delay, int) or delay < 0:
            raise PolicyError("echo-delay-ms", f"must be an integer >= 0, got {delay!r}")
        _check_number("silence-dbfs", self.silence_dbfs, upper=0.0, lower=None)
        _check_number("silence-hangup-s", self.silence_hangup_s, upper=None, lower=0.0)
        _check_number("max-call-s", self.max_call_s, upper=None, lower=0.0)

    @property
    def echo_delay_s(self) -> float:
        return self.echo_delay_ms / 1000.0

    @property
    def silence_rms(self) -> float:
        """The RMS (in int16 units) below which a chunk counts as silence."""
        return _FULL_SCALE * math.pow(10.0, self.silence_dbfs / 20.0)


def _check_number(setting: str, value: float, *, upper: float | None,
                  lower: float | None) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise PolicyError(setting, f"must be a finite number, got {value!r}")
    if lower is not None and value < lower:
        raise PolicyError(setting, f"must be >= {lower:g}, got {value!r}")
    if upper is not None and value > upper:
        raise PolicyError(setting, f"must be <= {upper:g}, got {value!r}")


# --- audio helpers -----------------------------------------------------------


@functools.lru_cache(maxsize=8)
def chime(sample_rate: int) -> bytes:
    """The greeting: two 150 ms tones with 10 ms fades, int16 little-endian at ``sample_rate``."""
    n = round(_CHIME_TONE_S * sample_rate)
    fade = min(round(_CHIME_FADE_S * sample_rate), n // 2)
    envelope = np.ones(n)
    if fade > 0:
        ramp = np.linspace(0.0, 1.0, fade, endpoint=False)
        envelope[:fade] = ramp
        envelope[n - fade:] = ramp[::-1]
    t = np.arange(n) / sample_rate
    tones = [np.sin(2 * np.pi * f * t) * envelope for f in _CHIME_TONES_HZ]
    signal = np.concatenate(tones) * (_CHIME_AMPLITUDE * 32767)
    return np.round(signal).astype("<i2").tobytes()


def rms(pcm: bytes) -> float:
    """RMS of mono int16 little-endian PCM, in int16 units (a trailing odd byte is ignored)."""
    usable = len(pcm) - len(pcm) % 2
    if usable == 0:
        return 0.0
    samples = np.frombuffer(pcm, dtype="<i2", count=usable // 2).astype(np.float64)
    return float(np.sqrt(np.mean(samples * samples)))


# --- one call ------------------------------------------------------------------


@dataclass(frozen=True)
class _Held:
    due: float
    pcm: bytes
    sample_rate: int
    index: int
    at_caller_ms: int


@dataclass
class EchoCall:
    """One call's decisions: greet, echo each chunk after the delay, hang up once."""

    call_id: str
    reply_topic: str
    sample_rate: int
    policy: EchoPolicy
    started_at: float
    last_seen: float = 0.0
    hangup_reason: str | None = None  # set once a hang-up is decided
    hung_up: bool = False  # set once the HangUp command is emitted
    _held: deque[_Held] = field(default_factory=deque)
    _chunks: int = 0
    _silent_samples: int = 0

    def greeting(self) -> list[m.Command]:
        return [
            self._cmd(m.PlayAudio(pcm=chime(self.sample_rate), sample_rate=self.sample_rate),
                      "greeting"),
            self._cmd(m.Mark(name=GREETING_MARK), GREETING_MARK),
        ]

    def on_audio(self, pcm: bytes, sample_rate: int, now: float,
                 heard_at: float | None = None, start_ms: int | None = None
                 ) -> list[m.Command]:
        """Hold a caller chunk for echo and update the silence count (in media time).

        ``heard_at`` is when the node received the chunk, on the same clock as ``now``
        (``now`` when unknown): the delay counts from there, so the caller hears the echo
        the delay after speaking, not the delay plus the chunk's way to the bot.
        ``start_ms`` is where the chunk starts in the caller's stream: the echo is sent
        ``SEND_AHEAD_S`` early, timed to start there plus the delay.
        """
        self.last_seen = now
        if self.hangup_reason is not None:
            return self.tick(now)
        rate = sample_rate if sample_rate > 0 else self.sample_rate
        start = now if heard_at is None else min(now, heard_at)
        due = start + self.policy.echo_delay_s
        at_ms = 0
        if start_ms is not None:
            due -= SEND_AHEAD_S
            at_ms = start_ms + self.policy.echo_delay_ms
        self._held.append(_Held(due, pcm, rate, self._chunks, at_ms))
        self._chunks += 1
        self._count_silence(pcm, rate)
        return self.tick(now)

    def tick(self, now: float) -> list[m.Command]:
        """Release the chunks now due, then the hang-up once nothing decided before it is held."""
        if self.hangup_reason is None and self.policy.max_call_s > 0 \
                and now - self.started_at >= self.policy.max_call_s:
            self.hangup_reason = "max_call"
        return self._release(now)

    def flush(self) -> list[m.Command]:
        """Release everything held now, ignoring due times (the bot is stopping)."""
        return self._release(math.inf)

    def _release(self, until: float) -> list[m.Command]:
        out: list[m.Command] = []
        while self._held and self._held[0].due <= until:
            h = self._held.popleft()
            out.append(self._cmd(m.PlayAudio(pcm=h.pcm, sample_rate=h.sample_rate,
                                             at_caller_ms=h.at_caller_ms),
                                 f"echo-{h.index}"))
        if self.hangup_reason is not None and not self._held and not self.hung_up:
            self.hung_up = True
            out.append(self._cmd(m.HangUp(), "hangup"))
        return out

    def next_due(self) -> float | None:
        """When ``tick`` next has something to do, ignoring the max-call limit."""
        if self._held:
            return self._held[0].due
        return None

    @property
    def chunks_held(self) -> int:
        return len(self._held)

    def _count_silence(self, pcm: bytes, rate: int) -> None:
        if self.policy.silence_hangup_s <= 0:
            return
        samples = len(pcm) // 2
        if rms(pcm) < self.policy.silence_rms:
            self._silent_samples += samples
        else:
            self._silent_samples = 0
        if self._silent_samples >= max(1, round(self.policy.silence_hangup_s * rate)):
            self.hangup_reason = "silence"

    def _cmd(self, body: m.CommandBody, command_id: str) -> m.Command:
        return m.Command(call_id=self.call_id, body=body, command_id=command_id)
