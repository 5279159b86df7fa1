//! Versioned, idempotent migrations of the `dmsguard` ledger schema, applied at start.

use tokio_postgres::Client;

use super::LedgerError;

/// Serialises migrations across replicas starting at once (an arbitrary constant).
const MIGRATION_LOCK_KEY: i64 = 0x0064_6d73_676d_6967; // "dmsgmig" in ASCII

/// One schema change; `version` orders them and is recorded once applied.
pub struct Migration {
    pub version: i32,
    pub name: &'static str,
    pub sql: &'static str,
}

/// Every migration, oldest first. Never edit an applied one: add a new version.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "jobs, scheduled steps, alert resolutions",
        sql: r#"
CREATE TABLE dmsguard.jobs (
    id                   bigserial PRIMARY KEY,
    alert_fingerprint    text,
    alert_starts_at      timestamptz,
    alertname            text,
    fix                  text NOT NULL,
    task                 text,
    table_name           text,
    replication_instance text,
    target               text NOT NULL,
    labels               jsonb NOT NULL DEFAULT '{}',
    dry_run              boolean NOT NULL DEFAULT false,
    manual               boolean NOT NULL DEFAULT false,
    state                text NOT NULL DEFAULT 'queued'
        CHECK (state IN ('queued', 'running', 'succeeded', 'failed', 'needs_human', 'skipped')),
    plan_text            text,
    plan                 jsonb,
    outcome              text,
    summary              text,
    error                text,
    details              jsonb,
    runner               text,
    attempts             integer NOT NULL DEFAULT 0,
    not_before           timestamptz NOT NULL DEFAULT now(),
    created_at           timestamptz NOT NULL DEFAULT now(),
    started_at           timestamptz,
    acting_at            timestamptz,
    finished_at          timestamptz,
    heartbeat_at         timestamptz,
    resolved_at          timestamptz,
    -- One job per alert occurrence, however often and however concurrently it is delivered.
    CONSTRAINT jobs_one_per_alert UNIQUE (alert_fingerprint, alert_starts_at)
);
CREATE INDEX jobs_queued ON dmsguard.jobs (fix, not_before, id) WHERE state = 'queued';
CREATE INDEX jobs_cooldown ON dmsguard.jobs (fix, target, acting_at);
CREATE INDEX jobs_running ON dmsguard.jobs (heartbeat_at) WHERE state = 'running';

CREATE TABLE dmsguard.scheduled_steps (
    id           bigserial PRIMARY KEY,
    job_id       bigint NOT NULL REFERENCES dmsguard.jobs (id),
    fix          text NOT NULL,
    run_at       timestamptz NOT NULL,
    description  text NOT NULL,
    tasks        text[] NOT NULL DEFAULT '{}',
    action       jsonb NOT NULL,
    state        text NOT NULL DEFAULT 'pending'
        CHECK (state IN ('pending', 'running', 'done', 'failed')),
    attempts     integer NOT NULL DEFAULT 0,
    runner       text,
    result       text,
    error        text,
    created_at   timestamptz NOT NULL DEFAULT now(),
    heartbeat_at timestamptz,
    finished_at  timestamptz
);
CREATE INDEX scheduled_steps_due ON dmsguard.scheduled_steps (run_at) WHERE state = 'pending';

CREATE TABLE dmsguard.alert_resolutions (
    fingerprint text NOT NULL,
    starts_at   timestamptz NOT NULL,
    ends_at     timestamptz,
    alertname   text NOT NULL,
    labels      jsonb NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (fingerprint, starts_at)
);
"#,
    },
    Migration {
        version: 2,
        name: "resume obligations",
        sql: r#"
-- A task a fix stopped is owed a resume from the moment the stop is sent, until it runs again
-- (state resumed) or a human is told (state needs_human).
CREATE TABLE dmsguard.resume_obligations (
    id          bigserial PRIMARY KEY,
    job_id      bigint NOT NULL REFERENCES dmsguard.jobs (id),
    fix         text NOT NULL,
    task        text NOT NULL,
    state       text NOT NULL DEFAULT 'owed'
        CHECK (state IN ('owed', 'resumed', 'needs_human')),
    -- Not resumed before this (F3: the end of the maintenance hold); then the next attempt.
    not_before  timestamptz NOT NULL DEFAULT now(),
    give_up_at  timestamptz NOT NULL,
    attempts    integer NOT NULL DEFAULT 0,
    last_status text,
    last_error  text,
    -- How it was settled: the resume, or why a human is needed.
    reason      text,
    created_at  timestamptz NOT NULL DEFAULT now(),
    settled_at  timestamptz,
    settled_by  text
);
CREATE INDEX resume_obligations_owed ON dmsguard.resume_obligations (not_before) WHERE state = 'owed';
CREATE INDEX resume_obligations_job ON dmsguard.resume_obligations (job_id);
"#,
    },
    Migration {
        version: 3,
        name: "repair progress",
        sql: r#"
-- How far an unfinished repair of one table and window got: every id of the window up to
-- done_through was inserted (or found present) in the target. A later run of the same repair
-- searches only the ids after it; a finished repair deletes its row.
CREATE TABLE dmsguard.repair_progress (
    fix          text NOT NULL,
    table_name   text NOT NULL,
    window_key   text NOT NULL,
    range_lo     bigint NOT NULL,
    range_hi     bigint NOT NULL,
    done_through bigint NOT NULL,
    inserted     bigint NOT NULL DEFAULT 0,
    job_id       bigint REFERENCES dmsguard.jobs (id),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (fix, table_name, window_key)
);
"#,
    },
];

/// Applies the migrations not yet recorded in `dmsguard.schema_migrations`; returns how many.
pub async fn apply(client: &mut Client) -> Result<usize, LedgerError> {
    client
        .execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK_KEY])
        .await
        .map_err(LedgerError::query("taking the migration lock"))?;
    let result = apply_locked(client).await;
    let unlock = client
        .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK_KEY])
        .await
        .map_err(LedgerError::query("releasing the migration lock"));
    let applied = result?;
    unlock?;
    Ok(applied)
}

async fn apply_locked(client: &mut Client) -> Result<usize, LedgerError> {
    client
        .batch_execute(
            "CREATE SCHEMA IF NOT EXISTS dmsguard;
             CREATE TABLE IF NOT EXISTS dmsguard.schema_migrations (
                 version    integer PRIMARY KEY,
                 name       text NOT NULL,
                 applied_at timestamptz NOT NULL DEFAULT now()
             );",
        )
        .await
        .map_err(LedgerError::query("creating the dmsguard schema"))?;
    let current: i32 = client
        .query_one(
            "SELECT coalesce(max(version), 0) FROM dmsguard.schema_migrations",
            &[],
        )
        .await
        .map_err(LedgerError::query("reading the schema version"))?
        .get(0);
    let mut applied = 0;
    for migration in MIGRATIONS.iter().filter(|m| m.version > current) {
        let tx = client
            .transaction()
            .await
            .map_err(LedgerError::query("starting a migration"))?;
        tx.batch_execute(migration.sql)
            .await
            .map_err(LedgerError::query("applying a migration"))?;
        tx.execute(
            "INSERT INTO dmsguard.schema_migrations (version, name) VALUES ($1, $2)",
            &[&migration.version, &migration.name],
        )
        .await
        .map_err(LedgerError::query("recording a migration"))?;
        tx.commit()
            .await
            .map_err(LedgerError::query("committing a migration"))?;
        tracing::info!(
            version = migration.version,
            name = migration.name,
            "Applied ledger migration."
        );
        applied += 1;
    }
    Ok(applied)
}
