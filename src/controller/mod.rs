//! The controller: wires devices, domain cores and reporting with tokio tasks and channels.
//!
//! One task owns the fridge devices and runs the cold-chain cores; one owns the dispenser devices.
//! Each sleeps until its next deadline or a command, on the injected clock. Both report [`Event`]s
//! on one channel. On shutdown (the watch flips to true) each puts its actuators in their safe
//! state before it returns, and `Stopped` is the last event.

use crate::clock::{self, Clock};
use crate::coldchain::arbiter::{Arbiter, Arbitration, Doubt, Plant};
use crate::coldchain::control::ControlDecision;
use crate::coldchain::monitor::{AlarmKind, Monitor, Observation};
use crate::coldchain::validate::Mounting;
use crate::coldchain::{
    ColdChainConfig, ControlInput, ControlMode, ProbeValidator, Thermostat, Verdict,
};
use crate::devices::{
    BinarySensor, Compressor, CompressorState, DispenserDevices, FridgeDevices, Probe, Thermometer,
};
use crate::events::{Event, FridgeRecord};
use crate::units::Celsius;
use hardware::{Hardware, Offload};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};

pub mod commands;
mod dispenser;
pub mod hardware;
pub mod resend_budget;
pub mod serve;

/// How the compressor is decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Strategy {
    /// The medbox controller: validated buffered probe, hysteresis, compressor protection,
    /// fail-safe duty cycle.
    Protected,
    /// A naive baseline for comparison only: bang-bang on the raw air probe, no validation, no
    /// minimum times (the relay's own protections still apply below it).
    NaiveBaseline,
}

/// Where the answer to a command goes: `Ok(detail)` or a typed refusal.
pub type Reply = tokio::sync::oneshot::Sender<crate::refusal::Answer>;

/// Commands the fridge task accepts.
#[derive(Debug)]
pub enum FridgeCommand {
    /// Acknowledge a raised alarm.
    AcknowledgeAlarm {
        /// Which.
        alarm: crate::coldchain::monitor::AlarmKind,
        /// Who.
        actor: String,
        /// Why.
        comment: String,
        /// Where to answer (None: a local action, answered by an event only).
        reply: Option<Reply>,
    },
}

/// A command for the dispenser task: what the core is asked, and where its answer goes.
#[derive(Debug)]
pub struct DispenserCommand {
    /// What is asked.
    pub command: crate::dosing::dispenser::Command,
    /// Where to answer (None: nobody waits).
    pub reply: Option<Reply>,
}

impl DispenserCommand {
    /// A command nobody waits for the answer of.
    pub fn tell(command: crate::dosing::dispenser::Command) -> Self {
        Self {
            command,
            reply: None,
        }
    }

    /// A command whose answer goes to `reply`.
    pub fn ask(command: crate::dosing::dispenser::Command, reply: Reply) -> Self {
        Self {
            command,
            reply: Some(reply),
        }
    }
}

/// What the dispenser needs to dose: the schedules, what has already happened (rebuilt from the
/// store at start-up), and since when the appliance is responsible for doses.
#[derive(Clone, Debug, Default)]
pub struct Dosing {
    /// Validated schedules.
    pub schedules: Vec<crate::dosing::schedule::Schedule>,
    /// Dose history.
    pub history: crate::dosing::history::DoseHistory,
    /// The appliance's first start (None: now).
    pub since: Option<chrono::DateTime<chrono::Utc>>,
    /// The last day's vital readings (rebuilt from the store at start-up).
    pub vitals: Vec<crate::dosing::engine::VitalReading>,
    /// What each slot holds (rebuilt from the store at start-up).
    pub inventory: crate::dosing::inventory::Inventory,
    /// Refill alert below this many days of doses (None: the default, 7).
    pub refill_days: Option<f64>,
    /// The time floor: when the last durable record was written (None: nothing recorded yet).
    /// A wall clock behind it at start locks dispensing until a person confirms the clock.
    pub clock_floor: Option<chrono::DateTime<chrono::Utc>>,
    /// The store says the clock was left untrusted: a restart never clears that lock.
    pub clock_locked: bool,
    /// The latest record that holds both clocks (a dose record or a clock event): its wall
    /// time and its place on the elapsed timeline, from which the timeline resumes.
    pub elapsed_anchor: Option<crate::dosing::engine::ElapsedAnchor>,
    /// Schedules found at start-up that removed a weekly guard: their medications stay locked
    /// until a second person confirms.
    pub unconfirmed: Vec<crate::dosing::replace::Unconfirmed>,
    /// When each patient's schedule in force was installed (from the store).
    pub installed_at: std::collections::BTreeMap<String, chrono::DateTime<chrono::Utc>>,
    /// Commands already answered (from the store): never executed again after a restart.
    pub answered: Vec<commands::Answered>,
    /// Where the audit chain failed to verify at start-up (None: intact).
    pub integrity: Option<crate::dosing::dispenser::IntegrityBreak>,
    /// How long dose records stay in memory (None: all of them; see
    /// [`crate::dosing::dispenser::Restored::keep_history`]).
    pub keep_history: Option<chrono::Duration>,
}

