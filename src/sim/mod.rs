//! `medbox sim`: the appliance on the simulated board, on simulated time.
//!
//! Builds the simulated board from a profile, starts the same controller that runs on the Pi,
//! plays a scenario against the physical model, and summarises what the controller recorded.
//! Everything the summary says about the fridge comes from the records the controller made
//! through the real drivers; the model's own truth is reported beside it only so the two can be
//! compared.

pub mod household;
pub mod story;

use crate::appliance;
use crate::board::sim::{self, SimHandle};
use crate::clock::{self, Clock, SimClock};
use crate::coldchain::analysis::{Analysis, AnalysisReport};
use crate::coldchain::stats::FridgeStats;
use crate::coldchain::ColdChainConfig;
use crate::config::BoardProfile;
use crate::controller::{DispenserCommand, FridgeCommand, Strategy};
use crate::dosing::dispenser::Command;
use crate::events::Event;
use crate::events::FridgeRecord;
use crate::scenario::{Op, Scenario};
use chrono::{DateTime, Utc};
use serde::Serialize;
use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use thiserror::Error;
use tokio::sync::mpsc;

/// How fast simulated time runs.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Speed {
    /// As fast as the CPU allows (tokio paused time; deterministic).
    Max,
    /// This many simulated seconds per real second.
    Factor(f64),
}

/// What to simulate.
#[derive(Clone, Debug)]
pub struct SimOptions {
    /// The simulated board.
    pub profile: BoardProfile,
    /// Cold-chain settings.
    pub coldchain: ColdChainConfig,
    /// Events to play.
    pub scenario: Option<Scenario>,
    /// Stop after this much simulated time (None: until interrupted).
    pub duration: Option<Duration>,
    /// Seed override for the model's random draws.
    pub seed: Option<u64>,
    /// Print a status line about once a real second.
    pub live: bool,
    /// How the compressor is decided.
    pub strategy: Strategy,
    /// Keep every fridge record, to export them.
    pub keep_records: bool,
    /// Keep every checkpoint signed, to write them out at the end (`--checkpoints-out`); the
    /// database holds them anyway, and a long run need not hold them in memory too.
    pub keep_checkpoints: bool,
    /// Make every event durable in this SQLite database (audit chain, readings, checkpoints).
    pub db: Option<std::path::PathBuf>,
    /// Dosing schedules to run.
    pub schedules: Vec<crate::dosing::schedule::Schedule>,
    /// Publish the outbox to this broker (`mqtt://host:port`); needs `db`.
    pub mqtt: Option<String>,
    /// TLS files and username/password for the broker.
    pub mqtt_security: (
        Option<crate::uplink::tls::TlsFiles>,
        Option<(String, String)>,
    ),
    /// Device id for topics and the MQTT client id.
    pub device_id: String,
    /// Cap the database at this many pages (rehearses a full disk).
    pub db_max_pages: Option<u32>,
    /// Keep dose records in memory this long (None: the appliance's default), to rehearse
    /// reading them back from the store.
    pub keep_dose_history: Option<Duration>,
    /// Refill alert below this many days of doses (None: 7).
    pub refill_days: Option<f64>,
    /// Also queue FHIR R4 renderings (MedicationAdministration, Observation) for the uplink.
    pub fhir: bool,
    /// Key the audit chain with this HMAC secret (None: plain SHA-256).
    pub audit_key: Option<crate::store::audit::ChainKey>,
    /// Print `durable audit <seq>` / `durable readings <first>-<last>` on standard output after
    /// each commit (for the crash harness: a printed record is an acknowledged one).
    pub print_durable: bool,
    /// The simulated people who collect doses and take readings (None: nobody; the scenario
    /// alone acts).
    pub household: Option<household::HouseholdConfig>,
}

/// The shipped simulated board and example schedules, as `medbox sim` runs them by default
/// (benches and the fleet's tests drive whole simulated appliances with them).
pub fn shipped() -> Result<(BoardProfile, Vec<crate::dosing::schedule::Schedule>), String> {
    let profile = BoardProfile::default_sim().map_err(|e| format!("shipped profile: {e:?}"))?;
    let schedules = crate::dosing::schedule::DEFAULT_SCHEDULES
        .iter()
        .map(|(name, src)| {
            crate::dosing::schedule::Schedule::parse(src, std::path::Path::new(name))
        })
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("shipped schedules: {e:?}"))?;
    Ok((profile, schedules))
}

