//! The physical model behind the simulated board: fridge thermals, carousel mechanics, chute, tray
//! and the lines that connect them to the drivers.
//!
//! Thermal model: two nodes. The air node (air, shelves, liner and stock) exchanges heat with the
//! room through the walls and, while the door is open, through the opening; the running compressor
//! removes heat from it while mains is present. The glycol vial around the buffered probe exchanges
//! heat with the air only, which is what makes it lag and smooth the air's swings. Explicit Euler
//! in steps of at most one second is stable here: the fastest time constant (the vial) is minutes.

use crate::config::{BoardProfile, Level, SimModel};
use crate::devices::carousel::CarouselGeometry;
use crate::devices::Probe;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::time::Duration;

/// Output lines of the board (driven by drivers).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum OutLine {
    /// ULN2003 IN1..IN4.
    Coil(u8),
    /// Step/dir STEP.
    Step,
    /// Step/dir DIR.
    Dir,
    /// Step/dir ENABLE (active low).
    Enable,
    /// Compressor relay.
    Compressor,
    /// Buzzer.
    Buzzer,
    /// LED.
    Led,
}

/// Input lines of the board (read by drivers).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum InLine {
    /// Door reed switch.
    Door,
    /// UPS power good.
    PowerGood,
    /// Carousel home sensor.
    Home,
    /// Chute break-beam.
    Beam,
    /// Cup sensor.
    Tray,
    /// "Taken" button.
    Button,
}

/// A probe fault to inject.
#[derive(Clone, Copy, Debug, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum ProbeFault {
    /// Wire cut: I²C NACK, w1 file gone.
    Disconnected,
    /// The reading freezes at the value it had when the fault began.
    Stuck,
    /// Extra Gaussian noise of this standard deviation (°C).
    Noisy {
        /// Standard deviation in °C.
        sigma: f64,
    },
    /// The reading is off by this much (°C), as a drifting or displaced probe would be.
    Offset {
        /// Offset in °C.
        by: f64,
    },
    /// The reading wanders off at this rate (°C per hour) from when the fault began: a
    /// slowly failing probe, with no jump to give it away.
    Drift {
        /// °C per hour.
        per_hour: f64,
    },
    /// DS18B20: the scratchpad's power-on 85.000 °C (air probe only).
    PowerOn85,
    /// DS18B20: failed conversion 127.937 °C (air probe only).
    FailedConversion,
    /// DS18B20: CRC mismatch (air probe only).
    Crc,
}

#[derive(Clone, Copy, Debug)]
struct ActiveFault {
    probe: Probe,
    fault: ProbeFault,
    until: Option<Duration>,
    stuck_at: f64,
    since: Duration,
}

/// A fault of the machinery below the drivers (the probes have [`ProbeFault`]).
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Deserialize, serde::Serialize,
)]
#[serde(rename_all = "snake_case")]
pub enum MachineFault {
    /// The compressor relay's contacts are welded: it cools whatever the output says.
    RelayWelded,
    /// The compressor does not run whatever the output says (relay coil open, compressor dead).
    RelayDead,
    /// Something sits in the chute: the break-beam reads broken all the time.
    BeamBlocked,
    /// The carousel's home sensor never sees the magnet (unplugged, magnet lost).
    HomeSensorLost,
}

/// Truth about the fridge, for tests and the live view (the controller never reads this).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Thermals {
    /// Air node temperature.
    pub air: f64,
    /// Vial node temperature.
    pub vial: f64,
    /// Room temperature.
    pub ambient: f64,
    /// Whether the compressor is actually cooling (relay closed and mains present).
    pub cooling: bool,
    /// Door open.
    pub door_open: bool,
    /// Mains present.
    pub mains: bool,
}

