//! Counts ids missing in the target per table and UTC day, and the newest replicated id's lag,
//! with the gap finder (`dmsguard_pipeline::gap_finder`). Only ids replication has passed are
//! judged (`dmsguard_pipeline::frontier`): a quiet table's dropped newest rows are found, and
//! rows still on their way are not counted.
//!
//! Tables with `divergent_rows = true` also get a content comparison of each window read
//! (`dmsguard_pipeline::content`): `dmsguard_table_divergent_rows` counts the ids whose row
//! differs, once two comparisons separated by more than the replication latency (now minus the
//! task's progress, plus `[frontier] margin`) both saw them ([`Persistence`]).
//!
//! Today's window is read on every run; yesterday's, once read in full and clean, only every
//! `[exporter] finished_window_interval` ([`super::window_scans`]): between reads its gauges
//! keep their last values.
//!
//! A run reads at most the table's scan budget of ids per side, shared by the windows it reads
//! ([`super::scan_budget`]): a larger window is read in slices over successive runs, and its
//! counts sum each slice's latest read. A finished window counts as read in full when a pass of
//! slices over all of it ended.

use std::sync::Arc;

use chrono::{DateTime, Duration as ChronoDuration, Utc};
use dmsguard_pipeline::clock::Clock;
use dmsguard_pipeline::config::{Config, DatabaseConfig};
use dmsguard_pipeline::content::{ContentComparer, ContentOptions, Persistence};
use dmsguard_pipeline::frontier::{FrontierConfig, IdSamples, ProgressBoard};
use dmsguard_pipeline::gap_finder::{self, GapFinder, TableSpec};
use tokio_postgres::Client;

use super::scan_budget::{self, Found, WindowWalk};
use super::window_scans::WindowScans;
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
    /// The content comparison, for tables with `divergent_rows = true`.
    content: Option<ContentState>,
    /// Ids read per side per run at most (`scan_budget_rows`).
    budget: u64,
    /// Per window (`DayWindow::index`), how far the slices got and what each last found.
    walks: [WindowWalk; 2],
}

impl GapTable {
    /// What reading one id costs against the budget: the gap finder's read, and the content
    /// comparison's read of the same id when there is one.
    fn cost_per_id(&self) -> u64 {
        if self.content.is_some() {
            2
        } else {
            1
        }
    }
}

/// A table's content comparison: planned once from both catalogues, and per window which
/// differences have persisted.
#[derive(Debug, Clone, Default)]
struct ContentState {
    comparer: Option<ContentComparer>,
    today: Persistence,
    yesterday: Persistence,
}

impl ContentState {
    fn persistence(&mut self, window: DayWindow) -> &mut Persistence {
        match window {
            DayWindow::Today => &mut self.today,
            DayWindow::Yesterday => &mut self.yesterday,
        }
    }
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
    /// When yesterday's window is read again.
    scans: WindowScans,
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
                    content: t.divergent_rows.then(ContentState::default),
                    budget: t.scan_budget(&config.exporter),
                    walks: Default::default(),
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
            scans: WindowScans::new(config.exporter.finished_window_interval),
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

    /// One run as if the calendar showed `now` (the probe's clock when scheduled): the day
    /// windows and when yesterday's is due follow it. Replication progress keeps the real
    /// clock.
    pub async fn refresh_at(&mut self, now: DateTime<Utc>) -> Result<(), ProbeError> {
        let result = self.refresh_inner(now).await;
        if result.is_err() {
            self.source = None;
            self.target = None;
        }
        result
    }