impl SimOptions {
    /// `duration` on `profile` with nothing else: no scenario, schedules, household, store or
    /// broker, the protected controller, default cold-chain rules. Callers set what they need.
    pub fn plain(profile: BoardProfile, duration: Option<Duration>) -> Self {
        Self {
            profile,
            coldchain: ColdChainConfig::default(),
            scenario: None,
            duration,
            seed: None,
            live: false,
            strategy: Strategy::Protected,
            keep_records: false,
            keep_checkpoints: false,
            db: None,
            db_max_pages: None,
            keep_dose_history: None,
            refill_days: None,
            audit_key: None,
            fhir: false,
            mqtt: None,
            mqtt_security: (None, None),
            device_id: "medbox-sim".into(),
            schedules: Vec::new(),
            print_durable: false,
            household: None,
        }
    }
}

/// The simulation could not run.
#[derive(Debug, Error)]
pub enum SimError {
    /// The board could not be built.
    #[error(transparent)]
    Board(#[from] sim::SimBoardError),
    /// The profile has no `[sim]` model.
    #[error("the profile has no [sim] model")]
    NoModel,
    /// The appliance could not start, or stopped on a failure (a storage failure: the
    /// appliance stopped with its actuators safe, and a supervisor restarts it).
    #[error(transparent)]
    Appliance(#[from] crate::appliance::ApplianceError),
}

/// What the physical model itself went through (truth, for comparison with the records).
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct ModelTruth {
    /// Lowest air node temperature seen at a record.
    pub air_min: f64,
    /// Highest air node temperature seen at a record.
    pub air_max: f64,
    /// Lowest vial node temperature seen at a record.
    pub vial_min: f64,
    /// Highest vial node temperature seen at a record.
    pub vial_max: f64,
    /// Minutes the air node (which holds the stock) spent below the cold-chain range, counted
    /// at records: the product truth a probe fault must not hide.
    pub product_minutes_below: f64,
    /// Minutes the air node spent above the cold-chain range.
    pub product_minutes_above: f64,
    /// Units released by the carousel.
    pub units_released: u32,
    /// Units left per slot.
    pub stock: Vec<u32>,
    /// When the buzzer started sounding (for tests; not printed).
    #[serde(skip)]
    pub buzzer_on_at: Vec<DateTime<Utc>>,
    /// When the LED lit (for tests; not printed).
    #[serde(skip)]
    pub led_on_at: Vec<DateTime<Utc>>,
}

/// A change of what was known about a disagreement between the probes.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct DoubtChange {
    /// When.
    pub at: DateTime<Utc>,
    /// The doubt from then on (None: the probes agree again).
    pub doubt: Option<crate::coldchain::arbiter::Doubt>,
    /// Why the suspect is suspected.
    pub evidence: Option<crate::coldchain::arbiter::Evidence>,
}

/// What the dispenser did.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct DispenserSummary {
    /// Successful homings.
    pub homings: u32,
    /// Dispenses run.
    pub dispenses: u32,
    /// Units the break-beam saw in test dispenses.
    pub units_seen: u32,
    /// Doses released into the cup.
    pub doses_released: u32,
    /// Units those doses held.
    pub dose_units_released: u32,
    /// Dispenses after which home was not found (jam).
    pub lost_position: u32,
    /// Cup pickups.
    pub tray_pickups: u32,
    /// Button presses.
    pub button_presses: u32,
    /// Dose outcomes by kind (dispensed, taken, missed, held, failed, uncertain, skipped).
    pub doses: BTreeMap<String, u32>,
    /// Dose alerts (a reading needed, a limit reached), by reason.
    pub dose_alerts: BTreeMap<String, u32>,
    /// Clock trust changes.
    pub clock_trust_changes: u32,
    /// Refills recorded.
    pub refills: u32,
    /// Schedules replaced by command.
    pub schedule_replacements: u32,
    /// Stock alerts, by reason.
    pub stock_alerts: BTreeMap<String, u32>,
    /// Units that fell while the carousel was only positioning, by the slot they fell from.
    pub stray_drops: BTreeMap<u8, u32>,
    /// Units per slot as the appliance counts them at the end.
    pub stock: BTreeMap<u8, u32>,
}

