-- RunLedger metadata projections. Every table is derived from the event log and
-- rebuilt by `runledger replay`; every write the projector makes is idempotent.

CREATE TABLE IF NOT EXISTS tenants (
    tenant_id    text PRIMARY KEY,
    name         text NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS experiments (
    tenant_id         text NOT NULL,
    experiment_id     text NOT NULL,
    name              text NOT NULL,
    artifact_location text NOT NULL DEFAULT '',
    lifecycle_stage   text NOT NULL DEFAULT 'active',
    creation_time     bigint NOT NULL,
    last_update_time  bigint NOT NULL,
    PRIMARY KEY (tenant_id, experiment_id)
);
CREATE UNIQUE INDEX IF NOT EXISTS experiments_name ON experiments (tenant_id, name);

CREATE TABLE IF NOT EXISTS experiment_tags (
    tenant_id     text NOT NULL,
    experiment_id text NOT NULL,
    key           text NOT NULL,
    value         text NOT NULL,
    PRIMARY KEY (tenant_id, experiment_id, key)
);

CREATE TABLE IF NOT EXISTS runs (
    tenant_id       text NOT NULL,
    run_id          text NOT NULL,
    experiment_id   text NOT NULL,
    parent_run_id   text,
    name            text NOT NULL DEFAULT '',
    user_id         text NOT NULL DEFAULT '',
    status          text NOT NULL,
    start_time      bigint NOT NULL,
    end_time        bigint,
    lifecycle_stage text NOT NULL DEFAULT 'active',
    PRIMARY KEY (tenant_id, run_id)
);
CREATE INDEX IF NOT EXISTS runs_by_experiment ON runs (tenant_id, experiment_id, start_time DESC);
CREATE INDEX IF NOT EXISTS runs_by_parent ON runs (tenant_id, parent_run_id) WHERE parent_run_id IS NOT NULL;

CREATE TABLE IF NOT EXISTS params (
    tenant_id text NOT NULL,
    run_id    text NOT NULL,
    key       text NOT NULL,
    value     text NOT NULL,
    PRIMARY KEY (tenant_id, run_id, key)
);
-- Values up to 6,000 (params) and 8,000 (tags) characters exceed a btree entry (~2.7 kB):
-- index a prefix; searches compare the prefix (indexed) and then the whole value.
DROP INDEX IF EXISTS params_by_key;
CREATE INDEX IF NOT EXISTS params_by_key_prefix ON params (tenant_id, key, left(value, 256)) INCLUDE (run_id);

-- Each run's params as one JSON object {key: value}, so that the runs wide export reads one
-- row per run instead of one per param. The params table stays the source of truth: the
-- triggers below keep the document equal to the run's rows whoever writes them (projector,
-- replay, bulk COPY, a fix by hand), in the writing statement's transaction, set-based (one
-- UPDATE of runs per statement on params, from its transition table). A run row inserted
-- after its params (events out of order) starts from them.
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = 'runs'::regclass
                   AND attname = 'params_doc' AND NOT attisdropped) THEN
        ALTER TABLE runs ADD COLUMN params_doc jsonb NOT NULL DEFAULT '{}';
        -- Backfill once, in the transaction that adds the column (later starts skip it).
        UPDATE runs r SET params_doc = p.doc
        FROM (SELECT tenant_id, run_id, jsonb_object_agg(key, value) AS doc FROM params
              GROUP BY tenant_id, run_id) p
        WHERE r.tenant_id = p.tenant_id AND r.run_id = p.run_id;
    END IF;
END $$;
CREATE OR REPLACE FUNCTION params_doc_inserted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE runs r SET params_doc = r.params_doc || n.doc
    FROM (SELECT tenant_id, run_id, jsonb_object_agg(key, value) AS doc FROM new_params
          GROUP BY tenant_id, run_id) n
    WHERE r.tenant_id = n.tenant_id AND r.run_id = n.run_id;
    RETURN NULL;
END $$;
CREATE OR REPLACE FUNCTION params_doc_deleted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE runs r SET params_doc = r.params_doc - o.keys
    FROM (SELECT tenant_id, run_id, array_agg(key) AS keys FROM old_params GROUP BY tenant_id, run_id) o
    WHERE r.tenant_id = o.tenant_id AND r.run_id = o.run_id;
    RETURN NULL;
