//! The dispenser's decisions, pure: every rule that decides whether a unit leaves the carousel
//! lives here, driven by inputs and answering with [`Effect`]s the controller carries out.
//!
//! Nothing here touches hardware, the store or a clock: the controller's task samples the tray
//! and button, reads both clocks into an [`Instant`], turns the carousel when told to and reports
//! what happened (`on_homed`, `on_drop`). So every decision — a dose due, a PRN request, a
//! reconciliation, a clock that can no longer be trusted, a dispense that ended uncertain — is
//! made in code a test can drive step by step, and the state-machine test in `safety_model`
//! drives exactly this code.
//!
//! Outcomes follow the dose lifecycle: a release the break-beam confirms is `dispensed` (then
//! `taken` on pickup or button); a jam before anything moved, or an empty-slot refusal before
//! motion, is `failed` (may be tried again); anything else — the motor turned but the beam saw
//! too little, or the carousel lost its position — is `uncertain`, sounds the alarm and is never
//! retried.

use super::engine::{
    self, DoseRecord, ElapsedAnchor, Now, Outcome, PrnRequest, VitalReading, CLOCK_TOLERANCE_S,
};
use super::escalation::{self, Step};
use super::history::DoseHistory;
use super::inventory::Inventory;
use super::plan::{Action, Planner};
use super::schedule::Schedule;
use crate::devices::{CarouselError, DropReport};
use crate::events::Event;
use crate::refusal::{refuse, Answer, Refusal, RefusalCode};
use chrono::{DateTime, NaiveDate, Utc};
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

/// How often the tray and button are sampled in the first minutes after a dispense, while the
/// reminder sounds: fast enough for a short button press.
const ATTENTIVE_POLL: Duration = Duration::from_millis(100);
/// How long the dispenser stays that attentive after a dispense.
const ATTENTIVE_FOR: Duration = Duration::from_secs(15 * 60);
/// How often while a dispensed dose still waits to be taken (a cup is lifted for seconds).
const PENDING_POLL: Duration = Duration::from_secs(1);
/// How often otherwise (the states are still tracked so a change is never misread as an edge).
const IDLE_POLL: Duration = Duration::from_secs(5);
/// How often the dose planner runs while it waits on something it cannot foresee: a dose in
/// the cup (its reminders), records being read back from the store.
const PLAN_EVERY: Duration = Duration::from_secs(60);
/// The longest the planner sleeps when no window opens or closes sooner: stock and expiry
/// warnings and letting go of old records need no finer step than this.
const PLAN_IDLE_MAX: Duration = Duration::from_secs(15 * 60);
/// How far the wall clock may move against the monotonic one before the next planning round,
/// timed on the old offset, is brought forward: a window edge may have moved.
const REPLAN_ON_STEP_S: i64 = 1;
/// How often the adherence summary is published.
const SUMMARY_EVERY: Duration = Duration::from_secs(24 * 3600);
/// How long a dose whose dispense failed before motion waits before it is tried again.
const FAILED_RETRY_AFTER: Duration = Duration::from_secs(10 * 60);

/// Now, on both clocks the appliance has: the wall clock (which a person or NTP may step) and
/// the monotonic clock since boot (which only moves forward).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Instant {
    /// The wall clock.
    pub wall: DateTime<Utc>,
    /// The monotonic clock.
    pub mono: Duration,
}

/// Who waits for a command's answer: the controller's handle, given back in [`Effect::Reply`].
pub type Token = u64;

/// What the dispenser is asked to do.
#[derive(Clone, Debug)]
pub enum Command {
    /// A caregiver skips a scheduled dose.
    Skip {
        /// Patient pseudonym.
        patient: String,
        /// Medication (any letter case).
        medication: String,
        /// The occurrence.
        occurrence: DateTime<Utc>,
        /// Who.
        actor: String,
    },
    /// A caregiver says what became of an uncertain or interrupted dispense.
    Reconcile {
        /// Patient pseudonym.
        patient: String,
        /// Medication (any letter case).
        medication: String,
        /// The occurrence (None: the medication's as-needed doses).
        occurrence: Option<DateTime<Utc>>,
        /// Whether the patient had the dose.
        given: bool,
        /// Units the patient had, when given (default: the dose).
        units: Option<u32>,
        /// Who.
        actor: String,
        /// What they found.
        note: String,
    },
    /// An as-needed dose is requested.
    Prn {
        /// Patient pseudonym.
        patient: String,
        /// Medication (any letter case).
        medication: String,
        /// Who asks, in which role, and any override.
        request: PrnRequest,
    },
    /// A maintenance test dispense.
    TestDispense {
        /// Slot.
        slot: u8,
        /// Units.
        units: u32,
    },
    /// Find home again (after a reported jam was cleared).
    Rehome,
    /// A cold-chain alarm is raised and not acknowledged (true), or no longer.
    Annunciate(bool),
    /// Storage fails (true) or works again.
    StorageLock(bool),
    /// A new vital reading, to be recorded and used.
    Vital(VitalReading),
    /// A vital reading already recorded elsewhere: used, not recorded again.
    VitalRecorded(VitalReading),
    /// A person confirms the wall clock is right.
    TrustClock {
        /// Who.
        actor: String,
        /// What they checked it against.
        comment: String,
    },
    /// Units were loaded into a slot.
    Refill {
        /// Slot.
        slot: u8,
        /// Units added.
        added: u32,
        /// The lot's expiry date.
        expiry: Option<NaiveDate>,
        /// Who.
        actor: String,
        /// Lot or remark.
        note: String,
    },
    /// Publish adherence over the last `days` now.
    Report {
        /// Days back.
        days: u32,
        /// Who asked.
        actor: String,
    },
    /// Replace (or add) a patient's schedule.
    ReplaceSchedule {
        /// The patient the sender means.
        patient: String,
        /// The schedule file's text.
        source: String,
        /// Who.
        actor: String,
        /// The version a second person confirms.
        confirm: Option<String>,
    },
    /// Every dose record as the store holds it, asked for by [`Effect::LoadHistory`].
    HistoryLoaded(Box<DoseHistory>),
    /// A pharmacist acknowledges a broken audit chain: dispensing may resume.
    AcknowledgeIntegrity {
        /// Who.
        actor: String,
        /// What they checked.
        comment: String,
    },
    /// Someone acknowledges a slot's stock alerts.
    AcknowledgeStock {
        /// Slot.
        slot: u8,
        /// Who.
        actor: String,
        /// Why.
        comment: String,
    },
}

