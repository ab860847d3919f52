//! Simulation scenarios: TOML files that schedule events at simulated times.
//!
//! ```toml
//! name = "door left open"
//! [[event]]
//! at = "6h"            # from the start of the simulation (humantime: "1d 8h", "90m")
//! action = "door_open"
//! for = "1h"
//! ```
//!
//! Actions: `door_open` (for), `power_cut` (for), `probe_fault` (probe, fault, optional for, sigma
//! for `noisy`, by for `offset`), `probe_clear` (probe), `ambient` (celsius), `jam` (optional for),
//! `unjam`, `empty_slot` (slot), `load_slot` (slot, units), `dispense` (slot, units: a maintenance
//! test dispense), `rehome`, `tray_pickup` (optional for: how long the cup is away), `button_press`,
//! `clock_jump` (by: a signed duration such as "-3h"), `ack_alarm` (alarm code, actor, comment).
//! Any event repeats with `every` (a duration) and `times` (how many in all).
//!
//! A `[household]` table brings simulated people, one per schedule, who collect their doses and
//! take blood-pressure readings by a seeded habit (see [`crate::sim::household`]):
//!
//! ```toml
//! [household]
//! on_time = 0.8        # weights: collected within 15 min, later in the window, never
//! late = 0.15
//! forget = 0.05
//! skip_reading = 0.05  # share of monitor readings not taken
//! [household.patient.p-0311]
//! forget = 0.2         # one person's own habit (the rest of theirs keeps the defaults)
//! ```
//! Parsing is as strict as the board profiles': unknown keys and missing fields name the line.

use crate::board::sim::ProbeFault;
use crate::config::{line_of, parse_str, ConfigError, Findings, Validate};
use crate::devices::Probe;
use serde::Deserialize;
use std::path::Path;
use std::time::Duration;
use toml::Spanned;

/// Every action a scenario event can take.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ActionName {
    /// Open the door for a while.
    DoorOpen,
    /// Cut mains for a while.
    PowerCut,
    /// Inject a probe fault.
    ProbeFault,
    /// Clear a probe's faults.
    ProbeClear,
    /// Change the room temperature.
    Ambient,
    /// Jam the carousel.
    Jam,
    /// Free the carousel.
    Unjam,
    /// Empty a slot physically.
    EmptySlot,
    /// A unit in a slot comes loose: it falls the next time its slot passes over the chute,
    /// even when another slot is being dispensed.
    LooseUnit,
    /// A machinery fault (`fault`: relay_welded, relay_dead, beam_blocked, home_sensor_lost),
    /// for `for` or until the end.
    MachineFault,
    /// Load units into a slot.
    LoadSlot,
    /// Maintenance test dispense.
    Dispense,
    /// Ask the dispenser to find home again.
    Rehome,
    /// Lift the cup.
    TrayPickup,
    /// Press the "taken" button.
    ButtonPress,
    /// Jump the wall clock.
    ClockJump,
    /// Acknowledge a raised alarm.
    AckAlarm,
    /// A vital reading arrives (vital, value, optional quality, and patient when the cabinet
    /// doses more than one).
    Vital,
    /// A caregiver confirms the clock after a jump.
    TrustClock,
    /// The home network drops the broker connection for a while.
    BrokerOutage,
    /// A pharmacist loads units into a slot and records the refill (slot, units, optional
    /// expiry and actor).
    Refill,
    /// A command arrives as if on `cmd/<command>` (command, payload: the JSON text).
    Command,
    /// The process dies, as in a power cut: nothing is flushed or stopped cleanly. At once,
    /// or with `during = "dispense"` at the next dispense, the moment its intent is on disk and
    /// before the motor turns. Run it as its own process (`medbox sim`), then start again on
    /// the same database to see what survives.
    Crash,
}

/// Where a `crash` action strikes.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum CrashPoint {
    /// At the next dispense, between its durable intent and the motor.
    Dispense,
}

