//! Generates Redshift `CREATE TABLE` statements for the replicated tables from the source schema.
//!
//! Letting DMS create target tables gives awkward types (booleans and json as `varchar`) and
//! poor compression. This module prints the DDL to create them by hand before the task starts;
//! it never executes anything.
//!
//! Type mapping (recommended / `--dms-compatible`):
//!
//! | PostgreSQL | recommended | DMS-compatible | why |
//! |---|---|---|---|
//! | `boolean` | `BOOLEAN` | `VARCHAR(5)` | DMS writes `true`/`false` text |
//! | `smallint`, `integer`, `bigint` | same | same | |
//! | `real`, `double precision` | `REAL`, `DOUBLE PRECISION` | same | |
//! | `numeric(p,s)`, p ≤ 38 | `NUMERIC(p,s)` | same | |
//! | `numeric(p,s)`, p > 38 | `NUMERIC(38,min(s,37))` + warning | `VARCHAR(65535)` + warning | Redshift's limit is 38 digits |
//! | `numeric` (no precision) | `NUMERIC(38,10)` + warning | `NUMERIC(28,6)` + warning | Redshift's default would be (18,0) |
//! | `varchar(n)`, `char(n)` | `VARCHAR(min(4n, 65535))` | `VARCHAR(n)` | Redshift counts bytes, PostgreSQL characters (UTF-8: up to 4 bytes each); Redshift `CHAR` takes single-byte characters only |
//! | `text`, `varchar` | `VARCHAR(65535)` + warning | same | 65535 bytes is Redshift's maximum |
//! | `uuid` | `CHAR(36)` | `VARCHAR(36)` | |
//! | `json`, `jsonb`, arrays | `SUPER` | `VARCHAR(65535)` + warning | queryable JSON vs. DMS's text |
//! | enums | `VARCHAR(64)` | same | labels are at most 63 bytes |
//! | `date`, `timestamp` | same | same | |
//! | `timestamptz` | `TIMESTAMPTZ` | `TIMESTAMP` | DMS drops the zone (values in UTC) |
//! | `time`, `timetz` | `TIME`, `TIMETZ` | `VARCHAR(20)` | |
//! | `bytea` | `VARBYTE(1024000)` | `VARCHAR(65535)` + warning | |
//! | `interval`, `inet`, `cidr`, `macaddr` | `VARCHAR(128)` | same | their text form |
//! | `xml` | `VARCHAR(65535)` + warning | same | |
//! | anything else (`money`, geometric, ranges, composites, domains, …) | refused, naming table and column | | |
//!
//! Encodings: `AZ64` for integer, `NUMERIC`, `DATE`, `TIMESTAMP[TZ]`; `ZSTD` for character,
//! `BOOLEAN`, floating-point, `SUPER`, `VARBYTE`; `RAW` for `TIME[TZ]` and for the sort key
//! column (the id); or the encodings of an `ANALYZE COMPRESSION` result file.

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::path::Path;

use crate::catalogue::{SourceColumn, SourceTable, SourceTypeKind};
use crate::config::{quote_ident, QualifiedName};

/// Largest `VARCHAR` Redshift allows, in bytes.
pub const MAX_VARCHAR_BYTES: u32 = 65_535;
/// Largest `NUMERIC` precision Redshift allows.
pub const MAX_NUMERIC_PRECISION: i32 = 38;
/// Largest `VARBYTE` Redshift allows, in bytes.
pub const MAX_VARBYTE_BYTES: u32 = 1_024_000;

/// The column encodings Redshift knows.
pub const ENCODINGS: [&str; 13] = [
    "RAW",
    "AZ64",
    "BYTEDICT",
    "DELTA",
    "DELTA32K",
    "LZO",
    "MOSTLY8",
    "MOSTLY16",
    "MOSTLY32",
    "RUNLENGTH",
    "TEXT255",
    "TEXT32K",
    "ZSTD",
];

