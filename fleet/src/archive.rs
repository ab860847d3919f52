//! The fleet archive in PostgreSQL: every message stored once in its own transaction, with the
//! witness's checks made under a per-device lock in the same transaction, so what the
//! collector acknowledges to the broker is committed and checked.

use crate::ingest::{EventMsg, Message, ReadingMsg};
use crate::witness::{self, AroundRow, Finding, Hashes};
use chrono::{DateTime, Datelike, Utc};
use medbox::store::checkpoint::Checkpoint;
use std::collections::HashSet;
use thiserror::Error;
use tokio_postgres::{Client, NoTls, Statement, Transaction};

mod embedded {
    refinery::embed_migrations!("migrations");
}

/// The archive failed.
#[derive(Debug, Error)]
pub enum ArchiveError {
    /// PostgreSQL.
    #[error("postgres: {0}")]
    Pg(#[from] tokio_postgres::Error),
    /// A migration.
    #[error("migration: {0}")]
    Migrate(#[from] refinery::Error),
    /// A schema name that is not a plain identifier.
    #[error("schema {0:?}: use letters, digits and _ only")]
    SchemaName(String),
}

/// What storing one message did.
#[derive(Debug, Default, PartialEq)]
pub struct Stored {
    /// It was new (not a redelivery).
    pub new: bool,
    /// What the witness found.
    pub findings: Vec<Finding>,
}

/// A connection to the archive.
pub struct Archive {
    client: Client,
    /// Reading partitions known to exist (year, month).
    partitions: HashSet<(i32, u32)>,
    /// Statements prepared on this connection.
    statements: Statements,
}

/// Statements prepared on one connection, by their text: a query given as text is parsed
/// again at every call, one more round trip each, and a batch holds its devices' locks
/// across every round trip it makes.
type Statements = std::sync::Mutex<std::collections::HashMap<&'static str, Statement>>;

/// `sql` prepared on `tx`'s connection, once.
async fn prepared(
    tx: &Transaction<'_>,
    cache: &Statements,
    sql: &'static str,
) -> Result<Statement, ArchiveError> {
    let held = cache
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(sql)
        .cloned();
    if let Some(s) = held {
        return Ok(s);
    }
    let s = tx.prepare(sql).await?;
    cache
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(sql, s.clone());
    Ok(s)
}

impl Archive {
    /// Connects to `url` (a libpq URL or key=value string), in `schema` when given (created if
    /// missing; tests use one each), and brings the schema up to date.
    pub async fn connect(url: &str, schema: Option<&str>) -> Result<Self, ArchiveError> {
        let (mut client, connection) = tokio_postgres::connect(url, NoTls).await?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::warn!("postgres connection ended: {e}");
            }
        });
        // Two collectors starting together must not both create the schema or migrate.
        client
            .batch_execute("SELECT pg_advisory_lock(7261001)")
            .await?;
        if let Some(s) = schema {
            if s.is_empty() || !s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(ArchiveError::SchemaName(s.into()));
            }
            client
                .batch_execute(&format!(
                    "CREATE SCHEMA IF NOT EXISTS {s}; SET search_path TO {s}"
                ))
                .await?;
        }
        let migrated = embedded::migrations::runner()
            .run_async(&mut client)
            .await
            .map(|_| ());
        client
            .batch_execute("SELECT pg_advisory_unlock(7261001)")
            .await?;
        migrated?;
        Ok(Self {
            client,
            partitions: HashSet::new(),
            statements: Default::default(),
        })
    }

    /// The connection, for queries.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Stores messages in one transaction (one WAL flush for the lot), in order; what each did
    /// (a redelivery changes nothing) with the witness's findings. The devices are locked in one order (sorted)
    /// before anything else, so two collectors' batches never deadlock.
    pub async fn store_batch(
        &mut self,
        batch: &[(&str, &Message, &[u8])],
    ) -> Result<Vec<Stored>, ArchiveError> {
        for (_, msg, _) in batch {
            if let Message::Reading { reading, .. } = msg {
                self.ensure_partition(reading.utc).await?;
            }
        }
        let devices: std::collections::BTreeSet<&str> =
            batch.iter().filter_map(|(_, m, _)| m.device()).collect();
        // Only what the witness checks in order (rows, checkpoints) or what writes the device's
        // own row (its status) takes the device's lock; readings, the bulk, are independent
        // inserts, so two collectors holding messages of one device no longer take turns.
        let locked: std::collections::BTreeSet<&str> = batch
            .iter()
            .filter(|(_, m, _)| needs_device_lock(m))
            .filter_map(|(_, m, _)| m.device())
            .collect();
        let cache = &self.statements;
        let tx = self.client.transaction().await?;
        for device in &devices {
            tx.execute(&prepared(&tx, cache, ADD_DEVICE).await?, &[device])
                .await?;
            if locked.contains(device) {
                lock_device(&tx, cache, device).await?;
            }
        }
        let mut all: Vec<Option<Stored>> = (0..batch.len()).map(|_| None).collect();
        // Readings, most of what comes, are independent inserts: sent together (queries issued
        // at once on one connection are pipelined), one round trip for the lot, not two each.
        let readings: Vec<(usize, &str, i64, &ReadingMsg)> = batch
            .iter()
            .enumerate()
            .filter_map(|(i, (_, m, _))| match m {
                Message::Reading {
                    device,
                    row_id,
                    reading,
                } => Some((i, device.as_str(), *row_id, reading.as_ref())),
                _ => None,
            })
            .collect();
        if !readings.is_empty() {
            // Prepared before the lot goes, so they all find it.
            prepared(&tx, cache, INSERT_READING).await?;
            let sent = futures_util::future::join_all(
                readings
                    .iter()
                    .map(|(_, device, row_id, r)| store_reading(&tx, cache, device, *row_id, r)),
            )
            .await;
            // In the order they were sent: the first error is the cause, the rest only say
            // the transaction was aborted.
            let stored = sent.into_iter().collect::<Result<Vec<bool>, _>>()?;
            for ((i, ..), new) in readings.iter().zip(stored) {
                all[*i] = Some(Stored {
                    new,
                    findings: Vec::new(),
                });
            }
        }
        for (slot, (topic, msg, payload)) in all.iter_mut().zip(batch) {
            if slot.is_some() {
                continue;
            }
            let out = store_one(&tx, cache, topic, msg, payload).await?;
            if let Some(device) = msg.device() {
                for f in &out.findings {
                    tx.execute(
                        &prepared(&tx, cache, ADD_FLAG).await?,
                        &[&device, &f.code(), &f.seq(), &f.detail(), &f.evidence()],
                    )
                    .await?;
                }
            }
            *slot = Some(out);
        }
        tx.commit().await?;
        // Outside the transaction, and at most every ten seconds a device: a row lock held to
        // the end of every batch would make collectors wait on each other again.
        // Only bookkeeping: its failure is logged, never taken for the batch's.
        let devices: Vec<&str> = devices.into_iter().collect();
        if let Err(e) = self
            .client
            .execute(
                "UPDATE devices SET last_seen = now() WHERE device_id = ANY($1) \
                 AND last_seen < now() - interval '10 seconds'",
                &[&devices],
            )
            .await
        {
            tracing::warn!("last_seen not updated: {e}");
        }
        Ok(all.into_iter().map(Option::unwrap_or_default).collect())
    }

    /// Creates the month's readings partition if it is not known to exist (under a lock, so
    /// two collectors never race to create the same one).
    async fn ensure_partition(&mut self, utc: DateTime<Utc>) -> Result<(), ArchiveError> {
        let (y, m) = (utc.year(), utc.month());
        if self.partitions.contains(&(y, m)) {
            return Ok(());
        }
        let (ny, nm) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
        let tx = self.client.transaction().await?;
        tx.batch_execute(&format!(
            "SELECT pg_advisory_xact_lock(7261002); \
             CREATE TABLE IF NOT EXISTS readings_{y:04}_{m:02} PARTITION OF readings \
             FOR VALUES FROM ('{y:04}-{m:02}-01') TO ('{ny:04}-{nm:02}-01')"
        ))
        .await?;
        tx.commit().await?;
        self.partitions.insert((y, m));
        Ok(())
    }
}

