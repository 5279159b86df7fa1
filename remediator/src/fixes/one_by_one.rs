//! F1: repair the row behind one-by-one mode, then stop and resume the task.
//!
//! DMS falls back to one-by-one mode when a bulk `UPDATE … FROM awsdms_changes…` touches fewer
//! rows than its seq range holds: a row it updates is missing in the target. The fix finds the
//! latest rolled-back DMS UPDATE in the system views (full text reassembled from its pieces),
//! parses it, and accepts it only if its target and intermediate tables are quoted, the target is
//! a configured table of the alert's task and the intermediate table is DMS's. A LEFT JOIN of the
//! intermediate table's rows in the seq range against the target (restricted to their id span, so
//! the cost follows the seq range, not the table) lists the missing ids; their rows are copied
//! from the source through the type translator, inserted only where still absent, and the task is
//! stopped and resumed with `resume-processing`. Nothing missing any more: nothing changes.

use chrono::Utc;
use dmsguard_pipeline::config::{
    is_identifier, quote_ident, Config, FixName, QualifiedName, SystemViews, TableConfig,
};
use dmsguard_pipeline::gap_finder::TableSpec;
use dmsguard_pipeline::statement_parser::{
    parse_dms_statement_detailed, StatementKind, CHANGES_TABLE_PREFIX,
};
use dmsguard_pipeline::system_views::{
    char_value, rolls_back, StatementReader, STL_PIECE_CHARS, TRUNCATED_TEXT_CHARS,
};
use serde_json::{json, Value};
use tokio_postgres::Client;

use super::missing_rows::{ids_fact, merge, preview, RowCopier};
use super::{configured_task, job_task, CooldownPolicy, Fix, FixContext, FixError, Outcome, Plan};
use crate::ledger::Job;

/// Rolled-back DMS statements examined, newest first, before giving up.
const CANDIDATES: i64 = 50;
/// Ids per query when checking that repaired rows are in the target.
const PRESENT_IDS_PER_QUERY: usize = 500;
/// Looks at the candidates when the newest ones' rows were already replaced.
const FIND_ATTEMPTS: u32 = 5;
/// About one DMS batch: time for the next rolled-back batch to be logged.
const FIND_RETRY: std::time::Duration = std::time::Duration::from_secs(1);

pub struct OneByOneFix;

/// The SQL listing the newest rolled-back DMS statements: `$1` is the earliest start time,
/// `$2` the DMS comment's `LIKE` pattern, `$3` the DMS user (when `reader` has one).
///
/// A statement is rolled back when its transaction logged a ROLLBACK or ABORT statement
/// (`SYS_QUERY_HISTORY`, or `STL_UTILITYTEXT`, which captures ABORT, BEGIN, COMMIT, END and
/// ROLLBACK), which a user with `SYSLOG ACCESS UNRESTRICTED` sees; or when
/// `SYS_TRANSACTION_HISTORY` says `rolledback` (visible only to superusers); or (STL) when the
/// query itself was stopped (`aborted` = 1). A DMS UPDATE that ran to completion in a
/// transaction DMS then rolled back has `aborted` = 0 (the STL_QUERY, STL_UTILITYTEXT,
/// SYS_QUERY_HISTORY and SYS_TRANSACTION_HISTORY pages of the Amazon Redshift Database
/// Developer Guide).
pub fn candidates_sql(family: SystemViews, reader: &StatementReader) -> String {
    match family {
        SystemViews::Sys => format!(
            "SELECT q.query_id, q.query_text FROM sys_query_history q \
             LEFT JOIN sys_transaction_history t ON t.transaction_id = q.transaction_id \
             LEFT JOIN (SELECT DISTINCT transaction_id FROM sys_query_history \
               WHERE start_time >= $1 AND {rollback}) r ON r.transaction_id = q.transaction_id \
             WHERE (t.status = 'rolledback' OR r.transaction_id IS NOT NULL) \
             AND q.start_time >= $1 AND q.query_text LIKE $2{user} \
             ORDER BY q.query_id DESC LIMIT {CANDIDATES}",
            rollback = rolls_back("query_text"),
            user = reader.user_filter("q.user_id", 3),
        ),
        SystemViews::Stl => format!(
            "SELECT CAST(q.query AS bigint), q.querytxt FROM stl_query q \
             LEFT JOIN (SELECT DISTINCT xid FROM stl_utilitytext \
               WHERE starttime >= $1 AND sequence = 0 AND {rollback}) r ON r.xid = q.xid \
             WHERE (q.aborted = 1 OR r.xid IS NOT NULL) \
             AND q.starttime >= $1 AND q.querytxt LIKE $2{user} \
             ORDER BY q.query DESC LIMIT {CANDIDATES}",
            rollback = rolls_back("text"),
            user = reader.user_filter("q.userid", 3),
        ),
    }
}

