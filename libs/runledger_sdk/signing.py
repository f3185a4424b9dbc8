"""Signing events at creation: the envelope's canonical body, HMAC-SHA256, key id inside.

The topic bytes ARE the canonical body (runledger.auth.signing.canonical_body: sorted
keys, no `signature`) with the signature appended as the last member: one orjson dump
per event, as before signing, and the projector can check the HMAC over the bytes
without re-serializing the event.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

import orjson

from runledger.auth.keys import ApiKey
from runledger.auth.signing import canonical_body
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
        event["key_id"] = self.key.key_id
        body = canonical_body(event)
        signature = hmac.new(self._signing_key, body, hashlib.sha256).hexdigest()
        return body[:-1] + b',"signature":"' + signature.encode() + b'"}'

    def sign_raw(self, raw: bytes) -> bytes:
        """`raw` signed with this key when it carries no key id yet (offline files written
        without a key, signed by `runledger sync`); otherwise unchanged."""
        if self.key is None:
            return raw
        event = orjson.loads(raw)
        if not isinstance(event, dict) or event.get("key_id"):
            return raw
        return self.encode(event)
