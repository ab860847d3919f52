//! Dose records kept per patient.
//!
//! Every rule (once per occurrence, the daily maximum, PRN spacing, the weekly guard) is a
//! rule about one patient's doses. Two patients in one cabinet may take the same medication at
//! the same times, so records are never looked up by medication name alone: the engine only
//! ever sees the history of the patient it decides for.
//!
//! An appliance runs for years and every rule looks back a bounded time (a window, a rolling
//! 24 h, the weekly guard, a medication's spacing), so the oldest records may be let go from
//! memory ([`DoseHistory::forget_before`]); the store keeps every one. What was let go is
//! remembered as a count and an instant: every record with any of its instants (when it
//! happened, where it falls on the elapsed timeline, its occurrence) at or after
//! [`DoseHistory::complete_from`] is still held. A rule that would look further back (a clock a
//! person set back by months, a new schedule with a longer spacing) must first have the
//! records read back from the store ([`DoseHistory::restore_forgotten`]); the dispenser core
//! asks [`DoseHistory::holds_from`] before every decision.

use super::engine::{effective_positions, DoseRecord, Outcome};
use chrono::{DateTime, Utc};
use std::collections::BTreeMap;

/// Dose records per patient pseudonym, oldest first within each.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DoseHistory {
    patients: BTreeMap<String, Records>,
    /// Bumped by every append and every record let go: a cache keyed on it knows when to look
    /// again.
    version: u64,
}

/// One patient's records, and which of them stand.
#[derive(Clone, Debug, Default, PartialEq)]
struct Records {
    all: Vec<DoseRecord>,
    /// Positions in `all` of the records [`super::engine::effective`] keeps, worked out again at each append
    /// (a few a day) instead of at each look (every planning round, every minute).
    standing: Vec<usize>,
    /// How many of this patient's oldest records were let go: always a prefix, so `all` is
    /// the store's sequence from this position on.
    forgotten: usize,
    /// Every record with an instant at or after this is held (None: every record is).
    complete_from: Option<DateTime<Utc>>,
}

/// The store's records do not line up with the ones held: nothing was changed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the stored dose records of {patient} do not continue into the ones in memory ({detail})")]
pub struct Misaligned {
    /// Whose.
    pub patient: String,
    /// What did not match.
    pub detail: String,
}

impl DoseHistory {
    /// One patient's records (empty for a patient with none).
    pub fn of(&self, patient: &str) -> &[DoseRecord] {
        self.patients.get(patient).map_or(&[], |r| r.all.as_slice())
    }

    /// One patient's records that stand: [`super::engine::effective`] of [`DoseHistory::of`], kept up to date
    /// as records are appended.
    pub fn standing(&self, patient: &str) -> Vec<&DoseRecord> {
        self.patients.get(patient).map_or_else(Vec::new, |r| {
            r.standing.iter().map(|&i| &r.all[i]).collect()
        })
    }

    /// Appends a record of `patient`'s.
    pub fn push(&mut self, patient: &str, record: DoseRecord) {
        let records = self.patients.entry(patient.to_string()).or_default();
        records.all.push(record);
        records.standing = effective_positions(&records.all);
        self.version += 1;
    }

    /// How many records are held.
    pub fn len(&self) -> usize {
        self.patients.values().map(|r| r.all.len()).sum()
    }

    /// Changes with every append and every record let go, so an answer worked out from the
    /// history is still right while this has not changed.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// Since when every record of `patient` is held (None: every record ever made).
    pub fn complete_from(&self, patient: &str) -> Option<DateTime<Utc>> {
        self.patients.get(patient).and_then(|r| r.complete_from)
    }

    /// Whether every record of `patient` with an instant at or after `from` is held: what a
    /// rule looking back to `from` needs.
    pub fn holds_from(&self, patient: &str, from: DateTime<Utc>) -> bool {
        self.complete_from(patient).is_none_or(|c| c <= from)
    }

    /// Whether records were let go (the store holds more than memory).
    pub fn forgot_any(&self) -> bool {
        self.patients.values().any(|r| r.forgotten > 0)
    }

