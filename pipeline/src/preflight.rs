//! The preflight check: for a config, can dmsguard reach and read what it needs? Each database
//! connection (with its TLS state and the server certificate's subject), each configured table
//! on the source and the target, the Redshift system views, the AWS identity, and that each
//! configured task, replication instance and cluster exists. Prints a checklist with a fix per
//! failure.

use std::fmt::Write as _;

use aws_sdk_databasemigration::error::DisplayErrorContext;
use aws_sdk_databasemigration::types::Filter;

use crate::aws::{caller_identity, AwsClients};
use crate::config::{Config, DatabaseConfig, QualifiedName, SystemViews};
use crate::db;
use crate::iam_auth::IamMethod;
use crate::tls::TlsState;

/// What a check is about. The remediator says which of these each fix needs, so a failed
/// check disables exactly the fixes that depend on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum CheckKind {
    /// Connecting to the database source reads go to: `[source.replica]` when set, else
    /// `[source]`.
    SourceConnection,
    /// Connecting to the `[source]` primary when a `[source.replica]` takes the reads.
    SourcePrimaryConnection,
    /// `SELECT` on a configured table at the `[source]` primary when a replica takes the reads.
    SourcePrimaryTable,
    /// Connecting to `[redshift]`.
    RedshiftConnection,
    /// Connecting to `[remediator.ledger]`.
    LedgerConnection,
    /// `SELECT` on a configured table where source reads go (the replica when set).
    SourceTable,
    /// `SELECT` on a configured table's target.
    TargetTable,
    /// `INSERT` into a configured table's target (repairs).
    TargetInsert,
    /// `DELETE` on the target of a table with `divergent_rows = true` (rewrites).
    TargetDelete,
    /// Reading the Redshift system view DMS's statements are in.
    SystemView,
    /// An AWS identity (the credential chain, and the assumed role).
    AwsIdentity,
    /// A configured DMS task exists (and `DescribeReplicationTasks` is allowed).
    DmsTask,
    /// A configured replication instance exists.
    ReplicationInstance,
    /// The configured Redshift cluster exists.
    RedshiftCluster,
}

/// One line of the checklist.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    /// What was checked, e.g. `source connection`.
    pub name: String,
    /// What kind of thing was checked.
    pub kind: CheckKind,
    pub ok: bool,
    /// What was found (or the error).
    pub detail: String,
    /// What to do about a failure.
    pub fix: Option<String>,
}

/// The whole checklist.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub checks: Vec<Check>,
}

impl Report {
    /// Whether every check passed.
    pub fn ok(&self) -> bool {
        self.checks.iter().all(|c| c.ok)
    }

    fn pass(&mut self, kind: CheckKind, name: impl Into<String>, detail: impl Into<String>) {
        self.checks.push(Check {
            name: name.into(),
            kind,
            ok: true,
            detail: detail.into(),
            fix: None,
        });
    }

    fn fail(
        &mut self,
        kind: CheckKind,
        name: impl Into<String>,
        detail: impl Into<String>,
        fix: impl Into<String>,
    ) {
        self.checks.push(Check {
            name: name.into(),
            kind,
            ok: false,
            detail: detail.into(),
            fix: Some(fix.into()),
        });
    }

    /// Logs each check (failures as warnings, with their fix) and a summary.
    pub fn log(&self, binary: &str) {
        for c in &self.checks {
            if c.ok {
                tracing::info!(check = %c.name, detail = %c.detail, "Preflight check passed.");
            } else {
                tracing::warn!(
                    check = %c.name,
                    detail = %c.detail,
                    fix = c.fix.as_deref().unwrap_or(""),
                    "Preflight check failed."
                );
            }
        }
        let failed = self.checks.iter().filter(|c| !c.ok).count();
        tracing::info!(
            binary,
            checks = self.checks.len(),
            failed,
            "Preflight finished."
        );
    }

    /// The checklist as text: `[ok]`/`[FAIL]` lines, each failure followed by its fix.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for c in &self.checks {
            let mark = if c.ok { "ok" } else { "FAIL" };
            let _ = writeln!(out, "[{mark}] {}: {}", c.name, c.detail);
            if let Some(fix) = &c.fix {
                let _ = writeln!(out, "       fix: {fix}");
            }
        }
        let failed = self.checks.iter().filter(|c| !c.ok).count();
        let _ = writeln!(out, "{} checks, {failed} failed", self.checks.len());
        out
    }
}

