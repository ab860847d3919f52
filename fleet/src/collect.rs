//! `medbox-fleet collect`: takes every appliance's messages from the broker through a shared
//! subscription (`$share/<group>/medbox/#`: collectors in one group split the load) and stores
//! each in the archive before acknowledging it.
//!
//! Acknowledgements are manual: a message is PUBACKed only after its transaction committed, so
//! a collector killed mid-way leaves its unacknowledged messages with the broker, which sends
//! them again (the session is kept: `clean_session = false`); the archive's keys make the second
//! delivery change nothing. While the database is down the collector retries the message it
//! holds and takes no more: the broker's in-flight window is the back-pressure.

use crate::archive::{Archive, ArchiveError};
use crate::ingest;
use rumqttc::{AsyncClient, Event, Packet, Publish, QoS};
use std::future::Future;
use std::time::Duration;

/// Where to collect from and into.
#[derive(Clone, Debug)]
pub struct CollectConfig {
    /// Broker (`mqtt://host:port` or `mqtts://…`).
    pub mqtt: String,
    /// Broker credentials.
    pub credentials: Option<(String, String)>,
    /// PostgreSQL connection string.
    pub pg: String,
    /// Schema (None: the connection's default).
    pub schema: Option<String>,
    /// Shared-subscription group: collectors in one group split the messages.
    pub group: String,
    /// This collector's name: its MQTT client id, so a restart resumes its session and gets
    /// back what it had not acknowledged.
    pub name: String,
    /// Told each time the broker confirms the subscription (tests wait for it).
    pub subscribed: Option<tokio::sync::mpsc::UnboundedSender<()>>,
}

/// What a run did.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct CollectStats {
    /// Messages stored for the first time.
    pub stored: u64,
    /// Messages that were already stored (redeliveries).
    pub duplicates: u64,
    /// Messages refused (malformed, or naming another device), acknowledged and logged.
    pub refused: u64,
    /// Witness findings.
    pub findings: u64,
    /// Database failures retried.
    pub retries: u64,
}

/// The subscription of a collector group.
pub fn subscription(group: &str) -> String {
    format!("$share/{group}/medbox/#")
}

/// Collects until `stop` completes.
pub async fn collect(
    cfg: &CollectConfig,
    stop: impl Future<Output = ()>,
) -> anyhow::Result<CollectStats> {
    let mut archive = Archive::connect(&cfg.pg, cfg.schema.as_deref()).await?;
    let mut opts = medbox::uplink::broker_options(
        &cfg.mqtt,
        &format!("medbox-fleet-{}", cfg.name),
        None,
        cfg.credentials.as_ref(),
    )?;
    opts.set_clean_session(false);
    opts.set_manual_acks(true);
    opts.set_keep_alive(Duration::from_secs(10));
    opts.set_max_packet_size(256 * 1024, 256 * 1024);
    let (client, mut eventloop) = AsyncClient::new(opts, 64);
    let mut stats = CollectStats::default();
    // Acknowledgements of committed messages not yet handed to the client: this task also
    // polls the event loop, so it must never wait on the client's full request queue.
    let mut acks: std::collections::VecDeque<Publish> = Default::default();
    tokio::pin!(stop);
    loop {
        while let Some(p) = acks.front() {
            if client.try_ack(p).is_err() {
                break;
            }
            acks.pop_front();
        }
        let ev = tokio::select! {
            _ = &mut stop => break,
            ev = eventloop.poll() => ev,
        };
        match ev {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                // A resumed session already has the subscription; asking again is harmless
                // (and says when it is in place).
                client.try_subscribe(subscription(&cfg.group), QoS::AtLeastOnce)?;
            }
            Ok(Event::Incoming(Packet::SubAck(_))) => {
                if let Some(tx) = &cfg.subscribed {
                    let _ = tx.send(());
                }
            }
            Ok(Event::Incoming(Packet::Publish(p))) => {
                tokio::select! {
                    _ = &mut stop => break,
                    s = store_until_done(&mut archive, &p, &mut stats) => s?,
                };
                acks.push_back(p);
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!("mqtt: {e}; reconnecting");
                tokio::select! {
                    _ = &mut stop => break,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        }
    }
    let _ = client.try_disconnect();
    Ok(stats)
}

/// Stores one message (or refuses it), retrying while the database fails; then it may be
/// acknowledged.
async fn store_until_done(
    archive: &mut Archive,
    p: &Publish,
    stats: &mut CollectStats,
) -> Result<(), ArchiveError> {
    let msg = match ingest::parse(&p.topic, &p.payload) {
        Ok(m) => m,
        Err(refused) => {
            tracing::warn!("refused: {refused}");
            stats.refused += 1;
            return Ok(());
        }
    };
    let mut backoff = Duration::from_millis(200);
    loop {
        match archive.store(&p.topic, &msg, &p.payload).await {
            Ok(s) => {
                if s.new {
                    stats.stored += 1;
                } else {
                    stats.duplicates += 1;
                }
                for f in &s.findings {
                    tracing::error!(
                        "witness: {} {}: {}",
                        msg.device().unwrap_or("?"),
                        f.code(),
                        f.detail()
                    );
                }
                stats.findings += s.findings.len() as u64;
                return Ok(());
            }
            Err(e) => {
                if matches!(e, ArchiveError::Pg(ref pg) if pg.is_closed()) {
                    // The connection is gone: nothing to retry on. The message stays
                    // unacknowledged; the supervisor restarts the collector and the broker
                    // sends it again.
                    return Err(e);
                }
                stats.retries += 1;
                tracing::warn!("cannot store {}: {e}; retrying in {backoff:?}", p.topic);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
        }
    }
}
