"""What the analysis routes do: list anomalies, request and read attributions, tune detectors."""

from __future__ import annotations

import time
import uuid
from dataclasses import replace
from datetime import datetime
from typing import Any

import orjson

from runledger.analysis.detection import DetectorConfig
from runledger.events.models import EventType
from runledger.stores.postgres import directory
from runledger.stores.postgres.directory import AuditEntry
from services.api.access import Access
from services.api.analysis.repository import AnalysisRepository
from services.api.analysis.schemas import (
    DETECTOR_KINDS,
    Anomaly,
    AnomalyList,
    AnomalySetting,
    AnomalySettings,
    AttributionCreate,
    AttributionList,
    AttributionStatus,
    RunSet,
)
from services.api.errors import InvalidParameter, NotFound, PermissionDenied
from services.api.findings.repository import FindingFilters
from services.api.findings.service import FindingService
from services.api.mlflow import search, search_repository
from services.api.principal import Principal
from services.api.writes import EventWriter, build_event

MAX_RUNS_PER_SET = 10_000


def _ms(moment: datetime | None) -> int | None:
    return None if moment is None else int(moment.timestamp() * 1000)


class AnalysisService:
    """The analysis routes for one caller, independent of HTTP."""

    def __init__(
        self,
        repository: AnalysisRepository,
        findings: FindingService,
        access: Access,
        principal: Principal,
        writer: EventWriter,
    ) -> None:
        self._repo = repository
        self._findings = findings
        self._access = access
        self._principal = principal
        self._writer = writer

    # ------------------------------------------------------------------ anomalies

    async def anomalies(self, filters: FindingFilters, page_size: int, page_token: str | None) -> AnomalyList:
        """One page of detector findings (newest first) the caller may read."""
        unknown = sorted(set(filters.kinds) - set(DETECTOR_KINDS))
        if unknown:
            raise InvalidParameter(f"unknown anomaly kind(s) {unknown}; known: {', '.join(DETECTOR_KINDS)}")
        kinds = filters.kinds or list(DETECTOR_KINDS)
        page = await self._findings.page(replace(filters, kinds=kinds), page_size, page_token)
        anomalies = []
        for f in page.findings:
            body = f.body
            step = body.get("step")
            key = body.get("key")
            evidence = body.get("evidence")
            anomalies.append(
                Anomaly(
                    event_id=f.event_id,
                    run_id=f.run_id,
                    experiment_id=f.experiment_id,
                    key=key if isinstance(key, str) else None,
                    step=step if isinstance(step, int) else None,
                    kind=f.kind,
                    severity=f.severity,
                    message=f.message,
                    evidence=evidence if isinstance(evidence, dict) else {},
                    occurred_at=f.occurred_at,
                )
            )
        return AnomalyList(anomalies=anomalies, next_page_token=page.next_page_token)

    # ------------------------------------------------------------------ attributions

    async def request_attribution(self, body: AttributionCreate) -> AttributionStatus:
        """Resolve the run sets, publish the request, answer its (pending) status."""
        experiment_id = body.experiment_id
        if not await self._repo.experiment_exists(experiment_id) or not self._access.can_read(experiment_id):
            raise NotFound(f"experiment {experiment_id!r} does not exist")
        if not self._access.can_write(experiment_id):
            raise PermissionDenied(f"the caller may not write experiment {experiment_id}")
        if body.candidate.recent is not None:
            raise InvalidParameter("candidate: `recent` applies to the baseline only")
        candidates = await self._resolve(experiment_id, body.candidate, "candidate")
        if not candidates:
            raise InvalidParameter("candidate: no run of the experiment matches")
        baseline = [
            r for r in await self._resolve(experiment_id, body.baseline, "baseline") if r not in candidates
        ]
        explicit_baseline = bool(body.baseline.run_ids or body.baseline.filter)
        if explicit_baseline and not baseline:
            raise InvalidParameter("baseline: no run of the experiment matches (other than the candidates)")
        attribution_id = str(uuid.uuid4())
        payload: dict[str, Any] = {
            "attribution_id": attribution_id,
            "metric": body.metric,
            "candidate_run_ids": candidates,
            "baseline_run_ids": baseline,
            "baseline_recent": body.baseline.recent or 200,
            "factors": body.factors,
            "graph": [list(edge) for edge in body.graph] if body.graph else None,
            "trigger": {"by": "api", "principal": self._principal.principal_id},
        }
        event = build_event(
            self._principal, EventType.ATTRIBUTION_REQUESTED, payload, experiment_id=experiment_id
        )
        await self._writer.write(self._principal, [event])
        found = await self._repo.attribution(attribution_id)
        if found is not None:
            return _status(found)
        return AttributionStatus(
            attribution_id=attribution_id,
            experiment_id=experiment_id,
            metric=body.metric,
            status="pending",
            requested_at=int(time.time() * 1000),
            trigger=payload["trigger"],
            candidate_run_ids=candidates,
            baseline_run_ids=baseline,
        )

    async def _resolve(self, experiment_id: str, runs: RunSet, what: str) -> list[str]:
        """The run ids a set names: its ids (checked) and its filter's matches, in that order."""
        ids = list(dict.fromkeys(runs.run_ids))
        if ids:
            known = await self._repo.experiment_run_ids(experiment_id, ids)
            missing = [r for r in ids if r not in known]
            if missing:
                shown = ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
                raise InvalidParameter(f"{what}: not active runs of experiment {experiment_id}: {shown}")
        if runs.filter:
            try:
                conditions = search.parse_filter(runs.filter)
            except InvalidParameter as exc:
                raise InvalidParameter(f"{what}.filter: {exc}") from None
            token: str | None = None
            while len(ids) < MAX_RUNS_PER_SET:
                page, token = await search_repository.search_run_ids(
                    self._repo.pool,
                    self._principal.tenant_id,
                    [experiment_id],
                    conditions,
                    [],
                    "ACTIVE_ONLY",
                    MAX_RUNS_PER_SET,
                    token,
                )
                ids.extend(r for r in page if r not in ids)
                if token is None:
                    break
        return ids[:MAX_RUNS_PER_SET]

    async def attribution(self, attribution_id: str) -> AttributionStatus:
        """One attribution the caller may read, else NotFound."""
        row = await self._repo.attribution(attribution_id)
        if row is None or not self._access.can_read(row["experiment_id"]):
            raise NotFound(f"attribution {attribution_id!r} does not exist")
        return _status(row)

    async def attributions(self, experiment_ids: list[str], limit: int) -> AttributionList:
        """The newest attributions of experiments the caller may read."""
        self._access.require_listing()
        readable = self._access.readable()
        wanted: list[str] | None = experiment_ids or None
        if readable is not None:
            wanted = [e for e in (wanted or sorted(readable)) if e in readable]
        rows = await self._repo.attributions(wanted, limit)
        return AttributionList(attributions=[_status(r) for r in rows])

    # ------------------------------------------------------------------ detector settings

    async def settings(self) -> AnomalySettings:
        """The tenant's detector settings and the defaults."""
        return AnomalySettings(settings=await self._repo.settings(), defaults=DetectorConfig().to_dict())

    async def put_setting(self, setting: AnomalySetting) -> AnomalySetting:
        """Validate and store one settings row (audited)."""
        try:
            DetectorConfig().with_overrides(setting.overrides)
        except ValueError as exc:
            raise InvalidParameter(f"overrides: {exc}") from None
        async with self._repo.pool.acquire() as conn, conn.transaction():
            await self._repo.put_setting(conn, setting)
            await directory.append_audit(conn, [self._audit("anomaly_settings.put", setting)])
        return setting

    async def delete_setting(self, experiment_id: str, key: str) -> None:
        """Remove one settings row (audited); NotFound when there is none."""
        async with self._repo.pool.acquire() as conn, conn.transaction():
            if not await self._repo.delete_setting(conn, experiment_id, key):
                raise NotFound(f"no detector setting for experiment {experiment_id!r} and key {key!r}")
            setting = AnomalySetting(experiment_id=experiment_id, key=key, overrides={})
            await directory.append_audit(conn, [self._audit("anomaly_settings.delete", setting)])

    def _audit(self, action: str, setting: AnomalySetting) -> AuditEntry:
        return AuditEntry(
            tenant_id=self._principal.tenant_id,
            actor=self._principal.principal_id,
            action=action,
            outcome="ok",
            target=f"experiment={setting.experiment_id or '*'} key={setting.key or '*'}",
            source=self._principal.source,
            details={"overrides": setting.overrides},
        )


def _status(row: Any) -> AttributionStatus:
    request: dict[str, Any] = orjson.loads(row["request"])
    result: dict[str, Any] | None = orjson.loads(row["result"]) if row["result"] else None
    return AttributionStatus(
        attribution_id=row["attribution_id"],
        experiment_id=row["experiment_id"],
        metric=row["metric"],
        status=row["status"],
        requested_at=_ms(row["requested_at"]) or 0,
        finished_at=_ms(row["finished_at"]),
        error=row["error"],
        trigger=request.get("trigger") or {},
        candidate_run_ids=request.get("candidate_run_ids") or [],
        baseline_run_ids=request.get("baseline_run_ids") or [],
        factors=(result or {}).get("factors", []),
        result=result or None,
    )
