//! Column definitions of source and target tables, read from each database's catalogue.
//!
//! The target is read through `information_schema.columns`, which Redshift and the lab's
//! PostgreSQL stand-in both have (`PG_TABLE_DEF` would also do on Redshift but only lists tables
//! on the search path, and the lab models it as a plain table nobody fills for target tables).
//! The source is a real PostgreSQL and is read from `pg_catalog`, which also tells enums, arrays
//! and the primary key apart.

use tokio_postgres::GenericClient;

use crate::config::QualifiedName;

/// Why a table's definition could not be read.
#[derive(Debug, thiserror::Error)]
pub enum CatalogueError {
    #[error("cannot read the catalogue for {table}: {source}")]
    Query {
        table: QualifiedName,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error("table {0} does not exist or has no columns visible to this user")]
    TableNotFound(QualifiedName),
}

/// A column of a target (Redshift) table as `information_schema.columns` describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetColumn {
    pub name: String,
    /// `information_schema` type name: `character varying`, `boolean`, `numeric`, `super`, …
    pub data_type: String,
    /// Declared length of character types (bytes on Redshift, characters on PostgreSQL).
    pub char_max_length: Option<i32>,
    /// Declared precision of `numeric` (and the bit/digit precision of other numeric types).
    pub numeric_precision: Option<i32>,
    /// Declared scale of `numeric`.
    pub numeric_scale: Option<i32>,
    pub nullable: bool,
    /// The underlying type name (`varchar`, `int8`, an enum's name, …).
    pub udt_name: String,
}

/// A target table and its columns in ordinal order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetTable {
    pub name: QualifiedName,
    pub columns: Vec<TargetColumn>,
}

impl TargetTable {
    /// The column called `name`: exact match first, then ignoring ASCII case (Redshift folds
    /// identifiers to lower case unless case sensitivity is enabled, so a source `"MixedCase"`
    /// column usually arrives as `mixedcase`).
    pub fn column(&self, name: &str) -> Option<&TargetColumn> {
        self.columns.iter().find(|c| c.name == name).or_else(|| {
            self.columns
                .iter()
                .find(|c| c.name.eq_ignore_ascii_case(name))
        })
    }
}

/// What kind of PostgreSQL type a source column has (`pg_type.typtype` / `typcategory`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceTypeKind {
    /// A built-in scalar type (`int8`, `text`, `jsonb`, …).
    Base,
    /// An enum; values travel as their labels.
    Enum,
    /// An array; its element type is in [`SourceColumn::element_type`].
    Array,
    /// A domain, composite, range or other type.
    Other,
}

/// A column of a source (PostgreSQL) table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceColumn {
    pub name: String,
    /// `format_type()` output, e.g. `numeric(12,2)`, `character varying(20)`, `text[]`.
    pub type_name: String,
    /// `pg_type.typname`, e.g. `numeric`, `varchar`, `_text`, or the enum's name.
    pub udt_name: String,
    pub kind: SourceTypeKind,
    /// For arrays, the element's `typname` (`text` for `text[]`).
    pub element_type: Option<String>,
    pub not_null: bool,
    /// Declared length of `varchar(n)` / `char(n)`.
    pub char_max_length: Option<i32>,
    /// Declared precision of `numeric(p,s)`.
    pub numeric_precision: Option<i32>,
    /// Declared scale of `numeric(p,s)`.
    pub numeric_scale: Option<i32>,
}

/// A source table: columns in ordinal order and the primary key's columns in key order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceTable {
    pub name: QualifiedName,
    pub columns: Vec<SourceColumn>,
    pub primary_key: Vec<String>,
}

impl SourceTable {
    /// The index of the column called exactly `name`.
    pub fn column_index(&self, name: &str) -> Option<usize> {
        self.columns.iter().position(|c| c.name == name)
    }
}

/// Reads table definitions from a database's catalogue.
#[derive(Debug, Clone, Copy, Default)]
pub struct Catalogue;

const TARGET_COLUMNS_SQL: &str = "SELECT column_name::varchar(128), data_type::varchar(128), \
     character_maximum_length::integer, numeric_precision::integer, numeric_scale::integer, \
     is_nullable::varchar(3), udt_name::varchar(128) \
     FROM information_schema.columns \
     WHERE table_schema = $1::varchar(128) AND table_name = $2::varchar(128) \
     ORDER BY ordinal_position";

const SOURCE_COLUMNS_SQL: &str = "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod), \
     t.typname::text, t.typtype::text, t.typcategory::text, et.typname::text, \
     a.atttypmod, a.attnotnull \
     FROM pg_attribute a \
     JOIN pg_class c ON c.oid = a.attrelid \
     JOIN pg_namespace n ON n.oid = c.relnamespace \
     JOIN pg_type t ON t.oid = a.atttypid \
     LEFT JOIN pg_type et ON et.oid = t.typelem AND t.typcategory = 'A' \
     WHERE n.nspname = $1 AND c.relname = $2 AND a.attnum > 0 AND NOT a.attisdropped \
     ORDER BY a.attnum";

const SOURCE_PRIMARY_KEY_SQL: &str = "SELECT a.attname::text \
     FROM pg_index i \
     JOIN pg_class c ON c.oid = i.indrelid \
     JOIN pg_namespace n ON n.oid = c.relnamespace \
     JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) \
     WHERE n.nspname = $1 AND c.relname = $2 AND i.indisprimary \
     ORDER BY array_position(i.indkey::int2[], a.attnum)";

