"""The Knowlarity codec: start messages in every observed shape, caller PCM, outgoing frames."""

from __future__ import annotations

import base64
import json
import random
import struct
import warnings
from pathlib import Path

import pytest

from gateway.core.errors import CloseCode, ProtocolError, UsageError
from gateway.core.knowlarity import (
    AudioContentType,
    HangUpFrame,
    KillAudioFrame,
    PcmAligner,
    PlayFrame,
    TransferFrame,
    UnknownFrame,
    check_transfer_parameters,
    decode_gateway_frame,
    encode_hang_up,
    encode_kill_audio,
    encode_play_audio,
    encode_start,
    encode_transfer,
    parse_start,
    start_with_call_id,
)
from gateway.core.model import Direction

DATA = Path(__file__).parent / "data"
FALLBACK = "path-id-0001"
DOCUMENTED_METADATA = {
    "welcome_message": "Welcome to knowlarity",
    "event": "websocket:connected",
    "call_type": "inbound",
}


def _read(name: str) -> str:
    # Not utf-8-sig: the BOM must reach the parser, as it would off the socket.
    return (DATA / name).read_bytes().decode("utf-8")


# --- start messages: every canned shape ------------------------------------------------

# file, call id, rate, caller, callee, direction, campaign, shape, metadata
STARTS = [
    (
        "start_json.txt", "aosi-adfad-23-ad", 16000, "+919876543210", "+918069458000",
        Direction.INBOUND, "", "json", DOCUMENTED_METADATA,
    ),
    (
        "start_json_aliases.txt", "3f9c2a7e-5b1d-4e8a-9c0f-2d6b8e4a1c7f", 16000,
        "+919876543210", "+918069458000", Direction.INBOUND, "", "json+aliases",
        DOCUMENTED_METADATA,
    ),
    (
        "start_json_metadata_urlencoded.txt", "c2d4e6f8-1a3b-4c5d-9e7f-0a1b2c3d4e5f", 16000,
        "+919845012345", "+918069458000", Direction.INBOUND, "", "json+metadata-urlencoded",
        {
            "welcome_message": "Namaste, welcome to Acme Finance",
            "event": "websocket:connected",
            "call_type": "inbound",
            "metadata": {"lead_id": "L-88213", "language": "hi-IN"},
        },
    ),
    (
        "start_json_metadata_formencoded.txt", "0e1f2a3b-4c5d-4e6f-8a9b-0c1d2e3f4a5b", 16000,
        "+919845012345", "+918069458000", Direction.INBOUND, "", "json+metadata-urlencoded",
        {**DOCUMENTED_METADATA, "caller_display": "+91 98450 12345"},
    ),
    (
        "start_json_metadata_json_string.txt", "9a8b7c6d-5e4f-4a3b-2c1d-0e9f8a7b6c5d", 16000,
        "+919700011122", "+918069458000", Direction.INBOUND, "", "json+metadata-json-string",
        DOCUMENTED_METADATA,
    ),
    (
        "start_python_literal.txt", "b7e1c9d4-2f3a-4c5b-8d6e-9f0a1b2c3d4e", 8000,
        "+919812345678", "+918047112233", Direction.INBOUND, "", "python-literal",
        {
            "welcome_message": "Welcome to O'Brien's line",
            "event": "websocket:connected",
            "call_type": "inbound",
            "is_test": True,
            "recording": False,
            "agent": None,
        },
    ),
    (
        "start_python_literal_aliases.txt", "5d6e7f80-9a1b-4c2d-8e3f-4a5b6c7d8e9f", 16000,
        "+919900887766", "+918047112233", Direction.INBOUND, "", "python-literal+aliases",
        {"call_type": "inbound", "event": "websocket:connected", "caller_name": "D'Souza"},
    ),
    (
        "start_double_encoded_json.txt", "7c8d9e0f-1a2b-4c3d-8e4f-5a6b7c8d9e0f", 16000,
        "+919811122233", "+918069458000", Direction.INBOUND, "", "double-encoded-json",
        DOCUMENTED_METADATA,
    ),
    (
        "start_json_bom_whitespace.txt", "1b2c3d4e-5f6a-4b7c-8d9e-0f1a2b3c4d5e", 16000,
        "+919833344455", "+918069458000", Direction.INBOUND, "", "json+bom",
        DOCUMENTED_METADATA,
    ),
    (
        "start_json_outbound_8000.txt", "f0e1d2c3-b4a5-4968-8776-655443322110_0", 8000,
        "+918047112233", "+919845098765", Direction.OUTBOUND, "CMP-4471", "json",
        {
            "welcome_message": "Hello, this is a reminder from Acme Finance",
            "event": "websocket:connected",
            "call_type": "outbound",
        },
    ),
    (
        "start_json_no_uuid.txt", FALLBACK, 16000, "+919822233344", "+918069458000",
        Direction.UNSPECIFIED, "", "json", {"event": "websocket:connected"},
    ),
]  # fmt: skip


