"""Bot audio held in the gateway and released to the provider paced to real time.

Why hold it here: the provider has no dependable "stop playback" (PROTOCOL.md),
so the only sure way to silence the bot is never to have sent the audio. We
keep at most ``lead`` seconds of audio ahead of the caller's ear; a clear drops
the rest. Markers (marks, hang-up, transfer) keep their place in the queue and
are released once the audio before them has been played out, so a bot's
"goodbye" is heard before the hang-up.

The model of the provider's player: clips play back to back, each starting
when it arrives or when the previous one ends, whichever is later.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from gateway.core.model import HangUp, Mark, Transfer

Marker = Mark | HangUp | Transfer

BYTES_PER_SAMPLE = 2


@dataclass(frozen=True)
class PlayoutSettings:
    paced: bool = True
    # Largest clip sent in one playAudio frame.
    clip_ms: int = 200
    # How far ahead of the caller's ear audio may be sent. Larger rides out
    # network jitter; smaller makes clear faster.
    lead_ms: int = 300
    # Bound on audio queued per call; a bot that floods gets drops, reported.
    max_queue_ms: int = 120_000


@dataclass(frozen=True)
class ReleasedAudio:
    pcm: bytes
    # Position of the first sample in the bot's stream to this caller.
    media_position_samples: int


@dataclass(frozen=True)
class ReleasedMarker:
    marker: Marker


Release = ReleasedAudio | ReleasedMarker


class Playout:
    """One call's queue of bot audio and markers. Pure: time comes in as ``now``."""

    def __init__(self, settings: PlayoutSettings, sample_rate: int) -> None:
        self._s = settings
        self._rate = sample_rate
        self._queue: deque[bytes | Marker] = deque()
        self._queued_samples = 0
        self._clip_bytes = max(1, settings.clip_ms * sample_rate // 1000) * BYTES_PER_SAMPLE
        self._max_samples = settings.max_queue_ms * sample_rate // 1000
        self._lead = settings.lead_ms / 1000
        # When everything released so far will have finished playing.
        self._play_end = 0.0
        self._released_samples = 0

    @property
    def queued_samples(self) -> int:
        return self._queued_samples

    @property
    def released_samples(self) -> int:
        return self._released_samples

    @property
    def free_samples(self) -> int:
        """How much more audio the queue takes before ``enqueue_audio`` refuses it."""
        return self._max_samples - self._queued_samples

    def enqueue_audio(self, pcm: bytes) -> int:
        """Queue sample-aligned PCM at the call's rate; returns samples refused (queue full)."""
        samples = len(pcm) // BYTES_PER_SAMPLE
        if self._queued_samples + samples > self._max_samples:
            return samples
        if samples:
            self._queue.append(pcm)
            self._queued_samples += samples
        return 0

    def enqueue_marker(self, marker: Marker) -> None:
        self._queue.append(marker)

    def clear(self) -> tuple[int, list[Marker]]:
        """Drop queued audio. Returns samples dropped and the markers, now due at once."""
        dropped = self._queued_samples
        markers = [item for item in self._queue if not isinstance(item, bytes)]
        self._queue.clear()
        self._queued_samples = 0
        return dropped, markers

    def pump(self, now: float) -> tuple[list[Release], float | None]:
        """Release what is due at ``now``; returns it and the delay until the next release."""
        out: list[Release] = []
        q = self._queue
        while q:
            head = q[0]
            if isinstance(head, bytes):
                # One expression for the test and the delay: computed two ways, float
                # rounding could say "not yet" and then "wait 0s" forever.
                due = self._play_end - self._lead
                if self._s.paced and now < due:
                    return out, due - now
                out.append(self._release_audio(now))
            else:
                if self._s.paced and self._play_end > now:
                    return out, self._play_end - now
                q.popleft()
                out.append(ReleasedMarker(head))
        return out, None

    def _release_audio(self, now: float) -> ReleasedAudio:
        q = self._queue
        limit = self._clip_bytes
        parts: list[bytes] = []
        size = 0
        # Join consecutive audio up to one clip; never across a marker.
        while q and isinstance(q[0], bytes) and size < limit:
            chunk = q.popleft()
            assert isinstance(chunk, bytes)
            room = limit - size
            if len(chunk) > room:
                q.appendleft(chunk[room:])
                chunk = chunk[:room]
            parts.append(chunk)
            size += len(chunk)
        pcm = parts[0] if len(parts) == 1 else b"".join(parts)
        samples = size // BYTES_PER_SAMPLE
        released = ReleasedAudio(pcm, self._released_samples)
        self._queued_samples -= samples
        self._released_samples += samples
        self._play_end = max(self._play_end, now) + samples / self._rate
        return released
