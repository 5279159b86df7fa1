//! IAM database credentials end to end: Redshift's `GetClusterCredentials` against moto,
//! Redshift Serverless `GetCredentials` against the lab's moto launcher (moto has no Redshift
//! Serverless), and RDS IAM tokens computed locally. The lab's PostgreSQL plays the database: the test sets the
//! lab role's password to what AWS handed out, then dmsguard connects through the IAM path.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use dmsguard_lab::harness::{self, LabControl, LabEnv, Moto};
use dmsguard_pipeline::aws::AwsClients;
use dmsguard_pipeline::config::{Config, DatabaseConfig};
use dmsguard_pipeline::db;
use dmsguard_pipeline::iam_auth::{IamAuthConfig, IamMethod};
use dmsguard_pipeline::preflight::{self, CheckKind};

/// A login role on the lab's PostgreSQL, dropped at the end.
struct Role {
    admin: tokio_postgres::Client,
    name: String,
}

impl Role {
    async fn create(env: &LabEnv, name: &str, password: &str) -> anyhow::Result<Self> {
        let admin = db::connect(&env.database("postgres")).await?;
        let quoted = format!("\"{}\"", name.replace('"', "\"\""));
        admin
            .batch_execute(&format!(
                "DROP ROLE IF EXISTS {quoted}; CREATE ROLE {quoted} LOGIN PASSWORD '{}'",
                password.replace('\'', "''")
            ))
            .await?;
        Ok(Self {
            admin,
            name: name.to_owned(),
        })
    }

    async fn set_password(&self, password: &str) -> anyhow::Result<()> {
        self.admin
            .batch_execute(&format!(
                "ALTER ROLE \"{}\" PASSWORD '{}'",
                self.name.replace('"', "\"\""),
                password.replace('\'', "''")
            ))
            .await?;
        Ok(())
    }

    async fn drop(self) -> anyhow::Result<()> {
        self.admin
            .batch_execute(&format!(
                "DROP ROLE IF EXISTS \"{}\"",
                self.name.replace('"', "\"\"")
            ))
            .await?;
        Ok(())
    }
}

fn lab_database(env: &LabEnv, user: &str, iam: IamAuthConfig) -> DatabaseConfig {
    DatabaseConfig {
        url: format!(
            "postgresql://{user}@{}:{}/postgres",
            env.pg_host, env.pg_port
        ),
        password: None,
        iam: Some(iam),
        ..env.database("postgres")
    }
}

async fn current_user(config: &DatabaseConfig) -> anyhow::Result<String> {
    let client = db::connect(config).await?;
    Ok(client
        .query_one("SELECT current_user::text", &[])
        .await?
        .get(0))
}

/// A clock that runs with the system's, shifted by a settable number of seconds.
fn shifted_clock() -> (Arc<AtomicU64>, dmsguard_pipeline::iam_auth::Now) {
    let shift = Arc::new(AtomicU64::new(0));
    let s = shift.clone();
    let now = Arc::new(move || SystemTime::now() + Duration::from_secs(s.load(Ordering::SeqCst)));
    (shift, now)
}

