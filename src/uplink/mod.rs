//! The MQTT uplink: drains the SQLite outbox to the broker with QoS 1, in order within each
//! priority (alarms first), deleting a message only after the broker's PUBACK.
//!
//! The outbox is written by the recorder in the same transaction as the audit row, so a broker
//! outage of days loses nothing: the backlog waits on disk and drains at full speed on reconnect.
//! The event loop is owned by this one task, polled continuously, and reconnects with a capped
//! exponential backoff (rumqttc alone would reconnect at once, forever). The session is clean:
//! rumqttc's in-flight queue is memory-only, so after every reconnect we resend whatever the
//! outbox still holds; a message whose PUBACK was lost may arrive twice, and receivers
//! de-duplicate by its `id`. A retained `status` of `online` is published on every connect, and
//! the broker publishes the Last Will `offline` when the connection dies.
//!
//! The uplink runs on its own real-time runtime thread (tokio's paused time, which drives the
//! simulation, must not be mixed with real sockets). It reads and deletes outbox rows by asking
//! the recorder's owner task ([`OutboxSource::Owner`]), so one task owns the connection; only a
//! process without a recorder lets it open the file itself ([`OutboxSource::File`]).

pub mod tls;
pub mod window;

use crate::store::outbox::{OutboxError, OutboxHandle, OutboxRequest};
use rumqttc::{
    AsyncClient, ConnectionError, Event, EventLoop, LastWill, MqttOptions, Outgoing, Packet, QoS,
};
use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::time::Duration;
use thiserror::Error;
use tokio::sync::watch;
use window::{Carried, Window};

/// The uplink could not start.
#[derive(Debug, Error)]
pub enum UplinkError {
    /// The broker URL is not `mqtt://host:port` or `mqtts://host:port`.
    #[error("broker URL {0:?}: expected mqtt://host:port or mqtts://host:port")]
    Url(String),
    /// TLS material is missing or wrong.
    #[error("TLS: {0}")]
    Tls(String),
    /// The outbox could not be read.
    #[error("outbox: {0}")]
    Outbox(#[from] OutboxError),
}

/// Where the uplink finds the outbox.
#[derive(Clone, Debug)]
pub enum OutboxSource {
    /// The database file, opened by the uplink: only where no recorder runs in this process.
    File(PathBuf),
    /// The recorder's owner task, which answers between two records.
    Owner(tokio::sync::mpsc::Sender<OutboxRequest>),
}

/// Where and as whom to connect.
#[derive(Clone, Debug)]
pub struct UplinkConfig {
    /// `mqtt://host:port`.
    pub url: String,
    /// Device id: the topic level and the MQTT client id.
    pub device_id: String,
    /// Where the outbox is.
    pub outbox: OutboxSource,
    /// Most unacknowledged publishes at once.
    pub max_inflight: usize,
    /// Keep-alive (the Last Will fires about 1.5× this after the link dies).
    pub keep_alive: Duration,
    /// Where inbound commands (`cmd/<role>/<name>`) go; None: not subscribed.
    pub commands: Option<tokio::sync::mpsc::Sender<crate::controller::commands::Inbound>>,
    /// TLS material (required by `mqtts://`).
    pub tls: Option<tls::TlsFiles>,
    /// Username and password (there are no defaults).
    pub credentials: Option<(String, String)>,
    /// Whether the network path to the broker exists (a simulated outage sets it false); None:
    /// always.
    pub link: Option<watch::Receiver<bool>>,
    /// Notified each time the recorder commits (an outbox row among what it wrote), so an
    /// alarm leaves at once instead of at the next look; None: the outbox is looked at every
    /// [`IDLE_LOOK`].
    pub wake: Option<std::sync::Arc<tokio::sync::Notify>>,
}

/// How often an idle uplink looks at the outbox when nobody tells it of new rows.
pub const IDLE_LOOK: Duration = Duration::from_millis(100);
/// How often it looks anyway when the recorder tells it of every commit (a safety net only).
pub const IDLE_LOOK_WOKEN: Duration = Duration::from_secs(1);

impl UplinkConfig {
    /// Defaults for a device and broker, with the outbox in the database file `db`.
    pub fn new(url: &str, device_id: &str, db: &Path) -> Self {
        Self::with_outbox(url, device_id, OutboxSource::File(db.to_path_buf()))
    }

