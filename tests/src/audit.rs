//! The statement audit: every statement dmsguard's users send to a Redshift stand-in is logged
//! by the lab's PostgreSQL (`log_statement = all` for those users in those databases, set by
//! [`enable`]), and each is checked against Redshift's unsupported PostgreSQL features.
//! `dmsguard-lab audit-statements` reads the server log after the suite and fails naming every
//! statement that breaks a rule.
//!
//! The rules, from the Amazon Redshift Database Developer Guide: "Unsupported PostgreSQL data
//! types" (arrays), "Unsupported PostgreSQL functions" (array functions and operators),
//! "Leader node–only functions" (`generate_series` cannot touch table data), "Unsupported
//! PostgreSQL features" (no `ON CONFLICT`, no `LATERAL`), and `COPY` (loads from Amazon S3 and
//! other AWS sources, never `FROM STDIN`).
//!
//! A bind parameter's type is often the server's inference, invisible in the text
//! (`array_position($1, name)`, `$1 && tags`): before a test's stand-in is dropped,
//! [`record_inferred_array_parameters`] prepares every parameterised statement the log holds in
//! that database, asks the server for the parameter types it infers, and writes a line marked
//! [`INFERRED_MARKER`] to the server log for each array; [`audit_log`] reads those lines too.

use tokio_postgres::types::Kind;
use tokio_postgres::Client;

use crate::harness::{EXPORTER_USER, REMEDIATOR_USER};

/// Marks a statement a test sends on purpose to prove the audit catches it (in a comment);
/// `dmsguard-lab audit-statements` leaves such statements out.
pub const PROBE_MARKER: &str = "dmsguard_lab_audit_probe";

/// A rule: its name, and whether a statement (upper-cased, whitespace collapsed) breaks it.
type Rule = (&'static str, fn(&str) -> bool);

fn array_parameter(sql: &str) -> bool {
    // `= ANY($1)`, `ALL ($2)`, `$1::int8[]`, `CAST($1 AS bigint[])`: a bind parameter of an
    // array type.
    let compact = sql.replace(' ', "");
    ["ANY($", "ALL($", "UNNEST($"]
        .iter()
        .any(|p| compact.contains(p))
        || compact
            .match_indices('$')
            .any(|(i, _)| parameter_cast_is_array(&compact[i..]))
}

/// `$n::type[]` or `$n AS type[])` right after a parameter.
fn parameter_cast_is_array(from_dollar: &str) -> bool {
    let rest = from_dollar[1..].trim_start_matches(|c: char| c.is_ascii_digit());
    let cast = rest
        .strip_prefix("::")
        .or_else(|| rest.strip_prefix("AS"))
        .unwrap_or("");
    let ty: String = cast
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || "_[]()\"".contains(*c))
        .collect();
    !cast.is_empty() && ty.contains("[]")
}

/// The rule an array-typed bind parameter breaks, whether the text shows it or the server
/// infers it.
pub const ARRAY_PARAMETER_RULE: &str =
    "array-typed bind parameter (arrays are unsupported PostgreSQL data types on Redshift)";

/// Starts the server log line that names a statement whose bind parameter the server infers
/// as an array: `LOG:  <marker> $<n> <type>: <statement on one line>`.
pub const INFERRED_MARKER: &str = "dmsguard_lab_inferred_array_parameter";

const RULES: &[Rule] = &[
    (ARRAY_PARAMETER_RULE, array_parameter),
    (
        "array function or constructor (unsupported PostgreSQL functions on Redshift)",
        |s| {
            ["UNNEST(", "ARRAY[", "ARRAY_AGG("]
                .iter()
                .any(|p| s.replace(' ', "").contains(p))
        },
    ),
    (
        "generate_series is a leader node-only function: it cannot touch table data",
        |s| s.replace(' ', "").contains("GENERATE_SERIES("),
    ),
    ("LATERAL is not supported on Redshift", |s| {
        s.split(|c: char| !c.is_ascii_alphanumeric() && c != '_')
            .any(|w| w == "LATERAL")
    }),
    ("INSERT … ON CONFLICT is not supported on Redshift", |s| {
        s.contains("ON CONFLICT")
    }),
    ("COPY … FROM STDIN is not supported on Redshift", |s| {
        s.starts_with("COPY ") && s.contains("FROM STDIN")
    }),
];

/// The rules `sql` breaks.
pub fn check(sql: &str) -> Vec<&'static str> {
    let normal = sql
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .to_ascii_uppercase();
    RULES
        .iter()
        .filter(|(_, breaks)| breaks(&normal))
        .map(|(name, _)| *name)
        .collect()
}

