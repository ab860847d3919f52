//! The store: one SQLite database, owned by one task, for everything that must survive.
//!
//! - [`schema`]: the connection's settings (WAL, `synchronous=FULL`, foreign keys, busy timeout,
//!   WAL size limit), read back and refused on mismatch; `PRAGMA user_version` migrations.
//! - [`audit`]: the append-only, hash-chained audit log and its verification.
//! - [`backlog`]: events held while storage fails; the dispenser locked, the fridge running.
//! - [`checkpoint`]: Ed25519-signed checkpoints of the chain's head, for copies held off-device.
//! - [`inventory`]: slot counts and stock alerts, replayed from the audit log.
//! - [`schedules`]: schedules installed by command, used again after a restart.
//! - [`vitals`]: recent readings at start-up; readings other processes recorded.
//! - [`outbox`]: messages waiting for the broker, read and deleted through the owner task.
//! - [`commands`]: the commands already answered, so a restart never executes one twice.
//! - [`readings`]: hourly seals in the chain over the fridge readings, checked by verify.
//! - [`recorder`]: turns controller events into audit rows and readings, one transaction each.

pub mod audit;
pub mod backlog;
pub mod checkpoint;
pub mod commands;
pub mod doses;
pub mod export_file;
pub mod integrity;
pub mod inventory;
pub mod outbox;
pub mod readings;
pub mod readings_export;
pub mod recorder;
pub mod schedules;
pub mod schema;
pub mod vitals;

use thiserror::Error;

/// What can go wrong with the store. A storage error is never reported as success.
#[derive(Debug, Error)]
pub enum StoreError {
    /// SQLite failed (disk full, I/O error, locked, corrupt).
    #[error("database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// A connection setting did not take (the durability promises would not hold).
    #[error("database setting {pragma} is {actual:?}, expected {expected:?}: refusing to run")]
    Settings {
        /// The pragma.
        pragma: &'static str,
        /// What we asked for.
        expected: String,
        /// What SQLite reports.
        actual: String,
    },
    /// The database was written by a newer medbox.
    #[error("database schema version {found} is newer than this medbox understands ({supported}); upgrade medbox, do not downgrade a database")]
    TooNew {
        /// Version in the file.
        found: i64,
        /// Newest this build knows.
        supported: i64,
    },
    /// A body could not be encoded.
    #[error("encoding: {0}")]
    Json(#[from] serde_json::Error),
    /// The device key is unusable.
    #[error("device key: {0}")]
    Key(String),
    /// The chain is linked another way than this run would append to it.
    #[error("audit chain: {0}")]
    Chain(String),
}