/// A device first heard of. DO NOTHING takes no lock on one already known.
const ADD_DEVICE: &str =
    "INSERT INTO devices (device_id) VALUES ($1) ON CONFLICT (device_id) DO NOTHING";

/// A witness finding, once: the same rewritten row delivered again adds nothing.
const ADD_FLAG: &str = "INSERT INTO witness_flags (device_id, finding, seq, detail, evidence) \
     SELECT $1, $2, $3, $4, $5 WHERE NOT EXISTS (SELECT 1 FROM witness_flags \
     WHERE device_id = $1 AND finding = $2 AND seq = $3 AND evidence = $5)";

/// Whether storing `m` needs its device's lock: the witness checks rows and checkpoints
/// against what is committed before them, and a status writes the device's own row.
fn needs_device_lock(m: &Message) -> bool {
    matches!(
        m,
        Message::Event { .. } | Message::Checkpoint { .. } | Message::Status { .. }
    )
}

/// One device's checks at a time: rows and checkpoints of a device split between two
/// collectors are still each checked against everything committed before.
async fn lock_device(
    tx: &Transaction<'_>,
    cache: &Statements,
    device: &str,
) -> Result<(), ArchiveError> {
    tx.execute(
        &prepared(
            tx,
            cache,
            "SELECT pg_advisory_xact_lock(7261003, hashtext($1))",
        )
        .await?,
        &[&device],
    )
    .await?;
    Ok(())
}