/// Why DDL could not be generated.
#[derive(Debug, thiserror::Error)]
pub enum DdlError {
    #[error("{table}.{column}: cannot map source type `{type_name}` to Redshift")]
    Unmappable {
        table: String,
        column: String,
        type_name: String,
    },
    #[error("{table}: id column `{column}` is not a source column")]
    IdColumnMissing { table: String, column: String },
    #[error("{table}: columns `{first}` and `{second}` differ only by case, which Redshift folds")]
    CaseCollision {
        table: String,
        first: String,
        second: String,
    },
    #[error("cannot read compression file {path}: {source}")]
    ReadCompression {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("compression file line {line}: {message}")]
    Compression { line: usize, message: String },
}

/// What to generate.
#[derive(Debug, Clone, Default)]
pub struct DdlOptions {
    /// Reproduce the types DMS itself creates (booleans and json as `VARCHAR`, …).
    pub dms_compatible: bool,
    /// Print PostgreSQL-valid DDL: no `ENCODE`/`DISTSTYLE`/`DISTKEY`/`SORTKEY`, `SUPER` as
    /// `JSONB`, `VARBYTE` as `BYTEA` (for checking the DDL on the lab's stand-in).
    pub postgres_check: bool,
    /// Encodings from an `ANALYZE COMPRESSION` result, instead of the defaults.
    pub compression: Option<CompressionFile>,
}

/// Column encodings from `ANALYZE COMPRESSION` rows (table, column, encoding, est_reduction_pct)
/// saved as CSV or TSV, with or without a header line.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CompressionFile {
    /// (table as written, lower-case; column, lower-case) -> encoding, upper-case.
    encodings: HashMap<(String, String), String>,
}

impl CompressionFile {
    /// Reads and parses a file.
    pub fn load(path: &Path) -> Result<Self, DdlError> {
        let text = std::fs::read_to_string(path).map_err(|source| DdlError::ReadCompression {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text)
    }

    /// Parses the rows; tab-separated when the first line has a tab, else comma-separated.
    pub fn parse(text: &str) -> Result<Self, DdlError> {
        let tsv = text.lines().next().is_some_and(|l| l.contains('\t'));
        let mut encodings = HashMap::new();
        for (i, line) in text.lines().enumerate() {
            let line_no = i + 1;
            let error = |message: String| DdlError::Compression {
                line: line_no,
                message,
            };
            if line.trim().is_empty() || line.trim_start().starts_with('#') {
                continue;
            }
            let fields = if tsv {
                line.split('\t').map(|f| f.trim().to_owned()).collect()
            } else {
                split_csv(line).map_err(|m| error(m.to_owned()))?
            };
            let [table, column, encoding, reduction] = fields.as_slice() else {
                return Err(error(format!(
                    "expected 4 fields (table, column, encoding, est_reduction_pct), found {}",
                    fields.len()
                )));
            };
            if i == 0 && table.eq_ignore_ascii_case("table") {
                continue;
            }
            let encoding = encoding.to_ascii_uppercase();
            if !ENCODINGS.contains(&encoding.as_str()) {
                return Err(error(format!("unknown encoding `{encoding}`")));
            }
            if reduction.parse::<f64>().is_err() {
                return Err(error(format!(
                    "est_reduction_pct `{reduction}` is not a number"
                )));
            }
            encodings.insert(
                (table.to_lowercase(), column.to_lowercase()),
                encoding.to_owned(),
            );
        }
        Ok(Self { encodings })
    }

    /// The encoding for a column; the file names tables with or without their schema.
    pub fn encoding(&self, table: &QualifiedName, column: &str) -> Option<&str> {
        let column = column.to_lowercase();
        [table.to_string().to_lowercase(), table.table.to_lowercase()]
            .into_iter()
            .find_map(|t| self.encodings.get(&(t, column.clone())))
            .map(String::as_str)
    }
}

/// Splits one CSV line; fields may be double-quoted with `""` for a quote.
fn split_csv(line: &str) -> Result<Vec<String>, &'static str> {
    let mut fields = Vec::new();
    let mut field = String::new();
    let mut chars = line.chars().peekable();
    let mut quoted = false;
    while let Some(c) = chars.next() {
        match (c, quoted) {
            ('"', true) if chars.peek() == Some(&'"') => {
                field.push('"');
                chars.next();
            }
            ('"', true) => quoted = false,
            ('"', false) if field.trim().is_empty() => {
                field.clear();
                quoted = true;
            }
            (',', false) => fields.push(std::mem::take(&mut field).trim().to_owned()),
            (c, _) => field.push(c),
        }
    }
    if quoted {
        return Err("unterminated quoted field");
    }
    fields.push(field.trim().to_owned());
    Ok(fields)
}

