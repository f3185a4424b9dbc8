"""tenant_usage: metric points stored per tenant, what the max_points quota is checked against."""

from __future__ import annotations

from collections.abc import Mapping

from runledger.stores.postgres import PgConnection


async def load_usage(conn: PgConnection) -> dict[str, int]:
    """Stored points of every tenant that has any."""
    rows = await conn.fetch("SELECT tenant_id, points FROM tenant_usage")
    return {r["tenant_id"]: int(r["points"]) for r in rows}


async def add_usage(conn: PgConnection, points: Mapping[str, int]) -> None:
    """Add a batch's points per tenant (call inside the batch's transaction)."""
    if not points:
        return
    await conn.execute(
        "INSERT INTO tenant_usage (tenant_id, points) SELECT * FROM unnest($1::text[], $2::int8[])"
        " ON CONFLICT (tenant_id) DO UPDATE SET points = tenant_usage.points + excluded.points",
        list(points.keys()),
        list(points.values()),
    )
