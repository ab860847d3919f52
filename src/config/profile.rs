//! Board profiles: every pin, bus and address of one build of the appliance, each actuator's safe
//! state and maximum on-time, and (for the simulated board) the parameters of its physical model.

use super::{line_of, Findings, Validate};
use crate::units::Celsius;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;
use toml::Spanned;

/// Which backend builds the devices.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BoardKind {
    /// The physical model of `[sim]`, always compiled.
    Sim,
    /// A Raspberry Pi through rppal (cargo feature `rpi`).
    Rpi,
}

/// Electrical level at which a line is "active".
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    /// Active when the line is high.
    #[default]
    High,
    /// Active when the line is low (typical with a pull-up and a switch to ground).
    Low,
}

/// Internal pull resistor for an input.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Pull {
    /// Floating (an external resistor is fitted).
    #[default]
    None,
    /// Pull-up.
    Up,
    /// Pull-down.
    Down,
}

/// The state an actuator is put in at start, shutdown, drop and signal.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum SafeState {
    /// Inactive (de-energised). The only sensible choice for every actuator medbox has today.
    #[default]
    Off,
    /// Active.
    On,
}

/// `[board]`: what this profile describes.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BoardSection {
    /// Which backend builds the devices.
    pub kind: BoardKind,
    /// A human name for logs.
    pub name: String,
}

/// A digital output (buzzer, LED).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputSpec {
    /// BCM GPIO number.
    pub pin: Spanned<u8>,
    /// Level that switches the load on.
    #[serde(default)]
    pub active: Level,
    /// State at start, shutdown and drop.
    #[serde(default)]
    pub safe: SafeState,
    /// Longest time the output may stay on before the driver turns it off by itself.
    #[serde(default, with = "humantime_serde")]
    pub max_on: Option<Duration>,
}

/// A relay driving a compressor: an output with minimum on and off times.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RelaySpec {
    /// BCM GPIO number.
    pub pin: Spanned<u8>,
    /// Level that closes the relay.
    #[serde(default)]
    pub active: Level,
    /// State at start, shutdown and drop.
    #[serde(default)]
    pub safe: SafeState,
    /// Shortest run once started (compressor oil return).
    #[serde(with = "humantime_serde")]
    pub min_on: Duration,
    /// Shortest rest once stopped (pressure equalisation; restarting sooner stalls the motor).
    #[serde(with = "humantime_serde")]
    pub min_off: Duration,
    /// Longest continuous run; the relay opens by itself after it whatever the controller says.
    #[serde(with = "humantime_serde")]
    pub max_on: Duration,
}

/// A digital input (switch, sensor).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputSpec {
    /// BCM GPIO number.
    pub pin: Spanned<u8>,
    /// Level that means "active" (door open, beam broken, cup present, button pressed, power good).
    #[serde(default)]
    pub active: Level,
    /// Internal pull resistor.
    #[serde(default)]
    pub pull: Pull,
    /// How long a new level must hold before it is believed (default 20 ms). Only for lines
    /// read as switches; the carousel's home sensor and the chute beam are read raw on every
    /// motor step, and a `debounce` there is refused rather than silently ignored.
    #[serde(default, with = "humantime_serde")]
    pub debounce: Option<Duration>,
}

impl InputSpec {
    /// The debounce time to apply.
    pub fn debounce(&self) -> Duration {
        self.debounce.unwrap_or(Duration::from_millis(20))
    }
}

/// The TMP117 in the glycol-buffered vial.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct I2cProbe {
    /// Linux I²C bus number (`/dev/i2c-N`).
    pub bus: u8,
    /// 7-bit address (TMP117: 0x48–0x4B by the ADD0 strap).
    pub address: Spanned<u8>,
}

/// The DS18B20 in the air, read through the kernel's w1 sysfs files.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct W1Probe {
    /// 1-Wire id, family 28 (`28-0123456789ab`).
    pub id: Spanned<String>,
    /// Directory of w1 devices.
    #[serde(default = "default_w1_dir")]
    pub dir: PathBuf,
}

