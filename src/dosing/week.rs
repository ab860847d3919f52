//! A caregiver's week: every scheduled dose of every schedule between two local dates, as the
//! engine will offer it (same occurrences, windows, tapers and course dates), for a printed
//! table or a calendar. Pure.

use super::engine::windows;
use super::schedule::Schedule;
use super::when::resolve_local;
use chrono::{DateTime, NaiveDate, Utc};
use chrono_tz::Tz;

/// One planned dose.
#[derive(Clone, Debug, PartialEq)]
pub struct PlannedDose {
    /// Patient pseudonym.
    pub patient: String,
    /// The patient's zone.
    pub tz: Tz,
    /// Medication name.
    pub medication: String,
    /// Strength as written.
    pub strength: String,
    /// Carousel slot.
    pub slot: u8,
    /// Units on that day (after tapers).
    pub units: u32,
    /// The scheduled instant.
    pub occurrence: DateTime<Utc>,
    /// When the dose may first be given.
    pub opens: DateTime<Utc>,
    /// When it may no longer be given.
    pub closes: DateTime<Utc>,
}

impl PlannedDose {
    /// The local date the dose belongs to.
    pub fn day(&self) -> NaiveDate {
        self.occurrence.with_timezone(&self.tz).date_naive()
    }
}

/// An as-needed medication: no times, only limits.
#[derive(Clone, Debug, PartialEq)]
pub struct AsNeeded {
    /// Patient pseudonym.
    pub patient: String,
    /// Medication name.
    pub medication: String,
    /// Strength as written.
    pub strength: String,
    /// Shortest time between two doses.
    pub min_interval: std::time::Duration,
    /// Most doses in any 24 h.
    pub max_per_24h: u32,
}

/// The doses of `schedules` on the local days `from` .. `from + days` (each schedule in its own
/// zone), by local day and time, and their as-needed medications.
pub fn plan(
    schedules: &[Schedule],
    from: NaiveDate,
    days: u32,
) -> (Vec<PlannedDose>, Vec<AsNeeded>) {
    let mut doses = Vec::new();
    let mut prn = Vec::new();
    let to_day = from + chrono::Duration::days(i64::from(days));
    for s in schedules {
        let (Some(start), Some(end)) = (
            resolve_local(s.tz, from.and_time(chrono::NaiveTime::MIN)),
            resolve_local(s.tz, to_day.and_time(chrono::NaiveTime::MIN)),
        ) else {
            continue;
        };
        for (m, rec) in &s.medications {
            let Some(rec) = rec else {
                if let Some(p) = &m.prn {
                    prn.push(AsNeeded {
                        patient: s.patient.clone(),
                        medication: m.name.clone(),
                        strength: m.strength.clone(),
                        min_interval: p.min_interval,
                        max_per_24h: p.max_per_24h,
                    });
                }
                continue;
            };
            for w in windows(m, rec, s.tz, start, end) {
                let day = w.occurrence.with_timezone(&s.tz).date_naive();
                if w.occurrence < start || w.occurrence >= end || !m.active_on(day) {
                    continue;
                }
                doses.push(PlannedDose {
                    patient: s.patient.clone(),
                    tz: s.tz,
                    medication: m.name.clone(),
                    strength: m.strength.clone(),
                    slot: *m.slot.get_ref(),
                    units: m.units_on(day),
                    occurrence: w.occurrence,
                    opens: w.opens,
                    closes: w.closes,
                });
            }
        }
    }
    // By local day and local time: a caregiver reads each patient's day on their own clock.
    doses.sort_by_key(|d| {
        (
            d.occurrence.with_timezone(&d.tz).naive_local(),
            d.patient.clone(),
            d.medication.clone(),
        )
    });
    (doses, prn)
}

