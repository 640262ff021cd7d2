"""``configure-number`` against a local fake of Knowlarity's ``update_wss_url`` API.

The fake is ``http.server`` in a thread on 127.0.0.1; it records every request
and answers what the test sets. Every test that runs the command also checks
that neither secret shows in stdout, stderr or the log.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from test_end_to_end import in_twisted, node_config, running_node, url_of

from gateway import configure_number, provider_api
from gateway.configure_number import _check_in_child
from gateway.provider_api import Credentials, UpdateRequest
from gateway.simulator.model import CallOptions

ROOT = Path(__file__).parent.parent
TOKEN = "tok-Zq81-secret-token"
KEY = "key-Xv27-secret-key"
WSS = "wss://client.example.com/vaani/knowlarity/setup-call-streams"
NUMBER = "+918012345678"


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class FakeProvider:
    """Answers ``status``/``body`` to every request and keeps what it was sent."""

    url: str = ""
    status: int = 200
    body: bytes = b'{"status": "success", "message": "wss url updated"}'
    content_type: str = "application/json"
    extra_headers: dict[str, str] = field(default_factory=dict)
    seen: list[Seen] = field(default_factory=list)


@pytest.fixture
def provider() -> Iterator[FakeProvider]:
    fake = FakeProvider()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's name
            self._serve()

        def do_GET(self) -> None:  # noqa: N802
            self._serve()

        def _serve(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            fake.seen.append(Seen(self.command, self.path, dict(self.headers.items()),
                                  self.rfile.read(length)))
            self.send_response(fake.status)
            self.send_header("Content-Type", fake.content_type)
            self.send_header("Content-Length", str(len(fake.body)))
            for k, v in fake.extra_headers.items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(fake.body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    fake.url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield fake
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only what a test sets: no KGW_KNOWLARITY_* of the machine, no proxy for 127.0.0.1."""
    import os

    for name in list(os.environ):
        if name.startswith("KGW_KNOWLARITY_") or name.lower().endswith("_proxy"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("KGW_KNOWLARITY_API_TOKEN", TOKEN)
    monkeypatch.setenv("KGW_KNOWLARITY_API_KEY", KEY)


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run(capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture,
        *argv: str) -> tuple[int, str, str]:
    """Run the command; assert no secret went to stdout, stderr or the log."""
    with caplog.at_level(logging.DEBUG):
        code = configure_number.run(_parser().parse_args(argv))
    out, err = capsys.readouterr()
    assert_no_secret(out, err, caplog.text)
    return code, out, err


def _parser() -> argparse.ArgumentParser:
    # The command's own parser: the CLI's registration is checked in test_command_settings.py.
    parser = argparse.ArgumentParser(prog="knowlarity-gateway configure-number")
    configure_number.add_arguments(parser)
    return parser


def assert_no_secret(*texts: str) -> None:
    for text in texts:
        assert TOKEN not in text
        assert KEY not in text


def test_the_request_is_exactly_the_documented_one(
        provider: FakeProvider, capsys: pytest.CaptureFixture[str],
        caplog: pytest.LogCaptureFixture) -> None:
    """One POST to <api-url>/knowlarity/update_wss_url with the three headers and the body."""
    code, out, _ = run(capsys, caplog, "--number", "+91 80-1234 5678", "--wss-url", WSS,
                       "--api-url", provider.url + "/")
    assert code == 0
    [seen] = provider.seen
    assert (seen.method, seen.path) == ("POST", "/knowlarity/update_wss_url")
    assert seen.headers["Authorization"] == TOKEN
    assert seen.headers["x-api-key"] == KEY
    assert seen.headers["Content-Type"] == "application/json"
    assert json.loads(seen.body) == {"data": {"number": NUMBER, "wss_url": WSS}}
    assert '"message": "wss url updated"' in out  # pretty JSON
    assert "200 OK" in out


def test_a_prefix_in_the_api_url_is_kept_and_a_trailing_slash_not_doubled() -> None:
    creds = Credentials(TOKEN, KEY)
    for base in ("https://api.example.com/v1", "https://api.example.com/v1/"):
        req = provider_api.update_wss_url(base, NUMBER, WSS, creds)
        assert req.url == "https://api.example.com/v1/knowlarity/update_wss_url"


def test_a_text_answer_is_printed_as_text(
        provider: FakeProvider, capsys: pytest.CaptureFixture[str],
        caplog: pytest.LogCaptureFixture) -> None:
    provider.body, provider.content_type = b"updated\n", "text/plain"
    code, out, _ = run(capsys, caplog, "--number", NUMBER, "--wss-url", WSS,
                       "--api-url", provider.url)
    assert code == 0
    assert out.splitlines()[-1] == "updated"


def test_an_answer_echoing_the_secrets_is_printed_redacted(
        provider: FakeProvider, capsys: pytest.CaptureFixture[str],
        caplog: pytest.LogCaptureFixture) -> None:
    """The provider repeating the token or key back never puts them on the terminal."""
    provider.body = json.dumps({"ok": True, "auth": TOKEN, "note": f"key {KEY} used"}).encode()
    code, out, _ = run(capsys, caplog, "--number", NUMBER, "--wss-url", WSS,
                       "--api-url", provider.url)
    assert code == 0
    assert out.count("<redacted>") == 2


@pytest.mark.parametrize(("status", "reason"), [(401, "Unauthorized"), (403, "Forbidden")])
def test_a_refusal_exits_1_naming_the_status_and_what_it_means(
        provider: FakeProvider, capsys: pytest.CaptureFixture[str],
        caplog: pytest.LogCaptureFixture, status: int, reason: str) -> None:
    provider.status = status
    provider.body = json.dumps({"error": "invalid token", "token": TOKEN}).encode()
    code, out, err = run(capsys, caplog, "--number", NUMBER, "--wss-url", WSS,
                         "--api-url", provider.url)
    assert code == 1
    assert f"the provider answered {status} {reason}: " in err
    assert "invalid token" in err and "<redacted>" in err
    assert "API token or the API key is wrong" in err
    assert out == ""


def test_a_redirect_is_not_followed(
        provider: FakeProvider, capsys: pytest.CaptureFixture[str],
        caplog: pytest.LogCaptureFixture) -> None:
    """A 3xx is reported, not followed: the token and key would go with it."""
    provider.status, provider.body = 302, b""
    provider.extra_headers = {"Location": provider.url + "/elsewhere"}
    code, _, err = run(capsys, caplog, "--number", NUMBER, "--wss-url", WSS,
                       "--api-url", provider.url)
    assert code == 1
    assert "302" in err and "redirects are not followed" in err
    assert [s.path for s in provider.seen] == ["/knowlarity/update_wss_url"]


def test_a_closed_port_is_a_clear_network_error(
        capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture) -> None:
    url = f"http://127.0.0.1:{closed_port()}"
    code, out, err = run(capsys, caplog, "--number", NUMBER, "--wss-url", WSS, "--api-url", url)
    assert code == 1
    assert err.startswith(f"configure-number: cannot reach {url}: ")
    assert "refused" in err.lower()
    assert out == ""


def test_a_silent_provider_times_out(
        capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture) -> None:
    """A host that takes the connection and never answers is given up after --timeout-s."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)  # the kernel completes the handshake; nobody ever answers
        url = f"http://127.0.0.1:{listener.getsockname()[1]}"
        code, _, err = run(capsys, caplog, "--number", NUMBER, "--wss-url", WSS,
                           "--api-url", url, "--timeout-s", "0.3")
    assert code == 1
    assert f"cannot reach {url}: timed out" in err


@pytest.mark.parametrize(("argv", "named", "why"), [
    (["--number", "+91 80 abc 12"], "--number / KGW_KNOWLARITY_NUMBER", "other than digits"),
    (["--number", "12345"], "--number / KGW_KNOWLARITY_NUMBER", "5 digits"),
    (["--number", "+1234567890123456"], "--number / KGW_KNOWLARITY_NUMBER", "16 digits"),
    (["--number", "+"], "--number / KGW_KNOWLARITY_NUMBER", "no digits"),
    (["--wss-url", "https://gw.example.com/x"], "--wss-url / KGW_KNOWLARITY_WSS_URL", "wss://"),
    (["--wss-url", "wss:///no-host"], "--wss-url / KGW_KNOWLARITY_WSS_URL", "wss://"),
    (["--api-url", "ftp://api.example.com"], "--api-url / KGW_KNOWLARITY_API_URL", "https://"),
    (["--api-url", "https://"], "--api-url / KGW_KNOWLARITY_API_URL", "https://"),
    (["--api-url", "https://u:p@api.example.com"], "--api-url / KGW_KNOWLARITY_API_URL",
     "user:password@"),
    (["--api-url", "https://api.example.com/?a=1"], "--api-url / KGW_KNOWLARITY_API_URL",
     "query"),
    (["--timeout-s", "0"], "--timeout-s / KGW_KNOWLARITY_TIMEOUT_S", "> 0"),
    (["--api-url", ""], "--api-url / KGW_KNOWLARITY_API_URL", "no provider host is documented"),
    (["--number", ""], "--number / KGW_KNOWLARITY_NUMBER", "name the number"),
    (["--wss-url", ""], "--wss-url / KGW_KNOWLARITY_WSS_URL", "name the gateway's URL"),
])
def test_a_bad_setting_exits_2_naming_it_before_any_request(
        provider: FakeProvider, capsys: pytest.CaptureFixture[str],
        caplog: pytest.LogCaptureFixture, argv: list[str], named: str, why: str) -> None:
    good = {"--number": NUMBER, "--wss-url": WSS, "--api-url": provider.url}
    given = dict(zip(argv[::2], argv[1::2], strict=True))
    flags = [x for k, v in {**good, **given}.items() if v for x in (k, v)]
    code, out, err = run(capsys, caplog, *flags)
    assert code == 2
    assert named in err and why in err
    assert out == "" and provider.seen == []


def test_a_missing_api_url_says_no_host_is_documented(
        provider: FakeProvider, capsys: pytest.CaptureFixture[str],
        caplog: pytest.LogCaptureFixture) -> None:
    code, _, err = run(capsys, caplog, "--number", NUMBER, "--wss-url", WSS)
    assert code == 2
    assert "--api-url / KGW_KNOWLARITY_API_URL" in err
    assert "must be given" in err and "no provider host is documented" in err


def test_settings_from_the_environment(
        provider: FakeProvider, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("KGW_KNOWLARITY_NUMBER", "080-12345678")
    monkeypatch.setenv("KGW_KNOWLARITY_WSS_URL", WSS)
    monkeypatch.setenv("KGW_KNOWLARITY_API_URL", provider.url)
    code, _, _ = run(capsys, caplog)
    assert code == 0
    assert json.loads(provider.seen[0].body)["data"]["number"] == "08012345678"


def test_secrets_from_files_are_trimmed(
        provider: FakeProvider, monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
        capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.delenv("KGW_KNOWLARITY_API_TOKEN")
    monkeypatch.delenv("KGW_KNOWLARITY_API_KEY")
    (tmp_path / "token").write_text(f"  {TOKEN}\n")
    (tmp_path / "key").write_text(f"{KEY}\n\n")
    monkeypatch.setenv("KGW_KNOWLARITY_API_KEY_FILE", str(tmp_path / "key"))
    code, _, _ = run(capsys, caplog, "--number", NUMBER, "--wss-url", WSS,
                     "--api-url", provider.url, "--api-token-file", str(tmp_path / "token"))
    assert code == 0
    assert (provider.seen[0].headers["Authorization"], provider.seen[0].headers["x-api-key"]) \
        == (TOKEN, KEY)


@pytest.mark.parametrize("missing", ["KGW_KNOWLARITY_API_TOKEN", "KGW_KNOWLARITY_API_KEY"])
def test_a_secret_given_nowhere_says_where_to_put_it(
        provider: FakeProvider, monkeypatch: pytest.MonkeyPatch, missing: str,
        capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.delenv(missing)
    code, _, err = run(capsys, caplog, "--number", NUMBER, "--wss-url", WSS,
                       "--api-url", provider.url)
    assert code == 2
    flag = "--api-token-file" if "TOKEN" in missing else "--api-key-file"
    assert f"put it in {missing}, or a file named by {flag} / {missing}_FILE" in err
    assert provider.seen == []


def test_a_secret_given_twice_or_in_an_empty_or_missing_file_exits_2(
        provider: FakeProvider, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "token").write_text(TOKEN)
    (tmp_path / "empty").write_text(" \n")
    base = ["--number", NUMBER, "--wss-url", WSS, "--api-url", provider.url]
    code, _, err = run(capsys, caplog, *base, "--api-token-file", str(tmp_path / "token"))
    assert code == 2 and "given twice" in err
    monkeypatch.delenv("KGW_KNOWLARITY_API_KEY")
    code, _, err = run(capsys, caplog, *base, "--api-key-file", str(tmp_path / "empty"))
    assert code == 2 and "is empty" in err and "--api-key-file" in err
    code, _, err = run(capsys, caplog, *base, "--api-key-file", str(tmp_path / "nope"))
    assert code == 2 and "cannot read the API key" in err
    assert provider.seen == []


def test_a_secret_with_a_line_break_is_refused_without_quoting_it(
        provider: FakeProvider, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("KGW_KNOWLARITY_API_KEY", f"{KEY}\r\nX-Injected: 1")
    code, _, err = run(capsys, caplog, "--number", NUMBER, "--wss-url", WSS,
                       "--api-url", provider.url)
    assert code == 2 and "control character" in err
    assert provider.seen == []


def test_no_secret_in_a_repr_or_in_help(capsys: pytest.CaptureFixture[str]) -> None:
    creds = Credentials(TOKEN, KEY)
    req = provider_api.update_wss_url("https://api.example.com", NUMBER, WSS, creds)
    assert isinstance(req, UpdateRequest)
    with pytest.raises(SystemExit):
        _parser().parse_args(["--help"])
    assert_no_secret(repr(creds), str(creds), repr(req), capsys.readouterr().out)


def test_check_against_a_closed_port_exits_1(
        provider: FakeProvider, capsys: pytest.CaptureFixture[str],
        caplog: pytest.LogCaptureFixture) -> None:
    """The update succeeds, the gateway is not there: the check says so and exits 1."""
    wss = f"ws://127.0.0.1:{closed_port()}/vaani/knowlarity/setup-call-streams"
    code, out, err = run(capsys, caplog, "--number", NUMBER, "--wss-url", wss,
                         "--api-url", provider.url, "--check", "--timeout-s", "5")
    assert code == 1
    assert len(provider.seen) == 1 and "200 OK" in out
    assert f"the gateway at {wss} did not answer: no WebSocket" in err
    assert "connect_failed" in err


def test_check_from_a_child_process_reads_the_simulator_s_result() -> None:
    """Where Autobahn already runs on Twisted, the call is placed by a child simulator."""
    wss = f"ws://127.0.0.1:{closed_port()}/vaani/knowlarity/setup-call-streams"
    result = _check_in_child(wss, CallOptions(seconds=0.1, linger=0, open_timeout=5))
    assert (result.connected, result.ended) == (False, "connect_failed")
    assert result.error


def _cli(*argv: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway.cli", "configure-number", *argv],
                          env=env, capture_output=True, text=True, timeout=120, cwd=ROOT)


def _cli_env() -> dict[str, str]:
    import os

    return {**os.environ, "PYTHONPATH": str(ROOT)}


def test_check_in_the_command_s_own_process_against_a_closed_port(
        provider: FakeProvider) -> None:
    """The installed command places the check call in its own process (no Twisted there)."""
    wss = f"ws://127.0.0.1:{closed_port()}/vaani/knowlarity/setup-call-streams"
    proc = _cli("--number", NUMBER, "--wss-url", wss, "--api-url", provider.url, "--check",
                env=_cli_env())
    assert proc.returncode == 1, proc.stderr
    assert "did not answer" in proc.stderr
    assert_no_secret(proc.stdout, proc.stderr)


# --- against a real gateway node --------------------------------------------------------

@pytest.mark.broker
@in_twisted
async def test_check_against_a_real_gateway_node(
        provider: FakeProvider, kafka_bootstrap: str, topic_prefix: str) -> None:
    """The number is pointed at a running node, and the check call's handshake and start
    message are accepted there."""
    async with running_node(node_config(kafka_bootstrap, topic_prefix)) as node:
        url = url_of(node)
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gateway.cli", "configure-number", "--number", NUMBER,
            "--wss-url", url, "--api-url", provider.url, "--check",
            env=_cli_env(), cwd=ROOT,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out_b, err_b = await asyncio.wait_for(proc.communicate(), 120)
    out, err = out_b.decode(), err_b.decode()
    assert proc.returncode == 0, err
    assert f"the gateway at {url} answered: handshake and start message accepted" in out
    assert json.loads(provider.seen[0].body)["data"]["wss_url"] == url
    assert_no_secret(out, err)