/// The system-view reader of `config` (family, DMS comment, DMS user, settle time).
fn statement_reader(config: &Config) -> StatementReader {
    StatementReader::from_config(&config.redshift)
}

/// The rolled-back DMS UPDATE the fix repairs.
#[derive(Debug, Clone)]
pub struct RolledBackUpdate {
    pub query_id: i64,
    pub table: TableConfig,
    pub target: QualifiedName,
    pub changes_table: QualifiedName,
    /// The intermediate table's column holding the target's id (`seg1`).
    pub id_segment: String,
    pub seq_range: (i64, i64),
}

impl RolledBackUpdate {
    fn facts(&self) -> Value {
        json!({
            "query_id": self.query_id,
            "table": self.table.source,
            "target": self.target.to_string(),
            "changes_table": self.changes_table.to_string(),
            "id_segment": self.id_segment,
            "seq_from": self.seq_range.0,
            "seq_to": self.seq_range.1,
        })
    }

    fn changes_filter(&self) -> String {
        format!(
            "changes.{seq} >= $1 AND changes.{seq} <= $2 AND changes.{tbl} = $3 AND changes.{op} = 'U'",
            seq = quote_ident("seq"),
            tbl = quote_ident("tbl"),
            op = quote_ident("op"),
        )
    }

    fn segment_id(&self) -> String {
        format!("CAST(changes.{} AS bigint)", quote_ident(&self.id_segment))
    }

    /// Min and max id the seq range touches: `$1`, `$2` seq bounds, `$3` the source table.
    pub fn id_span_sql(&self) -> String {
        format!(
            "SELECT MIN({id}), MAX({id}) FROM {changes} changes WHERE {filter}",
            id = self.segment_id(),
            changes = self.changes_table.quoted(),
            filter = self.changes_filter(),
        )
    }

    /// The ids the seq range updates that the target lacks: the intermediate table LEFT JOINed
    /// to the target rows in the id span (`$4`..`$5`), so only that span of the target is read.
    pub fn missing_ids_sql(&self) -> String {
        let id = quote_ident(&self.table.id_column);
        format!(
            "SELECT DISTINCT {seg} FROM {changes} changes \
             LEFT JOIN (SELECT CAST({id} AS BIGINT) AS {id} FROM {target} \
             WHERE {id} >= CAST($4 AS BIGINT) AND {id} <= CAST($5 AS BIGINT)) existing \
             ON existing.{id} = {seg} \
             WHERE {filter} AND existing.{id} IS NULL ORDER BY 1",
            seg = self.segment_id(),
            changes = self.changes_table.quoted(),
            target = self.target.quoted(),
            filter = self.changes_filter(),
        )
    }

    /// Of the ids the target lacks, those the source still has, and those the source deleted
    /// since (absent on both sides once DMS applies the delete: not missing).
    async fn missing_in_source(
        &self,
        source: &Client,
        absent: Vec<i64>,
    ) -> Result<(Vec<i64>, Vec<i64>), FixError> {
        let kept = in_source(source, &self.table, &absent).await?;
        let deleted = absent.into_iter().filter(|id| !kept.contains(id)).collect();
        Ok((kept, deleted))
    }

    /// Which of `n` ids (`$1`..`$n`) the target has. Ids are bound and read as BIGINT whatever
    /// the column's type (a source `int4` id is `INTEGER` on the target).
    pub fn present_ids_sql(&self, n: usize) -> String {
        let id = quote_ident(&self.table.id_column);
        let list: Vec<String> = (1..=n.max(1))
            .map(|i| format!("CAST(${i} AS BIGINT)"))
            .collect();
        format!(
            "SELECT CAST({id} AS BIGINT) FROM {} WHERE {id} IN ({})",
            self.target.quoted(),
            list.join(", ")
        )
    }

