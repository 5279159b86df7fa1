//! The replicated tables: their source definition, the target table as DMS creates it in
//! Redshift (the type mapping), and the text form both sides compare in.

use std::fmt;
use std::str::FromStr;

use dmsguard_pipeline::config::{quote_ident, QualifiedName};
use tokio_postgres::Client;

/// The enum type the source tables use (created once per database).
pub const ENUM_TYPE: &str = "lab_order_kind";
/// The enum's values.
pub const ENUM_VALUES: [&str; 3] = ["retail", "wholesale", "internal"];
/// Tables with at most this many extra columns (33 bytes each at most) stay under 8160 bytes
/// a row, so nothing is TOASTed out of line.
const INLINE_EXTRA_COLUMNS: usize = 150;
/// The one key column of every simulated table (DMS's `seg1`).
pub const ID_COLUMN: &str = "id";

/// How a source value turns into the text DMS loads into the intermediate table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColumnKind {
    /// The bigint key.
    Id,
    /// `boolean`: DMS writes `true`/`false` into a `varchar(5)`.
    Boolean,
    /// `timestamptz`: DMS writes the UTC time without an offset into a `timestamp`.
    TimestampTz,
    /// Anything else: the source's text output, cast by the target column type.
    Plain,
}

/// One column of a simulated table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    pub name: String,
    /// The type in the source database.
    pub source_type: String,
    /// The type DMS gives the column in Redshift (also the `CAST` target in its statements).
    pub target_type: String,
    pub kind: ColumnKind,
    pub nullable: bool,
}

impl Column {
    fn new(name: &str, source: &str, target: &str, kind: ColumnKind, nullable: bool) -> Self {
        Self {
            name: name.to_owned(),
            source_type: source.to_owned(),
            target_type: target.to_owned(),
            kind,
            nullable,
        }
    }

    /// A source expression giving the value as the target shows it in text form.
    pub fn source_text_expr(&self) -> String {
        let c = quote_ident(&self.name);
        match self.kind {
            ColumnKind::Boolean => {
                format!("CASE WHEN {c} IS NULL THEN NULL WHEN {c} THEN 'true' ELSE 'false' END")
            }
            ColumnKind::TimestampTz => format!("({c} AT TIME ZONE 'UTC')::text"),
            ColumnKind::Id | ColumnKind::Plain => format!("{c}::text"),
        }
    }
}

/// A simulated table: `schema.table`, plus `extra_columns` wide text columns (to make DMS
/// statements longer than Redshift's 4000-character query text).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SimTable {
    pub name: QualifiedName,
    pub extra_columns: usize,
}

impl SimTable {
    pub fn new(name: &str) -> anyhow::Result<Self> {
        name.parse()
    }

    /// The columns in ordinal order; `c<N>` in the intermediate table is column N.
    pub fn columns(&self) -> Vec<Column> {
        use ColumnKind::*;
        let mut cols = vec![
            Column::new(ID_COLUMN, "bigint", "bigint", Id, false),
            Column::new("status", "varchar(20)", "varchar(20)", Plain, false),
            Column::new("kind", ENUM_TYPE, "varchar(65535)", Plain, false),
            Column::new("is_gift", "boolean", "varchar(5)", Boolean, false),
            Column::new("payload", "jsonb", "varchar(65535)", Plain, true),
            Column::new("tags", "text[]", "varchar(65535)", Plain, true),
            Column::new("customer_ref", "uuid", "varchar(36)", Plain, false),
            Column::new("created_at", "timestamptz", "timestamp", TimestampTz, false),
            Column::new("amount", "numeric(12,2)", "numeric(12,2)", Plain, false),
            Column::new("note", "text", "varchar(65535)", Plain, true),
            Column::new("ShipTo", "text", "varchar(65535)", Plain, false),
            Column::new("quantity", "integer", "integer", Plain, false),
        ];
        for i in 1..=self.extra_columns {
            cols.push(Column::new(
                &format!("attr_{i:03}"),
                "text",
                "varchar(65535)",
                Plain,
                true,
            ));
        }
        cols
    }

    /// `schema.table`, as DMS writes it in the intermediate table's `tbl` column.
    pub fn dotted(&self) -> String {
        self.name.to_string()
    }

