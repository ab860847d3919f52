//! A relay with minimum on and off times and a maximum on-time: the compressor's last line of
//! defence. The cold-chain controller already respects these times; the relay enforces them again
//! below it, so no controller bug can short-cycle or run the compressor forever.

use super::pin_state;
use crate::config::Level;
use embedded_hal::digital::OutputPin;
use std::time::Duration;

/// The protective times of a relay-driven load.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RelayTimings {
    /// Shortest run once started.
    pub min_on: Duration,
    /// Shortest rest once stopped.
    pub min_off: Duration,
    /// Longest continuous run.
    pub max_on: Duration,
}

/// What the relay did with a command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RelayOutcome {
    /// The relay is now in the commanded state.
    Applied,
    /// The command must wait until `until` (minimum on or off time).
    Deferred {
        /// Monotonic time from which the command would be honoured.
        until: Duration,
    },
    /// The relay opened because it reached its maximum on-time.
    MaxOnTimeReached,
}

/// A relay owning its output pin. It opens (safe state) on creation and on drop.
#[derive(Debug)]
pub struct Relay<P: OutputPin> {
    pin: P,
    active: Level,
    timings: RelayTimings,
    on: bool,
    since: Duration,
}

impl<P: OutputPin> Relay<P> {
    /// Takes the pin, opens the relay, and starts the minimum off time at `at`: the load may have
    /// been running just before this process started (a crash or a restart).
    pub fn new(
        pin: P,
        active: Level,
        timings: RelayTimings,
        at: Duration,
    ) -> Result<Self, P::Error> {
        let mut relay = Self {
            pin,
            active,
            timings,
            on: false,
            since: at,
        };
        relay.drive(false)?;
        Ok(relay)
    }

    /// Whether the relay is closed.
    pub fn is_on(&self) -> bool {
        self.on
    }

    /// When the relay last changed state (monotonic).
    pub fn since(&self) -> Duration {
        self.since
    }

    /// Asks for the relay to be closed (`true`) or opened, honouring the protective times.
    pub fn command(&mut self, on: bool, at: Duration) -> Result<RelayOutcome, P::Error> {
        if let RelayOutcome::MaxOnTimeReached = self.enforce(at)? {
            return Ok(RelayOutcome::MaxOnTimeReached);
        }
        if on == self.on {
            return Ok(RelayOutcome::Applied);
        }
        let wait = if self.on {
            self.timings.min_on
        } else {
            self.timings.min_off
        };
        let until = self.since + wait;
        if at < until {
            return Ok(RelayOutcome::Deferred { until });
        }
        self.drive(on)?;
        self.on = on;
        self.since = at;
        Ok(RelayOutcome::Applied)
    }

    /// Opens the relay if it has been closed for its maximum on-time.
    pub fn enforce(&mut self, at: Duration) -> Result<RelayOutcome, P::Error> {
        if self.on && at.saturating_sub(self.since) >= self.timings.max_on {
            self.drive(false)?;
            self.on = false;
            self.since = at;
            return Ok(RelayOutcome::MaxOnTimeReached);
        }
        Ok(RelayOutcome::Applied)
    }

    /// Opens the relay now, ignoring the minimum on-time (shutdown, signal, fault).
    pub fn safe(&mut self, at: Duration) -> Result<(), P::Error> {
        self.drive(false)?;
        if self.on {
            self.on = false;
            self.since = at;
        }
        Ok(())
    }

    fn drive(&mut self, on: bool) -> Result<(), P::Error> {
        self.pin.set_state(pin_state(self.active, on))
    }
}

impl<P: OutputPin> Drop for Relay<P> {
    fn drop(&mut self) {
        // Best effort: a pin that cannot be driven here could not be driven by anyone.
        let _ = self.drive(false);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use embedded_hal_mock::eh1::digital::{Mock, State, Transaction};

    const T: RelayTimings = RelayTimings {
        min_on: Duration::from_secs(120),
        min_off: Duration::from_secs(240),
        max_on: Duration::from_secs(2700),
    };

    fn s(v: u64) -> Duration {
        Duration::from_secs(v)
    }

    #[test]
    fn compressor_waits_min_off_time_before_restart() {
        let mut pin = Mock::new(&[
            Transaction::set(State::Low), // new: safe state
            Transaction::set(State::High),
            Transaction::set(State::Low),
            Transaction::set(State::Low), // drop
        ]);
        let mut relay = Relay::new(pin.clone(), Level::High, T, s(0)).unwrap();
        assert_eq!(
            relay.command(true, s(100)).unwrap(),
            RelayOutcome::Deferred { until: s(240) }
        );
        assert_eq!(relay.command(true, s(240)).unwrap(), RelayOutcome::Applied);
        assert_eq!(
            relay.command(false, s(300)).unwrap(),
            RelayOutcome::Deferred { until: s(360) }
        );
        assert_eq!(relay.command(false, s(360)).unwrap(), RelayOutcome::Applied);
        assert_eq!(
            relay.command(true, s(599)).unwrap(),
            RelayOutcome::Deferred { until: s(600) }
        );
        drop(relay);
        pin.done();
    }

    #[test]
    fn compressor_never_runs_past_max_on_time() {
        let mut pin = Mock::new(&[
            Transaction::set(State::High), // active-low relay: safe is high
            Transaction::set(State::Low),
            Transaction::set(State::High),
            Transaction::set(State::High), // drop
        ]);
        let mut relay = Relay::new(pin.clone(), Level::Low, T, s(0)).unwrap();
        relay.command(true, s(240)).unwrap();
        assert_eq!(relay.enforce(s(2000)).unwrap(), RelayOutcome::Applied);
        assert_eq!(
            relay.command(true, s(240 + 2700)).unwrap(),
            RelayOutcome::MaxOnTimeReached
        );
        assert!(!relay.is_on());
        drop(relay);
        pin.done();
    }

    #[test]
    fn safe_opens_at_once_even_within_min_on() {
        let mut pin = Mock::new(&[
            Transaction::set(State::Low),
            Transaction::set(State::High),
            Transaction::set(State::Low),
            Transaction::set(State::Low),
        ]);
        let mut relay = Relay::new(pin.clone(), Level::High, T, s(0)).unwrap();
        relay.command(true, s(300)).unwrap();
        relay.safe(s(301)).unwrap();
        assert!(!relay.is_on());
        drop(relay);
        pin.done();
    }
}
