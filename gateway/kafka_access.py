"""How every client reaches Kafka: security protocol, SASL and TLS, the same for all.

The node, the bot SDK, ``audit``, ``replay`` and ``bench`` build their aiokafka
clients with ``client_options(access)``, so a managed cluster (Confluent Cloud,
MSK, Aiven) or a secured self-run one takes the same settings everywhere.

Secrets never travel on the command line (``ps`` shows it) and never sit in a
config object (its repr reaches logs): a setting names a *file*, or the secret
comes from an environment variable (``SECRET_ENV``), read when a client is
built. The OAUTHBEARER token file is read again for every token the client
asks for, so a sidecar that refreshes it is followed without a restart.
"""

from __future__ import annotations

import asyncio
import os
import ssl
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from operator import attrgetter
from pathlib import Path
from typing import Any, TypeVar

from aiokafka.abc import AbstractTokenProvider
from aiokafka.conn import create_conn  # probe: one connection, no client machinery
from aiokafka.errors import KafkaError, SaslAuthenticationFailed, UnsupportedSaslMechanismError
from aiokafka.helpers import create_ssl_context

from gateway.settings import Setting, as_text, boolean, choice, from_args

_T = TypeVar("_T")

PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER")

# Secrets an operator may give as environment variables instead of files.
SASL_PASSWORD_ENV = "KGW_KAFKA_SASL_PASSWORD"
SSL_KEY_PASSWORD_ENV = "KGW_KAFKA_SSL_KEY_PASSWORD"
SECRET_ENV = (SASL_PASSWORD_ENV, SSL_KEY_PASSWORD_ENV)


class AccessError(ValueError):
    """The Kafka access settings cannot be used; the message names the setting."""


@dataclass(frozen=True)
class KafkaAccess:
    """Paths and names only: no secret is held here (see the module docstring)."""

    security_protocol: str = "PLAINTEXT"
    sasl_mechanism: str = "PLAIN"
    sasl_username: str = ""
    sasl_password_file: str = ""
    oauth_token_file: str = ""
    ssl_ca_file: str = ""
    ssl_cert_file: str = ""
    ssl_key_file: str = ""
    ssl_key_password_file: str = ""
    ssl_check_hostname: bool = True

    @property
    def uses_sasl(self) -> bool:
        return self.security_protocol.startswith("SASL_")

    @property
    def uses_tls(self) -> bool:
        return self.security_protocol in ("SSL", "SASL_SSL")


# Placed under ``kafka_access`` in each command's config (``nested``).
ACCESS_SETTINGS: tuple[Setting, ...] = (
    Setting("kafka_security_protocol", "KGW_KAFKA_SECURITY_PROTOCOL", "PLAINTEXT",
            "how clients talk to Kafka: " + ", ".join(PROTOCOLS), choice(*PROTOCOLS),
            path="security_protocol"),
    Setting("kafka_sasl_mechanism", "KGW_KAFKA_SASL_MECHANISM", "PLAIN",
            "SASL mechanism (with SASL_*): " + ", ".join(MECHANISMS), choice(*MECHANISMS),
            path="sasl_mechanism"),
    Setting("kafka_sasl_username", "KGW_KAFKA_SASL_USERNAME", "",
            "SASL user name (PLAIN, SCRAM)", str, path="sasl_username"),
    Setting("kafka_sasl_password_file", "KGW_KAFKA_SASL_PASSWORD_FILE", "",
            f"file holding the SASL password (or set {SASL_PASSWORD_ENV})", str,
            path="sasl_password_file"),
    Setting("kafka_oauth_token_file", "KGW_KAFKA_OAUTH_TOKEN_FILE", "",
            "file holding the OAUTHBEARER token, read again for every token asked for", str,
            path="oauth_token_file"),
    Setting("kafka_ssl_ca_file", "KGW_KAFKA_SSL_CA_FILE", "",
            "PEM file of the CAs that sign the brokers' certificates (empty: the system's)",
            str, path="ssl_ca_file"),
    Setting("kafka_ssl_cert_file", "KGW_KAFKA_SSL_CERT_FILE", "",
            "PEM client certificate, for brokers that require one (mTLS)", str,
            path="ssl_cert_file"),
    Setting("kafka_ssl_key_file", "KGW_KAFKA_SSL_KEY_FILE", "",
            "PEM private key of the client certificate", str, path="ssl_key_file"),
    Setting("kafka_ssl_key_password_file", "KGW_KAFKA_SSL_KEY_PASSWORD_FILE", "",
            f"file holding the key's password, if it is encrypted (or set "
            f"{SSL_KEY_PASSWORD_ENV})", str, path="ssl_key_password_file"),
    Setting("kafka_ssl_check_hostname", "KGW_KAFKA_SSL_CHECK_HOSTNAME", "true",
            "check that the broker's certificate names the host connected to", boolean,
            path="ssl_check_hostname"),
)


