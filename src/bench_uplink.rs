//! `medbox bench uplink`: the outbox drain against a bare rumqttc QoS 1 publish loop over the
//! same messages, in one run against one broker (a ratio, so the machine's speed cancels out),
//! and the latency from an alarm's commit to the outbox to its arrival at a subscriber, with a
//! backlog draining and with none. Figures, not assertions.

use crate::uplink::{OutboxSource, UplinkConfig, UplinkThread};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use rusqlite::{params, Connection};
use serde::Serialize;
use std::path::Path;
use std::time::{Duration, Instant};

/// Uplink benchmark figures.
#[derive(Clone, Debug, Serialize)]
pub struct UplinkBench {
    /// Messages in the backlog.
    pub messages: usize,
    /// Their total payload bytes.
    pub bytes: usize,
    /// Outbox drain: messages per second (publish, PUBACK, delete per message).
    pub drain_per_s: f64,
    /// Bare rumqttc QoS 1 loop over the same messages: messages per second.
    pub bare_per_s: f64,
    /// drain / bare.
    pub ratio: f64,
    /// The broker measured against (its own settings, such as `set_tcp_nodelay`, move the
    /// latency figures; `docs/mosquitto/medbox.conf` is the shipped configuration).
    pub broker: String,
    /// Alarms timed in each condition.
    pub alarms: usize,
    /// Alarm commit → subscriber while a backlog drains: median and 99th percentile (ms).
    pub alarm_backlog_p50_ms: f64,
    /// See `alarm_backlog_p50_ms`.
    pub alarm_backlog_p99_ms: f64,
    /// Alarm commit → subscriber with nothing else to send: median and 99th percentile (ms).
    pub alarm_idle_p50_ms: f64,
    /// See `alarm_idle_p50_ms`.
    pub alarm_idle_p99_ms: f64,
}

