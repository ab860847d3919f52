//! The witness: an appliance's tamper evidence is only as good as whoever holds its signed
//! checkpoints off the device. Each rule here is pure (what is held in, findings out) and tested
//! by name; the archive feeds it what it holds for the device under a per-device lock, so two
//! collectors sharing the load never check the same device at once.
//!
//! Rows and checkpoints may arrive in any order (two collectors split one device's messages),
//! so every check is made from both sides: a row against its neighbours and any checkpoint at its
//! seq, a checkpoint against the row at its seq, whichever arrives second.

use medbox::store::audit::{ChainKey, Row};
use medbox::store::checkpoint::Checkpoint;
use serde_json::{json, Value};

/// Something wrong with a device's chain, with its evidence.
#[derive(Clone, Debug, PartialEq)]
pub enum Finding {
    /// The checkpoint's signature does not verify under the key it names.
    BadSignature {
        /// Checkpoint seq.
        seq: i64,
    },
    /// Signed by another key than the one the witness trusts for this device.
    KeyChanged {
        /// Checkpoint seq.
        seq: i64,
        /// The trusted key.
        pinned: String,
        /// The key that signed.
        got: String,
    },
    /// A row came again under a seq already held, with another hash: the device's history was
    /// rewritten (a fork, or a rollback to an older copy that then went on).
    RowRewritten {
        /// Seq.
        seq: i64,
        /// Hash held.
        held: String,
        /// Hash received.
        got: String,
    },
    /// A second checkpoint for a seq already signed, naming another head.
    CheckpointRewritten {
        /// Seq.
        seq: i64,
        /// Head held.
        held: String,
        /// Head received.
        got: String,
    },
    /// A row whose `prev_hash` is not the hash of the row before it.
    Unlinked {
        /// The later row's seq.
        seq: i64,
        /// Its prev_hash.
        prev_hash: String,
        /// The earlier row's hash.
        expected: String,
    },
    /// A row whose content does not hash to the hash it carries: it was changed after it was
    /// recorded (a database edited on the device and the row sent again, or a forgery that
    /// kept the hashes so the chain would still link).
    ContentAltered {
        /// Seq.
        seq: i64,
        /// The hash the row carries.
        hash: String,
        /// What its content hashes to.
        computed: String,
    },
    /// A checkpoint whose head is not the hash of the row held at its seq.
    CheckpointDisagrees {
        /// Seq.
        seq: i64,
        /// The signed head.
        head: String,
        /// The row's hash.
        row_hash: String,
    },
}

impl Finding {
    /// A short code for the flag.
    pub fn code(&self) -> &'static str {
        match self {
            Finding::BadSignature { .. } => "BAD_SIGNATURE",
            Finding::KeyChanged { .. } => "KEY_CHANGED",
            Finding::RowRewritten { .. } => "ROW_REWRITTEN",
            Finding::CheckpointRewritten { .. } => "CHECKPOINT_REWRITTEN",
            Finding::Unlinked { .. } => "UNLINKED",
            Finding::CheckpointDisagrees { .. } => "CHECKPOINT_DISAGREES",
            Finding::ContentAltered { .. } => "CONTENT_ALTERED",
        }
    }

    /// The seq it concerns.
    pub fn seq(&self) -> i64 {
        match self {
            Finding::BadSignature { seq }
            | Finding::KeyChanged { seq, .. }
            | Finding::RowRewritten { seq, .. }
            | Finding::CheckpointRewritten { seq, .. }
            | Finding::Unlinked { seq, .. }
            | Finding::CheckpointDisagrees { seq, .. }
            | Finding::ContentAltered { seq, .. } => *seq,
        }
    }

    /// For the pharmacist.
    pub fn detail(&self) -> String {
        match self {
            Finding::BadSignature { seq } => {
                format!("checkpoint at row {seq}: the signature does not verify")
            }
            Finding::KeyChanged { seq, pinned, got } => format!(
                "checkpoint at row {seq} is signed by key {} but this device's key is {}",
                short(got),
                short(pinned)
            ),
            Finding::RowRewritten { seq, held, got } => format!(
                "row {seq} came again with hash {} where {} is held: the device's history was rewritten (fork or rollback)",
                short(got),
                short(held)
            ),
            Finding::CheckpointRewritten { seq, held, got } => format!(
                "row {seq} was signed before with head {} and now with {}: the chain forked",
                short(held),
                short(got)
            ),
            Finding::Unlinked {
                seq,
                prev_hash,
                expected,
            } => format!(
                "row {seq} links to {} but row {} has hash {}",
                short(prev_hash),
                seq - 1,
                short(expected)
            ),
            Finding::CheckpointDisagrees {
                seq,
                head,
                row_hash,
            } => format!(
                "the checkpoint at row {seq} signs {} but the row received has hash {}",
                short(head),
                short(row_hash)
            ),
            Finding::ContentAltered {
                seq,
                hash,
                computed,
            } => format!(
                "row {seq} carries hash {} but its content hashes to {}: it was altered after it was recorded",
                short(hash),
                short(computed)
            ),
        }
    }

    /// Both sides, as stored with the flag.
    pub fn evidence(&self) -> Value {
        match self {
            Finding::BadSignature { seq } => json!({ "seq": seq }),
            Finding::KeyChanged { seq, pinned, got } => {
                json!({ "seq": seq, "pinned": pinned, "got": got })
            }
            Finding::RowRewritten { seq, held, got }
            | Finding::CheckpointRewritten { seq, held, got } => {
                json!({ "seq": seq, "held": held, "got": got })
            }
            Finding::Unlinked {
                seq,
                prev_hash,
                expected,
            } => json!({ "seq": seq, "prev_hash": prev_hash, "expected": expected }),
            Finding::CheckpointDisagrees {
                seq,
                head,
                row_hash,
            } => json!({ "seq": seq, "head": head, "row_hash": row_hash }),
            Finding::ContentAltered {
                seq,
                hash,
                computed,
            } => json!({ "seq": seq, "hash": hash, "computed": computed }),
        }
    }
}

