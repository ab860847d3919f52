//! medbox: the controller of a home-care appliance that is a medication dispenser and a
//! vaccine fridge in one cabinet.
//!
//! Layers (data flows down, commands flow up):
//!
//! - [`appliance`]: the one start-up, serving and shutdown path of `run` and `sim`.
//! - [`bench`]: benchmark figures (`medbox bench`).
//! - [`config`]: strict board profiles (`hw/*.toml`) and the appliance config.
//! - [`board`]: builds devices from a profile: `sim` (a physical model below the drivers) or
//!   `rpi` (cargo feature `rpi`).
//! - [`drivers`]: embedded-hal 1.0 drivers (TMP117, DS18B20, steppers, relay, inputs, indicators).
//! - [`devices`]: the small traits the controller sees (`Thermometer`, `Compressor`, `Carousel`…).
//! - [`dosing`]: pure dosing cores: schedules, occurrences with daylight-saving rules, the engine.
//! - [`coldchain`]: pure cores for the fridge: validation, thermostat, statistics.
//! - [`clock`]: the injected clock (system or simulated).
//! - [`controller`]: tokio tasks that wire devices and cores; safe states on shutdown.
//! - [`events`]: what the appliance reports.
//! - [`report`]: the printable HTML report for pharmacists.
//! - [`scenario`] and [`sim`]: the simulated appliance (`medbox sim`).
//! - [`store`]: SQLite: migrations, the hash-chained audit log, signed checkpoints, readings.
//! - [`supervise`]: what systemd is told (ready, an earned watchdog ping, status, stopping).
//! - [`units`]: typed physical units.
//! - [`uplink`]: MQTT store-and-forward from the outbox.
#![deny(missing_docs)]
#![forbid(unsafe_code)]

pub mod appliance;
pub mod bench;
pub mod bench_uplink;
pub mod board;
pub mod clock;
pub mod coldchain;
pub mod config;
pub mod controller;
pub mod devices;
pub mod dosing;
pub mod drivers;
pub mod events;
pub mod refusal;
pub mod remote;
pub mod report;
pub mod scenario;
pub mod sim;
pub mod store;
pub mod supervise;
pub mod units;
pub mod uplink;
pub mod wire;