@pytest.mark.parametrize(
    ("name", "call_id", "rate", "caller", "callee", "direction", "campaign", "shape", "metadata"),
    STARTS,
    ids=[row[0] for row in STARTS],
)
def test_parse_start_shapes(
    name: str,
    call_id: str,
    rate: int,
    caller: str,
    callee: str,
    direction: Direction,
    campaign: str,
    shape: str,
    metadata: dict[str, object],
) -> None:
    """Every observed start-message shape parses to the call it describes, naming its shape."""
    text = _read(name)
    start = parse_start(text, fallback_call_id=FALLBACK)
    assert start.call_id == call_id
    assert start.sample_rate == rate
    assert start.caller == caller
    assert start.callee == callee
    assert start.direction is direction
    assert start.provider_campaign == campaign
    assert start.shape == shape
    assert start.fields["metadata"] == metadata
    assert start.raw == text


@pytest.mark.parametrize("name", [row[0] for row in STARTS])
def test_a_start_message_under_a_new_call_id_keeps_every_other_field(name: str) -> None:
    """Every observed shape, rewritten for a replay, parses to the same call under the new
    id (in ``uuid``, or in ``callid`` where that alias named it)."""
    text = _read(name)
    before = parse_start(text, fallback_call_id=FALLBACK)
    after = parse_start(start_with_call_id(text, "c-replay-1"), fallback_call_id=FALLBACK)
    assert after.call_id == "c-replay-1"
    assert (after.sample_rate, after.caller, after.callee, after.direction) == (
        before.sample_rate, before.caller, before.callee, before.direction)
    assert after.fields["metadata"] == before.fields["metadata"]
    assert {k: v for k, v in after.fields.items() if k not in ("uuid", "callid")} == {
        k: v for k, v in before.fields.items() if k not in ("uuid", "callid")}


def test_a_start_message_under_a_bad_call_id_or_no_start_is_refused() -> None:
    with pytest.raises(ProtocolError):
        start_with_call_id(_read("start_json.txt"), "bad id with spaces")
    with pytest.raises(ProtocolError):
        start_with_call_id("[1, 2]", "c-1")


@pytest.mark.parametrize("name", [row[0] for row in STARTS])
def test_parse_start_fields_are_plain_json(name: str) -> None:
    """The kept fields survive a JSON round trip unchanged, whatever shape they came in."""
    fields = parse_start(_read(name), fallback_call_id=FALLBACK).fields
    assert json.loads(json.dumps(fields)) == fields


def test_parse_start_keeps_extra_provider_fields() -> None:
    """Fields the gateway does not know, and the aliased names, are kept as sent."""
    fields = parse_start(_read("start_json_aliases.txt"), fallback_call_id=FALLBACK).fields
    assert fields == {
        "callid": "3f9c2a7e-5b1d-4e8a-9c0f-2d6b8e4a1c7f",
        "knowlarity_call_id": "KN-20241126-0012345",
        "virtual_number": "+918069458000",
        "customer_number": "+919876543210",
        "sample_rate": "16000",
        "campaign": "",
        "dispositions": ["interested", "callback", "not_interested"],
        "agent_number": None,
        "metadata": DOCUMENTED_METADATA,
    }


