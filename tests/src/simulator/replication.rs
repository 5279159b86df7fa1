//! Batch apply as DMS does it: read the slot, load `awsdms_changes<hash>`, sweep it per table
//! and operation, fall back to one-by-one mode, and log every statement in the system views.
//!
//! Exactly once: changes are only peeked; the batch commits on the target together with its
//! checkpoint (the commit LSN, in `awsdms_txn_state`), and only then is the slot advanced. After
//! a crash or an unknown commit outcome, transactions at or below the checkpoint are skipped.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Cursor;
use std::pin::pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use chrono::{DateTime, NaiveDateTime, Utc};
use dmsguard_pipeline::config::{quote_ident, QualifiedName};
use futures::SinkExt;
use tokio::sync::watch;
use tokio_postgres::Client;

use super::target_schema::{Column, ColumnKind, SimTable, ID_COLUMN};
use super::{lock, Block, Fault, Shared, SimTask, TaskRuntime, DMS_COMMENT};

/// The table holding each task's checkpoint on the target (DMS's recovery table).
pub const TXN_STATE_TABLE: &str = "awsdms_txn_state";
/// Most rows a backlog measurement reads from the slot.
const BACKLOG_PEEK_LIMIT: i32 = 500_000;
/// Pause after a failed batch before retrying.
const RETRY_BACKOFF: Duration = Duration::from_millis(500);
/// The error DMS logs for a one-by-one UPDATE or DELETE that found no row.
pub const NO_ROW_ERROR: &str =
    "RetCode: SQL_SUCCESS  SqlState: 00000 NativeError: 0 Message: 0 rows affected";
/// `SYS_QUERY_TEXT` piece length.
pub const SYS_TEXT_PIECE: usize = 4000;
/// `STL_QUERYTEXT` piece length.
pub const STL_TEXT_PIECE: usize = 200;
/// The statement that ends a transaction, as `STL_UTILITYTEXT` and `SYS_QUERY_HISTORY` log it
/// (`STL_UTILITYTEXT` captures ABORT, BEGIN, COMMIT, END, ROLLBACK, …: its page in the Amazon
/// Redshift Database Developer Guide).
fn end_statement(committed: bool) -> &'static str {
    if committed {
        "COMMIT"
    } else {
        "ROLLBACK"
    }
}

/// Parses a WAL position `X/Y`.
pub fn parse_lsn(s: &str) -> anyhow::Result<u64> {
    let (hi, lo) = s
        .split_once('/')
        .ok_or_else(|| anyhow::anyhow!("`{s}` is not a WAL position"))?;
    let hi = u64::from_str_radix(hi, 16).with_context(|| format!("WAL position `{s}`"))?;
    let lo = u64::from_str_radix(lo, 16).with_context(|| format!("WAL position `{s}`"))?;
    Ok((hi << 32) | lo)
}

/// Formats a WAL position as `X/Y`.
pub fn format_lsn(lsn: u64) -> String {
    format!("{:X}/{:X}", lsn >> 32, lsn & 0xffff_ffff)
}

/// Columns `c1..cN` of a task's intermediate table: the widest of its tables.
fn changes_width(task: &SimTask) -> usize {
    task.tables
        .iter()
        .map(|t| t.columns().len())
        .max()
        .unwrap_or(1)
}

/// Creates a task's slot (on the source), intermediate table and checkpoint row (on the target).
pub(crate) async fn install_task(
    source: &Client,
    redshift: &Client,
    task: &SimTask,
    source_db: &str,
) -> anyhow::Result<()> {
    let rt = TaskRuntime::new(task.clone(), source_db);
    let exists: bool = source
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = $1)",
            &[&rt.slot],
        )
        .await?
        .get(0);
    if !exists {
        source
            .execute(
                "SELECT pg_create_logical_replication_slot($1, 'wal2json')",
                &[&rt.slot],
            )
            .await
            .context("creating the replication slot")?;
    }
    let ct = rt.changes_table.quoted();
    let mut ddl = format!(
        "CREATE TABLE IF NOT EXISTS {ct} (seq bigint, tbl varchar(256), op varchar(1), seg1 varchar(65535));"
    );
    for i in 1..=changes_width(task) {
        ddl.push_str(&format!(
            "ALTER TABLE {ct} ADD COLUMN IF NOT EXISTS c{i} varchar(65535);"
        ));
    }
    ddl.push_str(&format!(
        "CREATE TABLE IF NOT EXISTS public.{TXN_STATE_TABLE} (\"TASK_NAME\" varchar(128) PRIMARY KEY, \
         \"CHECKPOINT\" varchar(64) NOT NULL, \"LAST_SEQ\" bigint NOT NULL, \"CHECKPOINT_TIME\" timestamp NOT NULL);"
    ));
    redshift.batch_execute(&ddl).await?;
    redshift
        .execute(
            &format!(
                "INSERT INTO public.{TXN_STATE_TABLE} (\"TASK_NAME\", \"CHECKPOINT\", \"LAST_SEQ\", \"CHECKPOINT_TIME\")
                 SELECT $1::varchar, '0/0', 0, now() AT TIME ZONE 'UTC'
                 WHERE NOT EXISTS (SELECT 1 FROM public.{TXN_STATE_TABLE} WHERE \"TASK_NAME\" = $1::varchar)"
            ),
            &[&task.name],
        )
        .await?;
    Ok(())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Op {
    Insert,
    Delete,
    Update,
}

impl Op {
    fn letter(self) -> &'static str {
        match self {
            Op::Insert => "I",
            Op::Delete => "D",
            Op::Update => "U",
        }
    }
    fn query_type(self) -> &'static str {
        match self {
            Op::Insert => "INSERT",
            Op::Delete => "DELETE",
            Op::Update => "UPDATE",
        }
    }
}

/// One table of a task, with its column lookup.
struct TableInfo {
    table: SimTable,
    dotted: String,
    columns: Vec<Column>,
    index: HashMap<String, usize>,
}

impl TableInfo {
    fn new(table: SimTable) -> Self {
        let columns = table.columns();
        let index = columns
            .iter()
            .enumerate()
            .map(|(i, c)| (c.name.clone(), i))
            .collect();
        Self {
            dotted: table.dotted(),
            table,
            columns,
            index,
        }
    }

    fn id_index(&self) -> usize {
        self.index[ID_COLUMN]
    }
}

/// A source change as read from the slot.
struct RawChange {
    table: usize,
    op: Op,
    id: i64,
    values: Vec<Option<String>>,
}

/// One wal2json (format 2) row.
#[derive(serde::Deserialize)]
struct W2jRow {
    action: String,
    #[serde(default)]
    timestamp: Option<String>,
    #[serde(default)]
    schema: Option<String>,
    #[serde(default)]
    table: Option<String>,
    #[serde(default)]
    columns: Vec<W2jColumn>,
    #[serde(default)]
    identity: Vec<W2jColumn>,
}

#[derive(serde::Deserialize)]
struct W2jColumn {
    name: String,
    value: serde_json::Value,
}

/// A committed source transaction.
struct Txn {
    commit_lsn: u64,
    commit_ts: Option<DateTime<Utc>>,
    changes: Vec<RawChange>,
}

fn parse_ts(s: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S%.f%#z")
        .ok()
        .map(|d| d.with_timezone(&Utc))
}

