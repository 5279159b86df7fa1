//! Counts ids missing in the target per table and UTC day, and the newest replicated id's lag,
//! with the gap finder (`dmsguard_pipeline::gap_finder`).

use std::sync::Arc;

use chrono::{Duration as ChronoDuration, Utc};
use dmsguard_pipeline::config::{quote_ident, Config, DatabaseConfig};
use dmsguard_pipeline::gap_finder::{self, GapFinder, TableSpec};
use tokio_postgres::Client;

use super::{Probe, ProbeError};
use crate::metrics::{DayWindow, GapMetrics, ProbeName, TableLabels, TableWindowLabels};

/// One configured table as the probe checks it.
#[derive(Debug, Clone)]
struct GapTable {
    /// The `table` label.
    label: String,
    spec: TableSpec,
    day_column: Option<String>,
}

/// The gaps probe: per configured table, missing ids today and yesterday, and the id lag.
pub struct GapsProbe {
    tables: Vec<GapTable>,
    source_db: DatabaseConfig,
    target_db: DatabaseConfig,
    source: Option<Client>,
    target: Option<Client>,
    finder: GapFinder,
    metrics: GapMetrics,
}

impl GapsProbe {
    pub fn new(config: Arc<Config>, metrics: GapMetrics) -> Result<Self, ProbeError> {
        let tables = config
            .tables
            .iter()
            .map(|t| {
                Ok(GapTable {
                    label: t.source.clone(),
                    spec: TableSpec::from_config(t)?,
                    day_column: t.day_column.clone(),
                })
            })
            .collect::<Result<_, ProbeError>>()?;
        Ok(Self {
            tables,
            source_db: config.source.clone(),
            target_db: config.redshift.database(),
            source: None,
            target: None,
            finder: GapFinder::default(),
            metrics,
        })
    }

    async fn connect(&mut self) -> Result<(), ProbeError> {
        if self.source.as_ref().is_none_or(Client::is_closed) {
            self.source = Some(dmsguard_pipeline::db::connect(&self.source_db).await?);
        }
        if self.target.as_ref().is_none_or(Client::is_closed) {
            self.target = Some(dmsguard_pipeline::db::connect(&self.target_db).await?);
        }
        Ok(())
    }

    async fn refresh_inner(&mut self) -> Result<(), ProbeError> {
        self.connect().await?;
        let (Some(source), Some(target)) = (&self.source, &self.target) else {
            return Err(ProbeError::Invalid("not connected".to_owned()));
        };
        let today = Utc::now().date_naive();
        for table in &self.tables {
            let id = quote_ident(&table.spec.id_column);
            // BIGINT whatever the id's type: a source `int4` id is `INTEGER` on the target.
            let max_sql = |name: String| format!("SELECT CAST(MAX({id}) AS BIGINT) FROM {name}");
            let source_sql = max_sql(table.spec.source.quoted());
            let target_sql = max_sql(table.spec.target.quoted());
            let (s, t) = tokio::join!(
                source.query_one(&source_sql, &[]),
                target.query_one(&target_sql, &[]),
            );
            let source_max: Option<i64> = s?.get(0);
            let target_max: Option<i64> = t?.get(0);
            let lag = source_max.unwrap_or(0) - target_max.unwrap_or(0);
            self.metrics
                .max_id_lag
                .get_or_create(&TableLabels {
                    table: table.label.clone(),
                })
                .set(lag);
            let Some(day_column) = &table.day_column else {
                continue;
            };
            for window in DayWindow::ALL {
                let day = today - ChronoDuration::days(window.days_back());
                // Ids above the target's newest are in flight (lag), not missing.
                let range =
                    gap_finder::id_range_for_day(source, &table.spec, day_column, day).await?;
                let range = range.zip(target_max).and_then(|(r, max)| r.up_to(max));
                let (missing, extra) = match range {
                    Some(range) => {
                        let report = self.finder.find(source, target, &table.spec, range).await?;
                        (report.missing.len(), report.extra.len())
                    }
                    None => (0, 0),
                };
                let labels = TableWindowLabels {
                    table: table.label.clone(),
                    window,
                };
                self.metrics
                    .missing_ids
                    .get_or_create(&labels)
                    .set(i64::try_from(missing).unwrap_or(i64::MAX));
                self.metrics
                    .extra_ids
                    .get_or_create(&labels)
                    .set(i64::try_from(extra).unwrap_or(i64::MAX));
            }
        }
        Ok(())
    }
}

impl Probe for GapsProbe {
    fn name(&self) -> ProbeName {
        ProbeName::Gaps
    }

    async fn refresh(&mut self) -> Result<(), ProbeError> {
        let result = self.refresh_inner().await;
        if result.is_err() {
            self.source = None;
            self.target = None;
        }
        result
    }
}