END $$;
CREATE OR REPLACE FUNCTION params_doc_updated() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN  -- rare (params are immutable): rebuild the documents of the runs touched
    UPDATE runs r SET params_doc = coalesce((SELECT jsonb_object_agg(p.key, p.value) FROM params p
                                             WHERE p.tenant_id = r.tenant_id AND p.run_id = r.run_id), '{}')
    WHERE (r.tenant_id, r.run_id) IN (SELECT tenant_id, run_id FROM old_params
                                      UNION SELECT tenant_id, run_id FROM new_params);
    RETURN NULL;
END $$;
CREATE OR REPLACE FUNCTION params_doc_truncated() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE runs SET params_doc = '{}' WHERE params_doc <> '{}';
    RETURN NULL;
END $$;
CREATE OR REPLACE FUNCTION params_doc_of_new_run() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.params_doc := coalesce((SELECT jsonb_object_agg(p.key, p.value) FROM params p
                                WHERE p.tenant_id = NEW.tenant_id AND p.run_id = NEW.run_id), '{}');
    RETURN NEW;
END $$;
CREATE OR REPLACE TRIGGER params_doc_on_insert AFTER INSERT ON params
    REFERENCING NEW TABLE AS new_params FOR EACH STATEMENT EXECUTE FUNCTION params_doc_inserted();
CREATE OR REPLACE TRIGGER params_doc_on_delete AFTER DELETE ON params
    REFERENCING OLD TABLE AS old_params FOR EACH STATEMENT EXECUTE FUNCTION params_doc_deleted();
CREATE OR REPLACE TRIGGER params_doc_on_update AFTER UPDATE ON params
    REFERENCING OLD TABLE AS old_params NEW TABLE AS new_params
    FOR EACH STATEMENT EXECUTE FUNCTION params_doc_updated();
CREATE OR REPLACE TRIGGER params_doc_on_truncate AFTER TRUNCATE ON params
    FOR EACH STATEMENT EXECUTE FUNCTION params_doc_truncated();
CREATE OR REPLACE TRIGGER params_doc_of_new_run BEFORE INSERT ON runs
    FOR EACH ROW EXECUTE FUNCTION params_doc_of_new_run();

CREATE TABLE IF NOT EXISTS tags (
    tenant_id text NOT NULL,
    run_id    text NOT NULL,
    key       text NOT NULL,
    value     text NOT NULL,
    PRIMARY KEY (tenant_id, run_id, key)
);
DROP INDEX IF EXISTS tags_by_key;
CREATE INDEX IF NOT EXISTS tags_by_key_prefix ON tags (tenant_id, key, left(value, 256)) INCLUDE (run_id);

-- Latest value of each metric per run (max by step, timestamp, value) and the
-- first step seen, kept by the projector so run lists, searches and the planning
-- of a history read never scan the point store.
CREATE TABLE IF NOT EXISTS latest_metrics (
    tenant_id  text NOT NULL,
    run_id     text NOT NULL,
    key        text NOT NULL,
    value      double precision NOT NULL,
    step       bigint NOT NULL,
    timestamp  bigint NOT NULL,
    first_step bigint NOT NULL,
    PRIMARY KEY (tenant_id, run_id, key)
);
-- Columns added after a table first shipped: CREATE TABLE IF NOT EXISTS leaves an
-- existing table as it was, so each addition is also applied here, idempotently.
-- (Series projected before first_step existed get 0: a wider extent, never a cut one.)
ALTER TABLE latest_metrics ADD COLUMN IF NOT EXISTS first_step bigint NOT NULL DEFAULT 0;

CREATE TABLE IF NOT EXISTS artifacts (
    tenant_id  text NOT NULL,
    run_id     text NOT NULL,
    path       text NOT NULL,
    size       bigint NOT NULL,
    digest     text NOT NULL,
    media_type text NOT NULL,
    PRIMARY KEY (tenant_id, run_id, path)
);

CREATE TABLE IF NOT EXISTS dataset_inputs (
    tenant_id text NOT NULL,
    run_id    text NOT NULL,
    name      text NOT NULL,
    digest    text NOT NULL,
    body      jsonb NOT NULL,
    PRIMARY KEY (tenant_id, run_id, name, digest)
);

