//! What the service manager (systemd, `Type=notify`) is told about the appliance, and when.
//!
//! A watchdog that is pinged by a timer proves only that the timer runs. Here the ping is earned:
//! [`Liveness`] hears every event the controller reports and every record the store makes
//! durable, and `WATCHDOG=1` is sent only while fridge readings are current *and* the recorder is
//! writing them. A wedged fridge task, a hung bus, a serving loop stuck on the database: each
//! stops the readings or the records, the pings stop, and systemd restarts the process after
//! `WatchdogSec` (the Pi's hardware watchdog, fed by systemd itself, covers a hung kernel).
//!
//! `READY=1` waits for the first valid temperature, so "started" means "controlling". A fridge
//! whose probes are both dead still runs its fail-safe duty cycle, and that must not be killed by
//! a start timeout: after [`READY_WITHOUT_VALID`] of records without a valid temperature the
//! appliance says ready anyway, with a status that says why.

use crate::clock::Clock;
use crate::events::{Event, FridgeRecord};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A reading older than this means the control loop is not running (records come every minute).
pub const STALE_AFTER: Duration = Duration::from_secs(180);

/// Ready without a valid temperature after this long with records (both probes failed).
pub const READY_WITHOUT_VALID: Duration = Duration::from_secs(120);

/// How often the status is refreshed when the service manager asks for no watchdog.
const STATUS_EVERY: Duration = Duration::from_secs(10);

/// One notification to the service manager.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Note {
    /// Start-up is complete: store, boards and a first reading.
    Ready,
    /// The control loop is healthy.
    Watchdog,
    /// A one-line state for `systemctl status`.
    Status(String),
    /// Shutdown has begun (safe states next).
    Stopping,
}

/// Where notifications go: systemd's socket in production, a list in tests.
pub trait Notify: Send + Sync {
    /// Sends the notes together (one datagram).
    fn notify(&self, notes: &[Note]);
}

/// The service manager named by `$NOTIFY_SOCKET` (nothing is sent when it is unset).
#[derive(Debug, Default)]
pub struct Systemd;

impl Notify for Systemd {
    fn notify(&self, notes: &[Note]) {
        use sd_notify::NotifyState;
        let states: Vec<NotifyState<'_>> = notes
            .iter()
            .map(|n| match n {
                Note::Ready => NotifyState::Ready,
                Note::Watchdog => NotifyState::Watchdog,
                Note::Status(s) => NotifyState::Status(s),
                Note::Stopping => NotifyState::Stopping,
            })
            .collect();
        if let Err(e) = sd_notify::notify(&states) {
            tracing::warn!("cannot notify the service manager: {e}");
        }
    }
}

impl Systemd {
    /// The watchdog period the service manager asked for (`WatchdogSec=`), if any.
    pub fn watchdog() -> Option<Duration> {
        sd_notify::watchdog_enabled()
    }
}

/// What is known of the control loop and the recorder, on the appliance's monotonic clock.
#[derive(Clone, Debug)]
pub struct Liveness {
    /// Whether records must become durable (a run without a store has none to wait for).
    expects_records: bool,
    started: Duration,
    first_record: Option<Duration>,
    last_reading: Option<(Duration, FridgeRecord)>,
    any_valid: bool,
    last_durable: Option<Duration>,
    stopping: bool,
}

/// The verdict on the control loop.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Health {
    /// Not ready yet: no reading (or no valid one, for less than [`READY_WITHOUT_VALID`]).
    Starting,
    /// Readings are current and recorded.
    Healthy,
    /// Something stopped: no watchdog ping. The text says what and for how long.
    Stalled(String),
}

impl Liveness {
    /// Nothing seen yet, at monotonic time `now`.
    pub fn new(now: Duration, expects_records: bool) -> Self {
        Self {
            expects_records,
            started: now,
            first_record: None,
            last_reading: None,
            any_valid: false,
            last_durable: None,
            stopping: false,
        }
    }

    /// Hears an event the controller reported.
    pub fn seen(&mut self, ev: &Event, now: Duration) {
        if let Event::Reading(r) = ev {
            self.first_record.get_or_insert(now);
            self.any_valid |= r.control.is_some();
            self.last_reading = Some((now, r.clone()));
        }
    }

    /// Hears that a record became durable.
    pub fn stored(&mut self, now: Duration) {
        self.last_durable = Some(now);
    }

    /// Shutdown has begun: no more pings, whatever the readings say.
    pub fn stopping(&mut self) {
        self.stopping = true;
    }

