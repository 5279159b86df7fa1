//! The CLI's hand runs and listings, on the same ledger and worker as the service.

pub mod gaps;

use std::fmt::Write as _;
use std::io::{IsTerminal as _, Write as _};

use anyhow::Context;
use dmsguard_pipeline::config::{Config, FixName};
use serde_json::json;

use crate::fixes::FixRegistry;
use crate::ledger::{Admission, JobOutcome, JobSummary, NewJob};
use crate::routing::JobTarget;
use crate::status_page::format_duration;
use crate::worker::JobReport;
use crate::Core;

/// The target of a hand run; the error names the missing option.
pub fn target(
    fix: FixName,
    task: Option<String>,
    table: Option<String>,
    replication_instance: Option<String>,
) -> anyhow::Result<JobTarget> {
    JobTarget::for_fix(
        fix,
        task.as_deref(),
        table.as_deref(),
        replication_instance.as_deref(),
    )
    .map_err(|e| {
        anyhow::anyhow!(
            "{} (pass it as --{})",
            e,
            e.rsplit('`').nth(1).unwrap_or("task").replace('_', "-")
        )
    })
}

/// The options of a hand run: the window of `missing_rows` (recorded as job labels) and
/// whether to skip the preflight gate.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// A UTC day, `YYYY-MM-DD`.
    pub day: Option<String>,
    pub from_id: Option<i64>,
    pub to_id: Option<i64>,
    /// Run even if the preflight checks the fix needs fail.
    pub skip_preflight: bool,
}

/// Runs `fix` by hand: records a job in the ledger (cooldowns do not apply), plans, prints the
/// plan, executes unless `dry_run`. Returns the exit code: 0 succeeded or planned, 1 otherwise
/// (refused included: with `remediator.preflight` on, a fix whose preflight checks fail is not
/// run unless `skip_preflight`).
pub async fn run_fix(
    config: Config,
    fix: FixName,
    target: JobTarget,
    dry_run: bool,
) -> anyhow::Result<i32> {
    run_fix_with(config, fix, target, dry_run, RunOptions::default()).await
}

/// [`run_fix`] with a window for `missing_rows`. Row progress shows as a bar when stderr is a
/// terminal, as log lines otherwise.
pub async fn run_fix_with(
    config: Config,
    fix: FixName,
    target: JobTarget,
    dry_run: bool,
    window: RunOptions,
) -> anyhow::Result<i32> {
    let wait = config.remediator.task_state_timeout;
    let progress: Option<std::sync::Arc<dyn crate::progress::Progress>> =
        if std::io::stderr().is_terminal() {
            Some(std::sync::Arc::new(
                crate::progress::TerminalProgress::default(),
            ))
        } else {
            None
        };
    let core = Core::open_with_progress(config, FixRegistry::standard(), progress).await?;
    // The service's gate, for a hand run: the checks this fix needs must pass.
    let refused = if core.config.remediator.preflight && !window.skip_preflight {
        let kinds = crate::preflight_gate::needs(fix, &core.config);
        let report = dmsguard_pipeline::preflight::run_for(&core.config, true, Some(&kinds)).await;
        match crate::preflight_gate::verdict(fix, &core.config, &report) {
            crate::preflight_gate::Verdict::Refused(failed) => Some(failed),
            _ => None,
        }
    } else {
        None
    };
    let mut labels = json!({
        "task": target.task, "table": target.table, "replication_instance": target.replication_instance,
    });
    for (key, value) in [
        ("day", window.day.map(serde_json::Value::from)),
        ("from_id", window.from_id.map(|v| json!(v.to_string()))),
        ("to_id", window.to_id.map(|v| json!(v.to_string()))),
    ] {
        if let Some(value) = value {
            labels[key] = value;
        }
    }
    if let Some(failed) = refused {
        let (summary, details) = crate::preflight_gate::refusal(fix, &failed);
        let job = core
            .ledger
            .insert_job(&NewJob {
                alert: None,
                fix,
                target,
                labels,
                dry_run,
                manual: true,
                admission: Admission::Refused {
                    summary: summary.clone(),
                    details,
                },
            })
            .await?
            .context("the ledger did not record the job")?;
        println!("job {} ({fix}): refused", job.id);
        println!("outcome: {}: {summary}", JobOutcome::Refused.as_str());
        for check in &failed {
            println!("[FAIL] {}: {}", check.name, check.detail);
            if let Some(fix_text) = &check.fix {
                println!("       fix: {fix_text}");
            }
        }
        println!("(--skip-preflight runs it anyway)");
        std::io::stdout().flush().ok();
        return Ok(1);
    }
    let job = core
        .ledger
        .insert_job(&NewJob {
            alert: None,
            fix,
            target,
            labels,
            dry_run,
            manual: true,
            admission: Admission::Running {
                runner: core.worker.runner().to_owned(),
            },
        })
        .await?
        .context("the ledger did not record the job")?;
    println!(
        "job {} ({fix}{})",
        job.id,
        if dry_run { ", dry run" } else { "" }
    );
    let report = core.worker.run_job(job, wait).await?;
    let code = match report {
        JobReport::Finished {
            job_id,
            outcome,
            summary,
            error,
            plan,
        } => {
            if let Some(plan) = plan {
                println!("plan:\n{plan}");
            }
            println!("outcome: {}: {summary}", outcome.as_str());
            if let Some(error) = error {
                println!("error: {error}");
            }
            let mut ok = matches!(outcome, JobOutcome::Succeeded | JobOutcome::DryRun);
            if carry_out_owed_resumes(&core, job_id).await? {
                // The ledger moved the job on (succeeded once resumed, or needs_human).
                if let Some(job) = core.ledger.job(job_id).await? {
                    let outcome = job.outcome.unwrap_or_default();
                    println!(
                        "outcome now: {outcome}: {}",
                        job.summary.unwrap_or_default()
                    );
                    ok = outcome == JobOutcome::Succeeded.as_str();
                }
            }
            i32::from(!ok)
        }
        JobReport::Requeued { job_id } => {
            println!(
                "job {job_id}: its tasks stayed locked by another job; queued for the service"
            );
            1
        }
    };
    std::io::stdout().flush().ok();
    Ok(code)
}

