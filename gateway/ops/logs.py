"""Log set-up for the entry points: one line per event, call id in the fields.

Text from the network (paths, call ids before they are checked, close
reasons, whatever Autobahn quotes) must not forge log lines: ``printable``
escapes it where it is logged, and the text format escapes every control
character of a rendered event as a last line of defence.

The JSON format is for log shippers (Fluent Bit, Loki, Cloud Logging): every
event, Twisted's and stdlib logging's (aiokafka, asyncio) alike, is one ASCII
JSON object on one line of stdout with ``time`` (RFC 3339, UTC), ``level``,
``message`` (rendered), ``logger``, and ``call_id`` / ``node_id`` where they
apply. A traceback is a field, never extra lines.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import traceback
from datetime import UTC, datetime
from types import TracebackType
from typing import IO, Any

from twisted.logger import (
    FileLogObserver,
    FilteringLogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    formatEvent,
    formatEventAsClassicLogText,
    globalLogBeginner,
)

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_SHOWN = 200

# One vocabulary for both sources; Twisted says "warn", shippers expect "warning".
_TWISTED_LEVELS = {LogLevel.debug: "debug", LogLevel.info: "info", LogLevel.warn: "warning",
                   LogLevel.error: "error", LogLevel.critical: "critical"}
_STDLIB_LEVELS = {logging.DEBUG: "debug", logging.INFO: "info", logging.WARNING: "warning",
                  logging.ERROR: "error", logging.CRITICAL: "critical"}


def printable(text: object, limit: int = _SHOWN) -> str:
    """``text`` with control characters escaped (``\\n`` -> ``\\\\n``), cut at ``limit``."""
    s = str(text)
    cut = len(s) > limit
    s = _CONTROL.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), s[:limit])
    return s + "..." if cut else s


def _escaped_line(event: dict[str, object]) -> str | None:
    line = formatEventAsClassicLogText(event)
    if line is None:
        return None
    body = line[:-1] if line.endswith("\n") else line
    return _CONTROL.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"),
                        body) + "\n"


def text_observer(out: IO[str]) -> FileLogObserver:
    """Twisted's classic text lines, each guaranteed to be one line."""
    return FileLogObserver(out, _escaped_line)


class _EscapingFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return printable(super().format(record), limit=10_000)


# --- JSON ------------------------------------------------------------------------


def rfc3339(seconds: float) -> str:
    """``seconds`` since the epoch as RFC 3339 in UTC, to the microsecond, ``Z`` suffixed."""
    return (datetime.fromtimestamp(seconds, UTC)
            .isoformat(timespec="microseconds").replace("+00:00", "Z"))


def _json_line(time: float, level: str, message: str, logger: str,
               fields: dict[str, Any], node_id: str | None) -> str:
    line: dict[str, Any] = {"time": rfc3339(time), "level": level, "message": message,
                            "logger": logger}
    call_id = fields.get("call_id")
    if call_id is not None and call_id != "":
        line["call_id"] = str(call_id)
    about = fields.get("node_id")
    about = None if about is None or about == "" else str(about)
    # node_id says which node wrote the line; a line about another node (a
    # peer's expired lease) names that one apart, so filters by node stay right.
    if node_id:
        line["node_id"] = node_id
        if about is not None and about != node_id:
            line["peer_node_id"] = about
    elif about is not None:
        line["node_id"] = about
    if fields.get("traceback"):
        line["traceback"] = fields["traceback"]
    # ensure_ascii: no raw U+2028, NEL or other separators a line splitter might honour.
    return json.dumps(line, ensure_ascii=True, default=str) + "\n"


