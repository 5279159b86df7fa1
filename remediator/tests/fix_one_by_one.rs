//! F1 on the lab (`source tests/lab/env.sh` first): a DMS UPDATE over a wide table, longer than
//! the 4000 characters the system views keep in one row, rolled back because a row it updates is
//! missing in the target. Through a webhook to an in-process remediator (SYS views) and through
//! the `run` binary (STL views), the fix inserts the row equal to the source, stops and resumes
//! the task; dry-run and second runs change nothing.

mod repair_lab;

use std::time::Duration;

use dmsguard_lab::harness::{eventually, TestDatabases};
use dmsguard_pipeline::config::Config;
use dmsguard_pipeline::statement_parser::is_valid_redshift_sql;
use repair_lab::*;
use serde_json::json;
use tokio_postgres::Client;

/// Enough wide columns that DMS's UPDATE exceeds 4000 characters.
const PADS: usize = 80;
const ROWS: i64 = 30;
const TASK: &str = "task-a";
const CHANGES: &str = "awsdms_changes1a2b3c4d";

/// DMS's bulk UPDATE of every non-key column from the intermediate table over seq 1..=10.
fn dms_update(quoted: bool) -> String {
    let mut columns = vec![
        "created_at",
        "paid",
        "doc",
        "tags",
        "ref",
        "amount",
        "status",
        "note",
        "blob",
    ]
    .into_iter()
    .map(str::to_owned)
    .collect::<Vec<_>>();
    columns.extend((1..=PADS).map(|i| format!("pad_{i:02}")));
    let set: Vec<String> = columns
        .iter()
        .enumerate()
        .map(|(i, c)| format!("\"{c}\" = CAST(changes.\"c{}\" AS varchar(65535))", i + 2))
        .collect();
    let target = if quoted {
        "\"public\".\"orders\""
    } else {
        "public.orders"
    };
    format!(
        "/* Applied by AWS DMS 3.5.3 */ UPDATE {target} SET {} FROM \"public\".\"{CHANGES}\" changes \
         WHERE {target}.\"id\" = CAST(changes.\"seg1\" AS bigint) AND changes.\"tbl\" = 'public.orders' \
         AND changes.\"op\" = 'U' AND changes.\"seq\" >= 1 AND changes.\"seq\" <= 10",
        set.join(", ")
    )
}

/// Source and target with every row, then the target loses row 17 (updated in seq 7) and row
/// 25 (an insert in the same seq range, which this fix must leave alone), and both sides lose
/// row 18 (updated in seq 8, deleted at the source since and the delete applied: absent from
/// the target, yet not missing).
async fn lab(tag: &str) -> anyhow::Result<(TestDatabases, Client, Client)> {
    let dbs = TestDatabases::create(tag).await?;
    let source = dbs.source_client().await?;
    let target = dbs.redshift_client().await?;
    source.batch_execute(&source_ddl(PADS)).await?;
    target.batch_execute(&target_ddl(PADS)).await?;
    fill_source(&source, ROWS, ROWS, PADS).await?;
    let all: Vec<i64> = (1..=ROWS).collect();
    copy_as_dms(&source, &target, &all, PADS).await?;
    target
        .batch_execute(&format!(
            "CREATE TABLE public.{CHANGES} (seq bigint, tbl varchar(256), op varchar(1), seg1 varchar(256), c2 varchar(65535));
             INSERT INTO public.{CHANGES} SELECT s, 'public.orders', CASE WHEN s = 5 THEN 'I' ELSE 'U' END,
               CASE WHEN s = 5 THEN '25' ELSE (10 + s)::text END, 'x' FROM generate_series(1, 10) s;
             INSERT INTO public.{CHANGES} VALUES (11, 'public.orders', 'U', '3', 'x');
             DELETE FROM public.orders WHERE id IN (17, 18, 25);"
        ))
        .await?;
    source
        .execute("DELETE FROM public.orders WHERE id = 18", &[])
        .await?;
    Ok((dbs, source, target))
}

