//! The exporter against the real lab: PostgreSQL stand-ins, per-test moto, a real Prometheus.
//! Each test injects a fault the way the DMS simulator does and checks the exported metric.

mod support;

use std::time::{Duration, SystemTime};

use aws_sdk_databasemigration::types::StartReplicationTaskTypeValue;
use dmsguard_lab::harness::{self, eventually, Moto, Prometheus, TestDatabases};
use dmsguard_pipeline::aws::AwsClients;
use dmsguard_pipeline::config::{Config, SystemViews, TableConfig, TaskConfig};
use support::*;

const STATEMENTS: &str = "dmsguard_redshift_dms_statements_total";
const ROLLED_BACK: &str = "dmsguard_redshift_dms_rolled_back_updates_total";

/// A config with only the probes named in `on` enabled.
fn only(mut config: Config, on: &[&str]) -> Config {
    let e = &mut config.exporter;
    e.redshift_statements.enabled = on.contains(&"redshift_statements");
    e.cloudwatch.enabled = on.contains(&"cloudwatch");
    e.dms.enabled = on.contains(&"dms");
    e.gaps.enabled = on.contains(&"gaps");
    e.maintenance.enabled = on.contains(&"maintenance");
    config
}

fn task(name: &str, instance: &str) -> TaskConfig {
    TaskConfig {
        name: name.to_owned(),
        replication_instance: instance.to_owned(),
    }
}

/// Waits until the probe has finished a successful run that started after this call.
async fn wait_for_fresh_run(addr: std::net::SocketAddr, probe: &str) -> anyhow::Result<()> {
    let after = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)?
        .as_secs_f64();
    eventually(&format!("a fresh {probe} run"), DEADLINE, || async {
        let s = scrape(addr).await?;
        let last = value(
            &s,
            "dmsguard_probe_last_success_timestamp_seconds",
            &[("probe", probe)],
        );
        let took = value(&s, "dmsguard_probe_duration_seconds", &[("probe", probe)]);
        Ok(match (last, took) {
            (Some(last), Some(took)) if last - took > after => Some(()),
            _ => None,
        })
    })
    .await
}

#[tokio::test]
async fn sys_statements_count_by_table_and_kind_and_rolled_back_updates_rise() -> anyhow::Result<()>
{
    let dbs = TestDatabases::create("exp_sys").await?;
    let rs = dbs.redshift_client().await?;
    record_sys(
        &rs,
        &bulk_statement("insert", "public.orders", (1, 250)),
        Recorded::Committed,
    )
    .await?;
    record_sys(
        &rs,
        &bulk_statement("delete", "public.orders", (251, 300)),
        Recorded::Committed,
    )
    .await?;
    // Not a DMS statement: no comment.
    rs.batch_execute(
        "INSERT INTO sys_query_history (query_id, transaction_id, status, start_time, end_time, query_text) \
         VALUES (nextval('lab_query_id_seq'), 1, 'success', now() AT TIME ZONE 'UTC', now() AT TIME ZONE 'UTC', \
         'UPDATE public.orders SET status = ''x''')",
    )
    .await?;
    let exporter = spawn_exporter(only(config(&dbs, None, ""), &["redshift_statements"])).await?;
    let addr = exporter.addr;
    let orders = |kind| [("table", "public.orders"), ("kind", kind)];
    wait_for_value(addr, STATEMENTS, &orders("insert"), 1.0).await?;
    wait_for_value(addr, STATEMENTS, &orders("delete"), 1.0).await?;
    let s = scrape(addr).await?;
    assert_eq!(
        value(&s, STATEMENTS, &orders("update")),
        None,
        "the uncommented UPDATE is not DMS's"
    );
    assert_eq!(value(&s, ROLLED_BACK, &[("table", "public.orders")]), None);

    // One-by-one: the bulk UPDATE rolls back, then DMS applies the batch row by row.
    record_sys(
        &rs,
        &bulk_statement("update", "public.orders", (301, 420)),
        Recorded::RolledBack,
    )
    .await?;
    for id in [7, 8, 9] {
        let one = format!("{DMS_COMMENT}UPDATE \"public\".\"orders\" SET \"status\" = 'shipped' WHERE \"id\" = {id}");
        record_sys(&rs, &one, Recorded::Committed).await?;
    }
    wait_for_value(addr, ROLLED_BACK, &[("table", "public.orders")], 1.0).await?;
    wait_for_value(addr, STATEMENTS, &orders("update"), 4.0).await?;

    // A wide UPDATE is cut at 4000 characters in the history; its table comes from the full
    // text reassembled from SYS_QUERY_TEXT.
    let wide = wide_update("public.wide_events", 130);
    assert!(wide.len() > 8000, "spans three pieces");
    record_sys(&rs, &wide, Recorded::RolledBack).await?;
    wait_for_value(addr, ROLLED_BACK, &[("table", "public.wide_events")], 1.0).await?;
    // SYS_QUERY_TEXT stores newlines and backslashes escaped (`\n`, `\\`): a multi-line wide
    // statement (with a backslash followed by an `n` in a comment) parses once unescaped.
    let multiline = wide
        .replace(", \"column", ",\n\"column")
        .replace(" FROM ", "\n/* C:\\new */ FROM ");
    assert!(multiline.contains('\n') && multiline.contains("C:\\new"));
    record_sys(&rs, &multiline, Recorded::Committed).await?;
    let wide_updates = [("table", "public.wide_events"), ("kind", "update")];
    wait_for_value(addr, STATEMENTS, &wide_updates, 2.0).await?;

    // A statement still running holds the cursor: the later, committed one waits for it, and
    // neither is lost or counted twice once it ends.
    let running = record_sys(
        &rs,
        &bulk_statement("insert", "public.orders", (421, 500)),
        Recorded::Running,
    )
    .await?;
    record_sys(
        &rs,
        &bulk_statement("insert", "public.orders", (501, 600)),
        Recorded::Committed,
    )
    .await?;
    wait_for_fresh_run(addr, "redshift_statements").await?;
    assert_eq!(
        value(&scrape(addr).await?, STATEMENTS, &orders("insert")),
        Some(1.0)
    );
    settle_sys(&rs, running, Recorded::Committed).await?;
    wait_for_value(addr, STATEMENTS, &orders("insert"), 3.0).await?;
    wait_for_fresh_run(addr, "redshift_statements").await?;
    assert_eq!(
        value(&scrape(addr).await?, STATEMENTS, &orders("insert")),
        Some(3.0)
    );

    // Bad input: a statement with the DMS comment that does not parse gets a metric.
    record_sys(
        &rs,
        &format!("{DMS_COMMENT}VACUUM DELETE ONLY"),
        Recorded::Committed,
    )
    .await?;
    wait_for_value(
        addr,
        "dmsguard_redshift_dms_statements_unparsed_total",
        &[],
        1.0,
    )
    .await?;

    // Apply exceptions: two rows, then a third with the same error time as the second.
    let t0 = utc_now();
    for t in [t0, t0] {
        rs.execute(
            "INSERT INTO awsdms_apply_exceptions VALUES ('orders-cdc', 'public', 'orders', $1, 'UPDATE ...', 'error')",
            &[&t],
        )
        .await?;
    }
    let exceptions = [("table", "public.orders")];
    wait_for_value(
        addr,
        "dmsguard_redshift_apply_exceptions_total",
        &exceptions,
        2.0,
    )
    .await?;
    rs.execute(
        "INSERT INTO awsdms_apply_exceptions VALUES ('orders-cdc', 'public', 'orders', $1, 'DELETE ...', 'error')",
        &[&t0],
    )
    .await?;
    wait_for_value(
        addr,
        "dmsguard_redshift_apply_exceptions_total",
        &exceptions,
        3.0,
    )
    .await?;
    drop(exporter);
    drop(rs);
    dbs.drop().await
}