/// The week as an iCalendar (RFC 5545) file: one event per dose, from its time to the end of
/// its window, with a stable UID so importing the week again updates rather than duplicates.
pub fn to_ics(doses: &[PlannedDose], prn: &[AsNeeded]) -> String {
    use icalendar::{Calendar, Component, Event, EventLike};
    let mut cal = Calendar::new();
    cal.name("medbox doses");
    for d in doses {
        let units = if d.units == 1 { "unit" } else { "units" };
        let mut e = Event::new();
        e.uid(&format!(
            "dose-{}-{}-{}@medbox",
            d.patient,
            super::identity::normalise(&d.medication).replace(' ', "-"),
            d.occurrence.format("%Y%m%dT%H%M%SZ")
        ))
        .summary(&format!(
            "{} {}: {} {units} for {}",
            d.medication, d.strength, d.units, d.patient
        ))
        .description(&format!(
            "Slot {}. May be given from {} until {} ({}).",
            d.slot,
            d.opens.with_timezone(&d.tz).format("%H:%M"),
            d.closes.with_timezone(&d.tz).format("%a %H:%M"),
            d.tz.name()
        ))
        .starts(d.occurrence)
        .ends(d.occurrence + chrono::Duration::minutes(15))
        // A stable stamp: the same week exported twice is the same file.
        .timestamp(d.occurrence);
        cal.push(e.done());
    }
    // As-needed doses have no time; the calendar's description names them and their limits.
    if !prn.is_empty() {
        let list: Vec<String> = prn
            .iter()
            .map(|p| {
                format!(
                    "{} {} for {} (as needed: at least {} apart, at most {} in 24 h)",
                    p.medication,
                    p.strength,
                    p.patient,
                    humantime::format_duration(p.min_interval),
                    p.max_per_24h
                )
            })
            .collect();
        cal.description(&list.join("; "));
    }
    cal.done().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schedule(src: &str) -> Schedule {
        Schedule::parse(src, std::path::Path::new("s.toml")).expect("valid")
    }

    const TAPER: &str = r#"
[patient]
id = "p-1"
timezone = "Europe/Berlin"
[[medication]]
name = "Prednisolone"
strength = "5 mg"
slot = 2
units = 1
times = ["08:00"]
start = 2026-03-02
end = 2026-03-06
max_daily_units = 4
[[medication.taper]]
from = 2026-03-02
until = 2026-03-03
units = 4
[[medication.taper]]
from = 2026-03-04
until = 2026-03-06
units = 2
[[medication]]
name = "Paracetamol"
strength = "500 mg"
slot = 3
units = 1
[medication.prn]
min_interval = "4h"
max_per_24h = 4
"#;

    #[test]
    fn the_week_follows_tapers_course_dates_and_local_days() {
        let from = NaiveDate::from_ymd_opt(2026, 3, 2).unwrap();
        let (doses, prn) = plan(&[schedule(TAPER)], from, 7);
        let units: Vec<(String, u32)> = doses
            .iter()
            .map(|d| (d.day().to_string(), d.units))
            .collect();
        assert_eq!(
            units,
            [
                ("2026-03-02".to_string(), 4),
                ("2026-03-03".to_string(), 4),
                ("2026-03-04".to_string(), 2),
                ("2026-03-05".to_string(), 2),
                ("2026-03-06".to_string(), 2),
            ]
        );
        assert_eq!(
            doses[0].occurrence.to_rfc3339(),
            "2026-03-02T07:00:00+00:00"
        );
        assert_eq!(prn.len(), 1);
        assert_eq!(prn[0].max_per_24h, 4);
    }

    #[test]
    fn the_calendar_has_one_stable_event_per_dose() {
        let from = NaiveDate::from_ymd_opt(2026, 3, 2).unwrap();
        let (doses, prn) = plan(&[schedule(TAPER)], from, 7);
        let ics = to_ics(&doses, &prn);
        assert!(ics.starts_with("BEGIN:VCALENDAR"), "{ics}");
        assert_eq!(ics.matches("BEGIN:VEVENT").count(), 5, "{ics}");
        assert!(ics.contains("DTSTART:20260302T070000Z"), "{ics}");
        assert!(
            ics.contains("UID:dose-p-1-prednisolone-20260302T070000Z@medbox"),
            "{ics}"
        );
        assert_eq!(ics, to_ics(&doses, &prn), "the same week, the same file");
    }
}
