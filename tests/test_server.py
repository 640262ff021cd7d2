"""The Autobahn adapter on fake transports and a fake clock: no broker, no real socket.

A real ``Node`` (registry, replacement, command routing) with its bus swapped
for a recorder and its reactor a ``MemoryReactorClock``; each provider socket
is a real ``ProviderProtocol`` from the node's factory on a ``StringTransport``,
driven through Autobahn's own handshake with the HTTP upgrade request and
masked client frames a provider would write. What the server writes back is
parsed as the provider would read it.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.task import Clock

from gateway.config import NodeConfig
from gateway.core import model as m
from gateway.core.call import CallSettings
from gateway.core.knowlarity import AudioContentType, PlayFrame, decode_gateway_frame
from gateway.core.playout import PlayoutSettings
from gateway.node import Node
from gateway.testing import (
    FakeProvider,
    RecordingBus,
    client_frame,
    node_in_memory,
)
from gateway.testing.provider import OP_TEXT

DATA = Path(__file__).parent / "data"
START = (DATA / "start_json.txt").read_text()
CALL_ID = "aosi-adfad-23-ad"
DOC_PATH = "/vaani/knowlarity/setup-call-streams"


# --- the harness ----------------------------------------------------------------


class Provider(FakeProvider):
    """The product's fake provider, opening with the canned documented start message."""

    def open(self, path: str = DOC_PATH, start: str | None = START) -> Provider:
        super().open(path, start)
        return self


def unpaced(**kw: Any) -> NodeConfig:
    """A config whose playout sends bot audio at once, so commands show frames immediately."""
    return NodeConfig(call=CallSettings(playout=PlayoutSettings(paced=False)), **kw)


@pytest.fixture
def make_node() -> Iterator[Callable[..., Node]]:
    """Builds nodes on fake reactors; afterwards, none may hold a socket or a pending timer."""
    nodes: list[Node] = []

    def make(config: NodeConfig | None = None) -> Node:
        node, _bus, handshakes = node_in_memory(config)
        _HANDSHAKE_CLOCKS[node] = handshakes
        nodes.append(node)
        return node

    yield make
    for node in nodes:
        assert not node.sockets, "a test left a socket open"
        assert node.clock.getDelayedCalls() == []
        # Autobahn leaves its closing-handshake timer behind when the peer
        # drops instead of answering; firing it must change nothing.
        published = len(bus(node).inbound)
        autobahn_clock(node).advance(60)
        assert len(bus(node).inbound) == published


@pytest.fixture
def node(make_node: Callable[..., Node]) -> Node:
    return make_node()


_HANDSHAKE_CLOCKS: dict[Node, Clock] = {}


def autobahn_clock(node: Node) -> Clock:
    """The clock Autobahn's handshake timers run on for this node (its own, so that the
    node's clock shows only the gateway's timers)."""
    return _HANDSHAKE_CLOCKS[node]


def bus(node: Node) -> RecordingBus:
    assert isinstance(node.bus, RecordingBus)
    return node.bus


def metric(node: Node, name: str, **labels: str) -> float:
    value = node.metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


def pcm(samples: int, value: int = 1000) -> bytes:
    return struct.pack(f"<{samples}h", *([value] * samples))


# --- handshake ----------------------------------------------------------------------


@pytest.mark.parametrize("path", [
    DOC_PATH,
    "/v2/login/vaani/knowlarity/setup-call-streams",
    DOC_PATH + "/",
    "/knowlarity-stream/c-7781_0",
])
def test_known_paths_are_accepted(node: Node, path: str) -> None:
    """The documented path, with a prefix or a trailing call id, gets 101 Switching Protocols."""
    p = Provider(node)
    assert p.handshake(path) == 101
    assert p.proto in node.sockets
    p.send_close(1000)
    assert node.clock.getDelayedCalls() == []
    assert not node.sockets


def test_path_id_is_the_fallback_call_id(node: Node) -> None:
    """A start message without a uuid takes the call id from the last path segment."""
    p = Provider(node).open("/knowlarity-stream/out-42_0",
                            (DATA / "start_json_no_uuid.txt").read_text())
    (started,) = bus(node).inbound
    assert started.call_id == "out-42_0"
    assert isinstance(started.body, m.CallStarted)
    assert started.body.request_path == "/knowlarity-stream/out-42_0"
    assert node.registry.get("out-42_0") is p.proto
    p.send_close(1000)


