//! The remediator's own metrics (`dmsguard_remediator_*`), encoded on `/metrics`.

use dmsguard_pipeline::config::FixName;
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::ledger::JobOutcome;

/// Names below the registry's `dmsguard` prefix (counters get `_total` when encoded).
pub const WEBHOOKS: &str = "remediator_webhooks";
pub const JOBS: &str = "remediator_jobs";
pub const JOB_DURATION_SECONDS: &str = "remediator_job_duration_seconds";
pub const JOBS_IN_FLIGHT: &str = "remediator_jobs_in_flight";
pub const SCHEDULED_STEPS_PENDING: &str = "remediator_scheduled_steps_pending";
pub const RESUMES_OWED: &str = "remediator_resumes_owed";
pub const RESUMES: &str = "remediator_resumes";
pub const REPAIR_ROWS: &str = "remediator_repair_rows";
pub const REPAIR_ROWS_REMAINING: &str = "remediator_repair_rows_remaining";
pub const FIX_ENABLED: &str = "remediator_fix_enabled";
pub const ALERTS_REFUSED: &str = "remediator_alerts_refused";
pub const FIX_FAILED_CHECKS: &str = "remediator_fix_failed_checks";
pub const PREFLIGHT_LAST_RUN: &str = "remediator_preflight_last_run_timestamp_seconds";

/// What became of a row a repair set out to insert.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RepairRowOutcome {
    /// Inserted into the target.
    Inserted,
    /// Another writer (DMS, another run) had inserted it meanwhile; left alone.
    AlreadyPresent,
    /// Deleted at the source since it was found missing (or divergent).
    GoneFromSource,
    /// The translator refused it (a value the target column cannot hold).
    Failed,
    /// A divergent row rewritten from the source (`divergent_rows`).
    Rewritten,
    /// An extra id deleted from the target (`divergent_rows` with `delete_extra`).
    ExtraDeleted,
    /// An extra id left in the target: `delete_extra` is off, or the source has it again.
    ExtraKept,
    /// A divergent id the target no longer holds: left for DMS or `missing_rows`.
    AbsentInTarget,
}

impl RepairRowOutcome {
    /// The outcomes of the repair that inserts missing rows (`missing_rows`).
    pub const INSERTS: [RepairRowOutcome; 4] = [
        RepairRowOutcome::Inserted,
        RepairRowOutcome::AlreadyPresent,
        RepairRowOutcome::GoneFromSource,
        RepairRowOutcome::Failed,
    ];

    /// The outcomes of the repair that rewrites divergent rows (`divergent_rows`).
    pub const REWRITES: [RepairRowOutcome; 6] = [
        RepairRowOutcome::Rewritten,
        RepairRowOutcome::ExtraDeleted,
        RepairRowOutcome::ExtraKept,
        RepairRowOutcome::GoneFromSource,
        RepairRowOutcome::AbsentInTarget,
        RepairRowOutcome::Failed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RepairRowOutcome::Inserted => "inserted",
            RepairRowOutcome::AlreadyPresent => "already_present",
            RepairRowOutcome::GoneFromSource => "gone_from_source",
            RepairRowOutcome::Failed => "failed",
            RepairRowOutcome::Rewritten => "rewritten",
            RepairRowOutcome::ExtraDeleted => "extra_deleted",
            RepairRowOutcome::ExtraKept => "extra_kept",
            RepairRowOutcome::AbsentInTarget => "absent_in_target",
        }
    }
}

