"""Keys, event signatures, roles and the policy snapshot (runledger.auth), without services."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import numpy as np
import orjson
import pytest

from runledger.auth import signing
from runledger.auth.keys import InvalidKey, from_parts, generate_key, parse_key, secret_matches
from runledger.auth.model import (
    Action,
    AuthSnapshot,
    Grant,
    KeyRecord,
    Role,
    Share,
    TaggingPolicy,
    TenantStatus,
)
from runledger.auth.rbac import Authorizer
from runledger.events.codec import envelope_dict, metric_columns, producer
from runledger.events.models import EventType

R, W, A = Action.READ, Action.WRITE, Action.ADMIN


def test_key_round_trips_and_hides_its_secret() -> None:
    key = generate_key()
    assert parse_key(key.token) == key
    assert from_parts(key.key_id, key.secret) == key
    assert from_parts(f"rlk_{key.key_id}", key.secret) == key  # basic auth with the prefixed id
    assert key.secret not in repr(key)
    assert len(key.secret) >= 43 and generate_key() != key


@pytest.mark.parametrize(
    "token", ["", "rlk_", "rlk_abc_secret", "xyz_0123456789abcdef_" + "a" * 43, "rlk_0123456789abcdef_short"]
)
def test_malformed_keys_are_refused(token: str) -> None:
    with pytest.raises(InvalidKey):
        parse_key(token)


def test_stored_derivations_are_distinct_and_check_the_secret() -> None:
    key = generate_key()
    assert key.secret_hash != key.signing_key
    assert key.secret.encode() not in key.secret_hash + key.signing_key
    assert secret_matches(key.secret, key.secret_hash)
    assert not secret_matches(generate_key().secret, key.secret_hash)


def _metrics_envelope() -> dict[str, object]:
    payload = metric_columns(
        ["loss"],
        np.zeros(3, np.int32),
        np.array([0.5, np.nan, 1e300]),
        np.arange(3, dtype=np.int64),
        np.arange(3, dtype=np.int64),
    )
    return envelope_dict(
        tenant_id="t1",
        type=EventType.METRICS_LOGGED,
        payload=payload,
        producer=producer("tests"),
        run_id="r1",
        experiment_id="e1",
    )


def test_signature_survives_re_encoding_but_not_tampering() -> None:
    key = generate_key()
    envelope = signing.sign(_metrics_envelope(), key.key_id, key.signing_key)
    # What the projector sees: the bytes parsed back, possibly re-encoded with another key order.
    received = orjson.loads(json.dumps(json.loads(orjson.dumps(envelope)), indent=2, sort_keys=False))
    assert signing.verify(received, key.signing_key)
    assert not signing.verify(received, generate_key().signing_key)
    for field, value in (("tenant_id", "t2"), ("run_id", "r2"), ("key_id", "0" * 16)):
        assert not signing.verify({**received, field: value}, key.signing_key), field
    tampered = {**received, "payload": {**received["payload"], "keys": ["acc"]}}
    assert not signing.verify(tampered, key.signing_key)
    assert not signing.verify({k: v for k, v in received.items() if k != "signature"}, key.signing_key)


def _snapshot(**overrides: object) -> AuthSnapshot:
    base: dict[str, object] = {
        "generation": 1,
        "tenants": {"a": TenantStatus.ACTIVE, "b": TenantStatus.ACTIVE},
        "grants": (
            Grant("a", "viewer", Role.VIEWER),
            Grant("a", "engineer", Role.ENGINEER),
            Grant("a", "narrow", Role.ENGINEER, "X"),
            Grant("a", "admin", Role.ADMIN),
            Grant("b", "b-admin", Role.ADMIN),
        ),
    }
    base.update(overrides)
    return AuthSnapshot(**base)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("principal", "tenant", "action", "experiment", "allowed"),
    [
        ("viewer", "a", R, None, True),
        ("viewer", "a", R, "X", True),
        ("viewer", "a", W, None, False),
        ("viewer", "a", W, "X", False),
        ("engineer", "a", W, None, True),
        ("engineer", "a", W, "Y", True),
        ("engineer", "a", A, None, False),
        ("engineer", "b", R, None, False),  # roles are per tenant (domain)
        ("narrow", "a", W, "X", True),
        ("narrow", "a", W, "Y", False),
        ("narrow", "a", R, "Y", False),
        ("narrow", "a", W, None, False),  # may not create experiments
        ("narrow", "a", R, None, True),  # may list (filtered to X)
        ("admin", "a", A, None, True),
        ("admin", "b", R, None, False),
        ("b-admin", "a", A, None, False),
        ("nobody", "a", R, None, False),  # deny by default
    ],
)
def test_role_decisions(
    principal: str, tenant: str, action: Action, experiment: str | None, allowed: bool
) -> None:
    assert Authorizer(_snapshot()).can(principal, tenant, action, experiment) is allowed


def test_narrowed_grants_limit_what_is_readable() -> None:
    authorizer = Authorizer(_snapshot())
    assert authorizer.readable_experiments("narrow", "a") == frozenset({"X"})
    assert authorizer.readable_experiments("viewer", "a") is None
    assert authorizer.readable_experiments("b-admin", "a") == frozenset()
    assert authorizer.may_act_in("narrow", "a", W)
    assert not authorizer.may_act_in("viewer", "a", W)


def test_a_new_snapshot_drops_cached_decisions() -> None:
    before = Authorizer(_snapshot())
    assert before.can("engineer", "a", W, "X")
    after = Authorizer(_snapshot(grants=(Grant("a", "engineer", Role.VIEWER),)))
    assert not after.can("engineer", "a", W, "X")
    assert after.can("engineer", "a", R, "X")


def test_usable_key_checks_revocation_expiry_principal_and_tenant() -> None:
    now = datetime.now(UTC)
    key = KeyRecord("k1", "a", "engineer", b"h", b"s")
    cases = {
        "ok": (_snapshot(keys={"k1": key}), True),
        "revoked": (
            _snapshot(keys={"k1": KeyRecord("k1", "a", "engineer", b"h", b"s", revoked=True)}),
            False,
        ),
        "expired": (
            _snapshot(keys={"k1": KeyRecord("k1", "a", "engineer", b"h", b"s", now - timedelta(seconds=1))}),
            False,
        ),
        "disabled": (_snapshot(keys={"k1": key}, disabled_principals=frozenset({"engineer"})), False),
        "suspended": (
            _snapshot(keys={"k1": key}, tenants={"a": TenantStatus.SUSPENDED, "b": TenantStatus.ACTIVE}),
            False,
        ),
    }
    for name, (snapshot, usable) in cases.items():
        assert (snapshot.usable_key("k1", now) is not None) is usable, name
    assert _snapshot().usable_key("missing", now) is None


def test_shares_and_tagging_policy() -> None:
    snapshot = _snapshot(shares=(Share("a", "X", "b"), Share("a", "Y", "c")))
    assert snapshot.shares_to("b") == {"X": "a"}
    assert snapshot.shares_to("a") == {}
    policy = TaggingPolicy({"project": (), "stage": ("dev", "prod")}, reject=True)
    assert policy.violations({"project": "p", "stage": "dev"}) == []
    assert policy.violations({"stage": "qa"}) == [
        "missing tag 'project'",
        "tag 'stage'='qa' is not one of ['dev', 'prod']",
    ]
