//! Shared pieces of the exporter's lab tests: config, an in-process exporter, scraping with a
//! real parser, and writing to the stand-ins the way the DMS simulator does.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use aws_sdk_cloudwatch::types::{Dimension, MetricDatum};
use chrono::NaiveDateTime;
use dmsguard_exporter::Exporter;
use dmsguard_lab::harness::{self, TestDatabases};
pub use dmsguard_lab::simulator::replication::escape_query_text;
use dmsguard_pipeline::aws::AwsClients;
use dmsguard_pipeline::config::Config;
use tokio_postgres::Client;

/// Every test waits at most this long for a condition.
pub const DEADLINE: Duration = Duration::from_secs(30);

/// The DMS comment the simulator puts in front of every statement.
pub const DMS_COMMENT: &str = "/* Applied by AWS DMS 3.5.3 */ ";

/// A config for `dbs` (and moto at `moto_url`) with fast probes; `extra` is appended TOML.
pub fn config(dbs: &TestDatabases, moto_url: Option<&str>, extra: &str) -> Config {
    let aws = match moto_url {
        Some(url) => format!(
            "[aws]\nregion = \"us-east-1\"\nendpoint_url = \"{url}\"\nmax_attempts = 1\ntimeout = \"5s\"\n"
        ),
        None => String::new(),
    };
    let text = format!(
        r#"
[source]
url = "{source}"
password = "{pw}"
connect_timeout = "2s"
[redshift]
url = "{redshift}"
password = "{pw}"
connect_timeout = "2s"
{aws}
[frontier]
margin = "0s"
fallback_latency = "0s"
cloudwatch_period = "5s"
restart_settle = "10s"
[exporter]
listen = "127.0.0.1:0"
# Tests without moto would send the start-up checks to real AWS; tests/preflight_metric.rs
# turns them on.
preflight = false
[exporter.redshift_statements]
interval = "200ms"
timeout = "5s"
[exporter.cloudwatch]
interval = "200ms"
timeout = "5s"
[exporter.dms]
interval = "200ms"
timeout = "5s"
[exporter.gaps]
interval = "300ms"
timeout = "10s"
[exporter.maintenance]
interval = "200ms"
timeout = "5s"
{extra}
"#,
        // The exporter's least-privilege user of docs/grants.md, never a superuser.
        source = dbs.exporter_source().url,
        redshift = dbs.exporter_redshift().url,
        pw = dbs.env.pg_password,
    );
    Config::from_toml(&text, &|_| None).expect("test config parses")
}

/// An exporter running in this process until dropped.
pub struct RunningExporter {
    pub addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Drop for RunningExporter {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

pub async fn spawn_exporter(config: Config) -> anyhow::Result<RunningExporter> {
    harness::ensure_test_credentials();
    let exporter = Exporter::build(config).await?;
    let addr = exporter.addr();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(exporter.run_until(async move {
        let _ = stopped.await;
    }));
    Ok(RunningExporter {
        addr,
        stop: Some(stop),
    })
}

/// GETs `path` from the exporter and returns the body.
pub async fn get(addr: SocketAddr, path: &str) -> anyhow::Result<String> {
    Ok(reqwest::get(format!("http://{addr}{path}"))
        .await?
        .error_for_status()?
        .text()
        .await?)
}

/// Scrapes `/metrics` and parses it with `prometheus-parse`.
pub async fn scrape(addr: SocketAddr) -> anyhow::Result<prometheus_parse::Scrape> {
    let body = get(addr, "/metrics").await?;
    Ok(prometheus_parse::Scrape::parse(
        body.lines().map(|l| Ok(l.to_owned())),
    )?)
}

/// The value of sample `name` whose labels include all of `labels`.
pub fn value(
    scrape: &prometheus_parse::Scrape,
    name: &str,
    labels: &[(&str, &str)],
) -> Option<f64> {
    scrape
        .samples
        .iter()
        .find(|s| {
            s.metric == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(k).is_some_and(|x| x == *v))
        })
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            _ => f64::NAN,
        })
}

/// Waits until sample `name{labels}` equals `expected`.
pub async fn wait_for_value(
    addr: SocketAddr,
    name: &str,
    labels: &[(&str, &str)],
    expected: f64,
) -> anyhow::Result<()> {
    let what = format!("{name}{labels:?} == {expected}");
    harness::eventually(&what, DEADLINE, || async {
        let scrape = scrape(addr).await?;
        let got = value(&scrape, name, labels);
        if got == Some(expected) {
            Ok(Some(()))
        } else {
            anyhow::bail!("currently {got:?}")
        }
    })
    .await
}