#[tokio::test]
async fn stl_statements_are_read_from_stl_query_and_querytext() -> anyhow::Result<()> {
    let dbs = TestDatabases::create("exp_stl").await?;
    let rs = dbs.redshift_client().await?;
    let mut config = only(config(&dbs, None, ""), &["redshift_statements"]);
    config.redshift.system_views = SystemViews::Stl;
    // The configured target maps back to the source name as the `table` label.
    config.tables.push(TableConfig {
        source: "src.orders".to_owned(),
        target: Some("public.orders".to_owned()),
        id_column: "id".to_owned(),
        day_column: None,
        task: None,
        divergent_rows: false,
        delete_extra: false,
        scan_budget_rows: None,
    });
    record_stl(
        &rs,
        &bulk_statement("insert", "public.orders", (1, 10)),
        false,
    )
    .await?;
    // The SYS family is not read when STL is configured.
    record_sys(
        &rs,
        &bulk_statement("delete", "public.orders", (11, 12)),
        Recorded::Committed,
    )
    .await?;
    let exporter = spawn_exporter(config).await?;
    let addr = exporter.addr;
    wait_for_value(
        addr,
        STATEMENTS,
        &[("table", "src.orders"), ("kind", "insert")],
        1.0,
    )
    .await?;
    let wide = wide_update("public.orders", 30);
    assert!(wide.len() > 1000);
    record_stl(&rs, &wide, true).await?;
    wait_for_value(addr, ROLLED_BACK, &[("table", "src.orders")], 1.0).await?;
    wait_for_value(
        addr,
        STATEMENTS,
        &[("table", "src.orders"), ("kind", "update")],
        1.0,
    )
    .await?;
    let s = scrape(addr).await?;
    // The SYS views' DELETE is not counted: the configured table's delete counter stays at 0.
    assert_eq!(value(&s, STATEMENTS, &[("kind", "delete")]), Some(0.0));
    drop(exporter);
    drop(rs);
    dbs.drop().await
}

#[tokio::test]
async fn memory_and_latency_gauges_follow_cloudwatch_datapoints() -> anyhow::Result<()> {
    let dbs = TestDatabases::create("exp_cw").await?;
    let moto = Moto::spawn().await?;
    let aws = AwsClients::new(&harness::aws_config(&moto.url())).await;
    let arn = create_task(&aws, "dms-inst-1", "orders-cdc").await?;
    let resource_id = arn.rsplit(':').next().unwrap_or_default().to_owned();
    let now = SystemTime::now();
    put_datapoint(
        &aws,
        "FreeableMemory",
        "dms-inst-1",
        None,
        3.0e9,
        now - Duration::from_secs(240),
    )
    .await?;
    put_datapoint(
        &aws,
        "CDCLatencyTarget",
        "dms-inst-1",
        Some(&resource_id),
        42.0,
        now - Duration::from_secs(30),
    )
    .await?;
    let mut config = only(config(&dbs, Some(&moto.url()), ""), &["cloudwatch"]);
    config.tasks.push(task("orders-cdc", "dms-inst-1"));
    let exporter = spawn_exporter(config).await?;
    let addr = exporter.addr;
    let instance = [("replication_instance", "dms-inst-1")];
    wait_for_value(
        addr,
        "dmsguard_dms_instance_freeable_memory_bytes",
        &instance,
        3.0e9,
    )
    .await?;
    wait_for_value(
        addr,
        "dmsguard_dms_task_cdc_latency_target_seconds",
        &[("task", "orders-cdc")],
        42.0,
    )
    .await?;

    // The leak: a newer, lower datapoint replaces the value.
    put_datapoint(
        &aws,
        "FreeableMemory",
        "dms-inst-1",
        None,
        1.0e9,
        SystemTime::now(),
    )
    .await?;
    wait_for_value(
        addr,
        "dmsguard_dms_instance_freeable_memory_bytes",
        &instance,
        1.0e9,
    )
    .await?;
    let s = scrape(addr).await?;
    let age = value(
        &s,
        "dmsguard_cloudwatch_datapoint_age_seconds",
        &[("metric", "FreeableMemory"), ("resource", "dms-inst-1")],
    )
    .expect("age exported");
    assert!((0.0..120.0).contains(&age), "age {age}");
    let latency_age = value(
        &s,
        "dmsguard_cloudwatch_datapoint_age_seconds",
        &[("metric", "CDCLatencyTarget"), ("resource", "orders-cdc")],
    )
    .expect("task age exported");
    assert!(
        (25.0..150.0).contains(&latency_age),
        "latency age {latency_age}"
    );
    // No datapoint, no series.
    assert_eq!(
        value(&s, "dmsguard_dms_instance_swap_usage_bytes", &instance),
        None
    );
    assert_eq!(
        value(&s, "dmsguard_probe_success", &[("probe", "cloudwatch")]),
        Some(1.0)
    );
    drop(exporter);
    dbs.drop().await
}