    /// Runs the two queries; the ids the target still lacks, ascending. `None` when the seq
    /// range has no rows left in the intermediate table: a later batch replaced them, and the
    /// range says nothing about what is missing.
    async fn missing_ids(&self, redshift: &Client) -> Result<Option<Vec<i64>>, FixError> {
        let query = |what: &str| {
            let what = what.to_owned();
            move |source: tokio_postgres::Error| FixError::Query { what, source }
        };
        let (lo, hi) = self.seq_range;
        let tbl = self.table.source.clone();
        let span = redshift
            .query_one(&self.id_span_sql(), &[&lo, &hi, &tbl])
            .await
            .map_err(query("reading the id span of the seq range"))?;
        let (Some(min), Some(max)) = (span.get::<_, Option<i64>>(0), span.get::<_, Option<i64>>(1))
        else {
            return Ok(None);
        };
        let rows = redshift
            .query(&self.missing_ids_sql(), &[&lo, &hi, &tbl, &min, &max])
            .await
            .map_err(query("joining the intermediate table to the target"))?;
        Ok(Some(rows.iter().map(|r| r.get::<_, i64>(0)).collect()))
    }
}

/// Which of `ids` the target table lacks, ascending.
async fn absent_in_target(
    redshift: &Client,
    update: &RolledBackUpdate,
    ids: &[i64],
) -> Result<Vec<i64>, FixError> {
    let mut absent = Vec::new();
    for chunk in ids.chunks(PRESENT_IDS_PER_QUERY) {
        let params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = chunk
            .iter()
            .map(|id| id as &(dyn tokio_postgres::types::ToSql + Sync))
            .collect();
        let rows = redshift
            .query(&update.present_ids_sql(chunk.len()), &params)
            .await
            .map_err(|source| FixError::Query {
                what: format!("checking the repaired ids in {}", update.target),
                source,
            })?;
        let present: Vec<i64> = rows.iter().map(|r| r.get::<_, i64>(0)).collect();
        absent.extend(chunk.iter().copied().filter(|i| !present.contains(i)));
    }
    Ok(absent)
}

/// Which of `ids` the source table still has, ascending.
async fn in_source(
    source: &Client,
    table: &TableConfig,
    ids: &[i64],
) -> Result<Vec<i64>, FixError> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let spec = TableSpec::from_config(table)?;
    let id = quote_ident(&table.id_column);
    let rows = source
        .query(
            &format!(
                "SELECT CAST({id} AS BIGINT) FROM {} WHERE {id} = ANY($1::int8[]) ORDER BY 1",
                spec.source.quoted()
            ),
            &[&ids],
        )
        .await
        .map_err(|source| FixError::Query {
            what: format!("checking which ids {} still has", table.source),
            source,
        })?;
    Ok(rows.iter().map(|r| r.get::<_, i64>(0)).collect())
}

/// Why a rolled-back statement is not one this fix repairs.
fn accept(
    config: &Config,
    task: &str,
    query_id: i64,
    text: &str,
) -> Result<RolledBackUpdate, String> {
    let parsed = parse_dms_statement_detailed(text).map_err(|e| e.to_string())?;
    let statement = parsed.statement;
    if statement.kind != StatementKind::Update {
        return Err(format!("a {}, not an UPDATE", statement.kind));
    }
    let Some(changes_table) = statement.changes_table else {
        return Err("a single-row statement (no intermediate table)".to_owned());
    };
    if !parsed.target_quoted || !parsed.changes_table_quoted {
        return Err("table names are not quoted as DMS quotes them".to_owned());
    }
    if !changes_table.table.starts_with(CHANGES_TABLE_PREFIX)
        || !is_identifier(&changes_table.table)
        || !is_identifier(&changes_table.schema)
    {
        return Err(format!(
            "{changes_table} is not a DMS intermediate table ({CHANGES_TABLE_PREFIX}…)"
        ));
    }
    let target_name = statement.target.to_string();
    let Some(table) = config
        .tables
        .iter()
        .find(|t| t.target_name() == target_name)
    else {
        return Err(format!("{target_name} is not a configured table"));
    };
    if table.task.as_deref().is_some_and(|t| t != task) {
        return Err(format!(
            "{target_name} is replicated by task {}, not {task}",
            table.task.as_deref().unwrap_or_default()
        ));
    }
    let Some(seq_range) = statement.seq_range else {
        return Err("the statement does not bound its seq range".to_owned());
    };
    let Some(id_segment) = statement
        .key_columns
        .iter()
        .find(|k| k.target_column.eq_ignore_ascii_case(&table.id_column))
        .map(|k| k.changes_column.clone())
    else {
        return Err(format!(
            "the statement does not join on the id column `{}`",
            table.id_column
        ));
    };
    Ok(RolledBackUpdate {
        query_id,
        table: table.clone(),
        target: statement.target,
        changes_table,
        id_segment,
        seq_range,
    })
}

