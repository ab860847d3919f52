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
use rumqttc::{AsyncClient, Event, EventLoop, Packet, PubAck, Publish, QoS, Request};
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
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
    /// How often to look for audit rows the archive lacks and ask their appliances for them
    /// ([`crate::repair::run`]; the broker must grant this identity the pharmacist role's
    /// command topics). None: only `medbox-fleet repair` asks.
    pub repair_every: Option<Duration>,
    /// Counts the messages this collector has finished with (stored, already held, refused or
    /// quarantined) as it acknowledges them: how a supervisor or a bench watches progress
    /// without counting the archive's rows.
    pub progress: Option<Arc<AtomicU64>>,
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
    /// Messages PostgreSQL refused for their content, kept in `quarantine` and acknowledged.
    pub quarantined: u64,
}

/// The subscription of a collector group.
pub fn subscription(group: &str) -> String {
    format!("$share/{group}/medbox/#")
}

/// Most messages stored in one transaction (one WAL flush for the lot).
pub const BATCH: usize = 100;

/// Collects until `stop` completes.
pub async fn collect(
    cfg: &CollectConfig,
    stop: impl Future<Output = ()>,
) -> anyhow::Result<CollectStats> {
    run(cfg, stop, None).await
}

/// Takes a collector out of its group for good, losing nothing: under its name it leaves the
/// shared subscription (so the broker hands it no new share), stores what the broker had queued
/// for it until nothing has come for `idle`, then removes its session.
///
/// The broker keeps handing a collector's session its share of the group's messages while it is
/// away; a collector simply no longer started would have that share wait for it until
/// `max_queued_messages`, stored by nobody.
pub async fn retire(cfg: &CollectConfig, idle: Duration) -> anyhow::Result<CollectStats> {
    let stats = run(cfg, std::future::pending(), Some(idle)).await?;
    forget_session(cfg).await?;
    Ok(stats)
}

/// The MQTT client id of a collector.
pub fn client_id(name: &str) -> String {
    format!("medbox-fleet-{name}")
}

/// The broker connection of a collector, under its own client id.
fn options(cfg: &CollectConfig) -> anyhow::Result<rumqttc::MqttOptions> {
    Ok(medbox::uplink::broker_options(
        &cfg.mqtt,
        &client_id(&cfg.name),
        None,
        cfg.credentials.as_ref(),
    )?)
}

/// Connects once under the collector's id with a clean session, which makes the broker drop
/// the session it kept (its subscriptions and anything still queued), and leaves.
async fn forget_session(cfg: &CollectConfig) -> anyhow::Result<()> {
    let mut opts = options(cfg)?;
    opts.set_clean_session(true);
    let (client, mut eventloop) = AsyncClient::new(opts, 4);
    loop {
        match tokio::time::timeout(ACK_TIMEOUT, eventloop.poll()).await {
            Ok(Ok(Event::Incoming(Packet::ConnAck(_)))) => {
                client.try_disconnect()?;
            }
            Ok(Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect))) => return Ok(()),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => anyhow::bail!("removing the session of {}: {e}", cfg.name),
            Err(_) => anyhow::bail!("removing the session of {}: no answer", cfg.name),
        }
    }
}

