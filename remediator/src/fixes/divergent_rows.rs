//! Rewrites rows whose content diverged from the source (an UPDATE DMS lost) and, where the
//! table allows it, deletes ids the source no longer has (a DELETE DMS lost).
//!
//! The window comes from the job's labels as for `missing_rows` (`day`, `from_id`/`to_id`,
//! `window`; a table without `day_column` is compared whole). Only a table whose `[[tables]]`
//! entry sets `divergent_rows = true` is repaired (its remediator user needs `DELETE` there);
//! extra ids are deleted only with `delete_extra = true`.
//!
//! A difference counts only when it persists past replication: the fix reads the window, waits
//! until the table's task has applied every change committed before that moment plus
//! `[frontier] margin` (CloudWatch `CDCLatencyTarget`), compares the content
//! (`dmsguard_pipeline::content`), then waits again until replication has passed the end of
//! that comparison and compares the differing ids once more: only ids differing both times, the
//! two comparisons separated by more than the replication latency, are rewritten. The rewrite
//! itself (`dmsguard_pipeline::rewrite`) holds the table's lock, reads the source after it, and
//! deletes and inserts each id in one transaction. Running it twice rewrites nothing the second
//! time (nothing differs any more).

use chrono::Utc;
use dmsguard_pipeline::config::{FixName, TableConfig};
use dmsguard_pipeline::content::{ContentComparer, ContentOptions, ContentReport};
use dmsguard_pipeline::gap_finder::{IdRange, TableSpec};
use dmsguard_pipeline::rewrite::{Rewritten, RowRewriter};
use serde_json::{json, Value};

use super::missing_rows::{ids_fact, job_table, merge, preview, wait_settled, RowCopier, Sighted};
use super::{Fix, FixContext, FixError, Outcome, Plan};
use crate::ledger::Job;
use crate::metrics::{Metrics, RepairRowOutcome};

pub struct DivergentRowsFix;

/// The table of the job, refused unless it enables the fix.
fn enabled_table<'c>(ctx: &'c FixContext, job: &Job) -> Result<&'c TableConfig, FixError> {
    let table = job_table(ctx.config(), job)?;
    if !table.divergent_rows {
        return Err(FixError::Input(format!(
            "table {} does not enable the divergent_rows fix: set `divergent_rows = true` in its [[tables]] entry and grant the remediator DELETE on its target (docs/grants.md)",
            table.source
        )));
    }
    Ok(table)
}

/// The comparer of a table: the content comparison's default bounds.
async fn comparer(
    source: &tokio_postgres::Client,
    target: &tokio_postgres::Client,
    spec: &TableSpec,
) -> Result<ContentComparer, FixError> {
    Ok(ContentComparer::load(source, target, spec, ContentOptions::default()).await?)
}

async fn compare(
    comparer: &ContentComparer,
    source: &tokio_postgres::Client,
    target: &tokio_postgres::Client,
    range: Option<IdRange>,
) -> Result<ContentReport, FixError> {
    let Some(range) = range else {
        return Ok(ContentReport::default());
    };
    Ok(comparer.compare(source, target, range).await?)
}

/// Ids of `kind` in both `first` and `again`.
fn both(first: &[i64], again: &[i64]) -> Vec<i64> {
    first
        .iter()
        .copied()
        .filter(|id| again.binary_search(id).is_ok())
        .collect()
}

/// Adds to `repair_rows_total` what a batch did: the difference between two running totals.
fn count_rows(m: &Metrics, table: &str, before: &Rewritten, now: &Rewritten) {
    let pairs = [
        (RepairRowOutcome::Rewritten, before.rewritten, now.rewritten),
        (
            RepairRowOutcome::ExtraDeleted,
            before.extra_deleted,
            now.extra_deleted,
        ),
        (
            RepairRowOutcome::ExtraKept,
            before.extra_kept,
            now.extra_kept,
        ),
        (
            RepairRowOutcome::GoneFromSource,
            before.gone_from_source,
            now.gone_from_source,
        ),
        (
            RepairRowOutcome::AbsentInTarget,
            before.absent_in_target,
            now.absent_in_target,
        ),
        (RepairRowOutcome::Failed, before.failed, now.failed),
    ];
    for (outcome, a, b) in pairs {
        m.repair_rows(table, outcome, b.saturating_sub(a));
    }
}

fn rewritten_details(r: &Rewritten) -> Value {
    json!({
        "rewritten": r.rewritten,
        "extra_deleted": r.extra_deleted,
        "extra_kept": r.extra_kept,
        "gone_from_source": r.gone_from_source,
        "absent_in_target": r.absent_in_target,
        "failed": r.failed,
        "errors": r.errors,
    })
}

