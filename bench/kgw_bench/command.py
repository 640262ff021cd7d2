"""``knowlarity-gateway bench``: one measurement against a broker it starts (or is given)."""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.kafka_access import (
    ACCESS_SETTINGS,
    AccessError,
    KafkaAccess,
    as_env,
    client_options,
)
from gateway.settings import (
    Setting,
    SettingError,
    add_settings,
    boolean,
    choice,
    from_args,
    kafka_servers,
    nested,
    non_negative,
    positive,
    with_defaults,
)
from kgw_bench.realistic import WORKLOADS
from kgw_bench.run import Load, bench_once


@dataclass(frozen=True)
class BenchSettings:
    load: Load = field(default_factory=lambda: Load(calls=100))
    kafka: str = ""  # empty: start a broker of our own
    kafka_access: KafkaAccess = KafkaAccess()
    ceilings: bool = True
    capacity: bool = False
    log_dir: str = ""
    json: bool = False


def _kafka_or_ours(text: str) -> str:
    return kafka_servers(text) if text.strip() else ""


BENCH_SETTINGS: tuple[Setting, ...] = with_defaults((
    Setting("workload", "KGW_BENCH_WORKLOAD", None,
            "realistic: callers speak in turns, a TTS-like bot answers at 24 kHz with marks "
            "and barge-in clears, paced playout; echo: every caller chunk echoed back, "
            "pacing off (the stress case)", choice(*WORKLOADS), path="load.workload"),
    Setting("seed", "KGW_BENCH_SEED", None, "the realistic calls' script (turns, answers)",
            int, path="load.seed"),
    Setting("calls", "KGW_BENCH_CALLS", None, "concurrent calls", positive(int),
            path="load.calls"),
    Setting("seconds", "KGW_BENCH_SECONDS", None, "length of each call", positive(float),
            path="load.seconds"),
    Setting("warmup_s", "KGW_BENCH_WARMUP_S", None, "seconds after the ramp before measuring",
            non_negative(float), path="load.warmup"),
    Setting("ramp_s", "KGW_BENCH_RAMP_S", None, "spread call starts over this many seconds",
            non_negative(float), path="load.ramp"),
    Setting("kafka", "KGW_BENCH_KAFKA", None,
            "use this broker, HOST:PORT[,...] (empty: start one of our own)", _kafka_or_ours),
    *nested(ACCESS_SETTINGS, "kafka_access"),
    Setting("gateways", "KGW_BENCH_GATEWAYS", None, "gateway processes sharing the calls",
            positive(int), path="load.gateways"),
    Setting("workers", "KGW_BENCH_WORKERS", None,
            "each gateway as serve --workers N (N nodes on one port; its CPU is theirs)",
            positive(int), path="load.workers"),
    Setting("loadgen_procs", "KGW_BENCH_LOADGEN_PROCS", None, "load generator processes",
            positive(int), path="load.loadgen_procs"),
    Setting("aggregate_ms", "KGW_BENCH_AGGREGATE_MS", None,
            "the node's --aggregate-ms (0: its default)", non_negative(int),
            path="load.aggregate_ms"),
    Setting("ceilings", "KGW_BENCH_CEILINGS", None,
            "also measure the ceilings (bare Autobahn, bare aiokafka, the peer bridge)", boolean),
    Setting("log_dir", "KGW_BENCH_LOG_DIR", None,
            "keep the processes' logs here (empty: a temporary directory)"),
    Setting("profile", "KGW_BENCH_PROFILE", None,
            "py-spy the gateway during the window (raw stacks in the log dir)", boolean,
            path="load.profile"),
    Setting("capacity", "KGW_BENCH_CAPACITY", None,
            "search the most calls with no loss and inbound p99 under 25 ms", boolean),
    Setting("json", "KGW_BENCH_JSON", None, "last line: one JSON object", boolean),
), BenchSettings())


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_settings(p, BENCH_SETTINGS)


@contextmanager
def broker(given: str) -> Iterator[tuple[str, int | None]]:
    """(bootstrap, broker PID if it is ours to watch)."""
    if given:
        yield given, None
        return
    from gateway.localkafka import LocalKafka

    with LocalKafka(heap_mb=1024, fast_start=False) as kafka:
        yield kafka.bootstrap, kafka.pid


