//! Rewriting target rows from the source: the repair of rows whose content diverged (an UPDATE
//! DMS skipped) and of ids the source no longer has (a DELETE DMS skipped).
//!
//! Each batch of ids is handled in one transaction on the target:
//!
//! 1. `LOCK target`, first: Redshift enforces no key and runs snapshot isolation, and a
//!    transaction's snapshot is taken at its first SELECT, DML or listed DDL statement, so the
//!    lock comes before any of them ("LOCK", <https://docs.aws.amazon.com/redshift/latest/dg/r_LOCK.html>;
//!    "Isolation levels in Amazon Redshift",
//!    <https://docs.aws.amazon.com/redshift/latest/dg/c_serial_isolation.html>). DMS cannot
//!    write the table until the transaction ends.
//! 2. Which of the ids the target holds (`SELECT DISTINCT id … WHERE id IN ($1, …)`, scalar bound
//!    parameters: Redshift has no array parameters).
//! 3. The source rows of those ids, read now, after the lock: every change DMS applied to the
//!    target before the lock was committed on the source before this read, so the row written
//!    is never older than the one it replaces. A later source change is DMS's to apply; its
//!    UPDATE sets every column, its DELETE removes the row.
//! 4. The rows, translated by the type translator, are loaded into the session's temporary
//!    stage (`dmsguard_pipeline::staging`) within the transaction, then
//!    `DELETE FROM target USING stage WHERE target.id = stage.id` and
//!    `INSERT INTO target SELECT … FROM stage` ("DELETE",
//!    <https://docs.aws.amazon.com/redshift/latest/dg/r_DELETE.html>: USING names the joined
//!    table). Duplicated ids collapse into one row.
//! 5. Ids listed as extra that the target still holds and the source still lacks are deleted,
//!    only when the caller allows it (`delete_extra`).
//!
//! The transaction commits, then the stage is emptied with `TRUNCATE` on its own (it commits the
//! transaction it runs in, "TRUNCATE", <https://docs.aws.amazon.com/redshift/latest/dg/r_TRUNCATE.html>).
//! Ids the target no longer holds are left alone (DMS or the `missing_rows` fix inserts them;
//! inserting here would race DMS's own INSERT into a duplicate); divergent ids the source no
//! longer has are left to DMS's DELETE. Running twice writes the same rows again: safe.
//! A transaction Redshift cannot serialize is retried whole.

use std::collections::{BTreeMap, HashSet};

use tokio_postgres::types::ToSql;
use tokio_postgres::Client;

use crate::catalogue::SourceTable;
use crate::config::quote_ident;
use crate::staging::{StageLimits, StagedWriter};
use crate::type_translator::{
    fetch_source_rows, is_serialization_failure, lock_sql, FetchError, InsertError, Translator,
    MAX_PARAMS_PER_STATEMENT,
};

/// Why a rewrite failed.
#[derive(Debug, thiserror::Error)]
pub enum RewriteError {
    #[error("{0}")]
    Fetch(#[from] FetchError),
    #[error("{0}")]
    Insert(#[from] InsertError),
    #[error("rewriting rows of {table} failed while {what}: {source}")]
    Query {
        table: String,
        what: &'static str,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error("rewriting rows of {table}: still conflicting with concurrent writers after {attempts} attempts")]
    Conflict { table: String, attempts: u32 },
}

/// What a rewrite did, in rows.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Rewritten {
    /// Divergent ids rewritten from the source.
    pub rewritten: u64,
    /// Extra ids deleted (held by the target, absent from the source at repair time).
    pub extra_deleted: u64,
    /// Extra ids left in the target: `delete_extra` is off, or the source has the id again.
    pub extra_kept: u64,
    /// Divergent ids the source no longer has: left for DMS's DELETE.
    pub gone_from_source: u64,
    /// Ids the target no longer holds: left for DMS (or the `missing_rows` fix).
    pub absent_in_target: u64,
    /// Rows the translator refused (not written; the reasons are in `errors`).
    pub failed: u64,
    pub errors: Vec<String>,
}

impl Rewritten {
    fn add(&mut self, other: Rewritten) {
        self.rewritten += other.rewritten;
        self.extra_deleted += other.extra_deleted;
        self.extra_kept += other.extra_kept;
        self.gone_from_source += other.gone_from_source;
        self.absent_in_target += other.absent_in_target;
        self.failed += other.failed;
        self.errors.extend(other.errors);
    }
}

/// Errors kept in a result; the count is always complete.
const MAX_ERRORS: usize = 100;

/// Whether an id was listed as divergent (present on both sides) or extra (target only).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Listed {
    Divergent,
    Extra,
}

/// Rewrites rows of one target table from its source. Use one target client for all calls: the
/// stage lives in its session.
pub struct RowRewriter {
    source_table: SourceTable,
    source_id: String,
    translator: Translator,
    writer: StagedWriter,
    limits: StageLimits,
    batch_rows: usize,
}

impl RowRewriter {
    /// `source_id` is the id column as the source spells it; `batch_rows` ids are handled per
    /// locked transaction.
    pub fn new(
        source_table: SourceTable,
        source_id: &str,
        translator: &Translator,
        limits: StageLimits,
        batch_rows: usize,
    ) -> Self {
        Self {
            source_table,
            source_id: source_id.to_owned(),
            translator: translator.clone(),
            writer: StagedWriter::new(translator, limits),
            limits,
            batch_rows: batch_rows.clamp(1, MAX_PARAMS_PER_STATEMENT),
        }
    }

