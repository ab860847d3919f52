//! The dispenser task: owns the carousel, the tray and button, buzzer and LED; runs the dose
//! planner each minute and carries out its actions; watches the wall clock against the monotonic
//! one and locks dispensing while it is not trusted.
//!
//! Outcomes follow DESIGN.md §4: a release the break-beam confirms is `dispensed` (then `taken` on
//! pickup or button); a jam before anything moved, or an empty-slot refusal before motion, is
//! `failed` (may be tried again); anything else — the motor turned but the beam saw too little,
//! or the carousel lost its position — is `uncertain`, sounds the alarm and is never retried.

use super::{device_fault, DispenserCommand, Dosing};
use crate::clock::{self, Clock};
use crate::devices::{CarouselError, DispenserDevices};
use crate::dosing::engine::{DoseRecord, Now, Outcome, VitalReading, CLOCK_TOLERANCE_S};
use crate::dosing::escalation::{self, Step};
use crate::dosing::plan::{Action, Planner};
use crate::events::Event;
use chrono::{DateTime, Utc};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};

/// How often the tray and button are sampled in the first minutes after a dispense, while the
/// reminder sounds: fast enough for a short button press.
const ATTENTIVE_POLL: Duration = Duration::from_millis(100);
/// How long the dispenser stays that attentive after a dispense.
const ATTENTIVE_FOR: Duration = Duration::from_secs(15 * 60);
/// How often while a dispensed dose still waits to be taken (a cup is lifted for seconds).
const PENDING_POLL: Duration = Duration::from_secs(1);
/// How often otherwise (the states are still tracked so a change is never misread as an edge).
const IDLE_POLL: Duration = Duration::from_secs(5);
/// How often the dose planner runs.
const PLAN_EVERY: Duration = Duration::from_secs(60);
/// How often the adherence summary is published.
const SUMMARY_EVERY: Duration = Duration::from_secs(24 * 3600);
/// How long the store may take to make a dispense's intent durable before it is refused.
const DURABLE_WITHIN: Duration = Duration::from_secs(30);
/// How long a dose whose dispense failed before motion waits before it is tried again.
const FAILED_RETRY_AFTER: Duration = Duration::from_secs(10 * 60);

/// A dose by patient, medication and occurrence (None: as needed).
type DoseKey = (String, String, Option<DateTime<Utc>>);

/// What a caregiver found when checking an uncertain dispense.
struct Reconciliation {
    given: bool,
    units: Option<u32>,
    actor: String,
    note: String,
}

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

/// The dispenser task's state.
pub(super) struct DispenserTask {
    clock: Arc<dyn Clock>,
    dev: DispenserDevices,
    events: mpsc::Sender<Event>,
    dosing: Dosing,
    planner: Planner,
    vitals: Vec<VitalReading>,
    homed: bool,
    /// Doses in the cup, oldest first: one pickup takes them all.
    pending: Vec<Pending>,
    attentive_until: Duration,
    /// Doses whose dispense failed before motion, and when they may be tried again (None: after
    /// the next refill), so a jam or an empty slot is not retried, and recorded, every minute.
    retry_after: std::collections::HashMap<DoseKey, Option<Duration>>,
    /// When the next daily adherence summary is due (monotonic).
    next_summary: Duration,
    /// Storage fails: dispensing is locked (the fridge task is not affected).
    storage_locked: bool,
    /// A cold-chain alarm is raised and not acknowledged (the fridge task says so).
    fridge_alarm: bool,
    /// What the buzzer and the LED were last asked to show.
    shown: (bool, bool),
    /// Risky schedule changes waiting for a second person: version → who asked.
    awaiting_confirmation: std::collections::HashMap<String, String>,
    /// Schedules loaded at start-up that removed a weekly guard, per patient: their
    /// medications are locked in the planner until a second person confirms.
    unconfirmed: std::collections::HashMap<String, crate::dosing::replace::Unconfirmed>,
    /// Wall minus monotonic at the last baseline, in seconds.
    baseline_s: i64,
    clock_trusted: bool,
    /// Why the clock is not trusted at start-up (behind the time floor, or left locked), told
    /// once the task runs.
    untrusted_at_start: Option<i64>,
    /// The elapsed timeline ([`Now::elapsed`]) at `mono_base`: it then advances with the
    /// monotonic clock only, so wall-clock steps never shrink elapsed-time rules.
    elapsed_base: DateTime<Utc>,
    mono_base: Duration,
}

impl DispenserTask {
    pub(super) fn new(
        clock: Arc<dyn Clock>,
        dev: DispenserDevices,
        mut dosing: Dosing,
        events: mpsc::Sender<Event>,
    ) -> Self {
        let since = dosing.since.unwrap_or_else(|| clock.now());
        let mut vitals = std::mem::take(&mut dosing.vitals);
        // Readings stored before they named their patient belong to the only one, if only one.
        if let [only] = dosing.schedules.as_slice() {
            for v in vitals.iter_mut().filter(|v| v.patient.is_none()) {
                v.patient = Some(only.patient.clone());
            }
        }
        let first_summary = clock.monotonic() + SUMMARY_EVERY;
        let baseline_s = wall_minus_mono(&*clock);
        let now = clock.now();
        let elapsed_base =
            crate::dosing::engine::resume_elapsed(now, dosing.elapsed_anchor, !dosing.clock_locked);
        let untrusted_at_start =
            crate::dosing::engine::untrusted_at_start(now, dosing.clock_floor, dosing.clock_locked);
        let mut planner = Planner::new(since);
        for (patient, at) in std::mem::take(&mut dosing.installed_at) {
            planner.schedule_installed(&patient, at);
        }
        let mut awaiting_confirmation = std::collections::HashMap::new();
        let mut unconfirmed = std::collections::HashMap::new();
        for u in std::mem::take(&mut dosing.unconfirmed) {
            for m in &u.medications {
                planner.lock(&u.patient, m);
            }
            // Whoever edited the file asked first; any other authorised person confirms.
            awaiting_confirmation.insert(u.version.clone(), "system:loader".to_string());
            unconfirmed.insert(u.patient.clone(), u);
        }
        Self {
            untrusted_at_start,
            elapsed_base,
            mono_base: clock.monotonic(),
            planner,
            unconfirmed,
            clock,
            dev,
            events,
            dosing,
            vitals,
            homed: false,
            pending: Vec::new(),
            attentive_until: Duration::ZERO,
            retry_after: Default::default(),
            awaiting_confirmation,
            storage_locked: false,
            fridge_alarm: false,
            shown: (false, false),
            next_summary: first_summary,
            baseline_s,
            clock_trusted: untrusted_at_start.is_none(),
        }
    }

