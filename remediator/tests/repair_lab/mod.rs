//! Set-up shared by the data-repair tests: a source table with awkward types, its DMS-typed
//! target copied row by row the way DMS writes it, an independent comparison of both sides,
//! moto with a running task, and runs of the real `dmsguard-remediator` binary.

#![allow(dead_code)]

use std::process::Output;
use std::time::Duration;

use dmsguard_lab::harness::{self, eventually, Moto, TestDatabases};
use dmsguard_pipeline::aws::AwsClients;
use tokio_postgres::Client;

#[path = "../alert_rules/mod.rs"]
pub mod alert_rules;

pub const TOKEN: &str = "repair-tests-token-0123456789abcdef";

/// Extra wide columns `pad_01..` make DMS's UPDATE longer than the 4000 characters the
/// system views keep in one row.
pub fn source_ddl(pads: usize) -> String {
    let mut ddl = String::from(
        "CREATE TYPE order_status AS ENUM ('new', 'paid', 'shipped');\n\
         CREATE TABLE public.orders (\n\
           id bigint PRIMARY KEY,\n\
           created_at timestamptz NOT NULL,\n\
           paid boolean NOT NULL,\n\
           doc jsonb,\n\
           tags text[],\n\
           ref uuid,\n\
           amount numeric(12,2),\n\
           status order_status,\n\
           note text,\n\
           blob bytea",
    );
    for i in 1..=pads {
        ddl.push_str(&format!(",\n  pad_{i:02} text"));
    }
    ddl.push_str("\n);");
    ddl
}

/// The target as DMS creates it: booleans, json, arrays, uuids, enums, bytea as varchar.
pub fn target_ddl(pads: usize) -> String {
    let mut ddl = String::from(
        "CREATE TABLE public.orders (\n\
           id bigint NOT NULL,\n\
           created_at timestamptz,\n\
           paid varchar(5),\n\
           doc varchar(65535),\n\
           tags varchar(65535),\n\
           ref varchar(36),\n\
           amount numeric(12,2),\n\
           status varchar(65535),\n\
           note varchar(65535),\n\
           blob varchar(65535)",
    );
    for i in 1..=pads {
        ddl.push_str(&format!(",\n  pad_{i:02} varchar(65535)"));
    }
    ddl.push_str("\n);");
    ddl
}

/// Source rows `1..=n`: the first `yesterday` created yesterday (UTC), the rest today.
pub async fn fill_source(
    source: &Client,
    n: i64,
    yesterday: i64,
    pads: usize,
) -> anyhow::Result<()> {
    let mut pad_cols = String::new();
    let mut pad_vals = String::new();
    for i in 1..=pads {
        pad_cols.push_str(&format!(", pad_{i:02}"));
        pad_vals.push_str(&format!(", 'pad {i} of ' || g"));
    }
    source
        .execute(
            &format!(
                "INSERT INTO public.orders (id, created_at, paid, doc, tags, ref, amount, status, note, blob{pad_cols}) \
                 SELECT g, \
                   CASE WHEN g <= $1 THEN date_trunc('day', now() AT TIME ZONE 'UTC') - interval '1 day' + g * interval '1 second' \
                        ELSE date_trunc('day', now() AT TIME ZONE 'UTC') + g * interval '1 second' END AT TIME ZONE 'UTC', \
                   g % 2 = 0, \
                   CASE WHEN g % 3 = 0 THEN NULL ELSE jsonb_build_object('n', g, 'q', 'it''s \"x\"', 'a', jsonb_build_array(true, null, 2.5)) END, \
                   ARRAY['t' || g, 'quote\"d', NULL], \
                   CASE WHEN g % 4 = 0 THEN NULL ELSE md5(g::text)::uuid END, \
                   g * 1.25, \
                   (ARRAY['new','paid','shipped'])[1 + g % 3]::order_status, \
                   'héllo ' || g || E'\\nline; DROP TABLE x; --', \
                   CASE WHEN g % 5 = 0 THEN NULL ELSE decode(lpad(to_hex(g), 4, '0'), 'hex') END \
                   {pad_vals} \
                 FROM generate_series(1, $2::bigint) g"
            ),
            &[&yesterday, &n],
        )
        .await?;
    Ok(())
}