#[tokio::test]
async fn task_status_state_set_flips_when_the_task_stops() -> anyhow::Result<()> {
    let dbs = TestDatabases::create("exp_dms").await?;
    let moto = Moto::spawn().await?;
    let aws = AwsClients::new(&harness::aws_config(&moto.url())).await;
    let arn = create_task(&aws, "dms-inst-1", "orders-cdc").await?;
    aws.dms
        .start_replication_task()
        .replication_task_arn(&arn)
        .start_replication_task_type(StartReplicationTaskTypeValue::StartReplication)
        .send()
        .await?;
    let mut config = only(config(&dbs, Some(&moto.url()), ""), &["dms"]);
    config.tasks.push(task("orders-cdc", "dms-inst-1"));
    config.tasks.push(task("not-in-dms", "dms-inst-1"));
    let exporter = spawn_exporter(config).await?;
    let addr = exporter.addr;
    let status = |s| [("task", "orders-cdc"), ("status", s)];
    wait_for_value(addr, "dmsguard_dms_task_status", &status("running"), 1.0).await?;
    let s = scrape(addr).await?;
    assert_eq!(
        value(&s, "dmsguard_dms_task_status", &status("stopped")),
        Some(0.0)
    );
    assert!(value(
        &s,
        "dmsguard_dms_task_start_time_seconds",
        &[("task", "orders-cdc")]
    )
    .is_some());
    // A configured task DMS does not know has every state at 0.
    let unknown: f64 = s
        .samples
        .iter()
        .filter(|x| {
            x.metric == "dmsguard_dms_task_status" && x.labels.get("task") == Some("not-in-dms")
        })
        .map(|x| match x.value {
            prometheus_parse::Value::Gauge(v) | prometheus_parse::Value::Untyped(v) => v,
            _ => f64::NAN,
        })
        .sum();
    assert_eq!(unknown, 0.0);

    aws.dms
        .stop_replication_task()
        .replication_task_arn(&arn)
        .send()
        .await?;
    wait_for_value(addr, "dmsguard_dms_task_status", &status("stopped"), 1.0).await?;
    assert_eq!(
        value(
            &scrape(addr).await?,
            "dmsguard_dms_task_status",
            &status("running")
        ),
        Some(0.0)
    );
    drop(exporter);
    dbs.drop().await
}

/// The calendar day the gap tests seed as "today", with the exporter's `[clock]` showing noon
/// of it: the windows never straddle a midnight, whenever the test runs.
fn seeded_today() -> (chrono::NaiveDate, chrono::DateTime<chrono::Utc>) {
    let today = chrono::Utc::now().date_naive();
    let noon = today.and_hms_opt(12, 0, 0).expect("noon").and_utc();
    (today, noon)
}

/// Source rows: yesterday ids 1..=300, today ids 301..=505 except 400 (the day `today`). The
/// target lost {5, 77, 300} yesterday and {301, 450, 501..=505} today, and has a stray 400.
async fn seed_gap_tables(dbs: &TestDatabases, today: chrono::NaiveDate) -> anyhow::Result<()> {
    let source = dbs.source_client().await?;
    let target = dbs.redshift_client().await?;
    source
        .batch_execute(&format!(
            "CREATE TABLE public.orders (id bigint PRIMARY KEY, created_at timestamptz NOT NULL, status text);
             INSERT INTO public.orders
               SELECT i, TIMESTAMPTZ '{today} 00:00:00+00' - interval '1 day' + i * interval '1 minute', 'new'
               FROM generate_series(1, 300) i;
             INSERT INTO public.orders
               SELECT i, TIMESTAMPTZ '{today} 00:00:00+00' + (i - 300) * interval '1 second', 'new'
               FROM generate_series(301, 505) i WHERE i <> 400;"
        ))
        .await?;
    target
        .batch_execute(
            "CREATE TABLE public.orders (id bigint, created_at timestamp, status varchar(20));
             INSERT INTO public.orders SELECT i, NULL, 'new' FROM generate_series(1, 500) i
               WHERE i NOT IN (5, 77, 300, 301, 450);",
        )
        .await?;
    Ok(())
}

fn orders_table() -> TableConfig {
    TableConfig {
        source: "public.orders".to_owned(),
        target: None,
        id_column: "id".to_owned(),
        day_column: Some("created_at".to_owned()),
        task: None,
        divergent_rows: false,
        delete_extra: false,
        scan_budget_rows: None,
    }
}

/// Yesterday's window, once read in full and clean, is read again only after
/// `finished_window_interval` (its gauges keep their values meanwhile); today's on every run;
/// a finished window that shows differences on every run, so a repair shows at once. The
/// probe runs at injected instants (`refresh_at`), against the real databases.
#[tokio::test]
async fn a_clean_finished_window_is_read_again_only_after_its_interval() -> anyhow::Result<()> {
    use dmsguard_exporter::metrics::{DayWindow, GapMetrics, TableLabels, TableWindowLabels};
    use dmsguard_exporter::probes::gaps::GapsProbe;

    let dbs = TestDatabases::create("exp_finished_window").await?;
    let (today, noon) = seeded_today();
    seed_gap_tables(&dbs, today).await?;
    let target = dbs.redshift_client().await?;
    // Yesterday is complete and clean in the target.
    target
        .batch_execute(
            "INSERT INTO public.orders VALUES (5, NULL, 'new'), (77, NULL, 'new'), (300, NULL, 'new')",
        )
        .await?;
    let mut config = only(config(&dbs, None, ""), &["gaps"]);
    config.tables.push(orders_table());
    config.exporter.finished_window_interval = Duration::from_secs(3600);
    let mut registry = prometheus_client::registry::Registry::default();
    let metrics = GapMetrics::register(&mut registry);
    let mut probe = GapsProbe::new(
        std::sync::Arc::new(config),
        metrics.clone(),
        dmsguard_pipeline::frontier::ProgressBoard::default(),
    )?;
    let missing = |window| {
        metrics
            .missing_ids
            .get_or_create(&TableWindowLabels {
                table: "public.orders".to_owned(),
                window,
            })
            .get()
    };
    let minutes = |m: i64| noon + chrono::Duration::minutes(m);

    probe.refresh_at(noon).await?;
    let frontier = metrics
        .frontier_id
        .get_or_create(&TableLabels {
            table: "public.orders".to_owned(),
        })
        .get();
    assert_eq!(frontier, 505, "every id judged");
    assert_eq!(missing(DayWindow::Yesterday), 0);
    assert_eq!(missing(DayWindow::Today), 7);

    // DMS loses a row of each day.
    target
        .batch_execute("DELETE FROM public.orders WHERE id IN (10, 310)")
        .await?;
    probe.refresh_at(minutes(10)).await?;
    assert_eq!(missing(DayWindow::Today), 8, "today: read on every run");
    assert_eq!(
        missing(DayWindow::Yesterday),
        0,
        "yesterday: read in full and clean 10 minutes ago, not read again"
    );
    probe.refresh_at(minutes(59)).await?;
    assert_eq!(missing(DayWindow::Yesterday), 0);
    probe.refresh_at(minutes(60)).await?;
    assert_eq!(
        missing(DayWindow::Yesterday),
        1,
        "read again after the interval"
    );

    // With a difference it is read on every run: the repair shows at the next one.
    target
        .batch_execute("INSERT INTO public.orders VALUES (10, NULL, 'new')")
        .await?;
    probe.refresh_at(minutes(61)).await?;
    assert_eq!(missing(DayWindow::Yesterday), 0);
    drop(probe);
    dbs.drop().await
}

