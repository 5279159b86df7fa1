//! Gap finder: ids missing from (or extra in) a replicated table, at a cost that grows with the gaps.
//!
//! Both sides report the same fingerprint per bucket of ids: the row count, the sum of the ids'
//! offsets in the bucket and the sum of a nonlinear hash of the ids. Buckets whose fingerprints
//! agree are done; those that differ are split into narrower buckets on the next round, or,
//! once narrow (or dense in differences), read on both sides as bitmaps of 32 ids a row and
//! compared bit by bit. The first round reads the whole range once (one scan per side, like a
//! `count(*)`); every later round reads only the differing buckets through range predicates on
//! the id, so the rows moved grow with the gaps, not with the table.
//!
//! Each side computes fingerprints the way its engine does best ([`FingerprintQuery`]):
//! Redshift with one `GROUP BY` over range scans; PostgreSQL, whose `GROUP BY` hashes every
//! row, with a plain aggregate per bucket over an index range scan, about twice as fast on the
//! lab. Both give the same fingerprints, so a PostgreSQL source and a Redshift target compare.
//!
//! Rows change while the search runs (replication goes on): a report describes each bucket as
//! it was when that bucket was last read. Callers that repair must re-check ids before writing.

pub(crate) mod buckets;
pub(crate) mod queries;

use chrono::NaiveDate;
use tokio_postgres::Client;

use crate::config::{QualifiedName, TableConfig};
use buckets::{
    batch_ranges, child_width, coalesce, compare, first_ranges, first_width, span, BitmapQuery,
    BucketPrint, GroupQuery, Leaf, WORD_BITS,
};

/// Which database a query ran on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The source PostgreSQL.
    Source,
    /// The Redshift target.
    Target,
}

impl std::fmt::Display for Side {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Side::Source => "source",
            Side::Target => "target",
        })
    }
}

/// Why a search failed.
#[derive(Debug, thiserror::Error)]
pub enum GapError {
    #[error("invalid id range: {0}")]
    InvalidRange(String),
    #[error("invalid gap finder options: {0}")]
    InvalidOptions(String),
    #[error("invalid table: {0}")]
    InvalidTable(String),
    #[error("query on the {side} failed: {source}")]
    Query {
        side: Side,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error("unexpected result: {0}")]
    Decode(String),
    #[error("day column `{column}` has type {type_name}; expected timestamp, timestamptz or date")]
    UnsupportedDayColumn { column: String, type_name: String },
}

/// An inclusive range of ids, `lo..=hi` (the default is `0..=0`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct IdRange {
    pub lo: i64,
    pub hi: i64,
}

impl IdRange {
    /// `lo..=hi`; an error when `lo > hi`.
    pub fn new(lo: i64, hi: i64) -> Result<Self, GapError> {
        if lo > hi {
            return Err(GapError::InvalidRange(format!("{lo} is above {hi}")));
        }
        Ok(Self { lo, hi })
    }

    pub fn contains(&self, id: i64) -> bool {
        self.lo <= id && id <= self.hi
    }

    /// The part at or below `max`, if any: ids above the target's newest id are still in
    /// flight (DMS applies in commit order), not missing.
    pub fn up_to(self, max: i64) -> Option<IdRange> {
        (max >= self.lo).then(|| IdRange {
            lo: self.lo,
            hi: self.hi.min(max),
        })
    }

    /// The smallest range holding both.
    pub fn union(self, other: IdRange) -> IdRange {
        IdRange {
            lo: self.lo.min(other.lo),
            hi: self.hi.max(other.hi),
        }
    }
}

impl std::fmt::Display for IdRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}..={}", self.lo, self.hi)
    }
}

/// A replicated table: where it lives on each side and its monotonically increasing id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableSpec {
    pub source: QualifiedName,
    pub target: QualifiedName,
    /// The bigint (or integer) key column, same name on both sides.
    pub id_column: String,
}

impl TableSpec {
    /// From a `[[tables]]` entry (names were validated when the config loaded).
    pub fn from_config(table: &TableConfig) -> Result<Self, GapError> {
        let parse = |name: &str| {
            QualifiedName::parse(name)
                .ok_or_else(|| GapError::InvalidTable(format!("`{name}` is not `schema.table`")))
        };
        if !crate::config::is_identifier(&table.id_column) {
            return Err(GapError::InvalidTable(format!(
                "`{}` is not a plain column name",
                table.id_column
            )));
        }
        Ok(Self {
            source: parse(&table.source)?,
            target: parse(table.target_name())?,
            id_column: table.id_column.clone(),
        })
    }
}

