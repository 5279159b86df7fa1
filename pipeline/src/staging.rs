//! The write path of large repairs, shared by every fix that inserts rows.
//!
//! Rows are first loaded into a session TEMPORARY staging table shaped like the target, with
//! multi-row `INSERT … VALUES` statements of bound text parameters, each committed on its own.
//! Once the stage holds enough rows they move into the target with one
//! `INSERT … SELECT … FROM stage WHERE NOT EXISTS (… target …)` in a transaction that first
//! takes `LOCK` on the target, and the stage is emptied with `TRUNCATE`.
//!
//! Why this shape, and why it is valid on Amazon Redshift (Amazon Redshift Database Developer
//! Guide pages, `https://docs.aws.amazon.com/redshift/latest/dg/<page>.html`):
//!
//! - `CREATE TEMP TABLE stage (LIKE target)` ("CREATE TABLE", `r_CREATE_TABLE_NEW`): a
//!   temporary table is visible only to the session that creates it and dropped at its end;
//!   `LIKE parent_table` copies the parent's column names, types and NOT NULL constraints (and
//!   on Redshift its distribution and sort keys and encodings), so each value is read and
//!   checked by the same cast into the same type as the one-statement path did.
//! - Multi-row `INSERT … VALUES (…), (…)` ("INSERT", `r_INSERT_30`; "Use a multi-row insert",
//!   `c_best-practices-multi-row-inserts`): the form Redshift recommends when `COPY` is not an
//!   option. Its planning costs little, unlike the `UNION ALL` of one `SELECT` per row the
//!   former path built, where planning was where the time went.
//! - A statement carries at most [`MAX_PARAMS_PER_STATEMENT`] bound parameters and, SQL text
//!   and values counted together, at most [`MAX_STATEMENT_BYTES`] ("The maximum size for a
//!   single Amazon Redshift SQL statement is 16 MB", "Amazon Redshift SQL", `c_redshift-sql`).
//! - The move keeps the guarantee of the former path exactly: Redshift enforces no key and runs
//!   snapshot isolation, so `LOCK` comes first in the transaction and the `NOT EXISTS` check
//!   reads a snapshot taken after it ("LOCK", `r_LOCK`; "Isolation levels in Amazon Redshift",
//!   `c_serial_isolation`: the snapshot is taken at the first SELECT, DML or listed DDL
//!   statement). That is why the stage is loaded in transactions of its own, committed before
//!   the move begins: loading it inside the move's transaction would take the snapshot before
//!   the lock. A move that Redshift cannot serialize is retried whole; the stage still holds
//!   its rows, and a retry finds those already inserted present.
//! - `TRUNCATE` commits the transaction it runs in ("TRUNCATE", `r_TRUNCATE`), so it runs
//!   alone, after the move committed.
//! - Creating temporary tables needs the database's `TEMP` privilege, which every user holds by
//!   default through `PUBLIC` on Redshift ("GRANT", `r_GRANT`) as on PostgreSQL.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};

use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, GenericClient, Statement};

use crate::config::quote_ident;
use crate::type_translator::{
    is_serialization_failure, lock_sql, InsertError, TranslatedRow, Translator,
    MAX_PARAMS_PER_STATEMENT,
};

/// The largest single SQL statement Redshift accepts: 16 MB ("Amazon Redshift SQL",
/// <https://docs.aws.amazon.com/redshift/latest/dg/c_redshift-sql.html>).
pub const MAX_STATEMENT_BYTES: usize = 16 * 1024 * 1024;

/// Names stages uniquely within a process (a session may stage for several tables).
static STAGE_COUNTER: AtomicU64 = AtomicU64::new(0);

/// How rows are grouped on their way to the target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StageLimits {
    /// Rows staged before they move into the target in one locked transaction: the target is
    /// locked once per this many rows.
    pub move_rows: usize,
    /// Most rows one load statement carries (the parameter limit caps it too).
    pub statement_rows: usize,
    /// Most bytes of one load statement, its SQL text and bound values counted together; at
    /// most [`MAX_STATEMENT_BYTES`].
    pub statement_bytes: usize,
    /// Attempts of one move that conflicts with a concurrent writer.
    pub max_attempts: u32,
}

impl Default for StageLimits {
    fn default() -> Self {
        Self {
            move_rows: 50_000,
            statement_rows: 1000,
            statement_bytes: 8 * 1024 * 1024,
            max_attempts: 5,
        }
    }
}

/// What one move did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Moved {
    /// Rows that were staged (distinct ids).
    pub staged: u64,
    /// Rows inserted into the target: the staged ones whose id it did not hold yet.
    pub inserted: u64,
}

