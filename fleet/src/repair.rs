//! `medbox-fleet repair`: asks appliances for the audit rows the archive lacks.
//!
//! A broker acknowledges an appliance's message before any collector has it; a broker whose
//! queue for a collector is full drops what comes next (Mosquitto past `max_queued_messages`),
//! and the appliance, told the message was delivered, deletes it from its outbox. Its audit log
//! still holds the row, so the archive names the sequence numbers it is missing — holes between
//! the rows it holds, and a tail up to the last checkpoint it holds — and sends `resend_audit`
//! for each (in parts of at most [`medbox::controller::commands::MAX_RESEND`]); the rows come
//! back under their own message ids and are stored and witnessed as if they had never been lost.
//!
//! `collect --repair-every` does this on its own ([`Rounds`], [`run`]): a hole is also what a
//! row still on its way looks like (an alarm overtakes the events queued before it; the other
//! collector of the group has not committed yet), so only a gap that outlived a whole round is
//! asked for, only from a device that is online, and at most [`MAX_ASKS`] times.

use crate::archive::{Archive, ArchiveError};
use medbox::remote::Request;

/// Audit rows `from..=to` of `device` that the archive lacks.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
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
    /// The gap the request is part of.
    pub gap: Gap,
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
                gap: gap.clone(),
                request,
                answer,
            });
        }
    }
    out
}

/// How often the automatic repair asks for one gap before it leaves it to a person (an
/// appliance that no longer holds the rows, restored from an older copy, cannot send them).
pub const MAX_ASKS: u32 = 3;

/// The parts of the gaps in `now` that were already missing in `before`.
pub fn held_over(before: &[Gap], now: &[Gap]) -> Vec<Gap> {
    let mut out = Vec::new();
    for n in now {
        for b in before.iter().filter(|b| b.device == n.device) {
            let (from, to) = (n.from.max(b.from), n.to.min(b.to));
            if from <= to {
                out.push(Gap {
                    device: n.device.clone(),
                    from,
                    to,
                });
            }
        }
    }
    out.sort();
    out
}

/// What one round of the automatic repair decided.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Round {
    /// Gaps to ask for now.
    pub ask: Vec<Gap>,
    /// Gaps asked for [`MAX_ASKS`] times that are still missing: reported once, then left to a
    /// person (`medbox-fleet repair --dry-run` still lists them).
    pub given_up: Vec<Gap>,
}

/// The automatic repair's memory between rounds: the gaps seen last round and how often each
/// has been asked for. Pure, so which gap is asked for when is tested without a broker.
#[derive(Clone, Debug, Default)]
pub struct Rounds {
    seen: Vec<Gap>,
    asked: std::collections::BTreeMap<Gap, u32>,
}

impl Rounds {
    /// One round: the archive's gaps now, and whether each device is online.
    pub fn next(&mut self, now: Vec<Gap>, online: impl Fn(&str) -> bool) -> Round {
        let due = held_over(&self.seen, &now);
        // A gap that filled (or changed: some of its rows came) starts its count again.
        self.asked.retain(|g, _| due.contains(g));
        let mut round = Round::default();
        for gap in due.into_iter().filter(|g| online(&g.device)) {
            let n = self.asked.entry(gap.clone()).or_insert(0);
            if *n < MAX_ASKS {
                *n += 1;
                round.ask.push(gap);
            } else if *n == MAX_ASKS {
                *n += 1;
                round.given_up.push(gap);
            }
        }
        self.seen = now;
        round
    }

    /// The appliance answered BUSY to a request for `gap` (its command queue or its resend
    /// budget was full: nothing done, send again): that ask is not counted, so a busy
    /// appliance is never given up on for being busy.
    pub fn busy(&mut self, gap: &Gap) {
        if let Some(n) = self.asked.get_mut(gap) {
            *n = n.saturating_sub(1);
        }
    }
}

