//! `dmsguard-remediator ddl` through the binary, against a fresh database on the lab's PostgreSQL
//! (`source tests/lab/env.sh` first): prints DDL that PostgreSQL accepts with `--postgres-check`,
//! and refuses unknown tables, unmappable types and bad compression files by name.

use std::process::{Command, Output};
use std::time::Duration;

use dmsguard_lab::harness::{apply_grants, REMEDIATOR_USER};
use dmsguard_pipeline::config::DatabaseConfig;
use dmsguard_pipeline::db;
use dmsguard_pipeline::secret::Secret;

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

fn url(database: &str) -> String {
    format!(
        "postgresql://{}@{}:{}/{database}",
        env_or("DMSGUARD_PG_USER", "postgres"),
        env_or("DMSGUARD_PG_HOST", "127.0.0.1"),
        env_or("DMSGUARD_PG_PORT", "55432"),
    )
}

fn database(name: &str) -> DatabaseConfig {
    DatabaseConfig {
        url: url(name),
        password: Some(Secret::new(env_or("DMSGUARD_PG_PASSWORD", "lab"))),
        password_file: None,
        sslmode: None,
        sslrootcert: None,
        connect_timeout: Duration::from_secs(5),
        statement_timeout: Duration::from_secs(60),
        iam: None,
    }
}

/// A fresh database, dropped when the test is done with it.
struct Scratch {
    name: String,
}

impl Scratch {
    async fn create(tag: &str) -> Self {
        let name = format!("t_{tag}_{}", std::process::id());
        let admin = db::connect(&database("postgres"))
            .await
            .expect("lab PostgreSQL (run tests/lab/up)");
        for sql in [
            format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"),
            format!("CREATE DATABASE \"{name}\""),
        ] {
            admin.batch_execute(&sql).await.unwrap();
        }
        Self { name }
    }

    async fn drop(self) {
        let admin = db::connect(&database("postgres")).await.unwrap();
        admin
            .batch_execute(&format!(
                "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
                self.name
            ))
            .await
            .unwrap();
    }
}

/// A login role of its own with a long password no other test uses, so a test can check the
/// password never reaches any output; dropped by [`Reader::drop`].
struct Reader {
    user: String,
    password: String,
}

impl Reader {
    /// Creates the role and lets it read `schemas` of `database`.
    async fn create(database_name: &str, schemas: &[&str]) -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let user = format!("ddl_reader_{}", std::process::id());
        let password = format!("ddl-secret-{}-{nanos:x}-never-printed", std::process::id());
        let admin = db::connect(&database("postgres")).await.unwrap();
        admin
            .batch_execute(&format!(
                "DROP ROLE IF EXISTS \"{user}\"; CREATE ROLE \"{user}\" LOGIN PASSWORD '{password}'"
            ))
            .await
            .unwrap();
        let owner = db::connect(&database(database_name)).await.unwrap();
        let list = schemas.join(", ");
        owner
            .batch_execute(&format!(
                "GRANT USAGE ON SCHEMA {list} TO \"{user}\"; GRANT SELECT ON ALL TABLES IN SCHEMA {list} TO \"{user}\""
            ))
            .await
            .unwrap();
        Self { user, password }
    }

    async fn drop(self) {
        let admin = db::connect(&database("postgres")).await.unwrap();
        admin
            .batch_execute(&format!("DROP ROLE IF EXISTS \"{}\"", self.user))
            .await
            .unwrap();
    }
}

/// Runs the command as the remediator's least-privilege user of `docs/grants.md`, never a
/// superuser (see [`grant_remediator`]).
fn run_ddl(source_db: &str, tables: &str, args: &[&str]) -> Output {
    run_ddl_as(
        source_db,
        tables,
        args,
        REMEDIATOR_USER,
        &env_or("DMSGUARD_PG_PASSWORD", "lab"),
    )
}

/// Runs `docs/grants.md`'s `postgresql-remediator` block on `database_name` for each of
/// `schemas` (the page says to repeat its schema lines for every schema of replicated tables).
async fn grant_remediator(database_name: &str, schemas: &[&str]) {
    let owner = db::connect(&database(database_name)).await.unwrap();
    let password = env_or("DMSGUARD_PG_PASSWORD", "lab");
    let table_owner = env_or("DMSGUARD_PG_USER", "postgres");
    for schema in schemas {
        let in_schema = format!("SCHEMA {schema}");
        apply_grants(
            &owner,
            &["postgresql-remediator"],
            &[
                ("<password>", password.as_str()),
                ("<table_owner>", table_owner.as_str()),
                ("<source_db>", database_name),
                ("SCHEMA public", in_schema.as_str()),
            ],
        )
        .await
        .unwrap();
    }
}