fn default_w1_dir() -> PathBuf {
    PathBuf::from("/sys/bus/w1/devices")
}

/// `[fridge]`: probes, compressor, door and mains sensing.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FridgeWiring {
    /// Buffered probe (TMP117 over I²C).
    pub vial_probe: I2cProbe,
    /// Air probe (DS18B20 over 1-Wire).
    pub air_probe: W1Probe,
    /// Compressor relay.
    pub compressor: RelaySpec,
    /// Door reed switch; active means open.
    pub door: InputSpec,
    /// UPS "power good"; active means mains present.
    pub power_good: InputSpec,
}

/// How the carousel stepper is driven.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub enum MotorWiring {
    /// 28BYJ-48 through a ULN2003: four coil lines, half-stepped.
    Uln2003 {
        /// IN1..IN4.
        coils: [Spanned<u8>; 4],
    },
    /// A step/dir driver (A4988, DRV8825).
    StepDir {
        /// STEP line (one step per rising edge).
        step: Spanned<u8>,
        /// DIR line (high: forward).
        dir: Spanned<u8>,
        /// Optional active-low ENABLE line.
        #[serde(default)]
        enable: Option<Spanned<u8>>,
    },
}

/// `[carousel]`: the dispenser's rotating magazine.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CarouselWiring {
    /// Motor driver and its lines.
    pub motor: MotorWiring,
    /// Home sensor; active at the home position.
    pub home: InputSpec,
    /// Motor steps per carousel revolution.
    pub steps_per_rev: u32,
    /// Number of medication slots, evenly spaced.
    pub slots: u8,
    /// Time between steps (the motor stalls if stepped faster).
    #[serde(with = "humantime_serde")]
    pub step_period: Duration,
    /// Length of the backward stroke that releases one unit over the chute.
    pub pick_steps: u32,
    /// How long to watch the break-beam after a stroke for the pill to fall.
    #[serde(with = "humantime_serde")]
    pub drop_timeout: Duration,
    /// Most units one slot holds: a refill that would go past it is refused (a count that
    /// cannot be true would defeat the empty-slot and stock alerts).
    #[serde(default = "default_slot_capacity")]
    pub slot_capacity: u32,
}

fn default_slot_capacity() -> u32 {
    250
}

/// `[dispenser]`: chute, tray and reminders.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DispenserWiring {
    /// IR break-beam across the chute; active means broken.
    pub beam: InputSpec,
    /// Cup sensor under the tray; active means the cup is in place.
    pub tray: InputSpec,
    /// "Taken" button; active means pressed.
    pub button: InputSpec,
    /// Reminder buzzer.
    pub buzzer: OutputSpec,
    /// Reminder LED.
    pub led: OutputSpec,
}

/// `[sim]`: the physical model behind the simulated board.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimModel {
    /// Seed of every random draw (sensor noise), so a run can be repeated exactly.
    pub seed: u64,
    /// Wall-clock time at which the simulation starts (RFC 3339).
    pub start: chrono::DateTime<chrono::Utc>,
    /// Room temperature around the cabinet.
    pub ambient: Celsius,
    /// Temperature of the cabinet and its contents at the start.
    pub initial: Celsius,
    /// Heat capacity of the air node: air, shelves, liner and stock (J/K).
    pub air_heat_capacity: f64,
    /// Heat leak through the walls per kelvin of difference to the room (W/K).
    pub wall_conductance: f64,
    /// Extra exchange with the room while the door is open (W/K).
    pub door_conductance: f64,
    /// Heat the running compressor removes from the air node (W), when mains is present.
    pub compressor_cooling: f64,
    /// Heat capacity of the glycol vial around the buffered probe (J/K).
    pub vial_heat_capacity: f64,
    /// Conductance between air and vial (W/K); with the capacity it sets the buffer's lag.
    pub vial_conductance: f64,
    /// Standard deviation of the TMP117's noise (°C).
    pub tmp117_noise: f64,
    /// Standard deviation of the DS18B20's noise before its 1/16 °C quantisation (°C).
    pub ds18b20_noise: f64,
    /// Units loaded in each slot at the start, slot 0 first.
    pub slot_stock: Vec<u32>,
    /// Time a released pill takes to reach the break-beam.
    #[serde(with = "humantime_serde")]
    pub pill_fall_time: Duration,
    /// How long a falling pill breaks the beam.
    #[serde(with = "humantime_serde")]
    pub beam_pulse: Duration,
    /// Width of the home sensor's active zone, in steps.
    pub home_width_steps: u32,
}

