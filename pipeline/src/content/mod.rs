//! Content comparison: rows present on both sides whose values diverged (missed UPDATEs), and
//! ids one side lacks (missed INSERTs and DELETEs), at a cost that grows with the differences.
//!
//! It extends the gap finder's bucket walk ([`crate::gap_finder`]): each bucket's fingerprint
//! also sums a hash of every row's canonical text, computed inside each database (MD5 of the
//! text, its first 32 bits read as an integer). The canonical text of a row is its id and one
//! piece per compared column, derived from the column's source and target types
//! ([`canonical`]) so that a row DMS wrote correctly reads the same on both sides. Buckets
//! whose fingerprints differ are split round by round; narrow ones are read row by row (id and
//! hash) and compared in the client. A column that cannot be compared exactly is left out, named
//! in the report and logged.
//!
//! A difference seen once may be a change still in flight: [`Persistence`] counts it only once a
//! later comparison, started more than the replication latency after, still sees it; with an
//! `updated_at`-style column ([`ContentOptions::updated_at_column`]),
//! [`ContentComparer::compare_settled`] also leaves out rows the source changed after the
//! replication frontier.

pub mod canonical;
mod persistence;
mod queries;

use chrono::{DateTime, Utc};
use tokio_postgres::Client;

use crate::catalogue::{Catalogue, CatalogueError, SourceTable, TargetTable};
use crate::gap_finder::{GapError, GapFinder, GapFinderOptions, IdRange, Side, TableSpec};
pub use canonical::{ColumnPlan, ExcludedColumn, Exclusion};
pub use persistence::{Confirmed, DifferenceKind, Persistence};
pub use queries::Dialect;

/// Why a comparison could not be set up or run.
#[derive(Debug, thiserror::Error)]
pub enum ContentError {
    /// A query failed, a range or an option was invalid (the bucket walk's errors).
    #[error(transparent)]
    Walk(#[from] GapError),
    #[error(transparent)]
    Catalogue(#[from] CatalogueError),
    #[error("invalid content comparison options: {0}")]
    InvalidOptions(String),
    #[error("table {table}: {message}")]
    InvalidTable { table: String, message: String },
}

/// Bounds and choices of a comparison.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContentOptions {
    /// The bucket walk: bucket widths, fanout, per-query bounds, each side's query shape. A
    /// bucket is read row by row (id and content hash) once narrow or holding at most
    /// `list_threshold` rows; `max_span_per_query` must stay at most 2^24 (row hashes are
    /// summed in a bigint on Redshift).
    pub walk: GapFinderOptions,
    /// Columns never compared (by source or target name, ignoring ASCII case), e.g. a column
    /// the target fills itself. Reported as [`Exclusion::Configured`].
    pub exclude_columns: Vec<String>,
    /// A source column holding each row's last change time (`timestamp`, `timestamptz`);
    /// [`ContentComparer::compare_settled`] leaves out the rows changed at or after its frontier.
    pub updated_at_column: Option<String>,
    /// Most bytes of canonical text hashed in one MD5 on Redshift: Redshift's VARCHAR holds at
    /// most 65,535 bytes and its documentation does not say what `||` does past that
    /// (<https://docs.aws.amazon.com/redshift/latest/dg/r_concat_op.html>), so columns are
    /// packed into groups whose declared widths fit, each hashed on its own. Columns without a
    /// declared width count as [`canonical::UNBOUNDED_TEXT_BYTES`].
    pub max_row_text_bytes: usize,
    /// Salt mixed into every row's hash. `None` draws a fresh one per comparison, so that two
    /// rows whose hashes collide in one comparison (a 2^-32 chance per differing row) are told
    /// apart by the next; tests fix it.
    pub salt: Option<u64>,
}

impl Default for ContentOptions {
    fn default() -> Self {
        Self {
            walk: GapFinderOptions::default(),
            exclude_columns: Vec::new(),
            updated_at_column: None,
            max_row_text_bytes: 65_535,
            salt: None,
        }
    }
}

/// Most ids one bucket of a content query spans: row hashes are below 2^32, and Redshift sums
/// a bigint column into a bigint.
pub const MAX_CONTENT_SPAN: u64 = 1 << 24;

impl ContentOptions {
    fn validate(&self) -> Result<(), ContentError> {
        GapFinder::new(self.walk)?;
        if self.walk.max_span_per_query > MAX_CONTENT_SPAN {
            return Err(ContentError::InvalidOptions(format!(
                "walk.max_span_per_query must be at most {MAX_CONTENT_SPAN}"
            )));
        }
        if self.max_row_text_bytes < 1024 {
            return Err(ContentError::InvalidOptions(
                "max_row_text_bytes must be at least 1024".to_owned(),
            ));
        }
        if let Some(c) = &self.updated_at_column {
            if !crate::config::is_identifier(c) {
                return Err(ContentError::InvalidOptions(format!(
                    "updated_at_column `{c}` is not a plain column name"
                )));
            }
        }
        Ok(())
    }
}

/// What a comparison cost.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ContentStats {
    /// Rows the databases read and hashed, both sides together (the first round reads the
    /// whole range on each side; later rounds only the differing buckets).
    pub rows_scanned: u64,
    /// Statements run, both sides together.
    pub queries: u64,
    /// Result rows received, both sides together.
    pub rows_transferred: u64,
    /// Bytes of result values received, both sides together (the values' sizes, without the
    /// protocol's framing).
    pub bytes_transferred: u64,
    /// Rounds of queries (each round queries both sides concurrently).
    pub rounds: u64,
}

