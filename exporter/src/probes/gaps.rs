//! Counts ids missing in the target per table and UTC day, and the newest replicated id's lag.
//!
//! The comparison sits behind the [`GapFinder`] boundary; [`ChunkedScan`] is a simple,
//! exact implementation (both sides' ids read in ordered chunks and merged client side).

use std::future::Future;
use std::sync::Arc;

use chrono::{Duration as ChronoDuration, NaiveDateTime, Utc};
use dmsguard_pipeline::config::{quote_ident, Config, DatabaseConfig, QualifiedName, TableConfig};
use tokio_postgres::Client;

use super::{Probe, ProbeError};
use crate::metrics::{DayWindow, GapMetrics, ProbeName, TableLabels, TableWindowLabels};

/// An inclusive range of ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdRange {
    pub lo: i64,
    pub hi: i64,
}

/// One replicated table as the gap finder sees it, names already validated and quoted.
#[derive(Debug, Clone)]
pub struct GapTable {
    /// The `table` label.
    pub label: String,
    /// `"schema"."table"` in the source.
    pub source: String,
    /// `"schema"."table"` in the target.
    pub target: String,
    /// The quoted id column.
    pub id_column: String,
    /// The quoted day column, if configured.
    pub day_column: Option<String>,
}

impl GapTable {
    /// Validates and quotes a configured table.
    pub fn from_config(table: &TableConfig) -> Result<Self, ProbeError> {
        let quoted = |name: &str| {
            QualifiedName::parse(name)
                .map(|q| q.quoted())
                .ok_or_else(|| ProbeError::Invalid(format!("`{name}` is not schema.table")))
        };
        Ok(Self {
            label: table.source.clone(),
            source: quoted(&table.source)?,
            target: quoted(table.target_name())?,
            id_column: quote_ident(&table.id_column),
            day_column: table.day_column.as_deref().map(quote_ident),
        })
    }
}

/// Ids present on one side only, within a range.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GapCounts {
    /// In the source, not in the target.
    pub missing: u64,
    /// In the target, not in the source.
    pub extra: u64,
}

/// Compares the ids of a table's source and target within a range.
pub trait GapFinder: Send + Sync + 'static {
    fn compare(
        &self,
        source: &Client,
        target: &Client,
        table: &GapTable,
        range: IdRange,
    ) -> impl Future<Output = Result<GapCounts, ProbeError>> + Send;
}

/// Reads both sides' ids in ordered chunks of `chunk` ids and merges them: exact, O(range)
/// rows moved.
#[derive(Debug, Clone, Copy)]
pub struct ChunkedScan {
    pub chunk: i64,
}

impl Default for ChunkedScan {
    fn default() -> Self {
        Self { chunk: 50_000 }
    }
}

impl GapFinder for ChunkedScan {
    async fn compare(
        &self,
        source: &Client,
        target: &Client,
        table: &GapTable,
        range: IdRange,
    ) -> Result<GapCounts, ProbeError> {
        let ids_sql = |name: &str| {
            format!(
                "SELECT {id} FROM {name} WHERE {id} BETWEEN $1 AND $2 ORDER BY {id}",
                id = table.id_column
            )
        };
        let (source_sql, target_sql) = (ids_sql(&table.source), ids_sql(&table.target));
        let mut counts = GapCounts::default();
        let mut lo = range.lo;
        while lo <= range.hi {
            let hi = lo.saturating_add(self.chunk - 1).min(range.hi);
            let params: [&(dyn tokio_postgres::types::ToSql + Sync); 2] = [&lo, &hi];
            let (s, t) = tokio::join!(
                source.query(&source_sql, &params),
                target.query(&target_sql, &params),
            );
            let s: Vec<i64> = s?.iter().map(|r| r.get(0)).collect();
            let t: Vec<i64> = t?.iter().map(|r| r.get(0)).collect();
            let (missing, extra) = diff_sorted(&s, &t);
            counts.missing += missing;
            counts.extra += extra;
            if hi == i64::MAX {
                break;
            }
            lo = hi + 1;
        }
        Ok(counts)
    }
}

/// Counts of values only in `a` and only in `b`, both sorted ascending (duplicates count once
/// per occurrence).
fn diff_sorted(a: &[i64], b: &[i64]) -> (u64, u64) {
    let (mut i, mut j, mut only_a, mut only_b) = (0, 0, 0u64, 0u64);
    while i < a.len() && j < b.len() {
        match a[i].cmp(&b[j]) {
            std::cmp::Ordering::Less => {
                only_a += 1;
                i += 1;
            }
            std::cmp::Ordering::Greater => {
                only_b += 1;
                j += 1;
            }
            std::cmp::Ordering::Equal => {
                i += 1;
                j += 1;
            }
        }
    }
    (only_a + (a.len() - i) as u64, only_b + (b.len() - j) as u64)
}

