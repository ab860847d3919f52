//! Which probe to believe when the two disagree (docs/cold-chain.md).
//!
//! The glycol vial lags and smooths the air, so its probe must follow a first-order lag of the
//! air probe. When it does not, by more than `max_disagreement`, one probe is wrong, and two
//! probes alone cannot always say which: a constant offset on either gives the same two numbers.
//! Physics offers two kinds of evidence:
//! - **a jump**: a reading that moved faster than its mounting allows (glycol cannot move
//!   `max_rate_per_min`; the air with the stock in it cannot move `air_max_rate_per_min` with the
//!   door closed) shortly before the disagreement began;
//! - **the energy balance**: the cabinet is one thermal mass that relaxes, with its time constant
//!   (`cabinet_time_constant`), toward the temperature its cooling holds. The duty cycle learned
//!   while the probes agreed held their mean temperature, and each unit of duty is worth
//!   `cooling_swing` °C, so from the compressor's actual runs the arbiter predicts where each
//!   probe should go if it were the honest one. A probe that leaves its prediction while the
//!   other follows its own contradicts the energy balance.
//!
//! With a suspect, control runs on the other probe. Without one, the compressor holds the duty
//! cycle that kept the cabinet in its band while the probes agreed (the same heat extraction holds
//! the same temperature whichever probe is wrong); the colder reading caps cooling at
//! `guard_cold`, so nothing freezes whichever probe is right; and a colder reading at or above
//! `cut_in` forces cooling, since then both say warm. Every reading taken while the probes
//! disagree carries the [`Doubt`], so no record calls it "in range" silently.

use super::config::ColdChainConfig;
use super::validate::{ProbeFaultKind, Verdict};
use crate::units::Celsius;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// How long the probes must agree again before a disagreement episode ends.
pub const AGREE_AGAIN: Duration = Duration::from_secs(10 * 60);
/// Compressor cycles the duty is learned over: whole cycles, so the estimate does not ripple
/// with the phase of the current one (the cabinet's temperature moves about 4 °C per 0.1 of
/// duty, so a ripple of a few hundredths matters).
pub const DUTY_CYCLES: usize = 6;
/// How long the energy balance is followed before a probe is judged against it.
pub const SETTLE: Duration = Duration::from_secs(30 * 60);
/// A probe this far from where the energy balance says it should be has drifted…
pub const DRIFT_MOVED: f64 = 1.0;
/// …provided the other is within this of its own prediction (if both are off, the model is:
/// the room changed, say; the judgement starts again from there).
pub const DRIFT_STILL: f64 = 0.4;
/// The duty is learned only while the probes agree this closely: a probe that has begun to
/// drift under thermostat control pulls the cabinet, and the duty, with it.
pub const LEARN_WITHIN: f64 = 0.5;

/// One of the two probes, as the arbiter names them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Which {
    /// The buffered (glycol vial) probe.
    Vial,
    /// The air probe.
    Air,
}

impl Which {
    fn index(self) -> usize {
        match self {
            Which::Vial => 0,
            Which::Air => 1,
        }
    }

    fn other(self) -> Which {
        match self {
            Which::Vial => Which::Air,
            Which::Air => Which::Vial,
        }
    }
}

/// Why a probe is suspected.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Evidence {
    /// It moved faster than its mounting allows just before the disagreement.
    Jumped,
    /// It kept drifting while the compressor held a fixed duty cycle and the other stayed still.
    Drifted,
}

/// What is known about a disagreement between the probes. Stable codes for records and alarms.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Doubt {
    /// The vial probe is the suspect; control runs on the air probe's buffered equivalent.
    VialSuspect,
    /// The air probe is the suspect; control runs on the vial probe.
    AirSuspect,
    /// Neither can be blamed yet; the learned duty cycle holds, the colder reading caps cooling.
    Undecided,
}

impl Signal {
    /// A single trusted reading.
    pub fn trusted(t: Celsius) -> Self {
        Signal::Trusted {
            colder: t,
            warmer: t,
        }
    }
}

