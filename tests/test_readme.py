"""The README's promises that code can check.

Generated tables sit between ``<!-- NAME: ... -->`` and ``<!-- /NAME -->``
markers. ``python tests/test_readme.py`` rewrites them from the code.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable
from pathlib import Path

from gateway.cli import command_settings
from gateway.config import NODE_SETTINGS
from gateway.core.errors import CloseCode
from gateway.kafka_access import ACCESS_SETTINGS
from gateway.ops import limits
from gateway.sdk import BOT_SETTINGS
from gateway.settings import Setting, markdown_table

ROOT = Path(__file__).parent.parent
README_PATH = ROOT / "README.md"
README = README_PATH.read_text()
BOTS_DOC_PATH = ROOT / "docs" / "bots.md"
BOTS_DOC = BOTS_DOC_PATH.read_text()

# Every command that reaches Kafka takes the same access settings: tabled once.
def _access_row(link: str) -> str:
    return ("| `--kafka-security-protocol`, `--kafka-sasl-*`, `--kafka-ssl-*`, "
            "`--kafka-oauth-token-file` | `KGW_KAFKA_*` | | how to reach a secured Kafka: "
            f"see [Kafka security]({link}) |")


def _table(table: tuple[Setting, ...], link: str = "#kafka-security") -> str:
    return markdown_table(table, shared=ACCESS_SETTINGS, shared_row=_access_row(link))


BOTS_DOC_LINK = "../README.md#kafka-security"


GENERATED: dict[str, Callable[[], str]] = {
    "settings-table": lambda: _table(NODE_SETTINGS),
    **{f"settings-{name.replace(' ', '-')}": (lambda t=table: _table(t))
       for name, table in command_settings().items() if name != "serve"},
    "kafka-access-table": lambda: markdown_table(ACCESS_SETTINGS),
    "limits-table": limits.limits_table,
    "fixed-limits-table": limits.fixed_limits_table,
    "memory-table": limits.memory_section,
    "outage-table": limits.outage_table,
}


def _pattern(name: str) -> re.Pattern[str]:
    return re.compile(rf"(<!-- {name}:.*?-->\n)(.*?)(<!-- /{name} -->)", re.S)


def _section(name: str) -> str:
    m = _pattern(name).search(README)
    assert m, f"{name} markers missing from README.md"
    return m.group(2).removesuffix("\n")


def test_settings_table_matches_the_code() -> None:
    """The README's configuration table is exactly the one generated from the node's settings."""
    assert _section("settings-table") == _table(NODE_SETTINGS)


def test_the_bot_guide_s_settings_table_matches_the_sdk() -> None:
    m = _pattern("bot-settings").search(BOTS_DOC)
    assert m, "bot-settings markers missing from docs/bots.md"
    assert m.group(2).removesuffix("\n") == _table(BOT_SETTINGS, BOTS_DOC_LINK)


def test_every_command_has_its_settings_table() -> None:
    """Each command's table in the README is generated from the settings it reads."""
    for name, table in command_settings().items():
        key = "settings-table" if name == "serve" else f"settings-{name.replace(' ', '-')}"
        assert _section(key) == _table(table), name


def test_the_kafka_access_settings_are_tabled_once_with_every_command_pointing_there() -> None:
    """Each command that reaches Kafka takes every access setting, tabled once."""
    assert _section("kafka-access-table") == markdown_table(ACCESS_SETTINGS)
    access = {s.name for s in ACCESS_SETTINGS}
    for name in ("serve", "bot echo", "bot ivr", "audit", "replay", "bench"):
        assert access <= {s.name for s in command_settings()[name]}, name


def test_limits_tables_match_the_code() -> None:
    assert _section("limits-table") == limits.limits_table()
    assert _section("fixed-limits-table") == limits.fixed_limits_table()


def test_outage_table_matches_the_code() -> None:
    """How long an outage the defaults carry is computed from the buffer settings."""
    assert _section("outage-table") == limits.outage_table()


def test_memory_tables_match_the_code() -> None:
    assert _section("memory-table") == limits.memory_section()


