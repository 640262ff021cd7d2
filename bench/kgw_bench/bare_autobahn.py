"""Ceiling: the bare Autobahn path, echoing caller audio as playAudio with no Kafka.

What is left of the gateway's socket side when the per-call core, the bus and
the playout are taken away: Autobahn's ``WebSocketServerProtocol`` on Twisted's
asyncio reactor (installed as ``gateway.cli.install_reactor`` does), the
gateway's protocol options, its path check, ``parse_start`` on the first text
frame, and for every binary frame ``PcmAligner.push`` and one ``playAudio``
frame back (``encode_play_audio``, wave) carrying the same PCM. Whatever the
gateway costs above this is the price of the core, the bus and the playout.

    python -m kgw_bench.bare_autobahn --listen tcp:PORT:interface=127.0.0.1

Prints ``event=ready`` once listening, runs until SIGTERM (or Ctrl-C), then
prints one JSON line of counters and exits 0. ``cpu_s`` there is the process's
CPU time (user + system) from ready to exit; ``cpu_total_s`` includes start-up.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
import uuid
from collections.abc import Sequence
from typing import Any

from gateway.cli import install_reactor
from gateway.config import NodeConfig
from gateway.core.errors import CloseCode, ProtocolError
from gateway.core.knowlarity import AudioContentType, PcmAligner, encode_play_audio, parse_start

_DEFAULTS = NodeConfig()


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


class Counters:
    def __init__(self) -> None:
        self.frames_in = 0
        self.frames_out = 0
        self.records_produced = 0
        self.commands_consumed = 0
        self.errors = 0
        self.calls = 0

    def as_dict(self) -> dict[str, Any]:
        return dict(vars(self))


def build_factory(counters: Counters, paths: Sequence[str], max_frame_bytes: int,
                  echo_every: int = 1) -> Any:
    """The server factory; imported lazily so the reactor is installed first."""
    from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
    from autobahn.util import encode_truncate
    from autobahn.websocket.types import ConnectionDeny, ConnectionRequest

    from gateway.adapter.paths import match_path

    accepted = tuple(paths)
    wave = AudioContentType.WAVE

    class EchoProtocol(WebSocketServerProtocol):
        rate = 0
        call_id = ""
        aligner: PcmAligner | None = None

        def onOpen(self) -> None:
            self.held: list[bytes] = []

        def onConnect(self, request: ConnectionRequest) -> str | None:
            ok, path_id = match_path(request.path, accepted)
            if not ok:
                raise ConnectionDeny(404, "unknown path")
            self.call_id = path_id or str(uuid.uuid4())
            return request.protocols[0] if request.protocols else None

        def onMessage(self, payload: bytes, isBinary: bool) -> None:
            counters.frames_in += 1
            if isBinary:
                aligner = self.aligner
                if aligner is None:
                    self._refuse(CloseCode.UNSUPPORTED_DATA, "audio before the start message")
                    return
                pcm = aligner.push(payload)
                if pcm:
                    # Echo every Nth frame's worth, joined, to mirror a gateway that
                    # aggregates N frames per record (the bot then echoes N at once).
                    self.held.append(pcm)
                    if len(self.held) >= echo_every:
                        joined = b"".join(self.held)
                        self.held.clear()
                        self.sendMessage(encode_play_audio(joined, self.rate, wave).encode(),
                                         isBinary=False)
                        counters.frames_out += 1
                return
            if self.aligner is not None:
                return  # a later provider event: nothing to do without a bus
            try:
                start = parse_start(payload.decode("utf-8"), fallback_call_id=self.call_id)
            except ProtocolError as e:
                self._refuse(e.close_code, e.reason)
                return
            self.call_id, self.rate = start.call_id, start.sample_rate
            self.aligner = PcmAligner()
            counters.calls += 1

        def _refuse(self, code: int, reason: str) -> None:
            counters.errors += 1
            self.sendCloseFrame(int(code), encode_truncate(reason, 123))

    factory = WebSocketServerFactory("ws://0.0.0.0")
    factory.protocol = EchoProtocol
    # As gateway.adapter.server.ProviderFactory sets them.
    factory.setProtocolOptions(
        maxFramePayloadSize=max_frame_bytes,
        maxMessagePayloadSize=max_frame_bytes,
        autoPingInterval=0,
        failByDrop=False,
        openHandshakeTimeout=10,
        closeHandshakeTimeout=5,
        tcpNoDelay=True,
    )
    return factory


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m kgw_bench.bare_autobahn",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--listen", default="tcp:8080:interface=127.0.0.1",
                   help="Twisted server endpoint (default %(default)s)")
    p.add_argument("--paths", default=",".join(_DEFAULTS.paths),
                   help="accepted WebSocket paths, as the gateway's --paths")
    p.add_argument("--max-frame-bytes", type=int, default=_DEFAULTS.max_frame_bytes)
    p.add_argument("--echo-every", type=int, default=1,
                   help="send one playAudio per N audio frames, joined (default 1)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    install_reactor()
    from twisted.internet import reactor
    from twisted.internet.endpoints import serverFromString

    counters = Counters()
    factory = build_factory(counters, [p for p in args.paths.split(",") if p],
                            args.max_frame_bytes, args.echo_every)
    mark: dict[str, float] = {}
    status = {"code": 0}

    def listening(_port: object) -> None:
        mark["cpu"], mark["wall"] = _cpu(), time.monotonic()
        print("event=ready", flush=True)

    def failed(f: Any) -> None:
        print(f"bare_autobahn: cannot listen on {args.listen}: {f.getErrorMessage()}",
              file=sys.stderr, flush=True)
        status["code"] = 1
        reactor.stop()

    def start() -> None:
        serverFromString(reactor, args.listen).listen(factory).addCallbacks(listening, failed)

    reactor.callWhenRunning(start)
    reactor.run()  # SIGTERM and SIGINT stop it
    if status["code"]:
        return status["code"]
    out = counters.as_dict()
    out["cpu_s"] = round(_cpu() - mark.get("cpu", 0.0), 4)
    out["cpu_total_s"] = round(_cpu(), 4)
    out["wall_s"] = round(time.monotonic() - mark.get("wall", time.monotonic()), 4)
    print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
