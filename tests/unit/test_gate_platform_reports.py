"""The projector's gate and the analysis service's platform key: a superadmin key may report
analysis.* events (findings) for any tenant, and nothing else; a tenant's key may not."""

from __future__ import annotations

from typing import Any

from runledger.auth import signing
from runledger.auth.keys import ApiKey, generate_key, secret_hash
from runledger.auth.model import AuthSnapshot, Grant, KeyRecord, Role, TenantStatus
from runledger.auth.rbac import Authorizer
from runledger.events.codec import decode, envelope_dict, producer
from runledger.events.models import EventType
from services.ingest.gate import Admitted, Gate, Rejected

PLATFORM_KEY, TENANT_KEY = generate_key(), generate_key()


def _record(key: ApiKey, tenant: str, principal: str) -> KeyRecord:
    return KeyRecord(key.key_id, tenant, principal, secret_hash(key.secret), key.signing_key)


SNAPSHOT = AuthSnapshot(
    generation=1,
    tenants={"platform": TenantStatus.ACTIVE, "acme": TenantStatus.ACTIVE, "other": TenantStatus.ACTIVE},
    keys={
        PLATFORM_KEY.key_id: _record(PLATFORM_KEY, "platform", "root"),
        TENANT_KEY.key_id: _record(TENANT_KEY, "other", "eng"),
    },
    superadmins=frozenset({"root"}),
    grants=(Grant("other", "eng", Role.ENGINEER),),
)
GATE = Gate(lambda: Authorizer(SNAPSHOT))


def _event(key: ApiKey, type_: EventType, payload: dict[str, Any]) -> bytes:
    env = envelope_dict(
        tenant_id="acme", type=type_, payload=payload, producer=producer("t"), run_id="r1", experiment_id="e1"
    )
    return signing.signed_bytes(env, key.key_id, key.signing_key)


ANOMALY = {"key": "loss", "step": 3, "kind": "spike", "severity": 0.5, "evidence": {}}
TAGS = {"tags": {"a": "b"}}


def test_a_superadmin_key_reports_findings_for_any_tenant() -> None:
    verdict = GATE.batch().admit(decode(_event(PLATFORM_KEY, EventType.ANOMALY_DETECTED, ANOMALY)), 0)
    assert isinstance(verdict, Admitted) and not verdict.narrowed


def test_a_superadmin_key_cannot_write_another_tenants_runs() -> None:
    verdict = GATE.batch().admit(decode(_event(PLATFORM_KEY, EventType.TAGS_SET, TAGS)), 0)
    assert isinstance(verdict, Rejected) and "tenant mismatch" in verdict.reason


def test_a_tenant_key_cannot_report_findings_for_another_tenant() -> None:
    verdict = GATE.batch().admit(decode(_event(TENANT_KEY, EventType.ANOMALY_DETECTED, ANOMALY)), 0)
    assert isinstance(verdict, Rejected) and "tenant mismatch" in verdict.reason


def test_a_forged_platform_report_is_refused() -> None:
    raw = _event(PLATFORM_KEY, EventType.ANOMALY_DETECTED, ANOMALY).replace(b'"spike"', b'"plateau"')
    verdict = GATE.batch().admit(decode(raw), 0)
    assert isinstance(verdict, Rejected) and verdict.reason == "signature mismatch"
