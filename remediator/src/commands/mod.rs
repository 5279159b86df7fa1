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

/// The window options of a hand run of `missing_rows`, recorded as job labels.
#[derive(Debug, Clone, Default)]
pub struct WindowArgs {
    /// A UTC day, `YYYY-MM-DD`.
    pub day: Option<String>,
    pub from_id: Option<i64>,
    pub to_id: Option<i64>,
}

/// Runs `fix` by hand: records a job in the ledger (cooldowns do not apply), plans, prints the
/// plan, executes unless `dry_run`. Returns the exit code: 0 succeeded or planned, 1 otherwise.
pub async fn run_fix(
    config: Config,
    fix: FixName,
    target: JobTarget,
    dry_run: bool,
) -> anyhow::Result<i32> {
    run_fix_with(config, fix, target, dry_run, WindowArgs::default()).await
}

/// [`run_fix`] with a window for `missing_rows`. Row progress shows as a bar when stderr is a
/// terminal, as log lines otherwise.
pub async fn run_fix_with(
    config: Config,
    fix: FixName,
    target: JobTarget,
    dry_run: bool,
    window: WindowArgs,
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
            outcome,
            summary,
            error,
            plan,
            ..
        } => {
            if let Some(plan) = plan {
                println!("plan:\n{plan}");
            }
            println!("outcome: {}: {summary}", outcome.as_str());
            if let Some(error) = error {
                println!("error: {error}");
            }
            i32::from(!matches!(
                outcome,
                JobOutcome::Succeeded | JobOutcome::DryRun
            ))
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

/// Prints the most recent jobs as a table.
pub async fn list_jobs(config: Config, limit: i64) -> anyhow::Result<()> {
    let core = Core::open(config, FixRegistry::standard()).await?;
    let jobs = core.ledger.recent_jobs(limit).await?;
    print!("{}", jobs_table(&jobs));
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
