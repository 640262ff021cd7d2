"""Knowlarity's JSON, both directions: the only module that knows it (see PROTOCOL.md).

Gateway side: ``parse_start`` reads the provider's first text frame,
``PcmAligner`` keeps caller audio sample-aligned, and the ``encode_*``
functions write the frames the gateway sends. Provider side (for the simulator
and tests): ``encode_start`` and ``decode_gateway_frame``.

``CallStart.shape`` names the shape the start message came in. It is a base,
optionally followed by suffixes in this order:

base (exactly one)
    ``json``                 a JSON object (the documented shape)
    ``python-literal``       a Python dict literal (single quotes, True/False/None)
    ``double-encoded-json``  a JSON string (up to 3 levels deep) whose content is a JSON object
suffixes
    ``+aliases``                the call id, caller or callee came as ``callid``,
                                ``customer_number`` or ``virtual_number``
    ``+metadata-json-string``   ``metadata`` was a string holding JSON
    ``+metadata-urlencoded``    ``metadata`` was a URL-encoded JSON string
    ``+metadata-opaque``        ``metadata`` was a string that is neither; kept as sent
    ``+bom``                    the text started with a byte-order mark

for example ``json``, ``json+aliases+metadata-urlencoded``, ``python-literal+bom``.
"""

from __future__ import annotations

import ast
import base64
import binascii
import enum
import json
import math
import re
import urllib.parse
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

from gateway.core.errors import CloseCode, ProtocolError, UsageError
from gateway.core.model import CallStart, Direction
from gateway.core.wav import decode_wav, encode_wav

__all__ = [
    "AudioContentType",
    "MAX_START_BYTES",
    "MAX_LITERAL_START_BYTES",
    "MAX_CALL_ID_CHARS",
    "check_call_id",
    "largest_play_frame_bytes",
    "SAMPLE_RATES",
    "PcmAligner",
    "parse_start",
    "encode_play_audio",
    "encode_hang_up",
    "encode_transfer",
    "check_transfer_parameters",
    "encode_kill_audio",
    "encode_start",
    "PlayFrame",
    "HangUpFrame",
    "TransferFrame",
    "KillAudioFrame",
    "UnknownFrame",
    "GatewayFrame",
    "decode_gateway_frame",
]

MAX_START_BYTES = 64 * 1024
# ast.literal_eval costs over 100 ms on a 60 KB message; real start messages
# are well under 2 KB, so the Python-literal shape is parsed only below this.
MAX_LITERAL_START_BYTES = 8 * 1024
# Call ids become Kafka keys and appear in every log line about the call.
MAX_CALL_ID_CHARS = 128
CALL_ID_CHARS = "A-Z a-z 0-9 - _ . :"
_CALL_ID = re.compile(r"[A-Za-z0-9\-_.:]+")
SAMPLE_RATES = frozenset({8000, 16000, 24000, 32000, 44100, 48000})

_BOM = "\ufeff"
_MAX_NESTING = 3
_MAX_LITERAL_INT = 10**30
_EXCERPT_CHARS = 60
_ALIASES = (("uuid", "callid"), ("from", "customer_number"), ("to", "virtual_number"))
_DISCONNECT = "asr_disconnect=true"
_COMPACT = (",", ":")


class AudioContentType(enum.Enum):
    WAVE = "wave"
    RAW = "raw"


# --- the start message --------------------------------------------------------


def parse_start(text: str, *, fallback_call_id: str, default_sample_rate: int = 16000) -> CallStart:
    """Parse the provider's first text frame in any shape PROTOCOL.md lists.

    Raises ``ProtocolError`` (``INVALID_PAYLOAD``, or ``MESSAGE_TOO_BIG`` past
    ``MAX_START_BYTES`` of UTF-8) when it is not a call description.
    """
    if default_sample_rate not in SAMPLE_RATES:
        raise UsageError(f"default_sample_rate {default_sample_rate} is not supported")
    # len() first so that a huge frame is refused without encoding it.
    if len(text) > MAX_START_BYTES or len(text.encode("utf-8", "surrogatepass")) > MAX_START_BYTES:
        raise ProtocolError(
            f"start message exceeds {MAX_START_BYTES} bytes", CloseCode.MESSAGE_TOO_BIG
        )
    message, shape, had_bom = _decode_document(text)

    suffixes = []
    if any(alias in message and message.get(name) in (None, "") for name, alias in _ALIASES):
        suffixes.append("+aliases")
    fields = dict(message)
    metadata: object = fields.get("metadata")
    if "metadata" in fields:
        metadata, encoding = _decode_metadata(fields["metadata"], 0)
        fields["metadata"] = metadata
        if encoding:
            suffixes.append(f"+metadata-{encoding}")
    if had_bom:
        suffixes.append("+bom")
    meta = metadata if isinstance(metadata, dict) else {}
    _check_carriable(fields)

    call_id = check_call_id(
        _text(_aliased(fields, "uuid", "callid"), "uuid") or fallback_call_id)
    call_type = meta.get("call_type", fields.get("call_type"))
    campaign = fields.get("campaign", meta.get("campaign"))
    return CallStart(
        call_id=call_id,
        sample_rate=_sample_rate(fields.get("sample_rate"), default_sample_rate),
        caller=_text(_aliased(fields, "from", "customer_number"), "from"),
        callee=_text(_aliased(fields, "to", "virtual_number"), "to"),
        direction=_direction(call_type),
        provider_campaign=_text(campaign, "campaign"),
        fields=fields,
        shape=shape + "".join(suffixes),
        raw=text,
    )


