//! The exporter runs the preflight checks at start-up against the real lab and exports each as
//! `dmsguard_preflight_ok{check}`: a table its least-privilege user may not read is 0, the rest
//! 1, and the exporter keeps serving.

mod support;

use dmsguard_lab::harness::{Moto, TestDatabases};
use support::*;

const PREFLIGHT_OK: &str = "dmsguard_preflight_ok";

#[tokio::test]
async fn startup_preflight_exports_each_check_and_a_missing_grant_as_zero() -> anyhow::Result<()> {
    let dbs = TestDatabases::create("exp_preflight").await?;
    let moto = Moto::spawn().await?;
    let tables = "CREATE TABLE public.orders (id bigint PRIMARY KEY); \
                  CREATE TABLE public.secrets (id bigint PRIMARY KEY);";
    let source = dbs.source_client().await?;
    source.batch_execute(tables).await?;
    // The missing grant: the exporter's user may not read this source table.
    source
        .batch_execute("REVOKE ALL ON public.secrets FROM dmsguard_exporter")
        .await?;
    dbs.redshift_client().await?.batch_execute(tables).await?;

    let mut config = config(
        &dbs,
        Some(&moto.url()),
        "[[tables]]\nsource = \"public.orders\"\n[[tables]]\nsource = \"public.secrets\"\n",
    );
    let e = &mut config.exporter;
    e.preflight = true;
    for probe in [
        &mut e.redshift_statements,
        &mut e.cloudwatch,
        &mut e.dms,
        &mut e.gaps,
        &mut e.maintenance,
    ] {
        probe.enabled = false;
    }
    let exporter = spawn_exporter(config).await?;
    let addr = exporter.addr;

    let check = |name| [("check", name)];
    wait_for_value(
        addr,
        PREFLIGHT_OK,
        &check("source table public.secrets"),
        0.0,
    )
    .await?;
    let s = scrape(addr).await?;
    for name in [
        "source connection",
        "redshift connection",
        "source table public.orders",
        "target table public.orders",
        "target table public.secrets",
        "redshift system view sys_query_history",
        "AWS identity",
    ] {
        assert_eq!(value(&s, PREFLIGHT_OK, &check(name)), Some(1.0), "{name}");
    }
    // The exporter's checks leave out what only the remediator needs.
    assert_eq!(
        value(
            &s,
            PREFLIGHT_OK,
            &check("target table public.orders insert")
        ),
        None
    );
    assert!(get(addr, "/metrics")
        .await?
        .contains("# HELP dmsguard_preflight_ok "));
    assert_eq!(get(addr, "/healthz").await?, "ok\n");
    drop(exporter);
    dbs.drop().await
}