/// The fault names a scenario may inject.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FaultName {
    /// See [`ProbeFault::Disconnected`].
    Disconnected,
    /// See [`ProbeFault::Stuck`].
    Stuck,
    /// See [`ProbeFault::Noisy`].
    Noisy,
    /// See [`ProbeFault::Offset`].
    Offset,
    /// See [`ProbeFault::Drift`]; `by` is °C per hour.
    Drift,
    /// See [`ProbeFault::PowerOn85`].
    #[serde(rename = "power_on_85")]
    PowerOn85,
    /// See [`ProbeFault::FailedConversion`].
    FailedConversion,
    /// See [`ProbeFault::Crc`].
    Crc,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEvent {
    at: Spanned<String>,
    action: ActionName,
    #[serde(default, rename = "for", with = "humantime_serde")]
    duration: Option<Duration>,
    probe: Option<Probe>,
    fault: Option<FaultName>,
    /// Which machinery fault (`machine_fault`).
    #[serde(rename = "machine")]
    fault_name: Option<String>,
    sigma: Option<f64>,
    by: Option<String>,
    celsius: Option<f64>,
    slot: Option<u8>,
    units: Option<u32>,
    alarm: Option<String>,
    actor: Option<String>,
    comment: Option<String>,
    vital: Option<crate::dosing::schedule::Vital>,
    value: Option<f64>,
    quality: Option<crate::dosing::engine::Quality>,
    /// Whose reading (`vital`).
    patient: Option<String>,
    expiry: Option<chrono::NaiveDate>,
    command: Option<String>,
    payload: Option<String>,
    /// Where a `crash` strikes (default: at once).
    during: Option<CrashPoint>,
    /// Repeat the event this often…
    #[serde(default, with = "humantime_serde")]
    every: Option<Duration>,
    /// …this many times in all (default 1).
    times: Option<u32>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ScenarioFile {
    name: String,
    #[serde(default)]
    description: String,
    /// Simulated start instant (RFC 3339), instead of the profile's.
    #[serde(default)]
    start: Option<chrono::DateTime<chrono::Utc>>,
    /// Cabinet temperature at switch-on (°C), instead of the board model's: "started cold".
    #[serde(default)]
    initial: Option<Spanned<f64>>,
    /// The simulated people who collect doses and take readings; without it the scenario's
    /// own events are all that happens.
    #[serde(default)]
    household: Option<Spanned<crate::sim::household::HouseholdConfig>>,
    #[serde(default, rename = "event")]
    events: Vec<Spanned<RawEvent>>,
}

/// One primitive change to the simulated world at a simulated time.
#[derive(Clone, Debug, PartialEq)]
pub enum Op {
    /// Door open (true) or closed.
    Door(bool),
    /// Mains present (true) or cut.
    Mains(bool),
    /// Start a probe fault (for a duration, or until cleared).
    Fault(Probe, ProbeFault, Option<Duration>),
    /// Clear a probe's faults.
    ClearFault(Probe),
    /// Room temperature.
    Ambient(f64),
    /// Carousel jammed (true) or free.
    Jam(bool),
    /// Empty a slot.
    EmptySlot(u8),
    /// A unit in a slot comes loose.
    LooseUnit(u8),
    /// A machinery fault starts (true) or ends.
    Machine(crate::board::sim::world::MachineFault, bool),
    /// Load a slot.
    LoadSlot(u8, u32),
    /// Test dispense.
    Dispense(u8, u32),
    /// Re-home.
    Rehome,
    /// Lift the cup for a while.
    TrayPickup(Duration),
    /// Press the button.
    Button,
    /// Wall-clock jump.
    ClockJump(chrono::Duration),
    /// Acknowledge an alarm: which, who, why.
    AckAlarm(crate::coldchain::monitor::AlarmKind, String, String),
    /// A vital reading (its time is set when played).
    Vital(crate::dosing::engine::VitalReading),
    /// Trust the clock again.
    TrustClock,
    /// The link to the broker is up (true) or down.
    Broker(bool),
    /// Load a slot and record it: slot, units, expiry, who.
    Refill(u8, u32, Option<chrono::NaiveDate>, String),
    /// An inbound command: name, payload.
    Command(String, String),
    /// Abort the process (now, or at the next dispense).
    Crash(Option<CrashPoint>),
}

/// A parsed scenario: primitive operations sorted by time.
#[derive(Clone, Debug, PartialEq)]
pub struct Scenario {
    /// Its name.
    pub name: String,
    /// What it shows.
    pub description: String,
    /// Simulated start instant, instead of the profile's (e.g. the eve of a daylight-saving
    /// change).
    pub start: Option<chrono::DateTime<chrono::Utc>>,
    /// Cabinet (air and vial) temperature at switch-on, instead of the model's.
    pub initial: Option<f64>,
    /// The simulated household (None: nobody but the scenario acts).
    pub household: Option<crate::sim::household::HouseholdConfig>,
    /// Operations sorted by their offset from the start.
    pub ops: Vec<(Duration, Op)>,
}

fn need<T: Copy>(v: Option<T>, field: &str, action: &str) -> Result<T, (String, String)> {
    v.ok_or_else(|| (field.to_string(), format!("`{action}` needs `{field}`")))
}

fn parse_signed(s: &str) -> Result<chrono::Duration, String> {
    let (neg, body) = match s.trim().strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, s.trim().trim_start_matches('+')),
    };
    let d = humantime::parse_duration(body.trim()).map_err(|e| e.to_string())?;
    let d = chrono::Duration::from_std(d).map_err(|e| e.to_string())?;
    Ok(if neg { -d } else { d })
}