impl Catalogue {
    /// Reads a target table's columns (Redshift or the lab's stand-in).
    pub async fn load(
        client: &impl GenericClient,
        table: &QualifiedName,
    ) -> Result<TargetTable, CatalogueError> {
        let query_error = |source| CatalogueError::Query {
            table: table.clone(),
            source,
        };
        let rows = client
            .query(TARGET_COLUMNS_SQL, &[&table.schema, &table.table])
            .await
            .map_err(query_error)?;
        if rows.is_empty() {
            return Err(CatalogueError::TableNotFound(table.clone()));
        }
        let columns = rows
            .iter()
            .map(|r| {
                Ok(TargetColumn {
                    name: r.try_get(0)?,
                    data_type: r.try_get(1)?,
                    char_max_length: r.try_get(2)?,
                    numeric_precision: r.try_get(3)?,
                    numeric_scale: r.try_get(4)?,
                    nullable: r.try_get::<_, String>(5)? == "YES",
                    udt_name: r.try_get::<_, Option<String>>(6)?.unwrap_or_default(),
                })
            })
            .collect::<Result<Vec<_>, tokio_postgres::Error>>()
            .map_err(query_error)?;
        Ok(TargetTable {
            name: table.clone(),
            columns,
        })
    }

    /// Reads a source table's columns and primary key (PostgreSQL).
    pub async fn load_source(
        client: &impl GenericClient,
        table: &QualifiedName,
    ) -> Result<SourceTable, CatalogueError> {
        let query_error = |source| CatalogueError::Query {
            table: table.clone(),
            source,
        };
        let rows = client
            .query(SOURCE_COLUMNS_SQL, &[&table.schema, &table.table])
            .await
            .map_err(query_error)?;
        if rows.is_empty() {
            return Err(CatalogueError::TableNotFound(table.clone()));
        }
        let columns = rows
            .iter()
            .map(|r| {
                let udt_name: String = r.try_get(2)?;
                let typtype: String = r.try_get(3)?;
                let category: String = r.try_get(4)?;
                let typmod: i32 = r.try_get(6)?;
                let kind = match (typtype.as_str(), category.as_str()) {
                    ("e", _) => SourceTypeKind::Enum,
                    ("b", "A") => SourceTypeKind::Array,
                    ("b", _) => SourceTypeKind::Base,
                    _ => SourceTypeKind::Other,
                };
                let (char_max_length, numeric_precision, numeric_scale) =
                    type_modifiers(&udt_name, typmod);
                Ok(SourceColumn {
                    name: r.try_get(0)?,
                    type_name: r.try_get(1)?,
                    kind,
                    element_type: r.try_get(5)?,
                    not_null: r.try_get(7)?,
                    char_max_length,
                    numeric_precision,
                    numeric_scale,
                    udt_name,
                })
            })
            .collect::<Result<Vec<_>, tokio_postgres::Error>>()
            .map_err(query_error)?;
        let primary_key = client
            .query(SOURCE_PRIMARY_KEY_SQL, &[&table.schema, &table.table])
            .await
            .map_err(query_error)?
            .iter()
            .map(|r| r.try_get(0))
            .collect::<Result<Vec<String>, _>>()
            .map_err(query_error)?;
        Ok(SourceTable {
            name: table.clone(),
            columns,
            primary_key,
        })
    }
}

/// Length, precision and scale encoded in a PostgreSQL `atttypmod` (-1 when undeclared).
fn type_modifiers(udt_name: &str, typmod: i32) -> (Option<i32>, Option<i32>, Option<i32>) {
    // Both encodings carry a 4-byte header (VARHDRSZ).
    let body = typmod - 4;
    match udt_name {
        "varchar" | "bpchar" if typmod >= 4 => (Some(body), None, None),
        "numeric" if typmod >= 4 => (None, Some((body >> 16) & 0xffff), Some(body & 0xffff)),
        _ => (None, None, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::statement_parser::is_valid_redshift_sql;

    #[test]
    fn type_modifiers_decode_postgres_typmod() {
        // numeric(12,2): ((12 << 16) | 2) + 4
        assert_eq!(
            type_modifiers("numeric", (12 << 16 | 2) + 4),
            (None, Some(12), Some(2))
        );
        assert_eq!(type_modifiers("varchar", 24), (Some(20), None, None));
        assert_eq!(type_modifiers("bpchar", 5), (Some(1), None, None));
        assert_eq!(type_modifiers("numeric", -1), (None, None, None));
        assert_eq!(type_modifiers("text", -1), (None, None, None));
    }

    #[test]
    fn target_catalogue_query_is_redshift_sql() {
        is_valid_redshift_sql(TARGET_COLUMNS_SQL).unwrap();
    }

    #[test]
    fn column_lookup_prefers_exact_then_folds_case() {
        let col = |name: &str| TargetColumn {
            name: name.to_owned(),
            data_type: "integer".to_owned(),
            char_max_length: None,
            numeric_precision: None,
            numeric_scale: None,
            nullable: true,
            udt_name: "int4".to_owned(),
        };
        let table = TargetTable {
            name: QualifiedName::parse("public.t").unwrap(),
            columns: vec![col("mixedcase"), col("Exact"), col("exact")],
        };
        assert_eq!(table.column("MixedCase").unwrap().name, "mixedcase");
        assert_eq!(table.column("Exact").unwrap().name, "Exact");
        assert_eq!(table.column("exact").unwrap().name, "exact");
        assert!(table.column("absent").is_none());
    }
}