    async fn refresh_inner(&mut self, now: DateTime<Utc>) -> Result<(), ProbeError> {
        self.connect().await?;
        let (Some(source), Some(target)) = (&self.source, &self.target) else {
            return Err(ProbeError::Invalid("not connected".to_owned()));
        };
        let today = now.date_naive();
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
            // The windows read this run, and what reading the rest of each pass would cost.
            let mut plans = Vec::new();
            for window in DayWindow::ALL {
                let day = today - ChronoDuration::days(window.days_back());
                if table.walks[window.index()].follow_day(day) {
                    // A new day is a new window: what the comparison saw of the old one is moot.
                    if let Some(state) = &mut table.content {
                        *state.persistence(window) = Persistence::default();
                    }
                }
                let range =
                    gap_finder::id_range_for_day(source, &table.spec, day_column, day).await?;
                if window.is_finished() && !self.scans.due(&table.label, day, range, now) {
                    tracing::debug!(table = %table.label, %day, "Finished window read in full recently and its ids unchanged: not read again yet.");
                    continue;
                }
                let judged = range.and_then(|r| r.up_to(frontier));
                let need = judged.map_or(0, |j| {
                    table.walks[window.index()]
                        .remaining(j)
                        .saturating_mul(table.cost_per_id())
                });
                plans.push((window, day, range, judged, need));
            }
            let shares =
                scan_budget::split(table.budget, &plans.iter().map(|p| p.4).collect::<Vec<_>>());
            for ((window, day, range, judged, _), share) in plans.into_iter().zip(shares) {
                let labels = TableWindowLabels {
                    table: table.label.clone(),
                    window,
                };
                let Some(judged) = judged else {
                    // Nothing replication has passed yet, or a day without rows (read in full).
                    self.metrics.missing_ids.get_or_create(&labels).set(0);
                    self.metrics.extra_ids.get_or_create(&labels).set(0);
                    if table.content.is_some() {
                        self.metrics.divergent_rows.get_or_create(&labels).set(0);
                    }
                    self.metrics
                        .scan_progress
                        .get_or_create(&labels)
                        .set(if range.is_none() { 1.0 } else { 0.0 });
                    if window.is_finished() {
                        self.scans
                            .record(&table.label, day, range, now, range.is_none(), true);
                    }
                    continue;
                };
                let cost = table.cost_per_id();
                let walk = &mut table.walks[window.index()];
                let slice = walk.next_slice(judged, share / cost);
                let report = self.finder.find(source, target, &table.spec, slice).await?;
                let mut found = Found {
                    missing: report.missing,
                    extra: report.extra,
                    ..Found::default()
                };
                if let Some(state) = &mut table.content {
                    if state.comparer.is_none() {
                        state.comparer = Some(
                            ContentComparer::load(
                                source,
                                target,
                                &table.spec,
                                ContentOptions::default(),
                            )
                            .await?,
                        );
                    }
                    if let Some(comparer) = &state.comparer {
                        let started = Utc::now();
                        let report = comparer.compare(source, target, slice).await?;
                        let finished = Utc::now();
                        // Everything committed before `progress` is applied: a change is in
                        // flight at most this long (plus the longest write transaction).
                        let latency = progress
                            .map(|p| (started - p).to_std().unwrap_or_default())
                            .unwrap_or_default()
                            + self.frontier.margin;
                        found.divergent = state
                            .persistence(window)
                            .observe(&report, started, finished, latency)
                            .divergent_ids;
                        found.unconfirmed = [
                            &report.divergent_ids,
                            &report.extra_ids,
                            &report.missing_ids,
                        ]
                        .into_iter()
                        .flatten()
                        .copied()
                        .collect();
                    }
                }
                let pass = walk.record(slice, judged, range, &found, now);
                let counts = walk.counts(judged);
                self.metrics
                    .scanned_ids
                    .get_or_create(&labels)
                    .inc_by(scan_budget::span(slice).saturating_mul(cost));
                self.metrics
                    .scan_progress
                    .get_or_create(&labels)
                    .set(walk.progress(judged));
                if let Some(pass) = pass {
                    // The probe's clock: a test's injected instant, production's real one.
                    #[allow(clippy::cast_precision_loss)]
                    let at = now.timestamp_millis() as f64 / 1000.0;
                    self.metrics
                        .scan_pass_completed
                        .get_or_create(&labels)
                        .set(at);
                    if window.is_finished() {
                        // Complete when replication had passed every id of the window and its
                        // ids did not change during the pass.
                        let complete = Some(judged) == range && pass.range_unchanged;
                        self.scans
                            .record(&table.label, day, range, now, complete, counts.clean);
                    }
                }
                let gauge = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
                self.metrics
                    .missing_ids
                    .get_or_create(&labels)
                    .set(gauge(counts.missing));
                self.metrics
                    .extra_ids
                    .get_or_create(&labels)
                    .set(gauge(counts.extra));
                if table.content.is_some() {
                    self.metrics
                        .divergent_rows
                        .get_or_create(&labels)
                        .set(gauge(counts.divergent));
                }
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
        let now = self.clock.now();
        self.refresh_at(now).await
    }
}
