"""Ceiling: a minimal peer bridge, ``websockets`` + aiokafka doing the gateway's job.

What a user would write instead of the gateway: a ``websockets`` server on
asyncio with one handler per connection. The first text frame is parsed with
the gateway's codec (``parse_start``) and published as ``CallStarted`` on
``<prefix>.calls.inbound`` (keyed by call id, ``reply_topic`` set to
``<prefix>.calls.commands.<node-id>``); each binary frame becomes a
``CallerAudio`` record (seq, media position, receive time), later text frames
``ProviderEvent`` records, and the close one ``CallEnded``: the same record
content as the gateway's. One consumer reads the node's commands topic (no
group, partition 0 from its end) and sends ``PlayAudio`` as ``playAudio``
frames (wave), ``HangUp`` and ``Transfer`` as their control frames, on the
socket of the call (a dict from call id to connection).

Deliberately left out, and so not paid for here, unlike the gateway: the
audit topic (``<prefix>.calls.outbound``, one more record per clip sent), playout
pacing (bot audio goes to the provider as soon as it is consumed, in one frame
per command, so ``clear`` and ``mark`` are ignored), resampling (``PlayAudio``
at a rate other than the call's is counted as an error and dropped), buffer
accounting during a Kafka outage (``producer.send`` simply blocks the
connection's handler), per-call send queues (commands are sent one after the
other, so a socket that stops reading holds up the commands of every call),
timeouts, flood limits, auth, metrics and draining.

    python -m kgw_bench.peer_bridge --listen-port P --kafka HOST:PORT \
        --topic-prefix PREFIX --node-id ID

Prints ``event=ready`` once listening with its topics created and the command
consumer positioned, runs until SIGTERM (or Ctrl-C), closes the sockets (1001),
publishes their ``CallEnded``, flushes, prints one JSON line of counters and
exits 0. ``cpu_s`` is the CPU time from ready to exit; ``cpu_total_s`` includes
start-up.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import signal
import sys
import time
import uuid
from collections.abc import Sequence
from http import HTTPStatus
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from gateway import records, topics
from gateway.adapter.paths import match_path
from gateway.core import model as m
from gateway.core.errors import CloseCode, ProtocolError
from gateway.core.knowlarity import (
    PcmAligner,
    encode_hang_up,
    encode_play_audio,
    encode_transfer,
    parse_start,
)
from gateway.kafka_access import from_env, target

PATHS = ("/vaani/knowlarity/setup-call-streams", "/knowlarity-stream")




def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


class _Live:
    __slots__ = ("ws", "rate", "hung_up")

    def __init__(self, ws: ServerConnection, rate: int) -> None:
        self.ws = ws
        self.rate = rate
        self.hung_up = False


class PeerBridge:
    def __init__(self, args: argparse.Namespace) -> None:
        self.kafka = args.kafka
        self.node_id = args.node_id
        self.inbound = topics.inbound_topic(args.topic_prefix)
        self.commands = topics.commands_topic(args.topic_prefix, args.node_id)
        self.partitions = args.inbound_partitions
        self.linger_ms = args.linger_ms
        self.calls: dict[str, _Live] = {}
        self.stopping = False
        self.producer: AIOKafkaProducer | None = None
        self.c = {"frames_in": 0, "frames_out": 0, "records_produced": 0, "records_failed": 0,
                  "commands_consumed": 0, "commands_ignored": 0, "errors": 0, "calls": 0}

    # --- Kafka -------------------------------------------------------------------

    async def start_kafka(self) -> AIOKafkaConsumer:
        admin = AIOKafkaAdminClient(**target(self.kafka, from_env()))
        await admin.start()
        try:
            existing = set(await admin.list_topics())
            new = [NewTopic(t, p, 1) for t, p in ((self.inbound, self.partitions),
                                                  (self.commands, 1)) if t not in existing]
            if new:
                try:
                    await admin.create_topics(new)
                except TopicAlreadyExistsError:
                    pass
        finally:
            await admin.close()
        self.producer = AIOKafkaProducer(**target(self.kafka, from_env()), acks="all",
                                         enable_idempotence=True, linger_ms=self.linger_ms)
        await self.producer.start()
        consumer = AIOKafkaConsumer(**target(self.kafka, from_env()),
                                    enable_auto_commit=False)
        await consumer.start()
        tp = TopicPartition(self.commands, 0)
        consumer.assign([tp])
        await consumer.seek_to_end(tp)
        await consumer.position(tp)
        return consumer

    async def publish(self, call_id: str, record_seq: int, body: m.InboundBody) -> None:
        assert self.producer is not None
        value = records.encode_inbound(m.Inbound(call_id, record_seq, time.time(), body),
                                       self.node_id)
        try:
            fut = await self.producer.send(self.inbound, value, key=call_id.encode())
        except KafkaError:
            self.c["records_failed"] += 1
            return
        fut.add_done_callback(self._acked)

    def _acked(self, fut: asyncio.Future[Any]) -> None:
        if fut.cancelled() or fut.exception() is not None:
            self.c["records_failed"] += 1
        else:
            self.c["records_produced"] += 1

    async def consume_commands(self, consumer: AIOKafkaConsumer) -> None:
        while True:
            try:
                batches = await consumer.getmany(timeout_ms=1000, max_records=500)
            except KafkaError:
                self.c["errors"] += 1
                await asyncio.sleep(1)
                continue
            for msgs in batches.values():
                for msg in msgs:
                    await self.command(msg.value or b"")

    async def command(self, value: bytes) -> None:
        self.c["commands_consumed"] += 1
        try:
            cmd = records.decode_command(value)
        except records.BadRecord:
            self.c["errors"] += 1
            return
        live = self.calls.get(cmd.call_id)
        if live is None or live.hung_up:
            self.c["commands_ignored"] += 1
            return
        body = cmd.body
        if isinstance(body, m.PlayAudio):
            if body.sample_rate != live.rate or len(body.pcm) % 2:
                self.c["errors"] += 1  # no resampling here
                return
            frame = encode_play_audio(body.pcm, live.rate)
        elif isinstance(body, m.HangUp):
            frame, live.hung_up = encode_hang_up(), True
        elif isinstance(body, m.Transfer):
            try:
                frame = encode_transfer(body.parameters)
            except ValueError:
                self.c["errors"] += 1
                return
            live.hung_up = True
        else:  # clear, mark: nothing is held back, so nothing to do
            self.c["commands_ignored"] += 1
            return
        try:
            await live.ws.send(frame)
        except ConnectionClosed:
            return
        self.c["frames_out"] += 1

    # --- sockets -----------------------------------------------------------------

    def check_path(self, ws: ServerConnection, request: Request) -> Response | None:
        if self.stopping:
            return ws.respond(HTTPStatus.SERVICE_UNAVAILABLE, "draining\n")
        if not match_path(request.path.partition("?")[0], PATHS)[0]:
            return ws.respond(HTTPStatus.NOT_FOUND, "unknown path\n")
        return None

    async def handle(self, ws: ServerConnection) -> None:
        c = self.c
        path = ws.request.path.partition("?")[0] if ws.request is not None else ""
        try:
            first = await ws.recv()
        except ConnectionClosed:
            return
        c["frames_in"] += 1
        if not isinstance(first, str):
            c["errors"] += 1
            await ws.close(CloseCode.UNSUPPORTED_DATA, "audio before the start message")
            return
        try:
            path_id = match_path(path, PATHS)[1]
            start = parse_start(first, fallback_call_id=path_id or str(uuid.uuid4()))
        except ProtocolError as e:
            c["errors"] += 1
            await ws.close(int(e.close_code), e.reason[:123])
            return
        call_id, rate = start.call_id, start.sample_rate
        live = _Live(ws, rate)
        previous = self.calls.get(call_id)
        if previous is not None:
            await previous.ws.close(CloseCode.REPLACED, "replaced")
        self.calls[call_id] = live
        c["calls"] += 1
        started_at = time.time()
        record_seq = audio_seq = media = 0
        await self.publish(call_id, record_seq, m.CallStarted(start, self.commands, path))
        record_seq += 1
        aligner = PcmAligner()
        try:
            async for msg in ws:
                c["frames_in"] += 1
                now = time.time()
                if isinstance(msg, str):
                    body: m.InboundBody = m.ProviderEvent(msg, now)
                else:
                    pcm = aligner.push(msg)
                    if not pcm:
                        continue
                    body = m.CallerAudio(audio_seq, media, now, pcm, rate)
                    audio_seq += 1
                    media += len(pcm) // 2
                await self.publish(call_id, record_seq, body)
                record_seq += 1
        except ConnectionClosed:
            pass
        if self.calls.get(call_id) is live:
            del self.calls[call_id]
        code = ws.close_code or 0
        if live.hung_up:
            reason = m.EndReason.BOT_HANGUP
        elif self.stopping:
            reason = m.EndReason.NODE_SHUTDOWN
        elif code == CloseCode.REPLACED:
            reason = m.EndReason.REPLACED
        elif code in (1000, 1001):
            reason = m.EndReason.CALLER_HANGUP
        else:
            reason = m.EndReason.CONNECTION_LOST
        await self.publish(call_id, record_seq, m.CallEnded(
            reason, ws.close_reason or "", code, audio_seq, media,
            max(0, int((time.time() - started_at) * 1000))))


async def run(args: argparse.Namespace) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    bridge = PeerBridge(args)
    consumer = await bridge.start_kafka()
    commands = asyncio.ensure_future(bridge.consume_commands(consumer))
    async with serve(bridge.handle, args.listen_host, args.listen_port,
                     process_request=bridge.check_path, compression=None,
                     max_size=args.max_frame_bytes, ping_interval=None) as server:
        cpu0, wall0 = _cpu(), time.monotonic()
        print("event=ready", flush=True)
        await stop.wait()
        bridge.stopping = True
        # Closes every socket with 1001 and waits for the handlers (their CallEnded).
        server.close()
        await server.wait_closed()
    commands.cancel()
    await consumer.stop()
    assert bridge.producer is not None
    await bridge.producer.flush()
    await bridge.producer.stop()
    out: dict[str, Any] = dict(bridge.c)
    out["cpu_s"] = round(_cpu() - cpu0, 4)
    out["cpu_total_s"] = round(_cpu(), 4)
    out["wall_s"] = round(time.monotonic() - wall0, 4)
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m kgw_bench.peer_bridge",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--listen-port", type=int, default=8080, help="TCP port (default 8080)")
    p.add_argument("--listen-host", default="127.0.0.1", help="address (default 127.0.0.1)")
    p.add_argument("--kafka", default="127.0.0.1:9092", help="bootstrap servers")
    p.add_argument("--topic-prefix", default="knowlarity", help="prefix of every topic name")
    p.add_argument("--node-id", default="peer", help="names this bridge's commands topic")
    p.add_argument("--linger-ms", type=int, default=5, help="producer linger (default 5)")
    p.add_argument("--inbound-partitions", type=int, default=12,
                   help="partitions if the inbound topic is created (default 12)")
    p.add_argument("--max-frame-bytes", type=int, default=65536,
                   help="largest message accepted (default 65536)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        topics.check_name_part("--topic-prefix", args.topic_prefix)
        topics.check_name_part("--node-id", args.node_id)
    except ValueError as e:
        print(f"peer_bridge: {e}", file=sys.stderr)
        return 2
    print(json.dumps(asyncio.run(run(args))), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