/// What the search cost.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GapStats {
    /// Statements run, both sides together.
    pub queries: u64,
    /// Result rows received, both sides together.
    pub rows_transferred: u64,
    /// Buckets whose fingerprints were compared.
    pub ranges_compared: u64,
    /// Rounds of queries (each round queries both sides concurrently).
    pub rounds: u64,
    /// How each side computed its fingerprints.
    pub source_query: FingerprintQuery,
    pub target_query: FingerprintQuery,
}

/// The outcome of one search.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GapReport {
    /// Ids in the source and not in the target, ascending.
    pub missing: Vec<i64>,
    /// Ids in the target and not in the source (deleted at the source), ascending.
    pub extra: Vec<i64>,
    pub stats: GapStats,
}

/// Bounds and shape of the search. The defaults suit tables of millions to billions of rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GapFinderOptions {
    /// Most buckets one first-round query groups into (and returns).
    pub max_buckets_per_query: u64,
    /// Narrowest first-round bucket, in ids (a power of two).
    pub min_first_width: u64,
    /// Sub-buckets each differing bucket splits into on the next round (a power of two).
    /// Differing buckets at most `32 * fanout` ids wide, or whose counts differ by at least
    /// `fanout`, are read as bitmaps instead.
    pub fanout: u64,
    /// Read a differing bucket as bitmaps once neither side holds more than this many rows.
    pub list_threshold: u64,
    /// Most id ranges in one query's predicate.
    pub max_ranges_per_query: usize,
    /// Widest id span one grouped query reads (a power of two, at most 2^31); longer ranges
    /// take several.
    pub max_span_per_query: u64,
    /// Widest id span one bitmap query reads (it returns at most a 32nd of that in rows).
    /// Wide enough that dense gaps take few statements, each large enough for PostgreSQL to
    /// spread over parallel workers.
    pub max_list_span_per_query: u64,
    /// How the source computes bucket fingerprints.
    pub source_query: FingerprintQuery,
    /// How the target computes bucket fingerprints.
    pub target_query: FingerprintQuery,
}

/// The statement shape that computes bucket fingerprints on one side. Both shapes return the
/// same fingerprints, so the sides may use different ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FingerprintQuery {
    /// [`FingerprintQuery::Grouped`] on Redshift (told apart by `version()`); on PostgreSQL
    /// [`FingerprintQuery::PerBucket`], unless its planner expects the range to be sparse
    /// (under 32 rows per first-round bucket), where an index probe per bucket would cost more
    /// than hashing the few rows.
    #[default]
    Detect,
    /// One `GROUP BY` over range scans. Redshift, columnar and spread over slices, aggregates
    /// this way at scan speed; PostgreSQL hashes every row, which takes it about twice as long
    /// as per bucket.
    Grouped,
    /// PostgreSQL only: an index range scan with a plain aggregate per bucket
    /// (`generate_series` and `LATERAL`, which Redshift lacks), no hashing; on the lab it costs
    /// about 1.4 times a `count(*)` of the range.
    PerBucket,
}

impl Default for GapFinderOptions {
    fn default() -> Self {
        Self {
            max_buckets_per_query: 1 << 16,
            min_first_width: 64,
            fanout: 16,
            list_threshold: 16,
            max_ranges_per_query: 32,
            max_span_per_query: 1 << 24,
            max_list_span_per_query: 1 << 20,
            source_query: FingerprintQuery::Detect,
            target_query: FingerprintQuery::Detect,
        }
    }
}

impl GapFinderOptions {
    fn validate(&self) -> Result<(), GapError> {
        let bad = |m: &str| Err(GapError::InvalidOptions(m.to_owned()));
        if self.max_buckets_per_query == 0 {
            return bad("max_buckets_per_query must be above 0");
        }
        if !self.min_first_width.is_power_of_two() {
            return bad("min_first_width must be a power of two");
        }
        if !self.fanout.is_power_of_two() || self.fanout < 2 {
            return bad("fanout must be a power of two of at least 2");
        }
        if !self.max_span_per_query.is_power_of_two()
            || self.max_span_per_query < self.min_first_width
            || self.max_span_per_query > 1 << 31
        {
            // Queries sum ids' offsets in their range as 32-bit integers.
            return bad(
                "max_span_per_query must be a power of two between min_first_width and 2^31",
            );
        }
        if self.max_ranges_per_query == 0 {
            return bad("max_ranges_per_query must be above 0");
        }
        if self.max_list_span_per_query == 0 {
            return bad("max_list_span_per_query must be above 0");
        }
        Ok(())
    }
}

