"""The capacity search's stepping, with a stand-in for the measurement."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from kgw_bench import capacity


def _fake_runs(limit: int, calls_seen: list[int]) -> Any:
    """A machine that carries exactly ``limit`` calls."""

    def bench_once(bootstrap: str, load: Any, **_: Any) -> dict[str, Any]:
        calls_seen.append(load.calls)
        ok = load.calls <= limit
        return {"frames_lost": 0 if ok else 3, "inbound_p99_ms": 10.0 if ok else 40.0,
                "gateway_cpu_ms_per_call_s": 1.0}

    return bench_once


@pytest.mark.parametrize(("limit", "found", "first_failing"), [
    (37, 37, 40),     # 5, 10, 20 pass, 40 fails; then 30, 35, 37 pass: within 10% of 40
    (3, 3, 5),        # 5 fails at once; 2 and 3 pass: within 2 calls
    (1000, 320, None),  # never fails below the search's limit of 400
])
def test_search_doubles_then_bisects(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                     limit: int, found: int, first_failing: int | None) -> None:
    """The search doubles until a failure, then bisects until the gap to the first failure
    is at most 2 calls or 10% of the passing count."""
    seen: list[int] = []
    monkeypatch.setattr(capacity, "bench_once", _fake_runs(limit, seen))
    result = capacity.search("kafka:9092", log_dir=tmp_path)
    assert result["capacity_calls"] == found
    assert result["first_failing_calls"] == first_failing
    assert [t["calls"] for t in result["trials"]] == seen


def test_a_run_passes_only_without_loss_and_under_the_p99_bound() -> None:
    """Loss or a p99 at or over the bound fails a run; a missing p99 fails it too."""
    assert capacity.passes({"frames_lost": 0, "inbound_p99_ms": 24.9})
    assert not capacity.passes({"frames_lost": 1, "inbound_p99_ms": 1.0})
    assert not capacity.passes({"frames_lost": 0, "inbound_p99_ms": 25.0})
    assert not capacity.passes({"frames_lost": 0, "inbound_p99_ms": None})
