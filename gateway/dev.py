"""``knowlarity-gateway dev``: a local Kafka, a gateway node and the echo bot.

For a newcomer's first call. Each piece runs as its own process (as in
production), with its output prefixed here. Ctrl-C or SIGTERM stops them all,
broker included.
"""

from __future__ import annotations

import argparse
import shutil
import signal
import socket
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from gateway import localkafka
from gateway.children import Child
from gateway.settings import (
    DEFAULT_TOPIC_PREFIX,
    TOPIC_PREFIX,
    Setting,
    SettingError,
    add_settings,
    boolean,
    from_args,
    with_defaults,
)

DEFAULT_PATH = "/vaani/knowlarity/setup-call-streams"
# Printed by the echo bot once it holds its partitions; dev waits for it.
BOT_READY_MARK = "event=bot_ready"


@dataclass(frozen=True)
class DevSettings:
    port: int = 8080
    metrics_port: int = 9100
    kafka_port: int = 9092
    topic_prefix: str = DEFAULT_TOPIC_PREFIX
    data_dir: str = ""
    bot: bool = True


def _port_number(text: str) -> int:
    port = int(text)
    if not 0 <= port < 65536:
        raise ValueError(f"must be a TCP port, 0 to 65535 (0: any free one), got {text!r}")
    return port


DEV_SETTINGS: tuple[Setting, ...] = with_defaults((
    Setting("port", "KGW_DEV_PORT", None, "WebSocket port (a free one is used if taken)",
            _port_number),
    Setting("metrics_port", "KGW_DEV_METRICS_PORT", None,
            "metrics/health port (a free one if taken)", _port_number),
    Setting("kafka_port", "KGW_DEV_KAFKA_PORT", None, "Kafka port (a free one if taken)",
            _port_number),
    TOPIC_PREFIX,
    Setting("data_dir", "KGW_DEV_DATA_DIR", None,
            "broker data directory (empty: a temporary one, removed on exit)"),
    Setting("bot", "KGW_DEV_BOT", None, "start the echo bot", boolean),
), DevSettings())


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_settings(p, DEV_SETTINGS)


def _port(preferred: int) -> int:
    for candidate in (preferred, 0):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", candidate))
            except OSError:
                continue
            return int(s.getsockname()[1])
    raise RuntimeError("no free port")


def _child(name: str, argv: list[str], watch: Callable[[str], None] | None = None) -> Child:
    """A child process whose output lines are echoed with a prefix and watched."""

    def on_line(line: str) -> None:
        print(f"[{name}] {line}", flush=True)
        if watch:
            watch(line)

    return Child(name, argv, on_line=on_line)


def _wait(what: str, ok: Callable[[], bool], children: list[Child], timeout: float) -> None:
    """Wait for ``what``, saying so, and how long it took."""
    print(f"waiting for {what} ...", flush=True)
    began = time.monotonic()
    deadline = began + timeout
    while not ok():
        for c in children:
            if not c.alive():
                raise RuntimeError(f"{c.name} exited with {c.returncode} while waiting "
                                   f"for {what}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.2)
    print(f"  {what}: ready in {time.monotonic() - began:.1f} s", flush=True)


def command_hint() -> str:
    """``knowlarity-gateway`` as the user can type it here: the bare name if the shell
    finds this very install, else its path (``.venv/bin/knowlarity-gateway``)."""
    script = Path(sys.executable).parent / "knowlarity-gateway"
    found = shutil.which("knowlarity-gateway")
    if found and Path(found).resolve() == script.resolve():
        return "knowlarity-gateway"
    if not script.exists():
        return f"{sys.executable} -m gateway"
    try:
        return str(script.relative_to(Path.cwd()))
    except ValueError:
        return str(script)


def http_ready(url: str) -> bool:
    """Does the URL answer 200 (a node's /readyz)?"""
    try:
        with urllib.request.urlopen(url, timeout=1) as r:
            return bool(r.status == 200)
    except OSError:
        return False


def run(args: argparse.Namespace) -> int:
    try:
        settings: DevSettings = from_args(DevSettings(), DEV_SETTINGS, args)
    except SettingError as e:
        print(f"knowlarity-gateway dev: {e}", file=sys.stderr)
        return 2
    return _run(settings)


def _run(settings: DevSettings) -> int:
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    kafka = localkafka.LocalKafka(data_dir=Path(settings.data_dir) if settings.data_dir else None,
                                  port=_port(settings.kafka_port))
    children: list[Child] = []
    try:
        print("starting Kafka (the first run downloads its jars from Maven Central) ...",
              flush=True)
        began = time.monotonic()
        bootstrap = kafka.start()
        print(f"  Kafka at {bootstrap}: ready in {time.monotonic() - began:.1f} s", flush=True)
        ws_port, metrics_port = _port(settings.port), _port(settings.metrics_port)
        py = [sys.executable, "-m", "gateway"]
        node = _child("gateway", py + [
            "serve", "--listen", f"tcp:{ws_port}:interface=127.0.0.1", "--kafka", bootstrap,
            "--node-id", "dev-node", "--topic-prefix", settings.topic_prefix,
            "--metrics-listen", f"tcp:{metrics_port}:interface=127.0.0.1",
            "--drain-timeout-s", "2",
        ])
        children.append(node)
        _wait(f"the gateway to answer http://127.0.0.1:{metrics_port}/readyz",
              lambda: http_ready(f"http://127.0.0.1:{metrics_port}/readyz"), children, 90)
        if settings.bot:
            bot_ready = threading.Event()
            bot = _child("bot", py + ["bot", "echo", "--kafka", bootstrap,
                                      "--topic-prefix", settings.topic_prefix],
                         watch=lambda line: BOT_READY_MARK in line and bot_ready.set())
            children.append(bot)
            _wait("the echo bot to hold its partitions", bot_ready.is_set, children, 90)
        url = f"ws://127.0.0.1:{ws_port}{DEFAULT_PATH}"
        print(url)
        print(f"kafka: {bootstrap}")
        print(f"metrics: http://127.0.0.1:{metrics_port}/metrics")
        print(f"place a call:  {command_hint()} simulate --url {url} --calls 3 --seconds 5",
              flush=True)
        while not stop.wait(0.5):
            for c in children:
                if not c.alive():
                    print(f"{c.name} exited with {c.returncode}; stopping", flush=True)
                    return 1
        return 0
    except (RuntimeError, localkafka.LocalKafkaError) as e:
        print(f"knowlarity-gateway dev: {e}", file=sys.stderr, flush=True)
        return 1
    finally:
        print("stopping ...", flush=True)
        for c in reversed(children):
            c.stop()
        kafka.stop()
        print("stopped", flush=True)
