"""bench/RESULTS.md and bench/results.png from a report run's results."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from gateway.bench.profile import summarise


def _f(v: Any, nd: int = 1) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.{nd}f}"
    return str(v)


def _row(r: dict[str, Any]) -> str:
    cores = r.get("cores_used", {})
    return "| " + " | ".join([
        str(r["calls"]), _f(r["gateway_cpu_ms_per_call_s"], 2),
        _f(r.get("autobahn_cpu_ms_per_call_s"), 2), _f(r.get("gateway_vs_autobahn"), 2),
        _f(r.get("websockets_peer_cpu_ms_per_call_s"), 2), _f(r.get("gateway_vs_peer"), 2),
        _f(r["inbound_p50_ms"]), _f(r["inbound_p99_ms"]), _f(r["command_p50_ms"]),
        _f(r["command_p99_ms"]), str(r["frames_lost"]), _f(r["rss_kb_per_call"]),
        _f(r.get("aiokafka_produce_us_per_record")), _f(r["loadgen_cpu_pct"]),
        " / ".join(_f(cores.get(k), 2) for k in ("gateway", "broker", "bot", "probe", "loadgen")),
    ]) + " |"


_HEAD = ("| calls | gateway ms CPU per call-s | bare Autobahn | gateway / Autobahn "
         "| websockets peer | gateway / peer | inbound p50 ms | inbound p99 ms "
         "| command p50 ms | command p99 ms | frames lost | RSS KB per call "
         "| aiokafka µs per record | load gen % core "
         "| cores: gateway / broker / bot / probe / load gen |\n"
         "|" + "---|" * 15)


def render(res: dict[str, Any], argv: str) -> str:
    by = res["by_calls"]
    agg = res["aggregated"]
    split = res["split"]
    cap = res["capacity"]
    lo = min(by, key=lambda r: r["calls"])
    out = [
        "# Benchmark results",
        "",
        f"Machine: {res['machine']}. Run started {res['started']}; each call "
        f"{res['seconds']:g} s, measured over a steady window after a 2 s ramp and 3 s "
        "warm-up. Regenerate everything on this page (figures, plot) with:",
        "",
        "```sh",
        f"make bench-report   # = .venv/bin/python -m gateway.bench.report {argv}".rstrip(),
        "```",
        "",
        "One measurement: `knowlarity-gateway bench --calls N --seconds S --json`.",
        "",
        "What runs: a single-node KRaft broker (the project's own, C2 JIT), one gateway "
        "process (playout pacing off), the bench bot (a consumer-group member that echoes "
        "every caller chunk straight back with its own send time stamped into the PCM), a "
        "probe reading the inbound topic, and the load generator: N calls of 16 kHz, "
        "20 ms frames in real time with random phases. All share the machine's 2 cores. "
        "CPU is each process's own utime+stime from /proc over the window; latencies are "
        "this machine's wall clock at both ends: inbound = frame received by the gateway "
        "(its `received_unix_us`) to record read by the probe; command = bot's send time to "
        "the chunk's arrival at the caller (kernel receive timestamp).",
        "",
        "![latency and CPU against calls](results.png)",
        "",
        "## Gateway and ceilings, one record per 20 ms frame (the default)",
        "",
        _HEAD,
        *[_row(r) for r in by],
        "",
        "## With `--aggregate-ms 100` (one inbound record per 100 ms of caller audio)",
        "",
        "The bot then answers once per record, so the bare Autobahn ceiling here also "
        "answers once per five frames (`--echo-every 5`); the websockets peer and aiokafka "
        "ceilings are unchanged (one record per frame).",
        "",
        _HEAD,
        *[_row(r) for r in agg],
        "",
        "## One gateway process or two",
        "",
        f"{split['one']['calls']} calls through one process: "
        f"{_f(split['one']['gateway_cpu_ms_per_call_s'], 2)} ms CPU per call-second; "
        f"split over two processes: {_f(split['two']['gateway_cpu_ms_per_call_s'], 2)} "
        f"(both processes' CPU over both halves' call-seconds; frames lost "
        f"{split['two']['frames_lost']}, inbound p99 {_f(split['two']['inbound_p99_ms'])} ms).",
        "",
    ]
    if "rss_300" in res:
        r3 = res["rss_300"]
        out += [
            "## Memory at 300 calls",
            "",
            f"{_f(r3['rss_kb_per_call'])} KB RSS per call at 300 calls "
            f"(idle {r3['gateway']['idle_rss_kb'][0]} KB, loaded {r3['gateway']['rss_kb'][0]} KB); "
            f"{_f(lo['rss_kb_per_call'])} KB per call at {lo['calls']} calls. The machine is "
            f"far past saturation at 300 calls (frames lost {r3['frames_lost']}, inbound p99 "
            f"{_f(r3['inbound_p99_ms'])} ms): this run is for memory only.",
            "",
        ]
    out += [
        "## Capacity search",
        "",
        f"The most calls with no frame lost and inbound p99 under {cap['p99_bound_ms']:g} ms: "
        f"**{cap['capacity_calls']}** (first failing: {cap['first_failing_calls']}).",
        "",
        "| calls | result | frames lost | inbound p99 ms | gateway ms CPU per call-s |",
        "|---|---|---|---|---|",
        *[f"| {t['calls']} | {'pass' if t['passed'] else 'fail'} | {t['frames_lost']} "
          f"| {_f(t['inbound_p99_ms'])} | {_f(t['gateway_cpu_ms_per_call_s'], 2)} |"
          for t in cap["trials"]],
        "",
        "## Where the gateway's time goes",
        "",
        f"py-spy over the window at {res['profile']['calls']} calls (`bench --profile`), "
        "top of stack (self) and anywhere on it (inclusive):",
        "",
        "```",
        _profile_text(res["profile"]),
        "```",
        "",
    ]
    return "\n".join(out)


def _profile_text(r: dict[str, Any]) -> str:
    logs = Path(r["log_dir"])
    files = sorted(logs.glob("profile-*.txt"))
    return summarise(files[0], top=20) if files else "(no profile file)"


def plot(res: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (lat, cpu) = plt.subplots(1, 2, figsize=(12, 4.5))
    for rows, style, tag in ((res["by_calls"], "-o", ""),
                             (res["aggregated"], "--s", " (aggregate 100 ms)")):
        n = [r["calls"] for r in rows]
        lat.plot(n, [r["inbound_p50_ms"] for r in rows], style, label="inbound p50" + tag)
        lat.plot(n, [r["inbound_p99_ms"] for r in rows], style, label="inbound p99" + tag)
        lat.plot(n, [r["command_p99_ms"] for r in rows], style, label="command p99" + tag)
        cpu.plot(n, [r["gateway_cpu_ms_per_call_s"] for r in rows], style,
                 label="gateway" + tag)
        cpu.plot(n, [r.get("autobahn_cpu_ms_per_call_s") for r in rows], style,
                 label="bare Autobahn" + tag)
    n = [r["calls"] for r in res["by_calls"]]
    cpu.plot(n, [r.get("websockets_peer_cpu_ms_per_call_s") for r in res["by_calls"]], ":^",
             label="websockets peer")
    lat.set(xlabel="concurrent calls", ylabel="ms", title="latency", yscale="log")
    cpu.set(xlabel="concurrent calls", ylabel="ms CPU per call-second", title="CPU cost")
    lat.legend(fontsize=7)
    cpu.legend(fontsize=7)
    for ax in (lat, cpu):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
