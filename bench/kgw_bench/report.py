"""Regenerate bench/RESULTS.md and its plot: ``python -m kgw_bench.report``.

Runs, against one broker it starts: the realistic workload (the headline:
callers in turns, a TTS-like bot, paced playout) at several call counts; the
echo workload (every chunk echoed, the stress case) with its ceilings at the
same counts, the same with frame aggregation, one gateway run as
``serve --workers 2`` at the middle count (against the one-worker echo row),
an RSS reading at 300 calls; and the capacity search for each workload.
Every figure in the results file comes from this run; nothing is typed in by
hand.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from kgw_bench.capacity import search
from kgw_bench.command import broker
from kgw_bench.run import Load, bench_once

FIELDS = ("workload", "gateway_cpu_ms_per_call_s", "frames_lost", "inbound_p50_ms",
          "inbound_p99_ms", "command_p50_ms", "command_p99_ms", "rss_kb_per_call",
          "autobahn_cpu_ms_per_call_s", "websockets_peer_cpu_ms_per_call_s",
          "aiokafka_produce_us_per_record", "loadgen_cpu_pct")


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_kb = 0
    try:
        mem_kb = int(Path("/proc/meminfo").read_text().split()[1])
    except (OSError, ValueError, IndexError):
        pass
    java = subprocess.run(["java", "-version"], capture_output=True, text=True).stderr
    return (f"{os.cpu_count()} cores ({cpu}), {mem_kb // 1024 // 1024} GiB, "
            f"{platform.system()} {platform.release()}, Python {platform.python_version()}, "
            f"{java.splitlines()[0] if java else 'java ?'}")


def run_all(out: Path, seconds: float, calls: list[int], quick: bool) -> dict[str, Any]:
    logs = out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {"machine": machine(), "started": time.strftime("%Y-%m-%d %H:%M"),
                               "seconds": seconds, "realistic_by_calls": [], "by_calls": [],
                               "aggregated": []}
    with broker("") as (bootstrap, broker_pid):
        # The broker's JIT compiles its hot paths during the first minute of load,
        # taking a core meanwhile: warm it up before anything is measured.
        warm = logs / "warm-up"
        warm.mkdir(exist_ok=True)
        bench_once(bootstrap, Load(20, 30), ceilings=False, log_dir=warm)

        def once(load: Load, ceilings: bool, tag: str) -> dict[str, Any]:
            d = logs / tag
            d.mkdir(exist_ok=True)
            r = bench_once(bootstrap, load, ceilings=ceilings, log_dir=d, broker_pid=broker_pid)
            print(f"{tag}: " + json.dumps({k: r.get(k) for k in FIELDS}), flush=True)
            return r

        # The ceilings echo: they belong with the echo workload's rows only.
        for n in calls:
            results["realistic_by_calls"].append(
                once(Load(n, seconds, workload="realistic"), False, f"n{n}-realistic"))
        for n in calls:
            results["by_calls"].append(once(Load(n, seconds, workload="echo"), True, f"n{n}"))
        for n in calls:
            results["aggregated"].append(once(
                Load(n, seconds, aggregate_ms=100, workload="echo"), True, f"n{n}-agg100"))
        # One gateway, one worker (the echo row at the middle count) against the same
        # gateway as `serve --workers 2`.
        mid = calls[len(calls) // 2]
        results["workers"] = {
            "one": results["by_calls"][len(calls) // 2],
            "two": once(Load(mid, seconds, workers=2, workload="echo"), False,
                        f"n{mid}-two-workers"),
        }
        if not quick:
            results["rss_300"] = once(Load(300, min(seconds, 15), workload="echo"), False,
                                      "n300-rss")
        results["profile"] = once(Load(mid, seconds, profile=True, workload="realistic"),
                                  False, f"n{mid}-profile")
        for workload, key in (("realistic", "capacity"), ("echo", "capacity_echo")):
            d = logs / key
            d.mkdir(exist_ok=True)
            results[key] = search(bootstrap, seconds=min(seconds, 15), log_dir=d,
                                  broker_pid=broker_pid, workload=workload)
    return results


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--out", type=Path, default=Path("bench"))
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--calls", default="10,25,50,100,200", help="comma-separated call counts")
    p.add_argument("--quick", action="store_true", help="skip the 300-call RSS run")
    p.add_argument("--from-json", type=Path, default=None,
                   help="re-render RESULTS.md and the plot from a saved results.json")
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.from_json:
        results = json.loads(args.from_json.read_text())
    else:
        calls = [int(c) for c in args.calls.split(",")]
        results = run_all(args.out, args.seconds, calls, args.quick)
        (args.out / "results.json").write_text(json.dumps(results, indent=1))
    from kgw_bench.render import plot, render

    plot(results, args.out / "results.png")
    (args.out / "RESULTS.md").write_text(render(results, " ".join(sys.argv[1:])))
    print(f"wrote {args.out / 'RESULTS.md'}")


if __name__ == "__main__":
    main()