    /// Defaults for a device and broker, with the outbox where `outbox` says.
    pub fn with_outbox(url: &str, device_id: &str, outbox: OutboxSource) -> Self {
        Self {
            url: url.to_string(),
            device_id: device_id.to_string(),
            outbox,
            max_inflight: 50,
            keep_alive: Duration::from_secs(5),
            commands: None,
            tls: None,
            credentials: None,
            link: None,
            wake: None,
        }
    }
}

/// What the uplink did.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct UplinkStats {
    /// Messages acknowledged by the broker (and deleted from the outbox).
    pub acked: u64,
    /// Connections made.
    pub connects: u64,
    /// Connection attempts that failed.
    pub failures: u64,
    /// Times the network path went away under a live connection (simulated outages).
    pub outages: u64,
    /// Messages still in the outbox when it stopped.
    pub left: i64,
}

/// Host, port and whether TLS is asked for.
fn parse_url(url: &str) -> Result<(String, u16, bool), UplinkError> {
    let (rest, tls, default_port) =
        match (url.strip_prefix("mqtt://"), url.strip_prefix("mqtts://")) {
            (Some(r), _) => (r, false, 1883),
            (_, Some(r)) => (r, true, 8883),
            _ => return Err(UplinkError::Url(url.to_string())),
        };
    let rest = rest.trim_end_matches('/');
    let (host, port) = match rest.rsplit_once(':') {
        Some((h, p)) => (h, p.parse().map_err(|_| UplinkError::Url(url.to_string()))?),
        None => (rest, default_port),
    };
    if host.is_empty() {
        return Err(UplinkError::Url(url.to_string()));
    }
    Ok((host.to_string(), port, tls))
}

/// Connection options for `url` (`mqtt://` or `mqtts://` with `tls`), as `client_id`, with
/// optional username and password: the same for the appliance and for a tool that talks to it.
pub fn broker_options(
    url: &str,
    client_id: &str,
    tls: Option<&tls::TlsFiles>,
    credentials: Option<&(String, String)>,
) -> Result<MqttOptions, UplinkError> {
    let (host, port, wants_tls) = parse_url(url)?;
    let mut opts = MqttOptions::new(client_id, host, port);
    match (wants_tls, tls) {
        (true, Some(files)) => {
            let config = tls::client_config(files).map_err(UplinkError::Tls)?;
            opts.set_transport(rumqttc::Transport::tls_with_config(
                rumqttc::TlsConfiguration::Rustls(config),
            ));
        }
        (true, None) => {
            return Err(UplinkError::Tls(
                "mqtts:// needs a CA file (--mqtt-ca / [mqtt] ca_file)".into(),
            ))
        }
        (false, Some(_)) => {
            return Err(UplinkError::Tls(
                "TLS files given for a plain mqtt:// URL: use mqtts://".into(),
            ))
        }
        (false, None) => {}
    }
    if let Some((user, password)) = credentials {
        opts.set_credentials(user.clone(), password.clone());
    }
    Ok(opts)
}

/// How the uplink should end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopMode {
    /// Keep running.
    Run,
    /// Stop once the outbox is empty (or `give_up` passed without a connection).
    Drain,
    /// Stop now.
    Now,
}

