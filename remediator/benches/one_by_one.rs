//! F1 repair time on the lab (docs/architecture.md: from webhook to task resumed under 10 s at
//! 1M-row tables; SQL cost proportional to the seq range, not the table).
//!
//! For each table size: source and Redshift stand-in filled with the same rows (the target as
//! DMS types them), the DMS simulator replicating a light workload, then `missing_then_update`
//! until DMS rolls back a bulk UPDATE and goes one by one. The `DMSOneByOneMode` webhook goes to
//! an in-process remediator; the clock runs from the POST to the job's end in the ledger and to
//! the task `running` in moto. The fix's own missing-ids SQL (from the job's plan, with the
//! job's seq range) is then timed alone, so its cost can be set against the table size.
//!
//! `source tests/lab/env.sh; cargo bench -p dmsguard-remediator --bench one_by_one`
//! Options (environment): `BENCH_SIZES` (`10000,1000000`), `BENCH_SQL_RUNS` (20).
//!
//! Measured on the 2-core lab machine (release, load average 3-6 from other builds), one
//! rolled-back batch of 16 seq numbers with one missing row, three runs:
//!
//! | target rows | webhook -> task running s | missing-ids SQL median ms |
//! |---:|---:|---:|
//! | 10,000 | 0.148 / 0.121 / 0.106 | 0.36 / 0.35 / 0.34 |
//! | 1,000,000 | 0.302 / 0.128 / 0.096 | 0.61 / 0.41 / 0.77 |
//!
//! 100x the rows: repair 0.9x-2.0x the time, well under a second against the 10 s bar; the
//! missing-ids SQL stays under a millisecond (1.2x-2.3x, one more index level), following the
//! seq range, not the table.

use std::time::{Duration, Instant};

use anyhow::Context;
use dmsguard_lab::harness::{self, eventually, Moto, TestDatabases};
use dmsguard_lab::simulator::{Fault, SimConfig, SimTable, Simulator};
use dmsguard_pipeline::aws::AwsClients;
use dmsguard_pipeline::config::{quote_ident, Config};
use dmsguard_remediator::Remediator;
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_postgres::Client;

const TOKEN: &str = "bench-token-one-by-one-0123456789";
const TASK: &str = "lab-task";
const TABLE: &str = "public.orders";

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The value a generated source row `g` holds in `column`.
fn generated(column: &str) -> anyhow::Result<&'static str> {
    Ok(match column {
        "id" => "g",
        "status" => "CASE WHEN g % 3 = 0 THEN 'paid' ELSE 'new' END",
        "kind" => "(CASE WHEN g % 2 = 0 THEN 'retail' ELSE 'wholesale' END)::public.lab_order_kind",
        "is_gift" => "g % 5 = 0",
        "payload" => "jsonb_build_object('n', g, 'note', 'a \"quoted\" value')",
        "tags" => "ARRAY['plain', 'has,comma', g::text]",
        "customer_ref" => "md5(g::text)::uuid",
        "created_at" => "now() - g * interval '1 second'",
        "amount" => "round(g * 0.37, 2)",
        "note" => "CASE WHEN g % 4 = 0 THEN NULL ELSE 'note ' || g END",
        "ShipTo" => "'street ' || g",
        "quantity" => "(g % 50)::integer",
        other => anyhow::bail!("no generator for column {other}"),
    })
}

/// `n` rows in the source, the same rows in the target as DMS writes them (COPY through the
/// simulator's own text conversion), both analysed.
async fn fill(source: &Client, target: &Client, table: &SimTable, n: i64) -> anyhow::Result<()> {
    let columns = table.columns();
    let names: Vec<String> = columns.iter().map(|c| quote_ident(&c.name)).collect();
    let values: Vec<&str> = columns
        .iter()
        .map(|c| generated(&c.name))
        .collect::<anyhow::Result<_>>()?;
    source
        .execute(
            &format!(
                "INSERT INTO {t} ({}) SELECT {} FROM generate_series(1, $1::bigint) g",
                names.join(", "),
                values.join(", "),
                t = table.name.quoted()
            ),
            &[&n],
        )
        .await
        .context("filling the source")?;
    source
        .execute(
            &format!(
                "SELECT setval(pg_get_serial_sequence('{}', 'id'), $1::bigint)",
                table.dotted()
            ),
            &[&n],
        )
        .await?;
    let exprs: Vec<String> = columns.iter().map(|c| c.source_text_expr()).collect();
    let out = source
        .copy_out(&format!(
            "COPY (SELECT {} FROM {} ORDER BY id) TO STDOUT",
            exprs.join(", "),
            table.name.quoted()
        ))
        .await?;
    let sink = target
        .copy_in(&format!(
            "COPY {} ({}) FROM STDIN",
            table.name.quoted(),
            names.join(", ")
        ))
        .await?;
    futures::pin_mut!(out, sink);
    while let Some(chunk) = out.next().await {
        sink.send(chunk?).await?;
    }
    let copied = sink.finish().await?;
    anyhow::ensure!(copied == n as u64, "copied {copied} of {n} rows");
    source.batch_execute("ANALYZE public.orders").await?;
    target.batch_execute("ANALYZE public.orders").await?;
    Ok(())
}