/// One board profile (`hw/*.toml`).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BoardProfile {
    /// What this profile describes.
    pub board: BoardSection,
    /// Fridge wiring.
    pub fridge: FridgeWiring,
    /// Carousel wiring.
    pub carousel: CarouselWiring,
    /// Chute, tray and reminders.
    pub dispenser: DispenserWiring,
    /// Physical model, required on (and only on) the simulated board.
    #[serde(default)]
    pub sim: Option<SimModel>,
}

impl BoardProfile {
    /// Parses the shipped simulated profile (a build-time constant, checked by a test).
    pub fn default_sim() -> Result<Self, Vec<super::ConfigError>> {
        super::parse_str(
            super::DEFAULT_SIM_PROFILE,
            std::path::Path::new("hw/sim.toml"),
        )
    }

    /// Loads and checks a profile file.
    pub fn load(path: &std::path::Path) -> Result<Self, Vec<super::ConfigError>> {
        super::load_file(path)
    }

    /// Every GPIO line the profile uses, with its dotted key, in file order.
    pub fn pins(&self) -> Vec<(String, &Spanned<u8>)> {
        let f = &self.fridge;
        let d = &self.dispenser;
        let mut pins = vec![
            ("fridge.compressor.pin".to_string(), &f.compressor.pin),
            ("fridge.door.pin".to_string(), &f.door.pin),
            ("fridge.power_good.pin".to_string(), &f.power_good.pin),
        ];
        match &self.carousel.motor {
            MotorWiring::Uln2003 { coils } => {
                for (i, c) in coils.iter().enumerate() {
                    pins.push((format!("carousel.motor.uln2003.coils[{i}]"), c));
                }
            }
            MotorWiring::StepDir { step, dir, enable } => {
                pins.push(("carousel.motor.step_dir.step".into(), step));
                pins.push(("carousel.motor.step_dir.dir".into(), dir));
                if let Some(e) = enable {
                    pins.push(("carousel.motor.step_dir.enable".into(), e));
                }
            }
        }
        pins.push(("carousel.home.pin".into(), &self.carousel.home.pin));
        pins.push(("dispenser.beam.pin".into(), &d.beam.pin));
        pins.push(("dispenser.tray.pin".into(), &d.tray.pin));
        pins.push(("dispenser.button.pin".into(), &d.button.pin));
        pins.push(("dispenser.buzzer.pin".into(), &d.buzzer.pin));
        pins.push(("dispenser.led.pin".into(), &d.led.pin));
        pins
    }
}

/// BCM lines 0–27 reach the 40-pin header; 2/3 are I²C-1 and 4 is the default 1-Wire line.
const MAX_BCM: u8 = 27;
const RESERVED: [(u8, &str); 3] = [(2, "I2C1 SDA"), (3, "I2C1 SCL"), (4, "1-Wire (w1-gpio)")];

