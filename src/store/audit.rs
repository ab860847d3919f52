//! The audit log: one append-only table, each row chained to the previous by
//! `hash = SHA-256(prev_hash ‖ canonical row)` (HMAC-SHA-256 with the configured secret, when
//! one is set). Triggers refuse UPDATE and DELETE; anyone who edits the file anyway breaks the
//! chain at the first row they touched, and [`verify`] names it.
//!
//! The canonical form of a row is the JSON array `[seq, utc, mono_ms, boot_id, clock_trusted,
//! actor, kind, subject, body, reason]`, with `body` as the exact stored JSON text: unambiguous,
//! and reproducible by anyone with a JSON library.

use super::StoreError;
use chrono::{DateTime, Utc};
use ring::{digest, hmac};
use rusqlite::{params, Connection, OptionalExtension, Transaction};
use serde::{Deserialize, Serialize};

/// The hash that precedes the first row.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// What to append.
#[derive(Clone, Debug, PartialEq)]
pub struct Entry {
    /// Wall-clock time (UTC).
    pub utc: DateTime<Utc>,
    /// Monotonic milliseconds since this boot's start.
    pub mono_ms: i64,
    /// Identifies one run of the process (monotonic time restarts with it).
    pub boot_id: String,
    /// Whether the wall clock was trusted when the row was written.
    pub clock_trusted: bool,
    /// A person's id, or `system:<component>`.
    pub actor: String,
    /// Dotted kind, e.g. `coldchain.alarm_raised`.
    pub kind: String,
    /// What the row is about, e.g. `alarm:DOOR_OPEN`, `probe:vial`.
    pub subject: String,
    /// Details.
    pub body: serde_json::Value,
    /// Why (a reason code or a person's comment), or empty.
    pub reason: String,
}

/// A stored row, as exported.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Row {
    /// Gapless sequence number from 1.
    pub seq: i64,
    /// UTC, RFC 3339.
    pub utc: String,
    /// Monotonic milliseconds.
    pub mono_ms: i64,
    /// Boot id.
    pub boot_id: String,
    /// Clock trusted.
    pub clock_trusted: bool,
    /// Actor.
    pub actor: String,
    /// Kind.
    pub kind: String,
    /// Subject.
    pub subject: String,
    /// Body, exact JSON text.
    pub body: String,
    /// Reason.
    pub reason: String,
    /// Previous row's hash (hex).
    pub prev_hash: String,
    /// This row's hash (hex).
    pub hash: String,
}

/// A row as one line of a JSON export: `body` is the stored JSON object itself, byte for byte
/// (not a string holding it), so a reader sees objects and the chain still verifies from the
/// export. A body that is not JSON (a tampered row) stays a string.
pub fn to_json_line(row: &Row) -> Result<String, serde_json::Error> {
    #[derive(Serialize)]
    struct Head<'a> {
        seq: i64,
        utc: &'a str,
        mono_ms: i64,
        boot_id: &'a str,
        clock_trusted: bool,
        actor: &'a str,
        kind: &'a str,
        subject: &'a str,
        reason: &'a str,
        prev_hash: &'a str,
        hash: &'a str,
    }
    let mut text = serde_json::to_string(&Head {
        seq: row.seq,
        utc: &row.utc,
        mono_ms: row.mono_ms,
        boot_id: &row.boot_id,
        clock_trusted: row.clock_trusted,
        actor: &row.actor,
        kind: &row.kind,
        subject: &row.subject,
        reason: &row.reason,
        prev_hash: &row.prev_hash,
        hash: &row.hash,
    })?;
    // The body goes in as its exact text: a parsed value would be re-serialised, and its bytes
    // are what the chain hashed.
    let is_object = row.body.starts_with('{')
        && serde_json::from_str::<&serde_json::value::RawValue>(&row.body).is_ok();
    let body = if is_object {
        row.body.clone()
    } else {
        serde_json::to_string(&row.body)?
    };
    text.pop();
    text.push_str(",\"body\":");
    text.push_str(&body);
    text.push('}');
    Ok(text)
}

