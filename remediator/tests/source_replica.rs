//! `[source.replica]` on the lab: the lab has no streaming replica, so the replica is a second
//! connection to the same server as another least-privilege user. The `[source]` user may not
//! read the table at all: the gap finder and the repair's row reads can only have gone through
//! the replica. Preflight names the primary's missing grant (which only F1, reading the primary,
//! needs: `preflight_gate`'s unit tests) and the replica's replay state (not a standby: lag 0);
//! the hand run of `missing_rows` passes its gate and repairs the rows.

mod repair_lab;

use dmsguard_lab::harness::TestDatabases;
use repair_lab::*;

const PADS: usize = 1;
const ROWS: i64 = 80;
const YESTERDAY_ROWS: i64 = 60;

#[tokio::test]
async fn source_reads_go_to_the_replica_and_the_primary_is_not_read() -> anyhow::Result<()> {
    let dbs = TestDatabases::create("src_replica").await?;
    let source = dbs.source_client().await?;
    let target = dbs.redshift_client().await?;
    source.batch_execute(&source_ddl(PADS)).await?;
    target.batch_execute(&target_ddl(PADS)).await?;
    fill_source(&source, ROWS, YESTERDAY_ROWS, PADS).await?;
    let all: Vec<i64> = (1..=ROWS).collect();
    copy_as_dms(&source, &target, &all, PADS).await?;
    target
        .execute("DELETE FROM public.orders WHERE id IN (3, 30, 59)", &[])
        .await?;

    // The primary's user loses SELECT; the replica's user has only SELECT on the table.
    let replica_user = format!("dmsguard_replica_{}", std::process::id());
    let pw = &dbs.env.pg_password;
    source
        .batch_execute(&format!(
            "REVOKE SELECT ON public.orders FROM dmsguard_remediator;
             CREATE ROLE {replica_user} LOGIN PASSWORD '{pw}';
             GRANT USAGE ON SCHEMA public TO {replica_user};
             GRANT SELECT ON public.orders TO {replica_user};"
        ))
        .await?;
    let replica_url = TestDatabases::as_user(&dbs.source, &replica_user).url;
    let config = config_text(
        &dbs,
        None,
        "",
        &format!(
            "[source.replica]\nurl = \"{replica_url}\"\npassword = \"{pw}\"\n\n\
             [[tables]]\nsource = \"public.orders\"\nday_column = \"created_at\"\n"
        ),
    );

    let result = async {
        let out = run_binary(&config, &["preflight"])?;
        let (stdout, stderr) = text(&out);
        for line in [
            "[ok] source connection: ",
            "[ok] source replica connection: ",
            "[ok] source replica replay: not a standby: sees every commit (lag 0)",
            "[FAIL] source table public.orders: ERROR: permission denied for table orders",
            "[ok] source replica table public.orders: SELECT works",
        ] {
            anyhow::ensure!(stdout.contains(line), "no `{line}` in:\n{stdout}\n{stderr}");
        }

        let out = run_binary(
            &config,
            &["run", "missing_rows", "--table", "public.orders"],
        )?;
        let (stdout, stderr) = text(&out);
        anyhow::ensure!(
            out.status.code() == Some(0) && stdout.contains("outcome: succeeded"),
            "{stdout}\n{stderr}"
        );
        anyhow::ensure!(stdout.contains("3 found, 3 inserted"), "{stdout}\n{stderr}");
        anyhow::ensure!(target_ids(&target).await? == all, "every row is back");

        Ok(())
    }
    .await;
    source
        .batch_execute(&format!(
            "REVOKE ALL ON public.orders FROM {replica_user};
             REVOKE USAGE ON SCHEMA public FROM {replica_user};
             DROP ROLE {replica_user};"
        ))
        .await?;
    result
}