fn short(h: &str) -> String {
    h.chars().take(12).collect()
}

/// A row's hashes as received or held (older appliances send none).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Hashes<'a> {
    /// The previous row's hash.
    pub prev_hash: Option<&'a str>,
    /// This row's hash.
    pub hash: Option<&'a str>,
}

/// What is held around a newly received row `seq`.
#[derive(Clone, Copy, Debug, Default)]
pub struct AroundRow<'a> {
    /// A row already held under the same seq.
    pub same: Option<Hashes<'a>>,
    /// Row `seq - 1`.
    pub before: Option<Hashes<'a>>,
    /// Row `seq + 1`.
    pub after: Option<Hashes<'a>>,
    /// The head of a checkpoint held at `seq`.
    pub checkpoint_head: Option<&'a str>,
}

/// Checks a newly received row. A row rewritten under a held seq is reported and not stored
/// over the first (the archive keeps what it received first as the evidence).
pub fn check_row(seq: i64, new: Hashes<'_>, held: AroundRow<'_>) -> Vec<Finding> {
    let mut out = Vec::new();
    if let (Some(same), Some(got)) = (held.same, new.hash) {
        if let Some(h) = same.hash.filter(|h| *h != got) {
            out.push(Finding::RowRewritten {
                seq,
                held: h.into(),
                got: got.into(),
            });
            return out;
        }
    }
    if let (Some(before), Some(prev)) = (held.before.and_then(|b| b.hash), new.prev_hash) {
        if before != prev {
            out.push(Finding::Unlinked {
                seq,
                prev_hash: prev.into(),
                expected: before.into(),
            });
        }
    }
    if let (Some(after), Some(hash)) = (held.after.and_then(|a| a.prev_hash), new.hash) {
        if after != hash {
            out.push(Finding::Unlinked {
                seq: seq + 1,
                prev_hash: after.into(),
                expected: hash.into(),
            });
        }
    }
    if let (Some(head), Some(hash)) = (held.checkpoint_head, new.hash) {
        if head != hash {
            out.push(Finding::CheckpointDisagrees {
                seq,
                head: head.into(),
                row_hash: hash.into(),
            });
        }
    }
    out
}

/// Checks that a row's content hashes to the hash it carries, for a chain linked with plain
/// SHA-256 (the row as [`crate::ingest::hashed_row`] rebuilds it). Links and checkpoints only
/// vouch for hashes; this is what ties a hash to the words a pharmacist reads.
pub fn check_content(row: &Row) -> Option<Finding> {
    let computed = ChainKey::unkeyed().link(&row.prev_hash, &row.canonical());
    (computed != row.hash).then(|| Finding::ContentAltered {
        seq: row.seq,
        hash: row.hash.clone(),
        computed,
    })
}