/// Reads one line of a JSON export (a body given as an object or, from older exports, as a
/// string holding its text).
pub fn from_json_line(line: &str) -> Result<Row, serde_json::Error> {
    #[derive(Deserialize)]
    struct Line {
        seq: i64,
        utc: String,
        mono_ms: i64,
        boot_id: String,
        clock_trusted: bool,
        actor: String,
        kind: String,
        subject: String,
        body: Box<serde_json::value::RawValue>,
        reason: String,
        prev_hash: String,
        hash: String,
    }
    let l: Line = serde_json::from_str(line)?;
    let raw = l.body.get();
    let body = if raw.starts_with('"') {
        serde_json::from_str::<String>(raw)?
    } else {
        raw.to_string()
    };
    Ok(Row {
        seq: l.seq,
        utc: l.utc,
        mono_ms: l.mono_ms,
        boot_id: l.boot_id,
        clock_trusted: l.clock_trusted,
        actor: l.actor,
        kind: l.kind,
        subject: l.subject,
        body,
        reason: l.reason,
        prev_hash: l.prev_hash,
        hash: l.hash,
    })
}

/// How rows are linked: plain SHA-256, or HMAC-SHA-256 with a secret.
#[derive(Clone)]
pub struct ChainKey(Option<hmac::Key>);

impl std::fmt::Debug for ChainKey {
    /// Never prints the secret.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "ChainKey(keyed)"
        } else {
            "ChainKey(unkeyed)"
        })
    }
}

impl ChainKey {
    /// Plain SHA-256 chaining.
    pub fn unkeyed() -> Self {
        Self(None)
    }

    /// Whether rows are linked with a secret.
    pub fn is_keyed(&self) -> bool {
        self.0.is_some()
    }

    /// HMAC-SHA-256 chaining with `secret` (verification then needs the same secret).
    pub fn keyed(secret: &[u8]) -> Self {
        Self(Some(hmac::Key::new(hmac::HMAC_SHA256, secret)))
    }

    /// Reads the secret from a file (surrounding whitespace ignored). An empty secret is refused:
    /// it would look keyed and protect nothing.
    pub fn from_file(path: &std::path::Path) -> std::io::Result<Self> {
        let bytes = std::fs::read(path)?;
        let secret = bytes.trim_ascii();
        if secret.len() < 16 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "the audit secret must be at least 16 bytes",
            ));
        }
        Ok(Self::keyed(secret))
    }

    /// The link hash of a row given its predecessor's hash.
    pub fn link(&self, prev_hash: &str, canonical: &[u8]) -> String {
        // Fed in two parts: the same digest as over the concatenation, without building it.
        match &self.0 {
            Some(k) => {
                let mut ctx = hmac::Context::with_key(k);
                ctx.update(prev_hash.as_bytes());
                ctx.update(canonical);
                hex(ctx.sign().as_ref())
            }
            None => {
                let mut ctx = digest::Context::new(&digest::SHA256);
                ctx.update(prev_hash.as_bytes());
                ctx.update(canonical);
                hex(ctx.finish().as_ref())
            }
        }
    }
}

/// Lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
    s
}

impl Row {
    /// The canonical bytes that are hashed.
    pub fn canonical(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.canonical_into(&mut out);
        out
    }

    /// [`Row::canonical`] into a buffer the caller reuses (verification streams millions).
    pub fn canonical_into(&self, out: &mut Vec<u8>) {
        out.clear();
        let _ = serde_json::to_writer(
            &mut *out,
            &(
                self.seq,
                &self.utc,
                self.mono_ms,
                &self.boot_id,
                self.clock_trusted,
                &self.actor,
                &self.kind,
                &self.subject,
                &self.body,
                &self.reason,
            ),
        );
    }

    /// A row as [`COLUMNS`] selects it.
    pub(crate) fn from_sql(r: &rusqlite::Row<'_>) -> rusqlite::Result<Self> {
        Ok(Row {
            seq: r.get(0)?,
            utc: r.get(1)?,
            mono_ms: r.get(2)?,
            boot_id: r.get(3)?,
            clock_trusted: r.get::<_, i64>(4)? != 0,
            actor: r.get(5)?,
            kind: r.get(6)?,
            subject: r.get(7)?,
            body: r.get(8)?,
            reason: r.get(9)?,
            prev_hash: r.get(10)?,
            hash: r.get(11)?,
        })
    }
}

