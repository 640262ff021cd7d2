"""``knowlarity-gateway bench``: the full command from a dev install, a clear message without it."""

from __future__ import annotations

import sys

import pytest

from gateway.cli import BENCH_MISSING, build_parser, main


def test_bench_is_registered_from_a_dev_install() -> None:
    """With kgw_bench importable, ``bench`` parses the benchmark's own options."""
    from gateway.settings import from_args
    from kgw_bench.command import BENCH_SETTINGS, BenchSettings

    args = build_parser().parse_args(["bench", "--calls", "5", "--seconds", "2", "--ceilings",
                                      "false"])
    s = from_args(BenchSettings(), BENCH_SETTINGS, args, {})
    assert (s.load.calls, s.load.seconds, s.ceilings) == (5, 2.0, False)


@pytest.mark.parametrize("argv", [["bench"], ["bench", "--calls", "5", "--json"], ["bench", "-h"]])
def test_bench_without_the_bench_package_says_how_to_install_it(
        argv: list[str], monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """Without kgw_bench (the runtime wheel), any ``bench`` command line prints how to get it."""
    monkeypatch.setitem(sys.modules, "kgw_bench", None)  # import kgw_bench now raises ImportError
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert BENCH_MISSING in err and "pip install -e '.[bench]' -e ./bench" in err