    /// Lets go of each patient's oldest records whose every instant is before `cutoff`, up to
    /// the first that is not (a prefix, so what is held stays the store's sequence from some
    /// position on). An uncertain or interrupted dispense no caregiver has reconciled is never
    /// let go, and neither is anything after it. Returns how many were let go.
    pub fn forget_before(&mut self, cutoff: DateTime<Utc>) -> usize {
        let mut gone = 0;
        for records in self.patients.values_mut() {
            let open = |i: usize| {
                records.standing.binary_search(&i).is_ok()
                    && matches!(
                        records.all[i].outcome,
                        Outcome::Uncertain | Outcome::Dispensing
                    )
            };
            let n = records
                .all
                .iter()
                .enumerate()
                .take_while(|(i, r)| !open(*i) && before(r, cutoff))
                .count();
            if n == 0 {
                continue;
            }
            records.all.drain(..n);
            records.standing = effective_positions(&records.all);
            records.forgotten += n;
            records.complete_from = Some(records.complete_from.map_or(cutoff, |c| c.max(cutoff)));
            gone += n;
        }
        if gone > 0 {
            self.version += 1;
        }
        gone
    }

    /// Takes back what was let go from `stored`, every record as the store holds it (oldest
    /// first per patient; the newest records may not have reached it yet). The stored records
    /// that follow the forgotten ones must be the ones held, in order; if they are not, nothing
    /// changes.
    pub fn restore_forgotten(&mut self, stored: &DoseHistory) -> Result<(), Misaligned> {
        for (patient, records) in &self.patients {
            if records.forgotten == 0 {
                continue;
            }
            let full = stored.of(patient);
            let misaligned = |detail: String| Misaligned {
                patient: patient.clone(),
                detail,
            };
            if full.len() < records.forgotten {
                return Err(misaligned(format!(
                    "{} stored, {} let go",
                    full.len(),
                    records.forgotten
                )));
            }
            let after = &full[records.forgotten..];
            let overlap = after.len().min(records.all.len());
            if let Some(i) = (0..overlap).find(|&i| after[i] != records.all[i]) {
                return Err(misaligned(format!(
                    "record {} differs",
                    records.forgotten + i
                )));
            }
        }
        for (patient, records) in self.patients.iter_mut() {
            if records.forgotten == 0 {
                continue;
            }
            let mut all = stored.of(patient)[..records.forgotten].to_vec();
            all.append(&mut records.all);
            records.all = all;
            records.standing = effective_positions(&records.all);
            records.forgotten = 0;
            records.complete_from = None;
        }
        self.version += 1;
        Ok(())
    }

    /// Whether there is no record at all.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Patients with records.
    pub fn patients(&self) -> impl Iterator<Item = &str> {
        self.patients.keys().map(String::as_str)
    }

    /// Every record with its patient, patient by patient.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &DoseRecord)> {
        self.patients
            .iter()
            .flat_map(|(p, rs)| rs.all.iter().map(move |r| (p.as_str(), r)))
    }
}

