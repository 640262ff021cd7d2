"""A throwaway multi-broker KRaft cluster on 127.0.0.1, for tests where a broker dies.

Each broker is its own JVM running broker and controller together (as LocalKafka's single
node does); their controllers form a static quorum of all nodes, so a 3-node cluster
keeps serving when any one node dies, whether it led a partition, the quorum, or both.

    with LocalKafkaCluster(brokers=3) as cluster:
        use(cluster.bootstrap)                  # "127.0.0.1:P0,127.0.0.1:P1,127.0.0.1:P2"
        victim = cluster.leader("topic", 0)     # broker index, which is also its node.id
        cluster.kill(victim)                    # SIGKILL
        cluster.wait_for_leader("topic", 0, other_than=victim)
        cluster.restart(victim)                 # same data dir, same ports

Topic defaults are a real cluster's (3 replicas, min.insync.replicas=2), and the timeouts
are short so that a killed broker is fenced, and its partitions get new leaders, within
seconds. Command line: ``python -m gateway.localkafka {start,run} --brokers 3``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from gateway.ports import free_ports

from . import (
    _BOOTSTRAP_FILE,
    _FAST_START_FLAGS,
    _JVM_FLAGS,
    _LOG_FILE,
    _PID_FILE,
    _PROPS_FILE,
    _STEADY_FLAGS,
    _STORAGE_DIR,
    LocalKafkaError,
    _java_cmd,
    _metadata_ok,
    _new_cluster_id,
    _require,
    _run_sync,
    _runs_from,
    _tail,
    fetch,
)

__all__ = ["CLUSTER_FILE", "CLUSTER_SETTINGS", "LocalKafkaCluster", "PartitionState"]

# In data_dir, beside one broker-N dir per node: marks the dir as a cluster's, so the
# CLI's `stop` knows to stop every node in it.
CLUSTER_FILE = "cluster"

# Every setting here was checked against Kafka 4.1.2: a broker that starts with them
# logs each in its "KafkaConfig values" (INFO) and none as unknown.
CLUSTER_SETTINGS = {
    # A real cluster's topic defaults: acks=all survives one dead broker, not two.
    "default.replication.factor": "3",
    "min.insync.replicas": "2",
    "offsets.topic.replication.factor": "3",
    "transaction.state.log.replication.factor": "3",
    "transaction.state.log.min.isr": "2",
    # Fast fencing: the active controller fences a broker that has not heartbeaten for
    # broker.session.timeout.ms (default 9 s; 2 s heartbeats), which moves leadership
    # off it and drops it from every ISR.
    "broker.heartbeat.interval.ms": "500",
    "broker.session.timeout.ms": "3000",
    # A follower that stops fetching (frozen, not dead) leaves the ISR after this (default 30 s).
    "replica.lag.time.max.ms": "5000",
    # A restarted broker retries its fetches from the others sooner (default 1 s).
    "replica.fetch.backoff.ms": "200",
    # The quorum's own timeouts stay at their defaults: fetch 2 s, election 1 s. Lower
    # ones start spurious controller elections on a busy 2-core machine.
    # The log cleaner allocates this buffer on the heap at start-up (default 128 MiB, which
    # alone fails a 128 MiB heap); 8 MiB still dedupes ~300k keys per pass.
    "log.cleaner.dedupe.buffer.size": str(8 << 20),
    # Internal topics: few partitions, as in LocalKafka, so the first group or
    # transaction does not wait for 50 partitions to be created.
    "offsets.topic.num.partitions": "1",
    "transaction.state.log.num.partitions": "1",
    "group.initial.rebalance.delay.ms": "0",
    "num.partitions": "1",
    "auto.create.topics.enable": "false",
}


@dataclass(frozen=True)
class PartitionState:
    """One partition as Metadata describes it; brokers are named by index (= node.id)."""

    leader: int | None
    replicas: tuple[int, ...]
    isr: tuple[int, ...]


class _Node:
    """One broker+controller JVM of the cluster: its dir, ports and process."""

    def __init__(self, index: int, data_dir: Path) -> None:
        self.index = index
        self.dir = data_dir / f"broker-{index}"
        self.port = 0
        self.controller_port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        if self.proc is not None:
            return self.proc.pid
        try:
            return int((self.dir / _PID_FILE).read_text())
        except (OSError, ValueError):
            return None

    @property
    def running(self) -> bool:
        if self.proc is not None:
            return self.proc.poll() is None
        pid = self.pid
        return pid is not None and _runs_from(pid, self.dir)

    @property
    def props(self) -> Path:
        return self.dir / _PROPS_FILE

    def wait_gone(self, until: float) -> bool:
        """Wait until the JVM has exited (and is reaped, if ours); whether it did by `until`."""
        while self.running:  # polls, so reaps, our own Popen
            if time.monotonic() > until:
                return False
            time.sleep(0.05)
        return True


class LocalKafkaCluster:
    """`brokers` combined broker+controller KRaft nodes on 127.0.0.1, started fresh by start()."""

    def __init__(
        self, brokers: int = 3, data_dir: Path | None = None, heap_mb: int = 128,
        fast_start: bool = True,
    ) -> None:
        """Each node gets -Xmx`heap_mb` (-Xms half of it); ``fast_start`` as for LocalKafka."""
        if brokers < 1:
            raise ValueError("a cluster needs at least one broker")
        self._jvm_flags = _JVM_FLAGS + (_FAST_START_FLAGS if fast_start else _STEADY_FLAGS)
        self._own_dir = data_dir is None
        self.data_dir = (
            Path(tempfile.mkdtemp(prefix="localkafka-cluster-"))
            if data_dir is None
            else Path(data_dir).resolve()
        )
        self.heap_mb = heap_mb
        self._nodes = [_Node(i, self.data_dir) for i in range(brokers)]
        self._bootstrap: str | None = None
        self._java: tuple[str, Path] | None = None  # java and the jar dir, once started

    @property
    def brokers(self) -> int:
        return len(self._nodes)

    @property
    def bootstrap(self) -> str:
        """Every broker's address, "127.0.0.1:P0,127.0.0.1:P1,...", dead ones included."""
        if self._bootstrap is None:
            raise LocalKafkaError("LocalKafkaCluster is not started")
        return self._bootstrap

    def pid(self, index: int) -> int | None:
        """PID of broker `index`'s JVM: this object's, else the one recorded in its dir."""
        return self._nodes[index].pid

    def running(self, index: int) -> bool:
        """Whether broker `index`'s JVM is up (not whether it serves yet)."""
        return self._nodes[index].running

    def _cmd(self, node: _Node, *args: str) -> list[str]:
        assert self._java is not None
        java, libs = self._java
        xms = max(self.heap_mb // 2, 16)
        return _java_cmd(java, libs, xms, self.heap_mb, self._jvm_flags, node.dir, *args)

    def _write_properties(self, node: _Node, voters: str) -> None:
        storage = node.dir / _STORAGE_DIR
        props = {
            "node.id": str(node.index),
            "process.roles": "broker,controller",
            "listeners": (
                f"PLAINTEXT://127.0.0.1:{node.port},CONTROLLER://127.0.0.1:{node.controller_port}"
            ),
            "advertised.listeners": f"PLAINTEXT://127.0.0.1:{node.port}",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "inter.broker.listener.name": "PLAINTEXT",
            "controller.listener.names": "CONTROLLER",
            # A static quorum of every node: formats without --initial-controllers.
            "controller.quorum.voters": voters,
            "log.dirs": str(storage),
            "metadata.log.dir": str(storage),
            **CLUSTER_SETTINGS,
        }
        node.props.write_text("".join(f"{k}={v}\n" for k, v in props.items()))

    def _launch(self, node: _Node) -> None:
        with open(node.dir / _LOG_FILE, "ab") as out:
            # Own session: Ctrl-C in the caller's terminal must not kill it behind our back.
            node.proc = subprocess.Popen(
                self._cmd(node, "kafka.Kafka", str(node.props)),
                cwd=node.dir,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        (node.dir / _PID_FILE).write_text(f"{node.proc.pid}\n")

    def _wait_registered(self, deadline: float, timeout: float) -> None:
        """Wait until Metadata lists every broker; fail early if a node's JVM exits."""
        bootstrap = self.bootstrap
        while not _metadata_ok(bootstrap, timeout=2.0, brokers=self.brokers):
            for node in self._nodes:
                if node.proc is not None and node.proc.poll() is not None:
                    raise LocalKafkaError(
                        f"Kafka broker {node.index} exited with {node.proc.returncode};"
                        f" its log ends:\n{_tail(node.dir / _LOG_FILE)}"
                    )
            if time.monotonic() > deadline:
                logs = "\n".join(
                    f"--- broker {n.index}:\n{_tail(n.dir / _LOG_FILE, 15)}" for n in self._nodes
                )
                raise LocalKafkaError(
                    f"the cluster did not list {self.brokers} brokers on {bootstrap}"
                    f" within {timeout:.0f}s; the logs end:\n{logs}"
                )
            time.sleep(0.2)

    def start(self, timeout: float = 90.0) -> str:
        """Format fresh storage, launch every node, return bootstrap once all are registered."""
        if any(node.running for node in self._nodes):
            raise LocalKafkaError(
                f"a cluster from {self.data_dir} is already running; stop it first"
            )
        libs = fetch()
        self._java = (_require("java", "Debian: apt-get install default-jdk-headless"), libs)
        deadline = time.monotonic() + timeout
        try:
            self.data_dir.mkdir(parents=True, exist_ok=True)
            (self.data_dir / _BOOTSTRAP_FILE).unlink(missing_ok=True)
            # Written first, so `stop` can find the nodes even if this process dies.
            (self.data_dir / CLUSTER_FILE).write_text(f"{self.brokers}\n")
            for old in self.data_dir.glob("broker-*"):
                shutil.rmtree(old, ignore_errors=True)
            ports = free_ports(2 * self.brokers)
            for node in self._nodes:
                node.port, node.controller_port = ports[2 * node.index : 2 * node.index + 2]
                node.dir.mkdir()
                (node.dir / _LOG_FILE).write_bytes(b"")
            voters = ",".join(f"{n.index}@127.0.0.1:{n.controller_port}" for n in self._nodes)
            for node in self._nodes:
                self._write_properties(node, voters)

            # One cluster id for all; the JVMs start in parallel, formats included.
            cluster_id = _new_cluster_id()
            formats = [
                subprocess.Popen(
                    self._cmd(node, "kafka.tools.StorageTool", "format")
                    + ["-t", cluster_id, "-c", str(node.props)],
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                )
                for node in self._nodes
            ]
            failed = []
            for node, fmt in zip(self._nodes, formats, strict=True):
                try:
                    out, _ = fmt.communicate(timeout=max(deadline - time.monotonic(), 1.0))
                except subprocess.TimeoutExpired:
                    fmt.kill()
                    out, _ = fmt.communicate()
                if fmt.returncode != 0:
                    failed.append(f"broker {node.index}: {out.decode(errors='replace')}")
            if failed:
                raise LocalKafkaError("formatting Kafka's storage failed:\n" + "\n".join(failed))

            for node in self._nodes:
                self._launch(node)
            self._bootstrap = ",".join(f"127.0.0.1:{n.port}" for n in self._nodes)
            self._wait_registered(deadline, timeout)
        except BaseException:
            self.stop()  # also removes a temp data dir; the error carries the logs' tails
            raise
        (self.data_dir / _BOOTSTRAP_FILE).write_text(self.bootstrap + "\n")
        return self.bootstrap

    def kill(self, index: int) -> None:
        """SIGKILL broker `index` (no controlled shutdown) and reap it; its dir stays."""
        node = self._nodes[index]
        pid = node.pid
        if pid is not None and node.running:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            if not node.wait_gone(time.monotonic() + 10):
                raise LocalKafkaError(f"broker {index} (pid {pid}) survived SIGKILL")

    def restart(self, index: int, timeout: float = 60.0) -> None:
        """Launch broker `index` again (same storage, same ports) and wait until it is registered.

        Blocks; from async code call it as ``await asyncio.to_thread(cluster.restart, i)``.
        """
        node = self._nodes[index]
        if self._bootstrap is None or self._java is None:
            raise LocalKafkaError("restart() needs a cluster this object started")
        if node.running:
            raise LocalKafkaError(f"broker {index} is still running; kill() it first")
        self._launch(node)
        self._wait_registered(time.monotonic() + timeout, timeout)

    def stop(self, timeout: float = 30.0) -> None:
        """Stop every node by its PID and clean up; remove data_dir if this object made it.

        Nodes get SIGTERM (SIGKILL after `timeout` s), except a temporary cluster's, which
        are SIGKILLed at once: their storage is deleted anyway, and brokers shutting down
        together can wait seconds for a quorum that is shutting down too.
        """
        nodes = {n.index: n for n in self._nodes_on_disk()}
        nodes.update((n.index, n) for n in self._nodes)  # ours carry their Popen handles
        live = [(n, pid) for n in nodes.values() if n.running and (pid := n.pid) is not None]
        for _, pid in live:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL if self._own_dir else signal.SIGTERM)
        end = time.monotonic() + timeout
        for node, pid in live:
            if not node.wait_gone(end):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                if not node.wait_gone(time.monotonic() + 10):
                    raise LocalKafkaError(f"broker {node.index} (pid {pid}) survived SIGKILL")
        for node in self._nodes:
            node.proc = None
        self._bootstrap = None
        if self._own_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)
        else:
            for node in nodes.values():
                (node.dir / _PID_FILE).unlink(missing_ok=True)
            for name in (_BOOTSTRAP_FILE, CLUSTER_FILE):
                (self.data_dir / name).unlink(missing_ok=True)

    def _nodes_on_disk(self) -> list[_Node]:
        """The nodes whose dirs are in data_dir, say the ones `start` left for the CLI's `stop`."""
        found = []
        for d in self.data_dir.glob("broker-*"):
            index = d.name.removeprefix("broker-")
            if index.isdigit():
                found.append(_Node(int(index), self.data_dir))
        return found

    def partition(self, topic: str, partition: int = 0, timeout: float = 5.0) -> PartitionState:
        """The leader, replicas and ISR of `topic`/`partition`, from a Metadata request.

        Raises whatever aiokafka raises if no live broker answers within `timeout` s.
        Blocks; from async code call it as ``await asyncio.to_thread(cluster.partition, t)``.
        """
        from aiokafka.admin import AIOKafkaAdminClient

        async def describe() -> PartitionState:
            admin = AIOKafkaAdminClient(
                bootstrap_servers=self.bootstrap, request_timeout_ms=int(timeout * 1000)
            )
            await admin.start()
            try:
                (described,) = await admin.describe_topics([topic])
            finally:
                await admin.close()
            if described["error_code"]:
                raise LocalKafkaError(f"Metadata for {topic}: error {described['error_code']}")
            for p in described["partitions"]:
                if p["partition"] == partition:
                    leader = p["leader"]
                    return PartitionState(
                        leader if leader >= 0 else None, tuple(p["replicas"]), tuple(p["isr"])
                    )
            raise LocalKafkaError(f"{topic} has no partition {partition}")

        return _run_sync(describe())

    def leader(self, topic: str, partition: int = 0) -> int | None:
        """Index of the broker leading `topic`/`partition`, or None while it has no leader."""
        return self.partition(topic, partition).leader

    def wait_for_leader(
        self, topic: str, partition: int = 0, other_than: int | None = None,
        timeout: float = 30.0,
    ) -> int:
        """Poll Metadata until `topic`/`partition` has a leader other than `other_than`; return it.

        Blocks; from async code call it through ``asyncio.to_thread``.
        """
        deadline = time.monotonic() + timeout
        while True:
            try:
                leader = self.partition(topic, partition, timeout=2.0).leader
                if leader is not None and leader != other_than:
                    return leader
            except Exception:
                pass  # e.g. the request went to the broker just killed
            if time.monotonic() > deadline:
                raise LocalKafkaError(
                    f"{topic}/{partition} got no leader other than {other_than}"
                    f" within {timeout:.0f}s"
                )
            time.sleep(0.1)

    def __enter__(self) -> LocalKafkaCluster:
        if self._bootstrap is None:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