def start_with_call_id(raw: str, call_id: str) -> str:
    """The start message ``raw`` (any shape ``parse_start`` reads) naming ``call_id``, as
    compact JSON with every other field as it was: what a replay sends.

    The id goes where ``parse_start`` reads it (``uuid``, else its alias ``callid``); a
    message that named none (the id came from the URL path) gets a ``uuid``. Raises
    ``ProtocolError`` if ``raw`` is no start message or ``call_id`` no call id.
    """
    check_call_id(call_id)
    message, _, _ = _decode_document(raw)
    key = "callid" if message.get("uuid") in (None, "") and "callid" in message else "uuid"
    out = json.dumps({**message, key: call_id}, separators=(",", ":"), ensure_ascii=False)
    parse_start(out, fallback_call_id="-")  # what the node will accept
    return out


def _decode_document(text: str) -> tuple[dict[str, object], str, bool]:
    """Return the message object, its base shape and whether a BOM was stripped."""
    stripped, had_bom = _strip(text)
    if not stripped:
        raise ProtocolError("start message is empty")
    try:
        value: object = _loads(stripped)
    except (ValueError, RecursionError) as json_error:
        # Only a syntax error hints at another notation; NaN, overflow or over-long
        # integers are JSON the gateway will not carry.
        syntax = isinstance(json_error, json.JSONDecodeError)
        if not (syntax and stripped.startswith("{")):
            raise ProtocolError(
                f"start message is not JSON ({_json_error(json_error)}); "
                f"it begins {_excerpt(stripped)}"
            ) from None
        return _from_python_literal(stripped, json_error), "python-literal", had_bom
    if isinstance(value, dict):
        return value, "json", had_bom
    depth = 0
    while isinstance(value, str):
        depth += 1
        if depth > _MAX_NESTING:
            raise ProtocolError(f"start message is JSON-encoded more than {_MAX_NESTING} times")
        inner, inner_bom = _strip(value)
        had_bom = had_bom or inner_bom
        try:
            value = _loads(inner)
        except (ValueError, RecursionError) as error:
            raise ProtocolError(
                f"start message is a JSON string whose content is not JSON "
                f"({_json_error(error)}); it begins {_excerpt(inner)}"
            ) from None
    if not isinstance(value, dict):
        raise ProtocolError(
            f"start message is a JSON {_json_kind(value)}, not an object; "
            f"it begins {_excerpt(stripped)}"
        )
    return value, "double-encoded-json", had_bom


def _from_python_literal(text: str, json_error: Exception) -> dict[str, object]:
    if len(text) > MAX_LITERAL_START_BYTES:
        raise ProtocolError(
            f"start message is not JSON ({_json_error(json_error)}), and at {len(text)} "
            f"characters too long to be read as a Python literal "
            f"(at most {MAX_LITERAL_START_BYTES})")
    try:
        # literal_eval warns (to stderr) about odd tokens such as "1st"; the error suffices.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", SyntaxWarning)
            warnings.simplefilter("ignore", DeprecationWarning)  # invalid escapes, 3.11
            value = ast.literal_eval(text)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        # The JSON error is the more useful one: most senders meant JSON.
        raise ProtocolError(
            f"start message is neither JSON ({_json_error(json_error)}) nor a Python dict "
            f"literal; it begins {_excerpt(text)}"
        ) from None
    if not isinstance(value, dict):
        raise ProtocolError(
            f"start message is a Python {type(value).__name__}, not a dict; "
            f"it begins {_excerpt(text)}"
        )
    converted = _jsonable(value)
    assert isinstance(converted, dict)
    return converted


