//! The thermostat: a pure state machine on the buffered probe.
//!
//! Hysteresis between `cut_out` and `cut_in`, on top of which sit the compressor's protections:
//! minimum on and off times, a maximum on-time, and a restart delay after mains returns. With no
//! valid probe it runs a fixed duty cycle (DESIGN.md §3: 4 min on / 6 min off), which keeps most
//! loads cold without any risk of freezing them solid the way "compressor always on" would.
//!
//! The relay driver enforces min/max times again below this: defence in depth.

use super::config::ColdChainConfig;
use crate::units::Celsius;
use std::time::Duration;

/// How the compressor is being decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ControlMode {
    /// Thermostat on a validated probe.
    Thermostat,
    /// No valid probe: fixed duty cycle.
    FailSafe,
    /// Mains is off, or has just returned and the restart delay runs.
    PowerWait,
}

/// What the thermostat is told each period.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ControlInput {
    /// The validated control temperature, if any probe is valid.
    pub control: Option<Celsius>,
    /// Whether mains is present.
    pub mains: bool,
}

/// The thermostat's decision for this period.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ControlDecision {
    /// Compressor on or off.
    pub compressor_on: bool,
    /// How the decision was made.
    pub mode: ControlMode,
    /// When the decision may next change by itself (a protection timer ends); the caller may
    /// also call earlier on new readings.
    pub next_deadline: Option<Duration>,
}

/// The thermostat's state.
#[derive(Clone, Debug)]
pub struct Thermostat {
    cfg: ColdChainConfig,
    on: bool,
    since: Duration,
    mains_back_at: Option<Duration>,
    mains_was: bool,
    failsafe_since: Option<Duration>,
}

impl Thermostat {
    /// Starts with the compressor off at `now`; the minimum off time runs from here, since the
    /// compressor may have been running just before a restart.
    pub fn new(cfg: ColdChainConfig, now: Duration) -> Self {
        Self {
            cfg,
            on: false,
            since: now,
            mains_back_at: None,
            mains_was: true,
            failsafe_since: None,
        }
    }

    /// Whether the thermostat currently wants the compressor on.
    pub fn is_on(&self) -> bool {
        self.on
    }

    /// Decides the compressor for `now`.
    pub fn step(&mut self, now: Duration, input: ControlInput) -> ControlDecision {
        let c = &self.cfg;
        if !input.mains {
            self.mains_was = false;
            self.set(false, now);
            return ControlDecision {
                compressor_on: false,
                mode: ControlMode::PowerWait,
                next_deadline: None,
            };
        }
        if !self.mains_was {
            self.mains_was = true;
            self.mains_back_at = Some(now);
        }
        if let Some(back) = self.mains_back_at {
            let until = back + c.restart_delay;
            if now < until {
                return ControlDecision {
                    compressor_on: false,
                    mode: ControlMode::PowerWait,
                    next_deadline: Some(until),
                };
            }
            self.mains_back_at = None;
        }

        let (wanted, mode, mut deadline) = match input.control {
            Some(t) => {
                self.failsafe_since = None;
                let wanted = if self.on {
                    t > c.cut_out
                } else {
                    t >= c.cut_in
                };
                (wanted, ControlMode::Thermostat, None)
            }
            None => {
                // The cycle starts when the compressor may first run, so its first on-phase is
                // not eaten by a minimum off time.
                let anchor = if self.on {
                    self.since
                } else {
                    now.max(self.since + c.min_off)
                };
                let start = *self.failsafe_since.get_or_insert(anchor);
                let cycle = c.failsafe_on + c.failsafe_off;
                let phase = duration_mod(now.saturating_sub(start), cycle);
                if now < start {
                    (false, ControlMode::FailSafe, Some(start))
                } else if phase < c.failsafe_on {
                    (
                        true,
                        ControlMode::FailSafe,
                        Some(now + (c.failsafe_on - phase)),
                    )
                } else {
                    (false, ControlMode::FailSafe, Some(now + (cycle - phase)))
                }
            }
        };

        // Protections, in order of authority: max on-time, then min on/off.
        let ran = now.saturating_sub(self.since);
        let target = if self.on && ran >= c.max_on {
            false
        } else if self.on && !wanted && ran < c.min_on {
            deadline = earliest(deadline, self.since + c.min_on);
            true
        } else if !self.on && wanted && ran < c.min_off {
            deadline = earliest(deadline, self.since + c.min_off);
            false
        } else {
            wanted
        };
        self.set(target, now);
        if self.on {
            deadline = earliest(deadline, self.since + self.cfg.max_on);
        }
        ControlDecision {
            compressor_on: self.on,
            mode,
            next_deadline: deadline,
        }
    }

    fn set(&mut self, on: bool, now: Duration) {
        if on != self.on {
            self.on = on;
            self.since = now;
        }
    }
}