fn text_value(v: &serde_json::Value, kind: ColumnKind) -> Option<String> {
    match v {
        serde_json::Value::Null => None,
        serde_json::Value::Bool(b) => Some(b.to_string()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        serde_json::Value::String(s) if kind == ColumnKind::TimestampTz => {
            // The slot is read in UTC; DMS writes UTC without the offset.
            Some(s.strip_suffix("+00").unwrap_or(s).to_owned())
        }
        serde_json::Value::String(s) => Some(s.clone()),
        other => Some(other.to_string()),
    }
}

/// A net change of one row in a batch.
#[derive(Clone)]
struct Net {
    op: Op,
    values: Vec<Option<String>>,
}

/// Folds a row's successive changes into one, as DMS batch apply does.
fn fold(prev: Option<Net>, next: Net) -> Option<Net> {
    use Op::*;
    match (prev.map(|p| p.op), next.op) {
        (None, _) => Some(next),
        (Some(Insert), Delete) => None,
        (Some(Insert), _) => Some(Net { op: Insert, ..next }),
        (Some(Update), Delete) => Some(next),
        (Some(Update), _) => Some(Net { op: Update, ..next }),
        (Some(Delete), Insert | Update) => Some(Net { op: Update, ..next }),
        (Some(Delete), Delete) => Some(next),
    }
}

/// A statement run on the target, for the system views.
struct StmtRecord {
    sql: String,
    kind: &'static str,
    start: NaiveDateTime,
    end: NaiveDateTime,
    rows: i64,
    txn: usize,
}

struct TxnRecord {
    committed: bool,
    start: NaiveDateTime,
    /// None while the transaction is open: its statements are logged as they complete, as
    /// SYS_QUERY_HISTORY "contains both running and finished queries" and gives a transaction's
    /// outcome only through SYS_TRANSACTION_HISTORY
    /// (<https://docs.aws.amazon.com/redshift/latest/dg/SYS_QUERY_HISTORY.html>).
    end: Option<NaiveDateTime>,
    /// (SYS `transaction_id`, STL `xid`), given when its first rows are written.
    ids: Option<(i64, i64)>,
}

struct ExceptionRecord {
    schema: String,
    table: String,
    time: NaiveDateTime,
    statement: String,
    error: String,
}

/// System-view rows waiting to be written (kept across failures until written).
#[derive(Default)]
struct Pending {
    txns: Vec<TxnRecord>,
    stmts: Vec<StmtRecord>,
    exceptions: Vec<ExceptionRecord>,
}

impl Pending {
    /// The transaction still open (a one-by-one batch being applied), if any.
    fn open_txn(&self) -> Option<usize> {
        self.txns.iter().position(|t| t.end.is_none())
    }
}

/// How often a one-by-one batch writes the statements it has run to the system views.
const ONE_BY_ONE_LOG_EVERY: Duration = Duration::from_secs(1);

fn now() -> NaiveDateTime {
    Utc::now().naive_utc()
}

/// One task's replicator.
struct Replicator {
    shared: Arc<Shared>,
    rt: Arc<TaskRuntime>,
    tables: Vec<TableInfo>,
    by_name: HashMap<String, usize>,
    width: usize,
    add_tables: String,
    source: Option<Client>,
    target: Option<Client>,
    recorder: Option<Client>,
    /// (checkpoint LSN, last seq) as committed on the target; None until read.
    checkpoint: Option<(u64, i64)>,
    /// First seq of the last rolled-back batch, kept in the intermediate table for repairs.
    keep_from: Option<i64>,
    pending: Pending,
    inserts_seen: u64,
    /// Captured UPDATEs and DELETEs, counted for `skip_update` and `skip_delete`.
    updates_seen: u64,
    deletes_seen: u64,
    /// Rows whose insert a `drop_rows` fault dropped: their later changes are dropped too.
    dropped_keys: HashSet<(usize, i64)>,
    db_name: String,
    session_id: i32,
    /// The slot's position after the last advance.
    advanced_lsn: u64,
}

/// Runs a task's replicator until `stopped`.
pub(crate) async fn run(
    shared: Arc<Shared>,
    rt: Arc<TaskRuntime>,
    mut stopped: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let tables: Vec<TableInfo> = rt.task.tables.iter().cloned().map(TableInfo::new).collect();
    let by_name = tables
        .iter()
        .enumerate()
        .map(|(i, t)| (t.dotted.clone(), i))
        .collect();
    let add_tables = tables
        .iter()
        .map(|t| t.dotted.clone())
        .collect::<Vec<_>>()
        .join(",");
    let db_name = super::database_name(&shared.config.redshift.url)?;
    let session_id = 1_073_000_000 + (super::fnv1a64(rt.task.name.as_bytes()) % 900_000) as i32;
    let mut r = Replicator {
        width: changes_width(&rt.task),
        shared,
        rt,
        tables,
        by_name,
        add_tables,
        source: None,
        target: None,
        recorder: None,
        checkpoint: None,
        keep_from: None,
        pending: Pending::default(),
        inserts_seen: 0,
        updates_seen: 0,
        deletes_seen: 0,
        dropped_keys: HashSet::new(),
        db_name,
        session_id,
        advanced_lsn: 0,
    };
    let interval = r.shared.config.batch.min_interval;
    let measure_every = r.shared.config.metrics_interval / 2;
    let mut last_measure = tokio::time::Instant::now() - measure_every;
    loop {
        let next = tokio::time::Instant::now() + interval;
        if !r.rt.applying() {
            if last_measure.elapsed() >= measure_every {
                last_measure = tokio::time::Instant::now();
                if let Err(e) = r.measure_backlog().await {
                    tracing::debug!(task = %r.rt.task.name, error = %format!("{e:#}"), "Backlog measurement failed.");
                    r.source = None;
                }
            }
        } else {
            match r.batch().await {
                Ok(()) => {}
                Err(e) => {
                    tracing::warn!(task = %r.rt.task.name, error = %format!("{e:#}"), "Batch apply failed; retrying.");
                    r.rt.with_stats(|s| s.apply_retries += 1);
                    r.target = None;
                    r.source = None;
                    r.checkpoint = None;
                    wait_or_stop(&mut stopped, RETRY_BACKOFF).await;
                }
            }
        }
        match r.flush_records().await {
            // Caught up means applied and logged.
            Ok(()) => {
                r.rt.processed_lsn
                    .fetch_max(r.advanced_lsn, Ordering::SeqCst);
            }
            Err(e) => {
                tracing::debug!(task = %r.rt.task.name, error = %format!("{e:#}"), "Writing system views failed; keeping rows for later.");
                r.recorder = None;
            }
        }
        if *stopped.borrow() || stopped.has_changed().is_err() {
            return Ok(());
        }
        tokio::select! {
            _ = tokio::time::sleep_until(next) => {}
            _ = stopped.changed() => {}
        }
        if *stopped.borrow() {
            let _ = r.flush_records().await;
            return Ok(());
        }
    }
}

async fn wait_or_stop(stopped: &mut watch::Receiver<bool>, d: Duration) {
    tokio::select! {
        _ = tokio::time::sleep(d) => {}
        _ = stopped.changed() => {}
    }
}

/// Per-table groups of a batch, with their seq ranges.
struct Group {
    table: usize,
    op: Op,
    first: i64,
    last: i64,
}

/// One change of a batch, numbered.
struct Numbered {
    seq: i64,
    table: usize,
    op: Op,
    id: i64,
    values: Vec<Option<String>>,
}

impl Replicator {
    async fn source(&mut self) -> anyhow::Result<&Client> {
        if self.source.is_none() {
            let c = dmsguard_pipeline::db::connect(&self.shared.config.source).await?;
            c.batch_execute("SET TimeZone = 'UTC'").await?;
            self.source = Some(c);
        }
        Ok(self.source.as_ref().expect("just set"))
    }

    async fn target(&mut self) -> anyhow::Result<&Client> {
        if self.target.is_none() {
            let c = dmsguard_pipeline::db::connect(&self.shared.config.redshift).await?;
            // DMS runs its statements as the endpoint's database user, not a superuser.
            c.batch_execute(&format!("SET ROLE {}", super::DMS_ROLE))
                .await
                .context("becoming the DMS role")?;
            self.target = Some(c);
        }
        Ok(self.target.as_ref().expect("just set"))
    }

    async fn checkpoint(&mut self) -> anyhow::Result<(u64, i64)> {
        if let Some(c) = self.checkpoint {
            return Ok(c);
        }
        let name = self.rt.task.name.clone();
        let row = self
            .target()
            .await?
            .query_one(
                &format!("SELECT \"CHECKPOINT\", \"LAST_SEQ\" FROM public.{TXN_STATE_TABLE} WHERE \"TASK_NAME\" = $1"),
                &[&name],
            )
            .await
            .context("reading the checkpoint")?;
        let c = (parse_lsn(row.get::<_, &str>(0))?, row.get::<_, i64>(1));
        self.checkpoint = Some(c);
        Ok(c)
    }

    /// Reads whole transactions from the slot without consuming them.
    /// Reads up to `limit` changes (whole transactions); the flag says whether that was all
    /// the slot held when read.
    async fn peek(&mut self, limit: i32) -> anyhow::Result<(Vec<Txn>, Option<u64>, bool)> {
        let slot = self.rt.slot.clone();
        let add_tables = self.add_tables.clone();
        let rows = self
            .source()
            .await?
            .query(
                "SELECT lsn::text, data FROM pg_logical_slot_peek_changes($1, NULL, $2, \
                 'format-version', '2', 'include-timestamp', '1', 'include-types', '0', 'add-tables', $3)",
                &[&slot, &limit, &add_tables],
            )
            .await
            .context("reading the replication slot")?;
        let queried = std::time::Instant::now();
        let mut txns = Vec::new();
        let mut open: Option<Txn> = None;
        let mut last_commit = None;
        for row in &rows {
            let lsn = parse_lsn(row.get::<_, &str>(0))?;
            let data: W2jRow =
                serde_json::from_str(row.get::<_, &str>(1)).context("decoding wal2json")?;
            let ts = data.timestamp.as_deref().and_then(parse_ts);
            match data.action.as_str() {
                "B" => {
                    open = Some(Txn {
                        commit_lsn: 0,
                        commit_ts: ts,
                        changes: Vec::new(),
                    })
                }
                "C" => {
                    if let Some(mut t) = open.take() {
                        t.commit_lsn = lsn;
                        t.commit_ts = ts.or(t.commit_ts);
                        last_commit = Some(lsn);
                        txns.push(t);
                    }
                }
                "I" | "U" | "D" => {
                    let Some(t) = open.as_mut() else { continue };
                    if let Some(change) = self.parse_change(data)? {
                        t.changes.push(change);
                    }
                }
                _ => {}
            }
        }
        tracing::trace!(
            rows = rows.len(),
            decode_ms = queried.elapsed().as_millis() as u64,
            "Slot rows decoded."
        );
        let complete = rows.len() < usize::try_from(limit).unwrap_or(usize::MAX);
        Ok((txns, last_commit, complete))
    }

    fn parse_change(&self, data: W2jRow) -> anyhow::Result<Option<RawChange>> {
        let dotted = format!(
            "{}.{}",
            data.schema.as_deref().unwrap_or_default(),
            data.table.as_deref().unwrap_or_default()
        );
        let Some(&table) = self.by_name.get(&dotted) else {
            return Ok(None);
        };
        let info = &self.tables[table];
        let op = match data.action.as_str() {
            "I" => Op::Insert,
            "U" => Op::Update,
            _ => Op::Delete,
        };
        let mut values = vec![None; info.columns.len()];
        // Old values first: an UPDATE's new tuple leaves out unchanged TOASTed columns.
        let sources: &[&Vec<W2jColumn>] = match op {
            Op::Insert => &[&data.columns],
            Op::Update => &[&data.identity, &data.columns],
            Op::Delete => &[&data.identity],
        };
        for source in sources {
            for col in source.iter() {
                if let Some(&i) = info.index.get(col.name.as_str()) {
                    values[i] = text_value(&col.value, info.columns[i].kind);
                }
            }
        }
        let key_source = if op == Op::Delete {
            &data.identity
        } else {
            &data.columns
        };
        let id = key_source
            .iter()
            .find(|c| c.name == ID_COLUMN)
            .and_then(|c| c.value.as_i64())
            .ok_or_else(|| anyhow::anyhow!("change on {dotted} without an `{ID_COLUMN}`"))?;
        Ok(Some(RawChange {
            table,
            op,
            id,
            values,
        }))
    }

    /// Moves the slot past everything up to `lsn` (never backwards).
    async fn advance(&mut self, lsn: u64) -> anyhow::Result<()> {
        let slot = self.rt.slot.clone();
        self.source()
            .await?
            .execute(
                "SELECT pg_replication_slot_advance(slot_name, greatest($2::text::pg_lsn, confirmed_flush_lsn)) \
                 FROM pg_replication_slots WHERE slot_name = $1",
                &[&slot, &format_lsn(lsn)],
            )
            .await
            .context("advancing the replication slot")?;
        // Published once the batch's statements are in the system views (see `run`).
        self.advanced_lsn = self.advanced_lsn.max(lsn);
        Ok(())
    }

    /// While not applying: how much waits in the slot, and since when.
    async fn measure_backlog(&mut self) -> anyhow::Result<()> {
        let (checkpoint, _) = self.checkpoint().await.unwrap_or_default();
        let slot = self.rt.slot.clone();
        let add_tables = self.add_tables.clone();
        let row = self
            .source()
            .await?
            .query_one(
                "SELECT count(*) FILTER (WHERE data::json->>'action' IN ('I','U','D')), \
                        min(data::json->>'timestamp') FILTER (WHERE data::json->>'action' = 'B') \
                 FROM pg_logical_slot_peek_changes($1, NULL, $2, 'format-version', '2', \
                      'include-timestamp', '1', 'include-types', '0', 'add-tables', $3) \
                 WHERE lsn > $4::text::pg_lsn",
                &[
                    &slot,
                    &BACKLOG_PEEK_LIMIT,
                    &add_tables,
                    &format_lsn(checkpoint),
                ],
            )
            .await?;
        let pending: i64 = row.get(0);
        let oldest: Option<String> = row.get(1);
        let mut lag = lock(&self.rt.lag);
        lag.pending = pending as u64;
        lag.oldest_pending = oldest.as_deref().and_then(parse_ts);
        Ok(())
    }

    async fn batch(&mut self) -> anyhow::Result<()> {
        let (checkpoint, last_seq) = self.checkpoint().await?;
        // Every change committed before this instant is in the slot by the time the read
        // below starts.
        let asked_at = Utc::now();
        let before: String = self
            .source()
            .await?
            .query_one("SELECT pg_current_wal_lsn()::text", &[])
            .await?
            .get(0);
        let before = parse_lsn(&before)?;
        let limit = i32::try_from(self.shared.config.batch.max_changes).unwrap_or(i32::MAX);
        let read_at = Utc::now();
        let t0 = std::time::Instant::now();
        let (txns, last_commit, complete) = self.peek(limit).await?;
        let peeked = t0.elapsed();
        let txns: Vec<Txn> = txns
            .into_iter()
            .filter(|t| t.commit_lsn > checkpoint)
            .collect();
        let raw: usize = txns.iter().map(|t| t.changes.len()).sum();
        if raw == 0 {
            // Nothing to apply up to here: move on so the slot does not hold WAL.
            let upto = last_commit.unwrap_or(before);
            self.advance(upto.max(checkpoint)).await?;
            let mut lag = lock(&self.rt.lag);
            lag.pending = 0;
            lag.oldest_pending = None;
            if complete {
                lag.applied_through = Some(asked_at);
            }
            return Ok(());
        }
        if !self.rt.applying() {
            // Stopped or blocked while reading: leave the changes in the slot.
            return Ok(());
        }
        let commit_lsn = txns.last().map(|t| t.commit_lsn).unwrap_or(checkpoint);
        let oldest = txns.iter().find_map(|t| t.commit_ts);
        let newest = txns.iter().rev().find_map(|t| t.commit_ts);
        {
            let mut lag = lock(&self.rt.lag);
            lag.pending = raw as u64;
            lag.oldest_pending = oldest;
            lag.source_latency = newest
                .map(|n| (read_at - n).num_milliseconds().max(0) as f64 / 1000.0)
                .unwrap_or(0.0);
        }
        self.rt.with_stats(|s| s.captured += raw as u64);

        // Faults that keep changes from the target, then net changes per row.
        let fault = self.shared.fault();
        if !matches!(fault, Fault::DropRows { .. }) {
            // Once drop_rows ends, changes of rows it dropped flow again (an UPDATE of a row
            // still missing then sends the batch to one-by-one mode, as on DMS).
            self.dropped_keys.clear();
        }
        let mut dropped = 0u64;
        let mut dropped_ids = Vec::new();
        let mut skipped_updates = Vec::new();
        let mut skipped_deletes = Vec::new();
        let mut net: Vec<BTreeMap<i64, Net>> = vec![BTreeMap::new(); self.tables.len()];
        for t in txns {
            for c in t.changes {
                let key = (c.table, c.id);
                if c.op == Op::Insert {
                    self.inserts_seen += 1;
                    let drop_every = match fault {
                        Fault::DropRows { every } => Some(u64::from(every.max(1))),
                        _ => None,
                    };
                    if drop_every.is_some_and(|n| self.inserts_seen % n == 0) {
                        self.dropped_keys.insert(key);
                        dropped += 1;
                        dropped_ids.push((self.tables[c.table].dotted.clone(), c.id));
                        continue;
                    }
                    if self
                        .shared
                        .missing_armed
                        .compare_exchange(true, false, Ordering::SeqCst, Ordering::SeqCst)
                        .is_ok()
                    {
                        let dotted = self.tables[c.table].dotted.clone();
                        lock(&self.shared.hot_rows).push((dotted.clone(), c.id));
                        dropped += 1;
                        dropped_ids.push((dotted, c.id));
                        continue;
                    }
                } else if self.dropped_keys.contains(&key) {
                    dropped += 1;
                    continue;
                } else if c.op == Op::Update {
                    // skip_update: DMS loses the UPDATE silently; the target row keeps its
                    // old values (or, inserted in this batch, its inserted ones).
                    self.updates_seen += 1;
                    if let Fault::SkipUpdate { every } = fault {
                        if self.updates_seen % u64::from(every.max(1)) == 0 {
                            dropped += 1;
                            skipped_updates.push((self.tables[c.table].dotted.clone(), c.id));
                            continue;
                        }
                    }
                } else if c.op == Op::Delete {
                    // skip_delete: the row stays in the target, the source no longer has it.
                    self.deletes_seen += 1;
                    if let Fault::SkipDelete { every } = fault {
                        if self.deletes_seen % u64::from(every.max(1)) == 0 {
                            dropped += 1;
                            skipped_deletes.push((self.tables[c.table].dotted.clone(), c.id));
                            continue;
                        }
                    }
                }
                let m = &mut net[c.table];
                let prev = m.remove(&c.id);
                if let Some(n) = fold(
                    prev,
                    Net {
                        op: c.op,
                        values: c.values,
                    },
                ) {
                    m.insert(c.id, n);
                }
            }
        }

        // Number the batch: per table, inserts, then deletes, then updates.
        let mut seq = last_seq;
        let mut groups = Vec::new();
        let mut rows: Vec<Numbered> = Vec::new();
        for (ti, m) in net.into_iter().enumerate() {
            for op in [Op::Insert, Op::Delete, Op::Update] {
                let first = seq + 1;
                for (id, n) in m.iter().filter(|(_, n)| n.op == op) {
                    seq += 1;
                    rows.push(Numbered {
                        seq,
                        table: ti,
                        op,
                        id: *id,
                        values: n.values.clone(),
                    });
                }
                if seq >= first {
                    groups.push(Group {
                        table: ti,
                        op,
                        first,
                        last: seq,
                    });
                }
            }
        }

        let t1 = std::time::Instant::now();
        self.load_changes(&rows, last_seq).await?;
        let loaded = t1.elapsed();
        let t2 = std::time::Instant::now();
        let outcome = self.apply_bulk(&groups, commit_lsn, seq).await?;
        let one_by_one = match outcome {
            BulkOutcome::Committed => false,
            BulkOutcome::RolledBack => {
                self.keep_from = Some(last_seq + 1);
                self.apply_one_by_one(&rows, commit_lsn, seq).await?;
                true
            }
        };
        if !one_by_one {
            self.keep_from = None;
        }
        self.checkpoint = Some((commit_lsn, seq));
        let end = Utc::now();
        self.rt.with_stats(|s| {
            s.applied += raw as u64 - dropped;
            s.dropped_changes += dropped;
            s.dropped_ids.extend(dropped_ids);
            s.skipped_updates.extend(skipped_updates);
            s.skipped_deletes.extend(skipped_deletes);
            s.batches += 1;
            if one_by_one {
                s.one_by_one_batches += 1;
            } else {
                s.bulk_batches += 1;
            }
            s.last_applied_seq = seq;
        });
        {
            let mut lag = lock(&self.rt.lag);
            lag.pending = 0;
            lag.oldest_pending = None;
            lag.last_batch_latency = oldest
                .map(|o| (end - o).num_milliseconds().max(0) as f64 / 1000.0)
                .unwrap_or(0.0);
            // A batch that read the whole slot applied everything committed before it was
            // asked for; a batch cut at `max_changes`, everything up to its newest commit.
            lag.applied_through = if complete { Some(asked_at) } else { newest };
        }
        let applied = t2.elapsed();
        let t3 = std::time::Instant::now();
        self.advance(commit_lsn).await?;
        tracing::debug!(task = %self.rt.task.name, changes = raw, peek_ms = peeked.as_millis() as u64,
            load_ms = loaded.as_millis() as u64, apply_ms = applied.as_millis() as u64,
            advance_ms = t3.elapsed().as_millis() as u64, "Batch applied.");
        Ok(())
    }

    /// Replaces the intermediate table's rows with this batch (COPY, as DMS loads it). Rows
    /// of a rolled-back batch stay until the batch after it, for the one-by-one repair.
    async fn load_changes(&mut self, rows: &[Numbered], last_seq: i64) -> anyhow::Result<()> {
        let ct = self.rt.changes_table.quoted();
        let mut data = Vec::with_capacity(rows.len() * 256);
        for r in rows {
            let info = &self.tables[r.table];
            data.extend_from_slice(format!("{}\t", r.seq).as_bytes());
            copy_field(&mut data, Some(&info.dotted));
            data.push(b'\t');
            data.extend_from_slice(r.op.letter().as_bytes());
            data.push(b'\t');
            data.extend_from_slice(r.id.to_string().as_bytes());
            for i in 0..self.width {
                data.push(b'\t');
                let v = if r.op == Op::Delete {
                    None
                } else {
                    r.values.get(i).and_then(|v| v.as_deref())
                };
                copy_field(&mut data, v);
            }
            data.push(b'\n');
        }
        let columns: String = (1..=self.width).map(|i| format!(", c{i}")).collect();
        let keep_from = self.keep_from.filter(|k| *k <= last_seq);
        let clear = match keep_from {
            Some(k) => format!("DELETE FROM {ct} WHERE seq < {k} OR seq > {last_seq}"),
            None => format!("TRUNCATE {ct}"),
        };
        let target = self.target().await?;
        target.batch_execute("BEGIN").await?;
        let result: anyhow::Result<()> = async {
            target.batch_execute(&clear).await?;
            let sink = target
                .copy_in::<_, Cursor<Vec<u8>>>(&format!(
                    "COPY {ct} (seq, tbl, op, seg1{columns}) FROM STDIN"
                ))
                .await?;
            let mut sink = pin!(sink);
            sink.send(Cursor::new(data)).await?;
            sink.as_mut().finish().await?;
            target.batch_execute("COMMIT").await?;
            Ok(())
        }
        .await;
        if result.is_err() {
            let _ = target.batch_execute("ROLLBACK").await;
        }
        result.context("loading the intermediate table")
    }

    /// Sweeps the intermediate table per table and operation in one transaction.
    async fn apply_bulk(
        &mut self,
        groups: &[Group],
        lsn: u64,
        seq: i64,
    ) -> anyhow::Result<BulkOutcome> {
        let txn_start = now();
        let mut batch = Vec::new();
        self.target().await?;
        let target = self.target.as_ref().expect("connected");
        target.batch_execute("BEGIN").await?;
        let result = sweep(
            target,
            &self.tables,
            &self.rt.changes_table,
            &self.rt.task.name,
            groups,
            (lsn, seq),
            &mut batch,
        )
        .await;
        let outcome = match result {
            Ok(o) => o,
            Err(e) => {
                let _ = target.batch_execute("ROLLBACK").await;
                return Err(e.context("bulk apply"));
            }
        };
        let committed = outcome == BulkOutcome::Committed;
        let txn = self.pending.txns.len();
        self.pending.txns.push(TxnRecord {
            committed,
            start: txn_start,
            end: Some(now()),
            ids: None,
        });
        let n = batch.len() as u64;
        let rolled_back_updates = batch
            .iter()
            .filter(|s| !committed && s.kind == "UPDATE")
            .count() as u64;
        for mut s in batch {
            s.txn = txn;
            self.pending.stmts.push(s);
        }
        self.rt.with_stats(|s| {
            s.statements += n;
            s.rolled_back_updates += rolled_back_updates;
        });
        Ok(outcome)
    }

    /// Applies the batch one statement at a time with literal values, logging statements
    /// that found no row to `awsdms_apply_exceptions`. The statements reach the system views
    /// while the batch runs (every [`ONE_BY_ONE_LOG_EVERY`]), not only at its commit: a long
    /// one-by-one batch is slow, not silent.
    async fn apply_one_by_one(
        &mut self,
        rows: &[Numbered],
        lsn: u64,
        seq: i64,
    ) -> anyhow::Result<()> {
        let mut exceptions = Vec::new();
        self.target().await?;
        let target = self.target.take().expect("connected");
        self.pending.txns.push(TxnRecord {
            committed: true,
            start: now(),
            end: None,
            ids: None,
        });
        let result = self
            .one_by_one(&target, rows, (lsn, seq), &mut exceptions)
            .await;
        let txn = self.pending.open_txn().expect("opened above");
        self.pending.txns[txn].end = Some(now());
        if let Err(e) = result {
            let _ = target.batch_execute("ROLLBACK").await;
            self.pending.txns[txn].committed = false;
            return Err(e.context("one-by-one apply"));
        }
        self.target = Some(target);
        let ex = exceptions.len() as u64;
        self.pending.exceptions.extend(exceptions);
        self.rt.with_stats(|s| s.apply_exceptions += ex);
        Ok(())
    }

    /// One-by-one apply inside one transaction, committed at the end with the checkpoint.
    async fn one_by_one(
        &mut self,
        target: &Client,
        rows: &[Numbered],
        checkpoint: (u64, i64),
        exceptions: &mut Vec<ExceptionRecord>,
    ) -> anyhow::Result<()> {
        let cost = self.shared.config.one_by_one_statement_cost;
        target.batch_execute("BEGIN").await?;
        let mut logged = std::time::Instant::now();
        for r in rows {
            let info = &self.tables[r.table];
            let sql = single_statement(info, r.op, r.id, &r.values);
            let mut rec = timed(target, sql, r.op.query_type()).await?;
            if rec.rows == 0 && r.op != Op::Insert {
                exceptions.push(ExceptionRecord {
                    schema: info.table.name.schema.clone(),
                    table: info.table.name.table.clone(),
                    time: now(),
                    statement: rec.sql.clone(),
                    error: NO_ROW_ERROR.to_owned(),
                });
            }
            rec.txn = self.pending.open_txn().expect("open while applying");
            self.pending.stmts.push(rec);
            self.rt.with_stats(|s| s.statements += 1);
            if !cost.is_zero() {
                // DMS is slow in this mode: one round trip and commit per statement.
                tokio::time::sleep(cost).await;
            }
            if logged.elapsed() >= ONE_BY_ONE_LOG_EVERY {
                if let Err(e) = self.flush_records().await {
                    tracing::debug!(task = %self.rt.task.name, error = %format!("{e:#}"), "Writing system views failed; keeping rows for later.");
                    self.recorder = None;
                }
                logged = std::time::Instant::now();
            }
        }
        save_checkpoint(target, &self.rt.task.name, checkpoint).await?;
        target.batch_execute("COMMIT").await?;
        Ok(())
    }

    /// Writes pending statements to both system-view families and the exceptions table.
    async fn flush_records(&mut self) -> anyhow::Result<()> {
        if self.pending.stmts.is_empty()
            && self.pending.txns.is_empty()
            && self.pending.exceptions.is_empty()
        {
            return Ok(());
        }
        if self.recorder.is_none() {
            self.recorder =
                Some(dmsguard_pipeline::db::connect(&self.shared.config.redshift).await?);
        }
        let c = self.recorder.as_ref().expect("just set");
        write_records(
            c,
            &mut self.pending,
            &self.rt.task.name,
            &self.db_name,
            self.session_id,
        )
        .await?;
        // An open transaction stays, with its ids, for its later statements and its end.
        self.pending.stmts.clear();
        self.pending.exceptions.clear();
        self.pending.txns.retain(|t| t.end.is_none());
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BulkOutcome {
    Committed,
    RolledBack,
}

async fn save_checkpoint(
    target: &Client,
    task: &str,
    (lsn, seq): (u64, i64),
) -> Result<(), tokio_postgres::Error> {
    target
        .execute(
            &format!(
                "UPDATE public.{TXN_STATE_TABLE} SET \"CHECKPOINT\" = $1, \"LAST_SEQ\" = $2, \
                 \"CHECKPOINT_TIME\" = now() AT TIME ZONE 'UTC' WHERE \"TASK_NAME\" = $3"
            ),
            &[&format_lsn(lsn), &seq, &task],
        )
        .await?;
    Ok(())
}

/// Runs a statement, timing it for the system views.
async fn timed(
    target: &Client,
    sql: String,
    kind: &'static str,
) -> Result<StmtRecord, tokio_postgres::Error> {
    let start = now();
    let rows = target.execute(sql.as_str(), &[]).await?;
    Ok(StmtRecord {
        sql,
        kind,
        start,
        end: now(),
        rows: rows as i64,
        txn: 0,
    })
}

/// The bulk sweep inside an open transaction: commits it, or rolls it back when an UPDATE
/// touches fewer rows than its seq range holds.
async fn sweep(
    target: &Client,
    tables: &[TableInfo],
    ct: &QualifiedName,
    task: &str,
    groups: &[Group],
    checkpoint: (u64, i64),
    done: &mut Vec<StmtRecord>,
) -> anyhow::Result<BulkOutcome> {
    for g in groups {
        let info = &tables[g.table];
        let sql = bulk_statement(info, ct, g.op, g.first, g.last);
        let rec = timed(target, sql, g.op.query_type()).await?;
        let updated = rec.rows as u64;
        done.push(rec);
        let expected = (g.last - g.first + 1) as u64;
        if g.op == Op::Update && updated < expected {
            tracing::info!(task, table = %info.dotted, expected, updated,
                "Bulk apply operation failed. Trying to execute bulk statements in 'one-by-one' mode.");
            target.batch_execute("ROLLBACK").await?;
            return Ok(BulkOutcome::RolledBack);
        }
    }
    save_checkpoint(target, task, checkpoint).await?;
    target.batch_execute("COMMIT").await?;
    Ok(BulkOutcome::Committed)
}

/// Appends a value in COPY text format.
fn copy_field(out: &mut Vec<u8>, v: Option<&str>) {
    let Some(v) = v else {
        out.extend_from_slice(b"\\N");
        return;
    };
    for b in v.bytes() {
        match b {
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\t' => out.extend_from_slice(b"\\t"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            _ => out.push(b),
        }
    }
}

/// A SQL string literal.
fn literal(v: &str) -> String {
    format!("'{}'", v.replace('\'', "''"))
}

/// The DMS bulk statement for one table, operation and seq range.
fn bulk_statement(info: &TableInfo, ct: &QualifiedName, op: Op, first: i64, last: i64) -> String {
    let t = info.table.name.quoted();
    let ct = ct.quoted();
    let cast = |i: usize, c: &Column| {
        let src = if c.kind == ColumnKind::Id {
            "seg1".to_owned()
        } else {
            format!("c{}", i + 1)
        };
        format!("CAST(changes.{} AS {})", quote_ident(&src), c.target_type)
    };
    let filter = format!(
        "changes.\"tbl\" = {} AND changes.\"op\" = '{}' AND changes.\"seq\" >= {first} AND changes.\"seq\" <= {last}",
        literal(&info.dotted),
        op.letter()
    );
    let id = &info.columns[info.id_index()];
    let key_match = format!(
        "{t}.{} = {}",
        quote_ident(&id.name),
        cast(info.id_index(), id)
    );
    let body = match op {
        Op::Insert => format!(
            "INSERT INTO {t} ({}) SELECT {} FROM {ct} changes WHERE {filter}",
            info.columns
                .iter()
                .map(|c| quote_ident(&c.name))
                .collect::<Vec<_>>()
                .join(","),
            info.columns
                .iter()
                .enumerate()
                .map(|(i, c)| cast(i, c))
                .collect::<Vec<_>>()
                .join(", "),
        ),
        Op::Delete => format!("DELETE FROM {t} USING {ct} changes WHERE {key_match} AND {filter}"),
        Op::Update => format!(
            "UPDATE {t} SET {} FROM {ct} changes WHERE {key_match} AND {filter}",
            info.columns
                .iter()
                .enumerate()
                .filter(|(_, c)| c.kind != ColumnKind::Id)
                .map(|(i, c)| format!("{} = {}", quote_ident(&c.name), cast(i, c)))
                .collect::<Vec<_>>()
                .join(", "),
        ),
    };
    format!("{DMS_COMMENT} {body}")
}

/// The DMS one-by-one statement for one row, with literal values.
fn single_statement(info: &TableInfo, op: Op, id: i64, values: &[Option<String>]) -> String {
    let t = info.table.name.quoted();
    let value = |c: &Column, v: &Option<String>| match (c.kind, v) {
        (_, None) => "NULL".to_owned(),
        (ColumnKind::Id, Some(v)) => v.clone(),
        (_, Some(v)) => literal(v),
    };
    let id_col = quote_ident(ID_COLUMN);
    let body = match op {
        Op::Insert => format!(
            "INSERT INTO {t} ({}) VALUES ({})",
            info.columns
                .iter()
                .map(|c| quote_ident(&c.name))
                .collect::<Vec<_>>()
                .join(","),
            info.columns
                .iter()
                .zip(values)
                .map(|(c, v)| value(c, v))
                .collect::<Vec<_>>()
                .join(",")
        ),
        Op::Update => format!(
            "UPDATE {t} SET {} WHERE {id_col}={id}",
            info.columns
                .iter()
                .zip(values)
                .filter(|(c, _)| c.kind != ColumnKind::Id)
                .map(|(c, v)| format!("{}={}", quote_ident(&c.name), value(c, v)))
                .collect::<Vec<_>>()
                .join(",")
        ),
        Op::Delete => format!("DELETE FROM {t} WHERE {id_col}={id}"),
    };
    format!("{DMS_COMMENT} {body}")
}

/// A statement as `SYS_QUERY_TEXT.text` and `STL_QUERYTEXT.text` store it: newlines and
/// backslashes escaped as `\n` and `\\` (their pages in the Amazon Redshift Database Developer
/// Guide); the pieces are cut from the escaped text.
pub fn escape_query_text(text: &str) -> String {
    text.replace('\\', "\\\\").replace('\n', "\\n")
}

/// Splits text into pieces of at most `n` characters.
pub fn pieces(text: &str, n: usize) -> Vec<String> {
    let chars: Vec<char> = text.chars().collect();
    chars.chunks(n).map(|c| c.iter().collect()).collect()
}

fn truncate(text: &str, n: usize) -> String {
    text.chars().take(n).collect()
}

async fn next_ids(c: &Client, seq: &str, n: usize) -> Result<Vec<i64>, tokio_postgres::Error> {
    if n == 0 {
        return Ok(Vec::new());
    }
    let rows = c
        .query(
            &format!("SELECT nextval('{seq}') FROM generate_series(1, $1::int)"),
            &[&(n as i32)],
        )
        .await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

async fn write_records(
    c: &Client,
    p: &mut Pending,
    task: &str,
    db: &str,
    session: i32,
) -> anyhow::Result<()> {
    let dms_user: i32 = c
        .query_one(
            "SELECT usesysid::bigint::integer FROM pg_user WHERE usename = $1",
            &[&super::DMS_ROLE],
        )
        .await
        .context("reading the DMS role's user id")?
        .get(0);
    let unnamed: Vec<usize> = (0..p.txns.len())
        .filter(|&i| p.txns[i].ids.is_none())
        .collect();
    let sys_new = next_ids(c, "lab_transaction_id_seq", unnamed.len()).await?;
    let stl_new = next_ids(c, "lab_transaction_id_seq", unnamed.len()).await?;
    for (k, &i) in unnamed.iter().enumerate() {
        p.txns[i].ids = Some((sys_new[k], stl_new[k]));
    }
    let p = &*p;
    let sys_txn: Vec<i64> = p.txns.iter().map(|t| t.ids.expect("named").0).collect();
    let stl_xid: Vec<i64> = p.txns.iter().map(|t| t.ids.expect("named").1).collect();
    // Only ended transactions get their history row and their end statement.
    let ended: Vec<&TxnRecord> = p.txns.iter().filter(|t| t.end.is_some()).collect();
    let sys_q = next_ids(c, "lab_query_id_seq", p.stmts.len()).await?;
    let stl_q = next_ids(c, "lab_query_id_seq", p.stmts.len()).await?;
    // Each transaction ends with a COMMIT or ROLLBACK statement of its own.
    let sys_end_q = next_ids(c, "lab_query_id_seq", ended.len()).await?;
    c.batch_execute("BEGIN").await?;
    let result: anyhow::Result<()> = async {
        if !ended.is_empty() {
            let status: Vec<&str> = ended
                .iter()
                .map(|t| if t.committed { "committed" } else { "rolledback" })
                .collect();
            let start: Vec<NaiveDateTime> = ended.iter().map(|t| t.start).collect();
            let end: Vec<NaiveDateTime> = ended.iter().filter_map(|t| t.end).collect();
            let sys_txn: Vec<i64> = ended.iter().map(|t| t.ids.expect("named").0).collect();
            let stl_xid: Vec<i64> = ended.iter().map(|t| t.ids.expect("named").1).collect();
            c.execute(
                "INSERT INTO sys_transaction_history (user_id, transaction_id, isolation_level, status, \
                   transaction_start_time, commit_start_time, commit_end_time, blocks_committed, undo_transaction_id) \
                 SELECT $1, id, 'Serializable', st, s, e, e, CASE WHEN st = 'committed' THEN 1 ELSE 0 END, -1 \
                 FROM unnest($2::bigint[], $3::text[], $4::timestamp[], $5::timestamp[]) AS u(id, st, s, e)",
                &[&dms_user, &sys_txn, &status, &start, &end],
            )
            .await?;
            let ends: Vec<&str> = ended.iter().map(|t| end_statement(t.committed)).collect();
            c.execute(
                "INSERT INTO sys_query_history (user_id, query_id, query_label, transaction_id, session_id, \
                   database_name, query_type, status, result_cache_hit, start_time, end_time, elapsed_time, \
                   queue_time, execution_time, returned_rows, returned_bytes, query_text, redshift_version, \
                   compute_type, compile_time, planning_time, lock_wait_time) \
                 SELECT $1, q, 'default', t, $2, $3, 'UTILITY', 'success', false, e, e, 0, 0, 0, 0, 0, txt, \
                   '1.0.78881', 'primary', 0, 0, 0 \
                 FROM unnest($4::bigint[], $5::bigint[], $6::timestamp[], $7::text[]) AS u(q, t, e, txt)",
                &[&dms_user, &session, &db, &sys_end_q, &sys_txn, &end, &ends],
            )
            .await?;
            c.execute(
                "INSERT INTO stl_utilitytext (userid, xid, pid, label, starttime, endtime, sequence, text) \
                 SELECT $1, x, $2, 'default', e, e, 0, txt \
                 FROM unnest($3::bigint[], $4::timestamp[], $5::text[]) AS u(x, e, txt)",
                &[&dms_user, &session, &stl_xid, &end, &ends],
            )
            .await?;
        }
        if !p.stmts.is_empty() {
            let txn_of = |ids: &[i64]| -> Vec<i64> { p.stmts.iter().map(|s| ids[s.txn]).collect() };
            let kinds: Vec<&str> = p.stmts.iter().map(|s| s.kind).collect();
            let start: Vec<NaiveDateTime> = p.stmts.iter().map(|s| s.start).collect();
            let end: Vec<NaiveDateTime> = p.stmts.iter().map(|s| s.end).collect();
            let rows: Vec<i64> = p.stmts.iter().map(|s| s.rows).collect();
            let text: Vec<String> = p.stmts.iter().map(|s| truncate(&s.sql, SYS_TEXT_PIECE)).collect();
            // STL_QUERY.aborted is 1 only for a query the system stopped or a user cancelled;
            // one that ran to completion in a transaction later rolled back shows 0 (its page
            // in the Amazon Redshift Database Developer Guide). The rollback is the ROLLBACK
            // statement in STL_UTILITYTEXT.
            let aborted: Vec<i32> = vec![0; p.stmts.len()];
            c.execute(
                "INSERT INTO sys_query_history (user_id, query_id, query_label, transaction_id, session_id, \
                   database_name, query_type, status, result_cache_hit, start_time, end_time, elapsed_time, \
                   queue_time, execution_time, returned_rows, returned_bytes, query_text, redshift_version, \
                   compute_type, compile_time, planning_time, lock_wait_time) \
                 SELECT $1, q, 'default', t, $2, $3, k, 'success', false, s, e, \
                   (extract(epoch FROM e - s) * 1000000)::bigint, 0, (extract(epoch FROM e - s) * 1000000)::bigint, \
                   r, 0, txt, '1.0.78881', 'primary', 0, 0, 0 \
                 FROM unnest($4::bigint[], $5::bigint[], $6::text[], $7::timestamp[], $8::timestamp[], $9::bigint[], $10::text[]) \
                   AS u(q, t, k, s, e, r, txt)",
                &[&dms_user, &session, &db, &sys_q, &txn_of(&sys_txn), &kinds, &start, &end, &rows, &text],
            )
            .await?;
            let stl_q32: Vec<i32> = stl_q.iter().map(|q| *q as i32).collect();
            let db32: String = db.chars().take(32).collect();
            c.execute(
                "INSERT INTO stl_query (userid, query, label, xid, pid, database, querytxt, starttime, endtime, \
                   aborted, insert_pristine, concurrency_scaling_status) \
                 SELECT $1, q, 'default', x, $2, $3, txt, s, e, a, 0, 0 \
                 FROM unnest($4::int[], $5::bigint[], $6::text[], $7::timestamp[], $8::timestamp[], $9::int[]) \
                   AS u(q, x, txt, s, e, a)",
                &[&dms_user, &session, &db32, &stl_q32, &txn_of(&stl_xid), &text, &start, &end, &aborted],
            )
            .await?;
            // Full text: SYS in 4000-character pieces, STL in 200-character pieces.
            let (mut sq, mut st, mut ss, mut sseq, mut stext) = (vec![], vec![], vec![], vec![], vec![]);
            let (mut lq, mut lx, mut lseq, mut ltext) = (vec![], vec![], vec![], vec![]);
            for (i, s) in p.stmts.iter().enumerate() {
                let escaped = escape_query_text(&s.sql);
                for (k, piece) in pieces(&escaped, SYS_TEXT_PIECE).into_iter().enumerate() {
                    sq.push(sys_q[i]);
                    st.push(sys_txn[s.txn]);
                    ss.push(s.start);
                    sseq.push(k as i32);
                    stext.push(piece);
                }
                for (k, piece) in pieces(&escaped, STL_TEXT_PIECE).into_iter().enumerate() {
                    lq.push(stl_q32[i]);
                    lx.push(stl_xid[s.txn]);
                    lseq.push(k as i32);
                    ltext.push(piece);
                }
            }
            c.execute(
                "INSERT INTO sys_query_text (user_id, query_id, transaction_id, session_id, start_time, sequence, text) \
                 SELECT $1, q, t, $2, s, n, txt FROM unnest($3::bigint[], $4::bigint[], $5::timestamp[], $6::int[], $7::text[]) \
                   AS u(q, t, s, n, txt)",
                &[&dms_user, &session, &sq, &st, &ss, &sseq, &stext],
            )
            .await?;
            c.execute(
                "INSERT INTO stl_querytext (userid, xid, pid, query, sequence, text) \
                 SELECT $1, x, $2, q, n, txt FROM unnest($3::int[], $4::bigint[], $5::int[], $6::text[]) AS u(q, x, n, txt)",
                &[&dms_user, &session, &lq, &lx, &lseq, &ltext],
            )
            .await?;
        }
        if !p.exceptions.is_empty() {
            let owner: Vec<&str> = p.exceptions.iter().map(|e| e.schema.as_str()).collect();
            let table: Vec<&str> = p.exceptions.iter().map(|e| e.table.as_str()).collect();
            let time: Vec<NaiveDateTime> = p.exceptions.iter().map(|e| e.time).collect();
            let stmt: Vec<&str> = p.exceptions.iter().map(|e| e.statement.as_str()).collect();
            let error: Vec<&str> = p.exceptions.iter().map(|e| e.error.as_str()).collect();
            c.execute(
                "INSERT INTO awsdms_apply_exceptions (\"TASK_NAME\", \"TABLE_OWNER\", \"TABLE_NAME\", \"ERROR_TIME\", \"STATEMENT\", \"ERROR\") \
                 SELECT $1, o, t, e, s, r FROM unnest($2::text[], $3::text[], $4::timestamp[], $5::text[], $6::text[]) AS u(o, t, e, s, r)",
                &[&task, &owner, &table, &time, &stmt, &error],
            )
            .await?;
        }
        c.batch_execute("COMMIT").await?;
        Ok(())
    }
    .await;
    if result.is_err() {
        let _ = c.batch_execute("ROLLBACK").await;
    }
    result
}

/// The `redshift_restart` fault: the target database refuses connections for `outage`, its
/// sessions are cut, and afterwards every running task silently stops applying.
pub(crate) async fn redshift_restart(shared: &Shared, outage: Duration) -> anyhow::Result<()> {
    let db = super::database_name(&shared.config.redshift.url)?;
    let mut admin_config = dmsguard_pipeline::db::client_config(&shared.config.redshift)?;
    admin_config.dbname("postgres");
    let (admin, connection) = admin_config
        .connect(tokio_postgres::NoTls)
        .await
        .context("connecting to the target server as admin")?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    let quoted = quote_ident(&db);
    tracing::warn!(database = %db, seconds = outage.as_secs(), "Redshift restart: target unavailable.");
    shared.target_down.store(true, Ordering::SeqCst);
    admin
        .batch_execute(&format!("ALTER DATABASE {quoted} ALLOW_CONNECTIONS false"))
        .await?;
    admin
        .execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
            &[&db],
        )
        .await?;
    // The outage itself: the database stays closed this long.
    tokio::time::sleep(outage).await;
    admin
        .batch_execute(&format!("ALTER DATABASE {quoted} ALLOW_CONNECTIONS true"))
        .await?;
    shared.target_down.store(false, Ordering::SeqCst);
    for t in &shared.tasks {
        if *lock(&t.status) == "running" {
            *lock(&t.block) = Some(Block::AfterRedshiftRestart);
        }
    }
    {
        let mut f = lock(&shared.fault);
        if matches!(*f, Fault::RedshiftRestart { .. }) {
            *f = Fault::None;
        }
    }
    tracing::warn!(database = %db, "Redshift restart: target back; running tasks no longer apply until restarted.");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info() -> TableInfo {
        TableInfo::new("public.orders".parse().unwrap())
    }

    #[test]
    fn lsn_round_trips() {
        let l = parse_lsn("1/71772C18").unwrap();
        assert_eq!(l, (1 << 32) | 0x71772C18);
        assert_eq!(format_lsn(l), "1/71772C18");
        assert!(parse_lsn("nope").is_err());
    }

    #[test]
    fn bulk_statements_have_dms_shapes() {
        let ct = QualifiedName::parse("public.awsdms_changes1a2b3c4d").unwrap();
        let i = bulk_statement(&info(), &ct, Op::Insert, 1, 250);
        assert!(i.starts_with("/* Applied by AWS DMS 3.5.3 */ INSERT INTO \"public\".\"orders\" (\"id\",\"status\","), "{i}");
        assert!(
            i.contains(
                "SELECT CAST(changes.\"seg1\" AS bigint), CAST(changes.\"c2\" AS varchar(20))"
            ),
            "{i}"
        );
        assert!(i.ends_with("FROM \"public\".\"awsdms_changes1a2b3c4d\" changes WHERE changes.\"tbl\" = 'public.orders' AND changes.\"op\" = 'I' AND changes.\"seq\" >= 1 AND changes.\"seq\" <= 250"), "{i}");
        let d = bulk_statement(&info(), &ct, Op::Delete, 251, 300);
        assert_eq!(d, "/* Applied by AWS DMS 3.5.3 */ DELETE FROM \"public\".\"orders\" USING \"public\".\"awsdms_changes1a2b3c4d\" changes WHERE \"public\".\"orders\".\"id\" = CAST(changes.\"seg1\" AS bigint) AND changes.\"tbl\" = 'public.orders' AND changes.\"op\" = 'D' AND changes.\"seq\" >= 251 AND changes.\"seq\" <= 300");
        let u = bulk_statement(&info(), &ct, Op::Update, 301, 420);
        assert!(u.starts_with("/* Applied by AWS DMS 3.5.3 */ UPDATE \"public\".\"orders\" SET \"status\" = CAST(changes.\"c2\" AS varchar(20)), "), "{u}");
        assert!(u.ends_with("FROM \"public\".\"awsdms_changes1a2b3c4d\" changes WHERE \"public\".\"orders\".\"id\" = CAST(changes.\"seg1\" AS bigint) AND changes.\"tbl\" = 'public.orders' AND changes.\"op\" = 'U' AND changes.\"seq\" >= 301 AND changes.\"seq\" <= 420"), "{u}");
    }

    #[test]
    fn single_statements_quote_literals() {
        let info = info();
        let mut values = vec![None; info.columns.len()];
        values[0] = Some("42".to_owned());
        values[1] = Some("it's".to_owned());
        let u = single_statement(&info, Op::Update, 42, &values);
        assert!(u.starts_with("/* Applied by AWS DMS 3.5.3 */ UPDATE \"public\".\"orders\" SET \"status\"='it''s',\"kind\"=NULL"), "{u}");
        assert!(u.ends_with("WHERE \"id\"=42"), "{u}");
        let i = single_statement(&info, Op::Insert, 42, &values);
        assert!(i.contains("VALUES (42,'it''s',NULL"), "{i}");
        assert_eq!(
            single_statement(&info, Op::Delete, 7, &values),
            "/* Applied by AWS DMS 3.5.3 */ DELETE FROM \"public\".\"orders\" WHERE \"id\"=7"
        );
    }

    #[test]
    fn fold_keeps_one_net_change_per_row() {
        let n = |op| Net { op, values: vec![] };
        assert!(fold(Some(n(Op::Insert)), n(Op::Delete)).is_none());
        assert_eq!(
            fold(Some(n(Op::Insert)), n(Op::Update)).unwrap().op,
            Op::Insert
        );
        assert_eq!(
            fold(Some(n(Op::Update)), n(Op::Delete)).unwrap().op,
            Op::Delete
        );
        assert_eq!(
            fold(Some(n(Op::Delete)), n(Op::Insert)).unwrap().op,
            Op::Update
        );
        assert_eq!(fold(None, n(Op::Update)).unwrap().op, Op::Update);
    }

    #[test]
    fn copy_escapes_and_pieces_split_by_characters() {
        let mut out = Vec::new();
        copy_field(&mut out, Some("a\tb\nc\\d"));
        out.push(b'|');
        copy_field(&mut out, None);
        assert_eq!(String::from_utf8(out).unwrap(), "a\\tb\\nc\\\\d|\\N");
        assert_eq!(escape_query_text("a\nb\\c"), "a\\nb\\\\c");
        let p = pieces(&"é".repeat(450), 200);
        assert_eq!(p.len(), 3);
        assert_eq!(p[2].chars().count(), 50);
    }

    #[test]
    fn wal2json_values_become_dms_text() {
        assert_eq!(
            text_value(&serde_json::json!(true), ColumnKind::Boolean).as_deref(),
            Some("true")
        );
        assert_eq!(
            text_value(&serde_json::json!(12.3), ColumnKind::Plain).as_deref(),
            Some("12.3")
        );
        assert_eq!(
            text_value(
                &serde_json::json!("2026-11-25 01:58:08.232422+00"),
                ColumnKind::TimestampTz
            )
            .as_deref(),
            Some("2026-11-25 01:58:08.232422")
        );
        assert_eq!(
            text_value(&serde_json::Value::Null, ColumnKind::Plain),
            None
        );
        assert!(parse_ts("2026-11-25 01:58:08.232843+00").is_some());
    }
}
