//! The gap finder's SQL: grouped fingerprints and id bitmaps, valid on Redshift and PostgreSQL.
//!
//! Every statement is a plain `SELECT` with range predicates on the id column (the index on
//! PostgreSQL, the sort key's zone maps on Redshift), values bound as typed parameters. Each id
//! range of a statement is its own `UNION ALL` branch, so every branch is one range scan.

use chrono::{NaiveDate, NaiveTime};
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::Client;

use super::buckets::{
    BitmapQuery, BucketPrint, Fingerprint, GroupQuery, Word, HASH_PRIME, WORD_BITS,
};
use super::{FingerprintQuery, GapError, IdRange, IdSet, Side, TableSpec};
use crate::config::{quote_ident, QualifiedName};

/// Fewest rows per bucket, as PostgreSQL's planner estimates them, for which the per-bucket
/// query beats the grouped one: an index probe per bucket costs about as much as hashing 30
/// rows (measured on the lab, `tests/BENCH-GAPS.md`).
const PER_BUCKET_MIN_ROWS: u128 = 32;

/// One side of the comparison: a table on a connection.
pub(crate) struct PgIdSet<'a> {
    client: &'a Client,
    side: Side,
    table: String,
    id: String,
    fingerprints: FingerprintQuery,
}

impl<'a> PgIdSet<'a> {
    pub(crate) fn new(
        client: &'a Client,
        side: Side,
        table: &QualifiedName,
        id_column: &str,
    ) -> Self {
        Self {
            client,
            side,
            table: table.quoted(),
            id: quote_ident(id_column),
            fingerprints: FingerprintQuery::Grouped,
        }
    }

    /// Settles how this side computes fingerprints: `choice` itself, or for `Detect` the
    /// grouped query on Redshift (`version()` names it) and on PostgreSQL the per-bucket one,
    /// unless the planner expects fewer than [`PER_BUCKET_MIN_ROWS`] rows per first-round
    /// bucket: a sparse id space would cost an index probe per empty bucket.
    pub(crate) async fn resolve(
        mut self,
        choice: FingerprintQuery,
        request: IdRange,
        first_round_buckets: u128,
    ) -> Result<Self, GapError> {
        self.fingerprints = match choice {
            FingerprintQuery::Detect => self.detect(request, first_round_buckets).await?,
            chosen => chosen,
        };
        Ok(self)
    }

    async fn detect(
        &self,
        request: IdRange,
        first_round_buckets: u128,
    ) -> Result<FingerprintQuery, GapError> {
        detect_shape(
            self.client,
            self.side,
            &self.table,
            &self.id,
            request,
            first_round_buckets,
        )
        .await
    }

    pub(crate) fn fingerprint_query(&self) -> FingerprintQuery {
        self.fingerprints
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
}

/// [`FingerprintQuery::Detect`] settled for one side: the grouped query on Redshift
/// (`version()` names it) and on PostgreSQL the per-bucket one, unless the planner expects
/// fewer than [`PER_BUCKET_MIN_ROWS`] rows per first-round bucket. `table` and `id` are quoted.
pub(crate) async fn detect_shape(
    client: &Client,
    side: Side,
    table: &str,
    id: &str,
    request: IdRange,
    first_round_buckets: u128,
) -> Result<FingerprintQuery, GapError> {
    let query_error = |source| GapError::Query { side, source };
    let decode = |e: tokio_postgres::Error| {
        GapError::Decode(format!("{side} row: {}", crate::report::error_chain(&e)))
    };
    let row = client
        .query_one("SELECT version()", &[])
        .await
        .map_err(query_error)?;
    let version: String = row.try_get(0).map_err(decode)?;
    if version.contains("Redshift") {
        return Ok(FingerprintQuery::Grouped);
    }
    // The bounds are integers of ours, not input: literal, so the planner sees them.
    let sql = format!(
        "EXPLAIN (FORMAT JSON) SELECT 1 FROM {table} WHERE {id} >= {} AND {id} <= {}",
        request.lo, request.hi
    );
    let row = client.query_one(&sql, &[]).await.map_err(query_error)?;
    let plan: serde_json::Value = row.try_get(0).map_err(decode)?;
    let rows = plan[0]["Plan"]["Plan Rows"]
        .as_f64()
        .ok_or_else(|| GapError::Decode(format!("{side} plan without rows: {plan}")))?;
    let dense = rows >= (first_round_buckets * PER_BUCKET_MIN_ROWS) as f64;
    Ok(if dense {
        FingerprintQuery::PerBucket
    } else {
        FingerprintQuery::Grouped
    })
}

impl IdSet for PgIdSet<'_> {
    type Leaf = Word;

