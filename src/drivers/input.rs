//! Digital inputs with polarity and debouncing.
//!
//! A reed switch bounces for milliseconds and a UPS "power good" line can glitch; a level is only
//! believed once it has held for the debounce time. The first sample is believed at once, since at
//! start-up there is nothing older to prefer.

use crate::config::Level;
use embedded_hal::digital::InputPin;
use std::time::Duration;

/// An input line with its active level.
#[derive(Debug)]
pub struct Line<P> {
    pin: P,
    active: Level,
}

impl<P: InputPin> Line<P> {
    /// Wraps a pin whose active level is `active`.
    pub fn new(pin: P, active: Level) -> Self {
        Self { pin, active }
    }

    /// Whether the line is at its active level now.
    pub fn is_active(&mut self) -> Result<bool, P::Error> {
        Ok(match self.active {
            Level::High => self.pin.is_high()?,
            Level::Low => self.pin.is_low()?,
        })
    }

    /// Gives the pin back.
    pub fn destroy(self) -> P {
        self.pin
    }
}

/// An input whose reported state changes only after the new level held for `debounce`.
#[derive(Debug)]
pub struct DebouncedInput<P> {
    line: Line<P>,
    debounce: Duration,
    stable: Option<bool>,
    candidate: Option<(bool, Duration)>,
}

impl<P: InputPin> DebouncedInput<P> {
    /// Wraps a pin whose active level is `active`.
    pub fn new(pin: P, active: Level, debounce: Duration) -> Self {
        Self {
            line: Line::new(pin, active),
            debounce,
            stable: None,
            candidate: None,
        }
    }

    /// Samples the line at monotonic time `at` and returns the debounced state (true: active).
    pub fn sample(&mut self, at: Duration) -> Result<bool, P::Error> {
        let raw = self.line.is_active()?;
        let Some(stable) = self.stable else {
            self.stable = Some(raw);
            return Ok(raw);
        };
        if raw == stable {
            self.candidate = None;
            return Ok(stable);
        }
        let since = match self.candidate {
            Some((level, since)) if level == raw => since,
            _ => {
                self.candidate = Some((raw, at));
                at
            }
        };
        if at.saturating_sub(since) >= self.debounce {
            self.stable = Some(raw);
            self.candidate = None;
        }
        Ok(self.stable.unwrap_or(raw))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use embedded_hal_mock::eh1::digital::{Mock, State, Transaction};

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    #[test]
    fn a_bounce_shorter_than_the_debounce_time_is_ignored() {
        let mut pin = Mock::new(&[
            Transaction::get(State::Low),
            Transaction::get(State::High),
            Transaction::get(State::Low),
            Transaction::get(State::High),
            Transaction::get(State::High),
        ]);
        let mut door = DebouncedInput::new(pin.clone(), Level::High, ms(200));
        assert!(!door.sample(ms(0)).unwrap());
        assert!(!door.sample(ms(10)).unwrap());
        assert!(!door.sample(ms(20)).unwrap());
        assert!(!door.sample(ms(30)).unwrap());
        assert!(door.sample(ms(230)).unwrap());
        pin.done();
    }

    #[test]
    fn active_low_lines_are_inverted() {
        let mut pin = Mock::new(&[Transaction::get(State::Low), Transaction::get(State::High)]);
        let mut line = Line::new(pin.clone(), Level::Low);
        assert!(line.is_active().unwrap());
        assert!(!line.is_active().unwrap());
        pin.done();
    }
}
