//! The canonical text of a row on each side: equal when the target holds the row as DMS would
//! have written it from the source.
//!
//! Each compared column contributes one piece, computed by SQL on each side from the column's
//! source and target types (the classes the type translator writes by,
//! [`crate::type_translator`]):
//!
//! | source | target | both sides read as |
//! |---|---|---|
//! | integers | integers | decimal text |
//! | integers, `numeric` | `numeric(p,s)` | decimal text at the target's scale (`1.50`) |
//! | `numeric` | `numeric` without precision (PostgreSQL only) | the value's text |
//! | `boolean` | `boolean` | `true` / `false` |
//! | `boolean` | `varchar` (DMS) | `true` / `false`; the target's `t`, `1`, `yes`, `on` (any case) read as `true`, likewise for `false` |
//! | `timestamp`, `timestamptz` | `timestamp`, `timestamptz` | `YYYY-MM-DD HH24:MI:SS.US` in UTC; a `timestamp` counts as UTC where the other side has a zone, as DMS writes it |
//! | `date` | `date` | `YYYY-MM-DD` |
//! | text, `varchar`, enums, `uuid`, `json`, `jsonb`, arrays, integers, `numeric` | `varchar`/`char`/`text` (DMS) | the source's text output (PostgreSQL's array form `{a,"b c"}`, jsonb's normalised form) against the target's text as stored |
//! | `char(n)` | character types | the text without trailing blanks, both sides |
//! | `bytea` | `varchar` (DMS) | `\x` and lower-case hex, against the target's text |
//! | `uuid`, `bytea`, `json`/`jsonb` | the same type (PostgreSQL targets) | the value's text (hex for `bytea`, jsonb's normal form) |
//!
//! Left out, with a warning naming the column: floating-point columns (Redshift's text output
//! of `REAL`/`DOUBLE PRECISION` is not documented to be the shortest exact form PostgreSQL
//! prints, so equal values could read differently), `SUPER` (Redshift serialises JSON in its
//! own form: key order and spacing are not the source's), `VARBYTE`, `time`/`timetz`, dates and
//! timestamps DMS wrote as text (the text form is DMS's, not the source's), and any pair not in
//! the table. A configured exclusion, or a column on one side only, is named as well.
//!
//! A NULL reads as `N`; every non-NULL piece of free text is prefixed with its length in bytes
//! (`3:abc`), so NULL, the empty string and a value containing the separator all differ.
//! Pieces of fixed alphabets (numbers, dates, `true`) never contain the separator `|` and are
//! not prefixed.

use std::fmt;

use crate::catalogue::{SourceColumn, SourceTable, TargetColumn, TargetTable};
use crate::config::{is_identifier, quote_ident};
use crate::gap_finder::TableSpec;
use crate::type_translator::{source_class, target_class, SourceClass, TargetClass};

use super::{ContentError, ContentOptions};

/// The width assumed for a column without a declared length, in bytes of canonical text.
pub const UNBOUNDED_TEXT_BYTES: usize = 65_535;

/// Timestamps as text, to the microsecond (PostgreSQL's and Redshift's resolution): `US` is
/// microseconds in both (Redshift: "Datetime format strings",
/// <https://docs.aws.amazon.com/redshift/latest/dg/r_FORMAT_strings.html>).
pub const TIMESTAMP_FORMAT: &str = "YYYY-MM-DD HH24:MI:SS.US";
/// Dates as text.
pub const DATE_FORMAT: &str = "YYYY-MM-DD";

/// Why a column is not compared.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exclusion {
    /// Listed in `exclude_columns`.
    Configured,
    /// The target has no such column (a DMS table mapping dropped it).
    NotInTarget,
    /// The source has no such column (the target adds it).
    NotInSource,
    /// The two types cannot be compared exactly.
    Inexact {
        source_type: String,
        target_type: String,
        why: &'static str,
    },
}