/// The gaps probe: per configured table, missing ids today and yesterday, and the id lag.
pub struct GapsProbe<F: GapFinder = ChunkedScan> {
    tables: Vec<GapTable>,
    source_db: DatabaseConfig,
    target_db: DatabaseConfig,
    source: Option<Client>,
    target: Option<Client>,
    finder: F,
    metrics: GapMetrics,
}

impl GapsProbe<ChunkedScan> {
    pub fn new(config: Arc<Config>, metrics: GapMetrics) -> Result<Self, ProbeError> {
        Self::with_finder(config, ChunkedScan::default(), metrics)
    }
}

impl<F: GapFinder> GapsProbe<F> {
    pub fn with_finder(
        config: Arc<Config>,
        finder: F,
        metrics: GapMetrics,
    ) -> Result<Self, ProbeError> {
        Ok(Self {
            tables: config
                .tables
                .iter()
                .map(GapTable::from_config)
                .collect::<Result<_, _>>()?,
            source_db: config.source.clone(),
            target_db: config.redshift.database(),
            source: None,
            target: None,
            finder,
            metrics,
        })
    }

    async fn connect(&mut self) -> Result<(), ProbeError> {
        if self.source.as_ref().is_none_or(Client::is_closed) {
            let client = dmsguard_pipeline::db::connect(&self.source_db).await?;
            // Day boundaries are UTC whatever the column's type.
            client.batch_execute("SET TIME ZONE 'UTC'").await?;
            self.source = Some(client);
        }
        if self.target.as_ref().is_none_or(Client::is_closed) {
            self.target = Some(dmsguard_pipeline::db::connect(&self.target_db).await?);
        }
        Ok(())
    }

    async fn refresh_inner(&mut self) -> Result<(), ProbeError> {
        self.connect().await?;
        let (Some(source), Some(target)) = (&self.source, &self.target) else {
            return Err(ProbeError::Invalid("not connected".to_owned()));
        };
        let today = Utc::now()
            .date_naive()
            .and_hms_opt(0, 0, 0)
            .unwrap_or_default();
        for table in &self.tables {
            let max_sql = |name: &str| format!("SELECT max({}) FROM {name}", table.id_column);
            let (source_sql, target_sql) = (max_sql(&table.source), max_sql(&table.target));
            let (s, t) = tokio::join!(
                source.query_one(&source_sql, &[]),
                target.query_one(&target_sql, &[]),
            );
            let source_max: Option<i64> = s?.get(0);
            let target_max: Option<i64> = t?.get(0);
            let lag = source_max.unwrap_or(0) - target_max.unwrap_or(0);
            self.metrics
                .max_id_lag
                .get_or_create(&TableLabels {
                    table: table.label.clone(),
                })
                .set(lag);
            let Some(day_column) = &table.day_column else {
                continue;
            };
            for window in DayWindow::ALL {
                let start = today - ChronoDuration::days(window.days_back());
                let range = day_range(source, table, day_column, start).await?;
                let counts = match range {
                    Some(range) => self.finder.compare(source, target, table, range).await?,
                    None => GapCounts::default(),
                };
                let labels = TableWindowLabels {
                    table: table.label.clone(),
                    window,
                };
                self.metrics
                    .missing_ids
                    .get_or_create(&labels)
                    .set(i64::try_from(counts.missing).unwrap_or(i64::MAX));
                self.metrics
                    .extra_ids
                    .get_or_create(&labels)
                    .set(i64::try_from(counts.extra).unwrap_or(i64::MAX));
            }
        }
        Ok(())
    }
}

/// The id range of the source rows whose day column falls on the UTC day starting at `start`.
async fn day_range(
    source: &Client,
    table: &GapTable,
    day_column: &str,
    start: NaiveDateTime,
) -> Result<Option<IdRange>, ProbeError> {
    let end = start + ChronoDuration::days(1);
    let row = source
        .query_one(
            &format!(
                "SELECT min({id}), max({id}) FROM {src} \
                 WHERE {day_column} >= CAST($1 AS timestamp) AND {day_column} < CAST($2 AS timestamp)",
                id = table.id_column,
                src = table.source
            ),
            &[&start, &end],
        )
        .await?;
    let (lo, hi): (Option<i64>, Option<i64>) = (row.get(0), row.get(1));
    Ok(lo.zip(hi).map(|(lo, hi)| IdRange { lo, hi }))
}

impl<F: GapFinder> Probe for GapsProbe<F> {
    fn name(&self) -> ProbeName {
        ProbeName::Gaps
    }

    async fn refresh(&mut self) -> Result<(), ProbeError> {
        let result = self.refresh_inner().await;
        if result.is_err() {
            self.source = None;
            self.target = None;
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diff_counts_each_side() {
        assert_eq!(diff_sorted(&[1, 2, 3, 5, 8], &[2, 3, 4, 8]), (2, 1));
        assert_eq!(diff_sorted(&[], &[1]), (0, 1));
        assert_eq!(diff_sorted(&[1, 2], &[]), (2, 0));
        assert_eq!(diff_sorted(&[1, 2, 3], &[1, 2, 3]), (0, 0));
    }
}