/// One message inside a batch's transaction (its device row exists and is locked).
async fn store_one(
    tx: &Transaction<'_>,
    cache: &Statements,
    topic: &str,
    msg: &Message,
    payload: &[u8],
) -> Result<Stored, ArchiveError> {
    let plain = |new| Stored {
        new,
        findings: Vec::new(),
    };
    Ok(match msg {
        Message::Inbound => Stored::default(),
        Message::Status { device, online } => {
            let status = if *online { "online" } else { "offline" };
            tx.execute(
                &prepared(
                    tx,
                    cache,
                    "UPDATE devices SET status = $2 WHERE device_id = $1",
                )
                .await?,
                &[device, &status],
            )
            .await?;
            plain(true)
        }
        Message::Other { device, id } => {
            plain(archive_message(tx, cache, id, device, topic, payload).await?)
        }
        Message::Reading {
            device,
            row_id,
            reading,
        } => plain(store_reading(tx, cache, device, *row_id, reading).await?),
        Message::Event { device, event } => {
            store_event(tx, cache, device, topic, event, payload).await?
        }
        Message::Checkpoint {
            device,
            id,
            checkpoint,
        } => {
            let new = archive_message(tx, cache, id, device, topic, payload).await?;
            Stored {
                new,
                ..store_checkpoint(tx, cache, device, checkpoint).await?
            }
        }
    })
}

/// Archives a message by id; whether it was new.
async fn archive_message(
    tx: &Transaction<'_>,
    cache: &Statements,
    id: &str,
    device: &str,
    topic: &str,
    payload: &[u8],
) -> Result<bool, ArchiveError> {
    let json: serde_json::Value = serde_json::from_slice(payload)
        .unwrap_or_else(|_| serde_json::Value::String(String::from_utf8_lossy(payload).into()));
    let insert = prepared(tx, cache, ADD_MESSAGE).await?;
    let n = tx.execute(&insert, &[&id, &device, &topic, &json]).await?;
    Ok(n == 1)
}

