//! The outbox as the uplink sees it: batches of messages to publish, and deletes once the broker
//! acknowledged them.
//!
//! While the appliance runs, the recorder's owner task is the only user of the database
//! connection (DESIGN.md §5): the uplink, on its own thread, asks that task over a channel
//! ([`OutboxHandle::Served`]) and the task answers between two records. Only a process with no
//! recorder at all (`medbox uplink drain`, the uplink benchmark) opens the file itself
//! ([`OutboxHandle::open`]).

use rusqlite::{params, Connection};
use std::path::Path;
use std::time::Duration;
use thiserror::Error;
use tokio::sync::{mpsc, oneshot};

/// The outbox could not be read or changed.
#[derive(Debug, Error)]
pub enum OutboxError {
    /// SQLite failed.
    #[error("database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// The task owning the connection has stopped answering.
    #[error("the store's owner task has stopped")]
    OwnerGone,
}

/// One message waiting for the broker.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutboxRow {
    /// Row id: the order within a priority, and what the PUBACK deletes.
    pub id: i64,
    /// Full MQTT topic.
    pub topic: String,
    /// JSON payload.
    pub payload: String,
}

/// Up to `limit` waiting messages, highest priority (alarms) first, oldest first within one.
pub fn batch(conn: &Connection, limit: usize) -> Result<Vec<OutboxRow>, rusqlite::Error> {
    let mut stmt = conn
        .prepare_cached("SELECT id, topic, payload FROM outbox ORDER BY priority, id LIMIT ?1")?;
    let rows = stmt.query_map(params![limit as i64], |r| {
        Ok(OutboxRow {
            id: r.get(0)?,
            topic: r.get(1)?,
            payload: r.get(2)?,
        })
    })?;
    rows.collect()
}

/// Deletes acknowledged messages in one transaction: one fsync per batch instead of one per
/// message. A crash before it only means those messages go again (receivers de-duplicate).
pub fn delete(conn: &Connection, ids: &[i64]) -> Result<(), rusqlite::Error> {
    if ids.is_empty() {
        return Ok(());
    }
    // Immediate: wait for the write lock up front (another process's `vitals add` may hold it)
    // instead of failing on a stale read snapshot.
    let tx = rusqlite::Transaction::new_unchecked(conn, rusqlite::TransactionBehavior::Immediate)?;
    {
        let mut stmt = tx.prepare_cached("DELETE FROM outbox WHERE id = ?1")?;
        for id in ids {
            stmt.execute(params![id])?;
        }
    }
    tx.commit()
}

/// Messages waiting.
pub fn count(conn: &Connection) -> Result<i64, rusqlite::Error> {
    conn.query_row("SELECT count(*) FROM outbox", [], |r| r.get(0))
}

/// A question for the connection's owner.
#[derive(Debug)]
pub enum OutboxRequest {
    /// See [`batch`].
    Batch {
        /// Most rows wanted.
        limit: usize,
        /// The answer.
        reply: oneshot::Sender<Result<Vec<OutboxRow>, rusqlite::Error>>,
    },
    /// See [`delete`].
    Delete {
        /// Acknowledged rows.
        ids: Vec<i64>,
        /// The answer.
        reply: oneshot::Sender<Result<(), rusqlite::Error>>,
    },
    /// See [`count`].
    Count {
        /// The answer.
        reply: oneshot::Sender<Result<i64, rusqlite::Error>>,
    },
}

impl OutboxRequest {
    /// Answers it on the owner's connection. A requester that went away is not an error.
    pub fn answer(self, conn: &Connection) {
        match self {
            OutboxRequest::Batch { limit, reply } => {
                let _ = reply.send(batch(conn, limit));
            }
            OutboxRequest::Delete { ids, reply } => {
                let _ = reply.send(delete(conn, &ids));
            }
            OutboxRequest::Count { reply } => {
                let _ = reply.send(count(conn));
            }
        }
    }
}

/// The owner's end: requests to answer on its connection.
pub type OutboxRequests = mpsc::Receiver<OutboxRequest>;

/// The requester's end (for [`OutboxHandle::Served`]) and the owner's end.
pub fn channel() -> (mpsc::Sender<OutboxRequest>, OutboxRequests) {
    // A handful suffices: the uplink waits for each answer before asking again.
    mpsc::channel(4)
}