impl Validate for BoardProfile {
    fn validate(&self, src: &str, out: &mut Findings) {
        let line = |s: std::ops::Range<usize>| line_of(src, s.start);
        check_pins_unique(self, src, out);
        for (key, pin) in self.pins() {
            if *pin.get_ref() > MAX_BCM {
                out.at(
                    line(pin.span()),
                    key.clone(),
                    format!(
                        "GPIO {} does not exist on the header (BCM 0–{MAX_BCM})",
                        pin.get_ref()
                    ),
                );
            }
            if let Some((_, what)) = RESERVED.iter().find(|(p, _)| p == pin.get_ref()) {
                out.at(
                    line(pin.span()),
                    key,
                    format!("GPIO {} is reserved for {what}", pin.get_ref()),
                );
            }
        }
        // Keys the drivers would not honour are refused, never accepted and ignored.
        for (section, spec) in [
            ("carousel.home", &self.carousel.home),
            ("dispenser.beam", &self.dispenser.beam),
        ] {
            if spec.debounce.is_some() {
                out.at(
                    super::key_line(src, section, "debounce"),
                    format!("{section}.debounce"),
                    "not used: this line is read raw on every motor step (a debounce would hide a \
                     unit falling or the home edge); remove the key",
                );
            }
        }
        for (section, safe) in [
            ("fridge.compressor", self.fridge.compressor.safe),
            ("dispenser.buzzer", self.dispenser.buzzer.safe),
            ("dispenser.led", self.dispenser.led.safe),
        ] {
            if safe == SafeState::On {
                out.at(
                    super::key_line(src, section, "safe"),
                    format!("{section}.safe"),
                    "only \"off\" is supported: the driver opens this output at start, shutdown, \
                     drop and on a signal, so a crashed controller can never leave it on",
                );
            }
        }
        let addr = &self.fridge.vial_probe.address;
        if !(0x48..=0x4B).contains(addr.get_ref()) {
            out.at(
                line(addr.span()),
                "fridge.vial_probe.address",
                format!(
                    "0x{:02x} is not a TMP117 address (0x48–0x4B, set by ADD0)",
                    addr.get_ref()
                ),
            );
        }
        let id = &self.fridge.air_probe.id;
        if !is_ds18b20_id(id.get_ref()) {
            out.at(
                line(id.span()),
                "fridge.air_probe.id",
                format!(
                    "{:?} is not a DS18B20 1-Wire id (\"28-\" and 12 hex digits)",
                    id.get_ref()
                ),
            );
        }
        let relay = &self.fridge.compressor;
        let rline = line(relay.pin.span());
        if relay.min_on.is_zero() || relay.min_off.is_zero() {
            out.at(
                rline,
                "fridge.compressor",
                "min_on and min_off must be above zero: they protect the compressor",
            );
        }
        if relay.max_on <= relay.min_on {
            out.at(
                rline,
                "fridge.compressor.max_on",
                "must be longer than min_on, or the compressor could never run",
            );
        }
        if relay.safe != SafeState::Off {
            out.at(
                rline,
                "fridge.compressor.safe",
                "must be \"off\": the fail-safe duty cycle, not a stuck relay, cools without a controller",
            );
        }
        for (key, o) in [
            ("dispenser.buzzer", &self.dispenser.buzzer),
            ("dispenser.led", &self.dispenser.led),
        ] {
            if o.max_on.is_none() {
                out.at(
                    line(o.pin.span()),
                    format!("{key}.max_on"),
                    "every actuator needs a maximum on-time",
                );
            }
        }
        let c = &self.carousel;
        let cline = line(c.home.pin.span());
        if c.slots == 0
            || c.steps_per_rev == 0
            || !c.steps_per_rev.is_multiple_of(u32::from(c.slots.max(1)))
        {
            out.at(
                cline,
                "carousel.slots",
                format!(
                    "steps_per_rev ({}) must be a positive multiple of slots ({})",
                    c.steps_per_rev, c.slots
                ),
            );
        } else if c.pick_steps == 0 || c.pick_steps >= c.steps_per_rev / u32::from(c.slots) / 2 {
            out.at(
                cline,
                "carousel.pick_steps",
                "must be above zero and under half a slot's width, or a stroke would reach the next slot",
            );
        }
        if c.step_period.is_zero() {
            out.at(cline, "carousel.step_period", "must be above zero");
        }
        match (self.board.kind, &self.sim) {
            (BoardKind::Sim, None) => out.at(1, "sim", "a simulated board needs its [sim] model"),
            (BoardKind::Rpi, Some(_)) => out.at(
                1,
                "sim",
                "a Raspberry Pi profile must not carry a [sim] model (it would never be used)",
            ),
            (BoardKind::Sim, Some(sim)) => validate_sim(sim, c, src, out),
            (BoardKind::Rpi, None) => {}
        }
    }
}

