//! The injected clock.
//!
//! Every decision in medbox reads time from a [`Clock`], never from the operating system directly,
//! so the whole appliance (its tokio tasks included) can run on simulated time: a test lives through
//! thirty days in seconds, and a clock jump can be injected like any other fault.
//!
//! Two notions of time are kept apart on purpose. `now()` is the wall clock in UTC: it is what gets
//! recorded and what schedules are evaluated against, and it can jump (an RTC-less Pi boots in 1970
//! until NTP syncs). `monotonic()` never jumps: control loops, minimum compressor off times and the
//! physics of the simulated board run on it, so a wall-clock jump cannot shorten a safety delay.

use chrono::{DateTime, Utc};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;

/// A source of wall-clock and monotonic time, and the bridge to tokio's timer.
pub trait Clock: Send + Sync + 'static {
    /// Wall-clock time in UTC. May jump.
    fn now(&self) -> DateTime<Utc>;
    /// Time elapsed since the clock started. Never jumps, never goes back.
    fn monotonic(&self) -> Duration;
    /// How long tokio must sleep for `d` of this clock's monotonic time to pass.
    fn timer_duration(&self, d: Duration) -> Duration;
    /// For a clock that something besides tokio's timer moves (the simulated board's blocking
    /// delays): a wake-up for when it passes `deadline` that way. None: only tokio's timer
    /// moves it, and a timer sleep alone ends on time.
    fn wake_at(&self, deadline: Duration) -> Option<Wake> {
        let _ = deadline;
        None
    }
}

/// Sleeps until the clock's monotonic time reaches `deadline` (returns at once if it has).
/// One timer sleep covers the whole wait: a long sleep costs one wake-up, not one every few
/// seconds, on the Pi and in a simulation alike.
pub async fn sleep_until(clock: &dyn Clock, deadline: Duration) {
    loop {
        let now = clock.monotonic();
        if now >= deadline {
            return;
        }
        let timer = tokio::time::sleep(clock.timer_duration(deadline - now));
        match clock.wake_at(deadline) {
            None => timer.await,
            Some(wake) => {
                tokio::select! {
                    _ = timer => {}
                    _ = wake.notify.notified() => {}
                }
            }
        }
    }
}

/// Sleepers of a [`SimClock`] by deadline, woken when a blocking delay carries the clock past
/// theirs (tokio's timer, which does not see those delays, would wake them late).
#[derive(Debug, Default)]
struct Sleepers {
    next_id: u64,
    by_deadline: BTreeMap<(Duration, u64), Arc<Notify>>,
}

/// A registered wake-up (see [`Clock::wake_at`]); dropping it (the sleep ended or was given up)
/// takes it out of the clock's list.
#[derive(Debug)]
pub struct Wake {
    key: (Duration, u64),
    notify: Arc<Notify>,
    sleepers: Arc<Mutex<Sleepers>>,
}

impl Drop for Wake {
    fn drop(&mut self) {
        lock(&self.sleepers).by_deadline.remove(&self.key);
    }
}

fn lock(sleepers: &Mutex<Sleepers>) -> std::sync::MutexGuard<'_, Sleepers> {
    sleepers.lock().unwrap_or_else(|e| e.into_inner())
}

/// The operating system's clocks, for the appliance on real hardware.
#[derive(Debug)]
pub struct SystemClock {
    origin: std::time::Instant,
}

impl SystemClock {
    /// Starts the monotonic count now.
    pub fn new() -> Self {
        Self {
            origin: std::time::Instant::now(),
        }
    }
}

impl Default for SystemClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
    fn monotonic(&self) -> Duration {
        self.origin.elapsed()
    }
    fn timer_duration(&self, d: Duration) -> Duration {
        d
    }
}

