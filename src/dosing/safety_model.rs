//! The dispenser core against a reference model: a state-machine property test.
//!
//! Random runs of weeks of ticks, schedule replacements by command (renames, letter case,
//! moved times, a weekly guard someone tries to drop), schedule files edited behind the
//! appliance's back, clock steps both ways and a person trusting the clock, restarts (clean, or
//! a crash while the carousel turns) rebuilt from what the core recorded, PRN requests, jams,
//! reconciliations and pickups drive the pure [`Dispenser`] exactly as the controller's task
//! does: every effect is carried out and answered (`on_homed`, `on_drop`), and every event it
//! emits goes into the model's audit log, from which a restart rebuilds it the way the store
//! does (the time floor, the clock lock, the elapsed anchor, the schedule in force and its
//! unconfirmed guards).
//!
//! A clock step happens while the appliance runs and is seen at its next input (the
//! controller polls every few seconds); a step while it is off cannot be told from time
//! passing, except when the clock lands behind the last record, which locks it.
//!
//! The model keeps its own log of what physically left the carousel, in *real* time (an
//! uncertain or interrupted turn counts as everything released, unless a caregiver reconciles
//! it as not given), and its own truth about the clock (stepped and not yet confirmed by a
//! person, or behind the last record at a restart). After every step it checks what must hold
//! whatever happened:
//! - no occurrence of a medication (its slot) is released twice;
//! - two releases of the twice-daily medication are at least 6 h apart in real time (half its
//!   12 h gap: a moved time or a rename cannot squeeze a second dose in), at most 3 fall in any
//!   real 24 h (the windows a 24 h span can touch), and at most `max_daily_units` per local date
//!   of the occurrence;
//! - the weekly high-alert medication is never released twice within 6 real days;
//! - the as-needed medication keeps its 4 h interval and its 4 per rolling 24 h in real time;
//! - nothing is released while the clock is untrusted.
//!
//! The run is seeded (`MEDBOX_MODEL_SEED`, default 2026) so CI is reproducible; other seeds
//! explore further (`MEDBOX_MODEL_SEED=7 MEDBOX_MODEL_CASES=100000 cargo test --lib safety_model`).

use super::dispenser::{Command, Dispenser, Effect, Geometry, Instant, Restored, Turned};
use super::engine::{DoseRecord, ElapsedAnchor, Outcome, PrnRequest, Role};
use super::history::DoseHistory;
use super::replace;
use super::schedule::Schedule;
use crate::devices::DropReport;
use crate::events::Event;
use chrono::{DateTime, Duration, NaiveDate, Utc};
use proptest::prelude::*;
use std::path::Path;

const START: &str = "2026-03-23T00:00:00Z";
const PATIENT: &str = "p-1";
const TOLERANCE_S: i64 = super::engine::CLOCK_TOLERANCE_S;
const GEOMETRY: Geometry = Geometry {
    slots: 8,
    capacity: 250,
};

/// One version of the patient's schedule.
#[derive(Clone, Copy, Debug)]
struct Version {
    /// Which spelling of the twice-daily medication (the last one is another name).
    name: usize,
    /// Hours both its times are moved by.
    shift: i64,
    /// 0: methotrexate on Mondays; 1: on Tuesdays; 2: in capitals; 3: renamed daily
    /// without its flag (the change a second person must confirm).
    weekly: usize,
}

const NAMES: [&str; 4] = ["Metformin", "metformin", "  METFORMIN ", "Glucophage"];

fn source(v: Version) -> String {
    let t = |h: i64| format!("{:02}:00", (h + v.shift).rem_euclid(24));
    let weekly = match v.weekly {
        0 => "name = \"Methotrexate\"\nslot = 2\nunits = 4\ntimes = [\"09:00\"]\ndays = [\"mon\"]\nhigh_alert_weekly = true\nlate = \"12h\"\n".to_string(),
        1 => "name = \"Methotrexate\"\nslot = 2\nunits = 4\ntimes = [\"09:00\"]\ndays = [\"tue\"]\nhigh_alert_weekly = true\nlate = \"12h\"\n".to_string(),
        2 => "name = \"METHOTREXATE\"\nslot = 2\nunits = 4\ntimes = [\"09:00\"]\ndays = [\"mon\"]\nlate = \"12h\"\n".to_string(),
        _ => "name = \"Vitamin B12\"\nslot = 2\nunits = 4\ntimes = [\"09:00\"]\n".to_string(),
    };
    format!(
        "[patient]\nid = \"{PATIENT}\"\ntimezone = \"Europe/Berlin\"\n\
         [[medication]]\nname = \"{}\"\nslot = 0\nunits = 1\ntimes = [\"{}\", \"{}\"]\nmax_daily_units = 2\n\
         [[medication]]\n{weekly}\
         [[medication]]\nname = \"Paracetamol\"\nslot = 4\nunits = 2\nprn = {{ min_interval = \"4h\", max_per_24h = 4 }}\nmax_daily_units = 8\n",
        NAMES[v.name],
        t(8),
        t(20)
    )
}