/// A message as it came, once (its id is the key).
const ADD_MESSAGE: &str = "INSERT INTO messages (message_id, device_id, topic, payload) \
     VALUES ($1, $2, $3, $4) ON CONFLICT (message_id) DO NOTHING";

const INSERT_READING: &str = "INSERT INTO readings (device_id, row_id, utc, vial_c, air_c, \
     product_c, doubt, compressor_on, door_open, mains, mode) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) ON CONFLICT DO NOTHING";

async fn store_reading(
    tx: &Transaction<'_>,
    cache: &Statements,
    device: &str,
    row_id: i64,
    r: &ReadingMsg,
) -> Result<bool, ArchiveError> {
    let insert = prepared(tx, cache, INSERT_READING).await?;
    let n = tx
        .execute(
            &insert,
            &[
                &device,
                &row_id,
                &r.utc,
                &r.vial_c,
                &r.air_c,
                &r.product_c,
                &r.doubt,
                &r.compressor_on,
                &r.door_open,
                &r.mains,
                &r.mode,
            ],
        )
        .await?;
    Ok(n == 1)
}

fn hashes(h: &Option<(Option<String>, Option<String>)>) -> Option<Hashes<'_>> {
    h.as_ref().map(|(p, h)| Hashes {
        prev_hash: p.as_deref(),
        hash: h.as_deref(),
    })
}

async fn store_event(
    tx: &Transaction<'_>,
    cache: &Statements,
    device: &str,
    topic: &str,
    e: &EventMsg,
    payload: &[u8],
) -> Result<Stored, ArchiveError> {
    let near_q = prepared(
        tx,
        cache,
        "SELECT seq, prev_hash, hash FROM audit_rows \
         WHERE device_id = $1 AND seq BETWEEN $2::bigint - 1 AND $2::bigint + 1",
    )
    .await?;
    let head_q = prepared(
        tx,
        cache,
        "SELECT head FROM checkpoints WHERE device_id = $1 AND seq = $2",
    )
    .await?;
    // The message kept, the row held under this seq with its two neighbours, and any
    // checkpoint at it: three statements that do not depend on each other, sent together.
    // Their results are taken in the order they were sent: after a statement fails, those
    // behind it fail only because the transaction is aborted, and the first error is the one
    // that says whether sending the message again could pass.
    let at: [&(dyn tokio_postgres::types::ToSql + Sync); 2] = [&device, &e.seq];
    let (kept, near_rows, head_row) = tokio::join!(
        archive_message(tx, cache, &e.id, device, topic, payload),
        tx.query(&near_q, &at),
        tx.query_opt(&head_q, &at),
    );
    kept?;
    let (near_rows, head_row) = (near_rows?, head_row?);
    let mut near: [Option<(Option<String>, Option<String>)>; 3] = Default::default();
    for r in near_rows {
        let seq: i64 = r.get(0);
        if let Some(slot) = usize::try_from(seq - e.seq + 1)
            .ok()
            .and_then(|i| near.get_mut(i))
        {
            *slot = Some((r.get(1), r.get(2)));
        }
    }
    let [before, same, after] = near;
    let received = Hashes {
        prev_hash: e.prev_hash.as_deref(),
        hash: e.hash.as_deref(),
    };
    // A redelivery under a held seq is checked only against what is held there (its
    // neighbours were checked when it first came); another hash there is a rewritten history.
    let head: Option<String> = match same {
        Some(_) => None,
        None => head_row.map(|r| r.get(0)),
    };
    let around = if same.is_some() {
        AroundRow {
            same: hashes(&same),
            ..Default::default()
        }
    } else {
        AroundRow {
            same: None,
            before: hashes(&before),
            after: hashes(&after),
            checkpoint_head: head.as_deref(),
        }
    };
    let mut findings = witness::check_row(e.seq, received, around);
    findings.extend(e.hashed.as_ref().and_then(witness::check_content));
    if same.is_none() {
        tx.execute(
            &prepared(
                tx,
                cache,
                "INSERT INTO audit_rows (device_id, seq, utc, kind, subject, actor, reason, \
             clock_trusted, body, prev_hash, hash) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
            )
            .await?,
            &[
                &device,
                &e.seq,
                &e.utc,
                &e.kind,
                &e.subject,
                &e.actor,
                &e.reason,
                &e.clock_trusted,
                &e.body,
                &e.prev_hash,
                &e.hash,
            ],
        )
        .await?;
        derive(tx, cache, device, e).await?;
    }
    Ok(Stored {
        new: same.is_none(),
        findings,
    })
}