    fn column_defs(&self, target: bool) -> String {
        let schema = quote_ident(&self.name.schema);
        self.columns()
            .iter()
            .map(|c| {
                let ty = if target {
                    c.target_type.clone()
                } else if c.source_type == ENUM_TYPE {
                    // Qualified so the table works whatever the search path.
                    format!("{schema}.{}", quote_ident(ENUM_TYPE))
                } else {
                    c.source_type.clone()
                };
                let null = if c.nullable { "" } else { " NOT NULL" };
                let key = if !target && c.kind == ColumnKind::Id {
                    " GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY"
                } else {
                    ""
                };
                format!("{} {ty}{null}{key}", quote_ident(&c.name))
            })
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Creates the source table (and the enum type) if missing.
    ///
    /// An UPDATE's new tuple in the WAL omits unchanged values TOASTed out of line. Rows are
    /// kept inline up to 8160 bytes (`toast_tuple_target`); wider tables get `REPLICA IDENTITY
    /// FULL`, as DMS advises for tables with LOBs, so the old tuple supplies such values.
    pub async fn install_source(&self, source: &Client) -> Result<(), tokio_postgres::Error> {
        let schema = quote_ident(&self.name.schema);
        let values = ENUM_VALUES
            .iter()
            .map(|v| format!("'{v}'"))
            .collect::<Vec<_>>()
            .join(", ");
        source
            .batch_execute(&format!(
                "CREATE SCHEMA IF NOT EXISTS {schema};
                 DO $$ BEGIN
                   CREATE TYPE {schema}.{ty} AS ENUM ({values});
                 EXCEPTION WHEN duplicate_object THEN NULL; END $$;
                 CREATE TABLE IF NOT EXISTS {table} ({cols}) WITH (toast_tuple_target = 8160);
                 ALTER TABLE {table} REPLICA IDENTITY {identity};",
                identity = if self.extra_columns > INLINE_EXTRA_COLUMNS {
                    "FULL"
                } else {
                    "DEFAULT"
                },
                ty = quote_ident(ENUM_TYPE),
                table = self.name.quoted(),
                cols = self.column_defs(false),
            ))
            .await
    }

    /// Creates the target table as DMS would (no enforced key: Redshift does not enforce
    /// them; an index on the key stands in for the sort key) and describes it in
    /// `pg_table_def`.
    pub async fn install_target(&self, redshift: &Client) -> Result<(), tokio_postgres::Error> {
        let exists: bool = redshift
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM information_schema.tables WHERE table_schema = $1 AND table_name = $2)",
                &[&self.name.schema, &self.name.table],
            )
            .await?
            .get(0);
        if exists {
            return Ok(());
        }
        let index = quote_ident(&format!("{}_{}_sortkey", self.name.table, ID_COLUMN));
        redshift
            .batch_execute(&format!(
                "CREATE SCHEMA IF NOT EXISTS {schema};
                 CREATE TABLE {table} ({cols});
                 CREATE INDEX {index} ON {table} ({id});",
                schema = quote_ident(&self.name.schema),
                table = self.name.quoted(),
                cols = self.column_defs(true),
                id = quote_ident(ID_COLUMN),
            ))
            .await?;
        for c in self.columns() {
            let sortkey: i32 = i32::from(c.kind == ColumnKind::Id);
            let encoding = if c.kind == ColumnKind::Id {
                "none"
            } else {
                "lzo"
            };
            redshift
                .execute(
                    "INSERT INTO pg_table_def (schemaname, tablename, \"column\", type, encoding, distkey, sortkey, \"notnull\") VALUES ($1, $2, $3, $4, $5, false, $6, $7)",
                    &[
                        &self.name.schema,
                        &self.name.table,
                        &c.name,
                        &redshift_type_name(&c.target_type),
                        &encoding,
                        &sortkey,
                        &!c.nullable,
                    ],
                )
                .await?;
        }
        Ok(())
    }
}

/// The type as `PG_TABLE_DEF` spells it.
fn redshift_type_name(target_type: &str) -> String {
    match target_type {
        "varchar(5)" | "varchar(20)" | "varchar(36)" | "varchar(65535)" => {
            target_type.replace("varchar", "character varying")
        }
        "timestamp" => "timestamp without time zone".to_owned(),
        other => other.to_owned(),
    }
}