/// Runs the uplink until `stop` says so.
pub async fn run(
    mut cfg: UplinkConfig,
    mut stop: watch::Receiver<StopMode>,
    give_up: Duration,
) -> Result<UplinkStats, UplinkError> {
    let outbox = match &cfg.outbox {
        OutboxSource::File(path) => OutboxHandle::open(path)?,
        OutboxSource::Owner(tx) => OutboxHandle::Served(tx.clone()),
    };
    let status = crate::wire::topic(&cfg.device_id, crate::wire::STATUS);
    let mut opts = broker_options(
        &cfg.url,
        &cfg.device_id,
        cfg.tls.as_ref(),
        cfg.credentials.as_ref(),
    )?;
    opts.set_keep_alive(cfg.keep_alive);
    opts.set_clean_session(true);
    // Accept packets far past the command limit, so an oversized command gets a reasoned
    // refusal (PAYLOAD_TOO_LARGE) instead of tearing the connection down; the shipped broker
    // config caps packets well below this.
    opts.set_max_packet_size(MAX_INCOMING, 256 * 1024);
    opts.set_last_will(LastWill::new(&status, "offline", QoS::AtLeastOnce, true));
    let mut window = Window::new(cfg.max_inflight, ANSWERS_IN_FLIGHT);
    // The window is the flow control: the client never holds back what it let through.
    opts.set_inflight(window.capacity());
    let (client, mut eventloop) = AsyncClient::new(opts, usize::from(window.capacity()) + 8);
    // We batch on our own; Nagle would hold a lone alarm, and each top-up's last publishes,
    // until the broker's delayed ACK (tens of milliseconds).
    let mut network = eventloop.network_options();
    network.set_tcp_nodelay(true);
    eventloop.set_network_options(network);
    let mut stats = UplinkStats::default();
    let mut connected = false;
    let mut backoff = Duration::from_millis(500);
    let mut busy_answers: VecDeque<(String, Vec<u8>)> = VecDeque::new();
    // Read ahead of the window, in outbox order, not yet published: each acknowledgement frees
    // a place that is filled from here at once, without a trip to the database.
    let mut ahead: VecDeque<crate::store::outbox::OutboxRow> = VecDeque::new();
    // The recorder committed something (perhaps an alarm) since the last look.
    let mut woken = false;
    // Acknowledged by the broker, not yet deleted (see `delete`).
    let mut acked: Vec<i64> = Vec::new();
    // What the connection yielded while the outbox was being asked (see `while_polling`),
    // handled before the connection is polled again.
    let mut held: VecDeque<Result<Event, ConnectionError>> = VecDeque::new();
    let started = tokio::time::Instant::now();
    let wake = cfg.wake.clone();
    let idle_look = if wake.is_some() {
        IDLE_LOOK_WOKEN
    } else {
        IDLE_LOOK
    };
    let mut outbox_retry_at = started;
    loop {
        let mode = *stop.borrow();
        if mode == StopMode::Now {
            break;
        }
        let outbox_usable = tokio::time::Instant::now() >= outbox_retry_at;
        if mode == StopMode::Drain && window.rows() == 0 && outbox_usable && held.is_empty() {
            let left = while_polling(
                outbox.exchange(&mut acked, 0, true),
                &mut eventloop,
                &mut held,
            )
            .await
            .map(|x| x.waiting.unwrap_or(0));
            let Some(left) = tolerate(left)? else {
                outbox_retry_at = tokio::time::Instant::now() + Duration::from_secs(1);
                continue;
            };
            if left == 0 || (!connected && started.elapsed() > give_up) {
                break;
            }
        }
        if let Some(link) = cfg.link.as_mut() {
            // A change seen while up means a whole outage passed between two looks: the switch
            // only ever alternates, so drop the connection for it too.
            let changed = link.has_changed().unwrap_or(false);
            let up = *link.borrow_and_update();
            if !up || changed {
                if eventloop.network.is_some() {
                    // The path is gone: drop the socket without a DISCONNECT, as a dead router
                    // would, so the broker publishes the Last Will. Nothing is lost: whatever
                    // was in flight is still in the outbox and goes again after reconnecting.
                    eventloop.clean();
                    forget_connection(&mut eventloop);
                    stats.outages += 1;
                }
                held.clear();
                connected = false;
                window.forget();
                ahead.clear();
            }
            if !up {
                let switch_gone = tokio::select! {
                    r = link.changed() => r.is_err(),
                    _ = stop.changed() => false,
                    _ = tokio::time::sleep(Duration::from_millis(100)) => false,
                };
                if switch_gone {
                    // Whoever simulated the outage is gone: the path is back for good.
                    cfg.link = None;
                }
                continue;
            }
        }
        // Read ahead in batches: acknowledged rows are deleted first (one transaction for the
        // lot), so the query never hands back a message that was already delivered. A new
        // commit (an alarm overtakes everything) or a read-ahead running low asks again; the
        // answer, in outbox order, replaces what was read ahead.
        if connected
            && outbox_usable
            && held.is_empty()
            && (woken || ahead.len() < cfg.max_inflight / 2)
        {
            woken = false;
            let rows = while_polling(
                outbox.exchange(&mut acked, cfg.max_inflight * 2, false),
                &mut eventloop,
                &mut held,
            )
            .await
            .map(|x| x.rows);
            match tolerate(rows)? {
                // Rows already in flight come back too and are skipped.
                Some(rows) => ahead = rows.into_iter().filter(|r| !window.has_row(r.id)).collect(),
                // Storage is failing: keep polling the connection, ask again in a while.
                None => outbox_retry_at = tokio::time::Instant::now() + Duration::from_secs(1),
            }
        }
        // BUSY answers first: they are the oldest promise, and nothing else holds them.
        if connected {
            while let Some((topic, answer)) = busy_answers.pop_front() {
                if !send(
                    &client,
                    &mut window,
                    Carried::Answer,
                    &topic,
                    &answer,
                    false,
                ) {
                    busy_answers.push_front((topic, answer));
                    break;
                }
            }
        }
        // Fill the window: after each acknowledgement, one more goes out.
        while connected && !window.rows_full() {
            let Some(row) = ahead.pop_front() else {
                break;
            };
            if window.has_row(row.id) {
                continue;
            }
            let what = Carried::Row(row.id);
            if !send(
                &client,
                &mut window,
                what,
                &row.topic,
                row.payload.as_bytes(),
                false,
            ) {
                ahead.push_front(row);
                break;
            }
        }
        // A connection being made is not interrupted for a commit or a look at the outbox:
        // dropping `poll` mid-connect drops a connection the broker has already accepted, so it
        // publishes the Last Will (`offline`) for an appliance that is fine, and a stream of
        // commits could keep it from ever connecting.
        let linked = eventloop.network.is_some();
        let polled = match held.pop_front() {
            Some(ev) => Some(ev),
            None => tokio::select! {
                biased;
                _ = stop.changed() => None,
                ev = eventloop.poll() => Some(ev),
                _ = async { wake.as_deref()?.notified().await; Some(()) }, if wake.is_some() && linked => {
                    woken = true;
                    None
                }
                _ = tokio::time::sleep(idle_look), if window.rows() == 0 && linked => None,
            },
        };
        if let Some(ev) = polled {
            match ev {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    connected = true;
                    stats.connects += 1;
                    backoff = Duration::from_millis(500);
                    // Whatever the last connection left behind (its acknowledgements among it)
                    // names ids of that connection, not of this one.
                    forget_connection(&mut eventloop);
                    window.forget();
                    ahead.clear();
                    // Subscribed before `online` goes out: the broker handles a connection's
                    // packets in order, so whoever sees `online` can send commands at once.
                    if cfg.commands.is_some() {
                        for t in crate::wire::subscriptions(&cfg.device_id) {
                            let _ = client.try_subscribe(t, QoS::AtLeastOnce);
                        }
                    }
                    send(
                        &client,
                        &mut window,
                        Carried::Status,
                        &status,
                        b"online",
                        true,
                    );
                }
                Ok(Event::Outgoing(Outgoing::Publish(pkid))) => window.bound(pkid),
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    if let (Some(inbound), Some(tx)) =
                        (inbound(&cfg.device_id, &p.topic, &p.payload), &cfg.commands)
                    {
                        let (name, role) = (inbound.name.clone(), inbound.role.clone());
                        if tx.try_send(inbound).is_err() {
                            // Every command is answered, even one the appliance cannot take in
                            // (published before the next outbox top-up; bounded).
                            if let Some(role) = role {
                                if busy_answers.len() < MAX_BUSY_ANSWERS {
                                    busy_answers.push_back(crate::wire::busy_answer(
                                        &cfg.device_id,
                                        &role,
                                        &name,
                                        &p.payload,
                                    ));
                                }
                                tracing::warn!("command {role}/{name} answered BUSY: the appliance's command queue is full");
                            }
                        }
                    }
                }
                Ok(Event::Incoming(Packet::PubAck(ack))) => {
                    if let Some(Carried::Row(id)) = window.acknowledged(ack.pkid) {
                        acked.push(id);
                        stats.acked += 1;
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!("mqtt: {e}; retrying in {backoff:?}");
                    connected = false;
                    stats.failures += 1;
                    forget_connection(&mut eventloop);
                    window.forget();
                    ahead.clear();
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = stop.changed() => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(60));
                }
            }
        }
    }
    if connected {
        // A clean disconnect does not fire the Last Will, so say `offline` first, then leave.
        send(
            &client,
            &mut window,
            Carried::Status,
            &status,
            b"offline",
            true,
        );
        let _ = client.try_disconnect();
        // Until the DISCONNECT is on the wire (after `offline`: the broker handles a
        // connection's packets in order), and no longer: polling on would reconnect.
        let _ = tokio::time::timeout(Duration::from_secs(1), async {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Outgoing(Outgoing::Disconnect)) | Err(_) => break,
                    Ok(_) => {}
                }
            }
        })
        .await;
    }
    stats.left = outbox
        .exchange(&mut acked, 0, true)
        .await?
        .waiting
        .unwrap_or(0);
    Ok(stats)
}

