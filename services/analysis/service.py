"""The analysis service: its own consumer of the events topic, detectors per series, findings out.

One batch at a time:
1. poll records of every partition; keep the events whose signature, key and permission
   check out (the projector's gate, checks 1-3: a forged event must not make a finding);
2. feed metric points to the series and cohort detectors, terminal run statuses to the
   cohorts (final-value outliers);
3. publish the findings (analysis.anomaly_detected, ids derived from series, kind and
   step) and, for findings across runs (an outlier run, a shift of the runs' final values),
   an attribution request; wait for Kafka's acknowledgement;
4. every RUNLEDGER_ANALYSIS_CHECKPOINT_INTERVAL_S (and on a clean stop), store the
   detector states changed since the last checkpoint and the partitions' offsets in one
   transaction (not per batch: at fleet scale most batches touch thousands of series).
A crash anywhere repeats at most what came after the last checkpoint, from the states
that match its offsets: the same findings with the same ids, which the projector applies once.

It takes every partition itself (no consumer group rebalances): cohorts span partitions.
Several instances share the work by experiment (RUNLEDGER_ANALYSIS_SHARDS, one shard
each; runledger.analysis.sharding), each storing its offsets under its own group name.
Attribution jobs and webhook deliveries (services/analysis/webhooks.py) run beside the
consumer loop in the same process.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Iterable
from typing import Any

import asyncpg
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from runledger.analysis.sharding import checkpoint_group, resume_offsets, shard_of
from runledger.analysis.tuning import Tuning
from runledger.analysis.webhook_policy import DestinationPolicy
from runledger.auth.keys import ApiKey
from runledger.auth.sealing import load_box
from runledger.config import Settings
from runledger.events.codec import InvalidEvent, decode
from runledger.events.metric_columns import MetricColumns
from runledger.events.models import PLATFORM_REPORTED, EventType, RunStatus, StatusChangedPayload
from runledger.incarnation import carried_over
from runledger.stores.postgres import directory
from services import observability as metrics
from services.analysis import store
from services.analysis.attribution_jobs import AttributionWorker
from services.analysis.detectors import BatchInput, DetectorBank, Finding
from services.analysis.reports import Outgoing, Reporter
from services.analysis.store import StateKey
from services.analysis.webhooks import WebhookDispatcher
from services.ingest.gate import Gate, Rejected
from services.ingest.incarnation import metadata_settled
from services.ingest.offset_continuity import OffsetAnomaly, OffsetContinuity, screen_polled
from services.ingest.projector import BrokerRestarted, consumer_config

log = logging.getLogger(__name__)

_POLL_RECORDS = 5000
# The embedded broker (tansu 0.6.0, memory://) lists every batch a partition ever stored on each
# fetch that finds data, and holds each fetch for this long, so each fetch costs it CPU that grows
# with the log (bench/broker_fetch.py). Findings are due within seconds, not milliseconds: a quiet
# stack's analysis consumer fetches 4 times a second, not 20 (under load it fetches as often as it
# finishes a batch either way); a Kafka broker answers as soon as data is there.
_FETCH_WAIT_MS = 250
# A checkpoint is also taken once this many detectors changed (bounds the memory that
# cannot be evicted and the work a crash repeats).
_MAX_DIRTY = 500_000
_TERMINAL = frozenset({RunStatus.FINISHED, RunStatus.FAILED, RunStatus.KILLED})
# Findings published this recently are published again when the broker comes back as a new
# (empty) incarnation: the old one may have lost them before the projector read them, and
# the detectors, restored from a checkpoint past their points, would not find them again.
_REPUBLISH_WINDOW_S = 300.0
_REPUBLISH_MAX = 100_000


class AnalysisService:
    """Runs until `stop` is set; restarts its consumer when the broker restarts."""

    def __init__(self, settings: Settings, pool: asyncpg.Pool, key: ApiKey) -> None:
        self._settings = settings
        self._pool = pool
        self._reporter = Reporter(key)
        self.stop = asyncio.Event()
        self.heartbeat = 0.0
        self.analysed_points = 0
        self.published_findings = 0
        self._bank = DetectorBank(self._load_states, self._stored_keys, settings.analysis_max_series_cached)
        # Offsets analysed since the last checkpoint (partition -> last offset), and when that was.
        self._unsaved: dict[int, int] = {}
        self._checkpointed = time.monotonic()
        self._settings_version: tuple[int, Any] | None = None
        self._settings_checked = 0.0
        # (monotonic time, event) of recently published findings, and whether the broker
        # was replaced since they went out (then they go again: same ids, applied once).
        self._recent: deque[tuple[float, Outgoing]] = deque()
        self._republish = False
        # Published since the last checkpoint: stored with it (the outbox), so that a restarted
        # process can publish them again too.
        self._unsaved_outgoing: list[Outgoing] = []
        # The outbox an earlier process left (until this one's first consumer is placed).
        self._outbox: list[store.OutboxEntry] = []
        self._group = checkpoint_group(
            settings.analysis_group, settings.analysis_shard, settings.analysis_shards
        )
        # This shard's series exist (at 0) from the start, so rates and alerts see an idle shard.
        shard = str(settings.analysis_shard)
        self._points = metrics.ANALYSIS_POINTS.labels(shard=shard)
        self._batch_seconds = metrics.ANALYSIS_BATCH_SECONDS.labels(shard=shard)
        self._lag_seconds = metrics.ANALYSIS_LAG_SECONDS.labels(shard=shard)
        self._series_in_memory = metrics.ANALYSIS_SERIES_IN_MEMORY.labels(shard=shard)
        self._offset_anomalies = {
            kind: metrics.ANALYSIS_OFFSET_ANOMALIES.labels(shard=shard, kind=kind.value)
            for kind in OffsetAnomaly
        }

    async def run(self) -> None:
        """Consume, detect and publish until stopped; attribution jobs and webhooks beside."""
        s = self._settings
        producer = KafkaProducer(
            bootstrap_servers=s.kafka_bootstrap.split(","), acks="all", linger_ms=5, enable_idempotence=False
        )
        worker = AttributionWorker(s, self._pool, self._reporter, producer)
        side_tasks = [asyncio.create_task(worker.run(self.stop), name="attribution-worker")]
        dispatcher = _webhook_dispatcher(self._pool, s)
        side_tasks.append(asyncio.create_task(dispatcher.run(self.stop), name="webhook-dispatcher"))
        auth = await directory.watch(self._pool, s.auth_poll_interval_s)
        await self._load_outbox()
        try:
            while not self.stop.is_set():
                try:
                    await self._consume(producer, Gate(lambda: auth.authorizer, auth.refresh))
                except BrokerRestarted as exc:
                    log.warning("broker restarted (%s); reloading positions", exc)
                    self._bank.clear()
                    self._republish = True
                except Exception:
                    log.exception("analysis loop failed; restarting in 1 s")
                    self._bank.clear()
                    await asyncio.sleep(1)
        finally:
            self.stop.set()
            for task in side_tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await asyncio.wait_for(task, 10)
            await auth.close()
            await asyncio.to_thread(producer.close, 5)

    async def _consume(self, producer: KafkaProducer, gate: Gate) -> None:
        s = self._settings
        config = consumer_config(s) | {
            "group_id": self._group,
            "max_poll_records": _POLL_RECORDS,
            "fetch_max_wait_ms": _FETCH_WAIT_MS,
        }
        consumer = await asyncio.to_thread(KafkaConsumer, **config)
        try:
            while s.events_topic not in await asyncio.to_thread(consumer.topics):
                self.heartbeat = time.monotonic()
                if self.stop.is_set():
                    return
                await asyncio.sleep(0.5)
            numbers = await asyncio.to_thread(consumer.partitions_for_topic, s.events_topic)
            partitions = [TopicPartition(s.events_topic, p) for p in sorted(numbers or ())]
            consumer.assign(partitions)
            incarnation = consumer._client.cluster.cluster_id or "static"
            if self._republish:
                await self._publish_recent_again(producer)
            if self._outbox:
                await self._publish_lost_outbox(producer, incarnation)
            async with self._pool.acquire() as conn:
                stored = await store.load_offsets(conn, s.analysis_group, incarnation, s.events_topic)
            resume = resume_offsets(stored, s.analysis_group, s.analysis_shard, s.analysis_shards)
            offsets = resume.offsets
            if resume.adopted_from_layout is not None:
                log.warning(
                    "shard layout changed from %d to %d shards: resuming from the old layout's newest offsets",
                    resume.adopted_from_layout,
                    s.analysis_shards,
                )
            continuity: dict[TopicPartition, OffsetContinuity] = {}
            for tp in partitions:
                analysed_until = offsets.get(tp.partition, -1)
                consumer.seek(tp, analysed_until + 1)
                continuity[tp] = OffsetContinuity(
                    analysed_until,
                    f"analysis shard {s.analysis_shard}, partition {tp.topic}-{tp.partition}",
                    self._count_anomaly,
                )
            log.info(
                "shard %d of %d analysing %d partitions from offsets %s",
                s.analysis_shard,
                s.analysis_shards,
                len(partitions),
                offsets or "the start",
            )
            self._unsaved = {}
            while not self.stop.is_set():
                self.heartbeat = time.monotonic()
                await self._refresh_tuning()
                polled = await asyncio.to_thread(consumer.poll, 100, _POLL_RECORDS)
                # After a dropped connection, records can come from a restarted broker before
                # the metadata refresh that changes cluster_id (services/ingest/incarnation.py).
                if (
                    polled
                    and consumer._client.cluster.need_update
                    and not await asyncio.to_thread(metadata_settled, consumer._client.cluster, 5.0)
                ):
                    raise BrokerRestarted("connection lost and the broker's cluster id is not confirmed")
                if (consumer._client.cluster.cluster_id or "static") != incarnation:
                    raise BrokerRestarted(
                        f"cluster id {incarnation} -> {consumer._client.cluster.cluster_id}"
                    )
                if polled:
                    polled = screen_polled(consumer, polled, continuity)
                if polled:
                    await self._analyse(polled, producer, gate, incarnation)
                elif time.monotonic() - self._checkpointed >= s.analysis_checkpoint_interval_s:
                    await self._checkpoint(incarnation)
            await self._checkpoint(incarnation)  # a clean stop leaves nothing to analyse again
        finally:
            await asyncio.to_thread(consumer.close, False)

    def _count_anomaly(self, anomaly: OffsetAnomaly) -> None:
        self._offset_anomalies[anomaly].inc()

    async def _analyse(
        self, polled: dict[TopicPartition, list[Any]], producer: KafkaProducer, gate: Gate, incarnation: str
    ) -> None:
        """Steps 1-4 of the module docstring for one polled batch."""
        s = self._settings
        started = time.perf_counter()
        await gate.refresh_for(r.value for records in polled.values() for r in records if r.value)
        checks = gate.batch()
        batch = BatchInput()
        offsets: dict[int, int] = {}
        newest_ms = 0
        points_before = self.analysed_points
        for tp, records in polled.items():
            offsets[tp.partition] = records[-1].offset
            newest_ms = max(newest_ms, records[-1].timestamp)
            for record in records:
                self._take(record.value, checks, batch)
        findings = await self._bank.analyse(batch)
        outgoing = self._reports(findings)
        if outgoing:
            await asyncio.to_thread(_publish, producer, s.events_topic, outgoing)
            self._remember(outgoing)
            self._unsaved_outgoing += outgoing
            self.published_findings += len(findings)
            for f in findings:
                metrics.ANALYSIS_FINDINGS.labels(shard=str(s.analysis_shard), kind=f.anomaly.kind).inc()
        self._unsaved.update(offsets)
        due = time.monotonic() - self._checkpointed >= s.analysis_checkpoint_interval_s
        if due or self._bank.dirty_count >= _MAX_DIRTY:
            await self._checkpoint(incarnation)
        self._points.inc(self.analysed_points - points_before)
        self._batch_seconds.observe(time.perf_counter() - started)
        if newest_ms:
            self._lag_seconds.set(max(0.0, time.time() - newest_ms / 1000))

    def _remember(self, events: list[Outgoing]) -> None:
        """Keep published events for the republish window."""
        now = time.monotonic()
        self._recent.extend((now, e) for e in events)
        while self._recent and (
            self._recent[0][0] < now - _REPUBLISH_WINDOW_S or len(self._recent) > _REPUBLISH_MAX
        ):
            self._recent.popleft()

    async def _load_outbox(self) -> None:
        """At start: what an earlier process of this group published within the republish
        window. Its checkpoint may have passed their points while the broker lost them (it
        restarted empty before the projector read them, and that process died before it saw
        the restart)."""
        async with self._pool.acquire() as conn:
            self._outbox = await store.load_outbox(conn, self._group, _REPUBLISH_WINDOW_S)
        now = time.monotonic()
        self._recent.extend((now - entry.age_s, entry.event) for entry in self._outbox)

    async def _publish_lost_outbox(self, producer: KafkaProducer, incarnation: str) -> None:
        """Publish again the outbox's events that an incarnation other than `incarnation` (and
        not carried over into it) acknowledged (raises until acknowledged)."""
        lost = [
            e.event
            for e in self._outbox
            if e.incarnation != incarnation and not carried_over(e.incarnation, incarnation)
        ]
        if lost:
            log.warning("publishing %d findings again that a broker restart lost", len(lost))
            await asyncio.to_thread(_publish, producer, self._settings.events_topic, lost)
        self._outbox = []

    async def _publish_recent_again(self, producer: KafkaProducer) -> None:
        """After a broker restart: publish the recent findings again (raises until acknowledged)."""
        self._remember([])
        events = [e for _, e in self._recent]
        if events:
            log.warning("publishing %d recent findings again to the new broker", len(events))
            await asyncio.to_thread(_publish, producer, self._settings.events_topic, events)
        self._republish = False

    async def _checkpoint(self, incarnation: str) -> None:
        """Store the changed detector states and the offsets they match, in one transaction."""
        s = self._settings
        if self._unsaved:
            rows = self._bank.take_dirty()
            async with self._pool.acquire() as conn, conn.transaction():
                await store.save_states(conn, rows)
                await store.save_offsets(conn, self._group, incarnation, s.events_topic, self._unsaved)
                await store.save_outbox(
                    conn, self._group, incarnation, self._unsaved_outgoing, _REPUBLISH_WINDOW_S
                )
            self._unsaved = {}
            self._unsaved_outgoing = []
            self._bank.evict()
            self._series_in_memory.set(self._bank.cached_count)
        self._checkpointed = time.monotonic()

    def _take(self, raw: bytes | None, checks: Any, batch: BatchInput) -> None:
        """Add one record to the batch if it is a verified event the detectors want."""
        if not raw or (b"run.metrics_logged" not in raw and b"run.status_changed" not in raw):
            return  # other types do not concern us (a cheap look before decoding)
        try:
            event = decode(raw)
        except InvalidEvent:
            return
        env = event.envelope
        if env.type in PLATFORM_REPORTED or env.experiment_id is None:
            return
        s = self._settings
        if (
            s.analysis_shards > 1
            and shard_of(env.tenant_id, env.experiment_id, s.analysis_shards) != s.analysis_shard
        ):
            return  # another shard's experiment
        if isinstance(checks.verify(event), Rejected):
            return
        assert env.run_id is not None
        if env.type is EventType.METRICS_LOGGED:
            cols = event.payload
            assert isinstance(cols, MetricColumns)
            batch.add_metrics(
                env.tenant_id,
                env.experiment_id,
                env.run_id,
                cols.keys,
                cols.key_index,
                cols.steps,
                cols.values,
            )
            self.analysed_points += len(cols)
        elif env.type is EventType.STATUS_CHANGED:
            payload = event.payload
            assert isinstance(payload, StatusChangedPayload)
            if payload.status in _TERMINAL:
                batch.finished.append((env.tenant_id, env.experiment_id, env.run_id))

    def _reports(self, findings: list[Finding]) -> list[Outgoing]:
        """The events of a batch's findings, and attribution requests for shifts across runs."""
        out: list[Outgoing] = []
        for f in findings:
            a = f.anomaly
            event = self._reporter.anomaly(
                f.tenant_id, f.experiment_id, f.run_id, f.key, a.kind, a.step, a.severity, a.evidence
            )
            out.append(event)
            request = _attribution_request(f, event.event_id) if self._settings.attribution_auto else None
            if request is not None:
                out.append(
                    self._reporter.attribution_request(f.tenant_id, f.experiment_id, request, event.event_id)
                )
        return out

    async def _refresh_tuning(self) -> None:
        """Reload the tenants' detector settings when they changed (checked every few seconds)."""
        now = time.monotonic()
        if now - self._settings_checked < self._settings.analysis_settings_refresh_s:
            return
        self._settings_checked = now
        async with self._pool.acquire() as conn:
            version = await store.settings_version(conn)
            if version == self._settings_version:
                return
            rows = await store.load_settings(conn)
        tuning: dict[str, list[Tuning]] = {}
        for row in rows:
            tuning.setdefault(row.tenant_id, []).append(Tuning(row.experiment_id, row.key, row.overrides))
        self._bank.set_tuning(tuning)
        self._settings_version = version

    async def _load_states(self, keys: Iterable[StateKey]) -> dict[StateKey, dict[str, dict[str, Any]]]:
        async with self._pool.acquire() as conn:
            return await store.load_states(conn, keys)

    async def _stored_keys(self, runs: list[tuple[str, str]]) -> dict[tuple[str, str], list[str]]:
        async with self._pool.acquire() as conn:
            return await store.stored_series_keys(conn, runs)