/// Rows `from..=to` in sequence order (those that exist).
pub fn range(conn: &Connection, from: i64, to: i64) -> Result<Vec<Row>, StoreError> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM audit WHERE seq BETWEEN ?1 AND ?2 ORDER BY seq"
    ))?;
    let rows = stmt
        .query_map(rusqlite::params![from, to], Row::from_sql)?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(rows)
}

/// The chain's head: last sequence number and hash.
pub fn head(conn: &Connection) -> Result<Option<(i64, String)>, StoreError> {
    // Cached: read at every append, so parsing it once per connection is worth keeping.
    Ok(conn
        .prepare_cached("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1")?
        .query_row([], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?)
}

/// Appends one row inside `tx`; the caller commits (with the domain change that goes with it).
pub fn append(tx: &Transaction<'_>, key: &ChainKey, e: &Entry) -> Result<Row, StoreError> {
    let (seq, prev_hash) = match head(tx)? {
        Some((s, h)) => (s + 1, h),
        None => (1, GENESIS.to_string()),
    };
    let mut row = Row {
        seq,
        utc: e.utc.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        mono_ms: e.mono_ms,
        boot_id: e.boot_id.clone(),
        clock_trusted: e.clock_trusted,
        actor: e.actor.clone(),
        kind: e.kind.clone(),
        subject: e.subject.clone(),
        body: serde_json::to_string(&e.body)?,
        reason: e.reason.clone(),
        prev_hash,
        hash: String::new(),
    };
    row.hash = key.link(&row.prev_hash, &row.canonical());
    tx.prepare_cached(
        "INSERT INTO audit (seq, utc, mono_ms, boot_id, clock_trusted, actor, kind, subject, body, reason, prev_hash, hash)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
    )?
    .execute(params![
            row.seq,
            row.utc,
            row.mono_ms,
            row.boot_id,
            row.clock_trusted as i64,
            row.actor,
            row.kind,
            row.subject,
            row.body,
            row.reason,
            row.prev_hash,
            row.hash
        ],
    )?;
    Ok(row)
}

/// Filters for reading rows back.
#[derive(Clone, Debug, Default)]
pub struct Filter {
    /// From this UTC time (inclusive).
    pub from: Option<DateTime<Utc>>,
    /// To this UTC time (exclusive).
    pub to: Option<DateTime<Utc>>,
    /// Kind, or a kind prefix ending in `.` (`coldchain.`).
    pub kind: Option<String>,
    /// Patient pseudonym (the body's `patient`).
    pub patient: Option<String>,
    /// Medication name (the body's `medication`).
    pub medication: Option<String>,
}

/// Reads rows in sequence order, filtered.
pub fn rows(conn: &Connection, f: &Filter) -> Result<Vec<Row>, StoreError> {
    let mut sql = format!("SELECT {COLUMNS} FROM audit WHERE 1=1");
    let mut args: Vec<String> = Vec::new();
    let fmt = |t: &DateTime<Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    if let Some(t) = &f.from {
        args.push(fmt(t));
        sql += &format!(" AND utc >= ?{}", args.len());
    }
    if let Some(t) = &f.to {
        args.push(fmt(t));
        sql += &format!(" AND utc < ?{}", args.len());
    }
    if let Some(k) = &f.kind {
        // A kind names itself and its family: `coldchain.excursion` (or `coldchain.excursion.`)
        // takes `coldchain.excursion.opened` too, so a pharmacist's filter never silently
        // matches nothing for want of a trailing dot. Compared as text, not with LIKE, whose
        // `_` would match any character.
        let name = k.trim_end_matches('.');
        args.push(name.to_string());
        let exact = args.len();
        args.push(format!("{name}."));
        let family = args.len();
        sql += &format!(" AND (kind = ?{exact} OR substr(kind, 1, length(?{family})) = ?{family})");
    }
    if let Some(p) = &f.patient {
        args.push(p.clone());
        // Vital readings carry their patient inside the reading.
        sql += &format!(
            " AND coalesce(json_extract(body, '$.patient'), json_extract(body, '$.reading.patient')) = ?{}",
            args.len()
        );
    }
    if let Some(m) = &f.medication {
        // Letter case and spacing do not make another medication (as for dose identity).
        args.push(crate::dosing::identity::normalise(m));
        sql += &format!(
            " AND lower(trim(json_extract(body, '$.medication'))) = ?{}",
            args.len()
        );
    }
    sql += " ORDER BY seq";
    let mut stmt = conn.prepare(&sql)?;
    let rows = stmt
        .query_map(rusqlite::params_from_iter(args.iter()), Row::from_sql)?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(rows)
}

/// How a chain was found broken.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BreakKind {
    /// A row's content or hash was altered.
    Changed,
    /// A row is missing (a gap in the sequence).
    Missing,
    /// A genuine row sits where another belongs.
    Reordered,
    /// Rows at the end are gone (seen against a checkpoint).
    Truncated,
    /// The chain differs from a signed checkpoint (consistently rewritten), or the checkpoint's
    /// signature is wrong.
    CheckpointMismatch,
}