/// What the controller must do, in order.
#[derive(Debug)]
pub enum Effect {
    /// Record and publish this event.
    Emit(Event),
    /// Find the carousel's home, then report with [`Dispenser::on_homed`].
    Home,
    /// Turn the carousel to release `units` from `slot`, then report with
    /// [`Dispenser::on_drop`]. With `durable_first`, everything emitted so far (the dose's intent)
    /// must be durable before the motor moves; if it cannot be made so, report
    /// [`Turned::NotDurable`] without moving.
    Turn {
        /// Slot.
        slot: u8,
        /// Units.
        units: u32,
        /// Whether the intent must be durable first.
        durable_first: bool,
    },
    /// Show this on the buzzer and the LED.
    Lights {
        /// Buzzer on.
        buzzer: bool,
        /// LED on.
        led: bool,
    },
    /// Read every dose record back from the store and hand it over as
    /// [`Command::HistoryLoaded`]: a decision needs records that were let go from memory.
    /// Until they come, what needs them waits (the planning round) or is refused `BUSY`.
    LoadHistory,
    /// Answer the command that carried `token`.
    Reply {
        /// Whose.
        token: Token,
        /// The answer.
        answer: Answer,
    },
}

/// How a [`Effect::Turn`] ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Turned {
    /// The intent could not be made durable: nothing moved.
    NotDurable,
    /// The carousel's report.
    Done(Result<DropReport, CarouselError>),
}

/// What survives a restart, rebuilt from the store.
#[derive(Clone, Debug, Default)]
pub struct Restored {
    /// Validated schedules.
    pub schedules: Vec<Schedule>,
    /// Dose history.
    pub history: DoseHistory,
    /// The appliance's first start (None: now).
    pub since: Option<DateTime<Utc>>,
    /// The last day's vital readings.
    pub vitals: Vec<VitalReading>,
    /// What each slot holds.
    pub inventory: Inventory,
    /// Refill alert below this many days of doses (None: the default).
    pub refill_days: Option<f64>,
    /// The time floor: when the last durable record was written.
    pub clock_floor: Option<DateTime<Utc>>,
    /// The clock was left untrusted: a restart never clears that lock.
    pub clock_locked: bool,
    /// The latest record holding both clocks, from which the elapsed timeline resumes.
    pub elapsed_anchor: Option<ElapsedAnchor>,
    /// Schedules found at start-up that removed a weekly guard.
    pub unconfirmed: Vec<super::replace::Unconfirmed>,
    /// When each patient's schedule in force was installed.
    pub installed_at: BTreeMap<String, DateTime<Utc>>,
    /// Where the audit chain, and so the history above, failed to verify (None: intact).
    pub integrity: Option<IntegrityBreak>,
    /// Keep dose records in memory at least this long (and as long as any rule reaches), the
    /// older ones being read back from the store when needed; None: keep every record (there is
    /// no store to read them back from).
    pub keep_history: Option<chrono::Duration>,
}

/// Why a command that needs records let go from memory waits (they are being read back).
const HISTORY_LOADING: &str =
    "older dose records are being read back from the store; nothing done, send it again";

/// How long dose records stay in memory when a store holds them: past the 90 days a report
/// may cover, so only a clock set back by months or a schedule with a very long spacing ever
/// needs the store.
pub const KEEP_HISTORY: chrono::Duration = chrono::Duration::days(92);

/// Where the audit chain failed to verify at start-up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IntegrityBreak {
    /// The first row that does not verify.
    pub seq: i64,
    /// What kind of break, for the pharmacist.
    pub detail: String,
}

/// The carousel's shape, which bounds what a command may ask.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Geometry {
    /// Slots.
    pub slots: u8,
    /// Units one slot holds at most.
    pub capacity: u32,
}

/// A dose by patient, medication and occurrence (None: as needed).
type DoseKey = (String, String, Option<DateTime<Utc>>);

/// A dispensed dose waiting to be taken.
#[derive(Clone, Debug)]
struct Pending {
    patient: String,
    slot: u8,
    record: DoseRecord,
    /// Its reminders and alerts, each with when it falls due.
    escalation: Vec<(DateTime<Utc>, Step)>,
    /// Steps up to this instant have been given.
    escalated_to: DateTime<Utc>,
}

/// A dose being dispensed: whose, what, from which slot, for which occurrence (None: as
/// needed), and the person who asked for it (None: the schedule).
#[derive(Clone, Debug)]
struct Attempt {
    patient: String,
    medication: String,
    slot: u8,
    occurrence: Option<DateTime<Utc>>,
    actor: Option<String>,
}

/// Something that moves the carousel.
#[derive(Clone, Debug)]
enum Job {
    Dose {
        attempt: Attempt,
        units: u32,
        /// Who asked for an as-needed dose and why (for the records).
        note: Option<String>,
        reply: Option<Token>,
    },
    Test {
        slot: u8,
        units: u32,
    },
}

/// What the carousel is doing for the dispenser.
#[derive(Clone, Debug)]
enum Flight {
    /// Finding home; then this job, if any.
    Homing(Option<Job>),
    /// Turning for this job.
    Turning(Job),
}

/// Whether a vital reading still has to be recorded.
#[derive(Clone, Copy, PartialEq, Eq)]
enum VitalSource {
    New,
    Recorded,
}

/// The dispenser's state and rules.
pub struct Dispenser {
    geometry: Geometry,
    schedules: Vec<Schedule>,
    history: DoseHistory,
    /// [`Dispenser::awaiting_reconciliation`] for a history of this many records (asked at
    /// every input; the history only grows, so its count says when to ask again).
    reconciliation: std::cell::Cell<Option<(u64, bool)>>,
    inventory: Inventory,
    refill_days: Option<f64>,
    planner: Planner,
    vitals: Vec<VitalReading>,
    homed: bool,
    flight: Option<Flight>,
    /// Doses in the cup, oldest first: one pickup takes them all.
    pending: Vec<Pending>,
    attentive_until: Duration,
    /// Doses whose dispense failed before motion, and when they may be tried again (None: after
    /// the next refill), so a jam or an empty slot is not retried, and recorded, every minute.
    retry_after: HashMap<DoseKey, Option<Duration>>,
    /// When (monotonic) the next planning round is due: at the next window edge the planner
    /// foresees, at once after an input, at most [`PLAN_IDLE_MAX`] on.
    next_plan: Duration,
    /// The wall clock's offset from the monotonic one when `next_plan` was set.
    plan_offset_s: i64,
    next_summary: Duration,
    /// Storage fails: dispensing is locked.
    storage_locked: bool,
    /// A cold-chain alarm is raised and not acknowledged.
    fridge_alarm: bool,
    /// The audit chain is broken and no pharmacist has acknowledged it: the history may have
    /// been changed, so nothing is dispensed.
    integrity: Option<IntegrityBreak>,
    /// Doses already told to wait for that acknowledgement.
    integrity_alerted: std::collections::BTreeSet<DoseKey>,
    /// What the buzzer and the LED were last asked to show.
    shown: (bool, bool),
    /// The last tray and button states (None: not read yet), so only a change is an edge.
    cup: Option<bool>,
    button: Option<bool>,
    /// Risky schedule changes waiting for a second person: version → who asked.
    awaiting_confirmation: HashMap<String, String>,
    /// Schedules loaded at start-up that removed a weekly guard, per patient: their
    /// medications are locked in the planner until a second person confirms.
    unconfirmed: HashMap<String, super::replace::Unconfirmed>,
    /// Wall minus monotonic at the last baseline, in seconds.
    baseline_s: i64,
    clock_trusted: bool,
    /// Why the clock is not trusted at start-up (its drift), told once when started.
    untrusted_at_start: Option<i64>,
    /// The elapsed timeline ([`Now::elapsed`]) at `mono_base`: it then advances with the
    /// monotonic clock only, so wall-clock steps never shrink elapsed-time rules.
    elapsed_base: DateTime<Utc>,
    mono_base: Duration,
    /// See [`Restored::keep_history`].
    keep_history: Option<chrono::Duration>,
    /// When (monotonic) [`Effect::LoadHistory`] was last asked and not yet answered: asked
    /// again a planning round later (a store that failed to read answers nothing).
    history_asked: Option<Duration>,
    /// The store's records did not line up with memory: not asked again, and what needs them
    /// stays refused until a restart reads the store whole.
    history_misaligned: bool,
}

