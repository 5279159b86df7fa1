//! Reads DMS statements and apply exceptions from Redshift's system views, incrementally.
//!
//! Two families, chosen by `redshift.system_views`, never joined with each other (their ids
//! are unrelated):
//! - `SYS`: `SYS_QUERY_HISTORY` (one row per query, text cut at 4000 characters), joined on
//!   `transaction_id` with `SYS_TRANSACTION_HISTORY` (committed or rolled back), full text in
//!   `SYS_QUERY_TEXT` (4000-character pieces by `sequence`).
//! - `STL`: `STL_QUERY` (`aborted` = 1 when stopped or rolled back, text cut at 4000
//!   characters), full text in `STL_QUERYTEXT` (200-character `char` pieces by `sequence`).
//!
//! Reading is by query id: the first read starts at a time, later reads continue after the
//! last settled query id, so a refresh reads only rows newer than the last one counted.
//!
//! Most text columns of these views are `character(n)`: `SYS_QUERY_HISTORY.status` is
//! `character(10)`, `query_type` `character(32)`, `query_text` `character(4000)`;
//! `SYS_QUERY_TEXT.text` `character(4000)`; `STL_QUERY.querytxt` `character(4000)`;
//! `STL_QUERYTEXT.text` `character(200)` (each view's page in the Amazon Redshift Database
//! Developer Guide, e.g. <https://docs.aws.amazon.com/redshift/latest/dg/SYS_QUERY_HISTORY.html>,
//! whose own example reads `TRIM(query_text)`). Their values come back blank-padded
//! (`"success   "`), so every value read from them is trimmed before it is compared or
//! parsed, and text pieces are joined with their padding taken off the last piece only.

use chrono::NaiveDateTime;
use tokio_postgres::types::ToSql;
use tokio_postgres::Client;

use crate::config::SystemViews;

/// Characters `SYS_QUERY_HISTORY.query_text` and `STL_QUERY.querytxt` keep.
pub const TRUNCATED_TEXT_CHARS: usize = 4000;
/// Characters per `STL_QUERYTEXT` piece (`character(200)`).
pub const STL_PIECE_CHARS: usize = 200;
/// Characters per `SYS_QUERY_TEXT` piece (`character(4000)`).
pub const SYS_PIECE_CHARS: usize = 4000;
/// Query ids per `IN (...)` list when fetching full texts.
const TEXT_IDS_PER_QUERY: usize = 100;

/// A system-view read that failed.
#[derive(Debug, thiserror::Error)]
pub enum SystemViewError {
    #[error("reading {view} failed: {source}")]
    Query {
        view: &'static str,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error("query id {0} does not fit STL_QUERY's integer ids")]
    QueryIdRange(i64),
}

fn query_error(view: &'static str) -> impl FnOnce(tokio_postgres::Error) -> SystemViewError {
    move |source| SystemViewError::Query { view, source }
}

/// Where a read starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cursor {
    /// First read: queries that started at or after this UTC time.
    Since(NaiveDateTime),
    /// Later reads: queries with an id above this one.
    After(i64),
}

/// How a DMS statement's transaction ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Committed,
    /// The statement failed, was cancelled, or its transaction rolled back.
    RolledBack,
}

/// One finished DMS statement with its full text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DmsQuery {
    pub query_id: i64,
    pub text: String,
    pub outcome: Outcome,
}

/// The result of one read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatementPage {
    /// Settled statements, in query id order.
    pub queries: Vec<DmsQuery>,
    /// Where the next read continues (unchanged when nothing settled).
    pub next: Cursor,
    /// Whether the page was full (more settled rows may follow at once).
    pub full: bool,
}

/// Reads DMS statements from one family of system views.
#[derive(Debug, Clone)]
pub struct StatementReader {
    family: SystemViews,
    comment_like: String,
    /// The DMS endpoint's database user (`redshift.dms_user`): when set, only its statements.
    dms_user: Option<String>,
    page_rows: i64,
    /// A successful statement whose transaction end has not appeared after this long is
    /// taken as committed (autocommit statements may never get one).
    settle_after: chrono::Duration,
}

/// A row before its outcome is known.
struct RawRow {
    query_id: i64,
    /// The transaction id (`transaction_id` / `xid`).
    transaction: i64,
    state: RowState,
    text: String,
}

