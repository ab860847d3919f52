//! Turns controller events into durable records: an audit row per event (readings go to their
//! own table), each in its own transaction together with any checkpoint that falls due, so an
//! event is on disk before the recorder returns.

use super::audit::{self, ChainKey, Entry};
use super::checkpoint::{self, Checkpoint, DeviceKey};
use super::{readings, schema, StoreError};
use crate::coldchain::monitor::MonitorEvent;
use crate::events::Event;
use chrono::{DateTime, Utc};
use rusqlite::{params, Connection, OptionalExtension};
use std::path::Path;
use std::time::Duration;

/// Version fingerprints (SHA-256 of the parsed settings) of the configuration and schedules in
/// use, for [`Recorder::record_versions`].
pub fn config_versions(
    profile: &crate::config::BoardProfile,
    coldchain: &crate::coldchain::ColdChainConfig,
    schedules: &[crate::dosing::schedule::Schedule],
) -> Vec<(String, String)> {
    let fp = |text: String| {
        audit::hex(ring::digest::digest(&ring::digest::SHA256, text.as_bytes()).as_ref())
    };
    let mut out = vec![
        ("config:board".to_string(), fp(format!("{profile:?}"))),
        ("config:coldchain".to_string(), coldchain.fingerprint()),
    ];
    for s in schedules {
        out.push((
            format!("schedule:{}", s.patient),
            crate::dosing::replace::version(s),
        ));
    }
    out
}

pub use crate::wire::Priority;
use crate::wire::{self, route};

/// A fresh identifier for this run of the process: random, so two boots never share one (a
/// process id repeats across reboots).
pub fn new_boot_id() -> String {
    use ring::rand::SecureRandom;
    let mut b = [0u8; 8];
    match ring::rand::SystemRandom::new().fill(&mut b) {
        Ok(()) => audit::hex(&b),
        Err(_) => format!("{:x}", std::process::id()),
    }
}

/// An audit row as the wire protocol sends it.
fn event_payload(
    dev: &str,
    row: &audit::Row,
    key: &ChainKey,
) -> Result<serde_json::Value, StoreError> {
    Ok(wire::event_message(
        dev,
        &wire::EventRow::of(row, key.is_keyed()),
    )?)
}

/// Queues audit rows `from..=to`, and the checkpoints signed at them, again as they were first
/// sent: same topic, priority and message id, so a receiver that has them drops the repeats.
/// FHIR resources and readings are not sent again.
fn resend(
    tx: &rusqlite::Transaction<'_>,
    dev: &str,
    key: &ChainKey,
    from: i64,
    to: i64,
) -> Result<(), StoreError> {
    for row in audit::range(tx, from, to)? {
        // A row whose body is not JSON (only a tampered store has one) is left out, not allowed
        // to fail the request's own record: a resend must never stop the recorder.
        let built = serde_json::from_str::<serde_json::Value>(&row.body)
            .map_err(StoreError::from)
            .and_then(|body| {
                Ok((
                    wire::route_row(&row.kind, &body),
                    event_payload(dev, &row, key)?,
                ))
            });
        match built {
            Ok(((priority, topic), payload)) => {
                outbox(tx, priority, &wire::topic(dev, &topic), &payload, &row.utc)?
            }
            Err(e) => tracing::warn!("audit row {} not resent: {e}", row.seq),
        }
    }
    for c in checkpoint::between(tx, from, to)? {
        let message = wire::checkpoint_message(dev, c.seq, &c);
        outbox(
            tx,
            Priority::Event,
            &wire::topic(dev, wire::CHECKPOINT),
            &message,
            &c.utc,
        )?;
    }
    Ok(())
}

/// The outbox row written in the same transaction as an event's audit row (the bench writes
/// it the same way).
pub(crate) fn outbox(
    tx: &rusqlite::Transaction<'_>,
    p: Priority,
    topic: &str,
    payload: &serde_json::Value,
    utc: &str,
) -> Result<(), StoreError> {
    tx.prepare_cached(
        "INSERT INTO outbox (priority, topic, payload, created_utc) VALUES (?1, ?2, ?3, ?4)",
    )?
    .execute(params![
        p as i64,
        topic,
        serde_json::to_string(payload)?,
        utc
    ])?;
    Ok(())
}