    /// Now on both clocks: the wall clock for windows, the elapsed timeline for spacing.
    fn clocks(&self) -> Now {
        Now {
            wall: self.clock.now(),
            elapsed: self.elapsed_base
                + chrono::Duration::from_std(self.clock.monotonic().saturating_sub(self.mono_base))
                    .unwrap_or_default(),
        }
    }

    pub(super) async fn run(
        mut self,
        mut commands: mpsc::Receiver<DispenserCommand>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        if let Some(drift_s) = self.untrusted_at_start {
            // Behind the last record, or locked when the appliance stopped: dosing waits for a
            // person's `trust_clock`; the fridge runs on.
            super::emit(
                &self.events,
                Event::ClockTrust {
                    at: self.clock.now(),
                    trusted: false,
                    drift_s,
                    actor: None,
                    elapsed: Some(self.clocks().elapsed),
                    comment: Some(if drift_s < -CLOCK_TOLERANCE_S {
                        format!("the wall clock is {} s behind the last record", -drift_s)
                    } else {
                        "the clock was left untrusted when the appliance stopped".into()
                    }),
                },
            )
            .await;
        }
        // Home without dispensing: the carousel may have stopped mid-turn (power cut, crash).
        self.home().await;
        let (mut cup, mut button) = (None, None);
        let mut next_plan = self.clock.monotonic();
        loop {
            let now = self.clock.monotonic();
            let at = self.clock.now();
            match self.dev.tray.sample(now) {
                Ok(present) => {
                    if cup == Some(true) && !present {
                        super::emit(&self.events, Event::TrayPickup { at }).await;
                        self.taken(at).await;
                    }
                    cup = Some(present);
                }
                Err(e) => super::emit(&self.events, device_fault(at, e.line, e.reason)).await,
            }
            match self.dev.button.sample(now) {
                Ok(pressed) => {
                    if button == Some(false) && pressed {
                        super::emit(&self.events, Event::ButtonPressed { at }).await;
                        self.taken(at).await;
                    }
                    button = Some(pressed);
                }
                Err(e) => super::emit(&self.events, device_fault(at, e.line, e.reason)).await,
            }
            for i in 0..2 {
                let light = if i == 0 {
                    &mut self.dev.buzzer
                } else {
                    &mut self.dev.led
                };
                if let Err(e) = light.enforce(now) {
                    let _ = self.events.send(device_fault(at, e.line, e.reason)).await;
                }
            }
            if now >= next_plan {
                self.escalate(at).await;
                self.stock_alerts(at).await;
                if now >= self.next_summary {
                    self.next_summary = now + SUMMARY_EVERY;
                    self.summarise(1, "daily".into()).await;
                }
                self.check_clock().await;
                self.plan().await;
                next_plan = now + PLAN_EVERY;
            }
            let poll = if now < self.attentive_until {
                ATTENTIVE_POLL
            } else if !self.pending.is_empty() {
                PENDING_POLL
            } else {
                IDLE_POLL
            };
            let wake = (now + poll).min(next_plan);
            tokio::select! {
                biased;
                _ = shutdown.changed() => break,
                Some(cmd) = commands.recv() => self.command(cmd).await,
                _ = clock::sleep_until(&*self.clock, wake) => {}
            }
            if *shutdown.borrow() {
                break;
            }
        }
        let now = self.clock.monotonic();
        let at = self.clock.now();
        if let Err(e) = self.dev.carousel.release() {
            super::emit(&self.events, device_fault(at, "carousel", e.to_string())).await;
        }
        for i in 0..2 {
            let light = if i == 0 {
                &mut self.dev.buzzer
            } else {
                &mut self.dev.led
            };
            if let Err(e) = light.set(false, now) {
                let _ = self.events.send(device_fault(at, e.line, e.reason)).await;
            }
        }
    }

    async fn home(&mut self) -> bool {
        let at = self.clock.now();
        match self.dev.carousel.home() {
            Ok(steps) => {
                self.homed = true;
                super::emit(&self.events, Event::CarouselHomed { at, steps }).await;
            }
            Err(e) => {
                self.homed = false;
                super::emit(&self.events, device_fault(at, "carousel", e.to_string())).await;
            }
        }
        self.homed
    }

    /// Gives the waiting dose's reminders and alerts that fell due. When its window closes it
    /// stays recorded as dispensed, not taken: the caregiver is told and the appliance stops
    /// waiting for it.
    async fn escalate(&mut self, now: DateTime<Utc>) {
        let mut alerts = Vec::new();
        for p in &mut self.pending {
            for step in escalation::due(&p.escalation, p.escalated_to, now) {
                alerts.push((step, p.clone()));
            }
            p.escalated_to = now;
        }
        self.pending
            .retain(|p| p.escalation.last().is_none_or(|(at, _)| *at > now));
        // Also where quiet hours begin or end while a dose waits.
        let late = alerts.iter().any(|(s, _)| *s == Step::LateNotice);
        self.refresh_lights(late).await;
        for (step, p) in alerts {
            super::emit(
                &self.events,
                Event::DoseAlert {
                    at: now,
                    patient: p.patient,
                    medication: p.record.medication.clone(),
                    occurrence: p.record.occurrence.unwrap_or(p.record.at),
                    reason: step.code().into(),
                    detail: format!(
                        "{} unit(s) dispensed at {} not taken yet",
                        p.record.units,
                        p.record.at.to_rfc3339()
                    ),
                },
            )
            .await;
        }
    }

