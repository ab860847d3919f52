//! The dose planner: each minute, what the dispenser should do for every medication of every
//! schedule — dispense, or record a dose as missed or held when its window closes — without
//! repeating itself. Pure: the dispenser task carries out its actions and feeds the outcomes back
//! as history.

use super::engine::{decide_on, Decision, DoseRecord, Now, Outcome, Reason, VitalReading};
use super::history::DoseHistory;
use super::schedule::Schedule;
use chrono::{DateTime, Duration, Utc};
use std::collections::{BTreeMap, BTreeSet};

/// Something the dispenser must do.
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// Release a dose now.
    Dispense {
        /// Patient pseudonym.
        patient: String,
        /// Medication.
        medication: String,
        /// Carousel slot.
        slot: u8,
        /// The occurrence.
        occurrence: DateTime<Utc>,
        /// Units.
        units: u32,
    },
    /// Record an outcome that needs no motion (missed, held).
    Record {
        /// Patient pseudonym.
        patient: String,
        /// The record.
        record: DoseRecord,
        /// Why (reason code).
        reason: Reason,
    },
    /// A dose waits on something a person must do (a vital reading); alert once.
    Alert {
        /// Patient pseudonym.
        patient: String,
        /// Medication.
        medication: String,
        /// The occurrence.
        occurrence: DateTime<Utc>,
        /// Why.
        reason: Reason,
        /// Details.
        detail: String,
    },
}

/// Planner state.
#[derive(Debug)]
pub struct Planner {
    /// Occurrences before this instant are not the appliance's to account for (they predate its
    /// first start).
    since: DateTime<Utc>,
    /// Last refusal reason per (patient, medication, occurrence), to tell held from missed.
    last_reason: BTreeMap<(String, String, DateTime<Utc>), Reason>,
    alerted: BTreeSet<(String, String, DateTime<Utc>, String)>,
    closed: BTreeSet<(String, String, DateTime<Utc>)>,
    /// Medications (patient, normalised name) locked until a second person confirms the
    /// schedule that removed their weekly guard.
    locked: BTreeSet<(String, String)>,
    /// When each patient's schedule in force was installed: its doses whose windows had
    /// closed by then were never due, so they are never closed as missed.
    in_force_from: BTreeMap<String, DateTime<Utc>>,
    /// See [`Planner::revisit`].
    revisit: Option<DateTime<Utc>>,
}

/// How soon a round is worth repeating while a dose waits in its open window on something time
/// alone can change (a spacing, a rolling limit, a reading ageing out).
pub const WATCH_EVERY: Duration = Duration::minutes(1);

/// Whether a refusal inside an open window stands until the window closes unless a person acts
/// (a command, a reconciliation, a new schedule): rounds need not repeat it every minute. Kept
/// to the plainly final ones; anything else is watched every [`WATCH_EVERY`].
fn stands_until_input(r: Reason) -> bool {
    matches!(
        r,
        Reason::AlreadyDispensed
            | Reason::Skipped
            | Reason::MissedLocked
            | Reason::NotActive
            | Reason::Unreconciled
    )
}

fn is_hold(r: Reason) -> bool {
    matches!(
        r,
        Reason::HeldVitals
            | Reason::NeedsReading
            | Reason::LowQualityReading
            | Reason::ConfirmationRequired
    )
}

impl Planner {
    /// A planner responsible for occurrences from `since` on (the appliance's first start; after
    /// a restart, still that first start, so doses that fell due while it was down are recorded
    /// as missed).
    pub fn new(since: DateTime<Utc>) -> Self {
        Self {
            since,
            last_reason: BTreeMap::new(),
            alerted: BTreeSet::new(),
            closed: BTreeSet::new(),
            locked: BTreeSet::new(),
            in_force_from: BTreeMap::new(),
            revisit: None,
        }
    }