/// A row whose UPDATE DMS lost counts in `dmsguard_table_divergent_rows` only from the second
/// comparison that sees it (two comparisons separated by more than the replication latency,
/// here 0), and no longer once the row is repaired. The probe runs at injected instants.
#[tokio::test]
async fn divergent_rows_count_once_seen_twice_and_clear_after_the_repair() -> anyhow::Result<()> {
    use dmsguard_exporter::metrics::{DayWindow, GapMetrics, TableWindowLabels};
    use dmsguard_exporter::probes::gaps::GapsProbe;

    let dbs = TestDatabases::create("exp_divergent").await?;
    let (today, noon) = seeded_today();
    let source = dbs.source_client().await?;
    let target = dbs.redshift_client().await?;
    // Yesterday ids 1..=100, today 101..=150, replicated as DMS writes them.
    source
        .batch_execute(&format!(
            "CREATE TABLE public.orders (id bigint PRIMARY KEY, created_at timestamptz NOT NULL, paid boolean, status text);
             INSERT INTO public.orders
               SELECT i, TIMESTAMPTZ '{today} 00:00:00+00' + (i - 101) * interval '10 minutes', i % 2 = 0, 'new ' || i
               FROM generate_series(1, 150) i;"
        ))
        .await?;
    target
        .batch_execute(&format!(
            "CREATE TABLE public.orders (id bigint, created_at timestamp, paid varchar(5), status varchar(80));
             INSERT INTO public.orders
               SELECT i, TIMESTAMP '{today} 00:00:00' + (i - 101) * interval '10 minutes',
                      CASE WHEN i % 2 = 0 THEN 'true' ELSE 'false' END, 'new ' || i
               FROM generate_series(1, 150) i;"
        ))
        .await?;
    let mut config = only(config(&dbs, None, ""), &["gaps"]);
    config.tables.push(TableConfig {
        divergent_rows: true,
        ..orders_table()
    });
    // Yesterday read on every run too (its slow schedule has a test of its own).
    config.exporter.finished_window_interval = Duration::ZERO;
    let mut registry = prometheus_client::registry::Registry::default();
    let metrics = GapMetrics::register(&mut registry);
    let mut probe = GapsProbe::new(
        std::sync::Arc::new(config),
        metrics.clone(),
        dmsguard_pipeline::frontier::ProgressBoard::default(),
    )?;
    let divergent = |window| {
        metrics
            .divergent_rows
            .get_or_create(&TableWindowLabels {
                table: "public.orders".to_owned(),
                window,
            })
            .get()
    };
    let minutes = |m: i64| noon + chrono::Duration::minutes(m);

    probe.refresh_at(noon).await?;
    assert_eq!(divergent(DayWindow::Yesterday), 0);
    assert_eq!(divergent(DayWindow::Today), 0);

    // DMS loses an UPDATE of yesterday's 40 and of today's 120 and 150 (the last id).
    source
        .batch_execute(
            "UPDATE public.orders SET status = 'paid', paid = NOT paid WHERE id IN (40, 120, 150)",
        )
        .await?;
    probe.refresh_at(minutes(5)).await?;
    assert_eq!(
        divergent(DayWindow::Today),
        0,
        "seen once: may be in flight"
    );
    assert_eq!(divergent(DayWindow::Yesterday), 0);
    probe.refresh_at(minutes(10)).await?;
    assert_eq!(
        divergent(DayWindow::Today),
        2,
        "seen twice, past the latency"
    );
    assert_eq!(divergent(DayWindow::Yesterday), 1);

    // The repair: the rows equal again.
    target
        .batch_execute("UPDATE public.orders SET status = 'paid', paid = CASE WHEN paid = 'true' THEN 'false' ELSE 'true' END WHERE id IN (40, 120, 150)")
        .await?;
    probe.refresh_at(minutes(15)).await?;
    assert_eq!(divergent(DayWindow::Today), 0);
    assert_eq!(divergent(DayWindow::Yesterday), 0);
    drop(probe);
    dbs.drop().await
}

/// A window larger than the scan budget is read in slices over successive runs: the progress
/// gauge moves and reaches a full pass, ids missing in the first and the last slice both count
/// after one pass, a repaired slice's count drops at its next read, no run reads more ids per
/// side than the budget, and a finished window read clean in slices waits for
/// `finished_window_interval`. The probe runs at injected instants, as the exporter's user.
#[tokio::test]
async fn a_window_larger_than_the_budget_is_read_in_slices_over_successive_runs(
) -> anyhow::Result<()> {
    use dmsguard_exporter::metrics::{DayWindow, GapMetrics, TableWindowLabels};
    use dmsguard_exporter::probes::gaps::GapsProbe;

    let dbs = TestDatabases::create("exp_scan_budget").await?;
    let (today, noon) = seeded_today();
    // Yesterday 1..=300 lost {5, 77, 300}; today 301..=505 lost {301, 450, 501..=505}.
    seed_gap_tables(&dbs, today).await?;
    let target = dbs.redshift_client().await?;
    let mut config = only(config(&dbs, None, ""), &["gaps"]);
    config.tables.push(TableConfig {
        scan_budget_rows: Some(200),
        ..orders_table()
    });
    config.exporter.finished_window_interval = Duration::from_secs(3600);
    let mut registry = prometheus_client::registry::Registry::default();
    let metrics = GapMetrics::register(&mut registry);
    let mut probe = GapsProbe::new(
        std::sync::Arc::new(config),
        metrics.clone(),
        dmsguard_pipeline::frontier::ProgressBoard::default(),
    )?;
    let labels = |window| TableWindowLabels {
        table: "public.orders".to_owned(),
        window,
    };
    let missing = |window| metrics.missing_ids.get_or_create(&labels(window)).get();
    let progress = |window| metrics.scan_progress.get_or_create(&labels(window)).get();
    let scanned = || {
        DayWindow::ALL
            .iter()
            .map(|w| metrics.scanned_ids.get_or_create(&labels(*w)).get())
            .sum::<u64>()
    };
    let completed = |window| {
        metrics
            .scan_pass_completed
            .get_or_create(&labels(window))
            .get()
    };
    let minutes = |m: i64| noon + chrono::Duration::minutes(m);
    let seconds = |t: chrono::DateTime<chrono::Utc>| t.timestamp() as f64;
    let (yesterday, today_w) = (DayWindow::Yesterday, DayWindow::Today);

    // Run 1: 200 ids shared by two windows (300 and 205 ids): 100 each.
    probe.refresh_at(minutes(0)).await?;
    assert_eq!(scanned(), 200, "the budget, and no more");
    assert_eq!(progress(yesterday), 1.0 / 3.0);
    assert_eq!(progress(today_w), 100.0 / 205.0);
    assert_eq!(missing(yesterday), 2, "5 and 77, in the first slice");
    assert_eq!(missing(today_w), 1, "301");
    assert_eq!(completed(yesterday), 0.0, "no pass ended yet");
    // Run 2.
    probe.refresh_at(minutes(1)).await?;
    assert_eq!(scanned(), 400);
    assert_eq!(progress(yesterday), 2.0 / 3.0);
    assert_eq!(progress(today_w), 200.0 / 205.0);
    assert_eq!(missing(today_w), 2, "and 450");
    // Run 3: today needs 5 ids, yesterday gets the rest; both passes end.
    probe.refresh_at(minutes(2)).await?;
    assert_eq!(scanned(), 505);
    assert_eq!(progress(yesterday), 1.0);
    assert_eq!(progress(today_w), 1.0);
    assert_eq!(missing(yesterday), 3, "first and last slices both counted");
    assert_eq!(missing(today_w), 7);
    assert_eq!(
        metrics.extra_ids.get_or_create(&labels(today_w)).get(),
        1,
        "400"
    );
    assert_eq!(completed(yesterday), seconds(minutes(2)));
    assert_eq!(completed(today_w), seconds(minutes(2)));

    // Yesterday is repaired: the first slice's count drops at its next read, while the last
    // slice keeps its last result until it is read again.
    target
        .batch_execute(
            "INSERT INTO public.orders VALUES (5, NULL, 'new'), (77, NULL, 'new'), (300, NULL, 'new')",
        )
        .await?;
    probe.refresh_at(minutes(3)).await?;
    assert_eq!(missing(yesterday), 1, "300: its slice not read again yet");
    assert_eq!(progress(yesterday), 1.0 / 3.0, "a new pass began");
    probe.refresh_at(minutes(4)).await?;
    assert_eq!(missing(yesterday), 1);
    probe.refresh_at(minutes(5)).await?;
    assert_eq!(missing(yesterday), 0);
    assert_eq!(completed(yesterday), seconds(minutes(5)));

    // A pass read yesterday in full and clean: it waits for its interval, then its first slice
    // is read again.
    target
        .batch_execute("DELETE FROM public.orders WHERE id = 10")
        .await?;
    let before = metrics.scanned_ids.get_or_create(&labels(yesterday)).get();
    probe.refresh_at(minutes(30)).await?;
    assert_eq!(missing(yesterday), 0, "not read again yet");
    assert_eq!(
        metrics.scanned_ids.get_or_create(&labels(yesterday)).get(),
        before
    );
    assert!(scanned() > before, "today is read on every run");
    probe.refresh_at(minutes(65)).await?;
    assert_eq!(missing(yesterday), 1, "read again after the interval");
    assert!(progress(yesterday) < 1.0);
    drop(probe);
    dbs.drop().await
}

