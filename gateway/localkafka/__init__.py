"""The project's own throwaway Apache Kafka broker, for tests, CI and local development.

A single-node KRaft broker (broker and controller in one JVM), listening only on
127.0.0.1, run from the Maven Central jars named in pom.xml with the system's
`java`: no Docker and no Kafka tarball, since neither can be fetched here.

    with LocalKafka() as kafka:
        use(kafka.bootstrap)            # "127.0.0.1:PORT"

For fault tests, ``LocalKafkaCluster`` (gateway/localkafka/cluster.py) runs three
such nodes as one cluster, whose brokers can be killed and restarted.

Command line: ``python -m gateway.localkafka {fetch,start,stop,run} [--brokers 3]``.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import fcntl
import hashlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Coroutine
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

from gateway.localkafka import secure
from gateway.localkafka.secure import SecureListener
from gateway.ports import free_ports

__all__ = [
    "KAFKA_VERSION",
    "LocalKafka",
    "LocalKafkaCluster",
    "LocalKafkaError",
    "PartitionState",
    "fetch",
    "is_fetched",
    "jars_dir",
]

_HERE = Path(__file__).resolve().parent
_POM = _HERE / "pom.xml"
_LOG4J_CONFIG = _HERE / "log4j2.properties"
_MARKER = ".complete"
# Files a started broker leaves in its data dir, so another process (the CLI's
# `stop`) can find it.
_PID_FILE = "kafka.pid"
_BOOTSTRAP_FILE = "bootstrap"
_LOG_FILE = "kafka.log"  # also named in log4j2.properties
_PROPS_FILE = "server.properties"
_STORAGE_DIR = "kraft"
# log4j's shutdown hook is off because it only warns when a thread logs during
# shutdown; the file appender flushes every line anyway.
_JVM_FLAGS = (
    "-Djava.awt.headless=true",
    "-Dlog4j2.shutdownHookEnabled=false",
)
# Startup is most of a test run's broker cost; C1-only JIT and the serial GC
# start noticeably faster and the broker never gets hot enough to miss C2.
_FAST_START_FLAGS = ("-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1")
# For benchmarks: a broker that stays up long enough for C2 to pay off, and
# does not stall requests on a single-threaded collector.
_STEADY_FLAGS = ("-XX:+UseParallelGC",)

_T = TypeVar("_T")


def _pom_property(name: str) -> str:
    for el in ET.parse(_POM).getroot().iter("{http://maven.apache.org/POM/4.0.0}" + name):
        if el.text:
            return el.text.strip()
    raise LookupError(f"{name} not set in {_POM}")


KAFKA_VERSION = _pom_property("kafka.version")


class LocalKafkaError(RuntimeError):
    """The local broker could not be fetched, started or stopped."""


def jars_dir() -> Path:
    """The jar cache: $KGW_KAFKA_LIBS, else ~/.cache/knowlarity-gateway/kafka-VERSION/libs."""
    override = os.environ.get("KGW_KAFKA_LIBS")
    if override:
        return Path(override).expanduser()
    return Path.home() / ".cache" / "knowlarity-gateway" / f"kafka-{KAFKA_VERSION}" / "libs"


def _pom_digest() -> str:
    # The marker records which pom filled the cache, so editing the pom refetches.
    return hashlib.sha256(_POM.read_bytes()).hexdigest()[:16]


def _is_complete(libs: Path) -> bool:
    try:
        return (libs / _MARKER).read_text().strip() == _pom_digest()
    except OSError:
        return False


def _require(tool: str, hint: str) -> str:
    if tool == "java" and os.environ.get("JAVA_HOME"):
        java = Path(os.environ["JAVA_HOME"]) / "bin" / "java"
        if os.access(java, os.X_OK):
            return str(java)
    found = shutil.which(tool)
    if not found:
        raise LocalKafkaError(
            f"`{tool}` not found on PATH; the local Kafka broker needs it ({hint})"
        )
    return found


def _tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return f"(no {path})"


def is_fetched() -> bool:
    """Whether the jar cache is complete (``fetch`` would download nothing)."""
    return _is_complete(jars_dir())


def fetch(quiet: bool = True) -> Path:
    """Fill the jar cache with Maven unless it is already complete, and return its path."""
    libs = jars_dir()
    if _is_complete(libs):
        return libs
    mvn = _require("mvn", "Debian: apt-get install maven")
    _require("java", "Debian: apt-get install default-jdk-headless")
    libs.parent.mkdir(parents=True, exist_ok=True)
    # Parallel test processes may all find the cache empty: one downloads, the rest wait.
    with open(libs.parent / f"{libs.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _is_complete(libs):
            return libs
        # Download beside the cache and rename it into place only once complete,
        # so a killed download never looks like a cache.
        tmp = Path(tempfile.mkdtemp(prefix=f"{libs.name}.partial-", dir=libs.parent))
        try:
            cmd = [
                mvn,
                "-B",
                "-f",
                str(_POM),
                "dependency:copy-dependencies",
                f"-Dlocalkafka.libs={tmp}",
            ]
            if quiet:
                cmd.insert(1, "-q")
            out = subprocess.PIPE if quiet else None
            done = subprocess.run(
                cmd, stdout=out, stderr=subprocess.STDOUT if quiet else None, text=True
            )
            if done.returncode != 0:
                tail = "\n".join((done.stdout or "").splitlines()[-40:])
                raise LocalKafkaError(
                    f"mvn failed (exit {done.returncode}) fetching Kafka jars:\n{tail}"
                )
            (tmp / _MARKER).write_text(_pom_digest() + "\n")
            tmp.chmod(0o755)  # mkdtemp makes it private; the cache is not
            shutil.rmtree(libs, ignore_errors=True)
            tmp.rename(libs)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return libs


def _new_cluster_id() -> str:
    """A random Kafka cluster id: a UUID in unpadded URL-safe base64, as the storage tool makes."""
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        if not cluster_id.startswith("-"):  # the storage tool would read it as an option
            return cluster_id


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # an unreaped zombie (the CLI's detached broker, if nothing reaps orphans) is dead
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def _runs_from(pid: int, data_dir: Path) -> bool:
    """Whether `pid` is still the broker started from data_dir, not a reuse of its PID."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except FileNotFoundError:
        return _alive(pid) and not Path("/proc/self").exists()  # no procfs: trust the pid file
    except OSError:
        return False
    return str(data_dir / _PROPS_FILE).encode() in cmdline and _alive(pid)