/// Messages waiting in the outbox.
pub fn outbox_len(conn: &Connection) -> Result<i64, StoreError> {
    Ok(super::outbox::count(conn)?)
}

/// Fridge readings held in memory for one group commit. Readings are telemetry: one commit per
/// reading (one WAL fsync a minute) was most of what the appliance wrote to its SD card, so they
/// are committed ten at a time. Anything else the recorder is given (a dose, an alarm, an
/// excursion, a door, a stop) commits the held readings first in its own transaction, so what a
/// power cut can lose is bounded: at most `READINGS_PER_COMMIT - 1` readings (nine minutes at the
/// one-minute interval), never an event, and never a reading that an event was based on.
pub const READINGS_PER_COMMIT: usize = 10;

/// Held readings are also committed once the oldest is this old in readings' own time, so a
/// slower reading interval does not stretch the bound.
pub const READINGS_HELD_AT_MOST: chrono::Duration = chrono::Duration::minutes(10);

/// Where a recorded event went.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct Recorded {
    /// Its audit sequence number (None: a reading, stored in the readings table).
    pub seq: Option<i64>,
    /// A checkpoint signed in the same transaction.
    pub checkpoint: Option<Checkpoint>,
    /// The ids of the readings this commit made durable (first, last), held ones included.
    pub readings: Option<(i64, i64)>,
    /// Nothing was committed: a reading was held for the next group commit.
    pub held: bool,
}

/// The one owner of the database connection.
pub struct Recorder {
    /// Render FHIR resources beside the medbox JSON.
    fhir: bool,
    conn: Connection,
    key: ChainKey,
    device: DeviceKey,
    boot_id: String,
    last_checkpoint: Option<(i64, DateTime<Utc>)>,
    device_id: String,
    sealer: readings::Sealer,
    /// Readings waiting for their group commit ([`READINGS_PER_COMMIT`]).
    held: Vec<crate::events::FridgeRecord>,
}

impl Drop for Recorder {
    /// A recorder dropped without its stop row (an error path) still commits held readings.
    fn drop(&mut self) {
        if !self.held.is_empty() {
            if let Err(e) = self.commit_held_alone() {
                tracing::warn!("{} held readings not stored: {e}", self.held.len());
            }
        }
    }
}

fn name<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_value(v)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