impl Dosing {
    /// What the dispenser core rebuilds itself from.
    fn restored(self) -> crate::dosing::dispenser::Restored {
        crate::dosing::dispenser::Restored {
            schedules: self.schedules,
            history: self.history,
            since: self.since,
            vitals: self.vitals,
            inventory: self.inventory,
            refill_days: self.refill_days,
            clock_floor: self.clock_floor,
            clock_locked: self.clock_locked,
            elapsed_anchor: self.elapsed_anchor,
            unconfirmed: self.unconfirmed,
            installed_at: self.installed_at,
            integrity: self.integrity,
            keep_history: self.keep_history,
        }
    }
}

/// Handles to the running controller.
pub struct Running {
    /// Events from every task, in the order they happened per task.
    pub events: mpsc::Receiver<Event>,
    /// Commands to the dispenser.
    pub dispenser: mpsc::Sender<DispenserCommand>,
    /// Commands to the fridge.
    pub fridge: mpsc::Sender<FridgeCommand>,
    /// Commands from outside (MQTT `cmd/<role>/<name>`), validated and authorised by the router.
    pub commands: mpsc::Sender<commands::Inbound>,
    /// Set to true to stop; every task then applies its safe states and ends.
    pub shutdown: watch::Sender<bool>,
    /// The dispenser asks for every dose record in the store (it let some go from memory and
    /// a decision needs them); the answer goes back as
    /// [`crate::dosing::dispenser::Command::HistoryLoaded`].
    pub history_wanted: mpsc::Receiver<()>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    events_tx: mpsc::Sender<Event>,
    clock: Arc<dyn Clock>,
}

impl Running {
    /// Stops every task, waits until each has applied its safe states, reports `Stopped`, and
    /// returns the event stream so the caller can drain what is left.
    pub async fn stop(self) -> mpsc::Receiver<Event> {
        let _ = self.shutdown.send(true);
        for t in self.tasks {
            // A task that panicked has already dropped its devices, whose drivers open their
            // outputs on drop.
            let _ = t.await;
        }
        let _ = self
            .events_tx
            .send(Event::Stopped {
                at: self.clock.now(),
            })
            .await;
        self.events
    }
}

/// Starts the fridge and dispenser tasks on the current runtime.
pub fn start(
    clock: Arc<dyn Clock>,
    cfg: ColdChainConfig,
    strategy: Strategy,
    fridge: FridgeDevices,
    dispenser: DispenserDevices,
    mut dosing: Dosing,
    offload: Offload,
) -> Running {
    let (events_tx, events) = mpsc::channel(4096);
    // The run's first event, queued before any task can emit: the store judges whether a run
    // stopped cleanly by its start and stop rows, so a row of a run that comes before its start
    // (a command answered, a carousel homed) would let a kill after it go unrecorded.
    // `try_send` on the new, empty channel cannot fail.
    let _ = events_tx.try_send(Event::Started { at: clock.now() });
    let (cmd_tx, cmd_rx) = mpsc::channel(64);
    let (fridge_tx, fridge_rx) = mpsc::channel(64);
    let (shutdown, shutdown_rx) = watch::channel(false);
    let (history_tx, history_wanted) = mpsc::channel(1);
    let mut fridge_task = FridgeTask::new(clock.clone(), cfg, fridge, offload, events_tx.clone());
    fridge_task.strategy = strategy;
    fridge_task.annunciator = Some(cmd_tx.clone());
    let (inbound_tx, inbound_rx) = mpsc::channel(64);
    let router = commands::Router::new(
        clock.clone(),
        fridge_tx.clone(),
        cmd_tx.clone(),
        events_tx.clone(),
        std::mem::take(&mut dosing.answered),
    );
    let geometry = crate::dosing::dispenser::Geometry {
        slots: dispenser.carousel.slots(),
        capacity: dispenser.carousel.slot_capacity(),
    };
    let now = crate::dosing::dispenser::Instant {
        wall: clock.now(),
        mono: clock.monotonic(),
    };
    let core = crate::dosing::dispenser::Dispenser::on_restart(dosing.restored(), geometry, now);
    let tasks = vec![
        tokio::spawn(router.run(inbound_rx, shutdown_rx.clone())),
        tokio::spawn(fridge_task.run(fridge_rx, shutdown_rx.clone())),
        tokio::spawn(
            dispenser::DispenserTask::new(
                clock.clone(),
                dispenser,
                offload,
                core,
                events_tx.clone(),
                history_tx,
            )
            .run(cmd_rx, shutdown_rx),
        ),
    ];
    Running {
        events,
        history_wanted,
        dispenser: cmd_tx,
        fridge: fridge_tx,
        commands: inbound_tx,
        shutdown,
        tasks,
        events_tx,
        clock,
    }
}

