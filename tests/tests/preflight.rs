//! The preflight checklist against the lab: everything right (TLS verified against the lab CA,
//! tables readable and the targets insertable, moto's DMS task and instance found), then a
//! source user without SELECT, a Redshift user without INSERT and a task that does not exist,
//! each reported with its fix; DELETE checked only on a table that enables `divergent_rows`.

use dmsguard_lab::harness::{self, create_dms_task, Moto, TestDatabases, REMEDIATOR_USER};
use dmsguard_pipeline::aws::AwsClients;
use dmsguard_pipeline::config::Config;
use dmsguard_pipeline::preflight;

fn config_text(
    dbs: &TestDatabases,
    moto: &str,
    source_url: &str,
    source_pw: &str,
    redshift_url: &str,
    task: &str,
) -> String {
    let pw = &dbs.env.pg_password;
    format!(
        "[source]\nurl = \"{source_url}\"\npassword = \"{source_pw}\"\n\n\
         [redshift]\nurl = \"{redshift_url}\"\npassword = \"{pw}\"\n\n\
         [aws]\nendpoint_url = \"{moto}\"\nmax_attempts = 1\ntimeout = \"10s\"\n\n\
         [[tasks]]\nname = \"{task}\"\nreplication_instance = \"pf-instance\"\n\n\
         [[tables]]\nsource = \"public.orders\"\ntask = \"{task}\"\n{}",
        dbs.ledger_section()
    )
}

#[tokio::test]
async fn preflight_passes_when_all_is_right_and_names_each_fix_when_not() -> anyhow::Result<()> {
    let dbs = TestDatabases::create("preflight").await?;
    let moto = Moto::spawn().await?;
    let aws = AwsClients::new(&harness::aws_config(&moto.url())).await;
    create_dms_task(&aws, "pf-instance", "pf-task").await?;
    dbs.source_client()
        .await?
        .batch_execute("CREATE TABLE public.orders (id bigint PRIMARY KEY, created_at timestamptz)")
        .await?;
    dbs.redshift_client()
        .await?
        .batch_execute("CREATE TABLE public.orders (id bigint)")
        .await?;
    let ca = dbs.env.dir.join("tls").join("ca.crt");
    let verified = format!(
        "{}?sslmode=verify-full&sslrootcert={}",
        dbs.remediator_source().url,
        ca.display()
    );

    let text = config_text(
        &dbs,
        &moto.url(),
        &verified,
        &dbs.env.pg_password,
        // The remediator's least-privilege user of docs/grants.md, never a superuser.
        &dbs.remediator_redshift().url,
        "pf-task",
    );
    let report = preflight::run(&Config::from_toml(&text, &|_| None)?, true).await;
    let out = report.render();
    println!("{out}");
    assert!(report.ok(), "{out}");
    for line in [
        "[ok] source connection: ",
        "TLSv1.3",
        "server certificate CN=127.0.0.1",
        "sslmode=verify-full",
        "[ok] redshift connection: ",
        "[ok] ledger connection: ",
        "[ok] source table public.orders: SELECT works",
        "[ok] target table public.orders: SELECT works",
        "[ok] target table public.orders insert: INSERT allowed",
        "[ok] redshift system view sys_query_history: readable",
        "[ok] AWS identity: arn:aws:",
        "[ok] DMS task pf-task: ",
        "[ok] DMS replication instance pf-instance: ",
        "0 failed",
    ] {
        assert!(out.contains(line), "missing `{line}` in:\n{out}");
    }
    assert!(
        !out.contains("delete (divergent_rows)"),
        "DELETE is checked only on tables that enable divergent_rows:\n{out}"
    );

    // A source user without SELECT on the table, and a task name DMS does not know.
    let role = format!("pf_ro_{}", std::process::id());
    let admin = dmsguard_pipeline::db::connect(&dbs.env.database("postgres")).await?;
    admin
        .batch_execute(&format!("CREATE ROLE {role} LOGIN PASSWORD 'pf-secret'"))
        .await?;
    let url = verified.replacen(&format!("//{REMEDIATOR_USER}@"), &format!("//{role}@"), 1);
    assert_ne!(url, verified);
    // Redshift as the exporter's user of docs/grants.md: SELECT, but no INSERT for repairs.
    let exporter_redshift = dbs.exporter_redshift().url;
    let text = config_text(
        &dbs,
        &moto.url(),
        &url,
        "pf-secret",
        &exporter_redshift,
        "no-such-task",
    );
    let report = preflight::run(&Config::from_toml(&text, &|_| None)?, true).await;
    let out = report.render();
    println!("{out}");
    admin.batch_execute(&format!("DROP ROLE {role}")).await.ok();
    assert!(!report.ok());
    for line in [
        "[ok] source connection: ",
        "[FAIL] source table public.orders: ERROR: permission denied for table orders (SQLSTATE 42501)",
        &format!("fix: GRANT USAGE ON SCHEMA \"public\" TO {role}; GRANT SELECT ON \"public\".\"orders\" TO {role};"),
        "[ok] target table public.orders: SELECT works",
        "[FAIL] target table public.orders insert: dmsguard_exporter may not INSERT into public.orders",
        "fix: GRANT INSERT ON \"public\".\"orders\" TO dmsguard_exporter;",
        "[FAIL] DMS task no-such-task: not found",
        "fix: fix [[tasks]].name",
        "3 failed",
    ] {
        assert!(out.contains(line), "missing `{line}` in:\n{out}");
    }
    assert!(!out.contains("pf-secret"), "{out}");

    // A table that enables divergent_rows: DELETE is checked, and named until granted.
    let text = config_text(
        &dbs,
        &moto.url(),
        &verified,
        &dbs.env.pg_password,
        &dbs.remediator_redshift().url,
        "pf-task",
    )
    .replace(
        "task = \"pf-task\"\n\n[remediator",
        "task = \"pf-task\"\ndivergent_rows = true\n\n[remediator",
    );
    assert!(text.contains("divergent_rows = true"), "{text}");
    let config = Config::from_toml(&text, &|_| None)?;
    let out = preflight::run(&config, true).await.render();
    for line in [
        "[FAIL] target table public.orders delete (divergent_rows): dmsguard_remediator may not DELETE from public.orders",
        "fix: GRANT DELETE ON \"public\".\"orders\" TO dmsguard_remediator;",
    ] {
        assert!(out.contains(line), "missing `{line}` in:\n{out}");
    }
    harness::apply_grants(
        &dbs.redshift_client().await?,
        &["redshift-remediator-divergent-rows"],
        &[("<table>", "public.orders")],
    )
    .await?;
    let report = preflight::run(&config, true).await;
    let out = report.render();
    assert!(report.ok(), "{out}");
    assert!(
        out.contains("[ok] target table public.orders delete (divergent_rows): DELETE allowed"),
        "{out}"
    );
    dbs.drop().await?;
    Ok(())
}
