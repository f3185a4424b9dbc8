"""The analysis service's Postgres side: detector states, its offsets, its recent events
(the outbox), and detector settings.

States, offsets and the events published since the last checkpoint are written in one
transaction (after Kafka acknowledged those events), so a restart resumes from a state
that matches its offset, and knows what it may have to publish again.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import orjson

from runledger.analysis.sharding import StoredOffset
from runledger.events.codec import json_bytes
from runledger.stores.postgres import PgConnection
from services.analysis.reports import Outgoing

SERIES = "series"  # scope_id = run_id
COHORT = "cohort"  # scope_id = experiment_id


class StateKey(NamedTuple):
    """Which detector: a run's series of one metric, or an experiment's cohort of one metric.

    A tuple, not a dataclass: it is hashed a few times per analysed point, and a tuple's
    hash and equality run in C.
    """

    tenant_id: str
    scope: str
    scope_id: str
    key: str


@dataclass(frozen=True, slots=True)
class SettingsRow:
    """Detector overrides of a tenant, narrowed to an experiment and/or a metric key ('' = any)."""

    tenant_id: str
    experiment_id: str
    key: str
    overrides: dict[str, Any]


@dataclass(frozen=True, slots=True)
class StateRow:
    """One stored state, as JSON: a series (member ''), or one member run of a cohort; None =
    delete it. Encoded when the checkpoint takes it, so a checkpoint holds the states' bytes
    until its statement is sent, not their dicts."""

    key: StateKey
    member: str
    state: bytes | None

    @classmethod
    def of(cls, key: StateKey, member: str, state: dict[str, Any] | None) -> StateRow:
        """The row of a detector's state (`to_state()`), or of a forgotten one (None)."""
        return cls(key, member, None if state is None else json_bytes(state))


async def load_states(
    conn: PgConnection, keys: Iterable[StateKey]
) -> dict[StateKey, dict[str, dict[str, Any]]]:
    """The stored states of `keys`, member -> state (a series has the one member '')."""
    wanted = list(keys)
    if not wanted:
        return {}
    rows = await conn.fetch(
        "SELECT s.tenant_id, s.scope, s.scope_id, s.key, s.member, s.state FROM analysis_state s"
        " JOIN unnest($1::text[], $2::text[], $3::text[], $4::text[]) AS w(t, sc, id, k)"
        " ON s.tenant_id = w.t AND s.scope = w.sc AND s.scope_id = w.id AND s.key = w.k",
        [k.tenant_id for k in wanted],
        [k.scope for k in wanted],
        [k.scope_id for k in wanted],
        [k.key for k in wanted],
    )
    found: dict[StateKey, dict[str, dict[str, Any]]] = {}
    for r in rows:
        key = StateKey(r["tenant_id"], r["scope"], r["scope_id"], r["key"])
        found.setdefault(key, {})[r["member"]] = orjson.loads(r["state"])
    return found


async def save_states(conn: PgConnection, rows: Iterable[StateRow]) -> None:
    """Upsert the states a checkpoint stores and delete the forgotten ones (two statements)."""
    rows = list(rows)
    upserts = [r for r in rows if r.state is not None]
    deletes = [r for r in rows if r.state is None]
    if upserts:
        await conn.execute(
            "INSERT INTO analysis_state (tenant_id, scope, scope_id, key, member, state, updated_at)"
            " SELECT t, sc, id, k, m, s, now()"
            " FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::bytea[])"
            " AS w(t, sc, id, k, m, s)"
            " ON CONFLICT (tenant_id, scope, scope_id, key, member)"
            " DO UPDATE SET state = excluded.state, updated_at = excluded.updated_at",
            [r.key.tenant_id for r in upserts],
            [r.key.scope for r in upserts],
            [r.key.scope_id for r in upserts],
            [r.key.key for r in upserts],
            [r.member for r in upserts],
            [r.state for r in upserts],
        )
    if deletes:
        await conn.execute(
            "DELETE FROM analysis_state s USING unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[])"
            " AS w(t, sc, id, k, m)"
            " WHERE s.tenant_id = w.t AND s.scope = w.sc AND s.scope_id = w.id AND s.key = w.k AND s.member = w.m",
            [r.key.tenant_id for r in deletes],
            [r.key.scope for r in deletes],
            [r.key.scope_id for r in deletes],
            [r.key.key for r in deletes],
            [r.member for r in deletes],
        )