/// The latest rolled-back DMS UPDATE this fix accepts for `task` whose rows are still in the
/// intermediate table, with the ids the target lacks; and why newer ones were not taken.
///
/// DMS keeps a rolled-back batch's rows only until the next batches are loaded, and the system
/// views log a batch once it is done, so the newest logged UPDATE's rows may already be gone
/// while the next one is not logged yet: then look again, a batch later.
async fn find_update(
    ctx: &FixContext,
    redshift: &Client,
    task: &str,
) -> Result<(Found, Vec<Value>), FixError> {
    let mut attempt = 1;
    loop {
        let (found, replaced, rejected) = find_update_once(ctx, redshift, task).await?;
        match (found, replaced) {
            (Some((update, absent)), _) => {
                return Ok((Found::Update(Box::new(update), absent), rejected))
            }
            (None, None) => return Ok((Found::Nothing, rejected)),
            // No newer rollback within several batches: DMS applies in bulk again.
            (None, Some(query_id)) if attempt >= FIND_ATTEMPTS => {
                return Ok((Found::Passed(query_id), rejected))
            }
            (None, Some(_)) => {
                tracing::info!(
                    task,
                    attempt,
                    "Rolled-back rows already replaced; looking again."
                );
                attempt += 1;
                tokio::time::sleep(FIND_RETRY).await;
            }
        }
    }
}

/// What the system views and the intermediate table show for a task.
enum Found {
    /// A rolled-back UPDATE whose rows are still there, and the ids the target lacks.
    Update(Box<RolledBackUpdate>, Vec<i64>),
    /// Rolled-back UPDATEs (the newest is this query), all older than batches DMS has applied
    /// since: nothing left to repair.
    Passed(i64),
    /// No rolled-back DMS UPDATE of a configured table of the task.
    Nothing,
}

/// One look at the candidates, newest first: the update found; else the first accepted one
/// whose rows were replaced (older ones' went before); and why the others were passed over.
async fn find_update_once(
    ctx: &FixContext,
    redshift: &Client,
    task: &str,
) -> Result<
    (
        Option<(RolledBackUpdate, Vec<i64>)>,
        Option<i64>,
        Vec<Value>,
    ),
    FixError,
> {
    let config = ctx.config();
    let family = config.redshift.system_views;
    let lookback = chrono::Duration::from_std(config.remediator.one_by_one_lookback)
        .unwrap_or(chrono::Duration::hours(2));
    let since = (Utc::now() - lookback).naive_utc();
    let reader = statement_reader(config);
    let mut params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> =
        vec![&since, &config.redshift.dms_comment_like];
    if let Some(user) = &config.redshift.dms_user {
        params.push(user);
    }
    let rows = redshift
        .query(&candidates_sql(family, &reader), &params)
        .await
        .map_err(|source| FixError::Query {
            what: "reading rolled-back DMS statements".to_owned(),
            source,
        })?;
    let candidates: Vec<(i64, String)> = rows
        .iter()
        // `query_text`/`querytxt` are `character(4000)`: blank-padded.
        .map(|r| (r.get(0), char_value(r.get(1))))
        .collect();
    // Texts cut at the view's limit are reassembled from their pieces.
    let cut: Vec<i64> = candidates
        .iter()
        .filter(|(_, t)| t.chars().count() >= TRUNCATED_TEXT_CHARS - STL_PIECE_CHARS)
        .map(|(id, _)| *id)
        .collect();
    let mut full = reader.full_texts(redshift, &cut).await?;
    let mut rejected = Vec::new();
    for (query_id, text) in candidates {
        let text = full.remove(&query_id).unwrap_or(text);
        let reason = match accept(config, task, query_id, &text) {
            Ok(update) => match update.missing_ids(redshift).await? {
                Some(absent) => return Ok((Some((update, absent)), None, rejected)),
                None => {
                    // Older batches' rows went before this one's: no need to look further.
                    let reason = "its rows are gone from the intermediate table (a later batch replaced them)";
                    rejected.push(json!({ "query_id": query_id, "reason": reason }));
                    return Ok((None, Some(query_id), rejected));
                }
            },
            Err(reason) => reason,
        };
        tracing::debug!(query_id, %reason, "Rolled-back statement not repaired.");
        rejected.push(json!({ "query_id": query_id, "reason": reason }));
    }
    Ok((None, None, rejected))
}

