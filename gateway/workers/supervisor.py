"""The supervisor of ``serve --workers N``: N worker nodes, restarted when they die.

No reactor and no Kafka: each worker is ``knowlarity-gateway serve`` in a process
(and session) of its own, with this command line except its node id
(``<node-id>-<k>``: its own commands topic and lease), its metrics port (the
given one + k; 0 and empty stay as they are) and its listen port, shared with
SO_REUSEPORT. The supervisor holds that port bound (not listening) for its whole
life, so that a restarting worker finds it and nobody else takes it; with
``tcp:0`` it is also where the one port every worker is given comes from.

A worker that dies is started again under the same node id, so it ends the
calls its last lease listed (NODE_LOST) before it listens again. SIGTERM or
SIGINT is forwarded as SIGTERM to every worker; they drain (their own
--drain-timeout-s) and flush; what is still running after --drain-timeout-s +
``STOP_MARGIN_S`` is SIGKILLed with its process group. A second signal kills at
once. The supervisor exits 0 then, or 1 after giving up on a worker.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from twisted.logger import Logger

from gateway.children import Child, kill_process
from gateway.config import NODE_SETTINGS, NodeConfig
from gateway.settings import as_argv
from gateway.workers.endpoints import TcpListen, port_of, reserve, with_port
from gateway.workers.policy import GiveUp, RestartPolicy, WorkerHistory

__all__ = ["STOP_MARGIN_S", "run", "worker_argv"]

log = Logger()

# Past the drain: ending the rest (Autobahn's 5 s close handshake), flushing the
# bus (up to 10 s) and closing the lease.
STOP_MARGIN_S = 20.0
POLL_S = 0.1

# What each worker is given on its own; every other flag is passed as it came.
_PER_WORKER = {"workers", "reuse_port", "node_id", "listen", "metrics_listen"}


def worker_argv(config: NodeConfig, args: argparse.Namespace, k: int, port: int) -> list[str]:
    """The command line of worker ``k`` on the shared ``port``."""
    passed = as_argv(args, [s for s in NODE_SETTINGS if s.name not in _PER_WORKER])
    metrics = config.metrics_listen
    base = port_of(metrics) if metrics else None
    if base:  # 0 (any free port) and empty (none) mean the same for every worker
        metrics = with_port(metrics, base + k)
    return [sys.executable, "-m", "gateway.cli", "serve", *passed,
            "--workers", "1", "--reuse-port", "true", "--node-id", f"{config.node_id}-{k}",
            "--listen", with_port(config.listen, port), "--metrics-listen", metrics]


def _status(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit status {code}"


@dataclass
class _Worker:
    k: int
    node_id: str
    argv: list[str]
    child: Child | None = None
    started_at: float = 0.0
    restart_at: float | None = 0.0  # when to start it (next); None while it runs
    history: WorkerHistory = field(default_factory=WorkerHistory)


class Supervisor:
    def __init__(self, config: NodeConfig, argvs: Sequence[list[str]], *,
                 policy: RestartPolicy | None = None,
                 now: Callable[[], float] = time.monotonic,
                 write: Callable[[str], None] | None = None) -> None:
        self.config = config
        self.policy = policy or RestartPolicy()
        self.now = now
        self._write = write or _stdout_line
        self.workers = [_Worker(k, f"{config.node_id}-{k}", list(a)) for k, a in enumerate(argvs)]
        self.signals = 0
        self._wake = threading.Event()

    def on_signal(self, signum: int, frame: Any) -> None:
        self.signals += 1
        self._wake.set()

    def _start(self, w: _Worker) -> None:
        prefix = "" if self.config.log_format == "json" else f"[{w.node_id}] "
        w.child = Child(w.node_id, w.argv, on_line=lambda line: self._write(prefix + line))
        w.started_at, w.restart_at = self.now(), None
        log.info("worker {k} started: node {node_id}, pid {pid}", k=w.k, node_id=w.node_id,
                 pid=w.child.pid)

    def _reap(self, w: _Worker) -> bool:
        """Handle ``w``'s exit, if it exited; False when the supervisor must give up."""
        if w.child is None or (code := w.child.returncode) is None:
            return True
        ran = self.now() - w.started_at
        decision, w.history = self.policy.after_exit(w.history, ran)
        pid, w.child = w.child.pid, None
        if isinstance(decision, GiveUp):
            log.error("worker {k} (node {node_id}, pid {pid}) {status} after {ran:.1f}s: dead "
                      "within {stable:g}s of its start {n} times in a row, giving up",
                      k=w.k, node_id=w.node_id, pid=pid, status=_status(code), ran=ran,
                      n=decision.quick_deaths, stable=self.policy.stable_s)
            return False
        w.restart_at = self.now() + decision.delay_s
        log.warn("worker {k} (node {node_id}, pid {pid}) {status} after {ran:.1f}s; "
                 "restarting in {delay:g}s", k=w.k, node_id=w.node_id, pid=pid,
                 status=_status(code), ran=ran, delay=decision.delay_s)
        return True

    def supervise(self) -> int:
        """Run the workers until a signal (0) or a worker given up on (1)."""
        try:  # whatever happens here, no worker outlives the supervisor's stop
            while not self.signals:
                if not all(self._reap(w) for w in self.workers):
                    return 1
                for w in self.workers:
                    if w.restart_at is not None and self.now() >= w.restart_at:
                        self._start(w)
                self._wake.wait(POLL_S)
            return 0
        finally:
            self.stop()

    def stop(self) -> None:
        """SIGTERM to every worker, a bounded wait for them to drain, SIGKILL to the rest."""
        running = [w.child for w in self.workers if w.child is not None and w.child.alive()]
        wait_s = self.config.drain_timeout_s + STOP_MARGIN_S
        log.info("stopping {n} workers (up to {t:g}s to drain)", n=len(running), t=wait_s)
        for c in running:
            c.proc.send_signal(signal.SIGTERM)
        signals, deadline = self.signals, self.now() + wait_s
        self._wake.clear()
        while any(c.alive() for c in running) and self.now() < deadline:
            if self.signals > max(signals, 1):
                log.warn("second signal: killing the workers now")
                break
            self._wake.wait(POLL_S)
        for c in running:
            if c.alive():
                log.warn("worker {name} (pid {pid}) still running: SIGKILL", name=c.name,
                         pid=c.pid)
            kill_process(c.proc)
            c.wait_output(2.0)


_write_lock = threading.Lock()


def _stdout_line(line: str) -> None:
    # Workers' lines come from reading threads: each is written whole.
    with _write_lock:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


def run(config: NodeConfig, args: argparse.Namespace) -> int:
    """``serve --workers N`` with N above 1 (``config.check`` made sure the endpoints fit)."""
    from gateway.ops.logs import start_logging

    start_logging(config.log_format, config.log_level, node_id=config.node_id)
    listen = TcpListen.from_endpoint(config.listen)
    assert listen is not None, "NodeConfig.check refuses --workers with other endpoints"
    try:
        held = reserve(listen)
    except OSError as e:
        log.error("cannot bind {addr} port {port}: {why}", addr=listen.interface,
                  port=listen.port, why=e.strerror)
        return 1
    with held:
        port = held.getsockname()[1]
        argvs = [worker_argv(config, args, k, port) for k in range(config.workers)]
        supervisor = Supervisor(config, argvs)
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, supervisor.on_signal)
        log.info("supervising {n} workers of node {node_id} on port {port} (SO_REUSEPORT)",
                 n=config.workers, node_id=config.node_id, port=port)
        return supervisor.supervise()