    /// The window of a scheduled occurrence (None for an as-needed dose).
    fn window_of(
        &self,
        patient: &str,
        medication: &str,
        occurrence: Option<DateTime<Utc>>,
    ) -> Option<crate::dosing::engine::Window> {
        let occurrence = occurrence?;
        let s = self
            .dosing
            .schedules
            .iter()
            .find(|s| s.patient == patient)?;
        let (m, rec) = s.medication(medication)?;
        crate::dosing::engine::windows(
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
    async fn refresh_lights(&mut self, resound: bool) {
        let now = self.clock.now();
        let critical = self.fridge_alarm || self.storage_locked || self.awaiting_reconciliation();
        let led = critical || !self.pending.is_empty();
        let buzzer = critical || self.pending.iter().any(|p| self.sounds(p, now));
        let wanted = (buzzer, led);
        if wanted == self.shown && !(resound && buzzer) {
            return;
        }
        self.shown = wanted;
        let mono = self.clock.monotonic();
        for (light, on) in [(&mut self.dev.buzzer, buzzer), (&mut self.dev.led, led)] {
            if let Err(e) = light.set(on, mono) {
                let _ = self.events.send(device_fault(now, e.line, e.reason)).await;
            }
        }
    }

    /// Refuses a command whose outcome could not be recorded: nothing is reported done while
    /// storage fails (the dispenser is locked meanwhile).
    fn storage_works(&self) -> Result<(), String> {
        if self.storage_locked {
            return Err(
                "STORAGE_FAILED: the dispenser is locked and nothing can be recorded until storage works again"
                    .into(),
            );
        }
        Ok(())
    }

    /// Whether a waiting dose may sound now.
    fn sounds(&self, p: &Pending, now: DateTime<Utc>) -> bool {
        let Some(s) = self
            .dosing
            .schedules
            .iter()
            .find(|s| s.patient == p.patient)
        else {
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
    /// caregiver. (No dispense is under way when this is asked: the task runs one thing at a
    /// time, so an intent without its outcome here is an interrupted one.)
    fn awaiting_reconciliation(&self) -> bool {
        self.dosing.history.patients().any(|p| {
            crate::dosing::engine::effective(self.dosing.history.of(p))
                .iter()
                .any(|r| matches!(r.outcome, Outcome::Uncertain | Outcome::Dispensing))
        })
    }

    /// Whose a reading is: the one it names, or the cabinet's only patient.
    fn whose(&self, reading: &VitalReading) -> Result<String, String> {
        let patients: Vec<&str> = self
            .dosing
            .schedules
            .iter()
            .map(|s| s.patient.as_str())
            .collect();
        match (reading.patient.as_deref(), patients.as_slice()) {
            (Some(p), known) if known.contains(&p) => Ok(p.to_string()),
            (Some(p), _) => Err(format!(
                "UNKNOWN_PATIENT: {p:?} has no schedule in this cabinet"
            )),
            (None, [only]) => Ok(only.to_string()),
            (None, known) => Err(format!(
                "PATIENT_REQUIRED: this cabinet doses {} patients; say whose reading it is (`patient`)",
                known.len()
            )),
        }
    }

    /// Takes a reading for its patient's holds: recorded (unless it already was), alerted when
    /// out of band, and a held dose of that patient may be released at once.
    async fn vital(
        &mut self,
        mut reading: VitalReading,
        source: VitalSource,
    ) -> Result<String, String> {
        let patient = self.whose(&reading)?;
        reading.patient = Some(patient.clone());
        let done = format!(
            "recorded {:?} {} {} for {patient}",
            reading.vital,
            reading.value,
            crate::dosing::vitals::unit(reading.vital)
        );
        if matches!(source, VitalSource::New) {
            super::emit(
                &self.events,
                Event::Vital {
                    at: self.clock.now(),
                    reading: reading.clone(),
                },
            )
            .await;
        }
        if let Some(band) = crate::dosing::vitals::out_of_band(&reading) {
            super::emit(
                &self.events,
                Event::VitalAlert {
                    at: self.clock.now(),
                    reading: reading.clone(),
                    band: band.into(),
                },
            )
            .await;
        }
        self.vitals.push(reading);
        // Keep a day of readings: holds look back hours at most.
        let horizon = self.clock.now() - chrono::Duration::days(1);
        self.vitals.retain(|v| v.at > horizon);
        // A new reading may release a held dose at once.
        self.plan().await;
        Ok(done)
    }

    async fn command(&mut self, cmd: DispenserCommand) {
        match cmd {
            DispenserCommand::SkipDose {
                patient,
                medication,
                occurrence,
                actor,
                reply,
            } => {
                let _ = reply.send(self.skip(patient, medication, occurrence, actor).await);
            }
            DispenserCommand::ReconcileDose {
                patient,
                medication,
                occurrence,
                given,
                units,
                actor,
                note,
                reply,
            } => {
                let found = Reconciliation {
                    given,
                    units,
                    actor,
                    note,
                };
                let _ = reply.send(self.reconcile(patient, medication, occurrence, found).await);
            }
            DispenserCommand::RequestPrn {
                patient,
                medication,
                request,
                reply,
            } => {
                let _ = reply.send(self.prn(patient, medication, request).await);
            }
            DispenserCommand::Rehome => {
                self.home().await;
            }
            // A newly raised alarm sounds again even if a waiting dose already had the buzzer on
            // (its time limit may have silenced it).
            DispenserCommand::Annunciate(on) => {
                self.fridge_alarm = on;
                self.refresh_lights(on).await;
            }
            DispenserCommand::StorageLock(on) => {
                self.storage_locked = on;
                self.refresh_lights(on).await;
            }
            DispenserCommand::TestDispense { slot, units } => {
                let at = self.clock.now();
                if !self.homed {
                    super::emit(
                        &self.events,
                        device_fault(
                            at,
                            "carousel",
                            "not homed: dispense refused, nothing moved".into(),
                        ),
                    )
                    .await;
                    return;
                }
                match self.dev.carousel.dispense(slot, units) {
                    Ok(report) => {
                        self.homed = report.returned_home;
                        self.dosing.inventory.take(slot, report.drops_seen);
                        self.stray(&report).await;
                        if report.drops_seen > 0 {
                            self.attentive_until = self.clock.monotonic() + ATTENTIVE_FOR;
                        }
                        super::emit(
                            &self.events,
                            Event::Dispensed {
                                at: self.clock.now(),
                                report,
                                drops_seen: report.drops_seen,
                                returned_home: report.returned_home,
                            },
                        )
                        .await;
                    }
                    Err(e) => {
                        self.homed = false;
                        super::emit(
                            &self.events,
                            device_fault(self.clock.now(), "carousel", e.to_string()),
                        )
                        .await;
                    }
                }
            }
            DispenserCommand::Vital(reading, reply) => {
                let answer = self.vital(reading, VitalSource::New).await;
                match (reply, answer) {
                    (Some(reply), answer) => {
                        let _ = reply.send(answer);
                    }
                    (None, Err(e)) => tracing::warn!("vital reading refused: {e}"),
                    (None, Ok(_)) => {}
                }
            }
            DispenserCommand::VitalRecorded(reading) => {
                if let Err(e) = self.vital(reading, VitalSource::Recorded).await {
                    tracing::warn!("recorded vital reading not used: {e}");
                }
            }
            DispenserCommand::Refill {
                slot,
                added,
                expiry,
                actor,
                note,
                reply,
            } => {
                let result = self.refill(slot, added, expiry, actor, note).await;
                if let Some(r) = reply {
                    let _ = r.send(result);
                }
            }
            DispenserCommand::Report { days, actor, reply } => {
                let t = self.summarise(days, format!("requested by {actor}")).await;
                let (taken, scheduled) = t.iter().fold((0, 0), |(a, b), t| {
                    (a + t.taken, b + t.scheduled + t.as_needed)
                });
                let _ = reply.send(Ok(format!(
                    "adherence of the last {days} day(s) published: {} medication(s), {taken} of {scheduled} doses taken",
                    t.len()
                )));
            }
            DispenserCommand::ReplaceSchedule {
                patient,
                source,
                actor,
                confirm,
                reply,
            } => {
                let _ = reply.send(self.replace_schedule(patient, source, actor, confirm).await);
            }
            DispenserCommand::AcknowledgeStock {
                slot,
                actor,
                comment,
                reply,
            } => {
                let result = if self.dosing.inventory.acknowledge(slot) {
                    super::emit(
                        &self.events,
                        Event::StockAcknowledged {
                            at: self.clock.now(),
                            slot,
                            actor,
                            comment,
                        },
                    )
                    .await;
                    Ok(format!("stock alerts of slot {slot} acknowledged"))
                } else {
                    Err(format!("NOT_RAISED: slot {slot} has no stock alert"))
                };
                if let Some(r) = reply {
                    let _ = r.send(result);
                }
            }
            DispenserCommand::TrustClock {
                actor,
                comment,
                reply,
            } => {
                self.baseline_s = wall_minus_mono(&*self.clock);
                let answer = if self.clock_trusted {
                    Err("NOT_RAISED: the clock is already trusted".to_string())
                } else if let Err(e) = self.storage_works() {
                    Err(e)
                } else {
                    self.clock_trusted = true;
                    self.untrusted_at_start = None;
                    super::emit(
                        &self.events,
                        Event::ClockTrust {
                            at: self.clock.now(),
                            trusted: true,
                            drift_s: 0,
                            actor: Some(actor.clone()),
                            elapsed: Some(self.clocks().elapsed),
                            comment: Some(comment),
                        },
                    )
                    .await;
                    Ok(format!(
                        "clock trusted by {actor}; the dispenser is unlocked"
                    ))
                };
                if let Some(r) = reply {
                    let _ = r.send(answer);
                }
            }
        }
    }

    /// Validates a new schedule completely before it replaces the old one; a rejected one
    /// changes nothing and says why, every problem with its line and field.
    async fn replace_schedule(
        &mut self,
        patient: String,
        source: String,
        actor: String,
        confirm: Option<String>,
    ) -> Result<String, String> {
        use crate::dosing::replace::{check, version, Refusal};
        let file = std::path::PathBuf::from(format!("cmd:replace_schedule/{patient}.toml"));
        let new = crate::dosing::schedule::Schedule::parse(&source, &file)
            .and_then(|s| {
                let misfits = s.slot_problems(self.dev.carousel.slots());
                if misfits.is_empty() {
                    Ok(s)
                } else {
                    Err(misfits)
                }
            })
            .map_err(|errs| {
                let all: Vec<String> = errs.iter().map(ToString::to_string).collect();
                format!("INVALID_SCHEDULE: {}", all.join("; "))
            })?;
        if new.patient != patient {
            return Err(format!(
                "PATIENT_MISMATCH: the schedule is for {:?}, the command names {patient:?}",
                new.patient
            ));
        }
        let index = self
            .dosing
            .schedules
            .iter()
            .position(|s| s.patient == patient);
        let old = index.map(|i| &self.dosing.schedules[i]);
        let old_version = old.map(version);
        let new_version = version(&new);
        // A schedule loaded at start-up removed a guard and waits for a second person: the
        // last confirmed version stays the reference, for this schedule or any other.
        let pending = self.unconfirmed.get(&patient);
        if old_version.as_deref() == Some(new_version.as_str()) && pending.is_none() {
            return Ok(format!(
                "unchanged: version {new_version} is already in use"
            ));
        }
        let others: Vec<&crate::dosing::schedule::Schedule> = self
            .dosing
            .schedules
            .iter()
            .filter(|s| s.patient != patient)
            .collect();
        let mut requested_by = None;
        let verdict = match (check(old, &new, &others, self.clock.now()), pending) {
            (Ok(()), Some(u)) => {
                let weak = crate::dosing::replace::weakened(&u.confirmed, &new);
                if weak.is_empty() {
                    Ok(())
                } else {
                    Err(Refusal::NeedsConfirmation(
                        weak.into_iter().map(|(_, why)| why).collect(),
                    ))
                }
            }
            (verdict, _) => verdict,
        };
        match verdict {
            Ok(()) => {}
            Err(Refusal::Conflicts(c)) => return Err(c.join("; ")),
            Err(Refusal::NeedsConfirmation(c)) => {
                let first = self.awaiting_confirmation.get(&new_version).cloned();
                match (confirm.as_deref(), first) {
                    (Some(v), Some(first)) if v == new_version && first != actor => {
                        self.awaiting_confirmation.remove(&new_version);
                        requested_by = Some(first);
                    }
                    (Some(v), Some(_)) if v == new_version => {
                        return Err(
                            "SAME_PERSON: the second confirmation must come from someone else"
                                .into(),
                        )
                    }
                    _ => {
                        self.awaiting_confirmation
                            .insert(new_version.clone(), actor.clone());
                        return Err(format!(
                            "CONFIRMATION_REQUIRED: {}; a second person must send the same schedule with confirm = {new_version:?}",
                            c.join("; ")
                        ));
                    }
                }
            }
        }
        match index {
            Some(i) => self.dosing.schedules[i] = new,
            None => self.dosing.schedules.push(new),
        }
        if self.unconfirmed.remove(&patient).is_some() {
            self.planner.unlock(&patient);
        }
        self.planner.schedule_installed(&patient, self.clock.now());
        super::emit(
            &self.events,
            Event::ScheduleReplaced {
                at: self.clock.now(),
                patient: patient.clone(),
                old: old_version,
                new: new_version.clone(),
                actor,
                requested_by,
                source,
            },
        )
        .await;
        Ok(format!(
            "schedule of {patient} replaced: version {new_version}"
        ))
    }

    /// Publishes the adherence of the last `days` days and returns it.
    async fn summarise(
        &mut self,
        days: u32,
        trigger: String,
    ) -> Vec<crate::dosing::adherence::Tally> {
        let to = self.clock.now();
        let from = to - chrono::Duration::days(i64::from(days));
        let tallies = crate::dosing::adherence::tally(
            self.dosing
                .history
                .iter()
                .filter(|(_, r)| r.at >= from && r.at < to)
                .map(|(p, r)| (p.to_string(), r.clone())),
        );
        super::emit(
            &self.events,
            Event::Adherence {
                at: to,
                from,
                to,
                trigger,
                tallies: tallies.clone(),
            },
        )
        .await;
        tallies
    }

    async fn refill(
        &mut self,
        slot: u8,
        added: u32,
        expiry: Option<chrono::NaiveDate>,
        actor: String,
        note: String,
    ) -> Result<String, String> {
        let slots = self.dev.carousel.slots();
        if slot >= slots {
            return Err(format!(
                "UNKNOWN_SLOT: slot {slot} does not exist (the carousel has {slots})"
            ));
        }
        if added == 0 {
            return Err("MALFORMED: `units` must be at least 1".into());
        }
        let capacity = self.dev.carousel.slot_capacity();
        let held = self.dosing.inventory.slot(slot).map_or(0, |s| s.count);
        if u64::from(held) + u64::from(added) > u64::from(capacity) {
            return Err(format!(
                "OUT_OF_RANGE: slot {slot} holds {held} and takes at most {capacity} \
                 (carousel.slot_capacity); {added} more cannot be true; nothing recorded"
            ));
        }
        let at = self.clock.now();
        if expiry.is_some_and(|d| d < at.date_naive()) {
            return Err("EXPIRED: the lot's expiry date has passed; not loaded".into());
        }
        let count = self.dosing.inventory.refill(slot, added, expiry);
        // Whatever waited for stock may be tried again.
        self.retry_after.retain(|_, until| until.is_some());
        super::emit(
            &self.events,
            Event::Refill {
                at,
                slot,
                added,
                count,
                expiry,
                actor,
                note,
            },
        )
        .await;
        Ok(format!("slot {slot}: {added} added, {count} in the slot"))
    }

    /// Reports the slots that need a refill (each problem once, then daily until acknowledged).
    async fn stock_alerts(&mut self, now: DateTime<Utc>) {
        let days = self
            .dosing
            .refill_days
            .unwrap_or(crate::dosing::inventory::DEFAULT_REFILL_DAYS);
        let due = self
            .dosing
            .inventory
            .alerts_due(&self.dosing.schedules, now, days);
        for w in due {
            super::emit(
                &self.events,
                Event::StockAlert {
                    at: now,
                    slot: w.slot,
                    patient: w.patient,
                    medication: w.medication,
                    count: w.count,
                    days_left: w.days_left.map(|d| (d * 10.0).round() / 10.0),
                    reason: w.issue.code().into(),
                },
            )
            .await;
        }
    }

    async fn skip(
        &mut self,
        patient: String,
        medication: String,
        occurrence: DateTime<Utc>,
        actor: String,
    ) -> Result<String, String> {
        let Some(schedule) = self.dosing.schedules.iter().find(|s| s.patient == patient) else {
            return Err(format!("UNKNOWN_PATIENT: {patient:?}"));
        };
        let Some((m, Some(rec))) = schedule.medication(&medication) else {
            return Err(format!(
                "UNKNOWN_MEDICATION: {medication:?} is not a scheduled medication of {patient}"
            ));
        };
        let tz = schedule.tz;
        let slot = *m.slot.get_ref();
        // Records carry the schedule's spelling, whatever case the command used.
        let medication = m.name.clone();
        let known = crate::dosing::engine::windows(
            m,
            rec,
            tz,
            occurrence - chrono::Duration::days(1),
            occurrence + chrono::Duration::days(1),
        )
        .iter()
        .any(|w| w.occurrence == occurrence);
        if !known {
            return Err(format!(
                "UNKNOWN_OCCURRENCE: {medication} is not scheduled at {}",
                occurrence.to_rfc3339()
            ));
        }
        let settled = crate::dosing::engine::effective(self.dosing.history.of(&patient))
            .iter()
            .any(|r| {
                r.is_of(m)
                    && r.occurrence == Some(occurrence)
                    && !matches!(r.outcome, Outcome::Failed | Outcome::ConfirmedNotGiven)
            });
        if settled {
            return Err("ALREADY_SETTLED: this dose already has an outcome".into());
        }
        self.storage_works()?;
        let record = crate::dosing::engine::record(
            medication,
            Some(occurrence),
            self.clock.now(),
            0,
            Outcome::Skipped,
        );
        self.record(
            patient,
            slot,
            record,
            Some("SKIPPED".into()),
            format!("skipped by {actor}"),
            Some(actor.clone()),
        )
        .await;
        Ok("skipped".into())
    }

    /// Closes an uncertain or interrupted dispense with what the caregiver found. Given: the dose
    /// counts once and is settled. Not given: the uncertain records stop counting and the dose
    /// may be dispensed again while its window is open (an automatic retry was never made).
    async fn reconcile(
        &mut self,
        patient: String,
        medication: String,
        occurrence: Option<DateTime<Utc>>,
        found: Reconciliation,
    ) -> Result<String, String> {
        let Some(schedule) = self.dosing.schedules.iter().find(|s| s.patient == patient) else {
            return Err(format!("UNKNOWN_PATIENT: {patient:?}"));
        };
        let Some((m, _)) = schedule.medication(&medication) else {
            return Err(format!(
                "UNKNOWN_MEDICATION: {medication:?} is not a medication of {patient}"
            ));
        };
        self.storage_works()?;
        let slot = *m.slot.get_ref();
        let medication = m.name.clone();
        let open: Vec<DoseRecord> =
            crate::dosing::engine::effective(self.dosing.history.of(&patient))
                .into_iter()
                .filter(|r| {
                    r.is_of(m)
                        && r.occurrence == occurrence
                        && matches!(r.outcome, Outcome::Uncertain | Outcome::Dispensing)
                })
                .cloned()
                .collect();
        let Some(last) = open.last() else {
            return Err(format!(
                "NOTHING_TO_RECONCILE: no uncertain dispense of {medication} {} awaits reconciliation",
                occurrence.map_or("(as needed)".to_string(), |o| format!("at {}", o.to_rfc3339()))
            ));
        };
        let (record, mut answer) = if found.given {
            let units = found.units.unwrap_or(
                last.units
                    .max(m.units_on(last.at.with_timezone(&schedule.tz).date_naive())),
            );
            if units == 0 {
                return Err("MALFORMED: `units` must be at least 1 when given".into());
            }
            // What the beam missed left the slot too.
            self.dosing
                .inventory
                .dose(slot, occurrence, Outcome::ConfirmedGiven, units);
            (
                DoseRecord {
                    medication,
                    occurrence,
                    // When the dose was released, so limits and the rolling window see it there.
                    at: last.at,
                    units,
                    outcome: Outcome::ConfirmedGiven,
                    slot: None,
                    elapsed: None,
                },
                format!("reconciled: given, {units} unit(s)"),
            )
        } else {
            self.dosing
                .inventory
                .dose(slot, occurrence, Outcome::ConfirmedNotGiven, 0);
            (
                crate::dosing::engine::record(
                    medication,
                    occurrence,
                    self.clock.now(),
                    0,
                    Outcome::ConfirmedNotGiven,
                ),
                "reconciled: not given; the dose may be dispensed again while its window is open"
                    .to_string(),
            )
        };
        let medication = record.medication.clone();
        self.record(
            patient.clone(),
            slot,
            record,
            Some(
                if found.given {
                    "CONFIRMED_GIVEN"
                } else {
                    "CONFIRMED_NOT_GIVEN"
                }
                .into(),
            ),
            format!("reconciled by {}: {}", found.actor, found.note),
            Some(found.actor.clone()),
        )
        .await;
        // Not given and its window already closed: the dose is missed, as any other would be
        // (the planner passed its close while it was still uncertain).
        let closed = self
            .window_of(&patient, &medication, occurrence)
            .is_some_and(|w| w.closes <= self.clock.now());
        if !found.given && closed {
            let record = crate::dosing::engine::record(
                medication,
                occurrence,
                self.clock.now(),
                0,
                Outcome::Missed,
            );
            self.record(
                patient,
                slot,
                record,
                Some(crate::dosing::engine::Reason::MissedLocked.code()),
                "reconciled as not given after its window closed".into(),
                Some(found.actor.clone()),
            )
            .await;
            answer =
                "reconciled: not given; its window has closed, so it is recorded missed".into();
        }
        // The uncertain alarm ends once nothing else needs attention.
        self.refresh_lights(false).await;
        Ok(answer)
    }

    async fn prn(
        &mut self,
        patient: String,
        medication: String,
        request: crate::dosing::engine::PrnRequest,
    ) -> Result<String, String> {
        let Some(schedule) = self.dosing.schedules.iter().find(|s| s.patient == patient) else {
            return Err(format!("UNKNOWN_PATIENT: {patient:?}"));
        };
        let Some((m, _)) = schedule.medication(&medication) else {
            return Err(format!("UNKNOWN_MEDICATION: {medication:?}"));
        };
        self.storage_works()?;
        if self.planner.is_locked(&patient, &m.name) {
            return Err(format!(
                "{}: the schedule in force removed the weekly high-alert guard of {}; a second person must confirm it",
                crate::dosing::engine::Reason::ConfirmationRequired.code(),
                m.name
            ));
        }
        let decision = crate::dosing::engine::decide_prn(
            m,
            schedule.tz,
            self.clocks(),
            self.dosing.history.of(&patient),
            &crate::dosing::vitals::of_patient(&self.vitals, &patient),
            self.clock_trusted,
            &request,
        );
        let slot = *m.slot.get_ref();
        let medication = m.name.clone();
        match decision {
            crate::dosing::engine::Decision::Refuse { reason, detail } => {
                Err(format!("{}: {detail}", reason.code()))
            }
            crate::dosing::engine::Decision::Dispense { units, .. } => {
                let before = self.dosing.history.of(&patient).len();
                // The records say who asked, and why an override was allowed.
                let note = match &request.override_reason {
                    Some(reason) => format!(
                        "as-needed, requested by {} ({:?}), limits overridden: {reason}",
                        request.actor, request.role
                    ),
                    None => format!(
                        "as-needed, requested by {} ({:?})",
                        request.actor, request.role
                    ),
                };
                let attempt = Attempt {
                    patient: patient.clone(),
                    medication,
                    slot,
                    occurrence: None,
                    actor: Some(request.actor.clone()),
                };
                self.dispense(attempt, units, Some(note)).await;
                let outcome = self.dosing.history.of(&patient)[before..]
                    .last()
                    .map(|r| r.outcome);
                match outcome {
                    Some(Outcome::Dispensed) => Ok(format!("dispensed {units} unit(s)")),
                    Some(o) => Err(format!(
                        "{}: the dispense ended {o:?}",
                        if o == Outcome::Failed {
                            "FAILED"
                        } else {
                            "UNCERTAIN"
                        }
                    )),
                    None => Err("FAILED: nothing recorded".into()),
                }
            }
        }
    }

    async fn check_clock(&mut self) {
        let drift = wall_minus_mono(&*self.clock) - self.baseline_s;
        // Only a person lifts a lock: a clock that drifts back into line does not.
        let trusted = drift.abs() <= CLOCK_TOLERANCE_S && self.clock_trusted;
        if trusted != self.clock_trusted {
            self.clock_trusted = trusted;
            super::emit(
                &self.events,
                Event::ClockTrust {
                    at: self.clock.now(),
                    trusted,
                    drift_s: drift,
                    actor: None,
                    elapsed: Some(self.clocks().elapsed),
                    comment: None,
                },
            )
            .await;
        }
    }

    async fn plan(&mut self) {
        let now = self.clock.now();
        let horizon = now - chrono::Duration::days(3);
        self.retry_after
            .retain(|(_, _, o), _| o.is_none_or(|o| o > horizon));
        let actions = self.planner.plan(
            &self.dosing.schedules,
            self.clocks(),
            &self.dosing.history,
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
                    let waiting = match self.retry_after.get(&key) {
                        None => false,
                        Some(None) => true,
                        Some(Some(t)) => self.clock.monotonic() < *t,
                    };
                    if !waiting {
                        let attempt = Attempt {
                            patient,
                            medication,
                            slot,
                            occurrence: Some(occurrence),
                            actor: None,
                        };
                        self.dispense(attempt, units, None).await
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
                    )
                    .await;
                }
                Action::Alert {
                    patient,
                    medication,
                    occurrence,
                    reason,
                    detail,
                } => {
                    super::emit(
                        &self.events,
                        Event::DoseAlert {
                            at: now,
                            patient,
                            medication,
                            occurrence,
                            reason: reason.code(),
                            detail,
                        },
                    )
                    .await
                }
            }
        }
    }

    fn slot_of(&self, patient: &str, medication: &str) -> u8 {
        self.dosing
            .schedules
            .iter()
            .filter(|s| s.patient == patient)
            .find_map(|s| s.medication(medication).map(|(m, _)| *m.slot.get_ref()))
            .unwrap_or(u8::MAX)
    }

    /// Records a dose outcome. `actor` is the person it is theirs (skip, reconcile, a PRN
    /// request or override); None for the dispenser's own decisions.
    async fn record(
        &mut self,
        patient: String,
        slot: u8,
        record: DoseRecord,
        reason: Option<String>,
        detail: String,
        actor: Option<String>,
    ) {
        let mut record = record;
        // The slot is the second key of the medication's identity (`dosing::identity`).
        record.slot = record.slot.or((slot != u8::MAX).then_some(slot));
        record.elapsed = record.elapsed.or(Some(self.clocks().elapsed));
        self.dosing.history.push(&patient, record.clone());
        super::emit(
            &self.events,
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
        )
        .await;
    }

    /// Dispenses `units` for `attempt`; `note` says who asked for an as-needed dose and why.
    /// A unit that fell while the carousel was only positioning is in the cup beside the dose,
    /// and may be another medication: a device fault naming the slot it fell from, and that
    /// slot's count goes down (the break-beam saw it leave).
    async fn stray(&mut self, report: &crate::devices::DropReport) {
        if report.stray_drops == 0 {
            return;
        }
        let at = self.clock.now();
        let Some(from) = report.stray_from else {
            let detail = format!(
                "STRAY_DROP: {} unit(s) fell from an unknown slot while dispensing from slot {}: \
                 check the cup before anything is taken",
                report.stray_drops, report.slot
            );
            return super::emit(&self.events, device_fault(at, "carousel", detail)).await;
        };
        self.dosing.inventory.take(from, report.stray_drops);
        let detail = format!(
            "STRAY_DROP: {} unit(s) fell from slot {from} while dispensing from slot {}: check \
             the cup and slot {from} before anything is taken",
            report.stray_drops, report.slot
        );
        super::emit(
            &self.events,
            Event::StrayDrop {
                at,
                slot: from,
                units: report.stray_drops,
                dispensing: report.slot,
                detail,
            },
        )
        .await;
    }

    async fn dispense(&mut self, attempt: Attempt, units: u32, note: Option<String>) {
        let (slot, occurrence) = (attempt.slot, attempt.occurrence);
        if self.storage_locked {
            // Not even a refusal is recorded: it could not be. The planner asks again each
            // minute, and the window's close accounts for the dose if storage stays down.
            return;
        }
        if !self.homed && !self.home().await {
            let detail = "the carousel could not find home; nothing moved";
            return self
                .failed_before_motion(attempt, "NOT_HOMED", detail)
                .await;
        }
        if self.dosing.inventory.short_of(slot, units) {
            let left = self.dosing.inventory.slot(slot).map_or(0, |s| s.count);
            let detail =
                format!("slot {slot} holds {left} unit(s), the dose needs {units}; nothing moved");
            return self
                .failed_before_motion(attempt, "SLOT_EMPTY", &detail)
                .await;
        }
        // Durable intent before any motion: if the process dies mid-turn, the restart finds it
        // and treats the dose as uncertain instead of dispensing it again.
        let intent = crate::dosing::engine::record(
            attempt.medication.clone(),
            occurrence,
            self.clock.now(),
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
        )
        .await;
        let token = crate::events::Durable::default();
        super::emit(
            &self.events,
            Event::Barrier {
                token: token.clone(),
            },
        )
        .await;
        // Durability is a matter of real disk I/O, so the limit is in the runtime's time, not
        // the (possibly accelerated) appliance clock: at 3600× a simulated 30 s is 8 ms of I/O.
        let durable = tokio::select! {
            biased;
            _ = token.0.notified() => true,
            _ = tokio::time::sleep(DURABLE_WITHIN) => false,
        };
        if !durable {
            let detail = "the intent could not be made durable; nothing moved";
            return self
                .failed_before_motion(attempt, "NOT_DURABLE", detail)
                .await;
        }
        let Attempt {
            patient,
            medication,
            actor,
            ..
        } = attempt;
        let note = note.map(|n| format!("; {n}")).unwrap_or_default();
        let result = self.dev.carousel.dispense(slot, units);
        let at = self.clock.now();
        let DispenseOutcome {
            outcome,
            given,
            detail,
            homed,
        } = classify(&result, units);
        if let Some(h) = homed {
            self.homed = h;
        }
        if let Ok(report) = &result {
            self.stray(report).await;
        }
        let record = DoseRecord {
            medication,
            occurrence,
            at,
            units: given,
            outcome,
            slot: None,
            elapsed: None,
        };
        // Only what the break-beam saw leaves the count.
        self.dosing.inventory.dose(slot, occurrence, outcome, given);
        match outcome {
            Outcome::Dispensed => {
                let window = self.window_of(&patient, &record.medication, occurrence);
                self.pending.push(Pending {
                    patient: patient.clone(),
                    slot,
                    record: record.clone(),
                    escalation: escalation::plan(window.as_ref(), at),
                    escalated_to: at,
                });
                self.attentive_until = self.clock.monotonic() + ATTENTIVE_FOR;
            }
            Outcome::Failed => {
                let retry = self.clock.monotonic() + FAILED_RETRY_AFTER;
                self.retry_after.insert(
                    (patient.clone(), record.medication.clone(), occurrence),
                    Some(retry),
                );
            }
            _ => {}
        }
        self.record(
            patient,
            slot,
            record,
            None,
            format!("{detail}{note}"),
            actor,
        )
        .await;
        if matches!(outcome, Outcome::Dispensed | Outcome::Uncertain) {
            self.refresh_lights(true).await;
        }
    }

    /// Records a dispense that ended before the motor moved: `failed`, which may be tried again.
    async fn failed_before_motion(&mut self, attempt: Attempt, code: &str, detail: &str) {
        let Attempt {
            patient,
            medication,
            slot,
            occurrence,
            actor,
        } = attempt;
        let retry = (code != "SLOT_EMPTY").then(|| self.clock.monotonic() + FAILED_RETRY_AFTER);
        self.retry_after
            .insert((patient.clone(), medication.clone(), occurrence), retry);
        let record = crate::dosing::engine::record(
            medication,
            occurrence,
            self.clock.now(),
            0,
            Outcome::Failed,
        );
        self.record(
            patient,
            slot,
            record,
            Some(code.into()),
            detail.into(),
            actor,
        )
        .await;
    }

    async fn taken(&mut self, at: DateTime<Utc>) {
        if self.pending.is_empty() {
            return;
        }
        self.attentive_until = self.clock.monotonic();
        let taken = std::mem::take(&mut self.pending);
        self.refresh_lights(false).await;
        for p in taken {
            let record = DoseRecord {
                at,
                outcome: Outcome::Taken,
                ..p.record
            };
            self.record(p.patient, p.slot, record, None, "picked up".into(), None)
                .await;
        }
    }
}

/// A dose being dispensed: whose, what, from which slot, for which occurrence (None: as
/// needed), and the person who asked for it (None: the schedule).
struct Attempt {
    patient: String,
    medication: String,
    slot: u8,
    occurrence: Option<DateTime<Utc>>,
    actor: Option<String>,
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

/// Classifies a dispense (DESIGN: the dose lifecycle). Every drop seen and back home:
/// `dispensed`. An error raised before the motor could move anything (no such slot, not homed,
/// jammed at home): `failed`, which may be tried again. Anything else — too few drops, not back
/// home, a motor or sensor failure mid-turn — `uncertain`: never retried automatically.
fn classify(
    result: &Result<crate::devices::DropReport, CarouselError>,
    units: u32,
) -> DispenseOutcome {
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

/// Whether a vital reading still has to be recorded.
enum VitalSource {
    New,
    Recorded,
}

fn wall_minus_mono(clock: &dyn Clock) -> i64 {
    clock.now().timestamp() - clock.monotonic().as_secs() as i64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::DropReport;

    fn report(drops_seen: u32, returned_home: bool) -> Result<DropReport, CarouselError> {
        Ok(DropReport {
            slot: 0,
            requested: 2,
            drops_seen,
            stray_drops: 0,
            stray_from: None,
            returned_home,
        })
    }

    #[test]
    fn a_dispense_is_dispensed_only_with_every_drop_seen_and_home_reached() {
        assert_eq!(classify(&report(2, true), 2).outcome, Outcome::Dispensed);
        assert_eq!(classify(&report(1, true), 2).outcome, Outcome::Uncertain);
        assert_eq!(classify(&report(2, false), 2).outcome, Outcome::Uncertain);
    }

    #[test]
    fn a_unit_that_fell_while_positioning_makes_the_dose_uncertain_and_names_the_slot() {
        let stray = Ok(DropReport {
            stray_drops: 1,
            stray_from: Some(3),
            ..report(2, true).unwrap()
        });
        let c = classify(&stray, 2);
        assert_eq!(c.outcome, Outcome::Uncertain);
        assert_eq!(c.given, 2);
        assert!(c.detail.contains("over slot 3"), "{}", c.detail);
    }

    #[test]
    fn errors_before_the_motor_moves_are_failed_never_uncertain() {
        for e in [
            CarouselError::NoSuchSlot { slot: 9, slots: 8 },
            CarouselError::NotHomed,
            CarouselError::BeamBlocked,
            CarouselError::Jammed { steps: 40 },
        ] {
            let c = classify(&Err(e), 1);
            assert_eq!((c.outcome, c.given), (Outcome::Failed, 0), "{c:?}");
        }
        // A sensor failing mid-turn may have let something fall: uncertain.
        let mid = CarouselError::Sensor {
            line: "beam",
            reason: "i/o".into(),
        };
        assert_eq!(classify(&Err(mid), 1).outcome, Outcome::Uncertain);
    }
}