def test_parse_start_python_literal_tuples_become_lists() -> None:
    """Python tuples in a literal start message are kept as JSON arrays."""
    fields = parse_start(
        _read("start_python_literal_aliases.txt"), fallback_call_id=FALLBACK
    ).fields
    assert fields["dispositions"] == ["sale", "no_sale"]
    assert fields["knowlarity_call_id"] == "KN-20241126-0099881"


def test_parse_start_python_literal_keeps_true_and_none() -> None:
    """True, False and None in a Python-literal message stay JSON true, false and null."""
    fields = parse_start(_read("start_python_literal.txt"), fallback_call_id=FALLBACK).fields
    metadata = fields["metadata"]
    assert isinstance(metadata, dict)
    assert metadata["is_test"] is True and metadata["recording"] is False
    assert metadata["agent"] is None
    assert '"is_test": true' in json.dumps(metadata)


@pytest.mark.parametrize(
    ("text", "shape", "metadata"),
    [
        ('{"uuid": "a", "metadata": ""}', "json+metadata-opaque", ""),
        ('{"uuid": "a", "metadata": "inbound call"}', "json+metadata-opaque", "inbound call"),
        ('{"uuid": "a", "metadata": "[1, 2]"}', "json+metadata-opaque", "[1, 2]"),
        ('{"uuid": "a", "metadata": null}', "json", None),
        (
            '{"uuid": "a", "metadata": {"metadata": "{\\"k\\": \\"v\\"}"}}',
            "json",
            {"metadata": {"k": "v"}},
        ),
        # A raw '+' stays literal when the encoder wrote spaces as %20.
        (
            '{"uuid": "a", "metadata": "%7B%22n%22%3A%20%22+91 x%22%7D"}',
            "json+metadata-urlencoded",
            {"n": "+91 x"},
        ),
    ],
)
def test_parse_start_metadata_variants(text: str, shape: str, metadata: object) -> None:
    """Metadata strings are decoded when they hold a JSON object and kept as sent otherwise."""
    start = parse_start(text, fallback_call_id=FALLBACK)
    assert start.shape == shape
    assert start.fields["metadata"] == metadata


def test_parse_start_nested_metadata_depth_is_bounded() -> None:
    """Nested metadata strings are decoded only a few levels deep, the rest kept as sent."""
    innermost = '{"x": 1}'
    level = innermost
    for _ in range(5):
        level = json.dumps({"metadata": level})
    start = parse_start(json.dumps({"uuid": "a", "metadata": level}), fallback_call_id=FALLBACK)
    node = start.fields["metadata"]
    depth = 0
    while isinstance(node, dict):
        node = node["metadata"]
        depth += 1
    assert depth == 4
    assert isinstance(node, str)


@pytest.mark.parametrize(
    ("text", "direction"),
    [
        ('{"call_type": "outbound"}', Direction.OUTBOUND),
        ('{"call_type": "inbound", "metadata": {"call_type": "Outbound"}}', Direction.OUTBOUND),
        ('{"metadata": {"call_type": " INBOUND "}}', Direction.INBOUND),
        ('{"metadata": {"call_type": "transfer"}}', Direction.UNSPECIFIED),
        ('{"metadata": {"call_type": 1}}', Direction.UNSPECIFIED),
    ],
)
def test_parse_start_call_type(text: str, direction: Direction) -> None:
    """call_type is read from metadata first, then the top level; unknown values are unspecified."""
    assert parse_start(text, fallback_call_id=FALLBACK).direction is direction


