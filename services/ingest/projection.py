"""What a batch of events becomes in the stores, computed without touching them.

`build_projection` turns validated events into columnar ClickHouse rows (metric
points and the raw archive) and an ordered list of metadata operations for
Postgres. It is pure: the projector and `runledger replay` share it, and unit
tests run it without any service.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

import numpy as np
import numpy.typing as npt
import pyarrow as pa

from runledger.events.codec import DecodedEvent, metric_arrays
from runledger.events.metric_columns import MetricColumns
from runledger.events.models import EventType

_TS = pa.timestamp("ms", tz="UTC")


@dataclass(frozen=True, slots=True)
class ArchivedEvent:
    """An event with where it came from, for the archive and replay ordering."""

    event: DecodedEvent
    source: str
    offset: int


@dataclass(frozen=True, slots=True)
class LatestMetrics:
    """Per (run, key): the point that is latest by (step, timestamp, value) in this batch."""

    tenant_ids: list[str]
    run_ids: list[str]
    keys: list[str]
    values: npt.NDArray[np.float64]
    steps: npt.NDArray[np.int64]
    timestamps: npt.NDArray[np.int64]
    first_steps: npt.NDArray[np.int64]


@dataclass
class Projection:
    """Everything one batch writes: ClickHouse tables and Postgres operations in event order."""

    points: pa.Table | None
    archive: pa.Table | None
    latest: LatestMetrics | None
    metadata_events: list[DecodedEvent] = field(default_factory=list)
    tenants: set[str] = field(default_factory=set)

    @property
    def point_count(self) -> int:
        """Metric points in this batch."""
        return 0 if self.points is None else self.points.num_rows


def _sorted_dictionary(
    values: list[str], indices: npt.NDArray[np.int32]
) -> tuple[list[str], npt.NDArray[np.int32]]:
    """Re-number so that index order is string order (then sorting by index sorts by string)."""
    order = sorted(range(len(values)), key=values.__getitem__)
    rank = np.empty(len(values), dtype=np.int32)
    rank[order] = np.arange(len(values), dtype=np.int32)
    return [values[i] for i in order], rank[indices]


def _dictionary(values: list[str], indices: npt.NDArray[np.int32]) -> pa.DictionaryArray:
    return pa.DictionaryArray.from_arrays(pa.array(indices, pa.int32()), pa.array(values, pa.string()))


class _Interner:
    """Maps strings to small ints so per-point columns are int arrays, not Python lists."""

    def __init__(self) -> None:
        self.index: dict[str, int] = {}
        self.values: list[str] = []

    def __call__(self, value: str) -> int:
        found = self.index.get(value)
        if found is None:
            found = self.index[value] = len(self.values)
            self.values.append(value)
        return found


def _latest(
    series: npt.NDArray[np.int64],
    n_series: int,
    steps: npt.NDArray[np.int64],
    timestamps: npt.NDArray[np.int64],
    values: npt.NDArray[np.float64],
) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.int64]]:
    """Index of the latest point of each series present (max by step, timestamp, value),
    and each of those series' first step."""
    max_step = np.full(n_series, np.iinfo(np.int64).min, dtype=np.int64)
    np.maximum.at(max_step, series, steps)
    min_step = np.full(n_series, np.iinfo(np.int64).max, dtype=np.int64)
    np.minimum.at(min_step, series, steps)
    # Only points at their series' last step can win; usually one per series.
    candidates = np.flatnonzero(steps == max_step[series])
    order = candidates[np.lexsort((values[candidates], timestamps[candidates], series[candidates]))]
    ends = np.append(series[order][1:] != series[order][:-1], True)
    winners: npt.NDArray[np.intp] = order[ends]
    return winners, min_step[series[winners]]


