"""A fake provider connection for adapter tests: Knowlarity's end of one socket.

A real ``ProviderProtocol`` from a node's factory on a ``StringTransport``,
driven through Autobahn's own handshake with the HTTP upgrade request and
masked client frames a provider writes; what the server writes back is parsed
as the provider would read it. No socket, no reactor turn: each call returns
once the node has handled what was sent.
"""

from __future__ import annotations

import base64
import hashlib
import os
import struct
from typing import TYPE_CHECKING

from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from gateway.adapter.server import ProviderProtocol
from gateway.core.knowlarity import encode_start

if TYPE_CHECKING:
    from gateway.node import Node

DOC_PATH = "/vaani/knowlarity/setup-call-streams"
DOCUMENTED_START = encode_start("aosi-adfad-23-ad", 16000, "+911111111111", "+912222222222")
WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
OP_TEXT, OP_BINARY, OP_CLOSE = 0x1, 0x2, 0x8


def client_frame(opcode: int, payload: bytes, mask: bytes = b"\x37\xfa\x21\x3d") -> bytes:
    """One final, masked client frame (RFC 6455 5.2): servers refuse unmasked ones."""
    n = len(payload)
    head = bytes([0x80 | opcode])
    if n < 126:
        head += bytes([0x80 | n])
    elif n < 1 << 16:
        head += bytes([0x80 | 126]) + struct.pack("!H", n)
    else:
        head += bytes([0x80 | 127]) + struct.pack("!Q", n)
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def parse_server_frames(data: bytes) -> tuple[list[tuple[int, bytes]], int]:
    """Unmasked server frames in ``data``; returns them and the bytes consumed."""
    frames: list[tuple[int, bytes]] = []
    pos = 0
    while len(data) - pos >= 2:
        b0, b1 = data[pos], data[pos + 1]
        assert b0 & 0x80, "the gateway never fragments"
        assert not b1 & 0x80, "server frames must not be masked"
        n, at = b1 & 0x7F, pos + 2
        if n == 126:
            if len(data) < at + 2:
                break
            (n,), at = struct.unpack_from("!H", data, at), at + 2
        elif n == 127:
            if len(data) < at + 8:
                break
            (n,), at = struct.unpack_from("!Q", data, at), at + 8
        if len(data) < at + n:
            break
        frames.append((b0 & 0x0F, data[at:at + n]))
        pos = at + n
    return frames, pos


class TcpLikeTransport(StringTransport):
    """A ``StringTransport`` that, as TCP transports do, lets go of no producer without error.

    Autobahn unregisters its producer on every drop, registered or not.
    """

    def unregisterProducer(self) -> None:
        self.producer = None
        self.streaming = None


class FakeProvider:
    """Knowlarity's end of one socket: a real ``ProviderProtocol`` on a ``StringTransport``,
    driven through Autobahn's own handshake with masked client frames."""

    def __init__(self, node: Node, peer_host: str = "127.0.0.1") -> None:
        self.node = node
        addr = IPv4Address("TCP", peer_host, 40000)
        self.transport = TcpLikeTransport(peerAddress=addr)
        proto = node.factory.buildProtocol(addr)
        assert isinstance(proto, ProviderProtocol)
        self.proto = proto
        self.proto.makeConnection(self.transport)
        self.status: int | None = None
        self.headers: dict[str, str] = {}
        self.lost = False
        self.auto_settle = True
        self._read = 0
        self._frames: list[tuple[int, bytes]] = []

    # --- client to server ----------------------------------------------------

    def handshake(self, path: str = DOC_PATH, headers: dict[str, str] | None = None) -> int:
        key = base64.b64encode(os.urandom(16))
        lines = [
            f"GET {path} HTTP/1.1",
            "Host: gw.example.com",
            "Upgrade: websocket",
            "Connection: Upgrade",
            f"Sec-WebSocket-Key: {key.decode()}",
            "Sec-WebSocket-Version: 13",
            *(f"{k}: {v}" for k, v in (headers or {}).items()),
        ]
        self.proto.dataReceived(("\r\n".join(lines) + "\r\n\r\n").encode())
        out = self.transport.value()
        head, sep, _ = out.partition(b"\r\n\r\n")
        assert sep, f"no complete HTTP response: {out!r}"
        self._read = len(head) + len(sep)
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        self.status = int(status_line.split()[1])
        for line in header_lines:
            name, _, value = line.partition(":")
            self.headers[name.strip().lower()] = value.strip()
        if self.status == 101:
            accept = base64.b64encode(hashlib.sha1(key + WS_GUID).digest()).decode()
            assert self.headers["sec-websocket-accept"] == accept
        self.settle()
        return self.status

    def open(self, path: str = DOC_PATH, start: str | None = DOCUMENTED_START) -> FakeProvider:
        assert self.handshake(path) == 101
        if start is not None:
            self.send_text(start)
        return self

    def send(self, data: bytes) -> None:
        assert not self.lost, "the server already dropped this socket"
        self.proto.dataReceived(data)
        self.settle()

    def send_text(self, text: str) -> None:
        self.send(client_frame(OP_TEXT, text.encode()))

    def send_binary(self, data: bytes) -> None:
        self.send(client_frame(OP_BINARY, data))

    def send_close(self, code: int = 1000, reason: str = "") -> None:
        self.send(client_frame(OP_CLOSE, struct.pack("!H", code) + reason.encode()))

    def drop(self) -> None:
        """The TCP connection goes away without a closing handshake."""
        self.lost = True
        self.proto.connectionLost(Failure(ConnectionLost("peer reset")))

    # --- server to client -----------------------------------------------------

    def frames(self) -> list[tuple[int, bytes]]:
        """Every frame the server has written on this socket so far."""
        new, used = parse_server_frames(self.transport.value()[self._read:])
        self._read += used
        self._frames += new
        return list(self._frames)

    def texts(self) -> list[str]:
        return [p.decode() for op, p in self.frames() if op == OP_TEXT]

    def close_codes(self) -> list[int]:
        return [struct.unpack("!H", p[:2])[0] for op, p in self.frames() if op == OP_CLOSE]

    def settle(self) -> None:
        """Deliver connectionLost if the server let go of the transport.

        StringTransport only records that; Twisted calls connectionLost on a
        later turn of the reactor, and that is what runs onClose. With
        ``auto_settle`` off, the test decides when that turn comes.
        """
        let_go = self.transport.disconnecting or self.transport.disconnected
        if self.auto_settle and not self.lost and let_go:
            self.lost = True
            self.proto.connectionLost(Failure(ConnectionDone()))

    def hold_connection_lost(self) -> None:
        """From now on, connectionLost waits for ``release_connection_lost``."""
        self.auto_settle = False

    def release_connection_lost(self) -> None:
        self.auto_settle = True
        self.settle()
