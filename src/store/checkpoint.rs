//! Signed checkpoints of the audit chain's head.
//!
//! A hash chain alone cannot catch someone who rewrites it consistently from some row onwards.
//! Every 100 rows or 15 minutes the device signs `(seq, head hash, time)` with its Ed25519 key and
//! the uplink sends the checkpoint off the device; `medbox audit verify --against` compares the
//! chain with those copies.

use super::StoreError;
use chrono::{DateTime, Utc};
use ring::rand::SystemRandom;
use ring::signature::{self, Ed25519KeyPair, KeyPair};
use rusqlite::{params, Connection, OptionalExtension, Transaction};
use serde::{Deserialize, Serialize};

/// Rows between checkpoints.
pub const EVERY_ROWS: i64 = 100;
/// Longest time between checkpoints (when rows were added).
pub const EVERY: chrono::TimeDelta = chrono::TimeDelta::minutes(15);

/// A signed checkpoint, as stored and as sent off the device (one JSON object per line).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// Sequence number of the head.
    pub seq: i64,
    /// Head hash.
    pub head: String,
    /// When (RFC 3339).
    pub utc: String,
    /// Ed25519 signature of [`Checkpoint::message`] (hex).
    pub signature: String,
    /// The device's public key (hex).
    pub public_key: String,
}

impl Checkpoint {
    /// The signed text.
    pub fn message(seq: i64, head: &str, utc: &str) -> String {
        format!("medbox-checkpoint-v1|{seq}|{head}|{utc}")
    }

    /// Whether the signature is valid for the public key it names.
    pub fn signature_valid(&self) -> bool {
        let (Some(pk), Some(sig)) = (unhex(&self.public_key), unhex(&self.signature)) else {
            return false;
        };
        signature::UnparsedPublicKey::new(&signature::ED25519, pk)
            .verify(
                Self::message(self.seq, &self.head, &self.utc).as_bytes(),
                &sig,
            )
            .is_ok()
    }
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// The device's signing key: its own file (mode 0600), outside the database it vouches for, so
/// a copy of the database alone cannot be re-signed.
pub struct DeviceKey {
    pair: Ed25519KeyPair,
}

/// Where the signing key lives when the configuration does not say: beside the database.
pub fn default_key_path(db: &std::path::Path) -> std::path::PathBuf {
    let mut name = db.file_name().unwrap_or_default().to_os_string();
    name.push(".signing-key");
    db.with_file_name(name)
}

impl DeviceKey {
    /// Loads the key from `path`, creating it on first use (commissioning). A key that older
    /// versions kept in the database moves to the file and leaves the database.
    pub fn load_or_create_file(
        path: &std::path::Path,
        conn: &Connection,
    ) -> Result<Self, StoreError> {
        let io = |what: &str, e: std::io::Error| {
            StoreError::Key(format!("{what} {}: {e}", path.display()))
        };
        let pkcs8 = if path.exists() {
            std::fs::read(path).map_err(|e| io("cannot read", e))?
        } else {
            let legacy: Option<Vec<u8>> = conn
                .query_row(
                    "SELECT ed25519_pkcs8 FROM device_identity WHERE id = 1",
                    [],
                    |r| r.get(0),
                )
                .optional()?;
            let pkcs8 = match legacy {
                Some(p) => p,
                None => Ed25519KeyPair::generate_pkcs8(&SystemRandom::new())
                    .map_err(|_| StoreError::Key("cannot generate a key".into()))?
                    .as_ref()
                    .to_vec(),
            };
            write_private(path, &pkcs8).map_err(|e| io("cannot write", e))?;
            pkcs8
        };
        conn.execute("DELETE FROM device_identity", [])?;
        let pair =
            Ed25519KeyPair::from_pkcs8(&pkcs8).map_err(|e| StoreError::Key(e.to_string()))?;
        Ok(Self { pair })
    }