def _metric_points(events: list[DecodedEvent]) -> tuple[pa.Table, LatestMetrics] | None:
    tenants, experiments, runs, keys = _Interner(), _Interner(), _Interner(), _Interner()
    tenant_cols, exp_cols, run_cols, key_cols = [], [], [], []
    value_cols, step_cols, ts_cols = [], [], []
    for decoded in events:
        env, payload = decoded.envelope, decoded.payload
        assert isinstance(payload, MetricColumns) and env.run_id and env.experiment_id
        key_index, values, steps, timestamps = metric_arrays(payload)
        n = len(values)
        remap = np.fromiter((keys(k) for k in payload.keys), dtype=np.int32, count=len(payload.keys))
        key_cols.append(remap[key_index])
        tenant_cols.append(np.full(n, tenants(env.tenant_id), dtype=np.int32))
        exp_cols.append(np.full(n, experiments(env.experiment_id), dtype=np.int32))
        run_cols.append(np.full(n, runs(env.run_id), dtype=np.int32))
        value_cols.append(values)
        step_cols.append(steps)
        ts_cols.append(timestamps)
    if not value_cols:
        return None
    tenant_names, tenant_idx = _sorted_dictionary(tenants.values, np.concatenate(tenant_cols))
    run_names, run_idx = _sorted_dictionary(runs.values, np.concatenate(run_cols))
    key_names, key_idx = _sorted_dictionary(keys.values, np.concatenate(key_cols))
    exp_idx = np.concatenate(exp_cols)
    values, steps, timestamps = np.concatenate(value_cols), np.concatenate(step_cols), np.concatenate(ts_cols)
    # Dense series id in (tenant, run, key) string order: sorting points by it and the
    # step hands ClickHouse rows already in its ORDER BY, which makes the insert ~30% cheaper.
    n_series = len(tenant_names) * len(run_names) * len(key_names)
    series = (tenant_idx.astype(np.int64) * len(run_names) + run_idx) * len(key_names) + key_idx
    order = np.lexsort((steps, series))
    table = pa.table(
        {
            "tenant_id": _dictionary(tenant_names, tenant_idx[order]),
            "experiment_id": _dictionary(experiments.values, exp_idx[order]),
            "run_id": _dictionary(run_names, run_idx[order]),
            "key": _dictionary(key_names, key_idx[order]),
            "step": pa.array(steps[order], pa.int64()),
            "timestamp": pa.array(timestamps[order], pa.int64()).cast(_TS),
            "value": pa.array(values[order], pa.float64()),
        }
    )
    last, first_steps = _latest(series, n_series, steps, timestamps, values)
    latest = LatestMetrics(
        tenant_ids=[tenant_names[i] for i in tenant_idx[last].tolist()],
        run_ids=[run_names[i] for i in run_idx[last].tolist()],
        keys=[key_names[i] for i in key_idx[last].tolist()],
        values=values[last],
        steps=steps[last],
        timestamps=timestamps[last],
        first_steps=first_steps,
    )
    return table, latest


def _archive(events: list[ArchivedEvent], ingested_at: datetime) -> pa.Table:
    envs = [a.event.envelope for a in events]
    return pa.table(
        {
            "tenant_id": pa.array([e.tenant_id for e in envs], pa.string()),
            "event_id": pa.array([e.event_id for e in envs], pa.string()),
            "type": pa.array([e.type.value for e in envs], pa.string()),
            "schema_version": pa.array([e.schema_version for e in envs], pa.uint16()),
            "occurred_at": pa.array([e.occurred_at for e in envs], _TS),
            "experiment_id": pa.array([e.experiment_id or "" for e in envs], pa.string()),
            "run_id": pa.array([e.run_id or "" for e in envs], pa.string()),
            "ingested_at": pa.array([ingested_at] * len(envs), _TS),
            "source": pa.array([a.source for a in events], pa.string()),
            "offset": pa.array([a.offset for a in events], pa.uint64()),
            # The raw bytes as they came (valid UTF-8: they parsed as JSON); a ClickHouse
            # String takes binary, so no decode/encode round trip per event.
            "body": pa.array([a.event.raw for a in events], pa.binary()),
        }
    )


def build_projection(
    events: list[ArchivedEvent], ingested_at: datetime | None, with_archive: bool = True
) -> Projection:
    """The stores' view of these events (already deduplicated, in topic order)."""
    metric_events = [a.event for a in events if a.event.envelope.type is EventType.METRICS_LOGGED]
    metrics = _metric_points(metric_events)
    archive = _archive(events, ingested_at) if with_archive and events and ingested_at else None
    return Projection(
        points=metrics[0] if metrics else None,
        archive=archive,
        latest=metrics[1] if metrics else None,
        metadata_events=[a.event for a in events if a.event.envelope.type is not EventType.METRICS_LOGGED],
        tenants={a.event.envelope.tenant_id for a in events},
    )