fn is_ds18b20_id(id: &str) -> bool {
    id.len() == 15 && id.starts_with("28-") && id[3..].chars().all(|c| c.is_ascii_hexdigit())
}

/// Reports every GPIO line claimed twice, naming both claims.
fn check_pins_unique(profile: &BoardProfile, src: &str, out: &mut Findings) {
    let mut first: BTreeMap<u8, (String, usize)> = BTreeMap::new();
    for (key, pin) in profile.pins() {
        let here = line_of(src, pin.span().start);
        match first.get(pin.get_ref()) {
            Some((other, other_line)) => out.at(
                here,
                key,
                format!(
                    "GPIO {} is already used by {other} (line {other_line})",
                    pin.get_ref()
                ),
            ),
            None => {
                first.insert(*pin.get_ref(), (key, here));
            }
        }
    }
}

fn validate_sim(sim: &SimModel, carousel: &CarouselWiring, src: &str, out: &mut Findings) {
    let at = |key: &str| super::key_line(src, "sim", key);
    for (key, v) in [("ambient", sim.ambient.0), ("initial", sim.initial.0)] {
        if !(v.is_finite() && (-30.0..=60.0).contains(&v)) {
            out.at(
                at(key),
                format!("sim.{key}"),
                format!("{v} is not a room or cabinet temperature (-30–60 °C)"),
            );
        }
    }
    for (key, v) in [
        ("tmp117_noise", sim.tmp117_noise),
        ("ds18b20_noise", sim.ds18b20_noise),
    ] {
        if v.is_finite() && v > 5.0 {
            out.at(at(key), format!("sim.{key}"), "must be at most 5 °C");
        }
    }
    for (key, v) in [
        ("air_heat_capacity", sim.air_heat_capacity),
        ("wall_conductance", sim.wall_conductance),
        ("vial_heat_capacity", sim.vial_heat_capacity),
        ("vial_conductance", sim.vial_conductance),
    ] {
        if !(v.is_finite() && v > 0.0) {
            out.at(at(key), format!("sim.{key}"), "must be a positive number");
        }
    }
    for (key, v) in [
        ("door_conductance", sim.door_conductance),
        ("compressor_cooling", sim.compressor_cooling),
        ("tmp117_noise", sim.tmp117_noise),
        ("ds18b20_noise", sim.ds18b20_noise),
    ] {
        if !(v.is_finite() && v >= 0.0) {
            out.at(at(key), format!("sim.{key}"), "must be zero or positive");
        }
    }
    if let Some((slot, n)) = sim
        .slot_stock
        .iter()
        .enumerate()
        .find(|(_, n)| **n > carousel.slot_capacity)
    {
        out.at(
            at("slot_stock"),
            "sim.slot_stock",
            format!(
                "slot {slot} holds {n}, more than carousel.slot_capacity ({})",
                carousel.slot_capacity
            ),
        );
    }
    if sim.slot_stock.len() != usize::from(carousel.slots) {
        out.at(
            at("slot_stock"),
            "sim.slot_stock",
            format!(
                "lists {} slots but the carousel has {}",
                sim.slot_stock.len(),
                carousel.slots
            ),
        );
    }
    if sim.home_width_steps == 0 || sim.home_width_steps >= carousel.steps_per_rev / 4 {
        out.at(
            at("home_width_steps"),
            "sim.home_width_steps",
            "must be above zero and well under a revolution",
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{parse_str, ConfigError};
    use std::path::Path;

    fn parse(src: &str) -> Result<BoardProfile, Vec<ConfigError>> {
        parse_str(src, Path::new("test.toml"))
    }

    #[test]
    fn shipped_sim_profile_is_valid() {
        let p = BoardProfile::default_sim().unwrap();
        assert_eq!(p.board.kind, BoardKind::Sim);
        assert!(p.sim.is_some());
    }

    #[test]
    fn shipped_rpi4_profile_is_valid() {
        let src = include_str!("../../hw/rpi4.toml");
        let p = parse(src).unwrap();
        assert_eq!(p.board.kind, BoardKind::Rpi);
    }

    #[test]
    fn non_finite_or_implausible_model_parameters_are_refused_at_their_line() {
        let src = include_str!("../../hw/sim.toml")
            .replace("ambient = 22.0", "ambient = nan")
            .replace("initial = 22.0", "initial = inf")
            .replace("wall_conductance = 0.6", "wall_conductance = -0.6");
        let errs = parse(&src).unwrap_err();
        let text: Vec<String> = errs.iter().map(|e| e.to_string()).collect();
        let line_of = |needle: &str| src.lines().position(|l| l.starts_with(needle)).unwrap() + 1;
        for (key, needle) in [
            ("sim.ambient", "ambient"),
            ("sim.initial", "initial"),
            ("sim.wall_conductance", "wall_conductance"),
        ] {
            let want = format!("test.toml:{}: {key}", line_of(needle));
            assert!(
                text.iter().any(|t| t.starts_with(&want)),
                "{want} in {text:?}"
            );
        }
    }

    #[test]
    fn keys_the_drivers_would_ignore_are_refused_at_their_line() {
        let src = include_str!("../../hw/sim.toml")
            .replace(
                "[carousel.home]                # hall sensor A3144, open collector, low at home; read raw on every step (no debounce)\npin = 26\nactive = \"low\"\npull = \"up\"",
                "[carousel.home]\npin = 26\nactive = \"low\"\npull = \"up\"\ndebounce = \"1ms\"",
            )
            .replace(
                "pin = 12\nactive = \"high\"\nsafe = \"off\"",
                "pin = 12\nactive = \"high\"\nsafe = \"on\"",
            );
        let errs = parse(&src).unwrap_err();
        let text: Vec<String> = errs.iter().map(|e| e.to_string()).collect();
        let line_of = |needle: &str| {
            src.find(needle)
                .map(|o| src[..o].lines().count() + 1)
                .unwrap()
        };
        let home = format!(
            "test.toml:{}: carousel.home.debounce",
            line_of("debounce = \"1ms\"")
        );
        let buzzer = format!(
            "test.toml:{}: dispenser.buzzer.safe",
            line_of("safe = \"on\"")
        );
        for want in [home, buzzer] {
            assert!(
                text.iter().any(|t| t.starts_with(&want)),
                "{want} in {text:?}"
            );
        }
    }

    #[test]
    fn duplicated_pin_names_both_uses() {
        let src = include_str!("../../hw/rpi4.toml").replace("pin = 27", "pin = 17");
        let errs = parse(&src).unwrap_err();
        let text: Vec<String> = errs.iter().map(|e| e.to_string()).collect();
        assert!(
            text.iter().any(|t| t.contains("fridge.door.pin")
                && t.contains("already used by fridge.compressor.pin")),
            "{text:?}"
        );
    }

    #[test]
    fn unknown_key_is_an_error_with_its_line() {
        let src = include_str!("../../hw/rpi4.toml")
            .replace("pin = 27\n", "pin = 27\ncolour = \"red\"\n");
        let errs = parse(&src).unwrap_err();
        let line = src.lines().position(|l| l.starts_with("colour")).unwrap() + 1;
        match &errs[0] {
            ConfigError::Syntax {
                line: l, message, ..
            } => {
                assert_eq!(*l, line);
                assert!(message.contains("unknown field `colour`"), "{message}");
            }
            other => panic!("unexpected {other}"),
        }
    }

    #[test]
    fn address_out_of_range_is_rejected() {
        let src = include_str!("../../hw/rpi4.toml").replace("0x48", "0x77");
        let errs = parse(&src).unwrap_err();
        assert!(errs[0].to_string().contains("fridge.vial_probe.address"));
    }

    #[test]
    fn reserved_and_missing_pins_are_rejected() {
        let src = include_str!("../../hw/rpi4.toml").replace("pin = 27", "pin = 3");
        let errs = parse(&src).unwrap_err();
        assert!(errs[0].to_string().contains("reserved for I2C1 SCL"));
        let src = include_str!("../../hw/rpi4.toml").replace("pin = 27", "pin = 40");
        let errs = parse(&src).unwrap_err();
        assert!(errs[0].to_string().contains("does not exist"));
    }
}