CREATE TABLE IF NOT EXISTS run_documents (
    tenant_id text NOT NULL,
    run_id    text NOT NULL,
    kind      text NOT NULL,  -- code_state | environment
    body      jsonb NOT NULL,
    PRIMARY KEY (tenant_id, run_id, kind)
);

CREATE TABLE IF NOT EXISTS model_versions (
    tenant_id  text NOT NULL,
    model_name text NOT NULL,
    version    integer NOT NULL,
    run_id     text,
    source     text NOT NULL,
    stage      text NOT NULL,
    PRIMARY KEY (tenant_id, model_name, version)
);

CREATE TABLE IF NOT EXISTS lineage_edges (
    tenant_id   text NOT NULL,
    source_kind text NOT NULL,
    source_id   text NOT NULL,
    target_kind text NOT NULL,
    target_id   text NOT NULL,
    relation    text NOT NULL,
    PRIMARY KEY (tenant_id, source_kind, source_id, target_kind, target_id, relation)
);
-- The lineage walk upstream (GET /lineage) looks edges up by their target.
CREATE INDEX IF NOT EXISTS lineage_edges_by_target ON lineage_edges (tenant_id, target_kind, target_id);

CREATE TABLE IF NOT EXISTS findings (
    tenant_id  text NOT NULL,
    event_id   uuid NOT NULL,
    run_id     text,
    experiment_id text,
    kind       text NOT NULL,
    body       jsonb NOT NULL,
    occurred_at timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, event_id)
);
-- GET /findings and /runs/{id}/findings: newest first, by tenant or by run.
CREATE INDEX IF NOT EXISTS findings_by_time ON findings (tenant_id, occurred_at DESC, event_id);
CREATE INDEX IF NOT EXISTS findings_by_run ON findings (tenant_id, run_id, occurred_at DESC, event_id);

-- Exactly-once bookkeeping of the projector -------------------------------------------

-- Event ids already applied: a re-sent event (same id, new offset) is skipped.
CREATE TABLE IF NOT EXISTS applied_events (
    event_id   uuid PRIMARY KEY,
    applied_at timestamptz NOT NULL DEFAULT now()
);
-- Ids older than the dedup horizon are pruned (services/ingest/dedup_horizon.py). Rows arrive
-- in time order, so a BRIN index finds the old ones at almost no cost per insert.
CREATE INDEX IF NOT EXISTS applied_events_by_time ON applied_events USING brin (applied_at);

-- One row per (group, broker incarnation, partition). `committed` is the last
-- offset whose batch both stores hold. A round (batches of several partitions written
-- together) in flight to ClickHouse is recorded as pending first: each member's offsets
-- committed+1 .. pending_until and the round's dedup token, so after a crash the same
-- round is re-formed and re-inserted with the same token (services/ingest/checkpoints.py).
CREATE TABLE IF NOT EXISTS projector_checkpoints (
    consumer_group text NOT NULL,
    incarnation    text NOT NULL,
    topic          text NOT NULL,
    partition      integer NOT NULL,
    committed      bigint NOT NULL DEFAULT -1,
    pending_until  bigint,
    updated_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer_group, incarnation, topic, partition)
);
ALTER TABLE projector_checkpoints ADD COLUMN IF NOT EXISTS pending_round text;

-- Written when the embedded broker is replaced (libs/runledger/embedded/rotation.py): the new
-- incarnation holds, below `carried_until`, the records carried over from the one before, so
-- a read-your-writes token of the old one is projected once the new one's checkpoint
-- reaches carried_until - 1 (services/api/consistency.py).
CREATE TABLE IF NOT EXISTS broker_carry_over (
    incarnation   text NOT NULL,
    topic         text NOT NULL,
    partition     integer NOT NULL,
    carried_until bigint NOT NULL,
    PRIMARY KEY (incarnation, topic, partition)
);
-- The incarnation carried from, and the offset there of this one's offset 0: a round the
-- projector left pending on the predecessor is re-formed from the carried records.
ALTER TABLE broker_carry_over ADD COLUMN IF NOT EXISTS predecessor text;
ALTER TABLE broker_carry_over ADD COLUMN IF NOT EXISTS carried_from bigint NOT NULL DEFAULT 0;

CREATE TABLE IF NOT EXISTS dead_letters_count (
    tenant_id text NOT NULL,
    reason    text NOT NULL,
    count     bigint NOT NULL,
    PRIMARY KEY (tenant_id, reason)
);

