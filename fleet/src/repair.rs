//! `medbox-fleet repair`: asks appliances for the audit rows the archive lacks.
//!
//! A broker acknowledges an appliance's message before any collector has it; a broker whose
//! queue for a collector is full drops what comes next (Mosquitto past `max_queued_messages`),
//! and the appliance, told the message was delivered, deletes it from its outbox. Its audit log
//! still holds the row, so the archive names the sequence numbers it is missing — holes between
//! the rows it holds, and a tail up to the last checkpoint it holds — and sends `resend_audit`
//! for each (in parts of at most [`medbox::controller::commands::MAX_RESEND`]); the rows come
//! back under their own message ids and are stored and witnessed as if they had never been lost.

use crate::archive::{Archive, ArchiveError};
use medbox::remote::Request;

/// Audit rows `from..=to` of `device` that the archive lacks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Gap {
    /// Device id.
    pub device: String,
    /// First missing sequence number.
    pub from: i64,
    /// Last missing one (inclusive).
    pub to: i64,
}

/// The archive's gaps, of one device or of all, by device and sequence number.
pub async fn gaps(archive: &Archive, device: Option<&str>) -> Result<Vec<Gap>, ArchiveError> {
    let rows = archive
        .client()
        .query(
            "WITH held AS ( \
               SELECT device_id, seq, lag(seq, 1, 0::bigint) OVER w AS prev \
               FROM audit_rows WHERE $1::text IS NULL OR device_id = $1 \
               WINDOW w AS (PARTITION BY device_id ORDER BY seq)), \
             holes AS ( \
               SELECT device_id, prev + 1 AS first, seq - 1 AS last FROM held WHERE seq > prev + 1), \
             tails AS ( \
               SELECT c.device_id, coalesce(max(a.seq), 0) + 1 AS first, max(c.seq) AS last \
               FROM checkpoints c LEFT JOIN audit_rows a USING (device_id) \
               WHERE $1::text IS NULL OR c.device_id = $1 \
               GROUP BY c.device_id) \
             SELECT device_id, first, last FROM holes \
             UNION ALL SELECT device_id, first, last FROM tails WHERE last >= first \
             ORDER BY 1, 2",
            &[&device],
        )
        .await?;
    Ok(rows
        .into_iter()
        .map(|r| Gap {
            device: r.get(0),
            from: r.get(1),
            to: r.get(2),
        })
        .collect())
}

/// The `resend_audit` requests that fill `gap`, each within what one command may ask.
pub fn requests(gap: &Gap, max: i64) -> Vec<Request> {
    let max = max.max(1);
    let mut out = Vec::new();
    let mut from = gap.from;
    while from <= gap.to {
        let to = gap.to.min(from + max - 1);
        out.push(Request::ResendAudit { from, to });
        from = to + 1;
    }
    out
}

/// What became of one request.
#[derive(Debug)]
pub struct Asked {
    /// The device asked.
    pub device: String,
    /// What it was asked.
    pub request: Request,
    /// Its answer, or why none came.
    pub answer: Result<medbox::remote::Answer, String>,
}

/// Asks each gap's appliance for its rows through the broker at `mqtt`, in the pharmacist role
/// (the broker must grant it to this identity) as `actor`, each request under a fresh id: a
/// repair run again asks again (what came back the first time may have been lost too).
pub async fn ask(
    mqtt: &str,
    credentials: Option<&(String, String)>,
    actor: &str,
    gaps: &[Gap],
    timeout: std::time::Duration,
) -> Vec<Asked> {
    let mut out = Vec::new();
    for gap in gaps {
        for request in requests(gap, medbox::controller::commands::MAX_RESEND) {
            let nonce = crate::portal::auth::random_token();
            let answer = match medbox::uplink::broker_options(
                mqtt,
                &format!("medbox-fleet-repair-{}", &nonce[..12]),
                None,
                credentials,
            ) {
                Err(e) => Err(e.to_string()),
                Ok(opts) => medbox::remote::send(
                    opts,
                    &gap.device,
                    "pharmacist",
                    actor,
                    &format!("repair-{}", &nonce[..24]),
                    &request,
                    timeout,
                )
                .await
                .map_err(|e| e.to_string()),
            };
            out.push(Asked {
                device: gap.device.clone(),
                request,
                answer,
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_gap_is_asked_for_in_parts_no_larger_than_one_command_takes() {
        let gap = |from, to| Gap {
            device: "d".into(),
            from,
            to,
        };
        let asked = |g: &Gap, max| -> Vec<(i64, i64)> {
            requests(g, max)
                .into_iter()
                .map(|r| match r {
                    Request::ResendAudit { from, to } => (from, to),
                    other => panic!("{other:?}"),
                })
                .collect()
        };
        assert_eq!(asked(&gap(5, 9), 10_000), vec![(5, 9)]);
        assert_eq!(asked(&gap(7, 7), 10_000), vec![(7, 7)]);
        assert_eq!(
            asked(&gap(1, 25), 10),
            vec![(1, 10), (11, 20), (21, 25)],
            "every row once, in order"
        );
        assert_eq!(asked(&gap(9, 5), 10), vec![], "nothing missing");
    }
}
