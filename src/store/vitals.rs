//! Vital readings as the store holds them: the last day's at start-up (holds look back hours),
//! and the ones another process (`medbox vitals add`) recorded while the appliance runs.

use super::StoreError;
use crate::dosing::engine::VitalReading;
use chrono::{DateTime, Utc};
use rusqlite::{params, Connection};

fn reading(body: &str) -> Option<VitalReading> {
    let v: serde_json::Value = serde_json::from_str(body).ok()?;
    serde_json::from_value(v.get("reading")?.clone()).ok()
}

/// Readings measured after `since`, oldest first.
pub fn recent(conn: &Connection, since: DateTime<Utc>) -> Result<Vec<VitalReading>, StoreError> {
    let mut stmt =
        conn.prepare("SELECT body FROM audit WHERE kind = 'vitals.reading' ORDER BY seq")?;
    let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
    let mut out = Vec::new();
    for body in rows {
        if let Some(r) = reading(&body?) {
            if r.at > since {
                out.push(r);
            }
        }
    }
    Ok(out)
}

/// Readings recorded by other processes (another boot id) after row `after`, with their rows.
pub fn foreign(
    conn: &Connection,
    boot_id: &str,
    after: i64,
) -> Result<Vec<(i64, VitalReading)>, StoreError> {
    let mut stmt = conn.prepare(
        "SELECT seq, body FROM audit WHERE kind = 'vitals.reading' AND seq > ?1 AND boot_id <> ?2 ORDER BY seq",
    )?;
    let rows = stmt.query_map(params![after, boot_id], |r| {
        Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (seq, body) = row?;
        if let Some(r) = reading(&body) {
            out.push((seq, r));
        }
    }
    Ok(out)
}

/// The other half of a blood-pressure measurement: the latest recorded reading of the opposite
/// pressure from the same source, for the same patient, taken at the same instant (a monitor
/// reports systolic and diastolic of one measurement together). Looks at the last few readings
/// only: a partner arrives right after its other half or not at all.
pub fn partner(conn: &Connection, r: &VitalReading) -> Result<Option<VitalReading>, StoreError> {
    use crate::dosing::schedule::Vital;
    let other = match r.vital {
        Vital::SystolicBp => Vital::DiastolicBp,
        Vital::DiastolicBp => Vital::SystolicBp,
        _ => return Ok(None),
    };
    let mut stmt = conn.prepare(
        "SELECT body FROM audit WHERE kind = 'vitals.reading' ORDER BY seq DESC LIMIT 16",
    )?;
    let rows = stmt.query_map([], |row| row.get::<_, String>(0))?;
    for body in rows {
        if let Some(p) = reading(&body?) {
            if p.vital == other && p.at == r.at && p.source == r.source && p.patient == r.patient {
                return Ok(Some(p));
            }
        }
    }
    Ok(None)
}

/// The newest audit row, so polling for foreign readings starts after what is already known.
pub fn head(conn: &Connection) -> Result<i64, StoreError> {
    Ok(conn.query_row("SELECT coalesce(max(seq), 0) FROM audit", [], |r| r.get(0))?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dosing::engine::Quality;
    use crate::dosing::schedule::Vital;
    use crate::events::Event;
    use crate::store::audit::ChainKey;
    use crate::store::recorder::Recorder;
    use std::time::Duration;

    #[test]
    fn readings_other_processes_record_are_found_once_and_recent_ones_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.db");
        let mut appliance = Recorder::open(&path, ChainKey::unkeyed(), "boot-a".into()).unwrap();
        let mut cli = Recorder::open(&path, ChainKey::unkeyed(), "cli-1".into()).unwrap();
        let now = Utc::now();
        let reading = |v: f64, source: &str| Event::Vital {
            at: now,
            reading: VitalReading {
                vital: Vital::HeartRate,
                value: v,
                at: now,
                quality: Quality::Good,
                source: source.into(),
                patient: Some("p-0042".into()),
            },
        };
        let start = head(appliance.connection()).unwrap();
        appliance
            .record(&reading(60.0, "monitor"), Duration::ZERO, true, now)
            .unwrap();
        cli.record(&reading(52.0, "n-4"), Duration::ZERO, true, now)
            .unwrap();
        let found = foreign(appliance.connection(), appliance.boot_id(), start).unwrap();
        assert_eq!(found.len(), 1);
        assert_eq!(
            (found[0].1.value, found[0].1.source.as_str()),
            (52.0, "n-4")
        );
        assert!(foreign(appliance.connection(), "boot-a", found[0].0)
            .unwrap()
            .is_empty());
        let all = recent(appliance.connection(), now - chrono::Duration::hours(1)).unwrap();
        assert_eq!(all.len(), 2);
    }
}
