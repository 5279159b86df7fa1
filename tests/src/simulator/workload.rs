//! The source workload: inserts, updates and deletes at a steady rate, with awkward values.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dmsguard_pipeline::config::{quote_ident, DatabaseConfig};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::target_schema::{SimTable, ID_COLUMN};

/// Share of inserts, updates (the rest are deletes), in percent.
const INSERT_PERCENT: u64 = 60;
const UPDATE_PERCENT: u64 = 30;
/// Updates and deletes pick ids among the newest this many.
const LIVE_WINDOW: i64 = 5_000;

/// What the workload writes, and how fast.
#[derive(Debug, Clone)]
pub struct WorkloadConfig {
    pub source: DatabaseConfig,
    pub tables: Vec<SimTable>,
    /// Changes per second over all tables.
    pub rate: u32,
    /// Time between two write rounds.
    pub tick: Duration,
    /// How far in the past new rows' `created_at` lies (0: the last hour; e.g. a day back makes
    /// the rows "yesterday's" for the day-windowed gap metrics and the F4 alert). The hour's
    /// spread never crosses back over a UTC midnight: a row is never older than the start of
    /// the UTC day of `now - created_age`, so a test's rows fall in one day's window whatever
    /// the time of day it runs (within an hour after midnight they used to span two).
    pub created_age: Duration,
    /// Only INSERTs (no UPDATE or DELETE), e.g. a day's last rows.
    pub inserts_only: bool,
}

impl WorkloadConfig {
    pub fn new(source: DatabaseConfig, tables: Vec<SimTable>, rate: u32) -> Self {
        Self {
            source,
            tables,
            rate,
            tick: Duration::from_millis(100),
            created_age: Duration::ZERO,
            inserts_only: false,
        }
    }
}

/// Rows the workload keeps updating (the `missing_then_update` fault), as (`schema.table`, id).
pub type HotRows = Arc<Mutex<Vec<(String, i64)>>>;

/// Counters of what the workload committed.
#[derive(Debug, Default)]
pub struct WorkloadCounters {
    pub inserted: AtomicU64,
    pub updated: AtomicU64,
    pub deleted: AtomicU64,
}

impl WorkloadCounters {
    /// Changes committed on the source (rows inserted, updated, deleted).
    pub fn generated(&self) -> u64 {
        self.inserted.load(Ordering::Relaxed)
            + self.updated.load(Ordering::Relaxed)
            + self.deleted.load(Ordering::Relaxed)
    }
}

/// Starts workloads.
pub struct Workload;

/// A running workload; [`WorkloadHandle::stop`] ends it after its current round.
pub struct WorkloadHandle {
    stop: watch::Sender<bool>,
    task: JoinHandle<anyhow::Result<()>>,
    counters: Arc<WorkloadCounters>,
}

impl Workload {
    /// Creates the tables if missing and starts writing at `config.rate`.
    pub async fn start(config: WorkloadConfig, hot: HotRows) -> anyhow::Result<WorkloadHandle> {
        Self::start_counting(config, hot, Arc::default()).await
    }

    /// As [`Workload::start`], adding to `counters` (to resume a stopped workload).
    pub async fn start_counting(
        config: WorkloadConfig,
        hot: HotRows,
        counters: Arc<WorkloadCounters>,
    ) -> anyhow::Result<WorkloadHandle> {
        let client = dmsguard_pipeline::db::connect(&config.source).await?;
        for t in &config.tables {
            t.install_source(&client).await?;
        }
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(run(config, client, hot, counters.clone(), stopped));
        Ok(WorkloadHandle {
            stop,
            task,
            counters,
        })
    }
}

impl WorkloadHandle {
    pub fn counters(&self) -> Arc<WorkloadCounters> {
        self.counters.clone()
    }

    /// Changes committed so far.
    pub fn generated(&self) -> u64 {
        self.counters.generated()
    }

    /// Stops after the current round; returns the changes committed in all.
    pub async fn stop(self) -> anyhow::Result<u64> {
        let _ = self.stop.send(true);
        self.task.await??;
        Ok(self.counters.generated())
    }
}

/// A small xorshift generator: the workload needs spread, not quality.
struct Rng(u64);

impl Rng {
    fn seeded() -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0x9e37_79b9);
        Self(nanos | 1)
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next() % n
        }
    }
}