    /// The earliest wall-clock instant at which the last round could decide anything
    /// differently without an input: the next window that opens or closes, or a minute on
    /// while a dose waits in its open window on something time can change. None: no window
    /// opens or closes within two days. A caller may plan more often, never less without
    /// missing a window; inputs (commands, a clock step, a dispense ending) call for a round
    /// of their own.
    pub fn revisit(&self) -> Option<DateTime<Utc>> {
        self.revisit
    }

    /// A patient's schedule was replaced (or changed on disk) at `at`: doses of the new one
    /// whose windows had closed by then were never due and are not recorded missed.
    pub fn schedule_installed(&mut self, patient: &str, at: DateTime<Utc>) {
        self.in_force_from.insert(patient.to_string(), at);
    }

    /// Locks a medication until [`Planner::unlock`]: nothing of it is dispensed meanwhile.
    pub fn lock(&mut self, patient: &str, medication: &str) {
        self.locked
            .insert((patient.to_string(), super::identity::normalise(medication)));
    }

    /// Lifts every lock of a patient's (the second person confirmed).
    pub fn unlock(&mut self, patient: &str) {
        self.locked.retain(|(p, _)| p != patient);
    }

    /// Whether a medication is locked.
    pub fn is_locked(&self, patient: &str, medication: &str) -> bool {
        self.locked
            .contains(&(patient.to_string(), super::identity::normalise(medication)))
    }

