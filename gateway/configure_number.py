"""The ``configure-number`` command line: point a Knowlarity number at a gateway.

Calls the provider's ``update_wss_url`` API (``gateway.provider_api``) and, with
``--check``, places one simulated call against the new URL to see that the
gateway there accepts the handshake and the start message.

The API token and key are no settings: a flag's value shows in ``ps`` and in
shell history. They come from ``KGW_KNOWLARITY_API_TOKEN`` /
``KGW_KNOWLARITY_API_KEY``, or from the files ``--api-token-file`` /
``--api-key-file`` name (trimmed), and are never printed.

Exit status: 0 when the provider answered 2xx (and, with ``--check``, the
gateway answered); 1 when the provider refused, could not be reached, or the
check call failed; 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from gateway import provider_api
from gateway.provider_api import Credentials, ProviderUnreachable
from gateway.settings import (
    Setting,
    SettingError,
    add_settings,
    boolean,
    from_args,
    positive,
    with_defaults,
)
from gateway.simulator.model import OK_ENDS, CallOptions, CallResult

__all__ = ["CONFIGURE_NUMBER_SETTINGS", "ConfigureNumberSettings", "TOKEN_ENV", "KEY_ENV",
           "add_arguments", "credentials", "run"]

TOKEN_ENV = "KGW_KNOWLARITY_API_TOKEN"
KEY_ENV = "KGW_KNOWLARITY_API_KEY"
_PROG = "configure-number"
# The check call: long enough for the gateway to take the start message and some audio.
_CHECK_SECONDS = 1.0
_CHECK_LINGER_S = 0.5


def _optional(check: Callable[[str], str]) -> Callable[[str], str]:
    """Empty is refused by ``run`` with a message of its own (a default must parse)."""
    def parse(text: str) -> str:
        return check(text) if text.strip() else ""

    return parse


@dataclass(frozen=True)
class ConfigureNumberSettings:
    number: str = ""
    wss_url: str = ""
    api_url: str = ""  # no provider host is documented: no default
    api_token_file: str = ""
    api_key_file: str = ""
    timeout_s: float = 15.0
    check: bool = False


CONFIGURE_NUMBER_SETTINGS: tuple[Setting, ...] = with_defaults((
    Setting("number", "KGW_KNOWLARITY_NUMBER", None,
            "the Knowlarity number to point at the gateway, E.164-like (+ and 6 to 15 digits)",
            _optional(provider_api.phone_number)),
    Setting("wss_url", "KGW_KNOWLARITY_WSS_URL", None,
            "the gateway's WebSocket URL the provider will dial, wss:// (or ws://)",
            _optional(provider_api.wss_url)),
    Setting("api_url", "KGW_KNOWLARITY_API_URL", None,
            "the provider's API base URL, https://host[/prefix] (no default: PROTOCOL.md "
            "documents no host)", _optional(provider_api.api_url)),
    Setting("api_token_file", "KGW_KNOWLARITY_API_TOKEN_FILE", None,
            f"a file holding the API token (else the token in {TOKEN_ENV})"),
    Setting("api_key_file", "KGW_KNOWLARITY_API_KEY_FILE", None,
            f"a file holding the API key (else the key in {KEY_ENV})"),
    Setting("timeout_s", "KGW_KNOWLARITY_TIMEOUT_S", None,
            "give up on the provider's API (and the check call's handshake) after this long, s",
            positive(float)),
    Setting("check", "KGW_KNOWLARITY_CHECK", None,
            "after the update, place one simulated call at --wss-url and report whether the "
            "gateway answered", boolean),
), ConfigureNumberSettings())

_BY_NAME = {s.name: s for s in CONFIGURE_NUMBER_SETTINGS}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``configure-number`` options to ``parser``."""
    parser.description = (
        "Point a Knowlarity number at a gateway through the provider's update_wss_url API. "
        f"The API token and key come from {TOKEN_ENV} and {KEY_ENV}, or from the files "
        "--api-token-file and --api-key-file name; never from a flag."
    )
    add_settings(parser, CONFIGURE_NUMBER_SETTINGS)


def run(args: argparse.Namespace, env: Mapping[str, str] | None = None) -> int:
    """Update the number ``args`` name, print the provider's answer, return the exit status."""
    env = os.environ if env is None else env
    try:
        settings: ConfigureNumberSettings = from_args(
            ConfigureNumberSettings(), CONFIGURE_NUMBER_SETTINGS, args, env)
        _require(settings)
        creds = credentials(settings, env)
    except SettingError as error:
        print(f"{_PROG}: {error}", file=sys.stderr)
        return 2
    request = provider_api.update_wss_url(settings.api_url, settings.number, settings.wss_url,
                                          creds)
    try:
        answer = provider_api.send(request, settings.timeout_s)
    except ProviderUnreachable as error:
        print(f"{_PROG}: cannot reach {settings.api_url}: {error}", file=sys.stderr)
        return 1
    body = provider_api.shown(answer, creds.secrets)
    if not answer.ok:
        print(f"{_PROG}: the provider answered {answer.status} {answer.reason}: {body}"
              f"{_meaning(answer.status)}", file=sys.stderr)
        return 1
    print(f"pointed {settings.number} at {settings.wss_url}; the provider answered "
          f"{answer.status} {answer.reason}:")
    print(body, flush=True)
    if not settings.check:
        return 0
    return _check(settings)


