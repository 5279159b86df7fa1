//! The DMS simulator against the real lab: PostgreSQL source and Redshift stand-in, a moto of
//! each test's own. Healthy replication, stop/resume in DMS, and every fault's signature.

use std::panic::AssertUnwindSafe;
use std::time::{Duration, SystemTime};

use aws_sdk_cloudwatch::types::{Metric, MetricDataQuery, MetricStat};
use aws_sdk_databasemigration::types::StartReplicationTaskTypeValue;
use dmsguard_lab::harness::{self, eventually, Moto, TestDatabases};
use dmsguard_lab::simulator::control_plane::{
    instance_dimensions, task_dimensions, task_identifier, AVAILABLE_MEMORY, CDC_INCOMING_CHANGES,
    CDC_LATENCY_TARGET, FREEABLE_MEMORY, NAMESPACE,
};
use dmsguard_lab::simulator::{
    copy_rows, Fault, SimConfig, SimHandle, SimTable, Simulator, DMS_COMMENT,
};
use dmsguard_pipeline::aws::AwsClients;
use futures::FutureExt;
use sqlparser::dialect::RedshiftSqlDialect;
use sqlparser::parser::Parser;

const TASK: &str = "lab-task";
const INSTANCE: &str = "lab-instance";

struct Lab {
    dbs: TestDatabases,
    _moto: Moto,
    aws: AwsClients,
    sim: SimHandle,
}

async fn lab(tag: &str, tune: impl FnOnce(&mut SimConfig)) -> anyhow::Result<Lab> {
    let dbs = TestDatabases::create(tag).await?;
    let moto = Moto::spawn().await?;
    let aws = AwsClients::new(&harness::aws_config(&moto.url())).await;
    let mut config = SimConfig::for_test(&dbs, &moto.url());
    tune(&mut config);
    let sim = Simulator::start(config).await?;
    Ok(Lab {
        dbs,
        _moto: moto,
        aws,
        sim,
    })
}

impl Lab {
    /// Waits until the simulator has applied at least `n` changes.
    async fn applied_at_least(&self, n: u64) -> anyhow::Result<()> {
        eventually(
            &format!("{n} changes applied"),
            Duration::from_secs(30),
            || async {
                let s = self.sim.stats();
                Ok((s.applied() >= n).then_some(()))
            },
        )
        .await
    }

    /// Waits until the workload has committed `n` more changes than now.
    async fn generated_more(&self, n: u64) -> anyhow::Result<()> {
        let from = self.sim.stats().generated;
        eventually(
            &format!("{n} more changes generated"),
            Duration::from_secs(30),
            || async { Ok((self.sim.stats().generated >= from + n).then_some(())) },
        )
        .await
    }

    async fn task_arn(&self) -> String {
        self.sim.task_arn(TASK).expect("task registered")
    }

    async fn stop_task(&self) -> anyhow::Result<()> {
        self.aws
            .dms
            .stop_replication_task()
            .replication_task_arn(self.task_arn().await)
            .send()
            .await?;
        eventually(
            "the simulator to see the task stopped",
            Duration::from_secs(10),
            || async {
                let s = self.sim.stats();
                Ok((s.task(TASK).unwrap().status == "stopped").then_some(()))
            },
        )
        .await
    }

    async fn resume_task(&self) -> anyhow::Result<()> {
        self.aws
            .dms
            .start_replication_task()
            .replication_task_arn(self.task_arn().await)
            .start_replication_task_type(StartReplicationTaskTypeValue::ResumeProcessing)
            .send()
            .await?;
        Ok(())
    }

    /// Stops the workload, waits for apply to catch up, and checks target == source.
    async fn assert_converges(&self) -> anyhow::Result<()> {
        self.sim.stop_workload().await?;
        self.sim.wait_caught_up(Duration::from_secs(40)).await?;
        for t in self.sim.config().tables() {
            let diff = self.sim.compare_source_target(&t.dotted()).await?;
            assert!(diff.is_empty(), "{diff}");
            assert!(diff.source_rows > 0, "{diff}");
        }
        let s = self.sim.stats();
        assert_eq!(
            s.generated,
            s.applied() + s.dropped_changes(),
            "every source change applied exactly once: {s:?}"
        );
        Ok(())
    }

