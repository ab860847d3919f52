//! What the fleet's tests share: the PostgreSQL they use, a schema of each test's own, and a
//! simulated appliance. Each test file uses part of it.
#![allow(dead_code)]

/// The PostgreSQL the tests use (`.ci/prerequisites` starts one with trust auth).
pub fn pg() -> String {
    std::env::var("MEDBOX_FLEET_PG")
        .unwrap_or_else(|_| "host=127.0.0.1 user=postgres dbname=test".into())
}

/// A schema no other test or run uses.
pub fn fresh_schema(what: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("fleet_test_{what}_{}_{nanos}", std::process::id())
}

/// A whole simulated appliance (shipped board and schedules, a household taking its doses)
/// publishing to `url`, its database in `dir`; it runs until stopped unless a duration is set.
pub fn appliance_options(
    url: &str,
    device: &str,
    seed: u64,
    dir: &std::path::Path,
) -> medbox::sim::SimOptions {
    let (profile, schedules) = medbox::sim::shipped().expect("shipped defaults");
    medbox::sim::SimOptions {
        db: Some(dir.join(format!("{device}.db"))),
        mqtt: Some(url.into()),
        device_id: device.into(),
        schedules,
        seed: Some(seed),
        household: Some(Default::default()),
        ..medbox::sim::SimOptions::plain(profile, None)
    }
}

/// Runs `opts` for `secs` simulated seconds as fast as it goes (paused tokio time), and checks
/// that everything it recorded reached the broker.
pub fn run_fast(mut opts: medbox::sim::SimOptions, secs: u64) {
    let device = opts.device_id.clone();
    opts.duration = Some(std::time::Duration::from_secs(secs));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .expect("runtime");
    let summary = rt
        .block_on(medbox::sim::run(
            opts,
            medbox::sim::Speed::Max,
            std::future::pending(),
        ))
        .expect("simulation");
    let up = summary.uplink.expect("uplink stats");
    assert_eq!(up.left, 0, "{device}: everything reached the broker");
}
