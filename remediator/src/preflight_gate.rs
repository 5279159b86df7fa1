//! Which fixes may run: what each fix needs, in terms of the preflight checks, and the gate
//! holding the latest verdict per fix. The checks run at start-up, after each config reload
//! and every `remediator.preflight_interval`; a fix whose needed checks fail is disabled (its
//! alerts are recorded as `refused` jobs naming the failed checks and their fixes) until they
//! pass again. Scheduled steps and owed resumes are never held back: a fix that stopped a task
//! still resumes it.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use chrono::{DateTime, Utc};
use dmsguard_pipeline::config::{Config, FixName};
use dmsguard_pipeline::preflight::{self, Check, CheckKind, Report};
use dmsguard_pipeline::reload::LiveConfig;
use serde_json::json;
use tokio::sync::{watch, Notify};

use crate::metrics::Metrics;

/// The preflight checks `fix` needs to act with `config`. One entry per fix; the match makes a
/// new fix fail to compile until it says what it needs. A fix lists the connection under a
/// table check too: when the connection fails, the table checks behind it are not run at all.
/// Whether `StopReplicationTask`/`StartReplicationTask` are allowed is not among the checks:
/// the request has no dry-run (only the task's ARN,
/// <https://docs.aws.amazon.com/dms/latest/APIReference/API_StopReplicationTask.html>), so a
/// denial shows as the job's error.
pub fn needs(fix: FixName, config: &Config) -> Vec<CheckKind> {
    use CheckKind::*;
    // The AWS identity comes first in every AWS check: when it fails, none of them runs.
    let aws = |kinds: &[CheckKind]| [&[AwsIdentity], kinds].concat();
    match fix {
        // Reads DMS's rolled-back UPDATE in the system views, the intermediate and target
        // tables, the source rows; inserts; stops and resumes the task.
        // F1 reads the source primary even with a replica (`FixContext::connect_source_primary`).
        FixName::OneByOne => {
            let source: &[CheckKind] = if config.source_replica.is_some() {
                &[SourcePrimaryConnection, SourcePrimaryTable]
            } else {
                &[SourceConnection, SourceTable]
            };
            [
                &[RedshiftConnection, SystemView, TargetTable, TargetInsert][..],
                source,
                &aws(&[DmsTask]),
            ]
            .concat()
        }
        // Stops and resumes every task on the instance.
        FixName::Memory => aws(&[DmsTask, ReplicationInstance]),
        // Stops every task before the cluster's maintenance window (DescribeClusters).
        FixName::Maintenance => aws(&[DmsTask, RedshiftCluster]),
        // Gap finder on both sides, source reads, inserts; a table with a task waits for the
        // task's progress (CloudWatch latency, DescribeReplicationTasks).
        FixName::MissingRows => {
            let mut kinds = vec![
                SourceConnection,
                SourceTable,
                RedshiftConnection,
                TargetTable,
                TargetInsert,
            ];
            if config.tables.iter().any(|t| t.task.is_some()) {
                kinds.extend(aws(&[DmsTask]));
            }
            kinds
        }
        // Stops and resumes the task.
        FixName::StalledTask => aws(&[DmsTask]),
        // Content comparison on both sides, source reads, rewrites (DELETE and INSERT on the
        // tables that enable it); a table with a task waits for the task's progress.
        FixName::DivergentRows => {
            let mut kinds = vec![
                SourceConnection,
                SourceTable,
                RedshiftConnection,
                TargetTable,
                TargetInsert,
                TargetDelete,
            ];
            if config.tables.iter().any(|t| t.task.is_some()) {
                kinds.extend(aws(&[DmsTask]));
            }
            kinds
        }
    }
}

/// What the gate says about a fix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The checks have not finished yet: the fix's jobs wait in the queue.
    Pending,
    /// Every check the fix needs passed.
    Enabled,
    /// These checks the fix needs failed.
    Refused(Vec<Check>),
}

/// The verdict on `fix` with `config` from `report`.
pub fn verdict(fix: FixName, config: &Config, report: &Report) -> Verdict {
    let needed = needs(fix, config);
    let failed: Vec<Check> = report
        .checks
        .iter()
        .filter(|c| !c.ok && needed.contains(&c.kind))
        .cloned()
        .collect();
    if failed.is_empty() {
        Verdict::Enabled
    } else {
        Verdict::Refused(failed)
    }
}