impl Doubt {
    /// The stable code.
    pub fn code(self) -> &'static str {
        match self {
            Doubt::VialSuspect => "VIAL_SUSPECT",
            Doubt::AirSuspect => "AIR_SUSPECT",
            Doubt::Undecided => "UNDECIDED",
        }
    }

    /// Parses a stable code.
    pub fn from_code(code: &str) -> Option<Self> {
        [Doubt::VialSuspect, Doubt::AirSuspect, Doubt::Undecided]
            .into_iter()
            .find(|d| d.code() == code)
    }

    /// What control does about it, for alarms and reports.
    pub fn control(self) -> &'static str {
        match self {
            Doubt::VialSuspect => "vial probe suspect: controlling on the air probe",
            Doubt::AirSuspect => "air probe suspect: controlling on the vial probe",
            Doubt::Undecided => {
                "cannot tell which probe is wrong: holding the learned duty cycle, the colder probe caps cooling"
            }
        }
    }

    fn of(suspect: Which) -> Self {
        match suspect {
            Which::Vial => Doubt::VialSuspect,
            Which::Air => Doubt::AirSuspect,
        }
    }
}

/// What the thermostat runs on.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Signal {
    /// Trusted readings: the thermostat band applies, cooling starting when the warmer reaches
    /// `cut_in` and stopping when the colder reaches `cut_out`, so a probe that has begun to
    /// drift (by less than `max_disagreement`) can pull the cabinet neither below nor above
    /// the band. With one trusted reading both are the same.
    Trusted {
        /// The colder trusted reading.
        colder: Celsius,
        /// The warmer trusted reading.
        warmer: Celsius,
    },
    /// Two readings that disagree with no way to tell which is right: hold `duty`, with the
    /// colder reading capping cooling.
    Disputed {
        /// The colder of the two readings.
        colder: Celsius,
        /// Fraction of time the compressor should run.
        duty: f64,
    },
    /// No usable probe: the fail-safe duty cycle.
    Lost,
}

/// The arbiter's answer for one period.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Arbitration {
    /// What the thermostat runs on.
    pub signal: Signal,
    /// The best estimate of the stored product's temperature (None: unknown or undecided).
    pub estimate: Option<Celsius>,
    /// Set while the probes disagree (and until they have agreed again for [`AGREE_AGAIN`]).
    pub doubt: Option<Doubt>,
    /// Why the suspect is suspected, when there is one.
    pub evidence: Option<Evidence>,
}

/// One period's inputs besides the probes' verdicts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Plant {
    /// Whether the compressor ran during the period just ended.
    pub compressor_on: bool,
    /// Door open.
    pub door_open: bool,
    /// Mains present.
    pub mains: bool,
}

#[derive(Clone, Debug)]
struct Episode {
    agreeing_since: Option<Duration>,
    suspect: Option<(Which, Evidence)>,
    /// Energy-balance predictions since when: for the vial being honest, and for the air.
    model: Option<(Duration, [Prediction; 2])>,
}

/// Where the cabinet would be, and what a probe lagging it would read, if one probe's reading
/// at the start was the truth.
#[derive(Clone, Copy, Debug)]
struct Prediction {
    cabinet: f64,
    seen: f64,
}

impl Prediction {
    fn from(reading: f64) -> Self {
        Self {
            cabinet: reading,
            seen: reading,
        }
    }

    /// Relaxes toward `holds` (the temperature the cooling of the last `dt` would hold) with
    /// the cabinet's time constant, and the probe's view follows with its lag.
    fn step(&mut self, dt: f64, holds: f64, tau: f64, lag: f64) {
        self.cabinet += (holds - self.cabinet) * (1.0 - (-dt / tau.max(1.0)).exp());
        self.seen += (self.cabinet - self.seen) * (1.0 - (-dt / lag.max(1.0)).exp());
    }
}