/// Whether an answer is the appliance's BUSY refusal (nothing done; send it again).
pub fn is_busy(answer: &medbox::remote::Answer) -> bool {
    let busy = medbox::refusal::RefusalCode::Busy.code();
    !answer.ok
        && answer
            .detail
            .strip_prefix(busy.as_str())
            .is_some_and(|rest| rest.starts_with(':'))
}

/// The automatic repair: a round every `every` for as long as it runs, by whichever collector
/// of the group holds the repair lock (one at a time, so a device is not asked twice; when that
/// collector stops, its connection and lock go, and another takes over at its next round).
pub async fn run(
    pg: String,
    schema: Option<String>,
    mqtt: String,
    credentials: Option<(String, String)>,
    every: std::time::Duration,
) {
    let mut rounds = Rounds::default();
    let mut archive: Option<Archive> = None;
    // Whether this connection holds the repair lock (kept until the connection goes).
    let mut leading = false;
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if archive.is_none() {
            match Archive::connect(&pg, schema.as_deref()).await {
                Ok(a) => {
                    archive = Some(a);
                    leading = false;
                }
                Err(e) => {
                    tracing::warn!("repair: archive unavailable: {e}");
                    continue;
                }
            }
        }
        let Some(a) = archive.as_ref() else { continue };
        let leads = lead(a, &mut leading).await;
        let done = match leads {
            Ok(true) => round(a, &mut rounds, &mqtt, credentials.as_ref(), every).await,
            Ok(false) => Ok(()),
            Err(e) => Err(e),
        };
        match done {
            Ok(()) => {}
            Err(e) => {
                tracing::warn!("repair: {e}");
                archive = None;
            }
        }
    }
}

/// Lock id of the automatic repair (one collector of a group repairs at a time).
const REPAIR_LOCK: i64 = 7_261_004;

/// Whether this connection leads the repair: it asks for the lock until it holds it, and then
/// not again (a session's advisory locks stack; one is enough).
async fn lead(a: &Archive, leading: &mut bool) -> Result<bool, ArchiveError> {
    if !*leading {
        *leading = a
            .client()
            .query_one("SELECT pg_try_advisory_lock($1)", &[&REPAIR_LOCK])
            .await?
            .get(0);
    }
    Ok(*leading)
}