/// The job summary and ledger details of an alert refused because `failed` checks fail.
pub fn refusal(fix: FixName, failed: &[Check]) -> (String, serde_json::Value) {
    let list: Vec<String> = failed
        .iter()
        .map(|c| {
            format!(
                "{}: {} (fix: {})",
                c.name,
                c.detail,
                c.fix
                    .as_deref()
                    .unwrap_or("see `dmsguard-remediator preflight`")
            )
        })
        .collect();
    let summary = format!(
        "Refused: fix `{fix}` is disabled until its preflight checks pass; failing: {}",
        list.join("; ")
    );
    let details = json!({
        "refused_by": "preflight",
        "failed_checks": failed
            .iter()
            .map(|c| json!({ "check": c.name, "detail": c.detail, "fix": c.fix }))
            .collect::<Vec<_>>(),
    });
    (summary, details)
}

/// The longest a disabled fix waits for its next check.
pub const RECHECK_REFUSED: std::time::Duration = std::time::Duration::from_secs(60);

struct State {
    verdicts: BTreeMap<FixName, Verdict>,
    checked_at: Option<DateTime<Utc>>,
}

/// The verdict per fix, shared by the webhook, the worker and the recheck loop. Cheap to clone.
#[derive(Clone)]
pub struct FixGate {
    state: Arc<RwLock<State>>,
    recheck: Arc<Notify>,
    metrics: Metrics,
}

impl FixGate {
    /// A gate for `config`: every fix pending until the first checks when
    /// `remediator.preflight` is on, every fix enabled (no checks) when it is off.
    pub fn new(config: &Config, metrics: Metrics) -> Self {
        let initial = if config.remediator.preflight {
            Verdict::Pending
        } else {
            Verdict::Enabled
        };
        let gate = Self {
            state: Arc::new(RwLock::new(State {
                verdicts: FixName::ALL
                    .into_iter()
                    .map(|f| (f, initial.clone()))
                    .collect(),
                checked_at: None,
            })),
            recheck: Arc::new(Notify::new()),
            metrics,
        };
        gate.export(config);
        gate
    }

    /// The verdict on `fix` now.
    pub fn verdict(&self, fix: FixName) -> Verdict {
        self.read()
            .verdicts
            .get(&fix)
            .cloned()
            .unwrap_or(Verdict::Enabled)
    }

    /// When the checks last finished.
    pub fn checked_at(&self) -> Option<DateTime<Utc>> {
        self.read().checked_at
    }

    /// Counts an alert refused for `fix`.
    pub fn count_refused(&self, fix: FixName) {
        self.metrics.alert_refused(fix);
    }

    /// Runs the checks again soon (a config reload asks for it).
    pub fn request_recheck(&self) {
        self.recheck.notify_one();
    }

    /// Takes the verdicts of `report`; logs each fix whose verdict changed (all of them the
    /// first time) and updates `dmsguard_remediator_fix_enabled`.
    pub fn apply(&self, config: &Config, report: &Report) {
        let mut changed = Vec::new();
        {
            let mut state = self.state.write().unwrap_or_else(|e| e.into_inner());
            for fix in FixName::ALL {
                let new = verdict(fix, config, report);
                if state.verdicts.get(&fix) != Some(&new) {
                    changed.push((fix, new.clone()));
                }
                state.verdicts.insert(fix, new);
            }
            state.checked_at = Some(Utc::now());
        }
        self.metrics
            .set_preflight_last_run(Utc::now().timestamp_millis() as f64 / 1000.0);
        for (fix, verdict) in changed {
            match verdict {
                Verdict::Refused(failed) => {
                    let (summary, _) = refusal(fix, &failed);
                    tracing::warn!(fix = %fix, failed = failed.len(), reason = %summary, "Fix disabled: preflight checks it needs fail; its alerts are refused.");
                }
                _ => tracing::info!(fix = %fix, "Fix enabled: the preflight checks it needs pass."),
            }
        }
        self.export(config);
    }