/// The summary `medbox sim` prints.
#[derive(Clone, Debug, Serialize)]
pub struct SimSummary {
    /// Board profile name.
    pub board: String,
    /// Scenario name, if any.
    pub scenario: Option<String>,
    /// Seed of the model's random draws.
    pub seed: u64,
    /// Simulated start (UTC).
    pub start: DateTime<Utc>,
    /// Simulated end (UTC, as the controller's wall clock read it).
    pub end: DateTime<Utc>,
    /// Simulated days (monotonic time; a blocking dispense at the very end may add seconds).
    pub days: f64,
    /// Fridge statistics from the controller's records.
    pub fridge: FridgeStats,
    /// Probe faults reported, by probe and kind.
    pub probe_faults: BTreeMap<String, u64>,
    /// Thermostat mode changes.
    pub mode_changes: u64,
    /// Dispenser activity.
    pub dispenser: DispenserSummary,
    /// Device faults reported.
    pub device_faults: Vec<String>,
    /// Events reported, by kind.
    pub events: BTreeMap<String, u64>,
    /// The cold-chain record: excursions, alarms, daily min/max and MKT, time in range.
    pub coldchain: AnalysisReport,
    /// Alarm acknowledgements taken (alarm, actor, comment).
    pub acknowledgements: Vec<String>,
    /// Commands refused, with their reasons.
    pub commands_rejected: Vec<String>,
    /// Every fridge record, when asked for (`--export-readings`).
    #[serde(skip)]
    pub records: Vec<FridgeRecord>,
    /// Checkpoints signed during the run (with `--db` and `keep_checkpoints`): the copies to
    /// hold off the device.
    #[serde(skip)]
    pub checkpoints: Vec<crate::store::checkpoint::Checkpoint>,
    /// Records made durable during the run (audit rows and readings, with `--db`).
    pub durable_records: u64,
    /// Messages in the outbox when the run ended, before the uplink drained it.
    pub outbox_before_uplink: Option<i64>,
    /// What the uplink did (with `--mqtt`).
    pub uplink: Option<crate::uplink::UplinkStats>,
    /// Every dose outcome of the run.
    #[serde(skip)]
    pub dose_records: Vec<crate::dosing::engine::DoseRecord>,
    /// Every dose outcome with whose it was and why (for the summary people read).
    #[serde(skip)]
    pub dose_notes: Vec<DoseNote>,
    /// What became of each patient's doses, per medication.
    pub adherence: Vec<crate::dosing::adherence::Tally>,
    /// Every patient the schedules name (some may have had nothing due).
    pub patients: Vec<String>,
    /// The zone people read the appliance's times in: the first schedule's (UTC without one).
    pub zone: chrono_tz::Tz,
    /// Each patient's own zone, in which their dose times are told.
    pub patient_zones: BTreeMap<String, chrono_tz::Tz>,
    /// Whether the run commissioned the appliance (a fresh store, the cabinet switched on): its
    /// first pull-down into range is the commissioning, not a storage excursion.
    pub commissioned: bool,
    /// The cold-chain range (°C).
    pub range: (f64, f64),
    /// Each device fault with when it was reported.
    #[serde(skip)]
    pub device_fault_log: Vec<(DateTime<Utc>, String)>,
    /// The physical model's truth.
    pub truth: ModelTruth,
    /// Each change of what was known about a disagreement between the probes.
    pub probe_doubts: Vec<DoubtChange>,
}

/// A dose outcome as the summary tells it.
#[derive(Clone, Debug, PartialEq)]
pub struct DoseNote {
    /// Patient pseudonym.
    pub patient: String,
    /// The record.
    pub record: crate::dosing::engine::DoseRecord,
    /// Reason code (held, missed, refused).
    pub reason: Option<String>,
    /// What the appliance said about it.
    pub detail: String,
}