fn wall_minus_mono(now: Instant) -> i64 {
    now.wall.timestamp() - now.mono.as_secs() as i64
}

fn emit(fx: &mut Vec<Effect>, e: Event) {
    fx.push(Effect::Emit(e));
}

fn reply(fx: &mut Vec<Effect>, token: Option<Token>, answer: Answer) {
    match token {
        Some(token) => fx.push(Effect::Reply { token, answer }),
        None => {
            if let Err(r) = answer {
                // The refusal is in the record (the dose event); the log needs it only when asked.
                tracing::debug!("command refused, nobody waits for the answer: {r}");
            }
        }
    }
}

fn integrity_detail(b: &IntegrityBreak) -> String {
    format!(
        "the audit chain is broken at {}: nothing is dispensed until a pharmacist acknowledges the INTEGRITY alarm",
        b.detail
    )
}

fn fault(at: DateTime<Utc>, detail: String) -> Event {
    Event::DeviceFault {
        at,
        device: "carousel".into(),
        detail,
    }
}

impl Dispenser {
    /// The dispenser as a restart finds it: history, stock, schedules and the clock's standing
    /// rebuilt from the store. A clock behind the last record, or left untrusted, stays locked
    /// until a person trusts it; the carousel is not known at home.
    pub fn on_restart(mut r: Restored, geometry: Geometry, now: Instant) -> Self {
        let since = r.since.unwrap_or(now.wall);
        // Readings stored before they named their patient belong to the only one, if only one.
        if let [only] = r.schedules.as_slice() {
            for v in r.vitals.iter_mut().filter(|v| v.patient.is_none()) {
                v.patient = Some(only.patient.clone());
            }
        }
        let elapsed_base = engine::resume_elapsed(now.wall, r.elapsed_anchor, !r.clock_locked);
        let untrusted_at_start =
            engine::untrusted_at_start(now.wall, r.clock_floor, r.clock_locked);
        let mut planner = Planner::new(since);
        for (patient, at) in std::mem::take(&mut r.installed_at) {
            planner.schedule_installed(&patient, at);
        }
        let mut awaiting_confirmation = HashMap::new();
        let mut unconfirmed = HashMap::new();
        for u in std::mem::take(&mut r.unconfirmed) {
            for m in &u.medications {
                planner.lock(&u.patient, m);
            }
            // Whoever edited the file asked first; any other authorised person confirms.
            awaiting_confirmation.insert(u.version.clone(), "system:loader".to_string());
            unconfirmed.insert(u.patient.clone(), u);
        }
        Self {
            geometry,
            schedules: r.schedules,
            history: r.history,
            reconciliation: std::cell::Cell::new(None),
            inventory: r.inventory,
            refill_days: r.refill_days,
            planner,
            vitals: r.vitals,
            homed: false,
            flight: None,
            pending: Vec::new(),
            attentive_until: Duration::ZERO,
            retry_after: HashMap::new(),
            next_plan: now.mono,
            plan_offset_s: wall_minus_mono(now),
            next_summary: now.mono + SUMMARY_EVERY,
            storage_locked: false,
            fridge_alarm: false,
            integrity: r.integrity,
            integrity_alerted: Default::default(),
            shown: (false, false),
            cup: None,
            button: None,
            awaiting_confirmation,
            unconfirmed,
            baseline_s: wall_minus_mono(now),
            clock_trusted: untrusted_at_start.is_none(),
            untrusted_at_start,
            elapsed_base,
            mono_base: now.mono,
            keep_history: r.keep_history,
            history_asked: None,
            history_misaligned: false,
        }
    }

    /// The first effects after a restart: a clock that may not be trusted is said so, and the
    /// carousel homes without dispensing (it may have stopped mid-turn in a power cut).
    pub fn start(&mut self, now: Instant) -> Vec<Effect> {
        let mut fx = Vec::new();
        if let Some(drift_s) = self.untrusted_at_start {
            emit(
                &mut fx,
                Event::ClockTrust {
                    at: now.wall,
                    trusted: false,
                    drift_s,
                    actor: None,
                    elapsed: Some(self.clocks(now).elapsed),
                    comment: Some(if drift_s < -CLOCK_TOLERANCE_S {
                        format!("the wall clock is {} s behind the last record", -drift_s)
                    } else {
                        "the clock was left untrusted when the appliance stopped".into()
                    }),
                },
            );
        }
        if let Some(b) = &self.integrity {
            emit(
                &mut fx,
                Event::Integrity {
                    at: now.wall,
                    seq: b.seq,
                    detail: b.detail.clone(),
                    acknowledged: false,
                    actor: None,
                    comment: None,
                },
            );
            self.refresh_lights(now, true, &mut fx);
        }
        if self.flight.is_none() {
            self.flight = Some(Flight::Homing(None));
            fx.push(Effect::Home);
        }
        fx
    }

    /// Whether the wall clock is trusted with dosing.
    pub fn clock_trusted(&self) -> bool {
        self.clock_trusted
    }

    /// The dose history as the dispenser knows it.
    pub fn history(&self) -> &DoseHistory {
        &self.history
    }

    /// The schedules in force.
    pub fn schedules(&self) -> &[Schedule] {
        &self.schedules
    }

    /// Whether the carousel is moving for the dispenser (no new motion starts meanwhile).
    pub fn busy(&self) -> bool {
        self.flight.is_some()
    }

    /// Now on both timelines: the wall clock for windows, the elapsed timeline for spacing.
    pub fn clocks(&self, now: Instant) -> Now {
        Now {
            wall: now.wall,
            elapsed: self.elapsed_base
                + chrono::Duration::from_std(now.mono.saturating_sub(self.mono_base))
                    .unwrap_or_default(),
        }
    }

    /// When (monotonic) the dispenser next wants to be asked: soon while someone may press the
    /// button, then less often; never later than the next planning round.
    pub fn next_wake(&self, now: Instant) -> Duration {
        let poll = if now.mono < self.attentive_until {
            ATTENTIVE_POLL
        } else if !self.pending.is_empty() {
            PENDING_POLL
        } else {
            IDLE_POLL
        };
        (now.mono + poll).min(self.next_plan)
    }

