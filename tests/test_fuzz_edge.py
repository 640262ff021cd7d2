"""Seeded fuzzing of the core's three edges: provider start messages, provider frames, bot commands.

No hypothesis library: every input is drawn from ``random.Random(seed)``. Each test has its
own fixed base seed (``START_SEED``, ``COMMAND_SEED``, ``SESSION_SEED``) and derives one seed per
case from it, so every run feeds exactly the same inputs, and a failure names the seed of the
case that showed it. To replay one case::

    start_text(random.Random(seed))        # the start message of a parse_start case
    command_input(random.Random(seed))     # the bytes and limits of a decode_command case
    run_node(seed, Failures())             # one node's calls, event by event

Budget: ``START_CASES`` start messages, ``COMMAND_CASES`` encoded commands and
``SESSION_CASES`` call sessions (``CALLS_PER_NODE`` calls at a time sharing one
``AudioBudget``, a few dozen events each): over 10,000 inputs, in well under 20 s on one core.
Each test asserts at its end that its whole budget ran, so it cannot pass by doing nothing.

Failures are collected rather than raised at the first one: a test runs its whole budget,
then fails naming each distinct kind of failure once, with the seed of its first case.
"""

from __future__ import annotations

import ast
import json
import math
import random
import re
import urllib.parse
from pathlib import Path

import pytest

from gateway import records
from gateway.core import commands
from gateway.core import knowlarity as codec
from gateway.core import model as m
from gateway.core.call import (
    AGGREGATE_TIMER,
    ENDING_TIMER,
    IDLE_TIMER,
    PLAYOUT_TIMER,
    START_TIMER,
    Call,
    CallSettings,
    State,
)
from gateway.core.commands import PLAY_SAMPLE_RATES, CommandLimits
from gateway.core.errors import CloseCode, ProtocolError
from gateway.core.playout import AudioBudget, PlayoutSettings
from gateway.proto.knowlarity.gateway.v1 import command_pb2

START_SEED = 0x57A27
COMMAND_SEED = 0xC0DE
SESSION_SEED = 0x5E55
START_CASES = 4_500
COMMAND_CASES = 3_500
SESSION_CASES = 3_000
CALLS_PER_NODE = 4
EVENTS_PER_CALL = (4, 36)

DATA = Path(__file__).parent / "data"
CANNED = [p.read_bytes().decode("utf-8") for p in sorted(DATA.glob("*.txt"))]
GOOD_STARTS = [p.read_bytes().decode("utf-8") for p in sorted(DATA.glob("start_*.txt"))]
TIMERS = (START_TIMER, IDLE_TIMER, ENDING_TIMER, PLAYOUT_TIMER, AGGREGATE_TIMER)
CALL_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
REPLY, PATH = "knowlarity.calls.commands.node-fuzz", "/vaani/knowlarity/setup-call-streams"
MAX_REASON_CHARS = 1024  # refusal reasons quote peer input, but only an excerpt of it


# --- bookkeeping ------------------------------------------------------------------------


class Failures:
    """Failures by kind: the first case of each kind is kept, the rest only counted."""

    def __init__(self) -> None:
        self.first: dict[str, str] = {}
        self.count = 0

    def add(self, kind: str, seed: int, detail: object) -> None:
        self.count += 1
        kind = re.sub(r"\d+", "N", kind)[:160]  # "4301 digits" and "4302 digits" are one kind
        self.first.setdefault(kind, f"{kind}\n    first at seed {seed}: {_short(detail)}")

    def assert_none(self, replay: str) -> None:
        if self.first:
            shown = "\n".join(list(self.first.values())[:12])
            pytest.fail(f"{self.count} failures of {len(self.first)} kinds "
                        f"(replay: {replay}):\n{shown}", pytrace=False)


def _short(value: object, limit: int = 300) -> str:
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} chars)"


def case_seeds(base: int, n: int) -> list[int]:
    master = random.Random(base)
    return [master.getrandbits(48) for _ in range(n)]


# --- random text and values ----------------------------------------------------------------

ASCII = "".join(chr(c) for c in range(32, 127))
SAFE = "abcXYZ019_-.:/+@#"
ID_CHARS = "abcdefABCDEF0123456789-_.:"
CONTROL = "".join(chr(c) for c in range(0, 32)) + "\x7f"
UNICODE = "é日本語\u00a0\u2028\u2029\u202e\u200b\ufeff\ufffd١٦😀𝔘"
SURROGATES = "\ud800\udc00\udfff"
TOKENS = ['"', "'", "{", "}", "[", "]", ",", ":", "\\", '\\"', "\\u0000", "\\ud800", "\x00",
          "\n", "\ufeff", "NaN", "Infinity", "-Infinity", "1e999", "True", "None", "null",
          "%7B", "%", "+", "0x1F", "1_000", "''", '""', "{}", "[]", "😀", "\u202e"]


