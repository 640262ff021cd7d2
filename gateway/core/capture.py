"""A capture pause: the caller's audio kept off the bus, counted and never stored.

A bot pauses capture while the caller says what must not be recorded (a card
number, a password): the node publishes no CallerAudio for the call until the
pause ends, and everything else goes on. When it ends (ResumeCapture, or the
call's end) the call publishes one CaptureWithheld with the range it withheld,
so that a consumer knows the gap is deliberate and exactly how long it is.

Media positions keep counting through the pause; CallerAudio seq does not (a
withheld frame takes no seq). A pause holds a handful of counters whatever
its length, so a pause that lasts the whole call costs nothing.
"""

from __future__ import annotations

from gateway.core import model as m

ALREADY_PAUSED = "capture is already paused"
NOT_PAUSED = "capture is not paused"


class CapturePause:
    """One pause of one call, from the moment it began. Pure: times come in as arguments."""

    __slots__ = ("_first_position", "_paused_at", "_samples", "_frames", "_first_at", "_last_at")

    def __init__(self, first_position: int, paused_at: float) -> None:
        self._first_position = first_position
        self._paused_at = paused_at
        self._samples = 0
        self._frames = 0
        self._first_at: float | None = None
        self._last_at: float | None = None

    def withhold(self, samples: int, received_at: float) -> None:
        """One frame of ``samples`` caller samples, received at ``received_at``, not published."""
        self._samples += samples
        self._frames += 1
        if self._first_at is None:
            self._first_at = received_at
        self._last_at = received_at

    def withheld(self) -> m.CaptureWithheld:
        return m.CaptureWithheld(
            first_media_position_samples=self._first_position,
            samples=self._samples,
            frames=self._frames,
            first_received_at=self._first_at,
            last_received_at=self._last_at,
            paused_at=self._paused_at,
        )
