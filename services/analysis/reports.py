"""The events the analysis service publishes, signed with its platform key.

Every id is derived from what caused the event (uuid5), never random: a batch analysed
again after a crash re-emits the same events, and the projector, which applies each
event id once, keeps one finding, one attribution request, one result.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import orjson

from runledger.auth.keys import ApiKey
from runledger.auth.signing import signed_bytes
from runledger.events.codec import envelope_dict, producer
from runledger.events.models import EventType

_NAMESPACE = uuid.UUID("9c3a7e52-1d4b-4f8e-b6a0-3e5d2c1f7a94")
PRODUCER = producer("runledger-analysis")


@dataclass(frozen=True, slots=True)
class Outgoing:
    """Topic bytes and partition key of one event to publish."""

    key: bytes
    value: bytes
    event_id: str


def derived_id(*parts: str) -> str:
    """A deterministic UUID of what caused an event."""
    return str(uuid.uuid5(_NAMESPACE, "/".join(parts)))


def json_ready(value: Any) -> Any:
    """`value` with numpy scalars and arrays made plain JSON (NaN and infinities become null)."""
    return orjson.loads(orjson.dumps(value, option=orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS))


class Reporter:
    """Builds signed events of one platform key."""

    def __init__(self, key: ApiKey) -> None:
        self._key = key
        self._signing_key = key.signing_key

    def _signed(
        self,
        tenant_id: str,
        type_: EventType,
        payload: dict[str, Any],
        event_id: str,
        *,
        run_id: str | None = None,
        experiment_id: str | None = None,
    ) -> Outgoing:
        env = envelope_dict(
            tenant_id=tenant_id,
            type=type_,
            payload=payload,
            producer=PRODUCER,
            run_id=run_id,
            experiment_id=experiment_id,
            event_id=event_id,
        )
        value = signed_bytes(env, self._key.key_id, self._signing_key)
        return Outgoing((run_id or experiment_id or event_id).encode(), value, event_id)

    def anomaly(
        self,
        tenant_id: str,
        experiment_id: str,
        run_id: str,
        key: str,
        kind: str,
        step: int,
        severity: float,
        evidence: dict[str, Any],
    ) -> Outgoing:
        """An analysis.anomaly_detected event: one finding of one series at one step."""
        event_id = derived_id("anomaly", tenant_id, run_id, key, kind, str(step))
        payload = {
            "key": key,
            "step": int(step),
            "kind": kind,
            "severity": float(min(1.0, max(0.0, severity))),
            "evidence": json_ready(evidence),
        }
        return self._signed(
            tenant_id,
            EventType.ANOMALY_DETECTED,
            payload,
            event_id,
            run_id=run_id,
            experiment_id=experiment_id,
        )

    def attribution_request(
        self, tenant_id: str, experiment_id: str, payload: dict[str, Any], cause: str
    ) -> Outgoing:
        """An analysis.attribution_requested event started by a finding (`cause`: its event id)."""
        event_id = derived_id("attribution-request", tenant_id, cause)
        body = {**payload, "attribution_id": event_id}
        return self._signed(
            tenant_id, EventType.ATTRIBUTION_REQUESTED, body, event_id, experiment_id=experiment_id
        )

    def attribution_result(
        self,
        tenant_id: str,
        experiment_id: str,
        attribution_id: str,
        metric: str,
        result: dict[str, Any] | None,
        error: str | None,
    ) -> Outgoing:
        """An analysis.attribution_computed event: the report, or why there is none."""
        event_id = derived_id("attribution-result", tenant_id, attribution_id)
        report = json_ready(result or {})
        payload = {
            "attribution_id": attribution_id,
            "metric": metric,
            "status": "failed" if error is not None else "done",
            "factors": report.get("factors", []),
            "result": report,
            "error": error,
        }
        return self._signed(
            tenant_id, EventType.ATTRIBUTION_COMPUTED, payload, event_id, experiment_id=experiment_id
        )
