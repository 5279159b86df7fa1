//! The gaps probe reads the source on `[source.replica]`. The lab has no streaming replica: the
//! replica is the same server as another least-privilege user, and the `[source]` user may not
//! read the table, so the missing ids it counts can only have been read on the replica. The
//! replica is not a standby, so its lag is 0 (the lag arithmetic is unit-tested in
//! `dmsguard_pipeline::replica`).

mod support;

use dmsguard_lab::harness::TestDatabases;
use dmsguard_pipeline::config::TableConfig;
use support::*;

#[tokio::test]
async fn the_gaps_probe_reads_the_replica_and_exports_its_lag() -> anyhow::Result<()> {
    let dbs = TestDatabases::create("exp_replica").await?;
    let source = dbs.source_client().await?;
    let target = dbs.redshift_client().await?;
    let today = chrono::Utc::now().date_naive();
    let noon = today.and_hms_opt(12, 0, 0).expect("noon").and_utc();
    // Yesterday ids 1..=100; the target lost 5, 50 and 100.
    source
        .batch_execute(&format!(
            "CREATE TABLE public.orders (id bigint PRIMARY KEY, created_at timestamptz NOT NULL);
             INSERT INTO public.orders
               SELECT i, TIMESTAMPTZ '{today} 00:00:00+00' - interval '1 day' + i * interval '1 minute'
               FROM generate_series(1, 100) i;"
        ))
        .await?;
    target
        .batch_execute(
            "CREATE TABLE public.orders (id bigint, created_at timestamp);
             INSERT INTO public.orders SELECT i, NULL FROM generate_series(1, 100) i
               WHERE i NOT IN (5, 50, 100);",
        )
        .await?;
    let role = format!("dmsguard_exp_replica_{}", std::process::id());
    source
        .batch_execute(&format!(
            "REVOKE SELECT ON public.orders FROM dmsguard_exporter;
             CREATE ROLE {role} LOGIN PASSWORD '{pw}';
             GRANT USAGE ON SCHEMA public TO {role};
             GRANT SELECT ON public.orders TO {role};",
            pw = dbs.env.pg_password
        ))
        .await?;

    let result = async {
        let mut config = config(&dbs, None, "");
        let e = &mut config.exporter;
        e.redshift_statements.enabled = false;
        e.cloudwatch.enabled = false;
        e.dms.enabled = false;
        e.maintenance.enabled = false;
        config.clock.start = Some(noon);
        config.source_replica = Some(TestDatabases::as_user(&dbs.exporter_source(), &role));
        config.tables.push(TableConfig {
            source: "public.orders".to_owned(),
            target: None,
            id_column: "id".to_owned(),
            day_column: Some("created_at".to_owned()),
            task: None,
        });
        let exporter = spawn_exporter(config).await?;
        let addr = exporter.addr;
        let w = [("table", "public.orders"), ("window", "yesterday")];
        wait_for_value(addr, "dmsguard_table_missing_ids", &w, 3.0).await?;
        let s = scrape(addr).await?;
        assert_eq!(
            value(&s, "dmsguard_source_replica_lag_seconds", &[]),
            Some(0.0)
        );
        assert_eq!(
            value(&s, "dmsguard_probe_success", &[("probe", "gaps")]),
            Some(1.0)
        );
        drop(exporter);
        Ok::<_, anyhow::Error>(())
    }
    .await;
    source
        .batch_execute(&format!(
            "REVOKE ALL ON public.orders FROM {role};
             REVOKE USAGE ON SCHEMA public FROM {role};
             DROP ROLE {role};"
        ))
        .await?;
    result?;
    dbs.drop().await
}