#[derive(Clone, Debug)]
enum Op {
    /// Let this many half hours pass, ticking each one (windows are at least an hour).
    Tick(u32),
    /// Days pass, ticked every two hours (some doses are missed): long enough for records to
    /// be let go from memory, so later clock steps back make the core read them again.
    Away(u32),
    Replace(Version),
    /// The wall clock jumps by this many minutes.
    ClockStep(i64),
    /// A person trusts the clock: after setting it right, or as it is when it is behind.
    Trust {
        correct: bool,
    },
    Restart,
    /// The process dies while the next dispense turns the carousel; it restarts at once.
    CrashDuringDispense,
    /// The file is edited behind the appliance's back and the appliance restarts on it.
    EditFileAndRestart(Version),
    Prn,
    /// The next dispense jams mid-way (uncertain).
    Jam,
    /// A caregiver settles the latest uncertain or interrupted dispense.
    Reconcile {
        given: bool,
    },
    Pickup,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => (1u32..=24).prop_map(Op::Tick),
        1 => (2u32..=10).prop_map(Op::Away),
        2 => (0usize..4, -2i64..=3, 0usize..4)
            .prop_map(|(name, shift, weekly)| Op::Replace(Version { name, shift, weekly })),
        1 => prop_oneof![-720i64..-2, 2i64..720].prop_map(Op::ClockStep),
        1 => any::<bool>().prop_map(|correct| Op::Trust { correct }),
        1 => Just(Op::Restart),
        1 => Just(Op::CrashDuringDispense),
        1 => (0usize..4, -2i64..=3, 0usize..4)
            .prop_map(|(name, shift, weekly)| Op::EditFileAndRestart(Version { name, shift, weekly })),
        2 => Just(Op::Prn),
        1 => Just(Op::Jam),
        1 => any::<bool>().prop_map(|given| Op::Reconcile { given }),
        1 => Just(Op::Pickup),
    ]
}

/// What physically left the carousel, as the model sees it.
#[derive(Clone, Debug)]
struct Release {
    slot: u8,
    occurrence: Option<DateTime<Utc>>,
    local_date: NaiveDate,
    real: DateTime<Utc>,
    units: u32,
}

/// How the model's carousel answers the next turn.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Next {
    Works,
    Jams,
    Crashes,
}

struct Appliance {
    core: Dispenser,
    /// Real time.
    real: DateTime<Utc>,
    /// Wall clock minus real time.
    offset: Duration,
    /// Real time at the last boot (the monotonic clock counts from there).
    boot: DateTime<Utc>,
    /// The model's truth: the wall clock was stepped, or found behind the last record, and no
    /// person has confirmed it since.
    clock_doubtful: bool,
    next: Next,
    released: Vec<Release>,
    /// What the core recorded, as the store keeps it: (wall time written, event).
    log: Vec<(DateTime<Utc>, Event)>,
    /// The schedule text in force (the last one installed by command or found in the file).
    in_force: String,
    /// The guarded medications of the last confirmed schedule (the loader's reference).
    confirmed: Vec<replace::Guarded>,
    /// When the schedule in force was installed.
    installed_at: Option<DateTime<Utc>>,
    /// A crash happened while carrying out effects: the rest never ran.
    crashed: bool,
    /// The core asked for the store's dose records; they come before its next tick (so
    /// commands meanwhile meet a history that lacks them).
    history_wanted: bool,
    tokens: u64,
}

/// The model's own view of a schedule text (parsed once per version: there are 96).
fn parse(source: &str) -> Schedule {
    thread_local! {
        static PARSED: std::cell::RefCell<std::collections::HashMap<String, Schedule>> =
            Default::default();
    }
    PARSED.with(|p| {
        p.borrow_mut()
            .entry(source.to_string())
            .or_insert_with(|| {
                Schedule::parse(source, Path::new("model.toml")).unwrap_or_else(|e| panic!("{e:?}"))
            })
            .clone()
    })
}

