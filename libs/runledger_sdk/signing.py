"""Signing events at creation: the envelope's canonical body, HMAC-SHA256, key id inside.

The topic bytes are runledger.auth.signing.signed_bytes: one orjson dump per event,
as before signing, and the projector checks the HMAC over the bytes as sent.
"""

from __future__ import annotations

from typing import Any

import orjson

from runledger.auth.keys import ApiKey
from runledger.auth.signing import signed_bytes
from runledger.events.codec import encode


class Signer:
    """Encodes envelopes to topic bytes, signed with `key` (unsigned without one)."""

    def __init__(self, key: ApiKey | None) -> None:
        self.key = key
        self._signing_key = key.signing_key if key is not None else b""

    def encode(self, event: dict[str, Any]) -> bytes:
        """Topic bytes of a plain-dict envelope (sets its key_id)."""
        if self.key is None:
            return encode(event)
        return signed_bytes(event, self.key.key_id, self._signing_key)

    def sign_raw(self, raw: bytes) -> bytes:
        """`raw` signed with this key when it carries no key id yet (offline files written
        without a key, signed by `runledger sync`); otherwise unchanged."""
        if self.key is None:
            return raw
        event = orjson.loads(raw)
        if not isinstance(event, dict) or event.get("key_id"):
            return raw
        return self.encode(event)