fn config_text(dbs: &TestDatabases, moto_url: &str) -> String {
    let pw = &dbs.env.pg_password;
    format!(
        "[source]\nurl = \"{}\"\npassword = \"{pw}\"\n\n[redshift]\nurl = \"{}\"\npassword = \"{pw}\"\n\n\
         [aws]\nregion = \"us-east-1\"\nendpoint_url = \"{moto_url}\"\nmax_attempts = 2\ntimeout = \"10s\"\n\n\
         [[tasks]]\nname = \"{TASK}\"\nreplication_instance = \"lab-instance\"\n\n\
         [[tables]]\nsource = \"{TABLE}\"\ntask = \"{TASK}\"\n\n\
         [remediator]\nlisten = \"127.0.0.1:0\"\ntoken = \"{TOKEN}\"\ntask_state_timeout = \"20s\"\n{}",
        // The remediator's least-privilege user of docs/grants.md, as in production.
        dbs.remediator_source().url,
        dbs.remediator_redshift().url,
        dbs.ledger_section(),
    )
}

struct Measured {
    rows: i64,
    fill: Duration,
    seq_range: i64,
    missing: usize,
    to_job_done: Duration,
    to_running: Duration,
    sql_median: Duration,
    sql_max: Duration,
}

async fn measure(n: i64, sql_runs: usize) -> anyhow::Result<Measured> {
    let dbs = TestDatabases::create(&format!("bench_f1_{n}")).await?;
    let result = measure_on(&dbs, n, sql_runs).await;
    dbs.drop().await?;
    result
}

