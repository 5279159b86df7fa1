//! Per-task advisory locks, held on a dedicated ledger connection while a job acts.
//!
//! A session-level `pg_try_advisory_lock` lives as long as its connection: if the remediator
//! dies, PostgreSQL closes the session and the lock is gone, so a crash never leaves a task
//! locked. Two replicas sharing the ledger therefore never act on one task at once.

use tokio_postgres::Client;

use super::LedgerError;
use dmsguard_pipeline::report::ErrorChain;

/// Locks held on one task or more; released when dropped (the connection closes).
pub struct TaskLocks {
    client: Option<Client>,
    keys: Vec<String>,
}

impl TaskLocks {
    /// Tries to lock every key on `client` (all or none); `None` if another session holds one.
    pub(super) async fn try_acquire(
        client: Client,
        keys: &[String],
    ) -> Result<Option<Self>, LedgerError> {
        let mut keys: Vec<String> = keys.to_vec();
        keys.sort();
        keys.dedup();
        for (i, key) in keys.iter().enumerate() {
            let got: bool = client
                .query_one(
                    "SELECT pg_try_advisory_lock(hashtextextended($1, 0))",
                    &[&lock_name(key)],
                )
                .await
                .map_err(LedgerError::query("taking a task lock"))?
                .get(0);
            if !got {
                tracing::debug!(task = %key, "Task is locked by another job.");
                // Unlock what we took; closing the connection would too, this is just quicker.
                for taken in &keys[..i] {
                    let _ = client
                        .execute(
                            "SELECT pg_advisory_unlock(hashtextextended($1, 0))",
                            &[&lock_name(taken)],
                        )
                        .await;
                }
                return Ok(None);
            }
        }
        Ok(Some(Self {
            client: Some(client),
            keys,
        }))
    }

    /// Holds nothing: for jobs that act on no task.
    pub(super) fn none() -> Self {
        Self {
            client: None,
            keys: Vec::new(),
        }
    }

    /// The locked keys, sorted.
    pub fn keys(&self) -> &[String] {
        &self.keys
    }

    /// Releases the locks now and waits for the release.
    pub async fn release(mut self) {
        if let Some(client) = self.client.take() {
            for key in &self.keys {
                if let Err(error) = client
                    .execute(
                        "SELECT pg_advisory_unlock(hashtextextended($1, 0))",
                        &[&lock_name(key)],
                    )
                    .await
                {
                    // The connection closes right after; that releases the lock as well.
                    tracing::warn!(error = %ErrorChain(&error), task = %key, "Could not release a task lock.");
                }
            }
        }
    }
}

/// The advisory lock name of a task; namespaced so other users of the database do not collide.
fn lock_name(key: &str) -> String {
    format!("dmsguard:task:{key}")
}
