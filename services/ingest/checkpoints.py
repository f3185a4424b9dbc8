"""The projector's position per partition, kept in Postgres beside the projections.

The projector writes *rounds*: one batch from each of several partitions, projected
together (one ClickHouse insert per table, one Postgres transaction), so a round's fixed
cost is paid once instead of once per partition. Protocol for a round whose members are
partitions p_i with offsets a_i..b_i:
1. `mark_pending`: every member's row records b_i and the round's token, in one
   statement, before ClickHouse sees the round.
2. ClickHouse inserts with the round's dedup token (`round_token`: a function of the
   members, so the same round always gets the same token).
3. One Postgres transaction: metadata + `advance` of every member (a_i-1 -> b_i) + NOTIFY.
After a crash between 1 and 3 the members of the pending round are read back from
Kafka exactly (`pending_members`), the round is re-formed and written again with the
same token (a no-op in ClickHouse), then 3. Offsets are keyed by broker incarnation,
because an embedded broker restart starts offsets from 0. A round left pending on an
incarnation that a replacement carried over (libs/runledger/embedded/rotation.py) is
re-formed from the carried records (`load_carry_over`, `pending_rounds`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import orjson

from runledger.incarnation import CarryOver
from runledger.stores.postgres import PgConnection

NOTIFY_CHANNEL = "runledger_projected"


@dataclass(frozen=True, slots=True)
class PartitionKey:
    """Which position this is: consumer group, broker incarnation, topic, partition."""

    group: str
    incarnation: str
    topic: str
    partition: int


@dataclass(frozen=True, slots=True, order=True)
class Member:
    """One partition's part of a round: offsets first..last."""

    partition: int
    first: int
    last: int


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """Last offset both stores hold, and the unfinished round it is part of, if any."""

    committed: int
    pending_until: int | None
    pending_round: str | None = None


def round_token(incarnation: str, topic: str, members: Sequence[Member]) -> str:
    """The ClickHouse insert dedup token of a round.

    A round of one partition keeps the per-partition form of earlier versions, so a batch
    left pending by one is recovered with the token it was inserted with.
    """
    if len(members) == 1:
        m = members[0]
        return f"{incarnation}.{topic}.{m.partition}.{m.first}.{m.last}"
    spec = ",".join(f"{m.partition}:{m.first}-{m.last}" for m in sorted(members))
    return f"{incarnation}.{topic}.round.{hashlib.blake2b(spec.encode(), digest_size=16).hexdigest()}"


async def load(conn: PgConnection, key: PartitionKey) -> Checkpoint:
    """The checkpoint of a partition (-1 = nothing projected yet)."""
    row = await conn.fetchrow(
        "SELECT committed, pending_until, pending_round FROM projector_checkpoints"
        " WHERE consumer_group = $1 AND incarnation = $2 AND topic = $3 AND partition = $4",
        key.group,
        key.incarnation,
        key.topic,
        key.partition,
    )
    if row is None:
        return Checkpoint(committed=-1, pending_until=None)
    return Checkpoint(row["committed"], row["pending_until"], row["pending_round"])


async def pending_members(conn: PgConnection, key: PartitionKey, checkpoint: Checkpoint) -> list[Member]:
    """The members of the unfinished round `key`'s partition is part of ([] when none).

    A row pending without a round token was left by a version that wrote one partition per
    batch: it is a round of its own.
    """
    if checkpoint.pending_until is None:
        return []
    if checkpoint.pending_round is None:
        return [Member(key.partition, checkpoint.committed + 1, checkpoint.pending_until)]
    rows = await conn.fetch(
        "SELECT partition, committed, pending_until FROM projector_checkpoints"
        " WHERE consumer_group = $1 AND incarnation = $2 AND topic = $3 AND pending_round = $4"
        " ORDER BY partition",
        key.group,
        key.incarnation,
        key.topic,
        checkpoint.pending_round,
    )
    return [Member(r["partition"], r["committed"] + 1, r["pending_until"]) for r in rows]


