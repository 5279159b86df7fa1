//! dmsguard's database users (`docs/grants.md`) against the Redshift stand-in's visibility
//! rules: what a regular user sees of DMS's statements with and without SYSLOG ACCESS
//! UNRESTRICTED, how it tells a rolled-back DMS transaction without SYS_TRANSACTION_HISTORY,
//! and that the users hold no more than the documented grants.

use chrono::{Duration, Utc};
use dmsguard_lab::audit;
use dmsguard_lab::harness::{eventually, TestDatabases, EXPORTER_USER, REMEDIATOR_USER};
use dmsguard_lab::simulator::DMS_ROLE;
use dmsguard_pipeline::config::SystemViews;
use dmsguard_pipeline::system_views::{Cursor, Outcome, StatementReader};
use tokio_postgres::Client;

const UPDATE: &str = "/* Applied by AWS DMS 3.5.3 */ UPDATE \"public\".\"orders\" SET \"status\" = 'x' WHERE \"id\" = 1";

/// Records `UPDATE` as the DMS user ran it, in a transaction DMS rolled back, in both view
/// families: the statement completed (`success`, `aborted` = 0) and the transaction logged
/// its ROLLBACK.
async fn record_rolled_back_dms_update(admin: &Client) -> anyhow::Result<()> {
    admin
        .batch_execute(&format!(
            "INSERT INTO sys_query_history (user_id, query_id, transaction_id, query_type, status, \
               start_time, end_time, query_text) \
             SELECT usesysid::bigint::integer, q, 7001, t, 'success', now() AT TIME ZONE 'UTC', \
               now() AT TIME ZONE 'UTC', txt \
             FROM pg_user, (VALUES (nextval('lab_query_id_seq'), 'UPDATE', $txt${UPDATE}$txt$), \
                                   (nextval('lab_query_id_seq'), 'UTILITY', 'ROLLBACK')) v(q, t, txt) \
             WHERE usename = '{DMS_ROLE}';
             INSERT INTO sys_transaction_history (user_id, transaction_id, status) \
             SELECT usesysid::bigint::integer, 7001, 'rolledback' FROM pg_user WHERE usename = '{DMS_ROLE}';
             INSERT INTO stl_query (userid, query, xid, querytxt, starttime, endtime, aborted) \
             SELECT usesysid::bigint::integer, nextval('lab_query_id_seq')::integer, 7002, $txt${UPDATE}$txt$, \
               now() AT TIME ZONE 'UTC', now() AT TIME ZONE 'UTC', 0 FROM pg_user WHERE usename = '{DMS_ROLE}';
             INSERT INTO stl_utilitytext (userid, xid, starttime, endtime, sequence, text) \
             SELECT usesysid::bigint::integer, 7002, now() AT TIME ZONE 'UTC', now() AT TIME ZONE 'UTC', 0, 'ROLLBACK' \
             FROM pg_user WHERE usename = '{DMS_ROLE}';"
        ))
        .await?;
    Ok(())
}

async fn transactions_seen(c: &Client) -> anyhow::Result<i64> {
    Ok(
        c.query_one("SELECT count(*) FROM sys_transaction_history", &[])
            .await?
            .get(0),
    )
}

async fn read(
    client: &Client,
    family: SystemViews,
    dms_user: Option<&str>,
) -> anyhow::Result<Vec<(String, Outcome)>> {
    let now = Utc::now().naive_utc();
    let page = StatementReader::new(family, "%AWS DMS%")
        .with_dms_user(dms_user.map(str::to_owned))
        .read(client, Cursor::Since(now - Duration::hours(1)), now)
        .await?;
    Ok(page
        .queries
        .into_iter()
        .map(|q| (q.text, q.outcome))
        .collect())
}

#[tokio::test]
async fn dms_statements_are_visible_only_with_syslog_access_unrestricted() -> anyhow::Result<()> {
    let dbs = TestDatabases::create("least_priv_visibility").await?;
    let admin = dbs.redshift_client().await?;
    record_rolled_back_dms_update(&admin).await?;
    let exporter = dmsguard_pipeline::db::connect(&dbs.exporter_redshift()).await?;

    // SYS_TRANSACTION_HISTORY is visible only to superusers.
    assert_eq!(transactions_seen(&admin).await?, 1);
    assert_eq!(transactions_seen(&exporter).await?, 0, "superusers only");

    // With SYSLOG ACCESS UNRESTRICTED (docs/grants.md): DMS's statement, rolled back by its
    // transaction's ROLLBACK statement, in both families; and only with the DMS user.
    for family in [SystemViews::Sys, SystemViews::Stl] {
        let seen = read(&exporter, family, None).await?;
        assert_eq!(
            seen,
            vec![(UPDATE.to_owned(), Outcome::RolledBack)],
            "{family:?}"
        );
        assert_eq!(read(&exporter, family, Some(DMS_ROLE)).await?.len(), 1);
        assert!(read(&exporter, family, Some(REMEDIATOR_USER))
            .await?
            .is_empty());
    }

    // Without it, a regular user sees only its own rows: none of DMS's statements.
    admin
        .execute(
            "DELETE FROM lab_syslog_access WHERE usename = $1",
            &[&EXPORTER_USER],
        )
        .await?;
    for family in [SystemViews::Sys, SystemViews::Stl] {
        assert!(
            read(&exporter, family, None).await?.is_empty(),
            "{family:?}"
        );
    }
    drop((admin, exporter));
    dbs.drop().await
}

