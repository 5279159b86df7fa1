//! Counts DMS statements on Redshift by table and kind, and rolled-back DMS UPDATEs, reading
//! the system views incrementally; also counts new rows in `awsdms_apply_exceptions`.

use std::collections::HashMap;
use std::sync::Arc;

use chrono::NaiveDateTime;
use dmsguard_pipeline::config::{Config, DatabaseConfig, QualifiedName};
use dmsguard_pipeline::statement_parser::{
    parse_dms_statement, StatementKind as ParsedKind, StatementParseError,
};
use dmsguard_pipeline::system_views::{self, Cursor, DmsQuery, Outcome, StatementReader};
use tokio_postgres::Client;

use super::{table_label, task_label, Probe, ProbeError};
use crate::metrics::{ProbeName, StatementKind, StatementMetrics, TableKindLabels, TableLabels};

/// Pages read per refresh at most; the rest waits for the next refresh.
const MAX_PAGES_PER_REFRESH: usize = 20;

/// The statements probe and what it remembers between refreshes.
pub struct RedshiftStatementsProbe {
    config: Arc<Config>,
    database: DatabaseConfig,
    client: Option<Client>,
    reader: StatementReader,
    lookback: chrono::Duration,
    /// Where the next statement read continues; `None` before the first run.
    cursor: Option<Cursor>,
    /// Apply exceptions are read from this error time on (inclusive) ...
    exceptions_since: Option<NaiveDateTime>,
    /// ... minus the rows already counted at exactly that time, by table.
    exceptions_counted_at_since: HashMap<String, i64>,
    metrics: StatementMetrics,
}

impl RedshiftStatementsProbe {
    pub fn new(config: Arc<Config>, metrics: StatementMetrics) -> Self {
        // Every configured table's counters exist from the start at 0: `increase()` cannot
        // count a series' first sample, so a counter born at 1 would never fire an alert.
        for table in &config.tables {
            let labels = TableLabels {
                table: table.source.clone(),
            };
            metrics.rolled_back_updates.get_or_create(&labels).inc_by(0);
            metrics.apply_exceptions.get_or_create(&labels).inc_by(0);
            for kind in [
                StatementKind::Insert,
                StatementKind::Update,
                StatementKind::Delete,
            ] {
                metrics
                    .statements
                    .get_or_create(&TableKindLabels {
                        table: table.source.clone(),
                        kind,
                        task: table.task.clone().unwrap_or_default(),
                    })
                    .inc_by(0);
            }
        }
        let reader = StatementReader::from_config(&config.redshift);
        Self {
            database: config.redshift.database(),
            lookback: chrono::Duration::from_std(config.exporter.statements_lookback)
                .unwrap_or(chrono::Duration::hours(1)),
            config,
            client: None,
            reader,
            cursor: None,
            exceptions_since: None,
            exceptions_counted_at_since: HashMap::new(),
            metrics,
        }
    }

    async fn client(&mut self) -> Result<&Client, ProbeError> {
        if self.client.as_ref().is_none_or(Client::is_closed) {
            self.client = Some(dmsguard_pipeline::db::connect(&self.database).await?);
        }
        Ok(self.client.as_ref().expect("connected above"))
    }

    async fn refresh_inner(&mut self) -> Result<(), ProbeError> {
        let now = chrono::Utc::now().naive_utc();
        let start = now - self.lookback;
        let reader = self.reader.clone();
        for _ in 0..MAX_PAGES_PER_REFRESH {
            let cursor = self.cursor.unwrap_or(Cursor::Since(start));
            let page = reader.read(self.client().await?, cursor, now).await?;
            // Counting and moving the cursor happen together, with no await in between: a
            // cancelled refresh neither loses nor double-counts a statement.
            for query in &page.queries {
                self.count(query);
            }
            self.cursor = Some(page.next);
            if !page.full || page.next == cursor {
                break;
            }
        }
        let since = self.exceptions_since.unwrap_or(start);
        let schema = self.config.redshift.control_schema.clone();
        let rows =
            system_views::read_apply_exceptions(self.client().await?, &schema, since).await?;
        let newest = rows.iter().map(|r| r.error_time).max();
        for row in &rows {
            let counted = if row.error_time == since {
                self.exceptions_counted_at_since
                    .get(&row.table)
                    .copied()
                    .unwrap_or(0)
            } else {
                0
            };
            let new = u64::try_from(row.rows - counted).unwrap_or(0);
            if new > 0 {
                self.metrics
                    .apply_exceptions
                    .get_or_create(&TableLabels {
                        table: table_label(&self.config, &row.table),
                    })
                    .inc_by(new);
            }
        }
        match newest {
            Some(t) => {
                self.exceptions_counted_at_since = rows
                    .iter()
                    .filter(|r| r.error_time == t)
                    .map(|r| (r.table.clone(), r.rows))
                    .collect();
                self.exceptions_since = Some(t);
            }
            None => self.exceptions_since = Some(since),
        }
        Ok(())
    }

