//! What the appliance reports: one enum of events, produced by the device tasks and consumed by
//! the recorder (and, as the store and uplink land, by them).

use crate::coldchain::arbiter::{Doubt, Evidence};
use crate::coldchain::{ControlMode, ProbeFaultKind};
use crate::devices::DropReport;
use chrono::{DateTime, Utc};
use serde::Serialize;
use std::time::Duration;

pub use crate::devices::Probe;

/// One fridge record, taken every `record_period`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct FridgeRecord {
    /// Wall-clock time of the reading.
    pub at: DateTime<Utc>,
    /// Monotonic time of the reading.
    #[serde(skip)]
    pub mono: Duration,
    /// Validated buffered (vial) temperature, if valid.
    pub vial: Option<f64>,
    /// Validated air temperature, if valid.
    pub air: Option<f64>,
    /// The best estimate of the product's temperature: the vial, or the air probe's buffered
    /// equivalent when the vial is missing or suspect; None when unknown or undecided.
    pub control: Option<f64>,
    /// Set while the two probes disagree: this reading is uncertain.
    pub doubt: Option<Doubt>,
    /// Compressor relay state after this period's decision.
    pub compressor_on: bool,
    /// Compressor starts since the controller started.
    pub compressor_starts: u64,
    /// Door open (debounced).
    pub door_open: bool,
    /// Mains present (debounced).
    pub mains: bool,
    /// How the compressor was decided.
    pub mode: ControlMode,
}

/// A durability barrier: whoever makes events durable signals it once every earlier event is
/// on disk, so the dispenser can write its intent before it moves the motor.
#[derive(Clone, Debug, Default)]
pub struct Durable(pub std::sync::Arc<tokio::sync::Notify>);

impl PartialEq for Durable {
    fn eq(&self, other: &Self) -> bool {
        std::sync::Arc::ptr_eq(&self.0, &other.0)
    }
}