/// Simulated time for the simulated board, built on tokio's timer.
///
/// At `speed` 1 on a runtime started with paused time, tokio advances the clock whenever every task
/// is idle, so the simulation runs as fast as the CPU allows and is fully deterministic (this is
/// `--speed max`). At another speed on a normal runtime, simulated time runs `speed` times faster
/// than real time (the live `sim` view).
#[derive(Debug)]
pub struct SimClock {
    epoch: DateTime<Utc>,
    origin: tokio::time::Instant,
    speed: f64,
    /// Injected wall-clock error in milliseconds (a clock-jump fault); monotonic time ignores it.
    jump_ms: AtomicI64,
    /// Time consumed by blocking driver delays on the simulated board, in nanoseconds.
    blocked_ns: AtomicU64,
    /// Real time that does not count (see [`SimClock::hold`]): since when it is held and how
    /// deep, and how much was excluded so far.
    hold: std::sync::Mutex<Hold>,
    /// Who sleeps until when, for [`SimClock::advance`] to wake.
    sleepers: Arc<Mutex<Sleepers>>,
}

#[derive(Debug, Default)]
struct Hold {
    since: Option<tokio::time::Instant>,
    depth: u32,
    excluded: Duration,
}

/// Keeps real time from moving a [`SimClock`] until dropped.
#[must_use]
pub struct HoldGuard<'a>(&'a SimClock);

impl Drop for HoldGuard<'_> {
    fn drop(&mut self) {
        let mut h = self.0.lock_hold();
        h.depth = h.depth.saturating_sub(1);
        if h.depth == 0 {
            if let Some(since) = h.since.take() {
                h.excluded += since.elapsed();
            }
        }
    }
}

impl SimClock {
    /// A clock whose wall time starts at `epoch` and whose monotonic time starts at zero now.
    /// Must be called inside the tokio runtime that will drive it.
    pub fn new(epoch: DateTime<Utc>, speed: f64) -> Self {
        Self {
            epoch,
            origin: tokio::time::Instant::now(),
            speed: if speed.is_finite() && speed > 0.0 {
                speed
            } else {
                1.0
            },
            jump_ms: AtomicI64::new(0),
            blocked_ns: AtomicU64::new(0),
            hold: std::sync::Mutex::new(Hold::default()),
            sleepers: Arc::default(),
        }
    }

    fn lock_hold(&self) -> std::sync::MutexGuard<'_, Hold> {
        self.hold.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Stops real time from moving the clock while the guard lives; only blocking delays
    /// ([`SimClock::advance`]) do. A simulated mechanism's motion is then a pure function of its
    /// driver's delays at any speed: at 3600× a 5 ms scheduling hiccup would otherwise be 18
    /// simulated seconds in the middle of a carousel turn, and a break-beam pulse would be lost.
    pub fn hold(&self) -> HoldGuard<'_> {
        let mut h = self.lock_hold();
        if h.depth == 0 {
            h.since = Some(tokio::time::Instant::now());
        }
        h.depth += 1;
        drop(h);
        HoldGuard(self)
    }

    /// Real time since the origin that counts.
    fn real(&self) -> Duration {
        let h = self.lock_hold();
        let end = h.since.unwrap_or_else(tokio::time::Instant::now);
        end.duration_since(self.origin).saturating_sub(h.excluded)
    }

    /// Moves simulated time forward by `d` at once: a blocking driver delay (a stepper's pacing,
    /// a probe's conversion) takes simulated time for the whole appliance, as a blocking call on
    /// a real single-core controller would.
    pub fn advance(&self, d: Duration) {
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        self.blocked_ns.fetch_add(ns, Ordering::SeqCst);
        let now = self.monotonic();
        let sleepers = lock(&self.sleepers);
        // Woken, not removed: each sleeper's `Wake` removes itself when its sleep ends.
        for notify in sleepers
            .by_deadline
            .range(..=(now, u64::MAX))
            .map(|(_, n)| n)
        {
            notify.notify_one();
        }
    }

    /// Makes the wall clock jump by `by` (negative: backwards); monotonic time is unaffected.
    pub fn jump(&self, by: chrono::Duration) {
        self.jump_ms
            .fetch_add(by.num_milliseconds(), Ordering::SeqCst);
    }
}

