"""API keys: `rlk_<key id>_<secret>`, shown once, kept only as one-way derivations.

The key id is public (it names the key in lists, audit entries and event envelopes);
the 256-bit secret never leaves the client after creation. The server keeps
`secret_hash` (authenticates API calls) and `signing_key` (verifies the HMAC of
signed events). Both are SHA-256 derivations with distinct labels: neither gives
the secret or the other. A high-entropy secret needs no slow password hash.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass

KEY_PREFIX = "rlk"
_KEY_ID_RE = re.compile(r"^[0-9a-f]{16}\Z")
_SECRET_RE = re.compile(r"^[A-Za-z0-9_\-]{32,128}\Z")
_HASH_LABEL = b"runledger/api-key-secret/v1\x00"
_SIGNING_LABEL = b"runledger/event-signing/v1"


class InvalidKey(ValueError):
    """A string that is not an API key of this format."""


@dataclass(frozen=True, slots=True)
class ApiKey:
    """A key as its holder has it: id and secret."""

    key_id: str
    secret: str

    @property
    def token(self) -> str:
        """The one string a client configures (RUNLEDGER_API_KEY, Bearer token)."""
        return f"{KEY_PREFIX}_{self.key_id}_{self.secret}"

    @property
    def secret_hash(self) -> bytes:
        """What the server stores to authenticate this key."""
        return secret_hash(self.secret)

    @property
    def signing_key(self) -> bytes:
        """The HMAC key events are signed with (derived, so the secret itself never signs)."""
        return signing_key(self.secret)

    def __repr__(self) -> str:  # never print the secret by accident
        return f"ApiKey(key_id={self.key_id!r}, secret=<hidden>)"


def generate_key() -> ApiKey:
    """A new key: 64-bit random id, 256-bit random secret."""
    return ApiKey(secrets.token_hex(8), secrets.token_urlsafe(32))


def normalize_key_id(key_id: str) -> str:
    """A key id as given by a client: with or without the `rlk_` prefix."""
    key_id = key_id.removeprefix(f"{KEY_PREFIX}_")
    if not _KEY_ID_RE.match(key_id):
        raise InvalidKey("malformed key id")
    return key_id


def parse_key(token: str) -> ApiKey:
    """The key of a token string; InvalidKey when it is not one."""
    parts = token.strip().split("_", 2)
    if len(parts) != 3 or parts[0] != KEY_PREFIX:
        raise InvalidKey(f"an API key looks like {KEY_PREFIX}_<id>_<secret>")
    return from_parts(parts[1], parts[2])


def from_parts(key_id: str, secret: str) -> ApiKey:
    """A key from its two halves (HTTP basic auth: username = key id, password = secret)."""
    key_id = normalize_key_id(key_id)
    if not _SECRET_RE.match(secret):
        raise InvalidKey("malformed key secret")
    return ApiKey(key_id, secret)


def secret_hash(secret: str) -> bytes:
    """SHA-256 of the secret under a fixed label."""
    return hashlib.sha256(_HASH_LABEL + secret.encode()).digest()


def signing_key(secret: str) -> bytes:
    """HMAC-SHA256(secret, label): the event-signing key."""
    return hmac.new(secret.encode(), _SIGNING_LABEL, hashlib.sha256).digest()


def secret_matches(secret: str, stored_hash: bytes) -> bool:
    """Constant-time check of a presented secret against the stored hash."""
    return hmac.compare_digest(secret_hash(secret), stored_hash)
