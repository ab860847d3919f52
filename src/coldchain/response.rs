//! Does the cabinet answer the compressor? A pure check of the machinery below the relay output.
//!
//! The relay driver knows what it commanded, not what the compressor did: welded contacts keep
//! it running when told to stop, and an open coil or a dead compressor never runs. Physics tells
//! them apart from a working fridge: with the door shut and mains on, a running compressor cools
//! the air (in the reference cabinet about 0.1 °C a minute even in a 32 °C room) and a stopped
//! one lets it warm. So an air probe that has not fallen by [`MIN_DROP`] after
//! [`WINDOW`] of running means the cooling failed, and one that fell by [`MIN_DROP`] or more
//! while the compressor was meant to be off for as long means it is stuck on. The vial, lagging
//! the air, must agree (not falling at all, or falling by at least [`VIAL_DROP`]), so a stuck
//! air probe is not mistaken for a dead compressor. Either is a latched
//! alarm: the controller cannot fix either, a person must move the stock.

use std::time::Duration;

/// How long a run (or a rest) is watched before it is judged: longer than a normal thermostat
/// cycle's run (about 8 min), so a probe that sticks during one is not judged, and long enough
/// for the lagging vial to follow the air.
pub const WINDOW: Duration = Duration::from_secs(20 * 60);
/// The least the air must fall over [`WINDOW`] of running, and the most it may fall over
/// [`WINDOW`] of rest.
pub const MIN_DROP: f64 = 0.5;

/// How far the lagging vial must have fallen to count as cooling.
pub const VIAL_DROP: f64 = 0.1;

/// What the cabinet's answer says about the machinery.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResponseFault {
    /// The compressor ran (as commanded) and the air did not cool.
    CoolingFailed,
    /// The compressor was stopped and the air kept cooling: the relay is stuck closed.
    StuckOn,
}

/// One period's inputs.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sample {
    /// Whether the compressor was commanded on over the period just ended.
    pub commanded_on: bool,
    /// The air probe's valid reading, if any.
    pub air: Option<f64>,
    /// The vial probe's valid reading, if any.
    pub vial: Option<f64>,
    /// Door open.
    pub door_open: bool,
    /// Mains present.
    pub mains: bool,
}

#[derive(Clone, Copy, Debug)]
struct Run {
    on: bool,
    since: Duration,
    air: f64,
    vial: Option<f64>,
    judged: bool,
}

/// The check's state: the run (or rest) being watched.
#[derive(Clone, Debug, Default)]
pub struct ResponseCheck {
    run: Option<Run>,
}

impl ResponseCheck {
    /// No history.
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds one period; returns a fault once per run or rest that shows it.
    pub fn update(&mut self, now: Duration, s: Sample) -> Option<ResponseFault> {
        // Only a shut door, mains and a valid reading make a run judgeable; anything else, or a
        // change of command, starts the watch again.
        let Some(air) = s.air.filter(|_| !s.door_open && s.mains) else {
            self.run = None;
            return None;
        };
        let run = match self.run {
            Some(r) if r.on == s.commanded_on => r,
            _ => {
                self.run = Some(Run {
                    on: s.commanded_on,
                    since: now,
                    air,
                    vial: s.vial,
                    judged: false,
                });
                return None;
            }
        };
        if run.judged || now.saturating_sub(run.since) < WINDOW {
            return None;
        }
        let fell = run.air - air;
        // None: the vial cannot say (missing now or then).
        let vial_cooled = run.vial.zip(s.vial).map(|(v0, v)| v0 - v >= VIAL_DROP);
        let fault = match run.on {
            true if fell < MIN_DROP && vial_cooled != Some(true) => {
                Some(ResponseFault::CoolingFailed)
            }
            false if fell >= MIN_DROP && vial_cooled != Some(false) => Some(ResponseFault::StuckOn),
            _ => None,
        };
        if let Some(r) = self.run.as_mut() {
            r.judged = true;
        }
        fault
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: u64) -> Duration {
        Duration::from_secs(v)
    }
    fn sample(on: bool, air: f64) -> Sample {
        Sample {
            commanded_on: on,
            air: Some(air),
            vial: None,
            door_open: false,
            mains: true,
        }
    }
    /// Feeds one sample a minute for `minutes`, the air moving `per_min`; returns faults.
    fn run(
        c: &mut ResponseCheck,
        from: u64,
        minutes: u64,
        on: bool,
        air0: f64,
        per_min: f64,
    ) -> Vec<ResponseFault> {
        (0..=minutes)
            .filter_map(|m| c.update(s((from + m) * 60), sample(on, air0 + per_min * m as f64)))
            .collect()
    }

    #[test]
    fn a_running_compressor_that_does_not_cool_is_a_cooling_failure() {
        let mut c = ResponseCheck::new();
        assert_eq!(
            run(&mut c, 0, 20, true, 5.0, 0.08),
            vec![ResponseFault::CoolingFailed]
        );
    }

    #[test]
    fn a_stopped_compressor_that_keeps_cooling_is_stuck_on() {
        let mut c = ResponseCheck::new();
        assert_eq!(
            run(&mut c, 0, 20, false, 5.0, -0.11),
            vec![ResponseFault::StuckOn]
        );
    }

    #[test]
    fn a_working_fridge_raises_nothing() {
        let mut c = ResponseCheck::new();
        // Running cools even in a hot room; resting warms.
        assert!(run(&mut c, 0, 25, true, 6.0, -0.066).is_empty());
        assert!(run(&mut c, 26, 25, false, 5.0, 0.077).is_empty());
    }

    #[test]
    fn a_stuck_air_probe_is_not_a_cooling_failure_while_the_vial_cools() {
        let mut c = ResponseCheck::new();
        let faults: Vec<_> = (0..=25)
            .filter_map(|m| {
                let s_ = Sample {
                    vial: Some(5.5 - 0.04 * m as f64),
                    ..sample(true, 5.0)
                };
                c.update(s(m * 60), s_)
            })
            .collect();
        assert!(faults.is_empty(), "{faults:?}");
    }

    #[test]
    fn an_open_door_or_a_power_cut_is_never_judged() {
        let mut c = ResponseCheck::new();
        for m in 0..30 {
            let open = Sample {
                door_open: true,
                ..sample(true, 5.0 + 0.5 * m as f64)
            };
            assert_eq!(c.update(s(m * 60), open), None);
        }
        for m in 30..60 {
            let cut = Sample {
                mains: false,
                ..sample(true, 5.0 + 0.1 * m as f64)
            };
            assert_eq!(c.update(s(m * 60), cut), None);
        }
    }
}
