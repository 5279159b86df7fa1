//! Converts source PostgreSQL rows to what the Redshift target's columns hold, and builds the
//! idempotent multi-row `INSERT` that writes them.
//!
//! The conversion is driven by the target's actual column types, read from its catalogue
//! ([`crate::catalogue`]), because the same source type lands differently depending on who
//! created the target table: DMS puts booleans, json, arrays, uuids and enums in `varchar`,
//! hand-written DDL may use `boolean`, `SUPER`, `VARBYTE`.
//!
//! How each source value is written (see [`Translator::translate`]):
//!
//! | source | target `boolean` | target `varchar`/`char` (DMS's text) | other targets |
//! |---|---|---|---|
//! | `boolean` | as is | `true` / `false`, as DMS writes them | — |
//! | integers, `real`, `double` | — | decimal text | numeric types (range/precision checked) |
//! | `numeric(p,s)` | — | the source's text | `numeric(p,s)`: fails if the value needs more digits than the target has, never rounds |
//! | `json`, `jsonb` | — | the source's JSON text | `SUPER` (`JSON_PARSE`) |
//! | arrays | — | the source's text form (`{a,"b c"}`), as DMS writes them | `SUPER` (`array_to_json`) |
//! | `uuid`, enums, other types | — | the source's text form | — |
//! | `timestamptz` | — | `YYYY-MM-DD HH:MM:SS[.ffffff]+00` (UTC) | `timestamptz`; `timestamp` as UTC |
//! | `bytea` | — | `\x` + hex (PostgreSQL's text form) | `VARBYTE` (`FROM_HEX`) |
//! | NULL | NULL (fails on a NOT NULL column) | NULL | NULL |
//!
//! A value longer than a character column's declared length (counted in bytes, as Redshift
//! does) fails the row with an error naming table, column and id; nothing is truncated.
//!
//! Values always travel as bound text parameters cast in SQL to the column type. Text is the one
//! parameter format every Redshift driver path accepts, and the casts keep types explicit so that
//! `INSERT … SELECT … UNION ALL` infers the same types on PostgreSQL and Redshift.

use std::collections::HashSet;
use std::fmt::Write as _;

use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};
use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, GenericClient, Row};

use crate::catalogue::{SourceColumn, SourceTable, SourceTypeKind, TargetColumn, TargetTable};
use crate::config::{quote_ident, QualifiedName};

/// Most bound parameters one statement carries (Redshift's limit is lower than PostgreSQL's).
pub const MAX_PARAMS_PER_STATEMENT: usize = 32_767;
/// Most bytes of a value's text this path binds for a `SUPER` or `VARBYTE` column: it travels
/// as `varchar(65535)` into `JSON_PARSE` / `FROM_HEX`. A single string inside a SUPER value is
/// limited to VARCHAR's 65,535 bytes as well, and a SUPER object to 16 MB ("Limitations",
/// SUPER data type, Amazon Redshift Database Developer Guide).
pub const MAX_SUPER_OR_HEX_BYTES: usize = 65_535;
/// A `VARBYTE` column's length when none is declared ("VARBYTE type": 1 to 16,777,216 bytes,
/// default 64,000).
pub const DEFAULT_VARBYTE_BYTES: usize = 64_000;

/// Why rows could not be read from the source.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("id column `{column}` is not a column of source table {table}")]
    IdColumnMissing {
        table: QualifiedName,
        column: String,
    },
    #[error("cannot read rows of {table} from the source: {source}")]
    Query {
        table: QualifiedName,
        #[source]
        source: tokio_postgres::Error,
    },
}

/// Why a row, or a whole table, cannot be translated to the target (`table` as `schema.table`).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TranslateError {
    #[error("id column `{column}` missing in {side} table {table}")]
    IdColumnMissing {
        table: String,
        column: String,
        side: &'static str,
    },
    #[error("{table}.{column}: target type `{data_type}` is not supported")]
    UnsupportedTargetType {
        table: String,
        column: String,
        data_type: String,
    },
    #[error("{table}.{column} is NOT NULL in the target but has no source column")]
    NotNullWithoutSource { table: String, column: String },
    #[error("{table}.{column} id {id}: value of {bytes} bytes exceeds the column's {max} (not truncated)")]
    TooLong {
        table: String,
        column: String,
        id: i64,
        bytes: usize,
        max: usize,
    },
    #[error("{table}.{column} id {id}: NULL in a NOT NULL column")]
    NullInNotNull {
        table: String,
        column: String,
        id: i64,
    },
    #[error(
        "{table}.{column} id {id}: a {source_type} value cannot go to a `{target_type}` column"
    )]
    Mismatch {
        table: String,
        column: String,
        id: i64,
        source_type: &'static str,
        target_type: String,
    },
    #[error("{table}.{column} id {id}: value `{value}` does not fit `{target_type}`")]
    OutOfRange {
        table: String,
        column: String,
        id: i64,
        value: String,
        target_type: String,
    },
}

/// Why translated rows could not be inserted.
#[derive(Debug, thiserror::Error)]
pub enum InsertError {
    #[error("inserting into {table} failed: {source}")]
    Query {
        table: String,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error("staging rows for {table} failed ({action}): {source}")]
    Stage {
        table: String,
        action: &'static str,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error("inserting into {table}: still conflicting with concurrent writers after {attempts} attempts")]
    Conflict { table: String, attempts: u32 },
}

/// One source value, decoded by source type.
#[derive(Debug, Clone, PartialEq)]
pub enum SourceValue {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    /// `numeric` in PostgreSQL's text form (exact).
    Numeric(String),
    /// `json`/`jsonb` text.
    Json(String),
    /// An array: its JSON (for `SUPER`) and its PostgreSQL text form (what DMS writes).
    Array {
        json: String,
        text: String,
    },
    TimestampTz(DateTime<Utc>),
    Timestamp(NaiveDateTime),
    Date(NaiveDate),
    Bytes(Vec<u8>),
    /// Text and every type read through its text form (`uuid`, enums, `time`, `interval`, …).
    Text(String),
}

impl SourceValue {
    fn type_name(&self) -> &'static str {
        match self {
            SourceValue::Null => "NULL",
            SourceValue::Bool(_) => "boolean",
            SourceValue::Int(_) => "integer",
            SourceValue::Float(_) => "floating-point",
            SourceValue::Numeric(_) => "numeric",
            SourceValue::Json(_) => "json",
            SourceValue::Array { .. } => "array",
            SourceValue::TimestampTz(_) => "timestamptz",
            SourceValue::Timestamp(_) => "timestamp",
            SourceValue::Date(_) => "date",
            SourceValue::Bytes(_) => "bytea",
            SourceValue::Text(_) => "text",
        }
    }
}