/// Why a task stopped waiting.
pub(crate) enum Wake {
    /// The deadline passed.
    Deadline,
    /// Shutdown was asked for.
    Shutdown,
}

pub(crate) async fn wait(
    clock: &dyn Clock,
    deadline: Duration,
    shutdown: &mut watch::Receiver<bool>,
) -> Wake {
    if *shutdown.borrow() {
        return Wake::Shutdown;
    }
    tokio::select! {
        biased;
        _ = clock::sleep_until(clock, deadline) => Wake::Deadline,
        _ = shutdown.changed() => Wake::Shutdown,
    }
}

/// An acknowledgement the monitor could not take, as a typed refusal.
fn ack_refusal(e: &crate::coldchain::monitor::AckError) -> crate::refusal::Refusal {
    use crate::coldchain::monitor::AckError;
    use crate::refusal::{Refusal, RefusalCode};
    let code = match e {
        AckError::NotRaised(_) => RefusalCode::NotRaised,
        AckError::AlreadyAcknowledged(_) => RefusalCode::AlreadyAcknowledged,
        AckError::Incomplete => RefusalCode::Malformed,
    };
    Refusal::new(code, e.to_string())
}

/// Sends an event; the receiver only goes away when the whole appliance is stopping.
pub(crate) async fn emit(events: &mpsc::Sender<Event>, e: Event) {
    let _ = events.send(e).await;
}

/// Most commands the fridge answers between two control periods when the periods run back to
/// back: enough for any person, few enough that a flood cannot delay control.
const COMMANDS_PER_PERIOD: usize = 8;

/// Latches a probe's fault so it is reported once per episode, not once per reading.
#[derive(Default)]
struct FaultLatch {
    current: Option<crate::coldchain::ProbeFaultKind>,
}

/// The two probes, read together on the blocking pool (their conversions wait).
struct Probes {
    vial: Box<dyn Thermometer>,
    air: Box<dyn Thermometer>,
}

/// The fridge's lines that never wait: the relay and the door and mains inputs.
struct FridgeLines {
    compressor: Box<dyn Compressor>,
    door: Box<dyn BinarySensor>,
    mains: Box<dyn BinarySensor>,
}

struct FridgeTask {
    clock: Arc<dyn Clock>,
    cfg: ColdChainConfig,
    probes: Hardware<Probes>,
    dev: FridgeLines,
    events: mpsc::Sender<Event>,
    thermostat: Thermostat,
    vial: ProbeValidator,
    air: ProbeValidator,
    arbiter: Arbiter,
    doubt: Option<Doubt>,
    response: crate::coldchain::response::ResponseCheck,
    latches: [FaultLatch; 2],
    starts: u64,
    compressor_on: bool,
    mode: Option<ControlMode>,
    monitor: Monitor,
    door_open: bool,
    mains: bool,
    strategy: Strategy,
    naive_on: bool,
    annunciator: Option<mpsc::Sender<DispenserCommand>>,
    /// Unacknowledged alarms at the last look.
    sounding: usize,
}