def _require(settings: ConfigureNumberSettings) -> None:
    for name, what in (("number", "name the number"), ("wss_url", "name the gateway's URL")):
        if not getattr(settings, name):
            s = _BY_NAME[name]
            raise SettingError(f"{what}: {s.flag} / {s.env}")
    if not settings.api_url:
        s = _BY_NAME["api_url"]
        raise SettingError(
            f"give the provider's API base URL: {s.flag} / {s.env} (must be given: no provider "
            "host is documented, so there is no default)")


def credentials(settings: ConfigureNumberSettings, env: Mapping[str, str]) -> Credentials:
    """The token and key, each from exactly one of its variable or its file."""
    token = _secret("API token", TOKEN_ENV, _BY_NAME["api_token_file"], settings.api_token_file,
                    env)
    key = _secret("API key", KEY_ENV, _BY_NAME["api_key_file"], settings.api_key_file, env)
    try:
        return Credentials(token=token, key=key)
    except ValueError as e:
        raise SettingError(str(e)) from None


def _secret(what: str, env_name: str, file_setting: Setting, path: str,
            env: Mapping[str, str]) -> str:
    where = f"{env_name}, or a file named by {file_setting.flag} / {file_setting.env}"
    in_env = env.get(env_name, "")
    if path and in_env:
        raise SettingError(f"the {what} is given twice: set one of {where}")
    if path:
        try:
            value = Path(path).read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as e:
            reason = e.strerror if isinstance(e, OSError) and e.strerror else type(e).__name__
            raise SettingError(f"cannot read the {what} from {file_setting.flag} "
                               f"{path}: {reason}") from None
        if not value:
            raise SettingError(f"the {what} file {path} ({file_setting.flag}) is empty")
        return value
    if not in_env.strip():
        raise SettingError(f"no {what}: put it in {where}")
    return in_env.strip()


def _meaning(status: int) -> str:
    if status in (401, 403):
        return (f"\n(a {status} most likely means the API token or the API key is wrong, or "
                f"not allowed this number: check {TOKEN_ENV} and {KEY_ENV} or their files)")
    if 300 <= status < 400:
        return ("\n(redirects are not followed, or the token and key would go with them: "
                "give --api-url the final address)")
    if status == 404:
        return f"\n(is --api-url the API's base? the path {provider_api.PATH} is added to it)"
    return ""


# --- the check call ---------------------------------------------------------------------

def _check(settings: ConfigureNumberSettings) -> int:
    options = CallOptions(seconds=_CHECK_SECONDS, linger=_CHECK_LINGER_S, to=settings.number,
                          open_timeout=settings.timeout_s)
    try:
        result = _place_check_call(settings.wss_url, options)
    except (OSError, ValueError, subprocess.SubprocessError) as error:
        print(f"{_PROG}: check: the simulated call could not be placed: {error}",
              file=sys.stderr)
        return 1
    if result.connected and result.ended in OK_ENDS:
        print(f"check: the gateway at {settings.wss_url} answered: handshake and start message "
              f"accepted (call {result.call_id}, {result.ended})")
        return 0
    detail = result.error or (f"closed {result.close_code} {result.close_reason}".rstrip()
                              if result.close_code is not None else "")
    what = ("no WebSocket (TCP, TLS or the handshake failed)" if not result.connected
            else "the gateway did not accept the call")
    print(f"{_PROG}: check: the gateway at {settings.wss_url} did not answer: {what}: "
          f"{result.ended}" + (f" ({detail})" if detail else ""), file=sys.stderr)
    return 1


def _place_check_call(url: str, options: CallOptions) -> CallResult:
    """One call with the simulator: here if this process may run Autobahn on asyncio."""
    import txaio

    try:
        asyncio.get_running_loop()
        loop_running = True
    except RuntimeError:
        loop_running = False
    if txaio.using_twisted or loop_running:
        return _check_in_child(url, options)
    from gateway.simulator import place_call

    return asyncio.run(place_call(url, options))


def _check_in_child(url: str, options: CallOptions) -> CallResult:
    """The call from ``python -m gateway.simulator``: Autobahn here is already on Twisted."""
    root = str(Path(__file__).resolve().parents[1])
    # The child needs no secret, and no simulate setting of the caller's environment.
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("KGW_KNOWLARITY_", "KGW_SIM_"))}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    argv = [sys.executable, "-m", "gateway.simulator", "--url", url, "--calls", "1",
            "--seconds", f"{options.seconds:g}", "--linger-s", f"{options.linger:g}",
            "--to", options.to, "--json"]
    budget = 2 * options.open_timeout + options.seconds + options.linger + 30
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=budget)
    lines = proc.stdout.strip().splitlines()
    try:
        call = json.loads(lines[-1])["calls"][0]
    except (IndexError, KeyError, ValueError):
        raise ValueError(f"the simulator gave no result (exit {proc.returncode}): "
                         f"{proc.stderr.strip()[-500:]}") from None
    return CallResult(
        call_id=call["call_id"], ended=call["ended"], sample_rate=call["sample_rate"],
        connected=call["connected"], close_code=call["close_code"],
        close_reason=call["close_reason"], error=call["error"])