/// One side's ids (and, for the content comparison, rows), as the search sees them.
pub(crate) trait IdSet {
    /// What a narrow bucket is read as: bitmap words of ids, or rows with their hashes.
    type Leaf: Leaf;
    /// Per-bucket fingerprints of the query's ranges (buckets without rows are absent).
    async fn fingerprints(&self, query: &GroupQuery) -> Result<Vec<BucketPrint>, GapError>;
    /// The leaves of the query's ranges (empty leaves are absent).
    async fn leaves(&self, query: &BitmapQuery) -> Result<Vec<Self::Leaf>, GapError>;
}

/// What a search over two [`IdSet`]s found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct WalkReport {
    pub missing: Vec<i64>,
    pub extra: Vec<i64>,
    /// Ids on both sides whose rows differ (always empty for id-only sets).
    pub divergent: Vec<i64>,
    pub stats: GapStats,
    /// Rows the fingerprint queries aggregated, both sides together (the scan cost).
    pub rows_aggregated: u64,
}

/// Finds missing and extra ids between a source and a target table.
#[derive(Debug, Clone, Default)]
pub struct GapFinder {
    options: GapFinderOptions,
}

impl GapFinder {
    pub fn new(options: GapFinderOptions) -> Result<Self, GapError> {
        options.validate()?;
        Ok(Self { options })
    }

    pub fn options(&self) -> &GapFinderOptions {
        &self.options
    }

    /// The ids in `range` present on one side only. Reads only (plain `SELECT`s, no locks);
    /// each statement is bounded by `max_span_per_query` and the connection's statement timeout.
    pub async fn find(
        &self,
        source: &Client,
        target: &Client,
        table: &TableSpec,
        range: IdRange,
    ) -> Result<GapReport, GapError> {
        IdRange::new(range.lo, range.hi)?;
        let o = &self.options;
        let buckets = span(range)
            / u128::from(first_width(
                range,
                o.max_buckets_per_query,
                o.min_first_width,
                o.max_span_per_query,
            ));
        let (src, tgt) =
            tokio::try_join!(
                queries::PgIdSet::new(source, Side::Source, &table.source, &table.id_column)
                    .resolve(o.source_query, range, buckets),
                queries::PgIdSet::new(target, Side::Target, &table.target, &table.id_column)
                    .resolve(o.target_query, range, buckets),
            )?;
        let mut report = self.search(&src, &tgt, range).await?;
        report.stats.source_query = src.fingerprint_query();
        report.stats.target_query = tgt.fingerprint_query();
        tracing::debug!(
            table = %table.source,
            range = %range,
            missing = report.missing.len(),
            extra = report.extra.len(),
            queries = report.stats.queries,
            rows = report.stats.rows_transferred,
            source_query = ?report.stats.source_query,
            target_query = ?report.stats.target_query,
            "Gap search done."
        );
        Ok(report)
    }

    /// The search over any pair of id sets.
    pub(crate) async fn search<S: IdSet, T: IdSet<Leaf = S::Leaf>>(
        &self,
        source: &S,
        target: &T,
        request: IdRange,
    ) -> Result<GapReport, GapError> {
        let walk = self.walk(source, target, request).await?;
        if let Some(id) = walk.divergent.first() {
            // Only a single-id bucket counted more than once on a side gets here.
            return Err(GapError::Decode(format!(
                "id {id} is counted more than once on a side"
            )));
        }
        Ok(GapReport {
            missing: walk.missing,
            extra: walk.extra,
            stats: walk.stats,
        })
    }