/// Runs the simulation until `duration` passes or `stop` resolves. Call inside a runtime whose
/// time is paused (for [`Speed::Max`]) or real (for a factor); `speed` must match it.
pub async fn run(
    opts: SimOptions,
    speed: Speed,
    stop: impl Future<Output = ()>,
) -> Result<SimSummary, SimError> {
    let mut model = opts.profile.sim.clone().ok_or(SimError::NoModel)?;
    if let Some(start) = opts.scenario.as_ref().and_then(|s| s.start) {
        model.start = start;
    }
    if let Some(initial) = opts.scenario.as_ref().and_then(|s| s.initial) {
        model.initial = crate::units::Celsius(initial);
    }
    if let Some(seed) = opts.seed {
        model.seed = seed;
    }
    let mut profile = opts.profile.clone();
    profile.sim = Some(model.clone());
    if opts.strategy == Strategy::NaiveBaseline {
        // The baseline has no minimum times; only the relay's maximum on-time stays.
        profile.fridge.compressor.min_on = Duration::from_secs(1);
        profile.fridge.compressor.min_off = Duration::from_secs(1);
    }
    // The simulated home network: scenario outages cut the uplink's path to the broker.
    let (network, link) = tokio::sync::watch::channel(true);
    let settings = appliance::Settings {
        device_id: opts.device_id.clone(),
        // The configuration version recorded is the profile as given, not the run's overrides.
        profile: opts.profile.clone(),
        coldchain: opts.coldchain.clone(),
        schedules: opts.schedules.clone(),
        refill_days: opts.refill_days,
        strategy: opts.strategy,
        fhir: opts.fhir,
        store: opts.db.as_ref().map(|db| appliance::StoreSettings {
            db: db.clone(),
            key: opts
                .audit_key
                .clone()
                .unwrap_or_else(crate::store::audit::ChainKey::unkeyed),
            signing_key: None,
            max_pages: opts.db_max_pages,
            keep_dose_history: opts.keep_dose_history,
        }),
        uplink: opts.mqtt.as_ref().map(|url| appliance::UplinkSettings {
            url: url.clone(),
            tls: opts.mqtt_security.0.clone(),
            credentials: opts.mqtt_security.1.clone(),
            link: Some(link),
        }),
        // Simulated time: a blocking delay moves the clock for the whole appliance at once.
        offload: crate::controller::hardware::Offload::Inline,
    };
    let opened = appliance::open(settings, crate::store::recorder::new_boot_id())?;
    // A restart on a database resumes the simulated clock where the appliance stopped (a real
    // clock does not go back); a scenario that names its `start` sets the clock itself, so a
    // clock behind the last record (a Pi without a real-time clock) can be played.
    if opts.scenario.as_ref().is_none_or(|s| s.start.is_none()) {
        if let Some(floor) = opened.clock_floor() {
            model.start = model.start.max(floor);
        }
    }
    let print_durable = opts.print_durable;
    let factor = match speed {
        Speed::Max => 1.0,
        Speed::Factor(f) => f,
    };
    let sim_clock = Arc::new(SimClock::new(model.start, factor));
    let clock: Arc<dyn Clock> = sim_clock.clone();
    let restored = opened.restore(&*clock)?;
    let (fridge, dispenser, handle) = sim::build(&profile, sim_clock.clone())?;
    // A carousel nobody ever recorded stock for is being commissioned: the simulated
    // pharmacist records what the model's slots were loaded with.
    let commissioning: Vec<(u8, u32)> = if restored.dosing().inventory.slots().is_empty() {
        model
            .slot_stock
            .iter()
            .enumerate()
            .filter(|(_, n)| **n > 0)
            .filter_map(|(i, n)| Some((u8::try_from(i).ok()?, *n)))
            .collect()
    } else {
        Vec::new()
    };
    let has_store = opts.db.is_some();
    let commissioned = !commissioning.is_empty();
    let started = restored.start(clock.clone(), fridge, dispenser)?;
    let handles = started.handles().clone();
    for (slot, added) in commissioning {
        let _ = handles
            .dispenser
            .send(DispenserCommand::tell(Command::Refill {
                slot,
                added,
                expiry: None,
                actor: "sim:pharmacist".into(),
                note: "commissioning load".into(),
            }))
            .await;
    }
    // A scenario's `crash during = "dispense"`: armed by the scenario, fired here once the next
    // dispense's intent is durable (the motor waits for exactly that).
    let crash_armed = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let crash_on_store = std::cell::Cell::new(false);
    let scenario_task = opts.scenario.clone().map(|s| {
        tokio::spawn(play(
            s,
            Stage {
                handle: handle.clone(),
                clock: sim_clock.clone(),
                dispenser: handles.dispenser.clone(),
                fridge: handles.fridge.clone(),
                commands: handles.commands.clone(),
                network: network.clone(),
                crash_armed: crash_armed.clone(),
            },
        ))
    });

    let (dropped, dropped_rx) = tokio::sync::mpsc::unbounded_channel();
    let household_task = opts.household.as_ref().map(|cfg| {
        let people = opts
            .schedules
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let habit = cfg.patient.get(&s.patient).copied().unwrap_or(cfg.habit);
                household::Person::new(s, i, habit, model.seed)
            })
            .collect();
        tokio::spawn(household::live(
            people,
            opts.schedules.clone(),
            household::Stage {
                handle: handle.clone(),
                clock: sim_clock.clone(),
                dispenser: handles.dispenser.clone(),
                dropped: dropped_rx,
            },
        ))
    });
    let late_window = |patient: &str, medication: &str| {
        opts.schedules
            .iter()
            .filter(|s| s.patient == patient)
            .find_map(|s| s.medication(medication))
            .map(|(m, _)| m.window().1)
    };

    let acc = std::cell::RefCell::new(Accumulator::new(&opts, &profile, model.seed));
    let end = opts.duration.map(|d| clock.monotonic() + d);
    let mut last_status = std::time::Instant::now();
    let ended = std::cell::Cell::new(None);
    let until = async {
        let until_end = async {
            match end {
                Some(e) => clock::sleep_until(&*clock, e).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = until_end => {}
            _ = stop => {}
        }
        for t in scenario_task.iter().chain(&household_task) {
            t.abort();
        }
        ended.set(Some((clock.now(), clock.monotonic())));
    };
    let stopped = started
        .serve(
            until,
            |ev| {
                if crash_armed.load(std::sync::atomic::Ordering::SeqCst)
                    && matches!(ev, Event::Dose { record, .. } if record.outcome == crate::dosing::engine::Outcome::Dispensing)
                {
                    if !has_store {
                        std::process::abort();
                    }
                    crash_on_store.set(true);
                }
                if let Event::Dose { patient, medication, record, .. } = ev {
                    if record.outcome == crate::dosing::engine::Outcome::Dispensed {
                        let _ = dropped.send(household::Dropped {
                            patient: patient.clone(),
                            late_window: record
                                .occurrence
                                .and_then(|_| late_window(patient, medication)),
                        });
                    }
                }
                acc.borrow_mut().add(ev, &handle);
                if opts.live && last_status.elapsed() >= Duration::from_secs(1) {
                    if let Event::Reading(r) = ev {
                        last_status = std::time::Instant::now();
                        eprintln!("{}", status_line(r, &handle));
                    }
                }
            },
            |r| {
                acc.borrow_mut().stored(r, print_durable);
                if crash_on_store.get() {
                    tracing::warn!("scenario: crash after a dispense intent was stored");
                    std::process::abort();
                }
            },
        )
        .await;
    for t in scenario_task.into_iter().chain(household_task) {
        t.abort();
    }
    let stopped = stopped?;
    let (end_at, elapsed) = ended
        .get()
        .unwrap_or_else(|| (clock.now(), clock.monotonic()));
    // The run is over; an outage still going on ends so the uplink can deliver the record.
    network.send_if_modified(|up| !std::mem::replace(up, true));
    let delivery = stopped.deliver().await?;
    let mut summary = acc.into_inner().finish(end_at, elapsed, &handle);
    summary.commissioned = commissioned;
    summary.outbox_before_uplink = delivery.outbox_before_uplink;
    summary.uplink = delivery.uplink;
    Ok(summary)
}