async def stored_series_keys(
    conn: PgConnection, runs: list[tuple[str, str]]
) -> dict[tuple[str, str], list[str]]:
    """The metric keys of each (tenant, run) whose series state is stored."""
    if not runs:
        return {}
    rows = await conn.fetch(
        "SELECT s.tenant_id, s.scope_id, s.key FROM analysis_state s"
        " JOIN unnest($1::text[], $2::text[]) AS w(t, r) ON s.tenant_id = w.t AND s.scope_id = w.r"
        f" WHERE s.scope = '{SERIES}'",
        [t for t, _ in runs],
        [r for _, r in runs],
    )
    found: dict[tuple[str, str], list[str]] = {}
    for r in rows:
        found.setdefault((r["tenant_id"], r["scope_id"]), []).append(r["key"])
    return found


async def load_offsets(conn: PgConnection, group: str, incarnation: str, topic: str) -> list[StoredOffset]:
    """The stored offsets of `group` and of every shard of it ("<group>#<shard>/<shards>")."""
    rows = await conn.fetch(
        "SELECT consumer_group, partition, committed, updated_at FROM analysis_checkpoints"
        " WHERE (consumer_group = $1 OR starts_with(consumer_group, $1 || '#'))"
        " AND incarnation = $2 AND topic = $3",
        group,
        incarnation,
        topic,
    )
    return [StoredOffset(r["consumer_group"], r["partition"], r["committed"], r["updated_at"]) for r in rows]


async def save_offsets(
    conn: PgConnection, group: str, incarnation: str, topic: str, offsets: Mapping[int, int]
) -> None:
    """Record how far each partition has been analysed."""
    if not offsets:
        return
    parts = sorted(offsets)
    await conn.execute(
        "INSERT INTO analysis_checkpoints (consumer_group, incarnation, topic, partition, committed, updated_at)"
        " SELECT $1, $2, $3, p, c, now() FROM unnest($4::int[], $5::bigint[]) AS w(p, c)"
        " ON CONFLICT (consumer_group, incarnation, topic, partition)"
        " DO UPDATE SET committed = excluded.committed, updated_at = excluded.updated_at",
        group,
        incarnation,
        topic,
        parts,
        [offsets[p] for p in parts],
    )


async def save_outbox(
    conn: PgConnection, group: str, incarnation: str, events: Sequence[Outgoing], keep_s: float
) -> None:
    """Keep `events` (published by `group`, acknowledged by `incarnation`) for `keep_s`
    seconds; forget the older ones."""
    if events:
        await conn.execute(
            "INSERT INTO analysis_outbox (consumer_group, event_id, incarnation, key, value)"
            " SELECT $1, i, $2, k, v FROM unnest($3::text[], $4::bytea[], $5::bytea[]) AS w(i, k, v)"
            " ON CONFLICT (consumer_group, event_id) DO NOTHING",
            group,
            incarnation,
            [e.event_id for e in events],
            [e.key for e in events],
            [e.value for e in events],
        )
    await conn.execute(
        "DELETE FROM analysis_outbox WHERE consumer_group = $1 AND published_at < now() - make_interval(secs => $2)",
        group,
        keep_s,
    )


class OutboxEntry(NamedTuple):
    """An event of the outbox: how long ago it was published, and which incarnation took it."""

    age_s: float
    incarnation: str
    event: Outgoing


async def load_outbox(conn: PgConnection, group: str, keep_s: float) -> list[OutboxEntry]:
    """What `group` published within the last `keep_s` seconds, oldest first."""
    rows = await conn.fetch(
        "SELECT event_id, incarnation, key, value, extract(epoch FROM now() - published_at)::float8 AS age"
        " FROM analysis_outbox WHERE consumer_group = $1 AND published_at >= now() - make_interval(secs => $2)"
        " ORDER BY published_at, event_id",
        group,
        keep_s,
    )
    return [
        OutboxEntry(r["age"], r["incarnation"], Outgoing(bytes(r["key"]), bytes(r["value"]), r["event_id"]))
        for r in rows
    ]


async def load_settings(conn: PgConnection) -> list[SettingsRow]:
    """Every tenant's detector settings (small: a few rows per tenant)."""
    rows = await conn.fetch(
        "SELECT tenant_id, experiment_id, key, overrides::text AS overrides FROM anomaly_settings"
    )
    return [
        SettingsRow(r["tenant_id"], r["experiment_id"], r["key"], orjson.loads(r["overrides"])) for r in rows
    ]


async def settings_version(conn: PgConnection) -> tuple[int, Any]:
    """A cheap fingerprint of the settings table (row count, last change)."""
    row = await conn.fetchrow("SELECT count(*) AS n, max(updated_at) AS at FROM anomaly_settings")
    assert row is not None
    return int(row["n"]), row["at"]
