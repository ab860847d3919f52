//! Seals on the fridge readings, so the temperature history a pharmacist reads is as
//! tamper-evident as the audit log.
//!
//! Readings arrive every minute and live in their own table, outside the hash chain: chaining
//! each one would make the audit log mostly temperature rows. Instead, about every hour of
//! readings the recorder appends one `coldchain.readings` audit row holding the count and the
//! SHA-256 of the readings it covers (contiguous row ids, each seal starting where the last one
//! ended). The seal is in the chain, so changing, deleting or adding a sealed reading shows up
//! as a seal that no longer matches; `audit verify --db` checks every seal.

use super::{audit, StoreError};
use chrono::{DateTime, Utc};
use ring::digest;
use rusqlite::{params, Connection};
use serde::{Deserialize, Serialize};

/// The audit kind of a seal.
pub const SEAL_KIND: &str = "coldchain.readings";

/// Readings covered by one seal, by their own time.
pub const SEAL_EVERY: chrono::TimeDelta = chrono::TimeDelta::hours(1);

/// What a seal says about a run of readings.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Seal {
    /// First reading row id covered.
    pub from_id: i64,
    /// Last reading row id covered.
    pub to_id: i64,
    /// Readings in the range.
    pub count: i64,
    /// SHA-256 (hex) over the canonical lines of those readings, in id order.
    pub sha256: String,
}

/// The readings `from_id..=to_id` as they are stored now.
pub fn seal(conn: &Connection, from_id: i64, to_id: i64) -> Result<Seal, rusqlite::Error> {
    let mut stmt = conn.prepare_cached(
        "SELECT id, utc, vial, air, compressor_on, door_open, mains, mode, control, doubt
         FROM readings WHERE id BETWEEN ?1 AND ?2 ORDER BY id",
    )?;
    let mut rows = stmt.query(params![from_id, to_id])?;
    let mut hasher = digest::Context::new(&digest::SHA256);
    let mut count = 0;
    while let Some(r) = rows.next()? {
        // Debug formatting of f64 is the shortest text that reads back as the same value.
        // Rows from before schema 4 have neither control nor doubt; their lines are unchanged
        // so their seals still check.
        let control = r.get::<_, Option<f64>>(8)?;
        let doubt = r.get::<_, Option<String>>(9)?;
        let tail = match (control, doubt) {
            (None, None) => String::new(),
            (c, d) => format!("|{c:?}|{}", d.unwrap_or_default()),
        };
        let line = format!(
            "{}|{}|{:?}|{:?}|{}|{}|{}|{}{tail}\n",
            r.get::<_, i64>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, Option<f64>>(2)?,
            r.get::<_, Option<f64>>(3)?,
            r.get::<_, i64>(4)?,
            r.get::<_, i64>(5)?,
            r.get::<_, i64>(6)?,
            r.get::<_, String>(7)?,
        );
        hasher.update(line.as_bytes());
        count += 1;
    }
    Ok(Seal {
        from_id,
        to_id,
        count,
        sha256: audit::hex(hasher.finish().as_ref()),
    })
}

/// Decides when the next seal is due; the recorder keeps one.
#[derive(Clone, Debug, Default)]
pub struct Sealer {
    /// Last reading id already sealed (0: none).
    sealed_to: i64,
    /// Time of the first unsealed reading.
    since: Option<DateTime<Utc>>,
}

impl Sealer {
    /// Picks up where the database's last seal ended.
    pub fn resume(conn: &Connection) -> Result<Self, rusqlite::Error> {
        let body: Option<String> = conn
            .query_row(
                "SELECT body FROM audit WHERE kind = ?1 ORDER BY seq DESC LIMIT 1",
                params![SEAL_KIND],
                |r| r.get(0),
            )
            .map(Some)
            .or_else(|e| match e {
                rusqlite::Error::QueryReturnedNoRows => Ok(None),
                e => Err(e),
            })?;
        let sealed_to = body
            .and_then(|b| serde_json::from_str::<Seal>(&b).ok())
            .map_or(0, |s| s.to_id);
        Ok(Self {
            sealed_to,
            since: None,
        })
    }

    /// A reading was stored as row `id` at `at`: the range to seal now, if one is due.
    pub fn stored(&mut self, id: i64, at: DateTime<Utc>) -> Option<(i64, i64)> {
        let since = *self.since.get_or_insert(at);
        (at - since >= SEAL_EVERY).then_some((self.sealed_to + 1, id))
    }

