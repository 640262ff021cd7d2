"""``serve --workers 2``: two node processes behind one port, under one supervisor.

The supervisor runs as a subprocess (``tcp:0``: it picks the port and gives it to
both workers, which share it with SO_REUSEPORT); the echo bot runs in this
process, the simulated provider as its own. Short leases come from the
environment, as in test_node_loss.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from test_end_to_end import PATH, RATE, in_twisted, known_audio, reading, running_bot, simulate
from test_node_loss import Proc, ends

from gateway.bot.echo_logic import EchoPolicy
from gateway.core import model as m
from gateway.core.wav import decode_wav, encode_wav
from gateway.ports import free_port_run
from gateway.records import end_reason
from gateway.testing import InboundReader

pytestmark = pytest.mark.broker

LEASE_S = 6.0
MARGIN_S = 4.0
CALLS = 20
LIVE_CALLS = 6
STARTED = re.compile(r"worker (\d) started: node (\S+), pid (\d+)")


def readyz(port: int) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as r:
            return int(r.status)
    except urllib.error.HTTPError as e:
        return e.code
    except OSError:
        return 0


async def wait_ready(port: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while await asyncio.to_thread(readyz, port) != 200:
        assert time.monotonic() < deadline, f"metrics port {port}: /readyz never 200"
        await asyncio.sleep(0.2)


def worker_pids(sup: Proc) -> dict[int, int]:
    """Each worker's latest pid, from the supervisor's 'worker k started' lines."""
    pids: dict[int, int] = {}
    for line in sup.lines:
        if found := STARTED.search(line):
            pids[int(found[1])] = int(found[3])
    return pids


async def wait_lines(sup: Proc, text: str, count: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while sum(text in line for line in sup.lines) < count:
        assert sup.alive() and time.monotonic() < deadline, sup.tail()
        await asyncio.sleep(0.05)


def started_on(inbound: InboundReader, call_ids: set[str]) -> dict[str, str]:
    """Call id -> the node id its started record names."""
    return {r.call_id: r.node_id for r in inbound.started_calls() if r.call_id in call_ids}


@in_twisted
async def test_two_workers_share_a_port_and_a_killed_one_comes_back(
        kafka_bootstrap: str, topic_prefix: str, tmp_path: Path) -> None:
    """20 calls on one port are all echoed and spread over both workers' node ids; a
    worker SIGKILLed with live calls is restarted (its /readyz answers again) and its calls
    end NODE_LOST exactly once while the other worker's go on; SIGTERM then drains both
    and the supervisor exits 0."""
    t0 = time.monotonic()
    metrics = free_port_run(2)
    sup = Proc("supervisor", [
        sys.executable, "-m", "gateway.cli", "serve", "--workers", "2",
        "--listen", "tcp:0:interface=127.0.0.1", "--kafka", kafka_bootstrap,
        "--node-id", "w", "--topic-prefix", topic_prefix,
        "--metrics-listen", f"tcp:{metrics}:interface=127.0.0.1",
        "--inbound-partitions", "3", "--linger-ms", "1", "--drain-timeout-s", "1"],
        env={"KGW_LEASE_S": str(LEASE_S), "KGW_LEASE_MARGIN_S": str(MARGIN_S)})
    simulator: Proc | None = None
    try:
        await wait_lines(sup, "listening on", 2)
        (port,) = {int(x) for x in re.findall(r"on port (\d+) \(SO_REUSEPORT\)", sup.tail(400))}
        assert sum("listening on" in line and f"port={port})" in line
                   for line in sup.lines) == 2, sup.tail()
        url = f"ws://127.0.0.1:{port}{PATH}"
        up = time.monotonic()

        sent = known_audio(1.6, seed=7)
        wav = tmp_path / "in.wav"
        wav.write_bytes(encode_wav(sent, RATE))
        policy = EchoPolicy(echo_delay_ms=200, silence_hangup_s=0, max_call_s=0)
        async with running_bot(kafka_bootstrap, topic_prefix, policy), \
                reading(InboundReader(kafka_bootstrap, topic_prefix)) as inbound:
            result = await simulate(url, ["--calls", str(CALLS), "--audio", str(wav),
                                          "--seconds", "1.6", "--linger-s", "4",
                                          "--out", str(tmp_path)])
            calls = result["calls"]
            assert len(calls) == CALLS
            for call in calls:
                assert call["ended"] == "caller_hangup", call
                heard, _ = decode_wav((tmp_path / f"{call['call_id']}.heard.wav").read_bytes())
                assert len(heard) > len(sent) and heard[-len(sent):] == sent, call["call_id"]
            first = {c["call_id"] for c in calls}
            await inbound.wait_for(lambda r: len(started_on(r, first)) == CALLS)
            per_node = sorted(started_on(inbound, first).values())
            counts = {n: per_node.count(n) for n in set(per_node)}
            assert set(counts) == {"w-0", "w-1"}, counts
            echoed = time.monotonic()

            # Live calls, then SIGKILL a worker that holds some of them.
            simulator = Proc("simulator", [
                sys.executable, "-m", "gateway.simulator", "--url", url,
                "--calls", str(LIVE_CALLS), "--seconds", "120", "--json"])

            def live(r: Any) -> set[str]:
                return {c for c, recs in r.by_call.items() if c not in first and recs
                        and recs[0] is not None and recs[0].WhichOneof("body") == "started"
                        and any(x is not None and x.WhichOneof("body") == "audio"
                                for x in recs)}

            await inbound.wait_for(lambda r: len(live(r)) == LIVE_CALLS)
            on = started_on(inbound, live(inbound))
            k = 1 if "w-1" in on.values() else 0
            victim = sorted(c for c, n in on.items() if n == f"w-{k}")
            others = sorted(c for c, n in on.items() if n != f"w-{k}")
            await wait_ready(metrics + k)
            old_pid = worker_pids(sup)[k]
            os.kill(old_pid, signal.SIGKILL)
            killed = time.monotonic()

            await wait_lines(sup, f"pid {old_pid}) killed by SIGKILL", 1, timeout=10)
            await wait_lines(sup, f"worker {k} started", 2, timeout=20)
            assert worker_pids(sup)[k] != old_pid
            await wait_ready(metrics + k)
            ready_again = time.monotonic()
            await inbound.wait_for(lambda r: all(ends(r, victim).values()),
                                   timeout=LEASE_S + MARGIN_S + 30)
            lost = time.monotonic()
            await asyncio.sleep(1.5)  # a second end, if any, would be read by now
            for call_id, found in ends(inbound, victim).items():
                assert len(found) == 1, f"{call_id}: {len(found)} ended records"
                assert end_reason(found[0]) is m.EndReason.NODE_LOST  # type: ignore[arg-type]
                assert found[0].node_id == f"w-{k}"
                # by the restarted worker itself (epoch 2), before it listened again
                assert f"ended by node w-{k} epoch 2" in found[0].ended.detail
            text = "\n".join(line for line in sup.lines if line.startswith(f"[w-{k}]"))
            first_listen, again = text.index("listening on"), text.rindex("listening on")
            ended_lost = text.find(f"ended {len(victim)} calls node_lost", first_listen)
            assert first_listen < ended_lost < again, text[-3000:]
            assert all(not found for found in ends(inbound, others).values()), \
                "the other worker's calls go on"

            sup.proc.send_signal(signal.SIGTERM)
            assert await sup.exit_status(30) == 0, sup.tail()
            stopped = time.monotonic()
            await inbound.wait_for(lambda r: all(ends(r, others).values()))
            for call_id, found in ends(inbound, others).items():
                assert [end_reason(r) for r in found] == [m.EndReason.NODE_SHUTDOWN], call_id
        print(f"workers: both listening {up - t0:.1f}s after start; {CALLS} calls echoed "
              f"({counts}) in {echoed - up:.1f}s; worker w-{k} killed with {len(victim)} of "
              f"{LIVE_CALLS} live calls: /readyz 200 again after {ready_again - killed:.1f}s, "
              f"all NODE_LOST ends read after {lost - killed:.1f}s; SIGTERM to exit "
              f"{stopped - lost - 1.5:.1f}s; total {time.monotonic() - t0:.1f}s")
    finally:
        if simulator is not None:
            simulator.kill()
        sup.stop(30)  # SIGTERM first: the supervisor stops its workers
        for pid in worker_pids(sup).values():  # had it hung, none outlives the test
            with contextlib.suppress(OSError):
                if topic_prefix in Path(f"/proc/{pid}/cmdline").read_text():  # still ours
                    os.kill(pid, signal.SIGKILL)