fn run_ddl_as(source_db: &str, tables: &str, args: &[&str], user: &str, password: &str) -> Output {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dmsguard.toml");
    let url = |db: &str| {
        format!(
            "postgresql://{user}@{}:{}/{db}",
            env_or("DMSGUARD_PG_HOST", "127.0.0.1"),
            env_or("DMSGUARD_PG_PORT", "55432"),
        )
    };
    let config = format!(
        "[source]\nurl = \"{}\"\npassword = \"${{DDL_TEST_PW}}\"\n[redshift]\nurl = \"{}\"\npassword = \"${{DDL_TEST_PW}}\"\n{tables}",
        url(source_db),
        url(source_db),
    );
    std::fs::write(&path, config).unwrap();
    std::fs::write(
        dir.path().join("bad.csv"),
        "table,column,encoding,est_reduction_pct\norders,status,squeeze,10\n",
    )
    .unwrap();
    Command::new(env!("CARGO_BIN_EXE_dmsguard-remediator"))
        .current_dir(dir.path())
        .arg("--config")
        .arg(&path)
        .arg("ddl")
        .args(args)
        .env("DDL_TEST_PW", password)
        .output()
        .unwrap()
}

const TABLES: &str = "[[tables]]\nsource = \"public.orders\"\n[[tables]]\nsource = \"app.order_lines\"\ntarget = \"public.order_lines\"\nid_column = \"line_id\"\n";

#[tokio::test]
async fn ddl_command_prints_tables_and_refuses_clearly() {
    let scratch = Scratch::create("ddl_cli").await;
    let source = db::connect(&database(&scratch.name)).await.unwrap();
    source
        .batch_execute(
            "CREATE TABLE public.orders (id bigint PRIMARY KEY, paid boolean NOT NULL, doc jsonb, status varchar(20));
             CREATE SCHEMA app;
             CREATE TABLE app.order_lines (line_id integer PRIMARY KEY, order_id bigint NOT NULL, qty numeric(10,3));",
        )
        .await
        .unwrap();
    grant_remediator(&scratch.name, &["public", "app"]).await;

    let out = run_ddl(&scratch.name, TABLES, &[]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("CREATE TABLE \"public\".\"orders\" (\n    \"id\" BIGINT NOT NULL ENCODE RAW,\n    \"paid\" BOOLEAN NOT NULL ENCODE ZSTD,\n    \"doc\" SUPER ENCODE ZSTD,"), "{stdout}");
    assert!(
        stdout.contains("CREATE TABLE \"public\".\"order_lines\""),
        "{stdout}"
    );
    assert!(stdout.contains("SORTKEY (\"line_id\");"), "{stdout}");

    let out = run_ddl(
        &scratch.name,
        TABLES,
        &["--dms-compatible", "--table", "public.orders"],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(stdout.contains("\"paid\" VARCHAR(5) NOT NULL"), "{stdout}");
    assert!(!stdout.contains("order_lines"), "{stdout}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no SUPER"),
        "the json warning is logged"
    );

    // The PostgreSQL check output creates both tables.
    let out = run_ddl(&scratch.name, TABLES, &["--postgres-check"]);
    assert!(out.status.success());
    let sql = String::from_utf8(out.stdout).unwrap();
    let check = Scratch::create("ddl_cli_check").await;
    let target = db::connect(&database(&check.name)).await.unwrap();
    target.batch_execute(&sql).await.unwrap();
    let n: i64 = target
        .query_one("SELECT count(*) FROM information_schema.tables WHERE table_name IN ('orders', 'order_lines')", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 2);
    check.drop().await;

    let out = run_ddl(&scratch.name, TABLES, &["--table", "public.nope"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("public.nope"));

    let out = run_ddl(&scratch.name, TABLES, &["--compression", "bad.csv"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("line 2") && stderr.contains("SQUEEZE"),
        "{stderr}"
    );

    source
        .batch_execute("ALTER TABLE public.orders ADD COLUMN price money")
        .await
        .unwrap();
    // As a role with a long unique password: a refused table set and a failed connection
    // name their cause, never the password.
    let reader = Reader::create(&scratch.name, &["public", "app"]).await;
    let out = run_ddl_as(&scratch.name, TABLES, &[], &reader.user, &reader.password);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("public.orders.price") && stderr.contains("money"),
        "the password worked and the refusal names the column: {stderr}"
    );
    assert!(
        out.stdout.is_empty(),
        "nothing printed for a refused table set"
    );
    let missing_db = format!("{}_absent", scratch.name);
    let failed = run_ddl_as(&missing_db, TABLES, &[], &reader.user, &reader.password);
    assert!(!failed.status.success());
    let failed_stderr = String::from_utf8_lossy(&failed.stderr);
    assert!(
        failed_stderr.contains(&missing_db) && failed_stderr.contains("SQLSTATE 3D000"),
        "the connection error names the database and the server's reason: {failed_stderr}"
    );
    for (what, text) in [
        ("refusal stderr", stderr.to_string()),
        (
            "refusal stdout",
            String::from_utf8_lossy(&out.stdout).into_owned(),
        ),
        ("connection stderr", failed_stderr.to_string()),
        (
            "connection stdout",
            String::from_utf8_lossy(&failed.stdout).into_owned(),
        ),
    ] {
        assert!(
            !text.contains(&reader.password),
            "{what} shows the password: {text}"
        );
    }
    scratch.drop().await;
    reader.drop().await;
}
