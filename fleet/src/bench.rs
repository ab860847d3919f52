//! `medbox-fleet bench`: how fast collectors take a fleet's backlog into PostgreSQL. A figure,
//! never an assertion.
//!
//! One simulated appliance runs for the given hours with its uplink off, so its outbox holds
//! exactly what it would have published; that backlog is published again under N device ids
//! (topics and message ids rewritten) as fast as the broker takes it, while the collectors
//! store it into a schema of the bench's own. The clock runs from the first publish until the
//! archive holds every audit row, reading and checkpoint of every device.
//!
//! The publisher keeps at most `max_queued` messages published and not yet stored: one
//! Mosquitto holds its queue in memory (≈ 0.9 kB a message) and, past what it can carry, stops
//! answering or drops what it already acknowledged. Unbounded, the figure would be the broker's
//! collapse, not the collectors' rate. The bound stands for appliances that come back after an
//! outage at the pace the fleet's broker is sized for.

use crate::archive::Archive;
use crate::collect::{collect, CollectConfig};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The template device's id in the backlog.
const TEMPLATE: &str = "bench-template";

/// What was measured.
#[derive(Debug, serde::Serialize)]
pub struct IngestBench {
    /// Devices.
    pub devices: usize,
    /// Simulated hours per device.
    pub hours: u64,
    /// Collectors sharing the subscription.
    pub collectors: usize,
    /// Messages published.
    pub messages: usize,
    /// The most messages the publisher let wait in the broker (published, not yet stored).
    pub max_queued: usize,
    /// The most it found waiting when it looked.
    pub peak_queued: u64,
    /// Rows the archive held at the end (audit rows, readings, checkpoints).
    pub rows: i64,
    /// From the first publish to the last row stored.
    pub seconds: f64,
    /// Messages stored per second.
    pub per_s: f64,
    /// The broker.
    pub broker: String,
}

/// Settings.
pub struct BenchConfig {
    /// Broker (None: a private one with the fleet settings).
    pub mqtt: Option<String>,
    /// PostgreSQL.
    pub pg: String,
    /// Devices.
    pub devices: usize,
    /// Hours each.
    pub hours: u64,
    /// Collectors.
    pub collectors: usize,
    /// Most messages published and not yet stored.
    pub max_queued: usize,
}

/// The template device's backlog: (topic, payload) in outbox order, and the rows it makes.
fn backlog(hours: u64) -> anyhow::Result<(Vec<(String, String)>, i64)> {
    backlog_of(TEMPLATE, hours)
}

