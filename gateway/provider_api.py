"""Knowlarity's ``update_wss_url`` HTTP API: the request as PROTOCOL.md states it, and one call.

``POST <api-url>/knowlarity/update_wss_url`` with ``Authorization: <API token>``,
``x-api-key: <API key>``, ``Content-Type: application/json`` and body
``{"data": {"number": ..., "wss_url": ...}}``. No provider host is documented, so
the caller always names it.

Secrets: the token and key live in ``Credentials`` (whose repr hides them) and
in the request's headers, nowhere else. Nothing here prints or logs; text from
the provider is handed back through ``redact`` so an echo of a secret never
reaches a terminal.

Plain ``http.client`` rather than urllib: it sends the headers spelt as
documented (urllib re-cases ``x-api-key``), follows no redirect (which would
carry both secrets to wherever the provider points) and reads no proxy from the
environment.
"""

from __future__ import annotations

import http.client
import json
import re
import socket
import ssl
import urllib.parse
from dataclasses import dataclass, field

__all__ = [
    "MAX_ANSWER_BYTES",
    "PATH",
    "Answer",
    "Credentials",
    "ProviderUnreachable",
    "UpdateRequest",
    "api_url",
    "phone_number",
    "redact",
    "send",
    "shown",
    "update_wss_url",
    "wss_url",
]

PATH = "/knowlarity/update_wss_url"
# The provider's answer is a short JSON object; anything past this is cut (and said so).
MAX_ANSWER_BYTES = 64 * 1024
REDACTED = "<redacted>"

_NUMBER_SEPARATORS = re.compile(r"[\s-]")


# --- values checked before any network call -----------------------------------------

def phone_number(text: str) -> str:
    """An E.164-like number: optional ``+``, 6 to 15 digits; spaces and dashes dropped."""
    number = _NUMBER_SEPARATORS.sub("", text)
    digits = number.removeprefix("+")
    if not digits:
        raise ValueError(f"no digits in {text!r}")
    if not digits.isascii() or not digits.isdigit():
        raise ValueError(f"{text!r} has characters other than digits, an optional leading +,"
                         " spaces and dashes")
    if not 6 <= len(digits) <= 15:
        raise ValueError(f"{text!r} has {len(digits)} digits; a phone number has 6 to 15")
    return number


def wss_url(text: str) -> str:
    """The gateway's WebSocket URL as the provider will dial it: ws:// or wss:// with a host."""
    parsed = urllib.parse.urlsplit(text.strip())
    if parsed.scheme not in ("ws", "wss") or not parsed.hostname:
        raise ValueError(f"must be wss://host[:port]/path (or ws://), got {text!r}")
    return text.strip()


def api_url(text: str) -> str:
    """The provider's API base, http(s)://host[:port][/prefix], without a trailing slash."""
    url = text.strip()
    try:
        parsed = urllib.parse.urlsplit(url)
        parsed.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError as e:
        raise ValueError(f"{text!r} is not a URL: {e}") from None
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise ValueError(f"must be https://host[:port][/prefix] (or http://), got {text!r}")
    if "@" in parsed.netloc:
        # It would be printed in errors; the token and key have their own places.
        raise ValueError("must not carry user:password@; the API token and key are given "
                         "apart from the URL")
    if parsed.query or parsed.fragment:
        raise ValueError(f"must not carry a query or fragment, got {text!r}")
    return url.rstrip("/")


@dataclass(frozen=True)
class Credentials:
    """The API token and key. Never shown: the repr hides them."""

    token: str = field(repr=False)
    key: str = field(repr=False)

    def __post_init__(self) -> None:
        for what, value in (("API token", self.token), ("API key", self.key)):
            # Checked here, without the value: http.client's own refusal would quote it.
            if not value:
                raise ValueError(f"the {what} is empty")
            if any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
                raise ValueError(f"the {what} has a control character (a line break?)")
            try:
                value.encode("latin-1")
            except UnicodeEncodeError:
                raise ValueError(f"the {what} has characters an HTTP header cannot carry") \
                    from None

    def __repr__(self) -> str:
        return f"Credentials(token={REDACTED}, key={REDACTED})"

    @property
    def secrets(self) -> tuple[str, str]:
        return (self.token, self.key)