-- Control plane: tenants, identities, keys, role grants, sharing, policies, quotas, audit.
-- These are the source of truth (not projections of the event log): `runledger replay`
-- never touches them. Every change bumps auth_generation in the same transaction and
-- NOTIFYs runledger_auth, so API and projector processes reload within a second.

ALTER TABLE tenants ADD COLUMN IF NOT EXISTS status text NOT NULL DEFAULT 'active';  -- active | suspended

CREATE TABLE IF NOT EXISTS principals (
    principal_id  text PRIMARY KEY,
    tenant_id     text NOT NULL REFERENCES tenants (tenant_id),
    kind          text NOT NULL CHECK (kind IN ('user', 'service_account')),
    name          text NOT NULL,
    is_superadmin boolean NOT NULL DEFAULT false,
    created_at    timestamptz NOT NULL DEFAULT now(),
    disabled_at   timestamptz,
    UNIQUE (tenant_id, kind, name)
);

-- An API key is shown once; only two one-way derivations of its secret are kept:
-- secret_hash authenticates API calls, signing_key verifies event signatures (HMAC).
CREATE TABLE IF NOT EXISTS api_keys (
    key_id       text PRIMARY KEY,
    principal_id text NOT NULL REFERENCES principals (principal_id),
    tenant_id    text NOT NULL REFERENCES tenants (tenant_id),
    name         text NOT NULL DEFAULT '',
    secret_hash  bytea NOT NULL,
    signing_key  bytea NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    expires_at   timestamptz,
    revoked_at   timestamptz
);
CREATE INDEX IF NOT EXISTS api_keys_by_principal ON api_keys (principal_id);

-- Role grants (casbin policy source): experiment_id '' = the whole tenant.
CREATE TABLE IF NOT EXISTS role_grants (
    tenant_id     text NOT NULL REFERENCES tenants (tenant_id),
    principal_id  text NOT NULL REFERENCES principals (principal_id),
    role          text NOT NULL CHECK (role IN ('viewer', 'engineer', 'admin')),
    experiment_id text NOT NULL DEFAULT '',
    granted_at    timestamptz NOT NULL DEFAULT now(),
    granted_by    text NOT NULL DEFAULT '',
    PRIMARY KEY (tenant_id, principal_id, role, experiment_id)
);

-- Read-only sharing of one experiment with another tenant.
CREATE TABLE IF NOT EXISTS experiment_shares (
    owner_tenant   text NOT NULL REFERENCES tenants (tenant_id),
    experiment_id  text NOT NULL,
    grantee_tenant text NOT NULL REFERENCES tenants (tenant_id),
    created_at     timestamptz NOT NULL DEFAULT now(),
    created_by     text NOT NULL DEFAULT '',
    PRIMARY KEY (owner_tenant, experiment_id, grantee_tenant)
);
CREATE INDEX IF NOT EXISTS experiment_shares_by_grantee ON experiment_shares (grantee_tenant);