fn status_line(r: &crate::events::FridgeRecord, handle: &SimHandle) -> String {
    let t = handle.world().thermals();
    let fmt = |v: Option<f64>| v.map_or("  --  ".to_string(), |v| format!("{v:6.2}"));
    format!(
        "{}  vial {} °C  air {} °C  compressor {:3}  door {:6}  mains {:3}  mode {:?}  (room {:.1} °C)",
        r.at.format("%Y-%m-%d %H:%M"),
        fmt(r.vial),
        fmt(r.air),
        if r.compressor_on { "on" } else { "off" },
        if r.door_open { "open" } else { "closed" },
        if r.mains { "on" } else { "off" },
        r.mode,
        t.ambient,
    )
}

/// Plays a scenario against the world, in simulated time.
/// What a scenario acts on.
struct Stage {
    handle: SimHandle,
    clock: Arc<SimClock>,
    dispenser: mpsc::Sender<DispenserCommand>,
    fridge: mpsc::Sender<FridgeCommand>,
    commands: mpsc::Sender<crate::controller::commands::Inbound>,
    network: tokio::sync::watch::Sender<bool>,
    crash_armed: Arc<std::sync::atomic::AtomicBool>,
}

async fn play(s: Scenario, stage: Stage) {
    let Stage {
        handle,
        clock,
        dispenser,
        fridge,
        commands,
        network,
        crash_armed,
    } = stage;
    let start = clock.monotonic();
    for (at, op) in s.ops {
        clock::sleep_until(&*clock, start + at).await;
        match op {
            Op::Dispense(slot, units) => {
                let _ = dispenser
                    .send(DispenserCommand::tell(Command::TestDispense {
                        slot,
                        units,
                    }))
                    .await;
            }
            Op::Rehome => {
                let _ = dispenser
                    .send(DispenserCommand::tell(Command::Rehome))
                    .await;
            }
            Op::ClockJump(by) => clock.jump(by),
            Op::Vital(reading) => {
                let reading = crate::dosing::engine::VitalReading {
                    at: clock.now(),
                    ..reading
                };
                let _ = dispenser
                    .send(DispenserCommand::tell(Command::Vital(reading)))
                    .await;
            }
            Op::TrustClock => {
                let _ = dispenser
                    .send(DispenserCommand::tell(Command::TrustClock {
                        actor: "sim:caregiver".into(),
                        comment: "scenario: the clock was checked".into(),
                    }))
                    .await;
            }
            Op::Crash(None) => {
                tracing::warn!("scenario: crash (process aborted)");
                std::process::abort();
            }
            Op::Crash(Some(crate::scenario::CrashPoint::Dispense)) => {
                crash_armed.store(true, std::sync::atomic::Ordering::SeqCst);
            }
            Op::Command(name, payload) => {
                let _ = commands
                    .send(crate::controller::commands::Inbound {
                        name,
                        // A scenario is a local source: its payload names the role.
                        role: None,
                        payload: payload.into_bytes(),
                    })
                    .await;
            }
            Op::Refill(slot, units, expiry, actor) => {
                handle.world().load_slot(slot, units);
                let _ = dispenser
                    .send(DispenserCommand::tell(Command::Refill {
                        slot,
                        added: units,
                        expiry,
                        actor,
                        note: "scenario refill".into(),
                    }))
                    .await;
            }
            Op::Broker(up) => {
                tracing::info!(
                    "scenario: broker link {}",
                    if up { "restored" } else { "lost" }
                );
                // Only real transitions, so the uplink can count every outage it did not watch.
                network.send_if_modified(|now| std::mem::replace(now, up) != up);
            }
            Op::AckAlarm(alarm, actor, comment) => {
                let _ = fridge
                    .send(FridgeCommand::AcknowledgeAlarm {
                        alarm,
                        actor,
                        comment,
                        reply: None,
                    })
                    .await;
            }
            op => {
                let mut w = handle.world();
                match op {
                    Op::Door(open) => w.set_door_open(open),
                    Op::Mains(on) => w.set_mains(on),
                    Op::Fault(p, f, d) => w.inject_probe_fault(p, f, d),
                    Op::ClearFault(p) => w.clear_probe_faults(p),
                    Op::Ambient(c) => w.set_ambient(c),
                    Op::Jam(j) => w.set_jammed(j),
                    Op::EmptySlot(s) => w.empty_slot(s),
                    Op::LooseUnit(s) => w.loosen(s),
                    Op::Machine(f, on) => w.set_machine_fault(f, on),
                    Op::LoadSlot(s, u) => w.load_slot(s, u),
                    Op::TrayPickup(d) => w.pick_up_cup(d),
                    Op::Button => w.press_button(),
                    Op::Dispense(..)
                    | Op::Rehome
                    | Op::ClockJump(_)
                    | Op::AckAlarm(..)
                    | Op::Vital(_)
                    | Op::TrustClock
                    | Op::Broker(_)
                    | Op::Refill(..)
                    | Op::Command(..)
                    | Op::Crash(_) => {}
                }
            }
        }
    }
}