def rand_text(rng: random.Random, n: int, *, surrogates: bool = False) -> str:
    """``n`` characters, mostly printable ASCII, some control, some far from ASCII."""
    pools = [ASCII] * 6 + [ID_CHARS] * 3 + [CONTROL, UNICODE] + [SURROGATES] * surrogates
    return "".join(rng.choice(rng.choice(pools)) for _ in range(n))


def rand_call_id(rng: random.Random) -> object:
    """A call id as a provider might send it: valid, at the bounds, or not a call id at all."""
    r = rng.random()
    if r < 0.55:
        return "".join(rng.choice(ID_CHARS) for _ in range(rng.randint(1, 40)))
    return rng.choice([
        "", " ", "a" * 128, "a" * 129, "x" * rng.randint(129, 5000), "id with space",
        "id/slash", "id\nnewline", "ïd", "١٢٣", "id\x00", "\ud800", rand_text(rng, 20),
        rng.randint(-10**6, 10**20), 10**200, 1.5, True, None, [], {"uuid": "nested"},
    ])


def rand_rate(rng: random.Random) -> object:
    """A sample_rate field: supported, unsupported, or a number in some other form."""
    rate = rng.choice(sorted(codec.SAMPLE_RATES))
    return rng.choice([
        rate, rate, str(rate), f" {rate} ", f"{rate}.0", float(rate), rate + 0.5, -rate, 0, 1,
        11025, 4294967296, 10**400, "", None, True, False, "١٦٠٠٠", "16 kHz", [rate], {"hz": rate},
        Raw(hex(rate)), Raw("1e999"), Raw("NaN"), Raw(f"{rate}_0"),
    ])


class Raw:
    """Text spliced into a rendered message as is: notations ``json.dumps`` cannot write."""

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return self.text


def rand_raw(rng: random.Random) -> Raw:
    """Python-literal-only values, non-JSON numbers, and numbers too big to print."""
    return Raw(rng.choice([
        "{1, 2}", "set()", "b'bytes'", "1j", "(1, 2)", "()", "...", "float('nan')", "NaN",
        "Infinity", "-Infinity", "1e999", "-1e999", "0b101", "0o17", "1_000",
        "0x" + "f" * rng.randint(3500, 4200),  # more than 4300 decimal digits once printed
        "-0x" + "9" * rng.randint(1, 40), "9" * rng.randint(4290, 4310),
        "[" * 300 + "]" * 300, "{'a': " * 150 + "1" + "}" * 150,
    ]))


def rand_value(rng: random.Random, depth: int = 2) -> object:
    r = rng.random()
    if r < 0.1:
        return rng.choice([None, True, False])
    if r < 0.25:
        return rng.choice([0, -1, 7, 16000, rng.getrandbits(70), -(10 ** rng.randint(1, 300))])
    if r < 0.32:
        return rng.choice([0.5, -0.0, 1e308, 5e-324, rng.uniform(-1e6, 1e6)])
    if r < 0.65:
        return rand_text(rng, rng.randint(0, 30), surrogates=rng.random() < 0.05)
    if r < 0.72:
        return rand_raw(rng)
    if depth <= 0:
        return ""
    if r < 0.86:
        return [rand_value(rng, depth - 1) for _ in range(rng.randint(0, 4))]
    return {rand_text(rng, rng.randint(0, 8)): rand_value(rng, depth - 1)
            for _ in range(rng.randint(0, 4))}


# --- start messages -------------------------------------------------------------------------


def _base_objects() -> list[dict[str, object]]:
    out = []
    for text in GOOD_STARTS:
        value: object = text.strip().lstrip("\ufeff")
        while isinstance(value, str):
            try:
                value = json.loads(value)
            except ValueError:
                value = ast.literal_eval(value)
        assert isinstance(value, dict)
        out.append(value)
    return out


BASE_OBJECTS = _base_objects()


def rand_metadata(rng: random.Random, depth: int = 0) -> object:
    meta: dict[str, object] = {"event": "websocket:connected",
                               "call_type": rng.choice(["inbound", "OUTBOUND ", "x", 1, None])}
    if depth < 5 and rng.random() < 0.4:
        meta["metadata"] = rand_metadata(rng, depth + 1)
    if rng.random() < 0.3:
        meta[rand_text(rng, 5)] = rand_value(rng)
    as_json = json.dumps(meta, default=repr)
    return rng.choice([
        meta, meta, as_json, urllib.parse.quote(as_json), urllib.parse.quote_plus(as_json),
        "%zz%7B", "a+b", "opaque", "", rand_value(rng),
    ])


