"""Response shapes of findings."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class Finding(BaseModel):
    """One finding: an AnomalyDetected (e.g. `lint.metric_myopia`) or AttributionComputed event."""

    event_id: str = Field(description="Id of the event that reported it.")
    run_id: str | None = None
    experiment_id: str | None = None
    kind: str = Field(description="e.g. lint.parameter_omission, lint.metric_myopia, attribution.")
    occurred_at: int = Field(description="Milliseconds since the epoch.")
    severity: float | None = Field(None, description="0..1 where the reporter gives one.")
    message: str | None = Field(None, description="evidence.message, where the reporter gives one.")
    body: dict[str, Any] = Field(description="The event's payload (key, step, severity, evidence, ...).")


class FindingList(BaseModel):
    """One page of findings, newest first."""

    findings: list[Finding]
    next_page_token: str | None = Field(
        None, description="Pass as page_token for the next page; null at the end."
    )