/// The user a database config connects as (for GRANT suggestions).
fn user_of(config: &DatabaseConfig) -> String {
    let url = crate::tls::split_tls_params(&config.url).rest;
    url.parse::<tokio_postgres::Config>()
        .ok()
        .and_then(|c| c.get_user().map(str::to_owned))
        .unwrap_or_else(|| "<user>".to_owned())
}

/// The user to name in GRANT suggestions for a connection made with `config`: with IAM
/// database credentials the session's own user (Redshift Serverless maps the AWS identity to a
/// user such as `IAMR:<role>`, whatever the URL says), quoted when it needs quotes; otherwise
/// the URL's user.
async fn grantee(client: &tokio_postgres::Client, config: &DatabaseConfig) -> String {
    if config.iam.is_none() {
        return user_of(config);
    }
    match client.query_one("SELECT current_user", &[]).await {
        Ok(row) => {
            let user: String = row.get(0);
            let plain = user.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
                && user
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '$');
            if plain {
                user
            } else {
                crate::config::quote_ident(&user)
            }
        }
        Err(_) => user_of(config),
    }
}

/// Connects and records the connection check; returns the client when it worked.
async fn connection(
    report: &mut Report,
    kind: CheckKind,
    name: &str,
    config: &DatabaseConfig,
) -> Option<tokio_postgres::Client> {
    if !iam_login(report, kind, name, config).await {
        return None;
    }
    let check = format!("{name} connection");
    match db::connect_with_tls_state(config).await {
        Ok((client, state)) => {
            let tls = match &state {
                TlsState::Plaintext => "plaintext (no TLS)".to_owned(),
                TlsState::Tls {
                    peer_certificate, ..
                } => {
                    let subject = peer_certificate
                        .as_deref()
                        .and_then(subject_common_name)
                        .map(|cn| format!(", server certificate CN={cn}"))
                        .unwrap_or_default();
                    format!("{state}{subject}")
                }
            };
            let settings = db::tls_settings(config)
                .map(|s| s.to_string())
                .unwrap_or_default();
            report.pass(
                kind,
                check,
                format!("{}: {tls} ({settings})", db::describe(config)),
            );
            Some(client)
        }
        Err(e) => {
            report.fail(
                kind,
                check,
                e.to_string(),
                format!(
                    "check `{name}` url, password and network; for TLS errors sslmode and \
                     sslrootcert (e.g. Amazon's CA bundle)"
                ),
            );
            None
        }
    }
}

/// With `iam` set, records whether the login API answers (the connection that follows reuses
/// the login); returns false when it failed. Without `iam`, records nothing.
async fn iam_login(
    report: &mut Report,
    kind: CheckKind,
    name: &str,
    config: &DatabaseConfig,
) -> bool {
    let Some(iam) = &config.iam else {
        return true;
    };
    let (api, fix) = match iam.method {
        IamMethod::Redshift => (
            format!(
                "redshift:GetClusterCredentials for cluster {}",
                iam.cluster_identifier.as_deref().unwrap_or("")
            ),
            format!(
                "check `{name}.iam.cluster_identifier`; allow redshift:GetClusterCredentials on \
                 the dbuser (docs/iam-policy.md, iam-database policy)"
            ),
        ),
        IamMethod::RedshiftServerless => (
            format!(
                "redshift-serverless:GetCredentials for workgroup {}",
                iam.workgroup_name.as_deref().unwrap_or("")
            ),
            format!(
                "check `{name}.iam.workgroup_name`; allow redshift-serverless:GetCredentials on \
                 the workgroup's ARN (docs/iam-policy.md, iam-database policy)"
            ),
        ),
        IamMethod::Rds => (
            "RDS IAM authentication token".to_owned(),
            "check the AWS credential chain and [aws] region (the token is signed with them)"
                .to_owned(),
        ),
    };
    let check = format!("{name} IAM login");
    match db::iam_login_for(config).await {
        Ok(Some(login)) => {
            let until = chrono::DateTime::<chrono::Utc>::from(login.expires)
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
            report.pass(
                kind,
                check,
                format!("{api}: user {}, valid until {until}", login.user),
            );
            true
        }
        Ok(None) => true,
        Err(e) => {
            report.fail(kind, check, e.to_string(), fix);
            false
        }
    }
}