async fn round(
    a: &Archive,
    rounds: &mut Rounds,
    mqtt: &str,
    credentials: Option<&(String, String)>,
    every: std::time::Duration,
) -> Result<(), ArchiveError> {
    let now = gaps(a, None).await?;
    let online: std::collections::BTreeSet<String> = a
        .client()
        .query("SELECT device_id FROM devices WHERE status = 'online'", &[])
        .await?
        .into_iter()
        .map(|r| r.get(0))
        .collect();
    let round = rounds.next(now, |d| online.contains(d));
    for g in &round.given_up {
        tracing::warn!(
            "repair: {} audit rows {}-{} still missing after {MAX_ASKS} asks; left to a person",
            g.device,
            g.from,
            g.to
        );
    }
    if round.ask.is_empty() {
        return Ok(());
    }
    let timeout = every.clamp(
        std::time::Duration::from_secs(1),
        std::time::Duration::from_secs(30),
    );
    // A gap asked for in several parts is uncounted once, however many parts were BUSY.
    let mut busied: Vec<Gap> = Vec::new();
    for x in ask(
        mqtt,
        credentials,
        "medbox-fleet repair",
        &round.ask,
        timeout,
    )
    .await
    {
        if x.answer.as_ref().is_ok_and(is_busy) && !busied.contains(&x.gap) {
            rounds.busy(&x.gap);
            busied.push(x.gap.clone());
        }
        match &x.answer {
            Ok(a) if a.ok => tracing::info!("repair: {} {:?}: {}", x.device, x.request, a.detail),
            Ok(a) => tracing::warn!("repair: {} {:?} refused: {}", x.device, x.request, a.detail),
            Err(e) => tracing::warn!("repair: {} {:?}: no answer: {e}", x.device, x.request),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gap(device: &str, from: i64, to: i64) -> Gap {
        Gap {
            device: device.into(),
            from,
            to,
        }
    }

    #[test]
    fn a_gap_is_asked_for_only_once_it_has_outlived_a_round() {
        let mut r = Rounds::default();
        let all = |_: &str| true;
        // First seen: perhaps only on its way.
        assert_eq!(r.next(vec![gap("a", 5, 9)], all).ask, vec![]);
        // Rows 5-6 came meanwhile; 7-9 and a new hole at 20 did not.
        let round = r.next(vec![gap("a", 7, 9), gap("a", 20, 20)], all);
        assert_eq!(
            round.ask,
            vec![gap("a", 7, 9)],
            "only what outlived a round"
        );
        // A hole that fills is never asked for.
        assert_eq!(r.next(vec![gap("a", 7, 9)], all).ask, vec![gap("a", 7, 9)]);
        assert_eq!(r.next(vec![], all).ask, vec![]);
    }

    #[test]
    fn only_a_device_that_is_online_is_asked() {
        let mut r = Rounds::default();
        let gaps = || vec![gap("on", 1, 2), gap("off", 1, 2)];
        r.next(gaps(), |_| true);
        let round = r.next(gaps(), |d| d == "on");
        assert_eq!(round.ask, vec![gap("on", 1, 2)]);
        // The offline device's gap waits, uncounted, until it is back.
        let round = r.next(gaps(), |_| true);
        assert_eq!(round.ask, vec![gap("off", 1, 2), gap("on", 1, 2)]);
    }

    #[test]
    fn a_gap_asked_for_max_asks_times_is_given_up_once_and_then_left_alone() {
        let mut r = Rounds::default();
        let all = |_: &str| true;
        let g = || vec![gap("a", 3, 3)];
        r.next(g(), all);
        let asks: Vec<Round> = (0..MAX_ASKS + 3).map(|_| r.next(g(), all)).collect();
        let asked = asks.iter().filter(|x| !x.ask.is_empty()).count();
        assert_eq!(asked, MAX_ASKS as usize);
        let given_up: Vec<&Round> = asks.iter().filter(|x| !x.given_up.is_empty()).collect();
        assert_eq!(given_up.len(), 1, "reported once: {asks:?}");
        assert_eq!(given_up[0].given_up, g());
        // Once it fills its count is forgotten: the same rows missing later are a new loss.
        r.next(vec![], all);
        r.next(g(), all);
        assert_eq!(r.next(g(), all).ask, g());
    }

    #[test]
    fn a_gap_refused_busy_is_not_counted_as_asked() {
        let mut r = Rounds::default();
        let all = |_: &str| true;
        let g = || vec![gap("a", 3, 3)];
        r.next(g(), all);
        // Every ask but the last answered BUSY: still asked, never given up on.
        for _ in 0..MAX_ASKS * 4 {
            let round = r.next(g(), all);
            assert_eq!((round.ask.clone(), round.given_up), (g(), vec![]));
            r.busy(&round.ask[0]);
        }
        // Answers that are not BUSY count again.
        let asked = (0..MAX_ASKS + 2)
            .filter(|_| !r.next(g(), all).ask.is_empty())
            .count();
        assert_eq!(asked, MAX_ASKS as usize);
        assert!(is_busy(&medbox::remote::Answer {
            ok: false,
            detail: "BUSY: resend budget spent; wait 12 s".into(),
            duplicate: false,
        }));
        assert!(!is_busy(&medbox::remote::Answer {
            ok: false,
            detail: "NOT_HELD: rows 1-3 are gone".into(),
            duplicate: false,
        }));
    }

    #[test]
    fn held_over_keeps_only_rows_missing_both_times() {
        assert_eq!(
            held_over(
                &[gap("a", 1, 10), gap("b", 1, 3)],
                &[gap("a", 5, 15), gap("b", 4, 6), gap("c", 1, 1)]
            ),
            vec![gap("a", 5, 10)]
        );
    }

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