    /// The bucket walk shared by the gap finder and the content comparison: fingerprints of
    /// the whole range, differing buckets split round by round, narrow ones read as leaves.
    pub(crate) async fn walk<S: IdSet, T: IdSet<Leaf = S::Leaf>>(
        &self,
        source: &S,
        target: &T,
        request: IdRange,
    ) -> Result<WalkReport, GapError> {
        IdRange::new(request.lo, request.hi)?;
        if request.hi.checked_sub(request.lo).is_none() {
            // Bucket numbers are `id - lo` in a bigint.
            return Err(GapError::InvalidRange(format!(
                "{request} spans more than 2^63 ids"
            )));
        }
        let o = &self.options;
        let mut report = WalkReport::default();
        let width = first_width(
            request,
            o.max_buckets_per_query,
            o.min_first_width,
            o.max_span_per_query,
        );
        let bitmaps_of = |ranges: &[IdRange]| -> Vec<BitmapQuery> {
            // Wide ranges (a bucket with one side empty) are cut to the per-query bound.
            let ranges: Vec<IdRange> = coalesce(ranges, o.max_list_span_per_query)
                .into_iter()
                .flat_map(|r| first_ranges(r, o.max_list_span_per_query))
                .collect();
            batch_ranges(&ranges, o.max_ranges_per_query, o.max_list_span_per_query)
                .into_iter()
                .map(|ranges| BitmapQuery {
                    anchor: request.lo,
                    ranges,
                })
                .collect()
        };
        let tiny = u128::from(
            o.list_threshold
                .max(WORD_BITS)
                .min(o.max_list_span_per_query),
        );
        let (mut groups, mut bitmaps) = if span(request) <= tiny {
            (Vec::new(), bitmaps_of(&[request]))
        } else {
            let groups = first_ranges(request, o.max_span_per_query)
                .into_iter()
                .map(|r| GroupQuery {
                    anchor: request.lo,
                    width,
                    ranges: vec![r],
                })
                .collect();
            (groups, Vec::new())
        };
        while !groups.is_empty() || !bitmaps.is_empty() {
            report.stats.rounds += 1;
            let started = std::time::Instant::now();
            let (from_source, from_target) = tokio::try_join!(
                round(source, &groups, &bitmaps),
                round(target, &groups, &bitmaps)
            )?;
            tracing::debug!(
                round = report.stats.rounds,
                grouped_queries = groups.len(),
                bitmap_queries = bitmaps.len(),
                seconds = started.elapsed().as_secs_f64(),
                "Gap search round done."
            );
            report.stats.queries += 2 * (groups.len() + bitmaps.len()) as u64;
            report.stats.rows_transferred += from_source.rows() + from_target.rows();
            report.rows_aggregated += from_source.aggregated() + from_target.aggregated();

            for ((query, s), t) in bitmaps
                .iter()
                .zip(&from_source.bitmaps)
                .zip(&from_target.bitmaps)
            {
                let diff = S::Leaf::diff(query.anchor, s, t);
                report.missing.extend(diff.missing);
                report.extra.extend(diff.extra);
                report.divergent.extend(diff.divergent);
            }
            let mut split = Vec::new();
            let mut to_bitmap = Vec::new();
            for ((query, s), t) in groups
                .iter()
                .zip(&from_source.groups)
                .zip(&from_target.groups)
            {
                let verdict = compare(query, request, s, t, o.list_threshold, o.fanout)?;
                report.stats.ranges_compared += verdict.compared;
                report.missing.extend(verdict.missing);
                report.extra.extend(verdict.extra);
                report.divergent.extend(verdict.divergent);
                split.extend(verdict.split);
                to_bitmap.extend(verdict.bitmap);
            }
            let next_width = groups.first().map_or(1, |q| child_width(q.width, o.fanout));
            split.sort_unstable();
            to_bitmap.sort_unstable();
            // Touching buckets merge into one range predicate (dense gaps read as one scan),
            // as long as one query still returns at most `max_buckets_per_query` buckets.
            let group_span = o
                .max_span_per_query
                .min(o.max_buckets_per_query.saturating_mul(next_width));
            let split = coalesce(&split, group_span);
            groups = batch_ranges(&split, o.max_ranges_per_query, group_span)
                .into_iter()
                .map(|ranges| GroupQuery {
                    anchor: request.lo,
                    width: next_width,
                    ranges,
                })
                .collect();
            bitmaps = bitmaps_of(&to_bitmap);
        }
        report.missing.sort_unstable();
        report.extra.sort_unstable();
        report.divergent.sort_unstable();
        Ok(report)
    }
}

