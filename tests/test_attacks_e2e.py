"""Attacks at once on one gateway node, run as its own process, while a probe call streams.

The node, the probe call, the 40 live calls and the socket attacks each run as a
process (``tests/attack_tools/wsclients.py`` is the provider side); the bot side
(commands over Kafka) and the reader of the inbound topic run in the test.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import IO, Any

import pytest
from aiokafka import AIOKafkaProducer
from test_end_to_end import in_twisted, reading

from gateway import topics
from gateway.children import stop_process
from gateway.core import model as m
from gateway.ports import free_port
from gateway.records import encode_command, playback_kind
from gateway.testing import InboundReader

pytestmark = pytest.mark.broker

TOOLS = Path(__file__).parent / "attack_tools" / "wsclients.py"
PATH = "/vaani/knowlarity/setup-call-streams"
PROBE_SECONDS = 18.0
MAX_MARKS = 256  # the node's --max-marks default
MARKS = 20_000
BIG_PLAY_BYTES = 1_000_000
# Absurd play rates, one per live call (none of them is a rate the node plays).
ABSURD_RATES = [1, 3, 7, 4294967295, 0, 2, 5, 9, 11, 13, 17, 19, 23, 29, 31, 37, 41, 43, 47,
                53, 59, 100, 1000, 4000, 7999, 8001, 15999, 16001, 47999, 48001, 65535, 65536,
                96000, 192000, 2**31 - 1, 2**31, 2**32 - 2, 123456789, 999999999, 3000000000]



def rss_kb(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


class RssSampler(threading.Thread):
    """The node's RSS every 100 ms, in a thread of the test process."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.max_kb = 0
        self.samples = 0
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.wait(0.1):
            kb = rss_kb(self.pid)
            if kb is not None:
                self.samples += 1
                self.max_kb = max(self.max_kb, kb)

    def stop(self) -> None:
        self._halt.set()
        self.join(2)


_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def http_status(port: int, path: str) -> int | None:
    try:
        with _NO_PROXY.open(f"http://127.0.0.1:{port}{path}", timeout=2) as r:
            return int(r.status)
    except urllib.error.HTTPError as e:
        return int(e.code)
    except OSError:
        return None


def spawn(args: list[str], out: Path, stdin: int | IO[Any] = subprocess.DEVNULL
          ) -> subprocess.Popen[bytes]:
    with open(out, "wb") as f:
        return subprocess.Popen(args, stdout=f, stderr=subprocess.STDOUT, stdin=stdin,
                                start_new_session=True)


def client(mode: str, out: Path, *args: str, stdin: int | IO[Any] = subprocess.DEVNULL
           ) -> subprocess.Popen[bytes]:
    return spawn([sys.executable, str(TOOLS), mode, *args], out, stdin)


async def wait_exit(proc: subprocess.Popen[bytes], timeout: float, what: str) -> int:
    deadline = time.monotonic() + timeout
    while proc.poll() is None:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} still running after {timeout}s")
        await asyncio.sleep(0.1)
    return proc.returncode


def last_json(out: Path) -> dict[str, Any]:
    lines = out.read_text(errors="replace").strip().splitlines()
    assert lines, f"{out.name} is empty"
    try:
        return dict(json.loads(lines[-1]))
    except ValueError:
        tail = "\n".join(lines[-20:])
        raise AssertionError(f"{out.name} did not end in JSON:\n{tail}") from None


def stop(proc: subprocess.Popen[bytes] | None, wait: float = 5) -> None:
    if proc is not None:
        stop_process(proc, wait)


def kinds(recs: list[Any]) -> list[str]:
    return [r.WhichOneof("body") for r in recs]