impl Clock for SimClock {
    fn now(&self) -> DateTime<Utc> {
        let mono = chrono::Duration::from_std(self.monotonic()).unwrap_or(chrono::TimeDelta::MAX);
        self.epoch + mono + chrono::Duration::milliseconds(self.jump_ms.load(Ordering::SeqCst))
    }
    fn monotonic(&self) -> Duration {
        self.real().mul_f64(self.speed)
            + Duration::from_nanos(self.blocked_ns.load(Ordering::SeqCst))
    }
    fn timer_duration(&self, d: Duration) -> Duration {
        d.div_f64(self.speed)
    }
    fn wake_at(&self, deadline: Duration) -> Option<Wake> {
        let notify = Arc::new(Notify::new());
        let mut sleepers = lock(&self.sleepers);
        sleepers.next_id += 1;
        let key = (deadline, sleepers.next_id);
        sleepers.by_deadline.insert(key, notify.clone());
        Some(Wake {
            key,
            notify,
            sleepers: self.sleepers.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn sim_clock_advances_with_paused_tokio_time() {
        let epoch = DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let clock = SimClock::new(epoch, 1.0);
        sleep_until(&clock, Duration::from_secs(86_400)).await;
        assert_eq!(clock.monotonic(), Duration::from_secs(86_400));
        assert_eq!(clock.now(), epoch + chrono::Duration::days(1));
    }

    #[tokio::test(start_paused = true)]
    async fn clock_jump_moves_wall_time_but_not_monotonic_time() {
        let epoch = Utc::now();
        let clock = SimClock::new(epoch, 1.0);
        clock.jump(chrono::Duration::hours(-3));
        assert_eq!(clock.monotonic(), Duration::ZERO);
        assert_eq!(clock.now(), epoch - chrono::Duration::hours(3));
    }

    #[tokio::test(start_paused = true)]
    async fn blocking_delays_advance_simulated_time_for_everyone() {
        let clock = SimClock::new(Utc::now(), 1.0);
        clock.advance(Duration::from_millis(750));
        assert_eq!(clock.monotonic(), Duration::from_millis(750));
        sleep_until(&clock, Duration::from_secs(2)).await;
        assert_eq!(clock.monotonic(), Duration::from_secs(2));
    }

    #[tokio::test(start_paused = true)]
    async fn a_sleep_ends_when_a_blocking_delay_carries_the_clock_past_it_not_later() {
        let clock = Arc::new(SimClock::new(Utc::now(), 1.0));
        let sleeper = {
            let clock = clock.clone();
            tokio::spawn(async move { sleep_until(&*clock, Duration::from_secs(3600)).await })
        };
        tokio::task::yield_now().await;
        // A delay short of the deadline wakes nobody for good.
        clock.advance(Duration::from_secs(1800));
        tokio::task::yield_now().await;
        assert!(!sleeper.is_finished());
        // One that carries the clock past it ends the sleep at once, before tokio's timer moved.
        let timer_before = tokio::time::Instant::now();
        clock.advance(Duration::from_secs(1801));
        sleeper.await.unwrap();
        assert_eq!(tokio::time::Instant::now(), timer_before);
        assert!(lock(&clock.sleepers).by_deadline.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_sleep_given_up_leaves_no_wake_up_behind() {
        let clock = SimClock::new(Utc::now(), 1.0);
        tokio::select! {
            _ = sleep_until(&clock, Duration::from_secs(60)) => panic!("slept a minute in a second"),
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
        assert!(lock(&clock.sleepers).by_deadline.is_empty());
        sleep_until(&clock, Duration::from_secs(60)).await;
        assert_eq!(clock.monotonic(), Duration::from_secs(60));
    }

    #[tokio::test(start_paused = true)]
    async fn a_held_clock_moves_only_by_blocking_delays() {
        let clock = SimClock::new(Utc::now(), 3600.0);
        {
            let _hold = clock.hold();
            tokio::time::advance(Duration::from_millis(5)).await;
            clock.advance(Duration::from_millis(20));
            assert_eq!(clock.monotonic(), Duration::from_millis(20));
        }
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(
            clock.monotonic(),
            Duration::from_millis(20) + Duration::from_millis(3600)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn faster_speed_needs_shorter_timer_sleeps() {
        let clock = SimClock::new(Utc::now(), 60.0);
        assert_eq!(
            clock.timer_duration(Duration::from_secs(60)),
            Duration::from_secs(1)
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(clock.monotonic(), Duration::from_secs(60));
    }
}