#[async_trait::async_trait]
impl Fix for OneByOneFix {
    fn name(&self) -> FixName {
        FixName::OneByOne
    }

    /// Another one-by-one incident on the task within the cooldown means rows keep going
    /// missing: a human finds out why (and DmsguardRemediationFailing pages), instead of the
    /// alert being skipped while DMS stays one by one.
    fn on_cooldown(&self) -> CooldownPolicy {
        CooldownPolicy::Escalate
    }

    async fn plan(&self, ctx: &FixContext, job: &Job) -> Result<Plan, FixError> {
        let task = job_task(job)?;
        configured_task(ctx.config(), task)?;
        let redshift = ctx.connect_redshift().await?;
        let (update, rejected) = find_update(ctx, &redshift, task).await?;
        let mut plan = Plan::new(format!(
            "Insert the row(s) behind task {task}'s one-by-one mode, then restart the task."
        ));
        plan.tasks.push(task.to_owned());
        plan.facts.insert("rejected".into(), json!(rejected));
        plan.sql_step(
            format!(
                "Find the latest rolled-back DMS UPDATE in the {} system views (full text from its pieces).",
                match ctx.config().redshift.system_views {
                    SystemViews::Sys => "SYS",
                    SystemViews::Stl => "STL",
                }
            ),
            candidates_sql(
                ctx.config().redshift.system_views,
                &statement_reader(ctx.config()),
            ),
        );
        let (update, absent) = match update {
            Found::Update(update, absent) => (*update, absent),
            Found::Passed(query_id) => {
                plan.summary = format!(
                    "Nothing missing any more: DMS has applied batches in bulk since the latest rolled-back UPDATE (query {query_id}); nothing to repair."
                );
                return Ok(plan);
            }
            Found::Nothing => {
                plan.summary = format!(
                    "No rolled-back DMS UPDATE of a configured table of task {task} found; nothing to repair."
                );
                return Ok(plan);
            }
        };
        plan.facts.insert("statement".into(), update.facts());
        plan.step(format!(
            "Query {}: UPDATE of {} from {} over seq {}..={}.",
            update.query_id,
            update.target,
            update.changes_table,
            update.seq_range.0,
            update.seq_range.1
        ));
        plan.sql_step(
            "Read the id span the seq range touches.",
            update.id_span_sql(),
        );
        plan.sql_step(
            "LEFT JOIN the seq range against the target to find the missing ids.",
            update.missing_ids_sql(),
        );
        let source = ctx.connect_source_primary().await?;
        let (missing, deleted) = update.missing_in_source(&source, absent).await?;
        plan.facts.insert("missing".into(), ids_fact(&missing));
        plan.facts
            .insert("deleted_at_source".into(), ids_fact(&deleted));
        plan.step(format!(
            "Keep the absent ids the source still has ({} absent ones were deleted at the source since: DMS applies those deletes).",
            deleted.len()
        ));
        if missing.is_empty() {
            plan.step("Nothing to insert: no id is missing any more; leave the task as it is.");
            return Ok(plan);
        }
        let copier = RowCopier::load(&source, &redshift, &update.table).await?;
        plan.step(format!(
            "Missing ids ({}): {}.",
            missing.len(),
            preview(&missing)
        ));
        plan.step(format!(
            "Fetch their rows from the source {} and translate them to the target's column types.",
            update.table.source
        ));
        for (action, sql) in copier.write_sql(ctx) {
            plan.sql_step(action, sql);
        }
        plan.step(format!("Stop task {task} and wait until it is stopped."));
        plan.step(format!(
            "Resume task {task} (resume-processing) and wait until it is running."
        ));
        Ok(plan)
    }

