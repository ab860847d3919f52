//! Stepper motors: the 28BYJ-48 on a ULN2003 (four coil lines, half-stepped, via the `uln2003`
//! crate) and step/dir drivers such as the A4988 or DRV8825 (our own small driver: no maintained
//! crate targets embedded-hal 1.0).
//!
//! Both expose one step at a time; the caller paces the steps, because it also has sensors to poll
//! between them (the home switch, the break-beam).

use embedded_hal::delay::DelayNs;
use embedded_hal::digital::OutputPin;
use thiserror::Error;
use uln2003::StepperMotor;

/// Direction of rotation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rotation {
    /// The carousel's normal direction of travel.
    Forward,
    /// Backwards (the pick stroke).
    Backward,
}

/// A motor line could not be driven.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[error("stepper output line failed: {0}")]
pub struct StepperError(pub String);

/// One step at a time.
pub trait Stepper {
    /// Advances one (half-)step in `dir`.
    fn step(&mut self, dir: Rotation) -> Result<(), StepperError>;
    /// De-energises the coils (the safe state: no holding current, no heat).
    fn release(&mut self) -> Result<(), StepperError>;
}

/// A delay that is never used: the `uln2003` crate wants one only for its `step_for`, which we do
/// not call (we poll sensors between steps).
#[derive(Debug, Clone, Copy, Default)]
pub struct Unpaced;

impl DelayNs for Unpaced {
    fn delay_ns(&mut self, _ns: u32) {}
}

/// 28BYJ-48 through a ULN2003 board.
pub struct Uln2003Stepper<A: OutputPin, B: OutputPin, C: OutputPin, D: OutputPin> {
    motor: uln2003::ULN2003<A, B, C, D, Unpaced>,
}

impl<A: OutputPin, B: OutputPin, C: OutputPin, D: OutputPin> Uln2003Stepper<A, B, C, D> {
    /// Takes IN1..IN4 and de-energises the coils.
    pub fn new(in1: A, in2: B, in3: C, in4: D) -> Result<Self, StepperError> {
        let mut s = Self {
            motor: uln2003::ULN2003::new(in1, in2, in3, in4, None),
        };
        s.release()?;
        Ok(s)
    }
}

impl<A: OutputPin, B: OutputPin, C: OutputPin, D: OutputPin> Stepper
    for Uln2003Stepper<A, B, C, D>
{
    fn step(&mut self, dir: Rotation) -> Result<(), StepperError> {
        self.motor.set_direction(match dir {
            Rotation::Forward => uln2003::Direction::Normal,
            Rotation::Backward => uln2003::Direction::Reverse,
        });
        self.motor
            .step()
            .map_err(|_| StepperError("ULN2003 coil line".into()))
    }

    fn release(&mut self) -> Result<(), StepperError> {
        self.motor
            .stop()
            .map_err(|_| StepperError("ULN2003 coil line".into()))
    }
}

/// Timing of a step/dir driver (A4988: 1 µs pulse, 200 ns setup; DRV8825: 1.9 µs, 650 ns).
const STEP_PULSE_NS: u32 = 2_000;
const DIR_SETUP_NS: u32 = 1_000;

/// A step/dir driver with an optional active-low ENABLE.
pub struct StepDirStepper<S, Dr, E, D> {
    step: S,
    dir: Dr,
    enable: Option<E>,
    delay: D,
    current: Option<Rotation>,
}

impl<S: OutputPin, Dr: OutputPin, E: OutputPin, D: DelayNs> StepDirStepper<S, Dr, E, D> {
    /// Takes the lines and disables the driver.
    pub fn new(step: S, dir: Dr, enable: Option<E>, delay: D) -> Result<Self, StepperError> {
        let mut s = Self {
            step,
            dir,
            enable,
            delay,
            current: None,
        };
        s.step.set_low().map_err(line_err("STEP"))?;
        s.release()?;
        Ok(s)
    }
}

fn line_err<E: core::fmt::Debug>(name: &'static str) -> impl Fn(E) -> StepperError {
    move |e| StepperError(format!("{name}: {e:?}"))
}

impl<S: OutputPin, Dr: OutputPin, E: OutputPin, D: DelayNs> Stepper
    for StepDirStepper<S, Dr, E, D>
{
    fn step(&mut self, dir: Rotation) -> Result<(), StepperError> {
        if let Some(en) = self.enable.as_mut() {
            en.set_low().map_err(line_err("ENABLE"))?;
        }
        if self.current != Some(dir) {
            match dir {
                Rotation::Forward => self.dir.set_high(),
                Rotation::Backward => self.dir.set_low(),
            }
            .map_err(line_err("DIR"))?;
            self.current = Some(dir);
            self.delay.delay_ns(DIR_SETUP_NS);
        }
        self.step.set_high().map_err(line_err("STEP"))?;
        self.delay.delay_ns(STEP_PULSE_NS);
        self.step.set_low().map_err(line_err("STEP"))?;
        Ok(())
    }

    fn release(&mut self) -> Result<(), StepperError> {
        if let Some(en) = self.enable.as_mut() {
            en.set_high().map_err(line_err("ENABLE"))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use embedded_hal_mock::eh1::delay::NoopDelay;
    use embedded_hal_mock::eh1::digital::{Mock, State, Transaction as T};

    #[test]
    fn uln2003_half_steps_through_the_coil_sequence() {
        // Release sets all low; then State1 (IN4), State2 (IN3+IN4); then back to State1.
        let low4 = || [0; 4].map(|_| T::set(State::Low));
        let mut in1 = Mock::new(&low4());
        let mut in2 = Mock::new(&low4());
        let mut in3 = Mock::new(&[
            T::set(State::Low),
            T::set(State::Low),
            T::set(State::High),
            T::set(State::Low),
        ]);
        let mut in4 = Mock::new(&[
            T::set(State::Low),
            T::set(State::High),
            T::set(State::High),
            T::set(State::High),
        ]);
        let mut m =
            Uln2003Stepper::new(in1.clone(), in2.clone(), in3.clone(), in4.clone()).unwrap();
        m.step(Rotation::Forward).unwrap();
        m.step(Rotation::Forward).unwrap();
        m.step(Rotation::Backward).unwrap();
        for p in [&mut in1, &mut in2, &mut in3, &mut in4] {
            p.done();
        }
    }

    #[test]
    fn step_dir_sets_direction_once_and_pulses_step() {
        let mut step = Mock::new(&[
            T::set(State::Low),
            T::set(State::High),
            T::set(State::Low),
            T::set(State::High),
            T::set(State::Low),
            T::set(State::High),
            T::set(State::Low),
        ]);
        let mut dir = Mock::new(&[T::set(State::High), T::set(State::Low)]);
        let mut en = Mock::new(&[
            T::set(State::High),
            T::set(State::Low),
            T::set(State::Low),
            T::set(State::Low),
            T::set(State::High),
        ]);
        let mut m = StepDirStepper::new(
            step.clone(),
            dir.clone(),
            Some(en.clone()),
            NoopDelay::new(),
        )
        .unwrap();
        m.step(Rotation::Forward).unwrap();
        m.step(Rotation::Forward).unwrap();
        m.step(Rotation::Backward).unwrap();
        m.release().unwrap();
        step.done();
        dir.done();
        en.done();
    }
}