/// Whether the database says its chain is keyed (None: it does not say: written before it
/// recorded that, or opened read-only before any run noted it).
pub fn recorded_keyed(conn: &Connection) -> Result<Option<bool>, StoreError> {
    let exists: bool = conn.query_row(
        "SELECT count(*) > 0 FROM sqlite_master WHERE type = 'table' AND name = 'chain'",
        [],
        |r| r.get(0),
    )?;
    if !exists {
        return Ok(None);
    }
    Ok(conn
        .query_row("SELECT keyed FROM chain WHERE id = 1", [], |r| r.get(0))
        .optional()?)
}

/// Makes sure rows appended with `key` link the way the chain already does: notes the mode the
/// first time, and refuses a key that differs (a keyed chain without its secret would become
/// unverifiable; a secret added to a plain chain would not protect what came before).
pub fn check_mode(conn: &Connection, key: &ChainKey) -> Result<(), StoreError> {
    match recorded_keyed(conn)? {
        None => {
            conn.execute(
                "INSERT INTO chain (id, keyed, noted_utc) VALUES (1, ?1, ?2)",
                rusqlite::params![key.is_keyed(), Utc::now().to_rfc3339()],
            )?;
            Ok(())
        }
        Some(true) if !key.is_keyed() => Err(StoreError::Chain(
            "the chain is keyed (HMAC-SHA-256): give its secret ([audit] secret_file, --audit-secret-file)".into(),
        )),
        Some(false) if key.is_keyed() => Err(StoreError::Chain(
            "the chain is not keyed: a secret cannot be added to an existing chain".into(),
        )),
        Some(_) => Ok(()),
    }
}

/// The result of a verification.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Verification {
    /// Every row links to the previous one (and matches every checkpoint given).
    Intact {
        /// Rows.
        count: i64,
        /// Head hash.
        head: String,
        /// First row's time.
        first_utc: Option<String>,
        /// Last row's time.
        last_utc: Option<String>,
        /// Checkpoints checked.
        checkpoints: usize,
    },
    /// The first break.
    Broken {
        /// First bad sequence number.
        seq: i64,
        /// What kind of break.
        kind: BreakKind,
        /// Last row that verified.
        last_good: Option<i64>,
        /// Details for the pharmacist.
        detail: String,
    },
}

/// A checkpoint as held off the device.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CheckpointRef {
    /// Sequence number of the head at the time.
    pub seq: i64,
    /// Head hash at that sequence number.
    pub head: String,
}

/// The columns [`Row::from_sql`] reads, in its order.
pub(crate) const COLUMNS: &str =
    "seq, utc, mono_ms, boot_id, clock_trusted, actor, kind, subject, body, reason, prev_hash, hash";

/// Verifies rows given in sequence order (from an export held in memory; a database is
/// verified with [`verify_store`], which streams).
pub fn verify(rows: Vec<Row>, key: &ChainKey, checkpoints: &[CheckpointRef]) -> Verification {
    let hashes: std::collections::HashMap<String, i64> =
        rows.iter().map(|r| (r.hash.clone(), r.seq)).collect();
    verify_accepting(
        rows,
        key,
        checkpoints,
        &Default::default(),
        |hash, before| hashes.get(hash).is_some_and(|seq| *seq < before),
    )
}