@pytest.mark.parametrize(
    ("value", "rate"),
    [
        ("8000", 8000),
        (" 16000 ", 16000),
        (24000, 24000),
        (32000.0, 32000),
        (44100, 44100),
        ("48000", 48000),
        (None, 8000),
        ("", 8000),
    ],
)
def test_parse_start_sample_rate_forms(value: object, rate: int) -> None:
    """sample_rate may be a number or numeric string; null or empty means the default."""
    text = json.dumps({"uuid": "a", "sample_rate": value})
    assert (
        parse_start(text, fallback_call_id=FALLBACK, default_sample_rate=8000).sample_rate == rate
    )


def test_parse_start_missing_sample_rate_uses_default() -> None:
    """A start message without sample_rate gets the configured default."""
    start = parse_start('{"uuid": "a"}', fallback_call_id=FALLBACK, default_sample_rate=8000)
    assert start.sample_rate == 8000


@pytest.mark.parametrize("value", [11025, 0, -16000, True, 16000.5, "16k", "١٦٠٠٠", [16000]])
def test_parse_start_rejects_bad_sample_rate(value: object) -> None:
    """A sample_rate outside the supported set closes the call as an invalid payload."""
    with pytest.raises(ProtocolError) as caught:
        parse_start(json.dumps({"uuid": "a", "sample_rate": value}), fallback_call_id=FALLBACK)
    assert caught.value.close_code is CloseCode.INVALID_PAYLOAD
    assert "sample_rate" in caught.value.reason


def test_parse_start_numeric_ids_become_text() -> None:
    """Call ids and phone numbers sent as JSON numbers are kept as their decimal text."""
    start = parse_start(
        '{"uuid": 123456, "from": 919876543210, "to": 8069458000}', fallback_call_id=FALLBACK
    )
    assert (start.call_id, start.caller, start.callee) == ("123456", "919876543210", "8069458000")


def test_parse_start_documented_names_win_over_aliases() -> None:
    """When both a documented name and its alias are present, the documented one is used."""
    start = parse_start(
        '{"uuid": "u", "callid": "c", "from": "f", "customer_number": "cn"}',
        fallback_call_id=FALLBACK,
    )
    assert (start.call_id, start.caller, start.shape) == ("u", "f", "json")


def test_parse_start_empty_call_id_uses_fallback() -> None:
    """An empty call id falls back to the id the gateway derived from the connection."""
    assert parse_start('{"uuid": ""}', fallback_call_id=FALLBACK).call_id == FALLBACK


def test_parse_start_rejects_unsupported_default_rate() -> None:
    """A default sample rate outside the supported set is a gateway bug, not a peer error."""
    with pytest.raises(UsageError):
        parse_start('{"uuid": "a"}', fallback_call_id=FALLBACK, default_sample_rate=11025)


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("bad_start_not_object.txt", "JSON array, not an object"),
        ("bad_start_truncated.txt", "neither JSON"),
        ("bad_start_sample_rate.txt", "sample_rate 11025 is not one of"),
        ("bad_start_sample_rate_text.txt", "sample_rate '16 kHz' is not one of"),
        ("bad_start_double_encoded_array.txt", "JSON array, not an object"),
        ("bad_start_empty.txt", "empty"),
        ("bad_start_plain_text.txt", "not JSON"),
        ("bad_start_python_set.txt", "Python set, not a dict"),
    ],
)
def test_parse_start_rejects_canned_bad_messages(name: str, reason: str) -> None:
    """Unusable start messages close the call as an invalid payload with a reason that says why."""
    with pytest.raises(ProtocolError) as caught:
        parse_start(_read(name), fallback_call_id=FALLBACK)
    assert caught.value.close_code is CloseCode.INVALID_PAYLOAD
    assert reason in caught.value.reason


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("null", "JSON null, not an object"),
        ("42", "JSON number, not an object"),
        (json.dumps(json.dumps(json.dumps(json.dumps('{"uuid": "a"}')))), "more than 3 times"),
        ('"not json inside"', "content is not JSON"),
        ("{'uuid': b'bytes'}", "holds a bytes"),
        ("{'uuid': 'a', 'x': {1, 2}}", "holds a set"),
        ('{"uuid": {"id": "a"}}', "'uuid' is a object"),
        ('{"uuid": "a", "from": ["+91"]}', "'from' is a array"),
        ("[" * 100_000, "start message"),
        ('{"uuid": "a", "x": NaN}', "NaN is not a JSON value"),
        ('{"uuid": "a", "x": 1e999}', "overflows to infinity"),
        ("{'uuid': 'a', 'x': 1e999}", "infinite number"),
    ],
)
def test_parse_start_rejects_other_bad_messages(text: str, reason: str) -> None:
    """Non-objects, over-nested encodings and non-JSON values are refused with a clear reason."""
    with pytest.raises(ProtocolError) as caught:
        parse_start(text[:65536], fallback_call_id=FALLBACK)
    assert caught.value.close_code is CloseCode.INVALID_PAYLOAD
    assert reason in caught.value.reason