    /// Latest datapoints of a metric, newest first.
    async fn metric(
        &self,
        name: &str,
        dims: Vec<aws_sdk_cloudwatch::types::Dimension>,
    ) -> anyhow::Result<Vec<f64>> {
        let now = SystemTime::now();
        let out = self
            .aws
            .cloudwatch
            .get_metric_data()
            .start_time((now - Duration::from_secs(600)).into())
            .end_time((now + Duration::from_secs(60)).into())
            .metric_data_queries(
                MetricDataQuery::builder()
                    .id("m0")
                    .metric_stat(
                        MetricStat::builder()
                            .metric(
                                Metric::builder()
                                    .namespace(NAMESPACE)
                                    .metric_name(name)
                                    .set_dimensions(Some(dims))
                                    .build(),
                            )
                            .period(1)
                            .stat("Average")
                            .build(),
                    )
                    .build(),
            )
            .send()
            .await?;
        let r = &out.metric_data_results()[0];
        let mut points: Vec<(f64, f64)> = r
            .timestamps()
            .iter()
            .map(|t| t.as_secs_f64())
            .zip(r.values().iter().copied())
            .collect();
        points.sort_by(|a, b| b.0.total_cmp(&a.0));
        Ok(points.into_iter().map(|p| p.1).collect())
    }

    async fn task_metric(&self, name: &str) -> anyhow::Result<Vec<f64>> {
        let arn = self.task_arn().await;
        self.metric(name, task_dimensions(INSTANCE, task_identifier(&arn)))
            .await
    }

    async fn count(&self, sql: &str) -> anyhow::Result<i64> {
        let c = self.dbs.redshift_client().await?;
        Ok(c.query_one(sql, &[]).await?.get(0))
    }

    async fn finish(self) -> anyhow::Result<()> {
        let stopped = self.sim.stop().await;
        self.dbs.drop().await?;
        stopped.map(|_| ())
    }
}

