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

/// Keeps an appliance running in real time (answering commands) until the sender is used or
/// dropped.
pub fn run_live(
    opts: medbox::sim::SimOptions,
) -> (
    std::thread::JoinHandle<()>,
    tokio::sync::oneshot::Sender<()>,
) {
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let handle = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(medbox::sim::run(
            opts,
            medbox::sim::Speed::Factor(1.0),
            async {
                let _ = stopped.await;
            },
        ))
        .expect("live appliance");
    });
    (handle, stop)
}

/// Waits (bounded: thirty seconds) until `device` has said `online` on the broker at `url`: it
/// subscribes to its commands before saying so, so a command sent now is taken.
pub async fn wait_online(url: &str, device: &str) {
    let port: u16 = url
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("port");
    let mut opts = rumqttc::MqttOptions::new(format!("{device}-online-probe"), "127.0.0.1", port);
    opts.set_keep_alive(std::time::Duration::from_secs(5));
    let (client, mut events) = rumqttc::AsyncClient::new(opts, 10);
    client
        .subscribe(
            medbox::wire::topic(device, medbox::wire::STATUS),
            rumqttc::QoS::AtLeastOnce,
        )
        .await
        .expect("subscribe");
    let online = async {
        loop {
            match events.poll().await {
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p)))
                    if p.payload.as_ref() == b"online" =>
                {
                    return
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(std::time::Duration::from_millis(100)).await,
            }
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(30), online)
        .await
        .unwrap_or_else(|_| panic!("{device} never said online"));
    let _ = client.disconnect().await;
}
