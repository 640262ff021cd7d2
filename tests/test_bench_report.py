"""bench/RESULTS.md from a report run's results (kgw_bench.render), and bench's JSON keys."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from gateway.cli import build_parser
from gateway.settings import from_args
from kgw_bench import run as bench_run
from kgw_bench.command import BENCH_SETTINGS, BenchSettings, summary
from kgw_bench.render import plot, render
from kgw_bench.run import Load, bench_once

SAVED = Path(__file__).parent.parent / "bench" / "results.json"

# Every key ``bench --json`` printed before the workloads (tests and scripts read them).
KEYS = {"calls", "seconds", "gateways", "gateway_cpu_ms_per_call_s", "frames_lost",
        "inbound_p50_ms", "inbound_p95_ms", "inbound_p99_ms", "inbound_max_ms",
        "command_p50_ms", "command_p99_ms", "command_max_ms", "rss_kb_per_call",
        "loadgen_cpu_pct", "cores_used", "gateway", "log_dir"}
CEILING_KEYS = {"autobahn_cpu_ms_per_call_s", "websockets_peer_cpu_ms_per_call_s",
                "aiokafka_produce_us_per_record", "gateway_vs_autobahn", "gateway_vs_peer",
                "ceilings"}


def _row(calls: int, workload: str, ceilings: bool, lost: int = 0) -> dict[str, Any]:
    r: dict[str, Any] = {
        "workload": workload, "calls": calls, "seconds": 20.0, "gateways": 1,
        "gateway_cpu_ms_per_call_s": 10.0 + calls / 100, "frames_lost": lost,
        "inbound_p50_ms": 3.0, "inbound_p95_ms": 8.0, "inbound_p99_ms": 12.0,
        "inbound_max_ms": 30.0, "command_p50_ms": 4.0, "command_p99_ms": 9.0,
        "command_max_ms": 20.0, "rss_kb_per_call": 90.0, "loadgen_cpu_pct": 10.0,
        "cores_used": {"gateway": 0.5, "broker": 0.2, "bot": 0.1, "probe": 0.1, "loadgen": 0.1},
        "gateway": {"idle_rss_kb": [70000], "rss_kb": [80000],
                    "bot": {"utterances": 30, "clears": 7} if workload == "realistic" else {},
                    "loadgen": {"answers_heard": 29} if workload == "realistic" else {}},
        "log_dir": "/nonexistent",
    }
    if ceilings:
        r.update({"autobahn_cpu_ms_per_call_s": 5.0, "websockets_peer_cpu_ms_per_call_s": 11.0,
                  "aiokafka_produce_us_per_record": 150.0, "gateway_vs_autobahn": 2.0,
                  "gateway_vs_peer": 0.9})
    return r


def _capacity(workload: str, found: int) -> dict[str, Any]:
    return {"workload": workload, "capacity_calls": found, "first_failing_calls": found + 2,
            "p99_bound_ms": 25.0, "trials": [
                {"calls": found, "passed": True, "frames_lost": 0, "inbound_p99_ms": 20.0,
                 "gateway_cpu_ms_per_call_s": 30.0},
                {"calls": found + 2, "passed": False, "frames_lost": 3, "inbound_p99_ms": 40.0,
                 "gateway_cpu_ms_per_call_s": 28.0}]}


def _results() -> dict[str, Any]:
    echo = [_row(n, "echo", True, lost=5 if n == 200 else 0) for n in (10, 100, 200)]
    return {
        "machine": "2 cores (test)", "started": "2026-12-02 03:00", "seconds": 20.0,
        "realistic_by_calls": [_row(n, "realistic", False) for n in (10, 100, 200)],
        "by_calls": echo,
        "aggregated": [_row(n, "echo", True) for n in (10, 100, 200)],
        "split": {"one": echo[1], "two": _row(100, "echo", False)},
        "profile": _row(100, "realistic", False),
        "capacity": _capacity("realistic", 40),
        "capacity_echo": _capacity("echo", 8),
    }


def test_results_put_the_realistic_workload_first_and_keep_the_echo_tables() -> None:
    """Both workloads' tables are rendered, the realistic one (with its turns) first."""
    md = render(_results(), "--out bench")
    real, echo = md.index("## Realistic workload (the headline)"), md.index("## Echo workload")
    assert md.index("## Against the targets") < real < echo
    real_table = md[real:echo]
    assert real_table.count("| 30 answers, 7 barged in, 29 stamps heard |") == 3
    assert "| 10 | 10.10 | – | – | – | – |" in real_table  # no ceilings: they echo
    assert "| 10 | 10.10 | 5.00 | 2.00 | 11.00 | 0.90 |" in md[echo:]
    assert "Realistic workload: the most calls" in md and "**40**" in md
    assert "Echo workload: the most calls" in md and "**8**" in md


