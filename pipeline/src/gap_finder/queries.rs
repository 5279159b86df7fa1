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
use super::{GapError, IdRange, IdSet, Side, TableSpec};
use crate::config::{quote_ident, QualifiedName};

/// One side of the comparison: a table on a connection.
pub(crate) struct PgIdSet<'a> {
    client: &'a Client,
    side: Side,
    table: String,
    id: String,
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
        }
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

impl IdSet for PgIdSet<'_> {
    async fn fingerprints(&self, query: &GroupQuery) -> Result<Vec<BucketPrint>, GapError> {
        let (sql, params) = group_sql(&self.table, &self.id, query);
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
                    },
                })
            })
            .collect()
    }

    async fn bitmaps(&self, query: &BitmapQuery) -> Result<Vec<Word>, GapError> {
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
        GapError::Decode(format!("{} row: {error}", self.side))
    }
}

/// Sums arrive as text: PostgreSQL's `sum(bigint)` is numeric, Redshift's is bigint.
fn parse_sum(text: &str, side: Side) -> Result<i128, GapError> {
    text.trim()
        .parse::<i128>()
        .map_err(|_| GapError::Decode(format!("{side} sum `{text}` is not an integer")))
}

/// `SELECT columns FROM table WHERE id in range`, one branch per range, joined by `UNION ALL`;
/// the ranges' bounds are appended to `params`, and `columns` gets the number of the branch's
/// lower bound parameter.
///
/// A lone range is cut in two: PostgreSQL then plans a (parallel) append, and groups on a
/// column of a `UNION ALL` get its default estimate of a few hundred groups. Over a plain scan
/// it would take the id's statistics (one group per row), plan a hash table for every row and
/// spill it to disk, or sort.
fn branches(
    table: &str,
    id: &str,
    ranges: &[IdRange],
    params: &mut Vec<i64>,
    columns: impl Fn(usize) -> String,
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
            let columns = columns(lo);
            format!("SELECT {columns} FROM {table} WHERE {id} >= ${lo} AND {id} <= ${hi}")
        })
        .collect();
    parts.join(" UNION ALL ")
}

/// The grouped fingerprint query: `(bucket, count, sum of offsets, sum of hashes)` per bucket,
/// where an id's offset is its distance from the start of its branch's range.
///
/// Both sides run the same statement, so a bucket cut by a branch boundary still gets equal
/// sums for equal ids.
pub(crate) fn group_sql(table: &str, id: &str, query: &GroupQuery) -> (String, Vec<i64>) {
    let width = i64::try_from(query.width).unwrap_or(i64::MAX);
    let mut params = vec![query.anchor, width];
    let x = format!("CAST({id} AS BIGINT)");
    let r = format!("({x} % {HASH_PRIME})");
    // Summands are cast to INTEGER: an offset stays below `max_span_per_query` (at most 2^31)
    // and the hash below the prime, so both fit; sums of integers keep a plain bigint state
    // (PostgreSQL's bigint sums keep a 128-bit one per group, and spill sooner).
    let columns = |lo: usize| {
        format!(
            "({x} - $1) / $2 AS bucket, CAST({x} - ${lo} AS INTEGER) AS x, \
             CAST(({r} * {r} % {HASH_PRIME}) * {r} % {HASH_PRIME} AS INTEGER) AS h"
        )
    };
    let ids = branches(table, id, &query.ranges, &mut params, columns);
    let sql = format!(
        "SELECT bucket, COUNT(*) AS n, CAST(SUM(x) AS VARCHAR(40)) AS s, \
         CAST(SUM(h) AS VARCHAR(40)) AS h FROM ({ids}) AS ids GROUP BY bucket"
    );
    (sql, params)
}

/// The bitmap query: per word of 32 ids from the anchor, the OR of `2^(id's place in the word)`.
/// `BIT_OR` rather than a sum, so a duplicated id (Redshift does not enforce keys) reads as
/// present instead of carrying into its neighbour.
pub(crate) fn bitmap_sql(table: &str, id: &str, query: &BitmapQuery) -> (String, Vec<i64>) {
    let mut params = vec![query.anchor];
    let offset = format!("(CAST({id} AS BIGINT) - $1)");
    let columns = |_| {
        format!(
            "{offset} / {WORD_BITS} AS word, CAST(POWER(CAST(2 AS DOUBLE PRECISION), \
             CAST({offset} % {WORD_BITS} AS INTEGER)) AS BIGINT) AS bit"
        )
    };
    let ids = branches(table, id, &query.ranges, &mut params, columns);
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
pub(crate) fn day_bounds_sql(table: &TableSpec, day_column: &str) -> String {
    let id = quote_ident(&table.id_column);
    let day = quote_ident(day_column);
    format!(
        "SELECT CAST(MIN({id}) AS BIGINT), CAST(MAX({id}) AS BIGINT) FROM {} \
         WHERE {day} >= $1 AND {day} < $2",
        table.source.quoted()
    )
}

/// Reads `(min, max)` from a bounds query; `None` when no row matched.
pub(crate) fn read_bounds(
    row: &tokio_postgres::Row,
    side: Side,
) -> Result<Option<IdRange>, GapError> {
    let decode = |e: tokio_postgres::Error| GapError::Decode(format!("{side} bounds: {e}"));
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