def _attribution_request(finding: Finding, finding_event_id: str) -> dict[str, Any] | None:
    """The attribution a finding across runs starts: an outlier run against the experiment's
    recent runs, or the runs after a shift of the final values against those before it."""
    a = finding.anomaly
    trigger = {"by": "finding", "finding_event_id": finding_event_id, "kind": a.kind}
    if a.kind == "outlier_run":
        return {
            "metric": finding.key,
            "candidate_run_ids": [finding.run_id],
            "baseline_run_ids": [],
            "trigger": trigger,
        }
    if a.kind == "level_shift" and a.evidence.get("scope") == "runs":
        candidates = [str(r) for r in a.evidence.get("candidate_run_ids") or []]
        baseline = [str(r) for r in a.evidence.get("baseline_run_ids") or [] if r not in candidates]
        if candidates:
            return {
                "metric": finding.key,
                "candidate_run_ids": candidates,
                "baseline_run_ids": baseline,
                "trigger": trigger,
            }
    return None


def _publish(producer: KafkaProducer, topic: str, events: list[Outgoing]) -> None:
    """Send and wait until Kafka acknowledged every event (raises otherwise)."""
    futures = [producer.send(topic, key=e.key, value=e.value) for e in events]
    producer.flush()
    for future in futures:
        future.get(timeout=30)


def _webhook_dispatcher(pool: asyncpg.Pool, s: Settings) -> WebhookDispatcher:
    """The webhook dispatcher of this process, tuned by the settings."""
    return WebhookDispatcher(
        pool,
        http_timeout_s=s.webhook_http_timeout_s,
        max_attempts=s.webhook_max_attempts,
        backoff_base_s=s.webhook_backoff_base_s,
        backoff_cap_s=s.webhook_backoff_cap_s,
        concurrency=s.webhook_concurrency,
        policy=DestinationPolicy.of(s.webhook_allowed_networks, s.webhook_allow_private_networks),
        secrets=load_box(s.secrets_key, s.state_dir),
    )