-- Required run tags: {"project": [], "stage": ["dev", "prod"]} ([] = any value);
-- enforcement 'flag' records a finding, 'reject' refuses the run.
CREATE TABLE IF NOT EXISTS tagging_policies (
    tenant_id   text PRIMARY KEY REFERENCES tenants (tenant_id),
    required    jsonb NOT NULL,
    enforcement text NOT NULL CHECK (enforcement IN ('flag', 'reject')),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

-- NULL = unlimited.
CREATE TABLE IF NOT EXISTS tenant_quotas (
    tenant_id         text PRIMARY KEY REFERENCES tenants (tenant_id),
    events_per_second integer CHECK (events_per_second > 0),
    max_points        bigint CHECK (max_points >= 0),
    updated_at        timestamptz NOT NULL DEFAULT now()
);

-- Metric points stored per tenant, advanced by the projector in each batch's transaction.
CREATE TABLE IF NOT EXISTS tenant_usage (
    tenant_id text PRIMARY KEY,
    points    bigint NOT NULL DEFAULT 0
);

CREATE TABLE IF NOT EXISTS audit_log (
    seq       bigserial PRIMARY KEY,
    tenant_id text,              -- NULL: platform actions and callers whose tenant is unknown
    at        timestamptz NOT NULL DEFAULT now(),
    actor     text NOT NULL,     -- principal id, else key id, else 'anonymous'
    action    text NOT NULL,     -- e.g. key.create, tenant.suspend, POST /api/v1/runs
    target    text NOT NULL DEFAULT '',
    outcome   text NOT NULL CHECK (outcome IN ('ok', 'denied')),
    source    text NOT NULL DEFAULT '',  -- client address
    details   jsonb NOT NULL DEFAULT '{}'
);
CREATE INDEX IF NOT EXISTS audit_log_by_tenant ON audit_log (tenant_id, seq DESC);

-- Append-only: no UPDATE, DELETE or TRUNCATE, whoever asks.
CREATE OR REPLACE FUNCTION audit_log_is_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_log is append-only';
END $$;
CREATE OR REPLACE TRIGGER audit_log_no_update_or_delete
    BEFORE UPDATE OR DELETE ON audit_log FOR EACH ROW EXECUTE FUNCTION audit_log_is_append_only();
CREATE OR REPLACE TRIGGER audit_log_no_truncate
    BEFORE TRUNCATE ON audit_log FOR EACH STATEMENT EXECUTE FUNCTION audit_log_is_append_only();

CREATE TABLE IF NOT EXISTS auth_generation (
    singleton  boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    generation bigint NOT NULL
);
INSERT INTO auth_generation VALUES (true, 1) ON CONFLICT DO NOTHING;

-- Artifact storage (blobs are content-addressed: services/api/artifacts). NULL = unlimited.
ALTER TABLE tenant_quotas ADD COLUMN IF NOT EXISTS max_artifact_bytes bigint CHECK (max_artifact_bytes >= 0);
ALTER TABLE tenant_quotas ADD COLUMN IF NOT EXISTS points_per_second integer CHECK (points_per_second > 0);
-- Bytes of the distinct blobs a tenant has stored: a blob counts once per tenant however
-- many of its runs or paths log it (the same bytes in another tenant count there too).
ALTER TABLE tenant_usage ADD COLUMN IF NOT EXISTS artifact_bytes bigint NOT NULL DEFAULT 0;
-- The blobs each tenant stored (written by the API when an upload commits, before its
-- run.artifact_logged event): what artifact_bytes sums, and what a retention sweeper
-- checks, against the artifacts table, before it deletes a blob no run references.
CREATE TABLE IF NOT EXISTS artifact_blobs (
    tenant_id  text NOT NULL,
    digest     text NOT NULL,
    size       bigint NOT NULL,
    stored_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, digest)
);
CREATE INDEX IF NOT EXISTS artifact_blobs_by_digest ON artifact_blobs (digest);

-- MLflow runs/search (services/api/mlflow/search_repository.py). A metric filter is a range
-- on (key, value) of the tenant's latest metrics, read index-only (run_id is in the index),
-- as is the value per run of an order_by on a metric. The default order (start_time DESC,
-- run_id) of one experiment's active or deleted runs is read in index order, pages included.
CREATE INDEX IF NOT EXISTS latest_metrics_by_key ON latest_metrics (tenant_id, key, value, run_id);
CREATE INDEX IF NOT EXISTS runs_by_experiment_stage
    ON runs (tenant_id, experiment_id, lifecycle_stage, start_time DESC, run_id);
-- Estimates of `key = k AND value = v` from the most common (key, value) pairs instead of
-- the product of both columns' frequencies (off ~10x), so the planner joins in the right order.
CREATE STATISTICS IF NOT EXISTS params_key_value (mcv) ON key, value FROM params;
CREATE STATISTICS IF NOT EXISTS tags_key_value (mcv) ON key, value FROM tags;
-- The same for the indexed prefix, which equality filters compare first.
CREATE STATISTICS IF NOT EXISTS params_key_value_prefix (mcv) ON key, left(value, 256) FROM params;
CREATE STATISTICS IF NOT EXISTS tags_key_value_prefix (mcv) ON key, left(value, 256) FROM tags;