/// A Redshift column type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RedshiftType {
    Boolean,
    SmallInt,
    Integer,
    BigInt,
    Real,
    Double,
    Numeric(i32, i32),
    Varchar(u32),
    Char(u32),
    Date,
    Timestamp,
    TimestampTz,
    Time,
    TimeTz,
    Super,
    Varbyte(u32),
}

impl RedshiftType {
    fn redshift(self) -> String {
        match self {
            RedshiftType::Boolean => "BOOLEAN".to_owned(),
            RedshiftType::SmallInt => "SMALLINT".to_owned(),
            RedshiftType::Integer => "INTEGER".to_owned(),
            RedshiftType::BigInt => "BIGINT".to_owned(),
            RedshiftType::Real => "REAL".to_owned(),
            RedshiftType::Double => "DOUBLE PRECISION".to_owned(),
            RedshiftType::Numeric(p, s) => format!("NUMERIC({p},{s})"),
            RedshiftType::Varchar(n) => format!("VARCHAR({n})"),
            RedshiftType::Char(n) => format!("CHAR({n})"),
            RedshiftType::Date => "DATE".to_owned(),
            RedshiftType::Timestamp => "TIMESTAMP".to_owned(),
            RedshiftType::TimestampTz => "TIMESTAMPTZ".to_owned(),
            RedshiftType::Time => "TIME".to_owned(),
            RedshiftType::TimeTz => "TIMETZ".to_owned(),
            RedshiftType::Super => "SUPER".to_owned(),
            RedshiftType::Varbyte(n) => format!("VARBYTE({n})"),
        }
    }

    /// The PostgreSQL type standing in for it in the lab.
    fn postgres(self) -> String {
        match self {
            RedshiftType::Super => "JSONB".to_owned(),
            RedshiftType::Varbyte(_) => "BYTEA".to_owned(),
            other => other.redshift(),
        }
    }

    fn default_encoding(self) -> &'static str {
        match self {
            RedshiftType::SmallInt
            | RedshiftType::Integer
            | RedshiftType::BigInt
            | RedshiftType::Numeric(..)
            | RedshiftType::Date
            | RedshiftType::Timestamp
            | RedshiftType::TimestampTz => "AZ64",
            RedshiftType::Time | RedshiftType::TimeTz => "RAW",
            RedshiftType::Boolean
            | RedshiftType::Real
            | RedshiftType::Double
            | RedshiftType::Varchar(_)
            | RedshiftType::Char(_)
            | RedshiftType::Super
            | RedshiftType::Varbyte(_) => "ZSTD",
        }
    }
}

/// Redshift `VARCHAR` bytes for `n` PostgreSQL characters.
fn varchar_bytes(chars: i32, dms_compatible: bool) -> u32 {
    let chars = u32::try_from(chars.max(1)).unwrap_or(1);
    let bytes = if dms_compatible {
        chars
    } else {
        chars.saturating_mul(4)
    };
    bytes.min(MAX_VARCHAR_BYTES)
}