    /// The last reading id already sealed (0: none).
    pub fn sealed_to(&self) -> i64 {
        self.sealed_to
    }

    /// The seal for `to_id` is committed.
    pub fn sealed(&mut self, to_id: i64) {
        self.sealed_to = to_id;
        self.since = None;
    }
}

/// What checking every seal found.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum SealCheck {
    /// Every seal matches.
    Intact {
        /// Seals checked.
        seals: i64,
        /// Readings they cover.
        sealed: i64,
        /// Readings newer than the last seal (not yet covered).
        unsealed: i64,
    },
    /// A seal no longer matches the readings it covers.
    Broken {
        /// The seal's audit row.
        seq: i64,
        /// What differs.
        detail: String,
    },
}

/// Checks every seal against the readings stored now. Run it on a chain that verified, so
/// the seals themselves are genuine.
pub fn check(conn: &Connection) -> Result<SealCheck, StoreError> {
    let seals = audit::rows(
        conn,
        &audit::Filter {
            kind: Some(SEAL_KIND.into()),
            ..audit::Filter::default()
        },
    )?;
    let mut next_from = 1;
    let mut sealed = 0;
    for row in &seals {
        let Ok(claimed) = serde_json::from_str::<Seal>(&row.body) else {
            return Ok(SealCheck::Broken {
                seq: row.seq,
                detail: "the seal's body is not a readings seal".into(),
            });
        };
        if claimed.from_id != next_from {
            return Ok(SealCheck::Broken {
                seq: row.seq,
                detail: format!(
                    "seal starts at reading {} but the previous one ended at {}",
                    claimed.from_id,
                    next_from - 1
                ),
            });
        }
        let now = seal(conn, claimed.from_id, claimed.to_id)?;
        if now != claimed {
            let what = if now.count != claimed.count {
                format!(
                    "{} readings stored where {} were sealed (deleted or added)",
                    now.count, claimed.count
                )
            } else {
                "a reading's content was changed".to_string()
            };
            return Ok(SealCheck::Broken {
                seq: row.seq,
                detail: format!(
                    "readings {}–{} (sealed at {}): {what}",
                    claimed.from_id, claimed.to_id, row.utc
                ),
            });
        }
        sealed += claimed.count;
        next_from = claimed.to_id + 1;
    }
    let unsealed: i64 = conn.query_row(
        "SELECT count(*) FROM readings WHERE id >= ?1",
        params![next_from],
        |r| r.get(0),
    )?;
    Ok(SealCheck::Intact {
        seals: seals.len() as i64,
        sealed,
        unsealed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::{Event, FridgeRecord};
    use crate::store::audit::ChainKey;
    use crate::store::recorder::Recorder;
    use std::time::Duration;

    fn minute(i: i64) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-03-02T00:00:00Z")
            .unwrap()
            .with_timezone(&Utc)
            + chrono::TimeDelta::minutes(i)
    }

    /// Stores the one-minute readings of minutes `from..to`.
    fn store(rec: &mut Recorder, from: i64, to: i64) {
        for i in from..to {
            let r = FridgeRecord {
                at: minute(i),
                mono: Duration::from_secs(i as u64 * 60),
                vial: Some(5.0 + (i % 7) as f64 * 0.1),
                air: Some(4.5),
                control: None,
                doubt: None,
                compressor_on: i % 2 == 0,
                compressor_starts: 0,
                door_open: false,
                mains: true,
                mode: crate::coldchain::control::ControlMode::Thermostat,
            };
            rec.record(&Event::Reading(r), Duration::ZERO, true, minute(i))
                .unwrap();
        }
    }

    /// A recorder that stored `minutes` one-minute readings.
    fn recorded(dir: &std::path::Path, minutes: i64) -> Recorder {
        let mut rec = Recorder::open(&dir.join("r.db"), ChainKey::unkeyed(), "t".into()).unwrap();
        store(&mut rec, 0, minutes);
        rec
    }

    #[test]
    fn readings_are_sealed_about_hourly_and_the_seals_check() {
        let dir = tempfile::tempdir().unwrap();
        let rec = recorded(dir.path(), 150);
        assert_eq!(
            check(rec.connection()).unwrap(),
            SealCheck::Intact {
                seals: 2,
                sealed: 140,
                unsealed: 10
            },
            "a seal with the group commit (ten readings) that holds the reading 60 min after the \
             first unsealed one: 1–70 and 71–140"
        );
    }

    /// The group-commit bound (`recorder::READINGS_PER_COMMIT`): a crash loses at most nine
    /// held readings, every event is durable when recorded, and an event commits the readings
    /// before it (the readings an alarm was based on are never the ones lost).
    #[test]
    fn a_power_cut_loses_at_most_nine_held_readings_and_never_an_event() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.db");
        let count = |sql: &str| -> i64 {
            let conn = crate::store::schema::open_read_only(&path).unwrap();
            conn.query_row(sql, [], |r| r.get(0)).unwrap()
        };
        let mut rec = Recorder::open(&path, ChainKey::unkeyed(), "t".into()).unwrap();
        store(&mut rec, 0, 13);
        assert_eq!(
            count("SELECT count(*) FROM readings"),
            10,
            "one group commit"
        );
        rec.record(
            &Event::Started { at: minute(13) },
            Duration::ZERO,
            true,
            minute(13),
        )
        .unwrap();
        assert_eq!(
            count("SELECT count(*) FROM readings"),
            13,
            "the event committed the three held readings before it"
        );
        store(&mut rec, 14, 23);
        // A power cut: the process ends without a stop row or any destructor.
        std::mem::forget(rec);
        assert_eq!(
            count("SELECT count(*) FROM readings"),
            13,
            "nine readings lost"
        );
        assert_eq!(
            count("SELECT count(*) FROM audit WHERE kind = 'system.start'"),
            1
        );
        // Readings further apart than one a minute are held for ten minutes at most.
        let mut rec = Recorder::open(&path, ChainKey::unkeyed(), "u".into()).unwrap();
        let before = count("SELECT count(*) FROM readings");
        for i in [30, 35, 40] {
            store(&mut rec, i, i + 1);
        }
        assert_eq!(count("SELECT count(*) FROM readings"), before + 3);
    }

    #[test]
    fn sealing_resumes_after_a_restart_where_the_last_seal_ended() {
        let dir = tempfile::tempdir().unwrap();
        drop(recorded(dir.path(), 90));
        // Reopen and go on from minute 90: the next seal starts at reading 71 and comes with
        // the group commit that holds the reading an hour into the new run (minute 150,
        // readings 151–160).
        let mut rec =
            Recorder::open(&dir.path().join("r.db"), ChainKey::unkeyed(), "u".into()).unwrap();
        store(&mut rec, 90, 200);
        assert_eq!(
            check(rec.connection()).unwrap(),
            SealCheck::Intact {
                seals: 2,
                sealed: 160,
                unsealed: 40
            }
        );
    }

    #[test]
    fn readings_tampering_is_caught_by_their_seal() {
        let dir = tempfile::tempdir().unwrap();
        let rec = recorded(dir.path(), 150);
        let conn = rec.connection();
        let second_seal: i64 = conn
            .query_row(
                "SELECT seq FROM audit WHERE kind = ?1 ORDER BY seq DESC LIMIT 1",
                params![SEAL_KIND],
                |r| r.get(0),
            )
            .unwrap();
        // The triggers refuse an edit…
        assert!(conn
            .execute("UPDATE readings SET vial = 4.0 WHERE id = 80", [])
            .is_err());
        // …so a tamperer drops them first: a warm reading made cool is caught.
        conn.execute_batch("DROP TRIGGER readings_no_update; DROP TRIGGER readings_no_delete;")
            .unwrap();
        conn.execute("UPDATE readings SET vial = 4.0 WHERE id = 80", [])
            .unwrap();
        match check(conn).unwrap() {
            SealCheck::Broken { seq, detail } => {
                assert_eq!(seq, second_seal);
                assert!(detail.contains("changed"), "{detail}");
            }
            other => panic!("{other:?}"),
        }
        // A deleted reading is counted missing.
        conn.execute("DELETE FROM readings WHERE id = 5", [])
            .unwrap();
        match check(conn).unwrap() {
            SealCheck::Broken { detail, .. } => {
                assert!(detail.contains("69 readings stored where 70"), "{detail}")
            }
            other => panic!("{other:?}"),
        }
    }
}