-- ---------------------------------------------------------------- analysis service
-- Detector state per series and per cohort, and the analysis consumer's offsets: one
-- transaction writes both after the batch's findings are acknowledged by Kafka, so a
-- restart resumes exactly there (findings have deterministic ids: a replayed batch
-- re-emits the same events, which the projector already holds).
-- A cohort (experiment, metric) keeps one row per member run, so a checkpoint writes only
-- the runs that changed. (analysis_series_state: the first layout, one row per cohort.)
DROP TABLE IF EXISTS analysis_series_state;
CREATE TABLE IF NOT EXISTS analysis_state (
    tenant_id  text NOT NULL,
    scope      text NOT NULL,     -- 'series': scope_id = run_id; 'cohort': scope_id = experiment_id
    scope_id   text NOT NULL,
    key        text NOT NULL,     -- the metric
    member     text NOT NULL,     -- '' for a series; the member run of a cohort
    state      bytea NOT NULL,    -- the detector's state as JSON (UTF-8), opaque to Postgres
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, scope, scope_id, key, member)
) WITH (fillfactor = 50);
-- A checkpoint rewrites every state that changed (at fleet scale all of them, ~100,000 rows of
-- ~0.8 kB every 30 s). As jsonb, Postgres parsed each one and every update was non-HOT; as
-- bytea in half-full pages the updates stay HOT (no indexed column changes): 65% less backend
-- CPU per checkpoint and a table 3x smaller (bench/RESULTS.md, "Analysis checkpoints").
DO $$
BEGIN
    IF (SELECT atttypid FROM pg_attribute WHERE attrelid = 'analysis_state'::regclass
        AND attname = 'state' AND NOT attisdropped) = 'jsonb'::regtype THEN
        -- Once, on a table of the first layout (a rewrite of the states, bounded by the cache).
        ALTER TABLE analysis_state ALTER COLUMN state TYPE bytea USING convert_to(state::text, 'UTF8');
        ALTER TABLE analysis_state SET (fillfactor = 50);
    END IF;
END $$;
CREATE TABLE IF NOT EXISTS analysis_checkpoints (
    consumer_group text NOT NULL,
    incarnation    text NOT NULL,
    topic          text NOT NULL,
    partition      int NOT NULL,
    committed      bigint NOT NULL,
    updated_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer_group, incarnation, topic, partition)
);
-- Events the analysis published recently (findings, attribution requests), per consumer
-- group, stored with the checkpoint whose detector states passed their points, and the broker
-- incarnation that acknowledged them. A restarted analysis that finds another incarnation (one
-- that did not carry that one over) publishes them again (the projector applies each event id
-- once): the broker lost them, maybe before the projector read them, and the detectors will
-- not find them again.
CREATE TABLE IF NOT EXISTS analysis_outbox (
    consumer_group text NOT NULL,
    event_id       text NOT NULL,
    incarnation    text NOT NULL,
    key            bytea NOT NULL,
    value          bytea NOT NULL,
    published_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer_group, event_id)
);
-- Detector settings (runledger.analysis.detection.DetectorConfig overrides), per tenant,
-- optionally narrowed to one experiment and/or one metric key ('' = any); the most
-- specific match wins, field by field.
CREATE TABLE IF NOT EXISTS anomaly_settings (
    tenant_id     text NOT NULL,
    experiment_id text NOT NULL DEFAULT '',
    key           text NOT NULL DEFAULT '',
    overrides     jsonb NOT NULL,
    updated_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, experiment_id, key)
);
-- Attributions: a row per analysis.attribution_requested event (status pending), claimed
-- by one analysis worker (lease), finished by its analysis.attribution_computed event.
CREATE TABLE IF NOT EXISTS attributions (
    tenant_id     text NOT NULL,
    attribution_id text NOT NULL,
    experiment_id text NOT NULL,
    metric        text NOT NULL,
    request       jsonb NOT NULL,
    status        text NOT NULL CHECK (status IN ('pending', 'running', 'done', 'failed')),
    result        jsonb,
    error         text,
    requested_at  timestamptz NOT NULL,
    claimed_by    text,
    claimed_until timestamptz,
    finished_at   timestamptz,
    PRIMARY KEY (tenant_id, attribution_id)
);
CREATE INDEX IF NOT EXISTS attributions_pending ON attributions (requested_at) WHERE status IN ('pending', 'running');