def structural(rng: random.Random) -> dict[str, object]:
    """A real start message's fields with some replaced, removed or added."""
    obj = dict(rng.choice(BASE_OBJECTS))
    for _ in range(rng.randint(1, 4)):
        key = rng.choice(["uuid", "callid", "sample_rate", "from", "to", "customer_number",
                          "virtual_number", "campaign", "metadata", "call_type", "extra"])
        r = rng.random()
        if r < 0.15:
            obj.pop(key, None)
        elif key in ("uuid", "callid"):
            obj[key] = rand_call_id(rng)
        elif key == "sample_rate":
            obj[key] = rand_rate(rng)
        elif key == "metadata":
            obj[key] = rand_metadata(rng)
        else:
            obj[key] = rand_value(rng)
    return obj


def render(rng: random.Random, obj: object) -> str:
    """``obj`` as JSON, as a Python literal, or as JSON encoded in JSON strings."""
    r = rng.random()
    if r < 0.3:
        return repr(obj)
    raws: dict[str, str] = {}

    def splice(value: object) -> str:
        token = f"RAW{len(raws)}Z"
        raws[f'"{token}"'] = value.text if isinstance(value, Raw) else repr(value)
        return token

    text = json.dumps(obj, default=splice, skipkeys=True, ensure_ascii=rng.random() < 0.5,
                      indent=rng.choice([None, None, 2]))
    for token, raw in raws.items():
        text = text.replace(token, raw)
    if r > 0.85:
        for _ in range(rng.randint(1, 5)):
            text = json.dumps(text)
    return text


def mutate(rng: random.Random, text: str) -> str:
    """One random edit: flipped bits, truncation, an inserted token, a wrapper, a new id..."""
    op = rng.randrange(11)
    if op == 0:  # flip bits in the UTF-8
        raw = bytearray(text.encode("utf-8", "surrogatepass"))
        for _ in range(rng.randint(1, 3)):
            if raw:
                raw[rng.randrange(len(raw))] ^= 1 << rng.randrange(8)
        return raw.decode("utf-8", rng.choice(["replace", "ignore", "surrogateescape"]))
    i = rng.randint(0, len(text))
    j = rng.randint(i, len(text))
    if op == 1:
        return text[:i]
    if op == 2:
        return text[:i] + rng.choice(TOKENS + [rand_text(rng, 3)]) + text[i:]
    if op == 3:
        return text[:i] + text[j:]
    if op == 4:
        return text[:j] + text[i:j] * rng.randint(1, 3) + text[j:]
    if op == 5:  # another call id, quoted as the message quotes it
        new = str(rand_call_id(rng))
        return re.sub(r"""(["'](?:uuid|callid)["']\s*:\s*)(["'])(.*?)\2""",
                      lambda mt: mt.group(1) + mt.group(2) + new + mt.group(2), text, count=1)
    if op == 6:  # another sample rate, in some notation
        rate = rand_rate(rng)
        shown = json.dumps(rate, default=repr) if not isinstance(rate, Raw) else rate.text
        return re.sub(r"""(sample_rate["']\s*:\s*)("[^"]*"|'[^']*'|[^,}]*)""",
                      lambda mt: mt.group(1) + shown, text, count=1)
    if op == 7:
        return rng.choice(["[{}]", '{{"start": {}}}', "{{'start': {}}}", "({})", "{}{}"]).format(
            text, text)
    if op == 8:
        return json.dumps(text) if rng.random() < 0.7 else repr(text)
    if op == 9:
        return rng.choice(["\ufeff", "\ufeff\ufeff", " \t\r\n", "\x00", "\u3000"]) + text + \
            rng.choice(["", "\n", " \x00", "\ufeff"])
    return text.replace('"', "'") if rng.random() < 0.5 else text.replace("'", '"')


