"""Findings and run documents services over fake repositories (the SQL runs in tests/e2e)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any, cast

import pytest

from runledger.auth.model import AuthSnapshot, Grant, Role, TenantStatus
from runledger.auth.rbac import Authorizer
from runledger.events.models import CodeStateCapturedPayload
from services.api.access import Access
from services.api.documents.repository import DocumentRepository
from services.api.documents.service import DocumentService
from services.api.errors import InvalidParameter, NotFound
from services.api.findings.repository import (
    FindingFilters,
    FindingRepository,
    FindingRow,
    from_micros,
    to_micros,
)
from services.api.findings.schemas import Finding
from services.api.findings.service import FindingService
from services.api.pagination import encode_page_token, fingerprint
from services.api.principal import Principal
from services.api.runs.repository import RunRepository
from services.api.runs.schemas import RunInfo

TENANT = "t1"


def access(experiment_id: str = "") -> Access:
    """A viewer of TENANT (narrowed to one experiment when given)."""
    snapshot = AuthSnapshot(
        generation=1,
        tenants={TENANT: TenantStatus.ACTIVE},
        grants=(Grant(TENANT, "p", Role.VIEWER, experiment_id),),
    )
    return Access(Principal(tenant_id=TENANT, authorizer=Authorizer(snapshot), principal_id="p"))


class FakeRuns:
    """Runs of TENANT, all in experiment e1."""

    def __init__(self, known: set[str]) -> None:
        self.known = known

    async def locate(self, run_id: str, shared: dict[str, str]) -> tuple[str, RunInfo] | None:
        if run_id not in self.known:
            return None
        info = RunInfo(
            run_id=run_id, experiment_id="e1", name="r", user_id="", status="RUNNING", start_time=0,
            lifecycle_stage="active",
        )  # fmt: skip
        return TENANT, info


class FakeFindings:
    """Rows newest first; honours the keyset position like the SQL does."""

    def __init__(self, rows: list[FindingRow]) -> None:
        self.rows = sorted(rows, key=lambda r: (-r.micros, r.finding.event_id))  # as the SQL orders
        self.calls: list[tuple[FindingFilters, tuple[int, str] | None, int]] = []

    def bound_to(self, tenant_id: str) -> FakeFindings:
        assert tenant_id == TENANT
        return self

    async def page(
        self,
        filters: FindingFilters,
        after: tuple[int, str] | None,
        limit: int,
        readable: frozenset[str] | None = None,
        shared: dict[str, str] | None = None,
    ) -> list[FindingRow]:
        self.calls.append((filters, after, limit))
        rows = [r for r in self.rows if not filters.run_ids or r.finding.run_id in filters.run_ids]
        if after is not None:
            rows = [r for r in rows if (-r.micros, r.finding.event_id) > (-after[0], after[1])]
        return rows[:limit]


def row(micros: int, run_id: str = "r1") -> FindingRow:
    event_id = str(uuid.uuid4())
    finding = Finding(
        event_id=event_id, run_id=run_id, kind="lint.metric_myopia", occurred_at=micros // 1000, body={}
    )
    return FindingRow(finding, micros)


def service(
    rows: list[FindingRow], known: set[str], caller: Access | None = None
) -> tuple[FindingService, FakeFindings]:
    fake = FakeFindings(rows)
    runs = cast(RunRepository, FakeRuns(known))
    return FindingService(cast(FindingRepository, fake), runs, caller or access()), fake


def test_micros_round_trip_exactly() -> None:
    moment = datetime(2026, 11, 27, 12, 30, 15, 123456, tzinfo=UTC)
    assert to_micros(moment) == 1_795_782_615_123_456
    assert from_micros(to_micros(moment)) == moment


async def test_pages_follow_each_other() -> None:
    rows = [row(3_000_000), row(2_000_000), row(2_000_000), row(1_000_000)]
    svc, _ = service(rows, {"r1"})
    seen: list[str] = []
    token: str | None = None
    while True:
        page = await svc.page(FindingFilters(), 3, token)
        seen.extend(f.event_id for f in page.findings)
        token = page.next_page_token
        if token is None:
            break
    assert sorted(seen) == sorted(r.finding.event_id for r in rows) and len(seen) == 4


async def test_run_findings_need_the_run_and_scope_to_it() -> None:
    svc, fake = service([row(1, "r1"), row(2, "r2")], {"r1"})
    with pytest.raises(NotFound):
        await svc.for_run("nope", FindingFilters(), 10, None)
    page = await svc.for_run("r1", FindingFilters(kinds=["lint.metric_myopia"]), 10, None)
    assert [f.run_id for f in page.findings] == ["r1"]
    assert fake.calls[-1][0] == FindingFilters(run_ids=["r1"], kinds=["lint.metric_myopia"])


async def test_run_findings_of_an_unreadable_experiment_are_404() -> None:
    svc, fake = service([row(1, "r1")], {"r1"}, access(experiment_id="other"))
    with pytest.raises(NotFound):
        await svc.for_run("r1", FindingFilters(), 10, None)
    assert fake.calls == []


async def test_foreign_or_forged_tokens_are_refused() -> None:
    svc, _ = service([], set())
    scope = fingerprint("findings", [], [], [], None)
    with pytest.raises(InvalidParameter):
        await svc.page(FindingFilters(), 10, encode_page_token([1, "not-a-uuid"], scope))
    with pytest.raises(InvalidParameter):
        await svc.page(FindingFilters(kinds=["x"]), 10, encode_page_token([1, str(uuid.uuid4())], scope))


class FakeDocuments:
    def __init__(self, docs: dict[str, dict[str, Any]]) -> None:
        self.docs = docs

    def bound_to(self, tenant_id: str) -> FakeDocuments:
        assert tenant_id == TENANT
        return self

    async def for_run(self, run_id: str) -> dict[str, dict[str, Any]]:
        return self.docs


async def test_documents_of_a_run() -> None:
    code = CodeStateCapturedPayload(commit="abc", dirty=True, diff="+x\n").model_dump()
    svc = DocumentService(
        cast(DocumentRepository, FakeDocuments({"code_state": code})),
        cast(RunRepository, FakeRuns({"r1"})),
        access(),
    )
    docs = await svc.for_run("r1")
    assert docs.code_state is not None and docs.code_state.diff == "+x\n"
    assert docs.environment is None
    with pytest.raises(NotFound):
        await svc.for_run("nope")