impl EncodeLabelValue for RepairRowOutcome {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        std::fmt::Write::write_str(encoder, self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct RepairRowLabels {
    /// The table as configured (`[[tables]] source`), as the exporter labels it.
    pub table: String,
    pub outcome: RepairRowOutcome,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct TableLabels {
    /// The table as configured (`[[tables]] source`), as the exporter labels it.
    pub table: String,
}

/// How an owed resume (a task a fix stopped) was settled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ResumeResult {
    /// The task runs again.
    Resumed,
    /// Given up: the job is `needs_human`.
    NeedsHuman,
}

impl ResumeResult {
    pub const ALL: [ResumeResult; 2] = [ResumeResult::Resumed, ResumeResult::NeedsHuman];

    pub fn as_str(self) -> &'static str {
        match self {
            ResumeResult::Resumed => "resumed",
            ResumeResult::NeedsHuman => "needs_human",
        }
    }
}

impl EncodeLabelValue for ResumeResult {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        std::fmt::Write::write_str(encoder, self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ResumeLabels {
    pub fix: FixLabel,
    pub result: ResumeResult,
}

/// How a webhook request (or one alert in it) was handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WebhookResult {
    /// A firing alert queued a new job.
    Accepted,
    /// A firing alert that already has a job (same fingerprint and startsAt).
    Duplicate,
    /// A resolved notification, recorded.
    Resolved,
    /// An alert no route names: acknowledged, nothing runs.
    UnknownAlert,
    /// A firing alert routed to a fix the preflight checks disabled: recorded as a `refused`
    /// job naming the failed checks; nothing runs.
    Refused,
    /// A routed alert naming a table, task or replication instance the config does not have:
    /// acknowledged with the reason, nothing runs (no failed job pages anyone).
    UnknownTarget,
    /// Missing or wrong bearer token.
    Unauthorized,
    /// Not JSON, wrong version, wrong types, missing labels.
    Invalid,
    /// Body over `remediator.max_body_bytes`.
    TooLarge,
}

impl WebhookResult {
    pub const ALL: [WebhookResult; 9] = [
        WebhookResult::Accepted,
        WebhookResult::Refused,
        WebhookResult::Duplicate,
        WebhookResult::Resolved,
        WebhookResult::UnknownAlert,
        WebhookResult::UnknownTarget,
        WebhookResult::Unauthorized,
        WebhookResult::Invalid,
        WebhookResult::TooLarge,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            WebhookResult::Accepted => "accepted",
            WebhookResult::Duplicate => "duplicate",
            WebhookResult::Resolved => "resolved",
            WebhookResult::Refused => "refused",
            WebhookResult::UnknownAlert => "unknown_alert",
            WebhookResult::UnknownTarget => "unknown_target",
            WebhookResult::Unauthorized => "unauthorized",
            WebhookResult::Invalid => "invalid",
            WebhookResult::TooLarge => "too_large",
        }
    }
}

impl EncodeLabelValue for WebhookResult {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        std::fmt::Write::write_str(encoder, self.as_str())
    }
}

/// A fix as a label value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FixLabel(pub FixName);

impl EncodeLabelValue for FixLabel {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        std::fmt::Write::write_str(encoder, self.0.as_str())
    }
}

