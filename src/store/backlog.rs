//! What the appliance does while its storage fails (README, "The store and the audit log": a
//! storage error is never reported as success). Events that could not be made durable are held in
//! order and retried; the dispenser is locked meanwhile (nothing may be dispensed that cannot be
//! recorded) while the fridge keeps running. If storage does not come back within a grace period
//! the appliance stops with a distinct exit status for its supervisor, and the events still held
//! are handed back so they can be written out rather than silently lost.

use super::recorder::{Recorded, Recorder};
use super::StoreError;
use crate::events::Event;
use chrono::{DateTime, Utc};
use std::collections::VecDeque;
use std::time::Duration;

/// How long storage may fail before the appliance gives up and exits for a restart.
pub const GRACE: Duration = Duration::from_secs(60);

/// The state of storage after an attempt.
#[derive(Debug)]
pub enum Health {
    /// Everything held is durable now; these were recorded by this attempt, in order.
    Durable {
        /// What was recorded.
        recorded: Vec<Recorded>,
        /// Storage had been failing and recovered with this attempt.
        recovered: bool,
    },
    /// Storage fails; the event is held.
    Failing {
        /// This is the first failure of the episode.
        newly: bool,
        /// The error.
        error: String,
    },
}

/// Events waiting for storage, oldest first.
#[derive(Default)]
pub struct Backlog {
    held: VecDeque<(Event, Duration, DateTime<Utc>, bool)>,
    failing_since: Option<tokio::time::Instant>,
    last_error: Option<StoreError>,
    /// The dispenser last reported its wall clock untrusted: every row says so (its
    /// `clock_trusted` column) until a person trusts it again.
    clock_untrusted: bool,
}

impl Backlog {
    /// Whether storage is failing now.
    pub fn failing(&self) -> bool {
        self.failing_since.is_some()
    }

    /// Whether storage has failed for longer than [`GRACE`].
    pub fn gave_up(&self) -> bool {
        self.failing_since.is_some_and(|t| t.elapsed() >= GRACE)
    }

    /// Records `ev` (after anything still held). `mono` and `now` are the clocks at the event.
    pub fn record(
        &mut self,
        rec: &mut Recorder,
        ev: Event,
        mono: Duration,
        now: DateTime<Utc>,
    ) -> Health {
        if let Event::ClockTrust { trusted, .. } = &ev {
            self.clock_untrusted = !trusted;
        }
        self.held.push_back((ev, mono, now, !self.clock_untrusted));
        self.retry(rec)
    }

    /// Tries again to record what is held.
    pub fn retry(&mut self, rec: &mut Recorder) -> Health {
        let mut recorded = Vec::new();
        while let Some((ev, mono, now, trusted)) = self.held.front() {
            match rec.record(ev, *mono, *trusted, *now) {
                Ok(r) => {
                    // A reading held for its group commit is not durable yet: nobody hears of it.
                    if !r.held {
                        recorded.push(r);
                    }
                    self.held.pop_front();
                }
                Err(e) => {
                    let newly = self.failing_since.is_none();
                    self.failing_since
                        .get_or_insert_with(tokio::time::Instant::now);
                    let error = e.to_string();
                    self.last_error = Some(e);
                    return Health::Failing { newly, error };
                }
            }
        }
        let recovered = self.failing_since.take().is_some();
        Health::Durable {
            recorded,
            recovered,
        }
    }

    /// Gives up: the last storage error and every event still held, oldest first.
    pub fn into_parts(self) -> (Option<StoreError>, Vec<Event>) {
        (
            self.last_error,
            self.held.into_iter().map(|(e, ..)| e).collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::audit::ChainKey;

    #[tokio::test(start_paused = true)]
    async fn storage_failure_holds_events_in_order_and_recovers_without_losing_one() {
        let dir = tempfile::tempdir().unwrap();
        let mut rec =
            Recorder::open(&dir.path().join("m.db"), ChainKey::unkeyed(), "b".into()).unwrap();
        let pages: u32 = rec
            .connection()
            .query_row("PRAGMA page_count", [], |r| r.get(0))
            .unwrap();
        rec.limit_pages(pages).unwrap();
        let mut backlog = Backlog::default();
        let t0 = Utc::now();
        let mut failed_at = None;
        for i in 0..200 {
            let ev = Event::Started {
                at: t0 + chrono::Duration::seconds(i),
            };
            if let Health::Failing { .. } = backlog.record(&mut rec, ev, Duration::ZERO, t0) {
                failed_at.get_or_insert(i);
            }
        }
        let failed_at = failed_at.expect("a full database fails");
        assert!(backlog.failing());
        assert!(!backlog.gave_up());
        tokio::time::advance(GRACE).await;
        assert!(backlog.gave_up());
        // Space again (an operator freed the disk): everything held is recorded, in order.
        rec.limit_pages(1 << 20).unwrap();
        match backlog.retry(&mut rec) {
            Health::Durable {
                recorded,
                recovered,
            } => {
                assert!(recovered);
                assert_eq!(recorded.len() as i64, 200 - failed_at);
            }
            h => panic!("{h:?}"),
        }
        let starts: Vec<String> = rec
            .connection()
            .prepare("SELECT utc FROM audit WHERE kind = 'system.start' ORDER BY seq")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(starts.len(), 200);
        assert!(starts.windows(2).all(|w| w[0] < w[1]), "kept in order");
    }
}