/// How an event is filed: kind, actor, subject, reason.
fn classify(e: &Event) -> (String, String, String, String) {
    let sys = |c: &str| format!("system:{c}");
    match e {
        Event::Started { .. } => (
            "system.start".into(),
            sys("controller"),
            "controller".into(),
            String::new(),
        ),
        Event::Stopped { .. } => (
            "system.stop".into(),
            sys("controller"),
            "controller".into(),
            String::new(),
        ),
        Event::Reading(_) => (
            "coldchain.reading".into(),
            sys("fridge"),
            "fridge".into(),
            String::new(),
        ),
        Event::ProbeFault { probe, fault, .. } => (
            "coldchain.probe_fault".into(),
            sys("fridge"),
            format!("probe:{}", name(probe)),
            name(fault),
        ),
        Event::ProbeRecovered { probe, .. } => (
            "coldchain.probe_recovered".into(),
            sys("fridge"),
            format!("probe:{}", name(probe)),
            String::new(),
        ),
        Event::ProbeDoubt { doubt, .. } => (
            "coldchain.probe_doubt".into(),
            sys("fridge"),
            "probes".into(),
            doubt.map_or("RESOLVED", |d| d.code()).into(),
        ),
        Event::ControlModeChanged { mode, .. } => (
            "coldchain.control_mode".into(),
            sys("fridge"),
            "compressor".into(),
            name(mode),
        ),
        Event::CarouselHomed { .. } => (
            "dispenser.homed".into(),
            sys("dispenser"),
            "carousel".into(),
            String::new(),
        ),
        Event::Dispensed { report, .. } => (
            "dispenser.test_dispense".into(),
            sys("dispenser"),
            format!("slot:{}", report.slot),
            String::new(),
        ),
        Event::StrayDrop { slot, .. } => (
            "dispenser.stray_drop".into(),
            sys("dispenser"),
            format!("slot:{slot}"),
            "STRAY_DROP".into(),
        ),
        Event::DeviceFault { device, .. } => (
            "device.fault".into(),
            sys("controller"),
            device.clone(),
            String::new(),
        ),
        Event::TrayPickup { .. } => (
            "dispenser.tray_pickup".into(),
            sys("dispenser"),
            "tray".into(),
            String::new(),
        ),
        Event::ButtonPressed { .. } => (
            "dispenser.button".into(),
            sys("dispenser"),
            "button".into(),
            String::new(),
        ),
        Event::ColdChain(m) => match m {
            MonitorEvent::ExcursionOpened { id, .. } => (
                "coldchain.excursion_opened".into(),
                sys("fridge"),
                format!("excursion:{id}"),
                String::new(),
            ),
            MonitorEvent::ExcursionClosed(x) => (
                "coldchain.excursion_closed".into(),
                sys("fridge"),
                format!("excursion:{}", x.id),
                String::new(),
            ),
            MonitorEvent::AlarmRaised { alarm, .. } => (
                "coldchain.alarm_raised".into(),
                sys("fridge"),
                format!("alarm:{}", alarm.code()),
                alarm.code().into(),
            ),
            MonitorEvent::AlarmCleared { alarm, .. } => (
                "coldchain.alarm_cleared".into(),
                sys("fridge"),
                format!("alarm:{}", alarm.code()),
                String::new(),
            ),
            MonitorEvent::DayClosed(d) => (
                "coldchain.day".into(),
                sys("fridge"),
                format!("day:{}", d.date),
                String::new(),
            ),
        },
        Event::AlarmAcknowledged {
            alarm,
            actor,
            comment,
            ..
        } => (
            "coldchain.alarm_acknowledged".into(),
            actor.clone(),
            format!("alarm:{}", alarm.code()),
            comment.clone(),
        ),
        Event::Dose {
            patient,
            medication,
            record,
            reason,
            actor,
            ..
        } => (
            format!("dose.{}", name(&record.outcome)),
            actor.clone().unwrap_or_else(|| sys("dispenser")),
            format!("patient:{patient}/medication:{medication}"),
            reason.clone().unwrap_or_default(),
        ),
        Event::DoseAlert {
            patient,
            medication,
            reason,
            ..
        } => (
            "dose.alert".into(),
            sys("dispenser"),
            format!("patient:{patient}/medication:{medication}"),
            reason.clone(),
        ),
        Event::Vital { reading, .. } => (
            "vitals.reading".into(),
            if reading.source.is_empty() {
                sys("vitals")
            } else {
                reading.source.clone()
            },
            format!("vital:{}", name(&reading.vital)),
            String::new(),
        ),
        Event::ReadingsSealed { seal, .. } => (
            crate::store::readings::SEAL_KIND.into(),
            sys("store"),
            format!("readings:{}-{}", seal.from_id, seal.to_id),
            String::new(),
        ),
        Event::Adherence { from, to, .. } => (
            "adherence.summary".into(),
            sys("dispenser"),
            format!("period:{}/{}", from.to_rfc3339(), to.to_rfc3339()),
            String::new(),
        ),
        Event::VitalAlert { reading, band, .. } => (
            "vitals.alert".into(),
            sys("vitals"),
            format!("vital:{}", name(&reading.vital)),
            band.clone(),
        ),
        Event::Integrity {
            seq,
            acknowledged,
            actor,
            ..
        } => (
            "audit.integrity".into(),
            actor.clone().unwrap_or_else(|| sys("controller")),
            format!("audit:row:{seq}"),
            if *acknowledged {
                "ACKNOWLEDGED".into()
            } else {
                "BROKEN".into()
            },
        ),
        Event::ClockTrust { trusted, actor, .. } => (
            "system.clock".into(),
            actor.clone().unwrap_or_else(|| sys("controller")),
            "clock".into(),
            if *trusted {
                "TRUSTED".into()
            } else {
                "UNTRUSTED".into()
            },
        ),
        Event::AuditResend {
            actor, from, to, ..
        } => (
            "audit.resend".into(),
            actor.clone(),
            format!("audit {from}-{to}"),
            String::new(),
        ),
        Event::CommandResult {
            command,
            ok,
            detail,
            actor,
            ..
        } => (
            "command.result".into(),
            actor.clone().unwrap_or_else(|| "unknown".into()),
            format!("command:{command}"),
            if *ok { String::new() } else { detail.clone() },
        ),
        Event::Barrier { .. } => (
            "system.barrier".into(),
            sys("controller"),
            String::new(),
            String::new(),
        ),
        Event::ScheduleReplaced { patient, actor, .. } => (
            "schedule.change".into(),
            actor.clone(),
            format!("schedule:{patient}"),
            "REPLACED".into(),
        ),
        Event::Refill { slot, actor, .. } => (
            "inventory.refill".into(),
            actor.clone(),
            format!("slot:{slot}"),
            String::new(),
        ),
        Event::StockAlert { slot, reason, .. } => (
            "inventory.alert".into(),
            sys("dispenser"),
            format!("slot:{slot}"),
            reason.clone(),
        ),
        Event::StockAcknowledged {
            slot,
            actor,
            comment,
            ..
        } => (
            "inventory.acknowledged".into(),
            actor.clone(),
            format!("slot:{slot}"),
            comment.clone(),
        ),
        Event::CommandRejected {
            command, reason, ..
        } => (
            "command.rejected".into(),
            sys("controller"),
            format!("command:{command}"),
            reason.clone(),
        ),
    }
}