def _java_cmd(
    java: str, libs: Path, xms_mb: int, xmx_mb: int, flags: tuple[str, ...], logs_dir: Path,
    *args: str,
) -> list[str]:
    """The command line of one of the broker's JVMs (the broker itself or its StorageTool)."""
    return [
        java,
        f"-Xms{xms_mb}m",
        f"-Xmx{xmx_mb}m",
        *flags,
        f"-Dlog4j2.configurationFile={_LOG4J_CONFIG}",
        f"-Dkafka.logs.dir={logs_dir}",
        "-cp",
        f"{libs}/*",
        *args,
    ]


def _run_sync(coro: Coroutine[Any, Any, _T]) -> _T:
    """Run `coro` to completion from sync code, even if this thread already runs an event loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    # Called from async code (say an async fixture): asyncio.run needs a thread without a loop.
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


def _metadata_ok(bootstrap: str, timeout: float, brokers: int = 1) -> bool:
    """Whether Metadata lists at least `brokers` brokers (an open port is not enough).

    `bootstrap` may name several "host:port"s, comma-separated.
    """
    for address in bootstrap.split(","):
        try:
            host, port = address.rsplit(":", 1)
            socket.create_connection((host, int(port)), timeout=timeout).close()
            break
        except OSError:
            pass
    else:
        return False  # cheap check first, so aiokafka is only asked once something listens

    from aiokafka import AIOKafkaClient

    async def probe() -> bool:
        client = AIOKafkaClient(bootstrap_servers=bootstrap, request_timeout_ms=int(timeout * 1000))
        try:
            await client.bootstrap()
            return len(client.cluster.brokers()) >= brokers
        except Exception:
            return False
        finally:
            await client.close()

    # A refused probe is expected while the broker starts; aiokafka would log each one as an error.
    logger = logging.getLogger("aiokafka")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        return _run_sync(probe())
    finally:
        logger.setLevel(level)


class LocalKafka:
    """One single-node KRaft broker on 127.0.0.1, started fresh (empty storage) by start()."""

    def __init__(
        self, data_dir: Path | None = None, port: int | None = None, heap_mb: int = 512,
        fast_start: bool = True, secure: bool = False,
    ) -> None:
        """``fast_start`` (tests, dev) trades steady-state speed for start-up time.
        ``secure`` adds a SASL_SSL listener (``secure_listener``; see ``secure.py``)."""
        self._jvm_flags = _JVM_FLAGS + (_FAST_START_FLAGS if fast_start else _STEADY_FLAGS)
        self._own_dir = data_dir is None
        self.data_dir = (
            Path(tempfile.mkdtemp(prefix="localkafka-"))
            if data_dir is None
            else Path(data_dir).resolve()
        )
        self.port = port
        self.heap_mb = heap_mb
        self._proc: subprocess.Popen[bytes] | None = None
        self._bootstrap: str | None = None
        self._secure = secure
        self.secure_listener: SecureListener | None = None

    @property
    def bootstrap(self) -> str:
        """The running broker's address, "127.0.0.1:PORT"."""
        if self._bootstrap is None:
            raise LocalKafkaError("LocalKafka is not started")
        return self._bootstrap

    @property
    def pid(self) -> int | None:
        """PID of the broker's JVM: this object's, else the one recorded in data_dir."""
        if self._proc is not None:
            return self._proc.pid
        try:
            return int((self.data_dir / _PID_FILE).read_text())
        except (OSError, ValueError):
            return None

    @property
    def running(self) -> bool:
        """Whether the broker's JVM is up (not whether it serves yet)."""
        pid = self.pid
        if self._proc is not None:
            return self._proc.poll() is None
        return pid is not None and _runs_from(pid, self.data_dir)

    def _java(self, java: str, libs: Path, *args: str) -> list[str]:
        return _java_cmd(
            java, libs, self.heap_mb, self.heap_mb, self._jvm_flags, self.data_dir, *args
        )

    def _write_properties(self, port: int, controller_port: int) -> Path:
        storage = self.data_dir / _STORAGE_DIR
        listeners = f"PLAINTEXT://127.0.0.1:{port}"
        protocols = "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT"
        extra: dict[str, str] = {}
        if self.secure_listener is not None:
            listeners += f",{secure.LISTENER}://127.0.0.1:{self.secure_listener.port}"
            protocols += f",{secure.LISTENER}:{secure.LISTENER}"
            extra = secure.broker_properties(self.secure_listener)
        props = {
            "node.id": "1",
            "process.roles": "broker,controller",
            "listeners": f"{listeners},CONTROLLER://127.0.0.1:{controller_port}",
            "advertised.listeners": listeners,
            "listener.security.protocol.map": protocols,
            "inter.broker.listener.name": "PLAINTEXT",
            "controller.listener.names": "CONTROLLER",
            # A static one-voter quorum: formats without --standalone, needs no KIP-853 bootstrap.
            "controller.quorum.voters": f"1@127.0.0.1:{controller_port}",
            "log.dirs": str(storage),
            "metadata.log.dir": str(storage),
            "num.partitions": "1",
            "auto.create.topics.enable": "false",
            "min.insync.replicas": "1",
            "group.initial.rebalance.delay.ms": "0",
            # Internal topics default to 3 replicas, which one broker cannot host, and to
            # 50 partitions, which cost seconds when the first group or transaction appears.
            "offsets.topic.replication.factor": "1",
            "offsets.topic.num.partitions": "1",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "transaction.state.log.num.partitions": "1",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
            **extra,
        }
        path = self.data_dir / _PROPS_FILE
        path.write_text("".join(f"{k}={v}\n" for k, v in props.items()))
        return path

    def start(self, timeout: float = 90.0) -> str:
        """Format fresh storage, launch the broker, return its bootstrap once it serves Metadata."""
        if self.running:
            raise LocalKafkaError(
                f"a broker from {self.data_dir} is already running (pid {self.pid}); stop it first"
            )
        libs = fetch()
        java = _require("java", "Debian: apt-get install default-jdk-headless")
        deadline = time.monotonic() + timeout
        log = self.data_dir / _LOG_FILE
        try:
            self.data_dir.mkdir(parents=True, exist_ok=True)
            for name in (_PID_FILE, _BOOTSTRAP_FILE):
                (self.data_dir / name).unlink(missing_ok=True)
            shutil.rmtree(self.data_dir / _STORAGE_DIR, ignore_errors=True)
            log.write_bytes(b"")
            port, controller_port, secure_port = free_ports(3, self.port)
            scram: list[str] = []
            if self._secure:
                made = secure.make(self.data_dir / "secure")
                self.secure_listener = dataclasses.replace(made, port=secure_port)
                scram = secure.storage_args(self.secure_listener)
            props = str(self._write_properties(port, controller_port))

            fmt = subprocess.run(
                self._java(java, libs, "kafka.tools.StorageTool", "format")
                + ["-t", _new_cluster_id(), "-c", props, *scram],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                timeout=max(deadline - time.monotonic(), 1.0),
            )
            if fmt.returncode != 0:
                raise LocalKafkaError(f"formatting Kafka's storage failed:\n{fmt.stdout}")

            with open(log, "ab") as out:
                # Own session: Ctrl-C in the caller's terminal must not kill it behind our back.
                self._proc = subprocess.Popen(
                    self._java(java, libs, "kafka.Kafka", props),
                    cwd=self.data_dir,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            (self.data_dir / _PID_FILE).write_text(f"{self._proc.pid}\n")
            bootstrap = f"127.0.0.1:{port}"
            while not _metadata_ok(bootstrap, timeout=2.0):
                if self._proc.poll() is not None:
                    raise LocalKafkaError(
                        f"Kafka exited with {self._proc.returncode} while starting;"
                        f" its log ends:\n{_tail(log)}"
                    )
                if time.monotonic() > deadline:
                    raise LocalKafkaError(
                        f"Kafka did not answer on {bootstrap} within {timeout:.0f}s;"
                        f" its log ends:\n{_tail(log)}"
                    )
                time.sleep(0.2)
        except BaseException:
            self.stop()  # also removes a temp data dir; the error carries the log's tail
            raise
        self._bootstrap = bootstrap
        (self.data_dir / _BOOTSTRAP_FILE).write_text(bootstrap + "\n")
        return bootstrap

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM the broker (SIGKILL after `timeout` s); remove data_dir if LocalKafka made it."""
        pid = self.pid
        if self._proc is not None:
            if self._proc.poll() is None:
                self._proc.terminate()
                try:
                    self._proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    self._proc.kill()
                    self._proc.wait(10)
        elif pid is not None and _runs_from(pid, self.data_dir):
            os.kill(pid, signal.SIGTERM)
            end = time.monotonic() + timeout
            while _alive(pid) and time.monotonic() < end:
                time.sleep(0.1)
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
                while _alive(pid) and time.monotonic() < end + 10:
                    time.sleep(0.1)
        self._proc = None
        self._bootstrap = None
        if self._own_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)
        else:
            for name in (_PID_FILE, _BOOTSTRAP_FILE):
                (self.data_dir / name).unlink(missing_ok=True)

    def __enter__(self) -> LocalKafka:
        if self._proc is None:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


# At the end: cluster.py builds on the helpers above.
from .cluster import LocalKafkaCluster, PartitionState  # noqa: E402
