"""Kalshi request signing and key loading."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from fake_kalshi import session_private_key, write_test_key

from flowboard.errors import ConfigError
from flowboard.ingest.kalshi_auth import load_private_key, load_signing_key, sign_headers


def _verify(public_key: rsa.RSAPublicKey, signature_b64: str, message: bytes) -> None:
    public_key.verify(
        base64.b64decode(signature_b64),
        message,
        padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32),
        hashes.SHA256(),
    )


def test_signature_covers_timestamp_method_and_bare_path() -> None:
    """The signature is RSA-PSS/SHA-256 (salt 32) over timestamp + METHOD + path, query excluded."""
    key = session_private_key()
    headers = sign_headers(
        "kid", key, "get", "/trade-api/v2/markets/trades?min_ts=1&limit=1000", 1_700_000_000_123
    )
    assert headers["KALSHI-ACCESS-KEY"] == "kid"
    assert headers["KALSHI-ACCESS-TIMESTAMP"] == "1700000000123"
    _verify(
        key.public_key(), headers["KALSHI-ACCESS-SIGNATURE"], b"1700000000123GET/trade-api/v2/markets/trades"
    )
    with pytest.raises(InvalidSignature):
        _verify(
            key.public_key(),
            headers["KALSHI-ACCESS-SIGNATURE"],
            b"1700000000124GET/trade-api/v2/markets/trades",
        )


def test_salt_length_is_32_not_maximum() -> None:
    """The salt is exactly 32 bytes: a verifier expecting another length (20) rejects the signature."""
    key = session_private_key()
    headers = sign_headers("kid", key, "GET", "/trade-api/ws/v2", 5)
    with pytest.raises(InvalidSignature):
        key.public_key().verify(
            base64.b64decode(headers["KALSHI-ACCESS-SIGNATURE"]),
            b"5GET/trade-api/ws/v2",
            padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=20),
            hashes.SHA256(),
        )
    _verify(key.public_key(), headers["KALSHI-ACCESS-SIGNATURE"], b"5GET/trade-api/ws/v2")


def test_signing_key_repr_hides_the_key(tmp_path: Path) -> None:
    """The loaded key prints as its id only: no key material in reprs or logs."""
    signing = load_signing_key("my-key-id", write_test_key(tmp_path))
    assert repr(signing) == "<SigningKey id='my-key-id'>"
    assert "PRIVATE" not in str(signing)


def test_missing_key_file_names_the_path(tmp_path: Path) -> None:
    """A missing key file is a ConfigError naming the path."""
    missing = tmp_path / "nope.pem"
    with pytest.raises(ConfigError, match=r"^Kalshi private key file not found: .*nope\.pem$"):
        load_private_key(missing)


def test_garbage_key_file_never_echoes_its_content(tmp_path: Path) -> None:
    """A file that is not a PEM key is reported by path, and its content never appears in the error."""
    bad = tmp_path / "bad.pem"
    bad.write_text("-----BEGIN PRIVATE KEY-----\nSECRETSECRETSECRET\n-----END PRIVATE KEY-----\n")
    with pytest.raises(ConfigError) as info:
        load_private_key(bad)
    assert str(info.value) == f"Kalshi private key file {bad} is not a PEM private key"
    assert "SECRET" not in str(info.value)


def test_unreadable_key_file(tmp_path: Path) -> None:
    """A path that cannot be read (here: a directory) is a ConfigError naming it."""
    with pytest.raises(ConfigError, match=r"^cannot read Kalshi private key file .*"):
        load_private_key(tmp_path)


def test_encrypted_and_non_rsa_keys_are_refused(tmp_path: Path) -> None:
    """An encrypted PEM and an EC key each get a one-line explanation."""
    encrypted = tmp_path / "enc.pem"
    encrypted.write_bytes(
        session_private_key().private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"pw"),
        )
    )
    with pytest.raises(ConfigError, match="is encrypted"):
        load_private_key(encrypted)
    ec_path = tmp_path / "ec.pem"
    ec_path.write_bytes(
        ec.generate_private_key(ec.SECP256R1()).private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    with pytest.raises(ConfigError, match="non-RSA key"):
        load_private_key(ec_path)


def test_key_without_id_is_a_config_error(tmp_path: Path) -> None:
    """A key file without its key id cannot sign anything useful: stop at start-up."""
    with pytest.raises(ConfigError, match="needs its key id"):
        load_signing_key("", write_test_key(tmp_path))
