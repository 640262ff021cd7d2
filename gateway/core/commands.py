"""Bot commands checked the moment they are decoded, before any work is done for them.

A bot is outside the node's trust: a sample rate of 1 or 4294967295, a PCM
payload of odd length, a mark name with a newline or a transfer parameter
holding ``,`` would make the node resample for seconds, misalign audio, forge
log lines or change the provider's ``textContent`` grammar. ``check`` names
the first rule a command breaks; the node turns that into a
``command_rejected`` record on the call's stream (never a crash, never a
silent drop).

The safe character set for mark names and transfer parameters is
``SAFE_NAME_CHARS``: ASCII letters, digits and ``_ - . : / + @ #``. No ``,``
or ``=`` (the transfer grammar), no space, no control characters.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from gateway.core import model as m

# Rates a bot may send audio at: every common TTS and telephony rate. Anything
# else is refused before soxr sees it (an absurd ratio costs seconds of CPU).
PLAY_SAMPLE_RATES = frozenset({8000, 11025, 16000, 22050, 24000, 32000, 44100, 48000})

SAFE_NAME_CHARS = "A-Z a-z 0-9 _ - . : / + @ #"
_SAFE = re.compile(r"[A-Za-z0-9_\-.:/+@#]*")


@dataclass(frozen=True)
class CommandLimits:
    # Largest PCM payload of one play command (1 MiB: 32 s at 16 kHz, 10 s at 48 kHz;
    # Kafka's default message limit is about the same).
    max_play_bytes: int = 1024 * 1024
    # Longest mark name, transfer key or value, and command id.
    max_name_chars: int = 128
    max_transfer_params: int = 16
    # Furthest a play may be timed (``at_caller_ms``) beyond the caller's stream so far.
    max_play_ahead_ms: int = 60_000


def check(body: m.CommandBody, limits: CommandLimits) -> str | None:
    """Why the node refuses this command body, or None if it may be carried out."""
    if isinstance(body, m.PlayAudio):
        if body.sample_rate not in PLAY_SAMPLE_RATES:
            allowed = ", ".join(str(r) for r in sorted(PLAY_SAMPLE_RATES))
            return f"play sample_rate {body.sample_rate} is not one of {allowed}"
        if len(body.pcm) % 2:
            return f"play PCM has an odd number of bytes ({len(body.pcm)}); s16le needs pairs"
        if len(body.pcm) > limits.max_play_bytes:
            return (f"play PCM of {len(body.pcm)} bytes exceeds the {limits.max_play_bytes}-byte "
                    "limit per command")
        return None
    if isinstance(body, m.Mark):
        return _name_problem("mark name", body.name, limits, allow_empty=False)
    if isinstance(body, m.Transfer):
        params = body.parameters
        if not params:
            return "a transfer needs at least one parameter; none would hang up instead"
        if len(params) > limits.max_transfer_params:
            return (f"transfer has {len(params)} parameters; at most "
                    f"{limits.max_transfer_params} are allowed")
        for key, value in params:
            why = (_name_problem("transfer parameter key", key, limits, allow_empty=False)
                   or _name_problem("transfer parameter value", value, limits, allow_empty=True))
            if why:
                return why
        return None
    return None


def check_command_id(command_id: str, limits: CommandLimits) -> str | None:
    """Command ids are echoed in records and logs: bounded and printable."""
    return _name_problem("command_id", command_id, limits, allow_empty=True)


def _name_problem(what: str, text: str, limits: CommandLimits, *, allow_empty: bool) -> str | None:
    if not text and not allow_empty:
        return f"{what} is empty"
    if len(text) > limits.max_name_chars:
        return f"{what} has {len(text)} characters; at most {limits.max_name_chars} are allowed"
    if not _SAFE.fullmatch(text):
        return f"{what} {text[:40]!r} has characters outside {SAFE_NAME_CHARS}"
    return None