/// The Redshift type of a source column and a warning where a Redshift limit bites.
fn map_type(column: &SourceColumn, dms: bool) -> Option<(RedshiftType, Option<String>)> {
    use RedshiftType as T;
    let max_text = || {
        Some(format!(
            "`{}` has no length limit; Redshift VARCHAR holds at most {MAX_VARCHAR_BYTES} bytes, longer values are refused",
            column.type_name
        ))
    };
    let mapped = match column.kind {
        SourceTypeKind::Array if dms => (
            T::Varchar(MAX_VARCHAR_BYTES),
            Some(format!(
                "array `{}` as VARCHAR({MAX_VARCHAR_BYTES}) text (no SUPER): longer values are refused",
                column.type_name
            )),
        ),
        SourceTypeKind::Array => (T::Super, None),
        SourceTypeKind::Enum => (T::Varchar(64), None),
        SourceTypeKind::Other => return None,
        SourceTypeKind::Base => match column.udt_name.as_str() {
            "bool" if dms => (T::Varchar(5), None),
            "bool" => (T::Boolean, None),
            "int2" => (T::SmallInt, None),
            "int4" => (T::Integer, None),
            "int8" => (T::BigInt, None),
            "float4" => (T::Real, None),
            "float8" => (T::Double, None),
            "numeric" => match (column.numeric_precision, column.numeric_scale) {
                (Some(p), Some(s)) if p <= MAX_NUMERIC_PRECISION => (T::Numeric(p, s), None),
                (Some(p), _) if dms => (
                    T::Varchar(MAX_VARCHAR_BYTES),
                    Some(format!(
                        "numeric precision {p} is over Redshift's {MAX_NUMERIC_PRECISION}: stored as text"
                    )),
                ),
                (Some(p), s) => (
                    T::Numeric(MAX_NUMERIC_PRECISION, s.unwrap_or(0).min(MAX_NUMERIC_PRECISION - 1)),
                    Some(format!(
                        "numeric precision {p} is over Redshift's {MAX_NUMERIC_PRECISION}: values needing more digits are refused"
                    )),
                ),
                (None, _) => {
                    let (p, s) = if dms { (28, 6) } else { (38, 10) };
                    (
                        T::Numeric(p, s),
                        Some(format!(
                            "numeric without precision as NUMERIC({p},{s}): values needing more digits are refused"
                        )),
                    )
                }
            },
            "varchar" | "bpchar" => match column.char_max_length {
                Some(n) => {
                    let bytes = varchar_bytes(n, dms);
                    let warning = (!dms && i64::from(n) * 4 > i64::from(MAX_VARCHAR_BYTES))
                        .then(|| {
                            format!(
                                "`{}` may need {} bytes; Redshift VARCHAR holds at most {MAX_VARCHAR_BYTES}",
                                column.type_name,
                                i64::from(n) * 4
                            )
                        });
                    (T::Varchar(bytes), warning)
                }
                None => (T::Varchar(MAX_VARCHAR_BYTES), max_text()),
            },
            "text" => (T::Varchar(MAX_VARCHAR_BYTES), max_text()),
            "uuid" if dms => (T::Varchar(36), None),
            "uuid" => (T::Char(36), None),
            "json" | "jsonb" if dms => (
                T::Varchar(MAX_VARCHAR_BYTES),
                Some(format!(
                    "`{}` as VARCHAR({MAX_VARCHAR_BYTES}) text (no SUPER): longer values are refused",
                    column.type_name
                )),
            ),
            "json" | "jsonb" => (T::Super, None),
            "date" => (T::Date, None),
            "timestamp" => (T::Timestamp, None),
            "timestamptz" if dms => (T::Timestamp, None),
            "timestamptz" => (T::TimestampTz, None),
            "time" | "timetz" if dms => (T::Varchar(20), None),
            "time" => (T::Time, None),
            "timetz" => (T::TimeTz, None),
            "bytea" if dms => (
                T::Varchar(MAX_VARCHAR_BYTES),
                Some(format!(
                    "bytea as hex text in VARCHAR({MAX_VARCHAR_BYTES}): values over {} bytes are refused",
                    MAX_VARCHAR_BYTES / 2 - 1
                )),
            ),
            "bytea" => (T::Varbyte(MAX_VARBYTE_BYTES), None),
            "interval" | "inet" | "cidr" | "macaddr" | "macaddr8" => (T::Varchar(128), None),
            "xml" => (T::Varchar(MAX_VARCHAR_BYTES), max_text()),
            _ => return None,
        },
    };
    Some(mapped)
}

