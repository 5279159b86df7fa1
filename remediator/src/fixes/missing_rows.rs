//! F4: insert rows missing in the target for one table and window: the gap finder lists the ids,
//! the rows come from the source in batches, go through the type translator, and only ids still
//! absent are inserted (checked in a transaction that first takes `LOCK` on the table).
//!
//! The window comes from the job's labels: `day` (`YYYY-MM-DD`, UTC), or `from_id` and `to_id`
//! (inclusive), or `window` = `today` | `yesterday` (the alert's label); by default yesterday.
//! A day maps to ids through the table's `day_column`; a table without one is checked over its
//! whole id range.
//!
//! Only rows replication has passed are judged (`dmsguard_pipeline::frontier`): the fix reads
//! the window's ids and the source's newest id, then waits until the table's task has applied
//! every change committed before that moment plus `[frontier] margin` (its CloudWatch target
//! latency says so), and only then compares. A row still on its way is never inserted (that
//! would race DMS's own INSERT into a duplicate), and a quiet table's last rows, which no newer
//! row will ever follow, are found all the same.

use std::time::Duration;

use chrono::{DateTime, Duration as Days, NaiveDate, Utc};
use dmsguard_pipeline::catalogue::{Catalogue, SourceTable};
use dmsguard_pipeline::clock::Clock;
use dmsguard_pipeline::config::{Config, FixName, QualifiedName, TableConfig};
use dmsguard_pipeline::frontier::task_progress;
use dmsguard_pipeline::gap_finder::{
    id_range_for_day, id_range_of_tables, source_max_id, GapFinder, IdRange, TableSpec,
};
use dmsguard_pipeline::staging::{
    query_group_sql, set_query_group, Moved, StageLimits, StagedWriter,
};
use dmsguard_pipeline::type_translator::{
    fetch_source_rows, lock_sql, FetchError, SourceRow, Translator,
};
use serde_json::{json, Value};

use super::{Fix, FixContext, FixError, Outcome, Plan};
use crate::ledger::repairs::{RepairKey, RepairProgress};
use crate::ledger::Job;
use crate::metrics::RepairRowOutcome;
use dmsguard_pipeline::report::ErrorChain;

/// Ids listed in a plan's facts; the count is always complete.
const MAX_IDS_IN_FACTS: usize = 1000;
/// Translation errors kept in a job's outcome; the count is always complete.
const MAX_ERRORS_IN_DETAILS: usize = 100;
/// Attempts of one batch that conflicts with a concurrent writer (DMS, another run).
pub(crate) const INSERT_ATTEMPTS: u32 = 5;

pub struct MissingRowsFix;

/// Which ids of the table a job repairs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Window {
    /// The ids whose `day_column` falls in this UTC day.
    Day(NaiveDate),
    /// These ids, inclusive.
    Ids(IdRange),
    /// Every id (the table has no `day_column`).
    Whole,
}

impl std::fmt::Display for Window {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Window::Day(day) => write!(f, "UTC day {day}"),
            Window::Ids(range) => write!(f, "ids {range}"),
            Window::Whole => f.write_str("the whole id range"),
        }
    }
}

