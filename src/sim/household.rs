//! The simulated household: one person per schedule, who lifts the cup when a dose waits in it
//! (on time, late, or not at all, by a seeded habit) and who measures blood pressure and pulse on
//! a home monitor before each dose that a clinician holds on those signs.
//!
//! Without these people a simulation shows an appliance nobody uses: every dose ends "not
//! taken" and every held medication waits for a reading that never comes. The decisions here
//! are pure and seeded (the same seed and schedules give the same household); [`super`] plays
//! them against the simulated board on simulated time.

use crate::dosing::engine::{Quality, VitalReading};
use crate::dosing::schedule::{Schedule, Vital};
use chrono::{DateTime, Utc};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Duration;

/// A pickup within this long of the dose's time counts as on time (the appliance's late
/// notice comes at +15 min).
pub const ON_TIME_WITHIN: Duration = Duration::from_secs(14 * 60);
/// How long the cup stays away once lifted.
pub const CUP_AWAY: Duration = Duration::from_secs(20);
/// Where the readings say they came from.
pub const MONITOR_SOURCE: &str = "sim:bp-monitor";

/// How a person treats a waiting dose and the monitor. The three pickup shares are weights:
/// they need not add up to one.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Habit {
    /// Weight of lifting the cup within a quarter of an hour.
    #[serde(default = "Habit::default_on_time")]
    pub on_time: f64,
    /// Weight of lifting it later, but before the dose's window closes.
    #[serde(default = "Habit::default_late")]
    pub late: f64,
    /// Weight of never lifting it.
    #[serde(default = "Habit::default_forget")]
    pub forget: f64,
    /// Share of monitor readings the person does not take.
    #[serde(default = "Habit::default_skip_reading")]
    pub skip_reading: f64,
}

impl Habit {
    fn default_on_time() -> f64 {
        0.80
    }
    fn default_late() -> f64 {
        0.15
    }
    fn default_forget() -> f64 {
        0.05
    }
    fn default_skip_reading() -> f64 {
        0.05
    }

    /// Why the habit cannot be played, if it cannot.
    pub fn problem(&self) -> Option<String> {
        let weights = [
            ("on_time", self.on_time),
            ("late", self.late),
            ("forget", self.forget),
        ];
        if let Some((name, w)) = weights.iter().find(|(_, w)| !(w.is_finite() && *w >= 0.0)) {
            return Some(format!("`{name}` = {w} is not a weight of zero or more"));
        }
        if weights.iter().map(|(_, w)| w).sum::<f64>() <= 0.0 {
            return Some("`on_time`, `late` and `forget` cannot all be zero".into());
        }
        if !(0.0..=1.0).contains(&self.skip_reading) {
            return Some(format!(
                "`skip_reading` = {} is not a share between 0 and 1",
                self.skip_reading
            ));
        }
        None
    }
}

impl Default for Habit {
    fn default() -> Self {
        Self {
            on_time: Self::default_on_time(),
            late: Self::default_late(),
            forget: Self::default_forget(),
            skip_reading: Self::default_skip_reading(),
        }
    }
}

/// The household a simulation plays: everyone's habit, and per-patient exceptions.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HouseholdConfig {
    /// The habit of everyone not named below.
    #[serde(flatten)]
    pub habit: Habit,
    /// Habits by patient pseudonym.
    #[serde(default)]
    pub patient: BTreeMap<String, Habit>,
}

impl HouseholdConfig {
    /// Why it cannot be played, if it cannot.
    pub fn problem(&self) -> Option<String> {
        if let Some(p) = self.habit.problem() {
            return Some(p);
        }
        self.patient
            .iter()
            .find_map(|(id, h)| h.problem().map(|p| format!("patient {id:?}: {p}")))
    }
}

/// What a person does about a dose that has just dropped into the cup.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pickup {
    /// Lifts the cup this long after the dose dropped.
    After(Duration),
    /// Never comes for it.
    Never,
}

/// One blood-pressure and pulse measurement.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Measurement {
    /// mmHg.
    pub systolic: f64,
    /// mmHg.
    pub diastolic: f64,
    /// Beats per minute.
    pub pulse: f64,
}