fn event_time(e: &Event) -> Option<DateTime<Utc>> {
    serde_json::to_value(e)
        .ok()?
        .get("at")
        .and_then(|v| v.as_str())
        .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
        .map(|t| t.with_timezone(&Utc))
}

impl Recorder {
    /// Opens (or creates) the database and the device key. `boot_id` names this run.
    pub fn open(path: &Path, key: ChainKey, boot_id: String) -> Result<Self, StoreError> {
        Self::open_signing_with(path, key, boot_id, &checkpoint::default_key_path(path))
    }

    /// As [`Recorder::open`], with the checkpoint signing key at `signing_key` (created there on
    /// first use).
    pub fn open_signing_with(
        path: &Path,
        key: ChainKey,
        boot_id: String,
        signing_key: &Path,
    ) -> Result<Self, StoreError> {
        let conn = schema::open(path)?;
        audit::check_mode(&conn, &key)?;
        let device = DeviceKey::load_or_create_file(signing_key, &conn)?;
        let last_checkpoint = checkpoint::last(&conn)?;
        let sealer = readings::Sealer::resume(&conn)?;
        Ok(Self {
            sealer,
            conn,
            key,
            device,
            boot_id,
            last_checkpoint,
            device_id: "medbox-sim".into(),
            fhir: false,
            held: Vec::new(),
        })
    }

    /// Also renders dose outcomes and vital readings as FHIR R4 resources in the outbox.
    pub fn set_fhir(&mut self, on: bool) {
        self.fhir = on;
    }

    /// This run's boot id.
    pub fn boot_id(&self) -> &str {
        &self.boot_id
    }