/// A source row: its id and one value per source column, in [`SourceTable::columns`] order.
#[derive(Debug, Clone, PartialEq)]
pub struct SourceRow {
    pub id: i64,
    pub values: Vec<SourceValue>,
}

/// How a source column is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SourceClass {
    Bool,
    Int,
    Float,
    Numeric,
    Json,
    Array,
    TimestampTz,
    Timestamp,
    Date,
    Bytes,
    Text,
}

pub(crate) fn source_class(column: &SourceColumn) -> SourceClass {
    match column.kind {
        SourceTypeKind::Array => SourceClass::Array,
        SourceTypeKind::Enum | SourceTypeKind::Other => SourceClass::Text,
        SourceTypeKind::Base => match column.udt_name.as_str() {
            "bool" => SourceClass::Bool,
            "int2" | "int4" | "int8" => SourceClass::Int,
            "float4" | "float8" => SourceClass::Float,
            "numeric" => SourceClass::Numeric,
            "json" | "jsonb" => SourceClass::Json,
            "timestamptz" => SourceClass::TimestampTz,
            "timestamp" => SourceClass::Timestamp,
            "date" => SourceClass::Date,
            "bytea" => SourceClass::Bytes,
            _ => SourceClass::Text,
        },
    }
}

/// The select-list expression reading a column in the form [`decode`] expects.
fn source_expression(class: SourceClass, quoted: &str) -> String {
    match class {
        SourceClass::Bool
        | SourceClass::TimestampTz
        | SourceClass::Timestamp
        | SourceClass::Date
        | SourceClass::Bytes => quoted.to_owned(),
        SourceClass::Int => format!("{quoted}::int8"),
        SourceClass::Float => format!("{quoted}::float8"),
        SourceClass::Numeric | SourceClass::Json | SourceClass::Text => format!("{quoted}::text"),
        SourceClass::Array => format!(
            "CASE WHEN {quoted} IS NULL THEN NULL ELSE ARRAY[array_to_json({quoted})::text, {quoted}::text] END"
        ),
    }
}

fn decode(row: &Row, i: usize, class: SourceClass) -> Result<SourceValue, tokio_postgres::Error> {
    fn get<'a, T: tokio_postgres::types::FromSql<'a>>(
        row: &'a Row,
        i: usize,
        wrap: impl FnOnce(T) -> SourceValue,
    ) -> Result<SourceValue, tokio_postgres::Error> {
        Ok(row
            .try_get::<_, Option<T>>(i)?
            .map_or(SourceValue::Null, wrap))
    }
    match class {
        SourceClass::Bool => get(row, i, SourceValue::Bool),
        SourceClass::Int => get(row, i, SourceValue::Int),
        SourceClass::Float => get(row, i, SourceValue::Float),
        SourceClass::Numeric => get(row, i, SourceValue::Numeric),
        SourceClass::Json => get(row, i, SourceValue::Json),
        SourceClass::Array => get(row, i, |v: Vec<String>| {
            let mut v = v.into_iter();
            SourceValue::Array {
                json: v.next().unwrap_or_default(),
                text: v.next().unwrap_or_default(),
            }
        }),
        SourceClass::TimestampTz => get(row, i, SourceValue::TimestampTz),
        SourceClass::Timestamp => get(row, i, SourceValue::Timestamp),
        SourceClass::Date => get(row, i, SourceValue::Date),
        SourceClass::Bytes => get(row, i, SourceValue::Bytes),
        SourceClass::Text => get(row, i, SourceValue::Text),
    }
}

/// Reads the rows with the given ids from the source, in id order; ids not found are skipped.
pub async fn fetch_source_rows(
    client: &impl GenericClient,
    table: &SourceTable,
    id_column: &str,
    ids: &[i64],
) -> Result<Vec<SourceRow>, FetchError> {
    if table.column_index(id_column).is_none() {
        return Err(FetchError::IdColumnMissing {
            table: table.name.clone(),
            column: id_column.to_owned(),
        });
    }
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let classes: Vec<SourceClass> = table.columns.iter().map(source_class).collect();
    let id = quote_ident(id_column);
    let mut select = format!("SELECT {id}::int8");
    for (column, class) in table.columns.iter().zip(&classes) {
        select.push_str(", ");
        select.push_str(&source_expression(*class, &quote_ident(&column.name)));
    }
    // `= ANY($1::int8[])` keeps the id index usable for int4 ids too (cross-type btree operator).
    let sql = format!(
        "{select} FROM {} WHERE {id} = ANY($1::int8[]) ORDER BY {id}",
        table.name.quoted()
    );
    let query_error = |source| FetchError::Query {
        table: table.name.clone(),
        source,
    };
    let rows = client.query(&sql, &[&ids]).await.map_err(query_error)?;
    rows.iter()
        .map(|row| {
            let id: i64 = row.try_get(0)?;
            let values = classes
                .iter()
                .enumerate()
                .map(|(i, class)| decode(row, i + 1, *class))
                .collect::<Result<Vec<_>, _>>()?;
            Ok(SourceRow { id, values })
        })
        .collect::<Result<Vec<_>, tokio_postgres::Error>>()
        .map_err(query_error)
}

/// What a target column holds, as far as writing it is concerned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum TargetClass {
    Boolean,
    Integer { min: i64, max: i64 },
    Float,
    Numeric { precision: Option<u32>, scale: u32 },
    Character { max_bytes: Option<usize> },
    TimestampTz,
    Timestamp,
    Date,
    Time { sql_type: &'static str },
    Super,
    Json,
    Bytea,
    Varbyte,
    Uuid,
}