/// The `q`-quantile (0–1) of `samples`, nearest rank.
fn quantile(samples: &[f64], q: f64) -> f64 {
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

type Rows = Vec<(i64, String, String)>;

fn outbox(conn: &Connection) -> Result<Rows, rusqlite::Error> {
    conn.prepare("SELECT priority, topic, payload FROM outbox ORDER BY priority, id")?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
        .collect()
}

fn refill(conn: &Connection, rows: &Rows) -> Result<(), rusqlite::Error> {
    let tx = conn.unchecked_transaction()?;
    for (p, t, pl) in rows {
        tx.execute(
            "INSERT INTO outbox (priority, topic, payload, created_utc) VALUES (?1, ?2, ?3, '')",
            params![p, t, pl],
        )?;
    }
    tx.commit()
}

fn broker(url: &str) -> anyhow::Result<(String, u16)> {
    let rest = url
        .strip_prefix("mqtt://")
        .ok_or_else(|| anyhow::anyhow!("bench uplink needs mqtt://host:port"))?;
    let (h, p) = rest.rsplit_once(':').unwrap_or((rest, "1883"));
    Ok((h.to_string(), p.parse()?))
}

/// Publishes every row with QoS 1, at most `inflight` unacknowledged; returns messages per
/// second.
async fn bare(url: &str, rows: &Rows, inflight: u16) -> anyhow::Result<f64> {
    let (host, port) = broker(url)?;
    let mut opts = MqttOptions::new(format!("bench-bare-{}", std::process::id()), host, port);
    opts.set_inflight(inflight);
    opts.set_max_packet_size(256 * 1024, 256 * 1024);
    let (client, mut ev) = AsyncClient::new(opts, usize::from(inflight) * 2);
    let t0 = Instant::now();
    let publisher = {
        let client = client.clone();
        let rows = rows.clone();
        tokio::spawn(async move {
            for (_, topic, payload) in rows {
                if client
                    .publish(topic, QoS::AtLeastOnce, false, payload)
                    .await
                    .is_err()
                {
                    break;
                }
            }
        })
    };
    let mut acked = 0;
    while acked < rows.len() {
        match tokio::time::timeout(Duration::from_secs(30), ev.poll()).await {
            Ok(Ok(Event::Incoming(Packet::PubAck(_)))) => acked += 1,
            Ok(Ok(_)) => {}
            Ok(Err(e)) => anyhow::bail!("bare loop: {e}"),
            Err(_) => anyhow::bail!("bare loop: no progress for 30 s"),
        }
    }
    let per_s = rows.len() as f64 / t0.elapsed().as_secs_f64();
    publisher.abort();
    let _ = client.try_disconnect();
    Ok(per_s)
}

/// Subscribes to the alarm topic, then `n` times commits an alarm into the outbox, tells the
/// uplink as the recorder does, and times the alarm from the commit to its arrival.
async fn alarm_latencies(
    url: &str,
    conn: &Connection,
    device: &str,
    wake: &tokio::sync::Notify,
    n: usize,
) -> anyhow::Result<Vec<f64>> {
    let (host, port) = broker(url)?;
    let mut opts = MqttOptions::new(format!("bench-sub-{}", std::process::id()), host, port);
    opts.set_max_packet_size(256 * 1024, 256 * 1024);
    let (client, mut ev) = AsyncClient::new(opts, 100);
    let topic = format!("medbox/{device}/events/alarm");
    client.subscribe(&topic, QoS::AtLeastOnce).await?;
    loop {
        match tokio::time::timeout(Duration::from_secs(10), ev.poll()).await {
            Ok(Ok(Event::Incoming(Packet::SubAck(_)))) => break,
            Ok(Ok(_)) => {}
            _ => anyhow::bail!("subscriber could not subscribe"),
        }
    }
    let mut samples = Vec::with_capacity(n);
    for i in 0..n {
        let marker = format!("bench-alarm-{}-{i}", std::process::id());
        conn.execute(
            "INSERT INTO outbox (priority, topic, payload, created_utc) VALUES (0, ?1, ?2, '')",
            params![topic, serde_json::json!({"schema": "medbox.event.v1", "id": marker, "kind": "coldchain.alarm_raised"}).to_string()],
        )?;
        // Committed (autocommit): the clock starts here, as the recorder's commit would start it.
        let t0 = Instant::now();
        wake.notify_one();
        loop {
            match tokio::time::timeout(Duration::from_secs(30), ev.poll()).await {
                Ok(Ok(Event::Incoming(Packet::Publish(p)))) => {
                    if String::from_utf8_lossy(&p.payload).contains(&marker) {
                        samples.push(t0.elapsed().as_secs_f64() * 1000.0);
                        break;
                    }
                }
                Ok(Ok(_)) => {}
                _ => anyhow::bail!("alarm {i} never arrived"),
            }
        }
    }
    let _ = client.try_disconnect();
    let _ = tokio::time::timeout(Duration::from_millis(200), ev.poll()).await;
    Ok(samples)
}

/// Runs `work` while answering the uplink's outbox requests on `conn`, as the recorder's task
/// does between two records.
async fn serving<T>(
    conn: &Connection,
    requests: &mut crate::store::outbox::OutboxRequests,
    work: impl std::future::Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<T> {
    tokio::pin!(work);
    loop {
        tokio::select! {
            out = &mut work => return out,
            Some(req) = requests.recv() => req.answer(conn),
        }
    }
}

/// Runs the benchmark on the outbox of `db` (a simulated week, written by the caller).
pub fn uplink(url: &str, db: &Path, device: &str) -> anyhow::Result<UplinkBench> {
    let conn = Connection::open(db)?;
    conn.busy_timeout(Duration::from_secs(5))?;
    let rows = outbox(&conn)?;
    anyhow::ensure!(!rows.is_empty(), "the outbox is empty: nothing to measure");
    let bytes = rows.iter().map(|r| r.2.len()).sum();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    // Every step reads the outbox as the appliance does: the uplink asks the connection's
    // owner (here this thread, answering on `conn` while it waits).
    let (owner, mut requests) = crate::store::outbox::channel();
    let wake = std::sync::Arc::new(tokio::sync::Notify::new());
    let spawn = || {
        let mut cfg = UplinkConfig::with_outbox(url, device, OutboxSource::Owner(owner.clone()));
        cfg.wake = Some(wake.clone());
        UplinkThread::spawn(cfg, Duration::from_secs(10))
    };
    // 1. The outbox drain.
    let t0 = Instant::now();
    let stats = rt.block_on(spawn()?.drain_serving(&conn, &mut requests))?;
    anyhow::ensure!(
        stats.left == 0,
        "{} messages were not delivered",
        stats.left
    );
    let drain_per_s = rows.len() as f64 / t0.elapsed().as_secs_f64();
    // 2. The same messages, bare.
    let bare_per_s = rt.block_on(bare(url, &rows, 50))?;
    // 3. Alarm latency: with the backlog back in the outbox and draining, then idle.
    const ALARMS: usize = 100;
    let mut latencies = |backlog: bool| -> anyhow::Result<Vec<f64>> {
        if backlog {
            refill(&conn, &rows)?;
        }
        let up = spawn()?;
        let ms = rt.block_on(serving(&conn, &mut requests, async {
            // Connected (and, idle, with nothing left to send) before the first alarm.
            tokio::time::sleep(Duration::from_millis(if backlog { 300 } else { 1500 })).await;
            alarm_latencies(url, &conn, device, &wake, ALARMS).await
        }))?;
        rt.block_on(up.drain_serving(&conn, &mut requests))?;
        Ok(ms)
    };
    let backlog = latencies(true)?;
    let idle = latencies(false)?;
    Ok(UplinkBench {
        messages: rows.len(),
        bytes,
        drain_per_s,
        bare_per_s,
        ratio: drain_per_s / bare_per_s,
        broker: url.to_string(),
        alarms: ALARMS,
        alarm_backlog_p50_ms: quantile(&backlog, 0.5),
        alarm_backlog_p99_ms: quantile(&backlog, 0.99),
        alarm_idle_p50_ms: quantile(&idle, 0.5),
        alarm_idle_p99_ms: quantile(&idle, 0.99),
    })
}