/// The DDL for one table, and the warnings it carries (also written into it as comments).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableDdl {
    pub target: QualifiedName,
    pub sql: String,
    pub warnings: Vec<String>,
}

/// Generates the `CREATE TABLE` for `target` from the source table's definition.
///
/// Column names are written in lower case, as Redshift folds them (and as DMS creates them).
pub fn create_table(
    source: &SourceTable,
    target: &QualifiedName,
    id_column: &str,
    options: &DdlOptions,
) -> Result<TableDdl, DdlError> {
    let table = source.name.to_string();
    let Some(id) = source.columns.iter().find(|c| c.name == id_column) else {
        return Err(DdlError::IdColumnMissing {
            table,
            column: id_column.to_owned(),
        });
    };
    let id_name = id.name.to_lowercase();
    let mut seen: HashMap<String, &str> = HashMap::new();
    let mut warnings = Vec::new();
    let mut lines = Vec::new();
    let mut missing_encodings = Vec::new();
    for column in &source.columns {
        let name = column.name.to_lowercase();
        if let Some(first) = seen.insert(name.clone(), &column.name) {
            return Err(DdlError::CaseCollision {
                table,
                first: first.to_owned(),
                second: column.name.clone(),
            });
        }
        let (ty, warning) =
            map_type(column, options.dms_compatible).ok_or_else(|| DdlError::Unmappable {
                table: table.clone(),
                column: column.name.clone(),
                type_name: column.type_name.clone(),
            })?;
        if let Some(w) = warning {
            warnings.push(format!("{}: {w}", column.name));
        }
        let mut line = format!("    {}", quote_ident(&name));
        if options.postgres_check {
            let _ = write!(line, " {}", ty.postgres());
        } else {
            let _ = write!(line, " {}", ty.redshift());
        }
        if column.not_null || name == id_name {
            line.push_str(" NOT NULL");
        }
        if !options.postgres_check {
            let encoding = match &options.compression {
                Some(file) => match file.encoding(&source.name, &column.name) {
                    Some(e) => e.to_owned(),
                    None => {
                        missing_encodings.push(column.name.clone());
                        default_encoding(ty, name == id_name).to_owned()
                    }
                },
                None => default_encoding(ty, name == id_name).to_owned(),
            };
            let _ = write!(line, " ENCODE {encoding}");
        }
        lines.push(line);
    }
    if !missing_encodings.is_empty() {
        warnings.push(format!(
            "compression file has no row for {}: default encodings used",
            missing_encodings.join(", ")
        ));
    }
    let primary_key: Vec<String> = source
        .primary_key
        .iter()
        .map(|c| quote_ident(&c.to_lowercase()))
        .collect();
    if !primary_key.is_empty() {
        lines.push(format!("    PRIMARY KEY ({})", primary_key.join(", ")));
    }

    let mut sql = String::new();
    let types = if options.dms_compatible {
        "DMS-compatible"
    } else {
        "recommended"
    };
    let rest = match (&options.compression, options.postgres_check) {
        (_, true) => "PostgreSQL check: Redshift-only clauses left out",
        (Some(_), false) => "encodings from ANALYZE COMPRESSION",
        (None, false) => "default encodings",
    };
    let _ = writeln!(
        sql,
        "-- {target}: from source {table}; {types} types, {rest}."
    );
    for w in &warnings {
        let _ = writeln!(sql, "-- WARNING: {w}");
    }
    let sole_key = source.primary_key.len() == 1 && source.primary_key[0] == id.name;
    if !options.postgres_check {
        if !primary_key.is_empty() {
            let _ = writeln!(
                sql,
                "-- PRIMARY KEY is informational on Redshift: it is not enforced."
            );
        }
        if sole_key {
            let _ = writeln!(
                sql,
                "-- DISTKEY({id_name}): the id is unique, so rows spread evenly over slices, and DMS's UPDATE/DELETE and the repairs join on it."
            );
        } else {
            let _ = writeln!(
                sql,
                "-- DISTSTYLE AUTO: {id_name} is not the sole primary key, so it may not spread rows evenly; Redshift chooses (ALL while small, then EVEN)."
            );
        }
        let _ = writeln!(
            sql,
            "-- SORTKEY({id_name}): the gap finder and the repairs scan by id ranges; the sort key column is RAW so range restriction works best."
        );
    }
    let _ = write!(
        sql,
        "CREATE TABLE {} (\n{}\n)",
        target.quoted(),
        lines.join(",\n")
    );
    if !options.postgres_check {
        let id_quoted = quote_ident(&id_name);
        if sole_key {
            let _ = write!(sql, "\nDISTSTYLE KEY\nDISTKEY ({id_quoted})");
        } else {
            sql.push_str("\nDISTSTYLE AUTO");
        }
        let _ = write!(sql, "\nSORTKEY ({id_quoted})");
    }
    sql.push_str(";\n");
    Ok(TableDdl {
        target: target.clone(),
        sql,
        warnings,
    })
}