def junk(rng: random.Random) -> str:
    """Text that is no start message at all, including the size bounds' neighbours."""
    n = rng.randint(1, 1200)
    return rng.choice([
        lambda: rand_text(rng, rng.randint(0, 200), surrogates=True),
        lambda: "{" * n, lambda: "[" * n + "]" * n, lambda: '"' * n, lambda: "\ufeff" * n,
        lambda: json.dumps(rand_value(rng, 3), default=repr),
        lambda: repr(rand_value(rng, 3)),
        lambda: " " * (codec.MAX_START_BYTES + 1),
        lambda: "é" * (codec.MAX_START_BYTES // 2 + 1),  # few chars, too many bytes
        lambda: '{"uuid": "a", "pad": "' + "x" * (codec.MAX_START_BYTES - 40) + '"}',
        lambda: "{'uuid': 'a', 'pad': '" + "x" * (codec.MAX_LITERAL_START_BYTES - 30) + "'}",
        lambda: '{"uuid": "a"' + ", " * (codec.MAX_START_BYTES // 2) + "}",
    ])()


def start_text(rng: random.Random) -> str:
    """One start message: a canned one mutated, a real one restructured, generated, or junk."""
    r = rng.random()
    if r < 0.45:
        text = rng.choice(CANNED)
        for _ in range(rng.randint(1, 4)):
            text = mutate(rng, text)
        return text
    if r < 0.8:
        text = render(rng, structural(rng))
        return mutate(rng, text) if rng.random() < 0.3 else text
    if r < 0.92:
        obj = {rand_text(rng, rng.randint(0, 10)): rand_value(rng, 3)
               for _ in range(rng.randint(0, 6))}
        if rng.random() < 0.5:
            obj["uuid"] = rand_call_id(rng)
        return render(rng, obj)
    return junk(rng)


def valid_start(rng: random.Random) -> str:
    call_id = "".join(rng.choice(ID_CHARS) for _ in range(rng.randint(1, 128)))
    return codec.encode_start(call_id, rng.choice(sorted(codec.SAMPLE_RATES)),
                              "+91" + str(rng.randrange(10**10)), "+918069458000",
                              call_type=rng.choice(["inbound", "outbound", "?"]))


def as_websocket_text(text: str) -> str:
    """What a WebSocket text frame can carry: valid UTF-8, so no lone surrogate characters
    (a JSON escape such as ``\\ud800`` is ASCII and stays)."""
    return text.encode("utf-8", "surrogatepass").decode("utf-8", "replace")


def check_start(start: m.CallStart) -> str | None:
    """What is wrong with an accepted start message, or None."""
    if not (isinstance(start.call_id, str) and CALL_ID.fullmatch(start.call_id)):
        return "accepted call id is not 1..128 of [A-Za-z0-9._:-]"
    if type(start.sample_rate) is not int or start.sample_rate not in codec.SAMPLE_RATES:
        return "accepted sample_rate is not a supported rate"
    if not all(isinstance(s, str) for s in (start.caller, start.callee, start.provider_campaign)):
        return "accepted caller, callee or campaign is not a string"
    if start.shape.split("+")[0] not in ("json", "python-literal", "double-encoded-json"):
        return "accepted shape has an unknown base"
    return None


@pytest.mark.filterwarnings("ignore:invalid escape sequence:DeprecationWarning")
def test_parse_start_raises_only_protocol_error_and_accepts_only_valid_calls():
    """parse_start raises nothing but ProtocolError, and any start it accepts has a valid call
    id, a supported sample rate, and can be published as a CallStarted record."""
    failures = Failures()
    ran = accepted = refused = 0
    for seed in case_seeds(START_SEED, START_CASES):
        rng = random.Random(seed)
        text = start_text(rng)
        fallback = rng.choice(["path-id", "p" * 128, "bad path id", ""])
        ran += 1
        try:
            start = codec.parse_start(text, fallback_call_id=fallback,
                                      default_sample_rate=rng.choice(sorted(codec.SAMPLE_RATES)))
        except ProtocolError as e:
            refused += 1
            if not (isinstance(e.reason, str) and e.reason) or e.close_code not in set(CloseCode):
                failures.add("ProtocolError without a reason or a known close code", seed, text)
            continue
        except Exception as e:  # anything but ProtocolError is a finding
            failures.add(f"{type(e).__name__} escaped parse_start: {str(e)[:60]}", seed, text)
            continue
        accepted += 1
        why = check_start(start)
        if why:
            failures.add(why, seed, (text, start.call_id, start.sample_rate))
            continue
        try:
            records.encode_inbound(m.Inbound(start.call_id, 0, 1.0,
                                             m.CallStarted(start, REPLY, PATH)), "node-fuzz")
        except Exception as e:
            failures.add(f"accepted start cannot be published as CallStarted: "
                         f"{type(e).__name__}", seed, (text, str(e)[:80]))
    assert ran == START_CASES
    # Both outcomes are exercised in earnest, not just one of them.
    assert accepted >= START_CASES // 5 and refused >= START_CASES // 5, (accepted, refused)
    failures.assert_none("start_text(random.Random(seed))")


# --- bot commands -----------------------------------------------------------------------------

LIMITS = [CommandLimits(), CommandLimits(max_play_bytes=4096, max_name_chars=16,
                                         max_transfer_params=3),
          CommandLimits(max_play_bytes=0, max_name_chars=0, max_transfer_params=0)]
ODD_RATES = [0, 1, 2, 7999, 8001, 96000, 192000, 4294967295]


def rand_name(rng: random.Random, limits: CommandLimits) -> str:
    """A mark name, transfer key or value, or command id: safe, at the bound, or hostile."""
    r = rng.random()
    if r < 0.5:
        return "".join(rng.choice(SAFE) for _ in range(rng.randint(0, 20)))
    n = limits.max_name_chars
    return rng.choice([
        "", "a" * n, "a" * (n + 1), "a" * 5000, "a,b", "a=b", "line\nforged", "sp ace", "tab\t",
        "é", "😀", "\u202e", "\x00", "a;b", "'", '"', rand_text(rng, rng.randint(1, 40)),
    ])


def rand_pcm(rng: random.Random, limits: CommandLimits, small: int) -> bytes:
    n = rng.choice([0, 1, 2, 3, rng.randrange(small), rng.randrange(small) | 1,
                    limits.max_play_bytes, limits.max_play_bytes + 1, limits.max_play_bytes + 2])
    return rng.randbytes(min(n, 1 << 17))


def rand_command_pb(rng: random.Random, limits: CommandLimits, call_id: str,
                    small_pcm: int = 9000) -> command_pb2.Command:
    pb = command_pb2.Command(call_id=call_id, command_id=rand_name(rng, limits),
                             sent_unix_us=rng.choice([0, -1, 2**63 - 1, -2**63,
                                                      rng.getrandbits(52)]))
    kind = rng.choice(["play", "play", "clear", "mark", "hang_up", "transfer", "none"])
    if kind == "play":
        pb.play.pcm = rand_pcm(rng, limits, small_pcm)
        rates = sorted(PLAY_SAMPLE_RATES) + ODD_RATES + [rng.getrandbits(32)]
        pb.play.sample_rate = rng.choice(rates)
    elif kind == "clear":
        pb.clear.SetInParent()
    elif kind == "mark":
        pb.mark.name = rand_name(rng, limits)
    elif kind == "hang_up":
        pb.hang_up.SetInParent()
    elif kind == "transfer":
        pb.transfer.SetInParent()
        for _ in range(rng.choice([0, 1, 2, limits.max_transfer_params,
                                   limits.max_transfer_params + 1, 40])):
            pb.transfer.parameters.add(key=rand_name(rng, limits), value=rand_name(rng, limits))
    return pb


def mutate_bytes(rng: random.Random, data: bytes) -> bytes:
    op = rng.randrange(6)
    raw = bytearray(data)
    if op == 0:
        for _ in range(rng.randint(1, 4)):
            if raw:
                raw[rng.randrange(len(raw))] ^= 1 << rng.randrange(8)
        return bytes(raw)
    i = rng.randint(0, len(raw))
    if op == 1:
        return bytes(raw[:i])
    if op == 2:
        return bytes(raw[:i]) + rng.randbytes(rng.randint(1, 8)) + bytes(raw[i:])
    if op == 3:  # a second message merged in: protobuf concatenation overrides fields
        other = rand_command_pb(rng, rng.choice(LIMITS), "other-call", 64).SerializeToString()
        return bytes(raw) + other
    if op == 4:  # an unknown field, or a huge length prefix
        return bytes(raw) + rng.choice([b"\xf8\x06\x01", b"\x52\xff\xff\xff\xff\x0f", b"\x00"])
    return rng.randbytes(rng.randint(0, 64))


def command_input(rng: random.Random) -> tuple[bytes, CommandLimits]:
    limits = rng.choice(LIMITS)
    call_id = rng.choice(["call-1", "", rand_name(rng, limits), "x" * 300])
    data = rand_command_pb(rng, limits, call_id).SerializeToString()
    if rng.random() < 0.4:
        for _ in range(rng.randint(1, 3)):
            data = mutate_bytes(rng, data)
    return data, limits


def check_decoded(cmd: object, limits: CommandLimits) -> str | None:
    if not isinstance(cmd, m.Command) or not isinstance(cmd.call_id, str) or not cmd.call_id:
        return "decode_command returned no command or no call id"
    if commands.check_command_id(cmd.command_id, limits) is not None:
        return "a command id that breaks the rules came through"
    if not math.isfinite(cmd.sent_at):
        return "sent_at is not finite"
    body = cmd.body
    if isinstance(body, m.Refused):
        if not (isinstance(body.reason, str) and body.reason):
            return "Refused without a reason"
        if len(body.reason) > MAX_REASON_CHARS:
            return "Refused reason is unbounded"
        return None
    if not isinstance(body, m.PlayAudio | m.ClearAudio | m.Mark | m.HangUp | m.Transfer
                      | m.PauseCapture | m.ResumeCapture):
        return f"unknown body {type(body).__name__}"
    if commands.check(body, limits) is not None:
        return f"an unchecked {type(body).__name__} came through: {commands.check(body, limits)}"
    return None


def test_decode_command_raises_only_bad_record_and_returns_only_checked_commands():
    """decode_command raises nothing but BadRecord, and every command it returns either passes
    commands.check or is Refused with a reason."""
    failures = Failures()
    ran = bad = refused = ok = 0
    for seed in case_seeds(COMMAND_SEED, COMMAND_CASES):
        data, limits = command_input(random.Random(seed))
        ran += 1
        try:
            cmd = records.decode_command(data, limits)
        except records.BadRecord:
            bad += 1
            continue
        except Exception as e:
            failures.add(f"{type(e).__name__} escaped decode_command: {str(e)[:60]}", seed, data)
            continue
        why = check_decoded(cmd, limits)
        if why:
            failures.add(why, seed, (data, cmd))
        refused += isinstance(cmd.body, m.Refused)
        ok += not isinstance(cmd.body, m.Refused)
    assert ran == COMMAND_CASES
    assert min(bad, refused, ok) >= COMMAND_CASES // 20, (bad, refused, ok)
    failures.assert_none("command_input(random.Random(seed))")


# --- call sessions ----------------------------------------------------------------------------


def node_settings(rng: random.Random) -> CallSettings:
    """Small bounds, so that floods, full queues and timeouts are reached in a few events."""
    return CallSettings(
        start_timeout_s=rng.choice([0.5, 10.0]),
        ending_timeout_s=rng.choice([0.5, 5.0]),
        idle_timeout_s=rng.choice([0.0, 5.0, 30.0]),
        default_sample_rate=rng.choice(sorted(codec.SAMPLE_RATES)),
        content_type=rng.choice(list(codec.AudioContentType)),
        kill_audio_on_clear=rng.random() < 0.5,
        audio_burst_allowance_s=rng.choice([0.05, 1.0, 10.0]),
        max_frames_per_s=50.0,
        frame_burst=rng.choice([5, 50, 1000]),
        max_text_frames_per_s=5.0,
        text_burst=rng.choice([2, 10]),
        aggregate_ms=rng.choice([0, 0, 20, 100]),
        playout=PlayoutSettings(paced=rng.random() < 0.7, clip_ms=rng.choice([20, 200]),
                                lead_ms=rng.choice([0, 300]), max_call_bytes=64_000,
                                max_markers=8),
        commands=CommandLimits(max_play_bytes=rng.choice([4096, 16384, 65536]),
                               max_name_chars=rng.choice([16, 128]),
                               max_transfer_params=rng.choice([2, 16])),
    )


def rand_body(rng: random.Random, limits: CommandLimits) -> m.CommandBody:
    """A command body straight from a (buggy) caller of the core, not through decode_command."""
    return rng.choice([
        lambda: m.PlayAudio(rand_pcm(rng, limits, 6000),
                            rng.choice(sorted(PLAY_SAMPLE_RATES) * 2 + ODD_RATES)),
        lambda: m.PlayAudio(rng.randbytes(2 * rng.randrange(1, 8000)),
                            rng.choice(sorted(PLAY_SAMPLE_RATES))),
        lambda: m.PlayAudio(rng.randbytes(2 * rng.randrange(1, 2000)),
                            rng.choice(sorted(PLAY_SAMPLE_RATES)), uninterruptible=True),
        lambda: m.ClearAudio(),
        lambda: m.PauseCapture(),
        lambda: m.ResumeCapture(),
        lambda: m.Mark(rand_name(rng, limits)),
        lambda: m.HangUp(),
        lambda: m.Transfer(tuple((rand_name(rng, limits), rand_name(rng, limits))
                                 for _ in range(rng.choice([0, 1, 2, 20])))),
        lambda: m.Refused(rng.choice(["refused by the bridge", "x" * 200])),
    ])()


class Session:
    """One Call driven as the server adapter drives it, its promises checked after every step."""

    def __init__(self, rng: random.Random, settings: CallSettings, budget: AudioBudget,
                 failures: Failures, seed: int) -> None:
        provisional = rng.choice(["path-id", "p" * 128, "bad path id"])
        self.call = Call(settings, provisional_id=provisional, reply_topic=REPLY,
                         request_path=PATH, budget=budget)
        self.settings, self.budget, self.failures, self.seed = settings, budget, failures, seed
        self.armed: dict[str, float] = {}
        self.started = False
        self.ended = 0
        self.next_seq = 0
        self.broken = False  # a failure was recorded: stop checking this call
        self.trace: list[str] = []
        self.steps = 0

    def fail(self, kind: str) -> None:
        if not self.broken:
            self.broken = True
            self.failures.add(kind, self.seed, " | ".join(self.trace[-6:]))

    def step(self, what: str, method, *args) -> list[m.Effect]:
        self.steps += 1
        self.trace.append(f"{what}@{args[-1]:.3f} [{self.call.state.value}]")
        before = self.call.state
        try:
            effects = method(*args)
        except Exception as e:  # the Call must turn bad input into effects
            self.fail(f"{type(e).__name__} escaped Call.{method.__name__}: {str(e)[:60]}")
            return []
        if not self.broken:
            self.check(effects, args[-1])
        if what.startswith("command") and before is State.ACTIVE and not self.broken:
            cmd = args[0]
            if isinstance(cmd.body, m.Refused) or commands.check(cmd.body, self.settings.commands):
                if not any(isinstance(e, m.Publish) and isinstance(e.record.body, m.CommandRejected)
                           and e.record.body.command_id == cmd.command_id for e in effects):
                    self.fail("refused command while ACTIVE published no CommandRejected")
        return effects

    def check(self, effects: list[m.Effect], now: float) -> None:
        for e in effects:
            if isinstance(e, m.SetTimer):
                if e.name not in TIMERS or not (math.isfinite(e.delay) and e.delay >= 0):
                    return self.fail("SetTimer with an unknown name or a bad delay")
                self.armed[e.name] = now + e.delay
            elif isinstance(e, m.CancelTimer):
                self.armed.pop(e.name, None)
            elif isinstance(e, m.Publish | m.PublishOutbound | m.SendText):
                if self.ended:
                    return self.fail(f"{type(e).__name__} after CallEnded")
                if isinstance(e, m.Publish):
                    why = self.check_record(e.record)
                elif not self.started:
                    why = f"{type(e).__name__} before CallStarted"
                elif isinstance(e, m.PublishOutbound):
                    why = self.check_outbound(e.record)
                else:
                    why = None
                if why:
                    return self.fail(why)
        playout = self.call._playout
        bounds = self.settings.playout
        if playout is not None and not 0 <= playout.held_bytes <= bounds.max_call_bytes:
            return self.fail("playout holds more than max_call_bytes (or less than 0)")
        if playout is not None and not 0 <= playout.markers <= bounds.max_markers:
            return self.fail("playout holds more than max_markers (or less than 0)")
        if not 0 <= self.budget.used <= self.budget.limit:
            return self.fail("node audio budget out of 0..limit")
        if self.ended and self.call.state is not State.ENDED:
            return self.fail("CallEnded published but the call is not ENDED")
        return None

    def check_record(self, rec: m.Inbound) -> str | None:
        try:
            codec.check_call_id(rec.call_id)
        except ProtocolError:
            return "record published with an invalid call id"
        if rec.record_seq != self.next_seq:
            return "record_seq not consecutive from 0"
        self.next_seq += 1
        if isinstance(rec.body, m.CallStarted):
            if self.started:
                return "second CallStarted"
            self.started = True
        elif not self.started:
            return f"{type(rec.body).__name__} published without a CallStarted"
        if isinstance(rec.body, m.CallEnded):
            self.ended += 1
        try:
            records.encode_inbound(rec, "node-fuzz")
        except Exception as e:
            return f"published {type(rec.body).__name__} cannot be encoded: {type(e).__name__}"
        return None

    def check_outbound(self, rec: m.Outbound) -> str | None:
        if rec.call_id != self.call.call_id:
            return "outbound record for another call id"
        try:
            records.encode_outbound(rec, "node-fuzz")
        except Exception as e:
            return f"outbound {type(rec.body).__name__} cannot be encoded: {type(e).__name__}"
        return None

    # --- events --------------------------------------------------------------------------

    def random_event(self, rng: random.Random, now: float) -> float:
        """Feed one random event at ``now`` or later; return the time it happened at."""
        call = self.call
        r = rng.random()
        awaiting = call.state is State.AWAITING_START
        if r < 0.12 or (awaiting and rng.random() < 0.7):
            if awaiting:
                text = valid_start(rng) if rng.random() < 0.7 else start_text(rng)
            else:
                text = rng.choice([rand_text(rng, rng.randint(0, 80)), valid_start(rng),
                                   '{"event": "stop"}', ""])
            self.step("text", call.on_text, as_websocket_text(text), now)
        elif r < 0.32:
            size = rng.choice([0, 1, 2, 3, 320, 640, rng.randrange(1200), rng.randrange(1200)])
            self.step(f"binary({size})", call.on_binary, rng.randbytes(size), now)
        elif r < 0.36:  # a burst of frames at one instant: the flood guards
            for _ in range(rng.randint(2, 40)):
                self.step("burst", call.on_binary, rng.randbytes(rng.choice([1, 320])), now)
        elif r < 0.64:
            self.command(rng, now)
        elif r < 0.70:  # a bot's burst: plays and marks faster than they play out
            for _ in range(rng.randint(2, 12)):
                self.command(rng, now, burst=True)
        elif r < 0.85 and self.armed:  # the adapter fires an armed timer, on time or late
            name, due = min(self.armed.items(), key=lambda item: item[1])
            del self.armed[name]
            now = max(now, due) + rng.choice([0.0, 0.0, 0.01, 1.0])
            self.step(f"timer:{name}", call.on_timer, name, now)
        elif r < 0.92:  # a stray timer: the core must ignore what does not apply
            name = rng.choice(TIMERS)
            self.step(f"stray-timer:{name}", call.on_timer, name, now)
        elif r < 0.96:
            code = rng.choice([None, 1000, 1001, 1006, 4000])
            self.step("socket-closed", call.on_socket_closed, code, rng.random() < 0.5, now)
        else:
            reason = rng.choice(list(m.EndReason))
            code = rng.choice(list(CloseCode))
            self.step(f"end:{reason.value}", call.end, reason, "node says so", int(code), now)
        return now

    def command(self, rng: random.Random, now: float, burst: bool = False) -> None:
        limits = self.settings.commands
        if burst:
            body = rng.choice([m.Mark(f"m{rng.randrange(100)}"), m.Mark("m"),
                               m.PlayAudio(bytes(2 * rng.randrange(1, 8000)),
                                           rng.choice(sorted(PLAY_SAMPLE_RATES)))])
            cmd = m.Command(self.call.call_id, body, command_id=f"b{rng.randrange(1000)}")
        elif rng.random() < 0.5:  # through the bus, as bots send them
            pb = rand_command_pb(rng, rng.choice([limits, CommandLimits()]), self.call.call_id,
                                 small_pcm=6000)
            try:
                cmd = records.decode_command(pb.SerializeToString(), limits)
            except records.BadRecord:
                return
        else:
            cmd = m.Command(self.call.call_id, rand_body(rng, limits),
                            command_id=rand_name(rng, limits))
        self.step(f"command:{type(cmd.body).__name__}", self.call.on_command, cmd, now)

    def finish(self, rng: random.Random, now: float) -> None:
        """The socket goes away, as every socket eventually does."""
        self.step("final-close", self.call.on_socket_closed, rng.choice([None, 1000, 1006]),
                  rng.random() < 0.5, now)
        if self.broken:
            return
        if self.call.state is not State.ENDED:
            self.fail("call not ENDED after its socket closed")
        elif self.started and self.ended != 1:
            self.fail("started call did not publish exactly one CallEnded")
        elif not self.started and self.next_seq:
            self.fail("unstarted call published records")


def run_node(seed: int, failures: Failures) -> tuple[int, int, int]:
    """``CALLS_PER_NODE`` calls sharing one audio budget and one clock; returns how many calls
    ran, how many of them started, and how many events they were fed."""
    rng = random.Random(seed)
    settings = node_settings(rng)
    budget = AudioBudget(rng.choice([24_000, 48_000, 96_000, 256_000]))
    sessions = [Session(rng, settings, budget, failures, seed) for _ in range(CALLS_PER_NODE)]
    now = 1000.0
    events = {id(s): rng.randint(*EVENTS_PER_CALL) for s in sessions}
    for s in sessions:
        s.step("opened", s.call.opened, now)
        s.check([], now)
    live = list(sessions)
    while live:
        s = rng.choice(live)
        now += rng.choice([0.0, 0.001, 0.02, 0.02, 0.05, 0.1, 0.1, 0.3, 0.5, 1.0,
                           rng.uniform(1, 40)])
        now = s.random_event(rng, now)
        events[id(s)] -= 1
        if s.call.state is State.ENDED:  # a few more events must be ignored; then stop
            events[id(s)] = min(events[id(s)], rng.randint(0, 2))
        if events[id(s)] <= 0:
            live.remove(s)
    for s in sessions:
        now += 0.01
        s.finish(rng, now)
    if budget.used != 0:
        failures.add("node audio budget not back to 0 once every call ended", seed, budget.used)
    return len(sessions), sum(s.started for s in sessions), sum(s.steps for s in sessions)


@pytest.mark.filterwarnings("ignore:invalid escape sequence:DeprecationWarning")
def test_call_sessions_turn_any_input_into_effects_and_keep_their_bounds():
    """A Call fed random frames, commands, timers and closes never raises, keeps its playout
    and the node's budget within bounds, publishes one CallEnded only after a CallStarted and
    nothing after it, rejects refused commands on the record, and gives its budget back."""
    failures = Failures()
    ran = started = steps = 0
    for seed in case_seeds(SESSION_SEED, SESSION_CASES // CALLS_PER_NODE):
        calls, calls_started, calls_steps = run_node(seed, failures)
        ran += calls
        started += calls_started
        steps += calls_steps
    assert ran == SESSION_CASES
    assert started >= SESSION_CASES // 2, started  # most sessions get past the start message
    assert steps >= SESSION_CASES * EVENTS_PER_CALL[0], steps
    failures.assert_none("run_node(seed, Failures())")
