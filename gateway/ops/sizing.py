"""How many calls a node can carry on its CPU, from the benchmark's measured figures (pure).

The figures are copied from ``bench/RESULTS.md`` (``make bench-report``), table
"Echo workload: gateway and ceilings, one record per 20 ms frame (the default)",
row ``100`` calls: the largest load measured with no frame lost (at 200 calls
the gateway used 0.98 of a core and lost 47209 frames: saturated). The echo
workload answers every caller frame, the most a bot can ask of a node; the
realistic workload (a TTS-like bot in turns) costs less per call at the same
load (5.29 ms per call-second at 100 calls), so sizing on echo leaves headroom
for any bot. ``tests/test_sizing.py``
reads that row back from the results file and fails when they differ, and checks
the deploy manifests' CPU and ``KGW_MAX_SOCKETS`` against them.

CPU per call-second falls as calls rise (part of the cost is per Kafka request
and per loop wake-up), so a node's total CPU grows with calls but less than in
proportion: at ``calls <= MEASURED_CALLS`` it is at most what was measured at
``MEASURED_CALLS``. Beyond that nothing was measured without loss, so the
sizing never extrapolates past it.

Memory is sized by the worst-case formula of ``gateway.ops.limits`` (every bound
reached at once); the RSS figures here are what a node really uses, for the
dashboard's expectations and the memory alert's comment.
"""

from __future__ import annotations

import math

RESULTS_FILE = "bench/RESULTS.md"

# The row of RESULTS_FILE the figures come from (its "calls" column).
MEASURED_CALLS = 100
# "gateway ms CPU per call-s" at MEASURED_CALLS: 100 x 8.46 = 846 ms a second,
# 0.85 of a core (the row's "cores" column says 0.85 too).
CPU_MS_PER_CALL_S = 8.46
# "RSS KB per call" at MEASURED_CALLS (KB = 1024 bytes: the results' RSS is /proc's kB).
RSS_KB_PER_CALL = 31.4
# "Memory at 300 calls": idle serving node, before any call.
IDLE_RSS_KB = 85172

# The node is one Python thread (Twisted and aiokafka on one asyncio loop):
# CPU beyond one core is not used, so more calls need more nodes, not more CPU.
USABLE_CORES_PER_NODE = 1.0


def max_calls(cpu_cores: float) -> int:
    """The most calls a node with ``cpu_cores`` of CPU should take (its KGW_MAX_SOCKETS):
    its usable CPU over the measured cost per call, and never beyond the measured load."""
    usable_ms = min(cpu_cores, USABLE_CORES_PER_NODE) * 1000
    return min(MEASURED_CALLS, math.floor(usable_ms / CPU_MS_PER_CALL_S))


def expected_rss_bytes(calls: int) -> int:
    """What a node with ``calls`` ordinary calls holds (not the worst case: see limits)."""
    return round((IDLE_RSS_KB + calls * RSS_KB_PER_CALL) * 1024)


def nodes_for(peak_calls: int, cpu_cores: float = USABLE_CORES_PER_NODE) -> int:
    """Replicas for ``peak_calls``, plus one so a rollout or a lost node keeps the peak."""
    return math.ceil(peak_calls / max_calls(cpu_cores)) + 1


__all__ = [
    "CPU_MS_PER_CALL_S", "IDLE_RSS_KB", "MEASURED_CALLS", "RESULTS_FILE", "RSS_KB_PER_CALL",
    "USABLE_CORES_PER_NODE", "expected_rss_bytes", "max_calls", "nodes_for",
]