/// With a budget, a row whose UPDATE DMS lost counts in `dmsguard_table_divergent_rows` once
/// two reads of its slice, a pass apart and past the replication latency, saw it: in the
/// first and in the last slice alike. A table with `divergent_rows` reads each id twice (ids,
/// then content): its slices are half as wide.
#[tokio::test]
async fn divergent_rows_persist_per_id_across_passes_of_slices() -> anyhow::Result<()> {
    use dmsguard_exporter::metrics::{DayWindow, GapMetrics, TableWindowLabels};
    use dmsguard_exporter::probes::gaps::GapsProbe;

    let dbs = TestDatabases::create("exp_scan_content").await?;
    let (today, noon) = seeded_today();
    let source = dbs.source_client().await?;
    let target = dbs.redshift_client().await?;
    // Today only: ids 1..=90, the first at midnight.
    source
        .batch_execute(&format!(
            "CREATE TABLE public.orders (id bigint PRIMARY KEY, created_at timestamptz NOT NULL, status text);
             INSERT INTO public.orders
               SELECT i, TIMESTAMPTZ '{today} 00:00:00+00' + i * interval '1 minute', 'new ' || i
               FROM generate_series(1, 90) i;"
        ))
        .await?;
    target
        .batch_execute(&format!(
            "CREATE TABLE public.orders (id bigint, created_at timestamp, status varchar(80));
             INSERT INTO public.orders
               SELECT i, TIMESTAMP '{today} 00:00:00' + i * interval '1 minute', 'new ' || i
               FROM generate_series(1, 90) i;"
        ))
        .await?;
    // DMS lost the UPDATEs of the first and the last id.
    source
        .batch_execute("UPDATE public.orders SET status = 'paid' WHERE id IN (1, 90)")
        .await?;
    let mut config = only(config(&dbs, None, ""), &["gaps"]);
    config.tables.push(TableConfig {
        divergent_rows: true,
        // 60 ids per run at two reads each: slices of 30 ids.
        scan_budget_rows: Some(60),
        ..orders_table()
    });
    let mut registry = prometheus_client::registry::Registry::default();
    let metrics = GapMetrics::register(&mut registry);
    let mut probe = GapsProbe::new(
        std::sync::Arc::new(config),
        metrics.clone(),
        dmsguard_pipeline::frontier::ProgressBoard::default(),
    )?;
    let labels = TableWindowLabels {
        table: "public.orders".to_owned(),
        window: DayWindow::Today,
    };
    let divergent = || metrics.divergent_rows.get_or_create(&labels).get();
    let progress = || metrics.scan_progress.get_or_create(&labels).get();
    let minutes = |m: i64| noon + chrono::Duration::minutes(m);

    let mut seen = Vec::new();
    for run in 0..6 {
        probe.refresh_at(minutes(run)).await?;
        seen.push((progress(), divergent()));
    }
    assert_eq!(
        seen,
        vec![
            (1.0 / 3.0, 0),
            (2.0 / 3.0, 0),
            (1.0, 0),
            // The second pass sees 1 again (first slice), then 90 (last slice).
            (1.0 / 3.0, 1),
            (2.0 / 3.0, 1),
            (1.0, 2),
        ],
        "(progress, divergent) per run"
    );
    assert_eq!(
        metrics.scanned_ids.get_or_create(&labels).get(),
        6 * 60,
        "each run read its budget: 30 ids twice"
    );
    // The repair of the first id shows at its slice's next read.
    target
        .batch_execute("UPDATE public.orders SET status = 'paid' WHERE id = 1")
        .await?;
    probe.refresh_at(minutes(6)).await?;
    assert_eq!(divergent(), 1);
    drop(probe);
    dbs.drop().await
}