impl Appliance {
    fn new() -> Self {
        let start = DateTime::parse_from_rfc3339(START)
            .map(|t| t.with_timezone(&Utc))
            .unwrap_or_default();
        let in_force = source(Version {
            name: 0,
            shift: 0,
            weekly: 0,
        });
        let schedule = parse(&in_force);
        let confirmed = replace::guarded(&schedule);
        let restored = Restored {
            schedules: vec![schedule],
            since: Some(start),
            keep_history: Some(Duration::zero()),
            ..Restored::default()
        };
        let boot = Instant {
            wall: start,
            mono: std::time::Duration::ZERO,
        };
        let mut a = Self {
            core: Dispenser::on_restart(restored, GEOMETRY, boot),
            real: start,
            offset: Duration::zero(),
            boot: start,
            clock_doubtful: false,
            next: Next::Works,
            released: Vec::new(),
            log: Vec::new(),
            in_force,
            confirmed,
            installed_at: None,
            crashed: false,
            history_wanted: false,
            tokens: 0,
        };
        let fx = a.core.start(boot);
        a.carry_out(fx);
        a
    }

    /// Both clocks as the controller reads them.
    fn now(&self) -> Instant {
        Instant {
            wall: self.real + self.offset,
            mono: (self.real - self.boot).to_std().unwrap_or_default(),
        }
    }

    /// Carries out effects as the controller's task does, answering for the carousel.
    fn carry_out(&mut self, fx: Vec<Effect>) {
        let mut queue: std::collections::VecDeque<Effect> = fx.into();
        while let Some(effect) = queue.pop_front() {
            if self.crashed {
                return;
            }
            match effect {
                Effect::Emit(e) => {
                    let wall = self.now().wall;
                    if let Event::ScheduleReplaced { at, source, .. } = &e {
                        self.in_force = source.clone();
                        self.confirmed = replace::guarded(&parse(source));
                        self.installed_at = Some(*at);
                    }
                    self.log.push((wall, e));
                }
                Effect::Lights { .. } | Effect::Reply { .. } => {}
                Effect::LoadHistory => self.history_wanted = true,
                Effect::Home => queue.extend(self.core.on_homed(Ok(7), self.now())),
                Effect::Turn { slot, units, .. } => {
                    self.release(slot, units);
                    let report = |seen, home| {
                        Turned::Done(Ok(DropReport {
                            slot,
                            requested: units,
                            drops_seen: seen,
                            stray_drops: 0,
                            stray_from: None,
                            returned_home: home,
                        }))
                    };
                    match std::mem::replace(&mut self.next, Next::Works) {
                        Next::Works => {
                            queue.extend(self.core.on_drop(report(units, true), self.now()))
                        }
                        Next::Jams => queue.extend(self.core.on_drop(report(0, false), self.now())),
                        Next::Crashes => {
                            self.crashed = true;
                            return;
                        }
                    }
                }
            }
        }
    }

    /// The model's carousel released `units` from `slot` (for the occurrence the last intent
    /// names): checked against the model's clock truth at once.
    fn release(&mut self, slot: u8, units: u32) {
        assert!(
            !self.clock_doubtful,
            "released from slot {slot} while the clock is untrusted"
        );
        let occurrence = self.log.iter().rev().find_map(|(_, e)| match e {
            Event::Dose { record, .. } if record.outcome == Outcome::Dispensing => {
                Some(record.occurrence)
            }
            _ => None,
        });
        let occurrence = occurrence.unwrap_or_else(|| panic!("a turn without a recorded intent"));
        let tz = chrono_tz::Europe::Berlin;
        let local = occurrence
            .unwrap_or(self.now().wall)
            .with_timezone(&tz)
            .date_naive();
        self.released.push(Release {
            slot,
            occurrence,
            local_date: local,
            real: self.real,
            units,
        });
    }

    fn command(&mut self, cmd: Command) {
        self.tokens += 1;
        let fx = self.core.on_command(cmd, Some(self.tokens), self.now());
        self.carry_out(fx);
        if self.crashed {
            self.restart();
        }
    }

    fn tick(&mut self) {
        if std::mem::take(&mut self.history_wanted) {
            let stored = self.restored().history;
            let fx =
                self.core
                    .on_command(Command::HistoryLoaded(Box::new(stored)), None, self.now());
            self.carry_out(fx);
        }
        let fx = self.core.on_tick(self.now());
        self.carry_out(fx);
        if self.crashed {
            self.restart();
        }
    }