/// The arbiter's state.
#[derive(Clone, Debug)]
pub struct Arbiter {
    cfg: ColdChainConfig,
    smoothed_air: Option<(Duration, f64)>,
    last_air: Option<(Duration, f64)>,
    jumped: [Option<Duration>; 2],
    duty: DutyLearner,
    last_at: Option<Duration>,
    episode: Option<Episode>,
}

impl Arbiter {
    /// No history; the learned duty starts at the fail-safe duty cycle's.
    pub fn new(cfg: ColdChainConfig) -> Self {
        let (on, off) = (
            cfg.failsafe_on.as_secs_f64(),
            cfg.failsafe_off.as_secs_f64(),
        );
        Self {
            duty: DutyLearner::new(on / (on + off).max(1.0)),
            cfg,
            smoothed_air: None,
            last_air: None,
            jumped: [None; 2],
            last_at: None,
            episode: None,
        }
    }

    /// The air probe's buffered equivalent, while its last valid reading is no older than
    /// `stale_after`: a filter left holding an old value must not stand in for a probe.
    pub fn smoothed_air(&self) -> Option<Celsius> {
        let fresh = match (self.last_air, self.last_at) {
            (Some((t, _)), Some(now)) => now.saturating_sub(t) < self.cfg.stale_after,
            _ => false,
        };
        self.smoothed_air.filter(|_| fresh).map(|(_, v)| Celsius(v))
    }

    /// The duty cycle learned while the probes agreed and the cabinet sat in its band.
    pub fn learned_duty(&self) -> f64 {
        self.duty.duty()
    }

    /// Feeds one period: the two probes' verdicts and the plant's state.
    pub fn update(
        &mut self,
        now: Duration,
        vial: &Verdict,
        air: &Verdict,
        plant: Plant,
    ) -> Arbitration {
        let dt = self
            .last_at
            .map_or(Duration::ZERO, |t| now.saturating_sub(t));
        self.last_at = Some(now);
        let vial_ok = valid(vial);
        let air_ok = valid(air);
        if matches!(vial, Verdict::Rejected(ProbeFaultKind::ImplausibleRate, _)) {
            self.jumped[Which::Vial.index()] = Some(now);
        }
        if let Some(a) = air_ok {
            self.observe_air(now, a.0, plant.door_open);
        }
        let smoothed = self.smoothed_air();
        let close = match (vial_ok, smoothed) {
            (Some(v), Some(a)) => (v.0 - a.0).abs() <= LEARN_WITHIN,
            _ => false,
        };
        let in_band = vial_ok
            .is_some_and(|t| t.0 >= self.cfg.cut_out.0 - 1.0 && t.0 <= self.cfg.cut_in.0 + 1.0);
        let healthy = close && in_band && self.episode.is_none() && !plant.door_open && plant.mains;
        self.duty
            .observe(dt, plant.compressor_on, vial_ok.map(|c| c.0), healthy);

        let (Some(v), Some(a)) = (vial_ok, smoothed) else {
            return self.single(vial_ok, smoothed);
        };
        let disagree = (v.0 - a.0).abs() > self.cfg.max_disagreement;
        if disagree {
            let window_start = now.saturating_sub(self.cfg.stale_after + AGREE_AGAIN);
            let jumped = self.jumped;
            let ep = self.episode.get_or_insert(Episode {
                agreeing_since: None,
                suspect: None,
                model: None,
            });
            ep.agreeing_since = None;
            if ep.suspect.is_none() {
                let recent = |w: Which| jumped[w.index()].is_some_and(|t| t >= window_start);
                ep.suspect = match (recent(Which::Vial), recent(Which::Air)) {
                    (true, false) => Some((Which::Vial, Evidence::Jumped)),
                    (false, true) => Some((Which::Air, Evidence::Jumped)),
                    _ => None,
                };
            }
        } else if let Some(ep) = self.episode.as_mut() {
            let since = *ep.agreeing_since.get_or_insert(now);
            if now.saturating_sub(since) >= AGREE_AGAIN {
                self.episode = None;
                self.jumped = [None; 2];
            }
        }
        let duty = self.duty.duty();
        let balance = self.duty.balance();
        let cfg = &self.cfg;
        let Some(ep) = self.episode.as_mut() else {
            return Arbitration {
                signal: Signal::Trusted {
                    colder: Celsius(v.0.min(a.0)),
                    warmer: Celsius(v.0.max(a.0)),
                },
                estimate: Some(v),
                doubt: None,
                evidence: None,
            };
        };
        if ep.suspect.is_none() {
            ep.suspect = energy_balance(ep, cfg, balance, now, dt, plant, [v.0, a.0]);
        }
        match ep.suspect {
            Some((suspect, evidence)) => {
                let trusted = match suspect.other() {
                    Which::Vial => v,
                    Which::Air => a,
                };
                Arbitration {
                    signal: Signal::trusted(trusted),
                    estimate: Some(trusted),
                    doubt: Some(Doubt::of(suspect)),
                    evidence: Some(evidence),
                }
            }
            None => Arbitration {
                signal: Signal::Disputed {
                    colder: Celsius(v.0.min(a.0)),
                    duty,
                },
                estimate: None,
                doubt: Some(Doubt::Undecided),
                evidence: None,
            },
        }
    }