    /// [`Dispenser::next_wake`] for a task whose tray and button tell their edges: no fast
    /// polling after a dispense, only the clock and the lights' on-time looked at every second
    /// while a dose waits and every few seconds otherwise, and the next planning round.
    pub fn next_wake_on_edges(&self, now: Instant) -> Duration {
        let poll = if self.pending.is_empty() {
            IDLE_POLL
        } else {
            PENDING_POLL
        };
        (now.mono + poll).min(self.next_plan)
    }

    /// A planning round is due at once: something a round reads changed.
    fn replan(&mut self, now: Instant) {
        self.next_plan = self.next_plan.min(now.mono);
    }

    /// Time passes: the clock is watched at every tick; at each planning round the waiting
    /// doses escalate, stock is checked and due doses are dispensed or closed.
    pub fn on_tick(&mut self, now: Instant) -> Vec<Effect> {
        let mut fx = Vec::new();
        // At every input, not once a minute: a step is seen before anything else is decided.
        self.check_clock(now, &mut fx);
        if (wall_minus_mono(now) - self.plan_offset_s).abs() > REPLAN_ON_STEP_S {
            self.replan(now);
        }
        if now.mono < self.next_plan || self.busy() {
            return fx;
        }
        self.next_plan = now.mono + PLAN_EVERY;
        self.plan_offset_s = wall_minus_mono(now);
        self.escalate(now, &mut fx);
        self.stock_alerts(now, &mut fx);
        // A day's adherence counted from a history missing some of it would be wrong: it waits
        // for the records instead.
        if now.mono >= self.next_summary
            && self.history_held_since(now.wall - chrono::Duration::days(1), now, &mut fx)
        {
            self.next_summary = now.mono + SUMMARY_EVERY;
            self.summarise(now, 1, "daily".into(), &mut fx);
        }
        self.plan(now, &mut fx);
        fx
    }

    /// The cup sensor's state: a cup lifted while doses wait in it takes them.
    pub fn on_tray(&mut self, present: bool, now: Instant) -> Vec<Effect> {
        let mut fx = Vec::new();
        if self.cup == Some(true) && !present {
            emit(&mut fx, Event::TrayPickup { at: now.wall });
            self.taken(now, &mut fx);
        }
        self.cup = Some(present);
        fx
    }

    /// The "taken" button's state: a press takes the waiting doses.
    pub fn on_button(&mut self, pressed: bool, now: Instant) -> Vec<Effect> {
        let mut fx = Vec::new();
        if self.button == Some(false) && pressed {
            emit(&mut fx, Event::ButtonPressed { at: now.wall });
            self.taken(now, &mut fx);
        }
        self.button = Some(pressed);
        fx
    }

    /// The carousel looked for home: `Ok(steps)` found it.
    pub fn on_homed(&mut self, result: Result<u32, CarouselError>, now: Instant) -> Vec<Effect> {
        let mut fx = Vec::new();
        match &result {
            Ok(steps) => emit(
                &mut fx,
                Event::CarouselHomed {
                    at: now.wall,
                    steps: *steps,
                },
            ),
            Err(e) => emit(&mut fx, fault(now.wall, e.to_string())),
        }
        self.homed = result.is_ok();
        match self.flight.take() {
            Some(Flight::Homing(Some(job))) if self.homed => self.proceed(job, now, &mut fx),
            Some(Flight::Homing(Some(Job::Dose { attempt, reply, .. }))) => {
                let detail = "the carousel could not find home; nothing moved";
                self.failed_before_motion(attempt, "NOT_HOMED", detail, reply, now, &mut fx);
                self.plan(now, &mut fx);
            }
            Some(Flight::Homing(Some(Job::Test { .. }))) | Some(Flight::Homing(None)) => {}
            // Not asked for: keep what runs.
            other => self.flight = other,
        }
        fx
    }

    /// The carousel finished (or never started) a turn.
    pub fn on_drop(&mut self, turned: Turned, now: Instant) -> Vec<Effect> {
        let mut fx = Vec::new();
        let job = match self.flight.take() {
            Some(Flight::Turning(job)) => job,
            other => {
                // A report nobody asked for changes nothing but is not lost.
                self.flight = other;
                emit(
                    &mut fx,
                    fault(
                        now.wall,
                        format!("a carousel report came while no turn was asked for: {turned:?}"),
                    ),
                );
                return fx;
            }
        };
        match job {
            Job::Test { slot, units } => self.tested(slot, units, turned, now, &mut fx),
            Job::Dose {
                attempt,
                units,
                note,
                reply,
            } => match turned {
                Turned::NotDurable => {
                    let detail = "the intent could not be made durable; nothing moved";
                    self.failed_before_motion(attempt, "NOT_DURABLE", detail, reply, now, &mut fx);
                }
                Turned::Done(result) => {
                    self.dispensed(attempt, units, note, reply, &result, now, &mut fx)
                }
            },
        }
        // Whatever else is due now goes next, decided afresh on the history just recorded.
        self.plan(now, &mut fx);
        // And a whole round (reminders, stock) follows on the new stock and cup.
        self.replan(now);
        fx
    }

