//! Counts ids missing in the target per table and UTC day, and the newest replicated id's lag,
//! with the gap finder (`dmsguard_pipeline::gap_finder`). Only ids replication has passed are
//! judged (`dmsguard_pipeline::frontier`): a quiet table's dropped newest rows are found, and
//! rows still on their way are not counted.

use std::sync::Arc;

use chrono::{Duration as ChronoDuration, Utc};
use dmsguard_pipeline::clock::Clock;
use dmsguard_pipeline::config::{Config, DatabaseConfig};
use dmsguard_pipeline::frontier::{FrontierConfig, IdSamples, ProgressBoard};
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
    /// The task replicating it: its progress is the table's.
    task: Option<String>,
    /// The source's newest id over time.
    samples: IdSamples,
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
    progress: ProgressBoard,
    frontier: FrontierConfig,
    clock: Clock,
    /// Whether the source reads go to `[source.replica]`: its replay point bounds progress.
    replica: bool,
}

impl GapsProbe {
    pub fn new(
        config: Arc<Config>,
        metrics: GapMetrics,
        progress: ProgressBoard,
    ) -> Result<Self, ProbeError> {
        let tables = config
            .tables
            .iter()
            .map(|t| {
                Ok(GapTable {
                    label: t.source.clone(),
                    spec: TableSpec::from_config(t)?,
                    day_column: t.day_column.clone(),
                    task: t.task.clone(),
                    samples: IdSamples::default(),
                })
            })
            .collect::<Result<_, ProbeError>>()?;
        Ok(Self {
            tables,
            source_db: config.source_reads().clone(),
            target_db: config.redshift.database(),
            source: None,
            target: None,
            finder: GapFinder::default(),
            metrics,
            progress,
            frontier: config.frontier.clone(),
            clock: Clock::from_config(&config.clock),
            replica: config.source_replica.is_some(),
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
        let today = self.clock.today();
        // Ids read from a replica are complete only up to its replay point (see
        // `dmsguard_pipeline::replica`); without a replica the source sees every commit.
        let replayed = if self.replica {
            let state = dmsguard_pipeline::replica::replay_state(source)
                .await
                .map_err(|e| ProbeError::Invalid(e.to_string()))?;
            self.metrics
                .replica_lag_seconds
                .set(state.lag.as_secs_f64());
            Some(state)
        } else {
            None
        };
        for table in &mut self.tables {
            let seen = Utc::now();
            let (s, t) = tokio::join!(
                gap_finder::source_max_id(source, &table.spec),
                gap_finder::target_max_id(target, &table.spec),
            );
            let (source_max, target_max) = (s?, t?);
            let lag = source_max.unwrap_or(0) - target_max.unwrap_or(0);
            self.metrics
                .max_id_lag
                .get_or_create(&TableLabels {
                    table: table.label.clone(),
                })
                .set(lag);
            if let Some(max) = source_max {
                table.samples.record(seen, max);
            }
            // A table with a task follows that task's progress only: while the task is stopped
            // DMS publishes no latency and nothing written since may be judged.
            let progress = match &table.task {
                Some(task) => self.progress.get(task),
                None => Some(self.frontier.fallback_progress(Utc::now())),
            }
            .map(|p| {
                dmsguard_pipeline::replica::bound_progress(
                    p,
                    replayed.map(|r| r.replayed_as_of(Utc::now())),
                )
            });
            // An empty source table has nothing to miss.
            let frontier = match source_max {
                None => Some(i64::MIN),
                Some(_) => progress.and_then(|p| table.samples.frontier(&self.frontier, p)),
            };
            let Some(frontier) = frontier else {
                tracing::debug!(table = %table.label, "No settled id yet: gaps not judged.");
                continue;
            };
            if source_max.is_some() {
                self.metrics
                    .frontier_id
                    .get_or_create(&TableLabels {
                        table: table.label.clone(),
                    })
                    .set(frontier);
            }
            let Some(day_column) = &table.day_column else {
                continue;
            };
            for window in DayWindow::ALL {
                let day = today - ChronoDuration::days(window.days_back());
                let range =
                    gap_finder::id_range_for_day(source, &table.spec, day_column, day).await?;
                let (missing, extra) = match range.and_then(|r| r.up_to(frontier)) {
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
