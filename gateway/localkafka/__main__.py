"""python -m gateway.localkafka {fetch,start,stop,run}: the local Kafka broker from a shell.

`start` and `run` take --brokers N for an N-node cluster (LocalKafkaCluster) instead."""

from __future__ import annotations

import argparse
import signal
import sys
import time
from pathlib import Path

from . import (
    KAFKA_VERSION,
    LocalKafka,
    LocalKafkaCluster,
    LocalKafkaError,
    fetch,
    is_fetched,
    secure,
)
from .cluster import CLUSTER_FILE

_HEAP_MB = 512  # LocalKafka's; a cluster node defaults to LocalKafkaCluster's


def _kafka(args: argparse.Namespace) -> LocalKafka | LocalKafkaCluster:
    """The single broker, or with --brokers N > 1 the cluster, that start/run asks for."""
    if args.brokers < 1:
        raise LocalKafkaError("--brokers must be at least 1")
    if args.brokers == 1:
        return LocalKafka(args.data_dir, args.port, args.heap_mb or _HEAP_MB, secure=args.secure)
    if args.secure:
        raise LocalKafkaError("--secure is for a single broker")
    if args.port is not None:
        raise LocalKafkaError("--port is for a single broker; a cluster picks free ports")
    if args.heap_mb:
        return LocalKafkaCluster(args.brokers, args.data_dir, args.heap_mb)
    return LocalKafkaCluster(args.brokers, args.data_dir)


def _running(kafka: LocalKafka | LocalKafkaCluster) -> bool:
    if isinstance(kafka, LocalKafka):
        return kafka.running
    return all(kafka.running(i) for i in range(kafka.brokers))


def _print_secure(kafka: LocalKafka | LocalKafkaCluster) -> None:
    """The settings a client needs for the SASL_SSL listener (the password stays in its file)."""
    s = kafka.secure_listener if isinstance(kafka, LocalKafka) else None
    if s is None:
        return
    print(f"secure: KGW_KAFKA={s.bootstrap} KGW_KAFKA_SECURITY_PROTOCOL=SASL_SSL "
          f"KGW_KAFKA_SASL_MECHANISM=SCRAM-SHA-512 KGW_KAFKA_SASL_USERNAME={secure.USER} "
          f"KGW_KAFKA_SASL_PASSWORD_FILE={s.password_file} KGW_KAFKA_SSL_CA_FILE={s.ca_file}",
          flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gateway.localkafka", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    fetch_cmd = sub.add_parser("fetch", help="download the broker's jars into the cache (once)")
    fetch_cmd.add_argument("-v", "--verbose", action="store_true", help="show Maven's output")
    start = sub.add_parser("start", help="start a broker in the background and print its bootstrap")
    stop = sub.add_parser("stop", help="stop the broker that `start` left in --data-dir")
    run = sub.add_parser("run", help="run a broker in the foreground until Ctrl-C or SIGTERM")
    for cmd in (start, stop):
        cmd.add_argument("--data-dir", type=Path, default=Path(".kafka"), help="default: ./.kafka")
    run.add_argument("--data-dir", type=Path, help="default: a temporary dir, removed on exit")
    for cmd in (start, run):
        cmd.add_argument("--port", type=int, help="broker port; another free one if unset or taken")
        cmd.add_argument(
            "--brokers", type=int, default=1, help="N > 1: an N-broker KRaft cluster (default 1)"
        )
        cmd.add_argument(
            "--heap-mb", type=int, help=f"per broker; default {_HEAP_MB}, in a cluster 128"
        )
        cmd.add_argument(
            "--timeout", type=float, default=90.0, help="seconds to wait for the broker"
        )
        cmd.add_argument(
            "--secure", action="store_true",
            help="also a SASL_SSL listener (PLAIN, SCRAM-SHA-256/512, unsecured OAUTHBEARER) "
                 "with a CA and password made on the fly; prints the client settings")
    args = parser.parse_args(argv)

    try:
        if args.command == "fetch":
            if args.verbose and not is_fetched():
                print(f"== Kafka {KAFKA_VERSION}'s jars from Maven Central (first run only, "
                      "about 100 MB) ...", flush=True)
                began = time.monotonic()
                libs = fetch(quiet=False)
                print(f"== Kafka jars fetched in {time.monotonic() - began:.0f} s", flush=True)
            else:
                libs = fetch(quiet=not args.verbose)
            print(f"kafka jars: {libs}")
        elif args.command == "start":
            kafka = _kafka(args)
            print(f"kafka: {kafka.start(args.timeout)}", flush=True)
            _print_secure(kafka)
            # The broker has its own session and outlives us; `stop` finds it by its pid file.
        elif args.command == "stop":
            if (args.data_dir / CLUSTER_FILE).exists():
                LocalKafkaCluster(data_dir=args.data_dir).stop()
            else:
                LocalKafka(args.data_dir).stop()
        else:
            # SystemExit unwinds through the finally below, which stops the broker.
            signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
            kafka = _kafka(args)
            try:
                print(f"kafka: {kafka.start(args.timeout)}", flush=True)
                _print_secure(kafka)
                while _running(kafka):
                    time.sleep(0.5)
                print("localkafka: the broker exited on its own", file=sys.stderr)
                return 1
            except KeyboardInterrupt:
                return 0
            finally:
                kafka.stop()
    except LocalKafkaError as err:
        print(f"localkafka: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
