"""What the business routes do: declare, list and delete business metrics (audited), and
roll their values up by model, version and stage."""

from __future__ import annotations

import csv
import io

from runledger.stores.postgres import directory
from runledger.stores.postgres.directory import AuditEntry
from services.api.access import Access
from services.api.business.repository import BusinessRepository, business_rollup, columns
from services.api.business.schemas import (
    BusinessMetric,
    BusinessMetricList,
    BusinessReport,
    DeclaredBusinessMetric,
)
from services.api.errors import NotFound
from services.api.principal import Principal


class BusinessService:
    """Business metrics for one caller, independent of HTTP."""

    def __init__(self, repository: BusinessRepository, access: Access, principal: Principal) -> None:
        self._repo = repository
        self._access = access
        self._principal = principal

    async def declarations(self) -> BusinessMetricList:
        """The tenant's declarations."""
        self._access.require_listing()
        return BusinessMetricList(business_metrics=await self._repo.list())

    async def declare(self, metric: BusinessMetric) -> tuple[DeclaredBusinessMetric, bool]:
        """Create or replace a declaration (audited); (it, whether it is new)."""
        async with self._repo.pool.acquire() as conn, conn.transaction():
            created = await self._repo.put(conn, metric, self._principal.principal_id)
            await directory.append_audit(
                conn, [self._audit("business_metric.create" if created else "business_metric.update", metric)]
            )
        stored = next(m for m in await self._repo.list() if m.key == metric.key)
        return stored, created

    async def delete(self, key: str) -> None:
        """Remove a declaration (audited); NotFound when there is none."""
        async with self._repo.pool.acquire() as conn, conn.transaction():
            if not await self._repo.delete(conn, key):
                raise NotFound(f"no business metric {key!r}")
            await directory.append_audit(
                conn,
                [
                    AuditEntry(
                        tenant_id=self._principal.tenant_id,
                        actor=self._principal.principal_id,
                        action="business_metric.delete",
                        outcome="ok",
                        target=key,
                        source=self._principal.source,
                    )
                ],
            )

    async def report(
        self, level: str, model_name: str | None, stage: str | None, metrics: list[str]
    ) -> BusinessReport:
        """The stakeholder roll-up over the model versions the caller may read."""
        self._access.require_listing()
        rows = await business_rollup(
            self._repo.pool,
            self._principal.tenant_id,
            readable=self._access.readable(),
            level=level,
            model_name=model_name,
            stage=stage,
            metrics=metrics or None,
        )
        return BusinessReport(level=level, columns=list(columns(level)), rows=rows)

    def _audit(self, action: str, metric: BusinessMetric) -> AuditEntry:
        return AuditEntry(
            tenant_id=self._principal.tenant_id,
            actor=self._principal.principal_id,
            action=action,
            outcome="ok",
            target=metric.key,
            source=self._principal.source,
            details=metric.model_dump(),
        )


def report_csv(report: BusinessReport) -> str:
    """The report as CSV with a header row (empty cells for missing values)."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=report.columns, extrasaction="ignore", lineterminator="\r\n")
    writer.writeheader()
    for row in report.rows:
        writer.writerow({k: ("" if v is None else v) for k, v in row.items()})
    return out.getvalue()
