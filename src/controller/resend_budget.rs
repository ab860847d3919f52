//! How many audit rows `resend_audit` may queue again: a bucket refilled over the monotonic
//! clock. One request is bounded ([`super::commands::MAX_RESEND`]) and each id runs once, but a
//! stream of requests under fresh ids (a looping script, a stolen pharmacist credential) could
//! still fill the outbox and the uplink with old rows ahead of what the appliance records next.
//! A repair after a fleet-wide outage asks for about a day's rows (≈ 1 500), far inside the
//! budget. Pure, so the limit is tested without a broker; a restart starts with a full bucket.

use std::time::Duration;

/// Rows the bucket holds, and refills in an hour.
pub const ROWS_PER_HOUR: i64 = 20_000;

/// The rows left to send again, as of a monotonic instant.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ResendBudget {
    rows: f64,
    at: Duration,
}

impl ResendBudget {
    /// A full bucket at monotonic `now`.
    pub fn new(now: Duration) -> Self {
        Self {
            rows: ROWS_PER_HOUR as f64,
            at: now,
        }
    }

    /// Takes `rows` at monotonic `now`, or says how long until the bucket holds them (nothing
    /// is taken then).
    pub fn take(&mut self, rows: i64, now: Duration) -> Result<(), Duration> {
        let full = ROWS_PER_HOUR as f64;
        // A monotonic clock never goes back; if one did, nothing is refilled for it.
        let elapsed = now.saturating_sub(self.at).as_secs_f64();
        self.rows = (self.rows + elapsed * full / 3600.0).min(full);
        self.at = self.at.max(now);
        let want = rows.max(0) as f64;
        if want <= self.rows {
            self.rows -= want;
            return Ok(());
        }
        if want > full {
            return Err(Duration::MAX);
        }
        Err(Duration::from_secs_f64(
            ((want - self.rows) * 3600.0 / full).ceil(),
        ))
    }

    /// Rows that could be asked for now (whole rows).
    pub fn left(&self) -> i64 {
        self.rows.floor() as i64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: Duration = Duration::from_secs(60);

    #[test]
    fn a_stream_of_resends_is_held_to_the_rows_an_hour_refills() {
        let mut b = ResendBudget::new(Duration::ZERO);
        assert_eq!(b.take(10_000, Duration::ZERO), Ok(()));
        assert_eq!(b.take(10_000, Duration::ZERO), Ok(()));
        // Empty: the next request waits for its rows to refill, and nothing is taken.
        let wait = b.take(5_000, Duration::ZERO).expect_err("empty");
        assert_eq!(wait, 15 * MIN, "5 000 rows refill in a quarter of an hour");
        assert_eq!(b.take(5_000, 14 * MIN), Err(MIN));
        assert_eq!(b.take(5_000, 15 * MIN), Ok(()));
        // However fast they come, an hour never sends more than the bucket and its refill.
        let mut b = ResendBudget::new(Duration::ZERO);
        let sent: i64 = (0..3600)
            .filter(|s| b.take(100, Duration::from_secs(*s)).is_ok())
            .count() as i64
            * 100;
        assert!(sent <= 2 * ROWS_PER_HOUR, "{sent}");
        assert!(sent >= ROWS_PER_HOUR, "{sent}");
    }

    #[test]
    fn a_repair_of_a_days_rows_passes_at_once_and_a_full_bucket_does_not_grow() {
        let mut b = ResendBudget::new(Duration::ZERO);
        assert_eq!(b.take(1_500, Duration::ZERO), Ok(()));
        let mut b = ResendBudget::new(Duration::ZERO);
        // Idle for a day: still only a bucket's worth.
        assert_eq!(b.left(), ROWS_PER_HOUR);
        assert_eq!(b.take(ROWS_PER_HOUR, 24 * 60 * MIN), Ok(()));
        assert!(b.take(1, 24 * 60 * MIN).is_err());
        // More than a bucket can ever hold is never possible.
        assert_eq!(
            ResendBudget::new(Duration::ZERO).take(ROWS_PER_HOUR + 1, 99 * MIN),
            Err(Duration::MAX)
        );
    }

    #[test]
    fn a_clock_that_went_back_refills_nothing() {
        let mut b = ResendBudget::new(10 * MIN);
        assert_eq!(b.take(ROWS_PER_HOUR, 10 * MIN), Ok(()));
        assert!(b.take(1, Duration::ZERO).is_err());
        assert!(b.take(1, 10 * MIN).is_err());
    }
}