/// Awaits `work` (an answer from the outbox's owner) while polling the live connection, so
/// keep-alive goes on: the recorder answers between two records, and one stuck in a slow
/// fsync for longer than 1.5× the keep-alive would otherwise leave the link silent until the
/// broker took it for dead and published the Last Will `offline` for an appliance that is
/// fine. What the connection yields meanwhile is kept, in order, for the main loop: a PUBACK
/// must not touch `acked` while the exchange holds it. A connection not yet made is left
/// alone (dropping `poll` mid-connect costs an accepted connection), and so is one that just
/// failed (polling again would reconnect at once, past the backoff).
async fn while_polling<T>(
    work: impl std::future::Future<Output = T>,
    eventloop: &mut EventLoop,
    held: &mut VecDeque<Result<Event, ConnectionError>>,
) -> T {
    tokio::pin!(work);
    loop {
        let live = eventloop.network.is_some()
            && held.len() < MAX_HELD_EVENTS
            && !held.back().is_some_and(|ev| ev.is_err());
        tokio::select! {
            biased;
            out = &mut work => return out,
            ev = eventloop.poll(), if live => held.push_back(ev),
        }
    }
}

/// Hands a QoS 1 publish of `what` to the client if the window has room for it; its packet id
/// is bound when the client writes it (`Outgoing::Publish`). False: not sent.
fn send(
    client: &AsyncClient,
    window: &mut Window,
    what: Carried,
    topic: &str,
    payload: &[u8],
    retain: bool,
) -> bool {
    if !window.reserve(what) {
        return false;
    }
    if client
        .try_publish(topic, QoS::AtLeastOnce, retain, payload.to_vec())
        .is_err()
    {
        window.unreserve();
        return false;
    }
    true
}