    /// Only one probe (or none) is valid: no dispute is possible, but a known suspect is not
    /// trusted on its own.
    fn single(&self, vial: Option<Celsius>, air: Option<Celsius>) -> Arbitration {
        let suspect = self.episode.as_ref().and_then(|e| e.suspect);
        let usable = |w: Which, v: Option<Celsius>| v.filter(|_| suspect.map(|s| s.0) != Some(w));
        let chosen = usable(Which::Vial, vial).or(usable(Which::Air, air));
        Arbitration {
            signal: chosen.map_or(Signal::Lost, Signal::trusted),
            estimate: chosen,
            doubt: self.episode.as_ref().map(|e| match e.suspect {
                Some((w, _)) => Doubt::of(w),
                None => Doubt::Undecided,
            }),
            evidence: suspect.map(|s| s.1),
        }
    }

    fn observe_air(&mut self, now: Duration, a: f64, door_open: bool) {
        if let Some((t0, a0)) = self.last_air {
            let dt = now.saturating_sub(t0);
            if !door_open && dt > Duration::ZERO && dt <= self.cfg.stale_after {
                let per_min = (a - a0).abs() / (dt.as_secs_f64() / 60.0);
                if per_min > self.cfg.air_max_rate_per_min && (a - a0).abs() > 1.0 {
                    self.jumped[Which::Air.index()] = Some(now);
                }
            }
        }
        self.last_air = Some((now, a));
        self.smoothed_air = Some(match self.smoothed_air {
            Some((t0, s)) => {
                let dt = now.saturating_sub(t0).as_secs_f64();
                let k = 1.0 - (-dt / self.cfg.air_smoothing.as_secs_f64().max(1.0)).exp();
                (now, s + k * (a - s))
            }
            None => (now, a),
        });
    }
}

/// The compressor's duty over its last whole cycles while nothing was in doubt, the cabinet sat
/// in its band, the door was shut and mains on: the heat extraction that holds the band.
#[derive(Clone, Debug)]
struct DutyLearner {
    default: f64,
    /// Completed cycles: (time on, whole cycle, °C·s of the cabinet over it).
    cycles: std::collections::VecDeque<(Duration, Duration, f64)>,
    /// The cycle running: the same so far, and whether all of it was healthy.
    current: Option<(Duration, Duration, f64, bool)>,
    was_on: bool,
}

impl DutyLearner {
    fn new(default: f64) -> Self {
        Self {
            default,
            cycles: std::collections::VecDeque::new(),
            current: None,
            was_on: false,
        }
    }

    fn duty(&self) -> f64 {
        self.balance().map_or(self.default, |(duty, _)| duty)
    }

