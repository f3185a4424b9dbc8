"""The projector's position per partition, kept in Postgres beside the projections.

Protocol for one batch of partition p covering offsets a..b:
1. `mark_pending(b)`: written before ClickHouse sees the batch.
2. ClickHouse inserts with the dedup token of (incarnation, topic, p, a, b).
3. One Postgres transaction: metadata + `advance(a-1 -> b)` + NOTIFY.
After a crash between 1 and 3 the projector re-forms exactly a..b and repeats
step 2 with the same token (a no-op in ClickHouse), then 3. Offsets are keyed by
broker incarnation, because an embedded broker restart starts offsets from 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import orjson

from runledger.stores.postgres import PgConnection

NOTIFY_CHANNEL = "runledger_projected"


@dataclass(frozen=True, slots=True)
class PartitionKey:
    """Which position this is: consumer group, broker incarnation, topic, partition."""

    group: str
    incarnation: str
    topic: str
    partition: int

    def token(self, first: int, last: int) -> str:
        """The ClickHouse insert dedup token of batch first..last."""
        return f"{self.incarnation}.{self.topic}.{self.partition}.{first}.{last}"


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """Last offset both stores hold, and the end of an unfinished batch if any."""

    committed: int
    pending_until: int | None


async def load(conn: PgConnection, key: PartitionKey) -> Checkpoint:
    """The checkpoint of a partition (-1 = nothing projected yet)."""
    row = await conn.fetchrow(
        "SELECT committed, pending_until FROM projector_checkpoints"
        " WHERE consumer_group = $1 AND incarnation = $2 AND topic = $3 AND partition = $4",
        key.group,
        key.incarnation,
        key.topic,
        key.partition,
    )
    if row is None:
        return Checkpoint(committed=-1, pending_until=None)
    return Checkpoint(committed=row["committed"], pending_until=row["pending_until"])


async def mark_pending(conn: PgConnection, key: PartitionKey, until: int) -> None:
    """Record that a batch ending at `until` is about to reach ClickHouse."""
    await conn.execute(
        "INSERT INTO projector_checkpoints (consumer_group, incarnation, topic, partition, pending_until)"
        " VALUES ($1, $2, $3, $4, $5) ON CONFLICT (consumer_group, incarnation, topic, partition)"
        " DO UPDATE SET pending_until = excluded.pending_until, updated_at = now()",
        key.group,
        key.incarnation,
        key.topic,
        key.partition,
        until,
    )


class LostOwnership(Exception):
    """Another projector advanced this partition first (rebalance); drop the batch."""


async def advance(conn: PgConnection, key: PartitionKey, expected: int, committed: int) -> None:
    """Move the checkpoint from `expected` to `committed` and notify waiting readers."""
    # One round trip: the NOTIFY rides on the UPDATE's RETURNING (it is sent at commit, and
    # only if the row moved, so a lost partition notifies nobody).
    moved = await conn.fetch(
        "UPDATE projector_checkpoints SET committed = $6, pending_until = NULL, updated_at = now()"
        " WHERE consumer_group = $1 AND incarnation = $2 AND topic = $3 AND partition = $4 AND committed = $5"
        " RETURNING pg_notify($7, $8)",
        key.group,
        key.incarnation,
        key.topic,
        key.partition,
        expected,
        committed,
        NOTIFY_CHANNEL,
        notification(key, committed),
    )
    if len(moved) != 1:
        raise LostOwnership(f"{key} is no longer at offset {expected}")


def notification(key: PartitionKey, committed: int) -> str:
    """The NOTIFY payload readers wait on (JSON: group, incarnation, topic, partition, committed)."""
    return orjson.dumps(
        {
            "group": key.group,
            "incarnation": key.incarnation,
            "topic": key.topic,
            "partition": key.partition,
            "committed": committed,
        }
    ).decode()