-- webhooks ----------------------------------------------------------------------------------
-- Alert routing: a tenant's webhooks receive its findings as signed JSON POSTs. The
-- projector enqueues one delivery per (webhook, finding) in the finding's transaction
-- (the primary key makes a replayed event a no-op); services/analysis/webhooks.py
-- delivers them, with retries, leasing due rows by moving next_attempt_at forward.
CREATE TABLE IF NOT EXISTS webhooks (
    tenant_id  text NOT NULL,
    webhook_id text NOT NULL,
    url        text NOT NULL,
    secret     text NOT NULL,               -- HMAC-SHA256 key of X-RunLedger-Signature
    kinds      text[] NOT NULL DEFAULT '{}', -- finding kinds routed here; empty = every finding
    enabled    boolean NOT NULL DEFAULT true,
    created_at timestamptz NOT NULL DEFAULT now(),
    created_by text NOT NULL DEFAULT '',
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, webhook_id)
);
CREATE TABLE IF NOT EXISTS webhook_deliveries (
    tenant_id        text NOT NULL,
    webhook_id       text NOT NULL,
    event_id         uuid NOT NULL,          -- the finding (findings.event_id)
    status           text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'delivered', 'failed')),
    attempts         integer NOT NULL DEFAULT 0,
    next_attempt_at  timestamptz NOT NULL DEFAULT now(),
    last_status_code integer,
    last_error       text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    delivered_at     timestamptz,
    PRIMARY KEY (tenant_id, webhook_id, event_id)
);
-- The dispatcher's pick: due pending rows, oldest first (partial: finished rows are most).
CREATE INDEX IF NOT EXISTS webhook_deliveries_due ON webhook_deliveries (next_attempt_at)
    WHERE status = 'pending';
-- GET /webhooks/{id}/deliveries: newest first.
CREATE INDEX IF NOT EXISTS webhook_deliveries_by_webhook
    ON webhook_deliveries (tenant_id, webhook_id, created_at DESC, event_id);

-- business metrics ------------------------------------------------------------------------
-- (services/api/business) A metric key of the tenant declared a business metric, with its
-- unit or currency and an owner: tenant configuration (like anomaly_settings), the source of
-- truth and never rebuilt by replay; every change is written with an audit_log entry in the
-- same transaction. The stakeholder report joins it to model_versions and latest_metrics.
CREATE TABLE IF NOT EXISTS business_metrics (
    tenant_id   text NOT NULL,
    key         text NOT NULL,
    category    text NOT NULL CHECK (category IN
                    ('conversion_rate_impact', 'cost_savings', 'revenue_lift', 'customer_satisfaction', 'other')),
    unit        text NOT NULL DEFAULT '',
    currency    text NOT NULL DEFAULT '',   -- ISO 4217 code, '' when the value is not money
    owner       text NOT NULL,
    description text NOT NULL DEFAULT '',
    direction   text NOT NULL DEFAULT 'max' CHECK (direction IN ('min', 'max')),
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    updated_by  text NOT NULL DEFAULT '',
    PRIMARY KEY (tenant_id, key)
);
-- end of business metrics -----------------------------------------------------------------

-- mlflow logged models --------------------------------------------------------------------
-- (services/api/mlflow/models.py) MLflow 3 logged models, projected from model.logged /
-- model.logged_model_updated / model.logged_model_deleted events; rebuilt by replay.
CREATE TABLE IF NOT EXISTS logged_models (
    tenant_id                 text NOT NULL,
    model_id                  text NOT NULL,
    experiment_id             text NOT NULL,
    name                      text NOT NULL,
    artifact_location         text NOT NULL,
    creation_timestamp_ms     bigint NOT NULL,
    last_updated_timestamp_ms bigint NOT NULL,
    status                    text NOT NULL,
    lifecycle_stage           text NOT NULL DEFAULT 'active',
    model_type                text NOT NULL DEFAULT '',
    source_run_id             text,
    creator_id                text NOT NULL DEFAULT '',
    PRIMARY KEY (tenant_id, model_id)
);
-- logged-models/search: an experiment's models newest first (MLflow's default order).
CREATE INDEX IF NOT EXISTS logged_models_by_experiment
    ON logged_models (tenant_id, experiment_id, creation_timestamp_ms DESC, model_id);