@pytest.mark.parametrize("path", [
    "/",
    "/vaani/knowlarity/setup-call-streams-v2",
    "/knowlarity-stream/a/b",
    "/other",
])
def test_unknown_path_is_refused_with_404(node: Node, path: str) -> None:
    """A path that is not one of ours is refused with 404 before any call exists."""
    p = Provider(node)
    assert p.handshake(path) == 404
    assert p.lost
    assert not node.sockets
    assert bus(node).inbound == []
    assert metric(node, "kgw_sockets_refused_total", why="unknown path") == 1


def test_requested_subprotocol_is_echoed(node: Node) -> None:
    """A client asking for a subprotocol gets the first one it offered back."""
    p = Provider(node)
    status = p.handshake(DOC_PATH, {"Sec-WebSocket-Protocol": "audio.drachtio.org, other"})
    assert status == 101
    assert p.headers["sec-websocket-protocol"] == "audio.drachtio.org"
    p.send_close(1000)


def test_no_subprotocol_requested_none_answered(node: Node) -> None:
    """A client that asks for no subprotocol gets no Sec-WebSocket-Protocol header."""
    p = Provider(node)
    assert p.handshake(DOC_PATH) == 101
    assert "sec-websocket-protocol" not in p.headers
    p.send_close(1000)


@pytest.mark.parametrize(("path", "headers"), [
    (DOC_PATH, {}),
    (DOC_PATH + "?token=wrong", {}),
    (DOC_PATH, {"Authorization": "Bearer wrong"}),
    (DOC_PATH, {"Authorization": "Basic czNjcjN0"}),
    (DOC_PATH + "?token=", {}),
])
def test_missing_or_wrong_token_gets_401(make_node: Callable[..., Node], path: str,
                                         headers: dict[str, str]) -> None:
    """With auth_token set, a socket without the right token is refused with 401."""
    node = make_node(NodeConfig(auth_token="s3cr3t"))
    p = Provider(node)
    assert p.handshake(path, headers) == 401
    assert not node.sockets
    assert metric(node, "kgw_sockets_refused_total", why="bad or missing token") == 1


@pytest.mark.parametrize(("path", "headers"), [
    (DOC_PATH + "?token=s3cr3t", {}),
    (DOC_PATH, {"Authorization": "Bearer s3cr3t"}),
    (DOC_PATH, {"Authorization": "bearer s3cr3t"}),
])
def test_right_token_is_accepted(make_node: Callable[..., Node], path: str,
                                 headers: dict[str, str]) -> None:
    """With auth_token set, the token as ?token= or as a Bearer header lets the socket in."""
    node = make_node(NodeConfig(auth_token="s3cr3t"))
    p = Provider(node)
    assert p.handshake(path, headers) == 101
    p.send_close(1000)


def test_draining_node_answers_503(node: Node) -> None:
    """A node that no longer accepts calls refuses new sockets with 503."""
    node.accepting = False
    p = Provider(node)
    assert p.handshake(DOC_PATH) == 503
    assert not node.sockets
    assert metric(node, "kgw_sockets_refused_total", why="node is draining") == 1


# --- a call -------------------------------------------------------------------------


def test_start_then_audio_is_published(node: Node) -> None:
    """A start message and then binary audio publish CallStarted and CallerAudio in order."""
    p = Provider(node).open()
    p.send_binary(pcm(320))
    p.send_binary(pcm(160, value=-5))

    recs = bus(node).inbound
    assert [r.call_id for r in recs] == [CALL_ID] * 3
    assert [r.record_seq for r in recs] == [0, 1, 2]
    started, a0, a1 = (r.body for r in recs)
    assert isinstance(started, m.CallStarted)
    assert started.start.call_id == CALL_ID
    assert started.start.sample_rate == 16000
    assert started.start.caller == "+919876543210"
    assert started.reply_topic == "knowlarity.calls.commands.node"
    assert started.request_path == DOC_PATH
    assert a0 == m.CallerAudio(seq=0, media_position_samples=0, received_at=0.0,
                               pcm=pcm(320), sample_rate=16000)
    assert a1 == m.CallerAudio(seq=1, media_position_samples=320, received_at=0.0,
                               pcm=pcm(160, value=-5), sample_rate=16000)
    assert node.registry.get(CALL_ID) is p.proto
    assert metric(node, "kgw_calls_started_total") == 1
    assert metric(node, "kgw_frames_in_total", kind="binary") == 2
    assert p.frames() == []
    p.send_close(1000)
    assert node.registry.get(CALL_ID) is None