def event_as_json(event: dict[str, Any], node_id: str | None = None) -> str | None:
    """A Twisted log event as one JSON line, or None for an event that renders to nothing."""
    message = formatEvent(event)
    failure = event.get("log_failure")
    fields: dict[str, Any] = {"call_id": event.get("call_id"), "node_id": event.get("node_id")}
    if failure is not None:
        try:
            fields["traceback"] = failure.getTraceback()
        except BaseException as e:  # as Twisted's own formatter: never lose the event
            fields["traceback"] = f"(unable to obtain traceback: {e!r})"
        if not message:
            message = f"{failure.type.__name__}: {failure.getErrorMessage()}"
    if not message:
        return None
    level = event.get("log_level")
    time = event.get("log_time")
    return _json_line(time if isinstance(time, (int, float)) else 0.0,
                      _TWISTED_LEVELS.get(level, getattr(level, "name", "info")), message,
                      str(event.get("log_namespace", "-")), fields, node_id)


def json_observer(out: IO[str], node_id: str | None = None) -> FileLogObserver:
    """Twisted events as JSON lines on ``out``."""
    return FileLogObserver(out, lambda event: event_as_json(event, node_id))


class JsonFormatter(logging.Formatter):
    """Stdlib records in the same JSON shape; ``call_id`` / ``node_id`` from ``extra``."""

    def __init__(self, node_id: str | None = None) -> None:
        super().__init__()
        self.node_id = node_id

    def format(self, record: logging.LogRecord) -> str:
        fields: dict[str, Any] = {"call_id": getattr(record, "call_id", None),
                                  "node_id": getattr(record, "node_id", None)}
        tb = []
        if record.exc_info:
            tb.append(self.formatException(record.exc_info))
        elif record.exc_text:
            tb.append(record.exc_text)
        if record.stack_info:
            tb.append(self.formatStack(record.stack_info))
        if tb:
            fields["traceback"] = "\n".join(tb)
        level = _STDLIB_LEVELS.get(record.levelno, record.levelname.lower())
        # The handler's stream adds nothing: the line ends here.
        return _json_line(record.created, level, record.getMessage(), record.name, fields,
                          self.node_id).removesuffix("\n")


def stdlib_handler(fmt: str, out: IO[str], node_id: str | None = None) -> logging.Handler:
    """A handler writing stdlib records to ``out``: JSON lines, or escaped text lines."""
    handler = logging.StreamHandler(out)
    if fmt == "json":
        handler.setFormatter(JsonFormatter(node_id))
    else:
        handler.setFormatter(_EscapingFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    return handler


def _json_excepthook(out: IO[str], node_id: str | None) -> Any:
    def hook(kind: type[BaseException], value: BaseException,
             tb: TracebackType | None) -> None:
        record = logging.LogRecord("uncaught", logging.CRITICAL, "", 0,
                                   f"uncaught {kind.__name__}: {value}", None, None)
        record.exc_text = "".join(traceback.format_exception(kind, value, tb)).rstrip("\n")
        out.write(JsonFormatter(node_id).format(record) + "\n")
        out.flush()
    return hook


def start_logging(fmt: str = "text", level: str = "info", node_id: str | None = None) -> None:
    """Route every logger to one place; ``node_id``, when given, is on every JSON line.

    text: Twisted's events as escaped classic lines on stdout, stdlib logging
    (aiokafka) on stderr, as people read them. json: both on stdout as JSON
    lines, and an uncaught exception as one JSON line too.
    """
    if fmt == "json":
        observer = json_observer(sys.stdout, node_id)
        handler = stdlib_handler("json", sys.stdout, node_id)
        sys.excepthook = _json_excepthook(sys.stdout, node_id)
    else:
        observer = text_observer(sys.stdout)
        handler = stdlib_handler("text", sys.stderr)
    twisted_level = LogLevel.levelWithName("warn" if level == "warning" else level)
    predicate = LogLevelFilterPredicate(defaultLogLevel=twisted_level)
    globalLogBeginner.beginLoggingTo([FilteringLogObserver(observer, [predicate])],
                                     redirectStandardIO=False)
    logging.basicConfig(level=logging.WARNING, handlers=[handler])
