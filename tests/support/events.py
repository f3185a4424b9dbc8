"""Building real events for tests that write straight to the topic."""

from __future__ import annotations

from typing import Any

import numpy as np

from runledger.events.codec import encode, envelope_dict, metric_columns, producer
from runledger.events.models import EventType

_PRODUCER = producer("tests")


def run_started(tenant: str, experiment_id: str, run_id: str, name: str = "run") -> bytes:
    """A RunStarted event."""
    return encode(
        envelope_dict(
            tenant_id=tenant,
            type=EventType.RUN_STARTED,
            run_id=run_id,
            experiment_id=experiment_id,
            producer=_PRODUCER,
            payload={"name": name, "start_time": 1_700_000_000_000},
        )
    )


def metrics_batch(
    tenant: str, experiment_id: str, run_id: str, keys: list[str], first_step: int, steps: int, seed: int
) -> tuple[bytes, dict[str, Any]]:
    """`steps` steps of every key as one columnar event, and the values it carries."""
    rng = np.random.default_rng(seed)
    n = steps * len(keys)
    key_index = np.tile(np.arange(len(keys), dtype=np.int32), steps)
    step_col = np.repeat(np.arange(first_step, first_step + steps, dtype=np.int64), len(keys))
    values = rng.random(n)
    ts = 1_700_000_000_000 + step_col
    raw = encode(
        envelope_dict(
            tenant_id=tenant,
            type=EventType.METRICS_LOGGED,
            run_id=run_id,
            experiment_id=experiment_id,
            producer=_PRODUCER,
            payload=metric_columns(keys, key_index, values, step_col, ts),
        )
    )
    return raw, {"values": values, "steps": step_col, "key_index": key_index}
