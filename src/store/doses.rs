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
            Some((
                patient,
                serde_json::from_value(b.get("record")?.clone()).ok()?,
            ))
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