impl fmt::Display for Exclusion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Exclusion::Configured => f.write_str("excluded by configuration"),
            Exclusion::NotInTarget => f.write_str("the target has no such column"),
            Exclusion::NotInSource => f.write_str("the source has no such column"),
            Exclusion::Inexact {
                source_type,
                target_type,
                why,
            } => write!(
                f,
                "{source_type} in the source, {target_type} in the target: {why}"
            ),
        }
    }
}

/// A column left out of the comparison.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExcludedColumn {
    /// The column's name (the source's, or the target's when the source lacks it).
    pub column: String,
    pub reason: Exclusion,
}

/// How a piece is delimited in the row text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// Numbers, dates, booleans, hex: never contain `|`, never read `N`.
    Fixed,
    /// Free text: prefixed with its length in bytes.
    Counted,
}

/// The value transformation of one column, per side.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Canon {
    /// Source text output against the target's stored text.
    Text,
    /// `char(n)` on the source: trailing blanks dropped on both sides.
    PaddedText,
    /// Source boolean against DMS's varchar.
    BoolAsText,
    /// Boolean on both sides.
    Bool,
    /// Decimal text of integers on both sides.
    Integer,
    /// Decimal text at the target's scale.
    Numeric {
        scale: u32,
    },
    /// The value's own text on both sides (unconstrained numeric, uuid).
    SameText,
    /// Timestamps: whether each side carries a zone.
    Timestamp {
        source_tz: bool,
        target_tz: bool,
    },
    Date,
    /// `bytea` to DMS's varchar: `\x` + hex.
    BytesAsText,
    /// `bytea` on both sides (PostgreSQL targets).
    Bytes,
    /// jsonb normal form on both sides (the lab's jsonb stand-in for SUPER).
    Jsonb,
}

/// A compared column: names, types and the canonical expression of each side.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColumnPlan {
    pub source_column: String,
    pub target_column: String,
    /// The source's type (`format_type`).
    pub source_type: String,
    /// The target's type (`information_schema` name).
    pub target_type: String,
    canon: Canon,
    framing: Framing,
    /// Bytes of canonical text at most (declared), for packing columns into MD5 groups.
    width: usize,
    /// Which MD5 group the piece belongs to.
    pub(crate) group: usize,
}

impl ColumnPlan {
    /// The source's canonical piece (PostgreSQL SQL), framed, never NULL.
    pub fn source_piece(&self) -> String {
        self.frame(&self.source_value())
    }

    /// The target's canonical piece (SQL valid on Redshift and PostgreSQL), framed, never NULL.
    pub fn target_piece(&self) -> String {
        self.frame(&self.target_value())
    }

    fn frame(&self, value: &str) -> String {
        match self.framing {
            Framing::Fixed => format!("COALESCE({value}, 'N')"),
            Framing::Counted => format!(
                "COALESCE(CAST(OCTET_LENGTH({value}) AS VARCHAR(12)) || ':' || {value}, 'N')"
            ),
        }
    }

    /// The source's value as text (NULL stays NULL).
    fn source_value(&self) -> String {
        let c = quote_ident(&self.source_column);
        match &self.canon {
            Canon::Text => format!("CAST({c} AS TEXT)"),
            Canon::PaddedText => format!("RTRIM(CAST({c} AS TEXT))"),
            Canon::BoolAsText | Canon::Bool => bool_text(&c),
            Canon::Integer | Canon::SameText => format!("CAST({c} AS VARCHAR(80))"),
            Canon::Numeric { scale } => {
                format!("CAST(CAST({c} AS NUMERIC(38,{scale})) AS VARCHAR(80))")
            }
            Canon::Timestamp {
                source_tz,
                target_tz,
            } => timestamp_text(&c, *source_tz, *target_tz),
            Canon::Date => format!("TO_CHAR({c}, '{DATE_FORMAT}')"),
            Canon::BytesAsText => format!("'\\x' || ENCODE({c}, 'hex')"),
            Canon::Bytes => format!("ENCODE({c}, 'hex')"),
            Canon::Jsonb => format!("CAST(CAST({c} AS JSONB) AS TEXT)"),
        }
    }

