"""Every command reads its settings through the one mechanism, and they read alike.

The tables themselves are checked against the README in test_readme.py; here:
each command's flags are exactly its table's, its ``--help`` says the same
things in the same words, and shared settings (booleans, log levels, Kafka)
are spelt and checked the same everywhere.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable, Mapping
from typing import Any

import pytest

from gateway.audit.command import AUDIT_SETTINGS, AuditSettings
from gateway.bot.echo import EchoBotSettings
from gateway.bot.ivr import IVR_BOT_SETTINGS, IvrBotSettings
from gateway.cli import build_parser, command_settings
from gateway.config import NodeConfig
from gateway.configure_number import CONFIGURE_NUMBER_SETTINGS, ConfigureNumberSettings
from gateway.dev import DEV_SETTINGS, DevSettings
from gateway.replay.command import REPLAY_SETTINGS, ReplaySettings
from gateway.settings import SettingError, boolean, from_args
from gateway.simulator.command import SIMULATE_SETTINGS, SimulateSettings
from kgw_bench.command import BENCH_SETTINGS, BenchSettings

COMMANDS = sorted(command_settings())

# How each command turns (args, env) into its config object.
BUILD: dict[str, Callable[[argparse.Namespace, Mapping[str, str]], Any]] = {
    "serve": lambda a, e: NodeConfig.from_args(a, e),
    "bot echo": lambda a, e: EchoBotSettings.from_args(a, e),
    "bot ivr": lambda a, e: from_args(IvrBotSettings(), IVR_BOT_SETTINGS, a, e),
    "simulate": lambda a, e: from_args(SimulateSettings(), SIMULATE_SETTINGS, a, e),
    "dev": lambda a, e: from_args(DevSettings(), DEV_SETTINGS, a, e),
    "replay": lambda a, e: from_args(ReplaySettings(), REPLAY_SETTINGS, a, e),
    "configure-number": lambda a, e: from_args(ConfigureNumberSettings(),
                                               CONFIGURE_NUMBER_SETTINGS, a, e),
    "audit": lambda a, e: from_args(AuditSettings(), AUDIT_SETTINGS, a, e),
    "bench": lambda a, e: from_args(BenchSettings(), BENCH_SETTINGS, a, e),
}


def _parse(command: str, argv: list[str]) -> argparse.Namespace:
    return build_parser().parse_args([*command.split(), *argv])


def _help(command: str, capsys: pytest.CaptureFixture[str]) -> str:
    # Wide, so that argparse does not wrap (it breaks words at hyphens).
    with pytest.MonkeyPatch.context() as mp, pytest.raises(SystemExit):
        mp.setenv("COLUMNS", "10000")
        _parse(command, ["--help"])
    return capsys.readouterr().out


def test_every_command_is_built_here() -> None:
    assert set(BUILD) == set(COMMANDS)


@pytest.mark.parametrize("command", COMMANDS)
def test_flags_are_exactly_the_table(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    """No flag added beside the table: what --help lists is what the README lists."""
    text = _help(command, capsys)
    usage = text.split("\n\n", 1)[0]
    listed = set(re.findall(r"\[(--[a-z0-9-]+)", usage))
    assert listed == {s.flag for s in command_settings()[command]}


@pytest.mark.parametrize("command", COMMANDS)
def test_help_reads_the_same_way(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    """Every option's help ends naming its variable and its default, in one wording."""
    text = _help(command, capsys)
    for s in command_settings()[command]:
        assert f"(env {s.env}, default {s.default!r})" in text, s.flag


@pytest.mark.parametrize("command", COMMANDS)
def test_booleans_are_spelt_the_same(command: str) -> None:
    """A boolean flag alone means true; true/false, yes/no, 1/0 read from flag or variable."""
    flags = [s for s in command_settings()[command] if s.parse is boolean]
    for s in flags:
        target = s.target.split(".")

        def value(config: Any, path: list[str] = target) -> Any:
            for part in path:
                config = getattr(config, part)
            return config

        assert value(BUILD[command](_parse(command, [s.flag]), {})) is True, s.flag
        assert value(BUILD[command](_parse(command, [s.flag, "false"]), {})) is False
        assert value(BUILD[command](_parse(command, []), {s.env: "yes"})) is True
        assert value(BUILD[command](_parse(command, []), {s.env: "0"})) is False
        with pytest.raises(SettingError, match=re.escape(s.flag)):
            BUILD[command](_parse(command, []), {s.env: "maybe"})


def _log(config: Any) -> Any:
    return getattr(config, "bot", config)  # a bot's logging sits with its SDK settings


@pytest.mark.parametrize("command", ["serve", "bot echo"])
@pytest.mark.parametrize(("given", "level"), [("debug", "debug"), ("WARN", "warning"),
                                              ("warning", "warning"), ("error", "error")])
def test_log_levels_are_spelt_the_same(command: str, given: str, level: str) -> None:
    config = BUILD[command](_parse(command, ["--log-level", given]), {})
    assert _log(config).log_level == level


@pytest.mark.parametrize("command", ["serve", "bot echo"])
def test_bad_log_level_names_the_setting(command: str) -> None:
    with pytest.raises(SettingError, match="--log-level / KGW_LOG_LEVEL"):
        BUILD[command](_parse(command, []), {"KGW_LOG_LEVEL": "chatty"})


@pytest.mark.parametrize("command", ["serve", "bot echo"])
def test_kafka_means_the_same(command: str) -> None:
    """KGW_KAFKA is bootstrap servers for the node and the bot alike, checked alike."""
    config = BUILD[command](_parse(command, []), {"KGW_KAFKA": " a:9092 , b:9093 "})
    assert _log(config).kafka == "a:9092,b:9093"
    for bad in ("", "a", "a:port", "a:70000"):
        with pytest.raises(SettingError, match="--kafka / KGW_KAFKA"):
            BUILD[command](_parse(command, []), {"KGW_KAFKA": bad})


def test_bot_policy_out_of_range_names_the_setting() -> None:
    """A value that parses but the policy refuses still names the flag and the variable."""
    with pytest.raises(SettingError, match="--silence-dbfs / KGW_BOT_SILENCE_DBFS"):
        EchoBotSettings.from_args(_parse("bot echo", ["--silence-dbfs", "3"]), {})


def test_bot_settings_land_in_the_policy() -> None:
    s = EchoBotSettings.from_args(_parse("bot echo", ["--echo-delay-ms", "120"]),
                                  {"KGW_BOT_MAX_CALL_S": "30"})
    assert (s.policy.echo_delay_ms, s.policy.max_call_s) == (120, 30.0)


def test_simulate_settings_land_in_the_call_options() -> None:
    s = from_args(SimulateSettings(), SIMULATE_SETTINGS,
                  _parse("simulate", ["--seconds", "3", "--subprotocols", "a, b"]),
                  {"KGW_SIM_TO": "+910000000000"})
    assert (s.call.seconds, s.call.subprotocols, s.call.to) == (3.0, ("a", "b"), "+910000000000")


def test_version_is_the_distribution_s(capsys: pytest.CaptureFixture[str]) -> None:
    """``knowlarity-gateway --version`` names the version setup.cfg declares."""
    import configparser
    from pathlib import Path

    from gateway.cli import main

    cfg = configparser.ConfigParser()
    cfg.read(Path(__file__).parent.parent / "setup.cfg")
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out.strip() == f"knowlarity-gateway {cfg['metadata']['version']}"