def test_no_start_message_times_out_with_4000(node: Node) -> None:
    """A socket that sends no start message is closed with 4000 after the start timeout."""
    p = Provider(node)
    assert p.handshake() == 101
    node.clock.advance(9.9)
    assert p.close_codes() == []
    node.clock.advance(0.1)
    assert p.close_codes() == [4000]
    assert node.clock.getDelayedCalls() == []
    p.send_close(4000)  # the provider answers the closing handshake
    assert p.lost
    assert not node.sockets
    assert bus(node).inbound == []
    assert metric(node, "kgw_sockets_closed_unstarted_total") == 1


def test_audio_before_start_closes_with_1003(node: Node) -> None:
    """A binary frame before the start message closes the socket with 1003 and publishes nothing."""
    p = Provider(node)
    assert p.handshake() == 101
    p.send_binary(pcm(320))
    assert p.close_codes() == [1003]
    p.send_close(1003)
    assert not node.sockets
    assert bus(node).inbound == []


@pytest.mark.parametrize("name", ["bad_start_plain_text.txt", "bad_start_truncated.txt"])
def test_unparseable_start_closes_with_1007(node: Node, name: str) -> None:
    """A start message that cannot be parsed closes the socket with 1007 and publishes nothing."""
    p = Provider(node).open(start=(DATA / name).read_text())
    assert p.close_codes() == [1007]
    p.send_close(1007)
    assert not node.sockets
    assert bus(node).inbound == []
    assert node.registry.get(CALL_ID) is None


def test_oversized_frame_before_start_closes_with_1009(make_node: Callable[..., Node]) -> None:
    """A frame above max_frame_bytes before the start message fails with 1009, nothing published."""
    node = make_node(NodeConfig(max_frame_bytes=1024))
    p = Provider(node)
    assert p.handshake() == 101
    p.send_binary(pcm(513))
    assert p.close_codes() == [1009]
    p.send_close(1009)
    assert not node.sockets
    assert bus(node).inbound == []


def test_oversized_frame_after_start_ends_call_once(make_node: Callable[..., Node]) -> None:
    """A frame above max_frame_bytes on a live call: close 1009, one CallEnded(PROTOCOL_ERROR)."""
    node = make_node(NodeConfig(max_frame_bytes=1024))
    p = Provider(node).open()
    p.send_binary(pcm(512))  # exactly the limit: fine
    p.send_binary(pcm(513))
    assert p.close_codes() == [1009]
    p.send_close(1009)
    assert not node.sockets
    bodies = bus(node).bodies()
    assert [type(b) for b in bodies] == [m.CallStarted, m.CallerAudio, m.CallEnded]
    (ended,) = bus(node).ends()
    assert ended.reason is m.EndReason.PROTOCOL_ERROR
    assert ended.close_code == 1009
    assert "exceeds payload limit of 1024 octets" in ended.detail
    assert ended.audio_chunks == 1
    assert node.registry.get(CALL_ID) is None
    assert metric(node, "kgw_calls_ended_total", reason="protocol_error") == 1


def test_invalid_utf8_text_ends_call_with_1007(node: Node) -> None:
    """A text frame that is not UTF-8 on a live call: close 1007, one CallEnded(PROTOCOL_ERROR)."""
    p = Provider(node).open()
    p.send(client_frame(OP_TEXT, b"\xff\xfe event"))
    assert p.close_codes() == [1007]
    # Autobahn trips over the same frame twice and drops the TCP connection
    # right after its close frame, without waiting for the reply.
    assert p.lost
    (ended,) = bus(node).ends()
    assert ended.reason is m.EndReason.PROTOCOL_ERROR
    assert ended.close_code == 1007
    assert "invalid UTF-8" in ended.detail
    assert [type(b) for b in bus(node).bodies()] == [m.CallStarted, m.CallEnded]


def test_unanswered_close_is_dropped_after_the_handshake_timeout(node: Node) -> None:
    """A provider that never answers the gateway's close is dropped; the call still ends once."""
    p = Provider(node).open()
    p.send_binary(pcm(320))
    p.proto.end(m.EndReason.NODE_SHUTDOWN, "node shutting down", 1001)
    assert p.close_codes() == [1001]
    assert not p.lost
    autobahn_clock(node).advance(5)  # closeHandshakeTimeout
    p.settle()
    assert p.lost
    assert not node.sockets
    assert [e.reason for e in bus(node).ends()] == [m.EndReason.NODE_SHUTDOWN]


# --- a second socket for the same call --------------------------------------------