/// A label as text (labels are strings from alerts; the CLI may give numbers).
fn label(labels: &Value, key: &str) -> Option<String> {
    match labels.get(key)? {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// The window a job asks for, given the table and today's UTC date.
pub fn window(labels: &Value, table: &TableConfig, today: NaiveDate) -> Result<Window, FixError> {
    let id = |key: &str| -> Result<Option<i64>, FixError> {
        label(labels, key)
            .map(|v| {
                v.trim().parse::<i64>().map_err(|_| {
                    FixError::Input(format!("`{key}` must be an integer id, got `{v}`"))
                })
            })
            .transpose()
    };
    match (id("from_id")?, id("to_id")?) {
        (Some(lo), Some(hi)) => {
            return IdRange::new(lo, hi)
                .map(Window::Ids)
                .map_err(|e| FixError::Input(e.to_string()))
        }
        (None, None) => {}
        _ => {
            return Err(FixError::Input(
                "give both `from_id` and `to_id`, or neither".to_owned(),
            ))
        }
    }
    let day = match (label(labels, "day"), label(labels, "window").as_deref()) {
        (Some(day), _) => Some(NaiveDate::parse_from_str(&day, "%Y-%m-%d").map_err(|_| {
            FixError::Input(format!("`day` must be a date as YYYY-MM-DD, got `{day}`"))
        })?),
        (None, Some("today")) => Some(today),
        (None, Some("yesterday") | None) => None,
        (None, Some(other)) => {
            return Err(FixError::Input(format!(
                "`window` must be `today` or `yesterday`, got `{other}`"
            )))
        }
    };
    if table.day_column.is_none() {
        if day.is_some() && label(labels, "day").is_some() {
            return Err(FixError::Input(format!(
                "table {} has no day_column: repair it by ids (from_id/to_id) or whole",
                table.source
            )));
        }
        return Ok(Window::Whole);
    }
    Ok(Window::Day(day.unwrap_or(today - Days::days(1))))
}

/// The configured table a job names.
pub(crate) fn job_table<'c>(config: &'c Config, job: &Job) -> Result<&'c TableConfig, FixError> {
    let name = job
        .target
        .table
        .as_deref()
        .ok_or_else(|| FixError::Input(format!("fix `{}` needs a table", job.fix)))?;
    config
        .table(name)
        .ok_or_else(|| FixError::Input(format!("table `{name}` is not in [[tables]]")))
}

/// What one search found.
struct Search {
    /// The ids searched: the window, cut at the source's newest id when it was read.
    range: Option<IdRange>,
    missing: Vec<i64>,
    extra: usize,
    /// The source's newest id when the window was read: the ids judged.
    frontier: Option<i64>,
}

/// The window's ids as the source has them now, cut at its newest id, and when they were read.
pub(crate) struct Sighting {
    pub range: Option<IdRange>,
    pub frontier: Option<i64>,
    pub seen: DateTime<Utc>,
}

pub(crate) async fn sight(
    source: &tokio_postgres::Client,
    target: &tokio_postgres::Client,
    table: &TableConfig,
    spec: &TableSpec,
    window: &Window,
) -> Result<Sighting, FixError> {
    let seen = Utc::now();
    let newest = source_max_id(source, spec).await?;
    let range = match window {
        Window::Ids(range) => Some(*range),
        Window::Day(day) => {
            let column = table.day_column.as_deref().unwrap_or_default();
            id_range_for_day(source, spec, column, *day).await?
        }
        Window::Whole => id_range_of_tables(source, target, spec).await?,
    };
    Ok(Sighting {
        range: range.zip(newest).and_then(|(r, max)| r.up_to(max)),
        frontier: newest,
        seen,
    })
}

/// What a table fix starts from, in plan and in execute alike: the job's window, the two
/// connections (the source's for reads, so a replica when configured) and the window sighted.
pub(crate) struct Sighted {
    pub window: Window,
    pub spec: TableSpec,
    pub source: tokio_postgres::Client,
    pub target: tokio_postgres::Client,
    pub sighting: Sighting,
}

impl Sighted {
    pub(crate) async fn open(
        ctx: &FixContext,
        table: &TableConfig,
        job: &Job,
    ) -> Result<Sighted, FixError> {
        let window = window(
            &job.labels,
            table,
            Clock::from_config(&ctx.config().clock).today(),
        )?;
        let spec = TableSpec::from_config(table)?;
        let source = ctx.connect_source().await?;
        let target = ctx.connect_redshift().await?;
        let sighting = sight(&source, &target, table, &spec, &window).await?;
        Ok(Sighted {
            window,
            spec,
            source,
            target,
            sighting,
        })
    }
}

