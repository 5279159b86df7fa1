//! The content comparison's SQL: the gap finder's fingerprint queries with a row-hash sum, and
//! rows listed with their hashes, in each side's dialect.
//!
//! A row's hash is the first 32 bits of the MD5 of its canonical text, read as an integer: on
//! PostgreSQL through a bit string, on Redshift with `STRTOL(…, 16)` (Redshift has MD5 and
//! STRTOL but no `hashtext`: <https://docs.aws.amazon.com/redshift/latest/dg/r_MD5.html>,
//! <https://docs.aws.amazon.com/redshift/latest/dg/r_STRTOL.html>). Both give the same number
//! for the same text, so the sides compare.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};

use chrono::{DateTime, Utc};
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::Client;

use super::canonical::ColumnPlan;
use super::ContentComparer;
use crate::config::quote_ident;
use crate::gap_finder::buckets::{
    batch_ranges, coalesce, first_ranges, first_width, span, BitmapQuery, BucketPrint, Fingerprint,
    GroupQuery, Leaf, LeafDiff,
};
use crate::gap_finder::queries::{
    branches, detect_shape, group_sql_with, parse_sum, per_bucket_sql_with,
};
use crate::gap_finder::{
    FingerprintQuery, GapError, GapFinderOptions, GapStats, IdRange, IdSet, Side, TableSpec,
    WalkReport,
};

/// Which SQL a side speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    PostgreSql,
    /// Told apart by `version()`.
    Redshift,
}

/// One row of a leaf query: an id and its row hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RowHash {
    pub id: i64,
    pub hash: i64,
}

impl Leaf for RowHash {
    /// Ids on one side only are missing or extra; ids on both sides whose hashes differ (as
    /// multisets: the target may hold an id twice, Redshift enforces no key) are divergent.
    fn diff(_anchor: i64, source: &[Self], target: &[Self]) -> LeafDiff {
        let mut rows: BTreeMap<i64, (Vec<i64>, Vec<i64>)> = BTreeMap::new();
        for r in source {
            rows.entry(r.id).or_default().0.push(r.hash);
        }
        for r in target {
            rows.entry(r.id).or_default().1.push(r.hash);
        }
        let mut diff = LeafDiff::default();
        for (id, (mut s, mut t)) in rows {
            match (s.is_empty(), t.is_empty()) {
                (false, true) => diff.missing.push(id),
                (true, false) => diff.extra.push(id),
                _ => {
                    s.sort_unstable();
                    t.sort_unstable();
                    if s != t {
                        diff.divergent.push(id);
                    }
                }
            }
        }
        diff
    }
}

/// The row-hash expression of one side: the sum (modulo 2^32 when there are several) of the
/// 32-bit MD5 prefixes of each column group's text.
pub(crate) fn row_hash_sql(
    dialect: Dialect,
    side: Side,
    id: &str,
    columns: &[ColumnPlan],
    groups: usize,
    salt: u64,
) -> String {
    let hashes: Vec<String> = (0..groups.max(1))
        .map(|g| {
            let mut text = format!("'{salt:016x}|' || CAST({id} AS VARCHAR(20))");
            for c in columns.iter().filter(|c| c.group == g) {
                let piece = match side {
                    Side::Source => c.source_piece(),
                    Side::Target => c.target_piece(),
                };
                text.push_str(" || '|' || ");
                text.push_str(&piece);
            }
            match dialect {
                Dialect::PostgreSql => {
                    format!("CAST(CAST('x' || SUBSTR(MD5({text}), 1, 8) AS BIT(32)) AS BIGINT)")
                }
                Dialect::Redshift => format!("STRTOL(SUBSTRING(MD5({text}), 1, 8), 16)"),
            }
        })
        .collect();
    if hashes.len() == 1 {
        hashes.into_iter().next().unwrap_or_default()
    } else {
        format!("MOD({}, 4294967296)", hashes.join(" + "))
    }
}

/// One side of a comparison: a table on a connection, with its dialect and query shape.
pub(crate) struct RowSet<'a> {
    client: &'a Client,
    side: Side,
    table: String,
    id: String,
    row_hash: String,
    shape: FingerprintQuery,
    bytes: AtomicU64,
    leaf_rows: AtomicU64,
}