/// Through the running exporter (probe runs every 200 ms, scraped and parsed as Prometheus
/// does): a budget smaller than the window, a pass of slices ends, and the window's count
/// holds the ids missing in its first and its last slice.
#[tokio::test]
async fn the_running_exporter_exports_how_far_its_slices_got() -> anyhow::Result<()> {
    let dbs = TestDatabases::create("exp_scan_running").await?;
    let (today, noon) = seeded_today();
    seed_gap_tables(&dbs, today).await?;
    let mut config = only(config(&dbs, None, ""), &["gaps"]);
    config.clock.start = Some(noon);
    config.exporter.gaps.interval = Duration::from_millis(200);
    config.exporter.gaps_scan_budget_rows = 120;
    config.tables.push(orders_table());
    let exporter = spawn_exporter(config).await?;
    let addr = exporter.addr;
    let w = [("table", "public.orders"), ("window", "yesterday")];
    // Progress below 1 shows a pass under way (60 of 300 ids per run: 5 runs a pass).
    eventually("a pass under way", DEADLINE, || async {
        let s = scrape(addr).await?;
        Ok(value(&s, "dmsguard_table_scan_progress_ratio", &w)
            .filter(|p| *p > 0.0 && *p < 1.0)
            .map(|_| ()))
    })
    .await?;
    eventually("a pass ended", DEADLINE, || async {
        let s = scrape(addr).await?;
        Ok(value(
            &s,
            "dmsguard_table_scan_pass_completed_timestamp_seconds",
            &w,
        )
        .filter(|t| *t >= noon.timestamp() as f64)
        .map(|_| ()))
    })
    .await?;
    let s = scrape(addr).await?;
    assert_eq!(
        value(&s, "dmsguard_table_missing_ids", &w),
        Some(3.0),
        "5 and 77 in the first slice, 300 in the last"
    );
    assert!(value(&s, "dmsguard_table_scanned_ids_total", &w).is_some_and(|n| n >= 300.0));
    drop(exporter);
    dbs.drop().await
}

#[tokio::test]
async fn missing_ids_equal_the_dropped_rows_per_utc_day() -> anyhow::Result<()> {
    let dbs = TestDatabases::create("exp_gaps").await?;
    let (today, noon) = seeded_today();
    seed_gap_tables(&dbs, today).await?;
    let mut config = only(config(&dbs, None, ""), &["gaps"]);
    config.clock.start = Some(noon);
    config.tables.push(orders_table());
    let exporter = spawn_exporter(config).await?;
    let addr = exporter.addr;
    let w = |window| [("table", "public.orders"), ("window", window)];
    wait_for_value(addr, "dmsguard_table_missing_ids", &w("yesterday"), 3.0).await?;
    let s = scrape(addr).await?;
    // Today: 301, 450 and 501..=505 are missing. The last five are above the target's newest
    // id (the lag below), yet nothing replicates this table and its rows are settled
    // (`fallback_latency = 0s`): a quiet table's newest rows count as missing.
    assert_eq!(
        value(&s, "dmsguard_table_missing_ids", &w("today")),
        Some(7.0)
    );
    assert_eq!(
        value(&s, "dmsguard_table_extra_ids", &w("today")),
        Some(1.0)
    );
    assert_eq!(
        value(&s, "dmsguard_table_extra_ids", &w("yesterday")),
        Some(0.0)
    );
    assert_eq!(
        value(
            &s,
            "dmsguard_table_max_id_lag",
            &[("table", "public.orders")]
        ),
        Some(5.0)
    );

    // Repairing two rows brings the count down by exactly two.
    dbs.redshift_client()
        .await?
        .batch_execute("INSERT INTO public.orders VALUES (5, NULL, 'new'), (77, NULL, 'new')")
        .await?;
    wait_for_value(addr, "dmsguard_table_missing_ids", &w("yesterday"), 1.0).await?;
    drop(exporter);
    dbs.drop().await
}

#[tokio::test]
async fn maintenance_window_from_describe_clusters() -> anyhow::Result<()> {
    let dbs = TestDatabases::create("exp_maint").await?;
    let moto = Moto::spawn().await?;
    let aws = AwsClients::new(&harness::aws_config(&moto.url())).await;
    aws.redshift
        .create_cluster()
        .cluster_identifier("lab-cluster")
        .node_type("ra3.xlplus")
        .master_username("admin")
        .master_user_password("Passw0rd!")
        .preferred_maintenance_window("sun:03:00-sun:03:30")
        .send()
        .await?;
    let mut config = only(config(&dbs, Some(&moto.url()), ""), &["maintenance"]);
    config.redshift.cluster_identifier = Some("lab-cluster".to_owned());
    // The exporter reads the clock between these two.
    let before = chrono::Utc::now().timestamp();
    let exporter = spawn_exporter(config).await?;
    let addr = exporter.addr;
    wait_for_value(
        addr,
        "dmsguard_probe_success",
        &[("probe", "maintenance")],
        1.0,
    )
    .await?;
    let next = eventually("maintenance next start", DEADLINE, || async {
        let s = scrape(addr).await?;
        Ok(value(
            &s,
            "dmsguard_redshift_maintenance_next_start_seconds",
            &[],
        ))
    })
    .await?;
    let after_next = chrono::Utc::now().timestamp();
    // Worked out here, not by the exporter's code: the first Sunday 03:00:00 UTC at or after
    // the second the probe ran, minus that second, for some second the probe can have run at.
    let countdowns: Vec<i64> = (before..=after_next)
        .map(|t| next_sunday_at(t, 3) - t)
        .collect();
    // The probe counts from the instant it ran (sub-second), so within a second of one of them.
    assert!(
        countdowns.iter().any(|c| (next - *c as f64).abs() < 1.0),
        "next start in {next} s; between the clock reads it was one of {countdowns:?}"
    );
    let s = scrape(addr).await?;
    let after_active = chrono::Utc::now().timestamp();
    let active = value(&s, "dmsguard_redshift_maintenance_active", &[]);
    let possible: Vec<Option<f64>> = (before..=after_active)
        .map(|t| Some(if in_sunday_window(t, 3, 30) { 1.0 } else { 0.0 }))
        .collect();
    assert!(
        possible.contains(&active),
        "active {active:?}, possible {possible:?}"
    );
    drop(exporter);
    dbs.drop().await
}

/// The cells of the landing page's table row of probe `name` (probe, state, interval, runs,
/// last run, duration, last success, error).
fn probe_row(page: &str, name: &str) -> Option<Vec<String>> {
    let start = page.find(&format!("<tr><td>{name}</td>"))?;
    let row = &page[start..start + page[start..].find("</tr>")?];
    Some(
        row.split("<td>")
            .skip(1)
            .map(|cell| cell.trim_end_matches("</td>").to_owned())
            .collect(),
    )
}

/// The first Sunday `hour`:00:00 UTC at or after unix second `t`, as a unix second; walked
/// day by day from `t`'s date.
fn next_sunday_at(t: i64, hour: u32) -> i64 {
    use chrono::Datelike;
    let now = chrono::DateTime::from_timestamp(t, 0).expect("valid time");
    let mut day = now.date_naive();
    loop {
        let start = day.and_hms_opt(hour, 0, 0).expect("valid hour").and_utc();
        if day.weekday() == chrono::Weekday::Sun && start >= now {
            return start.timestamp();
        }
        day = day.succ_opt().expect("a next day");
    }
}

