//! `medbox-fleet verify --device … --export …`: an exported chain checked against what the
//! witness holds. The device's own verification (`medbox audit verify`) does the chain; the
//! witness adds the checkpoints it received and kept under the device's trusted key, so a copy
//! rewritten after those checkpoints left the device no longer passes.

use crate::archive::{self, Archive};
use medbox::store::audit::{self, ChainKey, CheckpointRef, Row, Verification};

/// What the witness says of an export.
#[derive(Debug, PartialEq)]
pub struct WitnessVerdict {
    /// The chain against the witness's checkpoints.
    pub verification: Verification,
    /// Checkpoints the witness holds for the device.
    pub checkpoints: usize,
    /// Checkpoints beyond the export's last row (the export is older than what the witness saw,
    /// or the device's history was cut short).
    pub beyond: Vec<i64>,
    /// The witness's earlier findings about the device (code, detail).
    pub flags: Vec<(String, String)>,
}

impl WitnessVerdict {
    /// Exit status: 0 intact, 1 broken or flagged.
    pub fn intact(&self) -> bool {
        matches!(self.verification, Verification::Intact { .. })
            && self.beyond.is_empty()
            && self.flags.is_empty()
    }
}

/// Verifies `rows` (an export of `device`'s chain) against the witness's checkpoints.
pub async fn verify(
    archive: &Archive,
    device: &str,
    rows: Vec<Row>,
    key: &ChainKey,
) -> Result<WitnessVerdict, archive::ArchiveError> {
    let held = archive::checkpoints(archive, device).await?;
    let last = rows.last().map_or(0, |r| r.seq);
    let beyond = held
        .iter()
        .filter(|c| c.seq > last)
        .map(|c| c.seq)
        .collect();
    let refs: Vec<CheckpointRef> = held
        .iter()
        .filter(|c| c.seq <= last)
        .map(|c| CheckpointRef {
            seq: c.seq,
            head: c.head.clone(),
        })
        .collect();
    let verification = audit::verify(rows, key, &refs);
    let flags = archive::flags(archive, device)
        .await?
        .into_iter()
        .map(|(code, _, detail)| (code, detail))
        .collect();
    Ok(WitnessVerdict {
        verification,
        checkpoints: held.len(),
        beyond,
        flags,
    })
}