    /// The target's value as text (NULL stays NULL).
    fn target_value(&self) -> String {
        let c = quote_ident(&self.target_column);
        match &self.canon {
            Canon::Text => c,
            Canon::PaddedText => format!("RTRIM({c})"),
            Canon::BoolAsText => format!(
                "CASE WHEN LOWER(TRIM({c})) IN ('true', 't', '1', 'yes', 'y', 'on') THEN 'true' \
                 WHEN LOWER(TRIM({c})) IN ('false', 'f', '0', 'no', 'n', 'off') THEN 'false' \
                 ELSE {c} END"
            ),
            Canon::Bool => bool_text(&c),
            Canon::Integer | Canon::Numeric { .. } | Canon::SameText => {
                format!("CAST({c} AS VARCHAR(80))")
            }
            Canon::Timestamp {
                source_tz,
                target_tz,
            } => timestamp_text(&c, *target_tz, *source_tz),
            Canon::Date => format!("TO_CHAR({c}, '{DATE_FORMAT}')"),
            Canon::BytesAsText => c,
            Canon::Bytes => format!("ENCODE({c}, 'hex')"),
            Canon::Jsonb => format!("CAST({c} AS TEXT)"),
        }
    }
}

fn bool_text(c: &str) -> String {
    format!("CASE WHEN {c} THEN 'true' WHEN NOT {c} THEN 'false' END")
}

/// A timestamp as UTC text. `tz`: this side has a zone; `other_tz`: the other side has one.
/// A zoned value is shown in UTC; a value without zone is taken as UTC (as DMS writes
/// `timestamptz` into `timestamp`: the UTC time without offset).
fn timestamp_text(c: &str, tz: bool, _other_tz: bool) -> String {
    if tz {
        // `AT TIME ZONE` on a timestamptz gives the zone's local timestamp on both engines
        // (Redshift: <https://docs.aws.amazon.com/redshift/latest/dg/r_AT_TIME_ZONE.html>).
        format!("TO_CHAR({c} AT TIME ZONE 'UTC', '{TIMESTAMP_FORMAT}')")
    } else {
        format!("TO_CHAR({c}, '{TIMESTAMP_FORMAT}')")
    }
}

/// The planned comparison of one table.
#[derive(Debug, Clone)]
pub(crate) struct Plan {
    pub source_id: String,
    pub target_id: String,
    pub columns: Vec<ColumnPlan>,
    pub excluded: Vec<ExcludedColumn>,
    /// Number of MD5 groups (at least 1).
    pub groups: usize,
}