def _jsonable(value: object) -> object:
    """Turn a Python literal into what ``json.loads`` would have produced."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ProtocolError("Python-literal start message holds an infinite number")
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > _MAX_LITERAL_INT:
        # 0xfff... of thousands of digits: str() of it raises ValueError later.
        raise ProtocolError("Python-literal start message holds a number too large to carry")
    if value is None or isinstance(value, str | bool | int | float):
        return value
    if isinstance(value, list | tuple):
        return [_jsonable(item) for item in value]
    if isinstance(value, dict):
        return {_jsonable_key(key): _jsonable(item) for key, item in value.items()}
    raise ProtocolError(
        f"Python-literal start message holds a {type(value).__name__}, which JSON cannot carry"
    )


def _jsonable_key(key: object) -> str:
    if isinstance(key, str):
        return key
    if key is None or isinstance(key, bool | int | float):
        return json.dumps(key)  # the key json.dumps would write: 1 -> "1", True -> "true"
    raise ProtocolError(f"Python-literal start message has a {type(key).__name__} key")


def _decode_metadata(value: object, depth: int) -> tuple[object, str]:
    """Decode ``metadata`` (and nested ``metadata``) strings; return it and its encoding."""
    encoding = ""
    if isinstance(value, str):
        decoded = _metadata_from_string(value)
        if decoded is None:
            return value, "opaque"
        value, encoding = decoded
    if isinstance(value, dict) and "metadata" in value and depth < _MAX_NESTING:
        inner, _ = _decode_metadata(value["metadata"], depth + 1)
        value = {**value, "metadata": inner}
    return value, encoding


def _metadata_from_string(text: str) -> tuple[dict[str, object], str] | None:
    stripped, _ = _strip(text)
    decoded = _json_object(stripped)
    if decoded is not None:
        return decoded, "json-string"
    if "%" not in stripped and "+" not in stripped:
        return None
    # A form encoder writes spaces as '+'; a percent encoder writes them as %20 and
    # leaves any raw '+' literal. Seeing %20 means the latter.
    unquote = urllib.parse.unquote if "%20" in stripped else urllib.parse.unquote_plus
    decoded = _json_object(unquote(stripped))
    if decoded is not None:
        return decoded, "urlencoded"
    return None


def _loads(text: str) -> object:
    # NaN and Infinity are not JSON; downstream encoders would choke on them.
    return json.loads(text, parse_constant=_reject_constant, parse_float=_finite_float)


def _reject_constant(name: str) -> object:
    raise ValueError(f"{name} is not a JSON value")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError("a number overflows to infinity")
    return value


def _json_object(text: str) -> dict[str, object] | None:
    try:
        value = _loads(text)
    except (ValueError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


def _check_carriable(fields: dict[str, object]) -> None:
    """Every field must survive the trip to a protobuf record: JSON's escapes can spell
    lone surrogates (not Unicode) and huge integers that no encoder takes."""
    try:
        json.dumps(fields, ensure_ascii=False, default=str).encode("utf-8")
    except (UnicodeEncodeError, ValueError):
        raise ProtocolError("start message holds text or numbers the gateway cannot carry "
                            "(a lone surrogate escape, or a number too large)") from None


def check_call_id(call_id: str) -> str:
    """The call id, if it is 1 to ``MAX_CALL_ID_CHARS`` characters of ``CALL_ID_CHARS``.

    Raises ``ProtocolError`` (1007) otherwise, before any record is written.
    """
    if len(call_id) > MAX_CALL_ID_CHARS:
        raise ProtocolError(f"call id of {len(call_id)} characters; at most "
                            f"{MAX_CALL_ID_CHARS} are allowed")
    if not _CALL_ID.fullmatch(call_id):
        raise ProtocolError(f"call id {_excerpt(call_id)} has characters outside {CALL_ID_CHARS}")
    return call_id


def _aliased(fields: dict[str, object], name: str, alias: str) -> object:
    value = fields.get(name)
    return fields.get(alias) if value in (None, "") else value


def _text(value: object, name: str) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    # Phone numbers and ids sometimes arrive as JSON numbers.
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    raise ProtocolError(f"start message field {name!r} is a {_json_kind(value)}, not a string")


def _sample_rate(value: object, default: int, name: str = "start message sample_rate") -> int:
    rate: int | None = None
    if value is None or value == "":
        return default
    if isinstance(value, bool):
        rate = None
    elif isinstance(value, int):
        rate = value
    elif isinstance(value, float) and value.is_integer():
        rate = int(value)
    elif isinstance(value, str) and value.strip().isascii() and value.strip().isdigit():
        rate = int(value.strip())
    if rate not in SAMPLE_RATES:
        allowed = ", ".join(str(r) for r in sorted(SAMPLE_RATES))
        raise ProtocolError(f"{name} {_excerpt(value)} is not one of {allowed}")
    assert rate is not None
    return rate


def _direction(call_type: object) -> Direction:
    if isinstance(call_type, str):
        lowered = call_type.strip().lower()
        if lowered == "inbound":
            return Direction.INBOUND
        if lowered == "outbound":
            return Direction.OUTBOUND
    return Direction.UNSPECIFIED


def _strip(text: str) -> tuple[str, bool]:
    stripped = text.strip()
    if stripped.startswith(_BOM):
        return stripped[1:].strip(), True
    return stripped, False


def _excerpt(value: object) -> str:
    """At most ~``_EXCERPT_CHARS`` of peer input, quoted, for an error reason."""
    if isinstance(value, str):
        shown = repr(value[:_EXCERPT_CHARS])
        return shown + "..." if len(value) > _EXCERPT_CHARS else shown
    text = json.dumps(value, default=repr)
    return text[:_EXCERPT_CHARS] + "..." if len(text) > _EXCERPT_CHARS else text


def _json_error(error: Exception) -> str:
    # JSONDecodeError.msg and position never echo the input.
    if isinstance(error, json.JSONDecodeError):
        return f"{error.msg} at line {error.lineno} column {error.colno}"
    if isinstance(error, ValueError):  # our NaN refusal, or the int digit limit
        return str(error)[:100]
    return type(error).__name__


def _json_kind(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object" if isinstance(value, dict) else type(value).__name__


# --- caller audio ---------------------------------------------------------------


class PcmAligner:
    """Keeps caller PCM on 16-bit sample boundaries across frames of any length."""

    __slots__ = ("_carry",)

    def __init__(self) -> None:
        self._carry = b""

    def push(self, data: bytes) -> bytes:
        """Return the whole samples available now; hold an odd trailing byte for the next call."""
        carry = self._carry
        if not carry:
            if not len(data) & 1:
                return data  # the hot path: no copy
            self._carry = data[-1:]
            return data[:-1]
        joined = carry + data
        if len(joined) & 1:
            self._carry = joined[-1:]
            return joined[:-1]
        self._carry = b""
        return joined

    @property
    def pending(self) -> int:
        """Bytes held back, waiting for the rest of their sample (0 or 1)."""
        return len(self._carry)


# --- gateway -> provider -----------------------------------------------------------


def encode_play_audio(
    pcm: bytes, sample_rate: int, content_type: AudioContentType = AudioContentType.WAVE
) -> str:
    """A ``playAudio`` frame carrying ``pcm`` as a base64 WAV clip or as raw PCM."""
    # Written out rather than json.dumps'd: this runs for every clip sent, and
    # base64 text never needs JSON escaping. Tests pin the exact frames.
    if content_type is AudioContentType.WAVE:
        return _PLAY_WAVE % _b64(encode_wav(pcm, sample_rate))
    if len(pcm) % 2:
        raise ValueError(f"PCM must hold whole 16-bit samples; got {len(pcm)} bytes (odd)")
    if sample_rate <= 0:
        raise ValueError(f"sample rate must be positive; got {sample_rate}")
    return _PLAY_RAW % (int(sample_rate), _b64(pcm))


def largest_play_frame_bytes(clip_ms: int, content_type: AudioContentType,
                             sample_rate: int = 48000) -> int:
    """Bytes of the largest ``playAudio`` frame a clip of ``clip_ms`` makes (default: at the
    highest call rate), measured with the encoder itself."""
    samples = max(1, clip_ms * sample_rate // 1000)
    return len(encode_play_audio(bytes(2 * samples), sample_rate, content_type))


_PLAY_WAVE = '{"type":"playAudio","data":{"audioContentType":"wave","audioContent":"%s"}}'
_PLAY_RAW = ('{"type":"playAudio","data":{"audioContentType":"raw","sampleRate":%d,'
             '"audioContent":"%s"}}')


def encode_hang_up() -> str:
    """The frame that makes the provider end the call."""
    return _control(_DISCONNECT)


def encode_transfer(parameters: Sequence[tuple[str, str]]) -> str:
    """The frame that transfers the call, carrying ``parameters`` in order.

    ``(("parameter1", "default"),)`` asks for the provider's default agent.
    Raises ``ValueError`` where ``check_transfer_parameters`` does.
    """
    check_transfer_parameters(parameters)
    return _control(",".join([_DISCONNECT, *(f"{key}={value}" for key, value in parameters)]))


def check_transfer_parameters(parameters: Sequence[tuple[str, str]]) -> None:
    """Raise ``ValueError`` unless ``encode_transfer`` can carry ``parameters`` faithfully.

    An empty sequence is refused because the frame would read as a plain
    hang-up; a ``,`` or ``=`` in a key or value, or an empty key, would change
    the ``textContent`` grammar.
    """
    if not parameters:
        raise ValueError("a transfer needs at least one parameter; none would hang up instead")
    for key, value in parameters:
        if not key or any(c in key for c in ",=") or any(c in value for c in ",="):
            raise ValueError(f"transfer parameter {key!r}={value!r}: empty key, ',' or '='")


def encode_kill_audio() -> str:
    """Ask the provider to stop playing (undocumented; best effort)."""
    return json.dumps({"type": "killAudio"}, separators=_COMPACT)


def _control(text_content: str) -> str:
    data = {"audioContentType": "wave", "audioContent": "None", "textContent": text_content}
    return json.dumps({"type": "playAudio", "data": data}, separators=_COMPACT)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


# --- provider side: the simulator's half ---------------------------------------------


def encode_start(
    call_id: str,
    sample_rate: int,
    caller: str,
    callee: str,
    call_type: str = "inbound",
    campaign: str = "",
    welcome_message: str = "Welcome to knowlarity",
) -> str:
    """The first frame as the provider documents it."""
    message = {
        "uuid": call_id,
        "sample_rate": sample_rate,
        "from": caller,
        "to": callee,
        "campaign": campaign,
        "metadata": {
            "welcome_message": welcome_message,
            "event": "websocket:connected",
            "call_type": call_type,
        },
    }
    return json.dumps(message)


@dataclass(frozen=True)
class PlayFrame:
    """Audio to play; a wave clip's rate is the one in its header."""

    pcm: bytes
    sample_rate: int
    content_type: AudioContentType