    /// Records, at start, that the last run ended without its stop row (a crash, a power cut, a
    /// SIGKILL), with the last row it wrote: when it was last known alive. Returns whether it
    /// did.
    pub fn note_unclean_stop(
        &mut self,
        now: DateTime<Utc>,
        mono: Duration,
    ) -> Result<bool, StoreError> {
        if super::integrity::last_run_stopped_cleanly(&self.conn)? != Some(false) {
            return Ok(false);
        }
        let (last_seq, last_utc): (i64, String) = self.conn.query_row(
            "SELECT seq, utc FROM audit ORDER BY seq DESC LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        self.append_and_send(&Entry {
            utc: now,
            mono_ms: i64::try_from(mono.as_millis()).unwrap_or(i64::MAX),
            boot_id: self.boot_id.clone(),
            clock_trusted: true,
            actor: "system:controller".into(),
            kind: "system.unclean_stop".into(),
            subject: "system".into(),
            body: serde_json::json!({ "last_seq": last_seq, "last_utc": last_utc }),
            reason: "UNCLEAN_STOP".into(),
        })?;
        Ok(true)
    }

    /// Appends one audit row and its upstream message in one transaction (rows written outside
    /// [`Recorder::record`], at start-up).
    fn append_and_send(&mut self, entry: &Entry) -> Result<audit::Row, StoreError> {
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let row = audit::append(&tx, &self.key, entry)?;
        let (priority, topic) = route(&row.kind);
        let dev = self.device_id.clone();
        outbox(
            &tx,
            priority,
            &wire::topic(&dev, &topic),
            &event_payload(&dev, &row, &self.key)?,
            &row.utc,
        )?;
        tx.commit()?;
        Ok(row)
    }

    /// Verifies the chain before anything is rebuilt from it ([`super::integrity`]).
    pub fn integrity(&self) -> Result<Option<super::integrity::Break>, StoreError> {
        super::integrity::at_start(&self.conn, &self.key)
    }

    /// Hands back the readings held for the next group commit (storage has failed for good:
    /// they are written out with the other unrecorded events instead of being lost).
    pub fn take_held(&mut self) -> Vec<Event> {
        self.held.drain(..).map(Event::Reading).collect()
    }

    /// The connection, for queries.
    pub fn connection(&self) -> &Connection {
        &self.conn
    }

    /// Sets the device id used in outbox topics (`medbox/<device-id>/…`).
    pub fn set_device_id(&mut self, id: &str) {
        self.device_id = id.to_string();
    }

    /// Records which versions of the configuration and schedules this run uses: for each
    /// `(subject, version)` that differs from the last recorded one, an audit row
    /// `config.change` (board profile, cold-chain settings) or `schedule.change` with the old and
    /// new version, so a pharmacist can see when what changed. Returns the rows written.
    pub fn record_versions(
        &mut self,
        items: &[(String, String)],
        extra: &std::collections::BTreeMap<String, serde_json::Value>,
        actor: &str,
        now: DateTime<Utc>,
        mono: Duration,
    ) -> Result<u64, StoreError> {
        let mut written = 0;
        for (subject, version) in items {
            let kind = if subject.starts_with("schedule:") {
                "schedule.change"
            } else {
                "config.change"
            };
            let old: Option<String> = self
                .conn
                .query_row(
                    "SELECT json_extract(body, '$.new') FROM audit WHERE kind = ?1 AND subject = ?2 ORDER BY seq DESC LIMIT 1",
                    params![kind, subject],
                    |r| r.get(0),
                )
                .optional()?
                .flatten();
            // An unchanged version is not written again (a lock it carries stays in force: the
            // row that says so is still the latest).
            if old.as_deref() == Some(version.as_str()) {
                continue;
            }
            // Upstream like every other audit row.
            self.append_and_send(&Entry {
                utc: now,
                mono_ms: i64::try_from(mono.as_millis()).unwrap_or(i64::MAX),
                boot_id: self.boot_id.clone(),
                clock_trusted: true,
                actor: actor.to_string(),
                kind: kind.to_string(),
                subject: subject.clone(),
                body: {
                    let mut body = serde_json::json!({ "old": old, "new": version });
                    if let (Some(b), Some(serde_json::Value::Object(more))) =
                        (body.as_object_mut(), extra.get(subject))
                    {
                        b.extend(more.clone());
                    }
                    body
                },
                reason: if old.is_some() {
                    "CHANGED".into()
                } else {
                    "FIRST_SEEN".into()
                },
            })?;
            written += 1;
        }
        Ok(written)
    }

    /// Caps the database at `pages` pages, so a full disk can be rehearsed: the next write past
    /// it fails with SQLITE_FULL.
    pub fn limit_pages(&self, pages: u32) -> Result<(), StoreError> {
        self.conn.pragma_update(None, "max_page_count", pages)?;
        Ok(())
    }

    /// Makes one event durable; says where it went and returns any checkpoint signed with it.
    /// `now` is the wall clock when the event's own time is absent.
    pub fn record(
        &mut self,
        e: &Event,
        mono: Duration,
        clock_trusted: bool,
        now: DateTime<Utc>,
    ) -> Result<Recorded, StoreError> {
        if let Event::Barrier { .. } = e {
            return Ok(Recorded::default());
        }
        if let Event::Reading(r) = e {
            let due = self.held.len() + 1 >= READINGS_PER_COMMIT
                || self
                    .held
                    .first()
                    .is_some_and(|first| r.at - first.at >= READINGS_HELD_AT_MOST);
            if !due {
                self.held.push(r.clone());
                return Ok(Recorded {
                    held: true,
                    ..Recorded::default()
                });
            }
        }
        if let Event::Stopped { at } = e {
            if !self.held.is_empty() {
                let ids = self.commit_held_alone()?;
                self.seal_after(ids, mono, clock_trusted, now);
            }
            // A clean stop leaves no reading unsealed: any the next start finds unsealed were
            // not written by the appliance (`integrity::at_start`).
            let last: Option<i64> =
                self.conn
                    .query_row("SELECT max(id) FROM readings", [], |r| r.get(0))?;
            let from = self.sealer.sealed_to() + 1;
            if let Some(to) = last.filter(|to| *to >= from) {
                let seal = readings::seal(&self.conn, from, to)?;
                self.record(
                    &Event::ReadingsSealed { at: *at, seal },
                    mono,
                    clock_trusted,
                    now,
                )?;
                self.sealer.sealed(to);
            }
        }
        // IMMEDIATE: take the write lock at BEGIN (waiting up to the busy timeout), so a
        // concurrent writer (the uplink deleting acknowledged messages) cannot invalidate the
        // read snapshot between the head lookup and the insert.
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let at = event_time(e).unwrap_or(now);
        let mut cp = None;
        let mut seq = None;
        let dev = self.device_id.clone();
        let mut ids = insert_readings(&tx, &dev, &self.held)?;
        if let Event::Reading(r) = e {
            ids.extend(insert_readings(&tx, &dev, std::slice::from_ref(r))?);
        } else {
            let (kind, actor, subject, reason) = classify(e);
            let row = audit::append(
                &tx,
                &self.key,
                &Entry {
                    utc: at,
                    mono_ms: i64::try_from(mono.as_millis()).unwrap_or(i64::MAX),
                    boot_id: self.boot_id.clone(),
                    clock_trusted,
                    actor,
                    kind,
                    subject,
                    body: serde_json::to_value(e)?,
                    reason,
                },
            )?;
            seq = Some(row.seq);
            let (priority, topic) = wire::route_event(e, &row.kind);
            let payload = event_payload(&dev, &row, &self.key)?;
            outbox(
                &tx,
                priority,
                &wire::topic(&dev, &topic),
                &payload,
                &row.utc,
            )?;
            if let Event::AuditResend { from, to, .. } = e {
                // Up to the row before this one: the request itself has just been queued.
                resend(&tx, &dev, &self.key, *from, (*to).min(row.seq - 1))?;
            }
            if self.fhir {
                let partner = match e {
                    Event::Vital { reading, .. } => super::vitals::partner(&tx, reading)?,
                    _ => None,
                };
                if let Some((resource, body)) =
                    wire::fhir_resource(e, &dev, row.seq, partner.as_ref())
                {
                    outbox(
                        &tx,
                        Priority::Event,
                        &wire::topic(&dev, &format!("fhir/{resource}")),
                        &body,
                        &row.utc,
                    )?;
                }
            }
            // A clean stop ends with a checkpoint: the head the appliance stopped at is signed.
            if checkpoint::due(self.last_checkpoint, row.seq, at)
                || matches!(e, Event::Stopped { .. })
            {
                let c = self.device.checkpoint(&tx, row.seq, &row.hash, at)?;
                outbox(
                    &tx,
                    Priority::Event,
                    &wire::topic(&dev, wire::CHECKPOINT),
                    &wire::checkpoint_message(&dev, c.seq, &c),
                    &c.utc,
                )?;
                cp = Some(c);
            }
        }
        tx.commit()?;
        self.held.clear();
        if let Some(c) = &cp {
            self.last_checkpoint = Some((c.seq, at));
        }
        let readings = ids.first().zip(ids.last()).map(|(a, b)| (a.0, b.0));
        if let Some(c) = self.seal_after(ids, mono, clock_trusted, now) {
            cp = Some(c);
        }
        Ok(Recorded {
            seq,
            checkpoint: cp,
            readings,
            held: false,
        })
    }

    /// Commits the held readings in a transaction of their own; their ids and times.
    fn commit_held_alone(&mut self) -> Result<Vec<(i64, DateTime<Utc>)>, StoreError> {
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let ids = insert_readings(&tx, &self.device_id, &self.held)?;
        tx.commit()?;
        self.held.clear();
        Ok(ids)
    }

    /// After readings `ids` were committed: seals the unsealed ones when a seal is due, and
    /// returns the checkpoint signed with the seal's row, if any.
    fn seal_after(
        &mut self,
        ids: Vec<(i64, DateTime<Utc>)>,
        mono: Duration,
        clock_trusted: bool,
        now: DateTime<Utc>,
    ) -> Option<Checkpoint> {
        let mut due = None;
        for (id, at) in ids {
            if let Some(range) = self.sealer.stored(id, at) {
                due = Some((range, at));
            }
        }
        let ((from_id, to_id), at) = due?;
        // Its own transaction: a crash between the two only means the next seal covers
        // these readings too (seals start where the last committed one ended). A failure
        // here must not fail the reading, which is stored: the next reading tries again.
        let sealed = readings::seal(&self.conn, from_id, to_id)
            .map_err(StoreError::from)
            .and_then(|seal| {
                self.record(
                    &Event::ReadingsSealed { at, seal },
                    mono,
                    clock_trusted,
                    now,
                )
            });
        match sealed {
            Ok(r) => {
                self.sealer.sealed(to_id);
                r.checkpoint
            }
            Err(e) => {
                tracing::warn!("cannot seal readings {from_id}–{to_id}: {e}");
                None
            }
        }
    }
}