    /// A command; its answer comes as an [`Effect::Reply`] with `token` (at once, or for a PRN
    /// dose once the dispense has ended).
    pub fn on_command(&mut self, cmd: Command, token: Option<Token>, now: Instant) -> Vec<Effect> {
        let mut fx = Vec::new();
        // A command that arrives right after a clock step is decided on the stepped clock's
        // standing, not on the last minute's.
        self.check_clock(now, &mut fx);
        let answer = match cmd {
            Command::Skip {
                patient,
                medication,
                occurrence,
                actor,
            } => self.skip(patient, &medication, occurrence, actor, now, &mut fx),
            Command::Reconcile {
                patient,
                medication,
                occurrence,
                given,
                units,
                actor,
                note,
            } => self.reconcile(
                patient,
                &medication,
                occurrence,
                (given, units, actor, note),
                now,
                &mut fx,
            ),
            Command::Prn {
                patient,
                medication,
                request,
            } => match self.prn(patient, &medication, request, token, now, &mut fx) {
                // Answered when the dispense ends.
                Ok(()) => return fx,
                Err(r) => Err(r),
            },
            Command::TestDispense { slot, units } => {
                self.test_dispense(slot, units, now, &mut fx);
                Ok(format!("test dispense of {units} unit(s) from slot {slot}"))
            }
            Command::Rehome => {
                if self.flight.is_none() {
                    self.flight = Some(Flight::Homing(None));
                    fx.push(Effect::Home);
                    Ok("homing".into())
                } else {
                    refuse(RefusalCode::Dispensing, "the carousel is moving; try again")
                }
            }
            // A newly raised alarm sounds again even if a waiting dose already had the buzzer
            // on (its time limit may have silenced it).
            Command::Annunciate(on) => {
                self.fridge_alarm = on;
                self.refresh_lights(now, on, &mut fx);
                Ok(String::new())
            }
            Command::StorageLock(on) => {
                self.storage_locked = on;
                self.refresh_lights(now, on, &mut fx);
                Ok(String::new())
            }
            Command::Vital(reading) => self.vital(reading, VitalSource::New, now, &mut fx),
            Command::HistoryLoaded(stored) => self.history_loaded(&stored, now, &mut fx),
            Command::VitalRecorded(reading) => {
                self.vital(reading, VitalSource::Recorded, now, &mut fx)
            }
            Command::TrustClock { actor, comment } => {
                self.trust_clock(actor, comment, now, &mut fx)
            }
            Command::Refill {
                slot,
                added,
                expiry,
                actor,
                note,
            } => self.refill(slot, added, expiry, actor, note, now, &mut fx),
            // An adherence report over days whose records are not all in memory waits for them.
            Command::Report { days, .. }
                if !self.history_held_since(
                    now.wall - chrono::Duration::days(i64::from(days)),
                    now,
                    &mut fx,
                ) =>
            {
                refuse(RefusalCode::Busy, HISTORY_LOADING)
            }
            Command::Report { days, actor } => {
                let t = self.summarise(now, days, format!("requested by {actor}"), &mut fx);
                let (taken, scheduled) = t.iter().fold((0, 0), |(a, b), t| {
                    (a + t.taken, b + t.scheduled + t.as_needed)
                });
                Ok(format!(
                    "adherence of the last {days} day(s) published: {} medication(s), {taken} of {scheduled} doses taken",
                    t.len()
                ))
            }
            Command::ReplaceSchedule {
                patient,
                source,
                actor,
                confirm,
            } => self.replace_schedule(patient, source, actor, confirm, now, &mut fx),
            Command::AcknowledgeIntegrity { actor, comment } => {
                self.acknowledge_integrity(actor, comment, now, &mut fx)
            }
            Command::AcknowledgeStock {
                slot,
                actor,
                comment,
            } => {
                if self.inventory.acknowledge(slot) {
                    emit(
                        &mut fx,
                        Event::StockAcknowledged {
                            at: now.wall,
                            slot,
                            actor,
                            comment,
                        },
                    );
                    Ok(format!("stock alerts of slot {slot} acknowledged"))
                } else {
                    refuse(
                        RefusalCode::NotRaised,
                        format!("slot {slot} has no stock alert"),
                    )
                }
            }
        };
        // Answered before any turn the command set off: what it asked is done.
        let at = fx
            .iter()
            .position(|e| matches!(e, Effect::Home | Effect::Turn { .. }))
            .unwrap_or(fx.len());
        let mut answered = Vec::new();
        reply(&mut answered, token, answer);
        fx.splice(at..at, answered);
        // What a round decides may have changed with it (a reading, a reconciliation, a new
        // schedule, a trusted clock, records read back): one follows at once.
        self.replan(now);
        fx
    }

    /// Gives the waiting dose's reminders and alerts that fell due. When its window closes it
    /// stays recorded as dispensed, not taken: the caregiver is told and the appliance stops
    /// waiting for it.
    fn escalate(&mut self, now: Instant, fx: &mut Vec<Effect>) {
        let at = now.wall;
        let mut alerts = Vec::new();
        for p in &mut self.pending {
            for step in escalation::due(&p.escalation, p.escalated_to, at) {
                alerts.push((step, p.clone()));
            }
            p.escalated_to = at;
        }
        self.pending
            .retain(|p| p.escalation.last().is_none_or(|(t, _)| *t > at));
        // Also where quiet hours begin or end while a dose waits.
        let late = alerts.iter().any(|(s, _)| *s == Step::LateNotice);
        self.refresh_lights(now, late, fx);
        for (step, p) in alerts {
            emit(
                fx,
                Event::DoseAlert {
                    at,
                    patient: p.patient,
                    medication: p.record.medication.clone(),
                    occurrence: p.record.occurrence.unwrap_or(p.record.at),
                    reason: step.code().into(),
                    detail: format!(
                        "{} unit(s) dispensed at {} not taken yet",
                        p.record.units,
                        p.record.at.to_rfc3339()
                    ),
                    released: Some(p.record.clone()),
                },
            );
        }
    }

    /// The window of a scheduled occurrence (None for an as-needed dose).
    fn window_of(
        &self,
        patient: &str,
        medication: &str,
        occurrence: Option<DateTime<Utc>>,
    ) -> Option<engine::Window> {
        let occurrence = occurrence?;
        let s = self.schedules.iter().find(|s| s.patient == patient)?;
        let (m, rec) = s.medication(medication)?;
        engine::windows(
            m,
            rec.as_ref()?,
            s.tz,
            occurrence - chrono::Duration::days(1),
            occurrence + chrono::Duration::days(1),
        )
        .into_iter()
        .find(|w| w.occurrence == occurrence)
    }

    /// Buzzer and LED from everything that wants attention. Critical causes (a cold-chain
    /// alarm, locked storage, an uncertain dispense, a time-critical dose) sound at any hour; a
    /// routine dose waiting in the cup lights the LED and sounds only outside its patient's
    /// quiet hours. Outputs change only when the wish does, or with `resound` (a new dose, a
    /// late notice), so the buzzer's own time limit is not undone every minute.
    fn refresh_lights(&mut self, now: Instant, resound: bool, fx: &mut Vec<Effect>) {
        let critical = self.fridge_alarm
            || self.storage_locked
            || self.integrity.is_some()
            || self.awaiting_reconciliation();
        let led = critical || !self.pending.is_empty();
        let buzzer = critical || self.pending.iter().any(|p| self.sounds(p, now.wall));
        let wanted = (buzzer, led);
        if wanted == self.shown && !(resound && buzzer) {
            return;
        }
        self.shown = wanted;
        fx.push(Effect::Lights { buzzer, led });
    }

    /// Refuses a command whose outcome could not be recorded: nothing is reported done while
    /// storage fails (the dispenser is locked meanwhile).
    fn storage_works(&self) -> Result<(), Refusal> {
        if self.storage_locked {
            return refuse(
                RefusalCode::StorageFailed,
                "the dispenser is locked and nothing can be recorded until storage works again",
            );
        }
        Ok(())
    }

    /// Whether a waiting dose may sound now.
    fn sounds(&self, p: &Pending, now: DateTime<Utc>) -> bool {
        let Some(s) = self.schedules.iter().find(|s| s.patient == p.patient) else {
            return true;
        };
        let time_critical = s
            .medication(&p.record.medication)
            .is_none_or(|(m, _)| m.time_critical);
        time_critical
            || !s
                .quiet
                .is_some_and(|q| q.contains(now.with_timezone(&s.tz).time()))
    }

    /// Whether any uncertain dispense, or one a crash interrupted, still waits for a
    /// caregiver. (Asked only while the carousel is idle, so an intent without its outcome here
    /// is an interrupted one.)
    fn awaiting_reconciliation(&self) -> bool {
        let records = self.history.version();
        if let Some((seen, answer)) = self.reconciliation.get() {
            if seen == records {
                return answer;
            }
        }
        let answer = self.history.patients().any(|p| {
            self.history
                .standing(p)
                .iter()
                .any(|r| matches!(r.outcome, Outcome::Uncertain | Outcome::Dispensing))
        });
        self.reconciliation.set(Some((records, answer)));
        answer
    }

