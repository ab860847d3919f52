//! Opening the database: settings that make writes durable, and versioned migrations.

use super::StoreError;
use rusqlite::Connection;
use std::path::Path;

/// Migrations, in order; `PRAGMA user_version` is the number applied. Never edit a shipped one:
/// add the next.
const MIGRATIONS: &[&str] = &[
    // 1: the audit chain, readings, checkpoints, device identity.
    r#"
    CREATE TABLE audit (
        seq            INTEGER PRIMARY KEY,
        utc            TEXT    NOT NULL,
        mono_ms        INTEGER NOT NULL,
        boot_id        TEXT    NOT NULL,
        clock_trusted  INTEGER NOT NULL,
        actor          TEXT    NOT NULL,
        kind           TEXT    NOT NULL,
        subject        TEXT    NOT NULL,
        body           TEXT    NOT NULL,
        reason         TEXT    NOT NULL,
        prev_hash      TEXT    NOT NULL,
        hash           TEXT    NOT NULL
    );
    CREATE INDEX audit_utc ON audit(utc);
    CREATE INDEX audit_kind ON audit(kind);
    CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit
        BEGIN SELECT RAISE(ABORT, 'audit rows are append-only'); END;
    CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit
        BEGIN SELECT RAISE(ABORT, 'audit rows are append-only'); END;

    CREATE TABLE readings (
        id             INTEGER PRIMARY KEY,
        utc            TEXT    NOT NULL,
        vial           REAL,
        air            REAL,
        compressor_on  INTEGER NOT NULL,
        door_open      INTEGER NOT NULL,
        mains          INTEGER NOT NULL,
        mode           TEXT    NOT NULL
    );
    CREATE INDEX readings_utc ON readings(utc);

    CREATE TABLE checkpoints (
        seq        INTEGER PRIMARY KEY REFERENCES audit(seq),
        head       TEXT    NOT NULL,
        utc        TEXT    NOT NULL,
        signature  TEXT    NOT NULL,
        public_key TEXT    NOT NULL
    );

    CREATE TABLE device_identity (
        id          INTEGER PRIMARY KEY CHECK (id = 1),
        ed25519_pkcs8 BLOB NOT NULL,
        created_utc TEXT NOT NULL
    );
    "#,
    // 2: the uplink's store-and-forward outbox, written in the same transaction as its record.
    r#"
    CREATE TABLE outbox (
        id          INTEGER PRIMARY KEY,
        priority    INTEGER NOT NULL,
        topic       TEXT    NOT NULL,
        payload     TEXT    NOT NULL,
        created_utc TEXT    NOT NULL
    );
    CREATE INDEX outbox_order ON outbox(priority, id);
    "#,
    // 3: readings are as append-only as the audit rows that seal them (`store::readings`).
    r#"
    CREATE TRIGGER readings_no_update BEFORE UPDATE ON readings
        BEGIN SELECT RAISE(ABORT, 'readings are append-only'); END;
    CREATE TRIGGER readings_no_delete BEFORE DELETE ON readings
        BEGIN SELECT RAISE(ABORT, 'readings are append-only'); END;
    "#,
    // 4: the arbitrated product temperature and, while the probes disagree, the doubt.
    r#"
    ALTER TABLE readings ADD COLUMN control REAL;
    ALTER TABLE readings ADD COLUMN doubt TEXT;
    "#,
    // 5: how the chain is linked, written once, so a keyed chain cannot be passed off as a
    // plain one (a downgrade) without editing this too.
    r#"
    CREATE TABLE chain (
        id         INTEGER PRIMARY KEY CHECK (id = 1),
        keyed      INTEGER NOT NULL,
        noted_utc  TEXT    NOT NULL
    );
    CREATE TRIGGER chain_no_update BEFORE UPDATE ON chain
        BEGIN SELECT RAISE(ABORT, 'the chain mode is written once'); END;
    CREATE TRIGGER chain_no_delete BEFORE DELETE ON chain
        BEGIN SELECT RAISE(ABORT, 'the chain mode is written once'); END;
    "#,
];