/// Drops the test's databases whatever the scenario's outcome, then reports it (a failed
/// assertion's panic included).
async fn settle(
    lab: Lab,
    outcome: Result<anyhow::Result<()>, Box<dyn std::any::Any + Send>>,
) -> anyhow::Result<()> {
    lab.finish().await?;
    match outcome {
        Ok(result) => result,
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

/// `seq >= a AND … seq <= b` of a bulk statement.
fn seq_range(sql: &str) -> Option<(i64, i64)> {
    let num = |marker: &str| -> Option<i64> {
        let at = sql.find(marker)? + marker.len();
        sql[at..]
            .chars()
            .take_while(|c| c.is_ascii_digit())
            .collect::<String>()
            .parse()
            .ok()
    };
    Some((num("changes.\"seq\" >= ")?, num("changes.\"seq\" <= ")?))
}

#[tokio::test]
async fn healthy_replication_converges_and_logs_like_redshift() -> anyhow::Result<()> {
    let lab = lab("sim_healthy", |c| {
        c.tasks[0]
            .tables
            .push("public.wide_orders:90".parse().unwrap());
    })
    .await?;
    let outcome =
        AssertUnwindSafe(scenario_healthy_replication_converges_and_logs_like_redshift(&lab))
            .catch_unwind()
            .await;
    settle(lab, outcome).await
}

async fn scenario_healthy_replication_converges_and_logs_like_redshift(
    lab: &Lab,
) -> anyhow::Result<()> {
    lab.applied_at_least(2_000).await?;
    lab.assert_converges().await?;
    let s = lab.sim.stats();
    assert_eq!(s.one_by_one_batches(), 0, "{s:?}");
    assert_eq!(s.dropped_changes(), 0);

    let rs = lab.dbs.redshift_client().await?;
    // Every statement: DMS comment, success, committed, valid Redshift SQL.
    let rows = rs
        .query(
            "SELECT h.query_id, h.query_type, h.status, t.status, h.query_text, h.returned_rows
             FROM sys_query_history h JOIN sys_transaction_history t USING (transaction_id)
             WHERE h.query_type <> 'UTILITY' ORDER BY h.query_id",
            &[],
        )
        .await?;
    assert!(rows.len() >= 6, "statements logged: {}", rows.len());
    let mut kinds = std::collections::BTreeSet::new();
    let mut last_seq = 0;
    for r in &rows {
        let (id, kind, status, txn, text): (i64, String, String, String, String) =
            (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4));
        assert!(text.starts_with(DMS_COMMENT), "{text}");
        // `status` is `character(10)`: blank-padded, as on Redshift.
        assert_eq!((status.as_str(), txn.as_str()), ("success   ", "committed"));
        kinds.insert(kind.trim_end().to_owned());
        let full: String = rs
            .query_one(
                "SELECT rtrim(string_agg(rpad(text, 4000), '' ORDER BY sequence)) FROM sys_query_text WHERE query_id = $1",
                &[&id],
            )
            .await?
            .get(0);
        assert_eq!(full.chars().take(4000).collect::<String>(), text.trim_end());
        Parser::parse_sql(&RedshiftSqlDialect {}, &full)
            .map_err(|e| anyhow::anyhow!("{e}: {full}"))?;
        // Seq ranges never overlap and only grow, across tables and batches.
        let (a, b) = seq_range(&full).expect("bulk statements carry a seq range");
        assert!(a > last_seq && b >= a, "seq {a}..{b} after {last_seq}");
        last_seq = b;
    }
    assert_eq!(
        kinds.into_iter().collect::<Vec<_>>(),
        vec!["DELETE", "INSERT", "UPDATE"]
    );
    assert_eq!(last_seq, s.last_applied_seq());

    // The wide table's UPDATE is longer than 4000 characters: truncated in the history,
    // whole in SYS_QUERY_TEXT pieces and in STL_QUERYTEXT 200-character pieces.
    let wide = rs
        .query_one(
            "SELECT query_id, query_text FROM sys_query_history
             WHERE query_type = 'UPDATE' AND query_text LIKE '%wide_orders%' ORDER BY query_id DESC LIMIT 1",
            &[],
        )
        .await?;
    let wide_id: i64 = wide.get(0);
    let truncated: String = wide.get(1);
    assert_eq!(truncated.chars().count(), 4000);
    let sys_full: String = rs
        .query_one(
            "SELECT rtrim(string_agg(rpad(text, 4000), '' ORDER BY sequence)) FROM sys_query_text WHERE query_id = $1",
            &[&wide_id],
        )
        .await?
        .get(0);
    assert!(sys_full.len() > 4000);
    let stl = rs
        .query(
            "SELECT q.query, q.aborted, t.text FROM stl_query q JOIN stl_querytext t USING (query)
             WHERE q.querytxt LIKE '%UPDATE \"public\".\"wide_orders\"%'
             ORDER BY q.query DESC, t.sequence",
            &[],
        )
        .await?;
    let newest: i32 = stl[0].get(0);
    let stl_full: String = stl
        .iter()
        .filter(|r| r.get::<_, i32>(0) == newest)
        .map(|r| r.get::<_, String>(2))
        .collect();
    assert!(
        stl.iter().all(|r| r.get::<_, i32>(1) == 0),
        "nothing aborted"
    );
    assert_eq!(stl_full.trim_end(), sys_full.trim_end());
    assert_ne!(
        i64::from(newest),
        wide_id,
        "the two families use unrelated ids"
    );
    let stl_count = lab.count("SELECT count(*) FROM stl_query").await?;
    assert_eq!(stl_count as usize, rows.len());
    assert_eq!(
        lab.count("SELECT count(*) FROM awsdms_apply_exceptions")
            .await?,
        0
    );

    // CloudWatch: instance memory on the instance dimension, task metrics on instance+task.
    let freeable = lab
        .metric(FREEABLE_MEMORY, instance_dimensions(INSTANCE))
        .await?;
    assert!(!freeable.is_empty() && freeable[0] > 3.0e9, "{freeable:?}");
    let available = lab
        .metric(AVAILABLE_MEMORY, instance_dimensions(INSTANCE))
        .await?;
    assert!(!available.is_empty());
    let latency = lab.task_metric(CDC_LATENCY_TARGET).await?;
    assert!(!latency.is_empty(), "task latency datapoints");
    assert!(latency.iter().all(|v| *v < 10.0), "{latency:?}");
    Ok(())
}

#[tokio::test]
async fn stop_and_resume_in_dms_pauses_apply_without_loss() -> anyhow::Result<()> {
    let lab = lab("sim_stop_resume", |_| {}).await?;
    let outcome = AssertUnwindSafe(scenario_stop_and_resume_in_dms_pauses_apply_without_loss(
        &lab,
    ))
    .catch_unwind()
    .await;
    settle(lab, outcome).await
}

async fn scenario_stop_and_resume_in_dms_pauses_apply_without_loss(
    lab: &Lab,
) -> anyhow::Result<()> {
    lab.applied_at_least(500).await?;
    lab.stop_task().await?;
    lab.generated_more(200).await?;
    let paused_at = lab.sim.stats().applied();
    let statements = lab.count("SELECT count(*) FROM sys_query_history").await?;
    lab.generated_more(400).await?;
    assert_eq!(
        lab.sim.stats().applied(),
        paused_at,
        "nothing applied while stopped"
    );
    assert_eq!(
        lab.count("SELECT count(*) FROM sys_query_history").await?,
        statements
    );
    lab.resume_task().await?;
    lab.assert_converges().await?;
    let s = lab.sim.stats();
    assert!(s.applied() > paused_at);
    assert_eq!(s.task(TASK).unwrap().restarts, 1, "{s:?}");
    Ok(())
}

#[tokio::test]
async fn drop_rows_leaves_ids_missing_in_the_target() -> anyhow::Result<()> {
    let lab = lab("sim_drop_rows", |c| {
        c.initial_fault = Fault::DropRows { every: 25 };
    })
    .await?;
    let outcome = AssertUnwindSafe(scenario_drop_rows_leaves_ids_missing_in_the_target(&lab))
        .catch_unwind()
        .await;
    settle(lab, outcome).await
}

async fn scenario_drop_rows_leaves_ids_missing_in_the_target(lab: &Lab) -> anyhow::Result<()> {
    eventually("rows dropped", Duration::from_secs(30), || async {
        Ok((lab.sim.stats().dropped_ids().len() >= 5).then_some(()))
    })
    .await?;
    // Quiet first: once cleared, changes of dropped rows flow again.
    lab.sim.stop_workload().await?;
    lab.sim.wait_caught_up(Duration::from_secs(30)).await?;
    lab.sim.clear_fault();
    let diff = lab.sim.compare_source_target("public.orders").await?;
    let dropped: Vec<i64> = lab
        .sim
        .stats()
        .dropped_ids()
        .into_iter()
        .map(|(_, id)| id)
        .collect();
    assert!(!diff.missing_in_target.is_empty(), "{diff}");
    assert!(
        diff.missing_in_target.iter().all(|id| dropped.contains(id)),
        "missing {:?} dropped {:?}",
        diff.missing_in_target,
        dropped
    );
    assert!(diff.extra_in_target.is_empty() && diff.duplicated_in_target.is_empty());
    assert!(diff.mismatched.is_empty(), "{diff}");
    // In the system views: only successful, committed statements, and fewer rows inserted
    // than the source inserted.
    let s = lab.sim.stats();
    assert_eq!(s.one_by_one_batches(), 0);
    assert_eq!(
        lab.count("SELECT count(*) FROM sys_transaction_history WHERE status <> 'committed'")
            .await?,
        0
    );
    let inserted = lab
        .count(
            "SELECT sum(returned_rows)::bigint FROM sys_query_history WHERE query_type = 'INSERT'",
        )
        .await?;
    let source_rows: i64 = lab
        .dbs
        .source_client()
        .await?
        .query_one("SELECT max(id) FROM public.orders", &[])
        .await?
        .get(0);
    // Inserts deleted within their own batch net out, hence at most.
    assert!(
        inserted + dropped.len() as i64 <= source_rows,
        "{inserted} + {dropped:?} vs {source_rows}"
    );
    assert_eq!(
        diff.target_rows + diff.missing_in_target.len(),
        diff.source_rows
    );
    Ok(())
}

#[tokio::test]
async fn skip_update_and_skip_delete_leave_stale_and_extra_rows() -> anyhow::Result<()> {
    let lab = lab("sim_skip_changes", |_| {}).await?;
    let outcome = AssertUnwindSafe(scenario_skip_update_and_skip_delete(&lab))
        .catch_unwind()
        .await;
    settle(lab, outcome).await
}

async fn scenario_skip_update_and_skip_delete(lab: &Lab) -> anyhow::Result<()> {
    lab.applied_at_least(300).await?;
    lab.sim.set_fault(Fault::SkipUpdate { every: 4 });
    eventually("updates skipped", Duration::from_secs(30), || async {
        Ok((lab.sim.stats().skipped_updates().len() >= 5).then_some(()))
    })
    .await?;
    lab.sim.set_fault(Fault::SkipDelete { every: 4 });
    eventually("deletes skipped", Duration::from_secs(30), || async {
        Ok((lab.sim.stats().skipped_deletes().len() >= 5).then_some(()))
    })
    .await?;
    lab.sim.clear_fault();
    lab.sim.stop_workload().await?;
    lab.sim.wait_caught_up(Duration::from_secs(30)).await?;
    let s = lab.sim.stats();
    let diff = lab.sim.compare_source_target("public.orders").await?;
    let skipped_updates: Vec<i64> = s.skipped_updates().into_iter().map(|(_, id)| id).collect();
    let mut skipped_deletes: Vec<i64> = s.skipped_deletes().into_iter().map(|(_, id)| id).collect();
    skipped_deletes.sort_unstable();
    // A skipped DELETE is final: the source never has that id again, so the target keeps
    // exactly those rows extra.
    let mut extra = diff.extra_in_target.clone();
    extra.sort_unstable();
    assert_eq!(extra, skipped_deletes, "{diff}");
    // A skipped UPDATE leaves the row stale until a later UPDATE of it applies (the workload
    // may have updated it again, or deleted it): every stale row is a skipped one, and some
    // remain stale.
    assert!(!diff.mismatched.is_empty(), "{diff}");
    assert!(
        diff.mismatched
            .iter()
            .all(|m| skipped_updates.contains(&m.id)),
        "stale {:?} skipped {skipped_updates:?}",
        diff.mismatched
    );
    assert!(
        diff.missing_in_target.is_empty() && diff.duplicated_in_target.is_empty(),
        "{diff}"
    );
    // Silent: no rollback, no one-by-one, no apply exception.
    assert_eq!(s.one_by_one_batches(), 0, "{s:?}");
    assert_eq!(
        lab.count("SELECT count(*) FROM sys_transaction_history WHERE status <> 'committed'")
            .await?,
        0
    );
    assert_eq!(
        lab.count("SELECT count(*) FROM awsdms_apply_exceptions")
            .await?,
        0
    );
    assert_eq!(
        s.generated,
        s.applied() + s.dropped_changes(),
        "every source change applied or skipped exactly once: {s:?}"
    );
    Ok(())
}

#[tokio::test]
async fn missing_then_update_stays_one_by_one_until_the_row_exists() -> anyhow::Result<()> {
    let lab = lab("sim_one_by_one", |_| {}).await?;
    let outcome =
        AssertUnwindSafe(scenario_missing_then_update_stays_one_by_one_until_the_row_exists(&lab))
            .catch_unwind()
            .await;
    settle(lab, outcome).await
}

async fn scenario_missing_then_update_stays_one_by_one_until_the_row_exists(
    lab: &Lab,
) -> anyhow::Result<()> {
    lab.applied_at_least(300).await?;
    lab.sim.set_fault(Fault::MissingThenUpdate);
    eventually(
        "three one-by-one batches",
        Duration::from_secs(30),
        || async {
            let s = lab.sim.stats();
            anyhow::ensure!(s.one_by_one_batches() >= 3, "{s:?}");
            Ok(Some(()))
        },
    )
    .await?;
    let s = lab.sim.stats();
    let (table, missing) = s.dropped_ids()[0].clone();
    assert_eq!(table, "public.orders");
    assert!(s.rolled_back_updates() >= 3, "{s:?}");

    let rs = lab.dbs.redshift_client().await?;
    // The F1 signature: the latest rolled-back DMS UPDATE, its seq range in the intermediate
    // table, and the LEFT JOIN that names the missing row.
    let latest = rs
        .query_one(
            "SELECT h.query_text FROM sys_query_history h
             JOIN sys_transaction_history t ON t.transaction_id = h.transaction_id
             WHERE t.status = 'rolledback' AND h.query_type = 'UPDATE' AND h.query_text LIKE '%AWS DMS%'
             ORDER BY h.query_id DESC LIMIT 1",
            &[],
        )
        .await?;
    // `query_text` is `character(4000)`: blank-padded.
    let text = latest.get::<_, String>(0).trim_end().to_owned();
    let (a, b) = seq_range(&text).expect("seq range");
    let ct = lab.sim.changes_table(TASK).unwrap();
    assert!(text.contains(&ct.quoted()), "{text}");
    let absent: Vec<i64> = rs
        .query(
            &format!(
                "SELECT CAST(c.seg1 AS bigint) FROM {} c LEFT JOIN public.orders t ON t.id = CAST(c.seg1 AS bigint)
                 WHERE c.tbl = 'public.orders' AND c.op = 'U' AND c.seq >= $1 AND c.seq <= $2 AND t.id IS NULL",
                ct.quoted()
            ),
            &[&a, &b],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    // Rows deleted since that batch are absent too; the source tells the missing one apart.
    let still_in_source: Vec<i64> = lab
        .dbs
        .source_client()
        .await?
        .query(
            "SELECT id FROM public.orders WHERE id = ANY($1) ORDER BY id",
            &[&absent],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        still_in_source,
        vec![missing],
        "absent in target: {absent:?}"
    );
    // A batch's statements reach the system views right after the batch.
    eventually(
        "three rolled-back UPDATEs in STL_QUERY (completed, so aborted = 0; ROLLBACK in STL_UTILITYTEXT)",
        Duration::from_secs(20),
        || async {
            let n = lab
                .count(
                    "SELECT count(*) FROM stl_query q JOIN stl_utilitytext u ON u.xid = q.xid \
                     WHERE q.aborted = 0 AND TRIM(u.text) = 'ROLLBACK' AND q.querytxt LIKE '%UPDATE%'",
                )
                .await?;
            Ok((n >= 3).then_some(()))
        },
    )
    .await?;
    let exception: String = rs
        .query_one(
            "SELECT \"STATEMENT\" FROM awsdms_apply_exceptions WHERE \"TASK_NAME\" = $1 AND \"TABLE_NAME\" = 'orders' LIMIT 1",
            &[&TASK],
        )
        .await?
        .get(0);
    assert!(
        exception.ends_with(&format!("WHERE \"id\"={missing}")),
        "{exception}"
    );
    Parser::parse_sql(&RedshiftSqlDialect {}, &exception)?;
    let one_by_one_updates = lab
        .count("SELECT count(*) FROM sys_query_history WHERE query_type = 'UPDATE' AND query_text LIKE '%WHERE \"id\"=%'")
        .await?;
    assert!(
        one_by_one_updates > 3,
        "one-by-one statements logged one per row"
    );

    // Repair the row as the fix would: bulk apply returns and stays.
    let table: SimTable = "public.orders".parse()?;
    let n = copy_rows(&lab.dbs.source_client().await?, &rs, &table, &[missing]).await?;
    assert_eq!(n, 1);
    let after_repair = lab.sim.stats();
    eventually(
        "three bulk batches after the repair",
        Duration::from_secs(30),
        || async {
            let s = lab.sim.stats();
            Ok((s.tasks[0].bulk_batches >= after_repair.tasks[0].bulk_batches + 3).then_some(()))
        },
    )
    .await?;
    let s = lab.sim.stats();
    assert!(
        s.one_by_one_batches() <= after_repair.one_by_one_batches() + 1,
        "left one-by-one mode: {s:?}"
    );
    lab.sim.clear_fault();
    lab.assert_converges().await?;
    Ok(())
}

#[tokio::test]
async fn a_long_one_by_one_batch_logs_its_statements_while_it_runs() -> anyhow::Result<()> {
    // 20 ms a statement: a batch of the workload's ~200 changes takes about 4 s.
    let lab = lab("sim_one_by_one_live", |c| {
        c.one_by_one_statement_cost = Duration::from_millis(20);
    })
    .await?;
    let outcome =
        AssertUnwindSafe(scenario_a_long_one_by_one_batch_logs_its_statements_while_it_runs(&lab))
            .catch_unwind()
            .await;
    settle(lab, outcome).await
}

/// SYS_QUERY_HISTORY and STL_QUERY log a query when it completes, its transaction's end only
/// when that comes: a one-by-one batch still running shows its statements, with no end yet.
async fn scenario_a_long_one_by_one_batch_logs_its_statements_while_it_runs(
    lab: &Lab,
) -> anyhow::Result<()> {
    lab.applied_at_least(300).await?;
    lab.sim.set_fault(Fault::MissingThenUpdate);
    let rs = lab.dbs.redshift_client().await?;
    let open_txn = eventually(
        "a one-by-one statement logged before the first one-by-one batch ended",
        Duration::from_secs(30),
        || async {
            let batches_before = lab.sim.stats().one_by_one_batches();
            let row = rs
                .query_opt(
                    "SELECT h.transaction_id FROM sys_query_history h \
                     WHERE h.query_text LIKE '%WHERE \"id\"=%' AND h.query_text LIKE '%AWS DMS%' \
                     AND NOT EXISTS (SELECT 1 FROM sys_transaction_history t WHERE t.transaction_id = h.transaction_id) \
                     LIMIT 1",
                    &[],
                )
                .await?;
            Ok(row
                .filter(|_| batches_before == 0)
                .map(|r| r.get::<_, i64>(0)))
        },
    )
    .await?;
    eventually(
        "that transaction committed once its batch ended",
        Duration::from_secs(30),
        || async {
            let n = lab
                .count(&format!(
                    "SELECT count(*) FROM sys_transaction_history \
                     WHERE transaction_id = {open_txn} AND status = 'committed'"
                ))
                .await?;
            Ok((n == 1).then_some(()))
        },
    )
    .await?;
    assert!(lab.sim.stats().one_by_one_batches() >= 1);
    Ok(())
}

#[tokio::test]
async fn memory_leak_falls_until_the_task_is_restarted() -> anyhow::Result<()> {
    let lab = lab("sim_memory", |c| {
        c.initial_fault = Fault::MemoryLeak {
            bytes_per_second: 400 << 20,
        };
        c.metrics_interval = Duration::from_millis(500);
    })
    .await?;
    let outcome = AssertUnwindSafe(scenario_memory_leak_falls_until_the_task_is_restarted(&lab))
        .catch_unwind()
        .await;
    settle(lab, outcome).await
}

async fn scenario_memory_leak_falls_until_the_task_is_restarted(lab: &Lab) -> anyhow::Result<()> {
    let low = eventually(
        "FreeableMemory below 2 GiB",
        Duration::from_secs(30),
        || async {
            let v = lab
                .metric(FREEABLE_MEMORY, instance_dimensions(INSTANCE))
                .await?;
            Ok((v.len() >= 3 && v[0] < 2.0 * 1024.0 * 1024.0 * 1024.0).then_some(v))
        },
    )
    .await?;
    assert!(low[0] < low[low.len() - 1], "falls steadily: {low:?}");
    let available = lab
        .metric(AVAILABLE_MEMORY, instance_dimensions(INSTANCE))
        .await?;
    assert!(
        available[0] < available[available.len() - 1],
        "{available:?}"
    );
    // Clearing the fault stops the leak but gives nothing back; a stop and resume does.
    lab.sim.clear_fault();
    lab.stop_task().await?;
    lab.resume_task().await?;
    eventually(
        "FreeableMemory back after the restart",
        Duration::from_secs(20),
        || async {
            let v = lab
                .metric(FREEABLE_MEMORY, instance_dimensions(INSTANCE))
                .await?;
            Ok((v.first().copied().unwrap_or(0.0) > 3.9 * 1024.0 * 1024.0 * 1024.0).then_some(()))
        },
    )
    .await?;
    lab.assert_converges().await?;
    Ok(())
}

#[tokio::test]
async fn stall_keeps_running_while_latency_and_backlog_grow() -> anyhow::Result<()> {
    let lab = lab("sim_stall", |c| {
        c.metrics_interval = Duration::from_millis(500);
    })
    .await?;
    let outcome = AssertUnwindSafe(scenario_stall_keeps_running_while_latency_and_backlog_grow(
        &lab,
    ))
    .catch_unwind()
    .await;
    settle(lab, outcome).await
}

async fn scenario_stall_keeps_running_while_latency_and_backlog_grow(
    lab: &Lab,
) -> anyhow::Result<()> {
    lab.applied_at_least(300).await?;
    lab.sim.set_fault(Fault::Stall);
    lab.generated_more(100).await?;
    let stalled_at = lab.sim.stats().applied();
    let statements = lab.count("SELECT count(*) FROM sys_query_history").await?;
    let latency = eventually(
        "CDCLatencyTarget above 3 s",
        Duration::from_secs(30),
        || async {
            let v = lab.task_metric(CDC_LATENCY_TARGET).await?;
            Ok((v.first().copied().unwrap_or(0.0) > 3.0).then_some(v))
        },
    )
    .await?;
    assert!(latency[0] > latency[latency.len() - 1], "{latency:?}");
    let incoming = lab.task_metric(CDC_INCOMING_CHANGES).await?;
    assert!(incoming[0] > 100.0, "{incoming:?}");
    let s = lab.sim.stats();
    assert_eq!(s.applied(), stalled_at, "nothing applied while stalled");
    assert_eq!(s.task(TASK).unwrap().status, "running");
    assert_eq!(s.task(TASK).unwrap().blocked.as_deref(), Some("stall"));
    assert_eq!(
        lab.count("SELECT count(*) FROM sys_query_history").await?,
        statements
    );
    lab.stop_task().await?;
    lab.resume_task().await?;
    lab.assert_converges().await?;
    Ok(())
}

#[tokio::test]
async fn redshift_restart_cuts_the_target_then_the_task_stops_silently() -> anyhow::Result<()> {
    let lab = lab("sim_restart", |c| {
        c.metrics_interval = Duration::from_millis(500);
    })
    .await?;
    let outcome = AssertUnwindSafe(
        scenario_redshift_restart_cuts_the_target_then_the_task_stops_silently(&lab),
    )
    .catch_unwind()
    .await;
    settle(lab, outcome).await
}

async fn scenario_redshift_restart_cuts_the_target_then_the_task_stops_silently(
    lab: &Lab,
) -> anyhow::Result<()> {
    lab.applied_at_least(300).await?;
    lab.sim.set_fault(Fault::RedshiftRestart { seconds: 3 });
    eventually(
        "the target to refuse connections",
        Duration::from_secs(10),
        || async { Ok(lab.dbs.redshift_client().await.is_err().then_some(())) },
    )
    .await?;
    eventually(
        "the target back and the task blocked",
        Duration::from_secs(20),
        || async {
            let s = lab.sim.stats();
            let blocked = s.task(TASK).unwrap().blocked.as_deref() == Some("redshift_restart");
            Ok((blocked && lab.dbs.redshift_client().await.is_ok()).then_some(()))
        },
    )
    .await?;
    let s = lab.sim.stats();
    assert!(
        s.task(TASK).unwrap().apply_retries >= 1,
        "apply retried: {s:?}"
    );
    assert_eq!(s.task(TASK).unwrap().status, "running");
    // A batch under way when the target came back may still finish.
    lab.generated_more(100).await?;
    let frozen = lab.sim.stats().applied();
    lab.generated_more(300).await?;
    assert_eq!(
        lab.sim.stats().applied(),
        frozen,
        "silently stopped applying"
    );
    eventually(
        "CDCLatencyTarget above 2 s",
        Duration::from_secs(20),
        || async {
            let v = lab.task_metric(CDC_LATENCY_TARGET).await?;
            Ok((v.first().copied().unwrap_or(0.0) > 2.0).then_some(()))
        },
    )
    .await?;
    lab.stop_task().await?;
    lab.resume_task().await?;
    lab.assert_converges().await?;
    Ok(())
}

#[tokio::test]
async fn command_line_switches_faults_through_the_control_file() -> anyhow::Result<()> {
    let dbs = TestDatabases::create("sim_cli").await?;
    let outcome = AssertUnwindSafe(scenario_command_line(&dbs))
        .catch_unwind()
        .await;
    dbs.drop().await?;
    match outcome {
        Ok(result) => result,
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

async fn scenario_command_line(dbs: &TestDatabases) -> anyhow::Result<()> {
    let moto = Moto::spawn().await?;
    let dir = tempfile::tempdir()?;
    let control = dir.path().join("fault");
    std::fs::write(&control, "none\n")?;
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_dmsguard-lab"))
        .arg("simulate")
        .args(["--source-url", &dbs.source.url])
        .args(["--redshift-url", &dbs.redshift.url])
        .args(["--moto-url", &moto.url()])
        .args([
            "--rate",
            "300",
            "--batch-interval",
            "500ms",
            "--one-by-one-cost",
            "0ms",
        ])
        .args(["--metrics-interval", "1s", "--poll-interval", "200ms"])
        .arg("--control-file")
        .arg(&control)
        .env("PGPASSWORD", &dbs.env.pg_password)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()?;
    let rs = || async { dbs.redshift_client().await };
    eventually(
        "statements from the command line",
        // Generous: the simulator's batches slow down when other test binaries run beside it.
        Duration::from_secs(120),
        || async {
            let n: i64 = rs()
                .await?
                .query_one("SELECT count(*) FROM sys_query_history", &[])
                .await?
                .get(0);
            Ok((n > 0).then_some(()))
        },
    )
    .await?;
    std::fs::write(&control, "missing_then_update\n")?;
    eventually(
        "a rolled-back bulk UPDATE",
        // Generous: the simulator's batches slow down when other test binaries run beside it.
        Duration::from_secs(120),
        || async {
            let n: i64 = rs()
                .await?
                .query_one(
                    "SELECT count(*) FROM sys_transaction_history WHERE status = 'rolledback'",
                    &[],
                )
                .await?
                .get(0);
            Ok((n > 0).then_some(()))
        },
    )
    .await?;
    std::fs::write(&control, "none\n")?;
    let pid = child.id().expect("running").to_string();
    let killed = tokio::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .await?;
    assert!(killed.success());
    let status = tokio::time::timeout(Duration::from_secs(20), child.wait()).await??;
    assert!(status.success(), "clean exit on SIGTERM: {status}");
    Ok(())
}