/// Waits until replication of `table` has passed `seen` plus the margin; the progress reached.
/// With a `[source.replica]` the
/// replica's replay point (read on `source`, the reads connection) must have passed it too, so
/// the source ids compared afterwards include every row committed by then.
pub(crate) async fn wait_settled(
    ctx: &FixContext,
    table: &TableConfig,
    seen: DateTime<Utc>,
    source: &tokio_postgres::Client,
) -> Result<DateTime<Utc>, FixError> {
    let frontier = &ctx.config().frontier;
    let task = match &table.task {
        Some(name) => Some(ctx.config().task(name).ok_or_else(|| {
            FixError::Input(format!(
                "task `{name}` of {} is not in [[tasks]]",
                table.source
            ))
        })?),
        None => None,
    };
    let poll =
        (frontier.cloudwatch_period / 4).clamp(Duration::from_millis(200), Duration::from_secs(15));
    let lookback = (frontier.cloudwatch_period * 4).max(Duration::from_secs(600));
    let started = tokio::time::Instant::now();
    loop {
        let progress = match task {
            Some(task) => task_progress(ctx.aws(), frontier, task, lookback).await?,
            None => Some(frontier.fallback_progress(Utc::now())),
        };
        let progress = match (progress, ctx.config().source_replica.is_some()) {
            (Some(p), true) => {
                let replica = dmsguard_pipeline::replica::replay_state(source).await?;
                Some(dmsguard_pipeline::replica::bound_progress(
                    p,
                    Some(replica.replayed_as_of(Utc::now())),
                ))
            }
            (progress, _) => progress,
        };
        if let Some(p) = progress.filter(|p| frontier.settled(seen, *p)) {
            return Ok(p);
        }
        if started.elapsed() >= frontier.wait {
            let mut whose = task.map_or_else(
                || "the assumed latency (no task configured)".to_owned(),
                |t| format!("task {} (CloudWatch CDCLatencyTarget)", t.name),
            );
            if ctx.config().source_replica.is_some() {
                whose.push_str(", bounded by the source replica's replay point");
            }
            let reached = progress.map_or_else(|| "no datapoint".to_owned(), |p| p.to_rfc3339());
            return Err(FixError::NotSettled(format!(
                "replication of {} has not applied the changes committed before {} within {:?}: progress of {whose}: {reached}",
                table.source,
                (seen + Days::from_std(frontier.margin).unwrap_or(Days::zero())).to_rfc3339(),
                frontier.wait
            )));
        }
        tokio::time::sleep(poll).await;
    }
}

async fn search(
    source: &tokio_postgres::Client,
    target: &tokio_postgres::Client,
    spec: &TableSpec,
    sighting: &Sighting,
) -> Result<Search, FixError> {
    let Some(range) = sighting.range else {
        return Ok(Search {
            range: None,
            missing: Vec::new(),
            extra: 0,
            frontier: sighting.frontier,
        });
    };
    let report = GapFinder::default()
        .find(source, target, spec, range)
        .await?;
    Ok(Search {
        range: Some(range),
        missing: report.missing,
        extra: report.extra.len(),
        frontier: sighting.frontier,
    })
}

/// Source and target definitions and the translator between them.
pub(crate) struct RowCopier {
    /// The table as configured (`[[tables]] source`): its label in metrics, as the exporter's.
    pub label: String,
    pub source_table: SourceTable,
    pub translator: Translator,
    pub id_column: String,
}

impl RowCopier {
    pub async fn load(
        source: &tokio_postgres::Client,
        target: &tokio_postgres::Client,
        table: &TableConfig,
    ) -> Result<Self, FixError> {
        let spec = TableSpec::from_config(table)?;
        let source_table = Catalogue::load_source(source, &spec.source).await?;
        let target_table = Catalogue::load(target, &spec.target).await?;
        let translator = Translator::new(&source_table, &target_table, &table.id_column)?;
        Ok(Self {
            label: table.source.clone(),
            source_table,
            translator,
            id_column: table.id_column.clone(),
        })
    }

    /// The write limits of the config.
    pub fn limits(ctx: &FixContext) -> StageLimits {
        let r = &ctx.config().remediator;
        StageLimits {
            move_rows: r.repair_move_rows,
            statement_rows: r.repair_statement_rows,
            statement_bytes: r.repair_statement_bytes,
            max_attempts: INSERT_ATTEMPTS,
        }
    }

