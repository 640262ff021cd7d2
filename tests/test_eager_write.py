"""Frames to a provider leave at once (gateway.adapter.eager), on real sockets.

A control without the change shows what the test tells apart: Twisted's own
transport holds a write until the reactor turns.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterator
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import defer, protocol, reactor, threads

from gateway.adapter.eager import send_eagerly


class _Server(protocol.Protocol):
    eager = False

    def connectionMade(self) -> None:
        if self.factory.eager:
            self.eager = send_eagerly(self.transport)
        self.lost: defer.Deferred[None] = defer.Deferred()
        self.factory.made.callback(self)

    def connectionLost(self, reason: object = None) -> None:
        self.lost.callback(None)


@pytest.fixture
def served() -> Iterator[Any]:
    opened: list[tuple[socket.socket, object]] = []

    @defer.inlineCallbacks
    def serve(eager: bool = True):  # type: ignore[no-untyped-def]
        f = protocol.Factory.forProtocol(_Server)
        f.eager, f.made = eager, defer.Deferred()
        port = reactor.listenTCP(0, f, interface="127.0.0.1")
        client = socket.create_connection(("127.0.0.1", port.getHost().port))
        opened.append((client, port))
        server = yield f.made
        return server, client

    yield serve
    for client, port in opened:
        client.close()
        port.stopListening()


def _read(client: socket.socket, n: int) -> bytes:
    client.settimeout(10)
    got = bytearray()
    while len(got) < n:
        chunk = client.recv(1 << 20)
        if not chunk:
            break
        got += chunk
    return bytes(got)


@pytest_twisted.inlineCallbacks
def test_a_write_is_on_the_socket_before_the_reactor_turns(served) -> None:  # type: ignore[no-untyped-def]
    server, client = yield served()
    assert server.eager
    server.transport.write(b"frame")
    client.settimeout(2)
    assert client.recv(16) == b"frame"  # no reactor turn between the write and this read


@pytest_twisted.inlineCallbacks
def test_control_twisteds_transport_waits_for_the_reactor(served) -> None:  # type: ignore[no-untyped-def]
    server, client = yield served(eager=False)
    server.transport.write(b"frame")
    client.settimeout(0.3)
    with pytest.raises(TimeoutError):
        client.recv(16)


@pytest_twisted.inlineCallbacks
def test_what_the_kernel_does_not_take_is_queued_in_order(served) -> None:  # type: ignore[no-untyped-def]
    server, client = yield served()
    big = bytes(range(256)) * 40_000  # 10 MB: more than the socket buffers hold
    server.transport.write(big)
    assert server.transport._tempDataLen  # the rest waits for the reactor, as before
    server.transport.write(b"tail")
    got = yield threads.deferToThread(_read, client, len(big) + 4)
    assert got == big + b"tail"


@pytest_twisted.inlineCallbacks
def test_a_reset_peer_closes_the_connection_as_before(served) -> None:  # type: ignore[no-untyped-def]
    server, client = yield served()
    client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    client.close()  # an RST: the next sends fail
    for _ in range(50):
        if server.lost.called:
            break
        server.transport.write(b"x" * 1000)
        yield threads.deferToThread(lambda: None)  # a reactor turn
    yield server.lost