/// Inserts fridge readings with their telemetry messages; their ids and times.
fn insert_readings(
    tx: &rusqlite::Transaction<'_>,
    dev: &str,
    readings: &[crate::events::FridgeRecord],
) -> Result<Vec<(i64, DateTime<Utc>)>, StoreError> {
    let mut ids = Vec::with_capacity(readings.len());
    let topic = wire::topic(dev, wire::TELEMETRY);
    for r in readings {
        let utc = r.at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        tx.execute(
            "INSERT INTO readings (utc, vial, air, compressor_on, door_open, mains, mode, control, doubt) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            params![
                utc,
                r.vial,
                r.air,
                r.compressor_on,
                r.door_open,
                r.mains,
                name(&r.mode),
                r.control,
                r.doubt.map(|d| d.code()),
            ],
        )?;
        let rowid = tx.last_insert_rowid();
        outbox(
            tx,
            Priority::Telemetry,
            &topic,
            &wire::telemetry_message(dev, rowid, &utc, r),
            &utc,
        )?;
        ids.push((rowid, r.at));
    }
    Ok(ids)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn minute(m: i64) -> DateTime<Utc> {
        "2026-03-02T08:00:00Z".parse::<DateTime<Utc>>().unwrap() + chrono::Duration::minutes(m)
    }

    /// (priority, topic, payload) of every outbox row, oldest first.
    fn outbox_rows(conn: &Connection) -> Vec<(i64, String, String)> {
        conn.prepare("SELECT priority, topic, payload FROM outbox ORDER BY id")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    }

    #[test]
    fn a_resend_queues_the_rows_asked_for_as_first_sent_with_their_checkpoints() {
        let dir = tempfile::tempdir().unwrap();
        let mut rec =
            Recorder::open(&dir.path().join("r.db"), ChainKey::unkeyed(), "t".into()).unwrap();
        let record = |rec: &mut Recorder, e: Event, m: i64| {
            rec.record(&e, Duration::from_secs(60 * m as u64), true, minute(m))
                .unwrap()
        };
        record(&mut rec, Event::Started { at: minute(0) }, 0);
        // An answer goes to the topic its command came on: a resend must find it again.
        record(
            &mut rec,
            Event::CommandResult {
                at: minute(1),
                command: "refill".into(),
                role: Some("pharmacist".into()),
                id: Some("c-1".into()),
                actor: Some("pete".into()),
                ok: true,
                detail: "slot 1: 30 units".into(),
                duplicate: false,
                digest: None,
            },
            1,
        );
        // A clean stop signs a checkpoint at its row.
        record(&mut rec, Event::Stopped { at: minute(2) }, 2);
        let first = outbox_rows(rec.connection());
        assert!(first.iter().any(|(_, t, _)| t.ends_with("/checkpoint")));
        rec.connection().execute("DELETE FROM outbox", []).unwrap();

        // Rows 2 to 3 asked for (and more than exist: the rest is ignored).
        let asked = record(
            &mut rec,
            Event::AuditResend {
                at: minute(3),
                actor: "pete".into(),
                from: 2,
                to: 99,
            },
            3,
        );
        assert_eq!(asked.seq, Some(4));
        let again = outbox_rows(rec.connection());
        let own = format!("\"id\":\"{}:4\"", rec.device_id);
        let (request, resent): (Vec<_>, Vec<_>) =
            again.into_iter().partition(|(_, _, p)| p.contains(&own));
        assert_eq!(request.len(), 1, "the request itself is audited and sent");
        // Exactly what rows 2 and 3 and the checkpoint at 3 were first sent as (not row 1 or
        // the checkpoint at 1).
        let was_row_1 = |p: &String| {
            p.contains(&format!("\"id\":\"{}:1\"", rec.device_id))
                || p.contains(&format!("\"id\":\"{}:c1\"", rec.device_id))
        };
        let expected: Vec<_> = first
            .into_iter()
            .filter(|(_, _, p)| !was_row_1(p))
            .collect();
        let mut resent_sorted = resent.clone();
        resent_sorted.sort();
        let mut expected_sorted = expected.clone();
        expected_sorted.sort();
        assert_eq!(resent_sorted, expected_sorted);
        assert!(resent
            .iter()
            .any(|(_, t, _)| t.ends_with("/cmd/pharmacist/refill/result")));
    }

    #[test]
    fn a_row_that_cannot_be_rebuilt_is_left_out_and_the_request_is_still_recorded() {
        let dir = tempfile::tempdir().unwrap();
        let mut rec =
            Recorder::open(&dir.path().join("r.db"), ChainKey::unkeyed(), "t".into()).unwrap();
        for m in 0..3 {
            rec.record(
                &Event::Started { at: minute(m) },
                Duration::ZERO,
                true,
                minute(m),
            )
            .unwrap();
        }
        // Only a tampered store holds a body that is not JSON.
        rec.connection()
            .execute_batch(
                "DROP TRIGGER audit_no_update; UPDATE audit SET body = 'not json' WHERE seq = 2; \
                 DELETE FROM outbox;",
            )
            .unwrap();
        let asked = rec
            .record(
                &Event::AuditResend {
                    at: minute(3),
                    actor: "pete".into(),
                    from: 1,
                    to: 3,
                },
                Duration::ZERO,
                true,
                minute(3),
            )
            .unwrap();
        assert_eq!(asked.seq, Some(4));
        let ids: Vec<String> = outbox_rows(rec.connection())
            .into_iter()
            .filter_map(|(_, _, p)| {
                let v: serde_json::Value = serde_json::from_str(&p).ok()?;
                v["id"].as_str().map(str::to_string)
            })
            .collect();
        let id = |s: &str| format!("{}:{s}", rec.device_id);
        assert!(ids.contains(&id("1")) && ids.contains(&id("3")) && ids.contains(&id("4")));
        assert!(!ids.contains(&id("2")), "{ids:?}");
    }
}