    /// The statements the write path sends, values as `$n` placeholders (loads shown for one
    /// row), for plans.
    pub fn write_sql(&self, ctx: &FixContext) -> Vec<(String, String)> {
        let writer = StagedWriter::new(&self.translator, Self::limits(ctx));
        let group = &ctx.config().remediator.repair_query_group;
        let mut steps = Vec::new();
        if !group.is_empty() {
            steps.push((
                "Once per run: label the Redshift session's statements with the query group (for WLM queue routing).".to_owned(),
                query_group_sql(group),
            ));
        }
        steps.extend([
            (
                "Once per run: a session temporary staging table shaped like the target.".to_owned(),
                writer.create_sql(),
            ),
            (
                format!(
                    "Load each batch into it with multi-row INSERT … VALUES (shown for one row; up to {} rows a statement, within 32,767 parameters and {} bytes).",
                    writer.max_rows_per_statement(),
                    ctx.config().remediator.repair_statement_bytes
                ),
                writer.load_sql(1),
            ),
            (
                format!(
                    "Every {} rows: move those still absent into the target in one transaction that first takes LOCK on it, then empty the stage.",
                    ctx.config().remediator.repair_move_rows
                ),
                [
                    lock_sql(self.translator.table()),
                    writer.move_sql(),
                    writer.truncate_sql(),
                ]
                .join(";\n"),
            ),
        ]);
        steps
    }

    /// Fetches, translates and inserts the rows of `ids` (ascending) still absent: read from
    /// the source `insert_batch_rows` at a time, staged, and moved into the target every
    /// `repair_move_rows` rows (see `dmsguard_pipeline::staging`). After each move, progress is
    /// reported, counted in the metrics and, with a `checkpoint`, recorded in the ledger.
    pub async fn copy(
        &self,
        ctx: &FixContext,
        source: &tokio_postgres::Client,
        target: &mut tokio_postgres::Client,
        target_name: &QualifiedName,
        ids: &[i64],
        checkpoint: Option<Checkpoint<'_>>,
    ) -> Result<CopyResult, FixError> {
        let batch_rows = ctx.config().remediator.insert_batch_rows.max(1);
        let rate = ctx.config().remediator.repair_rows_per_second;
        let table = self.label.clone();
        let mut result = CopyResult {
            found: ids.len() as u64,
            ..CopyResult::default()
        };
        ctx.progress().start(
            &format!("Inserting missing rows of {target_name}"),
            result.found,
        );
        if let Some(m) = ctx.metrics() {
            m.set_repair_rows_remaining(&table, result.found, &RepairRowOutcome::INSERTS);
        }
        let group = &ctx.config().remediator.repair_query_group;
        if !group.is_empty() {
            set_query_group(target, group)
                .await
                .map_err(|source| FixError::Query {
                    what: format!("setting query_group `{group}` on Redshift"),
                    source,
                })?;
        }
        let mut writer = StagedWriter::new(&self.translator, Self::limits(ctx));
        let started = tokio::time::Instant::now();
        let mut done = 0u64;
        // Counted when the batch's rows are committed in the target.
        let mut pending = Pending::default();
        // The source is read one chunk ahead: the next chunk's rows are fetched while the
        // current ones are written to the target (each on its own connection), so a repair
        // waits on the slower of the two databases, not on both in turn (bench-repair).
        let mut chunks = ids.chunks(batch_rows);
        let mut next = chunks.next();
        let mut fetched = self.fetch(source, next).await?;
        while let (Some(chunk), Some(rows)) = (next, fetched.take()) {
            if let Some(rate) = rate {
                // Averaged over the repair: wait until the rows done so far are due.
                let due = started + Duration::from_secs_f64(done as f64 / rate as f64);
                tokio::time::sleep_until(due).await;
            }
            pending.gone += (chunk.len() - rows.len()) as u64;
            let (good, bad) = self.translator.translate_all(&rows);
            pending.failed += bad.len() as u64;
            for error in bad {
                tracing::warn!(table = %target_name, error = %ErrorChain(&error), "Row cannot be translated; not inserted.");
                if result.errors.len() < MAX_ERRORS_IN_DETAILS {
                    result.errors.push(error.to_string());
                }
            }
            next = chunks.next();
            let write = async {
                writer.stage(target, &good).await?;
                if writer.is_full() {
                    writer.move_staged(target).await.map(Some)
                } else {
                    Ok(None)
                }
            };
            let (written, prefetched) = tokio::join!(write, self.fetch(source, next));
            let moved = written?;
            fetched = prefetched?;
            done += chunk.len() as u64;
            pending.through = chunk.last().copied();
            if let Some(moved) = moved {
                self.settle(
                    ctx,
                    &table,
                    &mut result,
                    &mut pending,
                    moved,
                    done,
                    checkpoint.as_ref(),
                )
                .await?;
            }
            ctx.progress().update(done, result.inserted);
        }
        let moved = writer.finish(target).await?;
        self.settle(
            ctx,
            &table,
            &mut result,
            &mut pending,
            moved,
            done,
            checkpoint.as_ref(),
        )
        .await?;
        ctx.progress().update(done, result.inserted);
        ctx.progress().finish(&result.summary());
        Ok(result)
    }