struct Accumulator {
    board: String,
    scenario: Option<String>,
    seed: u64,
    start: DateTime<Utc>,
    record_period: Duration,
    range: (f64, f64),
    fridge: FridgeStats,
    probe_faults: BTreeMap<String, u64>,
    mode_changes: u64,
    dispenser: DispenserSummary,
    device_faults: Vec<String>,
    events: BTreeMap<String, u64>,
    truth: Option<ModelTruth>,
    probe_doubts: Vec<DoubtChange>,
    analysis: Analysis,
    acknowledgements: Vec<String>,
    commands_rejected: Vec<String>,
    records: Option<Vec<FridgeRecord>>,
    checkpoints: Vec<crate::store::checkpoint::Checkpoint>,
    keep_checkpoints: bool,
    durable_records: u64,
    dose_records: Vec<crate::dosing::engine::DoseRecord>,
    dose_notes: Vec<DoseNote>,
    patients: Vec<String>,
    zone: chrono_tz::Tz,
    patient_zones: BTreeMap<String, chrono_tz::Tz>,
    device_fault_log: Vec<(DateTime<Utc>, String)>,
    /// The last alert about each waiting dose (patient, medication, occurrence): why a dose
    /// closed held or missed, which its closing record does not repeat.
    last_alert: BTreeMap<(String, String, DateTime<Utc>), String>,
    /// The appliance's counts, mirrored from its events.
    inventory: crate::dosing::inventory::Inventory,
}

impl Accumulator {
    fn new(opts: &SimOptions, profile: &BoardProfile, seed: u64) -> Self {
        Self {
            board: profile.board.name.clone(),
            scenario: opts.scenario.as_ref().map(|s| s.name.clone()),
            seed,
            start: profile.sim.as_ref().map(|m| m.start).unwrap_or_default(),
            record_period: opts.coldchain.record_period,
            range: (opts.coldchain.range_min.0, opts.coldchain.range_max.0),
            fridge: FridgeStats::new(&opts.coldchain),
            probe_faults: BTreeMap::new(),
            mode_changes: 0,
            dispenser: DispenserSummary::default(),
            device_faults: Vec::new(),
            events: BTreeMap::new(),
            truth: None,
            probe_doubts: Vec::new(),
            analysis: Analysis::default(),
            acknowledgements: Vec::new(),
            commands_rejected: Vec::new(),
            records: opts.keep_records.then(Vec::new),
            checkpoints: Vec::new(),
            keep_checkpoints: opts.keep_checkpoints,
            durable_records: 0,
            dose_records: Vec::new(),
            dose_notes: Vec::new(),
            patients: opts.schedules.iter().map(|s| s.patient.clone()).collect(),
            zone: opts.schedules.first().map_or(chrono_tz::UTC, |s| s.tz),
            patient_zones: opts
                .schedules
                .iter()
                .map(|s| (s.patient.clone(), s.tz))
                .collect(),
            device_fault_log: Vec::new(),
            last_alert: BTreeMap::new(),
            inventory: Default::default(),
        }
    }