    async fn fingerprints(&self, query: &GroupQuery) -> Result<Vec<BucketPrint>, GapError> {
        let (sql, params) = match self.fingerprints {
            FingerprintQuery::PerBucket => per_bucket_sql(&self.table, &self.id, query),
            FingerprintQuery::Grouped | FingerprintQuery::Detect => {
                group_sql(&self.table, &self.id, query)
            }
        };
        let rows = self.query(&sql, &params).await?;
        rows.iter()
            .map(|row| {
                let bucket: i64 = row.try_get(0).map_err(|e| self.decode(e))?;
                let count: i64 = row.try_get(1).map_err(|e| self.decode(e))?;
                let sum: String = row.try_get(2).map_err(|e| self.decode(e))?;
                let hash: String = row.try_get(3).map_err(|e| self.decode(e))?;
                Ok(BucketPrint {
                    bucket,
                    print: Fingerprint {
                        count,
                        sum: parse_sum(&sum, self.side)?,
                        hash: parse_sum(&hash, self.side)?,
                        content: 0,
                    },
                })
            })
            .collect()
    }

    async fn leaves(&self, query: &BitmapQuery) -> Result<Vec<Word>, GapError> {
        let (sql, params) = bitmap_sql(&self.table, &self.id, query);
        let rows = self.query(&sql, &params).await?;
        rows.iter()
            .map(|row| {
                Ok(Word {
                    word: row.try_get(0).map_err(|e| self.decode(e))?,
                    bits: row.try_get(1).map_err(|e| self.decode(e))?,
                })
            })
            .collect()
    }
}

impl PgIdSet<'_> {
    fn decode(&self, error: tokio_postgres::Error) -> GapError {
        GapError::Decode(format!(
            "{} row: {}",
            self.side,
            crate::report::error_chain(&error)
        ))
    }
}

/// Sums arrive as text: PostgreSQL's `sum(bigint)` is numeric, Redshift's is bigint.
pub(crate) fn parse_sum(text: &str, side: Side) -> Result<i128, GapError> {
    text.trim()
        .parse::<i128>()
        .map_err(|_| GapError::Decode(format!("{side} sum `{text}` is not an integer")))
}

/// `SELECT columns FROM table WHERE id in range`, one branch per range, joined by `UNION ALL`;
/// the ranges' bounds are appended to `params`.
///
/// A lone range is cut in two: PostgreSQL then plans a (parallel) append, and groups on a
/// column of a `UNION ALL` get its default estimate of a few hundred groups. Over a plain scan
/// it would take the id's statistics (one group per row), plan a hash table for every row and
/// spill it to disk, or sort.
pub(crate) fn branches(
    table: &str,
    id: &str,
    ranges: &[IdRange],
    params: &mut Vec<i64>,
    columns: &str,
) -> String {
    let halves;
    let ranges = match ranges {
        [only] if only.lo < only.hi => {
            let mid = only.lo + (only.hi - only.lo) / 2;
            halves = [
                IdRange {
                    lo: only.lo,
                    hi: mid,
                },
                IdRange {
                    lo: mid + 1,
                    hi: only.hi,
                },
            ];
            &halves[..]
        }
        _ => ranges,
    };
    let parts: Vec<String> = ranges
        .iter()
        .map(|r| {
            params.push(r.lo);
            params.push(r.hi);
            let (lo, hi) = (params.len() - 1, params.len());
            format!("SELECT {columns} FROM {table} WHERE {id} >= ${lo} AND {id} <= ${hi}")
        })
        .collect();
    parts.join(" UNION ALL ")
}

/// The grouped fingerprint query: `(bucket, count, sum of offsets, sum of hashes)` per bucket,
/// where an id's offset is its distance from the start of its bucket (so it does not depend on
/// how the statement cuts its ranges, and [`per_bucket_sql`] computes the same).
pub(crate) fn group_sql(table: &str, id: &str, query: &GroupQuery) -> (String, Vec<i64>) {
    group_sql_with(table, id, query, None)
}