/// Whether unix second `t` falls on a Sunday between `hour`:00 and `hour`:`minutes` UTC.
fn in_sunday_window(t: i64, hour: u32, minutes: u32) -> bool {
    use chrono::{Datelike, Timelike};
    let now = chrono::DateTime::from_timestamp(t, 0).expect("valid time");
    now.weekday() == chrono::Weekday::Sun && now.hour() == hour && now.minute() < minutes
}

/// `dmsguard_probe_success` by probe, as Prometheus has it.
async fn success(
    prometheus: &Prometheus,
) -> anyhow::Result<std::collections::BTreeMap<String, f64>> {
    let mut by_probe = std::collections::BTreeMap::new();
    for r in prometheus.query("dmsguard_probe_success").await? {
        let probe = r["metric"]["probe"].as_str().unwrap_or_default().to_owned();
        let v: f64 = r["value"][1].as_str().unwrap_or("nan").parse()?;
        by_probe.insert(probe, v);
    }
    Ok(by_probe)
}

/// The end-to-end check through a real Prometheus: every probe succeeds, then the Redshift
/// database goes away and only the probes reading it report failure.
#[tokio::test]
async fn dead_redshift_fails_only_its_probes_as_prometheus_sees_it() -> anyhow::Result<()> {
    let dbs = TestDatabases::create("exp_dead").await?;
    seed_gap_tables(&dbs, seeded_today().0).await?;
    let moto = Moto::spawn().await?;
    let aws = AwsClients::new(&harness::aws_config(&moto.url())).await;
    create_task(&aws, "dms-inst-1", "orders-cdc").await?;
    put_datapoint(
        &aws,
        "FreeableMemory",
        "dms-inst-1",
        None,
        2.0e9,
        SystemTime::now(),
    )
    .await?;
    let mut config = config(&dbs, Some(&moto.url()), "");
    config.tasks.push(task("orders-cdc", "dms-inst-1"));
    config.tables.push(orders_table());
    config.redshift.maintenance_window = Some("sun:05:00-sun:05:30".to_owned());
    let exporter = spawn_exporter(config).await?;
    let addr = exporter.addr;
    let prometheus = Prometheus::spawn(&format!(
        "global: {{scrape_interval: 1s}}\nscrape_configs:\n  - job_name: dmsguard\n    static_configs:\n      - targets: ['{addr}']\n"
    ))
    .await?;
    let all = [
        "cloudwatch",
        "dms",
        "gaps",
        "maintenance",
        "redshift_statements",
    ];
    eventually(
        "every probe up in Prometheus",
        Duration::from_secs(60),
        || async {
            let s = success(&prometheus).await?;
            Ok(all.iter().all(|p| s.get(*p) == Some(&1.0)).then_some(()))
        },
    )
    .await?;
    let up = prometheus.query("up{job=\"dmsguard\"}").await?;
    assert_eq!(up[0]["value"][1], "1", "Prometheus parses the exposition");

    // Kill the Redshift database: no new connections, existing ones terminated.
    let admin = dmsguard_pipeline::db::connect(&dbs.env.database("postgres")).await?;
    admin
        .batch_execute(&format!(
            "ALTER DATABASE \"{db}\" ALLOW_CONNECTIONS false;
             SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{db}';",
            db = dbs.redshift_name
        ))
        .await?;
    let after = eventually(
        "Redshift probes down in Prometheus",
        Duration::from_secs(60),
        || async {
            let s = success(&prometheus).await?;
            Ok(
                (s.get("redshift_statements") == Some(&0.0) && s.get("gaps") == Some(&0.0))
                    .then_some(s),
            )
        },
    )
    .await?;
    for probe in ["cloudwatch", "dms", "maintenance"] {
        assert_eq!(
            after.get(probe),
            Some(&1.0),
            "{probe} keeps reporting: {after:?}"
        );
    }
    // The landing page names the failing probe and its error: once it tries to reconnect, the
    // server's own reason and SQLSTATE (55000: the database does not allow connections).
    let row = eventually(
        "the landing page to show the server's reason",
        Duration::from_secs(30),
        || async {
            let page = get(addr, "/").await?;
            Ok(probe_row(&page, "redshift_statements")
                .filter(|row| row[7].contains("(SQLSTATE 55000)")))
        },
    )
    .await?;
    assert_eq!(row[1], "failing", "{row:?}");
    assert!(
        row[7].contains(&dbs.redshift_name) && !row[7].contains("db error"),
        "the error names the database it cannot reach and why: {row:?}"
    );

    // And it recovers when the database comes back.
    admin
        .batch_execute(&format!(
            "ALTER DATABASE \"{}\" ALLOW_CONNECTIONS true",
            dbs.redshift_name
        ))
        .await?;
    wait_for_value(
        addr,
        "dmsguard_probe_success",
        &[("probe", "redshift_statements")],
        1.0,
    )
    .await?;
    drop(exporter);
    dbs.drop().await
}

#[tokio::test]
async fn every_metric_has_help_and_the_landing_page_lists_probes() -> anyhow::Result<()> {
    let dbs = TestDatabases::create("exp_help").await?;
    let mut config = only(
        config(&dbs, None, ""),
        &["redshift_statements", "maintenance"],
    );
    config.redshift.maintenance_window = Some("mon:01:00-mon:01:30".to_owned());
    let exporter = spawn_exporter(config).await?;
    let addr = exporter.addr;
    wait_for_value(
        addr,
        "dmsguard_probe_success",
        &[("probe", "maintenance")],
        1.0,
    )
    .await?;
    let body = get(addr, "/metrics").await?;
    assert!(body.ends_with("# EOF\n"), "OpenMetrics text");
    let mut families = 0;
    for line in body.lines().filter(|l| l.starts_with("# TYPE ")) {
        let name = line.split_whitespace().nth(2).unwrap_or_default();
        assert!(
            body.contains(&format!("# HELP {name} ")),
            "{name} has no HELP"
        );
        families += 1;
    }
    for name in [
        "dmsguard_probe_success",
        "dmsguard_probe_duration_seconds",
        "dmsguard_probe_last_success_timestamp_seconds",
        "dmsguard_redshift_maintenance_next_start_seconds",
        "dmsguard_redshift_maintenance_active",
    ] {
        assert!(body.contains(&format!("# HELP {name} ")), "{name} exported");
    }
    assert!(families >= 5, "{families} metric families");
    let page = get(addr, "/").await?;
    for probe in [
        "redshift_statements",
        "cloudwatch",
        "dms",
        "gaps",
        "maintenance",
    ] {
        let row = probe_row(&page, probe)
            .unwrap_or_else(|| panic!("no row for probe {probe} on the landing page: {page}"));
        assert!(
            ["ok", "pending", "failing", "off"].contains(&row[1].as_str()),
            "{probe}: {row:?}"
        );
    }
    assert_eq!(get(addr, "/healthz").await?, "ok\n");
    drop(exporter);
    dbs.drop().await
}