/// Records `sql` as Redshift's SYS views would: history row (text cut at 4000), transaction
/// with `status`, full text in 4000-character pieces.
async fn record_sys(target: &Client, sql: &str, status: &str) -> anyhow::Result<i64> {
    let txn: i64 = target
        .query_one(
            "INSERT INTO sys_transaction_history (transaction_id, status, transaction_start_time) \
             VALUES (nextval('lab_transaction_id_seq'), $1, now() AT TIME ZONE 'UTC') RETURNING transaction_id",
            &[&status],
        )
        .await?
        .get(0);
    let query: i64 = target
        .query_one(
            "INSERT INTO sys_query_history (query_id, transaction_id, query_type, status, start_time, end_time, query_text) \
             VALUES (nextval('lab_query_id_seq'), $1, 'UPDATE', 'success', now() AT TIME ZONE 'UTC', now() AT TIME ZONE 'UTC', left($2::text, 4000)) \
             RETURNING query_id",
            &[&txn, &sql],
        )
        .await?
        .get(0);
    target
        .execute(
            "INSERT INTO sys_query_text (query_id, transaction_id, sequence, text) \
             SELECT $1, $2, i, substr($3::text, i * 4000 + 1, 4000) \
             FROM generate_series(0, (length($3::text) - 1) / 4000) i",
            &[&query, &txn, &sql],
        )
        .await?;
    // The transaction's end statement: what a non-superuser sees of a rollback.
    let end = if status == "rolledback" {
        "ROLLBACK"
    } else {
        "COMMIT"
    };
    target
        .execute(
            "INSERT INTO sys_query_history (query_id, transaction_id, query_type, status, start_time, end_time, query_text) \
             VALUES (nextval('lab_query_id_seq'), $1, 'UTILITY', 'success', now() AT TIME ZONE 'UTC', now() AT TIME ZONE 'UTC', $2)",
            &[&txn, &end],
        )
        .await?;
    Ok(query)
}

/// Records `sql` as the STL views would: `stl_query` (text cut at 4000; `aborted` = 0, it ran
/// to completion), full text in 200-character pieces, and its transaction's end in
/// `stl_utilitytext`: ROLLBACK when `rolled_back`, else COMMIT.
async fn record_stl(target: &Client, sql: &str, rolled_back: bool) -> anyhow::Result<()> {
    let row = target
        .query_one(
            "INSERT INTO stl_query (query, xid, querytxt, starttime, endtime, aborted) \
             VALUES (nextval('lab_query_id_seq')::integer, nextval('lab_transaction_id_seq'), left($1::text, 4000), \
             now() AT TIME ZONE 'UTC', now() AT TIME ZONE 'UTC', 0) \
             RETURNING query, xid",
            &[&sql],
        )
        .await?;
    let (query, xid): (i32, i64) = (row.get(0), row.get(1));
    target
        .execute(
            "INSERT INTO stl_querytext (query, xid, sequence, text) \
             SELECT $1, $3, i, substr($2::text, i * 200 + 1, 200) \
             FROM generate_series(0, (length($2::text) - 1) / 200) i",
            &[&query, &sql, &xid],
        )
        .await?;
    target
        .execute(
            "INSERT INTO stl_utilitytext (xid, starttime, endtime, sequence, text) \
             VALUES ($1, now() AT TIME ZONE 'UTC', now() AT TIME ZONE 'UTC', 0, $2)",
            &[&xid, &if rolled_back { "ROLLBACK" } else { "COMMIT" }],
        )
        .await?;
    Ok(())
}

fn config(dbs: &TestDatabases, moto_url: &str, redshift_extra: &str) -> String {
    config_text(
        dbs,
        Some(moto_url),
        redshift_extra,
        &format!(
            "[[tasks]]\nname = \"{TASK}\"\nreplication_instance = \"ri-a\"\n\n\
             [[tables]]\nsource = \"public.orders\"\ntask = \"{TASK}\"\n\n\
             [remediator]\nlisten = \"127.0.0.1:0\"\ntoken = \"{TOKEN}\"\ntask_state_timeout = \"20s\"\n"
        ),
    )
}