/// [`group_sql`] with a fifth column, the sum of `content` (a bigint expression over the row,
/// the content comparison's row hash), cast to text like the other sums.
pub(crate) fn group_sql_with(
    table: &str,
    id: &str,
    query: &GroupQuery,
    content: Option<&str>,
) -> (String, Vec<i64>) {
    let width = i64::try_from(query.width).unwrap_or(i64::MAX);
    let mut params = vec![query.anchor, width];
    let x = format!("CAST({id} AS BIGINT)");
    let r = format!("({x} % {HASH_PRIME})");
    // Summands are cast to INTEGER: an offset stays below the bucket width (at most
    // `max_span_per_query`, 2^31) and the hash below the prime, so both fit; sums of integers
    // keep a plain bigint state (PostgreSQL's bigint sums keep a 128-bit one per group, and
    // spill sooner).
    let (content_column, content_sum) = match content {
        Some(c) => (
            format!(", {c} AS c"),
            ", CAST(SUM(c) AS VARCHAR(40)) AS c".to_owned(),
        ),
        None => (String::new(), String::new()),
    };
    let columns = format!(
        "({x} - $1) / $2 AS bucket, CAST(({x} - $1) % $2 AS INTEGER) AS x, \
         CAST(({r} * {r} % {HASH_PRIME}) * {r} % {HASH_PRIME} AS INTEGER) AS h{content_column}"
    );
    let ids = branches(table, id, &query.ranges, &mut params, &columns);
    let sql = format!(
        "SELECT bucket, COUNT(*) AS n, CAST(SUM(x) AS VARCHAR(40)) AS s, \
         CAST(SUM(h) AS VARCHAR(40)) AS h{content_sum} FROM ({ids}) AS ids GROUP BY bucket"
    );
    (sql, params)
}

/// The same fingerprints as [`group_sql`], one bucket at a time (PostgreSQL only): a series of
/// bucket starts per range, and for each an index range scan under a plain aggregate.
///
/// PostgreSQL's `GROUP BY` hashes every row; here each row only feeds its bucket's running
/// aggregate, which on the lab halves the first round (measured in `tests/BENCH-GAPS.md`).
/// A bucket's upper bound is computed in numeric, so a bucket ending past `i64::MAX` is cut
/// at its range's end instead of overflowing.
pub(crate) fn per_bucket_sql(table: &str, id: &str, query: &GroupQuery) -> (String, Vec<i64>) {
    per_bucket_sql_with(table, id, query, None)
}

/// [`per_bucket_sql`] with the sum of `content` as a fifth column (see [`group_sql_with`]).
pub(crate) fn per_bucket_sql_with(
    table: &str,
    id: &str,
    query: &GroupQuery,
    content: Option<&str>,
) -> (String, Vec<i64>) {
    let width = i64::try_from(query.width).unwrap_or(i64::MAX);
    let mut params = vec![query.anchor, width, width - 1];
    let starts: Vec<String> = query
        .ranges
        .iter()
        .map(|r| {
            // The start of the bucket holding `r.lo`: ranges lie inside the request, whose
            // offsets from the anchor fit an i64.
            let offset = (i128::from(r.lo) - i128::from(query.anchor)) / i128::from(width);
            let first = i128::from(query.anchor) + offset * i128::from(width);
            params.extend([first as i64, r.lo, r.hi]);
            let (first, lo, hi) = (params.len() - 2, params.len() - 1, params.len());
            format!("SELECT generate_series(${first}, ${hi}, $2) AS b, ${lo} AS lo, ${hi} AS hi")
        })
        .collect();
    let starts = starts.join(" UNION ALL ");
    let x = format!("CAST({id} AS BIGINT)");
    let r = format!("({x} % {HASH_PRIME})");
    let (content_out, content_sum) = match content {
        Some(c) => (
            ", CAST(f.c AS VARCHAR(40)) AS c".to_owned(),
            format!(", SUM({c}) AS c"),
        ),
        None => (String::new(), String::new()),
    };
    let sql = format!(
        "SELECT (r.b - $1) / $2 AS bucket, f.n, CAST(f.s AS VARCHAR(40)) AS s, \
         CAST(f.h AS VARCHAR(40)) AS h{content_out} FROM ({starts}) AS r CROSS JOIN LATERAL (\
         SELECT COUNT(*) AS n, SUM(CAST({x} - r.b AS INTEGER)) AS s, \
         SUM(CAST(({r} * {r} % {HASH_PRIME}) * {r} % {HASH_PRIME} AS INTEGER)) AS h{content_sum} \
         FROM {table} WHERE {id} >= GREATEST(r.b, r.lo) \
         AND {id} <= CAST(LEAST(CAST(r.b AS NUMERIC) + $3, r.hi) AS BIGINT)) AS f \
         WHERE f.n > 0"
    );
    (sql, params)
}

