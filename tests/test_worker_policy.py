"""``serve --workers``: the restart policy (pure), the per-worker settings and endpoints,
and the supervisor's process handling on tiny child processes (no broker)."""

from __future__ import annotations

import os
import signal
import socket
import sys
import threading
import time

import pytest

from gateway.cli import build_parser
from gateway.config import NodeConfig
from gateway.settings import SettingError
from gateway.workers.endpoints import TcpListen, port_of, reserve, reuse_port_socket, with_port
from gateway.workers.policy import GiveUp, Restart, RestartPolicy, WorkerHistory
from gateway.workers.supervisor import Supervisor, worker_argv

POLICY = RestartPolicy(stable_s=10, first_delay_s=0.5, max_delay_s=3, max_quick_deaths=5)


@pytest.mark.parametrize(("runs", "expected"), [
    # each run's seconds before it died -> the decisions, in order
    ([1], [Restart(0.5)]),
    ([1, 1, 1, 1], [Restart(0.5), Restart(1.0), Restart(2.0), Restart(3.0)]),
    ([1, 1, 1, 1, 1], [Restart(0.5), Restart(1.0), Restart(2.0), Restart(3.0), GiveUp(5)]),
    # a run that lasted resets the count: quick deaths must be in a row
    ([1, 1, 1, 1, 60, 1, 1], [Restart(0.5), Restart(1.0), Restart(2.0), Restart(3.0),
                              Restart(0.5), Restart(0.5), Restart(1.0)]),
    ([10, 10, 10, 10, 10, 10], [Restart(0.5)] * 6),
    ([9.99], [Restart(0.5)]),
])
def test_restart_policy(runs: list[float], expected: list[object]) -> None:
    """Quick deaths back off doubling up to the cap and are given up on at the bound;
    a worker that ran for stable_s starts over."""
    history, got = WorkerHistory(), []
    for ran in runs:
        decision, history = POLICY.after_exit(history, ran)
        got.append(decision)
    assert got == expected


def test_a_policy_that_could_never_restart_is_refused() -> None:
    with pytest.raises(ValueError):
        RestartPolicy(first_delay_s=5, max_delay_s=1)
    with pytest.raises(ValueError):
        RestartPolicy(max_quick_deaths=0)


@pytest.mark.parametrize(("text", "port", "moved"), [
    ("tcp:9100", 9100, "tcp:9101"),
    ("tcp:9100:interface=127.0.0.1", 9100, "tcp:9101:interface=127.0.0.1"),
    ("tcp:interface=127.0.0.1:port=9100", 9100, "tcp:interface=127.0.0.1:port=9101"),
    ("tcp6:9100:interface=\\:\\:1", 9100, "tcp6:9101:interface=\\:\\:1"),
    ("ssl:8443:privateKey=k.pem", 8443, "ssl:8444:privateKey=k.pem"),
    ("unix:/tmp/x.sock", None, None),
    ("haproxy:tcp:8080", None, None),
])
def test_endpoint_ports(text: str, port: int | None, moved: str | None) -> None:
    assert port_of(text) == port
    if moved is None:
        with pytest.raises(ValueError):
            with_port(text, 1)
    else:
        assert with_port(text, port + 1) == moved  # type: ignore[operator]


@pytest.mark.parametrize(("text", "listen"), [
    ("tcp:8080", TcpListen(socket.AF_INET, 8080, "0.0.0.0")),
    ("tcp:0:interface=127.0.0.1:backlog=7", TcpListen(socket.AF_INET, 0, "127.0.0.1", 7)),
    ("tcp:port=8080:backlog=9", TcpListen(socket.AF_INET, 8080, "0.0.0.0", 9)),
    ("tcp6:8080:interface=\\:\\:1", TcpListen(socket.AF_INET6, 8080, "::1")),
    ("ssl:8443:privateKey=k.pem", None),
    ("haproxy:tcp:8080", None),
    ("unix:/tmp/x.sock", None),
])
def test_tcp_listen_from_endpoint(text: str, listen: TcpListen | None) -> None:
    assert TcpListen.from_endpoint(text) == listen