    /// Loads an existing key file (for tools: nothing is created or moved).
    pub fn load_file(path: &std::path::Path) -> Result<Self, StoreError> {
        let pkcs8 = std::fs::read(path)
            .map_err(|e| StoreError::Key(format!("cannot read {}: {e}", path.display())))?;
        let pair =
            Ed25519KeyPair::from_pkcs8(&pkcs8).map_err(|e| StoreError::Key(e.to_string()))?;
        Ok(Self { pair })
    }

    /// Loads the key, creating it if the database has none (the layout before the key moved to
    /// its own file; kept for tools reading old databases).
    pub fn load_or_create(conn: &Connection) -> Result<Self, StoreError> {
        let existing: Option<Vec<u8>> = conn
            .query_row(
                "SELECT ed25519_pkcs8 FROM device_identity WHERE id = 1",
                [],
                |r| r.get(0),
            )
            .optional()?;
        let pkcs8 = match existing {
            Some(p) => p,
            None => {
                let doc = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new())
                    .map_err(|_| StoreError::Key("cannot generate a key".into()))?;
                conn.execute(
                    "INSERT INTO device_identity (id, ed25519_pkcs8, created_utc) VALUES (1, ?1, ?2)",
                    params![doc.as_ref(), Utc::now().to_rfc3339()],
                )?;
                doc.as_ref().to_vec()
            }
        };
        let pair =
            Ed25519KeyPair::from_pkcs8(&pkcs8).map_err(|e| StoreError::Key(e.to_string()))?;
        Ok(Self { pair })
    }

    /// The public key (hex).
    pub fn public_hex(&self) -> String {
        super::audit::hex(self.pair.public_key().as_ref())
    }

    /// A fresh key held only in memory (a witness's tests sign with it).
    pub fn generate() -> Result<Self, StoreError> {
        let doc = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new())
            .map_err(|_| StoreError::Key("cannot generate a key".into()))?;
        let pair =
            Ed25519KeyPair::from_pkcs8(doc.as_ref()).map_err(|e| StoreError::Key(e.to_string()))?;
        Ok(Self { pair })
    }

    /// Signs `(seq, head)` at `utc` (RFC 3339).
    pub fn sign(&self, seq: i64, head: &str, utc: &str) -> Checkpoint {
        let sig = self
            .pair
            .sign(Checkpoint::message(seq, head, utc).as_bytes());
        Checkpoint {
            seq,
            head: head.to_string(),
            utc: utc.to_string(),
            signature: super::audit::hex(sig.as_ref()),
            public_key: self.public_hex(),
        }
    }

    /// Signs and stores a checkpoint of `(seq, head)` at `at`, inside `tx`.
    pub fn checkpoint(
        &self,
        tx: &Transaction<'_>,
        seq: i64,
        head: &str,
        at: DateTime<Utc>,
    ) -> Result<Checkpoint, StoreError> {
        let utc = at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        let c = self.sign(seq, head, &utc);
        tx.execute(
            "INSERT OR IGNORE INTO checkpoints (seq, head, utc, signature, public_key) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![c.seq, c.head, c.utc, c.signature, c.public_key],
        )?;
        Ok(c)
    }
}