/// UTC now as Redshift's naive timestamps.
pub fn utc_now() -> NaiveDateTime {
    chrono::Utc::now().naive_utc()
}

/// How a recorded statement ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recorded {
    Committed,
    RolledBack,
    /// Still running: no transaction row yet.
    Running,
}

/// Records a statement in SYS_QUERY_HISTORY (+ SYS_TRANSACTION_HISTORY, SYS_QUERY_TEXT) as
/// Redshift does; returns its query id.
pub async fn record_sys(redshift: &Client, sql: &str, how: Recorded) -> anyhow::Result<i64> {
    let now = utc_now();
    let txn: i64 = redshift
        .query_one("SELECT nextval('lab_transaction_id_seq')", &[])
        .await?
        .get(0);
    let qid: i64 = redshift
        .query_one("SELECT nextval('lab_query_id_seq')", &[])
        .await?
        .get(0);
    let status = if how == Recorded::Running {
        "running"
    } else {
        "success"
    };
    let truncated: String = sql.chars().take(4000).collect();
    let kind = sql
        .trim_start_matches(DMS_COMMENT)
        .split_whitespace()
        .next()
        .unwrap_or("")
        .to_owned();
    redshift
        .execute(
            "INSERT INTO sys_query_history (query_id, transaction_id, query_type, status, \
             start_time, end_time, query_text, database_name) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, 'dev')",
            &[
                &qid,
                &txn,
                &kind,
                &status,
                &now,
                &(how != Recorded::Running).then_some(now),
                &truncated,
            ],
        )
        .await?;
    // SYS_QUERY_TEXT stores newlines and backslashes escaped.
    let chars: Vec<char> = escape_query_text(sql).chars().collect();
    for (i, piece) in chars.chunks(4000).enumerate() {
        let piece: String = piece.iter().collect();
        redshift
            .execute(
                "INSERT INTO sys_query_text (query_id, transaction_id, start_time, sequence, text) \
                 VALUES ($1, $2, $3, $4, $5)",
                &[&qid, &txn, &now, &(i as i32), &piece],
            )
            .await?;
    }
    if how != Recorded::Running {
        settle_sys(redshift, qid, how).await?;
    }
    Ok(qid)
}

/// Finishes a running SYS statement.
pub async fn settle_sys(redshift: &Client, query_id: i64, how: Recorded) -> anyhow::Result<()> {
    let txn_status = match how {
        Recorded::RolledBack => "rolledback",
        _ => "committed",
    };
    redshift
        .execute(
            "UPDATE sys_query_history SET status = 'success', end_time = $2 WHERE query_id = $1",
            &[&query_id, &utc_now()],
        )
        .await?;
    redshift
        .execute(
            "INSERT INTO sys_transaction_history (transaction_id, status, transaction_start_time, \
             commit_start_time, commit_end_time, undo_transaction_id) \
             SELECT transaction_id, $2, start_time, end_time, end_time, -1 \
             FROM sys_query_history WHERE query_id = $1",
            &[&query_id, &txn_status],
        )
        .await?;
    // The transaction's own COMMIT or ROLLBACK statement, which a non-superuser with SYSLOG
    // ACCESS UNRESTRICTED sees (SYS_TRANSACTION_HISTORY is for superusers only).
    let end = if how == Recorded::RolledBack {
        "ROLLBACK"
    } else {
        "COMMIT"
    };
    redshift
        .execute(
            "INSERT INTO sys_query_history (user_id, query_id, transaction_id, query_type, status, \
             start_time, end_time, query_text, database_name) \
             SELECT user_id, nextval('lab_query_id_seq'), transaction_id, 'UTILITY', 'success', \
             end_time, end_time, $2, database_name FROM sys_query_history WHERE query_id = $1",
            &[&query_id, &end],
        )
        .await?;
    Ok(())
}