/// Every source column read as the text DMS puts in the target, in a fixed order; NULL stays
/// NULL. Independent of the translator.
pub fn source_text_columns(pads: usize) -> String {
    let mut cols = String::from(
        "id, to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS'), paid::text, doc::text, \
         tags::text, ref::text, amount::text, status::text, note, \
         '\\x' || encode(blob, 'hex')",
    );
    for i in 1..=pads {
        cols.push_str(&format!(", pad_{i:02}"));
    }
    cols
}

/// The target's columns in the order of [`source_text_columns`].
pub fn target_text_columns(pads: usize) -> String {
    let mut cols = String::from(
        "id, to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS'), paid, doc, tags, ref, \
         amount::text, status, note, blob",
    );
    for i in 1..=pads {
        cols.push_str(&format!(", pad_{i:02}"));
    }
    cols
}

type TextRow = (i64, Vec<Option<String>>);

async fn text_rows(client: &Client, columns: &str, ids: &[i64]) -> anyhow::Result<Vec<TextRow>> {
    let rows = client
        .query(
            &format!("SELECT {columns} FROM public.orders WHERE id = ANY($1) ORDER BY id"),
            &[&ids],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| {
            let id: i64 = r.get(0);
            let values = (1..r.len())
                .map(|i| r.get::<_, Option<String>>(i))
                .collect();
            (id, values)
        })
        .collect())
}

/// Copies source rows `ids` into the target as DMS would write them (independent SQL).
pub async fn copy_as_dms(
    source: &Client,
    target: &Client,
    ids: &[i64],
    pads: usize,
) -> anyhow::Result<()> {
    let rows = text_rows(source, &source_text_columns(pads), ids).await?;
    let n = 10 + pads;
    let mut names =
        String::from("id, created_at, paid, doc, tags, ref, amount, status, note, blob");
    for i in 1..=pads {
        names.push_str(&format!(", pad_{i:02}"));
    }
    let placeholders: Vec<String> = (1..=n)
        .map(|i| match i {
            1 => "CAST($1::text AS bigint)".to_owned(),
            2 => "CAST($2::text || '+00' AS timestamptz)".to_owned(),
            7 => "CAST($7::text AS numeric(12,2))".to_owned(),
            _ => format!("${i}"),
        })
        .collect();
    let sql = format!(
        "INSERT INTO public.orders ({names}) VALUES ({})",
        placeholders.join(", ")
    );
    let statement = target.prepare(&sql).await?;
    for (id, values) in rows {
        let id_text = id.to_string();
        let mut params: Vec<Option<String>> = vec![Some(id_text)];
        params.extend(values);
        let refs: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = params
            .iter()
            .map(|p| p as &(dyn tokio_postgres::types::ToSql + Sync))
            .collect();
        target.execute(&statement, &refs).await?;
    }
    Ok(())
}

/// Asserts that the target holds exactly the source's rows `ids`, every column equal as DMS
/// writes it.
pub async fn assert_target_equals_source(
    source: &Client,
    target: &Client,
    ids: &[i64],
    pads: usize,
) -> anyhow::Result<()> {
    let expected = text_rows(source, &source_text_columns(pads), ids).await?;
    let actual = text_rows(target, &target_text_columns(pads), ids).await?;
    assert_eq!(expected.len(), ids.len(), "every id exists at the source");
    assert_eq!(
        actual.iter().map(|r| r.0).collect::<Vec<_>>(),
        expected.iter().map(|r| r.0).collect::<Vec<_>>(),
        "target ids"
    );
    for (e, a) in expected.iter().zip(&actual) {
        assert_eq!(e, a, "row {} differs", e.0);
    }
    Ok(())
}

/// Ids of the target table, ascending.
pub async fn target_ids(target: &Client) -> anyhow::Result<Vec<i64>> {
    Ok(target
        .query("SELECT id FROM public.orders ORDER BY id", &[])
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect())
}