/// What a statement's own row says about how it ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RowState {
    /// Failed, cancelled or stopped: its changes are gone whatever the transaction did.
    Stopped,
    /// Still planning, queued or running.
    Open,
    /// Completed; the transaction decides. `txn` is SYS_TRANSACTION_HISTORY's status (visible
    /// only to superusers), `ended_long_ago` whether it finished before the settle time.
    Completed {
        txn: Option<Outcome>,
        ended_long_ago: bool,
    },
}

/// How a transaction ended, from its COMMIT/END or ROLLBACK/ABORT statement.
fn end_statement_outcome(text: &str) -> Option<Outcome> {
    let first = text
        .trim_start()
        .split(|c: char| !c.is_ascii_alphabetic())
        .next()?
        .to_ascii_uppercase();
    match first.as_str() {
        "ROLLBACK" | "ABORT" => Some(Outcome::RolledBack),
        "COMMIT" | "END" => Some(Outcome::Committed),
        _ => None,
    }
}

/// SQL condition: `column` (a text column) holds a transaction-ending statement.
fn ends_transaction(column: &str) -> String {
    ["COMMIT", "END", "ROLLBACK", "ABORT"]
        .iter()
        .map(|w| format!("UPPER(TRIM({column})) LIKE '{w}%'"))
        .collect::<Vec<_>>()
        .join(" OR ")
}

/// SQL condition: `column` holds a ROLLBACK or ABORT statement.
pub fn rolls_back(column: &str) -> String {
    format!("(UPPER(TRIM({column})) LIKE 'ROLLBACK%' OR UPPER(TRIM({column})) LIKE 'ABORT%')")
}

impl RowState {
    fn outcome(self, end: Option<Outcome>) -> Option<Outcome> {
        match self {
            RowState::Stopped => Some(Outcome::RolledBack),
            RowState::Open => None,
            RowState::Completed {
                txn,
                ended_long_ago,
            } => txn.or(end).or(ended_long_ago.then_some(Outcome::Committed)),
        }
    }
}

impl StatementReader {
    /// `comment_like` is the SQL `LIKE` pattern of the DMS comment (`redshift.dms_comment_like`).
    pub fn new(family: SystemViews, comment_like: impl Into<String>) -> Self {
        Self {
            family,
            comment_like: comment_like.into(),
            dms_user: None,
            page_rows: 5000,
            settle_after: chrono::Duration::minutes(5),
        }
    }

    /// The reader `config` describes: its system-view family, the DMS comment, the DMS user
    /// and `statement_settle`.
    pub fn from_config(config: &crate::config::RedshiftConfig) -> Self {
        let mut reader = Self::new(config.system_views, config.dms_comment_like.clone())
            .with_dms_user(config.dms_user.clone());
        reader.settle_after =
            chrono::Duration::from_std(config.statement_settle).unwrap_or(reader.settle_after);
        reader
    }

    /// Only statements of this database user (the DMS endpoint's, `redshift.dms_user`).
    pub fn with_dms_user(mut self, dms_user: Option<String>) -> Self {
        self.dms_user = dms_user;
        self
    }

    /// `AND <user column> IN (the DMS user's id)` when a DMS user is set, as parameter `$n`.
    /// `PG_USER.usesysid` is the id `user_id`/`userid` hold.
    pub fn user_filter(&self, column: &str, n: usize) -> String {
        match self.dms_user {
            Some(_) => {
                format!(" AND {column} IN (SELECT usesysid FROM pg_user WHERE usename = ${n})")
            }
            None => String::new(),
        }
    }