def test_workers_share_a_reserved_port_and_the_reservation_takes_no_connection() -> None:
    """Two SO_REUSEPORT listeners on the port the bound-only reservation picked both get
    connections; with them gone, the port refuses connections and stays held."""
    held = reserve(TcpListen(socket.AF_INET, 0, "127.0.0.1"))
    port = held.getsockname()[1]
    listen = TcpListen(socket.AF_INET, port, "127.0.0.1")
    a, b = reuse_port_socket(listen), reuse_port_socket(listen)
    clients = [socket.create_connection(("127.0.0.1", port)) for _ in range(32)]
    time.sleep(0.1)
    accepted = {}
    for name, s in (("a", a), ("b", b)):
        n = 0
        while True:
            try:
                s.accept()[0].close()
                n += 1
            except BlockingIOError:
                break
        accepted[name] = n
    assert accepted["a"] + accepted["b"] == 32 and min(accepted.values()) > 0, accepted
    for s in (a, b, *clients):
        s.close()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=1)
    other = socket.socket()
    with pytest.raises(OSError):
        other.bind(("127.0.0.1", port))
    other.close()
    held.close()


def _config(*argv: str, env: dict[str, str] | None = None) -> NodeConfig:
    return NodeConfig.from_args(build_parser().parse_args(["serve", *argv]), env or {})


def test_workers_setting() -> None:
    """Default 1, a number, or auto (one per CPU), from flag or KGW_WORKERS."""
    assert _config().workers == 1
    assert _config("--workers", "3").workers == 3
    assert _config(env={"KGW_WORKERS": "auto"}).workers == (os.cpu_count() or 1)
    for bad in ("0", "-1", "two"):
        with pytest.raises(SettingError, match="--workers / KGW_WORKERS"):
            _config("--workers", bad)


@pytest.mark.parametrize("listen", ["ssl:8443:privateKey=tests/data/nokey.pem",
                                    "unix:/tmp/kgw.sock", "haproxy:tcp:8080"])
def test_workers_refuse_an_endpoint_they_cannot_share(listen: str) -> None:
    """Above 1, --workers needs a tcp: --listen endpoint; the error names both flags."""
    config = NodeConfig(listen=listen, workers=2)  # the combination, as check() sees it
    with pytest.raises(SettingError, match="--workers 2 .*--listen"):
        config.check()
    NodeConfig(listen=listen, workers=1).check()  # one worker: any endpoint, as before


def test_workers_refuse_a_metrics_endpoint_without_a_port() -> None:
    with pytest.raises(SettingError, match="--workers 2 .*--metrics-listen"):
        NodeConfig(workers=2, metrics_listen="unix:/tmp/m.sock").check()
    with pytest.raises(SettingError, match="--metrics-listen"):
        NodeConfig(workers=3, metrics_listen="tcp:65534").check()
    NodeConfig(workers=2, metrics_listen="").check()


def test_reuse_port_needs_tcp() -> None:
    with pytest.raises(SettingError, match="--reuse-port .*--listen"):
        NodeConfig(listen="unix:/tmp/kgw.sock", reuse_port=True).check()


def test_worker_argv_gives_each_worker_its_own_id_metrics_port_and_the_shared_port() -> None:
    """Every flag is passed on except the per-worker ones; metrics port + k, 0 and empty
    kept as they are."""
    argv = ["--workers", "2", "--node-id", "gw", "--listen", "tcp:0:interface=127.0.0.1",
            "--metrics-listen", "tcp:9100:interface=127.0.0.1", "--drain-timeout-s", "3"]
    args = build_parser().parse_args(["serve", *argv])
    config = NodeConfig.from_args(args, {})
    got = worker_argv(config, args, 1, 4321)
    assert got[:4] == [sys.executable, "-m", "gateway.cli", "serve"]
    flags = dict(zip(got[4::2], got[5::2], strict=True))
    assert flags == {"--drain-timeout-s": "3", "--workers": "1", "--reuse-port": "true",
                     "--node-id": "gw-1", "--listen": "tcp:4321:interface=127.0.0.1",
                     "--metrics-listen": "tcp:9101:interface=127.0.0.1"}
    for metrics in ("", "tcp:0"):
        config2 = NodeConfig(node_id="gw", workers=2, metrics_listen=metrics)
        assert worker_argv(config2, args, 1, 4321)[-1] == metrics
    # the child parses what it is given, as one node
    child = NodeConfig.from_args(build_parser().parse_args(got[3:]), {})
    assert (child.workers, child.reuse_port, child.node_id) == (1, True, "gw-1")


