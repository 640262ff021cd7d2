"""The node clock is monotonic, records keep wall-clock times, stale commands are refused."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Coroutine
from typing import Any, TypeVar

import pytest

from gateway import records
from gateway.clock import LoopClock, wall_offset
from gateway.config import NodeConfig
from gateway.core import model as m
from gateway.kafka.bus import Bus
from gateway.ops.metrics import Metrics

T = TypeVar("T")


def run_in_own_loop(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` on a fresh event loop in a thread (this thread's loop is the reactor's)."""
    out: list[T] = []
    errors: list[BaseException] = []

    def target() -> None:
        try:
            out.append(asyncio.run(coro))
        except BaseException as e:  # reported in the test's thread
            errors.append(e)

    t = threading.Thread(target=target)
    t.start()
    t.join(10)
    if errors:
        raise errors[0]
    return out[0]


class SteppedWall:
    """time.time() that jumps by ``step`` seconds once ``armed``."""

    def __init__(self, step: float) -> None:
        self.step = step
        self.armed = False
        self._real = time.time

    def __call__(self) -> float:
        return self._real() + (self.step if self.armed else 0.0)


@pytest.mark.parametrize("step", [60.0, -60.0])
def test_loop_clock_timers_ignore_a_wall_clock_step(monkeypatch: pytest.MonkeyPatch,
                                                    step: float) -> None:
    """A timer armed for 0.2 s fires after 0.2 s of monotonic time whatever the wall clock does."""
    wall = SteppedWall(step)
    monkeypatch.setattr(time, "time", wall)

    async def run() -> tuple[float, float]:
        clock = LoopClock(asyncio.get_running_loop())
        fired = asyncio.Event()
        early = clock.callLater(0.05, lambda: None)
        dc = clock.callLater(0.2, fired.set)
        start = time.monotonic()
        wall.armed = True  # the step happens while the timer waits
        await asyncio.wait_for(fired.wait(), 5)
        assert not dc.active() and not early.active()
        return start, time.monotonic()

    start, end = run_in_own_loop(run())
    assert 0.19 <= end - start < 1.0


def test_loop_clock_reset_and_cancel() -> None:
    """reset moves a pending timer; cancel stops it; neither acts on a fired timer."""
    async def run() -> list[str]:
        clock = LoopClock(asyncio.get_running_loop())
        seen: list[str] = []
        a = clock.callLater(0.05, seen.append, "a")
        b = clock.callLater(0.05, seen.append, "b")
        a.reset(0.15)
        b.cancel()
        assert not b.active() and a.active()
        await asyncio.sleep(0.1)
        assert seen == []
        await asyncio.sleep(0.15)
        a.cancel()  # already fired: nothing happens
        return seen

    assert run_in_own_loop(run()) == ["a"]


class FakeClock:
    def __init__(self, now: float) -> None:
        self.now = now

    def seconds(self) -> float:
        return self.now


class WallClock:
    def seconds(self) -> float:
        return time.time()


@pytest.mark.parametrize(("clock_now", "expected"), [(123.0, None), (None, 0.0)])
def test_wall_offset_turns_clock_times_into_wall_times(clock_now: float | None,
                                                        expected: float | None) -> None:
    """The offset maps a monotonic clock's now onto the wall clock, and is 0 for a wall clock."""
    clock: Any = FakeClock(clock_now) if clock_now is not None else WallClock()
    offset = wall_offset(clock)
    if expected is not None:
        assert offset == expected
    else:
        assert abs(clock.seconds() + offset - time.time()) < 0.01


def test_records_carry_wall_clock_times_from_a_monotonic_clock() -> None:
    """A record made at monotonic time t is encoded with the wall-clock time of t."""
    clock = FakeClock(50.0)
    offset = wall_offset(clock)
    rec = m.Inbound("c", 0, 50.0, m.CallerAudio(0, 0, 49.5, b"\x00\x00", 16000))
    pb = records.decode_inbound(records.encode_inbound(rec, "n", offset))
    assert abs(pb.time_unix_us / 1e6 - time.time()) < 0.01
    assert pb.time_unix_us - pb.audio.received_unix_us == 500_000


@pytest.mark.parametrize(("age", "stale"), [(0.5, False), (29.0, False), (31.0, True),
                                            (3600.0, True)])
def test_commands_older_than_the_limit_are_refused_not_played(age: float, stale: bool) -> None:
    """A command sent longer ago than max_command_age_s reaches the call as Refused (a
    command_rejected record), and is counted."""
    metrics = Metrics()
    got: list[m.Command] = []
    bus = Bus(NodeConfig(max_command_age_s=30), metrics, got.append)
    cmd = m.Command("c1", m.HangUp(), command_id="k", sent_at=time.time() - age)
    bus._dispatch(records.encode_command(cmd), time.time())
    (delivered,) = got
    assert isinstance(delivered.body, m.Refused) is stale
    if stale:
        assert "stale" in delivered.body.reason  # type: ignore[union-attr]
    assert metrics.registry.get_sample_value("kgw_commands_stale_total") == float(stale)


def test_no_age_limit_when_set_to_zero() -> None:
    """max_command_age_s 0 plays commands of any age."""
    got: list[m.Command] = []
    bus = Bus(NodeConfig(max_command_age_s=0), Metrics(), got.append)
    cmd = m.Command("c1", m.HangUp(), sent_at=time.time() - 86400)
    bus._dispatch(records.encode_command(cmd), time.time())
    assert got[0].body == m.HangUp()