#[async_trait::async_trait]
impl Fix for DivergentRowsFix {
    fn name(&self) -> FixName {
        FixName::DivergentRows
    }

    async fn plan(&self, ctx: &FixContext, job: &Job) -> Result<Plan, FixError> {
        let table = enabled_table(ctx, job)?;
        // The plan does not wait for replication: differences still in flight may be listed.
        let Sighted {
            window,
            spec,
            source,
            target,
            sighting,
        } = Sighted::open(ctx, table, job).await?;
        let comparer = comparer(&source, &target, &spec).await?;
        let found = compare(&comparer, &source, &target, sighting.range).await?;
        let copier = RowCopier::load(&source, &target, table).await?;
        let rewriter = RowRewriter::new(
            copier.source_table.clone(),
            &copier.id_column,
            &copier.translator,
            RowCopier::limits(ctx),
            ctx.config().remediator.insert_batch_rows,
        );
        let mut plan = Plan::new(format!(
            "Rewrite the rows of {} that diverged in {} for {window}: {} divergent id(s), {} extra id(s){}.",
            table.source,
            spec.target,
            found.divergent_ids.len(),
            found.extra_ids.len(),
            if table.delete_extra { " (deleted)" } else { " (left alone: delete_extra is off)" }
        ));
        plan.facts.insert("table".into(), json!(table.source));
        plan.facts
            .insert("window".into(), json!(window.to_string()));
        plan.facts.insert(
            "id_range".into(),
            json!(sighting.range.map(|r| json!({ "from": r.lo, "to": r.hi }))),
        );
        plan.facts
            .insert("divergent".into(), ids_fact(&found.divergent_ids));
        plan.facts
            .insert("extra".into(), ids_fact(&found.extra_ids));
        plan.facts
            .insert("missing".into(), json!(found.missing_ids.len()));
        plan.facts.insert(
            "excluded_columns".into(),
            json!(found
                .excluded_columns
                .iter()
                .map(|c| format!("{}: {}", c.column, c.reason))
                .collect::<Vec<_>>()),
        );
        plan.facts
            .insert("delete_extra".into(), json!(table.delete_extra));
        let Some(range) = sighting.range else {
            plan.step(format!(
                "Nothing to do: the source has no rows for {window}, or DMS has applied none of them yet."
            ));
            return Ok(plan);
        };
        plan.step(format!(
            "Read the window's ids now, wait until replication has applied every change committed before now + {:?}, then compare the content of ids {range} on both sides (per-bucket checksums of each row's canonical text, bisecting differing buckets).",
            ctx.config().frontier.margin
        ));
        if let Some(first) = found.range_sql(&comparer) {
            plan.sql_step("The first round on Redshift (one grouped scan):", first);
        }
        plan.step("Wait until replication has passed the end of that comparison, then compare the differing ids again: only ids differing both times are repaired.");
        if !found.divergent_ids.is_empty() {
            plan.step(format!(
                "Divergent ids ({}): {}.",
                found.divergent_ids.len(),
                preview(&found.divergent_ids)
            ));
        }
        if !found.extra_ids.is_empty() {
            plan.step(format!(
                "Extra ids ({}): {}{}.",
                found.extra_ids.len(),
                preview(&found.extra_ids),
                if table.delete_extra {
                    ", deleted if the source still lacks them"
                } else {
                    ", left alone (delete_extra is off)"
                }
            ));
        }
        if !found.missing_ids.is_empty() {
            plan.step(format!(
                "Leave {} missing id(s) to the missing_rows fix.",
                found.missing_ids.len()
            ));
        }
        if found.divergent_ids.is_empty() && (found.extra_ids.is_empty() || !table.delete_extra) {
            plan.step("Nothing to rewrite.");
        } else {
            for (action, sql) in rewriter.plan_sql(table.delete_extra) {
                plan.sql_step(action, sql);
            }
        }
        Ok(plan)
    }

