//! The cold chain: pure, I/O-free cores that keep vaccines at 2–8 °C and prove it.
//!
//! - [`config`]: every threshold, with the defaults the README's "The cold chain" lists
//!   (CDC/WHO ranges, WHO PQS alarm delays), overridable per appliance.
//! - [`validate`]: probe validation; a rejected reading becomes a probe fault, never an excursion.
//! - [`arbiter`]: which probe to believe when the two disagree, from physical evidence.
//! - [`response`]: whether the cabinet answers the compressor (a dead or welded relay).
//! - [`control`]: the thermostat with compressor protection and the fail-safe duty cycle.
//!
//! Each core takes the monotonic time and its inputs and returns decisions and the next deadline;
//! the fridge task in the controller does the I/O.

pub mod analysis;
pub mod arbiter;
pub mod config;
pub mod control;
pub mod mkt;
pub mod monitor;
pub mod readings_csv;
pub mod response;
pub mod stats;
pub mod validate;

pub use config::ColdChainConfig;
pub use control::{ControlInput, ControlMode, Thermostat};
pub use validate::{ProbeFaultKind, ProbeValidator, Verdict};