impl fmt::Display for SimTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.extra_columns == 0 {
            write!(f, "{}", self.name)
        } else {
            write!(f, "{}:{}", self.name, self.extra_columns)
        }
    }
}

impl FromStr for SimTable {
    type Err = anyhow::Error;

    /// `schema.table` or `schema.table:N` (N extra wide columns).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (name, extra) = match s.split_once(':') {
            Some((n, e)) => (
                n,
                e.parse::<usize>()
                    .map_err(|_| anyhow::anyhow!("table `{s}`: `{e}` is not a column count"))?,
            ),
            None => (s, 0),
        };
        let name = QualifiedName::parse(name)
            .ok_or_else(|| anyhow::anyhow!("table `{s}` is not `schema.table[:extra_columns]`"))?;
        if extra > 1000 {
            anyhow::bail!("table `{s}`: at most 1000 extra columns");
        }
        Ok(Self {
            name,
            extra_columns: extra,
        })
    }
}

/// Where the target differs from the source, row by row after type conversion.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Diff {
    pub table: String,
    pub source_rows: usize,
    pub target_rows: usize,
    /// Ids in the source and not in the target.
    pub missing_in_target: Vec<i64>,
    /// Ids in the target and not in the source.
    pub extra_in_target: Vec<i64>,
    /// Ids present more than once in the target.
    pub duplicated_in_target: Vec<i64>,
    /// Rows on both sides whose values differ (first difference of each row).
    pub mismatched: Vec<RowMismatch>,
}

/// A column value that differs between source and target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowMismatch {
    pub id: i64,
    pub column: String,
    pub source: Option<String>,
    pub target: Option<String>,
}

impl Diff {
    /// No difference at all.
    pub fn is_empty(&self) -> bool {
        self.missing_in_target.is_empty()
            && self.extra_in_target.is_empty()
            && self.duplicated_in_target.is_empty()
            && self.mismatched.is_empty()
    }
}

impl fmt::Display for Diff {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {} source rows, {} target rows, missing {:?}, extra {:?}, duplicated {:?}, mismatched {:?}",
            self.table,
            self.source_rows,
            self.target_rows,
            first(&self.missing_in_target),
            first(&self.extra_in_target),
            first(&self.duplicated_in_target),
            first(&self.mismatched),
        )
    }
}

fn first<T>(v: &[T]) -> &[T] {
    &v[..v.len().min(10)]
}

type Rows = Vec<(i64, Vec<Option<String>>)>;

async fn fetch(client: &Client, sql: &str) -> Result<Rows, tokio_postgres::Error> {
    let rows = client.query(sql, &[]).await?;
    Ok(rows
        .iter()
        .map(|r| {
            let id: i64 = r.get(0);
            let values = (1..r.len())
                .map(|i| r.get::<_, Option<String>>(i))
                .collect();
            (id, values)
        })
        .collect())
}

/// Compares a table's source rows with its target rows, converting source values as DMS does.
pub async fn compare_tables(
    source: &Client,
    redshift: &Client,
    table: &SimTable,
) -> Result<Diff, tokio_postgres::Error> {
    let columns = table.columns();
    let id = quote_ident(ID_COLUMN);
    let source_sql = format!(
        "SELECT {id}, {} FROM {} ORDER BY 1",
        columns
            .iter()
            .map(Column::source_text_expr)
            .collect::<Vec<_>>()
            .join(", "),
        table.name.quoted()
    );
    let target_sql = format!(
        "SELECT {id}, {} FROM {} ORDER BY 1",
        columns
            .iter()
            .map(|c| format!("{}::text", quote_ident(&c.name)))
            .collect::<Vec<_>>()
            .join(", "),
        table.name.quoted()
    );
    let (src, dst) = tokio::try_join!(fetch(source, &source_sql), fetch(redshift, &target_sql))?;
    Ok(diff_rows(&table.dotted(), &columns, &src, &dst))
}