/// The whole simulated world.
pub struct World {
    t: Duration,
    m: SimModel,
    rng: ChaCha8Rng,
    air: f64,
    vial: f64,
    ambient: f64,
    door_open: bool,
    mains: bool,
    outputs: std::collections::HashMap<OutLine, bool>,
    active: std::collections::HashMap<InLine, Level>,
    compressor_active: Level,
    /// Active levels of the buzzer and the LED, and each time one switched (on or off).
    indicator_active: [Level; 2],
    indicator_log: Vec<(Duration, OutLine, bool)>,
    faults: Vec<ActiveFault>,
    // Carousel.
    geometry: CarouselGeometry,
    rotor: i64,
    phase: Option<u8>,
    jammed: bool,
    stock: Vec<u32>,
    falling: Vec<Duration>,
    in_cup: u32,
    released_total: u32,
    cup_present: bool,
    button_until: Option<Duration>,
    cup_back_at: Option<Duration>,
    /// Told whenever a person changes an input (a press, a lift): what an edge-waiting pin
    /// sleeps on between the changes the model schedules itself.
    input_changed: std::sync::Arc<tokio::sync::Notify>,
    home_width: u32,
    /// Slots with a loose unit.
    loose: std::collections::BTreeSet<u8>,
    /// Machinery faults in force.
    machine: std::collections::BTreeSet<MachineFault>,
}

impl World {
    /// A world at rest at monotonic time `t`, everything at the model's initial temperature.
    pub fn new(m: &SimModel, profile: &BoardProfile, t: Duration) -> Self {
        let f = &profile.fridge;
        let d = &profile.dispenser;
        let active = [
            (InLine::Door, f.door.active),
            (InLine::PowerGood, f.power_good.active),
            (InLine::Home, profile.carousel.home.active),
            (InLine::Beam, d.beam.active),
            (InLine::Tray, d.tray.active),
            (InLine::Button, d.button.active),
        ]
        .into_iter()
        .collect();
        Self {
            t,
            m: m.clone(),
            rng: ChaCha8Rng::seed_from_u64(m.seed),
            air: m.initial.0,
            vial: m.initial.0,
            ambient: m.ambient.0,
            door_open: false,
            mains: true,
            outputs: Default::default(),
            active,
            compressor_active: f.compressor.active,
            indicator_active: [d.buzzer.active, d.led.active],
            indicator_log: Vec::new(),
            faults: Vec::new(),
            geometry: super::super::carousel_geometry(&profile.carousel),
            // Switched on somewhere away from home, as after a power cut mid-turn.
            rotor: i64::from(profile.carousel.steps_per_rev / 3),
            phase: None,
            jammed: false,
            stock: m.slot_stock.clone(),
            falling: Vec::new(),
            in_cup: 0,
            released_total: 0,
            cup_present: true,
            button_until: None,
            cup_back_at: None,
            input_changed: Default::default(),
            home_width: m.home_width_steps,
            loose: Default::default(),
            machine: Default::default(),
        }
    }

    /// The model's current time.
    pub fn now(&self) -> Duration {
        self.t
    }

    /// Integrates the physics up to `t` (no-op if the model is already there).
    pub fn advance_to(&mut self, t: Duration) {
        if self.t < t {
            // The rotor follows the coils only once they have been energised for a while: the
            // patterns that flash by while a driver sets its four lines one after another move
            // nothing.
            self.settle_rotor();
        }
        while self.t < t {
            let dt = (t - self.t).min(Duration::from_secs(1));
            self.integrate(dt.as_secs_f64());
            self.t += dt;
        }
        self.expire();
    }

    fn cooling(&self) -> bool {
        let closed = self
            .outputs
            .get(&OutLine::Compressor)
            .copied()
            .unwrap_or(false)
            == (self.compressor_active == Level::High);
        let runs = if self.machine.contains(&MachineFault::RelayDead) {
            false
        } else {
            closed || self.machine.contains(&MachineFault::RelayWelded)
        };
        runs && self.mains
    }

    /// Starts (`true`) or ends a machinery fault.
    pub fn set_machine_fault(&mut self, fault: MachineFault, on: bool) {
        if on {
            self.machine.insert(fault);
        } else {
            self.machine.remove(&fault);
        }
    }

