//! The carousel mechanism: a stepper-driven magazine of slots over a chute.
//!
//! Travel is forward only; a unit is released by a short backward stroke of the slot over the chute
//! edge (a one-way flap), so positioning past other slots never releases anything. The break-beam
//! across the chute is polled between steps and for `drop_timeout` after each stroke; every
//! inactive→active edge is one unit seen. After a dispense the carousel returns home, and arriving
//! where the home sensor is not means steps were lost (a jam): the caller must treat the outcome as
//! uncertain and re-home before moving again.
//!
//! This module does mechanics only. Whether a dispense counts as dispensed, failed or uncertain is
//! the dosing domain's decision.

use crate::drivers::input::Line;
use crate::drivers::stepper::{Rotation, Stepper, StepperError};
use embedded_hal::delay::DelayNs;
use embedded_hal::digital::InputPin;
use std::time::Duration;
use thiserror::Error;

/// Geometry and pacing of the carousel (from the board profile).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CarouselGeometry {
    /// Motor steps per carousel revolution.
    pub steps_per_rev: u32,
    /// Number of slots.
    pub slots: u8,
    /// Time between steps.
    pub step_period: Duration,
    /// Length of the release stroke.
    pub pick_steps: u32,
    /// How long to watch the beam after a stroke.
    pub drop_timeout: Duration,
    /// Most units one slot holds.
    pub slot_capacity: u32,
}

impl CarouselGeometry {
    fn steps_per_slot(&self) -> u32 {
        self.steps_per_rev / u32::from(self.slots.max(1))
    }

    /// The slot over the chute at step position `p` (from home).
    pub fn slot_at(&self, p: u32) -> u8 {
        let per = self.steps_per_slot().max(1);
        ((p % self.steps_per_rev.max(1)) / per).min(u32::from(self.slots.saturating_sub(1))) as u8
    }

    /// Step position (from home) at which `slot` sits over the chute.
    pub fn slot_position(&self, slot: u8) -> u32 {
        u32::from(slot) * self.steps_per_slot() + self.steps_per_slot() / 2
    }
}

/// Why the carousel could not do what was asked. Anything here after the motor moved means the
/// position is unknown until the next successful `home`.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum CarouselError {
    /// A motor line failed.
    #[error(transparent)]
    Stepper(#[from] StepperError),
    /// A sensor line could not be read.
    #[error("carousel sensor {line}: {reason}")]
    Sensor {
        /// Which sensor.
        line: &'static str,
        /// The HAL's explanation.
        reason: String,
    },
    /// The call never came back (its driver panicked): whether it moved, and what it released,
    /// is unknown.
    #[error("the carousel's driver was lost during the call: what it released is unknown")]
    Lost,
    /// The carousel has not been homed since start or since a lost position.
    #[error("carousel position unknown: home it first")]
    NotHomed,
    /// The chute's break-beam reads broken before anything moved: something sits in the chute,
    /// and no drop could be counted. Nothing moved.
    #[error("the chute's break-beam is blocked (see dispenser.beam): clear the chute")]
    BeamBlocked,
    /// The home sensor was not found within a revolution (jam, or a dead sensor).
    #[error("home sensor not found after {steps} steps (jam or sensor fault; see carousel.home)")]
    HomeNotFound {
        /// Steps taken while searching.
        steps: u32,
    },
    /// The motor was driven but the carousel never left home: it is jammed. Nothing can have
    /// been released.
    #[error("carousel did not leave home after {steps} steps: jammed (nothing was released)")]
    Jammed {
        /// Steps driven.
        steps: u32,
    },
    /// The slot does not exist on this carousel.
    #[error("slot {slot} does not exist (carousel has {slots} slots)")]
    NoSuchSlot {
        /// The slot asked for.
        slot: u8,
        /// How many there are.
        slots: u8,
    },
}

/// What one dispense did, as the sensors saw it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DropReport {
    /// The slot used.
    pub slot: u8,
    /// Units asked for.
    pub requested: u32,
    /// Units the break-beam saw fall during the release strokes.
    pub drops_seen: u32,
    /// Units seen falling while merely positioning (should be zero; non-zero means a loose unit,
    /// possibly another medication, in the cup).
    pub stray_drops: u32,
    /// The slot over the chute when the first of them fell.
    pub stray_from: Option<u8>,
    /// Whether the carousel found home where it expected it afterwards (false: steps lost, jam).
    pub returned_home: bool,
}

/// The carousel as the dispenser sees it.
pub trait Carousel: Send {
    /// Finds the home position. Never releases anything.
    fn home(&mut self) -> Result<u32, CarouselError>;
    /// Turns `slot` over the chute, releases `units` one stroke at a time, and returns home.
    fn dispense(&mut self, slot: u8, units: u32) -> Result<DropReport, CarouselError>;
    /// De-energises the motor.
    fn release(&mut self) -> Result<(), CarouselError>;
    /// How many slots it has.
    fn slots(&self) -> u8;
    /// Most units one slot holds.
    fn slot_capacity(&self) -> u32;
}

/// The mechanism, generic over its stepper, home sensor, break-beam and delay.
pub struct CarouselMechanism<S, H, B, D> {
    stepper: S,
    home: Line<H>,
    beam: Line<B>,
    delay: D,
    geometry: CarouselGeometry,
    position: Option<u32>,
    beam_was_active: bool,
}

const BEAM_POLL: Duration = Duration::from_millis(1);