impl Moved {
    /// Staged rows another writer had inserted meanwhile (left alone).
    pub fn already_present(&self) -> u64 {
        self.staged - self.inserted
    }
}

/// Writes translated rows into one target table through a session temporary stage. Use one
/// client for all calls: the stage lives in its session.
pub struct StagedWriter {
    translator: Translator,
    limits: StageLimits,
    /// The stage's name, quoted.
    stage: String,
    /// Target columns written, quoted, in [`TranslatedRow::values`] order.
    names: Vec<String>,
    /// SQL bytes one row adds to a load statement, at most.
    row_sql_bytes: usize,
    created: bool,
    staged: HashSet<i64>,
    /// Prepared load statements by row count (the full-size one is reused all along).
    prepared: HashMap<usize, Statement>,
    /// Load statements sent (for tests and benches).
    statements: u64,
}

impl StagedWriter {
    pub fn new(translator: &Translator, limits: StageLimits) -> Self {
        let n = STAGE_COUNTER.fetch_add(1, Ordering::Relaxed);
        let names: Vec<String> = translator.columns().map(quote_ident).collect();
        let row_sql_bytes = (0..names.len())
            .map(|i| {
                translator
                    .value_expression(i, MAX_PARAMS_PER_STATEMENT)
                    .len()
                    + 2
            })
            .sum::<usize>()
            + 4;
        Self {
            translator: translator.clone(),
            limits,
            stage: quote_ident(&format!("dmsguard_stage_{}_{n}", std::process::id())),
            names,
            row_sql_bytes,
            created: false,
            staged: HashSet::new(),
            prepared: HashMap::new(),
            statements: 0,
        }
    }

    /// Rows staged and not moved yet.
    pub fn staged(&self) -> usize {
        self.staged.len()
    }

    /// Whether the stage holds `move_rows` rows or more: time to [`Self::move_staged`].
    pub fn is_full(&self) -> bool {
        self.staged.len() >= self.limits.move_rows.max(1)
    }

    /// Load statements sent so far.
    pub fn load_statements(&self) -> u64 {
        self.statements
    }

    /// Rows one load statement carries at most (parameter limit and `statement_rows`).
    pub fn max_rows_per_statement(&self) -> usize {
        (MAX_PARAMS_PER_STATEMENT / self.names.len().max(1))
            .min(self.limits.statement_rows)
            .max(1)
    }

    /// `CREATE TEMP TABLE stage (LIKE target)`.
    pub fn create_sql(&self) -> String {
        format!(
            "CREATE TEMP TABLE {} (LIKE {})",
            self.stage,
            self.translator.table().quoted()
        )
    }

    /// The load statement for `rows` rows: `INSERT INTO stage (cols) VALUES (…), (…)`.
    pub fn load_sql(&self, rows: usize) -> String {
        let columns = self.names.len();
        let mut sql = String::with_capacity(64 + rows * self.row_sql_bytes);
        sql.push_str("INSERT INTO ");
        sql.push_str(&self.stage);
        sql.push_str(" (");
        sql.push_str(&self.names.join(", "));
        sql.push_str(") VALUES ");
        for r in 0..rows {
            sql.push_str(if r == 0 { "(" } else { ", (" });
            for i in 0..columns {
                if i > 0 {
                    sql.push_str(", ");
                }
                sql.push_str(&self.translator.value_expression(i, r * columns + i + 1));
            }
            sql.push(')');
        }
        sql
    }

    /// The move: `INSERT INTO target (cols) SELECT cols FROM stage WHERE NOT EXISTS (…)`.
    pub fn move_sql(&self) -> String {
        let table = self.translator.table().quoted();
        let id = quote_ident(self.translator.id_column());
        let staged: Vec<String> = self.names.iter().map(|n| format!("\"s\".{n}")).collect();
        format!(
            "INSERT INTO {table} ({}) SELECT {} FROM {} AS \"s\" WHERE NOT EXISTS \
             (SELECT 1 FROM {table} AS \"existing\" WHERE \"existing\".{id} = \"s\".{id})",
            self.names.join(", "),
            staged.join(", "),
            self.stage
        )
    }

    /// `TRUNCATE stage`.
    pub fn truncate_sql(&self) -> String {
        format!("TRUNCATE {}", self.stage)
    }

    /// The stage's name, quoted (for statements that join it, e.g. the row rewrite).
    pub fn stage_name(&self) -> &str {
        &self.stage
    }

    /// Creates the stage now if it does not exist yet (outside any transaction, so a rolled
    /// back transaction that loads it does not take the table with it).
    pub async fn create(&mut self, client: &impl GenericClient) -> Result<(), InsertError> {
        if !self.created {
            let sql = self.create_sql();
            client
                .batch_execute(&sql)
                .await
                .map_err(self.error("creating the staging table"))?;
            self.created = true;
        }
        Ok(())
    }