    /// What the store gives a restart, from the log. Records are let go from memory as
    /// soon as no rule reaches them (nothing is kept for reports), so every clock step back
    /// and every schedule with a longer reach makes the core read them back.
    fn restored(&self) -> Restored {
        let mut history = DoseHistory::default();
        let mut anchor: Option<ElapsedAnchor> = None;
        let mut locked = false;
        for (_, e) in &self.log {
            match e {
                Event::Dose {
                    patient, record, ..
                } => {
                    history.push(patient, record.clone());
                    anchor = Some((record.at, record.elapsed.unwrap_or(record.at)));
                }
                Event::ClockTrust {
                    at,
                    trusted,
                    elapsed,
                    ..
                } => {
                    locked = !trusted;
                    anchor = Some((*at, elapsed.unwrap_or(*at)));
                }
                _ => {}
            }
        }
        let schedule = parse(&self.in_force);
        // The loader: what removes a guard of the last confirmed version stays locked.
        let weak = replace::weakened(&self.confirmed, &schedule);
        let unconfirmed = if weak.is_empty() {
            Vec::new()
        } else {
            vec![replace::Unconfirmed {
                patient: PATIENT.into(),
                version: replace::version(&schedule),
                medications: weak.iter().map(|(m, _)| m.clone()).collect(),
                reasons: weak.into_iter().map(|(_, r)| r).collect(),
                confirmed: self.confirmed.clone(),
            }]
        };
        Restored {
            schedules: vec![schedule],
            history,
            since: DateTime::parse_from_rfc3339(START)
                .ok()
                .map(|t| t.with_timezone(&Utc)),
            clock_floor: self.log.last().map(|(wall, _)| *wall),
            clock_locked: locked,
            elapsed_anchor: anchor,
            unconfirmed,
            installed_at: self
                .installed_at
                .map(|t| [(PATIENT.to_string(), t)].into_iter().collect())
                .unwrap_or_default(),
            keep_history: Some(Duration::zero()),
            ..Restored::default()
        }
    }

    /// A restart: only what was recorded survives; the monotonic clock starts again.
    fn restart(&mut self) {
        self.crashed = false;
        self.next = Next::Works;
        self.boot = self.real;
        let restored = self.restored();
        let wall = self.now().wall;
        let behind = restored
            .clock_floor
            .is_some_and(|f| (f - wall).num_seconds() > TOLERANCE_S);
        // A step the appliance recorded stays a doubt; one it never saw (the clock moved ahead
        // while it was down) cannot be told from time passing, after a reboot whose monotonic
        // clock starts again. A clock behind the last record always can.
        self.clock_doubtful = behind || (self.clock_doubtful && restored.clock_locked);
        // A restart reads every record: an earlier request is moot.
        self.history_wanted = false;
        self.core = Dispenser::on_restart(restored, GEOMETRY, self.now());
        let fx = self.core.start(self.now());
        self.carry_out(fx);
    }

    fn apply(&mut self, op: &Op) {
        match op {
            Op::Tick(n) => {
                for _ in 0..*n {
                    self.real += Duration::minutes(30);
                    self.tick();
                }
            }
            Op::Away(days) => {
                for _ in 0..days * 12 {
                    self.real += Duration::hours(2);
                    self.tick();
                }
            }
            Op::Replace(v) => self.command(Command::ReplaceSchedule {
                patient: PATIENT.into(),
                source: source(*v),
                actor: "nurse-1".into(),
                confirm: None,
            }),
            Op::ClockStep(m) => {
                self.offset += Duration::minutes(*m);
                if m.abs() * 60 > TOLERANCE_S {
                    self.clock_doubtful = true;
                }
                // A running appliance polls within seconds: the next input sees the step.
                self.tick();
            }
            Op::Trust { correct } => {
                if *correct || self.offset > Duration::zero() {
                    // Nobody confirms a clock that shows the future: they set it right.
                    self.offset = Duration::zero();
                }
                self.clock_doubtful = false;
                self.command(Command::TrustClock {
                    actor: "nurse-1".into(),
                    comment: "checked".into(),
                });
            }
            Op::Restart => self.restart(),
            Op::CrashDuringDispense => self.next = Next::Crashes,
            Op::EditFileAndRestart(v) => {
                let text = source(*v);
                let new = parse(&text);
                // The loader records the file's version: unless it removes a guard, it becomes
                // the confirmed reference.
                if replace::weakened(&self.confirmed, &new).is_empty() {
                    self.confirmed = replace::guarded(&new);
                }
                self.in_force = text;
                self.installed_at = Some(self.now().wall);
                self.restart();
            }
            Op::Prn => self.command(Command::Prn {
                patient: PATIENT.into(),
                medication: "paracetamol".into(),
                request: PrnRequest {
                    actor: PATIENT.into(),
                    role: Role::Patient,
                    override_reason: None,
                },
            }),
            Op::Jam => self.next = Next::Jams,
            Op::Reconcile { given } => {
                let open = super::engine::effective(self.core.history().of(PATIENT))
                    .into_iter()
                    .rfind(|r| matches!(r.outcome, Outcome::Uncertain | Outcome::Dispensing))
                    .cloned();
                let Some(DoseRecord {
                    medication,
                    occurrence,
                    slot,
                    ..
                }) = open
                else {
                    return;
                };
                let before = self.log.len();
                self.command(Command::Reconcile {
                    patient: PATIENT.into(),
                    medication,
                    occurrence,
                    given: *given,
                    units: None,
                    actor: "nurse-1".into(),
                    note: "checked the cup".into(),
                });
                // The person found it did not reach the patient: it is not in the patient. (The
                // log, not the history held: that may let old records go meanwhile.)
                let settled = self.log.get(before..).is_some_and(|new| {
                    new.iter().any(|(_, e)| {
                        matches!(e, Event::Dose { record, .. } if record.outcome.is_confirmation())
                    })
                });
                if !*given && settled {
                    if let Some(i) = self
                        .released
                        .iter()
                        .rposition(|r| Some(r.slot) == slot && r.occurrence == occurrence)
                    {
                        self.released.remove(i);
                    }
                }
            }
            Op::Pickup => {
                let now = self.now();
                let mut fx = self.core.on_tray(true, now);
                fx.extend(self.core.on_tray(false, now));
                self.carry_out(fx);
            }
        }
    }