    /// The SQL of a read from `cursor`; `$1` is the cursor, `$2` the pattern, `$3` the settle
    /// time, `$4` the DMS user (when set).
    pub fn statements_sql(&self, cursor: &Cursor) -> String {
        match self.family {
            SystemViews::Sys => {
                let from = match cursor {
                    Cursor::Since(_) => "q.start_time >= $1",
                    Cursor::After(_) => "q.query_id > $1",
                };
                // SYS_TRANSACTION_HISTORY is visible only to superusers: for anyone else the
                // join finds nothing and the transaction's COMMIT or ROLLBACK statement decides.
                format!(
                    "SELECT q.query_id, q.status, t.status, q.query_text, \
                     CASE WHEN q.end_time < $3 THEN 1 ELSE 0 END, q.transaction_id \
                     FROM sys_query_history q \
                     LEFT JOIN sys_transaction_history t ON t.transaction_id = q.transaction_id \
                     WHERE {from} AND q.query_text LIKE $2{user} \
                     ORDER BY q.query_id LIMIT {}",
                    self.page_rows,
                    user = self.user_filter("q.user_id", 4),
                )
            }
            SystemViews::Stl => {
                let from = match cursor {
                    Cursor::Since(_) => "q.starttime >= $1",
                    Cursor::After(_) => "q.query > CAST($1 AS bigint)",
                };
                format!(
                    "SELECT CAST(q.query AS bigint), q.aborted, q.querytxt, \
                     CASE WHEN q.endtime < $3 THEN 1 ELSE 0 END, q.xid \
                     FROM stl_query q \
                     WHERE {from} AND q.querytxt LIKE $2{user} \
                     ORDER BY q.query LIMIT {}",
                    self.page_rows,
                    user = self.user_filter("q.userid", 4),
                )
            }
        }
    }

    /// The SQL listing the transaction-ending statements (COMMIT, END, ROLLBACK, ABORT) of
    /// `n` transactions (`$1`..`$n`): `SYS_QUERY_HISTORY` rows, or `STL_UTILITYTEXT`, which
    /// captures ABORT, BEGIN, COMMIT, END and ROLLBACK (its page in the Amazon Redshift Database
    /// Developer Guide, <https://docs.aws.amazon.com/redshift/latest/dg/r_STL_UTILITYTEXT.html>).
    /// Both are visible to a user with `SYSLOG ACCESS UNRESTRICTED`.
    pub fn transaction_ends_sql(&self, n: usize) -> String {
        let list = (1..=n.max(1))
            .map(|i| format!("${i}"))
            .collect::<Vec<_>>()
            .join(", ");
        match self.family {
            SystemViews::Sys => format!(
                "SELECT transaction_id, query_text FROM sys_query_history \
                 WHERE transaction_id IN ({list}) AND ({})",
                ends_transaction("query_text")
            ),
            SystemViews::Stl => format!(
                "SELECT xid, text FROM stl_utilitytext \
                 WHERE xid IN ({list}) AND sequence = 0 AND ({})",
                ends_transaction("text")
            ),
        }
    }

    /// How each of `transactions` ended, as far as its end statement is logged.
    async fn transaction_ends(
        &self,
        client: &Client,
        transactions: &[i64],
    ) -> Result<std::collections::HashMap<i64, Outcome>, SystemViewError> {
        let mut ends = std::collections::HashMap::new();
        let view = match self.family {
            SystemViews::Sys => "SYS_QUERY_HISTORY",
            SystemViews::Stl => "STL_UTILITYTEXT",
        };
        for chunk in transactions.chunks(TEXT_IDS_PER_QUERY) {
            let params: Vec<&(dyn ToSql + Sync)> =
                chunk.iter().map(|id| id as &(dyn ToSql + Sync)).collect();
            let rows = client
                .query(&self.transaction_ends_sql(chunk.len()), &params)
                .await
                .map_err(query_error(view))?;
            for row in rows {
                let text = char_value(row.get(1));
                if let Some(outcome) = end_statement_outcome(&text) {
                    // A ROLLBACK wins over anything else logged for the transaction.
                    let e = ends.entry(row.get::<_, i64>(0)).or_insert(outcome);
                    if outcome == Outcome::RolledBack {
                        *e = outcome;
                    }
                }
            }
        }
        Ok(ends)
    }