/// Whether every instant of `r` is before `cutoff`.
fn before(r: &DoseRecord, cutoff: DateTime<Utc>) -> bool {
    r.at < cutoff && r.elapsed_at() < cutoff && r.occurrence.is_none_or(|o| o < cutoff)
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

    fn at(h: i64) -> DateTime<Utc> {
        "2026-03-02T00:00:00Z".parse::<DateTime<Utc>>().unwrap() + Duration::hours(h)
    }

    fn rec(h: i64, outcome: Outcome) -> DoseRecord {
        DoseRecord {
            medication: "Metformin".into(),
            occurrence: Some(at(h)),
            at: at(h),
            units: 1,
            outcome,
            slot: Some(1),
            elapsed: None,
        }
    }

    #[test]
    fn only_a_prefix_of_records_wholly_before_the_cutoff_is_let_go_and_never_an_open_dispense() {
        let mut h = DoseHistory::default();
        for r in [
            rec(0, Outcome::Dispensed),
            rec(1, Outcome::Taken),
            rec(12, Outcome::Uncertain),
            rec(24, Outcome::Dispensed),
        ] {
            h.push("p-1", r);
        }
        // An old record whose elapsed instant is recent (the wall clock was behind then).
        let mut late = rec(2, Outcome::Dispensed);
        late.elapsed = Some(at(500));
        h.push("p-2", rec(0, Outcome::Missed));
        h.push("p-2", late);
        h.push("p-2", rec(3, Outcome::Missed));
        let version = h.version();
        assert_eq!(h.forget_before(at(100)), 3, "p-1's first two, p-2's first");
        assert!(h.version() > version, "caches see the change");
        assert_eq!(
            h.of("p-1")[0].outcome,
            Outcome::Uncertain,
            "open: kept, and what follows"
        );
        assert_eq!(
            h.of("p-2").len(),
            2,
            "kept from the recent elapsed instant on"
        );
        assert_eq!(h.complete_from("p-1"), Some(at(100)));
        assert!(h.holds_from("p-1", at(100)) && !h.holds_from("p-1", at(99)));
        // Once the uncertain dispense is reconciled it may go, with what follows it.
        h.push("p-1", rec(12, Outcome::ConfirmedGiven));
        assert_eq!(h.forget_before(at(100)), 3);
        assert_eq!(h.of("p-1"), &[] as &[DoseRecord]);
        // A later cutoff that is earlier (the clock went back) does not lower the mark.
        h.forget_before(at(50));
        assert_eq!(h.complete_from("p-1"), Some(at(100)));
        assert!(h.forgot_any());
    }

    #[test]
    fn what_was_let_go_comes_back_from_the_store_in_place_or_not_at_all() {
        let records: Vec<DoseRecord> = (0..10).map(|i| rec(i * 12, Outcome::Dispensed)).collect();
        let whole: DoseHistory = records
            .iter()
            .map(|r| ("p-1".to_string(), r.clone()))
            .collect();
        let mut h = whole.clone();
        assert_eq!(h.forget_before(at(60)), 5);
        // The store may not yet hold the newest record.
        let stored: DoseHistory = records[..9]
            .iter()
            .map(|r| ("p-1".to_string(), r.clone()))
            .collect();
        // A store that does not line up (a record edited) changes nothing.
        let mut edited = records[..9].to_vec();
        edited[6].units = 2;
        let edited: DoseHistory = edited.into_iter().map(|r| ("p-1".to_string(), r)).collect();
        let before = h.clone();
        assert!(h.restore_forgotten(&edited).is_err());
        assert!(h.restore_forgotten(&DoseHistory::default()).is_err());
        assert_eq!(h, before);
        h.restore_forgotten(&stored).unwrap();
        assert_eq!(h.of("p-1"), whole.of("p-1"));
        assert_eq!(h.standing("p-1"), whole.standing("p-1"));
        assert_eq!(h.complete_from("p-1"), None);
        assert!(!h.forgot_any());
    }

    /// A scheduled medication twice a day, a weekly guarded one, one every 72 h and an
    /// as-needed one: every rule that looks back.
    fn reach_schedule() -> crate::dosing::schedule::Schedule {
        let src = "[patient]\nid = \"p-1\"\ntimezone = \"Europe/Berlin\"\n\
            [[medication]]\nname = \"A\"\nslot = 0\nunits = 1\ntimes = [\"08:00\", \"20:00\"]\nmax_daily_units = 2\n\
            [[medication]]\nname = \"Methotrexate\"\nslot = 2\nunits = 4\ntimes = [\"09:00\"]\ndays = [\"mon\"]\nlate = \"12h\"\n\
            [[medication]]\nname = \"B\"\nslot = 3\nunits = 1\nevery = \"72h\"\nfirst = \"2026-03-02T07:00\"\n\
            [[medication]]\nname = \"Paracetamol\"\nslot = 4\nunits = 2\nprn = { min_interval = \"4h\", max_per_24h = 4 }\nmax_daily_units = 8\n";
        crate::dosing::schedule::Schedule::parse(src, std::path::Path::new("reach.toml"))
            .unwrap_or_else(|e| panic!("{e:?}"))
    }

    /// Each look-back rule at its edge: the records that make it refuse are inside the
    /// medication's reach, so a history cut there refuses alike.
    #[test]
    fn every_look_back_rule_keeps_what_makes_it_refuse() {
        use crate::dosing::engine::{self, Decision, Now, PrnRequest, Reason, Role};
        let s = reach_schedule();
        let dose = |m: &crate::dosing::schedule::Medication, at: DateTime<Utc>| DoseRecord {
            medication: m.name.clone(),
            occurrence: None,
            at,
            units: m.units,
            outcome: Outcome::Dispensed,
            slot: Some(*m.slot.get_ref()),
            elapsed: Some(at),
        };
        let request = PrnRequest {
            actor: "p".into(),
            role: Role::Patient,
            override_reason: None,
        };
        // (medication, now, hours before now of its earlier doses, the refusal)
        let cases = [
            // Four as-needed doses in the last 23 h: the rolling 24 h maximum.
            (
                3,
                "2026-03-10T12:00:00Z",
                vec![23, 18, 13, 8],
                Reason::PrnMax24h,
            ),
            // Every 72 h (07:00 Berlin from 2 March): a dose 50 h before the 8 March window
            // is inside its 54 h spacing.
            (
                2,
                "2026-03-08T06:00:00Z",
                vec![50],
                Reason::AlreadyDispensed,
            ),
            // The weekly guard: a dose five and a half days before Monday's window.
            (1, "2026-03-09T08:30:00Z", vec![132], Reason::WeeklyGuard),
        ];
        for (i, now, before, reason) in cases {
            let (m, rec) = &s.medications[i];
            let wall: DateTime<Utc> = now.parse().unwrap();
            let now = Now {
                wall,
                elapsed: wall,
            };
            let mut h = DoseHistory::default();
            for hours in before {
                h.push("p-1", dose(m, wall - Duration::hours(hours)));
            }
            h.forget_before(engine::needed_from(now, [m]));
            let d = match rec {
                Some(rec) => engine::decide_on(m, rec, s.tz, now, &h.standing("p-1"), &[], true),
                None => engine::decide_prn(m, s.tz, now, h.of("p-1"), &[], true, &request),
            };
            assert!(
                matches!(&d, Decision::Refuse { reason: r, .. } if *r == reason),
                "{}: {d:?}",
                m.name
            );
        }
    }

    proptest! {
        /// The rule behind letting records go: whatever the records and the two clocks, a
        /// history cut at [`crate::dosing::engine::needed_from`] a medication decides it
        /// exactly as the whole history does.
        #[test]
        fn records_older_than_the_rules_reach_never_change_a_decision(
            steps in proptest::collection::vec(
                // Outcomes past the list are plain dispenses: an open (uncertain) dispense holds
                // back everything after it, so it must be rare for records to be let go.
                (0usize..4, 0usize..30, 0i64..(12 * 60), -600i64..600),
                1..120,
            ),
            after in 0i64..(8 * 24 * 60),
            target in 0usize..4,
            inside in 0.0f64..1.0,
            drift in -(2 * 24 * 60i64)..(2 * 24 * 60),
        ) {
            use crate::dosing::engine::{self, Now, PrnRequest, Role};
            let s = reach_schedule();
            let mut whole = DoseHistory::default();
            let mut t = at(0);
            for (med, outcome, step, jitter) in steps {
                t += Duration::minutes(step);
                let (m, rec) = &s.medications[med];
                let occurrence = rec.as_ref().and_then(|rec| {
                    engine::windows(m, rec, s.tz, t - Duration::days(8), t + Duration::days(1))
                        .into_iter()
                        .filter(|w| w.opens <= t)
                        .map(|w| w.occurrence)
                        .next_back()
                });
                whole.push("p-1", DoseRecord {
                    medication: m.name.clone(),
                    occurrence,
                    at: t,
                    units: m.units,
                    outcome: OUTCOMES.get(outcome).copied().unwrap_or(Outcome::Dispensed),
                    slot: Some(*m.slot.get_ref()),
                    elapsed: Some(t + Duration::minutes(jitter)),
                });
            }
            // Now falls inside a window of one medication (where decisions are made), or
            // anywhere for the as-needed one.
            let mut wall = t + Duration::minutes(after);
            let (m, rec) = &s.medications[target];
            if let Some(rec) = rec {
                let w = engine::windows(m, rec, s.tz, wall, wall + Duration::days(8))
                    .into_iter()
                    .find(|w| w.closes > wall)
                    .expect("a window within 8 days");
                let span = (w.closes - w.opens).num_seconds() as f64;
                wall = w.opens + Duration::seconds((span * inside) as i64);
            }
            let now = Now { wall, elapsed: wall + Duration::minutes(drift) };
            let request = PrnRequest { actor: "p".into(), role: Role::Patient, override_reason: None };
            // Each medication's own reach must be enough for it (the appliance keeps the
            // longest of them all).
            for (m, rec) in &s.medications {
                let cut = engine::needed_from(now, [m]);
                let mut kept = whole.clone();
                kept.forget_before(cut);
                prop_assert!(kept.holds_from("p-1", cut));
                let (a, b) = match rec {
                    Some(rec) => (
                        engine::decide_on(m, rec, s.tz, now, &whole.standing("p-1"), &[], true),
                        engine::decide_on(m, rec, s.tz, now, &kept.standing("p-1"), &[], true),
                    ),
                    None => (
                        engine::decide_prn(m, s.tz, now, whole.of("p-1"), &[], true, &request),
                        engine::decide_prn(m, s.tz, now, kept.of("p-1"), &[], true, &request),
                    ),
                };
                prop_assert_eq!(a, b, "{} at {}", m.name, wall);
            }
        }

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
