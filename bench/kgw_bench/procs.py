"""Child processes of a benchmark run, and what the kernel says they cost.

CPU and memory are read from /proc (Linux): utime+stime of one process is
exactly the cost we want to divide by call-seconds, without counting the
broker, the load generator or the bot that share the machine.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

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
    """A Python child process whose stdout lines are kept (and logged to a file)."""

    def __init__(self, name: str, args: list[str], log_dir: Path,
                 env: dict[str, str] | None = None) -> None:
        self.name = name
        self._log = (log_dir / f"{name}.log").open("w")
        self.proc = subprocess.Popen(
            [sys.executable, *args], stdout=subprocess.PIPE, stderr=self._log, text=True,
            bufsize=1, env={**os.environ, **(env or {})}, start_new_session=True)
        self.lines: queue.Queue[str] = queue.Queue()
        self.last_json: dict[str, Any] | None = None
        threading.Thread(target=self._pump, daemon=True).start()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._log.write(line)
            self._log.flush()
            stripped = line.strip()
            if stripped.startswith("{"):
                try:
                    self.last_json = json.loads(stripped)
                except ValueError:
                    pass
            self.lines.put(stripped)
        self.lines.put("")

    def wait_for_line(self, marker: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.lines.get(timeout=max(0.05, deadline - time.monotonic()))
            except queue.Empty:
                raise TimeoutError(f"{self.name}: no {marker!r} within {timeout}s") from None
            if marker in line:
                return
            if line == "" and self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode} "
                                   f"before {marker!r}; see {self._log.name}")

    def wait_json(self, timeout: float) -> dict[str, Any]:
        """Wait for the process to exit; its last JSON line."""
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise
        # The pump thread may still be reading the last lines.
        deadline = time.monotonic() + 5
        while self.last_json is None and time.monotonic() < deadline:
            time.sleep(0.05)
        if self.last_json is None:
            raise RuntimeError(f"{self.name} printed no JSON; see {self._log.name}")
        return self.last_json

    def stop(self, timeout: float = 30) -> dict[str, Any] | None:
        """SIGTERM, wait, and return the last JSON line it printed (if any)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
        time.sleep(0.2)
        return self.last_json

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