    /// Reads the next page of settled DMS statements after `cursor`; `now` is the current UTC
    /// time (for the first read's look-back and the settle rule).
    pub async fn read(
        &self,
        client: &Client,
        cursor: Cursor,
        now: NaiveDateTime,
    ) -> Result<StatementPage, SystemViewError> {
        let sql = self.statements_sql(&cursor);
        let since;
        let after;
        let cursor_param: &(dyn ToSql + Sync) = match &cursor {
            Cursor::Since(t) => {
                since = *t;
                &since
            }
            Cursor::After(id) => {
                after = *id;
                &after
            }
        };
        let settle_before = now - self.settle_after;
        let mut params: Vec<&(dyn ToSql + Sync)> =
            vec![cursor_param, &self.comment_like, &settle_before];
        if let Some(user) = &self.dms_user {
            params.push(user);
        }
        let raw: Vec<RawRow> = match self.family {
            SystemViews::Sys => client
                .query(&sql, &params)
                .await
                .map_err(query_error("SYS_QUERY_HISTORY"))?
                .iter()
                .map(|row| {
                    let status: Option<String> = row.get(1);
                    let txn: Option<String> = row.get(2);
                    let ended_long_ago: i32 = row.get(4);
                    RawRow {
                        query_id: row.get(0),
                        transaction: row.get::<_, Option<i64>>(5).unwrap_or_default(),
                        state: sys_state(status.as_deref(), txn.as_deref(), ended_long_ago == 1),
                        text: char_value(row.get(3)),
                    }
                })
                .collect(),
            SystemViews::Stl => client
                .query(&sql, &params)
                .await
                .map_err(query_error("STL_QUERY"))?
                .iter()
                .map(|row| {
                    let aborted: Option<i32> = row.get(1);
                    let ended_long_ago: i32 = row.get(3);
                    RawRow {
                        query_id: row.get(0),
                        transaction: row.get::<_, Option<i64>>(4).unwrap_or_default(),
                        // STL_QUERY logs only finished queries; `aborted` is 1 when the system
                        // stopped the query or a user cancelled it, 0 when it ran to completion,
                        // even in a transaction that then rolled back (STL_QUERY's page in the
                        // Amazon Redshift Database Developer Guide).
                        state: if aborted.unwrap_or(0) != 0 {
                            RowState::Stopped
                        } else {
                            RowState::Completed {
                                txn: None,
                                ended_long_ago: ended_long_ago == 1,
                            }
                        },
                        text: char_value(row.get(2)),
                    }
                })
                .collect(),
        };
        let full = raw.len() as i64 >= self.page_rows;
        let undecided: Vec<i64> = raw
            .iter()
            .filter(|r| matches!(r.state, RowState::Completed { txn: None, .. }))
            .map(|r| r.transaction)
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        let ends = self.transaction_ends(client, &undecided).await?;
        // Stop at the first unsettled query: the cursor must never pass it.
        let settled: Vec<(RawRow, Outcome)> = raw
            .into_iter()
            .map_while(|r| {
                let outcome = r.state.outcome(ends.get(&r.transaction).copied())?;
                Some((r, outcome))
            })
            .collect();
        let truncated: Vec<i64> = settled
            .iter()
            .filter(|(r, _)| r.text.chars().count() >= TRUNCATED_TEXT_CHARS - STL_PIECE_CHARS)
            .map(|(r, _)| r.query_id)
            .collect();
        let mut full_texts = self.full_texts(client, &truncated).await?;
        let next = settled
            .last()
            .map_or(cursor, |(r, _)| Cursor::After(r.query_id));
        let queries = settled
            .into_iter()
            .map(|(r, outcome)| DmsQuery {
                query_id: r.query_id,
                text: full_texts.remove(&r.query_id).unwrap_or(r.text),
                outcome,
            })
            .collect();
        Ok(StatementPage {
            queries,
            next,
            full,
        })
    }

