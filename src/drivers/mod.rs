//! Drivers we write ourselves, in the shape of eldruin's embedded-hal drivers: each is generic over
//! embedded-hal 1.0, owns its pins or bus, is blocking, and knows nothing of tokio, config files,
//! SQLite, MQTT or the domain. Where a well-kept crate exists (`tmp117`, `uln2003`) we wrap it
//! rather than rewrite it.
//!
//! Drivers that enforce timing (relay minimum on/off, indicator maximum on-time, debouncing) take
//! the monotonic time as an argument instead of reading a clock, so they stay pure and testable.

pub mod ds18b20;
pub mod indicator;
pub mod input;
pub mod relay;
pub mod stepper;
pub mod tmp117;

use crate::config::Level;
use embedded_hal::digital::PinState;

/// The electrical state that makes a line of this polarity active or inactive.
pub fn pin_state(active: Level, on: bool) -> PinState {
    match (active, on) {
        (Level::High, true) | (Level::Low, false) => PinState::High,
        (Level::High, false) | (Level::Low, true) => PinState::Low,
    }
}
