"""The capacity search: the most calls with no frame lost and inbound p99 under a bound.

Doubles the call count until a run fails, then bisects between the last pass
and the first failure. Each step is a full gateway run (no ceilings).
``knowlarity-gateway bench --capacity`` runs it on its own.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kgw_bench.run import Load, bench_once

P99_BOUND_MS = 25.0


def passes(r: dict[str, Any], bound_ms: float = P99_BOUND_MS) -> bool:
    p99 = r.get("inbound_p99_ms")
    return r.get("frames_lost") == 0 and p99 is not None and p99 < bound_ms


def search(bootstrap: str, *, seconds: float = 15.0, start: int = 5, limit: int = 400,
           resolution: int = 2, log_dir: Path, broker_pid: int | None = None,
           bound_ms: float = P99_BOUND_MS, workload: str = "realistic") -> dict[str, Any]:
    trials: list[dict[str, Any]] = []

    def trial(n: int) -> bool:
        d = log_dir / f"capacity-{n}"
        d.mkdir(parents=True, exist_ok=True)
        r = bench_once(bootstrap, Load(n, seconds, workload=workload), ceilings=False, log_dir=d,
                       broker_pid=broker_pid)
        ok = passes(r, bound_ms)
        trials.append({"calls": n, "passed": ok, "frames_lost": r["frames_lost"],
                       "inbound_p99_ms": r["inbound_p99_ms"],
                       "gateway_cpu_ms_per_call_s": r["gateway_cpu_ms_per_call_s"]})
        print(f"capacity: {n} calls -> {'pass' if ok else 'fail'} "
              f"(lost {r['frames_lost']}, inbound p99 {r['inbound_p99_ms']} ms)", flush=True)
        return ok

    good, bad = 0, None
    n = start
    while n <= limit:
        if trial(n):
            good, n = n, n * 2
        else:
            bad = n
            break
    if bad is not None:
        while bad - good > max(resolution, good // 10):
            mid = (good + bad) // 2
            if trial(mid):
                good = mid
            else:
                bad = mid
    return {"workload": workload, "capacity_calls": good, "first_failing_calls": bad,
            "p99_bound_ms": bound_ms, "trials": trials}
