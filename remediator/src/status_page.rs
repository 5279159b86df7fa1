//! The HTML status page at `/`: what the remediator did (recent jobs) and will do (pending
//! steps), and the resumes it owes: every task a fix stopped and that does not run again yet,
//! and how the recent jobs' resumes ended (`resumed`, or `needs_human` with the reason).

use chrono::{DateTime, Utc};

use crate::ledger::{JobSummary, ResumeSummary, StepSummary};

/// Escapes text for HTML element content and attribute values.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A duration as `1.2s`, `3m 4s` or `2h 5m`.
pub fn format_duration(d: chrono::Duration) -> String {
    let ms = d.num_milliseconds().max(0);
    if ms < 60_000 {
        format!("{:.1}s", ms as f64 / 1000.0)
    } else if ms < 3_600_000 {
        format!("{}m {}s", ms / 60_000, ms % 60_000 / 1000)
    } else {
        format!("{}h {}m", ms / 3_600_000, ms % 3_600_000 / 60_000)
    }
}

fn time(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S UTC").to_string()
}

/// What a job's resume obligations say, for its row: `resume owed: t1; resumed: t2`.
fn job_resumes(job_id: i64, resumes: &[ResumeSummary]) -> String {
    resumes
        .iter()
        .filter(|r| r.job_id == job_id)
        .map(|r| {
            let state = match r.state.as_str() {
                "owed" => "resume owed",
                "needs_human" => "not resumed, needs a human",
                other => other,
            };
            format!("{state}: {}", r.task)
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// Renders the page; `resumes` are the obligations to show (those owed, and those of the
/// listed jobs).
pub fn render(
    jobs: &[JobSummary],
    steps: &[StepSummary],
    resumes: &[ResumeSummary],
    now: DateTime<Utc>,
) -> String {
    let mut html = String::from(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <title>dmsguard-remediator</title>\
         <style>body{font-family:sans-serif;margin:1.5em}table{border-collapse:collapse}\
         td,th{border:1px solid #ccc;padding:.2em .5em;text-align:left;vertical-align:top}\
         .failed,.needs_human{background:#fdd}.succeeded{background:#dfd}.running,.queued{background:#ffd}</style>\
         </head><body>\n<h1>dmsguard-remediator</h1>\n",
    );
    html.push_str(&format!("<p>As of {}.</p>\n", time(now)));

    html.push_str("<h2>Pending scheduled steps</h2>\n");
    if steps.is_empty() {
        html.push_str("<p>None.</p>\n");
    } else {
        html.push_str(
            "<table><tr><th>step</th><th>job</th><th>fix</th><th>runs at</th><th>what</th>\
             <th>state</th><th>attempts</th><th>last error</th></tr>\n",
        );
        for s in steps {
            let due = if s.run_at <= now {
                "due now".to_owned()
            } else {
                format!("in {}", format_duration(s.run_at - now))
            };
            html.push_str(&format!(
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{} ({})</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>\n",
                s.id,
                s.job_id,
                escape(&s.fix),
                time(s.run_at),
                due,
                escape(&s.description),
                escape(&s.state),
                s.attempts,
                escape(s.error.as_deref().unwrap_or("")),
            ));
        }
        html.push_str("</table>\n");
    }

    html.push_str("<h2>Resume obligations</h2>\n");
    let owed = resumes.iter().filter(|r| r.state == "owed").count();
    html.push_str(&format!(
        "<p>{owed} task(s) stopped by a fix and owed a resume.</p>\n"
    ));
    if !resumes.is_empty() {
        html.push_str(
            "<table><tr><th>obligation</th><th>job</th><th>fix</th><th>task</th><th>state</th>\
             <th>owed since</th><th>attempts</th><th>last status</th><th>last error / reason</th>\
             <th>settled</th></tr>\n",
        );
        let mut ordered: Vec<&ResumeSummary> = resumes.iter().collect();
        ordered.sort_by_key(|r| (r.state != "owed", std::cmp::Reverse(r.id)));
        for r in ordered {
            let why = r
                .reason
                .as_deref()
                .or(r.last_error.as_deref())
                .unwrap_or("");
            html.push_str(&format!(
                "<tr class=\"{}\"><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{} ({} ago)</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>\n",
                match r.state.as_str() {
                    "owed" => "running",
                    "resumed" => "succeeded",
                    _ => "needs_human",
                },
                r.id,
                r.job_id,
                escape(&r.fix),
                escape(&r.task),
                escape(&r.state),
                time(r.created_at),
                format_duration(now - r.created_at),
                r.attempts,
                escape(r.last_status.as_deref().unwrap_or("")),
                escape(why),
                r.settled_at.map(time).unwrap_or_default(),
            ));
        }
        html.push_str("</table>\n");
    }

    html.push_str("<h2>Recent jobs</h2>\n");
    if jobs.is_empty() {
        html.push_str("<p>None yet.</p>\n");
    } else {
        html.push_str(
            "<table><tr><th>job</th><th>created</th><th>alert</th><th>fix</th><th>task / target</th>\
             <th>state</th><th>outcome</th><th>resumes</th><th>duration</th><th>summary</th><th>error</th></tr>\n",
        );
        for j in jobs {
            let alert = match (&j.alertname, j.manual) {
                (_, true) => "(by hand)".to_owned(),
                (Some(a), _) => a.clone(),
                (None, _) => String::new(),
            };
            let mut outcome = j.outcome.clone().unwrap_or_default();
            if j.resolved_at.is_some() {
                outcome.push_str(" (alert resolved)");
            }
            html.push_str(&format!(
                "<tr class=\"{}\"><td>{}</td><td>{}</td><td>{}</td><td>{}{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>\n",
                escape(&j.state),
                j.id,
                time(j.created_at),
                escape(&alert),
                escape(&j.fix),
                if j.dry_run { " (dry run)" } else { "" },
                escape(&j.target),
                escape(&j.state),
                escape(&outcome),
                escape(&job_resumes(j.id, resumes)),
                j.duration().map(format_duration).unwrap_or_default(),
                escape(j.summary.as_deref().unwrap_or("")),
                escape(j.error.as_deref().unwrap_or("")),
            ));
        }
        html.push_str("</table>\n");
    }
    html.push_str("</body></html>\n");
    html
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup_from_labels() {
        assert_eq!(
            escape("<script>alert('x') & \"y\"</script>"),
            "&lt;script&gt;alert(&#39;x&#39;) &amp; &quot;y&quot;&lt;/script&gt;"
        );
    }

    #[test]
    fn renders_jobs_and_steps_escaped() {
        let now = Utc::now();
        let job = JobSummary {
            id: 7,
            alertname: Some("DMSTaskStalled".into()),
            fix: "stalled_task".into(),
            target: "<b>orders</b>".into(),
            state: "succeeded".into(),
            outcome: Some("succeeded".into()),
            summary: Some("Restarted task.".into()),
            error: None,
            dry_run: false,
            manual: false,
            created_at: now,
            started_at: Some(now),
            acting_at: Some(now),
            finished_at: Some(now + chrono::Duration::milliseconds(1500)),
            resolved_at: None,
            runner: None,
        };
        let step = StepSummary {
            id: 3,
            job_id: 7,
            fix: "maintenance".into(),
            run_at: now + chrono::Duration::minutes(35),
            description: "Resume orders".into(),
            state: "pending".into(),
            attempts: 0,
            runner: None,
            error: None,
            finished_at: None,
        };
        let owed = ResumeSummary {
            id: 11,
            job_id: 7,
            fix: "stalled_task".into(),
            task: "<i>t1</i>".into(),
            state: "owed".into(),
            attempts: 2,
            last_status: Some("stopping".into()),
            last_error: Some("Rate exceeded".into()),
            reason: None,
            created_at: now - chrono::Duration::seconds(90),
            settled_at: None,
        };
        let html = render(&[job], &[step], &[owed], now);
        assert!(html.contains("1 task(s) stopped by a fix and owed a resume."));
        assert!(
            html.contains("resume owed: &lt;i&gt;t1&lt;/i&gt;"),
            "{html}"
        );
        assert!(
            html.contains("<td>stopping</td><td>Rate exceeded</td>"),
            "{html}"
        );
        assert!(html.contains("(1m 30s ago)"), "{html}");
        assert!(html.contains("&lt;b&gt;orders&lt;/b&gt;"));
        assert!(!html.contains("<b>orders"));
        assert!(html.contains("1.5s"));
        assert!(html.contains("Resume orders"));
        assert!(html.contains("in 35m 0s"));
    }
}