struct TableWriter {
    table: SimTable,
    insert_sql: String,
    update_sql: String,
    delete_sql: String,
    hot_sql: String,
    max_id: i64,
}

impl TableWriter {
    fn new(table: SimTable, created_age: Duration) -> Self {
        let created_age = created_age.as_secs();
        let q = table.name.quoted();
        let id = quote_ident(ID_COLUMN);
        let extra_names: String = (1..=table.extra_columns)
            .map(|i| format!(", {}", quote_ident(&format!("attr_{i:03}"))))
            .collect();
        let extra_values: String = (1..=table.extra_columns)
            .map(|_| ", CASE WHEN random() < 0.2 THEN NULL ELSE md5(random()::text) END")
            .collect();
        let kinds = super::target_schema::ENUM_VALUES
            .iter()
            .map(|v| format!("'{v}'"))
            .collect::<Vec<_>>()
            .join(",");
        let enum_type = format!(
            "{}.{}",
            quote_ident(&table.name.schema),
            quote_ident(super::target_schema::ENUM_TYPE)
        );
        // Awkward values on purpose: quotes, commas, backslashes, tabs, newlines, non-ASCII.
        let insert_sql = format!(
            "WITH ins AS (
               INSERT INTO {q} (status, kind, is_gift, payload, tags, customer_ref, created_at,
                                amount, note, \"ShipTo\", quantity{extra_names})
               SELECT (ARRAY['new','paid','shipped','cancelled'])[1 + floor(random() * 4)::int],
                      ((ARRAY[{kinds}])[1 + floor(random() * 3)::int])::{enum_type},
                      random() < 0.5,
                      CASE WHEN random() < 0.1 THEN NULL ELSE jsonb_build_object(
                        'sku', md5(random()::text), 'qty', floor(random() * 10)::int,
                        'label', E'it''s \"quoted\", a\\\\b', 'nested', jsonb_build_array(1, 'two', NULL)) END,
                      CASE WHEN random() < 0.1 THEN NULL
                           ELSE ARRAY['plain', 'has,comma', 'quote\"d', E'back\\\\slash', md5(random()::text)] END,
                      gen_random_uuid(),
                      GREATEST(now() - interval '{created_age} seconds' - random() * interval '1 hour',
                               CAST(date_trunc('day', (now() - interval '{created_age} seconds') AT TIME ZONE 'UTC') AS timestamp) AT TIME ZONE 'UTC'),
                      round((random() * 100000)::numeric, 2),
                      CASE WHEN random() < 0.3 THEN NULL
                           ELSE E'note: ''single'' \"double\"\\ttab\\nnewline \\\\ backslash, café ✓' END,
                      'Street ' || floor(random() * 1000)::int,
                      floor(random() * 100)::int{extra_values}
               FROM generate_series(1, $1::int)
               RETURNING {id})
             SELECT count(*)::bigint, coalesce(max({id}), 0)::bigint FROM ins"
        );
        let update_sql = format!(
            "UPDATE {q} SET status = (ARRAY['new','paid','shipped','cancelled'])[1 + floor(random() * 4)::int],
                            is_gift = NOT is_gift,
                            amount = round((random() * 100000)::numeric, 2),
                            payload = jsonb_build_object('updated', now()::text, 'n', floor(random() * 1000)::int),
                            note = CASE WHEN random() < 0.5 THEN NULL ELSE E'updated ''note''\\n' || md5(random()::text) END,
                            quantity = quantity + 1
             WHERE {id} = ANY($1::bigint[])"
        );
        let delete_sql = format!("DELETE FROM {q} WHERE {id} = ANY($1::bigint[])");
        let hot_sql = format!(
            "UPDATE {q} SET quantity = quantity + 1, status = 'paid' WHERE {id} = ANY($1::bigint[])"
        );
        Self {
            table,
            insert_sql,
            update_sql,
            delete_sql,
            hot_sql,
            max_id: 0,
        }
    }

    fn sample_ids(&self, rng: &mut Rng, n: u64, hot: &[i64]) -> Vec<i64> {
        if self.max_id == 0 {
            return Vec::new();
        }
        let low = (self.max_id - LIVE_WINDOW).max(1);
        let span = (self.max_id - low + 1) as u64;
        let mut ids: Vec<i64> = (0..n)
            .map(|_| low + rng.below(span) as i64)
            .filter(|id| !hot.contains(id))
            .collect();
        ids.sort_unstable();
        ids.dedup();
        ids
    }
}