    /// Sets `fix_enabled` per fix (1 when enabled in the config and its checks pass) and
    /// `fix_failed_checks` (how many of its checks fail; 0 for a fix the config turns off, which
    /// nobody needs to be told about).
    fn export(&self, config: &Config) {
        for fix in FixName::ALL {
            let configured = config.remediator.fixes.get(fix).enabled;
            let verdict = self.verdict(fix);
            self.metrics
                .set_fix_enabled(fix, configured && verdict == Verdict::Enabled);
            let failed = match verdict {
                Verdict::Refused(failed) if configured => failed.len(),
                _ => 0,
            };
            self.metrics.set_fix_failed_checks(fix, failed);
        }
    }

    /// Runs the preflight checks now, at every `remediator.preflight_interval` and whenever a
    /// recheck is requested, until `shutdown` turns true. The configuration is read from
    /// `config` each time (a reload may change the interval and the fix switches).
    pub async fn run(self, config: LiveConfig, mut shutdown: watch::Receiver<bool>) {
        let mut logged_once = false;
        loop {
            let current = config.current();
            let report = preflight::run(&current, true).await;
            let before: Vec<Verdict> = FixName::ALL.map(|f| self.verdict(f)).to_vec();
            self.apply(&current, &report);
            let after: Vec<Verdict> = FixName::ALL.map(|f| self.verdict(f)).to_vec();
            if !logged_once || before != after {
                report.log("dmsguard-remediator");
                logged_once = true;
            } else {
                tracing::debug!(
                    failed = report.checks.iter().filter(|c| !c.ok).count(),
                    "Preflight rechecked; no fix changed."
                );
            }
            // A disabled fix is looked at again within a minute: a passing blip (a network
            // error at the check) or a grant given since does not keep it off a whole interval.
            let refused = FixName::ALL
                .iter()
                .any(|f| matches!(self.verdict(*f), Verdict::Refused(_)));
            let wait = if refused {
                current.remediator.preflight_interval.min(RECHECK_REFUSED)
            } else {
                current.remediator.preflight_interval
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = self.recheck.notified() => {}
                _ = shutdown.changed() => return,
            }
            if *shutdown.borrow() {
                return;
            }
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(kind: CheckKind, name: &str, ok: bool) -> Check {
        Check {
            name: name.into(),
            kind,
            ok,
            detail: if ok { "fine".into() } else { "denied".into() },
            fix: (!ok).then(|| format!("grant {name}")),
        }
    }

    fn config(tables: &str) -> Config {
        let text = format!(
            "[source]\nurl = \"postgresql://u@h/s\"\n[redshift]\nurl = \"postgresql://u@h/r\"\n\
             [[tasks]]\nname = \"t1\"\nreplication_instance = \"i1\"\n{tables}"
        );
        Config::from_toml(&text, &|_| None).unwrap()
    }

    #[test]
    fn every_fix_needs_something_and_a_failed_check_disables_only_the_fixes_needing_it() {
        let config = config("[[tables]]\nsource = \"public.orders\"\ntask = \"t1\"\n");
        for fix in FixName::ALL {
            assert!(!needs(fix, &config).is_empty(), "{fix}");
        }
        let report = Report {
            checks: vec![
                check(CheckKind::SourceConnection, "source connection", true),
                check(CheckKind::SourceTable, "source table public.orders", false),
                check(CheckKind::DmsTask, "DMS task t1", true),
                check(CheckKind::AwsIdentity, "AWS identity", true),
            ],
        };
        for fix in FixName::ALL {
            let v = verdict(fix, &config, &report);
            let reads_source = needs(fix, &config).contains(&CheckKind::SourceTable);
            match v {
                Verdict::Refused(failed) => {
                    assert!(reads_source, "{fix} refused without reading the source");
                    assert_eq!(failed.len(), 1);
                    assert_eq!(failed[0].name, "source table public.orders");
                }
                Verdict::Enabled => assert!(!reads_source, "{fix} should be refused"),
                Verdict::Pending => panic!("{fix}: a report never leaves a fix pending"),
            }
        }
        assert!(matches!(
            verdict(FixName::MissingRows, &config, &report),
            Verdict::Refused(_)
        ));
        assert_eq!(
            verdict(FixName::StalledTask, &config, &report),
            Verdict::Enabled
        );
    }

    #[test]
    fn with_a_replica_only_one_by_one_needs_the_primary() {
        let replica = config(
            "[[tables]]\nsource = \"public.orders\"\n[source.replica]\nurl = \"postgresql://r@h/s\"\n",
        );
        let report = Report {
            checks: vec![check(
                CheckKind::SourcePrimaryTable,
                "source table public.orders",
                false,
            )],
        };
        for fix in FixName::ALL {
            let refused = matches!(verdict(fix, &replica, &report), Verdict::Refused(_));
            assert_eq!(refused, fix == FixName::OneByOne, "{fix}");
        }
        let without = config("[[tables]]\nsource = \"public.orders\"\n");
        assert!(!needs(FixName::OneByOne, &without).contains(&CheckKind::SourcePrimaryTable));
    }

    #[test]
    fn missing_rows_needs_aws_only_for_tables_with_a_task() {
        let with_task = config("[[tables]]\nsource = \"public.orders\"\ntask = \"t1\"\n");
        let without = config("[[tables]]\nsource = \"public.orders\"\n");
        assert!(needs(FixName::MissingRows, &with_task).contains(&CheckKind::DmsTask));
        assert!(!needs(FixName::MissingRows, &without).contains(&CheckKind::AwsIdentity));
        let report = Report {
            checks: vec![check(CheckKind::AwsIdentity, "AWS identity", false)],
        };
        assert_eq!(
            verdict(FixName::MissingRows, &without, &report),
            Verdict::Enabled
        );
        assert!(matches!(
            verdict(FixName::MissingRows, &with_task, &report),
            Verdict::Refused(_)
        ));
    }

    /// `dmsguard_remediator_fix_failed_checks` counts the failed checks of the fixes the config
    /// enables, and stays 0 for one it turns off (the alert on it would be noise).
    #[test]
    fn failed_checks_are_exported_for_the_fixes_the_config_enables() {
        let mut registry = prometheus_client::registry::Registry::with_prefix("dmsguard");
        let metrics = Metrics::register(&mut registry);
        let config = config(
            "[[tables]]\nsource = \"public.orders\"\ntask = \"t1\"\n\
             [remediator.fixes.one_by_one]\nenabled = false\n",
        );
        let gate = FixGate::new(&config, metrics);
        let report = Report {
            checks: vec![
                check(CheckKind::SourceTable, "source table public.orders", false),
                check(CheckKind::TargetTable, "target table public.orders", false),
                check(CheckKind::DmsTask, "DMS task t1", true),
            ],
        };
        gate.apply(&config, &report);
        let value = |fix: &str| {
            let mut text = String::new();
            prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
            let series = format!("dmsguard_remediator_fix_failed_checks{{fix=\"{fix}\"}} ");
            text.lines()
                .find_map(|l| l.strip_prefix(&series).map(str::to_owned))
                .unwrap_or_else(|| panic!("no {series} in\n{text}"))
        };
        assert_eq!(value("missing_rows"), "2", "both failed checks it needs");
        assert_eq!(value("one_by_one"), "0", "turned off in the config");
        assert_eq!(value("stalled_task"), "0", "its checks pass");
        gate.apply(
            &config,
            &Report {
                checks: vec![check(
                    CheckKind::SourceTable,
                    "source table public.orders",
                    true,
                )],
            },
        );
        assert_eq!(value("missing_rows"), "0", "the checks pass again");
    }

    #[test]
    fn a_refusal_names_each_failed_check_with_its_fix() {
        let failed = vec![check(
            CheckKind::TargetInsert,
            "target table t insert",
            false,
        )];
        let (summary, details) = refusal(FixName::MissingRows, &failed);
        assert!(summary.contains("`missing_rows`"), "{summary}");
        assert!(
            summary.contains("target table t insert: denied (fix: grant target table t insert)"),
            "{summary}"
        );
        assert_eq!(
            details["failed_checks"][0]["fix"],
            "grant target table t insert"
        );
    }
}
