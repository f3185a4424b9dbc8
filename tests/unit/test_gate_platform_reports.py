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

PLATFORM_KEY, TENANT_KEY, ACME_ENGINEER, ACME_ADMIN = (generate_key() for _ in range(4))


def _record(key: ApiKey, tenant: str, principal: str) -> KeyRecord:
    return KeyRecord(key.key_id, tenant, principal, secret_hash(key.secret), key.signing_key)


SNAPSHOT = AuthSnapshot(
    generation=1,
    tenants={"platform": TenantStatus.ACTIVE, "acme": TenantStatus.ACTIVE, "other": TenantStatus.ACTIVE},
    keys={
        PLATFORM_KEY.key_id: _record(PLATFORM_KEY, "platform", "root"),
        TENANT_KEY.key_id: _record(TENANT_KEY, "other", "eng"),
        ACME_ENGINEER.key_id: _record(ACME_ENGINEER, "acme", "acme-eng"),
        ACME_ADMIN.key_id: _record(ACME_ADMIN, "acme", "acme-admin"),
    },
    superadmins=frozenset({"root"}),
    grants=(
        Grant("other", "eng", Role.ENGINEER),
        Grant("acme", "acme-eng", Role.ENGINEER),
        Grant("acme", "acme-admin", Role.ADMIN),
    ),
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


POLICY = {"metric_points_days": 30, "artifacts_days": 30, "keep_production_models": True}
EXPIRED = {
    "before": 1_700_000_000_000,
    "artifacts": [{"path": "a.txt", "digest": "sha256:" + "0" * 64, "size": 1}],
}


def test_policies_and_deletion_records_need_a_tenant_admin() -> None:
    policy = _event(ACME_ENGINEER, EventType.RETENTION_POLICY_SET, POLICY)
    verdict = GATE.batch().admit(decode(policy), 0)
    assert isinstance(verdict, Rejected) and "needs a tenant admin" in verdict.reason
    assert isinstance(
        GATE.batch().admit(decode(_event(ACME_ADMIN, EventType.RETENTION_POLICY_SET, POLICY)), 0), Admitted
    )
    # An engineer could otherwise delete artifact rows and orphan their blobs.
    expired = _event(ACME_ENGINEER, EventType.ARTIFACTS_EXPIRED, EXPIRED)
    verdict = GATE.batch().admit(decode(expired), 0)
    assert isinstance(verdict, Rejected) and "needs a tenant admin" in verdict.reason
