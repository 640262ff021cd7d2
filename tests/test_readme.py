"""The README's promises that code can check."""

from __future__ import annotations

import re
from pathlib import Path

from gateway.config import NODE_SETTINGS
from gateway.settings import markdown_table

README = (Path(__file__).parent.parent / "README.md").read_text()


def test_settings_table_matches_the_code() -> None:
    """The README's configuration table is exactly the one generated from the node's settings."""
    m = re.search(r"<!-- settings-table:.*?-->\n(.*?)\n<!-- /settings-table -->", README, re.S)
    assert m, "settings table markers missing from README.md"
    assert m.group(1) == markdown_table(NODE_SETTINGS)


def test_readme_names_the_two_commands() -> None:
    """The README gives the run command and the test command that CI runs."""
    assert "make dev" in README
    assert "make test" in README
    assert "make test" in (Path(__file__).parent.parent / ".ci" / "run").read_text()