/// Something the appliance reports.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Event {
    /// The controller started.
    Started {
        /// When.
        at: DateTime<Utc>,
    },
    /// A periodic fridge record.
    Reading(FridgeRecord),
    /// A probe started giving rejected readings (one event per episode).
    ProbeFault {
        /// When.
        at: DateTime<Utc>,
        /// Which probe.
        probe: Probe,
        /// Why its readings are rejected.
        fault: ProbeFaultKind,
        /// The rejected value, if there was one.
        raw: Option<f64>,
    },
    /// A faulty probe gives valid readings again.
    ProbeRecovered {
        /// When.
        at: DateTime<Utc>,
        /// Which probe.
        probe: Probe,
    },
    /// What is known about a disagreement between the probes changed (began, a suspect was
    /// found, or it ended: `doubt` None).
    ProbeDoubt {
        /// When.
        at: DateTime<Utc>,
        /// The doubt now.
        doubt: Option<Doubt>,
        /// Why the suspect is suspected.
        evidence: Option<Evidence>,
        /// The readings at the time.
        vial: Option<f64>,
        /// The air probe's reading at the time.
        air: Option<f64>,
        /// The duty cycle learned while the probes agreed.
        learned_duty: f64,
    },
    /// The thermostat changed mode (fail-safe entered or left, power wait).
    ControlModeChanged {
        /// When.
        at: DateTime<Utc>,
        /// The new mode.
        mode: ControlMode,
    },
    /// The carousel was homed at start-up or after a lost position.
    CarouselHomed {
        /// When.
        at: DateTime<Utc>,
        /// Steps taken to find home.
        steps: u32,
    },
    /// A dispense ran; the report says what the sensors saw.
    Dispensed {
        /// When.
        at: DateTime<Utc>,
        /// What the mechanism reported.
        #[serde(skip)]
        report: DropReport,
        /// Units seen falling.
        drops_seen: u32,
        /// Whether the carousel found home afterwards.
        returned_home: bool,
    },
    /// A unit fell from `slot` while the carousel was only positioning (dispensing from
    /// `dispensing`): it is in the cup beside the dose and may be another medication.
    StrayDrop {
        /// When.
        at: DateTime<Utc>,
        /// The slot it fell from.
        slot: u8,
        /// How many fell.
        units: u32,
        /// The slot being dispensed.
        dispensing: u8,
        /// What to do, for the person who reads the alert.
        detail: String,
    },
    /// A device failed (line error, carousel error).
    DeviceFault {
        /// When.
        at: DateTime<Utc>,
        /// Which device, by profile key.
        device: String,
        /// What went wrong.
        detail: String,
    },
    /// The cup was lifted from the tray.
    TrayPickup {
        /// When.
        at: DateTime<Utc>,
    },
    /// The "taken" button was pressed.
    ButtonPressed {
        /// When.
        at: DateTime<Utc>,
    },
    /// The cold-chain monitor reported an excursion, an alarm or a day's record.
    ColdChain(crate::coldchain::monitor::MonitorEvent),
    /// Someone acknowledged an alarm.
    AlarmAcknowledged {
        /// When.
        at: DateTime<Utc>,
        /// Which alarm.
        alarm: crate::coldchain::monitor::AlarmKind,
        /// Who (a person's id).
        actor: String,
        /// Why, in their words.
        comment: String,
    },
    /// A command was refused; nothing changed.
    CommandRejected {
        /// When.
        at: DateTime<Utc>,
        /// The command's name.
        command: String,
        /// Why.
        reason: String,
    },
    /// A dose outcome (dispensed, taken, missed, held, failed, uncertain, skipped).
    Dose {
        /// When.
        at: DateTime<Utc>,
        /// Patient pseudonym.
        patient: String,
        /// Medication (also inside `record`, here for filtering).
        medication: String,
        /// Carousel slot.
        slot: u8,
        /// What happened.
        record: crate::dosing::engine::DoseRecord,
        /// The reason code for a held, missed or refused dose.
        reason: Option<String>,
        /// Details for people (units seen falling, the hold's reading).
        detail: String,
        /// The person whose act this is (skip, reconcile, an as-needed request or override);
        /// None for the dispenser's own decisions.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        actor: Option<String>,
    },
    /// A dose waits on a person (a vital reading, a limit): the caregiver is alerted once.
    DoseAlert {
        /// When.
        at: DateTime<Utc>,
        /// Patient pseudonym.
        patient: String,
        /// Medication.
        medication: String,
        /// The occurrence.
        occurrence: DateTime<Utc>,
        /// Reason code.
        reason: String,
        /// Details.
        detail: String,
        /// For a dose released and waiting in the cup: its record as released, so what is
        /// said about it upstream (a FHIR status) names the same dose.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        released: Option<crate::dosing::engine::DoseRecord>,
    },
    /// A vital reading arrived.
    Vital {
        /// When it was received.
        at: DateTime<Utc>,
        /// The reading.
        reading: crate::dosing::engine::VitalReading,
    },
    /// The store sealed a run of fridge readings into the audit chain (recorder-made, see
    /// `store::readings`).
    ReadingsSealed {
        /// Time of the last reading covered.
        at: DateTime<Utc>,
        /// Range, count and digest.
        #[serde(flatten)]
        seal: crate::store::readings::Seal,
    },
    /// What became of the doses of a period, per patient and medication.
    Adherence {
        /// When.
        at: DateTime<Utc>,
        /// Start of the period.
        from: DateTime<Utc>,
        /// End of the period.
        to: DateTime<Utc>,
        /// Why it was produced: `daily` or `requested by <actor>`.
        trigger: String,
        /// The counts.
        tallies: Vec<crate::dosing::adherence::Tally>,
    },
    /// A vital reading is past its alert band: the caregiver is told.
    VitalAlert {
        /// When.
        at: DateTime<Utc>,
        /// The reading.
        reading: crate::dosing::engine::VitalReading,
        /// `LOW` or `HIGH`.
        band: String,
    },
    /// The wall clock became untrusted (jumped) or trusted again; the dispenser locks meanwhile.
    ClockTrust {
        /// When (wall clock, as read).
        at: DateTime<Utc>,
        /// Whether it is trusted now.
        trusted: bool,
        /// Wall clock minus monotonic clock, against the start, in seconds (at start-up: wall
        /// clock minus the last record's time, negative when it is behind).
        drift_s: i64,
        /// The person who confirmed the clock (None: the appliance decided).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        actor: Option<String>,
        /// What they said about it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        comment: Option<String>,
        /// The dispenser's elapsed timeline at this instant (see `dosing::engine::Now`), so a
        /// restart can resume it from a consistent pair of clocks.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        elapsed: Option<DateTime<Utc>>,
    },
    /// Someone asked for audit rows again (an archive that lost some on the way): they are
    /// queued as they were first sent, under their own message ids, so whoever already has
    /// them drops the repeats.
    AuditResend {
        /// When.
        at: DateTime<Utc>,
        /// Who asked.
        actor: String,
        /// The first sequence number asked for.
        from: i64,
        /// The last one (inclusive).
        to: i64,
    },
    /// The answer to a command from outside (published on `cmd/<role>/<name>/result`).
    CommandResult {
        /// When.
        at: DateTime<Utc>,
        /// The command's name.
        command: String,
        /// The role of the topic it came on (`cmd/<role>/<name>`), as received: its answer goes
        /// to `cmd/<role>/<name>/result`. None for a local source.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        role: Option<String>,
        /// The command's id (None when it could not be read).
        id: Option<String>,
        /// Who sent it, as they said.
        actor: Option<String>,
        /// Done (true) or refused (false).
        ok: bool,
        /// What was done, or why not (a reason code first).
        detail: String,
        /// True when this id was seen before: answered again, not executed again.
        duplicate: bool,
        /// SHA-256 of what the command asked (name, actor, role, args): an id seen again with
        /// another digest is a reused id, refused.
        #[serde(skip_serializing_if = "Option::is_none")]
        digest: Option<String>,
    },
    /// Signal `token` once every earlier event is durable (not itself recorded).
    Barrier {
        /// What to signal.
        #[serde(skip)]
        token: Durable,
    },
    /// Units were loaded into a carousel slot.
    Refill {
        /// When.
        at: DateTime<Utc>,
        /// Carousel slot.
        slot: u8,
        /// Units added.
        added: u32,
        /// Units in the slot afterwards.
        count: u32,
        /// Expiry date of the loaded lot.
        expiry: Option<chrono::NaiveDate>,
        /// Who loaded it (a person's id).
        actor: String,
        /// Lot number or a remark.
        note: String,
    },
    /// A slot needs someone: low stock or expiry (repeated daily until acknowledged).
    StockAlert {
        /// When.
        at: DateTime<Utc>,
        /// Carousel slot.
        slot: u8,
        /// Patient pseudonym of the medication in it.
        patient: String,
        /// Medication in it.
        medication: String,
        /// Units left.
        count: u32,
        /// Days of scheduled doses left.
        days_left: Option<f64>,
        /// `LOW_STOCK`, `EXPIRES_SOON` or `EXPIRED`.
        reason: String,
    },
    /// Someone acknowledged a slot's stock alerts (they stop repeating until a refill).
    StockAcknowledged {
        /// When.
        at: DateTime<Utc>,
        /// Carousel slot.
        slot: u8,
        /// Who.
        actor: String,
        /// Why, in their words.
        comment: String,
    },
    /// A patient's schedule was replaced by command (validated, and confirmed when it had to be).
    ScheduleReplaced {
        /// When.
        at: DateTime<Utc>,
        /// Patient pseudonym.
        patient: String,
        /// Version it replaced (None: a new patient).
        old: Option<String>,
        /// Its version.
        new: String,
        /// Who sent it.
        actor: String,
        /// Who asked first, when a second person had to confirm.
        requested_by: Option<String>,
        /// The schedule text, so it is used again after a restart and auditable as written.
        source: String,
    },
    /// The audit chain was found broken at start-up (`acknowledged` false), or a pharmacist
    /// acknowledged that break (true). Dispensing waits for the acknowledgement; the fridge runs.
    Integrity {
        /// When.
        at: DateTime<Utc>,
        /// The first row that does not verify.
        seq: i64,
        /// What kind of break, for the pharmacist.
        detail: String,
        /// Whether a pharmacist has acknowledged it.
        acknowledged: bool,
        /// Who acknowledged it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        actor: Option<String>,
        /// What they said.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        comment: Option<String>,
    },
    /// The controller stopped with every actuator in its safe state.
    Stopped {
        /// When.
        at: DateTime<Utc>,
    },
}