    fn integrate(&mut self, dt: f64) {
        let m = &self.m;
        let mut q_air = m.wall_conductance * (self.ambient - self.air)
            + m.vial_conductance * (self.vial - self.air);
        if self.door_open {
            q_air += m.door_conductance * (self.ambient - self.air);
        }
        if self.cooling() {
            // The evaporator cannot pull the cabinet below about -25 °C.
            let headroom = ((self.air + 25.0) / 10.0).clamp(0.0, 1.0);
            q_air -= m.compressor_cooling * headroom;
        }
        let q_vial = m.vial_conductance * (self.air - self.vial);
        self.air += q_air / m.air_heat_capacity * dt;
        self.vial += q_vial / m.vial_heat_capacity * dt;
    }

    fn expire(&mut self) {
        let t = self.t;
        self.faults.retain(|f| f.until.is_none_or(|u| u > t));
        let pulse = self.m.beam_pulse;
        self.falling.retain(|&s| s + pulse > t);
        if self.button_until.is_some_and(|u| u <= t) {
            self.button_until = None;
        }
        if self.cup_back_at.is_some_and(|u| u <= t) {
            self.cup_back_at = None;
            self.cup_present = true;
        }
    }

    /// The physical truth of the fridge.
    pub fn thermals(&self) -> Thermals {
        Thermals {
            air: self.air,
            vial: self.vial,
            ambient: self.ambient,
            cooling: self.cooling(),
            door_open: self.door_open,
            mains: self.mains,
        }
    }

    // ---- fault and event injection ----

    /// Opens or closes the door.
    pub fn set_door_open(&mut self, open: bool) {
        self.door_open = open;
    }

    /// Cuts or restores mains.
    pub fn set_mains(&mut self, present: bool) {
        self.mains = present;
    }

    /// Changes the room temperature.
    pub fn set_ambient(&mut self, c: f64) {
        self.ambient = c;
    }

    /// Injects a probe fault for `duration` (None: until cleared).
    pub fn inject_probe_fault(
        &mut self,
        probe: Probe,
        fault: ProbeFault,
        duration: Option<Duration>,
    ) {
        let stuck_at = match probe {
            Probe::Vial => self.vial,
            Probe::Air => self.air,
        };
        self.faults.retain(|f| f.probe != probe);
        self.faults.push(ActiveFault {
            probe,
            fault,
            until: duration.map(|d| self.t + d),
            stuck_at,
            since: self.t,
        });
    }

    /// Clears every fault of `probe`.
    pub fn clear_probe_faults(&mut self, probe: Probe) {
        self.faults.retain(|f| f.probe != probe);
    }

    /// Jams or frees the carousel.
    pub fn set_jammed(&mut self, jammed: bool) {
        self.jammed = jammed;
    }

    /// A unit in `slot` comes loose: it falls the next time the slot passes over the chute.
    pub fn loosen(&mut self, slot: u8) {
        self.loose.insert(slot);
    }

    /// Empties a slot physically (the inventory count is not told).
    pub fn empty_slot(&mut self, slot: u8) {
        if let Some(s) = self.stock.get_mut(usize::from(slot)) {
            *s = 0;
        }
    }

    /// Loads `units` into a slot.
    pub fn load_slot(&mut self, slot: u8, units: u32) {
        if let Some(s) = self.stock.get_mut(usize::from(slot)) {
            *s += units;
        }
    }

    /// Presses the "taken" button for 300 ms.
    pub fn press_button(&mut self) {
        self.button_until = Some(self.t + Duration::from_millis(300));
        self.input_changed.notify_waiters();
    }

    /// Lifts the cup (emptying it) and puts it back after `away`.
    pub fn pick_up_cup(&mut self, away: Duration) {
        self.cup_present = false;
        self.in_cup = 0;
        self.cup_back_at = Some(self.t + away);
        self.input_changed.notify_waiters();
    }

    /// What an edge-waiting pin sleeps on: told at each change a person makes.
    pub fn input_changes(&self) -> std::sync::Arc<tokio::sync::Notify> {
        self.input_changed.clone()
    }