    /// The source rows of `chunk`, if there is one.
    async fn fetch(
        &self,
        source: &tokio_postgres::Client,
        chunk: Option<&[i64]>,
    ) -> Result<Option<Vec<SourceRow>>, FetchError> {
        match chunk {
            Some(chunk) => fetch_source_rows(source, &self.source_table, &self.id_column, chunk)
                .await
                .map(Some),
            None => Ok(None),
        }
    }

    /// Counts a committed move and records how far the copy got.
    #[allow(clippy::too_many_arguments)]
    async fn settle(
        &self,
        ctx: &FixContext,
        table: &str,
        result: &mut CopyResult,
        pending: &mut Pending,
        moved: Moved,
        done: u64,
        checkpoint: Option<&Checkpoint<'_>>,
    ) -> Result<(), FixError> {
        result.inserted += moved.inserted;
        result.already_present += moved.already_present();
        result.gone_from_source += pending.gone;
        result.failed += pending.failed;
        if let Some(m) = ctx.metrics() {
            m.repair_rows(table, RepairRowOutcome::Inserted, moved.inserted);
            m.repair_rows(
                table,
                RepairRowOutcome::AlreadyPresent,
                moved.already_present(),
            );
            m.repair_rows(table, RepairRowOutcome::GoneFromSource, pending.gone);
            m.repair_rows(table, RepairRowOutcome::Failed, pending.failed);
            m.set_repair_rows_remaining(
                table,
                result.found.saturating_sub(done),
                &RepairRowOutcome::INSERTS,
            );
        }
        if let (Some(c), Some(through)) = (checkpoint, pending.through) {
            let progress = RepairProgress {
                range_lo: c.range.lo,
                range_hi: c.range.hi,
                done_through: through,
                inserted: c.inserted_before + result.inserted as i64,
                job_id: Some(c.job_id),
            };
            ctx.ledger()
                .record_repair_progress(c.key, Some(c.job_id), &progress)
                .await?;
            tracing::info!(
                table,
                done_through = through,
                inserted = result.inserted,
                "Repair progress recorded."
            );
        }
        *pending = Pending::default();
        Ok(())
    }
}

/// Rows handled since the last move, counted when it commits.
#[derive(Default)]
struct Pending {
    gone: u64,
    failed: u64,
    /// The highest id handled.
    through: Option<i64>,
}

/// Where a resumable copy records its progress.
pub(crate) struct Checkpoint<'a> {
    pub key: &'a RepairKey,
    pub job_id: i64,
    /// The whole window's ids.
    pub range: IdRange,
    /// Rows earlier runs of the same repair inserted.
    pub inserted_before: i64,
}

/// What a copy did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct CopyResult {
    pub found: u64,
    pub inserted: u64,
    /// Translated, but another writer had inserted them meanwhile.
    pub already_present: u64,
    /// Deleted at the source since they were found.
    pub gone_from_source: u64,
    /// Rows the translator refused (details in `errors`).
    pub failed: u64,
    pub errors: Vec<String>,
}