/// Verifies the database's whole chain, streaming its rows from the statement: memory stays
/// the same whatever the chain's length. A break is classified (reordered or changed) by
/// looking the row's `prev_hash` up only once one is found.
pub fn verify_store(
    conn: &Connection,
    key: &ChainKey,
    checkpoints: &[CheckpointRef],
    accepted: &std::collections::BTreeSet<i64>,
) -> Result<Verification, StoreError> {
    let mut stmt = conn.prepare(&format!("SELECT {COLUMNS} FROM audit ORDER BY seq"))?;
    let mut failed = None;
    let rows = stmt
        .query_map([], Row::from_sql)?
        .map_while(|r| r.map_err(|e| failed = Some(e)).ok());
    let verification = verify_accepting(rows, key, checkpoints, accepted, |hash, before| {
        earlier_hash(conn, hash, before)
    });
    match failed {
        // A read error ends the rows early: never report what was read as the whole chain.
        Some(e) => Err(e.into()),
        None => Ok(verification),
    }
}

/// Whether a row before `before` in the database has this hash (a reordered chain).
pub(crate) fn earlier_hash(conn: &Connection, hash: &str, before: i64) -> bool {
    conn.query_row(
        "SELECT 1 FROM audit WHERE hash = ?1 AND seq < ?2 LIMIT 1",
        params![hash, before],
        |_| Ok(()),
    )
    .optional()
    .ok()
    .flatten()
    .is_some()
}

