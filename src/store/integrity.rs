//! The audit chain checked when the appliance starts, before it rebuilds dose history from it.
//!
//! A chain that no longer verifies means the records the dispenser would trust (what was given,
//! when) may have been changed: the appliance then raises an integrity alarm, keeps the fridge
//! running, and dispenses nothing until a pharmacist acknowledges the break. An acknowledged
//! break is remembered (its own audit row), so the next start follows the chain past it and
//! still finds any other.

use super::audit::{self, BreakKind, ChainKey, CheckpointRef, Verification};
use super::checkpoint;
use super::StoreError;
use rusqlite::{Connection, OptionalExtension};
use std::collections::BTreeSet;

/// Where the chain first fails to verify.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Break {
    /// The first row that does not verify (0: readings added from outside, not a row).
    pub seq: i64,
    /// What kind of break, for the pharmacist.
    pub detail: String,
}

/// Rows whose breaks a pharmacist has acknowledged.
pub fn acknowledged(conn: &Connection) -> Result<BTreeSet<i64>, StoreError> {
    let mut stmt = conn.prepare(
        "SELECT json_extract(body, '$.seq') FROM audit \
         WHERE kind = 'audit.integrity' AND reason = 'ACKNOWLEDGED'",
    )?;
    let seqs = stmt
        .query_map([], |r| r.get::<_, Option<i64>>(0))?
        .filter_map(|r| r.ok().flatten())
        .collect();
    Ok(seqs)
}

/// Verifies the whole chain against its stored checkpoints, past acknowledged breaks; None when
/// it is intact.
pub fn at_start(conn: &Connection, key: &ChainKey) -> Result<Option<Break>, StoreError> {
    let accepted = acknowledged(conn)?;
    let mut refs = Vec::new();
    for c in checkpoint::all(conn)? {
        if !c.signature_valid() && !accepted.contains(&c.seq) {
            return Ok(Some(Break {
                seq: c.seq,
                detail: format!("the checkpoint of row {} has an invalid signature", c.seq),
            }));
        }
        refs.push(CheckpointRef {
            seq: c.seq,
            head: c.head,
        });
    }
    // One pass over the rows as SQLite hands them over, never every row in memory at once.
    let mut stmt = conn.prepare(&format!(
        "SELECT {} FROM audit ORDER BY seq",
        audit::COLUMNS
    ))?;
    let mut failed = None;
    let mut unreadable = None;
    let rows = stmt
        .query_map([], audit::Row::from_sql)?
        .map_while(|r| r.map_err(|e| failed = Some(e)).ok())
        .inspect(|r| {
            // A dose row the history cannot read would be left out of it without a word: a
            // break too.
            let dose = r.kind.starts_with("dose.") && r.kind != "dose.alert";
            if unreadable.is_none() && dose && !accepted.contains(&r.seq) && !readable_dose(&r.body)
            {
                unreadable = Some(Break {
                    seq: r.seq,
                    detail: format!(
                        "row {}: a {} row the dose history cannot read",
                        r.seq, r.kind
                    ),
                });
            }
        });
    let verification = audit::verify_accepting(rows, key, &refs, &accepted, |hash, before| {
        audit::earlier_hash(conn, hash, before)
    });
    if let Some(e) = failed {
        return Err(e.into());
    }
    Ok(match verification {
        Verification::Intact { .. } => match unreadable {
            Some(b) => Some(b),
            None => foreign_readings(conn)?,
        },
        Verification::Broken {
            seq, kind, detail, ..
        } => Some(Break {
            seq,
            detail: format!("row {seq}: {} ({detail})", describe(kind)),
        }),
    })
}

/// Whether the last run wrote its stop row (None: no run yet). Read before this run writes its
/// own start.
pub fn last_run_stopped_cleanly(conn: &Connection) -> Result<Option<bool>, StoreError> {
    let last_kind: Option<String> = conn
        .query_row(
            "SELECT kind FROM audit WHERE kind IN ('system.start', 'system.stop') \
             ORDER BY seq DESC LIMIT 1",
            [],
            |r| r.get(0),
        )
        .optional()?;
    Ok(last_kind.map(|k| k == "system.stop"))
}

/// Readings the appliance did not write: after a clean stop (which seals every reading) none
/// may be unsealed, so any that are were added to the database from outside (a back-dated
/// reading would otherwise be sealed as genuine by the next run). After an unclean stop the
/// unsealed tail is the dead run's own and is sealed by this one.
fn foreign_readings(conn: &Connection) -> Result<Option<Break>, StoreError> {
    if last_run_stopped_cleanly(conn)? != Some(true) {
        return Ok(None);
    }
    let sealed_to = super::readings::Sealer::resume(conn)?.sealed_to();
    let (count, first): (i64, Option<i64>) = conn.query_row(
        "SELECT count(*), min(id) FROM readings WHERE id > ?1",
        [sealed_to],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    Ok(first.map(|first| Break {
        // Not an audit row: the break names the readings (acknowledging it never excuses a
        // change to the chain itself).
        seq: 0,
        detail: format!(
            "{count} reading(s) from id {first} appeared after the last clean stop, which sealed \
             every reading: they were not written by the appliance"
        ),
    }))
}

/// Whether a dose row's body holds what the history rebuild needs (its patient and record).
fn readable_dose(body: &str) -> bool {
    serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .is_some_and(|b| {
            b.get("patient").and_then(|p| p.as_str()).is_some()
                && b.get("record").is_some_and(|r| {
                    serde_json::from_value::<crate::dosing::engine::DoseRecord>(r.clone()).is_ok()
                })
        })
}

fn describe(kind: BreakKind) -> &'static str {
    match kind {
        BreakKind::Changed => "changed",
        BreakKind::Missing => "missing",
        BreakKind::Reordered => "out of order",
        BreakKind::Truncated => "rows at the end are gone",
        BreakKind::CheckpointMismatch => "differs from a signed checkpoint",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dose_row_the_history_cannot_read_is_a_break_not_a_silent_gap() {
        assert!(readable_dose(
            r#"{"patient":"p-1","record":{"medication":"M","occurrence":null,"at":"2026-03-02T08:00:00Z","units":1,"outcome":"dispensed"}}"#
        ));
        assert!(!readable_dose(
            r#"{"patient":"p-1","record":{"medication":"M"}}"#
        ));
        assert!(!readable_dose(r#"{"record":{}}"#));
        assert!(!readable_dose("not json"));
    }
}
