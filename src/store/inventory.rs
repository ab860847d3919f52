//! Inventory as the store holds it: replayed from the audit log at start-up (refills, confirmed
//! drops, stock alerts and their acknowledgements, in sequence order), so a restart keeps the
//! counts and neither forgets nor repeats an acknowledged alert.

use super::StoreError;
use crate::dosing::engine::DoseRecord;
use crate::dosing::inventory::{Inventory, StockIssue};
use chrono::{DateTime, NaiveDate, Utc};
use rusqlite::Connection;
use serde_json::Value;

fn slot_of(subject: &str, body: &Value) -> Option<u8> {
    body.get("slot")
        .and_then(Value::as_u64)
        .and_then(|s| u8::try_from(s).ok())
        .or_else(|| subject.strip_prefix("slot:")?.parse().ok())
}

/// Rebuilds the inventory from every relevant audit row.
pub fn rebuild(conn: &Connection) -> Result<Inventory, StoreError> {
    let mut stmt = conn.prepare(
        "SELECT kind, subject, body, utc FROM audit WHERE kind IN \
         ('inventory.refill', 'inventory.alert', 'inventory.acknowledged', \
          'dose.dispensed', 'dose.uncertain', 'dose.confirmed_given', \
          'dose.confirmed_not_given', 'dispenser.test_dispense', 'dispenser.stray_drop') \
         ORDER BY seq",
    )?;
    let rows = stmt.query_map([], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, String>(2)?,
            r.get::<_, String>(3)?,
        ))
    })?;
    let mut inv = Inventory::default();
    for row in rows {
        let (kind, subject, body, utc) = row?;
        let body: Value = serde_json::from_str(&body)?;
        let Some(slot) = slot_of(&subject, &body) else {
            continue;
        };
        let num = |v: Option<&Value>| v.and_then(Value::as_u64).unwrap_or(0) as u32;
        match kind.as_str() {
            "inventory.refill" => {
                let expiry = body
                    .get("expiry")
                    .and_then(Value::as_str)
                    .and_then(|d| NaiveDate::parse_from_str(d, "%Y-%m-%d").ok());
                inv.refill(slot, num(body.get("added")), expiry);
            }
            k if k.starts_with("dose.") => {
                let record = body
                    .get("record")
                    .and_then(|r| serde_json::from_value::<DoseRecord>(r.clone()).ok());
                if let Some(r) = record {
                    inv.dose(slot, r.occurrence, r.outcome, r.units);
                }
            }
            "dispenser.test_dispense" => {
                inv.take(slot, num(body.get("drops_seen")));
            }
            "dispenser.stray_drop" => {
                inv.take(slot, num(body.get("units")));
            }
            "inventory.alert" => {
                let issue: Option<StockIssue> = body
                    .get("reason")
                    .and_then(|r| serde_json::from_value(r.clone()).ok());
                let at = DateTime::parse_from_rfc3339(&utc).map(|t| t.with_timezone(&Utc));
                if let (Some(issue), Ok(at)) = (issue, at) {
                    inv.restore_alert(slot, issue, at);
                }
            }
            _ => {
                inv.acknowledge(slot);
            }
        }
    }
    Ok(inv)
}
