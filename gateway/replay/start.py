"""The recorded start message again, naming a new call.

Stopgap until the codec (``gateway.core.knowlarity``) offers it: the id sits in
``uuid``, else in its alias ``callid`` (as ``parse_start`` reads it); a start
message that named no id (the id came from the URL path) gets a ``uuid``. Every
other field is kept as recorded. The JSON shapes come back as compact JSON; the
Python-literal shape (PROTOCOL.md) comes back as JSON too.
"""

from __future__ import annotations

import ast
import json

from gateway.core import knowlarity
from gateway.core.errors import ProtocolError


def with_call_id(raw: str, call_id: str) -> str:
    """``raw`` naming ``call_id`` instead; raises ValueError if it is no start message."""
    try:
        knowlarity.check_call_id(call_id)
    except ProtocolError as e:
        raise ValueError(f"new call id: {e.reason}") from None
    text = raw.lstrip("\ufeff")
    try:
        message = json.loads(text)
    except ValueError:
        message = ast.literal_eval(text)
    if not isinstance(message, dict):
        raise ValueError("the recorded start message is not an object")
    key = "callid" if message.get("uuid") in (None, "") and "callid" in message else "uuid"
    out = json.dumps({**message, key: call_id}, separators=(",", ":"), ensure_ascii=False)
    try:
        parsed = knowlarity.parse_start(out, fallback_call_id="-")
    except ProtocolError as e:
        raise ValueError(f"the rewritten start message: {e.reason}") from None
    if parsed.call_id != call_id:
        raise ValueError("the rewritten start message does not name the new call")
    return out