/// A statement that breaks a rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub rule: &'static str,
    pub statement: String,
    /// What the server said about it, e.g. `$1 is inferred as name[]`.
    pub detail: Option<String>,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.rule, self.statement)?;
        if let Some(detail) = &self.detail {
            write!(f, " ({detail})")?;
        }
        Ok(())
    }
}

/// The statements a PostgreSQL server log holds from `log_statement = all`: `LOG:  statement: …`
/// (simple protocol) and `LOG:  execute <name>: …` (extended protocol); a statement's later
/// lines are the log's lines without a `LOG:`/`DETAIL:`… marker.
pub fn statements_in_log(log: &str) -> Vec<String> {
    const MARKERS: [&str; 6] = [
        "LOG:  ",
        "DETAIL:  ",
        "ERROR:  ",
        "STATEMENT:  ",
        "HINT:  ",
        "CONTEXT:  ",
    ];
    let mut out: Vec<String> = Vec::new();
    let mut open = false;
    for line in log.lines() {
        let marker = MARKERS.iter().find_map(|m| line.find(m).map(|i| (i, *m)));
        match marker {
            Some((i, "LOG:  ")) => {
                let rest = &line[i + "LOG:  ".len()..];
                let statement = rest.strip_prefix("statement: ").or_else(|| {
                    rest.strip_prefix("execute ")
                        .and_then(|r| r.split_once(": ").map(|(_, s)| s))
                });
                open = statement.is_some();
                if let Some(s) = statement {
                    out.push(s.to_owned());
                }
            }
            Some(_) => open = false,
            None if open => {
                if let Some(last) = out.last_mut() {
                    last.push('\n');
                    last.push_str(line);
                }
            }
            None => {}
        }
    }
    out
}

