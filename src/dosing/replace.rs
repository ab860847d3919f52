//! Replacing a patient's schedule while the appliance runs (DESIGN.md §4, "Editing"): the new
//! schedule has already parsed and validated on its own; here it is checked against the others
//! (no slot shared between patients) and against the one it replaces (a weekly high-alert
//! medication made more frequent, or stripped of its guard, needs a second person to confirm).
//! Pure: the dispenser task applies the result and records it.

use super::engine::windows;
use super::schedule::Schedule;
use chrono::{DateTime, Duration, Utc};

/// How far ahead occurrences are counted to compare frequencies.
const COMPARE_DAYS: i64 = 28;

/// Why a replacement cannot go ahead as sent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The new schedule conflicts with the appliance's other schedules; each problem listed.
    Conflicts(Vec<String>),
    /// A weekly high-alert medication would be given more often (or lose its guard): a second
    /// person must confirm. Each such change listed.
    NeedsConfirmation(Vec<String>),
}

/// The version fingerprint of a schedule (SHA-256 over its parsed form), as audited.
pub fn version(s: &Schedule) -> String {
    let meds: Vec<String> = s
        .medications
        .iter()
        .map(|(m, _)| format!("{m:?}"))
        .collect();
    let text = format!("{}|{}|{meds:?}", s.patient, s.tz);
    ring::digest::digest(&ring::digest::SHA256, text.as_bytes())
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn occurrences(s: &Schedule, name: &str, from: DateTime<Utc>) -> usize {
    let Some((m, Some(rec))) = s.medication(name) else {
        return 0;
    };
    let to = from + Duration::days(COMPARE_DAYS);
    windows(m, rec, s.tz, from, to)
        .iter()
        .filter(|w| w.occurrence >= from && w.occurrence < to)
        .filter(|w| m.active_on(w.occurrence.with_timezone(&s.tz).date_naive()))
        .count()
}

/// Checks `new` as the replacement of `old` (None: a new patient) among `others` (every other
/// patient's schedule) at `now`.
pub fn check(
    old: Option<&Schedule>,
    new: &Schedule,
    others: &[&Schedule],
    now: DateTime<Utc>,
) -> Result<(), Refusal> {
    let mut conflicts = Vec::new();
    for (m, _) in &new.medications {
        let slot = *m.slot.get_ref();
        for o in others {
            if let Some((om, _)) = o
                .medications
                .iter()
                .find(|(om, _)| *om.slot.get_ref() == slot)
            {
                conflicts.push(format!(
                    "SLOT_CONFLICT: slot {slot} ({}) holds {} of {}",
                    m.name, om.name, o.patient
                ));
            }
        }
    }
    if !conflicts.is_empty() {
        return Err(Refusal::Conflicts(conflicts));
    }
    let mut risky = Vec::new();
    for (m, _) in old.map(|o| o.medications.as_slice()).unwrap_or_default() {
        if !m.high_alert_weekly {
            continue;
        }
        let Some((n, _)) = new.medication(&m.name) else {
            continue;
        };
        let (before, after) = (
            occurrences(old.unwrap_or(new), &m.name, now),
            occurrences(new, &m.name, now),
        );
        if !n.high_alert_weekly {
            risky.push(format!(
                "{}: the weekly high-alert guard is removed",
                m.name
            ));
        } else if after > before {
            risky.push(format!(
                "{}: {after} doses in the next {COMPARE_DAYS} days instead of {before}",
                m.name
            ));
        }
    }
    if risky.is_empty() {
        Ok(())
    } else {
        Err(Refusal::NeedsConfirmation(risky))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn sched(patient: &str, meds: &str) -> Schedule {
        Schedule::parse(
            &format!("[patient]\nid = \"{patient}\"\ntimezone = \"America/New_York\"\n{meds}"),
            Path::new("t.toml"),
        )
        .unwrap()
    }

    const MTX: &str = "[[medication]]\nname = \"Methotrexate\"\nslot = 2\nunits = 4\ntimes = [\"09:00\"]\ndays = [\"mon\"]\nhigh_alert_weekly = true\n";

    fn now() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-03-02T00:00:00Z")
            .unwrap()
            .with_timezone(&Utc)
    }

    #[test]
    fn schedule_replacement_may_not_take_another_patients_slot() {
        let other = sched(
            "p-2",
            "[[medication]]\nname = \"B\"\nslot = 2\nunits = 1\ntimes = [\"08:00\"]\n",
        );
        let new = sched("p-1", MTX);
        match check(None, &new, &[&other], now()) {
            Err(Refusal::Conflicts(c)) => {
                assert!(c[0].starts_with("SLOT_CONFLICT: slot 2"), "{c:?}")
            }
            r => panic!("{r:?}"),
        }
    }

    #[test]
    fn high_alert_weekly_made_more_frequent_needs_a_second_confirmation() {
        let old = sched("p-1", MTX);
        // A flagged medication must stay weekly (schedule validation), so "more often" means
        // dropping the flag: daily methotrexate is the classic fatal error.
        let daily = sched(
            "p-1",
            &MTX.replace("high_alert_weekly = true\n", "")
                .replace("days = [\"mon\"]\n", ""),
        );
        match check(Some(&old), &daily, &[], now()) {
            Err(Refusal::NeedsConfirmation(c)) => {
                assert!(c[0].contains("guard is removed"), "{c:?}")
            }
            r => panic!("{r:?}"),
        }
        // Moving the weekly day, or lowering the dose, needs no second person.
        let moved = sched("p-1", &MTX.replace("[\"mon\"]", "[\"tue\"]"));
        assert_eq!(check(Some(&old), &moved, &[], now()), Ok(()));
    }

    #[test]
    fn schedule_version_changes_with_the_schedule_and_only_then() {
        let a = sched("p-1", MTX);
        assert_eq!(version(&a), version(&sched("p-1", MTX)));
        assert_ne!(
            version(&a),
            version(&sched("p-1", &MTX.replace("09:00", "10:00")))
        );
    }
}
