"""Table-driven settings: each one a flag, an environment variable and a parser.

Why a table: the command line, the environment and the README's
configuration table must never disagree, and a bad value must fail at start
naming the setting (flag and variable), not deep inside a call.
"""

from __future__ import annotations

import argparse
import enum
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from operator import attrgetter
from typing import Any

from gateway import topics


class SettingError(ValueError):
    """A setting has a value the gateway cannot use; the message names it."""


@dataclass(frozen=True)
class Setting:
    name: str  # the flag's name, and the key in the resolved values
    env: str
    # As a user would write it; parsed like any given value. None: the config
    # object's own default at ``path`` (see ``with_defaults``), so it is written once.
    default: str | None
    help: str
    parse: Callable[[str], Any] = str
    # Where the value goes in the config tree ("call.playout.clip_ms"); empty: ``name``.
    path: str = ""

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def target(self) -> str:
        return self.path or self.name


def as_text(value: Any) -> str:
    """A config value as a user would write it (the inverse of the parsers here)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, enum.Enum):
        return str(value.value)
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, tuple | list):
        return ",".join(as_text(v) for v in value)
    return str(value)


def with_defaults(table: Sequence[Setting], config: Any) -> tuple[Setting, ...]:
    """The table with every inherited default filled in from ``config``'s values."""
    out = []
    for s in table:
        if s.default is None:
            s = replace(s, default=as_text(attrgetter(s.target)(config)))
        out.append(s)
    return tuple(out)


def build(config: Any, values: Mapping[str, Any], table: Sequence[Setting]) -> Any:
    """``config`` with each setting's value placed at its path (nested frozen dataclasses)."""
    for s in table:
        if s.name in values:
            config = _set(config, s.target.split("."), values[s.name])
    return config


def _set(obj: Any, path: list[str], value: Any) -> Any:
    head, *rest = path
    return replace(obj, **{head: _set(getattr(obj, head), rest, value) if rest else value})


def boolean(text: str) -> bool:
    low = text.strip().lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"expected true/false, got {text!r}")


def positive(kind: Callable[[str], Any]) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        value = kind(text)
        if value <= 0:
            raise ValueError(f"must be > 0, got {text!r}")
        return value

    return parse


def non_negative(kind: Callable[[str], Any]) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        value = kind(text)
        if value < 0:
            raise ValueError(f"must be >= 0, got {text!r}")
        return value

    return parse


def choice(*options: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        if text not in options:
            raise ValueError(f"must be one of {', '.join(options)}, got {text!r}")
        return text

    return parse


def add_settings(parser: argparse.ArgumentParser, table: Sequence[Setting]) -> None:
    """Flags default to None so that ``resolve`` can tell 'not given' from a value.

    A boolean flag alone means true (``--insecure``); ``--insecure false`` also reads.
    """
    for s in table:
        extra: dict[str, Any] = {"nargs": "?", "const": "true"} if s.parse is boolean else {}
        parser.add_argument(
            s.flag, dest=s.name, default=None, metavar=s.env,
            help=f"{s.help} (env {s.env}, default {s.default!r})", **extra,
        )


def nested(table: Sequence[Setting], under: str) -> tuple[Setting, ...]:
    """The same settings placed under ``under`` in a bigger config ("bot" -> "bot.kafka"),
    their defaults cleared so that ``with_defaults`` reads them from the bigger config."""
    return tuple(replace(s, path=f"{under}.{s.target}", default=None) for s in table)


def as_argv(args: argparse.Namespace, table: Sequence[Setting]) -> list[str]:
    """The flags given on ``args``, as a command line again (to run the command elsewhere)."""
    out: list[str] = []
    for s in table:
        given = getattr(args, s.name, None)
        if given is not None:
            out += [s.flag, str(given)]
    return out


def resolve(
    args: argparse.Namespace, table: Sequence[Setting], env: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """Flag, else environment, else default; every value parsed and checked."""
    env = os.environ if env is None else env
    out: dict[str, Any] = {}
    for s in table:
        given = getattr(args, s.name, None)
        if given is not None:
            raw, source = given, s.flag
        elif s.env in env:
            raw, source = env[s.env], s.env
        else:
            assert s.default is not None, "resolve a table with_defaults filled in"
            raw, source = s.default, "the default"
        try:
            out[s.name] = s.parse(raw)
        except ValueError as e:
            raise SettingError(f"bad value for {s.flag} / {s.env} (from {source}): {e}") from None
    return out


def from_args(config: Any, table: Sequence[Setting], args: argparse.Namespace | None,
              env: Mapping[str, str] | None = None) -> Any:
    """``config`` with every setting of ``table`` resolved from ``args`` and ``env``."""
    return build(config, resolve(args or argparse.Namespace(), table, env), table)


def markdown_table(table: Sequence[Setting], *, shared: Sequence[Setting] = (),
                   shared_row: str = "") -> str:
    """The README's configuration table, generated so it cannot drift. Settings named in
    ``shared`` (tabled once elsewhere) are left out and ``shared_row`` stands for them."""
    rows = ["| flag | environment | default | meaning |", "|---|---|---|---|"]
    skip = {s.name for s in shared}
    for s in table:
        if s.name in skip:
            continue
        shown = f"`{s.default}`" if s.default else "(empty)"  # with_defaults filled in
        rows.append(f"| `{s.flag}` | `{s.env}` | {shown} | {s.help} |")
    if skip & {s.name for s in table} and shared_row:
        rows.append(shared_row)
    return "\n".join(rows)


# --- settings every command shares, spelt the same everywhere ---------------------

DEFAULT_KAFKA = "127.0.0.1:9092"
DEFAULT_TOPIC_PREFIX = "knowlarity"
LOG_FORMATS = ("text", "json")
LOG_LEVELS = ("debug", "info", "warning", "error")


def kafka_servers(text: str) -> str:
    """Bootstrap servers, ``HOST:PORT[,HOST:PORT...]``, as one normalised string."""
    servers = [s.strip() for s in text.split(",") if s.strip()]
    if not servers:
        raise ValueError("must name at least one HOST:PORT")
    for s in servers:
        host, sep, port = s.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"{s!r} is not HOST:PORT")
    return ",".join(servers)


def log_level(text: str) -> str:
    low = text.strip().lower()
    return choice(*LOG_LEVELS)("warning" if low == "warn" else low)


def _topic_prefix(text: str) -> str:
    return topics.check_name_part("topic prefix", text)


# Defaults None: each command's config class holds them (from the constants above).
KAFKA = Setting("kafka", "KGW_KAFKA", None,
                "Kafka bootstrap servers, HOST:PORT[,HOST:PORT...]", kafka_servers)
TOPIC_PREFIX = Setting("topic_prefix", "KGW_TOPIC_PREFIX", None, "prefix of every topic name",
                       _topic_prefix)
LOG_FORMAT = Setting("log_format", "KGW_LOG_FORMAT", None,
                     "text (for people) or json (one JSON object a line, for log shippers)",
                     choice(*LOG_FORMATS))
LOG_LEVEL = Setting("log_level", "KGW_LOG_LEVEL", None,
                    "least severe events logged: debug, info, warning or error", log_level)