def test_second_socket_replaces_the_first(node: Node) -> None:
    """A second socket with the same call id ends the first (4002) before its own call starts."""
    first = Provider(node).open()
    second = Provider(node).open()

    assert first.close_codes() == [4002]
    assert second.close_codes() == []
    kinds = [(type(r.body), r.record_seq) for r in bus(node).inbound]
    # The first call's CallEnded (its record 1) precedes the second's CallStarted.
    assert kinds == [(m.CallStarted, 0), (m.CallEnded, 1), (m.CallStarted, 0)]
    (ended,) = bus(node).ends()
    assert ended.reason is m.EndReason.REPLACED
    assert ended.close_code == 4002
    assert node.registry.get(CALL_ID) is second.proto

    # The first socket's closing handshake completes late: the second stays registered.
    first.send_close(4002)
    assert first.lost
    assert node.registry.get(CALL_ID) is second.proto
    assert node.sockets == {second.proto}
    assert len(bus(node).ends()) == 1

    # And commands for the call go to the second socket only.
    node._on_command(m.Command(CALL_ID, m.HangUp()))
    assert first.texts() == []
    assert len(second.texts()) == 1
    second.send_close(1000)
    assert [e.reason for e in bus(node).ends()] == [m.EndReason.REPLACED, m.EndReason.BOT_HANGUP]


def test_replaced_socket_before_its_close_reply_drops(node: Node) -> None:
    """A replaced socket whose transport drops instead of answering the close adds no second end."""
    first = Provider(node).open()
    second = Provider(node).open()
    first.drop()
    assert node.registry.get(CALL_ID) is second.proto
    assert len(bus(node).ends()) == 1
    second.send_close(1000)
    assert [e.reason for e in bus(node).ends()] == [m.EndReason.REPLACED,
                                                     m.EndReason.CALLER_HANGUP]


# --- commands ------------------------------------------------------------------------


def test_command_for_unknown_call_is_counted_and_dropped(node: Node) -> None:
    """A command for a call this node does not hold is counted (unknown_call), never raised."""
    p = Provider(node).open()
    node._on_command(m.Command("no-such-call", m.PlayAudio(pcm(1600), 16000)))
    assert metric(node, "kgw_commands_total", outcome="unknown_call") == 1
    assert metric(node, "kgw_commands_total", outcome="ok") == 0
    assert p.texts() == []
    p.send_close(1000)


def test_play_audio_goes_to_the_right_socket(make_node: Callable[..., Node]) -> None:
    """PlayAudio for a live call becomes playAudio text frames on that call's socket alone."""
    node = make_node(unpaced())
    other = Provider(node).open(start=START.replace(CALL_ID, "other-call"))
    p = Provider(node).open()
    audio = pcm(1600, value=1234)  # 100 ms at 16 kHz: one clip
    node._on_command(m.Command(CALL_ID, m.PlayAudio(audio, 16000)))

    assert metric(node, "kgw_commands_total", outcome="ok") == 1
    (text,) = p.texts()
    assert decode_gateway_frame(text, call_sample_rate=16000) == PlayFrame(
        pcm=audio, sample_rate=16000, content_type=AudioContentType.WAVE)
    assert other.texts() == []
    (sent,) = bus(node).outbound
    assert sent.call_id == CALL_ID
    assert sent.body == m.AudioSent(audio, 16000, 0)
    assert all(op == OP_TEXT for op, _ in p.frames())
    p.send_close(1000)
    other.send_close(1000)


def test_hang_up_then_provider_closes(node: Node) -> None:
    """A hang-up sends the disconnect frame; the provider's close then ends it as BOT_HANGUP."""
    p = Provider(node).open()
    node._on_command(m.Command(CALL_ID, m.HangUp()))
    (text,) = p.texts()
    assert "asr_disconnect=true" in text
    assert bus(node).ends() == []
    p.send_close(1000)
    (ended,) = bus(node).ends()
    assert ended.reason is m.EndReason.BOT_HANGUP


def test_hang_up_not_acted_on_times_out(node: Node) -> None:
    """A hang-up the provider does not act on within ending_timeout_s is closed with 4001."""
    p = Provider(node).open()
    node._on_command(m.Command(CALL_ID, m.HangUp()))
    node.clock.advance(10)
    assert p.close_codes() == [4001]
    (ended,) = bus(node).ends()
    assert ended.reason is m.EndReason.ENDING_TIMEOUT
    p.send_close(4001)
    assert len(bus(node).ends()) == 1


def test_command_while_autobahn_closes_raises_nothing(make_node: Callable[..., Node]) -> None:
    """A command that arrives while Autobahn's own close (1009) awaits its reply sends nothing."""
    node = make_node(unpaced(max_frame_bytes=1024))
    p = Provider(node).open()
    p.send_binary(pcm(513))
    assert p.close_codes() == [1009]
    node._on_command(m.Command(CALL_ID, m.PlayAudio(pcm(1600), 16000)))
    node._on_command(m.Command(CALL_ID, m.HangUp()))
    assert p.texts() == []
    assert bus(node).outbound == []
    p.send_close(1009)
    assert [e.reason for e in bus(node).ends()] == [m.EndReason.PROTOCOL_ERROR]


