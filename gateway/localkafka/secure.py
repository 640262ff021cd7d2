"""A SASL_SSL listener for the local broker, so secured clients are tested for real.

``LocalKafka(secure=True)`` adds it beside the PLAINTEXT one (which the broker
keeps for itself and for admin work): a CA and a server certificate for
127.0.0.1/localhost made on the fly with ``cryptography``, SASL PLAIN and
SCRAM-SHA-256/512 for the user ``USER``, and OAUTHBEARER with Kafka's
unsecured validator (tokens are unsigned JWTs: ``unsecured_token``). Nothing
here is fit for production; it exists to prove the clients' settings work.
"""

from __future__ import annotations

import base64
import datetime
import ipaddress
import json
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

USER = "kgw"
MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER")
LISTENER = "SASL_SSL"


@dataclass(frozen=True)
class SecureListener:
    """What a client needs to reach the SASL_SSL listener (``port`` set once started)."""

    directory: Path
    password: str
    port: int = 0

    @property
    def ca_file(self) -> Path:
        return self.directory / "ca.pem"

    @property
    def password_file(self) -> Path:
        return self.directory / "password"

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def make(directory: Path) -> SecureListener:
    """A fresh CA, server certificate and password in ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    valid = (now - datetime.timedelta(days=1), now + datetime.timedelta(days=30))
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (x509.CertificateBuilder().subject_name(_name("localkafka test CA"))
          .issuer_name(_name("localkafka test CA")).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number())
          .not_valid_before(valid[0]).not_valid_after(valid[1])
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    names = x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                         x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
    cert = (x509.CertificateBuilder().subject_name(_name("localhost"))
            .issuer_name(ca.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(valid[0]).not_valid_after(valid[1])
            .add_extension(names, critical=False)
            .sign(ca_key, hashes.SHA256()))
    pem = serialization.Encoding.PEM
    (directory / "ca.pem").write_bytes(ca.public_bytes(pem))
    # Kafka's PEM key store: the private key, then the chain, in one file.
    (directory / "server.pem").write_bytes(
        _pem_key(key) + cert.public_bytes(pem) + ca.public_bytes(pem))
    password = secrets.token_urlsafe(18)
    (directory / "password").write_text(password + "\n")
    return SecureListener(directory, password)


def broker_properties(listener: SecureListener) -> dict[str, str]:
    """The SASL_SSL listener's part of server.properties (the listener itself is added by
    the caller to ``listeners``)."""
    name = LISTENER.lower()
    plain = ("org.apache.kafka.common.security.plain.PlainLoginModule required "
             f'user_{USER}="{listener.password}";')
    scram = "org.apache.kafka.common.security.scram.ScramLoginModule required;"
    oauth = ("org.apache.kafka.common.security.oauthbearer.OAuthBearerLoginModule required "
             f'unsecuredLoginStringClaim_sub="{USER}";')
    return {
        "sasl.enabled.mechanisms": ",".join(MECHANISMS),
        f"listener.name.{name}.plain.sasl.jaas.config": plain,
        f"listener.name.{name}.scram-sha-256.sasl.jaas.config": scram,
        f"listener.name.{name}.scram-sha-512.sasl.jaas.config": scram,
        f"listener.name.{name}.oauthbearer.sasl.jaas.config": oauth,
        f"listener.name.{name}.ssl.keystore.type": "PEM",
        f"listener.name.{name}.ssl.keystore.location": str(listener.directory / "server.pem"),
        f"listener.name.{name}.ssl.client.auth": "none",
    }


def storage_args(listener: SecureListener) -> list[str]:
    """StorageTool ``format`` arguments that create the SCRAM user (KRaft keeps it in the
    metadata log)."""
    out: list[str] = []
    for mechanism in ("SCRAM-SHA-256", "SCRAM-SHA-512"):
        out += ["--add-scram", f"{mechanism}=[name={USER},password={listener.password}]"]
    return out


def unsecured_token(subject: str = USER, lifetime_s: int = 3600) -> str:
    """An unsigned JWT the broker's unsecured OAUTHBEARER validator accepts."""
    def part(obj: dict[str, object]) -> str:
        raw = json.dumps(obj, separators=(",", ":")).encode()
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    now = int(time.time())
    return f"{part({'alg': 'none'})}.{part({'sub': subject, 'iat': now, 'exp': now + lifetime_s})}."