    fn table(&self) -> String {
        self.translator.table().to_string()
    }

    fn id(&self) -> String {
        quote_ident(self.translator.id_column())
    }

    /// `SELECT DISTINCT id FROM target WHERE id IN ($1, …, $n)`.
    pub fn present_sql(&self, n: usize) -> String {
        format!(
            "SELECT DISTINCT CAST({id} AS BIGINT) FROM {} WHERE {id} IN ({})",
            self.translator.table().quoted(),
            placeholders(n),
            id = self.id(),
        )
    }

    /// `DELETE FROM target USING stage WHERE target.id = stage.id`.
    pub fn delete_staged_sql(&self) -> String {
        let table = self.translator.table().quoted();
        let stage = self.writer.stage_name();
        format!(
            "DELETE FROM {table} USING {stage} WHERE {table}.{id} = {stage}.{id}",
            id = self.id()
        )
    }

    /// `INSERT INTO target (cols) SELECT cols FROM stage`.
    pub fn insert_staged_sql(&self) -> String {
        let names: Vec<String> = self.translator.columns().map(quote_ident).collect();
        format!(
            "INSERT INTO {} ({cols}) SELECT {cols} FROM {}",
            self.translator.table().quoted(),
            self.writer.stage_name(),
            cols = names.join(", ")
        )
    }

    /// `DELETE FROM target WHERE id IN ($1, …, $n)`.
    pub fn delete_ids_sql(&self, n: usize) -> String {
        format!(
            "DELETE FROM {} WHERE {} IN ({})",
            self.translator.table().quoted(),
            self.id(),
            placeholders(n)
        )
    }

    /// The statements a rewrite sends, values as `$n` placeholders (shown for one id), with what
    /// each does: what dry-run prints.
    pub fn plan_sql(&self, delete_extra: bool) -> Vec<(String, String)> {
        let mut steps = vec![
            (
                "Once per run: a session temporary staging table shaped like the target.".to_owned(),
                self.writer.create_sql(),
            ),
            (
                format!(
                    "Per batch of up to {} ids, one transaction: take LOCK on the target first, then list which of the ids it holds.",
                    self.batch_rows
                ),
                [lock_sql(self.translator.table()), self.present_sql(1)].join(";\n"),
            ),
            (
                format!(
                    "Read those rows from the source {} now (after the lock), translate them, and load them into the stage in the same transaction.",
                    self.source_table.name
                ),
                self.writer.load_sql(1),
            ),
            (
                "Replace each held id's row with the source's: delete it (duplicates too) and insert the staged row.".to_owned(),
                [self.delete_staged_sql(), self.insert_staged_sql()].join(";\n"),
            ),
        ];
        if delete_extra {
            steps.push((
                "Delete the extra ids the target holds and the source still lacks (delete_extra = true).".to_owned(),
                self.delete_ids_sql(1),
            ));
        }
        steps.push((
            "Commit, then empty the stage (TRUNCATE commits on its own).".to_owned(),
            self.writer.truncate_sql(),
        ));
        steps
    }