    /// The learned duty and the mean temperature it held, once a whole cycle was seen.
    fn balance(&self) -> Option<(f64, f64)> {
        let (on, all, heat) = self
            .cycles
            .iter()
            .fold((0.0, 0.0, 0.0), |(on, all, heat), (o, a, h)| {
                (on + o.as_secs_f64(), all + a.as_secs_f64(), heat + h)
            });
        (all > 0.0).then(|| (on / all, heat / all))
    }

    /// `on` is the compressor's state over the `dt` just ended, `t` the cabinet's temperature;
    /// a cycle begins at each start.
    fn observe(&mut self, dt: Duration, on: bool, t: Option<f64>, healthy: bool) {
        if let Some((t_on, t_all, heat, ok)) = self.current.as_mut() {
            *t_all += dt;
            if on {
                *t_on += dt;
            }
            *heat += t.unwrap_or(0.0) * dt.as_secs_f64();
            *ok &= healthy && t.is_some();
        }
        if on && !self.was_on {
            if let Some((t_on, t_all, heat, true)) = self.current.take() {
                self.cycles.push_back((t_on, t_all, heat));
                if self.cycles.len() > DUTY_CYCLES {
                    self.cycles.pop_front();
                }
            }
            self.current = Some((Duration::ZERO, Duration::ZERO, 0.0, healthy));
        }
        self.was_on = on;
    }
}

fn valid(v: &Verdict) -> Option<Celsius> {
    match v {
        Verdict::Valid(c) => Some(*c),
        Verdict::Rejected(..) => None,
    }
}