/// One side's answers to one round.
struct RoundResult<L> {
    groups: Vec<Vec<BucketPrint>>,
    bitmaps: Vec<Vec<L>>,
}

impl<L> RoundResult<L> {
    fn rows(&self) -> u64 {
        let g: usize = self.groups.iter().map(Vec::len).sum();
        let l: usize = self.bitmaps.iter().map(Vec::len).sum();
        (g + l) as u64
    }

    /// Rows the round's fingerprints cover.
    fn aggregated(&self) -> u64 {
        self.groups
            .iter()
            .flatten()
            .map(|b| b.print.count.unsigned_abs())
            .sum()
    }
}

/// Sends all of a round's queries to one side at once (pipelined on its connection).
async fn round<S: IdSet>(
    side: &S,
    groups: &[GroupQuery],
    bitmaps: &[BitmapQuery],
) -> Result<RoundResult<S::Leaf>, GapError> {
    let (groups, bitmaps) = futures::try_join!(
        futures::future::try_join_all(groups.iter().map(|q| side.fingerprints(q))),
        futures::future::try_join_all(bitmaps.iter().map(|q| side.leaves(q))),
    )?;
    Ok(RoundResult { groups, bitmaps })
}

/// Min and max id of the source rows whose `day_column` falls in the UTC day `day`, or `None`
/// when there are none. `day_column` may be `timestamptz`, `timestamp` (read as UTC) or `date`.
pub async fn id_range_for_day(
    source: &Client,
    table: &TableSpec,
    day_column: &str,
    day: NaiveDate,
) -> Result<Option<IdRange>, GapError> {
    if !crate::config::is_identifier(day_column) {
        return Err(GapError::InvalidTable(format!(
            "`{day_column}` is not a plain column name"
        )));
    }
    queries::day_bounds(source, table, day_column, day).await
}

/// The query [`target_max_id`] runs: one aggregate over the target's sort key.
pub fn target_max_id_sql(table: &TableSpec) -> String {
    format!(
        "SELECT CAST(MAX({}) AS BIGINT) FROM {}",
        crate::config::quote_ident(&table.id_column),
        table.target.quoted()
    )
}

/// The target's newest id, `None` when it is empty (the `table_max_id_lag` gauge). It is no
/// frontier: a quiet table whose newest rows DMS dropped ends below them.
pub async fn target_max_id(target: &Client, table: &TableSpec) -> Result<Option<i64>, GapError> {
    let query_error = |source| GapError::Query {
        side: Side::Target,
        source,
    };
    let row = target
        .query_one(&target_max_id_sql(table), &[])
        .await
        .map_err(query_error)?;
    row.try_get(0).map_err(query_error)
}

/// The source's newest id, `None` when the table is empty: sampled over time, it tells which
/// ids replication has passed (see [`crate::frontier`]).
pub async fn source_max_id(source: &Client, table: &TableSpec) -> Result<Option<i64>, GapError> {
    let sql = format!(
        "SELECT CAST(MAX({}) AS BIGINT) FROM {}",
        crate::config::quote_ident(&table.id_column),
        table.source.quoted()
    );
    let query_error = |source| GapError::Query {
        side: Side::Source,
        source,
    };
    let row = source.query_one(&sql, &[]).await.map_err(query_error)?;
    row.try_get(0).map_err(query_error)
}

/// The smallest range holding every id of both sides, or `None` when both tables are empty.
pub async fn id_range_of_tables(
    source: &Client,
    target: &Client,
    table: &TableSpec,
) -> Result<Option<IdRange>, GapError> {
    let source_sql = queries::bounds_sql(&table.source, &table.id_column);
    let target_sql = queries::bounds_sql(&table.target, &table.id_column);
    let (s, t) = tokio::try_join!(
        async {
            let row = source.query_one(&source_sql, &[]).await;
            let row = row.map_err(|source| GapError::Query {
                side: Side::Source,
                source,
            })?;
            queries::read_bounds(&row, Side::Source)
        },
        async {
            let row = target.query_one(&target_sql, &[]).await;
            let row = row.map_err(|source| GapError::Query {
                side: Side::Target,
                source,
            })?;
            queries::read_bounds(&row, Side::Target)
        },
    )?;
    Ok(match (s, t) {
        (Some(s), Some(t)) => Some(s.union(t)),
        (s, t) => s.or(t),
    })
}

#[cfg(test)]
mod tests;
