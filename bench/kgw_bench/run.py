"""One benchmark measurement: the gateway and its ceilings under the same load.

Every piece runs as its own process: broker, gateway node(s), bench bot,
probe (reads the inbound topic), load generator (1+ processes), and each
ceiling in turn. CPU is read per process from /proc over a steady-state
window (after ramp and warm-up, before the calls hang up), and divided by the
call-seconds in that window.

Two workloads (``Load.workload``): ``realistic``, callers in turns and a
TTS-like bot (``kgw_bench.talkbot``), playout paced as the node does by
default; ``echo``, the stress case, every caller chunk echoed by the stamp bot
with pacing off. The ceilings echo, so they always run the echo load.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from gateway.dev import http_ready
from gateway.ports import free_port_run
from kgw_bench.procs import Child, cpu_seconds, free_port, rss_kb
from kgw_bench.realistic import DEFAULT_SEED

PATH = "/vaani/knowlarity/setup-call-streams"


@dataclass(frozen=True)
class Load:
    calls: int
    seconds: float = 20.0  # each call's length
    warmup: float = 3.0  # after the ramp, before the window opens
    ramp: float = 2.0  # call starts spread over this
    loadgen_procs: int = 1
    gateways: int = 1
    # Each gateway as `serve --workers N`: N node processes sharing its port.
    workers: int = 1
    # Caller frames per inbound record, in ms (0: the node's default).
    aggregate_ms: int = 0
    # py-spy the gateway during the window (its own CPU then reads high).
    profile: bool = False
    # realistic: callers speak in turns, a TTS-like bot answers (kgw_bench.realistic),
    # paced playout; echo: every caller chunk straight back, playout unpaced (stress).
    workload: str = "realistic"
    seed: int = DEFAULT_SEED  # the realistic calls' script

    @property
    def window(self) -> tuple[float, float]:
        """Seconds after the load starts during which every call is up and steady."""
        return self.ramp + self.warmup, self.seconds

    @property
    def window_s(self) -> float:
        lo, hi = self.window
        return hi - lo


@dataclass
class Sampled:
    cpu_s: float
    rss_kb: int
    idle_rss_kb: int


class _Window:
    """Samples CPU of some processes at the window's start and end (and can profile them)."""

    def __init__(self, pids: list[int], load: Load, profile_to: Path | None = None) -> None:
        self._pids = pids
        self._load = load
        self._profile_to = profile_to
        self.idle_rss = [rss_kb(p) for p in pids]
        self._neighbours: dict[str, int] = {}
        self.neighbour_cpu: dict[str, float] = {}

    def watch(self, neighbours: dict[str, int]) -> None:
        """Also note these processes' CPU over the same window."""
        self._neighbours = neighbours

    def run(self, t0: float) -> list[Sampled]:
        lo, hi = self._load.window
        _sleep_until(t0 + lo)
        before = [cpu_seconds(p) for p in self._pids]
        others = {k: _cpu_or_zero(p) for k, p in self._neighbours.items()}
        spies = [] if self._profile_to is None else [subprocess.Popen(
            [str(Path(sys.executable).parent / "py-spy"), "record", "-p", str(pid),
             # --gil: samples holding the GIL, i.e. Python running. Without it a send
             # that wakes the broker and is preempted there reads as the send's cost.
             "-d", str(int(hi - lo)), "-r", "100", "-f", "raw", "--gil",
             "-o", str(self._profile_to / f"profile-{pid}.txt")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for pid in self._pids]
        _sleep_until(t0 + hi)
        after = [cpu_seconds(p) for p in self._pids]
        self.neighbour_cpu = {k: _cpu_or_zero(p) - others[k] for k, p in self._neighbours.items()}
        for spy in spies:
            spy.wait(30)
        return [Sampled(a - b, rss_kb(p), idle)
                for p, a, b, idle in zip(self._pids, after, before, self.idle_rss, strict=True)]


def _cpu_or_zero(pid: int) -> float:
    try:
        return cpu_seconds(pid)
    except OSError:
        return 0.0


def _sleep_until(t: float) -> None:
    delay = t - time.time()
    if delay > 0:
        time.sleep(delay)


def _worker_pids(pid: int, workers: int) -> list[int]:
    """The processes whose CPU is the gateway's: itself, or the workers its supervisor
    started (its children; the supervisor's own CPU is no call's)."""
    if workers == 1:
        return [pid]
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    if len(children) != workers:
        raise RuntimeError(f"the supervisor {pid} has {len(children)} children, not {workers}")
    return sorted(int(c) for c in children)


def _wait_ready(child: Child, url: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not http_ready(url):
        if child.returncode is not None:
            raise RuntimeError(f"{child.name} exited with {child.returncode}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{child.name} not ready")
        time.sleep(0.1)


def _loadgens(urls: list[str], load: Load, log_dir: Path, tag: str) -> list[Child]:
    per_url = [load.calls // len(urls) + (i < load.calls % len(urls)) for i in range(len(urls))]
    gens = []
    base = 0
    for i, (url, n) in enumerate(zip(urls, per_url, strict=True)):
        args = ["-m", "kgw_bench.loadgen", "--url", url, "--calls", str(n),
                "--seconds", str(load.seconds), "--warmup", str(load.ramp + load.warmup),
                "--ramp", str(load.ramp), "--procs", str(load.loadgen_procs), "--json"]
        if load.workload != "echo":
            args += ["--workload", load.workload, "--seed", str(load.seed),
                     "--index-base", str(base)]
        gens.append(Child(f"{tag}-loadgen{i}", args, log_dir))
        base += n
    return gens


def _merge_loadgen(results: list[dict[str, Any]]) -> dict[str, Any]:
    if len(results) == 1:
        return results[0]
    out = dict(results[0])
    for key in ("calls", "calls_connected", "calls_failed", "frames_sent",
                "play_frames_received", "play_chunks_received", "late_frames", "cpu_s",
                "answers_heard", "turns_scripted", "barge_ins_scripted"):
        out[key] = sum(r.get(key, 0) for r in results)
    # Percentiles do not add up; the worst of the parts is the honest summary.
    for key in ("command_latency_ms", "send_lag_ms"):
        parts = [r[key] for r in results if r.get(key)]
        out[key] = {q: max((p.get(q) or 0) for p in parts) for q in parts[0]} if parts else {}
    out["wall_s"] = max(r.get("wall_s", 0) for r in results)
    return out


def measure_gateway(bootstrap: str, load: Load, log_dir: Path,
                    broker_pid: int | None = None) -> dict[str, Any]:
    """The product: gateway node(s) + bench bot; echo: playout pacing off, realistic: on."""
    prefix = "bench" + uuid.uuid4().hex[:8]
    nodes: list[Child] = []
    others: list[Child] = []
    try:
        ports = []
        workers: list[int] = []  # the pids whose CPU is the gateway's
        for i in range(load.gateways):
            port, mport = free_port(), free_port_run(load.workers)
            args = ["-m", "gateway", "serve", "--listen", f"tcp:{port}:interface=127.0.0.1",
                    "--kafka", bootstrap, "--node-id", f"bench{i}", "--topic-prefix", prefix,
                    "--metrics-listen", f"tcp:{mport}:interface=127.0.0.1",
                    "--log-level", "warn", "--drain-timeout-s", "1"]
            if load.workload == "echo":
                args[-4:-4] = ["--playout-paced", "false"]
            if load.aggregate_ms:
                args += ["--aggregate-ms", str(load.aggregate_ms)]
            if load.workers > 1:
                args += ["--workers", str(load.workers)]
            node = Child(f"gateway{i}", args, log_dir)
            nodes.append(node)
            for k in range(load.workers):  # worker k serves metrics on the port + k
                _wait_ready(node, f"http://127.0.0.1:{mport + k}/readyz")
            workers += _worker_pids(node.pid, load.workers)
            ports.append(port)
        if load.workload == "echo":
            bot = Child("stampbot", ["-m", "kgw_bench.stampbot", "--kafka", bootstrap,
                                     "--topic-prefix", prefix, "--group-id", prefix + "-bot"],
                        log_dir)
        else:
            bot = Child("talkbot", ["-m", "kgw_bench.talkbot", "--kafka", bootstrap,
                                    "--topic-prefix", prefix, "--group-id", prefix + "-bot",
                                    "--seed", str(load.seed)], log_dir)
        others.append(bot)
        bot.wait_for_line("event=stampbot_ready", 60)
        t0 = time.time() + 1.0  # the load generators start about now
        lo, hi = load.window
        probe = Child("probe", ["-m", "kgw_bench.probe", "--kafka", bootstrap,
                                "--topic", f"{prefix}.calls.inbound",
                                "--window-start", str(t0 + lo), "--window-end", str(t0 + hi)],
                      log_dir)
        others.append(probe)
        probe.wait_for_line("event=probe_ready", 60)
        window = _Window(workers, load, log_dir if load.profile else None)
        _sleep_until(t0)
        gens = _loadgens([f"ws://127.0.0.1:{p}{PATH}" for p in ports], load, log_dir, "gw")
        others += gens
        # The rest of the machine, for the report: who else used the two cores.
        neighbours = {"bot": bot.pid, "probe": probe.pid, "loadgen": gens[0].pid}
        if broker_pid:
            neighbours["broker"] = broker_pid
        window.watch(neighbours)
        sampled = window.run(t0)
        lg = _merge_loadgen([g.wait_json(load.seconds + 120) for g in gens])
        time.sleep(3)  # let the last records and commands land
        probe_out = probe.stop() or {}
        bot_out = bot.stop() or {}
    finally:
        for c in others + nodes:
            c.stop()
    cpu = sum(s.cpu_s for s in sampled)
    call_s = load.calls * load.window_s
    frames_in_kafka = probe_out.get("audio_bytes", 0) // 640
    sent = lg.get("frames_sent", 0)
    commands = bot_out.get("commands_sent", 0)
    # The node may join queued commands into one clip: count 20 ms chunks.
    received = lg.get("play_chunks_received", 0)
    # Echo: the bot echoes every chunk it reads, each should come back once. Realistic:
    # every answer should arrive whole, less what the node says a clear dropped.
    expected = frames_in_kafka if load.workload == "echo" else bot_out.get("expected_chunks", 0)
    return {
        "load": asdict(load),
        "cpu_ms_per_call_s": round(cpu / call_s * 1000, 4) if call_s else None,
        "cpu_s_in_window": round(cpu, 3),
        "rss_kb_per_call": round(sum(s.rss_kb - s.idle_rss_kb for s in sampled) / load.calls, 1),
        "rss_kb": [s.rss_kb for s in sampled],
        "idle_rss_kb": [s.idle_rss_kb for s in sampled],
        "frames_sent": sent,
        "frames_in_kafka": frames_in_kafka,
        "frames_lost_inbound": sent - frames_in_kafka,
        "commands_sent": commands,
        "play_frames_received": received,
        "play_chunks_expected": expected,
        "frames_lost_outbound": expected - received,
        "inbound_latency_ms": probe_out.get("inbound_latency_ms"),
        # Cores each process used over the window (the load generator's
        # children are not in its own figure; see loadgen_cpu_pct for all).
        "cores_used": {"gateway": round(cpu / load.window_s, 3), **{
            k: round(v / load.window_s, 3) for k, v in window.neighbour_cpu.items()}},
        "command_latency_ms": lg.get("command_latency_ms"),
        "loadgen": lg,
        "bot": bot_out,
        "probe": probe_out,
    }


def measure_bare_autobahn(load: Load, log_dir: Path) -> dict[str, Any]:
    """Ceiling: the same frames in and playAudio frames out through Autobahn, no Kafka."""
    port = free_port()
    # With aggregation the gateway's bot answers once per record: mirror that.
    every = max(1, load.aggregate_ms // 20)
    server = Child("bare_autobahn", ["-m", "kgw_bench.bare_autobahn", "--listen",
                                     f"tcp:{port}:interface=127.0.0.1",
                                     "--echo-every", str(every)], log_dir)
    try:
        server.wait_for_line("event=ready", 60)
        return _drive_server(server, f"ws://127.0.0.1:{port}{PATH}", load, log_dir, "ab")
    finally:
        server.stop()


def measure_peer_bridge(bootstrap: str, load: Load, log_dir: Path) -> dict[str, Any]:
    """Comparison: what a user would write instead, websockets + aiokafka, same job."""
    prefix = "peer" + uuid.uuid4().hex[:8]
    port = free_port()
    server = Child("peer_bridge", ["-m", "kgw_bench.peer_bridge", "--listen-port",
                                   str(port), "--kafka", bootstrap, "--topic-prefix", prefix,
                                   "--node-id", "peer"], log_dir)
    bot = None
    try:
        server.wait_for_line("event=ready", 60)
        bot = Child("peer_stampbot", ["-m", "kgw_bench.stampbot", "--kafka", bootstrap,
                                      "--topic-prefix", prefix, "--group-id", prefix + "-bot"],
                    log_dir)
        bot.wait_for_line("event=stampbot_ready", 60)
        return _drive_server(server, f"ws://127.0.0.1:{port}{PATH}", load, log_dir, "peer")
    finally:
        if bot is not None:
            bot.stop()
        server.stop()


def _drive_server(server: Child, url: str, load: Load, log_dir: Path, tag: str
                  ) -> dict[str, Any]:
    window = _Window([server.pid], load)
    t0 = time.time()
    gens = _loadgens([url], load, log_dir, tag)
    (sampled,) = window.run(t0)
    lg = _merge_loadgen([g.wait_json(load.seconds + 120) for g in gens])
    call_s = load.calls * load.window_s
    return {
        "cpu_ms_per_call_s": round(sampled.cpu_s / call_s * 1000, 4),
        "rss_kb_per_call": round((sampled.rss_kb - sampled.idle_rss_kb) / load.calls, 1),
        "frames_sent": lg.get("frames_sent"),
        "play_frames_received": lg.get("play_frames_received"),
        "command_latency_ms": lg.get("command_latency_ms"),
        "loadgen": lg,
    }


def measure_bare_produce(bootstrap: str, load: Load, log_dir: Path) -> dict[str, Any]:
    """Ceiling: aiokafka producing the same records at the same rate, no sockets."""
    topic = "produce" + uuid.uuid4().hex[:8]
    child = Child("bare_produce", ["-m", "kgw_bench.bare_produce", "--kafka", bootstrap,
                                   "--topic", topic, "--calls", str(load.calls),
                                   "--seconds", str(load.seconds)], log_dir)
    return child.wait_json(load.seconds + 120)


def bench_once(bootstrap: str, load: Load, *, ceilings: bool = True,
               log_dir: Path | None = None, broker_pid: int | None = None) -> dict[str, Any]:
    """One measurement; returns the figures ``knowlarity-gateway bench --json`` prints."""
    log_dir = log_dir or Path(tempfile.mkdtemp(prefix="kgw-bench-"))
    gw = measure_gateway(bootstrap, load, log_dir, broker_pid)
    out: dict[str, Any] = {
        "workload": load.workload,
        "calls": load.calls,
        "seconds": load.seconds,
        "gateways": load.gateways,
        "workers": load.workers,
        "gateway_cpu_ms_per_call_s": gw["cpu_ms_per_call_s"],
        "frames_lost": gw["frames_lost_inbound"] + gw["frames_lost_outbound"],
        "inbound_p50_ms": (gw["inbound_latency_ms"] or {}).get("p50"),
        "inbound_p95_ms": (gw["inbound_latency_ms"] or {}).get("p95"),
        "inbound_p99_ms": (gw["inbound_latency_ms"] or {}).get("p99"),
        "inbound_max_ms": (gw["inbound_latency_ms"] or {}).get("max"),
        "command_p50_ms": (gw["command_latency_ms"] or {}).get("p50"),
        "command_p99_ms": (gw["command_latency_ms"] or {}).get("p99"),
        "command_max_ms": (gw["command_latency_ms"] or {}).get("max"),
        "rss_kb_per_call": gw["rss_kb_per_call"],
        "loadgen_cpu_pct": _pct(gw["loadgen"]),
        "cores_used": gw["cores_used"],
        "gateway": gw,
        "log_dir": str(log_dir),
    }
    if ceilings:
        # The ceilings do the echo workload's job (they echo): measured with it, and
        # compared with the gateway only when it did the same job.
        echo = replace(load, workload="echo")
        ab = measure_bare_autobahn(echo, log_dir)
        peer = measure_peer_bridge(bootstrap, echo, log_dir)
        produce = measure_bare_produce(bootstrap, echo, log_dir)
        same = load.workload == "echo"
        out.update({
            "autobahn_cpu_ms_per_call_s": ab["cpu_ms_per_call_s"],
            "websockets_peer_cpu_ms_per_call_s": peer["cpu_ms_per_call_s"],
            "aiokafka_produce_us_per_record": produce.get("us_per_record"),
            "gateway_vs_autobahn": _ratio(gw["cpu_ms_per_call_s"], ab["cpu_ms_per_call_s"])
            if same else None,
            "gateway_vs_peer": _ratio(gw["cpu_ms_per_call_s"], peer["cpu_ms_per_call_s"])
            if same else None,
            "ceilings": {"bare_autobahn": ab, "websockets_peer": peer, "bare_produce": produce},
        })
    return out


def _pct(loadgen: dict[str, Any]) -> float | None:
    wall = loadgen.get("wall_s")
    return round(loadgen["cpu_s"] / wall * 100, 1) if wall else None


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a and b else None
