"""Finding logic: listings by filter, and the findings of one run (which must exist)."""

from __future__ import annotations

import uuid
from dataclasses import replace

from services.api.errors import InvalidParameter, NotFound
from services.api.findings.repository import FindingFilters, FindingRepository
from services.api.findings.schemas import FindingList
from services.api.pagination import fingerprint, split_page, time_id_position
from services.api.runs.repository import RunRepository


class FindingService:
    """What the finding routes do, independent of HTTP."""

    def __init__(self, findings: FindingRepository, runs: RunRepository) -> None:
        """Act through tenant-scoped repositories."""
        self._findings = findings
        self._runs = runs

    async def page(self, filters: FindingFilters, page_size: int, page_token: str | None) -> FindingList:
        """One page of findings (newest first) and the token of the next."""
        scope = fingerprint("findings", filters.run_ids, filters.experiment_ids, filters.kinds, filters.since)
        after = time_id_position(page_token, scope)
        if after is not None:
            try:
                uuid.UUID(after[1])
            except ValueError:
                raise InvalidParameter("invalid page_token") from None
        rows = await self._findings.page(filters, after, page_size + 1)
        page, next_token = split_page(rows, page_size, lambda r: [r.micros, r.finding.event_id], scope)
        return FindingList(findings=[r.finding for r in page], next_page_token=next_token)

    async def for_run(
        self, run_id: str, filters: FindingFilters, page_size: int, page_token: str | None
    ) -> FindingList:
        """One page of the run's findings; NotFound for a run the tenant does not have."""
        if await self._runs.get_info(run_id) is None:
            raise NotFound(f"run {run_id!r} does not exist")
        return await self.page(replace(filters, run_ids=[run_id]), page_size, page_token)