def _secret(path: str, env_name: str, env: Mapping[str, str], what: str) -> str | None:
    """The secret in ``path`` (trimmed), else in ``env_name``, else None."""
    if path:
        try:
            return Path(path).read_text().strip()
        except OSError as e:
            raise AccessError(f"cannot read the {what} file {path}: {e.strerror}") from None
    return env.get(env_name) or None


class FileTokenProvider(AbstractTokenProvider):
    """An OAUTHBEARER token read from a file each time the client asks for one."""

    def __init__(self, path: str) -> None:
        self._path = path

    async def token(self) -> str:
        return Path(self._path).read_text().strip()

    def __repr__(self) -> str:
        return f"FileTokenProvider({self._path!r})"


def ssl_context(access: KafkaAccess, env: Mapping[str, str] | None = None) -> ssl.SSLContext:
    """The TLS context the settings describe (system CAs when no CA file is given)."""
    env = os.environ if env is None else env
    for flag, path in (("--kafka-ssl-ca-file", access.ssl_ca_file),
                       ("--kafka-ssl-cert-file", access.ssl_cert_file),
                       ("--kafka-ssl-key-file", access.ssl_key_file)):
        if path and not Path(path).is_file():
            raise AccessError(f"{flag}: no such file {path}")
    if access.ssl_key_file and not access.ssl_cert_file:
        raise AccessError("--kafka-ssl-key-file needs --kafka-ssl-cert-file")
    password = _secret(access.ssl_key_password_file, SSL_KEY_PASSWORD_ENV, env, "key password")
    try:
        context = create_ssl_context(
            cafile=access.ssl_ca_file or None, certfile=access.ssl_cert_file or None,
            keyfile=access.ssl_key_file or None, password=password)
    except (ssl.SSLError, OSError) as e:
        raise AccessError(f"the Kafka TLS files cannot be used: {e}") from None
    context.check_hostname = access.ssl_check_hostname
    if not access.ssl_check_hostname:
        context.verify_mode = ssl.CERT_REQUIRED  # still verify the chain
    return context


