"""CRM credentials encrypted at rest: AES-256-GCM under ``CRMSYNC_SECRET_KEY``.

A connection's credentials are one JSON object (``{"token": ...}``; OAuth adds
its client secret and refresh token to the same object), sealed into one text
value ``v1.<key id>.<base64url(nonce || ciphertext)>``. The key id tells which
key sealed a value, so rotation and a wrong key are told apart from tampering.
The connection id is the associated data: a sealed value copied onto another
connection's row does not open.

``CRMSYNC_SECRET_KEY`` holds one or more comma-separated keys (base64 of 32
bytes each): the first seals, every one opens. There is no plaintext fallback:
without a key, or with the wrong one, nothing is read or written.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache

import orjson
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from crmsync.errors import UserError

_VERSION = "v1"
_NONCE_BYTES = 12
KEY_BYTES = 32
_NO_KEY = (
    "CRMSYNC_SECRET_KEY is not set: CRM credentials are stored encrypted under it; "
    "create one with `crmsync secrets generate-key` (`make setup` writes a local one)"
)


class SecretsError(UserError):
    """A key is missing or wrong, or a sealed value does not open."""


def new_key() -> str:
    """A fresh random key in the form CRMSYNC_SECRET_KEY takes."""
    return base64.b64encode(os.urandom(KEY_BYTES)).decode()


def key_id(key: bytes) -> str:
    """A short public name of a key (not enough to guess it)."""
    return hashlib.sha256(b"crmsync-secret-key-id:" + key).hexdigest()[:12]


def _decode_key(text: str, position: int) -> bytes:
    where = "CRMSYNC_SECRET_KEY" + (f" (key {position + 1})" if position else "")
    try:
        raw = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != KEY_BYTES:
        raise SecretsError(
            f"{where} must be base64 of {KEY_BYTES} random bytes "
            "(create one with `crmsync secrets generate-key`)"
        )
    return raw


@dataclass(frozen=True)
class Keyring:
    """The keys of CRMSYNC_SECRET_KEY: the first seals, any opens (by key id)."""

    keys: tuple[tuple[str, bytes], ...]  # (key id, key), current first

    def __repr__(self) -> str:  # never the keys themselves
        return f"Keyring(ids={self.ids})"

    @property
    def ids(self) -> tuple[str, ...]:
        return tuple(kid for kid, _ in self.keys)

    @property
    def current_id(self) -> str:
        return self.keys[0][0]

    def seal(self, connection_id: str, secrets: Mapping[str, str]) -> str:
        kid, key = self.keys[0]
        nonce = os.urandom(_NONCE_BYTES)
        body = AESGCM(key).encrypt(nonce, orjson.dumps(dict(secrets)), _aad(connection_id))
        return f"{_VERSION}.{kid}.{base64.urlsafe_b64encode(nonce + body).decode()}"

    def open(self, connection_id: str, sealed: str | None) -> dict[str, str]:
        """The credentials of ``connection_id``; SecretsError names what is wrong."""
        if not sealed:
            raise SecretsError(
                f"connection {connection_id!r} has no encrypted credentials yet: "
                "run `crmsync migrate` with CRMSYNC_SECRET_KEY set to encrypt them"
            )
        version, _, rest = sealed.partition(".")
        kid, _, payload = rest.partition(".")
        if version != _VERSION or not kid or not payload:
            raise SecretsError(
                f"the stored credentials of connection {connection_id!r} are not a value "
                "crmsync sealed; set them again with `crmsync connections` commands"
            )
        key = dict(self.keys).get(kid)
        if key is None:
            raise SecretsError(
                f"the credentials of connection {connection_id!r} were encrypted with key id "
                f"{kid}, but CRMSYNC_SECRET_KEY holds key id(s) {', '.join(self.ids)}; "
                "set CRMSYNC_SECRET_KEY to the key they were encrypted with"
            )
        try:
            raw = base64.urlsafe_b64decode(payload.encode())
            plain = AESGCM(key).decrypt(raw[:_NONCE_BYTES], raw[_NONCE_BYTES:], _aad(connection_id))
            data = orjson.loads(plain)
        except (InvalidTag, ValueError, binascii.Error, orjson.JSONDecodeError):
            raise SecretsError(
                f"the stored credentials of connection {connection_id!r} do not decrypt under "
                f"key id {kid}: the value was altered or belongs to another connection"
            ) from None
        if not isinstance(data, dict):
            raise SecretsError(f"the credentials of connection {connection_id!r} are not an object")
        return {str(k): str(v) for k, v in data.items()}


def _aad(connection_id: str) -> bytes:
    return b"crmsync.connections:" + connection_id.encode()


@lru_cache(maxsize=8)
def keyring(setting: str) -> Keyring:
    """The keyring of a CRMSYNC_SECRET_KEY value; SecretsError when missing or malformed."""
    texts = [t for t in setting.split(",") if t.strip()]
    if not texts:
        raise SecretsError(_NO_KEY)
    keys: list[tuple[str, bytes]] = []
    for i, text in enumerate(texts):
        raw = _decode_key(text, i)
        kid = key_id(raw)
        if kid not in dict(keys):
            keys.append((kid, raw))
    return Keyring(tuple(keys))