/// Rows replication cannot have applied yet are not judged: with an hour of assumed latency
/// and nothing older, the probe succeeds and reports no missing ids at all.
#[tokio::test]
async fn rows_replication_has_not_passed_are_not_judged() -> anyhow::Result<()> {
    let dbs = TestDatabases::create("exp_unsettled").await?;
    let (today, noon) = seeded_today();
    seed_gap_tables(&dbs, today).await?;
    let mut config = only(config(&dbs, None, ""), &["gaps"]);
    config.clock.start = Some(noon);
    config.frontier.fallback_latency = Duration::from_secs(3600);
    config.tables.push(orders_table());
    let exporter = spawn_exporter(config).await?;
    let addr = exporter.addr;
    wait_for_value(addr, "dmsguard_probe_success", &[("probe", "gaps")], 1.0).await?;
    let s = scrape(addr).await?;
    for window in ["today", "yesterday"] {
        let labels = [("table", "public.orders"), ("window", window)];
        assert_eq!(
            value(&s, "dmsguard_table_missing_ids", &labels),
            None,
            "{window}"
        );
    }
    // The lag is exported all the same: it needs no frontier.
    assert_eq!(
        value(
            &s,
            "dmsguard_table_max_id_lag",
            &[("table", "public.orders")]
        ),
        Some(5.0)
    );
    drop(exporter);
    dbs.drop().await
}

#[tokio::test]
async fn failed_task_exports_its_state_stop_reason_and_failure_message() -> anyhow::Result<()> {
    use dmsguard_lab::harness::{FailWhen, LabControl, STOP_REASON_FATAL};
    let dbs = TestDatabases::create("exp_dms_failed").await?;
    let moto = Moto::spawn().await?;
    let aws = AwsClients::new(&harness::aws_config(&moto.url())).await;
    let arn = create_task(&aws, "dms-inst-1", "orders-cdc").await?;
    aws.dms
        .start_replication_task()
        .replication_task_arn(&arn)
        .start_replication_task_type(StartReplicationTaskTypeValue::StartReplication)
        .send()
        .await?;
    let control = LabControl::new(&moto.url());
    // A stop that takes a while shows `stopping` in the state set.
    control
        .set_dms_timing(Duration::from_secs(600), Duration::ZERO)
        .await?;
    let mut config = only(config(&dbs, Some(&moto.url()), ""), &["dms"]);
    config.tasks.push(task("orders-cdc", "dms-inst-1"));
    let exporter = spawn_exporter(config).await?;
    let addr = exporter.addr;
    let status = |s| [("task", "orders-cdc"), ("status", s)];
    wait_for_value(addr, "dmsguard_dms_task_status", &status("running"), 1.0).await?;
    aws.dms
        .stop_replication_task()
        .replication_task_arn(&arn)
        .send()
        .await?;
    wait_for_value(addr, "dmsguard_dms_task_status", &status("stopping"), 1.0).await?;
    let message = "Last Error ODBC general error. Task error notification received from subtask 0";
    control
        .fail_task("orders-cdc", FailWhen::Now, STOP_REASON_FATAL, message)
        .await?;
    wait_for_value(addr, "dmsguard_dms_task_status", &status("failed"), 1.0).await?;
    let s = scrape(addr).await?;
    assert_eq!(
        value(
            &s,
            "dmsguard_dms_task_stop_info",
            &[
                ("task", "orders-cdc"),
                ("stop_reason", STOP_REASON_FATAL),
                ("last_failure_message", message),
            ],
        ),
        Some(1.0)
    );
    assert_eq!(
        value(&s, "dmsguard_dms_task_status", &status("stopping")),
        Some(0.0)
    );
    drop(exporter);
    dbs.drop().await
}

#[tokio::test]
async fn maintenance_schedule_follows_next_start_and_skips_deferred_windows() -> anyhow::Result<()>
{
    use chrono::{TimeZone, Utc};
    use dmsguard_lab::harness::{DeferredWindow, LabControl};
    let dbs = TestDatabases::create("exp_maint_sched").await?;
    let moto = Moto::spawn().await?;
    let aws = AwsClients::new(&harness::aws_config(&moto.url())).await;
    aws.redshift
        .create_cluster()
        .cluster_identifier("lab-cluster")
        .node_type("ra3.xlplus")
        .master_username("admin")
        .master_user_password("Passw0rd!")
        .preferred_maintenance_window("sun:03:00-sun:03:40")
        .send()
        .await?;
    // The cluster says: next maintenance on a Sunday 03:00 (a fixed date far ahead), deferred.
    let start = Utc.with_ymd_and_hms(2036, 12, 7, 3, 0, 0).unwrap();
    let control = LabControl::new(&moto.url());
    control
        .set_maintenance(
            "lab-cluster",
            Some(start),
            &[DeferredWindow {
                id: "freeze".into(),
                start: Utc::now() - chrono::Duration::hours(1),
                end: start + chrono::Duration::days(1),
            }],
        )
        .await?;
    let mut config = only(config(&dbs, Some(&moto.url()), ""), &["maintenance"]);
    config.redshift.cluster_identifier = Some("lab-cluster".to_owned());
    let exporter = spawn_exporter(config).await?;
    let addr = exporter.addr;
    wait_for_value(addr, "dmsguard_redshift_maintenance_deferred", &[], 1.0).await?;
    let s = scrape(addr).await?;
    // Deferred: the next one is a week after the deferred start.
    let next = start + chrono::Duration::weeks(1);
    assert_eq!(
        value(
            &s,
            "dmsguard_redshift_maintenance_next_start_timestamp_seconds",
            &[]
        ),
        Some(next.timestamp() as f64)
    );
    assert_eq!(
        value(
            &s,
            "dmsguard_redshift_maintenance_next_end_timestamp_seconds",
            &[]
        ),
        Some((next + chrono::Duration::minutes(40)).timestamp() as f64)
    );
    assert_eq!(
        value(&s, "dmsguard_redshift_maintenance_active", &[]),
        Some(0.0)
    );
    // Not deferred any more: the cluster's NextMaintenanceWindowStartTime itself.
    control
        .set_maintenance("lab-cluster", Some(start), &[])
        .await?;
    wait_for_value(
        addr,
        "dmsguard_redshift_maintenance_next_start_timestamp_seconds",
        &[],
        start.timestamp() as f64,
    )
    .await?;
    assert_eq!(
        value(
            &scrape(addr).await?,
            "dmsguard_redshift_maintenance_deferred",
            &[]
        ),
        Some(0.0)
    );
    drop(exporter);
    dbs.drop().await
}