/// Merges two id-ordered row lists into a [`Diff`].
pub fn diff_rows(table: &str, columns: &[Column], src: &Rows, dst: &Rows) -> Diff {
    let mut diff = Diff {
        table: table.to_owned(),
        source_rows: src.len(),
        target_rows: dst.len(),
        ..Diff::default()
    };
    let (mut i, mut j) = (0, 0);
    while i < src.len() || j < dst.len() {
        if j > 0 && j < dst.len() && dst[j].0 == dst[j - 1].0 {
            if diff.duplicated_in_target.last() != Some(&dst[j].0) {
                diff.duplicated_in_target.push(dst[j].0);
            }
            j += 1;
            continue;
        }
        match (src.get(i), dst.get(j)) {
            (Some(s), Some(d)) if s.0 == d.0 => {
                if let Some(k) = (0..columns.len()).find(|&k| s.1[k] != d.1[k]) {
                    diff.mismatched.push(RowMismatch {
                        id: s.0,
                        column: columns[k].name.clone(),
                        source: s.1[k].clone(),
                        target: d.1[k].clone(),
                    });
                }
                i += 1;
                j += 1;
            }
            (Some(s), Some(d)) if s.0 < d.0 => {
                diff.missing_in_target.push(s.0);
                i += 1;
            }
            (Some(_), Some(d)) => {
                diff.extra_in_target.push(d.0);
                j += 1;
            }
            (Some(s), None) => {
                diff.missing_in_target.push(s.0);
                i += 1;
            }
            (None, Some(d)) => {
                diff.extra_in_target.push(d.0);
                j += 1;
            }
            (None, None) => break,
        }
    }
    diff
}

/// Copies source rows into the target with DMS's type conversion (what a repair does);
/// returns the rows inserted. For tests that stand in for a fix.
pub async fn copy_rows(
    source: &Client,
    redshift: &Client,
    table: &SimTable,
    ids: &[i64],
) -> Result<u64, tokio_postgres::Error> {
    let columns = table.columns();
    let id = quote_ident(ID_COLUMN);
    let select = format!(
        "SELECT {} FROM {} WHERE {id} = ANY($1::bigint[])",
        columns
            .iter()
            .map(Column::source_text_expr)
            .collect::<Vec<_>>()
            .join(", "),
        table.name.quoted()
    );
    let insert = format!(
        "INSERT INTO {} ({}) VALUES ({})",
        table.name.quoted(),
        columns
            .iter()
            .map(|c| quote_ident(&c.name))
            .collect::<Vec<_>>()
            .join(","),
        columns
            .iter()
            .enumerate()
            .map(|(i, c)| format!("CAST(${}::text AS {})", i + 1, c.target_type))
            .collect::<Vec<_>>()
            .join(",")
    );
    let mut n = 0;
    for row in source.query(&select, &[&ids]).await? {
        let values: Vec<Option<String>> = (0..row.len()).map(|i| row.get(i)).collect();
        let params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = values
            .iter()
            .map(|v| v as &(dyn tokio_postgres::types::ToSql + Sync))
            .collect();
        n += redshift.execute(&insert, &params).await?;
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: i64, v: &str) -> (i64, Vec<Option<String>>) {
        (id, vec![Some(v.to_owned())])
    }

    #[test]
    fn table_spec_parses_with_and_without_extra_columns() {
        let t: SimTable = "public.orders".parse().unwrap();
        assert_eq!(t.extra_columns, 0);
        assert_eq!(t.columns().len(), 12);
        let w: SimTable = "public.wide:80".parse().unwrap();
        assert_eq!(w.columns().len(), 92);
        assert_eq!(w.to_string(), "public.wide:80");
        assert!("orders".parse::<SimTable>().is_err());
        assert!("public.x:many".parse::<SimTable>().is_err());
    }

    #[test]
    fn diff_finds_missing_extra_duplicate_and_changed_rows() {
        let cols = vec![Column::new(
            "v",
            "text",
            "varchar(65535)",
            ColumnKind::Plain,
            true,
        )];
        let src = vec![row(1, "a"), row(2, "b"), row(3, "c"), row(5, "e")];
        let dst = vec![
            row(1, "a"),
            row(3, "x"),
            row(3, "x"),
            row(4, "d"),
            row(5, "e"),
        ];
        let d = diff_rows("public.t", &cols, &src, &dst);
        assert_eq!(d.missing_in_target, vec![2]);
        assert_eq!(d.extra_in_target, vec![4]);
        assert_eq!(d.duplicated_in_target, vec![3]);
        assert_eq!(d.mismatched.len(), 1);
        assert_eq!(d.mismatched[0].id, 3);
        assert!(!d.is_empty());
        let same = diff_rows("public.t", &cols, &src, &src);
        assert!(same.is_empty(), "{same}");
    }
}