/// The tables a portal reads, derived from the row: the patient's pseudonym, a dose at its
/// latest outcome.
async fn derive(
    tx: &Transaction<'_>,
    cache: &Statements,
    device: &str,
    e: &EventMsg,
) -> Result<(), ArchiveError> {
    let Some(patient) = e.body.get("patient").and_then(|p| p.as_str()) else {
        return Ok(());
    };
    tx.execute(
        &prepared(
            tx,
            cache,
            "INSERT INTO patients (device_id, patient) VALUES ($1, $2) ON CONFLICT DO NOTHING",
        )
        .await?,
        &[&device, &patient],
    )
    .await?;
    if !e.kind.starts_with("dose.") {
        return Ok(());
    }
    let Some(record) = e.body.get("record") else {
        return Ok(());
    };
    let time = |k: &str| {
        record
            .get(k)
            .and_then(|v| v.as_str())
            .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
            .map(|t| t.with_timezone(&Utc))
    };
    let (Some(medication), Some(outcome), Some(at)) = (
        record.get("medication").and_then(|v| v.as_str()),
        record.get("outcome").and_then(|v| v.as_str()),
        time("at"),
    ) else {
        return Ok(());
    };
    let occurrence = time("occurrence");
    let units = record
        .get("units")
        .and_then(|v| v.as_i64())
        .and_then(|u| i32::try_from(u).ok());
    tx.execute(
        &prepared(
            tx,
            cache,
            "INSERT INTO doses (device_id, patient, medication, occurrence, as_needed, outcome, \
         units, at, seq) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
         ON CONFLICT (device_id, patient, medication, occurrence) DO UPDATE \
         SET outcome = EXCLUDED.outcome, units = coalesce(EXCLUDED.units, doses.units), \
             at = EXCLUDED.at, seq = EXCLUDED.seq \
         WHERE doses.seq < EXCLUDED.seq",
        )
        .await?,
        &[
            &device,
            &patient,
            &medication,
            &occurrence.unwrap_or(at),
            &occurrence.is_none(),
            &outcome,
            &units,
            &at,
            &e.seq,
        ],
    )
    .await?;
    Ok(())
}

async fn store_checkpoint(
    tx: &Transaction<'_>,
    cache: &Statements,
    device: &str,
    c: &Checkpoint,
) -> Result<Stored, ArchiveError> {
    let pinned: Option<String> = tx
        .query_one(
            &prepared(
                tx,
                cache,
                "SELECT public_key FROM devices WHERE device_id = $1",
            )
            .await?,
            &[&device],
        )
        .await?
        .get(0);
    let held: Option<String> = tx
        .query_opt(
            &prepared(
                tx,
                cache,
                "SELECT head FROM checkpoints WHERE device_id = $1 AND seq = $2",
            )
            .await?,
            &[&device, &c.seq],
        )
        .await?
        .map(|r| r.get(0));
    let row_hash: Option<String> = tx
        .query_opt(
            &prepared(
                tx,
                cache,
                "SELECT hash FROM audit_rows WHERE device_id = $1 AND seq = $2",
            )
            .await?,
            &[&device, &c.seq],
        )
        .await?
        .and_then(|r| r.get(0));
    let v = witness::check_checkpoint(c, pinned.as_deref(), held.as_deref(), row_hash.as_deref());
    if let Some(key) = &v.pin {
        tx.execute(
            &prepared(
                tx,
                cache,
                "UPDATE devices SET public_key = $2, key_source = 'first checkpoint' \
             WHERE device_id = $1 AND public_key IS NULL",
            )
            .await?,
            &[&device, key],
        )
        .await?;
    }
    if v.keep {
        tx.execute(
            &prepared(
                tx,
                cache,
                "INSERT INTO checkpoints (device_id, seq, head, utc, signature, public_key) \
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
            )
            .await?,
            &[
                &device,
                &c.seq,
                &c.head,
                &c.utc,
                &c.signature,
                &c.public_key,
            ],
        )
        .await?;
    }
    Ok(Stored {
        new: v.keep,
        findings: v.findings,
    })
}