    async fn execute(
        &self,
        ctx: &FixContext,
        job: &Job,
        _plan: &Plan,
    ) -> Result<Outcome, FixError> {
        let task = job_task(job)?;
        let mut redshift = ctx.connect_redshift().await?;
        // Look again under the task's lock: the plan may be stale.
        let (update, rejected) = find_update(ctx, &redshift, task).await?;
        let (update, absent) = match update {
            Found::Update(update, absent) => (*update, absent),
            Found::Passed(query_id) => {
                return Ok(Outcome::succeeded(
                    format!(
                        "Nothing missing any more: DMS has applied batches in bulk since the latest rolled-back UPDATE (query {query_id}); nothing inserted, task {task} left as it is."
                    ),
                    json!({ "task": task, "rejected": rejected, "inserted": 0, "restarted": false }),
                ))
            }
            Found::Nothing => {
                return Ok(Outcome::needs_human(
                    format!("No rolled-back DMS UPDATE of a configured table of task {task} found; nothing repaired."),
                    json!({ "task": task, "rejected": rejected }),
                ))
            }
        };
        let source = ctx.connect_source_primary().await?;
        let (missing, deleted) = update.missing_in_source(&source, absent).await?;
        let mut details = json!({
            "task": task,
            "statement": update.facts(),
            "rejected": rejected,
            "missing": ids_fact(&missing),
            "deleted_at_source": ids_fact(&deleted),
        });
        if missing.is_empty() {
            merge(&mut details, json!({ "inserted": 0, "restarted": false }));
            return Ok(Outcome::succeeded(
                format!(
                    "Nothing missing any more in {} for query {}; nothing inserted, task {task} left as it is.",
                    update.target, update.query_id
                ),
                details,
            ));
        }
        let copier = RowCopier::load(&source, &redshift, &update.table).await?;
        let copied = copier
            .copy(ctx, &source, &mut redshift, &update.target, &missing, None)
            .await?;
        merge(&mut details, copied.details());
        // Checked on the ids themselves: the seq range's rows may be replaced by now.
        let still_missing = absent_in_target(&redshift, &update, &missing).await?;
        merge(
            &mut details,
            json!({ "still_missing": ids_fact(&still_missing) }),
        );
        if copied.failed > 0 || !still_missing.is_empty() {
            merge(&mut details, json!({ "restarted": false }));
            return Ok(Outcome::failed(
                format!(
                    "{}: {}; {} id(s) still missing, task {task} not restarted.",
                    update.target,
                    copied.summary(),
                    still_missing.len()
                ),
                details,
            ));
        }
        let state = ctx.tasks().describe(task).await?;
        if state.is_running() {
            // The resume is owed from the stop on (ledger); see FixContext::stop_owing_resume.
            let restart = ctx.restart_task(job, task).await?;
            if let super::Restart::Resumed(resumed) = restart {
                merge(
                    &mut details,
                    json!({ "restarted": true, "stopped": true, "status": resumed.status }),
                );
                return Ok(Outcome::succeeded(
                    format!(
                        "{}: {}; task {task} stopped and resumed.",
                        update.target,
                        copied.summary()
                    ),
                    details,
                ));
            }
            merge(&mut details, json!({ "stopped": true }));
            return Ok(restart.outcome(
                task,
                &format!("{}: {}", update.target, copied.summary()),
                details,
            ));
        }
        let stopped = if state.is_stopped() {
            false
        } else {
            merge(
                &mut details,
                json!({ "restarted": false, "status": state.status }),
            );
            return Ok(Outcome::needs_human(
                format!(
                    "{}: {}; task {task} is {}, not restarted.",
                    update.target,
                    copied.summary(),
                    state.status
                ),
                details,
            ));
        };
        let resumed = ctx.tasks().resume(task).await?;
        merge(
            &mut details,
            json!({ "restarted": true, "stopped": stopped, "status": resumed.status }),
        );
        Ok(Outcome::succeeded(
            format!(
                "{}: {}; task {task} stopped and resumed.",
                update.target,
                copied.summary()
            ),
            details,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dmsguard_pipeline::statement_parser::is_valid_redshift_sql;

    fn config() -> Config {
        Config::from_toml(
            r#"
[source]
url = "postgresql://u@h/s"
[redshift]
url = "postgresql://u@h/r"
[[tasks]]
name = "t1"
replication_instance = "ri"
[[tasks]]
name = "t2"
replication_instance = "ri"
[[tables]]
source = "public.orders"
task = "t1"
[[tables]]
source = "public.items"
task = "t2"
"#,
            &|_| None,
        )
        .unwrap()
    }

    const UPDATE: &str = "/* Applied by AWS DMS 3.5.3 */ UPDATE \"public\".\"orders\" SET \"status\" = CAST(changes.\"c2\" AS varchar(20)) FROM \"public\".\"awsdms_changes1a2b3c4d\" changes WHERE \"public\".\"orders\".\"id\" = CAST(changes.\"seg1\" AS bigint) AND changes.\"tbl\" = 'public.orders' AND changes.\"op\" = 'U' AND changes.\"seq\" >= 301 AND changes.\"seq\" <= 420";

    #[test]
    fn accepts_a_quoted_update_of_a_configured_table_of_the_task() {
        let update = accept(&config(), "t1", 7, UPDATE).unwrap();
        assert_eq!(update.target.to_string(), "public.orders");
        assert_eq!(
            update.changes_table.to_string(),
            "public.awsdms_changes1a2b3c4d"
        );
        assert_eq!(update.id_segment, "seg1");
        assert_eq!(update.seq_range, (301, 420));
    }

    #[test]
    fn refuses_other_tasks_unquoted_names_and_foreign_tables() {
        let refuse = |task: &str, sql: &str, needle: &str| {
            let reason = accept(&config(), task, 1, sql).unwrap_err();
            assert!(reason.contains(needle), "{sql}: {reason}");
        };
        refuse("t2", UPDATE, "task t1");
        refuse(
            "t1",
            &UPDATE.replace("\"public\".\"orders\" SET", "public.orders SET"),
            "quoted",
        );
        refuse(
            "t1",
            &UPDATE.replace("\"orders\"", "\"secrets\""),
            "not a configured table",
        );
        refuse(
            "t1",
            &UPDATE.replace("awsdms_changes1a2b3c4d", "my_changes"),
            "intermediate",
        );
        refuse(
            "t1",
            "/* Applied by AWS DMS 3.5.3 */ UPDATE \"public\".\"orders\" SET \"status\" = 'x' WHERE \"id\" = 5",
            "single-row",
        );
        refuse(
            "t1",
            "/* Applied by AWS DMS */ DELETE FROM \"public\".\"orders\" USING \"public\".\"awsdms_changes1a2b3c4d\" changes WHERE \"public\".\"orders\".\"id\" = CAST(changes.\"seg1\" AS bigint) AND changes.\"seq\" >= 1 AND changes.\"seq\" <= 2",
            "not an UPDATE",
        );
    }

    /// A source `int4` id is `INTEGER` on the target: ids are still bound and read as BIGINT.
    #[tokio::test]
    async fn int4_ids_are_bound_and_read_as_bigint() -> anyhow::Result<()> {
        let dbs = dmsguard_lab::harness::TestDatabases::create("f1_int4_ids").await?;
        let (source, target) = (dbs.source_client().await?, dbs.redshift_client().await?);
        for c in [&source, &target] {
            c.batch_execute(
                "CREATE TABLE public.orders (id integer NOT NULL, status varchar(20));
                 INSERT INTO public.orders VALUES (1, 'a'), (2, 'b'), (3, 'c');",
            )
            .await?;
        }
        let update = accept(&config(), "t1", 7, UPDATE).unwrap();
        let present = target
            .query(&update.present_ids_sql(2), &[&2i64, &9i64])
            .await?;
        let present: Vec<i64> = present.iter().map(|r| r.get(0)).collect();
        assert_eq!(present, vec![2]);
        assert_eq!(in_source(&source, &update.table, &[3, 4]).await?, vec![3]);
        drop((source, target));
        dbs.drop().await
    }

    fn reader(family: SystemViews, user: Option<String>) -> StatementReader {
        StatementReader::new(family, "%AWS DMS%").with_dms_user(user)
    }

    /// Every statement this fix sends to Redshift parses in the Redshift dialect.
    #[test]
    fn sql_is_redshift_sql() {
        let update = accept(&config(), "t1", 7, UPDATE).unwrap();
        for sql in [
            candidates_sql(SystemViews::Sys, &reader(SystemViews::Sys, None)),
            candidates_sql(SystemViews::Stl, &reader(SystemViews::Stl, None)),
            candidates_sql(
                SystemViews::Sys,
                &reader(SystemViews::Sys, Some("dms".into())),
            ),
            candidates_sql(
                SystemViews::Stl,
                &reader(SystemViews::Stl, Some("dms".into())),
            ),
            update.id_span_sql(),
            update.missing_ids_sql(),
            update.present_ids_sql(3),
        ] {
            is_valid_redshift_sql(&sql).unwrap_or_else(|e| panic!("{sql}: {e}"));
        }
    }
}