/// The bitmap query: per word of 32 ids from the anchor, the OR of `2^(id's place in the word)`.
/// `BIT_OR` rather than a sum, so a duplicated id (Redshift does not enforce keys) reads as
/// present instead of carrying into its neighbour.
pub(crate) fn bitmap_sql(table: &str, id: &str, query: &BitmapQuery) -> (String, Vec<i64>) {
    let mut params = vec![query.anchor];
    let offset = format!("(CAST({id} AS BIGINT) - $1)");
    let columns = format!(
        "{offset} / {WORD_BITS} AS word, CAST(POWER(CAST(2 AS DOUBLE PRECISION), \
         CAST({offset} % {WORD_BITS} AS INTEGER)) AS BIGINT) AS bit"
    );
    let ids = branches(table, id, &query.ranges, &mut params, &columns);
    let sql = format!("SELECT word, BIT_OR(bit) AS bits FROM ({ids}) AS ids GROUP BY word");
    (sql, params)
}

/// Min and max id of one table (both `NULL` when empty).
pub(crate) fn bounds_sql(table: &QualifiedName, id_column: &str) -> String {
    let id = quote_ident(id_column);
    format!(
        "SELECT CAST(MIN({id}) AS BIGINT), CAST(MAX({id}) AS BIGINT) FROM {}",
        table.quoted()
    )
}

/// Min and max id of the rows whose `day_column` falls in `[$1, $2)`.
///
/// The day's rows are aggregated in a subquery with `OFFSET 0`, which PostgreSQL does not
/// flatten: without it PostgreSQL answers `MIN`/`MAX` by walking the id index from each end
/// and filtering on the day, which for `MIN` of a recent day reads every older row of the
/// table (measured: 2.8 million rows read for a day of 100,000 in a 30-day table, 0.81 s,
/// against 0.04 s through an index on `day_column`). With the fence the cost follows the day's
/// rows when `day_column` is indexed (docs/operations.md, "What the gaps probe reads").
pub(crate) fn day_bounds_sql(table: &TableSpec, day_column: &str) -> String {
    let id = quote_ident(&table.id_column);
    let day = quote_ident(day_column);
    format!(
        "SELECT CAST(MIN(d.{id}) AS BIGINT), CAST(MAX(d.{id}) AS BIGINT) FROM \
         (SELECT {id} FROM {} WHERE {day} >= $1 AND {day} < $2 OFFSET 0) d",
        table.source.quoted()
    )
}

/// Reads `(min, max)` from a bounds query; `None` when no row matched.
pub(crate) fn read_bounds(
    row: &tokio_postgres::Row,
    side: Side,
) -> Result<Option<IdRange>, GapError> {
    let decode = |e: tokio_postgres::Error| {
        GapError::Decode(format!("{side} bounds: {}", crate::report::error_chain(&e)))
    };
    let lo: Option<i64> = row.try_get(0).map_err(decode)?;
    let hi: Option<i64> = row.try_get(1).map_err(decode)?;
    Ok(match (lo, hi) {
        (Some(lo), Some(hi)) => Some(IdRange { lo, hi }),
        _ => None,
    })
}

/// Runs the day-bounds query, binding the day's limits in the column's own type.
pub(crate) async fn day_bounds(
    client: &Client,
    table: &TableSpec,
    day_column: &str,
    day: NaiveDate,
) -> Result<Option<IdRange>, GapError> {
    let query_error = |source| GapError::Query {
        side: Side::Source,
        source,
    };
    let sql = day_bounds_sql(table, day_column);
    let statement = client.prepare(&sql).await.map_err(query_error)?;
    let next = day
        .succ_opt()
        .ok_or_else(|| GapError::InvalidRange(format!("no day follows {day}")))?;
    let start = day.and_time(NaiveTime::MIN);
    let end = next.and_time(NaiveTime::MIN);
    let kind = statement.params().first().cloned().unwrap_or(Type::UNKNOWN);
    let row = match kind {
        Type::TIMESTAMPTZ => {
            let (start, end) = (start.and_utc(), end.and_utc());
            client.query_one(&statement, &[&start, &end]).await
        }
        Type::TIMESTAMP => client.query_one(&statement, &[&start, &end]).await,
        Type::DATE => client.query_one(&statement, &[&day, &next]).await,
        other => {
            return Err(GapError::UnsupportedDayColumn {
                column: day_column.to_owned(),
                type_name: other.name().to_owned(),
            })
        }
    }
    .map_err(query_error)?;
    read_bounds(&row, Side::Source)
}