    /// Rewrites `divergent` ids from the source and, with `delete_extra`, deletes the `extra`
    /// ids the source still lacks; see the module's documentation. `after_batch` is called
    /// with the highest id handled and the result so far after each committed batch.
    pub async fn rewrite(
        &mut self,
        source: &Client,
        target: &mut Client,
        divergent: &[i64],
        extra: &[i64],
        delete_extra: bool,
        mut after_batch: impl FnMut(i64, &Rewritten),
    ) -> Result<Rewritten, RewriteError> {
        let mut listed: BTreeMap<i64, Listed> = BTreeMap::new();
        for id in extra {
            listed.insert(*id, Listed::Extra);
        }
        for id in divergent {
            listed.insert(*id, Listed::Divergent);
        }
        let listed: Vec<(i64, Listed)> = listed.into_iter().collect();
        let mut total = Rewritten::default();
        if listed.is_empty() {
            return Ok(total);
        }
        self.writer.create(&*target).await?;
        for batch in listed.chunks(self.batch_rows) {
            let mut attempt = 0;
            let done = loop {
                attempt += 1;
                match self.batch(source, target, batch, delete_extra).await {
                    Ok(done) => break done,
                    Err(Attempt::Conflict(e)) => {
                        self.writer.forget_staged();
                        if attempt >= self.limits.max_attempts.max(1) {
                            return Err(RewriteError::Conflict {
                                table: self.table(),
                                attempts: attempt,
                            });
                        }
                        tracing::debug!(table = %self.table(), attempt, error = %crate::report::ErrorChain(&e), "Rewrite conflicted with a concurrent writer; retrying.");
                        tokio::time::sleep(std::time::Duration::from_millis(
                            10 * u64::from(attempt),
                        ))
                        .await;
                    }
                    Err(Attempt::Failed(e)) => {
                        self.writer.forget_staged();
                        return Err(e);
                    }
                }
            };
            target
                .batch_execute(&self.writer.truncate_sql())
                .await
                .map_err(|source| RewriteError::Query {
                    table: self.table(),
                    what: "emptying the staging table",
                    source,
                })?;
            self.writer.forget_staged();
            let mut done = done;
            let room = MAX_ERRORS.saturating_sub(total.errors.len());
            done.errors.truncate(room);
            total.add(done);
            if let Some((last, _)) = batch.last() {
                after_batch(*last, &total);
            }
        }
        Ok(total)
    }

    /// One batch in one locked transaction.
    async fn batch(
        &mut self,
        source: &Client,
        target: &mut Client,
        batch: &[(i64, Listed)],
        delete_extra: bool,
    ) -> Result<Rewritten, Attempt> {
        let table = self.table();
        let query = |what: &'static str| {
            let table = table.clone();
            move |source: tokio_postgres::Error| {
                if is_serialization_failure(&source) {
                    Attempt::Conflict(source)
                } else {
                    Attempt::Failed(RewriteError::Query {
                        table: table.clone(),
                        what,
                        source,
                    })
                }
            }
        };
        let tx = target
            .transaction()
            .await
            .map_err(query("starting the transaction"))?;
        tx.batch_execute(&lock_sql(self.translator.table()))
            .await
            .map_err(query("taking LOCK on the target"))?;
        let ids: Vec<i64> = batch.iter().map(|(id, _)| *id).collect();
        let held: HashSet<i64> = {
            let params: Vec<&(dyn ToSql + Sync)> =
                ids.iter().map(|id| id as &(dyn ToSql + Sync)).collect();
            tx.query(&self.present_sql(ids.len()), &params)
                .await
                .map_err(query("listing the ids the target holds"))?
                .iter()
                .map(|r| r.get::<_, i64>(0))
                .collect()
        };
        let wanted: Vec<i64> = ids.iter().copied().filter(|id| held.contains(id)).collect();
        let rows = fetch_source_rows(source, &self.source_table, &self.source_id, &wanted)
            .await
            .map_err(|e| Attempt::Failed(e.into()))?;
        let in_source: HashSet<i64> = rows.iter().map(|r| r.id).collect();
        let mut done = Rewritten::default();
        let mut extra_gone = Vec::new();
        for (id, listed) in batch {
            match (held.contains(id), in_source.contains(id), listed) {
                (false, _, _) => done.absent_in_target += 1,
                (true, false, Listed::Divergent) => done.gone_from_source += 1,
                (true, false, Listed::Extra) if delete_extra => extra_gone.push(*id),
                (true, false, Listed::Extra) => done.extra_kept += 1,
                // An id listed as extra that the source has again is rewritten like a
                // divergent one.
                (true, true, _) => {}
            }
        }
        let (good, bad) = self.translator.translate_all(&rows);
        done.failed = bad.len() as u64;
        for error in bad {
            tracing::warn!(table = %table, error = %crate::report::ErrorChain(&error), "Row cannot be translated; not rewritten.");
            done.errors.push(error.to_string());
        }
        if !good.is_empty() {
            self.writer.stage(&tx, &good).await.map_err(|e| match e {
                InsertError::Stage { source, .. } if is_serialization_failure(&source) => {
                    Attempt::Conflict(source)
                }
                e => Attempt::Failed(e.into()),
            })?;
            tx.execute(&self.delete_staged_sql(), &[])
                .await
                .map_err(query("deleting the rows to rewrite"))?;
            done.rewritten = tx
                .execute(&self.insert_staged_sql(), &[])
                .await
                .map_err(query("inserting the rewritten rows"))?;
        }
        if !extra_gone.is_empty() {
            let params: Vec<&(dyn ToSql + Sync)> = extra_gone
                .iter()
                .map(|id| id as &(dyn ToSql + Sync))
                .collect();
            tx.execute(&self.delete_ids_sql(extra_gone.len()), &params)
                .await
                .map_err(query("deleting extra ids"))?;
            done.extra_deleted = extra_gone.len() as u64;
        }
        tx.commit().await.map_err(query("committing"))?;
        Ok(done)
    }

