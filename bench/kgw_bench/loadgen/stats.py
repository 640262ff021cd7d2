"""The load generator's statistics: latency, send-lag and read-delay percentiles, and CPU."""

from __future__ import annotations

import resource
from array import array
from typing import Any

from gateway.stats import summary

MAX_ERRORS = 20


def summarize(counts: dict[str, Any], lat: array, lags: array, read_delays: array, *,
              run_cpu_s: float, wall_s: float, errors: list[str],
              error_count: int) -> dict[str, Any]:
    """The result object: counters plus latency, send-lag and read-delay percentiles, CPU."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu_s = usage.ru_utime + usage.ru_stime + children.ru_utime + children.ru_stime
    frames = counts["frames_sent"] + counts["play_frames_received"]
    result = dict(counts)
    result["command_latency_ms"] = summary(lat, (50, 95, 99), ndigits=3)
    result["send_lag_ms"] = summary(lags, (50, 99), scale=0.001, ndigits=3)
    result["read_delay_ms"] = summary(read_delays, (50, 99), scale=0.001, ndigits=3)
    result.update({
        "cpu_s": round(cpu_s, 3),
        "run_cpu_s": round(run_cpu_s, 3),
        "cpu_us_per_frame": round(run_cpu_s * 1e6 / frames, 2) if frames else None,
        "wall_s": round(wall_s, 3),
        "error_count": error_count,
        "errors": errors[:MAX_ERRORS],
    })
    return result
