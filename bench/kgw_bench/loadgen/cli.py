"""The load generator's command line: one process, or ``--procs P`` children aggregated.

``python -m kgw_bench.loadgen --url URL --calls N --seconds S --json`` prints
one JSON object as its last line; with ``--procs P`` it runs P copies of
itself and sums their counters (latency percentiles over all their samples).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from array import array
from typing import Any

from kgw_bench.loadgen.call import LINGER_S, OPEN_TIMEOUT_S, Target
from kgw_bench.loadgen.scheduler import TICK_MS, run
from kgw_bench.loadgen.stats import summarize
from kgw_bench.realistic import DEFAULT_SEED, WORKLOADS

# --- several processes -------------------------------------------------------------------

_SUMMED = ("calls", "calls_connected", "calls_failed", "calls_completed", "calls_hung_up",
           "calls_closed_by_server", "calls_lost", "calls_stopped", "calls_protocol_error",
           "frames_expected", "frames_sent", "play_frames_received", "play_chunks_received",
           "hangup_frames_received", "other_text_frames", "binary_frames_received",
           "bad_play_frames", "bad_stamps", "late_frames", "answers_heard",
           "turns_scripted", "barge_ins_scripted")
_SAMPLES = (("lat", "d"), ("lag", "q"), ("rd", "q"))


def _child_command(args: argparse.Namespace, calls: int, start_at: float,
                   samples_out: str, index_base: int = 0) -> list[str]:
    cmd = [sys.executable, "-m", "kgw_bench.loadgen", "--url", args.url,
           "--calls", str(calls), "--seconds", repr(args.seconds), "--warmup", repr(args.warmup),
           "--ramp", repr(args.ramp), "--linger", repr(args.linger),
           "--open-timeout", repr(args.open_timeout), "--tick-ms", repr(args.tick_ms),
           "--procs", "1", "--json",
           "--start-at", repr(start_at), "--samples-out", samples_out]
    if args.no_kernel_stamps:
        cmd.append("--no-kernel-stamps")
    if args.workload != "echo":
        cmd += ["--workload", args.workload, "--seed", str(args.seed),
                "--index-base", str(index_base)]
    return cmd


def _run_procs(args: argparse.Namespace) -> dict[str, Any]:
    wall0 = time.monotonic()
    procs = min(args.procs, args.calls)
    start_at = time.time() + 0.5 + 0.1 * procs  # children import (~0.2 s), then start together
    children: list[subprocess.Popen[str]] = []
    parts: list[dict[str, Any]] = []
    errors: list[str] = []
    samples = {name: array(code) for name, code in _SAMPLES}
    def forward(signum: int, frame: object) -> None:
        # Children stop their calls (1000) and report; we aggregate what they report.
        for child in children:
            if child.poll() is None:
                child.send_signal(signum)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM)}
    with tempfile.TemporaryDirectory(prefix="kgw-loadgen-") as tmp:
        try:
            base = args.index_base
            for j in range(procs):
                n = args.calls // procs + (1 if j < args.calls % procs else 0)
                cmd = _child_command(args, n, start_at, os.path.join(tmp, f"c{j}"), base)
                base += n
                children.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True))
            for j, child in enumerate(children):
                out, _ = child.communicate()
                lines = [line for line in out.splitlines() if line.strip()]
                try:
                    parts.append(json.loads(lines[-1]))
                except (IndexError, ValueError):
                    errors.append(f"child {j} exited {child.returncode} without a result")
                    continue
                errors += [f"[{j}] {e}" for e in parts[-1].get("errors", [])]
                for name, _ in _SAMPLES:
                    with contextlib.suppress(OSError), open(
                            os.path.join(tmp, f"c{j}.{name}"), "rb") as f:
                        samples[name].frombytes(f.read())
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            for child in children:
                if child.poll() is None:
                    child.send_signal(signal.SIGINT)
                    child.wait()
    counts: dict[str, Any] = {key: sum(p.get(key, 0) for p in parts) for key in _SUMMED}
    counts["calls"] = args.calls
    counts["frames_per_call"] = parts[0]["frames_per_call"] if parts else 0
    counts["max_unsent_bytes"] = max((p.get("max_unsent_bytes", 0) for p in parts), default=0)
    counts["kernel_rx_stamps"] = bool(parts) and all(p.get("kernel_rx_stamps") for p in parts)
    codes: dict[str, int] = {}
    for p in parts:
        for code, n in p.get("server_close_codes", {}).items():
            codes[code] = codes.get(code, 0) + n
    counts["server_close_codes"] = codes
    counts["workload"] = args.workload
    error_count = sum(p.get("error_count", 0) for p in parts) + (len(children) - len(parts))
    result = summarize(counts, samples["lat"], samples["lag"], samples["rd"],
                       run_cpu_s=sum(p.get("run_cpu_s", 0.0) for p in parts),
                       wall_s=time.monotonic() - wall0, errors=errors, error_count=error_count)
    result["procs"] = len(children)
    return result


# --- the command line -----------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m kgw_bench.loadgen",
                                description="Lean Knowlarity load generator (see module doc).")
    p.add_argument("--url", required=True, help="ws:// URL of the gateway")
    p.add_argument("--calls", type=int, required=True, help="concurrent calls (over all procs)")
    p.add_argument("--seconds", type=float, required=True, help="audio each call streams")
    p.add_argument("--warmup", type=float, default=2.0,
                   help="drop latency samples from each call's first W s (default 2)")
    p.add_argument("--procs", type=int, default=1, help="processes to spread the calls over")
    p.add_argument("--ramp", type=float, default=0.0, help="spread call starts over R s")
    p.add_argument("--linger", type=float, default=LINGER_S,
                   help="after its last frame, wait up to this long for echoes (default 2)")
    p.add_argument("--open-timeout", type=float, default=OPEN_TIMEOUT_S)
    p.add_argument("--tick-ms", type=float, default=TICK_MS,
                   help="scheduler period: sockets are read and due frames sent once per tick")
    p.add_argument("--no-kernel-stamps", action="store_true",
                   help="take receive times when read, not the kernel's SO_TIMESTAMPNS")
    p.add_argument("--json", action="store_true", help="print only the JSON result line")
    p.add_argument("--workload", choices=WORKLOADS, default="echo",
                   help="echo: every frame speech, echoed; realistic: turns (kgw_bench.realistic)")
    p.add_argument("--seed", type=int, default=DEFAULT_SEED, help="the realistic calls' script")
    p.add_argument("--index-base", type=int, default=0,
                   help="realistic: the first call's index in the script (several generators)")
    p.add_argument("--start-at", type=float, default=None, help=argparse.SUPPRESS)
    p.add_argument("--samples-out", default=None, help=argparse.SUPPRESS)
    return p


async def _main_one(args: argparse.Namespace) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    result, gen = await run(args.url, args.calls, args.seconds, args.warmup, args.ramp,
                             linger=args.linger, open_timeout=args.open_timeout,
                             kernel_stamps=not args.no_kernel_stamps, tick_ms=args.tick_ms,
                             start_at=args.start_at, stop=stop, workload=args.workload,
                             seed=args.seed, index_base=args.index_base)
    if args.samples_out:
        for name, samples in (("lat", gen.lat), ("lag", gen.lags), ("rd", gen.read_delays)):
            with open(f"{args.samples_out}.{name}", "wb") as f:
                samples.tofile(f)
    return result


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.procs < 1 or args.calls < 1:
        print("loadgen: --procs and --calls must be at least 1", file=sys.stderr)
        return 2
    try:
        Target(args.url)
    except ValueError as e:
        print(f"loadgen: {e}", file=sys.stderr)
        return 2
    if args.procs > 1:
        result = _run_procs(args)
    else:
        result = asyncio.run(_main_one(args))
    if not args.json:
        lat, lag = result["command_latency_ms"], result["send_lag_ms"]
        print(f"calls {result['calls_connected']}/{result['calls']} connected, "
              f"frames sent {result['frames_sent']}, play frames {result['play_frames_received']}"
              f", latency p50 {lat['p50']} p99 {lat['p99']} max {lat['max']} ms "
              f"({lat['count']} samples), late frames {result['late_frames']}, "
              f"send lag p99 {lag['p99']} ms, cpu {result['run_cpu_s']} s "
              f"({result['cpu_us_per_frame']} us/frame)")
    print(json.dumps(result, separators=(",", ":")), flush=True)
    return 0

