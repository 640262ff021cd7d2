"""Log set-up for the entry point: one line per event, call id in the fields.

Text from the network (paths, call ids before they are checked, close
reasons, whatever Autobahn quotes) must not forge log lines: ``printable``
escapes it where it is logged, and the text format escapes every control
character of a rendered event as a last line of defence.
"""

from __future__ import annotations

import logging
import re
import sys
from typing import IO

from twisted.logger import (
    FileLogObserver,
    FilteringLogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    formatEventAsClassicLogText,
    globalLogBeginner,
    jsonFileLogObserver,
)

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_SHOWN = 200


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


def start_logging(fmt: str = "text", level: str = "info") -> None:
    """Twisted's logger for the node's own events; stdlib logging (aiokafka) to stderr."""
    observer = jsonFileLogObserver(sys.stdout) if fmt == "json" else text_observer(sys.stdout)
    predicate = LogLevelFilterPredicate(defaultLogLevel=LogLevel.levelWithName(level))
    globalLogBeginner.beginLoggingTo([FilteringLogObserver(observer, [predicate])],
                                     redirectStandardIO=False)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_EscapingFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=logging.WARNING, handlers=[handler])