#[cfg(test)]
mod tests {
    use super::*;
    use sqlparser::dialect::RedshiftSqlDialect;
    use sqlparser::parser::Parser;

    fn parses_on_redshift(sql: &str) {
        Parser::parse_sql(&RedshiftSqlDialect {}, sql)
            .unwrap_or_else(|e| panic!("not Redshift SQL: {e}\n{sql}"));
    }

    fn r(lo: i64, hi: i64) -> IdRange {
        IdRange { lo, hi }
    }

    #[test]
    fn group_query_binds_every_value_and_parses_on_redshift() {
        let q = GroupQuery {
            anchor: 100,
            width: 16,
            ranges: vec![r(100, 115), r(164, 179)],
        };
        let (sql, params) = group_sql("\"public\".\"orders\"", "\"id\"", &q);
        assert_eq!(params, vec![100, 16, 100, 115, 164, 179]);
        assert!(sql.contains("$6") && !sql.contains("$7"), "{sql}");
        assert_eq!(sql.matches(" UNION ALL ").count(), 1, "{sql}");
        assert!(sql.contains("GROUP BY bucket"));
        parses_on_redshift(&sql);
        // A lone range is read in two halves.
        let single = GroupQuery {
            ranges: vec![r(100, 115)],
            ..q
        };
        let (sql, params) = group_sql("\"s\".\"t\"", "\"id\"", &single);
        assert_eq!(params, vec![100, 16, 100, 107, 108, 115]);
        assert!(!sql.contains(" OR "));
        parses_on_redshift(&sql);
        let one_id = GroupQuery {
            ranges: vec![r(i64::MAX, i64::MAX)],
            ..q
        };
        let (sql, params) = group_sql("\"s\".\"t\"", "\"id\"", &one_id);
        assert_eq!(params.len(), 4);
        assert!(!sql.contains("UNION"));
    }

    #[test]
    fn per_bucket_query_starts_each_range_at_its_bucket() {
        let q = GroupQuery {
            anchor: 100,
            width: 16,
            ranges: vec![r(100, 131), r(170, 179)],
        };
        let (sql, params) = per_bucket_sql("\"public\".\"orders\"", "\"id\"", &q);
        // anchor, width, width - 1, then per range: first bucket start, lo, hi.
        assert_eq!(params, vec![100, 16, 15, 100, 100, 131, 164, 170, 179]);
        assert!(sql.contains("$9") && !sql.contains("$10"), "{sql}");
        assert_eq!(sql.matches("generate_series").count(), 2, "{sql}");
        assert!(
            sql.contains("CROSS JOIN LATERAL") && !sql.contains("GROUP BY"),
            "{sql}"
        );
        // PostgreSQL only; still plain enough for the parser's PostgreSQL dialect.
        Parser::parse_sql(&sqlparser::dialect::PostgreSqlDialect {}, &sql)
            .unwrap_or_else(|e| panic!("not PostgreSQL: {e}\n{sql}"));
    }

    #[test]
    fn bitmap_and_bounds_queries_parse_on_redshift() {
        let q = BitmapQuery {
            anchor: 1,
            ranges: vec![r(1, 2), r(5, 9)],
        };
        let (sql, params) = bitmap_sql("\"public\".\"orders\"", "\"id\"", &q);
        assert_eq!(params, vec![1, 1, 2, 5, 9]);
        assert!(sql.contains("BIT_OR"));
        parses_on_redshift(&sql);
        let name = QualifiedName::parse("public.orders").unwrap();
        parses_on_redshift(&bounds_sql(&name, "id"));
        let spec = TableSpec {
            source: name.clone(),
            target: name,
            id_column: "id".to_owned(),
        };
        parses_on_redshift(&day_bounds_sql(&spec, "created_at"));
    }

    #[test]
    fn sums_decode_from_numeric_or_bigint_text() {
        assert_eq!(parse_sum("123", Side::Source).unwrap(), 123);
        assert_eq!(
            parse_sum("-99999999999999999999", Side::Target).unwrap(),
            -99_999_999_999_999_999_999
        );
        assert!(parse_sum("1.5", Side::Target).is_err());
    }
}