    /// Reassembles the full texts of `ids` from their pieces, in `sequence` order.
    pub async fn full_texts(
        &self,
        client: &Client,
        ids: &[i64],
    ) -> Result<std::collections::HashMap<i64, String>, SystemViewError> {
        let mut pieces: std::collections::HashMap<i64, Vec<(i32, String)>> = Default::default();
        for chunk in ids.chunks(TEXT_IDS_PER_QUERY) {
            let list = (1..=chunk.len())
                .map(|i| format!("${i}"))
                .collect::<Vec<_>>()
                .join(", ");
            let rows = match self.family {
                SystemViews::Sys => {
                    let params: Vec<&(dyn ToSql + Sync)> =
                        chunk.iter().map(|id| id as &(dyn ToSql + Sync)).collect();
                    client
                        .query(
                            &format!(
                                "SELECT query_id, sequence, text FROM sys_query_text \
                                 WHERE query_id IN ({list}) ORDER BY query_id, sequence"
                            ),
                            &params,
                        )
                        .await
                        .map_err(query_error("SYS_QUERY_TEXT"))?
                }
                SystemViews::Stl => {
                    let ids32 = chunk
                        .iter()
                        .map(|id| {
                            i32::try_from(*id).map_err(|_| SystemViewError::QueryIdRange(*id))
                        })
                        .collect::<Result<Vec<i32>, _>>()?;
                    let params: Vec<&(dyn ToSql + Sync)> =
                        ids32.iter().map(|id| id as &(dyn ToSql + Sync)).collect();
                    client
                        .query(
                            &format!(
                                "SELECT CAST(query AS bigint), sequence, text FROM stl_querytext \
                                 WHERE query IN ({list}) ORDER BY query, sequence"
                            ),
                            &params,
                        )
                        .await
                        .map_err(query_error("STL_QUERYTEXT"))?
                }
            };
            for row in rows {
                pieces.entry(row.get(0)).or_default().push((
                    row.get(1),
                    row.get::<_, Option<String>>(2).unwrap_or_default(),
                ));
            }
        }
        Ok(pieces
            .into_iter()
            .map(|(id, mut parts)| {
                parts.sort_by_key(|(seq, _)| *seq);
                let texts: Vec<String> = parts.into_iter().map(|(_, t)| t).collect();
                let text = match self.family {
                    SystemViews::Sys => join_pieces(&texts, SYS_PIECE_CHARS),
                    SystemViews::Stl => join_pieces(&texts, STL_PIECE_CHARS),
                };
                // Both views store newlines and backslashes escaped; pieces are cut from the
                // escaped text, so an escape may span two pieces: unescape the whole.
                let text = unescape_query_text(&text);
                (id, text)
            })
            .collect())
    }
}

/// A `character(n)` value as text: NULL as empty, the blank padding taken off.
pub fn char_value(value: Option<String>) -> String {
    let mut value = value.unwrap_or_default();
    value.truncate(value.trim_end().len());
    value
}

/// A status word from a `character(n)` (or text) column, for comparing: trimmed, lower case.
fn status_word(value: Option<&str>) -> Option<String> {
    value.map(|v| v.trim().to_ascii_lowercase())
}

/// What a `SYS_QUERY_HISTORY` row says (with its SYS_TRANSACTION_HISTORY status, if visible).
fn sys_state(status: Option<&str>, txn: Option<&str>, ended_long_ago: bool) -> RowState {
    match status_word(status).as_deref() {
        Some("failed") | Some("canceled") | Some("cancelled") => RowState::Stopped,
        Some("success") => RowState::Completed {
            txn: match status_word(txn).as_deref() {
                Some("rolledback") | Some("rolled back") | Some("aborted") => {
                    Some(Outcome::RolledBack)
                }
                Some(_) => Some(Outcome::Committed),
                None => None,
            },
            ended_long_ago,
        },
        // planning, queued, running, returning, or unknown: still open.
        _ => RowState::Open,
    }
}

/// The outcome of a `SYS_QUERY_HISTORY` row without a logged end statement, or `None` while
/// it is not settled.
#[cfg(test)]
fn sys_outcome(status: Option<&str>, txn: Option<&str>, ended_long_ago: bool) -> Option<Outcome> {
    sys_state(status, txn, ended_long_ago).outcome(None)
}

/// Joins text pieces of `character(piece_chars)` (`STL_QUERYTEXT`: 200, `SYS_QUERY_TEXT`:
/// 4000): every piece but the last is exactly `piece_chars` characters of text (padding
/// restored when the driver trimmed it), the last one is right-trimmed.
pub fn join_pieces(pieces: &[String], piece_chars: usize) -> String {
    let mut out = String::new();
    for (i, piece) in pieces.iter().enumerate() {
        if i + 1 == pieces.len() {
            out.push_str(piece.trim_end());
        } else {
            let piece = piece.trim_end();
            out.push_str(piece);
            let n = piece.chars().count();
            out.extend(std::iter::repeat_n(' ', piece_chars.saturating_sub(n)));
        }
    }
    out
}