#[tokio::test]
async fn redshift_cluster_credentials_log_in_are_cached_and_refreshed() -> anyhow::Result<()> {
    harness::ensure_test_credentials();
    let env = LabEnv::from_env();
    let moto = Moto::spawn().await?;
    let aws_config = harness::aws_config(&moto.url());
    let aws = AwsClients::new(&aws_config).await;
    aws.redshift
        .create_cluster()
        .cluster_identifier("iam-cluster")
        .node_type("ra3.xlplus")
        .master_username("admin")
        .master_user_password("Passw0rd1")
        .send()
        .await?;

    let db_user = format!("dmsguard_iam_{}", std::process::id());
    let mut iam = IamAuthConfig::new(IamMethod::Redshift, aws_config.clone());
    iam.cluster_identifier = Some("iam-cluster".to_owned());
    let (shift, now) = shifted_clock();
    iam.set_clock(now);
    let config = lab_database(&env, &db_user, iam.clone());

    // The login GetClusterCredentials hands out: the user prefixed `IAM:` and a password.
    let login = iam.login(&db_user, &env.pg_host, env.pg_port).await?;
    assert_eq!(login.user, format!("IAM:{db_user}"));
    let expires_in = login.expires.duration_since(SystemTime::now())?;
    assert!(
        expires_in > Duration::from_secs(800) && expires_in <= Duration::from_secs(900),
        "{expires_in:?}"
    );
    let role = Role::create(&env, &login.user, login.password.expose()).await?;

    // dmsguard connects as the `IAM:` user with that password; a second connection reuses the
    // cached login (moto returns a new random password on every call, so a second call would
    // fail to log in).
    assert_eq!(current_user(&config).await?, login.user);
    assert_eq!(current_user(&config).await?, login.user);
    assert_eq!(
        iam.cached().map(|l| l.password),
        Some(login.password.clone())
    );

    // Close to its expiry the login is replaced before connecting: the role still has the old
    // password, so the new connection is refused, and the new one works once the role has it.
    shift.store(800, Ordering::SeqCst);
    let err = db::connect(&config).await.expect_err("the old password");
    let message = err.to_string();
    assert!(message.contains("28P01"), "{message}");
    let renewed = iam.cached().expect("a new login");
    assert_ne!(renewed.password, login.password);
    role.set_password(renewed.password.expose()).await?;
    // (Back to the real time: at +800 s every new login would look as close to its expiry.)
    shift.store(0, Ordering::SeqCst);
    assert_eq!(current_user(&config).await?, login.user);

    // A cluster that does not exist: the error names the API call and the cluster.
    let mut missing = IamAuthConfig::new(IamMethod::Redshift, aws_config);
    missing.cluster_identifier = Some("no-such-cluster".to_owned());
    let err = db::connect(&lab_database(&env, &db_user, missing))
        .await
        .expect_err("no cluster");
    let message = err.to_string();
    assert!(
        message.contains("redshift:GetClusterCredentials")
            && message.contains("no-such-cluster")
            && message.contains("ClusterNotFound"),
        "{message}"
    );
    role.drop().await
}

#[tokio::test]
async fn redshift_serverless_credentials_log_in_are_cached_and_refreshed() -> anyhow::Result<()> {
    harness::ensure_test_credentials();
    let env = LabEnv::from_env();
    let moto = Moto::spawn().await?;
    let lab = LabControl::new(&moto.url());
    lab.create_workgroup("dmsguard-wg").await?;
    let aws_config = harness::aws_config(&moto.url());

    let mut iam = IamAuthConfig::new(IamMethod::RedshiftServerless, aws_config.clone());
    iam.workgroup_name = Some("dmsguard-wg".to_owned());
    let (shift, now) = shifted_clock();
    iam.set_clock(now);
    // GetCredentials takes no user: the URL's is not the one logged in as.
    let config = lab_database(&env, "not_the_login_user", iam.clone());

    // The first connection asks AWS for a login; no role has its password yet.
    let err = db::connect(&config).await.expect_err("no such role yet");
    assert!(err.to_string().contains("28P01"), "{err}");
    let issued = lab.serverless_logins().await?;
    assert_eq!(issued.len(), 1, "{issued:?}");
    let first = issued[0].clone();
    assert_eq!(first.workgroup_name, "dmsguard-wg");
    assert_eq!(
        first.db_name.as_deref(),
        Some("postgres"),
        "the URL's database"
    );
    // The lab maps the caller (its default identity `moto`) as AWS does an IAM user.
    assert_eq!(first.db_user, "IAM:moto");
    let lifetime = first.expiration
        - SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)?
            .as_secs_f64();
    assert!((800.0..=900.0).contains(&lifetime), "{lifetime}");

    // A least-privilege role (LOGIN only) whose password is what AWS handed out: dmsguard logs
    // in as the returned user and runs a query; the next connection reuses the cached login.
    let role = Role::create(&env, &first.db_user, &first.db_password).await?;
    assert_eq!(current_user(&config).await?, first.db_user);
    assert_eq!(current_user(&config).await?, first.db_user);
    assert_eq!(
        lab.serverless_logins().await?.len(),
        1,
        "the login is reused"
    );

    // Once the password has expired, the next new connection gets a new one: refused while the
    // role still has the old password, accepted once it has the new one.
    shift.store(901, Ordering::SeqCst);
    let err = db::connect(&config).await.expect_err("the old password");
    assert!(err.to_string().contains("28P01"), "{err}");
    let issued = lab.serverless_logins().await?;
    assert_eq!(issued.len(), 2, "{issued:?}");
    assert_ne!(issued[1].db_password, first.db_password);
    role.set_password(&issued[1].db_password).await?;
    shift.store(0, Ordering::SeqCst);
    assert_eq!(current_user(&config).await?, first.db_user);
    assert_eq!(lab.serverless_logins().await?.len(), 2);

    // Through an assumed role, the login is the role's (`IAMR:`).
    let mut assumed = aws_config.clone();
    assumed.role_arn = Some("arn:aws:iam::123456789012:role/dmsguard-serverless".to_owned());
    let mut by_role = IamAuthConfig::new(IamMethod::RedshiftServerless, assumed);
    by_role.workgroup_name = Some("dmsguard-wg".to_owned());
    let login = by_role
        .login_to("x", &env.pg_host, env.pg_port, Some("postgres"))
        .await?;
    assert_eq!(login.user, "IAMR:dmsguard-serverless");
    assert_eq!(
        lab.serverless_logins()
            .await?
            .last()
            .map(|l| l.db_user.clone()),
        Some(login.user)
    );

    // A workgroup that does not exist: the error names the API call, the workgroup and AWS's
    // error code.
    let mut missing = IamAuthConfig::new(IamMethod::RedshiftServerless, aws_config);
    missing.workgroup_name = Some("no-such-workgroup".to_owned());
    let err = db::connect(&lab_database(&env, "x", missing))
        .await
        .expect_err("no workgroup");
    let message = err.to_string();
    assert!(
        message.contains("redshift-serverless:GetCredentials")
            && message.contains("no-such-workgroup")
            && message.contains("ResourceNotFoundException"),
        "{message}"
    );
    role.drop().await?;
    preflight_checks_the_serverless_login(&env, &moto, &lab).await
}