def client_options(access: KafkaAccess, env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Keyword arguments for any aiokafka client (producer, consumer, admin).

    Raises ``AccessError`` for a combination that cannot work, before any connection.
    """
    env = os.environ if env is None else env
    options: dict[str, Any] = {"security_protocol": access.security_protocol}
    if access.uses_tls:
        options["ssl_context"] = ssl_context(access, env)
    if not access.uses_sasl:
        return options
    mechanism = access.sasl_mechanism
    options["sasl_mechanism"] = mechanism
    if mechanism == "OAUTHBEARER":
        if not access.oauth_token_file:
            raise AccessError("--kafka-sasl-mechanism OAUTHBEARER needs --kafka-oauth-token-file")
        if not Path(access.oauth_token_file).is_file():
            raise AccessError(f"--kafka-oauth-token-file: no such file {access.oauth_token_file}")
        options["sasl_oauth_token_provider"] = FileTokenProvider(access.oauth_token_file)
        return options
    password = _secret(access.sasl_password_file, SASL_PASSWORD_ENV, env, "SASL password")
    if not access.sasl_username or password is None:
        raise AccessError(f"SASL {mechanism} needs --kafka-sasl-username and a password "
                          f"(--kafka-sasl-password-file or {SASL_PASSWORD_ENV})")
    options["sasl_plain_username"] = access.sasl_username
    options["sasl_plain_password"] = password
    return options


def describe(access: KafkaAccess) -> str:
    """One line for the start-up log: what is used, never a secret."""
    parts = [access.security_protocol]
    if access.uses_sasl:
        who = access.sasl_username or "token file"
        parts.append(f"{access.sasl_mechanism} as {who}")
    if access.uses_tls:
        parts.append(f"CA {access.ssl_ca_file or 'system'}")
        if access.ssl_cert_file:
            parts.append("client certificate")
    return ", ".join(parts)


# A client target: bootstrap servers alone (PLAINTEXT), or every client option.
Target = str | Mapping[str, Any]


def target(servers: str, access: KafkaAccess, env: Mapping[str, str] | None = None
           ) -> dict[str, Any]:
    """Every option a client needs to reach ``servers`` with ``access``: build it once per
    command and hand it to each client (``options_of``)."""
    return {"bootstrap_servers": servers, **client_options(access, env)}


def options_of(kafka: Target) -> dict[str, Any]:
    """Client options from a ``Target`` (a copy: the caller may add its own)."""
    return {"bootstrap_servers": kafka} if isinstance(kafka, str) else dict(kafka)


async def probe(kafka: Target, timeout_s: float = 10.0) -> None:
    """Raise ``AccessError`` if a broker refuses the TLS handshake or the credentials.

    aiokafka's clients log such a refusal and then raise only "Unable to bootstrap",
    the same as for a broker that is away, for which the node rightly waits; a wrong
    password must instead stop the command with a clear message. A broker that cannot be
    reached at all is not an error here.
    """
    options = options_of(kafka)
    servers = str(options.pop("bootstrap_servers"))
    keep = ("security_protocol", "ssl_context", "sasl_mechanism", "sasl_plain_username",
            "sasl_plain_password", "sasl_oauth_token_provider")
    conn_options = {k: v for k, v in options.items() if k in keep}
    for server in servers.split(","):
        host, _, port = server.rpartition(":")
        try:
            conn = await asyncio.wait_for(
                create_conn(host, int(port), request_timeout_ms=int(timeout_s * 1000),
                            **conn_options), timeout_s)
        except (SaslAuthenticationFailed, UnsupportedSaslMechanismError) as e:
            raise AccessError(f"Kafka at {server} refused the credentials: {_reason(e)}"
                              ) from None
        except ssl.SSLError as e:
            raise AccessError(f"TLS with Kafka at {server} failed: {e.reason or e} (check "
                              "--kafka-ssl-ca-file and --kafka-security-protocol)") from None
        except (OSError, KafkaError, TimeoutError):
            continue  # away, or not answering: the clients wait and retry as they should
        conn.close()
        return


def _reason(error: Exception) -> str:
    text = str(error)
    return text.split(": ", 1)[1] if text.startswith("[Error") and ": " in text else text


async def explained(kafka: Target, work: Callable[[], Awaitable[_T]]) -> _T:
    """``await work()``; a Kafka error there caused by refused credentials or TLS is
    raised as ``AccessError`` saying so (aiokafka says only "Unable to bootstrap")."""
    try:
        return await work()
    except KafkaError:
        await probe(kafka)
        raise


def from_env(env: Mapping[str, str] | None = None) -> KafkaAccess:
    """The access settings from the environment alone (``KGW_KAFKA_*``): for helper
    processes a command starts, which inherit its environment (``as_env``)."""
    access: KafkaAccess = from_args(KafkaAccess(), ACCESS_SETTINGS, None, env)
    return access


def as_env(access: KafkaAccess) -> dict[str, str]:
    """``access`` as the environment variables ``from_env`` reads (no secret: paths)."""
    return {s.env: as_text(attrgetter(s.target)(access)) for s in ACCESS_SETTINGS}
