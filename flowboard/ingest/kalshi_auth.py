"""Kalshi request signing, as Kalshi's API documents it.

Kalshi authenticates a request with three headers: the key id, the time in
milliseconds, and a base64 RSA-PSS (SHA-256, MGF1 SHA-256, salt length 32)
signature over ``timestamp_ms + METHOD + path`` where ``path`` carries no query
string. The WebSocket handshake signs ``GET`` and its own path.

The private key is wrapped in :class:`SigningKey` so that it never shows up in a
repr, a log line or an error message.
"""

from __future__ import annotations

import base64
from pathlib import Path

import attrs
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from flowboard.errors import ConfigError

#: Kalshi's salt length: the SHA-256 digest length.
SALT_LENGTH = 32

HEADER_KEY = "KALSHI-ACCESS-KEY"
HEADER_TIMESTAMP = "KALSHI-ACCESS-TIMESTAMP"
HEADER_SIGNATURE = "KALSHI-ACCESS-SIGNATURE"


@attrs.frozen(repr=False)
class SigningKey:
    """An RSA private key that prints as ``<SigningKey id=...>`` and nothing more."""

    key_id: str
    private_key: rsa.RSAPrivateKey = attrs.field(eq=False)

    def __repr__(self) -> str:
        return f"<SigningKey id={self.key_id!r}>"

    def headers(self, method: str, path: str, now_ms: int) -> dict[str, str]:
        """The signed headers for one request; see :func:`sign_headers`."""
        return sign_headers(self.key_id, self.private_key, method, path, now_ms)


def load_private_key(path: str | Path) -> rsa.RSAPrivateKey:
    """Read a PEM RSA private key (unencrypted), or raise ``ConfigError`` naming the path.

    The error says what is wrong with the file, never what is in it.
    """
    where = Path(path)
    try:
        data = where.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"Kalshi private key file not found: {where}") from None
    except OSError as exc:
        raise ConfigError(f"cannot read Kalshi private key file {where}: {exc.strerror}") from None
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise ConfigError(
            f"Kalshi private key file {where} is encrypted; give an unencrypted PEM key"
        ) from None
    except (ValueError, UnsupportedAlgorithm):
        # The parser's own message may quote the file; ours must not.
        raise ConfigError(f"Kalshi private key file {where} is not a PEM private key") from None
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ConfigError(f"Kalshi private key file {where} holds a non-RSA key; Kalshi needs RSA")
    return key


def load_signing_key(key_id: str, path: str | Path) -> SigningKey:
    """The key id and its private key, checked at start-up."""
    if not key_id:
        raise ConfigError(f"a Kalshi private key ({path}) needs its key id (--kalshi-key-id)")
    return SigningKey(key_id, load_private_key(path))


def sign_headers(
    key_id: str, private_key: rsa.RSAPrivateKey, method: str, path: str, now_ms: int
) -> dict[str, str]:
    """Kalshi's three authentication headers for ``method path`` at ``now_ms``.

    ``path`` may carry a query string; it is not part of what is signed.
    """
    bare_path = path.split("?", 1)[0]
    timestamp = str(now_ms)
    message = (timestamp + method.upper() + bare_path).encode()
    signature = private_key.sign(
        message,
        padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=SALT_LENGTH),
        hashes.SHA256(),
    )
    return {
        HEADER_KEY: key_id,
        HEADER_TIMESTAMP: timestamp,
        HEADER_SIGNATURE: base64.b64encode(signature).decode("ascii"),
    }
