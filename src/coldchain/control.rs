//! The thermostat: a pure state machine on the buffered probe.
//!
//! Hysteresis between `cut_out` and `cut_in`, on top of which sit the compressor's protections:
//! minimum on and off times, a maximum on-time, and a restart delay after mains returns. With no
//! valid probe it runs a fixed duty cycle (4 min on / 6 min off, see the README's "The cold
//! chain"), which keeps most loads cold without any risk of freezing them solid the way "compressor
//! always on" would. When the two probes disagree and neither can be blamed ([`super::arbiter`]),
//! it holds the duty cycle learned while they agreed, stops whenever the colder reading reaches
//! `guard_cold`, and cools whenever even the colder reading is at `cut_in`.
//!
//! The relay driver enforces min/max times again below this: defence in depth.

use super::arbiter::Signal;
use super::config::ColdChainConfig;
use std::time::Duration;

/// How the compressor is being decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ControlMode {
    /// Thermostat on a validated probe.
    Thermostat,
    /// No valid probe: fixed duty cycle.
    FailSafe,
    /// The probes disagree and neither can be blamed: the learned duty cycle, capped by the
    /// colder reading.
    Disputed,
    /// Mains is off, or has just returned and the restart delay runs.
    PowerWait,
}

/// What the thermostat is told each period.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ControlInput {
    /// What the probes, once arbitrated, say.
    pub signal: Signal,
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
    /// The duty cycle running, and when it started.
    cycle: Option<(ControlMode, Duration)>,
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
            cycle: None,
        }
    }

    /// Whether the thermostat currently wants the compressor on.
    pub fn is_on(&self) -> bool {
        self.on
    }

    /// Decides the compressor for `now`.
    pub fn step(&mut self, now: Duration, input: ControlInput) -> ControlDecision {
        let cfg = self.cfg.clone();
        let c = &cfg;
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

        let (wanted, mode, mut deadline) = match input.signal {
            Signal::Trusted { colder, warmer } => {
                self.cycle = None;
                let wanted = if self.on {
                    colder > c.cut_out
                } else {
                    warmer >= c.cut_in && colder > c.cut_out
                };
                (wanted, ControlMode::Thermostat, None)
            }
            Signal::Disputed { colder, .. } if colder <= c.guard_cold => {
                self.cycle = None;
                (false, ControlMode::Disputed, None)
            }
            Signal::Disputed { colder, .. } if colder >= c.cut_in => {
                self.cycle = None;
                (true, ControlMode::Disputed, None)
            }
            Signal::Disputed { duty, .. } => {
                let period = c.failsafe_on + c.failsafe_off;
                // Within what the compressor's protections allow in one period.
                let lo = c.min_on.as_secs_f64();
                let hi = period.saturating_sub(c.min_off).as_secs_f64().max(lo);
                let on = Duration::from_secs_f64((duty * period.as_secs_f64()).clamp(lo, hi));
                self.duty_cycle(now, ControlMode::Disputed, on, period)
            }
            Signal::Lost => self.duty_cycle(
                now,
                ControlMode::FailSafe,
                c.failsafe_on,
                c.failsafe_on + c.failsafe_off,
            ),
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

    /// A fixed cycle of `on` in every `period`, for the fail-safe and the disputed modes.
    fn duty_cycle(
        &mut self,
        now: Duration,
        mode: ControlMode,
        on: Duration,
        period: Duration,
    ) -> (bool, ControlMode, Option<Duration>) {
        // The cycle starts when the compressor may first run, so its first on-phase is not
        // eaten by a minimum off time; a change of mode starts a new cycle.
        let anchor = if self.on {
            self.since
        } else {
            now.max(self.since + self.cfg.min_off)
        };
        let start = match self.cycle {
            Some((m, start)) if m == mode => start,
            _ => {
                self.cycle = Some((mode, anchor));
                anchor
            }
        };
        let phase = duration_mod(now.saturating_sub(start), period);
        if now < start {
            (false, mode, Some(start))
        } else if phase < on {
            (true, mode, Some(now + (on - phase)))
        } else {
            (false, mode, Some(now + (period - phase)))
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
    use crate::units::Celsius;
    use proptest::prelude::*;

    fn s(v: u64) -> Duration {
        Duration::from_secs(v)
    }
    fn at(t: f64) -> ControlInput {
        ControlInput {
            signal: Signal::trusted(Celsius(t)),
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
            signal: Signal::trusted(Celsius(9.0)),
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
            signal: Signal::Lost,
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

    fn disputed(colder: f64, duty: f64) -> ControlInput {
        ControlInput {
            signal: Signal::Disputed {
                colder: Celsius(colder),
                duty,
            },
            mains: true,
        }
    }

    #[test]
    fn the_colder_probe_stops_cooling_at_cut_out_even_when_the_other_reads_warm() {
        let mut th = Thermostat::new(ColdChainConfig::default(), s(0));
        let warm_vial_cold_air = |air: f64| ControlInput {
            signal: Signal::Trusted {
                colder: Celsius(air),
                warmer: Celsius(6.5),
            },
            mains: true,
        };
        assert!(th.step(s(300), warm_vial_cold_air(5.0)).compressor_on);
        assert!(th.step(s(430), warm_vial_cold_air(4.1)).compressor_on);
        assert!(!th.step(s(440), warm_vial_cold_air(4.0)).compressor_on);
        // Nor does it start again while the colder one is at cut_out.
        assert!(!th.step(s(2000), warm_vial_cold_air(4.0)).compressor_on);
    }

    #[test]
    fn the_warmer_probe_starts_cooling_at_cut_in_even_when_the_other_reads_cooler() {
        let mut th = Thermostat::new(ColdChainConfig::default(), s(0));
        let readings = |colder: f64, warmer: f64| ControlInput {
            signal: Signal::Trusted {
                colder: Celsius(colder),
                warmer: Celsius(warmer),
            },
            mains: true,
        };
        assert!(!th.step(s(300), readings(4.6, 5.9)).compressor_on);
        assert!(th.step(s(310), readings(4.6, 6.0)).compressor_on);
    }

    #[test]
    fn disputed_probes_hold_the_learned_duty_cycle() {
        let mut th = Thermostat::new(ColdChainConfig::default(), s(0));
        // 0.3 of a ten-minute period: three minutes on, seven off, from the end of min off.
        assert!(!th.step(s(0), disputed(5.0, 0.3)).compressor_on);
        let d = th.step(s(240), disputed(5.0, 0.3));
        assert_eq!(d.mode, ControlMode::Disputed);
        assert!(d.compressor_on);
        assert!(th.step(s(240 + 179), disputed(5.0, 0.3)).compressor_on);
        assert!(!th.step(s(240 + 180), disputed(5.0, 0.3)).compressor_on);
        assert!(th.step(s(240 + 600), disputed(5.0, 0.3)).compressor_on);
    }

    #[test]
    fn disputed_probes_never_cool_while_the_colder_reads_at_guard_cold() {
        let mut th = Thermostat::new(ColdChainConfig::default(), s(0));
        for t in (240..7200).step_by(10) {
            let d = th.step(s(t), disputed(1.0, 0.9));
            assert!(!d.compressor_on, "at {t}");
            assert_eq!(d.mode, ControlMode::Disputed);
        }
    }

    #[test]
    fn disputed_probes_cool_when_even_the_colder_reads_warm() {
        let mut th = Thermostat::new(ColdChainConfig::default(), s(0));
        assert!(th.step(s(240), disputed(6.0, 0.0)).compressor_on);
        assert!(th.step(s(1200), disputed(7.0, 0.0)).compressor_on);
    }

    #[test]
    fn a_duty_cycle_is_clamped_to_what_the_compressor_protections_allow() {
        let mut th = Thermostat::new(ColdChainConfig::default(), s(0));
        // Duty 0: still min_on (2 min) each period rather than chattering; duty 1: min_off kept.
        assert!(th.step(s(240), disputed(5.0, 0.0)).compressor_on);
        assert!(th.step(s(240 + 119), disputed(5.0, 0.0)).compressor_on);
        assert!(!th.step(s(240 + 120), disputed(5.0, 0.0)).compressor_on);
    }

    proptest! {
        /// Against a reference model: whatever the readings and mains, the compressor never
        /// restarts within min_off, never stops within min_on (unless mains went), and never runs
        /// past max_on.
        #[test]
        fn protections_hold_for_any_input(
            steps in proptest::collection::vec((1u64..400, proptest::option::of((-5.0f64..15.0, proptest::option::of(0.0f64..1.0))), proptest::bool::weighted(0.95)), 1..400)
        ) {
            let cfg = ColdChainConfig::default();
            let mut th = Thermostat::new(cfg.clone(), s(0));
            let mut now = s(0);
            let mut on = false;
            let mut since = s(0);
            for (dt, t, mains) in steps {
                now += s(dt);
                let signal = match t {
                    Some((t, None)) => Signal::trusted(Celsius(t)),
                    Some((t, Some(duty))) => Signal::Disputed { colder: Celsius(t), duty },
                    None => Signal::Lost,
                };
                let d = th.step(now, ControlInput { signal, mains });
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