impl CopyResult {
    pub fn summary(&self) -> String {
        format!(
            "{} found, {} inserted, {} already present, {} gone from the source, {} failed",
            self.found, self.inserted, self.already_present, self.gone_from_source, self.failed
        )
    }

    pub fn details(&self) -> Value {
        json!({
            "found": self.found,
            "inserted": self.inserted,
            "already_present": self.already_present,
            "gone_from_source": self.gone_from_source,
            "failed": self.failed,
            "errors": self.errors,
        })
    }
}

/// Ids as facts: the first ones, and how many there are.
pub(crate) fn ids_fact(ids: &[i64]) -> Value {
    json!({
        "count": ids.len(),
        "ids": ids.iter().take(MAX_IDS_IN_FACTS).collect::<Vec<_>>(),
        "listed_all": ids.len() <= MAX_IDS_IN_FACTS,
    })
}

#[async_trait::async_trait]
impl Fix for MissingRowsFix {
    fn name(&self) -> FixName {
        FixName::MissingRows
    }

    async fn plan(&self, ctx: &FixContext, job: &Job) -> Result<Plan, FixError> {
        let table = job_table(ctx.config(), job)?;
        // The plan does not wait for replication: rows still on their way may be listed.
        let Sighted {
            window,
            spec,
            source,
            target,
            sighting,
        } = Sighted::open(ctx, table, job).await?;
        let key = repair_key(table, &window);
        let recorded = ctx.ledger().repair_progress(&key).await?;
        let (sighting, resumed_from) = resume(sighting, recorded.as_ref());
        let found = search(&source, &target, &spec, &sighting).await?;
        let copier = RowCopier::load(&source, &target, table).await?;
        let batch = ctx.config().remediator.insert_batch_rows;
        let mut plan = Plan::new(format!(
            "Insert the rows of {} missing in {} for {window}: {} missing id(s).",
            table.source,
            spec.target,
            found.missing.len()
        ));
        plan.facts.insert("table".into(), json!(table.source));
        plan.facts
            .insert("window".into(), json!(window.to_string()));
        plan.facts.insert(
            "id_range".into(),
            json!(found.range.map(|r| json!({ "from": r.lo, "to": r.hi }))),
        );
        plan.facts
            .insert("missing".into(), ids_fact(&found.missing));
        plan.facts.insert("extra".into(), json!(found.extra));
        plan.facts.insert("frontier".into(), json!(found.frontier));
        let margin = ctx.config().frontier.margin;
        plan.step(match &table.task {
            Some(task) => format!(
                "Read the window's ids and the newest id of {} now, then wait until task {task} has applied every change committed before now + {margin:?} (CloudWatch CDCLatencyTarget), at most {:?}: later ids are left to DMS.",
                spec.source, ctx.config().frontier.wait
            ),
            None => format!(
                "Read the window's ids and the newest id of {} now, then wait {:?} (the assumed latency, no task configured) + {margin:?}: later ids are left to DMS.",
                spec.source, ctx.config().frontier.fallback_latency
            ),
        });
        if !found.missing.is_empty() {
            plan.step("Ids listed below may still be on their way: the run judges them only after the wait.");
        }
        if let Some(from) = resumed_from {
            plan.facts.insert("resumed_from".into(), json!(from));
            plan.step(format!(
                "Continue an unfinished repair of {window} (recorded in the ledger): every id below {from} was handled; search only from {from} on."
            ));
        }
        match found.range {
            None => {
                plan.step(format!(
                    "Nothing to do: the source has no rows for {window}, or DMS has applied none of them yet."
                ));
            }
            Some(range) => {
                plan.step(format!(
                    "Find ids of {} in {range} missing in {} (gap finder).",
                    table.source, spec.target
                ));
                if found.missing.is_empty() {
                    plan.step("Nothing to insert: no id is missing.");
                } else {
                    plan.step(format!(
                        "Missing ids ({}): {}.",
                        found.missing.len(),
                        preview(&found.missing)
                    ));
                    plan.step(format!(
                        "Fetch their rows from the source {} in batches of {batch} and translate them to the target's column types.",
                        spec.source
                    ));
                    for (action, sql) in copier.write_sql(ctx) {
                        plan.sql_step(action, sql);
                    }
                }
            }
        }
        if found.extra > 0 {
            plan.step(format!(
                "Leave alone {} id(s) in the target that the source no longer has.",
                found.extra
            ));
        }
        Ok(plan)
    }