    /// Forgets which ids are staged: after the stage was emptied by other means (a rolled back
    /// transaction that loaded it, or a `TRUNCATE` sent by the caller).
    pub fn forget_staged(&mut self) {
        self.staged.clear();
    }

    /// Loads `rows` into the stage (an id staged already is skipped), in statements within the
    /// parameter and byte limits. Nothing reaches the target until [`Self::move_staged`].
    /// `client` may be a transaction of the stage's session.
    pub async fn stage(
        &mut self,
        client: &impl GenericClient,
        rows: &[TranslatedRow],
    ) -> Result<(), InsertError> {
        let rows: Vec<&TranslatedRow> = rows.iter().filter(|r| self.staged.insert(r.id)).collect();
        if rows.is_empty() {
            return Ok(());
        }
        self.create(client).await?;
        let max_rows = self.max_rows_per_statement();
        let budget = self
            .limits
            .statement_bytes
            .clamp(1, MAX_STATEMENT_BYTES)
            .saturating_sub(64 + self.names.iter().map(|n| n.len() + 2).sum::<usize>());
        let mut start = 0;
        while start < rows.len() {
            let mut end = start;
            let mut bytes = 0;
            while end < rows.len() && end - start < max_rows {
                let row = self.row_sql_bytes
                    + rows[end]
                        .values
                        .iter()
                        .map(|v| v.as_ref().map_or(0, String::len))
                        .sum::<usize>();
                if end > start && bytes + row > budget {
                    break;
                }
                bytes += row;
                end += 1;
            }
            self.load(client, &rows[start..end]).await?;
            start = end;
        }
        Ok(())
    }

    async fn load(
        &mut self,
        client: &impl GenericClient,
        rows: &[&TranslatedRow],
    ) -> Result<(), InsertError> {
        let statement = match self.prepared.get(&rows.len()) {
            Some(s) => s.clone(),
            None => {
                let s = client
                    .prepare(&self.load_sql(rows.len()))
                    .await
                    .map_err(self.error("preparing the staging INSERT"))?;
                // Keep the full-size statement and a few others; a byte-limited batch of odd
                // size is prepared for its one use.
                if self.prepared.len() < 4 || rows.len() == self.max_rows_per_statement() {
                    self.prepared.insert(rows.len(), s.clone());
                }
                s
            }
        };
        let params: Vec<&(dyn ToSql + Sync)> = rows
            .iter()
            .flat_map(|r| r.values.iter().map(|v| v as &(dyn ToSql + Sync)))
            .collect();
        client
            .execute(&statement, &params)
            .await
            .map_err(self.error("loading rows into the staging table"))?;
        self.statements += 1;
        Ok(())
    }

    /// Moves the staged rows whose id the target does not hold yet into the target, in one
    /// transaction that first takes `LOCK` on it, then empties the stage.
    pub async fn move_staged(&mut self, client: &mut Client) -> Result<Moved, InsertError> {
        if self.staged.is_empty() {
            return Ok(Moved::default());
        }
        let staged = self.staged.len() as u64;
        let lock = lock_sql(self.translator.table());
        let sql = self.move_sql();
        let mut attempt = 0;
        let inserted = loop {
            attempt += 1;
            let result = async {
                let tx = client.transaction().await?;
                tx.batch_execute(&lock).await?;
                let n = tx.execute(sql.as_str(), &[]).await?;
                tx.commit().await?;
                Ok::<u64, tokio_postgres::Error>(n)
            }
            .await;
            match result {
                Ok(n) => break n,
                Err(e) if is_serialization_failure(&e) => {
                    if attempt >= self.limits.max_attempts.max(1) {
                        return Err(InsertError::Conflict {
                            table: self.translator.table().to_string(),
                            attempts: attempt,
                        });
                    }
                    tracing::debug!(table = %self.translator.table(), attempt, "Move conflicted with a concurrent writer; retrying.");
                    tokio::time::sleep(std::time::Duration::from_millis(10 * u64::from(attempt)))
                        .await;
                }
                Err(source) => {
                    return Err(InsertError::Query {
                        table: self.translator.table().to_string(),
                        source,
                    })
                }
            }
        };
        client
            .batch_execute(&self.truncate_sql())
            .await
            .map_err(self.error("emptying the staging table"))?;
        self.staged.clear();
        Ok(Moved { staged, inserted })
    }

    /// Moves what is left and drops the stage.
    pub async fn finish(mut self, client: &mut Client) -> Result<Moved, InsertError> {
        let moved = self.move_staged(client).await?;
        if self.created {
            client
                .batch_execute(&format!("DROP TABLE {}", self.stage))
                .await
                .map_err(self.error("dropping the staging table"))?;
        }
        Ok(moved)
    }

