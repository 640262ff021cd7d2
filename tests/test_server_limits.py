"""The adapter's limits, on fake transports through Autobahn's real handshake.

Each test plays a hostile or careless peer against a real node (bus recorded,
reactor a MemoryReactorClock): the allow-list at TCP accept, the cap on the
upgrade request, no status page, the socket caps, the write buffer to a
provider that stops reading, outgoing frames above the incoming limit, and
secrets kept out of logs and records.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from test_server import (
    CALL_ID,
    DOC_PATH,
    START,
    Provider,
    bus,
    client_frame,
    make_node,
    metric,
    node,
    pcm,
)
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.error import ConnectionDone
from twisted.logger import formatEvent, globalLogPublisher
from twisted.python.failure import Failure

from gateway.config import NodeConfig
from gateway.core import model as m
from gateway.core.call import CallSettings
from gateway.core.playout import PlayoutSettings
from gateway.node import Node

OP_TEXT = 0x1


def _accepts(node: Node, host: str, v6: bool = False) -> bool:
    addr = IPv6Address("TCP", host, 40000) if v6 else IPv4Address("TCP", host, 40000)
    proto = node.factory.buildProtocol(addr)
    if proto is not None:
        node.factory.connections -= 1  # never connected: give its place back
    return proto is not None


# --- who may connect -----------------------------------------------------------------


# (config, address, accepted)
ACCEPT = [
    (NodeConfig(), "127.0.0.1", True),
    (NodeConfig(), "127.8.9.10", True),
    (NodeConfig(), "203.0.113.7", False),
    (NodeConfig(), "10.0.0.1", False),
    (NodeConfig(allow_unauthenticated=True), "203.0.113.7", True),
    (NodeConfig(auth_token="t"), "203.0.113.7", True),
    (NodeConfig(allow_from=(__import__("ipaddress").ip_network("203.0.113.0/24"),)),
     "203.0.113.7", True),
    (NodeConfig(allow_from=(__import__("ipaddress").ip_network("203.0.113.0/24"),)),
     "127.0.0.1", False),
]


@pytest.mark.parametrize(("config", "host", "accepted"), ACCEPT)
def test_who_may_connect_is_decided_at_tcp_accept(make_node: Callable[..., Node],
                                                  config: NodeConfig, host: str,
                                                  accepted: bool) -> None:
    """With no token and no allow-list only loopback gets a protocol; the allow-list and
    --allow-unauthenticated decide otherwise, before any byte is read."""
    node = make_node(config)
    assert _accepts(node, host) is accepted
    if not accepted:
        assert metric(node, "kgw_sockets_refused_total", why="address not allowed") == 1


@pytest.mark.parametrize(("host", "accepted"), [("::1", True), ("::ffff:127.0.0.1", True),
                                                ("2001:db8::1", False)])
def test_loopback_default_holds_for_ipv6(make_node: Callable[..., Node], host: str,
                                         accepted: bool) -> None:
    """IPv6 loopback and IPv4-mapped loopback are loopback; other IPv6 peers are not."""
    assert _accepts(make_node(), host, v6=True) is accepted


@pytest.mark.parametrize(("source", "accepted"), [("203.0.113.7", True), ("192.0.2.9", False)])
def test_behind_a_proxy_the_allow_list_applies_to_the_proxied_address(
        make_node: Callable[..., Node], source: str, accepted: bool) -> None:
    """``haproxy:`` endpoints: the balancer's own address (10.0.0.2, not on the list) is
    let through at accept; the PROXY header's source then decides, before the upgrade
    request is read, and the refusal is counted like one at accept."""
    import ipaddress

    from twisted.internet.testing import StringTransport
    from twisted.protocols.haproxy._wrapper import HAProxyWrappingFactory

    node = make_node(NodeConfig(listen="haproxy:tcp:8080",
                                allow_from=(ipaddress.ip_network("203.0.113.0/24"),)))
    wrapper = HAProxyWrappingFactory(node.factory).buildProtocol(
        IPv4Address("TCP", "10.0.0.2", 40000))
    assert wrapper is not None
    transport = StringTransport(peerAddress=IPv4Address("TCP", "10.0.0.2", 40000))
    wrapper.makeConnection(transport)
    wrapper.dataReceived(f"PROXY TCP4 {source} 10.0.0.1 5555 8080\r\n".encode()
                         + _raw_request(DOC_PATH, b"\r\n"))
    answer = transport.value()
    if accepted:
        assert answer.startswith(b"HTTP/1.1 101"), answer[:80]
        assert wrapper.wrappedProtocol.peer == f"tcp4:{source}:5555"
    else:
        assert answer == b"" and transport.disconnecting
        assert metric(node, "kgw_sockets_refused_total", why="address not allowed") == 1
    wrapper.connectionLost(Failure(ConnectionDone()))
    assert node.factory.connections == 0


# --- before the handshake completes ----------------------------------------------------


def _raw_request(path: str, extra: bytes = b"") -> bytes:
    return (f"GET {path} HTTP/1.1\r\nHost: gw.example.com\r\nUpgrade: websocket\r\n"
            "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            "Sec-WebSocket-Version: 13\r\n").encode() + extra


@pytest.mark.parametrize("chunk", [1024, 65536])
def test_an_endless_upgrade_request_is_answered_431_and_closed(node: Node, chunk: int) -> None:
    """Headers that never end are refused with 431 once they pass max_request_bytes, and
    nothing more of them is read."""
    p = Provider(node)
    p.proto.dataReceived(_raw_request(DOC_PATH))
    sent = 0
    while not p.transport.disconnecting and sent < 20 * 1024 * 1024:
        p.proto.dataReceived(b"X-Flood: " + b"a" * (chunk - 11) + b"\r\n")
        sent += chunk
    assert p.transport.value().startswith(b"HTTP/1.1 431 ")
    assert sent <= node.config.max_request_bytes + chunk
    assert metric(node, "kgw_sockets_refused_total", why="request too large") == 1
    p.proto.dataReceived(b"more")  # ignored: not parsed, no error
    p.settle()
    assert not node.sockets


def test_a_request_just_under_the_cap_is_accepted(make_node: Callable[..., Node]) -> None:
    """An upgrade request of max_request_bytes exactly, in small pieces, still upgrades."""
    node = make_node(NodeConfig(max_request_bytes=4096))
    p = Provider(node)
    head = _raw_request(DOC_PATH)
    pad = 4096 - len(head) - len(b"X-Pad: \r\n\r\n")
    whole = head + b"X-Pad: " + b"p" * pad + b"\r\n\r\n"
    assert len(whole) == 4096
    for i in range(0, len(whole), 100):
        p.proto.dataReceived(whole[i:i + 100])
    assert p.transport.value().startswith(b"HTTP/1.1 101 ")
    p.send_close(1000)


@pytest.mark.parametrize("path", ["/", DOC_PATH, "/x?redirect=https://evil.example",
                                  "/x?redirect=https://evil.example&after=1"])
def test_no_status_page_no_redirect_no_version(node: Node, path: str) -> None:
    """A plain GET gets 426 with no body from Autobahn, never a redirect or a version."""
    p = Provider(node)
    p.proto.dataReceived(f"GET {path} HTTP/1.1\r\nHost: gw\r\n\r\n".encode())
    out = p.transport.value()
    assert out.startswith(b"HTTP/1.1 426 ")
    assert b"evil" not in out and b"Location" not in out
    assert b"Autobahn" not in out and b"<html" not in out.lower()
    p.settle()


def test_the_upgrade_answer_names_no_server(node: Node) -> None:
    """101 Switching Protocols carries no Server header."""
    p = Provider(node)
    assert p.handshake() == 101
    assert "server" not in p.headers
    p.send_close(1000)


# --- how many sockets -------------------------------------------------------------------


def test_sockets_beyond_max_sockets_get_503(make_node: Callable[..., Node]) -> None:
    """With max_sockets live sockets, the next handshake is refused with 503."""
    node = make_node(NodeConfig(max_sockets=2))
    live = [Provider(node).open(f"/knowlarity-stream/c{i}", None) for i in range(2)]
    for i, p in enumerate(live):
        p.send_text(json.dumps({"uuid": f"c{i}", "sample_rate": 16000}))
    extra = Provider(node)
    assert extra.handshake() == 503
    assert metric(node, "kgw_sockets_refused_total", why="node at its socket limit") == 1
    for p in live:
        p.send_close(1000)
    again = Provider(node).open()
    assert again.proto in node.sockets
    again.send_close(1000)


def test_sockets_awaiting_a_start_message_are_capped(make_node: Callable[..., Node]) -> None:
    """Beyond max_awaiting_start sockets that have not sent a start message, 503."""
    node = make_node(NodeConfig(max_awaiting_start=2))
    waiting = [Provider(node) for _ in range(2)]
    for p in waiting:
        assert p.handshake() == 101
    assert Provider(node).handshake() == 503
    assert metric(node, "kgw_sockets_refused_total",
                  why="too many sockets awaiting a start message") == 1
    waiting[0].send_text(START)  # one starts: a place frees up
    late = Provider(node)
    assert late.handshake() == 101
    for p in (*waiting, late):
        p.send_close(1000)


def test_connections_beyond_both_caps_are_refused_at_accept(
        make_node: Callable[..., Node]) -> None:
    """TCP connections past max_sockets + max_awaiting_start get no protocol at all."""
    node = make_node(NodeConfig(max_sockets=2, max_awaiting_start=1))
    held = [Provider(node) for _ in range(3)]
    assert node.factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 1)) is None
    assert metric(node, "kgw_sockets_refused_total", why="connection limit") == 1
    for p in held:
        p.drop()
    assert node.factory.connections == 0


# --- a provider that stops reading ----------------------------------------------------------


def test_a_provider_that_stops_reading_is_closed_with_4004(make_node: Callable[..., Node]
                                                           ) -> None:
    """Once the transport is full, writing more than max_write_buffer_bytes ends the call
    (4004) and aborts the connection; the call ends once."""
    node = make_node(NodeConfig(max_write_buffer_bytes=20_000,
                                call=CallSettings(playout=PlayoutSettings(paced=False))))
    p = Provider(node).open()
    producer = p.transport.producer
    assert producer is not None
    producer.pauseProducing()  # what Twisted does when its 64 KiB buffer is full
    node._on_command(m.Command(CALL_ID, m.PlayAudio(pcm(16000), 16000)))
    (ended,) = bus(node).ends()
    assert (ended.reason, ended.close_code) == (m.EndReason.PROTOCOL_ERROR, 4004)
    assert "stopped reading" in ended.detail
    assert metric(node, "kgw_sockets_not_reading_total") == 1
    p.settle()
    assert not node.sockets


def test_a_reading_provider_is_never_closed_for_its_buffer(make_node: Callable[..., Node]
                                                           ) -> None:
    """A transport that pauses and resumes again (a slow reader that keeps up) loses nothing."""
    node = make_node(NodeConfig(max_write_buffer_bytes=20_000, call=CallSettings(
        playout=PlayoutSettings(paced=False))))
    p = Provider(node).open()
    producer = p.transport.producer
    for _ in range(5):
        producer.pauseProducing()
        node._on_command(m.Command(CALL_ID, m.PlayAudio(pcm(3200), 16000)))
        producer.resumeProducing()
    assert bus(node).ends() == []
    assert len(p.texts()) == 5
    p.send_close(1000)


# --- outgoing frames -------------------------------------------------------------------------


def test_outgoing_frames_are_not_capped_by_the_incoming_limit(
        make_node: Callable[..., Node]) -> None:
    """With max_frame_bytes far below a playAudio clip, the clip is still sent whole."""
    node = make_node(NodeConfig(max_frame_bytes=1024, call=CallSettings(
        playout=PlayoutSettings(paced=False))))
    p = Provider(node).open()
    node._on_command(m.Command(CALL_ID, m.PlayAudio(pcm(3200), 16000)))
    (frame,) = p.texts()
    assert len(frame) > 1024 * 4
    assert bus(node).ends() == []
    p.send_close(1000)


# --- call ids and what reaches the logs -----------------------------------------------


@pytest.fixture
def log_lines() -> Iterator[list[str]]:
    lines: list[str] = []

    def observe(event: dict[str, Any]) -> None:
        lines.append(formatEvent(event) or "")

    globalLogPublisher.addObserver(observe)
    yield lines
    globalLogPublisher.removeObserver(observe)


@pytest.mark.parametrize("call_id", ["x" * 129, "a b", "new\nline", "semi;colon", "é", ""])
def test_bad_call_ids_are_refused_with_1007_before_any_record(node: Node, call_id: str) -> None:
    """A call id over 128 characters or outside A-Z a-z 0-9 - _ . : closes with 1007 and
    publishes nothing."""
    p = Provider(node).open(start=json.dumps({"uuid": call_id, "sample_rate": 16000})
                            if call_id else json.dumps({"sample_rate": 16000}))
    if not call_id:  # falls back to the path's id, or a fresh uuid: fine
        assert len(bus(node).inbound) == 1
        p.send_close(1000)
        return
    assert p.close_codes() == [1007]
    assert bus(node).inbound == []
    p.send_close(1007)


def test_a_60_kb_call_id_is_refused_with_1007(node: Node) -> None:
    """The attack from the issue: a 60 KB call id gets 1007 and no record."""
    p = Provider(node).open(start=json.dumps({"uuid": "a" * 60_000, "sample_rate": 16000}))
    assert p.close_codes() == [1007]
    assert bus(node).inbound == []
    p.send_close(1007)


def test_provider_text_is_escaped_in_log_lines(node: Node, log_lines: list[str]) -> None:
    """A path id with a newline, and an invalid start, reach the log escaped, on one line."""
    p = Provider(node)
    assert p.handshake("/knowlarity-stream/evil%0Aforged") in (101, 404)
    p.send(client_frame(OP_TEXT, b'{"sample_rate": 16000, "uuid": "x\\ny"}'))
    p.settle()
    assert all("\n" not in line for line in log_lines)
    if not p.lost:
        p.send_close(1000)


def test_the_token_never_reaches_a_log_line_or_a_record(make_node: Callable[..., Node],
                                                        log_lines: list[str]) -> None:
    """The token sent in the query string and in the header appears in no log line and in
    no published record, whether the socket is accepted, refused or replaced."""
    token = "tok-3f9a7c1e5d"
    node = make_node(NodeConfig(auth_token=token, call=CallSettings(
        playout=PlayoutSettings(paced=False))))
    first = Provider(node, peer_host="203.0.113.7").open(f"{DOC_PATH}?token={token}")
    second = Provider(node, peer_host="203.0.113.8")
    assert second.handshake(DOC_PATH, {"Authorization": f"Bearer {token}"}) == 101
    second.send_text(START)
    assert metric(node, "kgw_calls_replaced_total") == 1
    wrong = Provider(node)
    assert wrong.handshake(f"{DOC_PATH}?token={token}x") == 401
    node._on_command(m.Command(CALL_ID, m.HangUp()))
    first.send_close(4002)
    second.send_close(1000)
    assert log_lines, "the node logged nothing: the check would prove nothing"
    assert not [line for line in log_lines if token in line]
    encoded = [str(r) for r in bus(node).inbound] + [str(r) for r in bus(node).outbound]
    assert encoded and not [r for r in encoded if token in r]
    started = [r.body for r in bus(node).inbound if isinstance(r.body, m.CallStarted)]
    assert all(token not in b.request_path and token not in b.start.raw for b in started)


def test_a_replacing_socket_must_pass_the_same_checks(make_node: Callable[..., Node]) -> None:
    """A second socket for a live call without the token is refused; the call goes on."""
    node = make_node(NodeConfig(auth_token="s3cr3t"))
    first = Provider(node).open(f"{DOC_PATH}?token=s3cr3t")
    thief = Provider(node)
    assert thief.handshake(DOC_PATH) == 401
    assert bus(node).ends() == []
    assert metric(node, "kgw_calls_replaced_total") == 0
    assert node.registry.get(CALL_ID) is first.proto
    first.send_close(1000)


__all__ = ["make_node", "node"]  # the shared fixtures, used by name