pub(crate) fn target_class(column: &TargetColumn) -> Option<TargetClass> {
    let length = |c: &TargetColumn| c.char_max_length.and_then(|n| usize::try_from(n).ok());
    Some(match column.data_type.as_str() {
        "boolean" => TargetClass::Boolean,
        "smallint" => TargetClass::Integer {
            min: i16::MIN.into(),
            max: i16::MAX.into(),
        },
        "integer" => TargetClass::Integer {
            min: i32::MIN.into(),
            max: i32::MAX.into(),
        },
        "bigint" => TargetClass::Integer {
            min: i64::MIN,
            max: i64::MAX,
        },
        "real" | "double precision" => TargetClass::Float,
        "numeric" => TargetClass::Numeric {
            precision: column.numeric_precision.and_then(|p| u32::try_from(p).ok()),
            scale: column
                .numeric_scale
                .and_then(|s| u32::try_from(s).ok())
                .unwrap_or(0),
        },
        "character varying" | "character" | "text" | "bpchar" => TargetClass::Character {
            max_bytes: length(column),
        },
        "timestamp with time zone" => TargetClass::TimestampTz,
        "timestamp without time zone" => TargetClass::Timestamp,
        "date" => TargetClass::Date,
        "time without time zone" => TargetClass::Time { sql_type: "time" },
        "time with time zone" => TargetClass::Time { sql_type: "timetz" },
        "super" => TargetClass::Super,
        // The lab's stand-in for SUPER (see `ddl --postgres-check`).
        "json" | "jsonb" => TargetClass::Json,
        "bytea" => TargetClass::Bytea,
        "binary varying" | "varbyte" => TargetClass::Varbyte,
        "uuid" => TargetClass::Uuid,
        _ => return None,
    })
}

/// The SQL reading bound text parameter `$n` as a value of the column's type.
fn param_expression(class: &TargetClass, column: &TargetColumn, n: usize) -> String {
    match class {
        // Redshift cannot cast varchar to boolean; a comparison works everywhere.
        TargetClass::Boolean => format!("(${n}::varchar(5) = 'true')"),
        TargetClass::Integer { .. } => format!("CAST(${n}::varchar(20) AS bigint)"),
        TargetClass::Float => format!("CAST(${n}::varchar(32) AS double precision)"),
        TargetClass::Numeric {
            precision: Some(p),
            scale,
        } => format!("CAST(${n}::varchar(80) AS numeric({p},{scale}))"),
        TargetClass::Numeric {
            precision: None, ..
        } => format!("CAST(${n}::varchar(80) AS numeric)"),
        TargetClass::Character {
            max_bytes: Some(max),
        } => format!("${n}::varchar({max})"),
        TargetClass::Character { max_bytes: None } => format!("${n}::text"),
        TargetClass::TimestampTz => format!("CAST(${n}::varchar(40) AS timestamptz)"),
        TargetClass::Timestamp => format!("CAST(${n}::varchar(40) AS timestamp)"),
        TargetClass::Date => format!("CAST(${n}::varchar(40) AS date)"),
        TargetClass::Time { sql_type } => format!("CAST(${n}::varchar(40) AS {sql_type})"),
        TargetClass::Super => format!("JSON_PARSE(${n}::varchar(65535))"),
        TargetClass::Json => format!("CAST(${n}::text AS {})", column.data_type),
        TargetClass::Bytea => format!("decode(${n}::text, 'hex')"),
        TargetClass::Varbyte => format!("FROM_HEX(${n}::varchar(65535))"),
        TargetClass::Uuid => format!("CAST(${n}::text AS uuid)"),
    }
}

/// A target column fed from a source column.
#[derive(Debug, Clone)]
struct MappedColumn {
    source_index: usize,
    target: TargetColumn,
    class: TargetClass,
}

/// A row ready to insert: its id and one text value per [`Translator::columns`] entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TranslatedRow {
    pub id: i64,
    pub values: Vec<Option<String>>,
}

/// One `INSERT` with its bound parameters and the ids it carries.
pub struct InsertStatement {
    pub sql: String,
    pub params: Vec<Box<dyn ToSql + Sync + Send>>,
    pub ids: Vec<i64>,
}

impl std::fmt::Debug for InsertStatement {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InsertStatement")
            .field("sql", &self.sql)
            .field("params", &self.params.len())
            .field("ids", &self.ids)
            .finish()
    }
}

impl InsertStatement {
    /// The parameters as `tokio_postgres` takes them.
    pub fn param_refs(&self) -> Vec<&(dyn ToSql + Sync)> {
        self.params
            .iter()
            .map(|p| p.as_ref() as &(dyn ToSql + Sync))
            .collect()
    }

    /// Runs the statement; returns how many rows were inserted (those still absent).
    pub async fn execute(&self, client: &impl GenericClient) -> Result<u64, tokio_postgres::Error> {
        client.execute(&self.sql, &self.param_refs()).await
    }
}

/// Translates rows of one source table for one target table.
#[derive(Debug, Clone)]
pub struct Translator {
    table: QualifiedName,
    id_column: String,
    columns: Vec<MappedColumn>,
}

impl Translator {
    /// Maps source columns to target columns by name (exact, then ignoring ASCII case).
    ///
    /// Source columns the target lacks are not written (DMS table mappings can drop columns);
    /// a NOT NULL target column without a source column, or a target type this translator
    /// does not know, is an error up front rather than on every row.
    pub fn new(
        source: &SourceTable,
        target: &TargetTable,
        id_column: &str,
    ) -> Result<Self, TranslateError> {
        let missing_id = |side| TranslateError::IdColumnMissing {
            table: target.name.to_string(),
            column: id_column.to_owned(),
            side,
        };
        source.column_index(id_column).ok_or(missing_id("source"))?;
        let target_id = target.column(id_column).ok_or(missing_id("target"))?;
        let mut columns = Vec::new();
        for column in &target.columns {
            let source_index = source
                .columns
                .iter()
                .position(|s| s.name == column.name)
                .or_else(|| {
                    source
                        .columns
                        .iter()
                        .position(|s| s.name.eq_ignore_ascii_case(&column.name))
                });
            let Some(source_index) = source_index else {
                if column.nullable {
                    continue;
                }
                return Err(TranslateError::NotNullWithoutSource {
                    table: target.name.to_string(),
                    column: column.name.clone(),
                });
            };
            let class =
                target_class(column).ok_or_else(|| TranslateError::UnsupportedTargetType {
                    table: target.name.to_string(),
                    column: column.name.clone(),
                    data_type: column.data_type.clone(),
                })?;
            columns.push(MappedColumn {
                source_index,
                target: column.clone(),
                class,
            });
        }
        Ok(Self {
            table: target.name.clone(),
            id_column: target_id.name.clone(),
            columns,
        })
    }

