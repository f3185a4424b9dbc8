"""Names of broker incarnations, and what a name says about the one before it.

An embedded broker (tansu, memory storage) that starts again is empty; each start gets a
fresh cluster id, its *incarnation*, so that clients can tell it from the one before
(libs/runledger/embedded/broker.py). Clients then send again what the old incarnation
acknowledged (libs/runledger_sdk/resend.py), since it may not have been consumed.

A planned replacement (libs/runledger/embedded/rotation.py) first makes sure nothing of the
old incarnation is lost: everything it acknowledged is consumed or carried over into the
new one. It says so in the new cluster id, `runledger-<hex>.after.runledger-<old hex>`, so that
clients need not send again what the old one acknowledged.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass

_PREFIX = "runledger-"
_AFTER = ".after."
_FENCE = "@"


def new_incarnation() -> str:
    """A fresh cluster id, unique for each broker start."""
    return f"{_PREFIX}{uuid.uuid4().hex}"


def successor_incarnation(drained: str) -> str:
    """A fresh cluster id that declares the incarnation `drained` fully carried over."""
    return f"{new_incarnation()}{_AFTER}{_own_part(drained)}"


def carried_over(old: str, current: str | None) -> bool:
    """Whether the incarnation `current` declares everything `old` acknowledged carried over."""
    if not current or _AFTER not in current:
        return False
    own, before = current.split(_AFTER, 1)
    return own.startswith(_PREFIX) and before == _own_part(old)


def fenced_client_id(name: str, incarnation: str) -> str:
    """The Kafka client id of a client that writes only to `incarnation`, or to one that carries
    it over: the embedded broker's relay refuses its produces anywhere else
    (libs/runledger/embedded/produce_gate.py)."""
    return f"{name}{_FENCE}{incarnation}"


def may_write(client_id: str, incarnation: str | None) -> bool:
    """Whether a produce of `client_id` may reach a broker of `incarnation` (None: not known)."""
    _, fenced, declared = client_id.partition(_FENCE)
    if not fenced or incarnation is None:
        return True
    return declared == incarnation or carried_over(declared, incarnation)


@dataclass(frozen=True, slots=True)
class CarryOver:
    """What a replacement carried from `predecessor` into `incarnation`, per partition of `topic`:
    offset o < carried_until[p] of the new incarnation holds the predecessor's record at
    offset carried_from[p] + o (the carried records keep their order and have no gaps)."""

    predecessor: str
    incarnation: str
    topic: str
    carried_from: Mapping[int, int]
    carried_until: Mapping[int, int]

    def new_offset(self, partition: int, old_offset: int) -> int | None:
        """Where the predecessor's record at `old_offset` is now (None: it was not carried)."""
        offset = old_offset - self.carried_from.get(partition, 0)
        return offset if 0 <= offset < self.carried_until.get(partition, 0) else None


def _own_part(cluster_id: str) -> str:
    """The unique part of a cluster id (without what it declares about its predecessor)."""
    return cluster_id.split(_AFTER, 1)[0]
