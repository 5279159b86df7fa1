//! The `Probe` trait and the scheduler that refreshes each probe in the background.
//!
//! Each probe runs in its own task on its own interval with a timeout. Runs never overlap: a
//! tick that comes while a run is still going is skipped. A failing run sets
//! `probe_success{probe}` to 0 and is logged once when the probe's state changes, not on every
//! tick; the other probes are unaffected.

pub mod cloudwatch;
pub mod dms;
pub mod gaps;
pub mod maintenance;
pub mod redshift_statements;
pub mod scan_budget;
pub mod window_scans;

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use chrono::{DateTime, Utc};
use dmsguard_pipeline::config::ProbeSchedule;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;

use crate::metrics::{ProbeLabels, ProbeMetrics, ProbeName};
use dmsguard_pipeline::report::ErrorChain;

/// Why one refresh of a probe failed.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error(transparent)]
    Connect(#[from] dmsguard_pipeline::db::ConnectError),
    #[error("query failed: {0}")]
    Query(#[from] tokio_postgres::Error),
    #[error(transparent)]
    Gap(#[from] dmsguard_pipeline::gap_finder::GapError),
    #[error(transparent)]
    Content(#[from] dmsguard_pipeline::content::ContentError),
    #[error(transparent)]
    SystemView(#[from] dmsguard_pipeline::system_views::SystemViewError),
    #[error("AWS {call} failed: {message}")]
    Aws { call: &'static str, message: String },
    #[error("{0}")]
    Invalid(String),
    #[error("refresh timed out after {0:?}")]
    Timeout(Duration),
}

impl ProbeError {
    /// An AWS SDK error with its full cause chain (the SDK's `Display` alone says "service error").
    pub fn aws<E: std::error::Error>(call: &'static str, error: E) -> Self {
        ProbeError::Aws {
            call,
            message: aws_sdk_cloudwatch::error::DisplayErrorContext(error).to_string(),
        }
    }
}

/// One source of truth, refreshed in the background.
pub trait Probe: Send + 'static {
    /// The `probe` label.
    fn name(&self) -> ProbeName;

    /// Reads the source and updates this probe's metrics. Must leave the metrics consistent if
    /// cancelled at an await point (a timeout drops the future).
    fn refresh(&mut self) -> impl Future<Output = Result<(), ProbeError>> + Send;
}

/// What the landing page shows about a probe.
#[derive(Debug, Clone, Default)]
pub struct ProbeStatus {
    pub enabled: bool,
    pub interval: Duration,
    pub runs: u64,
    pub last_run: Option<DateTime<Utc>>,
    pub last_duration: Option<Duration>,
    /// `None` before the first run.
    pub last_ok: Option<bool>,
    pub last_error: Option<String>,
    pub last_success: Option<DateTime<Utc>>,
}

/// The status of every probe, shared between the schedulers and the landing page.
#[derive(Debug, Default)]
pub struct StatusBoard {
    probes: Mutex<Vec<(ProbeName, ProbeStatus)>>,
}

impl StatusBoard {
    fn update(&self, name: ProbeName, f: impl FnOnce(&mut ProbeStatus)) {
        let mut probes = self.probes.lock().unwrap_or_else(|e| e.into_inner());
        match probes.iter_mut().find(|(n, _)| *n == name) {
            Some((_, status)) => f(status),
            None => {
                let mut status = ProbeStatus::default();
                f(&mut status);
                probes.push((name, status));
                probes.sort_by_key(|(n, _)| *n);
            }
        }
    }

    /// A copy of every probe's status, in probe order.
    pub fn snapshot(&self) -> Vec<(ProbeName, ProbeStatus)> {
        self.probes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Records a probe that is configured off (or has nothing to watch).
    pub fn disabled(&self, name: ProbeName, reason: &str) {
        self.update(name, |s| {
            s.enabled = false;
            s.last_error = Some(reason.to_owned());
        });
    }
}

/// Starts `probe` in the background on `schedule`.
pub fn spawn<P: Probe>(
    probe: P,
    schedule: &ProbeSchedule,
    metrics: ProbeMetrics,
    board: Arc<StatusBoard>,
) -> JoinHandle<()> {
    let (_fixed, schedule) = watch::channel(schedule.clone());
    spawn_live(probe, schedule, metrics, board)
}

/// Whether two schedules differ in anything the scheduler uses.
pub fn schedule_changed(a: &ProbeSchedule, b: &ProbeSchedule) -> bool {
    a.enabled != b.enabled || a.interval != b.interval || a.timeout != b.timeout
}

/// Starts `probe` in the background on the schedule `schedule` holds; a new schedule (a
/// reload) applies after the run in progress: a new interval counts from the change, a new
/// timeout applies to the next run, and `enabled = false` pauses the probe until enabled again.
pub fn spawn_live<P: Probe>(
    mut probe: P,
    mut schedule: watch::Receiver<ProbeSchedule>,
    metrics: ProbeMetrics,
    board: Arc<StatusBoard>,
) -> JoinHandle<()> {
    let name = probe.name();
    let labels = ProbeLabels { probe: name };
    let mut current = schedule.borrow_and_update().clone();
    // On the board before the task starts: the landing page never misses a running probe.
    board.update(name, |s| {
        s.enabled = current.enabled;
        s.interval = current.interval;
    });
    tokio::spawn(async move {
        let mut was_ok: Option<bool> = None;
        // Whether the sender is still there to announce changes.
        let mut live = true;
        let mut first = true;
        loop {
            let (interval, timeout) = (current.interval, current.timeout);
            board.update(name, |s| {
                s.enabled = current.enabled;
                s.interval = interval;
                if !current.enabled {
                    s.last_error = Some("disabled in config".to_owned());
                }
            });
            if !current.enabled {
                tracing::info!(probe = %name, "Probe paused: disabled in config.");
                if !live || schedule.changed().await.is_err() {
                    return;
                }
                current = schedule.borrow_and_update().clone();
                continue;
            }
            // The first run starts at once; after a change, the new interval counts from now.
            let start = if first {
                tokio::time::Instant::now()
            } else {
                tokio::time::Instant::now() + interval
            };
            first = false;
            let mut ticks = tokio::time::interval_at(start, interval);
            // A run longer than the interval makes the next ticks late: skip them, never queue.
            ticks.set_missed_tick_behavior(MissedTickBehavior::Skip);
            loop {
                tokio::select! {
                    changed = schedule.changed(), if live => {
                        match changed {
                            Ok(()) => {
                                current = schedule.borrow_and_update().clone();
                                tracing::info!(
                                    probe = %name,
                                    enabled = current.enabled,
                                    interval = %humantime::format_duration(current.interval),
                                    timeout = %humantime::format_duration(current.timeout),
                                    "Probe schedule changed."
                                );
                                break;
                            }
                            Err(_) => live = false,
                        }
                    }
                    _ = ticks.tick() => {
                        let started = Instant::now();
                        let result = match tokio::time::timeout(timeout, probe.refresh()).await {
                            Ok(result) => result,
                            Err(_) => Err(ProbeError::Timeout(timeout)),
                        };
                        let took = started.elapsed();
                        let now = SystemTime::now();
                        metrics
                            .duration
                            .get_or_create(&labels)
                            .set(took.as_secs_f64());
                        let ok = result.is_ok();
                        metrics.success.get_or_create(&labels).set(i64::from(ok));
                        if ok {
                            let unix = now
                                .duration_since(SystemTime::UNIX_EPOCH)
                                .unwrap_or_default()
                                .as_secs_f64();
                            metrics.last_success.get_or_create(&labels).set(unix);
                        }
                        match (&result, was_ok) {
                            (Err(error), Some(true) | None) => {
                                tracing::warn!(probe = %name, error = %ErrorChain(error), "Probe failing.");
                            }
                            (Ok(()), Some(false)) => {
                                tracing::info!(probe = %name, "Probe recovered.");
                            }
                            (Ok(()), None) => {
                                tracing::debug!(probe = %name, took_ms = took.as_millis() as u64, "Probe first refresh succeeded.");
                            }
                            _ => {}
                        }
                        was_ok = Some(ok);
                        let at: DateTime<Utc> = now.into();
                        board.update(name, |s| {
                            s.runs += 1;
                            s.last_run = Some(at);
                            s.last_duration = Some(took);
                            s.last_ok = Some(ok);
                            match &result {
                                Ok(()) => {
                                    s.last_error = None;
                                    s.last_success = Some(at);
                                }
                                Err(e) => s.last_error = Some(dmsguard_pipeline::report::error_chain(e)),
                            }
                        });
                    }
                }
            }
        }
    })
}

/// The `table` label of a Redshift target table: the configured source name when the table
/// is configured, else the target name itself.
pub fn table_label(config: &dmsguard_pipeline::config::Config, target: &str) -> String {
    config
        .table(target)
        .map_or_else(|| target.to_owned(), |t| t.source.clone())
}

/// The `task` label of a target table: its configured task, or empty.
pub fn task_label(config: &dmsguard_pipeline::config::Config, target: &str) -> String {
    config
        .table(target)
        .and_then(|t| t.task.clone())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use prometheus_client::registry::Registry;

    use super::*;

    /// A probe that takes `run` per refresh and fails while `failing` is set.
    struct SlowProbe {
        run: Duration,
        in_flight: Arc<AtomicUsize>,
        max_in_flight: Arc<AtomicUsize>,
        failing: Arc<std::sync::atomic::AtomicBool>,
    }

    impl Probe for SlowProbe {
        fn name(&self) -> ProbeName {
            ProbeName::Gaps
        }

        async fn refresh(&mut self) -> Result<(), ProbeError> {
            let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
            self.max_in_flight.fetch_max(now, Ordering::SeqCst);
            tokio::time::sleep(self.run).await;
            self.in_flight.fetch_sub(1, Ordering::SeqCst);
            if self.failing.load(Ordering::SeqCst) {
                Err(ProbeError::Invalid("source down".to_owned()))
            } else {
                Ok(())
            }
        }
    }

    fn schedule(interval_ms: u64, timeout_ms: u64) -> ProbeSchedule {
        ProbeSchedule {
            enabled: true,
            interval: Duration::from_millis(interval_ms),
            timeout: Duration::from_millis(timeout_ms),
        }
    }

    async fn wait_for(what: &str, mut check: impl FnMut() -> bool) {
        let start = Instant::now();
        while !check() {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "timed out: {what}"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[tokio::test]
    async fn runs_never_overlap_and_failures_flip_success() {
        let metrics = ProbeMetrics::register(&mut Registry::default());
        let board = Arc::new(StatusBoard::default());
        let failing = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let max_in_flight = Arc::new(AtomicUsize::new(0));
        let probe = SlowProbe {
            run: Duration::from_millis(30),
            in_flight: Arc::default(),
            max_in_flight: max_in_flight.clone(),
            failing: failing.clone(),
        };
        // The interval is shorter than a run: ticks must be skipped, not run concurrently.
        let handle = spawn(probe, &schedule(5, 1000), metrics.clone(), board.clone());
        let labels = ProbeLabels {
            probe: ProbeName::Gaps,
        };
        let runs = || board.snapshot()[0].1.runs;
        wait_for("five runs", || runs() >= 5).await;
        assert_eq!(max_in_flight.load(Ordering::SeqCst), 1);
        assert_eq!(metrics.success.get_or_create(&labels).get(), 1);
        assert!(metrics.last_success.get_or_create(&labels).get() > 0.0);

        failing.store(true, Ordering::SeqCst);
        wait_for("failure seen", || {
            board.snapshot()[0].1.last_ok == Some(false)
        })
        .await;
        assert_eq!(metrics.success.get_or_create(&labels).get(), 0);
        let status = board.snapshot()[0].1.clone();
        assert_eq!(status.last_error.as_deref(), Some("source down"));
        assert!(
            status.last_success.is_some(),
            "the last success is remembered"
        );

        failing.store(false, Ordering::SeqCst);
        wait_for("recovery", || board.snapshot()[0].1.last_ok == Some(true)).await;
        assert_eq!(metrics.success.get_or_create(&labels).get(), 1);
        handle.abort();
    }

    #[tokio::test]
    async fn a_run_past_its_timeout_is_a_failure() {
        let metrics = ProbeMetrics::register(&mut Registry::default());
        let board = Arc::new(StatusBoard::default());
        let probe = SlowProbe {
            run: Duration::from_secs(60),
            in_flight: Arc::default(),
            max_in_flight: Arc::default(),
            failing: Arc::default(),
        };
        let handle = spawn(probe, &schedule(10, 50), metrics.clone(), board.clone());
        wait_for("a timed-out run", || board.snapshot()[0].1.runs >= 1).await;
        let status = board.snapshot()[0].1.clone();
        assert_eq!(status.last_ok, Some(false));
        assert!(
            status.last_error.unwrap_or_default().contains("timed out"),
            "timeout reported"
        );
        let labels = ProbeLabels {
            probe: ProbeName::Gaps,
        };
        assert_eq!(metrics.success.get_or_create(&labels).get(), 0);
        let took = metrics.duration.get_or_create(&labels).get();
        assert!((0.05..5.0).contains(&took), "duration {took}");
        handle.abort();
    }
}