    /// The target columns written, in [`TranslatedRow::values`] order.
    pub fn columns(&self) -> impl Iterator<Item = &str> {
        self.columns.iter().map(|c| c.target.name.as_str())
    }

    /// The target table written.
    pub fn table(&self) -> &QualifiedName {
        &self.table
    }

    /// The target's id column, as the target spells it.
    pub fn id_column(&self) -> &str {
        &self.id_column
    }

    /// The SQL reading bound text parameter `$n` as a value of written column `i`'s type (the
    /// `i`-th of [`Self::columns`]).
    pub fn value_expression(&self, i: usize, n: usize) -> String {
        let column = &self.columns[i];
        param_expression(&column.class, &column.target, n)
    }

    /// Rows per statement that stay under [`MAX_PARAMS_PER_STATEMENT`].
    pub fn max_rows_per_statement(&self) -> usize {
        (MAX_PARAMS_PER_STATEMENT / self.columns.len().max(1)).max(1)
    }

    /// Converts one row, or says which column of which row cannot be converted.
    pub fn translate(&self, row: &SourceRow) -> Result<TranslatedRow, TranslateError> {
        let values = self
            .columns
            .iter()
            .map(|c| {
                let value = row.values.get(c.source_index).unwrap_or(&SourceValue::Null);
                self.translate_value(c, row.id, value)
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(TranslatedRow { id: row.id, values })
    }

    /// Converts every row: the good ones, and an error for each bad one.
    pub fn translate_all(&self, rows: &[SourceRow]) -> (Vec<TranslatedRow>, Vec<TranslateError>) {
        let mut good = Vec::with_capacity(rows.len());
        let mut bad = Vec::new();
        for row in rows {
            match self.translate(row) {
                Ok(t) => good.push(t),
                Err(e) => bad.push(e),
            }
        }
        (good, bad)
    }

    /// One multi-row `INSERT` writing the rows whose id is still absent in the target.
    ///
    /// Shape (valid on Redshift: no `ON CONFLICT`, no `VALUES` lists in `FROM`):
    /// `INSERT INTO t (cols) SELECT b.cols FROM (SELECT $1 AS c1, … UNION ALL SELECT …) AS b
    /// WHERE NOT EXISTS (SELECT 1 FROM t AS e WHERE e.id = b.id)`. The check and the insert are
    /// one statement, so they run in one transaction; duplicate ids in `rows` are written once.
    /// Returns `None` for no rows.
    pub fn build_insert(&self, rows: &[TranslatedRow]) -> Option<InsertStatement> {
        let mut seen = HashSet::new();
        let rows: Vec<&TranslatedRow> = rows.iter().filter(|r| seen.insert(r.id)).collect();
        if rows.is_empty() {
            return None;
        }
        let names: Vec<String> = self
            .columns
            .iter()
            .map(|c| quote_ident(&c.target.name))
            .collect();
        let id = quote_ident(&self.id_column);
        let table = self.table.quoted();
        let mut sql = format!(
            "INSERT INTO {table} ({}) SELECT {} FROM (",
            names.join(", "),
            names
                .iter()
                .map(|n| format!("\"batch\".{n}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        let mut params: Vec<Box<dyn ToSql + Sync + Send>> =
            Vec::with_capacity(rows.len() * self.columns.len());
        for (r, row) in rows.iter().enumerate() {
            sql.push_str(if r == 0 {
                "SELECT "
            } else {
                " UNION ALL SELECT "
            });
            for (i, (column, value)) in self.columns.iter().zip(&row.values).enumerate() {
                params.push(Box::new(value.clone()));
                if i > 0 {
                    sql.push_str(", ");
                }
                sql.push_str(&param_expression(
                    &column.class,
                    &column.target,
                    params.len(),
                ));
                if r == 0 {
                    let _ = write!(sql, " AS {}", names[i]);
                }
            }
        }
        let _ = write!(
            sql,
            ") AS \"batch\" WHERE NOT EXISTS (SELECT 1 FROM {table} AS \"existing\" \
             WHERE \"existing\".{id} = \"batch\".{id})"
        );
        Some(InsertStatement {
            sql,
            params,
            ids: rows.iter().map(|r| r.id).collect(),
        })
    }

    /// [`Self::build_insert`] per batch of at most `batch_rows` rows (and the parameter limit).
    pub fn build_inserts(&self, rows: &[TranslatedRow], batch_rows: usize) -> Vec<InsertStatement> {
        let size = batch_rows.clamp(1, self.max_rows_per_statement());
        rows.chunks(size)
            .filter_map(|chunk| self.build_insert(chunk))
            .collect()
    }

    /// Inserts the rows still absent, one transaction per batch that first locks the table, and
    /// returns how many were inserted.
    ///
    /// Redshift enforces no primary key, and new clusters and Serverless run at snapshot
    /// isolation, which `START TRANSACTION ISOLATION LEVEL SERIALIZABLE` does not change: an
    /// `INSERT … WHERE NOT EXISTS` racing DMS's own INSERT of the same id would not see DMS's
    /// uncommitted row and both would commit. AWS's remedy is to force serialization by locking
    /// the table first in the transaction ("LOCK"; "Troubleshooting serializable isolation
    /// errors" in the Amazon Redshift Database Developer Guide): `LOCK` waits for DMS's
    /// transaction, and the check runs on a snapshot taken after it (a transaction's snapshot
    /// is taken at its first SELECT, DML or listed DDL statement, not at `LOCK`: "Isolation
    /// levels in Amazon Redshift"; PostgreSQL's REPEATABLE READ likewise). A transaction Redshift
    /// still cannot serialize (SQLSTATE `XX000`, "1023 … Serializable isolation violation", or
    /// under snapshot isolation "could not complete because of conflict with concurrent
    /// transaction"; PostgreSQL's `40001`) is retried, at most `max_attempts` times in all; a
    /// retry finds the rows present and inserts nothing.
    pub async fn insert_absent(
        &self,
        client: &mut Client,
        rows: &[TranslatedRow],
        batch_rows: usize,
        max_attempts: u32,
    ) -> Result<u64, InsertError> {
        let mut inserted = 0;
        for statement in self.build_inserts(rows, batch_rows) {
            let mut attempt = 0;
            loop {
                attempt += 1;
                match run_locked(client, &self.table, &statement).await {
                    Ok(n) => {
                        inserted += n;
                        break;
                    }
                    Err(e) if is_serialization_failure(&e) => {
                        if attempt >= max_attempts.max(1) {
                            return Err(InsertError::Conflict {
                                table: self.table.to_string(),
                                attempts: attempt,
                            });
                        }
                        tracing::debug!(table = %self.table, attempt, "Insert conflicted with a concurrent writer; retrying.");
                        tokio::time::sleep(std::time::Duration::from_millis(
                            10 * u64::from(attempt),
                        ))
                        .await;
                    }
                    Err(source) => {
                        return Err(InsertError::Query {
                            table: self.table.to_string(),
                            source,
                        })
                    }
                }
            }
        }
        Ok(inserted)
    }

    fn translate_value(
        &self,
        column: &MappedColumn,
        id: i64,
        value: &SourceValue,
    ) -> Result<Option<String>, TranslateError> {
        let name = || column.target.name.clone();
        let mismatch = || TranslateError::Mismatch {
            table: self.table.to_string(),
            column: name(),
            id,
            source_type: value.type_name(),
            target_type: column.target.data_type.clone(),
        };
        let out_of_range = |v: &str| TranslateError::OutOfRange {
            table: self.table.to_string(),
            column: name(),
            id,
            value: v.chars().take(80).collect(),
            target_type: describe_type(&column.target),
        };
        if *value == SourceValue::Null {
            if !column.target.nullable {
                return Err(TranslateError::NullInNotNull {
                    table: self.table.to_string(),
                    column: name(),
                    id,
                });
            }
            return Ok(None);
        }
        let text = match &column.class {
            TargetClass::Boolean => match value {
                SourceValue::Bool(b) => bool_text(*b).to_owned(),
                SourceValue::Text(s) => match parse_bool(s) {
                    Some(b) => bool_text(b).to_owned(),
                    None => return Err(out_of_range(s)),
                },
                _ => return Err(mismatch()),
            },
            TargetClass::Integer { min, max } => {
                let n = match value {
                    SourceValue::Int(n) => Some(*n),
                    SourceValue::Numeric(s) | SourceValue::Text(s) => s.trim().parse().ok(),
                    _ => return Err(mismatch()),
                };
                match n {
                    Some(n) if (*min..=*max).contains(&n) => n.to_string(),
                    _ => return Err(out_of_range(&value_text(value))),
                }
            }
            TargetClass::Float => match value {
                SourceValue::Int(_) | SourceValue::Float(_) | SourceValue::Numeric(_) => {
                    value_text(value)
                }
                SourceValue::Text(s) if s.trim().parse::<f64>().is_ok() => s.clone(),
                _ => return Err(mismatch()),
            },
            TargetClass::Numeric { precision, scale } => match value {
                SourceValue::Int(_)
                | SourceValue::Float(_)
                | SourceValue::Numeric(_)
                | SourceValue::Text(_) => {
                    let text = value_text(value);
                    if !fits_numeric(&text, *precision, *scale) {
                        return Err(out_of_range(&text));
                    }
                    text
                }
                _ => return Err(mismatch()),
            },
            TargetClass::Character { max_bytes } => {
                let text = value_text(value);
                if let Some(max) = max_bytes {
                    if text.len() > *max {
                        return Err(TranslateError::TooLong {
                            table: self.table.to_string(),
                            column: name(),
                            id,
                            bytes: text.len(),
                            max: *max,
                        });
                    }
                }
                text
            }
            TargetClass::TimestampTz => match value {
                SourceValue::TimestampTz(t) => timestamptz_text(t),
                // A timestamp without zone is taken as UTC, as DMS does.
                SourceValue::Timestamp(t) => timestamptz_text(&t.and_utc()),
                SourceValue::Text(s) => s.clone(),
                _ => return Err(mismatch()),
            },
            TargetClass::Timestamp => match value {
                SourceValue::Timestamp(t) => timestamp_text(t),
                SourceValue::TimestampTz(t) => timestamp_text(&t.naive_utc()),
                SourceValue::Text(s) => s.clone(),
                _ => return Err(mismatch()),
            },
            TargetClass::Date => match value {
                SourceValue::Date(d) => d.format("%Y-%m-%d").to_string(),
                SourceValue::Text(s) => s.clone(),
                _ => return Err(mismatch()),
            },
            TargetClass::Time { .. } | TargetClass::Uuid => match value {
                SourceValue::Text(s) => s.clone(),
                _ => return Err(mismatch()),
            },
            TargetClass::Super => {
                // Checked per row: one oversized value fails its row, not the whole batch.
                let text = json_text(value);
                if text.len() > MAX_SUPER_OR_HEX_BYTES {
                    return Err(TranslateError::TooLong {
                        table: self.table.to_string(),
                        column: name(),
                        id,
                        bytes: text.len(),
                        max: MAX_SUPER_OR_HEX_BYTES,
                    });
                }
                text
            }
            TargetClass::Json => json_text(value),
            TargetClass::Varbyte => match value {
                SourceValue::Bytes(b) => {
                    let declared = column
                        .target
                        .char_max_length
                        .and_then(|n| usize::try_from(n).ok())
                        .unwrap_or(DEFAULT_VARBYTE_BYTES);
                    // The hex text (two characters a byte) must fit the varchar(65535) too.
                    let max = declared.min(MAX_SUPER_OR_HEX_BYTES / 2);
                    if b.len() > max {
                        return Err(TranslateError::TooLong {
                            table: self.table.to_string(),
                            column: name(),
                            id,
                            bytes: b.len(),
                            max,
                        });
                    }
                    hex(b)
                }
                _ => return Err(mismatch()),
            },
            TargetClass::Bytea => match value {
                SourceValue::Bytes(b) => hex(b),
                _ => return Err(mismatch()),
            },
        };
        Ok(Some(text))
    }
}

/// Runs `statement` in its own transaction that first takes `LOCK table`.
async fn run_locked(
    client: &mut Client,
    table: &QualifiedName,
    statement: &InsertStatement,
) -> Result<u64, tokio_postgres::Error> {
    let tx = client.transaction().await?;
    tx.batch_execute(&lock_sql(table)).await?;
    let n = statement.execute(&tx).await?;
    tx.commit().await?;
    Ok(n)
}

/// `LOCK table`: Redshift's only lock mode, ACCESS EXCLUSIVE (PostgreSQL's default mode too).
pub fn lock_sql(table: &QualifiedName) -> String {
    format!("LOCK {}", table.quoted())
}

/// A conflict with a concurrent transaction, worth retrying: PostgreSQL's `40001`; Redshift's
/// serializable isolation violation, `XX000` with `1023` and "Serializable isolation violation"
/// in the message or detail; or, under snapshot isolation, "could not complete because of
/// conflict with concurrent transaction" ("Troubleshooting serializable isolation errors" and
/// "Isolation levels in Amazon Redshift", Amazon Redshift Database Developer Guide).
pub fn is_serialization_failure(error: &tokio_postgres::Error) -> bool {
    if error.code() == Some(&SqlState::T_R_SERIALIZATION_FAILURE) {
        return true;
    }
    let Some(db) = error.as_db_error() else {
        return false;
    };
    let text = format!("{} {}", db.message(), db.detail().unwrap_or_default());
    text.contains("Serializable isolation violation")
        || text.contains("conflict with concurrent transaction")
        || (db.code() == &SqlState::INTERNAL_ERROR && db.message().trim() == "1023")
}

fn describe_type(column: &TargetColumn) -> String {
    match (
        column.data_type.as_str(),
        column.numeric_precision,
        column.numeric_scale,
    ) {
        ("numeric", Some(p), Some(s)) => format!("numeric({p},{s})"),
        _ => column.data_type.clone(),
    }
}

fn bool_text(b: bool) -> &'static str {
    if b {
        "true"
    } else {
        "false"
    }
}

fn parse_bool(s: &str) -> Option<bool> {
    match s.trim().to_ascii_lowercase().as_str() {
        "true" | "t" | "yes" | "y" | "on" | "1" => Some(true),
        "false" | "f" | "no" | "n" | "off" | "0" => Some(false),
        _ => None,
    }
}

fn float_text(f: f64) -> String {
    if f.is_nan() {
        "NaN".to_owned()
    } else if f.is_infinite() {
        if f > 0.0 { "Infinity" } else { "-Infinity" }.to_owned()
    } else {
        // Rust prints the shortest text that reads back to the same value, never an exponent.
        f.to_string()
    }
}

fn timestamptz_text(t: &DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S%.f+00").to_string()
}

fn timestamp_text(t: &NaiveDateTime) -> String {
    t.format("%Y-%m-%d %H:%M:%S%.f").to_string()
}

fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// A value as text, the way DMS writes it into a `varchar` column.
fn value_text(value: &SourceValue) -> String {
    match value {
        SourceValue::Null => String::new(),
        SourceValue::Bool(b) => bool_text(*b).to_owned(),
        SourceValue::Int(n) => n.to_string(),
        SourceValue::Float(f) => float_text(*f),
        SourceValue::Numeric(s)
        | SourceValue::Json(s)
        | SourceValue::Array { text: s, .. }
        | SourceValue::Text(s) => s.clone(),
        SourceValue::TimestampTz(t) => timestamptz_text(t),
        SourceValue::Timestamp(t) => timestamp_text(t),
        SourceValue::Date(d) => d.format("%Y-%m-%d").to_string(),
        SourceValue::Bytes(b) => format!("\\x{}", hex(b)),
    }
}

/// A value as JSON text, for `SUPER`: json as is, scalars as JSON scalars, the rest as strings.
fn json_text(value: &SourceValue) -> String {
    match value {
        SourceValue::Json(s) | SourceValue::Array { json: s, .. } => s.clone(),
        SourceValue::Bool(_) | SourceValue::Int(_) | SourceValue::Numeric(_) => value_text(value),
        SourceValue::Float(f) if f.is_finite() => value_text(value),
        other => serde_json::Value::String(value_text(other)).to_string(),
    }
}

/// Whether decimal text fits `numeric(precision, scale)` without rounding or overflow.
fn fits_numeric(text: &str, precision: Option<u32>, scale: u32) -> bool {
    let t = text.trim();
    let t = t.strip_prefix(['-', '+']).unwrap_or(t);
    let (int, frac) = t.split_once('.').unwrap_or((t, ""));
    let valid = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if (int.is_empty() && frac.is_empty()) || !valid(int) || !valid(frac) {
        return false; // NaN, Infinity, exponents: Redshift's numeric has none of them.
    }
    let int_digits = int.trim_start_matches('0').len();
    let frac_digits = frac.trim_end_matches('0').len();
    let Some(precision) = precision else {
        return true;
    };
    frac_digits <= scale as usize && int_digits <= precision.saturating_sub(scale) as usize
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::statement_parser::is_valid_redshift_sql;
    use proptest::prelude::*;

    fn target_column(
        name: &str,
        data_type: &str,
        len: Option<i32>,
        nullable: bool,
    ) -> TargetColumn {
        TargetColumn {
            name: name.to_owned(),
            data_type: data_type.to_owned(),
            char_max_length: len,
            numeric_precision: (data_type == "numeric").then_some(12),
            numeric_scale: (data_type == "numeric").then_some(2),
            nullable,
            udt_name: String::new(),
        }
    }

    fn source_column(name: &str, udt: &str) -> SourceColumn {
        SourceColumn {
            name: name.to_owned(),
            type_name: udt.to_owned(),
            udt_name: udt.to_owned(),
            kind: SourceTypeKind::Base,
            element_type: None,
            not_null: false,
            char_max_length: None,
            numeric_precision: None,
            numeric_scale: None,
        }
    }

    fn orders() -> (SourceTable, TargetTable) {
        let name = QualifiedName::parse("public.orders").unwrap();
        let source = SourceTable {
            name: name.clone(),
            columns: vec![
                source_column("id", "int8"),
                source_column("paid", "bool"),
                source_column("amount", "numeric"),
                source_column("Note", "text"),
                source_column("doc", "jsonb"),
                source_column("at", "timestamptz"),
                source_column("only_in_source", "text"),
            ],
            primary_key: vec!["id".to_owned()],
        };
        let target = TargetTable {
            name,
            columns: vec![
                target_column("id", "bigint", None, false),
                target_column("paid", "character varying", Some(5), true),
                target_column("amount", "numeric", None, true),
                target_column("note", "character varying", Some(8), true),
                target_column("doc", "super", None, true),
                target_column("at", "timestamp with time zone", None, true),
                target_column("only_in_target", "integer", None, true),
            ],
        };
        (source, target)
    }

    fn row(id: i64, paid: SourceValue, amount: &str, note: &str) -> SourceRow {
        SourceRow {
            id,
            values: vec![
                SourceValue::Int(id),
                paid,
                SourceValue::Numeric(amount.to_owned()),
                SourceValue::Text(note.to_owned()),
                SourceValue::Json(r#"{"a": [1, 2]}"#.to_owned()),
                SourceValue::TimestampTz(DateTime::from_timestamp(1_700_000_000, 500_000).unwrap()),
                SourceValue::Text("dropped".to_owned()),
            ],
        }
    }

    #[test]
    fn maps_columns_by_name_and_translates_dms_style() {
        let (source, target) = orders();
        let t = Translator::new(&source, &target, "id").unwrap();
        assert_eq!(
            t.columns().collect::<Vec<_>>(),
            ["id", "paid", "amount", "note", "doc", "at"]
        );
        let out = t
            .translate(&row(7, SourceValue::Bool(true), "10.50", "héllo"))
            .unwrap();
        assert_eq!(
            out.values,
            vec![
                Some("7".to_owned()),
                Some("true".to_owned()),
                Some("10.50".to_owned()),
                Some("héllo".to_owned()),
                Some(r#"{"a": [1, 2]}"#.to_owned()),
                Some("2023-11-14 22:13:20.000500+00".to_owned()),
            ]
        );
    }

    #[test]
    fn too_long_value_fails_the_row_naming_table_column_and_id() {
        let (source, target) = orders();
        let t = Translator::new(&source, &target, "id").unwrap();
        // 8 characters but 9 bytes: Redshift counts bytes.
        let err = t
            .translate(&row(42, SourceValue::Bool(false), "1", "héllo!!!"))
            .unwrap_err();
        assert_eq!(
            err,
            TranslateError::TooLong {
                table: target.name.to_string(),
                column: "note".to_owned(),
                id: 42,
                bytes: 9,
                max: 8
            }
        );
        let message = err.to_string();
        assert!(
            message.contains("public.orders.note") && message.contains("42"),
            "{message}"
        );
    }

    #[test]
    fn numeric_never_rounds_or_overflows_silently() {
        assert!(fits_numeric("1234567890.12", Some(12), 2));
        assert!(fits_numeric("-0.10", Some(12), 2));
        assert!(fits_numeric("00012.500", Some(5), 2));
        assert!(!fits_numeric("12345678901.1", Some(12), 2));
        assert!(!fits_numeric("1.123", Some(12), 2));
        assert!(!fits_numeric("NaN", Some(12), 2));
        assert!(!fits_numeric("1e5", None, 0));
        assert!(fits_numeric("123456789012345678901234567890", None, 0));
        let (source, target) = orders();
        let t = Translator::new(&source, &target, "id").unwrap();
        let err = t
            .translate(&row(3, SourceValue::Bool(true), "0.125", "x"))
            .unwrap_err();
        assert!(
            matches!(err, TranslateError::OutOfRange { ref column, id: 3, .. } if column == "amount"),
            "{err}"
        );
    }

    #[test]
    fn nulls_and_not_null_columns() {
        let (source, target) = orders();
        let t = Translator::new(&source, &target, "id").unwrap();
        let mut r = row(1, SourceValue::Null, "1", "x");
        assert_eq!(t.translate(&r).unwrap().values[1], None);
        r.values[0] = SourceValue::Null;
        assert!(matches!(
            t.translate(&r),
            Err(TranslateError::NullInNotNull { id: 1, .. })
        ));
    }

    #[test]
    fn boolean_target_and_type_mismatch() {
        let (source, mut target) = orders();
        target.columns[1] = target_column("paid", "boolean", None, true);
        let t = Translator::new(&source, &target, "id").unwrap();
        let out = t
            .translate(&row(1, SourceValue::Bool(false), "1", "x"))
            .unwrap();
        assert_eq!(out.values[1].as_deref(), Some("false"));
        let err = t
            .translate(&row(1, SourceValue::Int(3), "1", "x"))
            .unwrap_err();
        assert!(
            matches!(
                err,
                TranslateError::Mismatch {
                    source_type: "integer",
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn unknown_target_type_and_missing_not_null_column_fail_up_front() {
        let (source, mut target) = orders();
        target.columns[4].data_type = "geometry".to_owned();
        assert!(matches!(
            Translator::new(&source, &target, "id"),
            Err(TranslateError::UnsupportedTargetType { ref column, .. }) if column == "doc"
        ));
        let (source, mut target) = orders();
        target.columns[6].nullable = false;
        assert!(matches!(
            Translator::new(&source, &target, "id"),
            Err(TranslateError::NotNullWithoutSource { .. })
        ));
        let (source, target) = orders();
        assert!(matches!(
            Translator::new(&source, &target, "nope"),
            Err(TranslateError::IdColumnMissing { side: "source", .. })
        ));
    }

    /// An oversized SUPER or VARBYTE value fails its own row, not the batch.
    #[test]
    fn oversized_super_and_varbyte_values_fail_their_row() {
        let name = QualifiedName::parse("public.blobs").unwrap();
        let source = SourceTable {
            name: name.clone(),
            columns: vec![
                source_column("id", "int8"),
                source_column("doc", "jsonb"),
                source_column("raw", "bytea"),
            ],
            primary_key: vec!["id".to_owned()],
        };
        let target = TargetTable {
            name,
            columns: vec![
                target_column("id", "bigint", None, false),
                target_column("doc", "super", None, true),
                target_column("raw", "varbyte", Some(10), true),
            ],
        };
        let t = Translator::new(&source, &target, "id").unwrap();
        let row = |id: i64, doc: usize, raw: usize| SourceRow {
            id,
            values: vec![
                SourceValue::Int(id),
                SourceValue::Json(format!("\"{}\"", "x".repeat(doc))),
                SourceValue::Bytes(vec![7; raw]),
            ],
        };
        let rows = [row(1, 10, 10), row(2, 70_000, 1), row(3, 1, 11)];
        let (good, bad) = t.translate_all(&rows);
        assert_eq!(good.iter().map(|r| r.id).collect::<Vec<_>>(), vec![1]);
        assert!(
            matches!(&bad[0], TranslateError::TooLong { id: 2, column, max: 65_535, .. } if column == "doc"),
            "{bad:?}"
        );
        assert!(
            matches!(&bad[1], TranslateError::TooLong { id: 3, column, max: 10, .. } if column == "raw"),
            "{bad:?}"
        );
    }

    #[test]
    fn json_text_for_super() {
        assert_eq!(json_text(&SourceValue::Text("a\"b".into())), r#""a\"b""#);
        assert_eq!(json_text(&SourceValue::Int(5)), "5");
        let array = SourceValue::Array {
            json: "[1,2]".into(),
            text: "{1,2}".into(),
        };
        assert_eq!(json_text(&array), "[1,2]");
        assert_eq!(value_text(&array), "{1,2}");
        assert_eq!(json_text(&SourceValue::Float(f64::NAN)), r#""NaN""#);
        assert_eq!(value_text(&SourceValue::Bytes(vec![0, 255])), "\\x00ff");
    }

    #[test]
    fn insert_is_one_redshift_statement_with_bound_parameters_only() {
        let (source, target) = orders();
        let t = Translator::new(&source, &target, "id").unwrap();
        let (rows, errors) = t.translate_all(&[
            row(1, SourceValue::Bool(true), "1", "it's; --"),
            row(2, SourceValue::Bool(false), "2", "b"),
            row(1, SourceValue::Bool(true), "1", "dup"),
            row(3, SourceValue::Bool(false), "3", "way too long"),
        ]);
        assert_eq!(errors.len(), 1);
        let stmt = t.build_insert(&rows).unwrap();
        assert_eq!(stmt.ids, vec![1, 2]);
        assert_eq!(stmt.params.len(), 2 * 6);
        assert!(
            !stmt.sql.contains("it's"),
            "values must be bound: {}",
            stmt.sql
        );
        assert!(stmt.sql.contains("$12") && !stmt.sql.contains("$13"));
        assert!(stmt.sql.contains("WHERE NOT EXISTS"));
        assert!(!stmt.sql.to_ascii_uppercase().contains("ON CONFLICT"));
        is_valid_redshift_sql(&stmt.sql).unwrap_or_else(|e| panic!("{e}\n{}", stmt.sql));
        assert!(t.build_insert(&[]).is_none());
    }

    #[test]
    fn every_target_type_expression_is_redshift_sql() {
        let (source, mut target) = orders();
        let types = [
            "boolean",
            "smallint",
            "integer",
            "bigint",
            "real",
            "double precision",
            "numeric",
            "character varying",
            "character",
            "timestamp with time zone",
            "timestamp without time zone",
            "date",
            "time without time zone",
            "time with time zone",
            "super",
            "binary varying",
        ];
        for ty in types {
            target.columns[1] = target_column("paid", ty, Some(10), true);
            let t = Translator::new(&source, &target, "id").unwrap();
            let rows = [TranslatedRow {
                id: 1,
                values: vec![None; 6],
            }];
            let stmt = t.build_insert(&rows).unwrap();
            is_valid_redshift_sql(&stmt.sql).unwrap_or_else(|e| panic!("{ty}: {e}\n{}", stmt.sql));
        }
    }

    #[test]
    fn batches_respect_row_and_parameter_limits() {
        let (source, target) = orders();
        let t = Translator::new(&source, &target, "id").unwrap();
        let rows: Vec<TranslatedRow> = (0..25)
            .map(|id| TranslatedRow {
                id,
                values: vec![Some(id.to_string()); 6],
            })
            .collect();
        let batches = t.build_inserts(&rows, 10);
        assert_eq!(
            batches.iter().map(|b| b.ids.len()).collect::<Vec<_>>(),
            [10, 10, 5]
        );
        assert_eq!(t.max_rows_per_statement(), MAX_PARAMS_PER_STATEMENT / 6);
        assert_eq!(t.build_inserts(&rows, 0).len(), 25);
    }

    proptest! {
        #[test]
        fn text_is_kept_whole_or_refused_never_cut(text in "\\PC{0,40}", max in 1i32..40) {
            let (source, mut target) = orders();
            target.columns[3] = target_column("note", "character varying", Some(max), true);
            let t = Translator::new(&source, &target, "id").unwrap();
            match t.translate(&row(9, SourceValue::Bool(true), "1", &text)) {
                Ok(out) => {
                    prop_assert!(text.len() <= max as usize);
                    prop_assert_eq!(out.values[3].as_deref(), Some(text.as_str()));
                }
                Err(TranslateError::TooLong { bytes, max: m, id: 9, .. }) => {
                    prop_assert_eq!(bytes, text.len());
                    prop_assert!(bytes > m);
                }
                Err(other) => prop_assert!(false, "unexpected {}", other),
            }
        }

        #[test]
        fn numeric_check_agrees_with_digit_counts(int in 0u64..10_000_000, frac in 0u32..1000) {
            let text = format!("{int}.{frac:03}");
            let int_digits = if int == 0 { 0 } else { int.to_string().len() };
            let frac_digits = format!("{frac:03}").trim_end_matches('0').len();
            prop_assert_eq!(
                fits_numeric(&text, Some(9), 2),
                int_digits <= 7 && frac_digits <= 2
            );
        }
    }
}