/// As [`backlog`], for a device called `device`.
pub(crate) fn backlog_of(device: &str, hours: u64) -> anyhow::Result<(Vec<(String, String)>, i64)> {
    let dir = tempfile::tempdir()?;
    let db = dir.path().join("template.db");
    let (profile, schedules) = medbox::sim::shipped().map_err(anyhow::Error::msg)?;
    let opts = medbox::sim::SimOptions {
        db: Some(db.clone()),
        device_id: device.into(),
        schedules,
        seed: Some(1),
        household: Some(Default::default()),
        ..medbox::sim::SimOptions::plain(profile, Some(Duration::from_secs(hours * 3600)))
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()?;
    rt.block_on(medbox::sim::run(
        opts,
        medbox::sim::Speed::Max,
        std::future::pending(),
    ))?;
    let conn = medbox::store::schema::open_read_only(&db)?;
    let rows = medbox::store::outbox::batch(&conn, usize::MAX)?
        .into_iter()
        .map(|r| (r.topic, r.payload))
        .collect();
    let count = |sql: &str| -> anyhow::Result<i64> { Ok(conn.query_row(sql, [], |r| r.get(0))?) };
    let stored = count("SELECT count(*) FROM audit")?
        + count("SELECT count(*) FROM readings")?
        + count("SELECT count(*) FROM checkpoints")?;
    Ok((rows, stored))
}

/// Rows the archive holds.
async fn rows(a: &Archive) -> anyhow::Result<i64> {
    Ok(a.client()
        .query_one(
            "SELECT (SELECT count(*) FROM audit_rows) + (SELECT count(*) FROM readings) \
             + (SELECT count(*) FROM checkpoints)",
            &[],
        )
        .await?
        .get(0))
}

/// Runs the bench.
pub async fn ingest(cfg: &BenchConfig) -> anyhow::Result<IngestBench> {
    let hours = cfg.hours;
    let (template, per_device) = tokio::task::spawn_blocking(move || backlog(hours)).await??;
    let private = match &cfg.mqtt {
        Some(_) => None,
        None => Some(crate::broker::PrivateBroker::start()?),
    };
    let url = match (&cfg.mqtt, &private) {
        (Some(u), _) => u.clone(),
        (None, Some(b)) => b.url(),
        (None, None) => anyhow::bail!("no broker"),
    };
    let schema = format!("fleet_bench_{}", std::process::id());
    let archive = Archive::connect(&cfg.pg, Some(&schema)).await?;
    let group = format!("bench{}", std::process::id());
    let mut stops = Vec::new();
    let mut runs = Vec::new();
    let done = Arc::new(AtomicU64::new(0));
    for i in 0..cfg.collectors {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (tx, mut subscribed) = tokio::sync::mpsc::unbounded_channel();
        let c = CollectConfig {
            mqtt: url.clone(),
            credentials: None,
            pg: cfg.pg.clone(),
            schema: Some(schema.clone()),
            group: group.clone(),
            name: format!("{group}-{i}"),
            subscribed: Some(tx),
            repair_every: None,
            progress: Some(done.clone()),
        };
        runs.push(tokio::spawn(async move {
            collect(&c, async {
                let _ = stopped.await;
            })
            .await
        }));
        subscribed
            .recv()
            .await
            .ok_or_else(|| anyhow::anyhow!("collector {i} stopped before subscribing"))?;
        stops.push(stop);
    }
    let want = per_device * cfg.devices as i64;
    let messages = template.len() * cfg.devices;
    let (host, port) = url
        .strip_prefix("mqtt://")
        .and_then(|r| r.rsplit_once(':'))
        .ok_or_else(|| anyhow::anyhow!("bench needs mqtt://host:port"))?;
    let mut opts = MqttOptions::new(format!("{group}-publisher"), host, port.parse::<u16>()?);
    opts.set_inflight(100);
    opts.set_max_packet_size(256 * 1024, 256 * 1024);
    let (client, mut ev) = AsyncClient::new(opts, 200);
    let t0 = Instant::now();
    let publisher = {
        let client = client.clone();
        let devices = cfg.devices;
        let done = done.clone();
        // A device's backlog goes in whole, so the bound leaves room for one.
        let room = cfg.max_queued.saturating_sub(template.len()).max(1) as u64;
        tokio::spawn(async move {
            let mut published = 0u64;
            let mut peak = 0u64;
            for d in 0..devices {
                loop {
                    let waiting = published.saturating_sub(done.load(Ordering::Relaxed));
                    peak = peak.max(waiting);
                    if waiting <= room {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                let id = format!("bench-{d:04}");
                for (topic, payload) in &template {
                    let topic = topic.replace(&format!("/{TEMPLATE}/"), &format!("/{id}/"));
                    let payload = payload.replace(&format!("\"{TEMPLATE}:"), &format!("\"{id}:"));
                    if client
                        .publish(topic, QoS::AtLeastOnce, false, payload)
                        .await
                        .is_err()
                    {
                        return peak;
                    }
                    published += 1;
                }
            }
            peak
        })
    };
    let mut acked = 0;
    while acked < messages {
        match tokio::time::timeout(Duration::from_secs(60), ev.poll()).await {
            Ok(Ok(Event::Incoming(Packet::PubAck(_)))) => acked += 1,
            Ok(Ok(_)) => {}
            Ok(Err(e)) => anyhow::bail!("publisher: {e}"),
            Err(_) => anyhow::bail!("publisher: no progress for 60 s"),
        }
    }
    let peak_queued = publisher.await?;
    // Counting the archive's rows takes a while at a million; the collectors' own count says
    // when it is worth doing.
    let mut last_change = Instant::now();
    let mut seen = 0;
    while done.load(Ordering::Relaxed) < messages as u64 {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let now = done.load(Ordering::Relaxed);
        if now != seen {
            seen = now;
            last_change = Instant::now();
        } else if last_change.elapsed() > Duration::from_secs(60) {
            anyhow::bail!("the collectors stopped at {seen} of {messages} messages");
        }
    }
    let mut held = rows(&archive).await?;
    let mut last_change = Instant::now();
    while held < want {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = rows(&archive).await?;
        if now != held {
            last_change = Instant::now();
            held = now;
        } else if last_change.elapsed() > Duration::from_secs(60) {
            anyhow::bail!("the archive stopped at {held} of {want} rows");
        }
    }
    let seconds = t0.elapsed().as_secs_f64();
    for s in stops {
        let _ = s.send(());
    }
    for r in runs {
        r.await??;
    }
    let _ = archive
        .client()
        .batch_execute(&format!("DROP SCHEMA {schema} CASCADE"))
        .await;
    Ok(IngestBench {
        devices: cfg.devices,
        hours: cfg.hours,
        collectors: cfg.collectors,
        messages,
        max_queued: cfg.max_queued,
        peak_queued,
        rows: held,
        seconds,
        per_s: messages as f64 / seconds,
        broker: if private.is_some() {
            format!("{url} (private, docs/mosquitto/fleet.conf)")
        } else {
            url
        },
    })
}