/// Carries out the resumes job `job_id` still owes once its fix returned (a stop that outlasted
/// `task_state_timeout`, a throttled wait), as the service's sweeper would: a hand run must not
/// leave a task stopped with no remediator running to resume it. Waits until each is resumed or
/// handed to a human (at `resume_give_up_after`); stopping the CLI leaves them owed in the
/// ledger, for the service's sweeper. F3's resumes wait for the end of the maintenance window
/// and are the service's (its scheduled step and sweeper): they are listed, not awaited.
/// Returns whether the job owed any resume this run carried out.
async fn carry_out_owed_resumes(core: &Core, job_id: i64) -> anyhow::Result<bool> {
    let ledger = &core.ledger;
    let owed = || async move {
        let resumes = ledger.resumes_of_jobs(&[job_id]).await?;
        Ok::<_, crate::ledger::LedgerError>(
            resumes
                .into_iter()
                .filter(|r| r.state == "owed")
                .collect::<Vec<_>>(),
        )
    };
    let first = owed().await?;
    let (scheduled, mine): (Vec<_>, Vec<_>) = first
        .into_iter()
        .partition(|r| r.fix == FixName::Maintenance.as_str());
    for r in &scheduled {
        println!(
            "resume of task {} owed (obligation {}): after the maintenance window, by the remediator service",
            r.task, r.id
        );
    }
    if mine.is_empty() {
        return Ok(false);
    }
    for r in &mine {
        println!(
            "resume of task {} owed (obligation {}); resuming it once it is stopped (interrupting leaves it to the remediator service)",
            r.task, r.id
        );
    }
    let interval = core.config.remediator.resume_retry_interval;
    loop {
        core.worker.sweep_resumes_of(Some(job_id)).await?;
        let left: Vec<_> = owed()
            .await?
            .into_iter()
            .filter(|r| mine.iter().any(|m| m.id == r.id))
            .collect();
        if left.is_empty() {
            break;
        }
        tokio::time::sleep(interval.min(std::time::Duration::from_secs(5))).await;
    }
    for r in core.ledger.resumes_of_jobs(&[job_id]).await? {
        if mine.iter().any(|m| m.id == r.id) {
            println!(
                "resume of task {}: {}{}",
                r.task,
                r.state,
                r.reason.map(|why| format!(" ({why})")).unwrap_or_default()
            );
        }
    }
    Ok(true)
}

/// Prints the most recent jobs as a table, then the resumes owed now.
pub async fn list_jobs(config: Config, limit: i64) -> anyhow::Result<()> {
    let core = Core::open(config, FixRegistry::standard()).await?;
    let jobs = core.ledger.recent_jobs(limit).await?;
    print!("{}", jobs_table(&jobs));
    let owed = core.ledger.resumes(true, 100).await?;
    if !owed.is_empty() {
        println!("\nresumes owed (tasks a fix stopped that do not run again yet):");
        for r in owed {
            println!(
                "  obligation {} job {} ({}): task {}, since {}, {} attempt(s){}{}",
                r.id,
                r.job_id,
                r.fix,
                r.task,
                r.created_at.format("%Y-%m-%d %H:%M:%S UTC"),
                r.attempts,
                r.last_status
                    .map(|s| format!(", last seen {s}"))
                    .unwrap_or_default(),
                r.last_error
                    .map(|e| format!(", last error: {e}"))
                    .unwrap_or_default(),
            );
        }
    }
    Ok(())
}

/// The jobs as a plain-text table.
pub fn jobs_table(jobs: &[JobSummary]) -> String {
    let header = [
        "ID", "CREATED", "ALERT", "FIX", "TARGET", "STATE", "OUTCOME", "DURATION", "SUMMARY",
    ];
    let rows: Vec<[String; 9]> = jobs
        .iter()
        .map(|j| {
            [
                j.id.to_string(),
                j.created_at.format("%Y-%m-%d %H:%M:%S").to_string(),
                if j.manual {
                    "(by hand)".to_owned()
                } else {
                    j.alertname.clone().unwrap_or_default()
                },
                format!("{}{}", j.fix, if j.dry_run { " (dry run)" } else { "" }),
                j.target.clone(),
                j.state.clone(),
                j.outcome.clone().unwrap_or_default(),
                j.duration().map(format_duration).unwrap_or_default(),
                j.error
                    .as_deref()
                    .map(|e| format!("{} ({e})", j.summary.as_deref().unwrap_or("")))
                    .unwrap_or_else(|| j.summary.clone().unwrap_or_default()),
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row.iter()).take(8) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let line = |out: &mut String, cells: &[&str]| {
        for (i, cell) in cells.iter().enumerate() {
            if i < 8 {
                let _ = write!(out, "{cell:<width$}  ", width = widths[i]);
            } else {
                let _ = write!(out, "{cell}");
            }
        }
        out.push('\n');
    };
    line(&mut out, &header);
    for row in &rows {
        let cells: Vec<&str> = row.iter().map(String::as_str).collect();
        line(&mut out, &cells);
    }
    out
}
