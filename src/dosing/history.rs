//! Dose records kept per patient.
//!
//! Every rule (once per occurrence, the daily maximum, PRN spacing, the weekly guard) is a
//! rule about one patient's doses. Two patients in one cabinet may take the same medication at
//! the same times, so records are never looked up by medication name alone: the engine only
//! ever sees the history of the patient it decides for.

use super::engine::DoseRecord;
use std::collections::BTreeMap;

/// Dose records per patient pseudonym, oldest first within each.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DoseHistory(BTreeMap<String, Vec<DoseRecord>>);

impl DoseHistory {
    /// One patient's records (empty for a patient with none).
    pub fn of(&self, patient: &str) -> &[DoseRecord] {
        self.0.get(patient).map_or(&[], Vec::as_slice)
    }

    /// Appends a record of `patient`'s.
    pub fn push(&mut self, patient: &str, record: DoseRecord) {
        self.0.entry(patient.to_string()).or_default().push(record);
    }

    /// How many records in all. Records are only ever appended, so a count that has not
    /// changed means nothing has.
    pub fn len(&self) -> usize {
        self.0.values().map(Vec::len).sum()
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
            .flat_map(|(p, rs)| rs.iter().map(move |r| (p.as_str(), r)))
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