    /// Whether start-up is complete at `now`.
    pub fn ready(&self, now: Duration) -> bool {
        self.any_valid
            || self
                .first_record
                .is_some_and(|t| now.saturating_sub(t) >= READY_WITHOUT_VALID)
    }

    /// The verdict at `now`.
    pub fn health(&self, now: Duration) -> Health {
        if self.stopping {
            return Health::Stalled("stopping".into());
        }
        if !self.ready(now) {
            return match self.last_reading {
                None if now.saturating_sub(self.started) >= STALE_AFTER => {
                    Health::Stalled(format!(
                        "no fridge reading in {} s since start",
                        now.saturating_sub(self.started).as_secs()
                    ))
                }
                _ => Health::Starting,
            };
        }
        let since = |t: Option<Duration>| now.saturating_sub(t.unwrap_or(self.started));
        let reading = since(self.last_reading.as_ref().map(|(t, _)| *t));
        if reading >= STALE_AFTER {
            return Health::Stalled(format!("no fridge reading for {} s", reading.as_secs()));
        }
        if self.expects_records {
            let durable = since(self.last_durable);
            if durable >= STALE_AFTER {
                return Health::Stalled(format!("nothing recorded for {} s", durable.as_secs()));
            }
        }
        Health::Healthy
    }

    /// One line for `systemctl status`.
    pub fn status(&self, now: Duration) -> String {
        let fridge = match &self.last_reading {
            None => "no fridge reading yet".to_string(),
            Some((_, r)) => {
                let t = |v: Option<f64>| v.map_or("--".to_string(), |v| format!("{v:.1}"));
                format!(
                    "fridge {} °C (vial {}, air {}), compressor {}, door {}{}",
                    t(r.control),
                    t(r.vial),
                    t(r.air),
                    if r.compressor_on { "on" } else { "off" },
                    if r.door_open { "open" } else { "closed" },
                    if r.mains { "" } else { ", on battery" },
                )
            }
        };
        match self.health(now) {
            Health::Healthy => fridge,
            Health::Starting => format!("starting: {fridge}"),
            Health::Stalled(why) => format!("UNHEALTHY ({why}): {fridge}"),
        }
    }
}

