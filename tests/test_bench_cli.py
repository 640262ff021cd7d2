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


def test_with_workers_the_gateway_s_cpu_is_its_workers() -> None:
    """bench --workers N samples the supervisor's N children, not the supervisor; one
    worker is the gateway process itself. A supervisor without N children is an error."""
    import os
    import subprocess
    import sys
    import time

    from gateway.ports import _free, free_port_run
    from kgw_bench.run import _worker_pids

    assert _worker_pids(os.getpid(), 1) == [os.getpid()]
    parent = subprocess.Popen([sys.executable, "-c", (
        "import subprocess, sys, time\n"
        "kids = [subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(30)'])"
        " for _ in range(2)]\n"
        "print(' '.join(str(k.pid) for k in kids), flush=True)\n"
        "time.sleep(30)\n")], stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout is not None
        kids = sorted(int(p) for p in parent.stdout.readline().split())
        time.sleep(0.2)
        assert _worker_pids(parent.pid, 2) == kids
        with pytest.raises(RuntimeError, match="has 2 children, not 3"):
            _worker_pids(parent.pid, 3)
    finally:
        for pid in kids:
            os.kill(pid, 9)
        parent.kill()
        parent.wait()
    first = free_port_run(3)
    assert all(_free(first + k) for k in range(3))