def test_parse_start_python_literal_errors_are_silent() -> None:
    """A malformed Python-literal message raises ProtocolError without printing SyntaxWarnings."""
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        with pytest.raises(ProtocolError):
            parse_start("{'uuid': 1st}", fallback_call_id=FALLBACK)
    assert seen == []


def test_parse_start_accepts_three_levels_of_encoding() -> None:
    """A message JSON-encoded three times over is still accepted."""
    text = json.dumps(json.dumps(json.dumps('{"uuid": "a"}')))
    start = parse_start(text, fallback_call_id=FALLBACK)
    assert (start.call_id, start.shape) == ("a", "double-encoded-json")


def test_parse_start_reason_never_echoes_much_input() -> None:
    """An error reason quotes at most about 100 characters of what the peer sent."""
    secret = "".join(chr(ord("a") + i % 26) for i in range(5000))
    for text in ("{" + secret, secret, '{"uuid": "a", "sample_rate": "' + secret + '"}'):
        with pytest.raises(ProtocolError) as caught:
            parse_start(text, fallback_call_id=FALLBACK)
        assert secret[:101] not in caught.value.reason
        assert len(caught.value.reason) < 300


def test_parse_start_size_limit() -> None:
    """A start message of exactly 64 KiB of UTF-8 is accepted and one byte more is refused."""
    body = '{"uuid": "a", "pad": "'
    pad = "é" * ((65536 - len(body) - 2) // 2)  # two UTF-8 bytes each
    text = body + pad + '"}'
    text += " " * (65536 - len(text.encode()))
    assert len(text.encode()) == 65536
    assert parse_start(text, fallback_call_id=FALLBACK).call_id == "a"
    with pytest.raises(ProtocolError) as caught:
        parse_start(text + " ", fallback_call_id=FALLBACK)
    assert caught.value.close_code is CloseCode.MESSAGE_TOO_BIG


def test_parse_start_refuses_huge_message_by_length() -> None:
    """A multi-megabyte start message is refused as too big."""
    with pytest.raises(ProtocolError) as caught:
        parse_start("{" * 5_000_000, fallback_call_id=FALLBACK)
    assert caught.value.close_code is CloseCode.MESSAGE_TOO_BIG


def test_encode_start_is_the_documented_shape() -> None:
    """encode_start writes the start message exactly as the provider documents it."""
    text = encode_start("c-1", 8000, "+919876543210", "+918069458000", "outbound", "CMP-9", "Hi")
    assert json.loads(text) == {
        "uuid": "c-1",
        "sample_rate": 8000,
        "from": "+919876543210",
        "to": "+918069458000",
        "campaign": "CMP-9",
        "metadata": {
            "welcome_message": "Hi",
            "event": "websocket:connected",
            "call_type": "outbound",
        },
    }
    start = parse_start(text, fallback_call_id=FALLBACK)
    assert (start.call_id, start.sample_rate, start.direction, start.shape) == (
        "c-1",
        8000,
        Direction.OUTBOUND,
        "json",
    )


# --- caller PCM alignment ----------------------------------------------------------------


# A bytearray too, because CPython hands back the same object for bytes(b) and b[:].
@pytest.mark.parametrize("frame", [bytes(640), bytearray(640)], ids=["bytes", "bytearray"])
def test_aligner_passes_even_frames_through_without_copying(frame: bytes) -> None:
    """An even-length frame with nothing pending is returned as the very same object."""
    aligner = PcmAligner()
    assert aligner.push(frame) is frame
    assert aligner.pending == 0


def test_aligner_carries_odd_byte() -> None:
    """An odd trailing byte is held back and prefixed to the next frame."""
    aligner = PcmAligner()
    assert aligner.push(b"\x01\x02\x03") == b"\x01\x02"
    assert aligner.pending == 1
    assert aligner.push(b"\x04\x05\x06") == b"\x03\x04\x05\x06"
    assert aligner.pending == 0
    assert aligner.push(b"\x07") == b""
    assert aligner.pending == 1
    assert aligner.push(b"\x08") == b"\x07\x08"
    assert aligner.pending == 0


def test_aligner_zero_length_frames() -> None:
    """Zero-length frames yield nothing and keep any pending byte."""
    aligner = PcmAligner()
    assert aligner.push(b"") == b""
    assert aligner.pending == 0
    aligner.push(b"\x01")
    assert aligner.push(b"") == b""
    assert aligner.pending == 1
    assert aligner.push(b"\x02") == b"\x01\x02"


@pytest.mark.parametrize("seed", range(50))
def test_aligner_reassembles_any_split(seed: int) -> None:
    """However a stream is split, outputs are whole samples that rejoin to the stream exactly."""
    rng = random.Random(seed)
    stream = rng.randbytes(rng.randrange(0, 5000))
    cuts = sorted(rng.randrange(0, len(stream) + 1) for _ in range(rng.randrange(0, 40)))
    aligner = PcmAligner()
    out = []
    start = 0
    for cut in [*cuts, len(stream)]:
        chunk = aligner.push(stream[start:cut])
        assert len(chunk) % 2 == 0
        out.append(chunk)
        start = cut
        assert aligner.pending == start % 2
    joined = b"".join(out)
    assert joined == stream[: len(stream) & ~1]
    assert aligner.pending == len(stream) % 2


# --- gateway -> provider frames -----------------------------------------------------------


def test_encode_play_audio_wave_exact() -> None:
    """A wave playAudio frame is compact JSON carrying a base64 WAV clip of the PCM."""
    pcm = b"\x01\x00\xff\xff"
    header = b"RIFF" + struct.pack("<I", 40) + b"WAVE" + b"fmt "
    header += struct.pack("<IHHIIHH", 16, 1, 1, 8000, 16000, 2, 16) + b"data" + struct.pack("<I", 4)
    expected = (
        '{"type":"playAudio","data":{"audioContentType":"wave","audioContent":"'
        + base64.b64encode(header + pcm).decode()
        + '"}}'
    )
    assert encode_play_audio(pcm, 8000) == expected


def test_encode_play_audio_raw_exact() -> None:
    """A raw playAudio frame carries the sample rate and the base64 PCM with no header."""
    assert encode_play_audio(b"\x01\x02\x03\x04", 16000, AudioContentType.RAW) == (
        '{"type":"playAudio","data":{"audioContentType":"raw","sampleRate":16000,'
        '"audioContent":"AQIDBA=="}}'
    )


@pytest.mark.parametrize("content_type", list(AudioContentType))
@pytest.mark.parametrize("samples", [0, 1, 3, 159, 160, 8001])
@pytest.mark.parametrize("rate", [8000, 16000, 44100])
def test_play_audio_round_trip(content_type: AudioContentType, samples: int, rate: int) -> None:
    """decode_gateway_frame(encode_play_audio(pcm)) returns the same PCM bit for bit."""
    pcm = random.Random(samples * rate).randbytes(samples * 2)
    frame = decode_gateway_frame(encode_play_audio(pcm, rate, content_type), call_sample_rate=48000)
    assert frame == PlayFrame(pcm, rate, content_type)


def test_raw_frame_without_rate_uses_call_rate() -> None:
    """A raw playAudio frame without sampleRate is taken at the call's sample rate."""
    text = '{"type":"playAudio","data":{"audioContentType":"raw","audioContent":"AQIDBA=="}}'
    assert decode_gateway_frame(text, call_sample_rate=8000) == PlayFrame(
        b"\x01\x02\x03\x04", 8000, AudioContentType.RAW
    )


@pytest.mark.parametrize(
    ("pcm", "rate", "content_type"),
    [
        (b"\x00", 16000, AudioContentType.WAVE),
        (b"\x00", 16000, AudioContentType.RAW),
        (b"\x00\x00", 0, AudioContentType.WAVE),
        (b"\x00\x00", -1, AudioContentType.RAW),
    ],
)
def test_encode_play_audio_rejects_bad_input(
    pcm: bytes, rate: int, content_type: AudioContentType
) -> None:
    """Playing a partial sample or at a non-positive rate is refused."""
    with pytest.raises(ValueError):
        encode_play_audio(pcm, rate, content_type)


def test_encode_hang_up_exact() -> None:
    """The hang-up frame is exactly the documented one."""
    assert encode_hang_up() == (
        '{"type":"playAudio","data":{"audioContentType":"wave","audioContent":"None",'
        '"textContent":"asr_disconnect=true"}}'
    )
    assert decode_gateway_frame(encode_hang_up(), call_sample_rate=16000) == HangUpFrame()


def test_encode_transfer_default_agent_exact() -> None:
    """A transfer to the default agent is exactly the documented frame."""
    assert encode_transfer([("parameter1", "default")]) == (
        '{"type":"playAudio","data":{"audioContentType":"wave","audioContent":"None",'
        '"textContent":"asr_disconnect=true,parameter1=default"}}'
    )


def test_encode_transfer_keeps_parameter_order() -> None:
    """Transfer parameters are written, and read back, in the order given."""
    parameters = (("zeta", "1"), ("alpha", "2"), ("mid", ""), ("alpha", "3"))
    text = encode_transfer(parameters)
    assert json.loads(text)["data"]["textContent"] == (
        "asr_disconnect=true,zeta=1,alpha=2,mid=,alpha=3"
    )
    assert decode_gateway_frame(text, call_sample_rate=16000) == TransferFrame(parameters)


@pytest.mark.parametrize(
    "parameters",
    [
        [],
        [("", "x")],
        [("a,b", "x")],
        [("a=b", "x")],
        [("a", "x,y")],
        [("a", "x=y")],
        [("ok", "1"), ("bad", "1,2")],
    ],
)
def test_encode_transfer_rejects_grammar_breaking_parameters(
    parameters: list[tuple[str, str]],
) -> None:
    """Parameters that would corrupt the textContent grammar, or no parameters, are refused."""
    with pytest.raises(ValueError):
        check_transfer_parameters(parameters)
    with pytest.raises(ValueError):
        encode_transfer(parameters)


def test_encode_kill_audio_exact() -> None:
    """The stop-playback frame is the mod_audio_fork killAudio message."""
    assert encode_kill_audio() == '{"type":"killAudio"}'
    assert decode_gateway_frame(encode_kill_audio(), call_sample_rate=16000) == KillAudioFrame()


@pytest.mark.parametrize(
    "text",
    [
        "not json",
        "[1, 2]",
        '{"type": "sendText", "data": {}}',
        '{"type": "playAudio"}',
        '{"type": "playAudio", "data": {"audioContentType": "mp3", "audioContent": "@@"}}',
        '{"type":"playAudio","data":{"audioContent":"None","textContent":"transfer=1"}}',
        '{"type":"playAudio","data":{"audioContent":"None","textContent":"asr_disconnect=true,x"}}',
        '{"type":"playAudio","data":{"audioContent":"None","textContent":7}}',
    ],
)
def test_decode_gateway_frame_unknown(text: str) -> None:
    """Frames of no known type or grammar are returned as UnknownFrame with their text."""
    assert decode_gateway_frame(text, call_sample_rate=16000) == UnknownFrame(text)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ('{"type":"playAudio","data":{"audioContentType":"raw","audioContent":"@@"}}', "base64"),
        ('{"type":"playAudio","data":{"audioContentType":"raw","audioContent":"AQ=="}}', "odd"),
        ('{"type":"playAudio","data":{"audioContentType":"wave","audioContent":"AQI="}}', "wave"),
        ('{"type":"playAudio","data":{"audioContentType":"wave","audioContent":5}}', "string"),
        (
            '{"type":"playAudio","data":{"audioContentType":"raw","sampleRate":"fast",'
            '"audioContent":"AQIDBA=="}}',
            "sampleRate 'fast' is not one of",
        ),
    ],
)
def test_decode_gateway_frame_rejects_broken_audio(text: str, reason: str) -> None:
    """A playAudio frame whose audio cannot be decoded raises ProtocolError."""
    with pytest.raises(ProtocolError) as caught:
        decode_gateway_frame(text, call_sample_rate=16000)
    assert reason in caught.value.reason