    async fn execute(
        &self,
        ctx: &FixContext,
        job: &Job,
        _plan: &Plan,
    ) -> Result<Outcome, FixError> {
        let table = job_table(ctx.config(), job)?;
        // Read again: the plan may be stale, and the search is cheap next to a repair.
        let Sighted {
            window,
            spec,
            source,
            mut target,
            sighting,
        } = Sighted::open(ctx, table, job).await?;
        let progress = wait_settled(ctx, table, sighting.seen, &source).await?;
        let key = repair_key(table, &window);
        let recorded = ctx.ledger().repair_progress(&key).await?;
        let whole = sighting.range;
        let (sighting, resumed_from) = resume(sighting, recorded.as_ref());
        if let Some(from) = resumed_from {
            tracing::info!(job = job.id, table = %table.source, %window, from, "Continuing an unfinished repair from the progress in the ledger.");
        }
        let found = search(&source, &target, &spec, &sighting).await?;
        let mut details = json!({
            "seen_at": sighting.seen.to_rfc3339(),
            "replicated_until": progress.to_rfc3339(),
            "table": table.source,
            "window": window.to_string(),
            "id_range": whole.map(|r| json!({ "from": r.lo, "to": r.hi })),
            "searched": found.range.map(|r| json!({ "from": r.lo, "to": r.hi })),
            "resumed_from": resumed_from,
            "missing": ids_fact(&found.missing),
            "extra": found.extra,
            "frontier": found.frontier,
        });
        if found.missing.is_empty() {
            if recorded.is_some() {
                ctx.ledger().clear_repair_progress(&key).await?;
            }
            merge(&mut details, CopyResult::default().details());
            return Ok(Outcome::succeeded(
                format!(
                    "No rows of {} missing for {window}; nothing inserted.",
                    table.source
                ),
                details,
            ));
        }
        let copier = RowCopier::load(&source, &target, table).await?;
        let checkpoint = whole.map(|range| Checkpoint {
            key: &key,
            job_id: job.id,
            range,
            inserted_before: recorded
                .as_ref()
                .filter(|_| resumed_from.is_some())
                .map_or(0, |p| p.inserted),
        });
        let result = copier
            .copy(
                ctx,
                &source,
                &mut target,
                &spec.target,
                &found.missing,
                checkpoint,
            )
            .await?;
        // Finished: the next run of this repair searches the whole window again.
        ctx.ledger().clear_repair_progress(&key).await?;
        merge(&mut details, result.details());
        let summary = format!("{} for {window}: {}.", table.source, result.summary());
        Ok(if result.failed > 0 {
            Outcome::failed(summary, details)
        } else {
            Outcome::succeeded(summary, details)
        })
    }
}

/// The ledger's key of a repair of `table` over `window`.
fn repair_key(table: &TableConfig, window: &Window) -> RepairKey {
    RepairKey {
        fix: FixName::MissingRows,
        table: table.source.clone(),
        window: window.to_string(),
    }
}

/// Narrows the sighting to the ids after `recorded`, the progress of an unfinished run of the
/// same repair over the same window (same first id): those before were handled. Returns the
/// first id searched when it continues one.
fn resume(sighting: Sighting, recorded: Option<&RepairProgress>) -> (Sighting, Option<i64>) {
    let Some((range, p)) = sighting.range.zip(recorded) else {
        return (sighting, None);
    };
    if p.range_lo != range.lo || p.done_through < range.lo {
        return (sighting, None);
    }
    let from = p.done_through.saturating_add(1);
    let narrowed = IdRange::new(from, range.hi).ok();
    (
        Sighting {
            range: narrowed,
            ..sighting
        },
        Some(from),
    )
}