/// What the real DMSOneByOneMode rule sends: a `table` label, no `task` (the remediator finds
/// the table's task in the config).
fn alert_payload(table: &str) -> serde_json::Value {
    json!({
        "version": "4",
        "groupKey": "{}:{alertname=\"DMSOneByOneMode\"}",
        "truncatedAlerts": 0,
        "status": "firing",
        "receiver": "remediator",
        "groupLabels": {},
        "commonLabels": {},
        "commonAnnotations": {},
        "externalURL": "http://alertmanager",
        "alerts": [{
            "status": "firing",
            "labels": alert_rules::rule_labels_json("DMSOneByOneMode", &[("table", table)]),
            "annotations": {"summary": "one-by-one"},
            "startsAt": "2026-11-25T01:00:00Z",
            "endsAt": "0001-01-01T00:00:00Z",
            "generatorURL": "http://prometheus/graph",
            "fingerprint": "f1a2b3c4d5e6f708",
        }],
    })
}

#[tokio::test]
async fn webhook_repairs_the_row_behind_one_by_one_mode_and_restarts_the_task() -> anyhow::Result<()>
{
    let (dbs, source, target) = lab("fix_one_by_one_sys").await?;
    let (moto, aws) = moto_with_task(TASK, "ri-a").await?;
    let update = dms_update(true);
    assert!(
        update.len() > 4000,
        "the statement spans pieces: {}",
        update.len()
    );
    let repaired_query = record_sys(&target, &update, "rolledback").await?;
    // Newer statements the fix must pass over: committed, and rolled back but unquoted.
    record_sys(&target, &update, "committed").await?;
    record_sys(&target, &dms_update(false), "rolledback").await?;
    let config_text = config(&dbs, &moto.url(), "");

    // Dry run through the binary: the plan, the SQL, no change.
    let out = run_binary(
        &config_text,
        &["run", "one_by_one", "--task", TASK, "--dry-run"],
    )?;
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(
        stdout.contains(&format!("Query {repaired_query}: UPDATE of public.orders")),
        "{stdout}"
    );
    assert!(stdout.contains("Missing ids (1): 17."), "{stdout}");
    assert!(
        stdout.contains("1 absent ones were deleted at the source since"),
        "{stdout}"
    );
    for line in stdout
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("SELECT") || l.starts_with("INSERT"))
    {
        is_valid_redshift_sql(line).map_err(|e| anyhow::anyhow!("{line}: {e}"))?;
    }
    assert!(stdout.contains("LEFT JOIN"), "{stdout}");
    assert_eq!(count_id(&target, 17).await?, 0, "dry run inserts nothing");
    assert_eq!(
        task_status(&aws, TASK).await?,
        ("running".to_owned(), false)
    );

    // The alert, through Alertmanager's webhook, to a remediator in this process.
    let config = Config::from_toml(&config_text, &|_| None)?;
    let app = dmsguard_remediator::Remediator::build(config).await?;
    let addr = app.addr();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(app.run_until(async move {
        let _ = stopped.await;
    }));
    let response = reqwest::Client::new()
        .post(format!("http://{addr}/alerts"))
        .bearer_auth(TOKEN)
        .json(&alert_payload("public.orders"))
        .send()
        .await?;
    assert!(
        response.status().is_success(),
        "{:?}",
        response.text().await
    );
    let jobs = finished_jobs(&dbs, 2).await?;
    let (outcome, summary, details) = &jobs[1];
    assert_eq!(outcome, "succeeded", "{summary} {details}");
    assert_eq!(details["statement"]["query_id"], repaired_query);
    assert_eq!(details["statement"]["seq_from"], 1);
    assert_eq!(details["statement"]["seq_to"], 10);
    assert_eq!(details["missing"]["ids"], json!([17]));
    assert_eq!(details["deleted_at_source"]["ids"], json!([18]));
    assert_eq!(details["inserted"], 1);
    assert_eq!(details["restarted"], true);
    assert_eq!(
        details["rejected"].as_array().map(Vec::len),
        Some(1),
        "{details}"
    );
    let _ = stop.send(());
    server.await??;

    let all: Vec<i64> = (1..=ROWS).filter(|id| *id != 25 && *id != 18).collect();
    assert_target_equals_source(&source, &target, &all, PADS).await?;
    assert_eq!(
        count_id(&target, 25).await?,
        0,
        "an insert in the range is not this fix's"
    );
    let (status, was_stopped) =
        eventually("task running again", Duration::from_secs(20), || async {
            let state = task_status(&aws, TASK).await?;
            Ok((state.0 == "running").then_some(state))
        })
        .await?;
    assert_eq!((status.as_str(), was_stopped), ("running", true));

    // Again by hand: nothing missing any more, nothing changes.
    let out = run_binary(&config_text, &["run", "one_by_one", "--task", TASK])?;
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(stdout.contains("Nothing missing any more"), "{stdout}");
    let jobs = finished_jobs(&dbs, 3).await?;
    assert_eq!(jobs[2].2["inserted"], 0);
    assert_eq!(jobs[2].2["restarted"], false);
    assert_eq!(count_id(&target, 17).await?, 1);
    drop((source, target));
    dbs.drop().await
}