fn earliest(a: Option<Duration>, b: Duration) -> Option<Duration> {
    Some(a.map_or(b, |a| a.min(b)))
}

fn duration_mod(d: Duration, m: Duration) -> Duration {
    if m.is_zero() {
        return Duration::ZERO;
    }
    Duration::from_nanos((d.as_nanos() % m.as_nanos()) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn s(v: u64) -> Duration {
        Duration::from_secs(v)
    }
    fn at(t: f64) -> ControlInput {
        ControlInput {
            control: Some(Celsius(t)),
            mains: true,
        }
    }

    #[test]
    fn starts_above_cut_in_and_stops_at_cut_out() {
        let mut th = Thermostat::new(ColdChainConfig::default(), s(0));
        assert!(!th.step(s(300), at(5.9)).compressor_on);
        assert!(th.step(s(310), at(6.0)).compressor_on);
        assert!(th.step(s(600), at(4.1)).compressor_on);
        assert!(!th.step(s(610), at(4.0)).compressor_on);
    }

    #[test]
    fn compressor_waits_min_off_time_before_restart() {
        let mut th = Thermostat::new(ColdChainConfig::default(), s(0));
        let d = th.step(s(10), at(9.0));
        assert!(!d.compressor_on);
        assert_eq!(d.next_deadline, Some(s(240)));
        assert!(th.step(s(240), at(9.0)).compressor_on);
    }

    #[test]
    fn compressor_keeps_running_for_min_on_time() {
        let mut th = Thermostat::new(ColdChainConfig::default(), s(0));
        assert!(th.step(s(300), at(9.0)).compressor_on);
        let d = th.step(s(330), at(3.0));
        assert!(d.compressor_on);
        assert_eq!(d.next_deadline, Some(s(420)));
        assert!(!th.step(s(420), at(3.0)).compressor_on);
    }

    #[test]
    fn compressor_rests_after_max_on_time_even_if_warm() {
        let mut th = Thermostat::new(ColdChainConfig::default(), s(0));
        assert!(th.step(s(300), at(9.0)).compressor_on);
        assert!(th.step(s(300 + 2699), at(9.0)).compressor_on);
        assert!(!th.step(s(300 + 2700), at(9.0)).compressor_on);
    }

    #[test]
    fn restart_waits_restart_delay_after_mains_returns() {
        let mut th = Thermostat::new(ColdChainConfig::default(), s(0));
        assert!(th.step(s(300), at(9.0)).compressor_on);
        let off = ControlInput {
            control: Some(Celsius(9.0)),
            mains: false,
        };
        assert_eq!(th.step(s(400), off).mode, ControlMode::PowerWait);
        let d = th.step(s(1000), at(9.0));
        assert!(!d.compressor_on);
        assert_eq!(d.next_deadline, Some(s(1180)));
        assert!(th.step(s(1180), at(9.0)).compressor_on);
    }

    #[test]
    fn failsafe_runs_four_on_six_off_with_no_valid_probe() {
        let mut th = Thermostat::new(ColdChainConfig::default(), s(0));
        let none = ControlInput {
            control: None,
            mains: true,
        };
        // Min off from start delays the first run.
        assert!(!th.step(s(0), none).compressor_on);
        let d = th.step(s(240), none);
        assert_eq!(d.mode, ControlMode::FailSafe);
        assert!(d.compressor_on);
        assert!(th.step(s(479), none).compressor_on);
        assert!(!th.step(s(480), none).compressor_on);
        assert!(!th.step(s(839), none).compressor_on);
        assert!(th.step(s(840), none).compressor_on);
    }

    proptest! {
        /// Against a reference model: whatever the readings and mains, the compressor never
        /// restarts within min_off, never stops within min_on (unless mains went), and never runs
        /// past max_on.
        #[test]
        fn protections_hold_for_any_input(
            steps in proptest::collection::vec((1u64..400, proptest::option::of(-5.0f64..15.0), proptest::bool::weighted(0.95)), 1..400)
        ) {
            let cfg = ColdChainConfig::default();
            let mut th = Thermostat::new(cfg.clone(), s(0));
            let mut now = s(0);
            let mut on = false;
            let mut since = s(0);
            for (dt, t, mains) in steps {
                now += s(dt);
                let d = th.step(now, ControlInput { control: t.map(Celsius), mains });
                if d.compressor_on != on {
                    let ran = now - since;
                    if d.compressor_on {
                        prop_assert!(ran >= cfg.min_off, "restart after {ran:?} off");
                        prop_assert!(mains);
                    } else if mains {
                        prop_assert!(ran >= cfg.min_on, "stop after {ran:?} on");
                    }
                    on = d.compressor_on;
                    since = now;
                }
                if on {
                    prop_assert!(now - since <= cfg.max_on);
                }
            }
        }
    }
}