    /// When the model itself next changes `line` (a press ends, the cup comes back), if it will.
    pub fn next_input_change(&self, line: InLine) -> Option<Duration> {
        match line {
            InLine::Button => self.button_until,
            InLine::Tray => self.cup_back_at,
            _ => None,
        }
    }

    /// Units in each slot.
    pub fn stock(&self) -> &[u32] {
        &self.stock
    }

    /// Units that have fallen into the cup since it was last emptied.
    pub fn units_in_cup(&self) -> u32 {
        self.in_cup
    }

    /// Units released since the start.
    pub fn released_total(&self) -> u32 {
        self.released_total
    }

    /// Carousel position in steps within a revolution.
    pub fn carousel_position(&self) -> u32 {
        let rev = i64::from(self.geometry.steps_per_rev);
        u32::try_from(self.rotor.rem_euclid(rev)).unwrap_or(0)
    }

    /// Every switch of the buzzer and the LED: (model time, line, now on).
    pub fn indicator_log(&self) -> &[(Duration, OutLine, bool)] {
        &self.indicator_log
    }

    /// Whether an output line is at its active level.
    pub fn output_active(&self, line: OutLine, active: Level) -> bool {
        self.outputs.get(&line).copied().unwrap_or(false) == (active == Level::High)
    }

    // ---- electrical interface used by the simulated lines ----

    /// A driver set an output line to `high`.
    pub fn set_output(&mut self, line: OutLine, high: bool) {
        let was = self.outputs.insert(line, high).unwrap_or(false);
        match line {
            OutLine::Buzzer | OutLine::Led if high != was => {
                let active = self.indicator_active[usize::from(line == OutLine::Led)];
                self.indicator_log
                    .push((self.t, line, high == (active == Level::High)));
            }
            OutLine::Coil(_) => {}
            OutLine::Step if high && !was => {
                let enabled = !self.outputs.get(&OutLine::Enable).copied().unwrap_or(false);
                if enabled {
                    let dir = self.outputs.get(&OutLine::Dir).copied().unwrap_or(false);
                    self.move_rotor(if dir { 1 } else { -1 });
                }
            }
            _ => {}
        }
    }

    /// The electrical level of an input line (true: high).
    pub fn input_high(&mut self, line: InLine) -> bool {
        let t = self.t;
        let active = match line {
            InLine::Door => self.door_open,
            InLine::PowerGood => self.mains,
            InLine::Home => {
                !self.machine.contains(&MachineFault::HomeSensorLost)
                    && self.carousel_position() < self.home_width
            }
            InLine::Beam => {
                self.machine.contains(&MachineFault::BeamBlocked)
                    || self.falling.iter().any(|&s| s <= t)
            }
            InLine::Tray => self.cup_present,
            InLine::Button => self.button_until.is_some(),
        };
        let level = self.active.get(&line).copied().unwrap_or(Level::High);
        active == (level == Level::High)
    }

    fn settle_rotor(&mut self) {
        let bit = |i| {
            u8::from(
                self.outputs
                    .get(&OutLine::Coil(i))
                    .copied()
                    .unwrap_or(false),
            )
        };
        let pattern = (bit(0) << 3) | (bit(1) << 2) | (bit(2) << 1) | bit(3);
        // Half-step sequence of the 28BYJ-48 as IN1..IN4 bit patterns, phases 0..7.
        const SEQ: [u8; 8] = [
            0b0001, 0b0011, 0b0010, 0b0110, 0b0100, 0b1100, 0b1000, 0b1001,
        ];
        // Released (all coils off): the rotor rests in the detent of the last phase, so the next
        // energised phase moves it from there. The very first energisation only snaps it.
        let Some(new) = SEQ.iter().position(|&p| p == pattern) else {
            return;
        };
        let new = new as u8;
        if let Some(old) = self.phase {
            match (new + 8 - old) % 8 {
                1 => self.move_rotor(1),
                7 => self.move_rotor(-1),
                _ => {} // no move, or a skipped phase the rotor cannot follow
            }
        }
        self.phase = Some(new);
    }

