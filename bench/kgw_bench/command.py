"""``knowlarity-gateway bench``: one measurement against a broker it starts (or is given)."""

from __future__ import annotations

import argparse
import json
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from kgw_bench.run import Load, bench_once


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--calls", type=int, default=100, help="concurrent calls (default 100)")
    p.add_argument("--seconds", type=float, default=20.0, help="length of each call")
    p.add_argument("--warmup", type=float, default=3.0,
                   help="seconds after the ramp before measuring")
    p.add_argument("--ramp", type=float, default=2.0, help="spread call starts over this")
    p.add_argument("--kafka", default="", help="use this broker instead of starting one")
    p.add_argument("--gateways", type=int, default=1, help="gateway processes sharing the calls")
    p.add_argument("--loadgen-procs", type=int, default=1, help="load generator processes")
    p.add_argument("--aggregate-ms", type=int, default=0,
                   help="the node's --aggregate-ms (0: its default)")
    p.add_argument("--no-ceilings", action="store_true",
                   help="measure the gateway only (no bare Autobahn / aiokafka / peer runs)")
    p.add_argument("--log-dir", type=Path, default=None, help="keep the processes' logs here")
    p.add_argument("--profile", action="store_true",
                   help="py-spy the gateway during the window (raw stacks in the log dir)")
    p.add_argument("--capacity", action="store_true",
                   help="search the most calls with no loss and inbound p99 under 25 ms")
    p.add_argument("--json", action="store_true", help="last line: one JSON object")


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
    load = Load(calls=args.calls, seconds=args.seconds, warmup=args.warmup, ramp=args.ramp,
                loadgen_procs=args.loadgen_procs, gateways=args.gateways,
                aggregate_ms=args.aggregate_ms, profile=args.profile)
    if args.log_dir:
        args.log_dir.mkdir(parents=True, exist_ok=True)
    with broker(args.kafka) as (bootstrap, broker_pid):
        if args.capacity:
            from kgw_bench.capacity import search

            log_dir = args.log_dir or Path(tempfile.mkdtemp(prefix="kgw-capacity-"))
            found = search(bootstrap, seconds=args.seconds, log_dir=log_dir,
                           broker_pid=broker_pid)
            print(f"capacity: {found['capacity_calls']} calls "
                  f"(first failing: {found['first_failing_calls']})")
            if args.json:
                print(json.dumps(found, separators=(",", ":")))
            return 0
        result = bench_once(bootstrap, load, ceilings=not args.no_ceilings,
                            log_dir=args.log_dir, broker_pid=broker_pid)
    print(summary(result))
    if args.json:
        print(json.dumps(result, separators=(",", ":")))
    return 0


def summary(r: dict[str, Any]) -> str:
    lines = [
        f"{r['calls']} calls x {r['seconds']:g} s through {r['gateways']} gateway process(es)",
        f"  gateway CPU     {r['gateway_cpu_ms_per_call_s']} ms per call-second"
        f"   (RSS {r['rss_kb_per_call']} KB per call)",
        f"  frames lost     {r['frames_lost']}",
        f"  inbound  ms     p50 {r['inbound_p50_ms']}  p95 {r['inbound_p95_ms']}"
        f"  p99 {r['inbound_p99_ms']}  max {r['inbound_max_ms']}",
        f"  command  ms     p50 {r['command_p50_ms']}  p99 {r['command_p99_ms']}"
        f"  max {r['command_max_ms']}",
        f"  load generator  {r['loadgen_cpu_pct']} % of a core",
        "  cores used      " + ", ".join(f"{k} {v}" for k, v in r["cores_used"].items()),
    ]
    if "autobahn_cpu_ms_per_call_s" in r:
        lines += [
            f"  bare Autobahn   {r['autobahn_cpu_ms_per_call_s']} ms per call-second"
            f"   (gateway / Autobahn = {r['gateway_vs_autobahn']})",
            f"  websockets peer {r['websockets_peer_cpu_ms_per_call_s']} ms per call-second"
            f"   (gateway / peer = {r['gateway_vs_peer']})",
            f"  bare aiokafka   {r['aiokafka_produce_us_per_record']} us CPU per record",
        ]
    lines.append(f"  logs            {r['log_dir']}")
    return "\n".join(lines)