/// `sql` on one line, its whitespace runs collapsed to one space.
fn one_line(sql: &str) -> String {
    sql.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Whether `sql` has a bind parameter (`$1`, `$2`, …), i.e. came through the extended protocol
/// with parameters.
fn has_parameter(sql: &str) -> bool {
    sql.as_bytes()
        .windows(2)
        .any(|w| w[0] == b'$' && w[1].is_ascii_digit())
}

/// The [`INFERRED_MARKER`] lines of a server log: (`$n type`, statement).
fn inferred_in_log(log: &str) -> Vec<(String, String)> {
    let prefix = format!("LOG:  {INFERRED_MARKER} ");
    log.lines()
        .filter_map(|line| {
            let rest = &line[line.find(&prefix)? + prefix.len()..];
            let (parameter, statement) = rest.split_once(": ")?;
            Some((parameter.to_owned(), statement.to_owned()))
        })
        .collect()
}

/// Every violation among the statements of a server log, with the array parameters the server
/// inferred ([`record_inferred_array_parameters`]); a statement the text rules already name for
/// an array parameter is named once.
pub fn audit_log(log: &str) -> Vec<Violation> {
    let mut out: Vec<Violation> = statements_in_log(log)
        .into_iter()
        .flat_map(|statement| {
            check(&statement).into_iter().map(move |rule| Violation {
                rule,
                statement: statement.clone(),
                detail: None,
            })
        })
        .collect();
    let mut named: std::collections::HashSet<String> = out
        .iter()
        .filter(|v| v.rule == ARRAY_PARAMETER_RULE)
        .map(|v| one_line(&v.statement))
        .collect();
    for (parameter, statement) in inferred_in_log(log) {
        if named.insert(one_line(&statement)) {
            out.push(Violation {
                rule: ARRAY_PARAMETER_RULE,
                detail: Some(format!(
                    "{} is inferred as {} by the server",
                    parameter
                        .split_once(' ')
                        .map_or(parameter.as_str(), |p| p.0),
                    parameter.split_once(' ').map_or("", |p| p.1)
                )),
                statement,
            });
        }
    }
    out
}

/// Prepares every parameterised statement of `log` (a part of the server log) in the database
/// `client` is connected to (a test's stand-in, before it is dropped) and writes an
/// [`INFERRED_MARKER`] line to the server log for each bind parameter the server infers as an
/// array. A statement that does not prepare here (another test's tables) is skipped: its own
/// database's teardown prepares it. Returns how many array parameters it found.
pub async fn record_inferred_array_parameters(
    client: &Client,
    log: &str,
) -> Result<usize, tokio_postgres::Error> {
    let mut seen = std::collections::HashSet::new();
    let mut found = 0;
    for statement in statements_in_log(log) {
        if !has_parameter(&statement) || !seen.insert(statement.clone()) {
            continue;
        }
        let Ok(prepared) = client.prepare(&statement).await else {
            continue;
        };
        for (i, ty) in prepared.params().iter().enumerate() {
            if !matches!(ty.kind(), Kind::Array(_)) {
                continue;
            }
            found += 1;
            let line = format!(
                "{INFERRED_MARKER} ${} {}[]: {}",
                i + 1,
                match ty.kind() {
                    Kind::Array(element) => element.name().to_owned(),
                    _ => unreachable!(),
                },
                one_line(&statement).replace("$dmsguard_audit$", "")
            );
            client
                .batch_execute(&format!(
                    "DO $dmsguard_audit$ BEGIN RAISE LOG '%', '{}'; END $dmsguard_audit$",
                    line.replace('\'', "''")
                ))
                .await?;
        }
    }
    Ok(found)
}

/// Logs every statement dmsguard's users (exporter, remediator) run in the database `client`
/// is connected to (a Redshift stand-in), for the audit.
pub async fn enable(client: &Client) -> Result<(), tokio_postgres::Error> {
    for user in [EXPORTER_USER, REMEDIATOR_USER] {
        client
            .batch_execute(&format!(
                "DO $$ BEGIN EXECUTE format('ALTER ROLE {user} IN DATABASE %I SET log_statement = ''all''', \
                 current_database()); END $$;"
            ))
            .await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_catch_what_redshift_refuses_and_pass_what_it_runs() {
        for bad in [
            "SELECT id FROM t WHERE id = ANY($1)",
            "SELECT id FROM t WHERE id = any ( $1::int8[] )",
            "SELECT CAST($1 AS bigint[])",
            "SELECT * FROM unnest($1::text[])",
            "SELECT g FROM generate_series(1, 10) g JOIN t ON t.id = g",
            "SELECT * FROM b, LATERAL (SELECT 1) x",
            "INSERT INTO t VALUES (1) ON CONFLICT DO NOTHING",
            "COPY t (a) FROM STDIN",
        ] {
            assert!(!check(bad).is_empty(), "{bad}");
        }
        for good in [
            "SELECT CAST(id AS BIGINT) FROM \"public\".\"orders\" WHERE id IN (CAST($1 AS BIGINT), CAST($2 AS BIGINT))",
            "LOCK \"public\".\"orders\"",
            "SELECT q.query_id FROM sys_query_history q WHERE q.query_text LIKE $2",
            "SELECT \"batch\".\"doc\" FROM (SELECT JSON_PARSE($1::varchar(65535)) AS \"doc\") AS \"batch\"",
            "SELECT lateral_thinking FROM t",
        ] {
            assert_eq!(check(good), Vec::<&str>::new(), "{good}");
        }
    }

    #[test]
    fn statements_come_from_both_protocols_and_span_lines() {
        let log = "2026-12-03 13:00:00.000 UTC [1] LOG:  statement: SELECT 1\n\
                   2026-12-03 13:00:00.001 UTC [2] LOG:  execute s0: SELECT id FROM t\n\
                   WHERE id = ANY($1)\n\
                   2026-12-03 13:00:00.001 UTC [2] DETAIL:  parameters: $1 = '{1,2}'\n\
                   2026-12-03 13:00:00.002 UTC [3] LOG:  checkpoint starting: time\n";
        assert_eq!(
            statements_in_log(log),
            vec!["SELECT 1", "SELECT id FROM t\nWHERE id = ANY($1)"]
        );
        let v = audit_log(log);
        assert_eq!(v.len(), 1, "{v:?}");
        assert!(v[0].rule.starts_with("array-typed bind parameter"));
    }

    #[test]
    fn inferred_array_parameters_are_read_from_their_log_lines_once_per_statement() {
        let log = "2026-12-03 13:00:00.000 UTC [2] LOG:  execute s0: SELECT 1 FROM t WHERE array_position($1, n) > 0\n\
                   2026-12-03 13:00:00.001 UTC [5] LOG:  dmsguard_lab_inferred_array_parameter $1 name[]: SELECT 1 FROM t WHERE array_position($1, n) > 0\n\
                   2026-12-03 13:00:00.002 UTC [2] LOG:  execute s1: SELECT 1 FROM t WHERE n = ANY($1)\n\
                   2026-12-03 13:00:00.003 UTC [5] LOG:  dmsguard_lab_inferred_array_parameter $1 name[]: SELECT 1 FROM t WHERE n = ANY($1)\n";
        assert_eq!(
            check("SELECT 1 FROM t WHERE array_position($1, n) > 0"),
            Vec::<&str>::new()
        );
        let v = audit_log(log);
        assert_eq!(v.len(), 2, "{v:?}");
        assert!(v.iter().all(|v| v.rule == ARRAY_PARAMETER_RULE));
        assert_eq!(
            v[1].to_string(),
            format!("{ARRAY_PARAMETER_RULE}: SELECT 1 FROM t WHERE array_position($1, n) > 0 ($1 is inferred as name[] by the server)")
        );
        assert!(has_parameter("x = $12") && !has_parameter("DO $$ BEGIN END $$"));
    }
}
