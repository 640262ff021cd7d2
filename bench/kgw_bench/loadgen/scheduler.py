"""The load generator's one scheduler per process: it places the calls and drives them in ticks.

Each tick reads every socket that has data (one private epoll, polled
without waiting) and sends every frame now due (a heap of due times), so the
event loop wakes about once per tick whatever the number of calls.
``run_load`` runs one process's calls and returns the summarized result.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import random
import select
import socket
import sys
import time
from array import array
from typing import Any

from kgw_bench.loadgen.call import (
    CLOSE_TIMEOUT_S,
    CLOSED,
    COMPLETED,
    FAILED,
    HUNG_UP,
    LINGER_S,
    LOST,
    OPEN,
    OPEN_TIMEOUT_S,
    PROTOCOL_ERROR,
    SERVER_CLOSED,
    STOPPED,
    Call,
    Target,
)
from kgw_bench.loadgen.frames import PERIOD_US, noise_template
from kgw_bench.loadgen.stats import MAX_ERRORS, summarize
from kgw_bench.realistic import DEFAULT_SEED, WORKLOADS, conversation, speaking

LATE_US = 5_000  # a frame sent later than this after its due time counts as late
TICK_MS = 1.0  # the scheduler's period: reads and due frames are handled once per tick


class LoadGen:
    """The calls of one process, their single frame scheduler and the counters."""

    def __init__(self, url: str, calls: int, seconds: float, warmup: float, ramp: float,
                 linger: float, open_timeout: float, kernel_stamps: bool = True,
                 tick_ms: float = TICK_MS, workload: str = "echo",
                 seed: int = DEFAULT_SEED, index_base: int = 0) -> None:
        if calls < 1:
            raise ValueError(f"calls must be at least 1; got {calls}")
        if seconds <= 0 or warmup < 0 or ramp < 0 or linger < 0 or open_timeout <= 0:
            raise ValueError("seconds and open_timeout must be > 0; warmup, ramp, linger >= 0")
        if not 0.1 <= tick_ms <= 10:
            raise ValueError(f"tick_ms must be within 0.1..10; got {tick_ms}")
        self.target = Target(url)
        self.loop = asyncio.get_running_loop()
        self.calls_n = calls
        self.seconds = seconds
        self.n_frames = max(1, round(seconds * 1000_000 / PERIOD_US))
        self.warmup_us = round(warmup * 1_000_000)
        self.ramp = ramp
        self.linger = linger
        self.open_timeout = open_timeout
        self.template = noise_template()
        if workload not in WORKLOADS:
            raise ValueError(f"workload must be one of {', '.join(WORKLOADS)}; got {workload!r}")
        self.workload = workload
        # Realistic: each call's script, per frame 1 while the caller speaks (seeded).
        convs = [] if workload == "echo" else [conversation(seed, index_base + i, seconds)
                                               for i in range(calls)]
        self.scripts: list[bytes] | None = None if workload == "echo" else [
            speaking(turns, self.n_frames) for turns in convs]
        self.turns_scripted = sum(len(turns) for turns in convs)
        self.barge_ins_scripted = sum(t.barged for turns in convs for t in turns)
        self.index_base = index_base
        # One receive buffer for every call: each read is parsed before the next one,
        # and recv_into a preallocated buffer is much cheaper than recv() of a new one.
        self.rxbuf = bytearray(256 * 1024)
        self.rxview = memoryview(self.rxbuf)
        self.rxbufs = [self.rxview]
        self.kernel_stamps = kernel_stamps and sys.platform.startswith("linux")
        self.read_delays = array("q")  # read time - kernel receive time, µs
        self.max_unsent = 0
        self.calls: list[Call] = []
        self.heap: list[tuple[int, int, Call]] = []
        self.timer: asyncio.TimerHandle | None = None
        self.tick_us = round(tick_ms * 1000)
        # The calls' sockets, polled for reading in each tick (not by the event loop).
        self.epoll = select.epoll()
        self.by_fd: dict[int, Call] = {}
        self.lat = array("d")  # command latency samples, ms
        self.lags = array("q")  # send lag per frame, µs
        self.late = 0
        self.other_text = 0
        self.binary_frames = 0
        self.bad_play = 0
        self.bad_stamps = 0
        self.hangup_frames = 0
        self.errors: list[str] = []
        self.error_count = 0
        self.stopping = False
        self.stop_event = asyncio.Event()

    def error(self, text: str) -> None:
        self.error_count += 1
        if len(self.errors) < MAX_ERRORS:
            self.errors.append(text)

    # --- placing calls --------------------------------------------------------------

    async def run(self) -> None:
        t = self.target
        try:
            infos = await self.loop.getaddrinfo(t.host, t.port, type=socket.SOCK_STREAM)
        except OSError as e:
            self.error(f"cannot resolve {t.host}: {e}")
            self.calls = [Call(self, i) for i in range(self.calls_n)]
            for call in self.calls:
                call.ended = FAILED
            return
        self.family, self.address = infos[0][0], infos[0][4]
        start = self.loop.time()
        places = [asyncio.ensure_future(self._place(i, start + i * self.ramp / self.calls_n))
                  for i in range(self.calls_n)]
        # One watchdog for the run, not a timer per call (timers cost every loop turn).
        budget = (self.ramp + 2 * self.open_timeout + self.seconds + self.linger
                  + 2 * CLOSE_TIMEOUT_S)
        _, pending = await asyncio.wait(places, timeout=budget)
        if pending:
            self.error(f"{len(pending)} calls still open after {budget:.1f} s; aborted")
            for call in self.calls:
                if call.state != CLOSED:
                    call.ended = call.ended or LOST
                    call.teardown(None)
            for task in pending:
                task.cancel()
            await asyncio.wait(pending, timeout=CLOSE_TIMEOUT_S)
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.epoll.close()

    async def _place(self, i: int, at: float) -> None:
        delay = at - self.loop.time()
        if delay > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop_event.wait(), delay)  # the ramp
        call = Call(self, i)
        self.calls.append(call)
        if self.stopping:
            call.ended = STOPPED
            return
        try:
            await call.connect(self.family, self.address)
        except (OSError, TimeoutError) as e:
            call.ended = FAILED
            t = self.target
            self.error(f"connect to {t.host}:{t.port}: {type(e).__name__}: {e}")
            return
        await call.done

    def stop(self) -> None:
        self.stopping = True
        self.stop_event.set()
        for call in self.calls:
            call.stop()

    # --- the one scheduler -----------------------------------------------------------

    def watch(self, call: Call) -> None:
        self.epoll.register(call.fd, select.EPOLLIN)
        self.by_fd[call.fd] = call
        if self.timer is None:
            self._arm(time.time_ns() // 1000)

    def unwatch(self, call: Call) -> None:
        if self.by_fd.pop(call.fd, None) is not None:
            self.epoll.unregister(call.fd)

    def opened(self, call: Call) -> None:
        now = time.time_ns() // 1000
        call.t0_us = now + int(random.random() * PERIOD_US)  # random phase
        call.warm_until_us = now + self.warmup_us
        heapq.heappush(self.heap, (call.t0_us, call.index, call))

    def _arm(self, now_us: int) -> None:
        """Wake for the next tick: every ``tick_us`` while sockets are open."""
        if self.by_fd:
            wake = now_us + self.tick_us
        elif self.heap:
            wake = self.heap[0][0]
        else:
            return
        self.timer = self.loop.call_at(self.loop.time() + (wake - now_us) / 1e6, self._tick)

    def _tick(self) -> None:
        """Read every socket with data, then send every frame now due: one wake-up for all."""
        self.timer = None
        by_fd = self.by_fd
        if by_fd:
            for fd, _ in self.epoll.poll(0, len(by_fd)):
                call = by_fd.get(fd)
                if call is not None:
                    try:
                        call.readable()
                    except Exception as e:  # a bug must not stop every other call
                        self.error(f"reading call {call.index}: {type(e).__name__}: {e}")
                        call.ended = call.ended or PROTOCOL_ERROR
                        call.teardown(e)
        heap = self.heap
        lags = self.lags
        clock = time.time_ns
        late = 0
        now = clock() // 1000
        while heap:
            entry = heap[0]
            due = entry[0]
            if due > now:
                break
            call = entry[2]
            if call.state != OPEN:
                heapq.heappop(heap)
                continue
            now = clock() // 1000
            frame = call.head + (now ^ call.mask64).to_bytes(8, "little") + call.tail
            call.send(frame)
            if call.state == CLOSED:  # the send failed and tore the call down
                continue
            lag = now - due
            lags.append(lag)
            if lag > LATE_US:
                late += 1
            k = call.frames_sent = call.frames_sent + 1
            if call.script is not None and k < call.n_frames:
                call.tail = call.tails[call.script[k]]  # realistic: speaking or quiet
            if k >= call.n_frames:
                heapq.heappop(heap)
                call.stream_done()
            else:
                heapq.heapreplace(heap, (call.t0_us + k * PERIOD_US, entry[1], call))
        self.late += late
        self._arm(now)

    # --- the result ---------------------------------------------------------------------

    def result(self) -> dict[str, Any]:
        ended: dict[str, int] = {}
        codes: dict[str, int] = {}
        for call in self.calls:
            how = call.ended or LOST
            ended[how] = ended.get(how, 0) + 1
            if call.close_code is not None:
                codes[str(call.close_code)] = codes.get(str(call.close_code), 0) + 1
        connected = sum(1 for c in self.calls if c.connected)
        return {
            "calls": self.calls_n,
            "calls_connected": connected,
            "calls_failed": ended.get(FAILED, 0),
            "calls_completed": ended.get(COMPLETED, 0),
            "calls_hung_up": ended.get(HUNG_UP, 0),
            "calls_closed_by_server": ended.get(SERVER_CLOSED, 0),
            "calls_lost": ended.get(LOST, 0),
            "calls_stopped": ended.get(STOPPED, 0),
            "calls_protocol_error": ended.get(PROTOCOL_ERROR, 0),
            "server_close_codes": codes,
            "frames_per_call": self.n_frames,
            "frames_expected": connected * self.n_frames,
            "frames_sent": sum(c.frames_sent for c in self.calls),
            "play_frames_received": sum(c.play_frames for c in self.calls),
            "play_chunks_received": sum(c.play_chunks for c in self.calls),
            "hangup_frames_received": self.hangup_frames,
            "other_text_frames": self.other_text,
            "binary_frames_received": self.binary_frames,
            "bad_play_frames": self.bad_play,
            "bad_stamps": self.bad_stamps,
            "late_frames": self.late,
            "max_unsent_bytes": self.max_unsent,
            "kernel_rx_stamps": self.kernel_stamps and len(self.read_delays) > 0,
            "workload": self.workload,
            "answers_heard": sum(c.answers for c in self.calls),
            "turns_scripted": self.turns_scripted,
            "barge_ins_scripted": self.barge_ins_scripted,
        }



async def run(url: str, calls: int, seconds: float, warmup: float, ramp: float, *,
               linger: float = LINGER_S, open_timeout: float = OPEN_TIMEOUT_S,
               kernel_stamps: bool = True, tick_ms: float = TICK_MS,
               start_at: float | None = None, stop: asyncio.Event | None = None,
               workload: str = "echo", seed: int = DEFAULT_SEED,
               index_base: int = 0) -> tuple[dict[str, Any], LoadGen]:
    gen = LoadGen(url, calls, seconds, warmup, ramp, linger, open_timeout, kernel_stamps, tick_ms,
                  workload, seed, index_base)
    if start_at is not None:
        await asyncio.sleep(max(0.0, start_at - time.time()))
    cpu0, wall0 = time.process_time(), time.monotonic()
    watcher = None
    if stop is not None:
        async def watch() -> None:
            await stop.wait()
            gen.stop()
        watcher = asyncio.ensure_future(watch())
    try:
        await gen.run()
    finally:
        if watcher is not None:
            watcher.cancel()
    run_cpu_s, wall_s = time.process_time() - cpu0, time.monotonic() - wall0
    result = summarize(gen.result(), gen.lat, gen.lags, gen.read_delays, run_cpu_s=run_cpu_s,
                       wall_s=wall_s, errors=gen.errors, error_count=gen.error_count)
    result["procs"] = 1
    return result, gen


async def run_load(url: str, calls: int, seconds: float, warmup: float = 2.0,
                   ramp: float = 0.0, *, linger: float = LINGER_S,
                   open_timeout: float = OPEN_TIMEOUT_S, kernel_stamps: bool = True,
                   tick_ms: float = TICK_MS, stop: asyncio.Event | None = None) -> dict[str, Any]:
    """Place ``calls`` calls of ``seconds`` each in this process and return the result.

    Starts are spread over ``ramp`` s; latency samples from each call's first
    ``warmup`` s are dropped. Receive times are the kernel's (SO_TIMESTAMPNS)
    unless ``kernel_stamps`` is false or unavailable, then the time of the read.
    ``cpu_s`` is this whole process (and its reaped children), ``run_cpu_s`` the
    process's CPU during the run only; both count anything else the process
    runs meanwhile (e.g. a server in the same loop). Setting ``stop`` ends every
    call early with 1000. Never raises for what the network or the server does:
    that is in the counters and ``errors``.
    """
    result, _ = await run(url, calls, seconds, warmup, ramp, linger=linger,
                           open_timeout=open_timeout, kernel_stamps=kernel_stamps,
                           tick_ms=tick_ms, stop=stop)
    return result