# --- bounds on what the provider sends -------------------------------------------------------

CALL_IDS = [
    ("aosi-adfad-23-ad", True),
    ("c-7781_0", True),
    ("a:b.c_d-e", True),
    ("x" * 128, True),
    ("x" * 129, False),
    ("a b", False),
    ("new\nline", False),
    ("quote'", False),
    ("slash/", False),
    ("é", False),
    ("", False),
]


@pytest.mark.parametrize(("call_id", "ok"), CALL_IDS)
def test_call_ids_are_bounded_and_from_a_safe_set(call_id, ok):
    """Call ids of 1 to 128 characters of A-Z a-z 0-9 - _ . : pass; anything else is 1007."""
    from gateway.core.knowlarity import check_call_id

    if ok:
        assert check_call_id(call_id) == call_id
    else:
        with pytest.raises(ProtocolError) as e:
            check_call_id(call_id)
        assert e.value.close_code == CloseCode.INVALID_PAYLOAD
        assert "\n" not in e.value.reason


def test_a_start_message_with_a_60_kb_call_id_is_refused():
    """The uuid of a start message is checked: 60 KB of it is a 1007, not a Kafka key."""
    with pytest.raises(ProtocolError, match="at most 128"):
        parse_start(json.dumps({"uuid": "a" * 60_000}), fallback_call_id="f")


def test_a_bad_fallback_call_id_is_refused_too():
    """Without a uuid, the path's id becomes the call id only if it passes the same check."""
    with pytest.raises(ProtocolError, match="characters outside"):
        parse_start('{"sample_rate": 16000}', fallback_call_id="a;b")


@pytest.mark.parametrize(("size", "ok"), [(1000, True), (8 * 1024 - 10, True),
                                          (8 * 1024 + 10, False), (60_000, False)])
def test_python_literal_start_messages_are_read_only_when_small(size, ok):
    """The Python-literal parser (slow on big input) only runs on messages under 8 KiB."""
    head = "{'uuid': 'c1', 'sample_rate': 16000, 'pad': '"
    text = head + "p" * (size - len(head) - 2) + "'}"
    assert len(text) == size
    if ok:
        assert parse_start(text, fallback_call_id="f").shape == "python-literal"
    else:
        with pytest.raises(ProtocolError, match="too long to be read as a Python literal"):
            parse_start(text, fallback_call_id="f")
