"""Percentiles of a run's samples, the one way every report in the project computes them.

The method is numpy's default (``numpy.percentile(..., method="linear")``):
sort the values, take the virtual index ``(n - 1) * q / 100`` and interpolate
linearly between the two closest ranks. Pure Python, so the runtime
simulator can use it without numpy, and figures from the simulator and from
the bench tooling (which used numpy before) stay comparable.

The values are sorted once per call, O(n log n): meant for a summary at the
end of a run, not for a hot path.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

__all__ = ["percentile", "percentiles", "summary"]


def percentile(values: Iterable[float], q: float) -> float | None:
    """The ``q``-th percentile (0 to 100) of ``values``; None when there are none."""
    return _at(sorted(values), q)


def percentiles(values: Iterable[float], qs: Iterable[float], *, scale: float = 1.0,
                ndigits: int | None = None) -> dict[str, float | None]:
    """``{"p50": ..., "p99": ...}``: each percentile in ``qs`` times ``scale``, rounded to
    ``ndigits`` (not rounded if None); every value None when there are no values."""
    return _percentiles(sorted(values), qs, scale, ndigits)


def summary(values: Iterable[float], qs: Iterable[float], *, scale: float = 1.0,
            ndigits: int | None = None) -> dict[str, int | float | None]:
    """``{"count": n, "p50": ..., "max": ...}``: the count, then the percentiles and the
    largest value, scaled and rounded as by ``percentiles``."""
    ordered = sorted(values)
    out: dict[str, int | float | None] = {"count": len(ordered)}
    out.update(_percentiles(ordered, qs, scale, ndigits))
    out["max"] = _scaled(_at(ordered, 100), scale, ndigits)
    return out


def _percentiles(ordered: Sequence[float], qs: Iterable[float], scale: float,
                 ndigits: int | None) -> dict[str, float | None]:
    # "p50", "p99.9": a whole number has no ".0", so p50 and p50.0 are one key.
    return {f"p{q:g}": _scaled(_at(ordered, q), scale, ndigits) for q in qs}


def _at(ordered: Sequence[float], q: float) -> float | None:
    if not 0 <= q <= 100:
        raise ValueError(f"percentile {q} is not between 0 and 100")
    if not ordered:
        return None
    index = (len(ordered) - 1) * (q / 100)
    below = math.floor(index)
    if below >= len(ordered) - 1:
        return float(ordered[-1])
    a, b = ordered[below], ordered[below + 1]
    t = index - below
    # numpy's form: from the nearer neighbour, so the result is exact at either rank
    # and never leaves [a, b] through rounding.
    return a + (b - a) * t if t < 0.5 else b - (b - a) * (1 - t)


def _scaled(value: float | None, scale: float, ndigits: int | None) -> float | None:
    if value is None:
        return None
    value *= scale
    return value if ndigits is None else round(value, ndigits)
