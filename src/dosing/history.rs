//! Dose records kept per patient.
//!
//! Every rule (once per occurrence, the daily maximum, PRN spacing, the weekly guard) is a
//! rule about one patient's doses. Two patients in one cabinet may take the same medication at
//! the same times, so records are never looked up by medication name alone: the engine only
//! ever sees the history of the patient it decides for.

use super::engine::{effective_positions, DoseRecord};
use std::collections::BTreeMap;

/// Dose records per patient pseudonym, oldest first within each.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DoseHistory(BTreeMap<String, Records>);

/// One patient's records, and which of them stand.
#[derive(Clone, Debug, Default, PartialEq)]
struct Records {
    all: Vec<DoseRecord>,
    /// Positions in `all` of the records [`super::engine::effective`] keeps, worked out again at each append
    /// (a few a day) instead of at each look (every planning round, every minute).
    standing: Vec<usize>,
}

impl DoseHistory {
    /// One patient's records (empty for a patient with none).
    pub fn of(&self, patient: &str) -> &[DoseRecord] {
        self.0.get(patient).map_or(&[], |r| r.all.as_slice())
    }

    /// One patient's records that stand: [`super::engine::effective`] of [`DoseHistory::of`], kept up to date
    /// as records are appended.
    pub fn standing(&self, patient: &str) -> Vec<&DoseRecord> {
        self.0.get(patient).map_or_else(Vec::new, |r| {
            r.standing.iter().map(|&i| &r.all[i]).collect()
        })
    }

    /// Appends a record of `patient`'s.
    pub fn push(&mut self, patient: &str, record: DoseRecord) {
        let records = self.0.entry(patient.to_string()).or_default();
        records.all.push(record);
        records.standing = effective_positions(&records.all);
    }

    /// How many records in all. Records are only ever appended, so a count that has not
    /// changed means nothing has.
    pub fn len(&self) -> usize {
        self.0.values().map(|r| r.all.len()).sum()
    }

    /// Whether there is no record at all.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Patients with records.
    pub fn patients(&self) -> impl Iterator<Item = &str> {
        self.0.keys().map(String::as_str)
    }

    /// Every record with its patient, patient by patient.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &DoseRecord)> {
        self.0
            .iter()
            .flat_map(|(p, rs)| rs.all.iter().map(move |r| (p.as_str(), r)))
    }
}

impl FromIterator<(String, DoseRecord)> for DoseHistory {
    fn from_iter<I: IntoIterator<Item = (String, DoseRecord)>>(iter: I) -> Self {
        let mut h = Self::default();
        for (p, r) in iter {
            h.push(&p, r);
        }
        h
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dosing::engine::{effective, Outcome};
    use chrono::{DateTime, Duration, Utc};
    use proptest::prelude::*;

    const OUTCOMES: [Outcome; 11] = [
        Outcome::Dispensed,
        Outcome::Taken,
        Outcome::Missed,
        Outcome::Held,
        Outcome::Skipped,
        Outcome::Failed,
        Outcome::Uncertain,
        Outcome::Dispensing,
        Outcome::ConfirmedGiven,
        Outcome::ConfirmedNotGiven,
        Outcome::Taken,
    ];

    fn record(med: usize, occurrence: Option<u8>, outcome: usize, n: i64) -> DoseRecord {
        let t0: DateTime<Utc> = "2026-03-02T08:00:00Z".parse().unwrap();
        DoseRecord {
            // Names that normalise alike, so identity (not spelling) decides what stands.
            medication: ["Metformin", "metformin ", "Warfarin"][med].into(),
            occurrence: occurrence.map(|o| t0 + Duration::hours(i64::from(o) * 12)),
            at: t0 + Duration::minutes(n),
            units: 1,
            outcome: OUTCOMES[outcome],
            slot: Some(1),
            elapsed: None,
        }
    }

    proptest! {
        /// The index kept as records arrive says what working it out from the whole history
        /// says, for each patient, after every append.
        #[test]
        fn the_standing_records_kept_as_records_arrive_are_those_of_the_whole_history(
            pushes in proptest::collection::vec(
                (0usize..2, 0usize..3, proptest::option::of(0u8..4), 0usize..11),
                1..60,
            )
        ) {
            let mut h = DoseHistory::default();
            for (n, (patient, med, occurrence, outcome)) in pushes.into_iter().enumerate() {
                let patient = ["p-1", "p-2"][patient];
                h.push(patient, record(med, occurrence, outcome, n as i64));
                for p in ["p-1", "p-2"] {
                    prop_assert_eq!(h.standing(p), effective(h.of(p)));
                }
            }
        }
    }
}
