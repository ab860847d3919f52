//! Adherence: what became of each scheduled dose, per patient and medication, counted once by
//! its final state. Pure; the report and the periodic `adherence` summary both use it.

use super::engine::{effective, DoseRecord, Outcome};
use super::escalation::LATE_NOTICE_AFTER;
use serde::Serialize;
use std::collections::BTreeMap;

/// One patient's medication over a period.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Tally {
    /// Patient pseudonym.
    pub patient: String,
    /// Medication.
    pub medication: String,
    /// Scheduled occurrences with any record.
    pub scheduled: u32,
    /// As-needed doses dispensed.
    pub as_needed: u32,
    /// Taken (cup lifted or button pressed).
    pub taken: u32,
    /// Of those, taken more than the late-notice delay after their time.
    pub taken_late: u32,
    /// Dispensed and never picked up.
    pub not_taken: u32,
    /// Missed.
    pub missed: u32,
    /// Held on a vital sign.
    pub held: u32,
    /// Skipped by a caregiver.
    pub skipped: u32,
    /// Uncertain or interrupted dispenses awaiting reconciliation.
    pub uncertain: u32,
    /// Only failed attempts so far, or a dispense a caregiver found did not reach the patient
    /// (the window may still be open).
    pub failed: u32,
}

/// Tallies `(patient, record)` pairs, each patient's in the order they were recorded (a
/// caregiver's confirmation supersedes the uncertain records before it).
pub fn tally(records: impl IntoIterator<Item = (String, DoseRecord)>) -> Vec<Tally> {
    type Occurrences = BTreeMap<Option<String>, Vec<DoseRecord>>;
    let mut per: BTreeMap<(String, String), (Occurrences, Vec<DoseRecord>)> = BTreeMap::new();
    for (patient, rec) in records {
        let entry = per.entry((patient, rec.medication.clone())).or_default();
        match rec.occurrence {
            Some(o) => entry.0.entry(Some(o.to_rfc3339())).or_default().push(rec),
            // As-needed records are not tied to an occurrence: each counts on its own.
            None => entry.1.push(rec),
        }
    }
    per.into_iter()
        .map(|((patient, medication), (occurrences, prn))| {
            let mut t = Tally {
                patient,
                medication,
                ..Tally::default()
            };
            for r in effective(&prn) {
                match r.outcome {
                    Outcome::Dispensed => t.as_needed += 1,
                    Outcome::Taken => t.taken += 1,
                    Outcome::ConfirmedGiven => {
                        t.as_needed += 1;
                        t.taken += 1;
                    }
                    Outcome::Uncertain => t.uncertain += 1,
                    _ => {}
                }
            }
            for recs in occurrences.values() {
                t.scheduled += 1;
                let recs = effective(recs);
                let has = |o: Outcome| recs.iter().any(|r| r.outcome == o);
                if let Some(taken) = recs
                    .iter()
                    .find(|r| matches!(r.outcome, Outcome::Taken | Outcome::ConfirmedGiven))
                {
                    t.taken += 1;
                    let late = taken
                        .occurrence
                        .is_some_and(|o| taken.at - o > LATE_NOTICE_AFTER);
                    t.taken_late += u32::from(late);
                } else if has(Outcome::Dispensed) {
                    t.not_taken += 1;
                } else if has(Outcome::Missed) {
                    t.missed += 1;
                } else if has(Outcome::Held) {
                    t.held += 1;
                } else if has(Outcome::Skipped) {
                    t.skipped += 1;
                } else if has(Outcome::Uncertain) || has(Outcome::Dispensing) {
                    t.uncertain += 1;
                } else if has(Outcome::Failed) || has(Outcome::ConfirmedNotGiven) {
                    t.failed += 1;
                }
            }
            t
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{DateTime, Duration, Utc};

    fn rec(occ: &str, at_min: i64, outcome: Outcome) -> (String, DoseRecord) {
        let o = DateTime::parse_from_rfc3339(occ)
            .unwrap()
            .with_timezone(&Utc);
        (
            "p-1".into(),
            DoseRecord {
                medication: "A".into(),
                occurrence: Some(o),
                at: o + Duration::minutes(at_min),
                units: 1,
                outcome,
                slot: None,
                elapsed: None,
            },
        )
    }

    #[test]
    fn adherence_counts_each_occurrence_once_by_its_final_state() {
        let t = tally([
            rec("2026-03-02T08:00:00Z", 0, Outcome::Dispensing),
            rec("2026-03-02T08:00:00Z", 0, Outcome::Dispensed),
            rec("2026-03-02T08:00:00Z", 40, Outcome::Taken),
            rec("2026-03-02T20:00:00Z", 0, Outcome::Dispensed),
            rec("2026-03-03T08:00:00Z", 0, Outcome::Failed),
            rec("2026-03-03T08:00:00Z", 120, Outcome::Missed),
            rec("2026-03-03T20:00:00Z", 120, Outcome::Held),
        ]);
        assert_eq!(t.len(), 1);
        let t = &t[0];
        assert_eq!(
            (
                t.scheduled,
                t.taken,
                t.taken_late,
                t.not_taken,
                t.missed,
                t.held,
                t.failed
            ),
            (4, 1, 1, 1, 1, 1, 0)
        );
    }
}
