//! Boards build the devices from a profile: `sim` (always compiled) over a physical model, and
//! `rpi` (cargo feature `rpi`) over rppal. Only `rpi.rs` names rppal types.

#[cfg(feature = "rpi")]
pub mod rpi;
pub mod sim;

use crate::config::{BoardProfile, CarouselWiring};
use crate::devices::carousel::CarouselGeometry;
use crate::drivers::relay::RelayTimings;

/// Carousel geometry as the profile states it.
pub fn carousel_geometry(c: &CarouselWiring) -> CarouselGeometry {
    CarouselGeometry {
        steps_per_rev: c.steps_per_rev,
        slots: c.slots,
        step_period: c.step_period,
        pick_steps: c.pick_steps,
        drop_timeout: c.drop_timeout,
        slot_capacity: c.slot_capacity,
    }
}

/// Compressor relay timings as the profile states them.
pub fn compressor_timings(p: &BoardProfile) -> RelayTimings {
    let l = relay_limits(p);
    RelayTimings {
        min_on: l.min_on,
        min_off: l.min_off,
        max_on: l.max_on,
    }
}

/// The same limits, as the cold chain cross-checks them against its own settings.
pub fn relay_limits(p: &BoardProfile) -> crate::coldchain::config::RelayLimits {
    let c = &p.fridge.compressor;
    crate::coldchain::config::RelayLimits {
        min_on: c.min_on,
        min_off: c.min_off,
        max_on: c.max_on,
    }
}
