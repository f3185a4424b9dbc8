"""The detectors of every series the analysis service watches, cached, tuned and persisted.

Points of one batch are grouped per series with numpy (one argsort, no per-point Python),
each series' detector takes its new points at once, and so does the cohort of its
experiment and metric (outlier runs). States live in memory and in Postgres: the bank
remembers which it changed since the last checkpoint (`take_dirty`), and only detectors
whose state is stored may leave memory (`evict`, least recently used first).
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from runledger.analysis.cohort import CohortDetector
from runledger.analysis.detection import Anomaly, DetectorConfig, SeriesDetector, default_config
from runledger.analysis.tuning import Tuning, merged_overrides
from services.analysis.store import COHORT, SERIES, StateKey, StateRow

log = logging.getLogger(__name__)

# state key -> member -> state (a series has the single member '')
StateLoader = Callable[[Iterable[StateKey]], Awaitable[dict[StateKey, dict[str, dict[str, Any]]]]]
# (tenant, run) pairs -> the metric keys whose series states are stored for each
KeysLoader = Callable[[list[tuple[str, str]]], Awaitable[dict[tuple[str, str], list[str]]]]


@dataclass(frozen=True, slots=True)
class Finding:
    """An anomaly of one run's metric, ready to be reported."""

    tenant_id: str
    experiment_id: str
    run_id: str
    key: str
    anomaly: Anomaly


@dataclass(slots=True)
class _Points:
    """New points of one series, gathered over the events of a batch in arrival order."""

    steps: list[npt.NDArray[np.int64]] = field(default_factory=list)
    values: list[npt.NDArray[np.float64]] = field(default_factory=list)


@dataclass(slots=True)
class BatchInput:
    """What one consumed batch brings to the detectors."""

    # (tenant, experiment, run, key) -> points
    points: dict[tuple[str, str, str, str], _Points] = field(default_factory=dict)
    # (tenant, experiment, run) of runs that reached a terminal status
    finished: list[tuple[str, str, str]] = field(default_factory=list)

    def add_metrics(
        self,
        tenant_id: str,
        experiment_id: str,
        run_id: str,
        keys: list[str],
        key_index: npt.NDArray[np.int32],
        steps: npt.NDArray[np.int64],
        values: npt.NDArray[np.float64],
    ) -> None:
        """The points of one metrics event, split per key (stable: arrival order kept)."""
        if len(keys) == 1:
            self._append((tenant_id, experiment_id, run_id, keys[0]), steps, values)
            return
        order = np.argsort(key_index, kind="stable")
        sorted_index = key_index[order]
        bounds = np.flatnonzero(np.diff(sorted_index)) + 1
        for chunk in np.split(order, bounds):
            if len(chunk):
                key = keys[int(key_index[chunk[0]])]
                self._append((tenant_id, experiment_id, run_id, key), steps[chunk], values[chunk])

    def _append(
        self,
        series: tuple[str, str, str, str],
        steps: npt.NDArray[np.int64],
        values: npt.NDArray[np.float64],
    ) -> None:
        points = self.points.get(series)
        if points is None:
            points = self.points[series] = _Points()
        points.steps.append(steps)
        points.values.append(values)


@dataclass(slots=True)
class _Entry:
    detector: SeriesDetector | CohortDetector
    config: DetectorConfig


