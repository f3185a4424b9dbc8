"""Event signatures: HMAC-SHA256 over the canonical body of the envelope.

The canonical body is the envelope without its `signature` field, as JSON with
sorted keys (orjson). The signer and the verifier both build it from the parsed
envelope, so transport details (whitespace, key order) never break a signature,
while any change to a field, the payload or the key id does.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

import orjson

_OPTIONS = orjson.OPT_SORT_KEYS | orjson.OPT_SERIALIZE_NUMPY


def canonical_body(envelope: dict[str, Any]) -> bytes:
    """The bytes a signature covers."""
    unsigned = {k: v for k, v in envelope.items() if k != "signature"}
    return orjson.dumps(unsigned, option=_OPTIONS)


def signature(envelope: dict[str, Any], signing_key: bytes) -> str:
    """Hex HMAC-SHA256 of the canonical body."""
    return hmac.new(signing_key, canonical_body(envelope), hashlib.sha256).hexdigest()


def sign(envelope: dict[str, Any], key_id: str, signing_key: bytes) -> dict[str, Any]:
    """Set `key_id` and `signature` on a (plain dict) envelope, in place; returns it."""
    envelope["key_id"] = key_id
    envelope["signature"] = signature(envelope, signing_key)
    return envelope


def verify(envelope: dict[str, Any], signing_key: bytes) -> bool:
    """Whether the envelope's signature is the HMAC of its body under `signing_key`."""
    claimed = envelope.get("signature")
    if not isinstance(claimed, str):
        return False
    return hmac.compare_digest(claimed, signature(envelope, signing_key))