/// Enrols a device's checkpoint key before it reports (the witness then never trusts on first
/// use). Refuses to replace a key already held.
pub async fn enrol(
    archive: &Archive,
    device: &str,
    public_key: &str,
) -> Result<bool, ArchiveError> {
    archive
        .client
        .execute(
            "INSERT INTO devices (device_id) VALUES ($1) ON CONFLICT DO NOTHING",
            &[&device],
        )
        .await?;
    let n = archive
        .client
        .execute(
            "UPDATE devices SET public_key = $2, key_source = 'enrolment' \
             WHERE device_id = $1 AND public_key IS NULL",
            &[&device, &public_key],
        )
        .await?;
    Ok(n == 1)
}

/// The checkpoints the witness holds for `device`, oldest first.
pub async fn checkpoints(archive: &Archive, device: &str) -> Result<Vec<Checkpoint>, ArchiveError> {
    Ok(archive
        .client
        .query(
            "SELECT seq, head, utc, signature, public_key FROM checkpoints \
             WHERE device_id = $1 ORDER BY seq",
            &[&device],
        )
        .await?
        .into_iter()
        .map(|r| Checkpoint {
            seq: r.get(0),
            head: r.get(1),
            utc: r.get(2),
            signature: r.get(3),
            public_key: r.get(4),
        })
        .collect())
}

/// The witness's flags for `device`: (finding, seq, detail), oldest first.
pub async fn flags(
    archive: &Archive,
    device: &str,
) -> Result<Vec<(String, Option<i64>, String)>, ArchiveError> {
    Ok(archive
        .client
        .query(
            "SELECT finding, seq, detail FROM witness_flags WHERE device_id = $1 ORDER BY id",
            &[&device],
        )
        .await?
        .into_iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ingest::parse;

    #[test]
    fn only_what_the_witness_orders_or_the_device_row_takes_the_devices_lock() {
        let reading = br#"{"schema":"medbox.telemetry.v1","id":"mb-1:r7","utc":"2026-03-03T00:01:00Z","vial_c":5.1,"air_c":4.8,"compressor_on":false,"door_open":false,"mains":true,"mode":"thermostat"}"#;
        let event = serde_json::json!({
            "schema": "medbox.event.v1", "id": "mb-1:3", "seq": 3, "utc": "2026-03-02T08:00:00.000Z",
            "kind": "dose.dispensed", "subject": "s", "actor": "a", "reason": "",
            "clock_trusted": true, "body": {}, "prev_hash": "aa", "hash": "bb"
        })
        .to_string();
        let msg = |topic: &str, payload: &[u8]| parse(topic, payload).expect("readable");
        assert!(!needs_device_lock(&msg(
            "medbox/mb-1/telemetry/fridge",
            reading
        )));
        assert!(needs_device_lock(&msg(
            "medbox/mb-1/events/dose",
            event.as_bytes()
        )));
        assert!(needs_device_lock(&msg("medbox/mb-1/status", b"online")));
    }
}