/// The outcome of one comparison of an id range.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ContentReport {
    /// The range compared.
    pub range: IdRange,
    /// Ids on both sides whose rows differ in a compared column (or that the target holds
    /// more than once), ascending.
    pub divergent_ids: Vec<i64>,
    /// Ids in the target the source does not have (missed DELETEs), ascending.
    pub extra_ids: Vec<i64>,
    /// Ids in the source the target does not have (missed INSERTs), ascending.
    pub missing_ids: Vec<i64>,
    /// Divergent or missing ids left out because the source changed them at or after the
    /// frontier ([`ContentComparer::compare_settled`] only), ascending.
    pub unsettled_ids: Vec<i64>,
    /// Columns not compared, with the reason.
    pub excluded_columns: Vec<ExcludedColumn>,
    pub stats: ContentStats,
}

impl ContentReport {
    /// Whether nothing differs.
    pub fn is_clean(&self) -> bool {
        self.divergent_ids.is_empty() && self.extra_ids.is_empty() && self.missing_ids.is_empty()
    }
}

/// Compares the content of one replicated table between the source and the target.
#[derive(Debug, Clone)]
pub struct ContentComparer {
    table: TableSpec,
    source_id: String,
    target_id: String,
    columns: Vec<ColumnPlan>,
    /// MD5 groups the columns are packed into.
    groups: usize,
    excluded: Vec<ExcludedColumn>,
    options: ContentOptions,
}

impl ContentComparer {
    /// Plans the comparison from both sides' catalogue definitions: columns matched by name as
    /// the type translator matches them, each with its canonical expression per side. Excluded
    /// columns are logged at warn, once here.
    pub fn new(
        table: &TableSpec,
        source: &SourceTable,
        target: &TargetTable,
        options: ContentOptions,
    ) -> Result<Self, ContentError> {
        options.validate()?;
        let plan = canonical::plan(table, source, target, &options)?;
        for excluded in &plan.excluded {
            tracing::warn!(
                table = %table.source,
                column = %excluded.column,
                reason = %excluded.reason,
                "Column left out of the content comparison."
            );
        }
        Ok(Self {
            table: table.clone(),
            source_id: plan.source_id,
            target_id: plan.target_id,
            columns: plan.columns,
            groups: plan.groups,
            excluded: plan.excluded,
            options,
        })
    }

    /// [`Self::new`] after reading both definitions from the catalogues.
    pub async fn load(
        source: &Client,
        target: &Client,
        table: &TableSpec,
        options: ContentOptions,
    ) -> Result<Self, ContentError> {
        let (s, t) = tokio::try_join!(
            Catalogue::load_source(source, &table.source),
            Catalogue::load(target, &table.target),
        )?;
        Self::new(table, &s, &t, options)
    }

    /// The table compared.
    pub fn table(&self) -> &TableSpec {
        &self.table
    }

    /// The columns compared, with their canonical expressions.
    pub fn columns(&self) -> &[ColumnPlan] {
        &self.columns
    }

    /// The columns left out, with the reason.
    pub fn excluded_columns(&self) -> &[ExcludedColumn] {
        &self.excluded
    }

    pub fn options(&self) -> &ContentOptions {
        &self.options
    }

