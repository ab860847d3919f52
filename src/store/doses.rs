//! Dose history as the store holds it: rebuilt at start-up so the engine neither repeats nor
//! loses a dose across restarts.

use super::audit::{rows, Filter};
use super::StoreError;
use crate::dosing::history::DoseHistory;
use chrono::{DateTime, Utc};
use rusqlite::{Connection, OptionalExtension};

/// Every dose outcome recorded (`dose.*` rows other than alerts), per patient, oldest first.
pub fn history(conn: &Connection) -> Result<DoseHistory, StoreError> {
    let rows = rows(
        conn,
        &Filter {
            kind: Some("dose.".into()),
            ..Default::default()
        },
    )?;
    Ok(rows
        .iter()
        .filter(|r| r.kind != "dose.alert")
        .filter_map(|r| serde_json::from_str::<serde_json::Value>(&r.body).ok())
        .filter_map(|b| {
            let patient = b.get("patient")?.as_str()?.to_string();
            let mut record: crate::dosing::engine::DoseRecord =
                serde_json::from_value(b.get("record")?.clone()).ok()?;
            // Rows written before records named their slot still have it beside the record.
            if record.slot.is_none() {
                record.slot = b
                    .get("slot")
                    .and_then(serde_json::Value::as_u64)
                    .and_then(|s| u8::try_from(s).ok())
                    .filter(|s| *s != u8::MAX);
            }
            Some((patient, record))
        })
        .collect())
}

/// The appliance's first recorded start, from which it is responsible for doses.
pub fn first_start(conn: &Connection) -> Result<Option<DateTime<Utc>>, StoreError> {
    let utc: Option<String> = conn
        .query_row(
            "SELECT utc FROM audit WHERE kind = 'system.start' ORDER BY seq LIMIT 1",
            [],
            |r| r.get(0),
        )
        .optional()?;
    Ok(utc
        .and_then(|t| DateTime::parse_from_rfc3339(&t).ok())
        .map(|t| t.with_timezone(&Utc)))
}

/// The time floor: the wall-clock time of the last audit row (the latest durable record). A
/// clock that reads earlier than this at start-up is behind (a Pi without a real-time clock
/// before NTP has synced) and must not be trusted with dosing.
pub fn clock_floor(conn: &Connection) -> Result<Option<DateTime<Utc>>, StoreError> {
    let utc: Option<String> = conn
        .query_row("SELECT utc FROM audit ORDER BY seq DESC LIMIT 1", [], |r| {
            r.get(0)
        })
        .optional()?;
    Ok(utc
        .and_then(|t| DateTime::parse_from_rfc3339(&t).ok())
        .map(|t| t.with_timezone(&Utc)))
}

/// Whether the clock was last recorded untrusted (a lock only a person's `trust_clock` lifts;
/// a restart keeps it).
pub fn clock_locked(conn: &Connection) -> Result<bool, StoreError> {
    let reason: Option<String> = conn
        .query_row(
            "SELECT reason FROM audit WHERE kind = 'system.clock' ORDER BY seq DESC LIMIT 1",
            [],
            |r| r.get(0),
        )
        .optional()?;
    Ok(reason.as_deref() == Some("UNTRUSTED"))
}

/// The latest row that holds both clocks, a dose record or a clock event: (wall time, elapsed
/// time). Rows written before records carried their elapsed time give their wall time for both.
pub fn elapsed_anchor(
    conn: &Connection,
) -> Result<Option<crate::dosing::engine::ElapsedAnchor>, StoreError> {
    let row: Option<(Option<String>, Option<String>)> = conn
        .query_row(
            "SELECT COALESCE(json_extract(body, '$.record.at'), json_extract(body, '$.at')),                     COALESCE(json_extract(body, '$.record.elapsed'), json_extract(body, '$.elapsed'))              FROM audit WHERE (kind LIKE 'dose.%' AND kind != 'dose.alert') OR kind = 'system.clock'              ORDER BY seq DESC LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
    let parse = |t: &str| {
        DateTime::parse_from_rfc3339(t)
            .ok()
            .map(|t| t.with_timezone(&Utc))
    };
    Ok(row.and_then(|(wall, elapsed)| {
        let wall = parse(wall.as_deref()?)?;
        Some((wall, elapsed.as_deref().and_then(parse).unwrap_or(wall)))
    }))
}