    fn stored(&mut self, r: crate::store::recorder::Recorded, print: bool) {
        self.durable_records += 1;
        if print {
            use std::io::Write as _;
            let mut out = std::io::stdout().lock();
            if let Some(seq) = r.seq {
                let _ = writeln!(out, "durable audit {seq}");
            }
            if let Some((from, to)) = r.readings {
                let _ = writeln!(out, "durable readings {from}-{to}");
            }
            let _ = out.flush();
        }
        if self.keep_checkpoints {
            self.checkpoints.extend(r.checkpoint);
        }
    }

    fn add(&mut self, ev: &Event, handle: &SimHandle) {
        let kind = serde_json::to_value(ev)
            .ok()
            .and_then(|v| v.get("kind").and_then(|k| k.as_str()).map(str::to_string))
            .unwrap_or_default();
        *self.events.entry(kind).or_default() += 1;
        match ev {
            Event::Reading(r) => {
                self.fridge.add(r, self.record_period);
                self.analysis.add_reading(r.control);
                if let Some(records) = self.records.as_mut() {
                    records.push(r.clone());
                }
                let t = handle.world().thermals();
                let truth = self.truth.get_or_insert(ModelTruth {
                    air_min: t.air,
                    air_max: t.air,
                    vial_min: t.vial,
                    vial_max: t.vial,
                    ..ModelTruth::default()
                });
                truth.air_min = truth.air_min.min(t.air);
                truth.air_max = truth.air_max.max(t.air);
                truth.vial_min = truth.vial_min.min(t.vial);
                truth.vial_max = truth.vial_max.max(t.vial);
                let minutes = self.record_period.as_secs_f64() / 60.0;
                if t.air < self.range.0 {
                    truth.product_minutes_below += minutes;
                } else if t.air > self.range.1 {
                    truth.product_minutes_above += minutes;
                }
            }
            Event::ProbeDoubt {
                at,
                doubt,
                evidence,
                ..
            } => self.probe_doubts.push(DoubtChange {
                at: *at,
                doubt: *doubt,
                evidence: *evidence,
            }),
            Event::ProbeFault { probe, fault, .. } => {
                let key = format!(
                    "{}:{}",
                    serde_json::to_value(probe)
                        .ok()
                        .and_then(|v| v.as_str().map(str::to_string))
                        .unwrap_or_default(),
                    serde_json::to_value(fault)
                        .ok()
                        .and_then(|v| v.as_str().map(str::to_string))
                        .unwrap_or_default()
                );
                *self.probe_faults.entry(key).or_default() += 1;
            }
            Event::ControlModeChanged { .. } => self.mode_changes += 1,
            Event::StrayDrop { slot, units, .. } => {
                self.inventory.take(*slot, *units);
                *self.dispenser.stray_drops.entry(*slot).or_default() += units;
            }
            Event::CarouselHomed { .. } => self.dispenser.homings += 1,
            Event::Dispensed {
                drops_seen,
                returned_home,
                report,
                ..
            } => {
                self.inventory.take(report.slot, *drops_seen);
                self.dispenser.dispenses += 1;
                self.dispenser.units_seen += drops_seen;
                if !returned_home {
                    self.dispenser.lost_position += 1;
                }
            }
            Event::TrayPickup { .. } => self.dispenser.tray_pickups += 1,
            Event::ButtonPressed { .. } => self.dispenser.button_presses += 1,
            Event::DeviceFault { at, device, detail } => {
                let fault = format!("{device}: {detail}");
                self.device_fault_log.push((*at, fault.clone()));
                self.device_faults.push(fault);
            }
            Event::ColdChain(e) => self.analysis.add_event(e),
            Event::AlarmAcknowledged {
                alarm,
                actor,
                comment,
                ..
            } => self
                .acknowledgements
                .push(format!("{}: {actor}: {comment}", alarm.code())),
            Event::CommandRejected {
                command, reason, ..
            } => self.commands_rejected.push(format!("{command}: {reason}")),
            Event::Dose {
                record,
                slot,
                patient,
                reason,
                detail,
                ..
            } => {
                self.inventory
                    .dose(*slot, record.occurrence, record.outcome, record.units);
                if record.outcome == crate::dosing::engine::Outcome::Dispensed {
                    self.dispenser.doses_released += 1;
                    self.dispenser.dose_units_released += record.units;
                }
                let why = record.occurrence.and_then(|o| {
                    self.last_alert
                        .get(&(patient.clone(), record.medication.clone(), o))
                });
                let detail = match (detail.is_empty(), why) {
                    (true, Some(why)) => why.clone(),
                    _ => detail.clone(),
                };
                self.dose_notes.push(DoseNote {
                    patient: patient.clone(),
                    record: record.clone(),
                    reason: reason.clone(),
                    detail,
                });
                let k = serde_json::to_value(record.outcome)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_default();
                *self.dispenser.doses.entry(k).or_default() += 1;
                self.dose_records.push(record.clone());
            }
            Event::DoseAlert {
                reason,
                patient,
                medication,
                occurrence,
                detail,
                ..
            } => {
                self.last_alert.insert(
                    (patient.clone(), medication.clone(), *occurrence),
                    format!("{reason}: {detail}"),
                );
                *self
                    .dispenser
                    .dose_alerts
                    .entry(reason.clone())
                    .or_default() += 1
            }
            Event::ClockTrust { .. } => self.dispenser.clock_trust_changes += 1,
            Event::Refill {
                slot,
                added,
                expiry,
                ..
            } => {
                self.dispenser.refills += 1;
                self.inventory.refill(*slot, *added, *expiry);
            }
            Event::StockAlert { reason, .. } => {
                *self
                    .dispenser
                    .stock_alerts
                    .entry(reason.clone())
                    .or_default() += 1
            }
            Event::StockAcknowledged { .. } => {}
            Event::ScheduleReplaced { .. } => self.dispenser.schedule_replacements += 1,
            Event::Started { .. }
            | Event::AuditResend { .. }
            | Event::ProbeRecovered { .. }
            | Event::Stopped { .. }
            | Event::Vital { .. }
            | Event::VitalAlert { .. }
            | Event::Adherence { .. }
            | Event::ReadingsSealed { .. }
            | Event::Integrity { .. }
            | Event::Barrier { .. } => {}
            Event::CommandResult {
                command,
                ok,
                detail,
                ..
            } => {
                if !ok {
                    self.commands_rejected.push(format!("{command}: {detail}"));
                }
            }
        }
    }