    /// The ids of `range` whose rows differ, or that one side lacks. Reads only (plain
    /// `SELECT`s on each side, concurrently); every difference is as of the moment its bucket
    /// was last read, and may be a change still in flight: see [`Persistence`] and
    /// [`Self::compare_settled`].
    pub async fn compare(
        &self,
        source: &Client,
        target: &Client,
        range: IdRange,
    ) -> Result<ContentReport, ContentError> {
        let salt = self.options.salt.unwrap_or_else(random_salt);
        let walk = GapFinder::new(self.options.walk)?;
        let (src, tgt) = tokio::try_join!(
            queries::RowSet::connect(source, Side::Source, self, salt, range),
            queries::RowSet::connect(target, Side::Target, self, salt, range),
        )?;
        let found = walk.walk(&src, &tgt, range).await?;
        let mut stats = ContentStats {
            rows_scanned: found.rows_aggregated,
            queries: found.stats.queries,
            rows_transferred: found.stats.rows_transferred,
            bytes_transferred: src.bytes() + tgt.bytes(),
            rounds: found.stats.rounds,
        };
        stats.rows_scanned += src.leaf_rows() + tgt.leaf_rows();
        tracing::debug!(
            table = %self.table.source,
            range = %range,
            divergent = found.divergent.len(),
            missing = found.missing.len(),
            extra = found.extra.len(),
            queries = stats.queries,
            rows_scanned = stats.rows_scanned,
            "Content comparison done."
        );
        Ok(ContentReport {
            range,
            divergent_ids: found.divergent,
            extra_ids: found.extra,
            missing_ids: found.missing,
            unsettled_ids: Vec::new(),
            excluded_columns: self.excluded.clone(),
            stats,
        })
    }

    /// [`Self::compare`], then leaves out the divergent and missing ids whose source row's
    /// `updated_at_column` is at or after `frontier` (changes replication may not have applied
    /// yet): they are moved to [`ContentReport::unsettled_ids`]. Extra ids have no source row
    /// to date them; count them with [`Persistence`]. An error when no `updated_at_column` is
    /// configured.
    pub async fn compare_settled(
        &self,
        source: &Client,
        target: &Client,
        range: IdRange,
        frontier: DateTime<Utc>,
    ) -> Result<ContentReport, ContentError> {
        let Some(column) = self.options.updated_at_column.clone() else {
            return Err(ContentError::InvalidOptions(
                "compare_settled needs updated_at_column".to_owned(),
            ));
        };
        let mut report = self.compare(source, target, range).await?;
        let mut listed: Vec<i64> = report
            .divergent_ids
            .iter()
            .chain(&report.missing_ids)
            .copied()
            .collect();
        listed.sort_unstable();
        let unsettled = queries::changed_since(
            source,
            &self.table,
            &self.source_id,
            &column,
            &listed,
            frontier,
        )
        .await?;
        report.stats.queries += 1;
        if !unsettled.is_empty() {
            report.divergent_ids.retain(|id| !unsettled.contains(id));
            report.missing_ids.retain(|id| !unsettled.contains(id));
            report.unsettled_ids = unsettled.into_iter().collect();
        }
        Ok(report)
    }

    /// Compares only the given ids, row by row (for a re-check just before a repair, or a
    /// hand run): the same report, over the smallest range holding them. Ids are read in
    /// range predicates (no array parameters, which Redshift lacks).
    pub async fn compare_ids(
        &self,
        source: &Client,
        target: &Client,
        ids: &[i64],
    ) -> Result<ContentReport, ContentError> {
        let mut ids = ids.to_vec();
        ids.sort_unstable();
        ids.dedup();
        let (Some(&lo), Some(&hi)) = (ids.first(), ids.last()) else {
            return Ok(ContentReport {
                excluded_columns: self.excluded.clone(),
                ..ContentReport::default()
            });
        };
        let range = IdRange::new(lo, hi)?;
        let salt = self.options.salt.unwrap_or_else(random_salt);
        let (src, tgt) = tokio::try_join!(
            queries::RowSet::connect(source, Side::Source, self, salt, range),
            queries::RowSet::connect(target, Side::Target, self, salt, range),
        )?;
        let found = queries::compare_listed(&src, &tgt, &ids, self.options.walk).await?;
        Ok(ContentReport {
            range,
            divergent_ids: found.divergent,
            extra_ids: found.extra,
            missing_ids: found.missing,
            unsettled_ids: Vec::new(),
            excluded_columns: self.excluded.clone(),
            stats: ContentStats {
                rows_scanned: src.leaf_rows() + tgt.leaf_rows(),
                queries: found.stats.queries,
                rows_transferred: found.stats.rows_transferred,
                bytes_transferred: src.bytes() + tgt.bytes(),
                rounds: found.stats.rounds,
            },
        })
    }

    /// The statements one side would run for the first round of `range` (for `--dry-run`
    /// and the docs): the grouped fingerprint query in `dialect`.
    pub fn fingerprint_sql(&self, side: Side, dialect: Dialect, range: IdRange) -> String {
        queries::describe_first_round(self, side, dialect, range)
    }
}

/// A fresh salt from the standard library's randomly keyed hasher (no RNG dependency needed).
fn random_salt() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(0x5eed);
    h.finish()
}

#[cfg(test)]
mod tests;