async def pending_rounds(conn: PgConnection, key: PartitionKey) -> list[tuple[str | None, list[Member]]]:
    """Every unfinished round of `key`'s group, incarnation and topic (its partition is not
    used): the round's recorded token (None: a one-partition round of an earlier version)
    and its members."""
    rows = await conn.fetch(
        "SELECT partition, committed, pending_until, pending_round FROM projector_checkpoints"
        " WHERE consumer_group = $1 AND incarnation = $2 AND topic = $3 AND pending_until IS NOT NULL"
        " ORDER BY partition",
        key.group,
        key.incarnation,
        key.topic,
    )
    rounds: dict[str, list[Member]] = {}
    single: list[tuple[str | None, list[Member]]] = []
    for r in rows:
        member = Member(r["partition"], r["committed"] + 1, r["pending_until"])
        if r["pending_round"] is None:
            single.append((None, [member]))
        else:
            rounds.setdefault(r["pending_round"], []).append(member)
    return [*rounds.items(), *single]


async def load_carry_over(conn: PgConnection, incarnation: str, topic: str) -> CarryOver | None:
    """What a broker replacement carried into `incarnation` (None: it started empty)."""
    rows = await conn.fetch(
        "SELECT partition, carried_until, predecessor, carried_from FROM broker_carry_over"
        " WHERE incarnation = $1 AND topic = $2 AND predecessor IS NOT NULL",
        incarnation,
        topic,
    )
    if not rows:
        return None
    return CarryOver(
        predecessor=rows[0]["predecessor"],
        incarnation=incarnation,
        topic=topic,
        carried_from={r["partition"]: r["carried_from"] for r in rows},
        carried_until={r["partition"]: r["carried_until"] for r in rows},
    )


async def mark_pending(conn: PgConnection, key: PartitionKey, members: Sequence[Member], token: str) -> None:
    """Record, in one statement, that the round `token` is about to reach ClickHouse.

    `key` names the group, incarnation and topic; its partition is not used.
    """
    await conn.execute(
        "INSERT INTO projector_checkpoints"
        " (consumer_group, incarnation, topic, partition, pending_until, pending_round)"
        " SELECT $1, $2, $3, m.partition, m.until, $6"
        " FROM unnest($4::integer[], $5::bigint[]) AS m(partition, until)"
        " ON CONFLICT (consumer_group, incarnation, topic, partition) DO UPDATE"
        " SET pending_until = excluded.pending_until, pending_round = excluded.pending_round,"
        " updated_at = now()",
        key.group,
        key.incarnation,
        key.topic,
        [m.partition for m in members],
        [m.last for m in members],
        token,
    )


class LostOwnership(Exception):
    """Another projector advanced one of these partitions first (rebalance); drop the round."""


async def advance(conn: PgConnection, key: PartitionKey, members: Sequence[Member]) -> None:
    """Move every member's checkpoint from first-1 to last and notify waiting readers.

    Inside the round's transaction: when any member moved meanwhile, LostOwnership is
    raised and the transaction (the round) rolls back.
    """
    # One round trip: the NOTIFYs ride on the UPDATE's RETURNING (they are sent at commit,
    # and only for rows that moved, so a lost partition notifies nobody).
    moved = await conn.fetch(
        "UPDATE projector_checkpoints AS c"
        " SET committed = m.last, pending_until = NULL, pending_round = NULL, updated_at = now()"
        " FROM unnest($4::integer[], $5::bigint[], $6::bigint[], $7::text[])"
        " AS m(partition, expected, last, payload)"
        " WHERE c.consumer_group = $1 AND c.incarnation = $2 AND c.topic = $3"
        " AND c.partition = m.partition AND c.committed = m.expected"
        " RETURNING pg_notify($8, m.payload)",
        key.group,
        key.incarnation,
        key.topic,
        [m.partition for m in members],
        [m.first - 1 for m in members],
        [m.last for m in members],
        [
            notification(PartitionKey(key.group, key.incarnation, key.topic, m.partition), m.last)
            for m in members
        ],
        NOTIFY_CHANNEL,
    )
    if len(moved) != len(members):
        raise LostOwnership(f"a partition of {key.group}/{key.topic} moved past {members}")


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
