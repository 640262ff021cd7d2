"""Bot audio held in the gateway and released to the provider paced to real time.

Why hold it here: the provider has no dependable "stop playback" (PROTOCOL.md),
so the only sure way to silence the bot is never to have sent the audio. We
keep at most ``lead`` seconds of audio ahead of the caller's ear; a clear drops
the rest. Markers (marks, hang-up, transfer) keep their place in the queue and
are released once the audio before them has been played out, so a bot's
"goodbye" is heard before the hang-up.

The model of the provider's player: clips play back to back, each starting
when it arrives or when the previous one ends, whichever is later.

A clear discards the interruptible audio not yet sent and keeps the
uninterruptible audio, in order. Markers are released in the order they were
queued, each once, as reached or as cleared: a marker's segment is the audio
queued after the marker (or clear) before it; it is cleared if the clear
discarded audio of its segment (or its segment is empty and the marker before
it was cleared by the same clear). A cleared marker with nothing kept ahead of
it is released by the clear itself; every other marker waits, as always, for
the audio ahead of it to play out. Each released marker says how much of its
segment was heard by the playout clock (unpaced: sent counts as heard).
Released audio always belongs to the first segment of the queue, so one
counter (``_segment_released``) is enough, reset where a segment ends.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from gateway.core.model import HangUp, Mark, Transfer
from gateway.core.resample import Converter, converted_bytes

Marker = Mark | HangUp | Transfer

BYTES_PER_SAMPLE = 2
# Unpaced playout releases everything due at once; in one pump at most this
# many clips (then the next pump is due at once), so one call's big queue
# never holds the reactor.
MAX_CLIPS_PER_PUMP = 10


@dataclass(frozen=True)
class PlayoutSettings:
    paced: bool = True
    # Largest clip sent in one playAudio frame.
    clip_ms: int = 200
    # How far ahead of the caller's ear audio may be sent. Larger rides out
    # network jitter; smaller makes clear faster.
    lead_ms: int = 300
    # Bot audio held per call, in bytes (see ``AudioBudget`` for how it is
    # counted); a play beyond it is refused whole.
    max_call_bytes: int = 2 * 1024 * 1024
    # Marks, hang-ups and transfers waiting in the queue.
    max_markers: int = 256


class AudioBudget:
    """Bytes of bot audio held by every call of a node together (pure; the node owns one).

    Bytes are counted at the call's rate after conversion, or at the bot's rate
    while audio still waits for conversion, whichever is larger: what the
    process really holds.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0

    def reserve(self, n: int) -> bool:
        if self.used + n > self.limit:
            return False
        self.used += n
        return True

    def release(self, n: int) -> None:
        self.used -= n


class _Audio:
    """One play command's audio, converted to the call's rate piece by piece as it is
    released: resampling a whole command at once could hold the reactor for tens of ms."""

    __slots__ = ("converter", "_out", "_at", "reserved", "uninterruptible", "not_before")

    def __init__(self, converter: Converter, reserved: int, uninterruptible: bool,
                 not_before: float = 0.0) -> None:
        self.converter = converter
        self._out = b""  # converted, released from ``_at`` on
        self._at = 0
        self.reserved = reserved
        self.uninterruptible = uninterruptible
        self.not_before = not_before  # ``now`` before which none of it is sent

    @property
    def pending_out(self) -> int:
        return len(self._out) - self._at

    @property
    def unreleased_bytes(self) -> int:
        """At the call's rate (estimated while unconverted)."""
        return self.converter.remaining_out_bytes + self.pending_out

    def take(self, limit: int) -> bytes:
        while self.pending_out < limit and not self.converter.done:
            self._out = self._out[self._at:] + self.converter.next_piece()
            self._at = 0
        end = min(len(self._out), self._at + limit)
        if self._at == 0 and end == len(self._out):
            chunk = self._out  # the whole of it: no copy
        else:
            chunk = self._out[self._at:end]
        self._at = end
        return chunk

    @property
    def exhausted(self) -> bool:
        return not self.pending_out and self.converter.done


@dataclass(frozen=True)
class ReleasedAudio:
    pcm: bytes
    # Position of the first sample in the bot's stream to this caller.
    media_position_samples: int


class _Waiting:
    """A marker in the queue; ``cleared`` once a clear has discarded audio of its segment."""

    __slots__ = ("marker", "cleared")

    def __init__(self, marker: Marker, cleared: bool = False) -> None:
        self.marker = marker
        self.cleared = cleared


class _SegmentEnd:
    """Where a clear ended a segment that still holds uninterruptible audio: the audio
    released after this belongs to the next segment."""


_SEGMENT_END = _SegmentEnd()