async fn measure_on(dbs: &TestDatabases, n: i64, sql_runs: usize) -> anyhow::Result<Measured> {
    let moto = Moto::spawn().await?;
    let table: SimTable = TABLE.parse()?;
    let source = dbs.source_client().await?;
    let target = dbs.redshift_client().await?;
    table.install_source(&source).await?;
    table.install_target(&target).await?;
    let started = Instant::now();
    fill(&source, &target, &table, n).await?;
    let fill_time = started.elapsed();

    let mut sim_config = SimConfig::for_test(dbs, &moto.url());
    sim_config.rate = 100;
    let sim = Simulator::start(sim_config).await?;
    eventually("100 changes applied", Duration::from_secs(60), || async {
        Ok((sim.stats().applied() >= 100).then_some(()))
    })
    .await?;
    sim.set_fault(Fault::MissingThenUpdate);
    eventually(
        "a rolled-back bulk UPDATE",
        Duration::from_secs(60),
        || async {
            let logged: i64 = target
                .query_one(
                    "SELECT count(*) FROM sys_transaction_history WHERE status = 'rolledback'",
                    &[],
                )
                .await?
                .get(0);
            Ok((sim.stats().one_by_one_batches() >= 2 && logged >= 1).then_some(()))
        },
    )
    .await?;

    let config = Config::from_toml(&config_text(dbs, &moto.url()), &|_| None)?;
    let app = Remediator::build(config).await?;
    let url = format!("http://{}/alerts", app.addr());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(app.run_until(async move {
        let _ = stopped.await;
    }));
    let body = json!({
        "version": "4", "groupKey": "{}:{alertname=\"DMSOneByOneMode\"}", "status": "firing",
        "receiver": "remediator", "groupLabels": {}, "commonLabels": {}, "commonAnnotations": {},
        "externalURL": "http://alertmanager",
        "alerts": [{
            "status": "firing", "labels": {"alertname": "DMSOneByOneMode", "task": TASK},
            "annotations": {}, "startsAt": chrono::Utc::now().to_rfc3339(),
            "endsAt": "0001-01-01T00:00:00Z", "generatorURL": "http://prometheus", "fingerprint": "bench",
        }]
    });
    let aws = AwsClients::new(&harness::aws_config(&moto.url())).await;
    let ledger = dbs.source_client().await?;
    let clock = Instant::now();
    let response = reqwest::Client::new()
        .post(&url)
        .bearer_auth(TOKEN)
        .json(&body)
        .send()
        .await?;
    anyhow::ensure!(response.status().as_u16() == 202, "webhook refused");
    let (outcome, details, plan): (String, Value, Value) = loop {
        let row = ledger
            .query_opt(
                "SELECT state, outcome, details, plan FROM dmsguard.jobs WHERE state NOT IN ('queued', 'running')",
                &[],
            )
            .await?;
        if let Some(row) = row {
            break (
                row.get::<_, Option<String>>(1).unwrap_or_default(),
                row.get(2),
                row.get(3),
            );
        }
        anyhow::ensure!(clock.elapsed() < Duration::from_secs(60), "no job end");
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    let to_job_done = clock.elapsed();
    let status = aws
        .dms
        .describe_replication_tasks()
        .send()
        .await?
        .replication_tasks()
        .iter()
        .find(|t| t.replication_task_identifier() == Some(TASK))
        .and_then(|t| t.status().map(str::to_owned))
        .unwrap_or_default();
    let to_running = clock.elapsed();
    anyhow::ensure!(outcome == "succeeded", "job {outcome}: {details}");
    anyhow::ensure!(status == "running", "task {status}");

    // The fix's own SQL, from its plan, with the job's seq range.
    let statement = &details["statement"];
    let (lo, hi) = (
        statement["seq_from"].as_i64().context("seq_from")?,
        statement["seq_to"].as_i64().context("seq_to")?,
    );
    let step_sql = |needle: &str| -> anyhow::Result<String> {
        plan["steps"]
            .as_array()
            .and_then(|steps| {
                steps
                    .iter()
                    .find(|s| s["action"].as_str().is_some_and(|a| a.contains(needle)))
            })
            .and_then(|s| s["sql"].as_str().map(str::to_owned))
            .with_context(|| format!("no `{needle}` step in the plan"))
    };
    let span_sql = step_sql("id span")?;
    let join_sql = step_sql("LEFT JOIN")?;
    let tbl = TABLE.to_owned();
    let span = target.query_one(&span_sql, &[&lo, &hi, &tbl]).await?;
    let (min, max): (Option<i64>, Option<i64>) = (span.get(0), span.get(1));
    let (min, max) = (min.unwrap_or(0), max.unwrap_or(0));
    let mut times = Vec::with_capacity(sql_runs);
    for _ in 0..sql_runs {
        let t = Instant::now();
        target.query_one(&span_sql, &[&lo, &hi, &tbl]).await?;
        target
            .query(&join_sql, &[&lo, &hi, &tbl, &min, &max])
            .await?;
        times.push(t.elapsed());
    }
    times.sort();

    let _ = stop.send(());
    server.await??;
    sim.clear_fault();
    sim.stop().await?;
    drop(moto);
    Ok(Measured {
        rows: n,
        fill: fill_time,
        seq_range: hi - lo + 1,
        missing: details["missing"]["count"].as_u64().unwrap_or(0) as usize,
        to_job_done,
        to_running,
        sql_median: times[times.len() / 2],
        sql_max: times[times.len() - 1],
    })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    harness::ensure_test_credentials();
    let sizes: Vec<i64> = std::env::var("BENCH_SIZES")
        .unwrap_or_else(|_| "10000,1000000".to_owned())
        .split(',')
        .map(|s| s.trim().parse())
        .collect::<Result<_, _>>()
        .context("BENCH_SIZES: comma-separated row counts")?;
    let sql_runs: usize = env_or("BENCH_SQL_RUNS", 20).max(1);
    let mut results = Vec::new();
    for n in sizes {
        eprintln!("Measuring F1 at {n} target rows…");
        results.push(measure(n, sql_runs).await?);
    }
    println!("\nF1 one-by-one repair, webhook to task running (bar: under 10 s at 1M rows)\n");
    println!(
        "| target rows | fill s | seq range | missing ids | webhook -> job done s | webhook -> task running s | missing-ids SQL median ms (max) |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|");
    for m in &results {
        println!(
            "| {} | {:.1} | {} | {} | {:.3} | {:.3} | {:.2} ({:.2}) |",
            m.rows,
            m.fill.as_secs_f64(),
            m.seq_range,
            m.missing,
            m.to_job_done.as_secs_f64(),
            m.to_running.as_secs_f64(),
            m.sql_median.as_secs_f64() * 1e3,
            m.sql_max.as_secs_f64() * 1e3,
        );
    }
    if let (Some(small), Some(large)) = (results.first(), results.last()) {
        if large.rows > small.rows {
            println!(
                "\n{}x the rows: repair {:.2}x the time, missing-ids SQL {:.2}x (median).",
                large.rows / small.rows.max(1),
                large.to_running.as_secs_f64() / small.to_running.as_secs_f64(),
                large.sql_median.as_secs_f64() / small.sql_median.as_secs_f64(),
            );
        }
    }
    Ok(())
}