    /// The actions due at `now`. `vitals` may hold several patients' readings: each schedule's
    /// holds see only those of its own patient.
    pub fn plan(
        &mut self,
        schedules: &[Schedule],
        now: impl Into<Now>,
        history: &DoseHistory,
        vitals: &[VitalReading],
        clock_trusted: bool,
    ) -> Vec<Action> {
        let clocks = now.into();
        let now = clocks.wall;
        let mut out = Vec::new();
        let mut revisit: Option<DateTime<Utc>> = None;
        let mut soonest = |t: DateTime<Utc>| {
            revisit = Some(revisit.map_or(t, |r| r.min(t)));
        };
        for s in schedules {
            // The records that stand, kept by the history as records arrive.
            let standing = history.standing(&s.patient);
            let vitals = &super::vitals::of_patient(vitals, &s.patient);
            for (m, rec) in &s.medications {
                let Some(rec) = rec else { continue };
                let key_of = |o: DateTime<Utc>| (s.patient.clone(), m.name.clone(), o);
                // The last day's windows (to close), the one open now, and the next two days'
                // (whose edges are when to plan again).
                let ws = super::engine::windows(
                    m,
                    rec,
                    s.tz,
                    now - Duration::days(1),
                    now + Duration::days(2),
                );
                for edge in ws.iter().flat_map(|w| [w.opens, w.closes]) {
                    if edge > now {
                        soonest(edge);
                    }
                }
                // Close windows that ended: missed or held, once.
                for &w in &ws {
                    if w.closes > now
                        || w.occurrence < self.since
                        || self
                            .in_force_from
                            .get(&s.patient)
                            .is_some_and(|from| w.closes <= *from)
                        || self.closed.contains(&key_of(w.occurrence))
                    {
                        continue;
                    }
                    if !m.active_on(w.occurrence.with_timezone(&s.tz).date_naive()) {
                        continue;
                    }
                    self.closed.insert(key_of(w.occurrence));
                    // An intent superseded by `failed`, or an uncertain dispense a caregiver
                    // found did not reach the patient, does not settle the dose.
                    let settled = standing.iter().any(|r| {
                        r.is_of(m)
                            && r.occurrence == Some(w.occurrence)
                            && !matches!(r.outcome, Outcome::Failed | Outcome::ConfirmedNotGiven)
                    });
                    if settled {
                        continue;
                    }
                    let last = self.last_reason.get(&key_of(w.occurrence)).copied();
                    let (outcome, reason) = match last {
                        Some(r) if is_hold(r) => (Outcome::Held, r),
                        // Another dose (before a rename or a time move) counted for this one:
                        // not missed, and not given twice.
                        Some(Reason::AlreadyDispensed) => {
                            (Outcome::Skipped, Reason::AlreadyDispensed)
                        }
                        _ => (Outcome::Missed, Reason::MissedLocked),
                    };
                    out.push(Action::Record {
                        patient: s.patient.clone(),
                        record: DoseRecord {
                            medication: m.name.clone(),
                            occurrence: Some(w.occurrence),
                            at: now,
                            units: 0,
                            outcome,
                            slot: Some(*m.slot.get_ref()),
                            elapsed: Some(clocks.elapsed),
                        },
                        reason,
                    });
                }
                let decision = if self.is_locked(&s.patient, &m.name) {
                    Decision::Refuse {
                        reason: Reason::ConfirmationRequired,
                        detail: format!(
                            "the schedule in force removed the weekly high-alert guard of {}; a second person must confirm it",
                            m.name
                        ),
                    }
                } else {
                    decide_on(m, rec, s.tz, clocks, &standing, vitals, clock_trusted)
                };
                match decision {
                    Decision::Dispense {
                        occurrence: Some(o),
                        units,
                    } => {
                        // Until the dispenser's records say it went (it may wait to retry).
                        soonest(now + WATCH_EVERY);
                        out.push(Action::Dispense {
                            patient: s.patient.clone(),
                            medication: m.name.clone(),
                            slot: *m.slot.get_ref(),
                            occurrence: o,
                            units,
                        })
                    }
                    Decision::Dispense {
                        occurrence: None, ..
                    } => {}
                    Decision::Refuse { reason, detail } => {
                        // Remember why the current window's dose waits, for its close.
                        if let Some(w) = ws.iter().find(|w| w.opens <= now && now < w.closes) {
                            if !stands_until_input(reason) {
                                soonest(now + WATCH_EVERY);
                            }
                            // A dose held on a reading stays held on it when the reading later
                            // ages out (NEEDS_READING): the pharmacist sees why it was held.
                            let held = self.last_reason.get(&key_of(w.occurrence))
                                == Some(&Reason::HeldVitals);
                            if !(held && is_hold(reason)) {
                                self.last_reason.insert(key_of(w.occurrence), reason);
                            }
                            // An unreconciled dispense is told once per window too: the
                            // caregiver must check it (after a crash, nobody else will).
                            if is_hold(reason)
                                || reason == Reason::DailyMax
                                || reason == Reason::WeeklyGuard
                                || reason == Reason::Unreconciled
                            {
                                let k = (
                                    s.patient.clone(),
                                    m.name.clone(),
                                    w.occurrence,
                                    reason.code(),
                                );
                                if self.alerted.insert(k) {
                                    out.push(Action::Alert {
                                        patient: s.patient.clone(),
                                        medication: m.name.clone(),
                                        occurrence: w.occurrence,
                                        reason,
                                        detail,
                                    });
                                }
                            }
                        }
                    }
                }
            }
        }
        // Forget what is long past.
        let horizon = now - Duration::days(3);
        self.last_reason.retain(|k, _| k.2 > horizon);
        self.alerted.retain(|k| k.2 > horizon);
        self.closed.retain(|k| k.2 > horizon);
        self.revisit = revisit;
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn sched(meds: &str) -> Schedule {
        sched_for("p-1", meds)
    }

    fn sched_for(patient: &str, meds: &str) -> Schedule {
        Schedule::parse(
            &format!("[patient]\nid = \"{patient}\"\ntimezone = \"UTC\"\n{meds}"),
            Path::new("t.toml"),
        )
        .unwrap()
    }

    /// Runs the planner each minute for `days`, dispensing everything it asks for.
    fn simulate(s: &Schedule, days: i64, vitals: &[VitalReading]) -> Vec<DoseRecord> {
        simulate_all(std::slice::from_ref(s), days, vitals)
            .of(&s.patient)
            .to_vec()
    }

    fn simulate_all(schedules: &[Schedule], days: i64, vitals: &[VitalReading]) -> DoseHistory {
        let start = utc("2026-03-02T00:00:00Z");
        let mut p = Planner::new(start);
        let mut history = DoseHistory::default();
        for minute in 0..days * 1440 {
            let now = start + Duration::minutes(minute);
            for a in p.plan(schedules, now, &history, vitals, true) {
                match a {
                    Action::Dispense {
                        patient,
                        medication,
                        occurrence,
                        units,
                        slot,
                    } => history.push(
                        &patient,
                        DoseRecord {
                            medication,
                            occurrence: Some(occurrence),
                            at: now,
                            units,
                            outcome: Outcome::Dispensed,
                            slot: Some(slot),
                            elapsed: None,
                        },
                    ),
                    Action::Record {
                        patient, record, ..
                    } => history.push(&patient, record),
                    Action::Alert { .. } => {}
                }
            }
        }
        history
    }

    #[test]
    fn hold_parameters_see_only_their_own_patients_readings() {
        let meds = |slot: u8| {
            format!("[[medication]]\nname = \"Metoprolol\"\nslot = {slot}\nunits = 1\ntimes = [\"08:00\"]\n[[medication.hold]]\nvital = \"heart_rate\"\nbelow = 55\nmax_age = \"2h\"\n")
        };
        let a = sched_for("p-a", &meds(0));
        let b = sched_for("p-b", &meds(1));
        // Only p-a's pulse was measured, and it is fine: p-a's dose is released, p-b's is
        // still held for want of its own reading.
        let reading = VitalReading {
            vital: crate::dosing::schedule::Vital::HeartRate,
            value: 70.0,
            at: utc("2026-03-02T07:40:00Z"),
            quality: crate::dosing::engine::Quality::Good,
            source: "test".into(),
            patient: Some("p-a".into()),
        };
        let history = simulate_all(&[a, b], 1, &[reading]);
        let outcomes = |p: &str| history.of(p).iter().map(|r| r.outcome).collect::<Vec<_>>();
        assert_eq!(outcomes("p-a"), [Outcome::Dispensed]);
        assert_eq!(outcomes("p-b"), [Outcome::Held]);
    }

    #[test]
    fn two_patients_on_the_same_medication_are_dosed_independently() {
        let meds = |slot: u8| {
            format!("[[medication]]\nname = \"Metformin\"\nslot = {slot}\nunits = 1\nmax_daily_units = 2\ntimes = [\"08:00\", \"20:00\"]\n")
        };
        let a = sched_for("p-a", &meds(0));
        let b = sched_for("p-b", &meds(1));
        let history = simulate_all(&[a, b], 3, &[]);
        for patient in ["p-a", "p-b"] {
            let dispensed = history
                .of(patient)
                .iter()
                .filter(|r| r.outcome == Outcome::Dispensed)
                .count();
            // One patient's dose never counts as the other's (ALREADY_DISPENSED) nor towards
            // the other's daily maximum.
            assert_eq!(dispensed, 6, "{patient}: {:?}", history.of(patient));
        }
    }

    #[test]
    fn a_dose_held_on_vitals_stays_held_vitals_when_the_reading_ages_out() {
        // A low pulse at 07:40 holds the 08:00 dose; the reading is 2 h old by 09:40, so the
        // engine then asks for a new one: the dose still closes as HELD_VITALS.
        let s = sched("[[medication]]\nname = \"Metoprolol\"\nslot = 0\nunits = 1\ntimes = [\"08:00\"]\nlate = \"4h\"\n[[medication.hold]]\nvital = \"heart_rate\"\nbelow = 55\nmax_age = \"2h\"\n");
        let reading = VitalReading {
            vital: crate::dosing::schedule::Vital::HeartRate,
            value: 50.0,
            at: utc("2026-03-02T07:40:00Z"),
            quality: crate::dosing::engine::Quality::Good,
            source: "test".into(),
            patient: Some("p-1".into()),
        };
        let mut p = Planner::new(utc("2026-03-02T00:00:00Z"));
        let history = DoseHistory::default();
        let mut closed = Vec::new();
        for minute in 0..(14 * 60) {
            let now = utc("2026-03-02T00:00:00Z") + Duration::minutes(minute);
            for a in p.plan(
                std::slice::from_ref(&s),
                now,
                &history,
                std::slice::from_ref(&reading),
                true,
            ) {
                if let Action::Record { record, reason, .. } = a {
                    closed.push((record.outcome, reason));
                }
            }
        }
        assert_eq!(closed, [(Outcome::Held, Reason::HeldVitals)]);
    }

    #[test]
    fn a_dose_covered_by_one_given_before_a_time_move_closes_skipped_not_missed() {
        let moved =
            sched("[[medication]]\nname = \"A\"\nslot = 0\nunits = 1\ntimes = [\"09:00\"]\n");
        let given: DoseHistory = [(
            "p-1".to_string(),
            DoseRecord {
                medication: "a".into(),
                occurrence: Some(utc("2026-03-02T08:00:00Z")),
                at: utc("2026-03-02T08:00:00Z"),
                units: 1,
                outcome: Outcome::Dispensed,
                slot: Some(0),
                elapsed: None,
            },
        )]
        .into_iter()
        .collect();
        let mut p = Planner::new(utc("2026-03-02T00:00:00Z"));
        let mut acts = Vec::new();
        for minute in (8 * 60 + 1)..(12 * 60) {
            let now = utc("2026-03-02T00:00:00Z") + Duration::minutes(minute);
            acts.extend(p.plan(std::slice::from_ref(&moved), now, &given, &[], true));
        }
        assert!(
            !acts.iter().any(|a| matches!(a, Action::Dispense { .. })),
            "{acts:?}"
        );
        assert!(
            acts.iter().any(|a| matches!(a, Action::Record { record, reason: Reason::AlreadyDispensed, .. } if record.outcome == Outcome::Skipped)),
            "{acts:?}"
        );
    }

    #[test]
    fn occurrences_from_before_a_schedule_was_installed_are_never_recorded_missed() {
        // A medication added at 15:00 with a dose at 08:00: today's 08:00 was never prescribed.
        let s = sched("[[medication]]\nname = \"A\"\nslot = 0\nunits = 1\ntimes = [\"08:00\"]\n");
        let mut p = Planner::new(utc("2026-03-01T00:00:00Z"));
        p.schedule_installed("p-1", utc("2026-03-02T15:00:00Z"));
        let acts = p.plan(
            std::slice::from_ref(&s),
            utc("2026-03-02T15:01:00Z"),
            &DoseHistory::default(),
            &[],
            true,
        );
        assert!(acts.is_empty(), "{acts:?}");
        // Without it, the same plan records it missed.
        let mut q = Planner::new(utc("2026-03-01T00:00:00Z"));
        let acts = q.plan(
            std::slice::from_ref(&s),
            utc("2026-03-02T15:01:00Z"),
            &DoseHistory::default(),
            &[],
            true,
        );
        assert!(
            matches!(acts.as_slice(), [Action::Record { .. }]),
            "{acts:?}"
        );
    }

    #[test]
    fn every_occurrence_is_accounted_for_exactly_once() {
        let s = sched("[[medication]]\nname = \"A\"\nslot = 0\nunits = 1\ntimes = [\"08:00\", \"20:00\"]\n[[medication]]\nname = \"B\"\nslot = 1\nunits = 1\ntimes = [\"09:00\"]\n[[medication.hold]]\nvital = \"heart_rate\"\nbelow = 55\nmax_age = \"2h\"\n");
        let history = simulate(&s, 7, &[]);
        let count = |m: &str, o: Outcome| {
            history
                .iter()
                .filter(|r| r.medication == m && r.outcome == o)
                .count()
        };
        assert_eq!(count("A", Outcome::Dispensed), 14);
        // B always needs a reading that never comes: held, never dispensed, never missed.
        assert_eq!(count("B", Outcome::Held), 7);
        assert_eq!(count("A", Outcome::Missed) + count("B", Outcome::Missed), 0);
        let mut seen = BTreeSet::new();
        for r in &history {
            assert!(
                seen.insert((r.medication.clone(), r.occurrence)),
                "twice: {r:?}"
            );
        }
    }

    #[test]
    fn a_dose_whose_dispense_only_failed_is_missed_at_window_close() {
        let s = sched("[[medication]]\nname = \"A\"\nslot = 0\nunits = 1\ntimes = [\"08:00\"]\n");
        let start = utc("2026-03-02T00:00:00Z");
        let occ = utc("2026-03-02T08:00:00Z");
        let rec = |at: &str, outcome| DoseRecord {
            medication: "A".into(),
            occurrence: Some(occ),
            at: utc(at),
            units: 0,
            outcome,
            slot: None,
            elapsed: None,
        };
        // The intent was written, then the jam failed it before anything moved.
        let history: DoseHistory = [
            rec("2026-03-02T07:30:00Z", Outcome::Dispensing),
            rec("2026-03-02T07:30:01Z", Outcome::Failed),
        ]
        .into_iter()
        .map(|r| ("p-1".to_string(), r))
        .collect();
        let mut p = Planner::new(start);
        let actions = p.plan(&[s], utc("2026-03-02T10:00:30Z"), &history, &[], true);
        assert!(
            actions.iter().any(
                |a| matches!(a, Action::Record { record, .. } if record.outcome == Outcome::Missed)
            ),
            "{actions:?}"
        );
    }

    #[test]
    fn the_planner_asks_back_at_the_next_window_edge_or_each_minute_while_time_may_release_a_dose()
    {
        let s = sched("[[medication]]\nname = \"Metoprolol\"\nslot = 0\nunits = 1\ntimes = [\"08:00\"]\nearly = \"30m\"\nlate = \"2h\"\n[[medication.hold]]\nvital = \"heart_rate\"\nbelow = 55\nmax_age = \"2h\"\n");
        let schedules = std::slice::from_ref(&s);
        let mut p = Planner::new(utc("2026-03-02T00:00:00Z"));
        let mut history = DoseHistory::default();
        let pulse = |at: &str| VitalReading {
            vital: crate::dosing::schedule::Vital::HeartRate,
            value: 70.0,
            at: utc(at),
            quality: crate::dosing::engine::Quality::Good,
            source: "test".into(),
            patient: Some("p-1".into()),
        };
        // Before the window: its opening.
        p.plan(schedules, utc("2026-03-02T06:00:00Z"), &history, &[], true);
        assert_eq!(p.revisit(), Some(utc("2026-03-02T07:30:00Z")));
        // Open, and waiting for a reading that may come (or age out): a minute on.
        p.plan(schedules, utc("2026-03-02T07:30:00Z"), &history, &[], true);
        assert_eq!(p.revisit(), Some(utc("2026-03-02T07:31:00Z")));
        // Due: a minute on too, until the dispense is on record.
        let now = utc("2026-03-02T07:40:00Z");
        let actions = p.plan(
            schedules,
            now,
            &history,
            &[pulse("2026-03-02T07:39:00Z")],
            true,
        );
        assert!(matches!(actions.as_slice(), [Action::Dispense { .. }]));
        assert_eq!(p.revisit(), Some(utc("2026-03-02T07:41:00Z")));
        // Given: nothing changes until the window closes.
        let given = DoseRecord {
            medication: "Metoprolol".into(),
            occurrence: Some(utc("2026-03-02T08:00:00Z")),
            at: now,
            units: 1,
            outcome: Outcome::Dispensed,
            slot: Some(0),
            elapsed: None,
        };
        history.push("p-1", given);
        p.plan(schedules, utc("2026-03-02T07:41:00Z"), &history, &[], true);
        assert_eq!(p.revisit(), Some(utc("2026-03-02T10:00:00Z")));
        // Closed: the next day's opening.
        p.plan(schedules, utc("2026-03-02T10:00:00Z"), &history, &[], true);
        assert_eq!(p.revisit(), Some(utc("2026-03-03T07:30:00Z")));
    }
}