/// Adds the keys of `more` (an object) to `details` (an object).
pub(crate) fn merge(details: &mut Value, more: Value) {
    if let (Value::Object(d), Value::Object(m)) = (details, more) {
        d.extend(m);
    }
}

/// The first few ids, for one line of a plan.
pub(crate) fn preview(ids: &[i64]) -> String {
    const SHOWN: usize = 20;
    let head: Vec<String> = ids.iter().take(SHOWN).map(i64::to_string).collect();
    if ids.len() > SHOWN {
        format!("{}, … ({} more)", head.join(", "), ids.len() - SHOWN)
    } else {
        head.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(day_column: Option<&str>) -> TableConfig {
        TableConfig {
            source: "public.orders".into(),
            target: None,
            id_column: "id".into(),
            day_column: day_column.map(str::to_owned),
            task: None,
            divergent_rows: false,
            delete_extra: false,
            scan_budget_rows: None,
        }
    }

    #[test]
    fn window_defaults_to_yesterday_and_reads_labels() {
        let today = NaiveDate::from_ymd_opt(2026, 11, 25).unwrap();
        let t = table(Some("created_at"));
        let yesterday = NaiveDate::from_ymd_opt(2026, 11, 24).unwrap();
        assert_eq!(
            window(&json!({}), &t, today).unwrap(),
            Window::Day(yesterday)
        );
        assert_eq!(
            window(&json!({"window": "yesterday"}), &t, today).unwrap(),
            Window::Day(yesterday)
        );
        assert_eq!(
            window(&json!({"window": "today"}), &t, today).unwrap(),
            Window::Day(today)
        );
        assert_eq!(
            window(&json!({"day": "2026-01-02"}), &t, today).unwrap(),
            Window::Day(NaiveDate::from_ymd_opt(2026, 1, 2).unwrap())
        );
        assert_eq!(
            window(&json!({"from_id": "5", "to_id": 9}), &t, today).unwrap(),
            Window::Ids(IdRange { lo: 5, hi: 9 })
        );
        assert_eq!(
            window(&json!({}), &table(None), today).unwrap(),
            Window::Whole
        );
    }

    #[test]
    fn bad_windows_are_refused_by_name() {
        let today = NaiveDate::from_ymd_opt(2026, 11, 25).unwrap();
        let t = table(Some("created_at"));
        for (labels, needle) in [
            (json!({"from_id": "5"}), "both"),
            (json!({"from_id": "9", "to_id": "5"}), "above"),
            (json!({"from_id": "x", "to_id": "5"}), "from_id"),
            (json!({"day": "yesterday"}), "YYYY-MM-DD"),
            (json!({"window": "last_week"}), "window"),
        ] {
            let error = window(&labels, &t, today).unwrap_err().to_string();
            assert!(error.contains(needle), "{labels}: {error}");
        }
        let error = window(&json!({"day": "2026-01-02"}), &table(None), today)
            .unwrap_err()
            .to_string();
        assert!(error.contains("day_column"), "{error}");
    }

    #[test]
    fn the_target_max_query_is_valid_redshift() {
        let spec = TableSpec::from_config(&table(None)).unwrap();
        let sql = dmsguard_pipeline::gap_finder::target_max_id_sql(&spec);
        assert_eq!(
            sql,
            "SELECT CAST(MAX(\"id\") AS BIGINT) FROM \"public\".\"orders\""
        );
        dmsguard_pipeline::statement_parser::is_valid_redshift_sql(&sql).unwrap();
    }

    #[test]
    fn preview_caps_long_lists() {
        assert_eq!(preview(&[1, 2, 3]), "1, 2, 3");
        let many: Vec<i64> = (1..=25).collect();
        assert!(preview(&many).ends_with("… (5 more)"));
    }

    #[test]
    fn facts_list_ids_up_to_the_cap() {
        let ids: Vec<i64> = (0..2000).collect();
        let fact = ids_fact(&ids);
        assert_eq!(fact["count"], 2000);
        assert_eq!(fact["ids"].as_array().unwrap().len(), MAX_IDS_IN_FACTS);
        assert_eq!(fact["listed_all"], false);
    }
}