/// Collects until `stop` completes, or, retiring (`Some(idle)`), leaves the group and stops once
/// nothing more has come for `idle` after the broker confirmed it.
async fn run(
    cfg: &CollectConfig,
    stop: impl Future<Output = ()>,
    retiring: Option<Duration>,
) -> anyhow::Result<CollectStats> {
    let mut archive = Archive::connect(&cfg.pg, cfg.schema.as_deref()).await?;
    let mut opts = options(cfg)?;
    opts.set_clean_session(false);
    opts.set_manual_acks(true);
    // Long enough that a PINGRESP queued behind a backlog of publishes does not drop the link.
    opts.set_keep_alive(Duration::from_secs(60));
    opts.set_max_packet_size(256 * 1024, 256 * 1024);
    let (client, mut eventloop) = AsyncClient::new(opts, 64);
    let mut stats = CollectStats::default();
    // Ends with the collector (dropped at any return).
    let _repair = cfg.repair_every.map(|every| {
        AbortOnDrop(tokio::spawn(crate::repair::run(
            cfg.pg.clone(),
            cfg.schema.clone(),
            cfg.mqtt.clone(),
            cfg.credentials.clone(),
            every,
        )))
    });
    tokio::pin!(stop);
    // Retiring: when it last stored something, once the broker confirmed it left the group.
    let mut quiet_since: Option<tokio::time::Instant> = None;
    loop {
        let done_retiring = async {
            match (retiring, quiet_since) {
                (Some(idle), Some(t)) => tokio::time::sleep_until(t + idle).await,
                _ => std::future::pending().await,
            }
        };
        let ev = tokio::select! {
            _ = &mut stop => break,
            _ = done_retiring => break,
            ev = eventloop.poll() => ev,
        };
        match ev {
            Ok(Event::Incoming(Packet::ConnAck(_))) if retiring.is_some() => {
                // What the session has queued still comes after this; nothing new does.
                client.try_unsubscribe(subscription(&cfg.group))?;
            }
            Ok(Event::Incoming(Packet::UnsubAck(_))) => {
                quiet_since = Some(tokio::time::Instant::now());
            }
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
                // What the same read already brought in is stored with it, in one
                // transaction: nothing is waited for, so a collector that keeps up still
                // stores each message as it comes, and one catching up commits in batches.
                let mut batch = vec![p];
                while batch.len() < BATCH {
                    match eventloop.state.events.front() {
                        Some(Event::Incoming(Packet::Publish(_))) => {}
                        _ => break,
                    }
                    if let Some(Event::Incoming(Packet::Publish(p))) =
                        eventloop.state.events.pop_front()
                    {
                        batch.push(p);
                    }
                }
                tokio::select! {
                    _ = &mut stop => break,
                    s = store_until_done(&mut archive, &batch, &mut stats) => s?,
                };
                if let Err(e) = acknowledge(&mut eventloop, &batch).await {
                    tracing::warn!("mqtt: {e} while acknowledging; reconnecting");
                    forget_connection(&mut eventloop);
                    quiet_since = None;
                    continue;
                }
                if let Some(done) = &cfg.progress {
                    done.fetch_add(batch.len() as u64, Ordering::Relaxed);
                }
                if quiet_since.is_some() {
                    quiet_since = Some(tokio::time::Instant::now());
                }
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!("mqtt: {e}; reconnecting");
                forget_connection(&mut eventloop);
                // Retiring: the next connection leaves the group again before it counts.
                quiet_since = None;
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

/// Writes the PUBACKs of a committed batch straight onto the connection, in one flush.
///
/// Handing them to the client's request queue instead costs one turn of the event loop each,
/// while one turn of reading brings in a whole read's worth of messages: under a backlog the
/// acknowledgements fell ever further behind (a collector held 180 000 of them after two
/// minutes), the broker kept every one of those messages, and both grew without bound.
async fn acknowledge(eventloop: &mut EventLoop, batch: &[Publish]) -> anyhow::Result<()> {
    let Some(network) = eventloop.network.as_mut() else {
        // The connection is gone: the broker sends all of it again on the next one.
        return Ok(());
    };
    let write = async {
        for p in batch {
            let ack = Request::PubAck(PubAck::new(p.pkid));
            if let Some(packet) = eventloop.state.handle_outgoing_packet(ack)? {
                network.write(packet).await?;
            }
        }
        network.flush().await?;
        anyhow::Ok(())
    };
    tokio::time::timeout(ACK_TIMEOUT, write)
        .await
        .map_err(|_| anyhow::anyhow!("no room to write acknowledgements for {ACK_TIMEOUT:?}"))?
}

/// How long writing a batch's acknowledgements may take before the connection counts as dead.
const ACK_TIMEOUT: Duration = Duration::from_secs(10);

/// Drops what belongs to a dead connection. Nothing read on it may be acknowledged on the next
/// one: a packet id acknowledged there may by then name another message, which would be dropped
/// unstored. The broker sends every unacknowledged message again.
fn forget_connection(eventloop: &mut EventLoop) {
    eventloop.clean();
    eventloop.state.events.clear();
    eventloop
        .pending
        .retain(|r| !matches!(r, Request::PubAck(_)));
}

/// A task that ends when its owner does.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Whether PostgreSQL refused a statement for the data it was given (SQLSTATE classes 22, data
/// exception, and 23, integrity constraint violation): sending the same message again would
/// fail again. Anything else (a lost connection, a deadlock, a full disk, a restart) may pass,
/// and is retried.
pub fn refused_for_content(e: &ArchiveError) -> bool {
    match e {
        ArchiveError::Pg(pg) => pg
            .code()
            .is_some_and(|c| c.code().starts_with("22") || c.code().starts_with("23")),
        _ => false,
    }
}

/// Stores a batch (refusing what cannot be read), retrying while the database fails; then it
/// may be acknowledged. A batch refused for its content is stored message by message, and a
/// message refused on its own goes to `quarantine`, so one bad message never holds up the rest.
async fn store_until_done(
    archive: &mut Archive,
    batch: &[Publish],
    stats: &mut CollectStats,
) -> Result<(), ArchiveError> {
    let mut readable = Vec::with_capacity(batch.len());
    for p in batch {
        match ingest::parse(&p.topic, &p.payload) {
            Ok(m) => readable.push((p, m)),
            Err(refused) => {
                tracing::warn!("refused: {refused}");
                stats.refused += 1;
            }
        }
    }
    match store_retrying(archive, &readable, stats).await {
        Err(e) if refused_for_content(&e) && readable.len() > 1 => {
            for one in &readable {
                match store_retrying(archive, std::slice::from_ref(one), stats).await {
                    Err(e) if refused_for_content(&e) => {
                        quarantine(archive, one.0, &e, stats).await?
                    }
                    other => other?,
                }
            }
            Ok(())
        }
        Err(e) if refused_for_content(&e) => quarantine(archive, readable[0].0, &e, stats).await,
        other => other,
    }
}

/// Keeps a message PostgreSQL refused, with why, retrying while the database fails.
async fn quarantine(
    archive: &mut Archive,
    p: &Publish,
    e: &ArchiveError,
    stats: &mut CollectStats,
) -> Result<(), ArchiveError> {
    let why = e.to_string();
    tracing::error!("quarantined a message on {}: {why}", p.topic);
    let mut backoff = Duration::from_millis(200);
    loop {
        match archive
            .client()
            .execute(
                "INSERT INTO quarantine (topic, payload, error) VALUES ($1, $2, $3)",
                &[&p.topic, &&p.payload[..], &why],
            )
            .await
        {
            Ok(_) => {
                stats.quarantined += 1;
                return Ok(());
            }
            Err(e) if e.is_closed() => return Err(e.into()),
            Err(e) => {
                stats.retries += 1;
                tracing::warn!("cannot quarantine: {e}; retrying in {backoff:?}");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
        }
    }
}

/// Stores parsed messages in one transaction, retrying what may pass; returns an error the
/// content caused.
async fn store_retrying(
    archive: &mut Archive,
    readable: &[(&Publish, ingest::Message)],
    stats: &mut CollectStats,
) -> Result<(), ArchiveError> {
    let items: Vec<(&str, &ingest::Message, &[u8])> = readable
        .iter()
        .map(|(p, m)| (p.topic.as_str(), m, &p.payload[..]))
        .collect();
    let mut backoff = Duration::from_millis(200);
    loop {
        match archive.store_batch(&items).await {
            Ok(all) => {
                for ((_, msg, _), s) in items.iter().zip(&all) {
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
                }
                return Ok(());
            }
            Err(e) if refused_for_content(&e) => return Err(e),
            Err(e) => {
                if matches!(e, ArchiveError::Pg(ref pg) if pg.is_closed()) {
                    // The connection is gone: nothing to retry on. The messages stay
                    // unacknowledged; the supervisor restarts the collector and the broker
                    // sends them again.
                    return Err(e);
                }
                stats.retries += 1;
                tracing::warn!(
                    "cannot store {} messages: {e}; retrying in {backoff:?}",
                    items.len()
                );
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
        }
    }
}