    fn test_dispense(&mut self, slot: u8, units: u32, now: Instant, fx: &mut Vec<Effect>) {
        if !self.homed || self.busy() {
            emit(
                fx,
                fault(
                    now.wall,
                    "not homed or busy: test dispense refused, nothing moved".into(),
                ),
            );
            return;
        }
        self.flight = Some(Flight::Turning(Job::Test { slot, units }));
        fx.push(Effect::Turn {
            slot,
            units,
            durable_first: false,
        });
    }

    fn tested(&mut self, slot: u8, units: u32, turned: Turned, now: Instant, fx: &mut Vec<Effect>) {
        match turned {
            Turned::Done(Ok(report)) => {
                self.homed = report.returned_home;
                self.inventory.take(slot, report.drops_seen);
                self.stray(&report, now, fx);
                if report.drops_seen > 0 {
                    self.attentive_until = now.mono + ATTENTIVE_FOR;
                }
                emit(
                    fx,
                    Event::Dispensed {
                        at: now.wall,
                        report,
                        drops_seen: report.drops_seen,
                        returned_home: report.returned_home,
                    },
                );
            }
            Turned::Done(Err(e)) => {
                self.homed = false;
                emit(fx, fault(now.wall, e.to_string()));
            }
            Turned::NotDurable => {
                emit(
                    fx,
                    fault(
                        now.wall,
                        format!("test dispense of {units} from slot {slot} not made"),
                    ),
                );
            }
        }
    }

    fn check_clock(&mut self, now: Instant, fx: &mut Vec<Effect>) {
        let drift = wall_minus_mono(now) - self.baseline_s;
        // Only a person lifts a lock: a clock that drifts back into line does not.
        let trusted = drift.abs() <= CLOCK_TOLERANCE_S && self.clock_trusted;
        if trusted != self.clock_trusted {
            self.clock_trusted = trusted;
            emit(
                fx,
                Event::ClockTrust {
                    at: now.wall,
                    trusted,
                    drift_s: drift,
                    actor: None,
                    elapsed: Some(self.clocks(now).elapsed),
                    comment: None,
                },
            );
        }
    }

    /// Records what closed and alerts what waits, then starts the first due dose (the next
    /// ones are decided again, on the new history, when it ends).
    fn plan(&mut self, now: Instant, fx: &mut Vec<Effect>) {
        if self.busy() {
            return;
        }
        self.forget_old_records(now);
        // Every decision of the round reads each patient's records back to their reach: none
        // is made on a history that lacks some (the round waits for the store's).
        let patients: Vec<String> = self.schedules.iter().map(|s| s.patient.clone()).collect();
        let mut held = true;
        for p in &patients {
            let from = self.needed_from(p, now);
            held &= self.history_holds(p, from, now, fx);
        }
        if !held {
            return;
        }
        let horizon = now.wall - chrono::Duration::days(3);
        self.retry_after
            .retain(|(_, _, o), _| o.is_none_or(|o| o > horizon));
        let actions = self.planner.plan(
            &self.schedules,
            self.clocks(now),
            &self.history,
            &self.vitals,
            self.clock_trusted,
        );
        for a in actions {
            match a {
                Action::Dispense {
                    patient,
                    medication,
                    slot,
                    occurrence,
                    units,
                } => {
                    let key = (patient.clone(), medication.clone(), Some(occurrence));
                    if let Some(b) = &self.integrity {
                        // Told once per dose; its window's close records it as any other.
                        if self.integrity_alerted.insert(key) {
                            let detail = integrity_detail(b);
                            emit(
                                fx,
                                Event::DoseAlert {
                                    at: now.wall,
                                    patient,
                                    medication,
                                    occurrence,
                                    reason: RefusalCode::IntegrityBroken.code(),
                                    detail,
                                    released: None,
                                },
                            );
                        }
                        continue;
                    }
                    let waiting = match self.retry_after.get(&key) {
                        None => false,
                        Some(None) => true,
                        Some(Some(t)) => now.mono < *t,
                    };
                    if !waiting && !self.busy() {
                        let attempt = Attempt {
                            patient,
                            medication,
                            slot,
                            occurrence: Some(occurrence),
                            actor: None,
                        };
                        let job = Job::Dose {
                            attempt,
                            units,
                            note: None,
                            reply: None,
                        };
                        self.begin(job, now, fx);
                    }
                }
                Action::Record {
                    patient,
                    record,
                    reason,
                } => {
                    let slot = self.slot_of(&patient, &record.medication);
                    self.record(
                        patient,
                        slot,
                        record,
                        Some(reason.code()),
                        String::new(),
                        None,
                        now,
                        fx,
                    );
                }
                Action::Alert {
                    patient,
                    medication,
                    occurrence,
                    reason,
                    detail,
                } => emit(
                    fx,
                    Event::DoseAlert {
                        at: now.wall,
                        patient,
                        medication,
                        occurrence,
                        reason: reason.code(),
                        detail,
                        released: None,
                    },
                ),
            }
        }
        self.next_plan = self.after_round(now);
    }

    /// When the round just made must be made again without an input: at the next window edge
    /// the planner foresees; at a waiting dose's next reminder, and every minute while one
    /// waits (quiet hours may begin or end); when a dose that failed may be tried again; when
    /// the daily summary is due; and never more than [`PLAN_IDLE_MAX`] on.
    fn after_round(&self, now: Instant) -> Duration {
        let at_wall = |at: DateTime<Utc>| now.mono + (at - now.wall).to_std().unwrap_or_default();
        // A summary held back for records being read back is tried again a minute on, not at
        // once: its time has passed, and waking "then" would spin.
        let summary = self.next_summary.max(now.mono + PLAN_EVERY);
        let mut wake = (now.mono + PLAN_IDLE_MAX).min(summary);
        if !self.pending.is_empty() {
            wake = wake.min(now.mono + PLAN_EVERY);
        }
        let reminders = self.pending.iter().filter_map(|p| {
            p.escalation
                .iter()
                .map(|(at, _)| *at)
                .find(|at| *at > p.escalated_to)
        });
        for at in reminders.chain(self.planner.revisit()) {
            wake = wake.min(at_wall(at));
        }
        let retries = self.retry_after.values().flatten();
        for &at in retries.filter(|at| **at > now.mono) {
            wake = wake.min(at);
        }
        wake
    }

    /// The earliest instant a decision about `patient`'s medications at `now` may read.
    fn needed_from(&self, patient: &str, now: Instant) -> DateTime<Utc> {
        engine::needed_from(
            self.clocks(now),
            self.schedules
                .iter()
                .filter(|s| s.patient == patient)
                .flat_map(|s| s.medications.iter().map(|(m, _)| m)),
        )
    }