/// The newest schema version this build knows.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// WAL file size limit after checkpoints (bytes).
const JOURNAL_SIZE_LIMIT: i64 = 64 * 1024 * 1024;
/// The writer's page cache, in KiB (SQLite's `cache_size` takes a negative number as KiB). The
/// recorder appends: it touches the right edge of each table and index and little else, which
/// a quarter of SQLite's default 2 MiB holds, and what the default would keep is resident
/// memory the appliance carries for months.
const CACHE_KIB: i64 = 512;

/// Opens (creating if needed) the database at `path`, applies and checks the settings, and
/// migrates it to [`SCHEMA_VERSION`].
pub fn open(path: &Path) -> Result<Connection, StoreError> {
    let conn = Connection::open(path)?;
    configure(&conn)?;
    migrate(&conn)?;
    Ok(conn)
}

/// Opens an existing database for reading only (pharmacist tools): no settings are changed and
/// nothing is migrated.
pub fn open_read_only(path: &Path) -> Result<Connection, StoreError> {
    let conn = Connection::open_with_flags(
        path,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    if version > SCHEMA_VERSION {
        return Err(StoreError::TooNew {
            found: version,
            supported: SCHEMA_VERSION,
        });
    }
    Ok(conn)
}

fn expect(conn: &Connection, pragma: &'static str, expected: &str) -> Result<(), StoreError> {
    let actual: String = conn.pragma_query_value(None, pragma, |r| {
        let v: rusqlite::types::Value = r.get(0)?;
        Ok(match v {
            rusqlite::types::Value::Integer(i) => i.to_string(),
            rusqlite::types::Value::Text(t) => t,
            other => format!("{other:?}"),
        })
    })?;
    if actual.eq_ignore_ascii_case(expected) {
        Ok(())
    } else {
        Err(StoreError::Settings {
            pragma,
            expected: expected.to_string(),
            actual,
        })
    }
}

fn configure(conn: &Connection) -> Result<(), StoreError> {
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    conn.pragma_update(None, "journal_size_limit", JOURNAL_SIZE_LIMIT)?;
    conn.pragma_update(None, "cache_size", -CACHE_KIB)?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    // Read every setting back: a setting that silently did not take would void the promises.
    expect(conn, "journal_mode", "wal")?;
    expect(conn, "synchronous", "2")?;
    expect(conn, "foreign_keys", "1")?;
    expect(conn, "journal_size_limit", &JOURNAL_SIZE_LIMIT.to_string())?;
    expect(conn, "busy_timeout", "5000")?;
    expect(conn, "cache_size", &(-CACHE_KIB).to_string())?;
    Ok(())
}

fn migrate(conn: &Connection) -> Result<(), StoreError> {
    let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    if version > SCHEMA_VERSION {
        return Err(StoreError::TooNew {
            found: version,
            supported: SCHEMA_VERSION,
        });
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(version.max(0) as usize) {
        let tx = conn.unchecked_transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", i as i64 + 1)?;
        tx.commit()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_are_applied_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let conn = open(&dir.path().join("m.db")).unwrap();
        let mode: String = conn
            .pragma_query_value(None, "journal_mode", |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
        let v: i64 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert_eq!(v, SCHEMA_VERSION);
    }

    #[test]
    fn reopening_does_not_migrate_twice() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.db");
        drop(open(&path).unwrap());
        assert!(open(&path).is_ok());
    }

    #[test]
    fn a_database_from_a_newer_version_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.db");
        let conn = open(&path).unwrap();
        conn.pragma_update(None, "user_version", SCHEMA_VERSION + 1)
            .unwrap();
        drop(conn);
        match open(&path) {
            Err(StoreError::TooNew { found, .. }) => assert_eq!(found, SCHEMA_VERSION + 1),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn an_old_database_is_upgraded_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.db");
        // A version-0 database (created before any migration) with unrelated content.
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch("CREATE TABLE notes (t TEXT); INSERT INTO notes VALUES ('kept');")
            .unwrap();
        drop(conn);
        let conn = open(&path).unwrap();
        let kept: String = conn
            .query_row("SELECT t FROM notes", [], |r| r.get(0))
            .unwrap();
        assert_eq!(kept, "kept");
        conn.execute("SELECT count(*) FROM audit", []).ok();
    }
}