/// The uplink's way to the outbox.
pub enum OutboxHandle {
    /// Its own connection: only where no recorder runs in this process.
    Own(Connection),
    /// Through the connection's owner task.
    Served(mpsc::Sender<OutboxRequest>),
}

impl OutboxHandle {
    /// Opens the database file directly (no recorder in this process).
    pub fn open(path: &Path) -> Result<Self, OutboxError> {
        let conn = Connection::open(path)?;
        conn.busy_timeout(Duration::from_secs(5))?;
        Ok(OutboxHandle::Own(conn))
    }

    async fn ask<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, rusqlite::Error>>) -> OutboxRequest,
        direct: impl FnOnce(&Connection) -> Result<T, rusqlite::Error>,
    ) -> Result<T, OutboxError> {
        match self {
            OutboxHandle::Own(conn) => Ok(direct(conn)?),
            OutboxHandle::Served(tx) => {
                let (reply, answer) = oneshot::channel();
                tx.send(make(reply))
                    .await
                    .map_err(|_| OutboxError::OwnerGone)?;
                Ok(answer.await.map_err(|_| OutboxError::OwnerGone)??)
            }
        }
    }

    /// See [`batch`].
    pub async fn batch(&self, limit: usize) -> Result<Vec<OutboxRow>, OutboxError> {
        self.ask(
            |reply| OutboxRequest::Batch { limit, reply },
            |c| batch(c, limit),
        )
        .await
    }

    /// See [`delete`]; clears `ids` once they are gone.
    pub async fn delete(&self, ids: &mut Vec<i64>) -> Result<(), OutboxError> {
        if ids.is_empty() {
            return Ok(());
        }
        let taken = std::mem::take(ids);
        let result = self
            .ask(
                |reply| OutboxRequest::Delete {
                    ids: taken.clone(),
                    reply,
                },
                |c| delete(c, &taken),
            )
            .await;
        if result.is_err() {
            *ids = taken;
        }
        result
    }

    /// See [`count`].
    pub async fn count(&self) -> Result<i64, OutboxError> {
        self.ask(|reply| OutboxRequest::Count { reply }, count)
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outbox_db(dir: &Path) -> Connection {
        let conn = super::super::schema::open(&dir.join("o.db")).unwrap();
        for (p, topic) in [(1, "b"), (0, "alarm"), (1, "c")] {
            conn.execute(
                "INSERT INTO outbox (priority, topic, payload, created_utc) VALUES (?1, ?2, '{}', 't')",
                params![p, topic],
            )
            .unwrap();
        }
        conn
    }

    #[tokio::test]
    async fn served_requests_read_and_delete_on_the_owners_connection() {
        let dir = tempfile::tempdir().unwrap();
        let conn = outbox_db(dir.path());
        let (tx, mut requests) = channel();
        let handle = OutboxHandle::Served(tx);
        let owner = async {
            while let Some(req) = requests.recv().await {
                req.answer(&conn);
            }
        };
        let client = async move {
            let rows = handle.batch(2).await.unwrap();
            assert_eq!(
                rows.iter().map(|r| r.topic.as_str()).collect::<Vec<_>>(),
                ["alarm", "b"],
                "alarms first, then oldest"
            );
            let mut ids: Vec<i64> = rows.iter().map(|r| r.id).collect();
            handle.delete(&mut ids).await.unwrap();
            assert!(ids.is_empty());
            assert_eq!(handle.count().await.unwrap(), 1);
            drop(handle);
        };
        tokio::join!(owner, client);
        assert_eq!(count(&conn).unwrap(), 1);
    }

    #[tokio::test]
    async fn a_gone_owner_is_an_error_and_keeps_the_acknowledged_ids() {
        let (tx, requests) = channel();
        let handle = OutboxHandle::Served(tx);
        drop(requests);
        let mut ids = vec![1, 2];
        assert!(matches!(
            handle.delete(&mut ids).await,
            Err(OutboxError::OwnerGone)
        ));
        assert_eq!(ids, [1, 2], "kept to delete later");
    }
}
