"""gateway.children: a real child's lines arrive as written, and it stops within its bound."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.children import Child, stop_process

# A child that says it is ready once its SIGTERM handler is in place, so that a
# signal sent after "ready" meets the handler, never the default action.
TRAPS_TERM = """
import signal, time
signal.signal(signal.SIGTERM, lambda *_: print("got SIGTERM", flush=True))
print("ready", flush=True)
while True:
    time.sleep(1)
"""
SLEEPS = "import time; print('ready', flush=True); time.sleep(60)"
SLACK_S = 3.0  # a loaded 2-core machine: start-up and scheduling

Spawn = Callable[..., Child]


class Lines:
    """on_line's target: every line, and an event the line "ready" sets."""

    def __init__(self) -> None:
        self.seen: list[str] = []
        self._ready = threading.Event()

    def __call__(self, line: str) -> None:
        self.seen.append(line)
        if line == "ready":
            self._ready.set()

    def wait_ready(self, timeout: float = 10) -> None:
        assert self._ready.wait(timeout), f"no 'ready' line: {self.seen}"


def python(code: str) -> list[str]:
    return [sys.executable, "-c", code]


@pytest.fixture
def spawn() -> Iterator[Spawn]:
    """Child(...), killed at the end of the test if a failure left it running."""
    started: list[Child] = []

    def start(*args: Any, **kwargs: Any) -> Child:
        started.append(Child(*args, **kwargs))
        return started[-1]

    yield start
    for child in started:
        child.kill()


def test_lines_arrive_in_order_without_newlines_and_stderr_is_merged(spawn: Spawn) -> None:
    """Every stdout and stderr line of a short child reaches on_line in order, without
    its newline, by the time wait() returns the exit status."""
    lines = Lines()
    child = spawn("short", python(
        "import sys\n"
        "for i in range(3): print(f'line {i}', flush=True)\n"
        "print('to stderr', file=sys.stderr, flush=True)\n"
        "sys.stdout.write('no newline at the end')\n"
        "sys.exit(3)"), on_line=lines)
    assert child.wait(10) == 3
    assert lines.seen == ["line 0", "line 1", "line 2", "to stderr", "no newline at the end"]
    assert child.returncode == 3 and not child.alive()


def test_lines_arrive_while_the_child_runs(spawn: Spawn) -> None:
    """A line is handed on as soon as it is written, not when the child exits."""
    lines = Lines()
    child = spawn("sleeper", python(SLEEPS), on_line=lines)
    lines.wait_ready()
    assert child.alive()


def test_env_is_set_on_top_of_the_parents_environment(spawn: Spawn) -> None:
    """A variable given in env is seen by the child, beside the ones it inherits."""
    lines = Lines()
    child = spawn("env", python(
        "import os; print(os.environ['KGW_TEST_CHILD'], 'PATH' in os.environ)"),
        on_line=lines, env={"KGW_TEST_CHILD": "set"})
    assert child.wait(10) == 0
    assert lines.seen == ["set True"]


def test_stderr_can_go_elsewhere(spawn: Spawn, tmp_path: Path) -> None:
    """With stderr given, stderr lines go there and only stdout lines reach on_line."""
    lines = Lines()
    with open(tmp_path / "err.log", "w") as err:
        child = spawn("split", python(
            "import sys; print('out'); print('err', file=sys.stderr)"),
            on_line=lines, stderr=err)
        assert child.wait(10) == 0
    assert lines.seen == ["out"]
    assert (tmp_path / "err.log").read_text() == "err\n"


def test_stop_ends_a_child_that_heeds_sigterm_at_once(spawn: Spawn) -> None:
    """stop() on a child with SIGTERM's default action ends it by SIGTERM, well before
    the timeout."""
    lines = Lines()
    child = spawn("heeds", python(SLEEPS), on_line=lines)
    lines.wait_ready()
    t0 = time.monotonic()
    assert child.stop(timeout=10) == -signal.SIGTERM
    assert time.monotonic() - t0 < SLACK_S


def test_stop_kills_a_child_that_traps_sigterm_within_the_timeout(spawn: Spawn) -> None:
    """A child that traps SIGTERM gets it, then SIGKILL once the timeout has passed."""
    lines = Lines()
    child = spawn("traps", python(TRAPS_TERM), on_line=lines)
    lines.wait_ready()
    t0 = time.monotonic()
    assert child.stop(timeout=0.5) == -signal.SIGKILL
    elapsed = time.monotonic() - t0
    assert 0.5 <= elapsed < 0.5 + SLACK_S
    assert "got SIGTERM" in lines.seen


def test_stop_of_a_child_that_has_exited_returns_its_status(spawn: Spawn) -> None:
    """stop() after the child exited sends nothing and returns the status it exited with."""
    child = spawn("gone", python("raise SystemExit(4)"))
    assert child.wait(10) == 4
    assert child.stop(timeout=0.1) == 4
    assert child.kill() == 4


def _gone(pid: int) -> bool:
    """No such process, or a zombie nobody has reaped yet (it is dead all the same)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] in ("Z", "X")


def test_kill_ends_what_the_child_started_too(spawn: Spawn) -> None:
    """kill() SIGKILLs the child's process group: a grandchild that traps SIGTERM dies
    with it instead of living on."""
    lines = Lines()
    child = spawn("parent", python(
        "import subprocess, sys, time\n"
        f"g = subprocess.Popen([sys.executable, '-c', {TRAPS_TERM!r}], stdout=subprocess.PIPE)\n"
        "assert g.stdout.readline() == b'ready\\n'\n"
        "print(g.pid, flush=True)\n"
        "print('ready', flush=True)\n"
        "time.sleep(60)"), on_line=lines)
    lines.wait_ready()
    grandchild = int(lines.seen[0])
    try:
        assert not _gone(grandchild)
        assert child.kill() == -signal.SIGKILL
        deadline = time.monotonic() + SLACK_S
        while not _gone(grandchild):
            assert time.monotonic() < deadline, f"grandchild {grandchild} outlived the kill"
            time.sleep(0.05)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(grandchild, signal.SIGKILL)


def test_a_failing_line_handler_does_not_stall_the_child(spawn: Spawn) -> None:
    """When on_line raises, reading goes on: a child writing far more than a pipe holds
    still exits, and the later lines are handed on."""
    seen: list[str] = []

    def on_line(line: str) -> None:
        if line == "0":
            raise RuntimeError("handler bug")
        seen.append(line)

    # About 110 KB: more than a Linux pipe's 64 KB.
    child = spawn("chatty", python("for i in range(20000): print(i)"), on_line=on_line)
    assert child.wait(20) == 0
    assert len(seen) == 19_999 and seen[-1] == "19999"


def test_stop_process_kills_a_trapping_process_outside_a_session_of_its_own() -> None:
    """stop_process on a plain Popen (same process group as the tests) SIGKILLs that
    process alone after the timeout, and the test process lives on."""
    proc = subprocess.Popen(python(TRAPS_TERM), stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
        assert os.getpgid(proc.pid) == os.getpgid(0)
        assert stop_process(proc, 0.5) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        assert proc.stdout is not None
        proc.stdout.close()