/// Drops what the event loop still holds from a connection that is gone: queued requests (the
/// outbox sends them again), buffered events (an `Outgoing::Publish` among them would be paired
/// with a publish of the new connection, an acknowledgement would name an id of the old one)
/// and a publish held back for a packet id.
fn forget_connection(eventloop: &mut EventLoop) {
    eventloop.pending.clear();
    eventloop.state.events.clear();
    eventloop.state.collision = None;
}

/// A storage error on the outbox is waited out (the recorder locks the dispenser and raises
/// the alarm for it); only an owner that stopped answering ends the uplink.
fn tolerate<T>(result: Result<T, OutboxError>) -> Result<Option<T>, UplinkError> {
    match result {
        Ok(v) => Ok(Some(v)),
        Err(OutboxError::Sqlite(e)) => {
            tracing::warn!("outbox: {e}; asking again");
            Ok(None)
        }
        Err(e) => Err(e.into()),
    }
}

/// An uplink on its own thread and real-time runtime.
pub struct UplinkThread {
    stop: watch::Sender<StopMode>,
    handle: std::thread::JoinHandle<Result<UplinkStats, UplinkError>>,
    /// Closed when the thread is about to end, so an async owner can wait for it.
    finished: tokio::sync::oneshot::Receiver<()>,
}

