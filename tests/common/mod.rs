//! Shared harness: run the whole appliance on the simulated board, on paused tokio time.

#![allow(dead_code)]

use medbox::board::sim::{self, SimHandle};
use medbox::clock::SimClock;
use medbox::config::BoardProfile;
use medbox::scenario::Scenario;
use medbox::sim::{SimOptions, SimSummary, Speed};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// A current-thread runtime with paused time: simulated days pass in seconds, deterministically.
pub fn paused_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .expect("runtime")
}

/// The shipped simulated profile.
pub fn profile() -> BoardProfile {
    BoardProfile::default_sim().expect("shipped hw/sim.toml is valid")
}

/// Runs the appliance for `days` with an optional scenario file from `hw/scenarios/`.
pub fn run_days(days: f64, scenario: Option<&str>) -> SimSummary {
    let scenario = scenario.map(|name| {
        Scenario::load(
            &Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("hw/scenarios")
                .join(name),
        )
        .expect("shipped scenario is valid")
    });
    run_with(days, scenario, None)
}

/// Options for `days` on the shipped profile with nothing else: tests override what they need.
pub fn options(days: f64) -> SimOptions {
    SimOptions {
        keep_records: true,
        keep_checkpoints: true,
        device_id: "medbox-test".into(),
        ..SimOptions::plain(profile(), Some(Duration::from_secs_f64(days * 86_400.0)))
    }
}

/// The shipped example schedules, as `medbox sim` runs them by default.
pub fn shipped_schedules() -> Vec<medbox::dosing::schedule::Schedule> {
    medbox::dosing::schedule::DEFAULT_SCHEDULES
        .iter()
        .map(|(n, s)| medbox::dosing::schedule::Schedule::parse(s, Path::new(n)).unwrap())
        .collect()
}

/// `days` of a shipped scenario with the shipped schedules, recorded into `db`.
pub fn recording(db: &Path, scenario: &str, days: f64) -> SimOptions {
    SimOptions {
        scenario: Some(
            Scenario::load(
                &Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("hw/scenarios")
                    .join(scenario),
            )
            .expect("shipped scenario is valid"),
        ),
        keep_records: false,
        db: Some(db.to_path_buf()),
        schedules: shipped_schedules(),
        ..options(days)
    }
}

/// Runs the appliance with `opts` on paused time.
pub fn run(opts: SimOptions) -> SimSummary {
    paused_runtime()
        .block_on(medbox::sim::run(opts, Speed::Max, std::future::pending()))
        .expect("simulation runs")
}

/// Runs the appliance for `days` with a scenario and seed.
pub fn run_with(days: f64, scenario: Option<Scenario>, seed: Option<u64>) -> SimSummary {
    run(SimOptions {
        scenario,
        seed,
        ..options(days)
    })
}

/// Builds the simulated board alone (no controller), for physics tests. The caller must stay
/// inside `rt` (`let _time = rt.enter();`) so that only simulated time passes.
pub fn board(
    rt: &tokio::runtime::Runtime,
    profile: &BoardProfile,
) -> (
    medbox::devices::FridgeDevices,
    medbox::devices::DispenserDevices,
    SimHandle,
) {
    let _guard = rt.enter();
    let start = profile.sim.as_ref().expect("sim model").start;
    let clock = Arc::new(SimClock::new(start, 1.0));
    sim::build(profile, clock).expect("board builds")
}