    /// The invariants, over the model's own log.
    fn check(&self) -> Result<(), TestCaseError> {
        let of = |slot: u8| -> Vec<&Release> {
            self.released.iter().filter(|r| r.slot == slot).collect()
        };
        let (daily, weekly, prn) = (of(0), of(2), of(4));
        let mut seen = std::collections::BTreeSet::new();
        for r in daily.iter().chain(&weekly) {
            prop_assert!(
                seen.insert((r.slot, r.occurrence)),
                "occurrence released twice: {r:?}"
            );
        }
        let apart = |rs: &[&Release], min: Duration, what: &str| -> Result<(), TestCaseError> {
            for w in rs.windows(2) {
                prop_assert!(
                    w[1].real - w[0].real >= min,
                    "{what}: released at {} and again at {}",
                    w[0].real,
                    w[1].real
                );
            }
            Ok(())
        };
        apart(&daily, Duration::hours(6), "twice-daily medication")?;
        apart(&weekly, Duration::days(6), "weekly guard")?;
        apart(&prn, Duration::hours(4), "PRN interval")?;
        let in_24h = |rs: &[&Release], max: usize, what: &str| -> Result<(), TestCaseError> {
            for (i, r) in rs.iter().enumerate() {
                let n = rs[i..]
                    .iter()
                    .take_while(|o| o.real - r.real < Duration::hours(24))
                    .count();
                prop_assert!(n <= max, "{what}: {n} releases within 24 h from {}", r.real);
            }
            Ok(())
        };
        in_24h(&daily, 3, "twice-daily medication")?;
        in_24h(&prn, 4, "PRN rolling 24 h")?;
        let mut per_day: std::collections::BTreeMap<NaiveDate, u32> = Default::default();
        for r in &daily {
            *per_day.entry(r.local_date).or_default() += r.units;
        }
        for (day, units) in per_day {
            prop_assert!(units <= 2, "max_daily_units: {units} units on {day}");
        }
        Ok(())
    }
}

proptest! {
    // Deterministic by default (CI runs the same 10 000 cases each time); set
    // MEDBOX_MODEL_SEED to explore others and MEDBOX_MODEL_CASES to run more.
    #![proptest_config(ProptestConfig {
        cases: std::env::var("MEDBOX_MODEL_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(10_000),
        rng_seed: proptest::test_runner::RngSeed::Fixed(
            std::env::var("MEDBOX_MODEL_SEED").ok().and_then(|c| c.parse().ok()).unwrap_or(2026),
        ),
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    /// The dispenser core never breaks the dose-safety invariants, whatever happens in between.
    #[test]
    fn dispenser_core_keeps_every_dose_safety_invariant(ops in proptest::collection::vec(op(), 1..40)) {
        let mut a = Appliance::new();
        for op in &ops {
            a.apply(op);
            a.check()?;
        }
    }
}
