"""A token bucket: a sustained rate with a burst allowance, on the caller's clock (pure)."""

from __future__ import annotations


class TokenBucket:
    """``take`` succeeds while the count stays within ``rate`` per second plus ``burst``."""

    __slots__ = ("_rate", "_burst", "_tokens", "_at")

    def __init__(self, rate: float, burst: int) -> None:
        self._rate = rate
        self._burst = float(burst)
        self._tokens = float(burst)
        self._at = 0.0

    def restart(self, now: float) -> None:
        """Full again from ``now`` (a call starts: what came before is not held against it)."""
        self._tokens = self._burst
        self._at = now

    def take(self, now: float) -> bool:
        self._tokens = min(self._burst, self._tokens + (now - self._at) * self._rate)
        self._at = now
        if self._tokens < 1:
            return False
        self._tokens -= 1
        return True
