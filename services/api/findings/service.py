"""Finding logic: listings by filter, and the findings of one run (which must exist)."""

from __future__ import annotations

import uuid
from dataclasses import replace

from services.api.access import Access, readable_run
from services.api.errors import InvalidParameter
from services.api.findings.repository import FindingFilters, FindingRepository
from services.api.findings.schemas import FindingList
from services.api.pagination import fingerprint, split_page, time_id_position
from services.api.runs.repository import RunRepository


class FindingService:
    """What the finding routes do, independent of HTTP."""

    def __init__(self, findings: FindingRepository, runs: RunRepository, access: Access) -> None:
        """Act through tenant-scoped repositories, for a caller."""
        self._findings = findings
        self._runs = runs
        self._access = access

    async def page(self, filters: FindingFilters, page_size: int, page_token: str | None) -> FindingList:
        """One page of the findings the caller may read (newest first) and the token of the next."""
        self._access.require_listing()
        # Findings of a shared experiment are listed when the request names that experiment.
        shared = {e: t for e, t in self._access.shared().items() if e in filters.experiment_ids}
        return await self._page(
            self._findings, filters, page_size, page_token, self._access.readable(), shared
        )

    async def _page(
        self,
        findings: FindingRepository,
        filters: FindingFilters,
        page_size: int,
        page_token: str | None,
        readable: frozenset[str] | None,
        shared: dict[str, str] | None,
    ) -> FindingList:
        scope = fingerprint(
            "findings", filters.run_ids, filters.experiment_ids, filters.kinds, filters.since, filters.keys
        )
        after = time_id_position(page_token, scope)
        if after is not None:
            try:
                uuid.UUID(after[1])
            except ValueError:
                raise InvalidParameter("invalid page_token") from None
        rows = await findings.page(filters, after, page_size + 1, readable, shared)
        page, next_token = split_page(rows, page_size, lambda r: [r.micros, r.finding.event_id], scope)
        return FindingList(findings=[r.finding for r in page], next_page_token=next_token)

    async def for_run(
        self, run_id: str, filters: FindingFilters, page_size: int, page_token: str | None
    ) -> FindingList:
        """One page of the run's findings; NotFound for a run the caller may not read."""
        located, _ = await readable_run(self._access, self._runs, run_id)
        findings = self._findings.bound_to(located.tenant_id)
        return await self._page(
            findings, replace(filters, run_ids=[run_id]), page_size, page_token, None, None
        )
