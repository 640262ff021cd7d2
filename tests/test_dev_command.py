"""The newcomer's path: `knowlarity-gateway dev` in one terminal, `simulate` in another."""

from __future__ import annotations

import json
import queue
import re
import shlex
import signal
import subprocess
import sys
import threading
import time

import pytest

pytestmark = pytest.mark.broker


def _lines(proc: subprocess.Popen[str]) -> queue.Queue[str]:
    """The process's output lines, then "" at end of output."""
    q: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            q.put(line)
        q.put("")

    threading.Thread(target=pump, daemon=True).start()
    return q


def test_dev_serves_three_simulated_calls_and_stops_cleanly() -> None:
    """dev prints its WebSocket URL and Kafka address once ready, three simulated calls
    complete against it, and SIGTERM stops bot, node and broker with exit status 0."""
    dev = subprocess.Popen(
        [sys.executable, "-m", "gateway", "dev", "--port", "0", "--metrics-port", "0",
         "--kafka-port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    seen: list[str] = []
    try:
        lines = _lines(dev)
        url = kafka = hint = None
        deadline = time.monotonic() + 180
        while url is None or kafka is None or hint is None:
            try:
                line = lines.get(timeout=max(0.1, deadline - time.monotonic())).rstrip("\n")
            except queue.Empty:
                pytest.fail("dev did not become ready:\n" + "".join(seen[-40:]))
            seen.append(line + "\n")
            if line.startswith("ws://"):
                url = line
            elif line.startswith("kafka: "):
                kafka = line.removeprefix("kafka: ")
            elif line.startswith("place a call:"):
                hint = line.removeprefix("place a call:").strip()
        assert kafka.startswith("127.0.0.1:")
        # Each step said what it waited for and how long it took.
        said = "".join(seen)
        for step in ("Kafka at", "the gateway to answer", "the echo bot to hold its partitions"):
            assert re.search(rf"{step}.*: ready in \d+\.\d s", said), said

        # The hint works as typed (here: the command from this checkout's venv).
        command = shlex.split(hint)
        assert command[command.index("simulate"):] == [
            "simulate", "--url", url, "--calls", "3", "--seconds", "5"]
        sim = subprocess.run(
            [*command[:command.index("simulate")], "simulate", "--url", url, "--calls", "3",
             "--seconds", "3", "--json"],
            capture_output=True, text=True, timeout=120)
        assert sim.returncode == 0, sim.stdout[-3000:] + sim.stderr[-3000:]
        report = json.loads(sim.stdout.strip().splitlines()[-1])
        calls = report["calls"]
        assert len(calls) == 3
        assert all(c["ended"] == "caller_hangup" for c in calls)
        # The echo bot's chime and echo came back on every call.
        assert all(c["audio_received_ms"] > 3000 for c in calls)

        dev.send_signal(signal.SIGTERM)
        assert dev.wait(timeout=60) == 0
        tail = list(iter(lambda: lines.get(timeout=10), ""))
        assert any(line.strip() == "stopped" for line in tail), "".join(tail)
    finally:
        if dev.poll() is None:
            dev.kill()
            dev.wait()