def _python(code: str) -> list[str]:
    return [sys.executable, "-c", code]


FAST = RestartPolicy(stable_s=1.0, first_delay_s=0.05, max_delay_s=0.2, max_quick_deaths=3)


def test_supervisor_gives_up_on_a_worker_that_keeps_dying() -> None:
    """A worker that exits at once is started max_quick_deaths times, then the supervisor
    stops the others and returns 1."""
    lines: list[str] = []
    starts = _python("print('up', flush=True); raise SystemExit(3)")
    forever = _python("import time; time.sleep(60)")
    sup = Supervisor(NodeConfig(node_id="n", workers=2, drain_timeout_s=0),
                     [starts, forever], policy=FAST, write=lines.append)
    t0 = time.monotonic()
    assert sup.supervise() == 1
    assert time.monotonic() - t0 < 10
    assert lines.count("[n-0] up") == 3
    assert all(w.child is None or not w.child.alive() for w in sup.workers)


def test_supervisor_restarts_a_killed_worker_and_forwards_sigterm() -> None:
    """A SIGKILLed worker is started again; on a signal every worker gets SIGTERM and the
    supervisor returns 0 once they exit."""
    lines: list[str] = []
    worker = _python("import signal, sys, time, os\n"
                     "signal.signal(signal.SIGTERM, lambda *a: (print('term', flush=True),"
                     " sys.exit(0)))\n"
                     "print('pid', os.getpid(), flush=True)\n"
                     "time.sleep(60)")
    sup = Supervisor(NodeConfig(node_id="n", workers=2, drain_timeout_s=1),
                     [worker, worker], policy=FAST, write=lines.append)
    done: list[int] = []
    runner = threading.Thread(target=lambda: done.append(sup.supervise()))
    runner.start()
    try:
        deadline = time.monotonic() + 10
        while sum(1 for line in lines if " pid " in line) < 2:
            assert time.monotonic() < deadline, lines
            time.sleep(0.05)
        first = [w.child.pid for w in sup.workers if w.child]  # type: ignore[union-attr]
        os.kill(first[0], signal.SIGKILL)
        while sum(1 for line in lines if "[n-0] pid" in line) < 2:
            assert time.monotonic() < deadline, lines
            time.sleep(0.05)
        assert sup.workers[0].child is not None and sup.workers[0].child.pid != first[0]
        assert sup.workers[1].child is not None and sup.workers[1].child.pid == first[1]
    finally:
        time.sleep(0.3)  # let the new worker install its handler
        sup.on_signal(signal.SIGTERM, None)
        runner.join(30)
    assert done == [0]
    assert "[n-0] term" in lines and "[n-1] term" in lines


def test_nodes_with_reuse_port_listen_on_one_port() -> None:
    """Two nodes with --reuse-port listen on the same tcp: port of the real reactor, each
    through an adopted SO_REUSEPORT socket (Twisted's endpoint strings cannot ask for one),
    and the socket made for the adoption is closed: one descriptor per port."""
    from twisted.internet import reactor

    from gateway.node import Node
    from gateway.testing import RecordingBus

    held = reserve(TcpListen(socket.AF_INET, 0, "127.0.0.1"))
    port = held.getsockname()[1]
    config = NodeConfig(listen=f"tcp:{port}:interface=127.0.0.1", reuse_port=True,
                        metrics_listen="")
    nodes = [Node(config, reactor, bus=RecordingBus()) for _ in range(2)]
    ports = [nodes[0]._listen_shared()]
    fds = len(os.listdir("/proc/self/fd"))  # after the first: the reactor's own are made
    ports.append(nodes[1]._listen_shared())
    try:
        assert len(os.listdir("/proc/self/fd")) == fds + 1
        assert [p.getHost().port for p in ports] == [port, port]
        assert all(p.connected for p in ports)  # type: ignore[attr-defined]
    finally:
        for p in ports:
            p.stopListening()
        held.close()
