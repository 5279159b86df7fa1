//! The gaps probe reads the source on `[source.replica]`. First the replica is the same server
//! as another least-privilege user while the `[source]` user may not read the table, so the
//! missing ids it counts can only have been read on the replica (not a standby: lag 0). Then a
//! real streaming standby of the lab's PostgreSQL (`pg_basebackup -R`) with its replay paused:
//! the lag grows, a row committed on the primary meanwhile is not found, and once replay
//! resumes it is found and the lag is 0 again.

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
            divergent_rows: false,
            delete_extra: false,
            scan_budget_rows: None,
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

/// A real streaming standby of the lab's PostgreSQL (`pg_basebackup -R`, hot standby) on a
/// free port, stopped and removed when dropped.
struct Standby {
    dir: std::path::PathBuf,
    port: u16,
}

/// `program args` as the `postgres` OS user when running as root (initdb, pg_ctl and
/// pg_basebackup refuse root), as is otherwise.
fn is_root() -> bool {
    std::process::Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout == b"0\n")
}

fn as_pg(program: &std::path::Path, args: &[&str]) -> anyhow::Result<()> {
    let mut command = if is_root() {
        let mut c = std::process::Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        std::process::Command::new(program)
    };
    let out = command.args(args).output()?;
    anyhow::ensure!(
        out.status.success(),
        "{} {args:?}: {}{}",
        program.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

impl Standby {
    fn start(env: &dmsguard_lab::harness::LabEnv) -> anyhow::Result<Self> {
        let bin = std::path::PathBuf::from(
            std::env::var("PG_BIN").unwrap_or_else(|_| "/usr/lib/postgresql/15/bin".into()),
        );
        let dir = env.dir.join(format!("standby-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        if is_root() {
            let status = std::process::Command::new("chown")
                .args(["postgres:postgres", &dir.display().to_string()])
                .status()?;
            anyhow::ensure!(status.success(), "chown {}", dir.display());
        }
        let port = dmsguard_lab::harness::free_port();
        let standby = Self { dir, port };
        let data = standby.dir.join("data").display().to_string();
        let socket = env.dir.join("run").display().to_string();
        as_pg(
            &bin.join("pg_basebackup"),
            &[
                "-h",
                &socket,
                "-p",
                &env.pg_port.to_string(),
                "-U",
                "postgres",
                "-D",
                &data,
                "-R",
                "-X",
                "stream",
                "-c",
                "fast",
            ],
        )?;
        let options = format!(
            "-p {port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={} \
             -c hot_standby=on -c wal_level=logical -c max_connections=300 \
             -c max_wal_senders=20 -c max_replication_slots=20 -c fsync=off",
            standby.dir.display()
        );
        as_pg(
            &bin.join("pg_ctl"),
            &[
                "start",
                "-D",
                &data,
                "-l",
                &standby.dir.join("standby.log").display().to_string(),
                "-w",
                "-t",
                "60",
                "-o",
                &options,
            ],
        )?;
        Ok(standby)
    }

    /// `config` pointed at the standby.
    fn database(
        &self,
        config: &dmsguard_pipeline::config::DatabaseConfig,
        primary_port: u16,
    ) -> dmsguard_pipeline::config::DatabaseConfig {
        dmsguard_pipeline::config::DatabaseConfig {
            url: config
                .url
                .replace(&format!(":{primary_port}/"), &format!(":{}/", self.port)),
            ..config.clone()
        }
    }
}

impl Drop for Standby {
    fn drop(&mut self) {
        let bin = std::path::PathBuf::from(
            std::env::var("PG_BIN").unwrap_or_else(|_| "/usr/lib/postgresql/15/bin".into()),
        );
        let data = self.dir.join("data").display().to_string();
        let _ = as_pg(
            &bin.join("pg_ctl"),
            &["stop", "-D", &data, "-m", "immediate"],
        );
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[tokio::test]
async fn a_paused_standby_shows_lag_and_hides_rows_until_it_replays() -> anyhow::Result<()> {
    let dbs = TestDatabases::create("exp_standby").await?;
    let source = dbs.source_client().await?;
    let target = dbs.redshift_client().await?;
    let today = chrono::Utc::now().date_naive();
    let noon = today.and_hms_opt(12, 0, 0).expect("noon").and_utc();
    let yesterday = |i: &str| {
        format!("TIMESTAMPTZ '{today} 00:00:00+00' - interval '1 day' + {i} * interval '1 minute'")
    };
    source
        .batch_execute(&format!(
            "CREATE TABLE public.orders (id bigint PRIMARY KEY, created_at timestamptz NOT NULL);
             INSERT INTO public.orders SELECT i, {} FROM generate_series(1, 100) i;",
            yesterday("i")
        ))
        .await?;
    target
        .batch_execute(
            "CREATE TABLE public.orders (id bigint, created_at timestamp);
             INSERT INTO public.orders SELECT i, NULL FROM generate_series(1, 100) i WHERE i <> 5;",
        )
        .await?;
    let standby = Standby::start(&dbs.env)?;
    let standby_admin = standby.database(&dbs.env.database("postgres"), dbs.env.pg_port);
    let admin = dmsguard_pipeline::db::connect(&standby_admin);
    let admin = tokio::time::timeout(std::time::Duration::from_secs(30), admin).await??;

    let mut config = config(&dbs, None, "");
    let e = &mut config.exporter;
    e.redshift_statements.enabled = false;
    e.cloudwatch.enabled = false;
    e.dms.enabled = false;
    e.maintenance.enabled = false;
    config.clock.start = Some(noon);
    // The exporter's least-privilege user (replicated with the catalogue) on the standby.
    config.source_replica = Some(standby.database(&dbs.exporter_source(), dbs.env.pg_port));
    config.tables.push(TableConfig {
        source: "public.orders".to_owned(),
        target: None,
        id_column: "id".to_owned(),
        day_column: Some("created_at".to_owned()),
        task: None,
        divergent_rows: false,
        delete_extra: false,
        scan_budget_rows: None,
    });
    let exporter = spawn_exporter(config).await?;
    let addr = exporter.addr;
    let w = [("table", "public.orders"), ("window", "yesterday")];
    const LAG: &str = "dmsguard_source_replica_lag_seconds";
    wait_for_value(addr, "dmsguard_table_missing_ids", &w, 1.0).await?;
    wait_for_value(addr, LAG, &[], 0.0).await?;

    // Replay paused: a row committed now on the primary (and missing in the target) is not
    // seen, and the standby falls behind.
    admin.batch_execute("SELECT pg_wal_replay_pause()").await?;
    source
        .batch_execute(&format!(
            "INSERT INTO public.orders VALUES (101, {})",
            yesterday("101")
        ))
        .await?;
    dmsguard_lab::harness::eventually("the standby to lag", DEADLINE, || async {
        let s = scrape(addr).await?;
        Ok(value(&s, LAG, &[]).filter(|lag| *lag > 0.0).map(|_| ()))
    })
    .await?;
    let s = scrape(addr).await?;
    assert_eq!(
        value(&s, "dmsguard_table_missing_ids", &w),
        Some(1.0),
        "the row the standby has not replayed is not found"
    );
    // Replayed: found, and the lag is gone.
    admin.batch_execute("SELECT pg_wal_replay_resume()").await?;
    wait_for_value(addr, "dmsguard_table_missing_ids", &w, 2.0).await?;
    wait_for_value(addr, LAG, &[], 0.0).await?;
    drop(exporter);
    drop(admin);
    drop(standby);
    dbs.drop().await
}