    /// Whether `patient`'s records back to `from` are all held; if not, the store is asked for
    /// them (once until it answers).
    fn history_holds(
        &mut self,
        patient: &str,
        from: DateTime<Utc>,
        now: Instant,
        fx: &mut Vec<Effect>,
    ) -> bool {
        if self.history.holds_from(patient, from) {
            return true;
        }
        let due = self
            .history_asked
            .is_none_or(|asked| now.mono >= asked + PLAN_EVERY);
        if due && !self.history_misaligned {
            self.history_asked = Some(now.mono);
            fx.push(Effect::LoadHistory);
        }
        false
    }

    /// [`Dispenser::history_holds`] for every patient with records or a schedule.
    fn history_held_since(
        &mut self,
        from: DateTime<Utc>,
        now: Instant,
        fx: &mut Vec<Effect>,
    ) -> bool {
        let patients: std::collections::BTreeSet<String> = self
            .history
            .patients()
            .map(str::to_string)
            .chain(self.schedules.iter().map(|s| s.patient.clone()))
            .collect();
        let mut held = true;
        for p in &patients {
            held &= self.history_holds(p, from, now, fx);
        }
        held
    }

    /// Lets go of records no rule can read any more, keeping [`Restored::keep_history`] or
    /// the longest reach of any medication in force, whichever is longer, back from the
    /// earlier of the two timelines. Not while the clock is doubted: a wall clock stepped far
    /// ahead must not make a week look like months.
    fn forget_old_records(&mut self, now: Instant) {
        let Some(keep) = self.keep_history else {
            return;
        };
        if !self.clock_trusted {
            return;
        }
        let longest = self
            .schedules
            .iter()
            .flat_map(|s| s.medications.iter().map(|(m, _)| engine::reach(m)))
            .max()
            .unwrap_or_default();
        let clocks = self.clocks(now);
        let cutoff = clocks.wall.min(clocks.elapsed) - keep.max(longest);
        self.history.forget_before(cutoff);
    }

    /// The store's records came back: what was let go is taken back in place. Records that
    /// do not line up with the ones held (a store changed behind the appliance's back) are
    /// not used; the fault is told and what needs them stays refused.
    fn history_loaded(
        &mut self,
        stored: &DoseHistory,
        now: Instant,
        fx: &mut Vec<Effect>,
    ) -> Answer {
        match self.history.restore_forgotten(stored) {
            Ok(()) => {
                self.history_asked = None;
                Ok("dose records read back from the store".into())
            }
            Err(e) => {
                self.history_misaligned = true;
                emit(
                    fx,
                    Event::DeviceFault {
                        at: now.wall,
                        device: "dose history".into(),
                        detail: format!(
                            "{e}: decisions that need older records are refused until the appliance restarts"
                        ),
                    },
                );
                Err(Refusal::new(RefusalCode::StorageFailed, e.to_string()))
            }
        }
    }

    fn slot_of(&self, patient: &str, medication: &str) -> u8 {
        self.schedules
            .iter()
            .filter(|s| s.patient == patient)
            .find_map(|s| s.medication(medication).map(|(m, _)| *m.slot.get_ref()))
            .unwrap_or(u8::MAX)
    }

    /// Records a dose outcome. `actor` is the person it is theirs (skip, reconcile, a PRN
    /// request or override); None for the dispenser's own decisions.
    #[allow(clippy::too_many_arguments)]
    fn record(
        &mut self,
        patient: String,
        slot: u8,
        mut record: DoseRecord,
        reason: Option<String>,
        detail: String,
        actor: Option<String>,
        now: Instant,
        fx: &mut Vec<Effect>,
    ) {
        // The slot is the second key of the medication's identity (`dosing::identity`).
        record.slot = record.slot.or((slot != u8::MAX).then_some(slot));
        record.elapsed = record.elapsed.or(Some(self.clocks(now).elapsed));
        self.history.push(&patient, record.clone());
        emit(
            fx,
            Event::Dose {
                at: record.at,
                patient,
                medication: record.medication.clone(),
                slot,
                record,
                reason,
                detail,
                actor,
            },
        );
    }

    /// A unit that fell while the carousel was only positioning is in the cup beside the dose,
    /// and may be another medication: reported naming the slot it fell from, and that slot's
    /// count goes down (the break-beam saw it leave).
    fn stray(&mut self, report: &DropReport, now: Instant, fx: &mut Vec<Effect>) {
        if report.stray_drops == 0 {
            return;
        }
        let Some(from) = report.stray_from else {
            let detail = format!(
                "STRAY_DROP: {} unit(s) fell from an unknown slot while dispensing from slot {}: \
                 check the cup before anything is taken",
                report.stray_drops, report.slot
            );
            return emit(fx, fault(now.wall, detail));
        };
        self.inventory.take(from, report.stray_drops);
        let detail = format!(
            "STRAY_DROP: {} unit(s) fell from slot {from} while dispensing from slot {}: check \
             the cup and slot {from} before anything is taken",
            report.stray_drops, report.slot
        );
        emit(
            fx,
            Event::StrayDrop {
                at: now.wall,
                slot: from,
                units: report.stray_drops,
                dispensing: report.slot,
                detail,
            },
        );
    }

    /// Starts a job: homes first when the carousel is not known at home.
    fn begin(&mut self, job: Job, now: Instant, fx: &mut Vec<Effect>) {
        if self.storage_locked {
            // Not even a refusal is recorded: it could not be. The planner asks again each
            // minute, and the window's close accounts for the dose if storage stays down.
            if let Job::Dose { reply: r, .. } = &job {
                reply(
                    fx,
                    *r,
                    refuse(RefusalCode::StorageFailed, "nothing can be recorded"),
                );
            }
            return;
        }
        if !self.homed {
            self.flight = Some(Flight::Homing(Some(job)));
            fx.push(Effect::Home);
            return;
        }
        self.proceed(job, now, fx);
    }

    /// The carousel is at home: an empty slot fails before motion; otherwise the intent is
    /// recorded (durable before anything moves, so a restart mid-turn finds it and treats the
    /// dose as uncertain instead of dispensing it again) and the carousel turns.
    fn proceed(&mut self, job: Job, now: Instant, fx: &mut Vec<Effect>) {
        let Job::Dose {
            attempt,
            units,
            note,
            reply,
        } = job
        else {
            return self.test_dispense_now(job, fx);
        };
        let slot = attempt.slot;
        if self.inventory.short_of(slot, units) {
            let left = self.inventory.slot(slot).map_or(0, |s| s.count);
            let detail =
                format!("slot {slot} holds {left} unit(s), the dose needs {units}; nothing moved");
            self.failed_before_motion(attempt, "SLOT_EMPTY", &detail, reply, now, fx);
            return;
        }
        let intent = engine::record(
            attempt.medication.clone(),
            attempt.occurrence,
            now.wall,
            units,
            Outcome::Dispensing,
        );
        self.record(
            attempt.patient.clone(),
            slot,
            intent,
            Some("DISPENSING".into()),
            note.clone().unwrap_or_default(),
            attempt.actor.clone(),
            now,
            fx,
        );
        self.flight = Some(Flight::Turning(Job::Dose {
            attempt,
            units,
            note,
            reply,
        }));
        fx.push(Effect::Turn {
            slot,
            units,
            durable_first: true,
        });
    }