/// How many rows the target has with id `id` (0, 1, or more if duplicated).
pub async fn count_id(target: &Client, id: i64) -> anyhow::Result<i64> {
    Ok(target
        .query_one("SELECT count(*) FROM public.orders WHERE id = $1", &[&id])
        .await?
        .get(0))
}

/// moto with one replication instance and running task `task`.
pub async fn moto_with_task(task: &str, instance: &str) -> anyhow::Result<(Moto, AwsClients)> {
    let moto = Moto::spawn().await?;
    let aws = AwsClients::new(&harness::aws_config(&moto.url())).await;
    let arn = harness::create_dms_task(&aws, instance, task).await?;
    harness::start_dms_task(&aws, &arn).await?;
    Ok((moto, aws))
}

/// The task's status and whether it was ever stopped (moto records the stop date).
pub async fn task_status(aws: &AwsClients, task: &str) -> anyhow::Result<(String, bool)> {
    let out = aws.dms.describe_replication_tasks().send().await?;
    let t = out
        .replication_tasks()
        .iter()
        .find(|t| t.replication_task_identifier() == Some(task))
        .expect("task exists");
    Ok((
        t.status().unwrap_or_default().to_owned(),
        t.replication_task_stats()
            .and_then(|s| s.stop_date())
            .is_some(),
    ))
}

/// Nothing replicates these tables while a test repairs them: every row is settled at once.
pub const FRONTIER: &str = "[frontier]\nmargin = \"0s\"\nfallback_latency = \"0s\"\n\n";

/// The config file text for `dbs`, `moto` (optional), extra `[redshift]` keys and extra sections.
pub fn config_text(
    dbs: &TestDatabases,
    moto_url: Option<&str>,
    redshift_extra: &str,
    extra: &str,
) -> String {
    let pw = &dbs.env.pg_password;
    let aws = moto_url
        .map(|url| {
            format!(
                "[aws]\nregion = \"us-east-1\"\nendpoint_url = \"{url}\"\nmax_attempts = 1\ntimeout = \"10s\"\n\n"
            )
        })
        .unwrap_or_default();
    format!(
        "[source]\nurl = \"{}\"\npassword = \"{pw}\"\n\n[redshift]\nurl = \"{}\"\npassword = \"{pw}\"\n{redshift_extra}\n{aws}{FRONTIER}{extra}{}",
        // The remediator's least-privilege user of docs/grants.md, never a superuser.
        dbs.remediator_source().url,
        dbs.remediator_redshift().url,
        dbs.ledger_section(),
    )
}

/// Runs the `dmsguard-remediator` binary with `config` and `args`.
pub fn run_binary(config: &str, args: &[&str]) -> anyhow::Result<Output> {
    harness::ensure_test_credentials();
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("dmsguard.toml");
    std::fs::write(&path, config)?;
    Ok(
        std::process::Command::new(env!("CARGO_BIN_EXE_dmsguard-remediator"))
            .arg("--config")
            .arg(&path)
            .args(args)
            .env("RUST_LOG", "info")
            .output()?,
    )
}

/// The binary's stdout and stderr as text, for assertions and failure messages.
pub fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Waits until the ledger (in the source database) has `n` finished jobs; returns their
/// (outcome, summary, details) in id order.
pub async fn finished_jobs(
    dbs: &TestDatabases,
    n: usize,
) -> anyhow::Result<Vec<(String, String, serde_json::Value)>> {
    eventually(
        &format!("{n} finished jobs"),
        Duration::from_secs(60),
        || async {
            let client = dbs.source_client().await?;
            let rows = client
                .query(
                    "SELECT state, outcome, summary, details FROM dmsguard.jobs ORDER BY id",
                    &[],
                )
                .await?;
            let done = rows.len() == n
                && rows.iter().all(|r| {
                    let state: &str = r.get(0);
                    state != "queued" && state != "running"
                });
            Ok(done.then(|| {
                rows.iter()
                    .map(|r| {
                        (
                            r.get::<_, Option<String>>(1).unwrap_or_default(),
                            r.get::<_, Option<String>>(2).unwrap_or_default(),
                            r.get::<_, Option<serde_json::Value>>(3).unwrap_or_default(),
                        )
                    })
                    .collect()
            }))
        },
    )
    .await
}