/// Records a statement in STL_QUERY and STL_QUERYTEXT (200-character pieces), and its
/// transaction's end (COMMIT, or ROLLBACK when `rolled_back`) in STL_UTILITYTEXT.
pub async fn record_stl(redshift: &Client, sql: &str, rolled_back: bool) -> anyhow::Result<i64> {
    let now = utc_now();
    let qid: i64 = redshift
        .query_one("SELECT nextval('lab_query_id_seq')", &[])
        .await?
        .get(0);
    let xid: i64 = redshift
        .query_one("SELECT nextval('lab_transaction_id_seq')", &[])
        .await?
        .get(0);
    let truncated: String = sql.chars().take(4000).collect();
    // A statement that ran to completion has `aborted` = 0 even when its transaction rolls
    // back; the rollback is the ROLLBACK statement in STL_UTILITYTEXT.
    redshift
        .execute(
            "INSERT INTO stl_query (query, xid, database, querytxt, starttime, endtime, aborted) \
             VALUES ($1, $2, 'dev', $3, $4, $4, 0)",
            &[&(qid as i32), &xid, &truncated, &now],
        )
        .await?;
    redshift
        .execute(
            "INSERT INTO stl_utilitytext (xid, starttime, endtime, sequence, text) \
             VALUES ($1, $2, $2, 0, $3)",
            &[&xid, &now, &if rolled_back { "ROLLBACK" } else { "COMMIT" }],
        )
        .await?;
    // STL_QUERYTEXT stores newlines and backslashes escaped.
    let chars: Vec<char> = escape_query_text(sql).chars().collect();
    for (i, piece) in chars.chunks(200).enumerate() {
        let piece: String = piece.iter().collect();
        redshift
            .execute(
                "INSERT INTO stl_querytext (xid, query, sequence, text) VALUES ($1, $2, $3, $4)",
                &[&xid, &(qid as i32), &(i as i32), &piece],
            )
            .await?;
    }
    Ok(qid)
}

/// A DMS bulk statement over `table` (`public.orders`), in the lab simulator's shape.
pub fn bulk_statement(kind: &str, table: &str, seq: (i64, i64)) -> String {
    let (schema, name) = table.split_once('.').expect("schema.table");
    let target = format!("\"{schema}\".\"{name}\"");
    let changes = "\"public\".\"awsdms_changes1a2b3c4d\"";
    let tail = format!(
        "changes.\"tbl\" = '{table}' AND changes.\"seq\" >= {} AND changes.\"seq\" <= {}",
        seq.0, seq.1
    );
    match kind {
        "insert" => format!(
            "{DMS_COMMENT}INSERT INTO {target} (\"id\",\"status\") SELECT CAST(changes.\"seg1\" AS bigint), CAST(changes.\"c2\" AS varchar(20)) FROM {changes} changes WHERE changes.\"op\" = 'I' AND {tail}"
        ),
        "delete" => format!(
            "{DMS_COMMENT}DELETE FROM {target} USING {changes} changes WHERE {target}.\"id\" = CAST(changes.\"seg1\" AS bigint) AND changes.\"op\" = 'D' AND {tail}"
        ),
        "update" => format!(
            "{DMS_COMMENT}UPDATE {target} SET \"status\" = CAST(changes.\"c2\" AS varchar(20)) FROM {changes} changes WHERE {target}.\"id\" = CAST(changes.\"seg1\" AS bigint) AND changes.\"op\" = 'U' AND {tail}"
        ),
        other => panic!("unknown kind {other}"),
    }
}

/// A bulk UPDATE over a wide table, longer than the 4000 characters the history keeps.
pub fn wide_update(table: &str, columns: usize) -> String {
    let (schema, name) = table.split_once('.').expect("schema.table");
    let target = format!("\"{schema}\".\"{name}\"");
    let sets: Vec<String> = (0..columns)
        .map(|i| {
            format!(
                "\"column_with_a_long_name_{i}\" = CAST(changes.\"c{}\" AS varchar(256))",
                i + 2
            )
        })
        .collect();
    format!(
        "{DMS_COMMENT}UPDATE {target} SET {} FROM \"public\".\"awsdms_changes1a2b3c4d\" changes WHERE {target}.\"id\" = CAST(changes.\"seg1\" AS bigint) AND changes.\"tbl\" = '{table}' AND changes.\"op\" = 'U' AND changes.\"seq\" >= 1 AND changes.\"seq\" <= 9",
        sets.join(", ")
    )
}

/// Creates a replication instance, two endpoints and a CDC task in moto; returns the task ARN.
#[allow(unused_imports)]
pub use dmsguard_lab::harness::create_dms_task as create_task;

/// Puts one DMS datapoint into CloudWatch with the dimensions in DMS's order.
pub async fn put_datapoint(
    aws: &AwsClients,
    metric: &str,
    instance: &str,
    task_resource_id: Option<&str>,
    value: f64,
    at: SystemTime,
) -> anyhow::Result<()> {
    let mut dims = vec![Dimension::builder()
        .name("ReplicationInstanceIdentifier")
        .value(instance)
        .build()];
    if let Some(task) = task_resource_id {
        dims.push(
            Dimension::builder()
                .name("ReplicationTaskIdentifier")
                .value(task)
                .build(),
        );
    }
    aws.cloudwatch
        .put_metric_data()
        .namespace("AWS/DMS")
        .metric_data(
            MetricDatum::builder()
                .metric_name(metric)
                .set_dimensions(Some(dims))
                .value(value)
                .timestamp(at.into())
                .build(),
        )
        .send()
        .await?;
    Ok(())
}