/// A finite number of degrees from `by`, which a scenario writes as a string.
fn degrees(by: Option<&str>, missing: &str) -> Result<f64, (String, String)> {
    let by = by.ok_or_else(|| ("by".to_string(), missing.to_string()))?;
    by.trim()
        .parse::<f64>()
        .ok()
        .filter(|v| v.is_finite() && v.abs() <= 100.0)
        .ok_or_else(|| {
            (
                "by".to_string(),
                format!("{by:?} is not a number of °C within ±100"),
            )
        })
}

/// Expands one event, with its repetitions, into timed primitive operations.
fn expand(e: &RawEvent) -> Result<Vec<(Duration, Op)>, (String, String)> {
    let at = humantime::parse_duration(e.at.get_ref())
        .map_err(|err| ("at".to_string(), format!("{:?}: {err}", e.at.get_ref())))?;
    let times = e.times.unwrap_or(1);
    let every = match (e.every, times) {
        (_, 0) => return Err(("times".into(), "must be at least 1".into())),
        (None, 1) => Duration::ZERO,
        (None, _) => return Err(("every".into(), "`times` needs `every`".into())),
        (Some(d), _) if d.is_zero() => return Err(("every".into(), "must be above zero".into())),
        (Some(d), _) => d,
    };
    let once = expand_once(e, Duration::ZERO)?;
    let mut out = Vec::with_capacity(once.len() * times as usize);
    for i in 0..times {
        let offset = at + every * i;
        out.extend(once.iter().map(|(t, op)| (*t + offset, op.clone())));
    }
    Ok(out)
}