/// `SELECT` on a table: works, or the error with a GRANT to run.
async fn readable(
    report: &mut Report,
    kind: CheckKind,
    client: &tokio_postgres::Client,
    name: String,
    table: &QualifiedName,
    user: &str,
) {
    let sql = format!("SELECT 1 FROM {} LIMIT 0", table.quoted());
    match client.query(&sql, &[]).await {
        Ok(_) => report.pass(kind, name, "SELECT works"),
        Err(e) => {
            let code = e.code().map(|c| c.code().to_owned()).unwrap_or_default();
            let fix = match code.as_str() {
                // 42P01 undefined_table, 3F000 invalid_schema_name.
                "42P01" | "3F000" => format!("create {table}, or fix the table name in the config"),
                _ => format!(
                    "GRANT USAGE ON SCHEMA {} TO {user}; GRANT SELECT ON {} TO {user};",
                    crate::config::quote_ident(&table.schema),
                    table.quoted()
                ),
            };
            report.fail(kind, name, db::error_chain(&e), fix);
        }
    }
}

/// `INSERT` on a target table (the remediator's repairs insert the missing rows), or `DELETE`
/// (the `divergent_rows` fix rewrites rows, only on tables that enable it): asked of the
/// catalogue with `HAS_TABLE_PRIVILEGE`, which Redshift has as a leader-node function
/// (https://docs.aws.amazon.com/redshift/latest/dg/r_HAS_TABLE_PRIVILEGE.html), so nothing is
/// written.
async fn insertable(
    report: &mut Report,
    client: &tokio_postgres::Client,
    name: String,
    table: &QualifiedName,
    user: &str,
) {
    allowed(report, client, name, table, user, "INSERT").await
}

async fn allowed(
    report: &mut Report,
    client: &tokio_postgres::Client,
    name: String,
    table: &QualifiedName,
    user: &str,
    privilege: &'static str,
) {
    let kind = if privilege == "INSERT" {
        CheckKind::TargetInsert
    } else {
        CheckKind::TargetDelete
    };
    let grant = format!("GRANT {privilege} ON {} TO {user};", table.quoted());
    match client
        .query_one(
            &format!("SELECT has_table_privilege($1, '{privilege}')"),
            &[&table.quoted()],
        )
        .await
    {
        Ok(row) if row.get::<_, bool>(0) => report.pass(kind, name, format!("{privilege} allowed")),
        Ok(_) => {
            let what = if privilege == "INSERT" {
                "INSERT into"
            } else {
                "DELETE from"
            };
            report.fail(kind, name, format!("{user} may not {what} {table}"), grant)
        }
        Err(e) => report.fail(kind, name, db::error_chain(&e), grant),
    }
}

/// Runs every check that applies to `config`; `ledger` adds what only the remediator needs:
/// its ledger database and INSERT on the target tables.
pub async fn run(config: &Config, ledger: bool) -> Report {
    run_for(config, ledger, None).await
}