def test_command_after_caller_close_before_connection_lost(make_node: Callable[..., Node]
                                                           ) -> None:
    """Between the caller's close and connectionLost, a command sends nothing and raises nothing."""
    node = make_node(unpaced())
    p = Provider(node).open()
    p.hold_connection_lost()
    p.send_close(1000)
    assert p.close_codes() == [1000]
    node._on_command(m.Command(CALL_ID, m.PlayAudio(pcm(1600), 16000)))
    node._on_command(m.Command(CALL_ID, m.HangUp()))
    assert p.texts() == []
    assert bus(node).outbound == []
    p.release_connection_lost()
    # The caller hung up; the bot's hang-up never reached the provider.
    assert [e.reason for e in bus(node).ends()] == [m.EndReason.CALLER_HANGUP]


def test_playout_timer_after_caller_close_before_connection_lost(node: Node) -> None:
    """Paced playout that comes due between the caller's close and connectionLost sends nothing."""
    p = Provider(node).open()
    node._on_command(m.Command(CALL_ID, m.PlayAudio(pcm(16000), 16000)))  # 1 s of audio
    sent = len(p.texts())
    assert 0 < sent < 5  # paced: only the lead went out
    p.hold_connection_lost()
    p.send_close(1000)
    node.clock.advance(0.5)  # the playout timer fires in the gap
    assert len(p.texts()) == sent
    p.release_connection_lost()
    (ended,) = bus(node).ends()
    assert ended.reason is m.EndReason.CALLER_HANGUP
    assert len(bus(node).outbound) == sent


# --- the call ends ---------------------------------------------------------------------


def test_caller_close_ends_the_call_once(node: Node) -> None:
    """A close frame from the provider ends the call as CALLER_HANGUP, exactly once."""
    p = Provider(node).open()
    p.send_binary(pcm(320))
    p.send_close(1000)
    assert p.close_codes() == [1000]  # Autobahn answers the closing handshake
    assert p.lost
    (ended,) = bus(node).ends()
    assert ended.reason is m.EndReason.CALLER_HANGUP
    assert ended.close_code == 1000
    assert ended.audio_chunks == 1
    assert ended.audio_samples == 320
    assert bus(node).inbound[-1].body is ended
    assert node.registry.get(CALL_ID) is None
    assert not node.sockets
    assert metric(node, "kgw_calls_ended_total", reason="caller_hangup") == 1
    assert metric(node, "kgw_live_calls") == 0


def test_connection_lost_ends_the_call_as_connection_lost(node: Node) -> None:
    """A transport lost without a closing handshake ends the call as CONNECTION_LOST, once."""
    p = Provider(node).open()
    node.clock.advance(2.5)
    p.drop()
    (ended,) = bus(node).ends()
    assert ended.reason is m.EndReason.CONNECTION_LOST
    assert ended.duration_ms == 2500
    assert node.registry.get(CALL_ID) is None
    assert not node.sockets


def test_connection_lost_before_start_publishes_nothing(node: Node) -> None:
    """A socket dropped before its start message leaves no records and no timer."""
    p = Provider(node)
    assert p.handshake() == 101
    p.drop()
    assert bus(node).inbound == []
    assert not node.sockets


def test_idle_call_is_ended_with_4003(node: Node) -> None:
    """A live call with no frame for idle_timeout_s is ended as IDLE_TIMEOUT with close 4003."""
    p = Provider(node).open()
    node.clock.advance(30)
    p.send_binary(pcm(320))
    node.clock.advance(59)
    assert p.close_codes() == []
    node.clock.advance(1)
    assert p.close_codes() == [4003]
    p.send_close(4003)
    (ended,) = bus(node).ends()
    assert ended.reason is m.EndReason.IDLE_TIMEOUT


def test_node_end_closes_with_going_away(node: Node) -> None:
    """A call ended by the node (shutdown) is closed with 1001 and ends as NODE_SHUTDOWN once."""
    p = Provider(node).open()
    p.proto.end(m.EndReason.NODE_SHUTDOWN, "node shutting down", 1001)
    assert p.close_codes() == [1001]
    p.send_close(1001)
    assert [e.reason for e in bus(node).ends()] == [m.EndReason.NODE_SHUTDOWN]