impl<S, H, B, D> CarouselMechanism<S, H, B, D>
where
    S: Stepper,
    H: InputPin,
    B: InputPin,
    D: DelayNs,
{
    /// Assembles the mechanism; its position is unknown until `home`.
    pub fn new(
        stepper: S,
        home: Line<H>,
        beam: Line<B>,
        delay: D,
        geometry: CarouselGeometry,
    ) -> Self {
        Self {
            stepper,
            home,
            beam,
            delay,
            geometry,
            position: None,
            beam_was_active: false,
        }
    }

    fn home_active(&mut self) -> Result<bool, CarouselError> {
        self.home.is_active().map_err(|e| CarouselError::Sensor {
            line: "carousel.home",
            reason: format!("{e:?}"),
        })
    }

    /// Polls the beam once; returns 1 on a new break.
    fn poll_beam(&mut self) -> Result<u32, CarouselError> {
        let active = self.beam.is_active().map_err(|e| CarouselError::Sensor {
            line: "dispenser.beam",
            reason: format!("{e:?}"),
        })?;
        let edge = active && !self.beam_was_active;
        self.beam_was_active = active;
        Ok(u32::from(edge))
    }

    /// One paced step; returns beam breaks seen during the pause.
    fn step(&mut self, dir: Rotation) -> Result<u32, CarouselError> {
        self.stepper.step(dir)?;
        self.delay.delay_ns(duration_ns(self.geometry.step_period));
        self.poll_beam()
    }

    fn watch_beam(&mut self, how_long: Duration) -> Result<u32, CarouselError> {
        let mut seen = 0;
        let mut waited = Duration::ZERO;
        while waited < how_long {
            self.delay.delay_ns(duration_ns(BEAM_POLL));
            waited += BEAM_POLL;
            seen += self.poll_beam()?;
        }
        Ok(seen)
    }

    fn run(&mut self, slot: u8, units: u32) -> Result<DropReport, CarouselError> {
        let pos = self.position.ok_or(CarouselError::NotHomed)?;
        // A beam that is already broken could count nothing: refuse before any motion.
        self.poll_beam()?;
        if self.beam_was_active {
            return Err(CarouselError::BeamBlocked);
        }
        let g = self.geometry;
        let rev = g.steps_per_rev;
        // Until we are home again the position is not trusted.
        self.position = None;
        let target = g.slot_position(slot);
        let mut stray = 0;
        let mut stray_from = None;
        let mut p = pos % rev;
        // One positioning step; notes which slot was over the chute if something fell.
        let mut position = |this: &mut Self, p: &mut u32| -> Result<u32, CarouselError> {
            let fell = this.step(Rotation::Forward)?;
            *p = (*p + 1) % rev;
            if fell > 0 && stray_from.is_none() {
                stray_from = Some(g.slot_at(*p));
            }
            Ok(fell)
        };
        let travel = (target + rev - pos % rev) % rev;
        for _ in 0..travel {
            stray += position(self, &mut p)?;
        }
        // Every slot lies at least half a slot from home: still seeing home means no motion.
        if pos == 0 && travel > 0 && self.home_active()? {
            return Err(CarouselError::Jammed { steps: travel });
        }
        let mut seen = 0;
        for _ in 0..units {
            let mut this = 0;
            for _ in 0..g.pick_steps {
                this += self.step(Rotation::Backward)?;
            }
            for _ in 0..g.pick_steps {
                this += self.step(Rotation::Forward)?;
            }
            this += self.watch_beam(g.drop_timeout)?;
            seen += this;
            if this == 0 {
                // Nothing fell: stop here rather than stroke again and risk a double release.
                break;
            }
        }
        for _ in 0..(rev - target) {
            stray += position(self, &mut p)?;
        }
        // Allow the sensor's edge to sit a little late (belt stretch, sensor placement).
        let mut returned_home = self.home_active()?;
        let mut extra = 0;
        while !returned_home && extra < g.steps_per_slot() / 4 {
            stray += position(self, &mut p)?;
            extra += 1;
            returned_home = self.home_active()?;
        }
        if returned_home {
            self.position = Some(0);
        }
        Ok(DropReport {
            slot,
            requested: units,
            drops_seen: seen,
            stray_drops: stray,
            stray_from,
            returned_home,
        })
    }
}

fn duration_ns(d: Duration) -> u32 {
    u32::try_from(d.as_nanos()).unwrap_or(u32::MAX)
}

impl<S, H, B, D> Carousel for CarouselMechanism<S, H, B, D>
where
    S: Stepper + Send,
    H: InputPin + Send,
    B: InputPin + Send,
    D: DelayNs + Send,
{
    fn home(&mut self) -> Result<u32, CarouselError> {
        self.position = None;
        let rev = self.geometry.steps_per_rev;
        let slot = self.geometry.steps_per_slot();
        let mut steps = 0;
        let result = (|| {
            // Leave the home zone first, so we always stop on its leading edge.
            while self.home_active()? {
                if steps >= slot {
                    return Err(CarouselError::HomeNotFound { steps });
                }
                self.step(Rotation::Forward)?;
                steps += 1;
            }
            while !self.home_active()? {
                if steps >= rev + slot {
                    return Err(CarouselError::HomeNotFound { steps });
                }
                self.step(Rotation::Forward)?;
                steps += 1;
            }
            Ok(steps)
        })();
        self.stepper.release()?;
        if result.is_ok() {
            self.position = Some(0);
        }
        result
    }

    fn dispense(&mut self, slot: u8, units: u32) -> Result<DropReport, CarouselError> {
        if slot >= self.geometry.slots {
            return Err(CarouselError::NoSuchSlot {
                slot,
                slots: self.geometry.slots,
            });
        }
        let report = self.run(slot, units);
        let released = self.stepper.release();
        let report = report?;
        released?;
        Ok(report)
    }

    fn release(&mut self) -> Result<(), CarouselError> {
        Ok(self.stepper.release()?)
    }

    fn slots(&self) -> u8 {
        self.geometry.slots
    }

    fn slot_capacity(&self) -> u32 {
        self.geometry.slot_capacity
    }
}