/// The statement text of `SYS_QUERY_TEXT.text` / `STL_QUERYTEXT.text`, which "might contain
/// special characters such as backslash (`\\`) and newline (`\n`)" (the SYS_QUERY_TEXT and
/// STL_QUERYTEXT pages of the Amazon Redshift Database Developer Guide,
/// <https://docs.aws.amazon.com/redshift/latest/dg/SYS_QUERY_TEXT.html>,
/// <https://docs.aws.amazon.com/redshift/latest/dg/r_STL_QUERYTEXT.html>): a newline is stored
/// as the two characters `\n` and a backslash as `\\`. Any other backslash is kept as it is.
pub fn unescape_query_text(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.peek() {
            Some('n') => {
                chars.next();
                out.push('\n');
            }
            Some('\\') => {
                chars.next();
                out.push('\\');
            }
            _ => out.push('\\'),
        }
    }
    out
}

/// Joins `STL_QUERYTEXT` pieces (see [`join_pieces`]).
pub fn join_stl_pieces(pieces: &[String]) -> String {
    join_pieces(pieces, STL_PIECE_CHARS)
}

/// New rows of DMS's `awsdms_apply_exceptions` table for one target table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExceptionCount {
    /// `TABLE_OWNER.TABLE_NAME`.
    pub table: String,
    pub error_time: NaiveDateTime,
    pub rows: i64,
}

/// SQL counting the rows of `awsdms_apply_exceptions` in DMS's control schema `schema` at or
/// after `$1`, by table and error time.
pub fn apply_exceptions_sql(schema: &str) -> String {
    format!(
        "SELECT \"TABLE_OWNER\", \"TABLE_NAME\", \"ERROR_TIME\", count(*) \
         FROM {}.awsdms_apply_exceptions WHERE \"ERROR_TIME\" >= $1 \
         GROUP BY \"TABLE_OWNER\", \"TABLE_NAME\", \"ERROR_TIME\" ORDER BY \"ERROR_TIME\"",
        crate::config::quote_ident(schema)
    )
}