/// Preflight reports the Redshift Serverless login as its own check, with a fix naming the key
/// and the permission when it fails; the connection check then reuses the login. (Part of the
/// test above, sharing its moto: a moto of its own costs seconds of CI.)
async fn preflight_checks_the_serverless_login(
    env: &LabEnv,
    moto: &Moto,
    lab: &LabControl,
) -> anyhow::Result<()> {
    lab.create_workgroup("preflight-wg").await?;
    let logins_before = lab.serverless_logins().await?.len();
    // The source side: a plain login role (no superuser anywhere).
    let pid = std::process::id();
    let source_user = format!("dmsguard_pf_src_{pid}");
    let source = Role::create(env, &source_user, "pf-source-secret").await?;
    // Through a role of this test's own, so its database user (`IAMR:<role>`) is not the one
    // the other tests log in as.
    let aws_role = format!("dmsguard-pf-{pid}");
    let table = format!("dmsguard_pf_{pid}");
    let text = |workgroup: &str, tables: &str| {
        format!(
            "[source]\nurl = \"postgresql://{source_user}@{host}:{port}/postgres\"\n\
             password = \"pf-source-secret\"\n\n\
             [redshift]\nurl = \"postgresql://ignored@{host}:{port}/postgres\"\n\
             serverless = true\n\
             iam = {{ method = \"redshift_serverless\", workgroup_name = \"{workgroup}\" }}\n\n\
             [aws]\nendpoint_url = \"{moto}\"\nmax_attempts = 1\ntimeout = \"10s\"\n\
             role_arn = \"arn:aws:iam::123456789012:role/{aws_role}\"\n{tables}",
            host = env.pg_host,
            port = env.pg_port,
            moto = moto.url(),
        )
    };

    let config = Config::from_toml(&text("no-such-wg", ""), &|_| None)?;
    let out = preflight::run(&config, false).await.render();
    for line in [
        "[ok] source connection: ",
        "[FAIL] redshift IAM login: ",
        "redshift-serverless:GetCredentials for workgroup `no-such-wg` failed",
        "ResourceNotFoundException",
        "fix: check `redshift.iam.workgroup_name`; allow redshift-serverless:GetCredentials",
    ] {
        assert!(out.contains(line), "missing `{line}` in:\n{out}");
    }
    assert!(!out.contains("redshift connection"), "{out}");

    // The workgroup exists, with a configured table the mapped user may not read yet: the login
    // check passes and names the user; the connection is refused until the role has the
    // password handed out, then passes with the same login.
    let admin = db::connect(&env.database("postgres")).await?;
    admin
        .batch_execute(&format!(
            "CREATE TABLE public.{table} (id bigint); GRANT SELECT ON public.{table} TO {source_user}"
        ))
        .await?;
    let config = Config::from_toml(
        &text(
            "preflight-wg",
            &format!("\n[[tables]]\nsource = \"public.{table}\"\n"),
        ),
        &|_| None,
    )?;
    let out = preflight::run(&config, false).await.render();
    let issued = lab.serverless_logins().await?.split_off(logins_before);
    assert_eq!(issued.len(), 1, "{issued:?}");
    assert_eq!(issued[0].db_user, format!("IAMR:{aws_role}"));
    let expected = format!(
        "[ok] redshift IAM login: redshift-serverless:GetCredentials for workgroup preflight-wg: user {}, valid until ",
        issued[0].db_user
    );
    assert!(out.contains(&expected), "missing `{expected}` in:\n{out}");
    assert!(out.contains("[FAIL] redshift connection: "), "{out}");
    let role = Role::create(env, &issued[0].db_user, &issued[0].db_password).await?;
    // The database checks only from here (the AWS ones passed above).
    let database_only = [CheckKind::RedshiftConnection];
    let out = preflight::run_for(&config, false, Some(&database_only))
        .await
        .render();
    assert!(out.contains(&expected), "{out}");
    assert!(out.contains("[ok] redshift connection: "), "{out}");
    assert_eq!(
        lab.serverless_logins().await?.len(),
        logins_before + 1,
        "the login is reused"
    );
    assert!(!out.contains(&issued[0].db_password), "{out}");
    // The GRANT names the mapped user (quoted), not the URL's.
    let user = format!("\"IAMR:{aws_role}\"");
    for line in [
        format!("[ok] source table public.{table}: SELECT works"),
        format!("[FAIL] target table public.{table}: ERROR: permission denied"),
        format!(
            "fix: GRANT USAGE ON SCHEMA \"public\" TO {user}; GRANT SELECT ON \"public\".\"{table}\" TO {user};"
        ),
    ] {
        assert!(out.contains(&line), "missing `{line}` in:\n{out}");
    }
    admin
        .batch_execute(&format!("GRANT SELECT ON public.{table} TO {user}"))
        .await?;
    let out = preflight::run_for(&config, false, Some(&database_only))
        .await
        .render();
    // (The lab's `postgres` database has no Redshift system views: that check fails here.)
    assert!(
        out.contains(&format!("[ok] target table public.{table}: SELECT works")),
        "{out}"
    );
    admin
        .batch_execute(&format!("DROP TABLE public.{table}"))
        .await?;
    role.drop().await?;
    source.drop().await
}