fn default_encoding(ty: RedshiftType, sort_key: bool) -> &'static str {
    if sort_key {
        "RAW"
    } else {
        ty.default_encoding()
    }
}

/// Removes `ENCODE …` from generated Redshift DDL, leaving what `sqlparser` can parse.
pub fn strip_encodings(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut words = HashSet::new();
    words.extend(ENCODINGS);
    for line in sql.lines() {
        let trimmed = match line.rfind(" ENCODE ") {
            Some(at) => {
                let rest = &line[at + " ENCODE ".len()..];
                let encoding = rest.trim_end_matches(',');
                if words.contains(encoding) {
                    format!("{}{}", &line[..at], &rest[encoding.len()..])
                } else {
                    line.to_owned()
                }
            }
            None => line.to_owned(),
        };
        out.push_str(&trimmed);
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compression_file_csv_and_tsv_with_or_without_header() {
        let csv = "table,column,encoding,est_reduction_pct\norders,status,\"bytedict\",91.5\npublic.orders,id,raw,0.00\n";
        let file = CompressionFile::parse(csv).unwrap();
        let orders = QualifiedName::parse("public.orders").unwrap();
        assert_eq!(file.encoding(&orders, "status"), Some("BYTEDICT"));
        assert_eq!(file.encoding(&orders, "ID"), Some("RAW"));
        assert_eq!(file.encoding(&orders, "note"), None);
        let tsv = "orders\tstatus\tzstd\t40.1\n";
        assert_eq!(
            CompressionFile::parse(tsv)
                .unwrap()
                .encoding(&orders, "status"),
            Some("ZSTD")
        );
    }

    #[test]
    fn compression_file_errors_name_the_line() {
        let err = CompressionFile::parse("orders,status,zip,1\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("line 1") && err.contains("ZIP"), "{err}");
        let err = CompressionFile::parse("table,column,encoding,est\norders,status\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("line 2") && err.contains("4 fields"), "{err}");
        let err = CompressionFile::parse("orders,status,zstd,lots\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("not a number"), "{err}");
        assert!(CompressionFile::parse("\"orders,status,zstd,1\n").is_err());
    }

    #[test]
    fn strip_encodings_removes_only_encode_clauses() {
        let sql = "CREATE TABLE t (\n    \"id\" BIGINT NOT NULL ENCODE RAW,\n    \"x\" VARCHAR(4) ENCODE ZSTD\n)\nSORTKEY (\"id\");\n";
        assert_eq!(
            strip_encodings(sql),
            "CREATE TABLE t (\n    \"id\" BIGINT NOT NULL,\n    \"x\" VARCHAR(4)\n)\nSORTKEY (\"id\");\n"
        );
    }
}
