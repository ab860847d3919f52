//! Simulated GPIO lines and delay, implementing the embedded-hal traits over the world model.

use super::world::{InLine, OutLine};
use super::SimHandle;
use embedded_hal::delay::DelayNs;
use embedded_hal::digital::{ErrorType, InputPin, OutputPin};
use std::convert::Infallible;
use std::time::Duration;

/// An output line of the simulated board.
pub struct SimOutput {
    handle: SimHandle,
    line: OutLine,
}

impl SimOutput {
    pub(super) fn new(handle: SimHandle, line: OutLine) -> Self {
        Self { handle, line }
    }
}

impl ErrorType for SimOutput {
    type Error = Infallible;
}

impl OutputPin for SimOutput {
    fn set_low(&mut self) -> Result<(), Infallible> {
        self.handle.world().set_output(self.line, false);
        Ok(())
    }
    fn set_high(&mut self) -> Result<(), Infallible> {
        self.handle.world().set_output(self.line, true);
        Ok(())
    }
}

/// An input line of the simulated board.
pub struct SimInput {
    handle: SimHandle,
    line: InLine,
}

impl SimInput {
    pub(super) fn new(handle: SimHandle, line: InLine) -> Self {
        Self { handle, line }
    }
}

impl ErrorType for SimInput {
    type Error = Infallible;
}

impl InputPin for SimInput {
    fn is_high(&mut self) -> Result<bool, Infallible> {
        Ok(self.handle.world().input_high(self.line))
    }
    fn is_low(&mut self) -> Result<bool, Infallible> {
        Ok(!self.handle.world().input_high(self.line))
    }
}

/// A delay that runs the physical model forward instead of sleeping: a stepper's pacing and a
/// TMP117 conversion take simulated time, not real time.
pub struct SimDelay {
    handle: SimHandle,
}

impl SimDelay {
    pub(super) fn new(handle: SimHandle) -> Self {
        Self { handle }
    }
}

impl DelayNs for SimDelay {
    fn delay_ns(&mut self, ns: u32) {
        self.handle.block_for(Duration::from_nanos(u64::from(ns)));
    }
}