/// Pairs columns by name (exact, then ignoring ASCII case, as the type translator does) and
/// picks each pair's canonical form, or its reason for exclusion.
pub(crate) fn plan(
    table: &TableSpec,
    source: &SourceTable,
    target: &TargetTable,
    options: &ContentOptions,
) -> Result<Plan, ContentError> {
    let invalid = |message: String| ContentError::InvalidTable {
        table: table.source.to_string(),
        message,
    };
    let source_id = source
        .columns
        .iter()
        .find(|c| c.name == table.id_column)
        .ok_or_else(|| invalid(format!("the source has no id column `{}`", table.id_column)))?
        .name
        .clone();
    let target_id = target
        .column(&table.id_column)
        .ok_or_else(|| invalid(format!("the target has no id column `{}`", table.id_column)))?
        .name
        .clone();
    if let Some(u) = &options.updated_at_column {
        if !is_identifier(u) || source.column_index(u).is_none() {
            return Err(invalid(format!(
                "updated_at_column `{u}` is not a column of the source"
            )));
        }
    }
    let configured = |name: &str| {
        options
            .exclude_columns
            .iter()
            .any(|e| e.eq_ignore_ascii_case(name))
    };
    let mut columns = Vec::new();
    let mut excluded = Vec::new();
    let mut matched_targets = Vec::new();
    for s in &source.columns {
        if s.name == source_id {
            continue;
        }
        let Some(t) = target.column(&s.name) else {
            excluded.push(ExcludedColumn {
                column: s.name.clone(),
                reason: Exclusion::NotInTarget,
            });
            continue;
        };
        matched_targets.push(t.name.clone());
        if configured(&s.name) || configured(&t.name) {
            excluded.push(ExcludedColumn {
                column: s.name.clone(),
                reason: Exclusion::Configured,
            });
            continue;
        }
        match canon(s, t) {
            Ok((canon, framing, width)) => columns.push(ColumnPlan {
                source_column: s.name.clone(),
                target_column: t.name.clone(),
                source_type: s.type_name.clone(),
                target_type: describe(t),
                canon,
                framing,
                width,
                group: 0,
            }),
            Err(why) => excluded.push(ExcludedColumn {
                column: s.name.clone(),
                reason: Exclusion::Inexact {
                    source_type: s.type_name.clone(),
                    target_type: describe(t),
                    why,
                },
            }),
        }
    }
    for t in &target.columns {
        if t.name != target_id && !matched_targets.contains(&t.name) {
            excluded.push(ExcludedColumn {
                column: t.name.clone(),
                reason: Exclusion::NotInSource,
            });
        }
    }
    let groups = pack(&mut columns, options.max_row_text_bytes);
    Ok(Plan {
        source_id,
        target_id,
        columns,
        excluded,
        groups,
    })
}

/// Assigns columns to MD5 groups, in order, so that each group's declared text fits `max`
/// bytes (with room for the salt and the id); returns the number of groups.
fn pack(columns: &mut [ColumnPlan], max: usize) -> usize {
    const HEADER: usize = 64;
    let mut group = 0;
    let mut used = HEADER;
    for (i, c) in columns.iter_mut().enumerate() {
        let need = c.width.saturating_add(2);
        if i > 0 && used.saturating_add(need) > max {
            group += 1;
            used = HEADER;
        }
        used = used.saturating_add(need);
        c.group = group;
    }
    group + 1
}

fn describe(t: &TargetColumn) -> String {
    match (
        t.data_type.as_str(),
        t.char_max_length,
        t.numeric_precision,
        t.numeric_scale,
    ) {
        ("numeric", _, Some(p), Some(s)) => format!("numeric({p},{s})"),
        ("character varying" | "character", Some(n), _, _) => format!("{}({n})", t.data_type),
        _ => t.data_type.clone(),
    }
}

