"""When a worker that died is started again, and when the supervisor gives up on it.

Pure: the supervisor hands in how long the worker ran and gets a decision. A
worker that ran at least ``stable_s`` died of something that may not come back
(a fence, an OOM): it is restarted after ``first_delay_s`` and its count of
quick deaths starts again. One that died sooner is restarted after a delay that
doubles up to ``max_delay_s``; after ``max_quick_deaths`` quick deaths in a row
it is given up on (a bad setting, a broken host), and the supervisor exits
non-zero so that the orchestrator sees it. Worst case before giving up, with the
defaults: 5 starts and 0.5 + 1 + 2 + 4 s of waiting, plus each start's own time.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["GiveUp", "Restart", "RestartPolicy", "WorkerHistory"]


@dataclass(frozen=True)
class Restart:
    delay_s: float


@dataclass(frozen=True)
class GiveUp:
    quick_deaths: int


@dataclass(frozen=True)
class WorkerHistory:
    """What the policy remembers of one worker: its quick deaths in a row."""

    quick_deaths: int = 0


@dataclass(frozen=True)
class RestartPolicy:
    stable_s: float = 10.0
    first_delay_s: float = 0.5
    max_delay_s: float = 10.0
    max_quick_deaths: int = 5

    def __post_init__(self) -> None:
        if not (self.stable_s >= 0 and 0 <= self.first_delay_s <= self.max_delay_s
                and self.max_quick_deaths >= 1):
            raise ValueError(f"inconsistent restart policy: {self}")

    def after_exit(self, history: WorkerHistory, ran_s: float
                   ) -> tuple[Restart | GiveUp, WorkerHistory]:
        """The decision for a worker that exited after running ``ran_s``, and its new history."""
        if ran_s >= self.stable_s:
            return Restart(self.first_delay_s), WorkerHistory()
        quick = history.quick_deaths + 1
        if quick >= self.max_quick_deaths:
            return GiveUp(quick), WorkerHistory(quick)
        delay = min(self.first_delay_s * 2 ** (quick - 1), self.max_delay_s)
        return Restart(delay), WorkerHistory(quick)