impl EncodeLabelValue for JobOutcome {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        std::fmt::Write::write_str(encoder, self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct WebhookLabels {
    pub result: WebhookResult,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct JobLabels {
    pub fix: FixLabel,
    pub outcome: JobOutcome,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct FixLabels {
    pub fix: FixLabel,
}

type HistogramFamily = Family<FixLabels, Histogram, fn() -> Histogram>;

fn duration_histogram() -> Histogram {
    // 0.25 s .. about 68 min: a restart takes seconds, a large repair many minutes.
    Histogram::new(exponential_buckets(0.25, 2.0, 15))
}

/// All remediator metrics.
#[derive(Debug, Clone)]
pub struct Metrics {
    webhooks: Family<WebhookLabels, Counter>,
    jobs: Family<JobLabels, Counter>,
    job_duration: HistogramFamily,
    jobs_in_flight: Family<FixLabels, Gauge>,
    steps_pending: Gauge,
    resumes_owed: Gauge,
    resumes: Family<ResumeLabels, Counter>,
    repair_rows: Family<RepairRowLabels, Counter>,
    repair_rows_remaining: Family<TableLabels, Gauge>,
    fix_enabled: Family<FixLabels, Gauge>,
    alerts_refused: Family<FixLabels, Counter>,
    fix_failed_checks: Family<FixLabels, Gauge>,
    preflight_last_run: Gauge<f64, std::sync::atomic::AtomicU64>,
}

impl Metrics {
    /// Registers every metric, with all closed label values present from the start.
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self {
            webhooks: Family::default(),
            jobs: Family::default(),
            job_duration: HistogramFamily::new_with_constructor(duration_histogram),
            jobs_in_flight: Family::default(),
            steps_pending: Gauge::default(),
            resumes_owed: Gauge::default(),
            resumes: Family::default(),
            repair_rows: Family::default(),
            repair_rows_remaining: Family::default(),
            fix_enabled: Family::default(),
            alerts_refused: Family::default(),
            fix_failed_checks: Family::default(),
            preflight_last_run: Gauge::default(),
        };
        registry.register(
            WEBHOOKS,
            "Webhook requests refused, and alerts in accepted requests, by result",
            metrics.webhooks.clone(),
        );
        registry.register(
            JOBS,
            "Finished remediation jobs by fix and outcome",
            metrics.jobs.clone(),
        );
        registry.register(
            JOB_DURATION_SECONDS,
            "Time from a job's start to its end, in seconds",
            metrics.job_duration.clone(),
        );
        registry.register(
            JOBS_IN_FLIGHT,
            "Jobs this remediator is running now, by fix",
            metrics.jobs_in_flight.clone(),
        );
        registry.register(
            SCHEDULED_STEPS_PENDING,
            "Scheduled steps in the ledger not yet done (e.g. resumes after maintenance)",
            metrics.steps_pending.clone(),
        );
        registry.register(
            RESUMES_OWED,
            "Tasks a fix stopped that are owed a resume in the ledger (not running again yet, no human told yet)",
            metrics.resumes_owed.clone(),
        );
        registry.register(
            RESUMES,
            "Owed resumes settled, by fix and result (resumed, or needs_human: the task stays stopped and a human is told)",
            metrics.resumes.clone(),
        );
        registry.register(
            REPAIR_ROWS,
            "Rows repairs have handled, by table and outcome, counted as each batch commits: missing_rows inserted, already_present, gone_from_source, failed; divergent_rows rewritten, extra_deleted, extra_kept, gone_from_source, absent_in_target, failed",
            metrics.repair_rows.clone(),
        );
        registry.register(
            REPAIR_ROWS_REMAINING,
            "Rows a running repair has still to handle, by table (0 when none runs)",
            metrics.repair_rows_remaining.clone(),
        );
        registry.register(
            FIX_ENABLED,
            "Whether alerts may run the fix (1): enabled in the config and the preflight checks it needs pass; 0 while they fail or have not run yet",
            metrics.fix_enabled.clone(),
        );
        registry.register(
            ALERTS_REFUSED,
            "Firing alerts (and queued jobs) refused because the preflight checks their fix needs fail, by fix",
            metrics.alerts_refused.clone(),
        );
        registry.register(
            FIX_FAILED_CHECKS,
            "Preflight checks a fix the config enables needs that failed in the last run, by fix (0 while they pass, before the first run, and for a fix the config turns off): above 0, its alerts are refused",
            metrics.fix_failed_checks.clone(),
        );
        registry.register(
            PREFLIGHT_LAST_RUN,
            "Unix time the preflight checks that enable and disable fixes last finished (absent: not yet, or remediator.preflight off)",
            metrics.preflight_last_run.clone(),
        );
        for result in WebhookResult::ALL {
            let _ = metrics.webhooks.get_or_create(&WebhookLabels { result });
        }
        for fix in FixName::ALL {
            for outcome in JobOutcome::COUNTED {
                let _ = metrics.jobs.get_or_create(&JobLabels {
                    fix: FixLabel(fix),
                    outcome,
                });
            }
            let _ = metrics
                .job_duration
                .get_or_create(&FixLabels { fix: FixLabel(fix) });
            let _ = metrics
                .jobs_in_flight
                .get_or_create(&FixLabels { fix: FixLabel(fix) });
            let _ = metrics
                .fix_enabled
                .get_or_create(&FixLabels { fix: FixLabel(fix) });
            let _ = metrics
                .alerts_refused
                .get_or_create(&FixLabels { fix: FixLabel(fix) });
            let _ = metrics
                .fix_failed_checks
                .get_or_create(&FixLabels { fix: FixLabel(fix) });
            for result in ResumeResult::ALL {
                let _ = metrics.resumes.get_or_create(&ResumeLabels {
                    fix: FixLabel(fix),
                    result,
                });
            }
        }
        metrics
    }

    pub fn webhook(&self, result: WebhookResult) {
        self.webhooks.get_or_create(&WebhookLabels { result }).inc();
    }

    /// Sets whether alerts may run `fix`.
    pub fn set_fix_enabled(&self, fix: FixName, enabled: bool) {
        self.fix_enabled
            .get_or_create(&FixLabels { fix: FixLabel(fix) })
            .set(i64::from(enabled));
    }

    /// Sets how many preflight checks `fix` needs fail.
    pub fn set_fix_failed_checks(&self, fix: FixName, failed: usize) {
        self.fix_failed_checks
            .get_or_create(&FixLabels { fix: FixLabel(fix) })
            .set(i64::try_from(failed).unwrap_or(i64::MAX));
    }

    /// Records that the preflight checks finished at `unix_seconds`.
    pub fn set_preflight_last_run(&self, unix_seconds: f64) {
        self.preflight_last_run.set(unix_seconds);
    }

    /// Counts an alert (or a queued job) refused because `fix` is disabled by its checks.
    pub fn alert_refused(&self, fix: FixName) {
        self.alerts_refused
            .get_or_create(&FixLabels { fix: FixLabel(fix) })
            .inc();
    }

    /// Counts a finished job (disabled-fix and refused records are not jobs that ran and are
    /// not counted; refusals count in `alerts_refused`).
    pub fn job_finished(&self, fix: FixName, outcome: JobOutcome, seconds: f64) {
        if matches!(outcome, JobOutcome::Disabled | JobOutcome::Refused) {
            return;
        }
        self.jobs
            .get_or_create(&JobLabels {
                fix: FixLabel(fix),
                outcome,
            })
            .inc();
        self.job_duration
            .get_or_create(&FixLabels { fix: FixLabel(fix) })
            .observe(seconds);
    }

    /// Counts a job in flight until the guard drops.
    pub fn in_flight(&self, fix: FixName) -> InFlight {
        let gauge = self
            .jobs_in_flight
            .get_or_create(&FixLabels { fix: FixLabel(fix) })
            .clone();
        gauge.inc();
        InFlight(gauge)
    }

    pub fn set_steps_pending(&self, n: i64) {
        self.steps_pending.set(n);
    }

    pub fn set_resumes_owed(&self, n: i64) {
        self.resumes_owed.set(n);
    }

    /// Counts an owed resume settled.
    pub fn resume_settled(&self, fix: FixName, result: ResumeResult) {
        self.resumes
            .get_or_create(&ResumeLabels {
                fix: FixLabel(fix),
                result,
            })
            .inc();
    }
}

impl Metrics {
    /// Counts `n` rows of a repair of `table` with `outcome`.
    pub fn repair_rows(&self, table: &str, outcome: RepairRowOutcome, n: u64) {
        self.repair_rows
            .get_or_create(&RepairRowLabels {
                table: table.to_owned(),
                outcome,
            })
            .inc_by(n);
    }

    /// Sets the rows a repair of `table` has still to handle; the first call for a table also
    /// creates the repair's row counters (`outcomes`) at 0, so `rate()` sees the first batch.
    pub fn set_repair_rows_remaining(&self, table: &str, n: u64, outcomes: &[RepairRowOutcome]) {
        for &outcome in outcomes {
            let _ = self.repair_rows.get_or_create(&RepairRowLabels {
                table: table.to_owned(),
                outcome,
            });
        }
        self.repair_rows_remaining
            .get_or_create(&TableLabels {
                table: table.to_owned(),
            })
            .set(i64::try_from(n).unwrap_or(i64::MAX));
    }
}

/// Decrements `jobs_in_flight` when dropped.
pub struct InFlight(Gauge);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.dec();
    }
}