CREATE TABLE IF NOT EXISTS logged_model_params (
    tenant_id text NOT NULL,
    model_id  text NOT NULL,
    key       text NOT NULL,
    value     text NOT NULL,
    PRIMARY KEY (tenant_id, model_id, key)
);
CREATE TABLE IF NOT EXISTS logged_model_tags (
    tenant_id text NOT NULL,
    model_id  text NOT NULL,
    key       text NOT NULL,
    value     text NOT NULL,
    PRIMARY KEY (tenant_id, model_id, key)
);
-- Every metric point linked to a model (MLflow returns them all, not the latest only);
-- a point logged twice is one row.
CREATE TABLE IF NOT EXISTS logged_model_metrics (
    tenant_id      text NOT NULL,
    model_id       text NOT NULL,
    key            text NOT NULL,
    value          float8 NOT NULL,
    timestamp      bigint NOT NULL,
    step           bigint NOT NULL,
    run_id         text NOT NULL DEFAULT '',
    dataset_name   text NOT NULL DEFAULT '',
    dataset_digest text NOT NULL DEFAULT '',
    PRIMARY KEY (tenant_id, model_id, key, run_id, dataset_name, dataset_digest, timestamp, step, value)
);
-- Run.outputs.model_outputs: the models a run produced (runs/outputs), at a step.
CREATE TABLE IF NOT EXISTS run_model_outputs (
    tenant_id text NOT NULL,
    run_id    text NOT NULL,
    model_id  text NOT NULL,
    step      bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (tenant_id, run_id, model_id)
);
-- end of mlflow logged models -------------------------------------------------------------

-- retention ---------------------------------------------------------------------------------
-- (runledger.retention, docs/retention.md) A tenant's retention policy, projected from its
-- tenant.retention_policy_set events; no row = the defaults (metric points 365 days,
-- artifacts 183 days, production model binaries forever). NULL days = kept forever.
-- `runledger replay` does not wipe it (the events re-apply idempotently, newest wins), so
-- the points it re-inserts are stamped with their tenant's policy.
CREATE TABLE IF NOT EXISTS retention_policies (
    tenant_id              text PRIMARY KEY,
    metric_points_days     integer CHECK (metric_points_days BETWEEN 1 AND 36500),
    artifacts_days         integer CHECK (artifacts_days BETWEEN 1 AND 36500),
    keep_production_models boolean NOT NULL DEFAULT true,
    updated_at             timestamptz NOT NULL,
    updated_by             text NOT NULL DEFAULT '',   -- key id that signed the event
    event_id               uuid NOT NULL
);
-- A model version once in the Production stage keeps its binary forever, whatever stage it
-- moves to later: this flag is set by the projector and never cleared.
ALTER TABLE model_versions ADD COLUMN IF NOT EXISTS ever_production boolean NOT NULL DEFAULT false;
UPDATE model_versions SET ever_production = true WHERE lower(stage) = 'production' AND NOT ever_production;
-- The sweeper deletes a blob only when no artifact row of any tenant references its digest.
CREATE INDEX IF NOT EXISTS artifacts_by_digest ON artifacts (digest);
-- Blobs a sweep will delete once the rows that referenced them are gone: queued before the
-- sweep's events go out, so a sweep that stops half-way leaves them for the next one.
CREATE TABLE IF NOT EXISTS retention_pending_blobs (
    digest    text PRIMARY KEY,
    queued_at timestamptz NOT NULL DEFAULT now()
);
-- end of retention --------------------------------------------------------------------------

-- web UI sessions (services/api/sessions.py, ADR 0013) ---------------------------------------
-- A browser's sign-in with an API key: the cookie holds a 256-bit random token, this table
-- only its SHA-256 (a read of the table gives no usable cookie). The session acts as the key:
-- revoking or expiring the key, disabling its principal or suspending its tenant ends it.
-- Not an event: a session is transport state of one browser, not part of the tracked record.
CREATE TABLE IF NOT EXISTS ui_sessions (
    token_hash   bytea PRIMARY KEY,
    tenant_id    text NOT NULL,
    principal_id text NOT NULL,
    key_id       text NOT NULL,
    csrf_token   text NOT NULL,               -- sent back in X-CSRF-Token on unsafe methods
    created_at   timestamptz NOT NULL DEFAULT now(),
    expires_at   timestamptz NOT NULL,
    source       text NOT NULL DEFAULT ''      -- client address at sign-in
);
CREATE INDEX IF NOT EXISTS ui_sessions_by_expiry ON ui_sessions (expires_at);
CREATE INDEX IF NOT EXISTS ui_sessions_by_key ON ui_sessions (key_id);
-- end of web UI sessions ----------------------------------------------------------------------