impl<'a> RowSet<'a> {
    /// Detects the side's dialect and settles its fingerprint query shape for `range`.
    pub(crate) async fn connect(
        client: &'a Client,
        side: Side,
        comparer: &ContentComparer,
        salt: u64,
        range: IdRange,
    ) -> Result<RowSet<'a>, GapError> {
        let (table, id) = match side {
            Side::Source => (&comparer.table.source, &comparer.source_id),
            Side::Target => (&comparer.table.target, &comparer.target_id),
        };
        let (table, id) = (table.quoted(), quote_ident(id));
        let dialect = dialect(client, side).await?;
        let o = &comparer.options.walk;
        let choice = match side {
            Side::Source => o.source_query,
            Side::Target => o.target_query,
        };
        let shape = match (choice, dialect) {
            (_, Dialect::Redshift) => FingerprintQuery::Grouped,
            (FingerprintQuery::Detect, Dialect::PostgreSql) => {
                let width = first_width(
                    range,
                    o.max_buckets_per_query,
                    o.min_first_width,
                    o.max_span_per_query,
                );
                let buckets = span(range) / u128::from(width);
                detect_shape(client, side, &table, &id, range, buckets).await?
            }
            (chosen, Dialect::PostgreSql) => chosen,
        };
        let row_hash = row_hash_sql(dialect, side, &id, &comparer.columns, comparer.groups, salt);
        Ok(RowSet {
            client,
            side,
            table,
            id,
            row_hash,
            shape,
            bytes: AtomicU64::new(0),
            leaf_rows: AtomicU64::new(0),
        })
    }

    /// Bytes of values received so far.
    pub(crate) fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    /// Rows read by leaf queries so far.
    pub(crate) fn leaf_rows(&self) -> u64 {
        self.leaf_rows.load(Ordering::Relaxed)
    }

    async fn query(&self, sql: &str, params: &[i64]) -> Result<Vec<tokio_postgres::Row>, GapError> {
        let typed: Vec<(&(dyn ToSql + Sync), Type)> = params
            .iter()
            .map(|p| (p as &(dyn ToSql + Sync), Type::INT8))
            .collect();
        self.client
            .query_typed(sql, &typed)
            .await
            .map_err(|source| GapError::Query {
                side: self.side,
                source,
            })
    }

    fn decode(&self, error: tokio_postgres::Error) -> GapError {
        GapError::Decode(format!(
            "{} row: {}",
            self.side,
            crate::report::error_chain(&error)
        ))
    }

    /// The first-round statement for `query` (for display).
    fn fingerprint_sql(&self, query: &GroupQuery) -> (String, Vec<i64>) {
        match self.shape {
            FingerprintQuery::PerBucket => {
                per_bucket_sql_with(&self.table, &self.id, query, Some(&self.row_hash))
            }
            FingerprintQuery::Grouped | FingerprintQuery::Detect => {
                group_sql_with(&self.table, &self.id, query, Some(&self.row_hash))
            }
        }
    }

    /// Rows of `ranges` with their hashes.
    async fn rows(&self, ranges: &[IdRange]) -> Result<Vec<RowHash>, GapError> {
        let mut params = Vec::new();
        let columns = format!("CAST({} AS BIGINT) AS id, {} AS c", self.id, self.row_hash);
        let sql = branches(&self.table, &self.id, ranges, &mut params, &columns);
        let rows = self.query(&sql, &params).await?;
        self.bytes
            .fetch_add(16 * rows.len() as u64, Ordering::Relaxed);
        self.leaf_rows
            .fetch_add(rows.len() as u64, Ordering::Relaxed);
        rows.iter()
            .map(|row| {
                Ok(RowHash {
                    id: row.try_get(0).map_err(|e| self.decode(e))?,
                    hash: row.try_get(1).map_err(|e| self.decode(e))?,
                })
            })
            .collect()
    }
}

impl IdSet for RowSet<'_> {
    type Leaf = RowHash;

    async fn fingerprints(&self, query: &GroupQuery) -> Result<Vec<BucketPrint>, GapError> {
        let (sql, params) = self.fingerprint_sql(query);
        let rows = self.query(&sql, &params).await?;
        rows.iter()
            .map(|row| {
                let bucket: i64 = row.try_get(0).map_err(|e| self.decode(e))?;
                let count: i64 = row.try_get(1).map_err(|e| self.decode(e))?;
                let sum: String = row.try_get(2).map_err(|e| self.decode(e))?;
                let hash: String = row.try_get(3).map_err(|e| self.decode(e))?;
                let content: String = row.try_get(4).map_err(|e| self.decode(e))?;
                self.bytes.fetch_add(
                    16 + (sum.len() + hash.len() + content.len()) as u64,
                    Ordering::Relaxed,
                );
                Ok(BucketPrint {
                    bucket,
                    print: Fingerprint {
                        count,
                        sum: parse_sum(&sum, self.side)?,
                        hash: parse_sum(&hash, self.side)?,
                        content: parse_sum(&content, self.side)?,
                    },
                })
            })
            .collect()
    }

    async fn leaves(&self, query: &BitmapQuery) -> Result<Vec<RowHash>, GapError> {
        self.rows(&query.ranges).await
    }
}

