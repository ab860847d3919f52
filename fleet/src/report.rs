//! A device's report from the archive: the appliance's own report (`medbox audit report`),
//! rendered by the appliance library over a store rebuilt from what the device published, so
//! the pharmacist reads the same pages whether the appliance or the archive made them. The
//! chain is verified again on the way: a row the archive misses, or one whose content does not
//! give its hash, shows as a break in the report.

use chrono::{DateTime, SecondsFormat, Utc};
use chrono_tz::Tz;
use medbox::coldchain::config::ColdChainConfig;
use medbox::store::audit::ChainKey;
use rusqlite::types::Value as SqlValue;
use std::path::Path;
use thiserror::Error;
use tokio_postgres::Client;

/// The report could not be made.
#[derive(Debug, Error)]
pub enum ReportError {
    /// Reading the archive.
    #[error("archive: {0}")]
    Pg(#[from] tokio_postgres::Error),
    /// Writing the rebuilt store.
    #[error("rebuilt store: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// The appliance library.
    #[error("report: {0}")]
    Store(#[from] medbox::store::StoreError),
    /// A scratch file.
    #[error("scratch: {0}")]
    Io(#[from] std::io::Error),
}

/// One row to insert, column by column.
type Record = Vec<SqlValue>;

/// What the archive holds of one device, as the appliance's store has it.
#[derive(Default)]
struct Copy {
    rows: Vec<Record>,
    readings: Vec<Record>,
    checkpoints: Vec<Record>,
}

async fn fetch(c: &Client, device: &str) -> Result<Copy, ReportError> {
    let rows = c
        .query(
            // The exact utc text and body text are in the message as published; rows from
            // appliances that did not publish them fall back (and will not verify).
            "SELECT a.seq, coalesce(m.payload->>'utc', to_char(a.utc AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"')), \
                    coalesce((m.payload->>'mono_ms')::bigint, 0), coalesce(m.payload->>'boot_id', ''), \
                    a.clock_trusted, a.actor, a.kind, a.subject, coalesce(m.payload->>'body_text', a.body::text), \
                    a.reason, coalesce(a.prev_hash, ''), coalesce(a.hash, '') \
             FROM audit_rows a LEFT JOIN messages m ON m.message_id = a.device_id || ':' || a.seq \
             WHERE a.device_id = $1 ORDER BY a.seq",
            &[&device],
        )
        .await?
        .into_iter()
        .map(|r| {
            vec![
                SqlValue::Integer(r.get(0)),
                SqlValue::Text(r.get(1)),
                SqlValue::Integer(r.get(2)),
                SqlValue::Text(r.get(3)),
                SqlValue::Integer(i64::from(r.get::<_, bool>(4))),
                SqlValue::Text(r.get(5)),
                SqlValue::Text(r.get(6)),
                SqlValue::Text(r.get(7)),
                SqlValue::Text(r.get(8)),
                SqlValue::Text(r.get(9)),
                SqlValue::Text(r.get(10)),
                SqlValue::Text(r.get(11)),
            ]
        })
        .collect();
    let readings = c
        .query(
            "SELECT row_id, utc, vial_c, air_c, product_c, doubt, compressor_on, door_open, mains, \
                    coalesce(mode, '') \
             FROM readings WHERE device_id = $1 ORDER BY row_id",
            &[&device],
        )
        .await?
        .into_iter()
        .map(|r| {
            let utc: DateTime<Utc> = r.get(1);
            let real = |i: usize| r.get::<_, Option<f64>>(i).map_or(SqlValue::Null, SqlValue::Real);
            let flag = |i: usize| SqlValue::Integer(i64::from(r.get::<_, bool>(i)));
            vec![
                SqlValue::Integer(r.get(0)),
                SqlValue::Text(utc.to_rfc3339_opts(SecondsFormat::Millis, true)),
                real(2),
                real(3),
                real(4),
                r.get::<_, Option<String>>(5).map_or(SqlValue::Null, SqlValue::Text),
                flag(6),
                flag(7),
                flag(8),
                SqlValue::Text(r.get(9)),
            ]
        })
        .collect();
    let checkpoints = c
        .query(
            "SELECT seq, head, utc, signature, public_key FROM checkpoints \
             WHERE device_id = $1 ORDER BY seq",
            &[&device],
        )
        .await?
        .into_iter()
        .map(|r| {
            vec![
                SqlValue::Integer(r.get(0)),
                SqlValue::Text(r.get(1)),
                SqlValue::Text(r.get(2)),
                SqlValue::Text(r.get(3)),
                SqlValue::Text(r.get(4)),
            ]
        })
        .collect();
    Ok(Copy {
        rows,
        readings,
        checkpoints,
    })
}

fn rebuild(copy: &Copy, path: &Path) -> Result<rusqlite::Connection, ReportError> {
    let mut conn = medbox::store::schema::open(path)?;
    // Checkpoints may name rows the archive has not received yet.
    conn.execute_batch("PRAGMA foreign_keys = OFF; PRAGMA synchronous = OFF")?;
    let tx = conn.transaction()?;
    {
        let mut audit = tx.prepare(
            "INSERT INTO audit (seq, utc, mono_ms, boot_id, clock_trusted, actor, kind, subject, body, reason, prev_hash, hash) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
        )?;
        for r in &copy.rows {
            audit.execute(rusqlite::params_from_iter(r))?;
        }
        let mut readings = tx.prepare(
            "INSERT INTO readings (id, utc, vial, air, control, doubt, compressor_on, door_open, mains, mode) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
        )?;
        for r in &copy.readings {
            readings.execute(rusqlite::params_from_iter(r))?;
        }
        let mut checkpoints = tx.prepare(
            "INSERT INTO checkpoints (seq, head, utc, signature, public_key) VALUES (?1, ?2, ?3, ?4, ?5)",
        )?;
        for c in &copy.checkpoints {
            checkpoints.execute(rusqlite::params_from_iter(c))?;
        }
    }
    tx.commit()?;
    Ok(conn)
}

/// The report of `device` for `[from, to)` (open ends: everything), its days in `tz`, with
/// the default cold-chain rules (2–8 °C).
pub async fn render(
    c: &Client,
    device: &str,
    period: (Option<DateTime<Utc>>, Option<DateTime<Utc>>),
    tz: Tz,
    generated: DateTime<Utc>,
) -> Result<String, ReportError> {
    let copy = fetch(c, device).await?;
    tokio::task::spawn_blocking(move || {
        let dir = tempfile::tempdir()?;
        let conn = rebuild(&copy, &dir.path().join("archive-copy.db"))?;
        Ok(medbox::report::render(
            &conn,
            &ChainKey::unkeyed(),
            &ColdChainConfig::default(),
            period,
            tz,
            generated,
        )?)
    })
    .await
    .expect("the report task")
}