/// The canonical form of a source/target pair, its framing and its width; or why it is left out.
fn canon(s: &SourceColumn, t: &TargetColumn) -> Result<(Canon, Framing, usize), &'static str> {
    use Framing::{Counted, Fixed};
    let class = source_class(s);
    let Some(target) = target_class(t) else {
        return Err("the target type is not one the type translator writes");
    };
    let text_width = |t: &TargetColumn| {
        t.char_max_length
            .and_then(|n| usize::try_from(n).ok())
            .unwrap_or(UNBOUNDED_TEXT_BYTES)
            .saturating_add(6)
    };
    const NUMBER: usize = 82;
    const STAMP: usize = 26;
    Ok(match (class, &target) {
        (SourceClass::Float, _) | (_, TargetClass::Float) => {
            return Err("floating-point text is not the same on both engines")
        }
        (_, TargetClass::Super) => {
            return Err("SUPER serialises JSON in its own form (key order, spacing)")
        }
        (_, TargetClass::Varbyte) => return Err("VARBYTE is not compared yet"),
        (_, TargetClass::Time { .. }) => return Err("time of day is not compared yet"),
        (SourceClass::Bool, TargetClass::Boolean) => (Canon::Bool, Fixed, 5),
        (SourceClass::Bool, TargetClass::Character { .. }) => (Canon::BoolAsText, Counted, 11),
        (SourceClass::Int, TargetClass::Integer { .. }) => (Canon::Integer, Fixed, 20),
        (SourceClass::Int | SourceClass::Numeric, TargetClass::Numeric { precision, scale }) => {
            match precision {
                Some(_) => (Canon::Numeric { scale: *scale }, Fixed, NUMBER),
                None if class == SourceClass::Numeric => (Canon::SameText, Fixed, NUMBER),
                None => (Canon::Integer, Fixed, 20),
            }
        }
        (SourceClass::Numeric, TargetClass::Integer { .. }) => {
            return Err("numeric in an integer column: DMS's rounding is not documented")
        }
        (SourceClass::TimestampTz, TargetClass::TimestampTz) => (
            Canon::Timestamp {
                source_tz: true,
                target_tz: true,
            },
            Fixed,
            STAMP,
        ),
        (SourceClass::TimestampTz, TargetClass::Timestamp) => (
            Canon::Timestamp {
                source_tz: true,
                target_tz: false,
            },
            Fixed,
            STAMP,
        ),
        (SourceClass::Timestamp, TargetClass::TimestampTz) => (
            Canon::Timestamp {
                source_tz: false,
                target_tz: true,
            },
            Fixed,
            STAMP,
        ),
        (SourceClass::Timestamp, TargetClass::Timestamp) => (
            Canon::Timestamp {
                source_tz: false,
                target_tz: false,
            },
            Fixed,
            STAMP,
        ),
        (SourceClass::Date, TargetClass::Date) => (Canon::Date, Fixed, 10),
        (
            SourceClass::Date | SourceClass::Timestamp | SourceClass::TimestampTz,
            TargetClass::Character { .. },
        ) => return Err("a date or time DMS wrote as text has DMS's text form, not the source's"),
        (SourceClass::Bytes, TargetClass::Character { .. }) => {
            (Canon::BytesAsText, Counted, text_width(t))
        }
        (SourceClass::Bytes, TargetClass::Bytea) => (Canon::Bytes, Counted, UNBOUNDED_TEXT_BYTES),
        (_, TargetClass::Character { .. }) if s.udt_name == "bpchar" => {
            (Canon::PaddedText, Counted, text_width(t))
        }
        (
            SourceClass::Text
            | SourceClass::Json
            | SourceClass::Array
            | SourceClass::Int
            | SourceClass::Numeric,
            TargetClass::Character { .. },
        ) => (Canon::Text, Counted, text_width(t)),
        (SourceClass::Text, TargetClass::Uuid) if s.udt_name == "uuid" => {
            (Canon::SameText, Fixed, 36)
        }
        (SourceClass::Json, TargetClass::Json) if t.data_type == "jsonb" => {
            (Canon::Jsonb, Counted, UNBOUNDED_TEXT_BYTES)
        }
        _ => return Err("no exact comparison is defined for this pair of types"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalogue::SourceTypeKind;
    use crate::config::QualifiedName;

    fn source(name: &str, type_name: &str, udt: &str, kind: SourceTypeKind) -> SourceColumn {
        SourceColumn {
            name: name.to_owned(),
            type_name: type_name.to_owned(),
            udt_name: udt.to_owned(),
            kind,
            element_type: None,
            not_null: false,
            char_max_length: None,
            numeric_precision: None,
            numeric_scale: None,
        }
    }

    fn target(name: &str, data_type: &str, len: Option<i32>, scale: Option<i32>) -> TargetColumn {
        TargetColumn {
            name: name.to_owned(),
            data_type: data_type.to_owned(),
            char_max_length: len,
            numeric_precision: scale.map(|_| 12),
            numeric_scale: scale,
            nullable: true,
            udt_name: String::new(),
        }
    }

    fn tables() -> (TableSpec, SourceTable, TargetTable) {
        use SourceTypeKind::*;
        let name = QualifiedName::parse("public.t").unwrap();
        let s = SourceTable {
            name: name.clone(),
            columns: vec![
                source("id", "bigint", "int8", Base),
                source("flag", "boolean", "bool", Base),
                source("ratio", "double precision", "float8", Base),
                source("amount", "numeric(12,2)", "numeric", Base),
                source("note", "text", "text", Base),
                source("Gone", "text", "text", Base),
                source("secret", "text", "text", Base),
                source("at", "timestamp with time zone", "timestamptz", Base),
            ],
            primary_key: vec!["id".to_owned()],
        };
        let t = TargetTable {
            name: name.clone(),
            columns: vec![
                target("id", "bigint", None, None),
                target("flag", "character varying", Some(5), None),
                target("ratio", "double precision", None, None),
                target("amount", "numeric", None, Some(2)),
                target("note", "character varying", Some(100), None),
                target("secret", "character varying", Some(10), None),
                target("at", "timestamp without time zone", None, None),
                target("loaded_at", "timestamp without time zone", None, None),
            ],
        };
        let spec = TableSpec {
            source: name.clone(),
            target: name,
            id_column: "id".to_owned(),
        };
        (spec, s, t)
    }

    #[test]
    fn every_column_is_compared_or_named_with_its_reason() {
        let (spec, s, t) = tables();
        let options = ContentOptions {
            exclude_columns: vec!["SECRET".to_owned()],
            ..ContentOptions::default()
        };
        let plan = plan(&spec, &s, &t, &options).unwrap();
        let compared: Vec<&str> = plan
            .columns
            .iter()
            .map(|c| c.source_column.as_str())
            .collect();
        assert_eq!(compared, vec!["flag", "amount", "note", "at"]);
        let excluded: Vec<(&str, String)> = plan
            .excluded
            .iter()
            .map(|e| (e.column.as_str(), e.reason.to_string()))
            .collect();
        assert_eq!(excluded.len(), 4, "{excluded:?}");
        assert_eq!(excluded[0].0, "ratio");
        assert!(excluded[0].1.contains("floating-point"), "{excluded:?}");
        assert_eq!(excluded[1], ("Gone", Exclusion::NotInTarget.to_string()));
        assert_eq!(excluded[2], ("secret", Exclusion::Configured.to_string()));
        assert_eq!(
            excluded[3],
            ("loaded_at", Exclusion::NotInSource.to_string())
        );
    }

    #[test]
    fn pieces_frame_text_and_read_types_as_dms_wrote_them() {
        let (spec, s, t) = tables();
        let plan = plan(&spec, &s, &t, &ContentOptions::default()).unwrap();
        let by = |n: &str| plan.columns.iter().find(|c| c.source_column == n).unwrap();
        assert!(by("flag").target_piece().contains("'yes'"));
        assert!(by("note")
            .source_piece()
            .starts_with("COALESCE(CAST(OCTET_LENGTH("));
        assert_eq!(
            by("amount").source_piece(),
            "COALESCE(CAST(CAST(\"amount\" AS NUMERIC(38,2)) AS VARCHAR(80)), 'N')"
        );
        assert!(by("at").source_piece().contains("AT TIME ZONE 'UTC'"));
        assert!(!by("at").target_piece().contains("AT TIME ZONE"));
    }

    #[test]
    fn wide_columns_are_packed_into_several_groups() {
        let (spec, s, mut t) = tables();
        for c in &mut t.columns {
            if c.name == "note" || c.name == "secret" {
                c.char_max_length = Some(40_000);
            }
        }
        let plan = plan(&spec, &s, &t, &ContentOptions::default()).unwrap();
        assert_eq!(plan.groups, 2);
        let groups: Vec<usize> = plan.columns.iter().map(|c| c.group).collect();
        assert_eq!(groups, vec![0, 0, 0, 1, 1]);
    }

    #[test]
    fn a_missing_id_or_updated_at_column_is_an_error() {
        let (mut spec, s, t) = tables();
        let options = ContentOptions {
            updated_at_column: Some("nope".to_owned()),
            ..ContentOptions::default()
        };
        assert!(plan(&spec, &s, &t, &options).is_err());
        spec.id_column = "key".to_owned();
        assert!(plan(&spec, &s, &t, &ContentOptions::default()).is_err());
    }
}