/// The dialect `version()` names.
pub(crate) async fn dialect(client: &Client, side: Side) -> Result<Dialect, GapError> {
    let row = client
        .query_one("SELECT version()", &[])
        .await
        .map_err(|source| GapError::Query { side, source })?;
    let version: String = row.try_get(0).map_err(|e| {
        GapError::Decode(format!(
            "{side} version: {}",
            crate::report::error_chain(&e)
        ))
    })?;
    Ok(if version.contains("Redshift") {
        Dialect::Redshift
    } else {
        Dialect::PostgreSql
    })
}

/// Compares the listed ids row by row on both sides.
pub(crate) async fn compare_listed(
    source: &RowSet<'_>,
    target: &RowSet<'_>,
    ids: &[i64],
    options: GapFinderOptions,
) -> Result<WalkReport, GapError> {
    let singles: Vec<IdRange> = ids.iter().map(|&id| IdRange { lo: id, hi: id }).collect();
    let ranges = coalesce(&singles, options.max_list_span_per_query);
    let ranges: Vec<IdRange> = ranges
        .into_iter()
        .flat_map(|r| first_ranges(r, options.max_list_span_per_query))
        .collect();
    let batches = batch_ranges(
        &ranges,
        options.max_ranges_per_query,
        options.max_list_span_per_query,
    );
    let (s, t) = tokio::try_join!(
        futures::future::try_join_all(batches.iter().map(|b| source.rows(b))),
        futures::future::try_join_all(batches.iter().map(|b| target.rows(b))),
    )?;
    let s: Vec<RowHash> = s.into_iter().flatten().collect();
    let t: Vec<RowHash> = t.into_iter().flatten().collect();
    let diff = RowHash::diff(0, &s, &t);
    Ok(WalkReport {
        missing: diff.missing,
        extra: diff.extra,
        divergent: diff.divergent,
        stats: GapStats {
            queries: 2 * batches.len() as u64,
            rows_transferred: (s.len() + t.len()) as u64,
            rounds: u64::from(!batches.is_empty()),
            ..GapStats::default()
        },
        rows_aggregated: 0,
    })
}

/// The ids among `ids` whose source row changed at or after `frontier` (per `column`).
pub(crate) async fn changed_since(
    source: &Client,
    table: &TableSpec,
    id_column: &str,
    column: &str,
    ids: &[i64],
    frontier: DateTime<Utc>,
) -> Result<BTreeSet<i64>, GapError> {
    let mut out = BTreeSet::new();
    if ids.is_empty() {
        return Ok(out);
    }
    let query_error = |source| GapError::Query {
        side: Side::Source,
        source,
    };
    // The source is PostgreSQL: an array parameter is fine here (never sent to Redshift).
    let sql = format!(
        "SELECT CAST({id} AS BIGINT) FROM {} WHERE {id} = ANY($1::int8[]) AND {} >= $2",
        table.source.quoted(),
        quote_ident(column),
        id = quote_ident(id_column),
    );
    let statement = source.prepare(&sql).await.map_err(query_error)?;
    let kind = statement.params().get(1).cloned().unwrap_or(Type::UNKNOWN);
    for chunk in ids.chunks(10_000) {
        let chunk = chunk.to_vec();
        let rows = match kind {
            Type::TIMESTAMPTZ => source.query(&statement, &[&chunk, &frontier]).await,
            Type::TIMESTAMP => {
                source
                    .query(&statement, &[&chunk, &frontier.naive_utc()])
                    .await
            }
            other => {
                return Err(GapError::UnsupportedDayColumn {
                    column: column.to_owned(),
                    type_name: other.name().to_owned(),
                })
            }
        }
        .map_err(query_error)?;
        for row in rows {
            out.insert(row.try_get(0).map_err(query_error)?);
        }
    }
    Ok(out)
}

/// The first round's first statement on one side, with its parameters inlined as comments.
pub(crate) fn describe_first_round(
    comparer: &ContentComparer,
    side: Side,
    dialect: Dialect,
    range: IdRange,
) -> String {
    let (table, id) = match side {
        Side::Source => (&comparer.table.source, &comparer.source_id),
        Side::Target => (&comparer.table.target, &comparer.target_id),
    };
    let (table, id) = (table.quoted(), quote_ident(id));
    let o = &comparer.options.walk;
    let width = first_width(
        range,
        o.max_buckets_per_query,
        o.min_first_width,
        o.max_span_per_query,
    );
    let salt = comparer.options.salt.unwrap_or(0);
    let row_hash = row_hash_sql(dialect, side, &id, &comparer.columns, comparer.groups, salt);
    let first = first_ranges(range, o.max_span_per_query)
        .into_iter()
        .next()
        .unwrap_or(range);
    let query = GroupQuery {
        anchor: range.lo,
        width,
        ranges: vec![first],
    };
    let (sql, params) = group_sql_with(&table, &id, &query, Some(&row_hash));
    let params: Vec<String> = params
        .iter()
        .enumerate()
        .map(|(i, p)| format!("${} = {p}", i + 1))
        .collect();
    format!("{sql} -- {}", params.join(", "))
}