impl FridgeTask {
    fn new(
        clock: Arc<dyn Clock>,
        cfg: ColdChainConfig,
        dev: FridgeDevices,
        offload: Offload,
        events: mpsc::Sender<Event>,
    ) -> Self {
        let now = clock.monotonic();
        let FridgeDevices {
            vial,
            air,
            compressor,
            door,
            mains,
        } = dev;
        Self {
            probes: Hardware::new(Probes { vial, air }, offload),
            dev: FridgeLines {
                compressor,
                door,
                mains,
            },
            thermostat: Thermostat::new(cfg.clone(), now),
            vial: ProbeValidator::new(cfg.clone(), Mounting::Buffered),
            air: ProbeValidator::new(cfg.clone(), Mounting::Air),
            arbiter: Arbiter::new(cfg.clone()),
            doubt: None,
            response: Default::default(),
            latches: Default::default(),
            starts: 0,
            compressor_on: false,
            mode: None,
            monitor: Monitor::new(cfg.clone()),
            door_open: false,
            mains: true,
            strategy: Strategy::Protected,
            naive_on: false,
            annunciator: None,
            sounding: 0,
            clock,
            cfg,
            events,
        }
    }

    async fn run(
        mut self,
        mut commands: mpsc::Receiver<FridgeCommand>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let mut next_record = self.clock.monotonic();
        loop {
            let now = self.clock.monotonic();
            let (record, deadline) = self.period(now).await;
            if now >= next_record {
                self.record(record).await;
                next_record = now + self.cfg.record_period;
            }
            // Commands that arrived during the period are answered now, a bounded number per
            // period: when the probes take as long as the period (a slow bus), the deadline is
            // already due at the select below and would otherwise win it every time.
            for _ in 0..COMMANDS_PER_PERIOD {
                match commands.try_recv() {
                    Ok(cmd) => self.command(cmd).await,
                    Err(_) => break,
                }
            }
            let mut wake_at = (now + self.cfg.control_period).min(next_record);
            if let Some(d) = deadline {
                wake_at = wake_at.min(d.max(now + Duration::from_millis(1)));
            }
            tokio::select! {
                biased;
                wake = wait(&*self.clock, wake_at, &mut shutdown) => {
                    if let Wake::Shutdown = wake {
                        break;
                    }
                }
                Some(cmd) = commands.recv() => self.command(cmd).await,
            }
        }
        for e in crate::coldchain::analysis::final_events(&mut self.monitor) {
            emit(&self.events, Event::ColdChain(e)).await;
        }
        let now = self.clock.monotonic();
        if let Err(e) = self.dev.compressor.safe(now) {
            emit(
                &self.events,
                Event::DeviceFault {
                    at: self.clock.now(),
                    device: e.line.to_string(),
                    detail: format!("could not apply the safe state: {}", e.reason),
                },
            )
            .await;
        }
    }

    /// Emits a record and runs the cold-chain monitor on it.
    async fn record(&mut self, record: FridgeRecord) {
        let obs = Observation {
            at: record.at,
            buffered: record.control,
            any_valid: record.vial.is_some() || record.air.is_some(),
            doubt: record.doubt,
            door_open: Some(record.door_open),
            mains: Some(record.mains),
        };
        emit(&self.events, Event::Reading(record)).await;
        for e in self.monitor.observe(&obs) {
            emit(&self.events, Event::ColdChain(e)).await;
        }
        self.annunciate().await;
    }

    /// Sounds the local alarm while any alarm is raised and not acknowledged, and again for
    /// each alarm raised on top of one already sounding (the buzzer's time limit may have
    /// silenced the first).
    async fn annunciate(&mut self) {
        let unacknowledged = self
            .monitor
            .active_alarms()
            .iter()
            .filter(|(_, ack)| !ack)
            .count();
        let changed = (unacknowledged > 0) != (self.sounding > 0);
        let another = unacknowledged > self.sounding;
        self.sounding = unacknowledged;
        if changed || another {
            if let Some(tx) = &self.annunciator {
                let _ = tx
                    .send(DispenserCommand::tell(
                        crate::dosing::dispenser::Command::Annunciate(unacknowledged > 0),
                    ))
                    .await;
            }
        }
    }

    async fn command(&mut self, cmd: FridgeCommand) {
        let at = self.clock.now();
        match cmd {
            FridgeCommand::AcknowledgeAlarm {
                alarm,
                actor,
                comment,
                reply,
            } => match self.monitor.acknowledge(alarm, &actor, &comment) {
                Ok(()) => {
                    if let Some(r) = reply {
                        let _ = r.send(Ok(format!("alarm {} acknowledged", alarm.code())));
                    }
                    emit(
                        &self.events,
                        Event::AlarmAcknowledged {
                            at,
                            alarm,
                            actor,
                            comment,
                        },
                    )
                    .await;
                    self.annunciate().await;
                }
                Err(e) => {
                    if let Some(r) = reply {
                        let _ = r.send(Err(ack_refusal(&e)));
                        return;
                    }
                    emit(
                        &self.events,
                        Event::CommandRejected {
                            at,
                            command: "acknowledge_alarm".into(),
                            reason: ack_refusal(&e).to_string(),
                        },
                    )
                    .await
                }
            },
        }
    }