# --- the request, pure ----------------------------------------------------------------

@dataclass(frozen=True)
class UpdateRequest:
    """The one HTTP request ``update_wss_url`` is; its repr shows no header value."""

    url: str
    headers: dict[str, str] = field(repr=False)
    body: bytes
    method: str = "POST"


def update_wss_url(base: str, number: str, wss: str, credentials: Credentials) -> UpdateRequest:
    """The request pointing ``number`` at ``wss``, exactly as PROTOCOL.md documents it."""
    body = json.dumps({"data": {"number": number, "wss_url": wss}}).encode("utf-8")
    headers = {
        "Authorization": credentials.token,
        "x-api-key": credentials.key,
        "Content-Type": "application/json",
    }
    return UpdateRequest(url=api_url(base) + PATH, headers=headers, body=body)


# --- the call -------------------------------------------------------------------------

@dataclass(frozen=True)
class Answer:
    """What the provider answered: the status and reason, and the body (cut at the bound)."""

    status: int
    reason: str
    body: bytes
    truncated: bool = False

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300


class ProviderUnreachable(Exception):
    """No HTTP answer: refused, DNS, TLS or the timeout. The message is the reason."""


def send(request: UpdateRequest, timeout_s: float) -> Answer:
    """Send ``request``; any HTTP answer (2xx or not) is an ``Answer``.

    Raises ``ProviderUnreachable`` when there is none: refused, DNS, TLS, or no
    progress for ``timeout_s`` (each connect and read is bounded by it).
    """
    url = urllib.parse.urlsplit(request.url)
    conn: http.client.HTTPConnection
    if url.scheme == "https":
        conn = http.client.HTTPSConnection(url.hostname or "", url.port, timeout=timeout_s,
                                           context=ssl.create_default_context())
    else:
        conn = http.client.HTTPConnection(url.hostname or "", url.port, timeout=timeout_s)
    try:
        conn.request(request.method, url.path, body=request.body, headers=request.headers)
        response = conn.getresponse()
        body = response.read(MAX_ANSWER_BYTES + 1)
    except (OSError, http.client.HTTPException) as e:
        raise ProviderUnreachable(_describe(e)) from None
    finally:
        conn.close()
    return Answer(response.status, response.reason or "", body[:MAX_ANSWER_BYTES],
                  len(body) > MAX_ANSWER_BYTES)


def _describe(reason: object) -> str:
    if isinstance(reason, TimeoutError):
        return "timed out"
    if isinstance(reason, socket.gaierror):
        return f"name lookup failed ({reason.strerror or reason})"
    if isinstance(reason, ssl.SSLError):
        return f"TLS: {reason.reason or reason}"
    if isinstance(reason, OSError) and reason.strerror:
        return reason.strerror
    if isinstance(reason, http.client.HTTPException):
        return f"not an HTTP answer ({type(reason).__name__}: {reason})"
    return str(reason) or type(reason).__name__


# --- showing what came back -----------------------------------------------------------

def redact(text: str, secrets: tuple[str, ...]) -> str:
    """``text`` with every secret (as written, and as JSON escapes it) replaced."""
    forms = {f for s in secrets if s for f in (s, json.dumps(s)[1:-1])}
    for form in sorted(forms, key=len, reverse=True):
        text = text.replace(form, REDACTED)
    return text


def shown(answer: Answer, secrets: tuple[str, ...]) -> str:
    """The answer's body for a person: pretty JSON if it is JSON, else its text; redacted."""
    text = answer.body.decode("utf-8", errors="replace")
    try:
        text = json.dumps(json.loads(text), indent=2, ensure_ascii=False)
    except ValueError:
        text = text.strip()
    text = redact(text, secrets) or "(an empty body)"
    if answer.truncated:
        text += f"\n(answer cut at {MAX_ANSWER_BYTES} bytes)"
    return text