    async fn execute(
        &self,
        ctx: &FixContext,
        job: &Job,
        _plan: &Plan,
    ) -> Result<Outcome, FixError> {
        let table = enabled_table(ctx, job)?;
        let Sighted {
            window,
            spec,
            source,
            mut target,
            sighting,
        } = Sighted::open(ctx, table, job).await?;
        let progress = wait_settled(ctx, table, sighting.seen, &source).await?;
        let comparer = comparer(&source, &target, &spec).await?;
        let first = compare(&comparer, &source, &target, sighting.range).await?;
        let compared_at = Utc::now();
        let mut listed: Vec<i64> = first
            .divergent_ids
            .iter()
            .chain(&first.extra_ids)
            .copied()
            .collect();
        listed.sort_unstable();
        let mut details = json!({
            "seen_at": sighting.seen.to_rfc3339(),
            "replicated_until": progress.to_rfc3339(),
            "table": table.source,
            "window": window.to_string(),
            "id_range": sighting.range.map(|r| json!({ "from": r.lo, "to": r.hi })),
            "first_comparison": {
                "divergent": ids_fact(&first.divergent_ids),
                "extra": ids_fact(&first.extra_ids),
                "missing": first.missing_ids.len(),
                "rows_scanned": first.stats.rows_scanned,
            },
            "delete_extra": table.delete_extra,
        });
        if listed.is_empty() {
            merge(&mut details, rewritten_details(&Rewritten::default()));
            return Ok(Outcome::succeeded(
                format!(
                    "No row of {} diverged for {window}; nothing rewritten.",
                    table.source
                ),
                details,
            ));
        }
        // Persistence: a difference still seen after replication passed the first comparison's
        // end is no change in flight.
        let settled = wait_settled(ctx, table, compared_at, &source).await?;
        let again = comparer.compare_ids(&source, &target, &listed).await?;
        let divergent = both(&first.divergent_ids, &again.divergent_ids);
        let extra = both(&first.extra_ids, &again.extra_ids);
        merge(
            &mut details,
            json!({
                "second_comparison_after": settled.to_rfc3339(),
                "divergent": ids_fact(&divergent),
                "extra": ids_fact(&extra),
            }),
        );
        let copier = RowCopier::load(&source, &target, table).await?;
        let mut rewriter = RowRewriter::new(
            copier.source_table.clone(),
            &copier.id_column,
            &copier.translator,
            RowCopier::limits(ctx),
            ctx.config().remediator.insert_batch_rows,
        );
        ctx.progress().start(
            &format!("Rewriting divergent rows of {}", spec.target),
            (divergent.len() + extra.len()) as u64,
        );
        let all: Vec<i64> = {
            let mut v: Vec<i64> = divergent.iter().chain(&extra).copied().collect();
            v.sort_unstable();
            v
        };
        let metrics = ctx.metrics();
        if let Some(m) = metrics {
            m.set_repair_rows_remaining(
                &table.source,
                all.len() as u64,
                &RepairRowOutcome::REWRITES,
            );
        }
        let mut counted = Rewritten::default();
        let result = rewriter
            .rewrite(
                &source,
                &mut target,
                &divergent,
                &extra,
                table.delete_extra,
                |through, so_far| {
                    let handled = all.partition_point(|id| *id <= through) as u64;
                    ctx.progress().update(handled, so_far.rewritten);
                    // Counted as each batch commits, like the inserts of missing_rows.
                    if let Some(m) = metrics {
                        count_rows(m, &table.source, &counted, so_far);
                        m.set_repair_rows_remaining(
                            &table.source,
                            all.len() as u64 - handled.min(all.len() as u64),
                            &RepairRowOutcome::REWRITES,
                        );
                    }
                    counted = so_far.clone();
                },
            )
            .await;
        if let Some(m) = metrics {
            m.set_repair_rows_remaining(&table.source, 0, &RepairRowOutcome::REWRITES);
        }
        let result = result?;
        rewriter.finish(&target).await?;
        merge(&mut details, rewritten_details(&result));
        let summary = format!(
            "{} for {window}: {} divergent, {} extra; {} rewritten, {} extra deleted, {} extra kept, {} gone from the source, {} absent in the target, {} failed.",
            table.source,
            divergent.len(),
            extra.len(),
            result.rewritten,
            result.extra_deleted,
            result.extra_kept,
            result.gone_from_source,
            result.absent_in_target,
            result.failed
        );
        ctx.progress().finish(&summary);
        Ok(if result.failed > 0 {
            Outcome::failed(summary, details)
        } else {
            Outcome::succeeded(summary, details)
        })
    }
}

/// The first round's SQL of a report's range, for plans.
trait RangeSql {
    fn range_sql(&self, comparer: &ContentComparer) -> Option<String>;
}

impl RangeSql for ContentReport {
    fn range_sql(&self, comparer: &ContentComparer) -> Option<String> {
        (self.range.hi >= self.range.lo && self.stats.queries > 0).then(|| {
            comparer.fingerprint_sql(
                dmsguard_pipeline::gap_finder::Side::Target,
                dmsguard_pipeline::content::Dialect::Redshift,
                self.range,
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_ids_seen_in_both_comparisons_count() {
        assert_eq!(both(&[1, 4, 9, 12], &[4, 5, 12]), vec![4, 12]);
        assert!(both(&[1], &[]).is_empty());
    }
}
