"""``knowlarity-gateway simulate``: places calls against a gateway as Knowlarity does.

Each call opens a WebSocket, sends the documented start message, streams caller
PCM in binary frames paced to real time, collects the gateway's ``playAudio``
audio, and closes (1000) after a hang-up or transfer frame, or after it has
finished talking and lingered.

Public API: ``CallOptions``, ``CallResult``, ``place_call``, ``place_calls``
(async) and, for the command line, ``add_arguments`` and ``run``.

The client runs Autobahn on asyncio. Autobahn (through txaio) serves one
framework per process, and the gateway runs it on Twisted, so this package
imports the client only when a call is placed: importing ``gateway.simulator``
is safe anywhere, placing a call needs a process that has not loaded
Autobahn's Twisted side (``run`` starts such a process by itself if needed).
"""

from __future__ import annotations

from types import ModuleType

from gateway.simulator.command import add_arguments, run
from gateway.simulator.model import CallOptions, CallResult

__all__ = ["CallOptions", "CallResult", "place_call", "place_calls", "add_arguments", "run"]


async def place_call(url: str, options: CallOptions) -> CallResult:
    """Place one call against the gateway at ``url`` (ws:// or wss://) and return what happened.

    Never raises for anything the network or the gateway does; that goes in the result.
    """
    return await _client().place_call(url, options)


async def place_calls(
    url: str, options: CallOptions, calls: int, ramp_s: float = 0
) -> list[CallResult]:
    """Place ``calls`` concurrent calls with starts spread over ``ramp_s`` seconds; results
    in call order. A given ``options.call_id`` becomes ``<call_id>-<i>`` for several calls.
    """
    return await _client().place_calls(url, options, calls, ramp_s)


def _client() -> ModuleType:
    import txaio

    if txaio.using_twisted:
        raise RuntimeError(
            "this process already runs Autobahn on Twisted, and the simulator needs it on "
            "asyncio (txaio allows one per process); place calls from another process, "
            "e.g. python -m gateway.simulator"
        )
    from gateway.simulator import client

    return client