async fn run(
    config: WorkloadConfig,
    client: tokio_postgres::Client,
    hot: HotRows,
    counters: Arc<WorkloadCounters>,
    mut stopped: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let mut writers: Vec<TableWriter> = config
        .tables
        .into_iter()
        .map(|t| TableWriter::new(t, config.created_age))
        .collect();
    let inserts_only = config.inserts_only;
    if writers.is_empty() || config.rate == 0 {
        return Ok(());
    }
    for w in &mut writers {
        let row = client
            .query_one(
                &format!(
                    "SELECT coalesce(max({}), 0)::bigint FROM {}",
                    quote_ident(ID_COLUMN),
                    w.table.name.quoted()
                ),
                &[],
            )
            .await?;
        w.max_id = row.get(0);
    }
    let prepared_ins = {
        let mut v = Vec::new();
        for w in &writers {
            v.push((
                client.prepare(&w.insert_sql).await?,
                client.prepare(&w.update_sql).await?,
                client.prepare(&w.delete_sql).await?,
                client.prepare(&w.hot_sql).await?,
            ));
        }
        v
    };
    let mut rng = Rng::seeded();
    let start = tokio::time::Instant::now();
    let mut planned: u64 = 0;
    let mut ticker = tokio::time::interval(config.tick);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut next_table = 0usize;
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stopped.changed() => return Ok(()),
        }
        if *stopped.borrow() {
            return Ok(());
        }
        let due = (start.elapsed().as_secs_f64() * f64::from(config.rate)) as u64;
        // After a long pause (source down) do not burst more than two seconds' worth.
        let mut todo = due.saturating_sub(planned).min(u64::from(config.rate) * 2);
        planned = due.max(planned);
        let hot_rows: Vec<(String, i64)> = hot.lock().expect("hot rows lock").clone();
        let share = todo / writers.len() as u64;
        for k in 0..writers.len() {
            let idx = (next_table + k) % writers.len();
            let n = if k + 1 == writers.len() { todo } else { share };
            todo -= n;
            let w = &mut writers[idx];
            let (ins, upd, del, hot_stmt) = &prepared_ins[idx];
            let dotted = w.table.dotted();
            let hot_ids: Vec<i64> = hot_rows
                .iter()
                .filter(|(t, _)| *t == dotted)
                .map(|(_, id)| *id)
                .collect();
            let n_ins = if inserts_only {
                n
            } else {
                (n * INSERT_PERCENT).div_ceil(100)
            };
            let n_upd = if inserts_only {
                0
            } else {
                n * UPDATE_PERCENT / 100
            };
            let n_del = n.saturating_sub(n_ins + n_upd);
            let upd_ids = w.sample_ids(&mut rng, n_upd, &hot_ids);
            let del_ids = w.sample_ids(&mut rng, n_del, &hot_ids);
            client.batch_execute("BEGIN").await?;
            let result: anyhow::Result<(u64, u64, u64, i64)> = async {
                let mut inserted = 0u64;
                let mut max_id = w.max_id;
                if n_ins > 0 {
                    let row = client.query_one(ins, &[&(n_ins as i32)]).await?;
                    inserted = row.get::<_, i64>(0) as u64;
                    max_id = max_id.max(row.get::<_, i64>(1));
                }
                let mut updated = client.execute(upd, &[&upd_ids]).await?;
                if !hot_ids.is_empty() {
                    updated += client.execute(hot_stmt, &[&hot_ids]).await?;
                }
                let deleted = client.execute(del, &[&del_ids]).await?;
                Ok((inserted, updated, deleted, max_id))
            }
            .await;
            match result {
                Ok((i, u, d, max_id)) => {
                    client.batch_execute("COMMIT").await?;
                    w.max_id = max_id;
                    counters.inserted.fetch_add(i, Ordering::Relaxed);
                    counters.updated.fetch_add(u, Ordering::Relaxed);
                    counters.deleted.fetch_add(d, Ordering::Relaxed);
                }
                Err(e) => {
                    let _ = client.batch_execute("ROLLBACK").await;
                    return Err(e.context(format!("writing to {dotted}")));
                }
            }
        }
        next_table = (next_table + 1) % writers.len();
    }
}