    /// Drops the stage.
    pub async fn finish(self, target: &Client) -> Result<(), RewriteError> {
        target
            .batch_execute(&format!(
                "DROP TABLE IF EXISTS {}",
                self.writer.stage_name()
            ))
            .await
            .map_err(|source| RewriteError::Query {
                table: self.table(),
                what: "dropping the staging table",
                source,
            })
    }
}

/// How one attempt of a batch ended badly.
enum Attempt {
    /// A conflict with a concurrent writer: retry the batch.
    Conflict(tokio_postgres::Error),
    Failed(RewriteError),
}

/// `$1, $2, …, $n`.
fn placeholders(n: usize) -> String {
    (1..=n)
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalogue::{SourceColumn, SourceTypeKind, TargetColumn, TargetTable};
    use crate::config::QualifiedName;
    use crate::statement_parser::is_valid_redshift_sql;

    fn rewriter() -> RowRewriter {
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
        let target_column = |n: &str, ty: &str| TargetColumn {
            name: n.to_owned(),
            data_type: ty.to_owned(),
            char_max_length: None,
            numeric_precision: None,
            numeric_scale: None,
            nullable: true,
            udt_name: String::new(),
        };
        let source = SourceTable {
            name: name.clone(),
            columns: vec![source_column("id", "int8"), source_column("note", "text")],
            primary_key: vec!["id".to_owned()],
        };
        let target = TargetTable {
            name,
            columns: vec![
                target_column("id", "bigint"),
                target_column("note", "character varying"),
            ],
        };
        let translator = Translator::new(&source, &target, "id").unwrap();
        RowRewriter::new(source, "id", &translator, StageLimits::default(), 500)
    }

    #[test]
    fn every_statement_is_redshift_sql_with_scalar_parameters() {
        let r = rewriter();
        for (_, sql) in r.plan_sql(true) {
            for statement in sql.split(";\n") {
                is_valid_redshift_sql(statement).unwrap_or_else(|e| panic!("{e}\n{statement}"));
                assert!(!statement.contains("ANY("), "{statement}");
            }
        }
        assert_eq!(
            r.present_sql(3),
            "SELECT DISTINCT CAST(\"id\" AS BIGINT) FROM \"public\".\"orders\" WHERE \"id\" IN ($1, $2, $3)"
        );
        assert_eq!(
            r.delete_ids_sql(2),
            "DELETE FROM \"public\".\"orders\" WHERE \"id\" IN ($1, $2)"
        );
        let delete = r.delete_staged_sql();
        assert!(
            delete.starts_with("DELETE FROM \"public\".\"orders\" USING \"dmsguard_stage_"),
            "{delete}"
        );
        assert!(r
            .insert_staged_sql()
            .contains("(\"id\", \"note\") SELECT \"id\", \"note\""));
    }

    #[test]
    fn the_plan_deletes_extra_ids_only_when_allowed() {
        let r = rewriter();
        let with = r.plan_sql(true);
        let without = r.plan_sql(false);
        assert_eq!(with.len(), without.len() + 1);
        assert!(without
            .iter()
            .all(|(_, sql)| !sql.contains("WHERE \"id\" IN ($1)") || sql.starts_with("LOCK")));
        assert!(with
            .iter()
            .any(|(_, sql)| sql.starts_with("DELETE FROM \"public\".\"orders\" WHERE")));
    }

    #[test]
    fn batches_stay_under_the_parameter_limit() {
        let name = rewriter();
        assert_eq!(name.batch_rows, 500);
        let r = RowRewriter::new(
            name.source_table.clone(),
            "id",
            &name.translator,
            StageLimits::default(),
            usize::MAX,
        );
        assert_eq!(r.batch_rows, MAX_PARAMS_PER_STATEMENT);
    }
}