    /// The naive baseline's decision: bang-bang on whatever the air probe's driver returned.
    fn naive_decision(
        &mut self,
        air_raw: &Result<Celsius, crate::devices::ProbeError>,
    ) -> ControlDecision {
        if let Ok(t) = air_raw {
            if *t >= self.cfg.cut_in {
                self.naive_on = true;
            } else if *t <= self.cfg.cut_out {
                self.naive_on = false;
            }
        }
        ControlDecision {
            compressor_on: self.naive_on,
            mode: ControlMode::Thermostat,
            next_deadline: None,
        }
    }

    /// One control period: read, validate, decide, actuate.
    async fn period(&mut self, now: Duration) -> (FridgeRecord, Option<Duration>) {
        let at = self.clock.now();
        // A lost probe thread reads as both probes not responding: the validators record probe
        // faults and control falls back to the fail-safe duty cycle.
        let (vial_raw, air_raw) = self
            .probes
            .call(|p| (p.vial.read(), p.air.read()))
            .await
            .unwrap_or_else(|lost| {
                let e = crate::devices::ProbeError::NotResponding(lost.to_string());
                (Err(e.clone()), Err(e))
            });
        let vial = self.vial.check(now, &vial_raw, self.starts);
        let air = self.air.check(now, &air_raw, self.starts);
        self.judge(Probe::Vial, &vial, at).await;
        self.judge(Probe::Air, &air, at).await;
        // The door and mains as last sampled: the period just ended is what the arbiter
        // learns from.
        let plant = Plant {
            compressor_on: self.compressor_on,
            door_open: self.door_open,
            mains: self.mains,
        };
        let arbitration = self.arbiter.update(now, &vial, &air, plant);
        let answer = crate::coldchain::response::Sample {
            commanded_on: self.compressor_on,
            air: valid(&air).map(|c| c.0),
            vial: valid(&vial).map(|c| c.0),
            door_open: self.door_open,
            mains: self.mains,
        };
        if let Some(fault) = self.response.update(now, answer) {
            self.machinery(fault, at).await;
        }
        self.report_doubt(&arbitration, &vial, &air, at).await;
        let door_open = self.sample_input(true, now, at).await;
        let mains = self.sample_input(false, now, at).await;
        (self.door_open, self.mains) = (door_open, mains);
        let signal = arbitration.signal;
        let decision = match self.strategy {
            Strategy::Protected => self.thermostat.step(now, ControlInput { signal, mains }),
            Strategy::NaiveBaseline => self.naive_decision(&air_raw),
        };
        if self.mode != Some(decision.mode) {
            self.mode = Some(decision.mode);
            emit(
                &self.events,
                Event::ControlModeChanged {
                    at,
                    mode: decision.mode,
                },
            )
            .await;
        }
        match self.dev.compressor.command(decision.compressor_on, now) {
            Ok(state) => {
                if state == CompressorState::Tripped {
                    self.tripped(at).await;
                }
                let on = state == CompressorState::On;
                if on && !self.compressor_on {
                    self.starts += 1;
                }
                self.compressor_on = on;
            }
            Err(e) => emit(&self.events, device_fault(at, e.line, e.reason)).await,
        }
        let record = FridgeRecord {
            at,
            mono: now,
            vial: valid(&vial).map(|c| c.0),
            air: valid(&air).map(|c| c.0),
            control: arbitration.estimate.map(|c| c.0),
            doubt: arbitration.doubt,
            compressor_on: self.compressor_on,
            compressor_starts: self.starts,
            door_open,
            mains,
            mode: decision.mode,
        };
        (record, decision.next_deadline)
    }

    /// Reports fault transitions of a probe.
    async fn judge(&mut self, probe: Probe, verdict: &Verdict, at: chrono::DateTime<chrono::Utc>) {
        match verdict {
            Verdict::Valid(_) => self.latch(probe, None, None, at).await,
            Verdict::Rejected(kind, raw) => self.latch(probe, Some(*kind), *raw, at).await,
        }
    }

    /// The relay opened by itself while the controller still asked for cooling: an audited
    /// device fault and a latched alarm, since the protection below the controller acted.
    async fn tripped(&mut self, at: chrono::DateTime<chrono::Utc>) {
        let detail = "the compressor relay opened by itself at its maximum on-time \
            (fridge.compressor.max_on) while the controller asked for cooling";
        self.equipment(AlarmKind::CompressorTrip, at, detail).await;
    }