def _close_code_table() -> dict[int, str]:
    m = re.search(r"\| close code \| meaning \|\n\s*\|---\|---\|\n((?:\s*\|.*\|\n)+)", README)
    assert m, "close-code table missing from README.md"
    rows = {}
    for line in m.group(1).splitlines():
        code, meaning = (c.strip() for c in line.strip().strip("|").split("|", 1))
        rows[int(code)] = meaning
    return rows


def test_close_code_table_is_every_close_code() -> None:
    """One table of close codes, and it lists exactly the codes the gateway sends."""
    assert set(_close_code_table()) == {int(c) for c in CloseCode}
    assert README.count("| close code |") == 1


def test_every_close_code_named_in_the_limits_is_in_the_table() -> None:
    table = _close_code_table()
    for text in (limits.limits_table(), limits.fixed_limits_table()):
        for code in re.findall(r"close (\d{4})", text):
            assert int(code) in table, code


def test_readme_names_the_two_commands() -> None:
    """The README gives the run command and the test command that CI runs."""
    assert "make dev" in README
    assert "make test" in README
    assert "make test" in (ROOT / ".ci" / "run").read_text()


def regenerate(text: str) -> str:
    for name, make in GENERATED.items():
        pattern = _pattern(name)
        assert pattern.search(text), f"{name} markers missing"
        text = pattern.sub(lambda m, make=make: m.group(1) + make() + "\n" + m.group(3), text)
    return text


if __name__ == "__main__":
    README_PATH.write_text(regenerate(README))
    BOTS_DOC_PATH.write_text(_pattern("bot-settings").sub(
        lambda m: m.group(1) + _table(BOT_SETTINGS, BOTS_DOC_LINK) + "\n" + m.group(3),
        BOTS_DOC))
    sys.exit(0)


def _layout_rows() -> list[tuple[str, str]]:
    section = README.split("## Layout", 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 2 and cells[0].startswith("`"):
            rows.append((cells[0], cells[1]))
    return rows


def test_layout_table_names_only_what_exists() -> None:
    """Every path the README's layout table names is in the tree."""
    root = Path(__file__).parent.parent
    rows = _layout_rows()
    assert rows, "no layout table"
    for first, _what in rows:
        names = re.findall(r"`([^`]+)`", first)
        base = ""
        for name in names:
            path = name if "/" in name or not base else base + name
            assert (root / path.rstrip("/")).exists(), f"layout table names {path!r}"
            if "/" in name:
                base = name[: name.rstrip("/").rfind("/") + 1] if not name.endswith("/") else name


def test_layout_table_covers_every_module_of_the_package() -> None:
    """Every module and package directly under gateway/ appears in the layout table."""
    root = Path(__file__).parent.parent / "gateway"
    text = "\n".join(first + " " + what for first, what in _layout_rows())
    missing = [p.name for p in sorted(root.iterdir())
               if not p.name.startswith(("_", ".")) and p.name != "proto"
               and (p.suffix == ".py" or p.is_dir()) and p.name.removesuffix(".py") not in text]
    assert not missing, f"not in the README's layout table: {missing}"


def test_every_record_header_is_documented() -> None:
    """Each header name and message type in gateway.topics is in the README's tables."""
    from gateway import topics

    names = [v for k, v in vars(topics).items() if k.startswith("HEADER_")]
    types = [v for k, v in vars(topics).items() if k.endswith("_TYPE") and k != "HEADER_TYPE"]
    assert len(names) == 5 and len(types) == 4
    for value in (*names, *types):
        assert f"`{value}`" in README, value


def test_the_go_bot_s_flag_table_is_its_flags() -> None:
    """examples/go-echo-bot/README.md tables exactly the flags main.go declares, each with
    the environment variable main.go reads for it."""
    bot = ROOT / "examples" / "go-echo-bot"
    declared = re.findall(r'flag\.\w+\("([\w-]+)", env\w*\("(\w+)"', (bot / "main.go").read_text())
    tabled = re.findall(r"^\| `--([\w-]+)` \| `(\w+)` \|", (bot / "README.md").read_text(), re.M)
    assert declared and sorted(declared) == sorted(tabled)
