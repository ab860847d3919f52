//! Reminders and escalation for a dose waiting in the cup (see the README's "Dosing"): buzzer and
//! LED at the due time, a late notice at +15 min, a caregiver alert at half the late window, and
//! "not taken" when the window closes. Pure: the dispenser task sounds and reports each step once.
//!
//! A dispensed dose that is never picked up stays recorded as dispensed (its units count against
//! the daily maximum: they are in the cup); escalation only tells people about it.

use super::engine::Window;
use chrono::{DateTime, Duration, Utc};

/// How long after the due time the patient is reminded again.
pub const LATE_NOTICE_AFTER: Duration = Duration::minutes(15);
/// How long an as-needed dose may wait in the cup before the caregiver hears of it (it has no
/// window; the patient asked for it and should be at the appliance).
pub const PRN_NOT_TAKEN_AFTER: Duration = Duration::hours(2);

/// A step of the escalation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Step {
    /// Remind the patient again (buzzer and LED).
    LateNotice,
    /// Alert the caregiver: half the late window has passed.
    CaregiverAlert,
    /// The window closed with the dose still in the cup.
    NotTaken,
}

impl Step {
    /// Stable reason code, as in events and on the uplink.
    pub fn code(self) -> &'static str {
        match self {
            Step::LateNotice => "LATE_NOTICE",
            Step::CaregiverAlert => "CAREGIVER_ALERT",
            Step::NotTaken => "NOT_TAKEN",
        }
    }

    /// Whether this step is for the caregiver (sent upstream as an alert) rather than the patient.
    pub fn for_caregiver(self) -> bool {
        self != Step::LateNotice
    }
}

/// The escalation of one waiting dose: each step with the instant it falls due, in time order.
pub fn plan(window: Option<&Window>, dispensed_at: DateTime<Utc>) -> Vec<(DateTime<Utc>, Step)> {
    match window {
        Some(w) => {
            let due = w.occurrence.max(dispensed_at);
            let half = (w.occurrence + (w.closes - w.occurrence) / 2).max(due);
            let late = due + LATE_NOTICE_AFTER;
            let mut steps = Vec::with_capacity(3);
            // A late notice after the caregiver was told says nothing new.
            if late < half {
                steps.push((late, Step::LateNotice));
            }
            steps.push((half, Step::CaregiverAlert));
            steps.push((w.closes.max(half), Step::NotTaken));
            steps
        }
        None => vec![
            (dispensed_at + LATE_NOTICE_AFTER, Step::LateNotice),
            (dispensed_at + PRN_NOT_TAKEN_AFTER, Step::NotTaken),
        ],
    }
}

/// The steps of `plan` that fall due in `(after, now]`.
pub fn due(plan: &[(DateTime<Utc>, Step)], after: DateTime<Utc>, now: DateTime<Utc>) -> Vec<Step> {
    plan.iter()
        .filter(|(at, _)| *at > after && *at <= now)
        .map(|(_, s)| *s)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn window(occ: &str, late_min: i64) -> Window {
        let o = utc(occ);
        Window {
            occurrence: o,
            opens: o - Duration::minutes(60),
            closes: o + Duration::minutes(late_min),
        }
    }

    #[test]
    fn escalation_late_notice_then_caregiver_alert_at_half_window_then_not_taken_at_close() {
        let w = window("2026-03-02T08:00:00Z", 120);
        let p = plan(Some(&w), utc("2026-03-02T08:00:00Z"));
        assert_eq!(
            p,
            vec![
                (utc("2026-03-02T08:15:00Z"), Step::LateNotice),
                (utc("2026-03-02T09:00:00Z"), Step::CaregiverAlert),
                (utc("2026-03-02T10:00:00Z"), Step::NotTaken),
            ]
        );
        assert_eq!(
            due(&p, utc("2026-03-02T08:00:00Z"), utc("2026-03-02T08:59:00Z")),
            vec![Step::LateNotice]
        );
        assert_eq!(
            due(&p, utc("2026-03-02T08:59:00Z"), utc("2026-03-02T10:00:00Z")),
            vec![Step::CaregiverAlert, Step::NotTaken]
        );
    }

    #[test]
    fn escalation_of_a_short_window_skips_a_late_notice_that_would_come_after_the_caregiver() {
        // Time-critical: 20 min late window, half is 10 min, before the 15 min notice.
        let w = window("2026-03-02T08:00:00Z", 20);
        let p = plan(Some(&w), utc("2026-03-02T08:00:00Z"));
        assert_eq!(
            p.iter().map(|s| s.1).collect::<Vec<_>>(),
            vec![Step::CaregiverAlert, Step::NotTaken]
        );
    }

    #[test]
    fn escalation_counts_from_the_due_time_not_an_early_dispense() {
        let w = window("2026-03-02T08:00:00Z", 120);
        let p = plan(Some(&w), utc("2026-03-02T07:30:00Z"));
        assert_eq!(p[0], (utc("2026-03-02T08:15:00Z"), Step::LateNotice));
    }

    #[test]
    fn escalation_of_an_as_needed_dose_reminds_then_tells_the_caregiver_after_two_hours() {
        let p = plan(None, utc("2026-03-02T08:00:00Z"));
        assert_eq!(
            p,
            vec![
                (utc("2026-03-02T08:15:00Z"), Step::LateNotice),
                (utc("2026-03-02T10:00:00Z"), Step::NotTaken),
            ]
        );
    }
}