/// The energy-balance test: follows both hypotheses ("the vial is honest", "the air is honest")
/// from the start of the disagreement and blames the probe that leaves its own prediction while
/// the other keeps to its. `balance` is the learned (duty, mean temperature) it held; without
/// one nothing can be judged.
fn energy_balance(
    ep: &mut Episode,
    cfg: &ColdChainConfig,
    balance: Option<(f64, f64)>,
    now: Duration,
    dt: Duration,
    plant: Plant,
    readings: [f64; 2],
) -> Option<(Which, Evidence)> {
    let (duty, mean) = balance?;
    if plant.door_open {
        // The door brings heat the model does not know: start again once it is shut.
        ep.model = None;
        return None;
    }
    let Some((since, predictions)) = ep.model.as_mut() else {
        ep.model = Some((now, readings.map(Prediction::from)));
        return None;
    };
    let cooling = if plant.compressor_on && plant.mains {
        1.0
    } else {
        0.0
    };
    let holds = mean + cfg.cooling_swing * (duty - cooling);
    for p in predictions.iter_mut() {
        p.step(
            dt.as_secs_f64(),
            holds,
            cfg.cabinet_time_constant.as_secs_f64(),
            cfg.air_smoothing.as_secs_f64(),
        );
    }
    if now.saturating_sub(*since) < SETTLE {
        return None;
    }
    let off = [
        (readings[0] - predictions[0].seen).abs(),
        (readings[1] - predictions[1].seen).abs(),
    ];
    if off[0] >= DRIFT_MOVED && off[1] <= DRIFT_STILL {
        Some((Which::Vial, Evidence::Drifted))
    } else if off[1] >= DRIFT_MOVED && off[0] <= DRIFT_STILL {
        Some((Which::Air, Evidence::Drifted))
    } else {
        if off[0] > DRIFT_STILL && off[1] > DRIFT_STILL {
            ep.model = Some((now, readings.map(Prediction::from)));
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: u64) -> Duration {
        Duration::from_secs(v)
    }
    fn ok(v: f64) -> Verdict {
        Verdict::Valid(Celsius(v))
    }
    fn plant(on: bool) -> Plant {
        Plant {
            compressor_on: on,
            door_open: false,
            mains: true,
        }
    }
    /// Feeds a minute of agreeing readings at `t` from `from` for `minutes`.
    fn agree(a: &mut Arbiter, from: u64, minutes: u64, t: f64) {
        for m in from..from + minutes {
            let r = a.update(s(m * 60), &ok(t), &ok(t), plant(m % 10 < 4));
            assert_eq!(r.doubt, None, "minute {m}");
        }
    }

    #[test]
    fn agreeing_probes_control_on_the_vial_without_doubt() {
        let mut a = Arbiter::new(ColdChainConfig::default());
        agree(&mut a, 0, 30, 5.0);
        let r = a.update(s(30 * 60), &ok(5.2), &ok(5.0), plant(false));
        assert_eq!(
            r.signal,
            Signal::Trusted {
                colder: Celsius(5.0),
                warmer: Celsius(5.2)
            }
        );
        assert_eq!(r.doubt, None);
    }

    #[test]
    fn a_vial_probe_that_jumped_before_the_disagreement_is_the_suspect() {
        let mut a = Arbiter::new(ColdChainConfig::default());
        agree(&mut a, 0, 60, 5.0);
        // The step is rejected by the rate check for a while, then accepted at its new level.
        let jump = Verdict::Rejected(ProbeFaultKind::ImplausibleRate, Some(Celsius(10.0)));
        for m in 60..70 {
            let r = a.update(s(m * 60), &jump, &ok(5.0), plant(false));
            assert_eq!(r.signal, Signal::trusted(Celsius(5.0)));
        }
        let r = a.update(s(70 * 60), &ok(10.0), &ok(5.0), plant(false));
        assert_eq!(r.doubt, Some(Doubt::VialSuspect));
        assert_eq!(r.evidence, Some(Evidence::Jumped));
        assert!(matches!(r.signal, Signal::Trusted { colder: c, .. } if (c.0 - 5.0).abs() < 0.01));
        assert!(matches!(r.estimate, Some(c) if (c.0 - 5.0).abs() < 0.01));
    }

    #[test]
    fn an_air_probe_that_jumped_with_the_door_shut_is_the_suspect() {
        let mut a = Arbiter::new(ColdChainConfig::default());
        agree(&mut a, 0, 60, 5.0);
        let mut last = None;
        for m in 60..80 {
            last = Some(a.update(s(m * 60), &ok(5.0), &ok(0.0), plant(false)));
        }
        let r = last.unwrap();
        assert_eq!(r.doubt, Some(Doubt::AirSuspect));
        assert_eq!(r.signal, Signal::trusted(Celsius(5.0)));
    }

    #[test]
    fn an_air_jump_while_the_door_is_open_is_not_evidence() {
        let mut a = Arbiter::new(ColdChainConfig::default());
        agree(&mut a, 0, 60, 5.0);
        let open = Plant {
            door_open: true,
            ..plant(false)
        };
        a.update(s(60 * 60), &ok(5.0), &ok(12.0), open);
        let mut r = None;
        for m in 61..70 {
            r = Some(a.update(s(m * 60), &ok(5.0), &ok(12.0), plant(false)));
        }
        assert_eq!(r.unwrap().doubt, Some(Doubt::Undecided));
    }

    #[test]
    fn undecided_probes_hold_the_learned_duty_and_the_colder_reading_caps_cooling() {
        let mut a = Arbiter::new(ColdChainConfig::default());
        // Four minutes on in ten for hours: the learner converges near 0.4.
        agree(&mut a, 0, 600, 5.0);
        assert!(
            (a.learned_duty() - 0.4).abs() < 0.05,
            "{}",
            a.learned_duty()
        );
        // A drift (no jump) on the air probe, judged before the energy balance has had time to.
        let mut r = None;
        for m in 600..640 {
            let air = 5.0 - (m - 600) as f64 * 0.1;
            r = Some(a.update(s(m * 60), &ok(5.0), &ok(air), plant(m % 10 < 4)));
        }
        let r = r.unwrap();
        assert_eq!(r.doubt, Some(Doubt::Undecided));
        assert_eq!(
            r.estimate, None,
            "an undecided reading is never a temperature"
        );
        match r.signal {
            Signal::Disputed { colder, duty } => {
                assert!(colder.0 < 3.5);
                assert!((duty - 0.4).abs() < 0.05);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_probe_that_keeps_drifting_under_a_held_duty_contradicts_the_energy_balance() {
        let mut a = Arbiter::new(ColdChainConfig::default());
        agree(&mut a, 0, 300, 5.0);
        // The vial drifts up slowly (0.05 °C/min) while the air holds still.
        let mut found = None;
        for m in 300..600 {
            let vial = 5.0 + (m - 300) as f64 * 0.05;
            let r = a.update(s(m * 60), &ok(vial), &ok(5.0), plant(m % 10 < 4));
            if r.doubt == Some(Doubt::VialSuspect) {
                found = Some((m, r));
                break;
            }
            assert!(r.doubt.is_none() || r.doubt == Some(Doubt::Undecided));
        }
        let (m, r) = found.expect("the drifting vial is blamed");
        assert_eq!(r.evidence, Some(Evidence::Drifted));
        assert!(m < 300 + 150, "blamed after {} min", m - 300);
        assert!(matches!(r.signal, Signal::Trusted { colder: c, .. } if (c.0 - 5.0).abs() < 0.01));
    }

    #[test]
    fn the_doubt_ends_only_after_the_probes_agree_again_for_ten_minutes() {
        let mut a = Arbiter::new(ColdChainConfig::default());
        agree(&mut a, 0, 60, 5.0);
        for m in 60..80 {
            a.update(s(m * 60), &ok(5.0), &ok(0.0), plant(false));
        }
        // The air probe recovers; the smoothed air catches up over a few time constants.
        let mut cleared = None;
        for m in 80..200 {
            let r = a.update(s(m * 60), &ok(5.0), &ok(5.0), plant(false));
            if r.doubt.is_none() {
                cleared = Some(m);
                break;
            }
        }
        let m = cleared.expect("doubt clears");
        assert!(m >= 90, "cleared too early at {m}");
    }

    #[test]
    fn an_air_reading_older_than_stale_after_is_never_used() {
        let cfg = ColdChainConfig::default();
        let mut a = Arbiter::new(cfg.clone());
        agree(&mut a, 0, 30, 5.0);
        let gone = Verdict::Rejected(ProbeFaultKind::NotResponding, None);
        // The vial is out too: a glitch of the air probe keeps its buffered equivalent…
        let r = a.update(s(30 * 60), &gone, &gone, plant(false));
        assert!(matches!(r.signal, Signal::Trusted { .. }), "{r:?}");
        // …until its last valid reading is `stale_after` old: then nothing is trusted.
        let stale = 29 * 60 + cfg.stale_after.as_secs();
        let r = a.update(s(stale - 1), &gone, &gone, plant(false));
        assert!(matches!(r.signal, Signal::Trusted { .. }), "{r:?}");
        let r = a.update(s(stale), &gone, &gone, plant(false));
        assert_eq!(r.signal, Signal::Lost);
        assert_eq!(r.estimate, None);
        // A stale air probe is not compared with the vial either.
        let r = a.update(s(stale + 60), &ok(5.0), &gone, plant(false));
        assert_eq!(r.signal, Signal::trusted(Celsius(5.0)));
        assert_eq!(r.doubt, None);
    }

    #[test]
    fn a_suspect_left_alone_is_not_trusted() {
        let mut a = Arbiter::new(ColdChainConfig::default());
        agree(&mut a, 0, 60, 5.0);
        for m in 60..80 {
            a.update(s(m * 60), &ok(5.0), &ok(0.0), plant(false));
        }
        let gone = Verdict::Rejected(ProbeFaultKind::NotResponding, None);
        let r = a.update(s(80 * 60), &gone, &ok(0.0), plant(false));
        assert_eq!(
            r.signal,
            Signal::Lost,
            "only the suspect is left: fail-safe"
        );
        assert_eq!(r.doubt, Some(Doubt::AirSuspect));
    }
}
