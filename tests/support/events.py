"""Building real, signed events for tests that write straight to the topic."""

from __future__ import annotations

from typing import Any

import numpy as np

from runledger.events.codec import envelope_dict, metric_columns, producer
from runledger.events.models import EventType
from tests.support.auth import Identity

_PRODUCER = producer("tests")


def event(
    identity: Identity,
    type: EventType,
    payload: dict[str, Any],
    *,
    run_id: str | None = None,
    experiment_id: str | None = None,
    tenant: str | None = None,
) -> bytes:
    """Any event, signed by `identity` (for its tenant unless `tenant` says otherwise)."""
    return identity.sign(
        envelope_dict(
            tenant_id=tenant or identity.tenant_id,
            type=type,
            run_id=run_id,
            experiment_id=experiment_id,
            producer=_PRODUCER,
            payload=payload,
        )
    )


def run_started(
    identity: Identity,
    experiment_id: str,
    run_id: str,
    name: str = "run",
    *,
    tags: dict[str, str] | None = None,
    tenant: str | None = None,
) -> bytes:
    """A RunStarted event."""
    payload = {"name": name, "start_time": 1_700_000_000_000, "tags": tags or {}}
    return event(
        identity, EventType.RUN_STARTED, payload, run_id=run_id, experiment_id=experiment_id, tenant=tenant
    )


def params_logged(identity: Identity, experiment_id: str, run_id: str, params: dict[str, str]) -> bytes:
    """A ParamsLogged event."""
    return event(
        identity, EventType.PARAMS_LOGGED, {"params": params}, run_id=run_id, experiment_id=experiment_id
    )


def metrics_batch(
    identity: Identity,
    experiment_id: str,
    run_id: str,
    keys: list[str],
    first_step: int,
    steps: int,
    seed: int,
    *,
    tenant: str | None = None,
) -> tuple[bytes, dict[str, Any]]:
    """`steps` steps of every key as one columnar event, and the values it carries."""
    rng = np.random.default_rng(seed)
    n = steps * len(keys)
    key_index = np.tile(np.arange(len(keys), dtype=np.int32), steps)
    step_col = np.repeat(np.arange(first_step, first_step + steps, dtype=np.int64), len(keys))
    values = rng.random(n)
    ts = 1_700_000_000_000 + step_col
    raw = event(
        identity,
        EventType.METRICS_LOGGED,
        metric_columns(keys, key_index, values, step_col, ts),
        run_id=run_id,
        experiment_id=experiment_id,
        tenant=tenant,
    )
    return raw, {"values": values, "steps": step_col, "key_index": key_index}
