//! Replacing a patient's schedule while the appliance runs (docs/dose-safety.md, "Once per dose,
//! whatever is edited"): the new schedule has already parsed and validated on its own; here it is
//! checked against the others (no slot shared between patients) and against the one it replaces (a
//! weekly high-alert medication made more frequent, or stripped of its guard, needs a second person
//! to confirm). Pure: the dispenser task applies the result and records it.

use super::engine::windows;
use super::schedule::{Medication, Schedule};
use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};

/// A medication under the weekly guard in a confirmed schedule version, as the store remembers
/// it between versions (name and slot: the two keys of its identity).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Guarded {
    /// Its name in that version.
    pub name: String,
    /// Its slot.
    pub slot: u8,
}

/// The guarded medications of a schedule.
pub fn guarded(s: &Schedule) -> Vec<Guarded> {
    s.medications
        .iter()
        .filter(|(m, _)| m.weekly_guard())
        .map(|(m, _)| Guarded {
            name: m.name.clone(),
            slot: *m.slot.get_ref(),
        })
        .collect()
}

/// The medication of `new` that continues one of an older version: the same name in any
/// letter case, or, renamed, the one in the same slot.
fn counterpart<'a>(new: &'a Schedule, name: &str, slot: u8) -> Option<&'a Medication> {
    new.medication(name)
        .or_else(|| {
            new.medications
                .iter()
                .find(|(n, _)| *n.slot.get_ref() == slot)
        })
        .map(|(m, _)| m)
}

/// The medications of `new` that continue a guarded medication of the last confirmed version
/// without the guard (renamed off the built-in list and unflagged), each with why: until a
/// second person confirms, each is locked. This is how a file edited behind the appliance's
/// back is held to the same rule as a `replace_schedule` command.
pub fn weakened(confirmed: &[Guarded], new: &Schedule) -> Vec<(String, String)> {
    confirmed
        .iter()
        .filter_map(|g| {
            let n = counterpart(new, &g.name, g.slot)?;
            (!n.weekly_guard()).then(|| {
                (
                    n.name.clone(),
                    format!(
                        "{}: the weekly high-alert guard is removed (now {:?} in slot {})",
                        g.name,
                        n.name,
                        n.slot.get_ref()
                    ),
                )
            })
        })
        .collect()
}

/// A schedule version that weakens a guard and waits for a second person: its medications
/// that continue a guarded one are locked meanwhile.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Unconfirmed {
    /// Patient pseudonym.
    pub patient: String,
    /// The version a second person must confirm (`replace_schedule` with `confirm`).
    pub version: String,
    /// The locked medications (their names in the new version).
    pub medications: Vec<String>,
    /// Why, one line each.
    pub reasons: Vec<String>,
    /// The guards of the last confirmed version, still the reference.
    pub confirmed: Vec<Guarded>,
}

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

/// The version fingerprint of a schedule, as audited: SHA-256 over a canonical JSON
/// serialisation of its parsed form (fields in declaration order, no spans, no `Debug` output,
/// which may change with any compiler or crate version).
pub fn version(s: &Schedule) -> String {
    let meds: Vec<&crate::dosing::schedule::Medication> =
        s.medications.iter().map(|(m, _)| m).collect();
    let text = serde_json::json!({
        "patient": s.patient,
        "timezone": s.tz.name(),
        "quiet_hours": s.quiet,
        "medications": meds,
    })
    .to_string();
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
        if !m.weekly_guard() {
            continue;
        }
        // The same medication by name (any case) or, renamed, by the slot its pills are in.
        let Some(n) = counterpart(new, &m.name, *m.slot.get_ref()) else {
            continue;
        };
        let (before, after) = (
            occurrences(old.unwrap_or(new), &m.name, now),
            occurrences(new, &n.name, now),
        );
        if !n.weekly_guard() {
            risky.push(format!(
                "{}: the weekly high-alert guard is removed (now {:?} in slot {})",
                m.name,
                n.name,
                n.slot.get_ref()
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
        // Methotrexate stays weekly whatever the file says (the built-in list and schedule
        // validation), so "more often" means renaming it and dropping the flag: daily
        // methotrexate under another name is the classic fatal error. Letter case alone keeps
        // the guard (and needs no one).
        let daily = |name: &str| {
            format!(
                "[patient]\nid = \"p-1\"\ntimezone = \"America/New_York\"\n{}",
                MTX.replace("high_alert_weekly = true\n", "")
                    .replace("days = [\"mon\"]\n", "")
                    .replace("Methotrexate", name)
            )
        };
        let renamed = Schedule::parse(&daily("Folate supplement"), Path::new("t.toml")).unwrap();
        match check(Some(&old), &renamed, &[], now()) {
            Err(Refusal::NeedsConfirmation(c)) => {
                assert!(c[0].contains("guard is removed"), "{c:?}")
            }
            r => panic!("{r:?}"),
        }
        // Under any name on the built-in list it cannot even be written daily.
        assert!(Schedule::parse(&daily("Methotrexate sodium"), Path::new("t.toml")).is_err());
        let case = sched("p-1", &MTX.replace("Methotrexate", "METHOTREXATE"));
        assert_eq!(check(Some(&old), &case, &[], now()), Ok(()));
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