    fn error(&self, action: &'static str) -> impl Fn(tokio_postgres::Error) -> InsertError + '_ {
        move |source| InsertError::Stage {
            table: self.translator.table().to_string(),
            action,
            source,
        }
    }
}

/// `SET query_group TO 'group'`: the session's later statements run in that query group, which
/// WLM queue assignment rules route to a queue ("WLM queue assignment rules",
/// <https://docs.aws.amazon.com/redshift/latest/dg/cm-c-wlm-queue-assignment-rules.html>;
/// "Assigning queries to queues", `cm-c-executing-queries`), and which Redshift records as the
/// queries' label (`query_label` of `SYS_QUERY_HISTORY`). `group` must not hold a quote.
pub fn query_group_sql(group: &str) -> String {
    format!("SET query_group TO '{group}'")
}

/// Sets the session's query group; `Ok(false)` when the server has no such setting (SQLSTATE
/// 42704: PostgreSQL, the lab's stand-in), which is logged and otherwise ignored.
pub async fn set_query_group(client: &Client, group: &str) -> Result<bool, tokio_postgres::Error> {
    match client.batch_execute(&query_group_sql(group)).await {
        Ok(()) => Ok(true),
        Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::UNDEFINED_OBJECT) => {
            tracing::warn!(group, error = %crate::report::ErrorChain(&e), "The target has no query_group setting (not Redshift); repair statements run unlabelled.");
            Ok(false)
        }
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalogue::{SourceColumn, SourceTable, SourceTypeKind, TargetColumn, TargetTable};
    use crate::config::QualifiedName;
    use crate::statement_parser::is_valid_redshift_sql;

    fn translator() -> Translator {
        let name = QualifiedName::parse("public.orders").unwrap();
        let source_column = |n: &str, udt: &str| SourceColumn {
            name: n.to_owned(),
            type_name: udt.to_owned(),
            udt_name: udt.to_owned(),
            kind: SourceTypeKind::Base,
            element_type: None,
            not_null: false,
            char_max_length: None,
            numeric_precision: None,
            numeric_scale: None,
        };
        let target_column = |n: &str, ty: &str, len: Option<i32>| TargetColumn {
            name: n.to_owned(),
            data_type: ty.to_owned(),
            char_max_length: len,
            numeric_precision: (ty == "numeric").then_some(38),
            numeric_scale: (ty == "numeric").then_some(10),
            nullable: true,
            udt_name: String::new(),
        };
        let source = SourceTable {
            name: name.clone(),
            columns: vec![
                source_column("id", "int8"),
                source_column("amount", "numeric"),
                source_column("doc", "jsonb"),
            ],
            primary_key: vec!["id".to_owned()],
        };
        let target = TargetTable {
            name,
            columns: vec![
                target_column("id", "bigint", None),
                target_column("amount", "numeric", None),
                target_column("doc", "super", None),
            ],
        };
        Translator::new(&source, &target, "id").unwrap()
    }

    #[test]
    fn every_statement_is_redshift_sql_with_bound_values_only() {
        let w = StagedWriter::new(&translator(), StageLimits::default());
        for sql in [
            w.create_sql(),
            w.load_sql(3),
            w.move_sql(),
            w.truncate_sql(),
        ] {
            is_valid_redshift_sql(&sql).unwrap_or_else(|e| panic!("{e}\n{sql}"));
            assert!(!sql.to_ascii_uppercase().contains("ON CONFLICT"), "{sql}");
        }
        is_valid_redshift_sql(&query_group_sql("dmsguard")).unwrap();
        let load = w.load_sql(3);
        assert!(load.contains("$9") && !load.contains("$10"), "{load}");
        assert!(load.contains("JSON_PARSE($3::varchar(65535))"), "{load}");
        assert!(w
            .create_sql()
            .starts_with("CREATE TEMP TABLE \"dmsguard_stage_"));
        assert!(w.move_sql().contains("WHERE NOT EXISTS"));
    }

    #[test]
    fn statements_stay_under_the_parameter_limit() {
        let w = StagedWriter::new(&translator(), StageLimits::default());
        assert_eq!(w.max_rows_per_statement(), 1000);
        let wide = StagedWriter::new(
            &translator(),
            StageLimits {
                statement_rows: usize::MAX,
                ..StageLimits::default()
            },
        );
        assert_eq!(wide.max_rows_per_statement(), MAX_PARAMS_PER_STATEMENT / 3);
        let small = StagedWriter::new(
            &translator(),
            StageLimits {
                statement_rows: 7,
                ..StageLimits::default()
            },
        );
        assert_eq!(small.max_rows_per_statement(), 7);
    }
}