    fn test_dispense_now(&mut self, job: Job, fx: &mut Vec<Effect>) {
        if let Job::Test { slot, units } = job {
            self.flight = Some(Flight::Turning(job));
            fx.push(Effect::Turn {
                slot,
                units,
                durable_first: false,
            });
        }
    }

    /// Records what a dispense became, from the carousel's report.
    #[allow(clippy::too_many_arguments)]
    fn dispensed(
        &mut self,
        attempt: Attempt,
        units: u32,
        note: Option<String>,
        token: Option<Token>,
        result: &Result<DropReport, CarouselError>,
        now: Instant,
        fx: &mut Vec<Effect>,
    ) {
        let Attempt {
            patient,
            medication,
            slot,
            occurrence,
            actor,
        } = attempt;
        let DispenseOutcome {
            outcome,
            given,
            detail,
            homed,
        } = classify(result, units);
        if let Some(h) = homed {
            self.homed = h;
        }
        if let Ok(report) = result {
            self.stray(report, now, fx);
        }
        let record = DoseRecord {
            medication,
            occurrence,
            at: now.wall,
            units: given,
            outcome,
            slot: None,
            elapsed: None,
        };
        // Only what the break-beam saw leaves the count.
        self.inventory.dose(slot, occurrence, outcome, given);
        match outcome {
            Outcome::Dispensed => {
                let window = self.window_of(&patient, &record.medication, occurrence);
                self.pending.push(Pending {
                    patient: patient.clone(),
                    slot,
                    record: record.clone(),
                    escalation: escalation::plan(window.as_ref(), now.wall),
                    escalated_to: now.wall,
                });
                self.attentive_until = now.mono + ATTENTIVE_FOR;
            }
            Outcome::Failed => {
                let retry = now.mono + FAILED_RETRY_AFTER;
                self.retry_after.insert(
                    (patient.clone(), record.medication.clone(), occurrence),
                    Some(retry),
                );
            }
            _ => {}
        }
        let note = note.map(|n| format!("; {n}")).unwrap_or_default();
        let answer = match outcome {
            Outcome::Dispensed => Ok(format!("dispensed {units} unit(s)")),
            Outcome::Failed => refuse(RefusalCode::Failed, detail.clone()),
            _ => refuse(RefusalCode::Uncertain, detail.clone()),
        };
        self.record(
            patient,
            slot,
            record,
            None,
            format!("{detail}{note}"),
            actor,
            now,
            fx,
        );
        if matches!(outcome, Outcome::Dispensed | Outcome::Uncertain) {
            self.refresh_lights(now, true, fx);
        }
        reply(fx, token, answer);
    }

    /// Records a dispense that ended before the motor moved: `failed`, which may be tried again
    /// (an empty slot after the next refill, anything else after a pause).
    fn failed_before_motion(
        &mut self,
        attempt: Attempt,
        code: &str,
        detail: &str,
        token: Option<Token>,
        now: Instant,
        fx: &mut Vec<Effect>,
    ) {
        let Attempt {
            patient,
            medication,
            slot,
            occurrence,
            actor,
        } = attempt;
        let retry = (code != "SLOT_EMPTY").then(|| now.mono + FAILED_RETRY_AFTER);
        self.retry_after
            .insert((patient.clone(), medication.clone(), occurrence), retry);
        let record = engine::record(medication, occurrence, now.wall, 0, Outcome::Failed);
        self.record(
            patient,
            slot,
            record,
            Some(code.into()),
            detail.into(),
            actor,
            now,
            fx,
        );
        reply(
            fx,
            token,
            refuse(RefusalCode::Failed, format!("{code}: {detail}")),
        );
    }

    fn taken(&mut self, now: Instant, fx: &mut Vec<Effect>) {
        if self.pending.is_empty() {
            return;
        }
        self.attentive_until = now.mono;
        let taken = std::mem::take(&mut self.pending);
        self.refresh_lights(now, false, fx);
        for p in taken {
            let record = DoseRecord {
                at: now.wall,
                outcome: Outcome::Taken,
                ..p.record
            };
            self.record(
                p.patient,
                p.slot,
                record,
                None,
                "picked up".into(),
                None,
                now,
                fx,
            );
        }
    }
}

/// What a dispense attempt became, from what the carousel reported.
#[derive(Debug, PartialEq)]
struct DispenseOutcome {
    outcome: Outcome,
    /// Units the break-beam saw.
    given: u32,
    detail: String,
    /// Whether the carousel is known at home afterwards (None: unchanged).
    homed: Option<bool>,
}

/// Classifies a dispense. Every drop seen and back home: `dispensed`. An error raised before
/// the motor could move anything (no such slot, not homed, jammed at home, beam blocked):
/// `failed`, which may be tried again. Anything else — too few drops, not back home, a motor or
/// sensor failure mid-turn, a unit that fell while positioning — `uncertain`: never retried
/// automatically.
fn classify(result: &Result<DropReport, CarouselError>, units: u32) -> DispenseOutcome {
    let out = |outcome, given, detail: String, homed| DispenseOutcome {
        outcome,
        given,
        detail,
        homed,
    };
    match result {
        Ok(r) if r.stray_drops > 0 => out(
            Outcome::Uncertain,
            r.drops_seen,
            format!(
                "{} of {units} unit(s) seen, and {} more fell while the carousel was positioning{}: \
                 the cup may hold another medication",
                r.drops_seen,
                r.stray_drops,
                r.stray_from.map_or(String::new(), |s| format!(" (over slot {s})"))
            ),
            Some(r.returned_home),
        ),
        Ok(r) if r.drops_seen == units && r.returned_home => out(
            Outcome::Dispensed,
            units,
            format!("{units} unit(s) seen falling"),
            None,
        ),
        Ok(r) => out(
            Outcome::Uncertain,
            r.drops_seen,
            format!(
                "{} of {units} unit(s) seen; carousel {} home",
                r.drops_seen,
                if r.returned_home {
                    "returned"
                } else {
                    "did not return"
                }
            ),
            Some(r.returned_home),
        ),
        Err(CarouselError::Jammed { steps }) => out(
            Outcome::Failed,
            0,
            format!("jammed at home after {steps} steps; nothing released"),
            Some(false),
        ),
        Err(
            e @ (CarouselError::NoSuchSlot { .. }
            | CarouselError::NotHomed
            | CarouselError::BeamBlocked),
        ) => out(
            Outcome::Failed,
            0,
            format!("{e}; nothing moved"),
            matches!(e, CarouselError::NotHomed).then_some(false),
        ),
        Err(e) => out(Outcome::Uncertain, 0, e.to_string(), Some(false)),
    }
}

mod commands;
#[cfg(test)]
mod tests;