@dataclass(frozen=True)
class HangUpFrame:
    """``textContent`` ``asr_disconnect=true`` alone."""


@dataclass(frozen=True)
class TransferFrame:
    """``asr_disconnect=true`` followed by these ``key=value`` parameters, in order."""

    parameters: tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class KillAudioFrame:
    """``{"type": "killAudio"}``."""


@dataclass(frozen=True)
class UnknownFrame:
    """Any text frame of no known type or grammar, kept as sent."""

    text: str


GatewayFrame = PlayFrame | HangUpFrame | TransferFrame | KillAudioFrame | UnknownFrame


def decode_gateway_frame(text: str, *, call_sample_rate: int) -> GatewayFrame:
    """Read a frame the gateway sent, as the provider would.

    Frames of no known type (or not JSON) become ``UnknownFrame``; a known
    ``playAudio`` frame with broken content raises ``ProtocolError``.
    """
    try:
        message = json.loads(text)
    except (ValueError, RecursionError):
        return UnknownFrame(text)
    if not isinstance(message, dict):
        return UnknownFrame(text)
    kind = message.get("type")
    if kind == "killAudio":
        return KillAudioFrame()
    data = message.get("data")
    if kind != "playAudio" or not isinstance(data, dict):
        return UnknownFrame(text)
    content = data.get("audioContent")
    if content == "None" and "textContent" in data:
        return _decode_control(data["textContent"], text)
    content_type = data.get("audioContentType")
    if content_type not in ("wave", "raw"):
        return UnknownFrame(text)
    if not isinstance(content, str):
        raise ProtocolError("playAudio audioContent is not a string")
    try:
        payload = base64.b64decode(content, validate=True)
    except binascii.Error as error:
        raise ProtocolError(f"playAudio audioContent is not base64: {error}") from None
    if content_type == "wave":
        try:
            pcm, rate = decode_wav(payload)
        except ValueError as error:
            raise ProtocolError(f"playAudio wave clip: {error}") from None
        return PlayFrame(pcm, rate, AudioContentType.WAVE)
    if len(payload) % 2:
        raise ProtocolError("playAudio raw PCM has an odd number of bytes")
    rate = _sample_rate(data.get("sampleRate"), call_sample_rate, "playAudio sampleRate")
    return PlayFrame(payload, rate, AudioContentType.RAW)


def _decode_control(text_content: object, text: str) -> GatewayFrame:
    if not isinstance(text_content, str):
        return UnknownFrame(text)
    first, *rest = text_content.split(",")
    if first != _DISCONNECT:
        return UnknownFrame(text)
    if not rest:
        return HangUpFrame()
    parameters = []
    for part in rest:
        key, sep, value = part.partition("=")
        if not sep or not key:
            return UnknownFrame(text)
        parameters.append((key, value))
    return TransferFrame(tuple(parameters))