/// The documented grants and nothing more: neither user is a superuser; the exporter only
/// reads; the remediator reads, inserts and locks, but cannot delete or create tables.
#[tokio::test]
async fn the_users_hold_only_the_documented_grants() -> anyhow::Result<()> {
    let dbs = TestDatabases::create("least_priv_grants").await?;
    let admin = dbs.redshift_client().await?;
    admin
        .batch_execute("CREATE TABLE public.orders (id bigint NOT NULL, status varchar(20))")
        .await?;
    let exporter = dmsguard_pipeline::db::connect(&dbs.exporter_redshift()).await?;
    let mut remediator = dmsguard_pipeline::db::connect(&dbs.remediator_redshift()).await?;
    for (who, c) in [(EXPORTER_USER, &exporter), (REMEDIATOR_USER, &remediator)] {
        let superuser: bool = c
            .query_one(
                "SELECT rolsuper FROM pg_roles WHERE rolname = current_user",
                &[],
            )
            .await?
            .get(0);
        assert!(!superuser, "{who}");
        c.query_one("SELECT count(*) FROM public.orders", &[])
            .await
            .map_err(|e| anyhow::anyhow!("{who} reads the target: {e}"))?;
        assert!(
            c.batch_execute("CREATE TABLE public.nope (id bigint)")
                .await
                .is_err(),
            "{who} creates no table"
        );
        assert!(
            c.batch_execute("DELETE FROM public.orders").await.is_err(),
            "{who} deletes nothing"
        );
    }
    assert!(
        exporter
            .batch_execute("INSERT INTO public.orders VALUES (1, 'x')")
            .await
            .is_err(),
        "the exporter only reads"
    );
    let tx = remediator.transaction().await?;
    tx.batch_execute("LOCK public.orders; INSERT INTO public.orders VALUES (1, 'x')")
        .await?;
    tx.commit().await?;
    drop((admin, exporter, remediator));
    dbs.drop().await
}

/// The statement audit sees what dmsguard's users send to the stand-in, in the server's log,
/// and names an array-typed bind parameter (unsupported on Redshift) with its statement.
#[tokio::test]
async fn the_statement_audit_catches_an_array_parameter() -> anyhow::Result<()> {
    let dbs = TestDatabases::create("audit_array").await?;
    let log_path = dbs.env.dir.join("logs").join("postgres.log");
    let start = std::fs::metadata(&log_path)?.len() as usize;
    let remediator = dmsguard_pipeline::db::connect(&dbs.remediator_redshift()).await?;
    let marker = format!("{}_{}", audit::PROBE_MARKER, dbs.redshift_name);
    let sql =
        format!("SELECT count(*) FROM pg_table_def WHERE schemaname = ANY($1) /* {marker} */");
    remediator.query(&sql, &[&vec!["public"]]).await?;
    let plain = format!("SELECT count(*) FROM pg_table_def /* {marker} fine */");
    remediator.query(&plain, &[]).await?;
    let violations = eventually(
        "the statements in the server log",
        std::time::Duration::from_secs(10),
        || {
            let log_path = log_path.clone();
            let marker = marker.clone();
            async move {
                let bytes = std::fs::read(&log_path)?;
                let text = String::from_utf8_lossy(&bytes[start.min(bytes.len())..]).into_owned();
                let ours: Vec<String> = audit::statements_in_log(&text)
                    .into_iter()
                    .filter(|s| s.contains(&marker))
                    .collect();
                if ours.len() < 2 {
                    return Ok(None);
                }
                Ok(Some(
                    audit::audit_log(&text)
                        .into_iter()
                        .filter(|v| v.statement.contains(&marker))
                        .collect::<Vec<_>>(),
                ))
            }
        },
    )
    .await?;
    assert_eq!(violations.len(), 1, "{violations:?}");
    assert!(
        violations[0].rule.starts_with("array-typed bind parameter"),
        "{}",
        violations[0]
    );
    assert!(violations[0].statement.contains("ANY($1)"));
    drop(remediator);
    dbs.drop().await
}

/// An array parameter the text does not show: the server infers `$1` of
/// `array_position($1, schemaname)` as `name[]`. No text rule names it; the teardown of the
/// test's stand-in prepares the logged statement there, and the audit names it with the type.
#[tokio::test]
async fn the_statement_audit_catches_an_array_parameter_the_server_infers() -> anyhow::Result<()> {
    let dbs = TestDatabases::create("audit_inferred").await?;
    let log_path = dmsguard_lab::harness::server_log(&dbs.env);
    let start = std::fs::metadata(&log_path)?.len() as usize;
    let remediator = dmsguard_pipeline::db::connect(&dbs.remediator_redshift()).await?;
    let marker = format!("{}_{}", audit::PROBE_MARKER, dbs.redshift_name);
    let sql = format!(
        "SELECT count(*) FROM pg_table_def WHERE array_position($1, schemaname) IS NOT NULL /* {marker} */"
    );
    assert_eq!(
        audit::check(&sql),
        Vec::<&str>::new(),
        "no text rule sees it"
    );
    remediator.query(&sql, &[&vec!["public"]]).await?;
    let scalar = format!("SELECT count(*) FROM pg_table_def WHERE schemaname = $1 /* {marker} */");
    remediator.query(&scalar, &[&"public"]).await?;
    drop(remediator);
    dbs.drop().await?;

    let bytes = std::fs::read(&log_path)?;
    let text = String::from_utf8_lossy(&bytes[start.min(bytes.len())..]).into_owned();
    let violations: Vec<_> = audit::audit_log(&text)
        .into_iter()
        .filter(|v| v.statement.contains(&marker))
        .collect();
    assert_eq!(violations.len(), 1, "{violations:?}");
    assert_eq!(violations[0].rule, audit::ARRAY_PARAMETER_RULE);
    assert!(
        violations[0].statement.contains("array_position($1"),
        "{}",
        violations[0]
    );
    assert_eq!(
        violations[0].detail.as_deref(),
        Some("$1 is inferred as name[] by the server"),
        "{}",
        violations[0]
    );
    Ok(())
}