class DetectorBank:
    """Detectors by StateKey, with their tenants' tuning applied."""

    def __init__(self, load: StateLoader, stored_keys: KeysLoader, max_cached: int) -> None:
        self._load = load
        self._stored_keys = stored_keys
        self._max_cached = max_cached
        self._cache: OrderedDict[StateKey, _Entry] = OrderedDict()
        self._dirty: set[StateKey] = set()
        # Metric keys of the runs seen since they started here (their cohorts judge them at the end).
        self._run_keys: dict[tuple[str, str], set[str]] = {}
        # Changed cohort members of detectors rebuilt for a new configuration, not stored yet.
        self._stashed: list[StateRow] = []
        self._tuning: dict[str, list[Tuning]] = {}
        self._configs: dict[tuple[str, str, str], DetectorConfig] = {}

    def set_tuning(self, tuning: Mapping[str, list[Tuning]]) -> None:
        """New settings of every tenant; detectors pick them up when next touched."""
        self._tuning = dict(tuning)
        self._configs.clear()

    def clear(self) -> None:
        """Forget every cached state (after a failure, Postgres is the truth)."""
        self._cache.clear()
        self._dirty.clear()
        self._stashed = []
        self._run_keys.clear()

    @property
    def cached_count(self) -> int:
        """Detector states held in memory."""
        return len(self._cache)

    @property
    def dirty_count(self) -> int:
        """Detectors changed since the last checkpoint."""
        return len(self._dirty)

    def take_dirty(self) -> list[StateRow]:
        """What changed since the last call: whole series states, and the changed (or forgotten)
        members of cohorts; to be stored with the offsets they match."""
        rows = self._stashed
        self._stashed = []
        for key in self._dirty:
            entry = self._cache.get(key)
            if entry is None:
                continue
            detector = entry.detector
            if isinstance(detector, SeriesDetector):
                rows.append(StateRow.of(key, "", detector.to_state()))
            else:
                rows.extend(
                    StateRow.of(key, run, state) for run, state in detector.take_dirty_members().items()
                )
        self._dirty.clear()
        return rows

    def evict(self) -> None:
        """Drop the least recently used stored detectors beyond the cap (after a checkpoint)."""
        excess = len(self._cache) - self._max_cached
        if excess <= 0:
            return
        for key in list(self._cache):
            if excess <= 0:
                break
            if key not in self._dirty:
                del self._cache[key]
                excess -= 1

    def config(self, tenant_id: str, experiment_id: str, key: str) -> DetectorConfig:
        """The tuned configuration of one series (invalid stored overrides fall back to defaults)."""
        cache_key = (tenant_id, experiment_id, key)
        config = self._configs.get(cache_key)
        if config is None:
            overrides = merged_overrides(self._tuning.get(tenant_id, ()), experiment_id, key)
            base = default_config(key)
            try:
                config = base.with_overrides(overrides) if overrides else base
            except ValueError as exc:
                log.warning("tenant %s: ignoring invalid detector settings for %s: %s", tenant_id, key, exc)
                config = base
            if len(self._configs) > 100_000:
                self._configs.clear()
            self._configs[cache_key] = config
        return config

    async def analyse(self, batch: BatchInput) -> list[Finding]:
        """Feed a batch to its detectors: the findings (their states are marked to be stored)."""
        wanted: dict[StateKey, tuple[str, str]] = {}  # state key -> (experiment, metric key)
        for tenant, experiment, run, key in batch.points:
            wanted[StateKey(tenant, SERIES, run, key)] = (experiment, key)
            wanted[StateKey(tenant, COHORT, experiment, key)] = (experiment, key)
        finished_keys = await self._finished_series(batch)
        for (tenant, experiment, _run), keys in finished_keys.items():
            for key in keys:
                wanted[StateKey(tenant, COHORT, experiment, key)] = (experiment, key)
        await self._ensure(wanted)

        findings: list[Finding] = []
        for (tenant, experiment, run, key), points in batch.points.items():
            steps = np.concatenate(points.steps) if len(points.steps) > 1 else points.steps[0]
            values = np.concatenate(points.values) if len(points.values) > 1 else points.values[0]
            series_key = StateKey(tenant, SERIES, run, key)
            series = self._cache[series_key].detector
            assert isinstance(series, SeriesDetector)
            findings.extend(Finding(tenant, experiment, run, key, a) for a in series.update(steps, values))
            cohort_key = StateKey(tenant, COHORT, experiment, key)
            cohort = self._cache[cohort_key].detector
            assert isinstance(cohort, CohortDetector)
            for flagged, anomaly in cohort.update(run, steps, values):
                findings.append(Finding(tenant, experiment, flagged, key, anomaly))
            self._dirty.add(series_key)
            self._dirty.add(cohort_key)
            self._run_keys.setdefault((tenant, run), set()).add(key)
        for (tenant, experiment, run), keys in finished_keys.items():
            for key in keys:
                cohort_key = StateKey(tenant, COHORT, experiment, key)
                cohort = self._cache[cohort_key].detector
                assert isinstance(cohort, CohortDetector)
                for flagged, anomaly in cohort.finish(run):
                    findings.append(Finding(tenant, experiment, flagged, key, anomaly))
                self._dirty.add(cohort_key)
        # Runs that never report an end would grow this forever; the oldest go (their stored
        # series states name their keys at the end as well).
        if len(self._run_keys) > self._max_cached:
            for stale in list(self._run_keys)[: len(self._run_keys) - self._max_cached]:
                del self._run_keys[stale]
        return findings

    async def _finished_series(self, batch: BatchInput) -> dict[tuple[str, str, str], list[str]]:
        """The metric keys each finished run has logged: in this batch, cached, or stored."""
        if not batch.finished:
            return {}
        stored = await self._stored_keys([(tenant, run) for tenant, _, run in batch.finished])
        in_batch: dict[tuple[str, str], set[str]] = {}
        for tenant, _, run, key in batch.points:
            in_batch.setdefault((tenant, run), set()).add(key)
        by_run: dict[tuple[str, str, str], list[str]] = {}
        for tenant, experiment, run in batch.finished:
            keys = set(stored.get((tenant, run), ())) | in_batch.get((tenant, run), set())
            keys |= self._run_keys.pop((tenant, run), set())
            by_run[(tenant, experiment, run)] = sorted(keys)
        return by_run

    async def _ensure(self, wanted: Mapping[StateKey, tuple[str, str]]) -> None:
        """Make every wanted detector present and tuned as its tenant says now."""
        missing = [k for k in wanted if k not in self._cache]
        stored = await self._load(missing) if missing else {}
        for state_key, (experiment, key) in wanted.items():
            config = self.config(state_key.tenant_id, experiment, key)
            entry = self._cache.get(state_key)
            if entry is None:
                entry = _Entry(self._build(state_key, config, stored.get(state_key) or {}), config)
                self._cache[state_key] = entry
            elif entry.config is not config and entry.config != config:  # `is`: cached, cheap
                entry = _Entry(self._rebuild(state_key, entry.detector, config), config)
                self._cache[state_key] = entry
            self._cache.move_to_end(state_key)

    def _rebuild(
        self, state_key: StateKey, detector: SeriesDetector | CohortDetector, config: DetectorConfig
    ) -> SeriesDetector | CohortDetector:
        """The same detector state under a new configuration (a tenant changed its settings)."""
        if isinstance(detector, SeriesDetector):
            return self._build(state_key, config, {"": detector.to_state()})
        # Changes not stored yet would be lost with the old object: keep them for take_dirty.
        self._stashed.extend(
            StateRow.of(state_key, run, st) for run, st in detector.take_dirty_members().items()
        )
        return self._build(state_key, config, detector.members())

    @staticmethod
    def _build(
        state_key: StateKey, config: DetectorConfig, members: dict[str, dict[str, Any]]
    ) -> SeriesDetector | CohortDetector:
        """A detector from its stored members (none: a new series or cohort)."""
        try:
            if state_key.scope == SERIES:
                state = members.get("")
                if state is None:
                    return SeriesDetector(state_key.key, config)
                return SeriesDetector.from_state(state_key.key, config, state)
            return CohortDetector.from_members(state_key.key, config, members)
        except (KeyError, ValueError, TypeError) as exc:  # a state of an older detector version
            log.warning("discarding unreadable detector state of %s: %s", state_key, exc)
            if state_key.scope == SERIES:
                return SeriesDetector(state_key.key, config)
            return CohortDetector(state_key.key, config)
