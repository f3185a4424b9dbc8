"""Finding reads from Postgres (the findings table), always scoped to the principal's tenant."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import orjson

from services.api.findings.schemas import Finding
from services.api.principal import Principal
from services.api.sql import Conditions

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


def to_micros(moment: datetime) -> int:
    """Microseconds since the epoch, exactly (the keyset position of a finding)."""
    return (moment - EPOCH) // _MICROSECOND


def from_micros(micros: int) -> datetime:
    """The instant `micros` microseconds after the epoch, exactly."""
    return EPOCH + timedelta(microseconds=micros)


@dataclass(frozen=True, slots=True)
class FindingFilters:
    """What a findings listing filters on (all AND-ed; a list matches any of its values)."""

    run_ids: list[str] = field(default_factory=list)
    experiment_ids: list[str] = field(default_factory=list)
    kinds: list[str] = field(default_factory=list)
    since: int | None = None  # milliseconds since the epoch, inclusive
    keys: list[str] = field(default_factory=list)  # metric keys of anomalies (payload `key`)


@dataclass(frozen=True, slots=True)
class FindingRow:
    """A finding and its exact keyset position (occurred_at in microseconds, event_id)."""

    finding: Finding
    micros: int


class FindingRepository:
    """Reads findings of one tenant; a route cannot reach another tenant's rows."""

    def __init__(self, pool: asyncpg.Pool[Any], principal: Principal) -> None:
        """Bind the repository to the caller's tenant."""
        self._pool = pool
        self._tenant_id = principal.tenant_id

    def bound_to(self, tenant_id: str) -> FindingRepository:
        """The same reads over another tenant's rows (a run of an experiment shared with the caller's)."""
        bound = copy.copy(self)
        bound._tenant_id = tenant_id
        return bound

    async def page(
        self,
        filters: FindingFilters,
        after: tuple[int, str] | None,
        limit: int,
        readable: frozenset[str] | None = None,
        shared: dict[str, str] | None = None,
    ) -> list[FindingRow]:
        """Findings by (occurred_at DESC, event_id), after a keyset position: the tenant's (of
        `readable` experiments unless None) and those of `shared` experiments (id -> owner)."""
        where = Conditions()
        own = f"tenant_id = {where.param(self._tenant_id)}"
        if readable is not None:
            own += f" AND experiment_id = ANY({where.param(sorted(readable))}::text[])"
        if shared:
            owners, ids = where.param(list(shared.values())), where.param(list(shared))
            where.add(
                f"(({own}) OR (tenant_id, experiment_id) IN (SELECT * FROM unnest({owners}::text[], {ids}::text[])))"
            )
        else:
            where.add(own)
        if filters.run_ids:
            where.add(f"run_id = ANY({where.param(filters.run_ids)}::text[])")
        if filters.experiment_ids:
            where.add(f"experiment_id = ANY({where.param(filters.experiment_ids)}::text[])")
        if filters.kinds:
            where.add(f"kind = ANY({where.param(filters.kinds)}::text[])")
        if filters.keys:
            where.add(f"body->>'key' = ANY({where.param(filters.keys)}::text[])")
        if filters.since is not None:
            where.add(f"occurred_at >= {where.param(EPOCH + timedelta(milliseconds=filters.since))}")
        if after is not None:
            micros, event_id = after
            t, i = where.param(from_micros(micros)), where.param(event_id)
            where.add(f"(occurred_at < {t} OR (occurred_at = {t} AND event_id > {i}::uuid))")
        rows = await self._pool.fetch(
            "SELECT event_id::text AS event_id, run_id, experiment_id, kind, body, occurred_at FROM findings"
            f" WHERE {where.sql} ORDER BY occurred_at DESC, event_id LIMIT {where.param(limit)}",
            *where.args,
        )
        return [_row(r) for r in rows]


def _row(row: asyncpg.Record) -> FindingRow:
    raw = row["body"]
    body: dict[str, Any] = orjson.loads(raw) if isinstance(raw, str | bytes) else dict(raw)
    evidence = body.get("evidence")
    message = evidence.get("message") if isinstance(evidence, dict) else None
    severity = body.get("severity")
    occurred: datetime = row["occurred_at"]
    micros = to_micros(occurred)
    finding = Finding(
        event_id=row["event_id"],
        run_id=row["run_id"],
        experiment_id=row["experiment_id"],
        kind=row["kind"],
        occurred_at=micros // 1000,
        severity=float(severity) if isinstance(severity, int | float) else None,
        message=message if isinstance(message, str) else None,
        body=body,
    )
    return FindingRow(finding, micros)