/// As [`verify`], but a break at one of `accepted` (breaks a pharmacist has acknowledged) does
/// not end the check: the chain is followed on from the row as stored, so any other break is
/// still found. `earlier(hash, seq)` says whether a row before `seq` had `hash`; it is asked
/// only at a break, so the check keeps no map of every hash.
pub fn verify_accepting(
    rows: impl IntoIterator<Item = Row>,
    key: &ChainKey,
    checkpoints: &[CheckpointRef],
    accepted: &std::collections::BTreeSet<i64>,
    earlier: impl Fn(&str, i64) -> bool,
) -> Verification {
    let mut expected_seq = 1;
    let mut prev = GENESIS.to_string();
    let mut first_utc = None;
    let mut last_utc = None;
    let mut hashes_at: std::collections::HashMap<i64, String> = std::collections::HashMap::new();
    let wanted: std::collections::HashSet<i64> = checkpoints.iter().map(|c| c.seq).collect();
    let last_good = |s: i64| (s > 1).then_some(s - 1);
    let mut canonical = Vec::with_capacity(512);
    for row in rows {
        if row.seq != expected_seq && accepted.contains(&expected_seq) {
            expected_seq = row.seq;
            prev.clone_from(&row.prev_hash);
        }
        if row.prev_hash != prev && accepted.contains(&row.seq) {
            prev.clone_from(&row.prev_hash);
        }
        if row.seq != expected_seq {
            let kind = if row.seq > expected_seq {
                BreakKind::Missing
            } else {
                BreakKind::Reordered
            };
            return Verification::Broken {
                seq: expected_seq,
                kind,
                last_good: last_good(expected_seq),
                detail: format!("expected row {expected_seq}, found row {}", row.seq),
            };
        }
        if row.prev_hash != prev {
            let kind = if earlier(&row.prev_hash, row.seq) {
                BreakKind::Reordered
            } else {
                BreakKind::Changed
            };
            return Verification::Broken {
                seq: row.seq,
                kind,
                last_good: last_good(row.seq),
                detail: "prev_hash does not match the previous row's hash".into(),
            };
        }
        row.canonical_into(&mut canonical);
        let h = key.link(&row.prev_hash, &canonical);
        if h != row.hash && !accepted.contains(&row.seq) {
            return Verification::Broken {
                seq: row.seq,
                kind: BreakKind::Changed,
                last_good: last_good(row.seq),
                detail: "content does not match its hash (altered, or verified with the wrong HMAC secret)".into(),
            };
        }
        if wanted.contains(&row.seq) {
            hashes_at.insert(row.seq, row.hash.clone());
        }
        if first_utc.is_none() {
            first_utc = Some(row.utc.clone());
        }
        last_utc = Some(row.utc);
        prev = row.hash;
        expected_seq += 1;
    }
    let count = expected_seq - 1;
    for c in checkpoints.iter().filter(|c| !accepted.contains(&c.seq)) {
        match hashes_at.get(&c.seq) {
            None if c.seq > count => {
                if accepted.contains(&(count + 1)) {
                    continue;
                }
                return Verification::Broken {
                    seq: count + 1,
                    kind: BreakKind::Truncated,
                    last_good: (count > 0).then_some(count),
                    detail: format!("a checkpoint holds row {} but the chain ends at row {count}", c.seq),
                }
            }
            Some(h) if *h == c.head => {}
            _ => {
                return Verification::Broken {
                    seq: c.seq,
                    kind: BreakKind::CheckpointMismatch,
                    last_good: None,
                    detail: format!(
                        "row {} differs from the signed checkpoint: the chain was rewritten at or before it",
                        c.seq
                    ),
                }
            }
        }
    }
    Verification::Intact {
        count,
        head: prev,
        first_utc,
        last_utc,
        checkpoints: checkpoints.len(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_json_export_carries_the_body_as_an_object_and_reads_back_byte_for_byte() {
        let row = |body: &str| Row {
            seq: 7,
            utc: "2026-03-02T08:00:00.000Z".into(),
            mono_ms: 1,
            boot_id: "b".into(),
            clock_trusted: true,
            actor: "system:dispenser".into(),
            kind: "dose.dispensed".into(),
            subject: "patient:p-1".into(),
            body: body.into(),
            reason: String::new(),
            prev_hash: "00".into(),
            hash: "11".into(),
        };
        // Key order and spacing as stored, not as a parser would write them again.
        let stored = row(r#"{"z":1,"a":{"b":[1,2.50]}}"#);
        let line = to_json_line(&stored).unwrap();
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["body"]["a"]["b"][0], 1, "{line}");
        assert_eq!(from_json_line(&line).unwrap(), stored);
        // A body that is not JSON (a tampered row) stays a string, and reads back as it was.
        let odd = row("not json {");
        let line = to_json_line(&odd).unwrap();
        assert_eq!(from_json_line(&line).unwrap(), odd);
    }

    use super::*;

    fn entry(i: i64) -> Entry {
        Entry {
            utc: DateTime::parse_from_rfc3339("2026-03-02T00:00:00Z")
                .unwrap()
                .with_timezone(&Utc)
                + chrono::Duration::minutes(i),
            mono_ms: i * 60_000,
            boot_id: "boot-1".into(),
            clock_trusted: true,
            actor: "system:test".into(),
            kind: "test.event".into(),
            subject: format!("n:{i}"),
            body: serde_json::json!({ "i": i, "patient": if i % 2 == 0 { "p-even" } else { "p-odd" } }),
            reason: String::new(),
        }
    }

    fn db(n: i64) -> (tempfile::TempDir, Connection) {
        let dir = tempfile::tempdir().unwrap();
        let mut conn = super::super::schema::open(&dir.path().join("a.db")).unwrap();
        let key = ChainKey::unkeyed();
        for i in 0..n {
            let tx = conn.transaction().unwrap();
            append(&tx, &key, &entry(i)).unwrap();
            tx.commit().unwrap();
        }
        (dir, conn)
    }

    fn all(conn: &Connection) -> Vec<Row> {
        rows(conn, &Filter::default()).unwrap()
    }

    #[test]
    fn an_acknowledged_break_is_followed_past_and_any_other_is_still_found() {
        let (_d, conn) = db(10);
        tamper(&conn, "UPDATE audit SET reason = 'edited' WHERE seq = 3;");
        let accepted: std::collections::BTreeSet<i64> = [3].into();
        assert!(matches!(
            verify_store(&conn, &ChainKey::unkeyed(), &[], &accepted).unwrap(),
            Verification::Intact { count: 10, .. }
        ));
        tamper(
            &conn,
            "UPDATE audit SET reason = 'edited too' WHERE seq = 7;",
        );
        assert!(matches!(
            verify_store(&conn, &ChainKey::unkeyed(), &[], &accepted).unwrap(),
            Verification::Broken { seq: 7, .. }
        ));
        tamper(&conn, "DELETE FROM audit WHERE seq = 8;");
        let more: std::collections::BTreeSet<i64> = [3, 7].into();
        assert!(matches!(
            verify_store(&conn, &ChainKey::unkeyed(), &[], &more).unwrap(),
            Verification::Broken {
                seq: 8,
                kind: BreakKind::Missing,
                ..
            }
        ));
    }

    fn tamper(conn: &Connection, sql: &str) {
        conn.execute_batch(&format!(
            "DROP TRIGGER IF EXISTS audit_no_update; DROP TRIGGER IF EXISTS audit_no_delete; {sql}"
        ))
        .unwrap();
    }

    #[test]
    fn an_untouched_chain_verifies() {
        let (_d, conn) = db(20);
        match verify(all(&conn), &ChainKey::unkeyed(), &[]) {
            Verification::Intact { count, head, .. } => {
                assert_eq!(count, 20);
                assert_eq!(head, super::head(&conn).unwrap().unwrap().1);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn triggers_refuse_update_and_delete() {
        let (_d, conn) = db(3);
        assert!(conn
            .execute("UPDATE audit SET actor = 'x' WHERE seq = 2", [])
            .is_err());
        assert!(conn.execute("DELETE FROM audit WHERE seq = 3", []).is_err());
    }

    #[test]
    fn a_changed_body_is_named_at_its_row() {
        let (_d, conn) = db(20);
        tamper(
            &conn,
            "UPDATE audit SET body = replace(body, '\"i\":7', '\"i\":70') WHERE seq = 8;",
        );
        assert_eq!(
            verify(all(&conn), &ChainKey::unkeyed(), &[]),
            Verification::Broken {
                seq: 8,
                kind: BreakKind::Changed,
                last_good: Some(7),
                detail: "content does not match its hash (altered, or verified with the wrong HMAC secret)".into()
            }
        );
    }

    #[test]
    fn a_deleted_row_is_missing() {
        let (_d, conn) = db(20);
        tamper(&conn, "DELETE FROM audit WHERE seq = 5;");
        assert!(matches!(
            verify(all(&conn), &ChainKey::unkeyed(), &[]),
            Verification::Broken {
                seq: 5,
                kind: BreakKind::Missing,
                last_good: Some(4),
                ..
            }
        ));
    }

    #[test]
    fn swapped_rows_are_reordered() {
        let (_d, conn) = db(20);
        // Swap the content of rows 10 and 11 (keeping their positions).
        tamper(
            &conn,
            "CREATE TEMP TABLE t AS SELECT * FROM audit WHERE seq IN (10, 11);
             DELETE FROM audit WHERE seq IN (10, 11);
             INSERT INTO audit SELECT 21 - seq, utc, mono_ms, boot_id, clock_trusted, actor, kind, subject, body, reason, prev_hash, hash FROM t;",
        );
        assert!(matches!(
            verify(all(&conn), &ChainKey::unkeyed(), &[]),
            Verification::Broken { seq: 10, .. }
        ));
        // Rows 10 and 11 swapped: row 10 now carries row 11's prev_hash, which is row 10's
        // genuine hash, unknown so far; row 11 would carry row 9's. Move 11 before 10 instead:
        let (_d2, conn2) = db(20);
        tamper(
            &conn2,
            "CREATE TEMP TABLE t AS SELECT * FROM audit WHERE seq = 12;
             DELETE FROM audit WHERE seq = 12;
             INSERT INTO audit SELECT 12, utc, mono_ms, boot_id, clock_trusted, actor, kind, subject, body, reason,
                 (SELECT prev_hash FROM audit WHERE seq = 6), hash FROM t;",
        );
        assert!(matches!(
            verify(all(&conn2), &ChainKey::unkeyed(), &[]),
            Verification::Broken {
                seq: 12,
                kind: BreakKind::Reordered,
                ..
            }
        )); // Streaming from the database, with no map of hashes, classifies the break the same way.
        assert!(matches!(
            verify_store(&conn2, &ChainKey::unkeyed(), &[], &Default::default()).unwrap(),
            Verification::Broken {
                seq: 12,
                kind: BreakKind::Reordered,
                ..
            }
        ));
    }

    #[test]
    fn a_consistent_rewrite_is_caught_by_a_checkpoint() {
        let (_d, conn) = db(20);
        let cp = CheckpointRef {
            seq: 15,
            head: all(&conn)[14].hash.clone(),
        };
        // Rewrite from row 8 on and re-chain every hash after it: the chain alone is intact.
        let key = ChainKey::unkeyed();
        let mut rows_now = all(&conn);
        rows_now[7].body = "{\"i\":700}".into();
        let mut prev = rows_now[6].hash.clone();
        for r in rows_now.iter_mut().skip(7) {
            r.prev_hash = prev.clone();
            r.hash = key.link(&r.prev_hash, &r.canonical());
            prev = r.hash.clone();
        }
        assert!(matches!(
            verify(rows_now.clone(), &key, &[]),
            Verification::Intact { .. }
        ));
        assert!(matches!(
            verify(rows_now, &key, std::slice::from_ref(&cp)),
            Verification::Broken {
                seq: 15,
                kind: BreakKind::CheckpointMismatch,
                ..
            }
        ));
    }

    #[test]
    fn a_truncated_tail_is_caught_by_a_checkpoint() {
        let (_d, conn) = db(20);
        let cp = CheckpointRef {
            seq: 20,
            head: all(&conn)[19].hash.clone(),
        };
        tamper(&conn, "DELETE FROM audit WHERE seq > 16;");
        assert!(matches!(
            verify(all(&conn), &ChainKey::unkeyed(), &[cp]),
            Verification::Broken {
                seq: 17,
                kind: BreakKind::Truncated,
                last_good: Some(16),
                ..
            }
        ));
    }

    #[test]
    fn a_keyed_chain_needs_its_secret() {
        let dir = tempfile::tempdir().unwrap();
        let mut conn = super::super::schema::open(&dir.path().join("k.db")).unwrap();
        let key = ChainKey::keyed(b"pharmacy secret");
        for i in 0..3 {
            let tx = conn.transaction().unwrap();
            append(&tx, &key, &entry(i)).unwrap();
            tx.commit().unwrap();
        }
        assert!(matches!(
            verify(all(&conn), &key, &[]),
            Verification::Intact { .. }
        ));
        assert!(matches!(
            verify(all(&conn), &ChainKey::unkeyed(), &[]),
            Verification::Broken {
                seq: 1,
                kind: BreakKind::Changed,
                ..
            }
        ));
    }

    #[test]
    fn filters_select_by_kind_time_and_patient() {
        let (_d, conn) = db(10);
        let f = Filter {
            patient: Some("p-odd".into()),
            ..Default::default()
        };
        assert_eq!(rows(&conn, &f).unwrap().len(), 5);
        let f = Filter {
            kind: Some("test.".into()),
            from: Some(entry(5).utc),
            ..Default::default()
        };
        assert_eq!(rows(&conn, &f).unwrap().len(), 5);
        let f = Filter {
            kind: Some("other".into()),
            ..Default::default()
        };
        assert!(rows(&conn, &f).unwrap().is_empty());
    }

    #[test]
    fn a_kind_filter_takes_its_family_with_or_without_the_dot_and_medication_ignores_case() {
        let dir = tempfile::tempdir().unwrap();
        let mut conn = super::super::schema::open(&dir.path().join("f.db")).unwrap();
        let key = ChainKey::unkeyed();
        for (i, (kind, medication)) in [
            ("coldchain.excursion.opened", "Metformin"),
            ("coldchain.excursion.closed", "x"),
            ("coldchain.excursions", "x"),
            ("dose.dispensed", "metformin "),
            ("dose.taken", "METFORMIN"),
        ]
        .iter()
        .enumerate()
        {
            let tx = conn.transaction().unwrap();
            let e = Entry {
                kind: kind.to_string(),
                body: serde_json::json!({ "medication": medication }),
                ..entry(i as i64)
            };
            append(&tx, &key, &e).unwrap();
            tx.commit().unwrap();
        }
        let count = |kind: Option<&str>, medication: Option<&str>| {
            let f = Filter {
                kind: kind.map(Into::into),
                medication: medication.map(Into::into),
                ..Default::default()
            };
            rows(&conn, &f).unwrap().len()
        };
        assert_eq!(count(Some("coldchain.excursion"), None), 2);
        assert_eq!(count(Some("coldchain.excursion."), None), 2);
        assert_eq!(count(Some("coldchain.excursion.opened"), None), 1);
        assert_eq!(count(Some("coldchain"), None), 3);
        assert_eq!(count(None, Some("Metformin")), 3);
        assert_eq!(count(Some("dose"), Some("  metformin")), 2);
    }
}