/// [`run`], leaving out the AWS checks unless `kinds` (when given) asks for one of them: a hand
/// run of a fix that needs no AWS call does not wait on the AWS APIs.
pub async fn run_for(config: &Config, ledger: bool, kinds: Option<&[CheckKind]>) -> Report {
    let wants_aws = kinds.is_none_or(|kinds| {
        kinds.iter().any(|k| {
            matches!(
                k,
                CheckKind::AwsIdentity
                    | CheckKind::DmsTask
                    | CheckKind::ReplicationInstance
                    | CheckKind::RedshiftCluster
            )
        })
    });
    let mut report = Report::default();
    let replica_set = config.source_replica.is_some();
    let (primary_kind, primary_table_kind) = if replica_set {
        (
            CheckKind::SourcePrimaryConnection,
            CheckKind::SourcePrimaryTable,
        )
    } else {
        (CheckKind::SourceConnection, CheckKind::SourceTable)
    };
    let source = connection(&mut report, primary_kind, "source", &config.source).await;
    let replica = match &config.source_replica {
        Some(r) => {
            let client = connection(
                &mut report,
                CheckKind::SourceConnection,
                "source replica",
                r,
            )
            .await;
            if let Some(client) = &client {
                match crate::replica::replay_state(client).await {
                    Ok(state) => report.pass(
                        CheckKind::SourceConnection,
                        "source replica replay",
                        if state.in_recovery {
                            format!("standby, {:.1} s behind the primary", state.lag.as_secs_f64())
                        } else {
                            "not a standby: sees every commit (lag 0)".to_owned()
                        },
                    ),
                    Err(e) => report.fail(
                        CheckKind::SourceConnection,
                        "source replica replay",
                        e.to_string(),
                        "point [source.replica] at a PostgreSQL streaming replica (pg_last_xact_replay_timestamp()), or leave it out",
                    ),
                }
            }
            client
        }
        None => None,
    };
    let redshift_db = config.redshift.database();
    let redshift = connection(
        &mut report,
        CheckKind::RedshiftConnection,
        "redshift",
        &redshift_db,
    )
    .await;
    if ledger {
        match config.ledger_database() {
            Ok(l) => {
                let _ = connection(&mut report, CheckKind::LedgerConnection, "ledger", l).await;
            }
            Err(e) => report.fail(
                CheckKind::LedgerConnection,
                "ledger connection",
                e.to_string(),
                "add [remediator.ledger]",
            ),
        }
    }
    for table in &config.tables {
        let (Some(src), Some(dst)) = (
            QualifiedName::parse(&table.source),
            QualifiedName::parse(table.target_name()),
        ) else {
            continue;
        };
        if let Some(client) = &source {
            let user = user_of(&config.source);
            readable(
                &mut report,
                primary_table_kind,
                client,
                format!("source table {src}"),
                &src,
                &user,
            )
            .await;
        }
        if let (Some(client), Some(r)) = (&replica, &config.source_replica) {
            readable(
                &mut report,
                CheckKind::SourceTable,
                client,
                format!("source replica table {src}"),
                &src,
                &user_of(r),
            )
            .await;
        }
        if let Some(client) = &redshift {
            let user = grantee(client, &redshift_db).await;
            readable(
                &mut report,
                CheckKind::TargetTable,
                client,
                format!("target table {dst}"),
                &dst,
                &user,
            )
            .await;
            if ledger {
                insertable(
                    &mut report,
                    client,
                    format!("target table {dst} insert"),
                    &dst,
                    &user,
                )
                .await;
                if table.divergent_rows {
                    allowed(
                        &mut report,
                        client,
                        format!("target table {dst} delete (divergent_rows)"),
                        &dst,
                        &user,
                        "DELETE",
                    )
                    .await;
                }
            }
        }
    }
    if let Some(client) = &redshift {
        // SYS views show a regular user only their own queries: DMS's need sys:monitor
        // (https://docs.aws.amazon.com/redshift/latest/dg/SYS_QUERY_HISTORY.html).
        let view = match config.redshift.system_views {
            SystemViews::Sys => "sys_query_history",
            SystemViews::Stl => "stl_query",
        };
        let name = format!("redshift system view {view}");
        match client
            .query(&format!("SELECT 1 FROM {view} LIMIT 0"), &[])
            .await
        {
            Ok(_) => report.pass(CheckKind::SystemView, name, "readable"),
            Err(e) => report.fail(
                CheckKind::SystemView,
                name,
                db::error_chain(&e),
                format!(
                    "GRANT ROLE sys:monitor TO {} (to see DMS's statements, not only its own)",
                    grantee(client, &redshift_db).await
                ),
            ),
        }
    }
    if wants_aws {
        aws_checks(&mut report, config).await;
    }
    report
}

