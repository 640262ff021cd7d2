"""The Kafka access settings on their own: which client options they make, and which
combinations fail before any connection (the real broker: tests/test_kafka_security.py)."""

from __future__ import annotations

import ssl
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import pytest

from gateway.kafka_access import (
    SASL_PASSWORD_ENV,
    AccessError,
    FileTokenProvider,
    KafkaAccess,
    as_env,
    client_options,
    describe,
    from_env,
    target,
)
from gateway.localkafka import secure

SECRET = "s3cret-value-77"


def test_plaintext_needs_nothing() -> None:
    assert client_options(KafkaAccess(), {}) == {"security_protocol": "PLAINTEXT"}


def test_sasl_password_from_a_file_or_the_environment(tmp_path: Path) -> None:
    """The file wins when named; else the environment; trimmed either way."""
    f = tmp_path / "pw"
    f.write_text(SECRET + "\n")
    access = KafkaAccess(security_protocol="SASL_PLAINTEXT", sasl_mechanism="SCRAM-SHA-256",
                         sasl_username="u", sasl_password_file=str(f))
    got = client_options(access, {SASL_PASSWORD_ENV: "ignored"})
    assert (got["sasl_mechanism"], got["sasl_plain_username"], got["sasl_plain_password"]) == (
        "SCRAM-SHA-256", "u", SECRET)
    from_env = KafkaAccess(security_protocol="SASL_PLAINTEXT", sasl_username="u")
    assert client_options(from_env, {SASL_PASSWORD_ENV: SECRET})["sasl_plain_password"] == SECRET


@pytest.mark.parametrize(("access", "words"), [
    (KafkaAccess(security_protocol="SASL_PLAINTEXT", sasl_username="u"), "needs --kafka-sasl"),
    (KafkaAccess(security_protocol="SASL_PLAINTEXT", sasl_username="u",
                 sasl_password_file="/nonexistent/pw"), "cannot read the SASL password file"),
    (KafkaAccess(security_protocol="SASL_SSL", sasl_mechanism="OAUTHBEARER"),
     "needs --kafka-oauth-token-file"),
    (KafkaAccess(security_protocol="SSL", ssl_ca_file="/nonexistent/ca.pem"),
     "--kafka-ssl-ca-file: no such file"),
    (KafkaAccess(security_protocol="SSL", ssl_key_file=__file__), "needs --kafka-ssl-cert-file"),
])
def test_combinations_that_cannot_work_fail_naming_the_setting(access: KafkaAccess,
                                                               words: str) -> None:
    with pytest.raises(AccessError, match=words):
        client_options(access, {})


def test_tls_uses_the_ca_file_and_checks_host_names_by_default(tmp_path: Path) -> None:
    listener = secure.make(tmp_path)
    context = client_options(KafkaAccess(security_protocol="SSL",
                                         ssl_ca_file=str(listener.ca_file)), {})["ssl_context"]
    assert isinstance(context, ssl.SSLContext)
    assert context.check_hostname and context.verify_mode == ssl.CERT_REQUIRED
    loose = client_options(KafkaAccess(security_protocol="SSL", ssl_check_hostname=False), {})
    assert not loose["ssl_context"].check_hostname
    assert loose["ssl_context"].verify_mode == ssl.CERT_REQUIRED  # the chain still is


def _result(coro: Coroutine[Any, Any, str]) -> str:
    """A coroutine that never waits, run to its end (no loop: the reactor's may be running)."""
    try:
        coro.send(None)
    except StopIteration as done:
        return str(done.value)
    raise AssertionError("the coroutine waited")


def test_the_token_file_is_read_again_for_every_token(tmp_path: Path) -> None:
    f = tmp_path / "token"
    f.write_text("first\n")
    provider = FileTokenProvider(str(f))
    assert _result(provider.token()) == "first"
    f.write_text("second")
    assert _result(provider.token()) == "second"


def test_no_secret_in_the_settings_or_what_is_logged(tmp_path: Path) -> None:
    """The config object holds paths only; the start-up line names no secret."""
    f = tmp_path / "pw"
    f.write_text(SECRET)
    access = KafkaAccess(security_protocol="SASL_SSL", sasl_mechanism="PLAIN",
                         sasl_username="u", sasl_password_file=str(f))
    assert SECRET not in repr(access)
    assert describe(access) == "SASL_SSL, PLAIN as u, CA system"
    assert target("h:1", access)["sasl_plain_password"] == SECRET  # handed to the client only


def test_helper_processes_get_the_settings_through_the_environment() -> None:
    """``as_env`` writes what ``from_env`` reads back (bench hands its children that)."""
    access = KafkaAccess(security_protocol="SASL_SSL", sasl_mechanism="SCRAM-SHA-512",
                         sasl_username="u", sasl_password_file="/run/pw",
                         ssl_ca_file="/etc/ca.pem", ssl_check_hostname=False)
    env = as_env(access)
    assert env["KGW_KAFKA_SECURITY_PROTOCOL"] == "SASL_SSL"
    assert from_env(env) == access
    assert from_env({}) == KafkaAccess()