@dataclass(frozen=True)
class ReleasedMarker:
    marker: Marker
    # A clear discarded audio of its segment: a mark is reported cleared, not reached.
    cleared: bool = False
    # Samples of its segment played when it was released (see the module docstring).
    heard_samples: int = 0


Release = ReleasedAudio | ReleasedMarker


@dataclass(frozen=True)
class Cleared:
    """What a clear did: interruptible samples discarded, and the markers it released at
    once, in order (the others stay queued)."""

    dropped_samples: int
    released: tuple[ReleasedMarker, ...]


QUEUE_FULL = "playout queue full"
BUDGET_EXHAUSTED = "node playout budget exhausted"
TOO_MANY_MARKERS = "too many marks, hang-ups or transfers queued"
END_QUEUED = "a hang-up or transfer is already queued"


class Playout:
    """One call's queue of bot audio and markers. Pure: time comes in as ``now``."""

    def __init__(self, settings: PlayoutSettings, sample_rate: int,
                 budget: AudioBudget | None = None) -> None:
        self._s = settings
        self._rate = sample_rate
        self._budget = budget or AudioBudget(settings.max_call_bytes)
        self._queue: deque[_Audio | _Waiting | _SegmentEnd] = deque()
        self._held_bytes = 0
        self._markers = 0
        # A hang-up or transfer waiting: the call ends there, so a second one is
        # refused (and a transfer's parameters are held once).
        self._end_queued = False
        self._clip_bytes = max(1, settings.clip_ms * sample_rate // 1000) * BYTES_PER_SAMPLE
        self._lead = settings.lead_ms / 1000
        # When everything released so far will have finished playing.
        self._play_end = 0.0
        # ... and the uninterruptible audio released so far (killAudio would cut it).
        self._protected_until = 0.0
        self._released_samples = 0
        # Released since the first segment of the queue began (see the module docstring).
        self._segment_released = 0

    @property
    def held_bytes(self) -> int:
        """Bytes this call holds against its bound and the node's budget."""
        return self._held_bytes

    @property
    def queued_samples(self) -> int:
        """Samples at the call's rate still to be released (estimated while unconverted)."""
        return sum(item.unreleased_bytes
                   for item in self._queue if isinstance(item, _Audio)) // BYTES_PER_SAMPLE

    @property
    def released_samples(self) -> int:
        return self._released_samples

    @property
    def markers(self) -> int:
        return self._markers

    def holds_uninterruptible(self, now: float) -> bool:
        """Uninterruptible audio is queued, or sent and not yet played by the playout clock."""
        return now < self._protected_until or any(
            isinstance(item, _Audio) and item.uninterruptible for item in self._queue)

    def enqueue_audio(self, pcm: bytes, rate: int | None = None,
                      uninterruptible: bool = False, not_before: float = 0.0) -> str | None:
        """Queue sample-aligned PCM at ``rate`` (default: the call's); None, or why it was
        refused whole. The size after conversion is computed from the length and the two
        rates, before any work. Uninterruptible audio survives a clear. None of it is
        released before ``not_before`` (a ``now``), and nothing queued behind it either."""
        rate = rate or self._rate
        if not pcm:
            return None
        need = max(len(pcm), converted_bytes(len(pcm), rate, self._rate))
        if self._held_bytes + need > self._s.max_call_bytes:
            return QUEUE_FULL
        if not self._budget.reserve(need):
            return BUDGET_EXHAUSTED
        self._queue.append(_Audio(Converter(pcm, rate, self._rate), need, uninterruptible,
                                  not_before))
        self._held_bytes += need
        return None

    def enqueue_marker(self, marker: Marker) -> str | None:
        ends = not isinstance(marker, Mark)
        if ends and self._end_queued:
            return END_QUEUED
        if self._markers >= self._s.max_markers:
            return TOO_MANY_MARKERS
        self._queue.append(_Waiting(marker))
        self._markers += 1
        self._end_queued = self._end_queued or ends
        return None

    def clear(self, now: float) -> Cleared:
        """Discard the interruptible audio not yet sent; keep the rest in order. Markers
        cleared with nothing kept ahead of them are released at once (see the module
        docstring for which markers are cleared)."""
        in_flight = self._in_flight(now)
        kept: deque[_Audio | _Waiting | _SegmentEnd] = deque()
        released: list[ReleasedMarker] = []
        dropped = 0
        # The segment being walked: it is the first (its audio is being released) until
        # something stays queued ahead; what the clear did to it.
        first = True
        has_audio = self._segment_released > 0
        # previous_cleared: the marker before it was cleared by this clear.
        cut = has_kept = previous_cleared = False
        for item in self._queue:
            if isinstance(item, _Audio):
                has_audio = True
                if item.uninterruptible:
                    kept.append(item)
                    has_kept = True
                    first = False
                else:
                    dropped += item.unreleased_bytes
                    self._account(item, item.reserved)
                    cut = True
                continue
            if isinstance(item, _Waiting):
                now_cleared = cut or (not has_audio and previous_cleared)
                # Once cleared, cleared for good (a marker kept by an earlier clear).
                cleared = item.cleared or now_cleared
                if cleared and first:
                    heard = max(0, self._segment_released - in_flight)
                    released.append(ReleasedMarker(item.marker, True, heard))
                    self._segment_released = 0
                else:
                    kept.append(_Waiting(item.marker, cleared))
                    first = False
                previous_cleared = now_cleared
            else:
                self._end_segment(kept, first, has_kept)
                first = first and not has_kept
                previous_cleared = False
            has_audio = cut = has_kept = False
        # The clear ends the last segment: audio queued after it starts a new one.
        self._end_segment(kept, first, has_kept)
        self._queue = kept
        self._markers = sum(isinstance(item, _Waiting) for item in kept)
        self._end_queued = any(isinstance(item, _Waiting) and not isinstance(item.marker, Mark)
                               for item in kept)
        return Cleared(dropped // BYTES_PER_SAMPLE, tuple(released))

    def _end_segment(self, kept: deque[_Audio | _Waiting | _SegmentEnd], first: bool,
                     has_kept: bool) -> None:
        if has_kept:
            kept.append(_SEGMENT_END)
        elif first:
            self._segment_released = 0

    def discard(self) -> int:
        """Drop everything queued, uninterruptible audio and markers too (the call is
        ending). Returns the samples dropped."""
        dropped = self.queued_samples
        self._queue.clear()
        self._budget.release(self._held_bytes)
        self._held_bytes = 0
        self._markers = 0
        self._end_queued = False
        return dropped

    def _in_flight(self, now: float) -> int:
        """Samples sent but not yet played by the playout clock; unpaced, sent is played."""
        if not self._s.paced:
            return 0
        return round(max(0.0, self._play_end - now) * self._rate)

    def pump(self, now: float) -> tuple[list[Release], float | None]:
        """Release what is due at ``now``; returns it and the delay until the next release."""
        out: list[Release] = []
        q = self._queue
        clips = 0
        while q:
            head = q[0]
            if isinstance(head, _Audio):
                # One expression for the test and the delay: computed two ways, float
                # rounding could say "not yet" and then "wait 0s" forever.
                due = self._play_end - self._lead if self._s.paced else head.not_before
                if head.not_before > due:
                    due = head.not_before  # timed by the bot: paced or not
                if now < due:
                    return out, due - now
                if clips >= MAX_CLIPS_PER_PUMP:
                    return out, 0.0
                released = self._release_audio(now)
                if released is not None:
                    out.append(released)
                    clips += 1
            elif isinstance(head, _Waiting):
                if self._s.paced and self._play_end > now:
                    return out, self._play_end - now
                q.popleft()
                self._markers -= 1
                self._end_queued = self._end_queued and isinstance(head.marker, Mark)
                out.append(ReleasedMarker(head.marker, head.cleared, self._segment_released))
                self._segment_released = 0
            else:
                q.popleft()
                self._segment_released = 0
        return out, None

    def _release_audio(self, now: float) -> ReleasedAudio | None:
        q = self._queue
        limit = self._clip_bytes
        parts: list[bytes] = []
        size = 0
        head = q[0]
        uninterruptible = isinstance(head, _Audio) and head.uninterruptible
        # Join consecutive audio up to one clip; never across a marker, nor across a
        # change of kind (a clip is wholly uninterruptible or not).
        while q and size < limit:
            item = q[0]
            if not isinstance(item, _Audio) or item.uninterruptible != uninterruptible \
                    or item.not_before > now:
                break
            chunk = item.take(limit - size)
            self._account(item, len(chunk))
            if item.exhausted:
                q.popleft()
                self._account(item, item.reserved)
            if chunk:
                parts.append(chunk)
                size += len(chunk)
        if not size:
            return None
        pcm = parts[0] if len(parts) == 1 else b"".join(parts)
        samples = size // BYTES_PER_SAMPLE
        released = ReleasedAudio(pcm, self._released_samples)
        self._released_samples += samples
        self._segment_released += samples
        self._play_end = max(self._play_end, now) + samples / self._rate
        if uninterruptible:
            self._protected_until = self._play_end
        return released

    def _account(self, item: _Audio, n: int) -> None:
        """Give back ``n`` of what ``item`` reserved (never more than it holds)."""
        n = min(n, item.reserved)
        item.reserved -= n
        self._held_bytes -= n
        self._budget.release(n)