#[tokio::test]
async fn stl_views_lead_to_the_same_repair_through_the_cli() -> anyhow::Result<()> {
    let (dbs, source, target) = lab("fix_one_by_one_stl").await?;
    let (moto, aws) = moto_with_task(TASK, "ri-a").await?;
    record_stl(&target, &dms_update(true), true).await?;
    record_stl(&target, &dms_update(true), false).await?;
    let config_text = config(&dbs, &moto.url(), "system_views = \"stl\"\n");

    let out = run_binary(&config_text, &["run", "one_by_one", "--task", TASK])?;
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("1 found, 1 inserted, 0 already present, 0 gone from the source"),
        "{stdout}"
    );
    assert!(stdout.contains("stopped and resumed"), "{stdout}");
    assert_target_equals_source(&source, &target, &[16, 17, 19], PADS).await?;
    assert_eq!(task_status(&aws, TASK).await?, ("running".to_owned(), true));

    let out = run_binary(&config_text, &["run", "one_by_one", "--task", TASK])?;
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(stdout.contains("Nothing missing any more"), "{stdout}");
    assert_eq!(count_id(&target, 17).await?, 1, "never duplicated");

    // A task with no configured table in the statement: nothing to repair, a human looks.
    let other = config_text
        .replace(&format!("task = \"{TASK}\"\n\n"), "task = \"task-b\"\n\n")
        .replace(
            "[[tables]]",
            "[[tasks]]\nname = \"task-b\"\nreplication_instance = \"ri-a\"\n\n[[tables]]",
        );
    // task-b is not in moto: the preflight gate refuses the run, naming it; past the gate the
    // fix finds nothing of task-b's to repair.
    let out = run_binary(&other, &["run", "one_by_one", "--task", TASK])?;
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("outcome: refused") && stdout.contains("[FAIL] DMS task task-b: not found"),
        "{stdout}"
    );
    let out = run_binary(
        &other,
        &["run", "one_by_one", "--task", TASK, "--skip-preflight"],
    )?;
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(stdout.contains("outcome: needs_human"), "{stdout}");
    drop((source, target));
    dbs.drop().await
}

/// A row updated in the rolled-back range and deleted since (at the source, then in the
/// target by DMS) is absent from the target on purpose: the repair is complete without it.
#[tokio::test]
async fn rows_deleted_at_the_source_since_do_not_fail_the_repair() -> anyhow::Result<()> {
    let (dbs, source, target) = lab("fix_one_by_one_gone").await?;
    let (moto, aws) = moto_with_task(TASK, "ri-a").await?;
    source
        .batch_execute("DELETE FROM public.orders WHERE id = 18")
        .await?;
    target
        .batch_execute("DELETE FROM public.orders WHERE id = 18")
        .await?;
    record_sys(&target, &dms_update(true), "rolledback").await?;
    let config_text = config(&dbs, &moto.url(), "");

    let out = run_binary(&config_text, &["run", "one_by_one", "--task", TASK])?;
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("1 absent ones were deleted at the source since"),
        "{stdout}"
    );
    assert!(
        stdout.contains("1 found, 1 inserted, 0 already present, 0 gone from the source, 0 failed"),
        "{stdout}"
    );
    assert!(stdout.contains("stopped and resumed"), "{stdout}");
    assert_target_equals_source(&source, &target, &[16, 17, 19], PADS).await?;
    assert_eq!(
        count_id(&target, 18).await?,
        0,
        "a deleted row stays deleted"
    );
    assert_eq!(task_status(&aws, TASK).await?, ("running".to_owned(), true));
    drop((source, target));
    dbs.drop().await
}