@in_twisted
async def test_node_holds_up_under_simultaneous_attacks(
        kafka_bootstrap: str, topic_prefix: str, tmp_path: Path) -> None:
    """Under a header flood, a zero-length frame flood, a 60 KB call id, 40 plays at absurd
    rates, a 1 MB play and 20,000 marks at once, the node refuses each with its documented
    close code or command_rejected record while a probe call's frames are received without a
    gap over 100 ms, its RSS grows by under 30 MB, and it stays alive and healthy."""
    t_begin = time.monotonic()
    node_id = "atk"
    port, mport = free_port(), free_port()
    url = f"ws://127.0.0.1:{port}{PATH}"
    cmd_topic = topics.commands_topic(topic_prefix, node_id)
    probe_id = f"{topic_prefix}-probe"
    call_ids = [f"{topic_prefix}-c{i:02d}" for i in range(40)]
    mark_call = call_ids[0]
    zero_id = f"{topic_prefix}-zero"
    outs = {k: tmp_path / f"{k}.out" for k in ("node", "probe", "calls", "attacks")}
    node = probe = calls = attacks = None
    sampler: RssSampler | None = None
    ok = False
    try:
        node = spawn([sys.executable, "-m", "gateway.cli", "serve",
                      "--listen", f"tcp:{port}:interface=127.0.0.1", "--kafka", kafka_bootstrap,
                      "--node-id", node_id, "--topic-prefix", topic_prefix,
                      "--metrics-listen", f"tcp:{mport}:interface=127.0.0.1",
                      "--inbound-partitions", "3", "--drain-timeout-s", "2"], outs["node"])
        deadline = time.monotonic() + 60
        while await asyncio.to_thread(http_status, mport, "/readyz") != 200:
            assert node.poll() is None, "node exited: " + outs["node"].read_text()[-3000:]
            assert time.monotonic() < deadline, "node not ready in 60 s"
            await asyncio.sleep(0.2)
        t_ready = time.monotonic()

        async with reading(InboundReader(kafka_bootstrap, topic_prefix)) as inbound:
            # The 40 live calls and the probe, from processes of their own.
            calls = client("calls", outs["calls"], "--url", url, "--call-ids", ",".join(call_ids),
                           "--max-seconds", "60", stdin=subprocess.PIPE)
            probe = client("probe", outs["probe"], "--url", url, "--call-id", probe_id,
                           "--seconds", str(PROBE_SECONDS))
            wanted = set(call_ids) | {probe_id}
            await inbound.wait_for(
                lambda r: wanted <= {s.call_id for s in r.started_calls()}, timeout=20)
            rss_before = rss_kb(node.pid) or 0
            sampler = RssSampler(node.pid)
            sampler.start()
            t_attack = time.monotonic()
            wall_attack_us = int(time.time() * 1e6)

            # --- the attacks, at once -------------------------------------------------
            attacks = client("attacks", outs["attacks"], "--url", url,
                             "--call-prefix", topic_prefix)
            producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all",
                                        linger_ms=5, max_request_size=4 * 1024 * 1024,
                                        max_batch_size=256 * 1024)
            await producer.start()
            try:
                futures: list[asyncio.Future[Any]] = []

                async def send(call_id: str, body: m.CommandBody, command_id: str) -> None:
                    cmd = m.Command(call_id=call_id, body=body, command_id=command_id,
                                    sent_at=time.time())
                    futures.append(await producer.send(cmd_topic, encode_command(cmd),
                                                       key=call_id.encode()))

                for i, cid in enumerate(call_ids):
                    await send(cid, m.PlayAudio(b"\x01\x00" * 120, ABSURD_RATES[i]),
                               f"tiny-{i:02d}")
                await send(probe_id, m.PlayAudio(b"\x01\x00" * (BIG_PLAY_BYTES // 2),
                                                 4294967295), "big-play")
                # Marks wait only behind queued audio: 20 s of valid audio first, so that
                # the marks stay queued and meet the limit.
                await send(mark_call, m.PlayAudio(b"\x10\x27" * 16000 * 20, 16000), "valid-play")
                for k in range(MARKS):
                    await send(mark_call, m.Mark(f"m-{k:05d}"), f"mark-{k:05d}")
                await send(mark_call, m.ClearAudio(), "clear")
                await asyncio.wait_for(asyncio.gather(*futures), 30)
            finally:
                await producer.stop()
            t_sent = time.monotonic()

            def rejected(call_id: str, prefix: str = "") -> list[Any]:
                return [r.command_rejected for r in inbound.by_call.get(call_id, ())
                        if r.WhichOneof("body") == "command_rejected"
                        and r.command_rejected.command_id.startswith(prefix)]

            def playbacks(call_id: str, kind: m.PlaybackKind) -> list[Any]:
                return [r for r in inbound.by_call.get(call_id, ())
                        if r.WhichOneof("body") == "playback" and playback_kind(r) is kind]

            def refusals_in(r: InboundReader) -> bool:
                return (all(rejected(c, "tiny-") for c in call_ids)
                        and bool(rejected(probe_id, "big-play"))
                        and bool(playbacks(mark_call, m.PlaybackKind.CLEARED))
                        and r.ended(zero_id) is not None)

            try:
                await inbound.wait_for(refusals_in, timeout=30)
            except TimeoutError:
                pass  # reported below, figure by figure
            t_refused = time.monotonic()
            await wait_exit(attacks, 45, "attack client")
            net = last_json(outs["attacks"])

            # --- the probe's end, then the node's state -----------------------------------
            await wait_exit(probe, PROBE_SECONDS + 20, "probe")
            probe_result = last_json(outs["probe"])
            try:
                await inbound.wait_for(lambda r: r.ended(probe_id) is not None, timeout=15)
            except TimeoutError:
                pass
            await asyncio.sleep(1.0)  # RSS after the attacks, too
            sampler.stop()
            rss_after = rss_kb(node.pid) or 0
            alive = node.poll() is None
            healthz = await asyncio.to_thread(http_status, mport, "/healthz")
            assert calls.stdin is not None
            calls.stdin.close()
            await wait_exit(calls, 20, "live calls client")
            calls_result = last_json(outs["calls"])

            # --- figures ------------------------------------------------------------------------
            problems: list[str] = []
            probe_recs = inbound.by_call.get(probe_id, [])
            audio = sorted((r.audio for r in probe_recs if r.WhichOneof("body") == "audio"),
                           key=lambda a: a.seq)
            times = [a.received_unix_us for a in audio]
            raw_gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
            # The node's stall, not the probe's: a gap between two frames' receive times,
            # less how much later than 20 ms the probe sent the second one (on a loaded
            # 2-core machine the probe process is itself late at times).
            sent_us = probe_result["sent_unix_us"][:len(times)]
            gaps = [g - max(0, (s1 - s0) - 20_000) for g, s0, s1 in
                    zip(raw_gaps, sent_us, sent_us[1:], strict=False)]
            largest_gap_ms = max(gaps, default=0) / 1000
            largest_raw_gap_ms = max(raw_gaps, default=0) / 1000
            over = sum(1 for g in gaps if g > 100_000)
            # Where the stalls were, in seconds after the attacks began (negative: before).
            stalls = [(round((times[i] - wall_attack_us) / 1e6, 2), round(g / 1000, 1))
                      for i, g in enumerate(gaps) if g > 60_000]
            if largest_gap_ms > 100:
                problems.append(f"probe audio stalled: largest gap {largest_gap_ms:.1f} ms, "
                                f"{over} gaps over 100 ms")
            if len(audio) != probe_result["frames_sent"]:
                problems.append(f"probe sent {probe_result['frames_sent']} frames, node "
                                f"published {len(audio)}")
            probe_kinds = kinds(probe_recs)
            if not probe_kinds or probe_kinds[0] != "started" or "ended" not in probe_kinds:
                problems.append(f"probe records: started/ended missing ({probe_kinds[:1]} ... "
                                f"{probe_kinds[-1:]})")

            growth_mb = (sampler.max_kb - rss_before) / 1024
            if growth_mb >= 30:
                problems.append(f"RSS grew by {growth_mb:.1f} MB (>= 30 MB)")

            tiny_ok = 0
            for cid, rate in zip(call_ids, ABSURD_RATES, strict=True):
                rej = rejected(cid, "tiny-")
                if len(rej) == 1 and f"sample_rate {rate} " in rej[0].reason:
                    tiny_ok += 1
                else:
                    problems.append(f"tiny play at {rate} Hz to {cid}: rejections "
                                    f"{[x.reason for x in rej]}")
            big = rejected(probe_id, "big-play")
            if len(big) != 1 or "4294967295" not in big[0].reason:
                problems.append(f"1 MB play: rejections {[x.reason[:120] for x in big]}")

            mark_rej = rejected(mark_call, "mark-")
            mark_reasons = {x.reason for x in mark_rej}
            reached = playbacks(mark_call, m.PlaybackKind.MARK_REACHED)
            cleared = playbacks(mark_call, m.PlaybackKind.CLEARED)
            after_clear = ([r for r in inbound.by_call[mark_call]
                            if r.record_seq > cleared[0].record_seq
                            and r.WhichOneof("body") not in ("ended", "dropped")]
                           if cleared else [])
            if len(mark_rej) != MARKS - MAX_MARKS:
                problems.append(f"marks: {len(mark_rej)} rejected, expected {MARKS - MAX_MARKS}")
            if len(cleared) != 1 or len(after_clear) + 1 > MAX_MARKS + 1:
                problems.append(f"clear: {len(cleared)} CLEARED records, {len(after_clear)} "
                                "records after it")
            if len(reached) > MAX_MARKS:
                problems.append(f"marks: {len(reached)} reached, more than {MAX_MARKS}")
            other_rej = rejected(mark_call, "valid-play") + rejected(mark_call, "clear")
            if other_rej:
                problems.append(f"mark call: valid play or clear refused: "
                                f"{[x.reason for x in other_rej]}")

            hf, zf, li = net["header_flood"], net["zero_frames"], net["long_call_id"]
            if not (str(hf.get("status_line", "")).startswith("HTTP/1.1 431")
                    and str(hf.get("stopped_by", "")).startswith("server closed")):
                problems.append(f"header flood: {hf}")
            if zf.get("close_code") != 1008 or zf.get("frames_sent", 0) >= zf.get(
                    "frames_planned", 0):
                problems.append(f"zero-length frame flood: {zf}")
            zero_end = inbound.ended(zero_id)
            if zero_end is None or zero_end.ended.close_code != 1008:
                problems.append(f"zero-length flood call's ended record: {zero_end}")
            if li.get("close_code") != 1007:
                problems.append(f"60 KB call id: {li}")
            long_ids = [c for c in inbound.by_call if len(c) > 128 or c.startswith("LLLL")]
            if long_ids:
                problems.append(f"records for an over-long call id: {len(long_ids)} ids")

            if not alive:
                problems.append(f"node exited with {node.returncode}")
            if healthz != 200:
                problems.append(f"/healthz answered {healthz}")
            if calls_result["closed_by_server_early"]:
                problems.append(f"live calls closed by the node during the attacks: "
                                f"{calls_result['closed_by_server_early']}")

            t_end = time.monotonic()
            print("\n=== attack summary ===")
            print(f"node ready after {t_ready - t_begin:.1f} s; attacks began "
                  f"{t_attack - t_ready:.1f} s later; commands sent in {t_sent - t_attack:.1f} s; "
                  f"refusals seen {t_refused - t_attack:.1f} s after the start")
            print(f"probe: {probe_result['frames_sent']} frames sent "
                  f"(own max send lateness {probe_result['max_send_lateness_ms']} ms), "
                  f"{len(audio)} audio records, largest receive gap {largest_raw_gap_ms:.1f} ms "
                  f"({largest_gap_ms:.1f} ms of it the node's), "
                  f"{over} gaps > 100 ms; gaps > 60 ms at (s after attack start, ms): {stalls}")
            print(f"RSS: before {rss_before / 1024:.1f} MB, max {sampler.max_kb / 1024:.1f} MB "
                  f"({sampler.samples} samples), after {rss_after / 1024:.1f} MB, "
                  f"growth {growth_mb:.1f} MB")
            print(f"tiny plays rejected naming the rate: {tiny_ok}/40; 1 MB play "
                  f"({BIG_PLAY_BYTES} bytes at 4294967295 Hz) rejected: {len(big)} "
                  f"({big[0].reason[:70] if big else '-'}...)")
            print(f"marks: {len(mark_rej)} rejected ({sorted(mark_reasons)}), "
                  f"{len(reached)} reached; clear: {len(cleared)} CLEARED, "
                  f"{len(after_clear)} records after it")
            print(f"header flood: {hf}")
            print(f"zero-length flood: {zf}; ended close_code "
                  f"{zero_end.ended.close_code if zero_end else None}")
            print(f"60 KB call id: {li}")
            print(f"node alive {alive}, /healthz {healthz}; live calls closed early: "
                  f"{calls_result['closed_by_server_early']}")
            print(f"test body ran {t_end - t_begin:.1f} s")
            assert not problems, "\n".join(problems)
            ok = True
    finally:
        if sampler is not None:
            sampler.stop()
        if calls is not None and calls.stdin is not None and not calls.stdin.closed:
            calls.stdin.close()
        for proc in (attacks, probe, calls):
            stop(proc, wait=3)
        stop(node, wait=15)
        if not ok and outs["node"].exists():
            tail = outs["node"].read_text(errors="replace")[-4000:]
            print(f"--- node log tail ---\n{tail}", file=sys.stderr)
            for k in ("probe", "calls", "attacks"):
                if outs[k].exists():
                    print(f"--- {k} ---\n{outs[k].read_text(errors='replace')[-2000:]}",
                          file=sys.stderr)