impl UplinkThread {
    /// Starts the uplink (after checking the URL and TLS files, so a mistake fails now).
    pub fn spawn(cfg: UplinkConfig, give_up: Duration) -> Result<Self, UplinkError> {
        let (_, _, wants_tls) = parse_url(&cfg.url)?;
        if let (true, Some(files)) = (wants_tls, &cfg.tls) {
            tls::client_config(files).map_err(UplinkError::Tls)?;
        }
        let (stop, rx) = watch::channel(StopMode::Run);
        let (done, finished) = tokio::sync::oneshot::channel();
        let handle = std::thread::Builder::new()
            .name("uplink".into())
            .spawn(move || {
                let _done = done;
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| UplinkError::Url(e.to_string()))?;
                rt.block_on(run(cfg, rx, give_up))
            })
            .map_err(|e| UplinkError::Url(format!("cannot start the uplink thread: {e}")))?;
        Ok(Self {
            stop,
            handle,
            finished,
        })
    }

    /// Asks it to drain the outbox (or give up) and waits for it, answering its outbox
    /// requests on `conn` meanwhile: for an owner whose serving loop has already ended.
    pub async fn drain_serving(
        mut self,
        conn: &rusqlite::Connection,
        requests: &mut crate::store::outbox::OutboxRequests,
    ) -> Result<UplinkStats, UplinkError> {
        let _ = self.stop.send(StopMode::Drain);
        loop {
            tokio::select! {
                _ = &mut self.finished => break,
                req = requests.recv() => match req {
                    Some(req) => req.answer(conn),
                    None => break,
                },
            }
        }
        self.drain()
    }

    /// Asks it to drain the outbox (or give up) and waits for it.
    pub fn drain(self) -> Result<UplinkStats, UplinkError> {
        let _ = self.stop.send(StopMode::Drain);
        self.handle
            .join()
            .unwrap_or_else(|_| Err(UplinkError::Url("uplink thread panicked".into())))
    }
}

/// Largest packet the uplink takes in: far above the command limit
/// ([`crate::controller::commands::MAX_PAYLOAD`]), so an oversized command is refused with a
/// reason rather than costing the connection.
pub const MAX_INCOMING: usize = 8 * 1024 * 1024;

/// Most BUSY answers held for publishing at once (each a few hundred bytes).
const MAX_BUSY_ANSWERS: usize = 10_000;
/// Most connection events held while the outbox is asked (a window's acknowledgements and a
/// burst of commands fit many times over); past it, polling waits for the answer.
const MAX_HELD_EVENTS: usize = 4096;
/// BUSY answers unacknowledged at once.
const ANSWERS_IN_FLIGHT: usize = 16;

/// A message on a subscribed topic as the command router takes it (the wire protocol decides
/// what is a command and under which role).
fn inbound(dev: &str, topic: &str, payload: &[u8]) -> Option<crate::controller::commands::Inbound> {
    use crate::controller::commands::{Inbound, VITALS_IN};
    let (name, role) = match crate::wire::inbound(dev, topic)? {
        crate::wire::Inbound::Reading => (VITALS_IN.to_string(), None),
        crate::wire::Inbound::Command { role, name } => (name, Some(role)),
    };
    Some(Inbound {
        name,
        role,
        payload: payload.to_vec(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broker_urls_are_checked() {
        assert_eq!(
            parse_url("mqtt://127.0.0.1:1883").unwrap(),
            ("127.0.0.1".into(), 1883, false)
        );
        assert_eq!(
            parse_url("mqtt://broker").unwrap(),
            ("broker".into(), 1883, false)
        );
        assert_eq!(
            parse_url("mqtts://broker").unwrap(),
            ("broker".into(), 8883, true)
        );
        assert!(parse_url("http://x:1").is_err());
        assert!(parse_url("mqtt://:1").is_err());
    }
}