    fn finish(self, end: DateTime<Utc>, elapsed: Duration, handle: &SimHandle) -> SimSummary {
        let w = handle.world();
        let mut truth = self.truth.unwrap_or_default();
        truth.units_released = w.released_total();
        truth.stock = w.stock().to_vec();
        let start = self.start;
        use crate::board::sim::OutLine;
        let switched_on = |which: OutLine| -> Vec<DateTime<Utc>> {
            w.indicator_log()
                .iter()
                .filter(|(_, line, on)| *line == which && *on)
                .filter_map(|(t, _, _)| chrono::Duration::from_std(*t).ok().map(|d| start + d))
                .collect()
        };
        truth.buzzer_on_at = switched_on(OutLine::Buzzer);
        truth.led_on_at = switched_on(OutLine::Led);
        let mut dispenser = self.dispenser;
        dispenser.stock = self
            .inventory
            .slots()
            .iter()
            .map(|(slot, s)| (*slot, s.count))
            .collect();
        SimSummary {
            board: self.board,
            scenario: self.scenario,
            seed: self.seed,
            start: self.start,
            end,
            days: elapsed.as_secs_f64() / 86_400.0,
            fridge: self.fridge,
            probe_faults: self.probe_faults,
            mode_changes: self.mode_changes,
            dispenser,
            device_faults: self.device_faults,
            events: self.events,
            truth,
            probe_doubts: self.probe_doubts,
            coldchain: self.analysis.report(),
            acknowledgements: self.acknowledgements,
            commands_rejected: self.commands_rejected,
            records: self.records.unwrap_or_default(),
            checkpoints: self.checkpoints,
            durable_records: self.durable_records,
            dose_records: self.dose_records,
            adherence: crate::dosing::adherence::tally(
                self.dose_notes
                    .iter()
                    .map(|n| (n.patient.clone(), n.record.clone())),
            ),
            dose_notes: self.dose_notes,
            patients: self.patients,
            zone: self.zone,
            patient_zones: self.patient_zones,
            commissioned: false,
            range: self.range,
            device_fault_log: self.device_fault_log,
            outbox_before_uplink: None,
            uplink: None,
        }
    }
}