    fn count(&self, query: &DmsQuery) {
        let (kind, target) = match classify(&query.text) {
            Ok(parsed) => parsed,
            Err(reason) => {
                tracing::debug!(query_id = query.query_id, %reason, "DMS statement not parsed.");
                self.metrics.unparsed.inc();
                return;
            }
        };
        // DMS's own tables (the intermediate awsdms_changes*, the exceptions table) are not
        // replicated tables.
        if target.table.starts_with("awsdms_") {
            return;
        }
        let target = target.to_string();
        let table = table_label(&self.config, &target);
        self.metrics
            .statements
            .get_or_create(&TableKindLabels {
                table: table.clone(),
                kind,
                task: task_label(&self.config, &target),
            })
            .inc();
        if kind == StatementKind::Update && query.outcome == Outcome::RolledBack {
            self.metrics
                .rolled_back_updates
                .get_or_create(&TableLabels { table })
                .inc();
        }
    }
}

impl Probe for RedshiftStatementsProbe {
    fn name(&self) -> ProbeName {
        ProbeName::RedshiftStatements
    }

    async fn refresh(&mut self) -> Result<(), ProbeError> {
        let result = self.refresh_inner().await;
        if result.is_err() {
            // The session may be broken; reconnect on the next refresh.
            self.client = None;
        }
        result
    }
}

/// Kind and target table of a DMS statement, from the statement parser.
fn classify(sql: &str) -> Result<(StatementKind, QualifiedName), StatementParseError> {
    let statement = parse_dms_statement(sql)?;
    let kind = match statement.kind {
        ParsedKind::Insert => StatementKind::Insert,
        ParsedKind::Update => StatementKind::Update,
        ParsedKind::Delete => StatementKind::Delete,
    };
    Ok((kind, statement.target))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_the_lab_shapes() {
        let c = "/* Applied by AWS DMS 3.5.3 */ ";
        let cases = [
            (format!("{c}INSERT INTO \"public\".\"orders\" (\"id\",\"status\") SELECT CAST(changes.\"seg1\" AS bigint), CAST(changes.\"c2\" AS varchar(20)) FROM \"public\".\"awsdms_changes1a2b3c4d\" changes WHERE changes.\"tbl\" = 'public.orders' AND changes.\"op\" = 'I' AND changes.\"seq\" >= 1 AND changes.\"seq\" <= 250"), StatementKind::Insert),
            (format!("{c}DELETE FROM \"public\".\"orders\" USING \"public\".\"awsdms_changes1a2b3c4d\" changes WHERE \"public\".\"orders\".\"id\" = CAST(changes.\"seg1\" AS bigint) AND changes.\"tbl\" = 'public.orders' AND changes.\"op\" = 'D' AND changes.\"seq\" >= 251 AND changes.\"seq\" <= 300"), StatementKind::Delete),
            (format!("{c}UPDATE \"public\".\"orders\" SET \"status\" = CAST(changes.\"c2\" AS varchar(20)) FROM \"public\".\"awsdms_changes1a2b3c4d\" changes WHERE \"public\".\"orders\".\"id\" = CAST(changes.\"seg1\" AS bigint) AND changes.\"tbl\" = 'public.orders' AND changes.\"op\" = 'U' AND changes.\"seq\" >= 301 AND changes.\"seq\" <= 420"), StatementKind::Update),
            (format!("{c}UPDATE \"public\".\"orders\" SET \"status\" = 'x' WHERE \"id\" = 7"), StatementKind::Update),
        ];
        for (sql, kind) in cases {
            let (k, t) = classify(&sql).unwrap();
            assert_eq!(k, kind, "{sql}");
            assert_eq!(t.to_string(), "public.orders");
        }
        assert!(classify("/* Applied by AWS DMS */ SELECT 1").is_err());
        assert!(classify("UPDATE orders SET").is_err());
    }
}