    fn move_rotor(&mut self, delta: i64) {
        if self.jammed {
            return;
        }
        self.rotor += delta;
        if delta < 0 {
            self.check_release();
        } else {
            self.check_loose();
        }
    }

    /// A loose unit falls when its slot's centre passes over the chute.
    fn check_loose(&mut self) {
        let pos = self.carousel_position();
        let over = self
            .loose
            .iter()
            .copied()
            .find(|s| self.geometry.slot_position(*s) == pos);
        if let Some(slot) = over {
            self.loose.remove(&slot);
            self.drop_unit(slot);
        }
    }

    fn drop_unit(&mut self, slot: u8) {
        let i = usize::from(slot);
        if self.stock.get(i).copied().unwrap_or(0) > 0 {
            self.stock[i] -= 1;
            self.released_total += 1;
            self.falling.push(self.t + self.m.pill_fall_time);
            if self.cup_present {
                self.in_cup += 1;
            }
        }
    }

    /// A backward move across a slot's release edge drops one unit if the slot has any.
    fn check_release(&mut self) {
        let g = self.geometry;
        let pos = self.carousel_position();
        for slot in 0..g.slots {
            let edge = g.slot_position(slot) - g.pick_steps / 2;
            if pos == edge {
                self.drop_unit(slot);
            }
        }
    }

    // ---- probe readings ----

    fn gaussian(&mut self, sigma: f64) -> f64 {
        if sigma <= 0.0 {
            return 0.0;
        }
        // Box–Muller.
        let u1: f64 = self.rng.random::<f64>().max(f64::MIN_POSITIVE);
        let u2: f64 = self.rng.random();
        sigma * (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }

    fn fault(&self, probe: Probe) -> Option<ActiveFault> {
        self.faults.iter().copied().find(|f| f.probe == probe)
    }

    fn measured(&mut self, probe: Probe, truth: f64, sigma: f64) -> Option<f64> {
        let noise = self.gaussian(sigma);
        let now = self.t;
        match self.fault(probe).map(|f| (f.fault, f.stuck_at, f.since)) {
            Some((ProbeFault::Disconnected, ..)) => None,
            Some((ProbeFault::Stuck, v, _)) => Some(v),
            Some((ProbeFault::Noisy { sigma }, ..)) => Some(truth + noise + self.gaussian(sigma)),
            Some((ProbeFault::Offset { by }, ..)) => Some(truth + noise + by),
            Some((ProbeFault::Drift { per_hour }, _, since)) => {
                let hours = now.saturating_sub(since).as_secs_f64() / 3600.0;
                Some(truth + noise + per_hour * hours)
            }
            _ => Some(truth + noise),
        }
    }

    /// The vial probe's conversion result, or None when it does not answer.
    pub fn tmp117_conversion(&mut self) -> Option<f64> {
        let (truth, sigma) = (self.vial, self.m.tmp117_noise);
        self.measured(Probe::Vial, truth, sigma)
    }

    /// The air probe's `w1_slave` text, or None when its file is gone.
    pub fn ds18b20_text(&mut self) -> Option<String> {
        use crate::drivers::ds18b20::render_w1_slave;
        let (truth, sigma) = (self.air, self.m.ds18b20_noise);
        let fault = self.fault(Probe::Air).map(|f| f.fault);
        let value = self.measured(Probe::Air, truth, sigma)?;
        let raw = (value * 16.0).round().clamp(-880.0, 2000.0) as i16;
        Some(match fault {
            Some(ProbeFault::PowerOn85) => render_w1_slave(85 * 16, true),
            Some(ProbeFault::FailedConversion) => render_w1_slave(0x7FF, true),
            Some(ProbeFault::Crc) => render_w1_slave(raw, false),
            _ => render_w1_slave(raw, true),
        })
    }
}

impl World {
    /// Whether a probe answers on its bus at all.
    pub fn probe_responds(&self, probe: Probe) -> bool {
        !matches!(
            self.fault(probe).map(|f| f.fault),
            Some(ProbeFault::Disconnected)
        )
    }
}
