//! Simulated GPIO lines and delay, implementing the embedded-hal traits over the world model.

use super::world::{InLine, OutLine};
use super::SimHandle;
use crate::drivers::input::{wait_for_level, EdgeFuture, EdgeWait};
use embedded_hal::delay::DelayNs;
use embedded_hal::digital::{ErrorType, InputPin, OutputPin};
use embedded_hal_async::digital::Wait;
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

impl Wait for SimInput {
    async fn wait_for_high(&mut self) -> Result<(), Infallible> {
        wait_for_level(self, true).await
    }
    async fn wait_for_low(&mut self) -> Result<(), Infallible> {
        wait_for_level(self, false).await
    }
    async fn wait_for_rising_edge(&mut self) -> Result<(), Infallible> {
        wait_for_level(self, false).await?;
        wait_for_level(self, true).await
    }
    async fn wait_for_falling_edge(&mut self) -> Result<(), Infallible> {
        wait_for_level(self, true).await?;
        wait_for_level(self, false).await
    }
    /// Sleeps until a person changes an input, or until the model's own next change of this
    /// line (a press ending, the cup put back), whichever is first; returns once the level
    /// differs from where it started.
    async fn wait_for_any_edge(&mut self) -> Result<(), Infallible> {
        let start = self.is_high()?;
        loop {
            let (changes, next) = {
                let w = self.handle.world();
                (w.input_changes(), w.next_input_change(self.line))
            };
            let changed = changes.notified();
            tokio::pin!(changed);
            // Registered before the level is read again, so a change in between is not lost.
            changed.as_mut().enable();
            if self.is_high()? != start {
                return Ok(());
            }
            let scheduled = async {
                match next {
                    Some(t) => crate::clock::sleep_until(&**self.handle.clock(), t).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = changed => {}
                _ = scheduled => {}
            }
            if self.is_high()? != start {
                return Ok(());
            }
        }
    }
}

impl EdgeWait for SimInput {
    fn any_edge(&mut self) -> EdgeFuture<'_, Infallible> {
        Box::pin(self.wait_for_any_edge())
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