/// Expands one occurrence of an event at `at`.
fn expand_once(e: &RawEvent, at: Duration) -> Result<Vec<(Duration, Op)>, (String, String)> {
    let name = format!("{:?}", e.action);
    let a = name.as_str();
    let dur = |d: Option<Duration>| need(d, "for", a);
    Ok(match e.action {
        ActionName::DoorOpen => {
            let d = dur(e.duration)?;
            vec![(at, Op::Door(true)), (at + d, Op::Door(false))]
        }
        ActionName::PowerCut => {
            let d = dur(e.duration)?;
            vec![(at, Op::Mains(false)), (at + d, Op::Mains(true))]
        }
        ActionName::ProbeFault => {
            let probe = need(e.probe, "probe", a)?;
            let fault = match need(e.fault, "fault", a)? {
                FaultName::Disconnected => ProbeFault::Disconnected,
                FaultName::Stuck => ProbeFault::Stuck,
                FaultName::Noisy => ProbeFault::Noisy {
                    sigma: need(e.sigma, "sigma", a)?,
                },
                FaultName::Offset => ProbeFault::Offset {
                    by: degrees(
                        e.by.as_deref(),
                        "`offset` needs `by` (°C, as a string such as \"2.5\")",
                    )?,
                },
                FaultName::Drift => ProbeFault::Drift {
                    per_hour: degrees(
                        e.by.as_deref(),
                        "`drift` needs `by` (°C per hour, as a string such as \"0.5\")",
                    )?,
                },
                FaultName::PowerOn85 | FaultName::FailedConversion | FaultName::Crc
                    if probe == Probe::Vial =>
                {
                    return Err((
                        "fault".into(),
                        "this signature belongs to the DS18B20: use probe = \"air\"".into(),
                    ))
                }
                FaultName::PowerOn85 => ProbeFault::PowerOn85,
                FaultName::FailedConversion => ProbeFault::FailedConversion,
                FaultName::Crc => ProbeFault::Crc,
            };
            vec![(at, Op::Fault(probe, fault, e.duration))]
        }
        ActionName::ProbeClear => vec![(at, Op::ClearFault(need(e.probe, "probe", a)?))],
        ActionName::Ambient => {
            let c = need(e.celsius, "celsius", a)?;
            if !(-20.0..=50.0).contains(&c) {
                return Err((
                    "celsius".into(),
                    "room temperature must be -20–50 °C".into(),
                ));
            }
            vec![(at, Op::Ambient(c))]
        }
        ActionName::Jam => match e.duration {
            Some(d) => vec![(at, Op::Jam(true)), (at + d, Op::Jam(false))],
            None => vec![(at, Op::Jam(true))],
        },
        ActionName::Unjam => vec![(at, Op::Jam(false))],
        ActionName::EmptySlot => vec![(at, Op::EmptySlot(need(e.slot, "slot", a)?))],
        ActionName::LooseUnit => vec![(at, Op::LooseUnit(need(e.slot, "slot", a)?))],
        ActionName::MachineFault => {
            let name = e.fault_name.as_deref().ok_or_else(|| {
                (
                    "machine".to_string(),
                    "`machine_fault` needs `machine` (relay_welded, relay_dead, beam_blocked, home_sensor_lost)".to_string(),
                )
            })?;
            let fault: crate::board::sim::world::MachineFault =
                serde::Deserialize::deserialize(serde::de::value::StrDeserializer::<
                    serde::de::value::Error,
                >::new(name))
                .map_err(|_| {
                    (
                        "machine".to_string(),
                        format!("{name:?} is not relay_welded, relay_dead, beam_blocked or home_sensor_lost"),
                    )
                })?;
            let mut ops = vec![(at, Op::Machine(fault, true))];
            if let Some(d) = e.duration {
                ops.push((at + d, Op::Machine(fault, false)));
            }
            ops
        }
        ActionName::LoadSlot => vec![(
            at,
            Op::LoadSlot(need(e.slot, "slot", a)?, need(e.units, "units", a)?),
        )],
        ActionName::Dispense => vec![(
            at,
            Op::Dispense(need(e.slot, "slot", a)?, need(e.units, "units", a)?),
        )],
        ActionName::Rehome => vec![(at, Op::Rehome)],
        ActionName::TrayPickup => vec![(
            at,
            Op::TrayPickup(e.duration.unwrap_or(Duration::from_secs(5))),
        )],
        ActionName::ButtonPress => vec![(at, Op::Button)],
        ActionName::ClockJump => {
            let by =
                e.by.as_deref()
                    .ok_or_else(|| ("by".to_string(), "`clock_jump` needs `by`".to_string()))?;
            vec![(
                at,
                Op::ClockJump(parse_signed(by).map_err(|m| ("by".to_string(), m))?),
            )]
        }
        ActionName::Vital => {
            let vital = need(e.vital, "vital", a)?;
            let value = need(e.value, "value", a)?;
            if !value.is_finite() {
                return Err(("value".into(), "must be a number".into()));
            }
            vec![(
                at,
                Op::Vital(crate::dosing::engine::VitalReading {
                    source: "scenario".into(),
                    vital,
                    value,
                    at: chrono::DateTime::<chrono::Utc>::MIN_UTC,
                    quality: e.quality.unwrap_or(crate::dosing::engine::Quality::Good),
                    patient: e.patient.clone(),
                }),
            )]
        }
        ActionName::TrustClock => vec![(at, Op::TrustClock)],
        ActionName::Crash => vec![(at, Op::Crash(e.during))],
        ActionName::Command => {
            let name = e.command.clone().ok_or_else(|| {
                (
                    "command".to_string(),
                    "`command` needs `command`".to_string(),
                )
            })?;
            let payload = e.payload.clone().ok_or_else(|| {
                (
                    "payload".to_string(),
                    "`command` needs `payload`".to_string(),
                )
            })?;
            vec![(at, Op::Command(name, payload))]
        }
        ActionName::Refill => vec![(
            at,
            Op::Refill(
                need(e.slot, "slot", a)?,
                need(e.units, "units", a)?,
                e.expiry,
                e.actor.clone().unwrap_or_else(|| "sim:pharmacist".into()),
            ),
        )],
        ActionName::BrokerOutage => {
            let d = dur(e.duration)?;
            vec![(at, Op::Broker(false)), (at + d, Op::Broker(true))]
        }
        ActionName::AckAlarm => {
            let code = e
                .alarm
                .as_deref()
                .ok_or_else(|| ("alarm".to_string(), "`ack_alarm` needs `alarm`".to_string()))?;
            let alarm = crate::coldchain::monitor::AlarmKind::from_code(code).ok_or_else(|| {
                (
                    "alarm".to_string(),
                    format!("{code:?} is not an alarm code (FREEZE, HEAT, EXCURSION, DOOR_OPEN, NO_VALID_PROBE, MAINS_LOST, POWER_LOST_LONG, PROBE_DISAGREEMENT, COMPRESSOR_TRIP, COOLING_FAILED, COMPRESSOR_STUCK_ON)"),
                )
            })?;
            let actor = e.actor.clone().unwrap_or_default();
            let comment = e.comment.clone().unwrap_or_default();
            vec![(at, Op::AckAlarm(alarm, actor, comment))]
        }
    })
}