/// The last checkpoint stored: sequence number and time.
pub fn last(conn: &Connection) -> Result<Option<(i64, DateTime<Utc>)>, StoreError> {
    let row: Option<(i64, String)> = conn
        .query_row(
            "SELECT seq, utc FROM checkpoints ORDER BY seq DESC LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
    Ok(row.and_then(|(s, t)| {
        DateTime::parse_from_rfc3339(&t)
            .ok()
            .map(|t| (s, t.with_timezone(&Utc)))
    }))
}

/// Whether a checkpoint is due at head `seq` and time `now`.
pub fn due(last: Option<(i64, DateTime<Utc>)>, seq: i64, now: DateTime<Utc>) -> bool {
    match last {
        None => seq >= 1,
        // A clock stepped back behind the last checkpoint must not silence them for the time
        // it went back: one is due at once, and the interval counts from it.
        Some((s, t)) => seq > s && (seq - s >= EVERY_ROWS || now - t >= EVERY || now < t),
    }
}

/// Writes a secret readable by its owner only, never leaving a half-written file behind.
fn write_private(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    let tmp = path.with_extension("tmp");
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        opts.mode(0o600);
    }
    let _ = std::fs::remove_file(&tmp);
    let mut f = opts.open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// Every checkpoint stored, oldest first.
pub fn all(conn: &Connection) -> Result<Vec<Checkpoint>, StoreError> {
    between(conn, 0, i64::MAX)
}

/// The checkpoints of sequence numbers `from..=to`, oldest first.
pub fn between(conn: &Connection, from: i64, to: i64) -> Result<Vec<Checkpoint>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT seq, head, utc, signature, public_key FROM checkpoints \
         WHERE seq BETWEEN ?1 AND ?2 ORDER BY seq",
    )?;
    let rows = stmt
        .query_map(rusqlite::params![from, to], |r| {
            Ok(Checkpoint {
                seq: r.get(0)?,
                head: r.get(1)?,
                utc: r.get(2)?,
                signature: r.get(3)?,
                public_key: r.get(4)?,
            })
        })?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_clock_stepped_back_does_not_silence_checkpoints() {
        let t = Utc::now();
        // Ten rows after the last, an hour behind it: due now, not in an hour.
        assert!(due(Some((10, t)), 20, t - chrono::Duration::hours(1)));
        // Otherwise every 100 rows or 15 minutes.
        assert!(!due(Some((10, t)), 20, t + chrono::Duration::minutes(5)));
        assert!(due(Some((10, t)), 20, t + EVERY));
        assert!(due(Some((10, t)), 110, t));
        assert!(!due(Some((10, t)), 10, t - chrono::Duration::hours(1)));
    }

    #[test]
    fn checkpoints_are_signed_and_tampering_breaks_the_signature() {
        let dir = tempfile::tempdir().unwrap();
        let mut conn = super::super::schema::open(&dir.path().join("c.db")).unwrap();
        let key = DeviceKey::load_or_create(&conn).unwrap();
        let again = DeviceKey::load_or_create(&conn).unwrap();
        assert_eq!(key.public_hex(), again.public_hex(), "the key persists");
        let tx = conn.transaction().unwrap();
        let row = super::super::audit::append(
            &tx,
            &super::super::audit::ChainKey::unkeyed(),
            &super::super::audit::Entry {
                utc: Utc::now(),
                mono_ms: 0,
                boot_id: "b".into(),
                clock_trusted: true,
                actor: "system:test".into(),
                kind: "test".into(),
                subject: "s".into(),
                body: serde_json::json!({}),
                reason: String::new(),
            },
        )
        .unwrap();
        let c = key.checkpoint(&tx, row.seq, &row.hash, Utc::now()).unwrap();
        tx.commit().unwrap();
        assert!(c.signature_valid());
        let mut forged = c.clone();
        forged.head = "0".repeat(64);
        assert!(!forged.signature_valid());
        assert_eq!(all(&conn).unwrap(), vec![c]);
    }

    #[test]
    fn a_checkpoint_is_due_every_hundred_rows_or_fifteen_minutes() {
        let t0 = Utc::now();
        assert!(due(None, 1, t0));
        assert!(!due(Some((1, t0)), 100, t0));
        assert!(due(Some((1, t0)), 101, t0));
        assert!(!due(Some((1, t0)), 2, t0 + chrono::Duration::minutes(14)));
        assert!(due(Some((1, t0)), 2, t0 + chrono::Duration::minutes(15)));
        assert!(
            !due(Some((2, t0)), 2, t0 + chrono::Duration::hours(1)),
            "nothing new to sign"
        );
    }
}