/// Counts apply exceptions at or after `since` in DMS's control schema `schema`. DMS always
/// creates the table on database targets ("Control table task settings", AWS DMS User Guide):
/// a missing table means a wrong `redshift.control_schema` (or missing grants), an error, not 0.
pub async fn read_apply_exceptions(
    client: &Client,
    schema: &str,
    since: NaiveDateTime,
) -> Result<Vec<ExceptionCount>, SystemViewError> {
    let rows = client
        .query(&apply_exceptions_sql(schema), &[&since])
        .await
        .map_err(query_error("awsdms_apply_exceptions"))?;
    Ok(rows
        .iter()
        .map(|row| ExceptionCount {
            table: format!(
                "{}.{}",
                row.get::<_, String>(0).trim_end(),
                row.get::<_, String>(1).trim_end()
            ),
            error_time: row.get(2),
            rows: row.get(3),
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stl_pieces_keep_spaces_at_piece_boundaries() {
        let text = format!("{}x", "a ".repeat(100)); // 201 chars, piece 1 ends with a space
        let first: String = text.chars().take(200).collect();
        // A driver may hand back char(200) values trimmed or padded.
        let trimmed = vec![first.trim_end().to_owned(), "x".to_owned()];
        assert_eq!(join_stl_pieces(&trimmed), text);
        let padded = vec![first.clone(), format!("{:<200}", "x")];
        assert_eq!(join_stl_pieces(&padded), text);
    }

    #[test]
    fn sys_outcome_waits_for_the_transaction() {
        assert_eq!(sys_outcome(Some("running"), None, true), None);
        assert_eq!(sys_outcome(Some("success"), None, false), None);
        assert_eq!(
            sys_outcome(Some("success"), None, true),
            Some(Outcome::Committed)
        );
        assert_eq!(
            sys_outcome(Some("success"), Some("committed"), false),
            Some(Outcome::Committed)
        );
        assert_eq!(
            sys_outcome(Some("success"), Some("rolledback"), false),
            Some(Outcome::RolledBack)
        );
        assert_eq!(
            sys_outcome(Some("failed"), None, false),
            Some(Outcome::RolledBack)
        );
    }

    #[test]
    fn query_text_pieces_are_unescaped() {
        assert_eq!(unescape_query_text("a\\nb"), "a\nb");
        assert_eq!(unescape_query_text("c:\\\\x"), "c:\\x");
        // An escaped backslash followed by n is a backslash and an n.
        assert_eq!(unescape_query_text("\\\\n"), "\\n");
        assert_eq!(unescape_query_text("\\t"), "\\t");
        assert_eq!(unescape_query_text("end\\"), "end\\");
    }

    /// A regular user does not see SYS_TRANSACTION_HISTORY: the COMMIT or ROLLBACK statement
    /// of the transaction settles a completed statement.
    #[test]
    fn end_statements_settle_without_the_transaction_view() {
        let completed = sys_state(Some("success   "), None, false);
        assert_eq!(completed.outcome(None), None);
        for (text, outcome) in [
            ("ROLLBACK", Outcome::RolledBack),
            ("abort;", Outcome::RolledBack),
            ("rollback work", Outcome::RolledBack),
            ("COMMIT", Outcome::Committed),
            ("END TRANSACTION", Outcome::Committed),
        ] {
            let end = end_statement_outcome(text);
            assert_eq!(end, Some(outcome), "{text}");
            assert_eq!(completed.outcome(end), Some(outcome), "{text}");
        }
        assert_eq!(end_statement_outcome("ENDLESS"), None);
        assert_eq!(end_statement_outcome("SELECT 1"), None);
        // A statement the system stopped is rolled back whatever else is logged.
        assert_eq!(
            sys_state(Some("canceled"), None, false).outcome(Some(Outcome::Committed)),
            Some(Outcome::RolledBack)
        );
        // The transaction view, when visible, decides over a missing end statement.
        assert_eq!(
            sys_state(Some("success"), Some("rolledback"), false).outcome(None),
            Some(Outcome::RolledBack)
        );
    }

    /// `character(n)` values come back blank-padded: `status` is `character(10)`.
    #[test]
    fn padded_char_values_settle_like_trimmed_ones() {
        assert_eq!(
            sys_outcome(Some("success   "), Some("committed"), false),
            Some(Outcome::Committed)
        );
        assert_eq!(
            sys_outcome(Some("failed    "), None, false),
            Some(Outcome::RolledBack)
        );
        assert_eq!(
            char_value(Some(format!("{:<4000}", "/* x */ UPDATE t"))),
            "/* x */ UPDATE t"
        );
        assert_eq!(char_value(None), "");
        let sys = vec![format!("{:<4000}", "a "), format!("{:<4000}", "b")];
        assert_eq!(join_pieces(&sys, 4).len(), 5);
        assert_eq!(
            join_pieces(&[format!("{:<4000}", "ab"), "c".into()], 4000).len(),
            4001
        );
    }

    /// Every statement this module sends must be Redshift SQL.
    #[test]
    fn sql_parses_in_the_redshift_dialect() {
        use sqlparser::dialect::RedshiftSqlDialect;
        use sqlparser::parser::Parser;
        let mut sqls = vec![apply_exceptions_sql("dmslogs")];
        for family in [SystemViews::Sys, SystemViews::Stl] {
            for user in [None, Some("dms".to_owned())] {
                let r = StatementReader::new(family, "%AWS DMS%").with_dms_user(user);
                sqls.push(r.statements_sql(&Cursor::After(1)));
                sqls.push(r.statements_sql(&Cursor::Since(NaiveDateTime::default())));
                sqls.push(r.transaction_ends_sql(3));
            }
        }
        sqls.push(
            "SELECT query_id, sequence, text FROM sys_query_text WHERE query_id IN ($1, $2) \
             ORDER BY query_id, sequence"
                .to_owned(),
        );
        sqls.push(
            "SELECT CAST(query AS bigint), sequence, text FROM stl_querytext WHERE query IN ($1) \
             ORDER BY query, sequence"
                .to_owned(),
        );
        for sql in sqls {
            Parser::parse_sql(&RedshiftSqlDialect {}, &sql)
                .unwrap_or_else(|e| panic!("{sql}: {e}"));
        }
    }
}