impl Validate for ScenarioFile {
    fn validate(&self, src: &str, out: &mut Findings) {
        if let Some(t) = &self.initial {
            if !t.get_ref().is_finite() || !(-20.0..=50.0).contains(t.get_ref()) {
                out.at(
                    line_of(src, t.span().start),
                    "initial".to_string(),
                    "the cabinet's starting temperature must be -20–50 °C".to_string(),
                );
            }
        }
        if let Some(h) = &self.household {
            if let Some(problem) = h.get_ref().problem() {
                out.at(line_of(src, h.span().start), "household", problem);
            }
        }
        for (i, e) in self.events.iter().enumerate() {
            if let Err((field, msg)) = expand(e.get_ref()) {
                out.at(
                    line_of(src, e.span().start),
                    format!("event[{i}].{field}"),
                    msg,
                );
            }
        }
    }
}

impl Scenario {
    /// Parses scenario text (named `file` in errors).
    pub fn parse(src: &str, file: &Path) -> Result<Self, Vec<ConfigError>> {
        let f: ScenarioFile = parse_str(src, file)?;
        let mut ops: Vec<(Duration, Op)> = f
            .events
            .iter()
            .filter_map(|e| expand(e.get_ref()).ok())
            .flatten()
            .collect();
        ops.sort_by_key(|(at, _)| *at);
        Ok(Self {
            name: f.name,
            description: f.description,
            start: f.start,
            initial: f.initial.map(|t| *t.get_ref()),
            household: f.household.map(Spanned::into_inner),
            ops,
        })
    }

    /// Reads and parses a scenario file.
    pub fn load(file: &Path) -> Result<Self, Vec<ConfigError>> {
        let src = crate::config::read_source(file)?;
        Self::parse(&src, file)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(src: &str) -> Result<Scenario, Vec<ConfigError>> {
        Scenario::parse(src, Path::new("s.toml"))
    }

    #[test]
    fn events_expand_into_sorted_primitive_operations() {
        let s = parse(
            r#"
name = "t"
[[event]]
at = "2h"
action = "door_open"
for = "30m"
[[event]]
at = "1h"
action = "clock_jump"
by = "-3h"
[[event]]
at = "3h"
action = "broker_outage"
for = "2d"
"#,
        )
        .unwrap();
        let h = |n: u64| Duration::from_secs(3600 * n);
        assert_eq!(
            s.ops,
            vec![
                (h(1), Op::ClockJump(chrono::Duration::hours(-3))),
                (h(2), Op::Door(true)),
                (h(2) + Duration::from_secs(1800), Op::Door(false)),
                (h(3), Op::Broker(false)),
                (h(51), Op::Broker(true)),
            ]
        );
    }

    #[test]
    fn missing_field_names_event_line_and_field() {
        let errs =
            parse("name = \"t\"\n\n[[event]]\nat = \"1h\"\naction = \"door_open\"\n").unwrap_err();
        let text = errs[0].to_string();
        assert!(text.starts_with("s.toml:3: event[0].for:"), "{text}");
    }

    #[test]
    fn unknown_action_and_unknown_key_are_rejected() {
        let e = parse("name = \"t\"\n[[event]]\nat = \"1h\"\naction = \"explode\"\n").unwrap_err();
        assert!(e[0].to_string().contains("explode"), "{}", e[0]);
        let e = parse("name = \"t\"\n[[event]]\nat = \"1h\"\naction = \"unjam\"\ncolour = 1\n")
            .unwrap_err();
        assert!(e[0].to_string().contains("colour"), "{}", e[0]);
    }

    #[test]
    fn ds18b20_signatures_cannot_be_injected_into_the_tmp117() {
        let e = parse("name = \"t\"\n[[event]]\nat = \"1h\"\naction = \"probe_fault\"\nprobe = \"vial\"\nfault = \"power_on_85\"\n").unwrap_err();
        assert!(e[0].to_string().contains("DS18B20"), "{}", e[0]);
    }
}
