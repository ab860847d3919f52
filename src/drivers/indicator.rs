//! Buzzer and LED: an output with a maximum on-time, so a reminder that nobody stops cannot sound
//! forever (a buzzer that never stops gets unplugged, and then the next alarm is silent too).

use super::pin_state;
use crate::config::Level;
use embedded_hal::digital::OutputPin;
use std::time::Duration;

/// An on/off output that turns itself off after `max_on`.
#[derive(Debug)]
pub struct Indicator<P: OutputPin> {
    pin: P,
    active: Level,
    max_on: Duration,
    on_since: Option<Duration>,
}

impl<P: OutputPin> Indicator<P> {
    /// Takes the pin and switches it off.
    pub fn new(pin: P, active: Level, max_on: Duration) -> Result<Self, P::Error> {
        let mut i = Self {
            pin,
            active,
            max_on,
            on_since: None,
        };
        i.pin.set_state(pin_state(active, false))?;
        Ok(i)
    }

    /// Switches on or off at monotonic time `at`.
    pub fn set(&mut self, on: bool, at: Duration) -> Result<(), P::Error> {
        self.pin.set_state(pin_state(self.active, on))?;
        self.on_since = match (on, self.on_since) {
            (true, Some(since)) => Some(since),
            (true, None) => Some(at),
            (false, _) => None,
        };
        Ok(())
    }

    /// Whether the output is on.
    pub fn is_on(&self) -> bool {
        self.on_since.is_some()
    }

    /// Switches off if on for `max_on`; returns whether it did.
    pub fn enforce(&mut self, at: Duration) -> Result<bool, P::Error> {
        match self.on_since {
            Some(since) if at.saturating_sub(since) >= self.max_on => {
                self.set(false, at)?;
                Ok(true)
            }
            _ => Ok(false),
        }
    }
}

impl<P: OutputPin> Drop for Indicator<P> {
    fn drop(&mut self) {
        let _ = self.pin.set_state(pin_state(self.active, false));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use embedded_hal_mock::eh1::digital::{Mock, State, Transaction};

    #[test]
    fn buzzer_stops_by_itself_after_max_on_time() {
        let mut pin = Mock::new(&[
            Transaction::set(State::Low),
            Transaction::set(State::High),
            Transaction::set(State::High),
            Transaction::set(State::Low),
            Transaction::set(State::Low),
        ]);
        let mut b = Indicator::new(pin.clone(), Level::High, Duration::from_secs(60)).unwrap();
        b.set(true, Duration::from_secs(10)).unwrap();
        b.set(true, Duration::from_secs(30)).unwrap();
        assert!(!b.enforce(Duration::from_secs(69)).unwrap());
        assert!(b.enforce(Duration::from_secs(70)).unwrap());
        assert!(!b.is_on());
        drop(b);
        pin.done();
    }
}