def test_targets_are_judged_for_each_workload() -> None:
    """The CPU, loss and latency targets have a row per workload, each with its own verdict."""
    md = render(_results(), "")
    assert "| gateway ≤ 3.3 ms CPU per call-s with no loss, 200 calls (realistic) " \
           "| 12.00 ms, 0 frames lost | no |" in md
    assert "| gateway ≤ 3.3 ms CPU per call-s with no loss, 200 calls (echo) " \
           "| 12.00 ms, 5 frames lost | no |" in md
    assert "| 100 calls: command p99 < 10 ms (realistic) | 9.0 | yes |" in md
    assert "| 100 calls: inbound p50 < 5 ms, p99 < 20 ms (echo) | p50 3.0, p99 12.0 | yes |" in md


def test_results_saved_before_the_workloads_still_render() -> None:
    """A results.json of the echo workload alone renders as before, without realistic rows."""
    res = json.loads(SAVED.read_text())
    assert "realistic_by_calls" not in res
    md = render(res, "--out bench")
    assert "Realistic workload" not in md and "## Echo workload" in md
    assert "gateway ≤ 3.3 ms CPU per call-s with no loss, 100 calls |" in md  # no tag


def test_the_plot_draws_both_workloads(tmp_path: Path) -> None:
    """The plot is written for results with and without the realistic rows."""
    pytest.importorskip("matplotlib")
    for res in (_results(), json.loads(SAVED.read_text())):
        out = tmp_path / "r.png"
        plot(res, out)
        assert out.stat().st_size > 1000
        out.unlink()


# --- the bench command's settings and JSON --------------------------------------------


def _settings(argv: list[str], env: dict[str, str] | None = None) -> BenchSettings:
    args = build_parser().parse_args(["bench", *argv])
    return from_args(BenchSettings(), BENCH_SETTINGS, args, env or {})


def test_the_workload_is_realistic_unless_asked_for_echo() -> None:
    """``--workload`` and KGW_BENCH_WORKLOAD choose it (the flag wins); a typo is refused."""
    assert _settings([]).load.workload == "realistic"
    assert _settings(["--workload", "echo"]).load.workload == "echo"
    assert _settings([], {"KGW_BENCH_WORKLOAD": "echo"}).load.workload == "echo"
    assert _settings(["--workload", "realistic"],
                     {"KGW_BENCH_WORKLOAD": "echo"}).load.workload == "realistic"
    with pytest.raises(Exception, match="workload"):
        _settings(["--workload", "chat"])


def _fake_gateway(calls: list[Load]) -> Any:
    def measure(bootstrap: str, load: Load, log_dir: Path,
                broker_pid: int | None = None) -> dict[str, Any]:
        calls.append(load)
        return {"cpu_ms_per_call_s": 10.0, "frames_lost_inbound": 1, "frames_lost_outbound": 2,
                "inbound_latency_ms": {"p50": 1.0, "p95": 2.0, "p99": 3.0, "max": 4.0},
                "command_latency_ms": {"p50": 5.0, "p99": 6.0, "max": 7.0},
                "rss_kb_per_call": 80.0, "loadgen": {"cpu_s": 1.0, "wall_s": 10.0},
                "cores_used": {"gateway": 0.5}, "bot": {"utterances": 3, "clears": 1}}
    return measure


@pytest.mark.parametrize("workload", ["realistic", "echo"])
def test_bench_json_keeps_every_key_and_names_the_workload(
        workload: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Every key of before, plus ``workload``; the ceilings run the echo load, and are compared
    with the gateway only when it ran the echo load too."""
    seen: list[Load] = []
    monkeypatch.setattr(bench_run, "measure_gateway", _fake_gateway(seen))
    ceiling = {"cpu_ms_per_call_s": 5.0}
    monkeypatch.setattr(bench_run, "measure_bare_autobahn",
                        lambda load, d: (seen.append(load), ceiling)[1])
    monkeypatch.setattr(bench_run, "measure_peer_bridge",
                        lambda b, load, d: (seen.append(load), ceiling)[1])
    monkeypatch.setattr(bench_run, "measure_bare_produce",
                        lambda b, load, d: (seen.append(load), {"us_per_record": 9.0})[1])
    r = bench_once("k:9092", Load(5, 10.0, workload=workload), log_dir=tmp_path)
    assert KEYS | CEILING_KEYS | {"workload"} <= set(r)
    assert r["workload"] == workload and r["frames_lost"] == 3
    assert [load.workload for load in seen] == [workload, "echo", "echo", "echo"]
    assert (r["gateway_vs_autobahn"] is None) == (workload == "realistic")
    text = summary(copy.deepcopy(r))
    assert f"{workload} workload" in text.splitlines()[0]
    assert ("barge-ins scripted" in text) == (workload == "realistic")
    no_ceilings = bench_once("k:9092", Load(5, 10.0, workload=workload), ceilings=False,
                             log_dir=tmp_path)
    assert KEYS | {"workload"} <= set(no_ceilings)