def run(args: argparse.Namespace) -> int:
    try:
        s: BenchSettings = from_args(BenchSettings(), BENCH_SETTINGS, args)
        if s.load.window_s <= 0 and not s.capacity:
            raise SettingError(
                f"--seconds {s.load.seconds:g} leaves no measuring window after --ramp-s "
                f"{s.load.ramp:g} and --warmup-s {s.load.warmup:g}; give more seconds")
        if not s.kafka and s.kafka_access != KafkaAccess():
            raise SettingError("the Kafka access settings need --kafka: the broker bench "
                               "starts itself is PLAINTEXT")
        client_options(s.kafka_access)  # the files exist and the combination works
    except (SettingError, AccessError) as e:
        print(f"knowlarity-gateway bench: {e}", file=sys.stderr)
        return 2
    log_dir = Path(s.log_dir) if s.log_dir else None
    if log_dir:
        log_dir.mkdir(parents=True, exist_ok=True)
    # Every process bench starts (node, bots, probe, load) reads them from its environment.
    os.environ.update(as_env(s.kafka_access))
    with broker(s.kafka) as (bootstrap, broker_pid):
        if s.capacity:
            from kgw_bench.capacity import search

            log_dir = log_dir or Path(tempfile.mkdtemp(prefix="kgw-capacity-"))
            found = search(bootstrap, seconds=s.load.seconds, log_dir=log_dir,
                           broker_pid=broker_pid, workload=s.load.workload)
            print(f"capacity: {found['capacity_calls']} calls "
                  f"(first failing: {found['first_failing_calls']})")
            if s.json:
                print(json.dumps(found, separators=(",", ":")))
            return 0
        result = bench_once(bootstrap, s.load, ceilings=s.ceilings, log_dir=log_dir,
                            broker_pid=broker_pid)
    print(summary(result))
    if s.json:
        print(json.dumps(result, separators=(",", ":")))
    return 0


def _workers(r: dict[str, Any]) -> str:
    n = r.get("workers", 1)
    return f" of {n} workers each" if n > 1 else ""


def summary(r: dict[str, Any]) -> str:
    lines = [
        f"{r['calls']} calls x {r['seconds']:g} s through {r['gateways']} gateway process(es)"
        f"{_workers(r)}, {r.get('workload', 'echo')} workload",
        f"  gateway CPU     {r['gateway_cpu_ms_per_call_s']} ms per call-second"
        f"   (RSS {r['rss_kb_per_call']} KB per call)",
        f"  frames lost     {r['frames_lost']}",
        f"  inbound  ms     p50 {r['inbound_p50_ms']}  p95 {r['inbound_p95_ms']}"
        f"  p99 {r['inbound_p99_ms']}  max {r['inbound_max_ms']}",
        f"  command  ms     p50 {r['command_p50_ms']}  p99 {r['command_p99_ms']}"
        f"  max {r['command_max_ms']}"
        + ("   (bot send -> first audio of each answer)" if r.get("workload") == "realistic"
           else ""),
        f"  load generator  {r['loadgen_cpu_pct']} % of a core",
        "  cores used      " + ", ".join(f"{k} {v}" for k, v in r["cores_used"].items()),
    ]
    if r.get("workload") == "realistic":
        bot = r.get("gateway", {}).get("bot", {})
        lg = r.get("gateway", {}).get("loadgen", {})
        lines.append(f"  turns           {bot.get('utterances')} answers "
                     f"({lg.get('turns_scripted')} scripted), {bot.get('clears')} clears "
                     f"({lg.get('barge_ins_scripted')} barge-ins scripted), "
                     f"{lg.get('answers_heard')} answer stamps heard by the callers")
    if "autobahn_cpu_ms_per_call_s" in r:
        lines += [
            "  ceilings (echo workload)",
            f"  bare Autobahn   {r['autobahn_cpu_ms_per_call_s']} ms per call-second"
            f"   (gateway / Autobahn = {r['gateway_vs_autobahn']})",
            f"  websockets peer {r['websockets_peer_cpu_ms_per_call_s']} ms per call-second"
            f"   (gateway / peer = {r['gateway_vs_peer']})",
            f"  bare aiokafka   {r['aiokafka_produce_us_per_record']} us CPU per record",
        ]
    lines.append(f"  logs            {r['log_dir']}")
    return "\n".join(lines)
