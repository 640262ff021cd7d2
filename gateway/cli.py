"""``knowlarity-gateway``: the entry point, and the only place that installs a reactor."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from types import ModuleType
from typing import Any

from gateway import version
from gateway.settings import Setting, SettingError


def install_reactor() -> None:
    """Twisted on asyncio, so aiokafka and Autobahn share one loop."""
    from twisted.internet import asyncioreactor

    asyncio.set_event_loop(loop := asyncio.new_event_loop())
    asyncioreactor.install(loop)


def _serve(args: argparse.Namespace) -> int:
    from gateway.config import NodeConfig

    config = NodeConfig.from_args(args)  # fails before any reactor work on a bad setting
    if config.workers > 1:  # a supervisor of worker nodes: no reactor, no Kafka here
        from gateway.workers.supervisor import run

        return run(config, args)
    install_reactor()
    from twisted.internet import reactor
    from twisted.logger import Logger

    from gateway.bridge import as_deferred
    from gateway.clock import LoopClock
    from gateway.kafka_access import AccessError, describe
    from gateway.node import Node
    from gateway.ops.logs import start_logging

    start_logging(config.log_format, config.log_level, node_id=config.node_id)
    log = Logger()
    log.info("Kafka at {kafka}: {access}", kafka=config.kafka, access=describe(config.kafka_access))
    # One monotonic clock for the calls' timers and Autobahn's handshake timers.
    clock = LoopClock(asyncio.get_event_loop())
    node = Node(config, reactor, clock=clock, handshake_clock=clock)
    status = {"code": 0}
    started: list[asyncio.Future[None]] = []

    def failed(f: Any) -> None:
        if f.check(AccessError):  # wrong credentials or TLS: say so, no traceback
            log.error("node failed to start: {why}", why=f.getErrorMessage())
        else:
            log.failure("node failed to start", failure=f)
        status["code"] = 1
        reactor.stop()

    async def watch_failure() -> None:
        await node.failed.wait()
        status["code"] = 1
        reactor.stop()

    def start() -> None:
        task = asyncio.ensure_future(node.start())
        started.append(task)
        as_deferred(task).addErrback(
            lambda f: None if f.check(asyncio.CancelledError) else failed(f))
        started.append(asyncio.ensure_future(watch_failure()))

    def stop() -> object:
        # SIGTERM while still waiting for Kafka: give up waiting, then shut down.
        for task in started:
            task.cancel()
        return as_deferred(node.shutdown())

    reactor.callWhenRunning(start)
    # Ctrl-C / SIGTERM stop the reactor; this trigger drains calls first.
    reactor.addSystemEventTrigger("before", "shutdown", stop)
    reactor.run()
    return status["code"]


def command_settings() -> dict[str, tuple[Setting, ...]]:
    """Every command's settings table, by the words that run it (the README has each)."""
    from gateway.audit.command import AUDIT_SETTINGS
    from gateway.bot.echo import ECHO_BOT_SETTINGS
    from gateway.bot.ivr import IVR_BOT_SETTINGS
    from gateway.config import NODE_SETTINGS
    from gateway.configure_number import CONFIGURE_NUMBER_SETTINGS
    from gateway.dev import DEV_SETTINGS
    from gateway.replay import REPLAY_SETTINGS
    from gateway.simulator.command import SIMULATE_SETTINGS

    tables = {"serve": NODE_SETTINGS, "bot echo": ECHO_BOT_SETTINGS, "bot ivr": IVR_BOT_SETTINGS,
              "simulate": SIMULATE_SETTINGS, "audit": AUDIT_SETTINGS,
              "replay": REPLAY_SETTINGS, "dev": DEV_SETTINGS,
              "configure-number": CONFIGURE_NUMBER_SETTINGS}
    try:
        bench = _bench_command()
    except ImportError:
        return tables
    return {**tables, "bench": bench.BENCH_SETTINGS}


def build_parser() -> argparse.ArgumentParser:
    from gateway import configure_number, dev, replay, simulator
    from gateway.audit import command as audit
    from gateway.bot import echo, ivr
    from gateway.config import add_node_arguments

    parser = argparse.ArgumentParser(
        prog="knowlarity-gateway",
        description="Knowlarity call-audio WebSockets <-> Apache Kafka gateway",
    )
    parser.add_argument("--version", action="version",
                        version=f"knowlarity-gateway {version()}")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run a gateway node")
    add_node_arguments(serve)
    serve.set_defaults(func=_serve)

    bot = sub.add_parser("bot", help="run an example bot")
    bots = bot.add_subparsers(dest="bot", required=True)
    _command(bots, "echo", "greets, echoes the caller, hangs up on silence", echo)
    _command(bots, "ivr", "plays a prompt, takes barge-in, records the answer, transfers or "
                          "hangs up", ivr)
    _command(sub, "simulate", "place simulated Knowlarity calls", simulator)
    _command(sub, "audit", "rebuild a call from the bus: stereo WAV, timeline, summary, HTML "
                           "page; or --list the calls", audit)
    _command(sub, "replay", "place a recorded call again, from the bus", replay)
    _command(sub, "configure-number", "point a Knowlarity number at a gateway (the "
                                      "provider's update_wss_url API)", configure_number)
    _command(sub, "dev", "local Kafka + gateway + echo bot, in the foreground", dev)
    _add_bench(sub)
    return parser


def _command(sub: argparse._SubParsersAction[argparse.ArgumentParser], name: str, help_: str,
             module: ModuleType) -> None:
    """A subcommand whose module has ``add_arguments(parser)`` and ``run(args)``."""
    p = sub.add_parser(name, help=help_)
    module.add_arguments(p)
    p.set_defaults(func=module.run)


BENCH_MISSING = ("knowlarity-gateway bench: the benchmark tooling is not installed (it is not"
                 " part of the runtime package); from a checkout: make install, or"
                 " pip install -e '.[bench]' -e ./bench")


def _add_bench(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``bench`` from a dev install; elsewhere a ``bench`` that says how to get it."""
    help_ = "measure CPU, memory and latency under N calls"
    try:
        bench_command = _bench_command()
    except ImportError as e:
        why = str(e)
        # No options and '-' not a prefix, so `bench --calls 5` also gets the message.
        stub = sub.add_parser("bench", help=f"{help_} (not installed)", add_help=False,
                              prefix_chars="\0")
        stub.add_argument("ignored", nargs="*")
        stub.set_defaults(func=lambda args: _bench_missing(why))
        return
    bench_p = sub.add_parser("bench", help=help_)
    bench_command.add_arguments(bench_p)
    bench_p.set_defaults(func=bench_command.run)


def _bench_command() -> ModuleType:
    # A checkout's dev install only: the runtime wheel (and the image) has no kgw_bench.
    from kgw_bench import command

    return command


def _bench_missing(why: str) -> int:
    print(f"{BENCH_MISSING}\n  ({why})", file=sys.stderr)
    return 2


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except SettingError as e:
        print(f"knowlarity-gateway: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
