//! The outbox as the uplink sees it: batches of messages to publish, and deletes once the broker
//! acknowledged them.
//!
//! While the appliance runs, the recorder's owner task is the only user of the database connection
//! (README, "The store and the audit log"): the uplink, on its own thread, asks that task over a
//! channel ([`OutboxHandle::Served`]) and the task answers between two records. Only a process with
//! no recorder at all (`medbox uplink drain`, the uplink benchmark) opens the file itself
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

/// Deletes acknowledged messages in one transaction, without an fsync of its own.
///
/// A delete that a power cut undoes only means those messages go again, and receivers
/// de-duplicate by message id; so the delete is committed with `synchronous = NORMAL` (written
/// to the WAL, synced by the next record's commit) and the connection goes back to `FULL` at
/// once. Waiting for a sync per top-up was what held a backlog drain to a fraction of the
/// broker's pace.
pub fn delete(conn: &Connection, ids: &[i64]) -> Result<(), rusqlite::Error> {
    if ids.is_empty() {
        return Ok(());
    }
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    let deleted = delete_in_one_transaction(conn, ids);
    // Restored whatever happened: every record after this is durable at its commit.
    let restored = conn.pragma_update(None, "synchronous", "FULL");
    deleted.and(restored)
}

fn delete_in_one_transaction(conn: &Connection, ids: &[i64]) -> Result<(), rusqlite::Error> {
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

/// What the uplink asks the connection's owner, one round trip per top-up: delete what the
/// broker acknowledged, then hand over the next batch (and, when asked, how many wait).
#[derive(Debug)]
pub struct OutboxRequest {
    /// Acknowledged rows to delete first.
    pub delete: Vec<i64>,
    /// Most rows wanted (0: none).
    pub limit: usize,
    /// Whether to count what still waits.
    pub count: bool,
    /// The answer.
    pub reply: oneshot::Sender<Result<Exchanged, rusqlite::Error>>,
}

/// The owner's answer.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Exchanged {
    /// The next rows, highest priority first.
    pub rows: Vec<OutboxRow>,
    /// Messages waiting after the delete, when counted.
    pub waiting: Option<i64>,
}

fn exchange(
    conn: &Connection,
    delete_ids: &[i64],
    limit: usize,
    counted: bool,
) -> Result<Exchanged, rusqlite::Error> {
    delete(conn, delete_ids)?;
    Ok(Exchanged {
        rows: if limit > 0 {
            batch(conn, limit)?
        } else {
            Vec::new()
        },
        waiting: if counted { Some(count(conn)?) } else { None },
    })
}

impl OutboxRequest {
    /// Answers it on the owner's connection. A requester that went away is not an error.
    pub fn answer(self, conn: &Connection) {
        let _ = self
            .reply
            .send(exchange(conn, &self.delete, self.limit, self.count));
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

    /// Deletes `acked` (emptied once they are gone), then returns up to `limit` waiting rows
    /// and, with `counted`, how many wait.
    pub async fn exchange(
        &self,
        acked: &mut Vec<i64>,
        limit: usize,
        counted: bool,
    ) -> Result<Exchanged, OutboxError> {
        let result = match self {
            OutboxHandle::Own(conn) => Ok(exchange(conn, acked, limit, counted)?),
            OutboxHandle::Served(tx) => {
                let (reply, answer) = oneshot::channel();
                let req = OutboxRequest {
                    delete: acked.clone(),
                    limit,
                    count: counted,
                    reply,
                };
                tx.send(req).await.map_err(|_| OutboxError::OwnerGone)?;
                answer
                    .await
                    .map_err(|_| OutboxError::OwnerGone)?
                    .map_err(OutboxError::from)
            }
        };
        if result.is_ok() {
            acked.clear();
        }
        result
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
            let mut none = Vec::new();
            let first = handle.exchange(&mut none, 2, false).await.unwrap();
            assert_eq!(
                first
                    .rows
                    .iter()
                    .map(|r| r.topic.as_str())
                    .collect::<Vec<_>>(),
                ["alarm", "b"],
                "alarms first, then oldest"
            );
            let mut acked: Vec<i64> = first.rows.iter().map(|r| r.id).collect();
            let next = handle.exchange(&mut acked, 10, true).await.unwrap();
            assert!(acked.is_empty(), "deleted");
            assert_eq!(next.rows.len(), 1, "delivered rows never come back");
            assert_eq!(next.waiting, Some(1));
            drop(handle);
        };
        tokio::join!(owner, client);
        assert_eq!(count(&conn).unwrap(), 1);
    }

    /// Deletes skip their own fsync; every record after one must still be synced at commit.
    #[test]
    fn an_acknowledged_delete_leaves_every_later_record_synced_at_commit() {
        let dir = tempfile::tempdir().unwrap();
        let conn = outbox_db(dir.path());
        let synchronous = || -> i64 {
            conn.pragma_query_value(None, "synchronous", |r| r.get(0))
                .unwrap()
        };
        assert_eq!(synchronous(), 2, "FULL");
        delete(&conn, &[1, 2]).unwrap();
        assert_eq!(synchronous(), 2, "FULL again after the delete");
        assert_eq!(count(&conn).unwrap(), 1);
        // Also after a delete that failed (the table is gone).
        conn.execute_batch("DROP TABLE outbox").unwrap();
        assert!(delete(&conn, &[3]).is_err());
        assert_eq!(synchronous(), 2, "FULL again after a failed delete");
    }

    #[tokio::test]
    async fn a_gone_owner_is_an_error_and_keeps_the_acknowledged_ids() {
        let (tx, requests) = channel();
        let handle = OutboxHandle::Served(tx);
        drop(requests);
        let mut ids = vec![1, 2];
        assert!(matches!(
            handle.exchange(&mut ids, 10, false).await,
            Err(OutboxError::OwnerGone)
        ));
        assert_eq!(ids, [1, 2], "kept to delete later");
    }
}