    /// The cabinet does not answer the compressor the way physics says it must.
    async fn machinery(
        &mut self,
        fault: crate::coldchain::response::ResponseFault,
        at: chrono::DateTime<chrono::Utc>,
    ) {
        use crate::coldchain::response::ResponseFault;
        let (alarm, detail) = match fault {
            ResponseFault::CoolingFailed => (
                AlarmKind::CoolingFailed,
                "the compressor ran for 20 min with the door shut and the air did not cool: \
                 relay, compressor or refrigerant failed; move the stock to another fridge",
            ),
            ResponseFault::StuckOn => (
                AlarmKind::CompressorStuckOn,
                "the compressor was stopped for 20 min and the air kept cooling: the relay is \
                 stuck closed; switch the fridge off at the wall and move the stock before it \
                 freezes",
            ),
        };
        self.equipment(alarm, at, detail).await;
    }

    /// An audited device fault and a latched equipment alarm.
    async fn equipment(
        &mut self,
        alarm: AlarmKind,
        at: chrono::DateTime<chrono::Utc>,
        detail: &str,
    ) {
        emit(
            &self.events,
            device_fault(at, "fridge.compressor", detail.to_string()),
        )
        .await;
        if let Some(e) = self.monitor.equipment_alarm(alarm, at, detail.to_string()) {
            emit(&self.events, Event::ColdChain(e)).await;
            self.annunciate().await;
        }
    }

    /// Reports each change of what is known about a disagreement between the probes (the
    /// alarm itself is the monitor's, once it has lasted `alarms.probe_disagreement`).
    async fn report_doubt(
        &mut self,
        a: &Arbitration,
        vial: &Verdict,
        air: &Verdict,
        at: chrono::DateTime<chrono::Utc>,
    ) {
        if a.doubt == self.doubt {
            return;
        }
        self.doubt = a.doubt;
        emit(
            &self.events,
            Event::ProbeDoubt {
                at,
                doubt: a.doubt,
                evidence: a.evidence,
                vial: valid(vial).map(|c| c.0),
                air: valid(air).map(|c| c.0),
                learned_duty: self.arbiter.learned_duty(),
            },
        )
        .await;
    }

    async fn latch(
        &mut self,
        probe: Probe,
        fault: Option<crate::coldchain::ProbeFaultKind>,
        raw: Option<Celsius>,
        at: chrono::DateTime<chrono::Utc>,
    ) {
        let latch = &mut self.latches[probe_index(probe)];
        if latch.current == fault {
            return;
        }
        let was = latch.current.replace_with(fault);
        let event = match fault {
            Some(fault) => Event::ProbeFault {
                at,
                probe,
                fault,
                raw: raw.map(|c| c.0),
            },
            None if was.is_some() => Event::ProbeRecovered { at, probe },
            None => return,
        };
        emit(&self.events, event).await;
    }

    async fn sample_input(
        &mut self,
        door: bool,
        now: Duration,
        at: chrono::DateTime<chrono::Utc>,
    ) -> bool {
        let sensor = if door {
            &mut self.dev.door
        } else {
            &mut self.dev.mains
        };
        match sensor.sample(now) {
            Ok(v) => v,
            Err(e) => {
                emit(&self.events, device_fault(at, e.line, e.reason)).await;
                // Unknown door: assume closed (no false alarm); unknown mains: assume present so
                // the thermostat keeps cooling.
                !door
            }
        }
    }
}

trait ReplaceWith<T> {
    fn replace_with(&mut self, v: Option<T>) -> Option<T>;
}

impl<T> ReplaceWith<T> for Option<T> {
    fn replace_with(&mut self, v: Option<T>) -> Option<T> {
        std::mem::replace(self, v)
    }
}

fn valid(v: &Verdict) -> Option<Celsius> {
    match v {
        Verdict::Valid(c) => Some(*c),
        Verdict::Rejected(..) => None,
    }
}

fn probe_index(p: Probe) -> usize {
    match p {
        Probe::Vial => 0,
        Probe::Air => 1,
    }
}

pub(crate) fn device_fault(
    at: chrono::DateTime<chrono::Utc>,
    device: &str,
    detail: String,
) -> Event {
    Event::DeviceFault {
        at,
        device: device.to_string(),
        detail,
    }
}
