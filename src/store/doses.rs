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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::DropReport;
    use crate::dosing::dispenser::{
        Command, Dispenser, Effect, Geometry, Instant, Restored, Turned,
    };
    use crate::dosing::schedule::Schedule;
    use crate::store::audit::ChainKey;
    use crate::store::recorder::Recorder;
    use std::time::Duration as StdDuration;

    /// What the dispenser let go from memory comes back from the store in place: the records
    /// it made, recorded through the real recorder (JSON in SQLite and back), line up with the
    /// ones it holds, so [`DoseHistory::restore_forgotten`] accepts them.
    #[test]
    fn the_records_a_dispenser_made_come_back_from_the_store_exactly_as_it_holds_them() {
        let src = "[patient]\nid = \"p-1\"\ntimezone = \"Europe/Berlin\"\n\
            [[medication]]\nname = \"Metformin\"\nslot = 0\nunits = 1\ntimes = [\"08:00\", \"20:00\"]\n\
            [[medication]]\nname = \"Paracetamol\"\nslot = 4\nunits = 2\nprn = { min_interval = \"4h\", max_per_24h = 4 }\n";
        let schedule = Schedule::parse(src, std::path::Path::new("t.toml")).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let mut rec =
            Recorder::open(&dir.path().join("d.db"), ChainKey::unkeyed(), "t".into()).unwrap();
        let start: DateTime<Utc> = "2026-03-23T06:00:00Z".parse().unwrap();
        let at = |minutes: i64| Instant {
            wall: start + chrono::Duration::minutes(minutes),
            mono: StdDuration::from_secs(minutes as u64 * 60),
        };
        let mut d = Dispenser::on_restart(
            Restored {
                schedules: vec![schedule],
                since: Some(start),
                ..Restored::default()
            },
            Geometry {
                slots: 8,
                capacity: 250,
            },
            at(0),
        );
        let mut queue: std::collections::VecDeque<Effect> = d.start(at(0)).into();
        for slot in [0, 4] {
            queue.extend(d.on_command(
                Command::Refill {
                    slot,
                    added: 100,
                    expiry: None,
                    actor: "pharmacist-1".into(),
                    note: "lot 1".into(),
                },
                None,
                at(0),
            ));
        }
        for minute in (0..6 * 24 * 60).step_by(10) {
            let now = at(minute);
            queue.extend(d.on_tick(now));
            if minute % (9 * 60) == 0 {
                queue.extend(d.on_command(
                    Command::Prn {
                        patient: "p-1".into(),
                        medication: "Paracetamol".into(),
                        request: crate::dosing::engine::PrnRequest {
                            actor: "p-1".into(),
                            role: crate::dosing::engine::Role::Patient,
                            override_reason: None,
                        },
                    },
                    None,
                    now,
                ));
            }
            while let Some(effect) = queue.pop_front() {
                match effect {
                    Effect::Emit(e) => {
                        rec.record(&e, now.mono, true, now.wall).unwrap();
                    }
                    Effect::Home => queue.extend(d.on_homed(Ok(3), now)),
                    Effect::Turn { slot, units, .. } => queue.extend(d.on_drop(
                        Turned::Done(Ok(DropReport {
                            slot,
                            requested: units,
                            drops_seen: units,
                            stray_drops: 0,
                            stray_from: None,
                            returned_home: true,
                        })),
                        now,
                    )),
                    _ => {}
                }
            }
            // Every other dose is taken from the cup.
            if minute % (24 * 60) == 12 * 60 {
                queue.extend(d.on_tray(true, now));
                queue.extend(d.on_tray(false, now));
            }
        }
        let stored = history(rec.connection()).unwrap();
        let held = d.history();
        assert!(held.of("p-1").len() > 20, "{:?}", held.of("p-1"));
        assert_eq!(stored.of("p-1"), held.of("p-1"));
        let mut shortened = held.clone();
        let cutoff = start + chrono::Duration::days(4);
        assert!(shortened.forget_before(cutoff) > 10);
        shortened.restore_forgotten(&stored).unwrap();
        assert_eq!(shortened.of("p-1"), held.of("p-1"));
    }
}