impl Measurement {
    /// The three readings the monitor sends, as the dispenser takes them.
    pub fn readings(&self, patient: &str, at: DateTime<Utc>) -> [VitalReading; 3] {
        let reading = |vital, value: f64| VitalReading {
            vital,
            value: value.round(),
            at,
            quality: Quality::Good,
            source: MONITOR_SOURCE.into(),
            patient: Some(patient.to_string()),
        };
        [
            reading(Vital::SystolicBp, self.systolic),
            reading(Vital::DiastolicBp, self.diastolic),
            reading(Vital::HeartRate, self.pulse),
        ]
    }
}

/// A simulated person: the patient of one schedule.
#[derive(Clone, Debug)]
pub struct Person {
    /// Patient pseudonym.
    pub patient: String,
    habit: Habit,
    rng: ChaCha8Rng,
    /// Usual systolic, diastolic and pulse; each measurement scatters around them.
    baseline: (f64, f64, f64),
    /// Whether a medication of theirs is held on blood pressure or pulse (they own a monitor).
    pub monitored: bool,
}

impl Person {
    /// The person of `schedule`, the `index`-th of the household, with draws from `seed`.
    pub fn new(schedule: &Schedule, index: usize, habit: Habit, seed: u64) -> Self {
        let stream = seed ^ (index as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let mut rng = ChaCha8Rng::seed_from_u64(stream);
        let baseline = (
            rng.random_range(118.0..138.0),
            rng.random_range(72.0..86.0),
            rng.random_range(66.0..78.0),
        );
        Self {
            patient: schedule.patient.clone(),
            habit,
            rng,
            baseline,
            monitored: schedule.medications.iter().any(|(m, _)| {
                m.holds.iter().any(|h| {
                    matches!(
                        h.vital,
                        Vital::HeartRate | Vital::SystolicBp | Vital::DiastolicBp
                    )
                })
            }),
        }
    }

    /// When the person lifts the cup for a dose that just dropped, given how long after its
    /// time the dose's window stays open (None: an as-needed dose, asked for and so collected
    /// at once).
    pub fn pickup(&mut self, late_window: Option<Duration>) -> Pickup {
        let Some(late_window) = late_window else {
            return Pickup::After(self.uniform(Duration::from_secs(30), Duration::from_secs(300)));
        };
        let h = self.habit;
        let r = self.rng.random_range(0.0..1.0) * (h.on_time + h.late + h.forget);
        if r < h.on_time {
            Pickup::After(self.uniform(Duration::from_secs(60), ON_TIME_WITHIN))
        } else if r < h.on_time + h.late {
            // Late, but inside the window: after the late notice, before the window closes.
            let from = ON_TIME_WITHIN + Duration::from_secs(120);
            let to = late_window.mul_f64(0.9).max(from + Duration::from_secs(60));
            Pickup::After(self.uniform(from, to))
        } else {
            Pickup::Never
        }
    }

    /// How long before a monitored dose the person sits down to measure.
    pub fn lead(&mut self) -> Duration {
        self.uniform(Duration::from_secs(10 * 60), Duration::from_secs(40 * 60))
    }

    /// A measurement, or None when the person skips it. Mostly near their baseline; now and
    /// then a low pulse or pressure, which a clinician's hold is there to catch.
    pub fn measure(&mut self) -> Option<Measurement> {
        if self
            .rng
            .random_bool(self.habit.skip_reading.clamp(0.0, 1.0))
        {
            return None;
        }
        let (sys, dia, pulse) = self.baseline;
        // One morning in twenty the person is flat: pulse and pressure well down.
        let dip = if self.rng.random_bool(0.05) { 1.0 } else { 0.0 };
        let mut draw = |mean: f64, sd: f64| {
            Normal::new(mean, sd)
                .map(|n| n.sample(&mut self.rng))
                .unwrap_or(mean)
        };
        Some(Measurement {
            systolic: draw(sys - 25.0 * dip, 8.0),
            diastolic: draw(dia - 12.0 * dip, 5.0),
            pulse: draw(pulse - 16.0 * dip, 4.0),
        })
    }

    fn uniform(&mut self, from: Duration, to: Duration) -> Duration {
        if to <= from {
            return from;
        }
        Duration::from_secs(self.rng.random_range(from.as_secs()..=to.as_secs()))
    }
}

/// A dose that has just dropped into the cup, as the household hears of it.
#[derive(Clone, Debug)]
pub struct Dropped {
    /// Whose dose.
    pub patient: String,
    /// How long its window stays open after its time (None: as needed).
    pub late_window: Option<Duration>,
}

/// What the household acts on.
pub(super) struct Stage {
    pub handle: crate::board::sim::SimHandle,
    pub clock: std::sync::Arc<crate::clock::SimClock>,
    pub dispenser: tokio::sync::mpsc::Sender<crate::controller::DispenserCommand>,
    pub dropped: tokio::sync::mpsc::UnboundedReceiver<Dropped>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Act {
    /// Lift the cup if anything is in it.
    LiftCup,
    /// The `n`-th person measures before their dose at this instant.
    Measure(usize, DateTime<Utc>),
}

/// Plays the household on simulated time until the simulation ends (the task is aborted).
pub(super) async fn live(mut people: Vec<Person>, schedules: Vec<Schedule>, mut stage: Stage) {
    use crate::clock::Clock as _;
    let clock = stage.clock.clone();
    let mut agenda: BTreeMap<(Duration, u64), Act> = BTreeMap::new();
    let mut n = 0u64;
    let mut add = |agenda: &mut BTreeMap<(Duration, u64), Act>, at: Duration, act: Act| {
        n += 1;
        agenda.insert((at, n), act);
    };
    let at_wall = |wall: DateTime<Utc>| {
        let ahead = (wall - clock.now()).to_std().unwrap_or(Duration::ZERO);
        clock.monotonic() + ahead
    };
    for (i, (person, schedule)) in people.iter_mut().zip(&schedules).enumerate() {
        if let Some(next) = person
            .monitored
            .then(|| next_monitored(schedule, clock.now()))
            .flatten()
        {
            let lead = person.lead();
            add(
                &mut agenda,
                at_wall(next).saturating_sub(lead),
                Act::Measure(i, next),
            );
        }
    }
    loop {
        let next = agenda.keys().next().map(|(at, _)| *at);
        tokio::select! {
            dropped = stage.dropped.recv() => {
                let Some(d) = dropped else { return };
                let Some(person) = people.iter_mut().find(|p| p.patient == d.patient) else {
                    continue;
                };
                if let Pickup::After(after) = person.pickup(d.late_window) {
                    add(&mut agenda, clock.monotonic() + after, Act::LiftCup);
                }
            }
            _ = crate::clock::sleep_until(&*clock, next.unwrap_or(Duration::MAX)), if next.is_some() => {
                let Some((_, act)) = agenda.pop_first() else { continue };
                match act {
                    Act::LiftCup => {
                        let mut w = stage.handle.world();
                        if w.units_in_cup() > 0 {
                            w.pick_up_cup(CUP_AWAY);
                        }
                    }
                    Act::Measure(i, dose) => {
                        let (person, schedule) = (&mut people[i], &schedules[i]);
                        if let Some(m) = person.measure() {
                            for reading in m.readings(&person.patient, clock.now()) {
                                let cmd = crate::dosing::dispenser::Command::Vital(reading);
                                let _ = stage
                                    .dispenser
                                    .send(crate::controller::DispenserCommand::tell(cmd))
                                    .await;
                            }
                        }
                        if let Some(next) = next_monitored(schedule, dose) {
                            let lead = person.lead();
                            add(&mut agenda, at_wall(next).saturating_sub(lead), Act::Measure(i, next));
                        }
                    }
                }
            }
        }
    }
}

/// The next time after `after` at which a dose held on pressure or pulse falls due.
fn next_monitored(schedule: &Schedule, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
    schedule
        .medications
        .iter()
        .filter(|(m, _)| {
            m.holds.iter().any(|h| {
                matches!(
                    h.vital,
                    Vital::HeartRate | Vital::SystolicBp | Vital::DiastolicBp
                )
            })
        })
        .filter_map(|(_, rec)| rec.as_ref())
        .filter_map(|rec| {
            rec.next(schedule.tz, after + chrono::Duration::seconds(1), 1)
                .first()
                .copied()
        })
        .min()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schedule(src: &str) -> Schedule {
        Schedule::parse(src, std::path::Path::new("p.toml")).expect("valid schedule")
    }

    const MONITORED: &str = r#"
[patient]
id = "p-1"
timezone = "Europe/Berlin"
[[medication]]
name = "Metoprolol"
strength = "25 mg"
slot = 0
units = 1
times = ["08:00"]
[[medication.hold]]
vital = "heart_rate"
below = 55
max_age = "2h"
"#;

    const PLAIN: &str = r#"
[patient]
id = "p-2"
timezone = "Europe/Berlin"
[[medication]]
name = "Metformin"
strength = "500 mg"
slot = 1
units = 1
times = ["08:00"]
"#;

    #[test]
    fn the_same_seed_gives_the_same_household() {
        let s = schedule(MONITORED);
        let mut a = Person::new(&s, 0, Habit::default(), 7);
        let mut b = Person::new(&s, 0, Habit::default(), 7);
        let late = Some(Duration::from_secs(7200));
        for _ in 0..50 {
            assert_eq!(a.pickup(late), b.pickup(late));
            assert_eq!(a.measure(), b.measure());
        }
        let mut other = Person::new(&s, 1, Habit::default(), 7);
        let draws = |p: &mut Person| (0..20).map(|_| p.pickup(late)).collect::<Vec<_>>();
        assert_ne!(
            draws(&mut a),
            draws(&mut other),
            "each person draws their own"
        );
    }

    #[test]
    fn pickups_follow_the_habit_and_stay_inside_the_window() {
        let s = schedule(PLAIN);
        let habit = Habit {
            on_time: 0.6,
            late: 0.3,
            forget: 0.1,
            skip_reading: 0.0,
        };
        let mut p = Person::new(&s, 0, habit, 42);
        let window = Duration::from_secs(7200);
        let (mut on_time, mut late, mut never) = (0, 0, 0);
        for _ in 0..4000 {
            match p.pickup(Some(window)) {
                Pickup::After(d) if d <= ON_TIME_WITHIN => on_time += 1,
                Pickup::After(d) => {
                    assert!(d < window, "a late pickup still falls in the window: {d:?}");
                    late += 1
                }
                Pickup::Never => never += 1,
            }
        }
        let share = |n: i32| f64::from(n) / 4000.0;
        assert!((share(on_time) - 0.6).abs() < 0.04, "on time {on_time}");
        assert!((share(late) - 0.3).abs() < 0.04, "late {late}");
        assert!((share(never) - 0.1).abs() < 0.03, "never {never}");
    }

    #[test]
    fn a_person_who_never_forgets_always_comes() {
        let s = schedule(PLAIN);
        let habit = Habit {
            forget: 0.0,
            ..Habit::default()
        };
        let mut p = Person::new(&s, 0, habit, 1);
        assert!((0..500).all(|_| p.pickup(Some(Duration::from_secs(3600))) != Pickup::Never));
    }

    #[test]
    fn only_a_patient_held_on_pressure_or_pulse_owns_a_monitor() {
        assert!(Person::new(&schedule(MONITORED), 0, Habit::default(), 1).monitored);
        assert!(!Person::new(&schedule(PLAIN), 0, Habit::default(), 1).monitored);
    }

    #[test]
    fn measurements_are_plausible_and_sometimes_low_enough_to_hold() {
        let mut p = Person::new(&schedule(MONITORED), 0, Habit::default(), 3);
        let ms: Vec<Measurement> = (0..1000).filter_map(|_| p.measure()).collect();
        assert!(
            ms.len() > 900 && ms.len() < 1000,
            "a few are skipped: {}",
            ms.len()
        );
        for m in &ms {
            assert!((70.0..190.0).contains(&m.systolic), "{m:?}");
            assert!((40.0..120.0).contains(&m.diastolic), "{m:?}");
            assert!((30.0..120.0).contains(&m.pulse), "{m:?}");
            assert!(m.diastolic < m.systolic, "{m:?}");
        }
        assert!(
            ms.iter().any(|m| m.pulse < 55.0),
            "a low pulse now and then"
        );
        let readings = ms[0].readings("p-1", DateTime::<Utc>::UNIX_EPOCH);
        assert!(readings
            .iter()
            .all(|r| r.patient.as_deref() == Some("p-1") && r.value.fract() == 0.0));
    }

    #[test]
    fn a_habit_that_cannot_be_played_is_refused_with_its_field() {
        let zero = Habit {
            on_time: 0.0,
            late: 0.0,
            forget: 0.0,
            skip_reading: 0.0,
        };
        assert!(zero.problem().is_some_and(|p| p.contains("all be zero")));
        let negative = Habit {
            late: -1.0,
            ..Habit::default()
        };
        assert!(negative.problem().is_some_and(|p| p.contains("`late`")));
        let cfg = HouseholdConfig {
            habit: Habit::default(),
            patient: BTreeMap::from([(
                "p-9".to_string(),
                Habit {
                    skip_reading: 2.0,
                    ..Habit::default()
                },
            )]),
        };
        assert!(cfg.problem().is_some_and(|p| p.contains("p-9")));
    }
}