/// The verdict on a newly received checkpoint.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CheckpointVerdict {
    /// What is wrong.
    pub findings: Vec<Finding>,
    /// The key to trust from now on when none was (trust on first use of a valid signature;
    /// an enrolled key is never replaced).
    pub pin: Option<String>,
    /// Whether to keep it as one of the device's checkpoints (valid, under the trusted key,
    /// and not a second head for a seq already signed).
    pub keep: bool,
}

/// Checks a newly received checkpoint against the trusted key, a checkpoint already held at
/// the same seq, and the hash of the row held there.
pub fn check_checkpoint(
    cp: &Checkpoint,
    pinned: Option<&str>,
    held_same: Option<&str>,
    row_hash: Option<&str>,
) -> CheckpointVerdict {
    let mut v = CheckpointVerdict::default();
    if !cp.signature_valid() {
        v.findings.push(Finding::BadSignature { seq: cp.seq });
        return v;
    }
    match pinned {
        Some(key) if key != cp.public_key => {
            v.findings.push(Finding::KeyChanged {
                seq: cp.seq,
                pinned: key.into(),
                got: cp.public_key.clone(),
            });
            return v;
        }
        Some(_) => {}
        None => v.pin = Some(cp.public_key.clone()),
    }
    if let Some(held) = held_same {
        if held != cp.head {
            v.findings.push(Finding::CheckpointRewritten {
                seq: cp.seq,
                held: held.into(),
                got: cp.head.clone(),
            });
        }
        return v;
    }
    if let Some(row) = row_hash.filter(|h| *h != cp.head) {
        v.findings.push(Finding::CheckpointDisagrees {
            seq: cp.seq,
            head: cp.head.clone(),
            row_hash: row.into(),
        });
    }
    v.keep = true;
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use medbox::store::checkpoint::DeviceKey;

    /// A checkpoint signed by a fresh device key.
    fn signed(seq: i64, head: &str) -> (Checkpoint, DeviceKey) {
        let key = DeviceKey::generate().unwrap_or_else(|e| panic!("{e}"));
        (key.sign(seq, head, "2026-03-02T08:00:00.000Z"), key)
    }

    fn h<'a>(prev: &'a str, hash: &'a str) -> Hashes<'a> {
        Hashes {
            prev_hash: Some(prev),
            hash: Some(hash),
        }
    }

    #[test]
    fn a_first_valid_checkpoint_pins_the_devices_key_and_is_kept() {
        let (cp, _) = signed(100, "h100");
        let v = check_checkpoint(&cp, None, None, Some("h100"));
        assert_eq!(v.pin.as_deref(), Some(cp.public_key.as_str()));
        assert!(v.keep && v.findings.is_empty());
    }

    #[test]
    fn a_checkpoint_signed_by_another_key_is_flagged_and_not_kept() {
        let (cp, _) = signed(100, "h100");
        let v = check_checkpoint(&cp, Some("00ff"), None, None);
        assert!(matches!(
            v.findings[..],
            [Finding::KeyChanged { seq: 100, .. }]
        ));
        assert!(!v.keep && v.pin.is_none());
    }

    #[test]
    fn a_checkpoint_whose_signature_does_not_verify_is_flagged() {
        let (mut cp, _) = signed(100, "h100");
        cp.head = "forged".into();
        let v = check_checkpoint(&cp, None, None, None);
        assert_eq!(v.findings, [Finding::BadSignature { seq: 100 }]);
        assert!(!v.keep && v.pin.is_none(), "a forgery never pins a key");
    }

    #[test]
    fn a_second_head_for_a_signed_seq_is_a_fork() {
        let (cp, _) = signed(100, "other");
        let pk = cp.public_key.clone();
        let v = check_checkpoint(&cp, Some(&pk), Some("h100"), None);
        assert!(matches!(
            v.findings[..],
            [Finding::CheckpointRewritten { seq: 100, .. }]
        ));
        assert!(!v.keep);
        // The same checkpoint again (a redelivery that got past the id) is no finding.
        let (cp, _) = signed(100, "h100");
        let pk = cp.public_key.clone();
        let v = check_checkpoint(&cp, Some(&pk), Some("h100"), None);
        assert!(v.findings.is_empty());
    }

    #[test]
    fn a_checkpoint_that_disagrees_with_the_row_received_is_flagged_from_either_side() {
        let (cp, _) = signed(7, "signed-head");
        let pk = cp.public_key.clone();
        // The row came first.
        let v = check_checkpoint(&cp, Some(&pk), None, Some("row-hash"));
        assert!(matches!(
            v.findings[..],
            [Finding::CheckpointDisagrees { seq: 7, .. }]
        ));
        // The checkpoint came first.
        let f = check_row(
            7,
            h("h6", "row-hash"),
            AroundRow {
                checkpoint_head: Some("signed-head"),
                ..Default::default()
            },
        );
        assert!(matches!(
            f[..],
            [Finding::CheckpointDisagrees { seq: 7, .. }]
        ));
    }

    #[test]
    fn a_row_rewritten_under_a_held_seq_is_a_fork_or_rollback() {
        let f = check_row(
            5,
            h("h4", "new5"),
            AroundRow {
                same: Some(h("h4", "h5")),
                ..Default::default()
            },
        );
        assert_eq!(
            f,
            [Finding::RowRewritten {
                seq: 5,
                held: "h5".into(),
                got: "new5".into()
            }]
        );
        assert!(f[0].detail().contains("rewritten"), "{}", f[0].detail());
        // A redelivery of the same row is nothing.
        let same = AroundRow {
            same: Some(h("h4", "h5")),
            ..Default::default()
        };
        assert!(check_row(5, h("h4", "h5"), same).is_empty());
    }

    #[test]
    fn rows_that_do_not_link_are_flagged_whichever_arrives_second() {
        let before = AroundRow {
            before: Some(h("h3", "h4")),
            ..Default::default()
        };
        assert!(check_row(5, h("h4", "h5"), before).is_empty());
        assert!(matches!(
            check_row(5, h("x4", "h5"), before)[..],
            [Finding::Unlinked { seq: 5, .. }]
        ));
        let after = AroundRow {
            after: Some(h("x5", "h6")),
            ..Default::default()
        };
        assert!(matches!(
            check_row(5, h("h4", "h5"), after)[..],
            [Finding::Unlinked { seq: 6, .. }]
        ));
    }

    #[test]
    fn a_row_altered_after_it_was_hashed_is_flagged_with_both_hashes() {
        let mut row = Row {
            seq: 3,
            utc: "2026-03-02T08:00:00.000Z".into(),
            mono_ms: 1,
            boot_id: "b".into(),
            clock_trusted: true,
            actor: "system:dispenser".into(),
            kind: "dose.dispensed".into(),
            subject: "patient:p-1/medication:M".into(),
            body: r#"{"units":1}"#.into(),
            reason: String::new(),
            prev_hash: "00".repeat(32),
            hash: String::new(),
        };
        row.hash = ChainKey::unkeyed().link(&row.prev_hash, &row.canonical());
        assert_eq!(check_content(&row), None, "as recorded");
        let recorded = row.hash.clone();
        row.body = r#"{"units":2}"#.into();
        let f = check_content(&row).expect("flagged");
        assert!(
            matches!(&f, Finding::ContentAltered { seq: 3, hash, computed }
                if *hash == recorded && *computed != recorded),
            "{f:?}"
        );
        assert_eq!(f.code(), "CONTENT_ALTERED");
        assert!(f.detail().contains("altered"), "{}", f.detail());
        // Every field the hash covers counts, the previous hash too.
        for alter in [
            |r: &mut Row| r.actor = "caregiver:eve".into(),
            |r: &mut Row| r.utc = "2026-03-01T08:00:00.000Z".into(),
            |r: &mut Row| r.clock_trusted = false,
            |r: &mut Row| r.prev_hash = "11".repeat(32),
        ] {
            let mut r = row.clone();
            r.body = r#"{"units":1}"#.into();
            alter(&mut r);
            assert!(check_content(&r).is_some());
        }
    }

    #[test]
    fn rows_from_appliances_without_hashes_are_not_flagged() {
        let held = AroundRow {
            same: Some(Hashes::default()),
            before: Some(h("h3", "h4")),
            after: Some(h("h5", "h6")),
            checkpoint_head: Some("h5"),
        };
        assert!(check_row(5, Hashes::default(), held).is_empty());
    }
}
