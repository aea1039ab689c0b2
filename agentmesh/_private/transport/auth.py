"""The peer handshake: both sides prove they know the cluster token, which never
travels. Each side sends a fresh nonce and answers the other's with
HMAC-SHA256(token, role + nonce), so a recorded proof is useless later."""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import secrets

from ..kernel.errors import AuthError

__all__ = ["check_listen_address", "new_nonce", "prove", "verify"]

_NONCE_BYTES = 32


def new_nonce() -> bytes:
    return secrets.token_bytes(_NONCE_BYTES)


def prove(token: str, role: bytes, nonce: bytes) -> bytes:
    """The proof ``role`` (b"dialer" or b"listener") gives for the peer's nonce."""
    return hmac.new(token.encode(), role + nonce, hashlib.sha256).digest()


def verify(token: str, role: bytes, nonce: bytes, mac: bytes) -> None:
    """Raise `AuthError` unless ``mac`` proves the token for ``nonce``."""
    if len(nonce) != _NONCE_BYTES or not hmac.compare_digest(prove(token, role, nonce), mac):
        raise AuthError("the peer did not prove the cluster token")


def check_listen_address(address: str, token: str | None) -> None:
    """A node listens beyond loopback only with a cluster token."""
    host = address.rsplit(":", 1)[0].strip("[]")
    if token:
        return
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise AuthError(
            f"refusing to listen on {address} without a cluster token: "
            "anyone reaching it could run code here (cloudpickle); pass token=..."
        )
