"""A child process whose output is read line by line as it comes, and that stops in bounded time.

What ``knowlarity-gateway dev``, the bench harness and the fault tests each
need of the processes they run. The child starts in a session of its own, so
a Ctrl-C at the terminal reaches only the parent, which then stops its
children in its own order (a node drains before the broker goes). Stopping
is SIGTERM to the child, a bounded wait, then SIGKILL to its whole process
group: a child that traps or ignores SIGTERM cannot hold its parent up, nor
leave processes of its own behind.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import IO, Any

__all__ = ["Child", "kill_process", "stop_process"]

log = logging.getLogger(__name__)

# Lines a child wrote just before it exited are still in the pipe when wait()
# returns; reading them must not be held up for long by a grandchild that
# keeps the pipe open.
OUTPUT_GRACE_S = 2.0


class Child:
    """``argv`` as a child process, each stdout line handed to ``on_line`` (without its
    newline, on a reading thread of its own) as soon as it is written.

    ``env`` holds variables set on top of this process's environment; ``stderr`` is
    merged into stdout unless given (a file, or ``subprocess.DEVNULL``). ``proc`` is
    the ``Popen``, for what this class does not wrap (other signals, stdin).
    """

    def __init__(self, name: str, argv: Sequence[str], *,
                 on_line: Callable[[str], None] | None = None,
                 env: Mapping[str, str] | None = None,
                 stderr: int | IO[Any] | None = subprocess.STDOUT) -> None:
        self.name = name
        self._on_line = on_line
        self.proc = subprocess.Popen(
            list(argv), stdout=subprocess.PIPE, stderr=stderr, text=True, errors="replace",
            bufsize=1, env=None if env is None else {**os.environ, **env},
            start_new_session=True)
        self._reader = threading.Thread(target=self._read, name=f"{name} output", daemon=True)
        self._reader.start()

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def returncode(self) -> int | None:
        """The exit status, None while it runs (negative: the signal that ended it)."""
        return self.proc.poll()

    def alive(self) -> bool:
        return self.proc.poll() is None

    def wait(self, timeout: float | None = None) -> int:
        """Wait for the exit (``subprocess.TimeoutExpired`` after ``timeout``), then for the
        last lines to be handed on; the exit status."""
        status = self.proc.wait(timeout)
        self.wait_output(OUTPUT_GRACE_S)
        return status

    def wait_output(self, timeout: float | None = None) -> bool:
        """Wait until the child's output has ended and every line was handed on; whether
        it has (``wait_output(0)`` only asks)."""
        self._reader.join(timeout)
        return not self._reader.is_alive()

    def stop(self, timeout: float = 15) -> int:
        """SIGTERM, up to ``timeout`` s for the exit, then SIGKILL; the exit status."""
        status = stop_process(self.proc, timeout)
        self.wait_output(OUTPUT_GRACE_S)
        return status

    def kill(self) -> int:
        """SIGKILL now, no chance to clean up; the exit status."""
        status = kill_process(self.proc)
        self.wait_output(OUTPUT_GRACE_S)
        return status

    def _read(self) -> None:
        assert self.proc.stdout is not None
        with self.proc.stdout as out:
            for line in out:
                if self._on_line is None:
                    continue
                try:
                    self._on_line(line.removesuffix("\n"))
                except Exception:
                    # Reading goes on: a child whose pipe is no longer drained blocks
                    # on its next write, and would look hung rather than broken.
                    log.exception("%s: handling an output line failed", self.name)


def stop_process(proc: subprocess.Popen[Any], timeout: float) -> int:
    """SIGTERM to ``proc``, up to ``timeout`` s for it to exit, then ``kill_process``;
    its exit status. Nothing is sent to a process that has already exited."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(timeout)
        except subprocess.TimeoutExpired:
            pass
    return kill_process(proc)


def kill_process(proc: subprocess.Popen[Any]) -> int:
    """SIGKILL to ``proc`` and, when it leads a process group (``start_new_session``),
    to everything in that group; waits for it and returns its exit status."""
    if proc.poll() is None:
        # While proc is not reaped no other group can have its pid as id: the group,
        # if there is one, is the one it leads.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.kill()
    return proc.wait()