/// Tells the service manager, every `every` (real time), how the appliance is: `READY=1` once,
/// then `WATCHDOG=1` only while healthy, and a status line each time. Runs until dropped.
pub async fn supervise(
    liveness: Arc<Mutex<Liveness>>,
    clock: Arc<dyn Clock>,
    notify: Arc<dyn Notify>,
    watchdog: Option<Duration>,
) {
    // Twice per watchdog period, as sd_watchdog_enabled(3) advises.
    let every = watchdog.map_or(STATUS_EVERY, |w| (w / 2).max(Duration::from_millis(100)));
    let mut ready = false;
    let mut stalled = false;
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let now = clock.monotonic();
        let (health, status, is_ready) = {
            let l = liveness.lock().unwrap_or_else(|e| e.into_inner());
            (l.health(now), l.status(now), l.ready(now))
        };
        let mut notes = Vec::with_capacity(3);
        if is_ready && !ready {
            ready = true;
            notes.push(Note::Ready);
        }
        match &health {
            Health::Healthy => {
                stalled = false;
                if watchdog.is_some() {
                    notes.push(Note::Watchdog);
                }
            }
            Health::Stalled(why) if !stalled => {
                stalled = true;
                tracing::error!("control loop unhealthy, watchdog pings stop: {why}");
            }
            Health::Stalled(_) | Health::Starting => {}
        }
        notes.push(Note::Status(status));
        notify.notify(&notes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::coldchain::ControlMode;

    fn reading(control: Option<f64>) -> Event {
        Event::Reading(FridgeRecord {
            at: chrono::DateTime::UNIX_EPOCH,
            mono: Duration::ZERO,
            vial: control,
            air: control,
            control,
            doubt: None,
            compressor_on: false,
            compressor_starts: 0,
            door_open: false,
            mains: true,
            mode: ControlMode::Thermostat,
        })
    }

    fn s(secs: u64) -> Duration {
        Duration::from_secs(secs)
    }

    #[test]
    fn ready_waits_for_the_first_valid_temperature() {
        let mut l = Liveness::new(s(0), true);
        assert_eq!(l.health(s(5)), Health::Starting);
        l.seen(&reading(None), s(10));
        assert!(!l.ready(s(10)), "a record without a valid temperature");
        l.seen(&reading(Some(5.0)), s(70));
        assert!(l.ready(s(70)));
    }

    #[test]
    fn ready_without_a_valid_temperature_once_the_fail_safe_has_run_a_while() {
        let mut l = Liveness::new(s(0), false);
        l.seen(&reading(None), s(10));
        assert!(!l.ready(s(100)));
        assert!(l.ready(s(10) + READY_WITHOUT_VALID));
        assert!(
            l.status(s(130)).starts_with("fridge -- °C"),
            "{}",
            l.status(s(130))
        );
    }

    #[test]
    fn watchdog_pings_stop_when_fridge_readings_go_stale() {
        let mut l = Liveness::new(s(0), true);
        l.seen(&reading(Some(5.0)), s(60));
        l.stored(s(60));
        assert_eq!(l.health(s(61)), Health::Healthy);
        assert_eq!(l.health(s(60) + STALE_AFTER - s(1)), Health::Healthy);
        assert!(
            matches!(l.health(s(60) + STALE_AFTER), Health::Stalled(w) if w.contains("no fridge reading"))
        );
    }

    #[test]
    fn watchdog_pings_stop_when_the_recorder_stops_writing() {
        let mut l = Liveness::new(s(0), true);
        l.stored(s(60));
        for t in (60..=60 + STALE_AFTER.as_secs()).step_by(60) {
            l.seen(&reading(Some(5.0)), s(t));
        }
        assert!(
            matches!(l.health(s(60) + STALE_AFTER), Health::Stalled(w) if w.contains("nothing recorded"))
        );
        // Without a store there is nothing to wait for.
        let mut no_store = Liveness::new(s(0), false);
        no_store.seen(&reading(Some(5.0)), s(300));
        assert_eq!(no_store.health(s(301)), Health::Healthy);
    }

    #[test]
    fn a_start_that_never_reads_the_fridge_is_unhealthy() {
        let l = Liveness::new(s(0), true);
        assert_eq!(l.health(STALE_AFTER - s(1)), Health::Starting);
        assert!(matches!(l.health(STALE_AFTER), Health::Stalled(_)));
    }

    #[test]
    fn no_watchdog_ping_once_stopping() {
        let mut l = Liveness::new(s(0), false);
        l.seen(&reading(Some(5.0)), s(1));
        l.stopping();
        assert!(matches!(l.health(s(2)), Health::Stalled(w) if w == "stopping"));
    }

    /// Notes in the order they were sent.
    #[derive(Default)]
    struct Recorded(Mutex<Vec<Vec<Note>>>);

    impl Notify for Recorded {
        fn notify(&self, notes: &[Note]) {
            self.0.lock().unwrap().push(notes.to_vec());
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_supervisor_says_ready_once_and_pings_only_while_healthy() {
        let clock = Arc::new(crate::clock::SimClock::new(chrono::Utc::now(), 1.0));
        let live = Arc::new(Mutex::new(Liveness::new(Duration::ZERO, true)));
        let sent = Arc::new(Recorded::default());
        let task = tokio::spawn(supervise(
            live.clone(),
            clock.clone(),
            sent.clone(),
            Some(s(20)),
        ));
        // A control loop that reads and records every minute for ten minutes, then wedges.
        for _ in 0..10 {
            tokio::time::sleep(s(60)).await;
            let mut l = live.lock().unwrap();
            l.seen(&reading(Some(5.0)), clock.monotonic());
            l.stored(clock.monotonic());
        }
        tokio::time::sleep(STALE_AFTER + s(60)).await;
        task.abort();
        let sent = sent.0.lock().unwrap();
        let pings: Vec<bool> = sent.iter().map(|n| n.contains(&Note::Watchdog)).collect();
        assert_eq!(sent.iter().filter(|n| n.contains(&Note::Ready)).count(), 1);
        let first_ping = pings.iter().position(|p| *p).expect("pinged while healthy");
        let last_ping = pings.iter().rposition(|p| *p).unwrap();
        assert!(
            pings[first_ping..=last_ping].iter().all(|p| *p),
            "{pings:?}"
        );
        assert!(
            pings[last_ping + 1..].len() >= 3,
            "the pings stopped and stayed stopped: {pings:?}"
        );
        assert!(sent
            .last()
            .unwrap()
            .iter()
            .any(|n| matches!(n, Note::Status(s) if s.starts_with("UNHEALTHY"))));
    }
}