#[tokio::test]
async fn rds_iam_token_is_the_password_of_a_new_connection() -> anyhow::Result<()> {
    harness::ensure_test_credentials();
    let env = LabEnv::from_env();
    // No AWS call is made: the token is signed locally with the chain's credentials.
    let aws_config = harness::aws_config("http://127.0.0.1:9");
    let user = format!("dmsguard_rds_{}", std::process::id());
    let mut iam = IamAuthConfig::new(IamMethod::Rds, aws_config);
    iam.region = Some("eu-west-1".to_owned());
    let config = lab_database(&env, &user, iam.clone());

    let login = iam.login(&user, &env.pg_host, env.pg_port).await?;
    assert_eq!(login.user, user);
    let token = login.password.expose();
    let prefix = format!(
        "{}:{}/?Action=connect&DBUser={user}&X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=",
        env.pg_host, env.pg_port
    );
    assert!(token.starts_with(&prefix), "{token}");
    assert!(
        token.contains("%2Feu-west-1%2Frds-db%2Faws4_request&")
            && token.contains("&X-Amz-Expires=900&"),
        "{token}"
    );

    let role = Role::create(&env, &user, token).await?;
    let client = db::connect(&config).await?;
    let who: String = client
        .query_one("SELECT current_user::text", &[])
        .await?
        .get(0);
    assert_eq!(who, user);
    // Over TLS, as RDS requires for IAM tokens (the lab's PostgreSQL offers it).
    let ssl: bool = client
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await?
        .get(0);
    assert!(ssl);
    role.drop().await
}
