"""Child processes of a benchmark run, and what the kernel says they cost.

CPU and memory are read from /proc (Linux): utime+stime of one process is
exactly the cost we want to divide by call-seconds, without counting the
broker, the load generator or the bot that share the machine.
"""

from __future__ import annotations

import json
import os
import queue
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from gateway import children

_TICKS = os.sysconf("SC_CLK_TCK")
_PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    """User + system CPU time the process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    # After the command name: state is field 3, utime 14 and stime 15 (1-based).
    return (int(fields[11]) + int(fields[12])) / _TICKS


def rss_kb(pid: int) -> int:
    return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * _PAGE_KB


class Child:
    """A Python child process of a run (``gateway.children.Child``): its stdout lines
    logged to ``<log_dir>/<name>.log`` with its stderr, kept for ``wait_for_line``, and
    the last JSON line among them kept for its result."""

    def __init__(self, name: str, args: list[str], log_dir: Path,
                 env: dict[str, str] | None = None) -> None:
        self.name = name
        self._log = (log_dir / f"{name}.log").open("w")
        self.lines: queue.Queue[str] = queue.Queue()
        self.last_json: dict[str, Any] | None = None
        self._child = children.Child(name, [sys.executable, *args], on_line=self._line,
                                     env=env, stderr=self._log)

    @property
    def pid(self) -> int:
        return self._child.pid

    @property
    def returncode(self) -> int | None:
        return self._child.returncode

    def _line(self, line: str) -> None:
        self._log.write(line + "\n")
        self._log.flush()
        stripped = line.strip()
        if stripped.startswith("{"):
            try:
                self.last_json = json.loads(stripped)
            except ValueError:
                pass
        self.lines.put(stripped)

    def wait_for_line(self, marker: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            # Asked before the get: once the output has ended, an empty queue stays empty.
            ended = self._child.wait_output(0)
            try:
                line = self.lines.get(timeout=0.05)
            except queue.Empty:
                if ended and self.returncode is not None:
                    raise RuntimeError(f"{self.name} exited with {self.returncode} "
                                       f"before {marker!r}; see {self._log.name}") from None
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{self.name}: no {marker!r} within {timeout}s") from None
                continue
            if marker in line:
                return

    def wait_json(self, timeout: float) -> dict[str, Any]:
        """Wait for the process to exit; its last JSON line."""
        try:
            self._child.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise
        if self.last_json is None:
            raise RuntimeError(f"{self.name} printed no JSON; see {self._log.name}")
        return self.last_json

    def stop(self, timeout: float = 30) -> dict[str, Any] | None:
        """SIGTERM, wait (SIGKILL after ``timeout``), and return the last JSON line it
        printed (if any)."""
        self._child.stop(timeout)
        return self.last_json

    def kill(self) -> None:
        self._child.kill()
