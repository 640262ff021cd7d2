"""gateway.stats: percentiles by linear interpolation between closest ranks (numpy's default)."""

from __future__ import annotations

import random
from array import array

import numpy as np
import pytest

from gateway.stats import percentile, percentiles, summary

# Worked by hand: the virtual index is (n - 1) * q / 100, between two ranks it is
# interpolated (nearest rank would give 20 for [10, 20] at p95, and 2 for
# [1, 2, 3, 4] at p50).
HAND_WORKED = [
    ([10], 0, 10.0),
    ([10], 50, 10.0),
    ([10], 100, 10.0),
    ([10, 20], 50, 15.0),
    ([10, 20], 95, 19.5),
    ([20, 10], 25, 12.5),
    ([1, 2, 3, 4], 0, 1.0),
    ([1, 2, 3, 4], 25, 1.75),
    ([1, 2, 3, 4], 50, 2.5),
    ([1, 2, 3, 4], 100, 4.0),
    ([3, 1, 2], 50, 2.0),
    ([5, 5, 5, 9], 50, 5.0),
    ([0.5, 1.5, 2.5, 3.5, 4.5], 90, 4.1),
]


@pytest.mark.parametrize(("values", "q", "expected"), HAND_WORKED)
def test_percentile_of_small_samples_worked_by_hand(values: list[float], q: float,
                                                    expected: float) -> None:
    """A small sample's percentile is the hand-worked linear interpolation between ranks."""
    assert percentile(values, q) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("n", [1, 2, 3, 7, 100, 1001, 20_000])
@pytest.mark.parametrize("kind", ["float", "int"])
def test_percentiles_agree_with_numpy_on_random_data(n: int, kind: str) -> None:
    """On random samples, float and int, each percentile equals numpy.percentile's."""
    rng = random.Random(n * 31 + len(kind))
    values: array[float] | array[int] = (
        array("d", (rng.lognormvariate(3, 1) for _ in range(n))) if kind == "float"
        else array("q", (rng.randrange(-10**6, 10**9) for _ in range(n))))
    qs = [0, 0.1, 1, 25, 33.3, 50, 66.7, 90, 95, 99, 99.9, 100]
    expected = np.percentile(np.asarray(values, dtype=np.float64), qs)
    got = percentiles(values, qs)
    assert list(got) == ["p0", "p0.1", "p1", "p25", "p33.3", "p50", "p66.7", "p90", "p95",
                         "p99", "p99.9", "p100"]
    assert list(got.values()) == pytest.approx(list(expected), rel=1e-12, abs=1e-12)


def test_no_values_give_none() -> None:
    """With no values every percentile is None, the count 0 and the max None."""
    assert percentile([], 50) is None
    assert percentiles(array("q"), (50, 99)) == {"p50": None, "p99": None}
    assert summary(iter(()), (50, 95, 99)) == {"count": 0, "p50": None, "p95": None,
                                               "p99": None, "max": None}


def test_scale_and_rounding_apply_after_the_percentile() -> None:
    """Values in µs come out in ms, rounded to the asked digits: the percentile is taken
    first, then scaled, then rounded."""
    us = [1234, 5678]  # p50: 3456 µs
    assert percentiles(us, (50,), scale=0.001) == {"p50": pytest.approx(3.456)}
    assert percentiles(us, (50,), scale=0.001, ndigits=1) == {"p50": 3.5}
    assert summary(us, (50,), scale=0.001, ndigits=2) == {"count": 2, "p50": 3.46,
                                                          "max": 5.68}


def test_summary_holds_count_percentiles_and_max_in_that_order() -> None:
    """A summary is the count, the percentiles asked for and the largest value."""
    out = summary([4, 1, 3, 2], (50, 95))
    assert list(out) == ["count", "p50", "p95", "max"]
    assert out == {"count": 4, "p50": 2.5, "p95": pytest.approx(3.85), "max": 4.0}


def test_a_whole_float_percentile_has_the_whole_numbers_key() -> None:
    """50.0 is keyed "p50", as 50 is, and 99.9 "p99.9"."""
    assert list(percentiles([1, 2], (50.0, 99.9))) == ["p50", "p99.9"]


@pytest.mark.parametrize("q", [-1, 100.5, float("nan")])
def test_a_percentile_outside_0_to_100_is_refused(q: float) -> None:
    """A q below 0, above 100 or NaN is a ValueError, not a made-up figure."""
    with pytest.raises(ValueError, match="between 0 and 100"):
        percentile([1, 2, 3], q)