async fn aws_checks(report: &mut Report, config: &Config) {
    let sdk = crate::aws::sdk_config(&config.aws).await;
    match caller_identity(&sdk).await {
        Ok(arn) => report.pass(CheckKind::AwsIdentity, "AWS identity", arn),
        Err(e) => {
            report.fail(
                CheckKind::AwsIdentity,
                "AWS identity",
                e.to_string(),
                "set credentials for the default chain (env, profile, IRSA, instance role); with \
                 [aws] role_arn, allow sts:AssumeRole on it and check its trust policy",
            );
            return;
        }
    }
    let aws = AwsClients::from_sdk(&sdk);
    let policy = "see docs/iam-policy.md for the policy";
    for task in &config.tasks {
        let name = format!("DMS task {}", task.name);
        let filter = Filter::builder()
            .name("replication-task-id")
            .values(&task.name)
            .build();
        let Ok(filter) = filter else { continue };
        match aws
            .dms
            .describe_replication_tasks()
            .filters(filter)
            .without_settings(true)
            .send()
            .await
        {
            Ok(out) => match out
                .replication_tasks()
                .iter()
                .find(|t| t.replication_task_identifier() == Some(task.name.as_str()))
            {
                Some(t) => report.pass(
                    CheckKind::DmsTask,
                    name,
                    t.status().unwrap_or("exists").to_owned(),
                ),
                None => report.fail(
                    CheckKind::DmsTask,
                    name,
                    "not found",
                    "fix [[tasks]].name (the task identifier)",
                ),
            },
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_resource_not_found_fault()) =>
            {
                report.fail(
                    CheckKind::DmsTask,
                    name,
                    "not found",
                    "fix [[tasks]].name (the task identifier)",
                )
            }
            Err(e) => report.fail(
                CheckKind::DmsTask,
                name,
                format!("dms:DescribeReplicationTasks: {}", DisplayErrorContext(&e)),
                policy,
            ),
        }
    }
    let mut instances: Vec<&str> = config
        .tasks
        .iter()
        .map(|t| t.replication_instance.as_str())
        .collect();
    instances.sort_unstable();
    instances.dedup();
    for instance in instances {
        let name = format!("DMS replication instance {instance}");
        let Ok(filter) = Filter::builder()
            .name("replication-instance-id")
            .values(instance)
            .build()
        else {
            continue;
        };
        match aws
            .dms
            .describe_replication_instances()
            .filters(filter)
            .send()
            .await
        {
            Ok(out) => match out
                .replication_instances()
                .iter()
                .find(|i| i.replication_instance_identifier() == Some(instance))
            {
                Some(i) => report.pass(
                    CheckKind::ReplicationInstance,
                    name,
                    i.replication_instance_status()
                        .unwrap_or("exists")
                        .to_owned(),
                ),
                None => report.fail(
                    CheckKind::ReplicationInstance,
                    name,
                    "not found",
                    "fix [[tasks]].replication_instance (the instance identifier)",
                ),
            },
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_resource_not_found_fault()) =>
            {
                report.fail(
                    CheckKind::ReplicationInstance,
                    name,
                    "not found",
                    "fix [[tasks]].replication_instance (the instance identifier)",
                )
            }
            Err(e) => report.fail(
                CheckKind::ReplicationInstance,
                name,
                format!(
                    "dms:DescribeReplicationInstances: {}",
                    DisplayErrorContext(&e)
                ),
                policy,
            ),
        }
    }
    if let Some(cluster) = &config.redshift.cluster_identifier {
        let name = format!("Redshift cluster {cluster}");
        match aws
            .redshift
            .describe_clusters()
            .cluster_identifier(cluster)
            .send()
            .await
        {
            Ok(out) => report.pass(
                CheckKind::RedshiftCluster,
                name,
                out.clusters()
                    .first()
                    .and_then(|c| c.preferred_maintenance_window())
                    .map(|w| format!("maintenance window {w}"))
                    .unwrap_or_else(|| "exists".to_owned()),
            ),
            Err(e) => report.fail(
                CheckKind::RedshiftCluster,
                name,
                format!(
                    "redshift:DescribeClusters: {}",
                    aws_sdk_redshift::error::DisplayErrorContext(&e)
                ),
                format!("fix redshift.cluster_identifier, or {policy}"),
            ),
        }
    }
}

/// The subject's common name of a DER certificate (enough DER to walk to it).
pub fn subject_common_name(der: &[u8]) -> Option<String> {
    // Certificate ::= SEQUENCE { tbsCertificate SEQUENCE { [0] version?, serial, signature,
    // issuer, validity, subject, ... }, ... } (RFC 5280, section 4.1).
    let (_, cert, _) = tlv(der)?;
    let (_, mut tbs, _) = tlv(cert)?;
    let (tag, _, rest) = tlv(tbs)?;
    if tag == 0xa0 {
        tbs = rest;
    }
    for _ in 0..4 {
        // serial, signature, issuer, validity
        tbs = tlv(tbs)?.2;
    }
    let (_, subject, _) = tlv(tbs)?;
    // OID 2.5.4.3 (commonName) then its string.
    let oid = [0x06, 0x03, 0x55, 0x04, 0x03];
    let at = subject.windows(oid.len()).position(|w| w == oid)?;
    let (_, value, _) = tlv(&subject[at + oid.len()..])?;
    String::from_utf8(value.to_vec()).ok()
}

/// One DER TLV: (tag, contents, rest).
fn tlv(b: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let tag = *b.first()?;
    let first = *b.get(1)? as usize;
    let (len, header) = if first < 0x80 {
        (first, 2)
    } else {
        let n = first & 0x7f;
        if n == 0 || n > 4 {
            return None;
        }
        let mut len = 0usize;
        for i in 0..n {
            len = (len << 8) | *b.get(2 + i)? as usize;
        }
        (len, 2 + n)
    };
    let end = header.checked_add(len)?;
    Some((tag, b.get(header..end)?, b.get(end..)?))
}
