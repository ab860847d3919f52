//! Cold-chain settings, with the defaults the README's "The cold chain" lists.

use crate::units::Celsius;
use serde::Deserialize;
use std::time::Duration;

/// `[coldchain]` of the appliance config. Every field has a default.
#[derive(Clone, Debug, Deserialize, serde::Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ColdChainConfig {
    /// Lowest acceptable storage temperature (vaccines: 2.0 °C).
    pub range_min: Celsius,
    /// Highest acceptable storage temperature (vaccines: 8.0 °C).
    pub range_max: Celsius,
    /// The compressor stops when the buffered probe falls to this (band bottom).
    pub cut_out: Celsius,
    /// The compressor starts when the buffered probe rises to this (band top).
    pub cut_in: Celsius,
    /// How often the probes are read and the thermostat runs.
    #[serde(with = "humantime_serde")]
    pub control_period: Duration,
    /// How often a reading is recorded (CDC: at least every 30 min; we record every minute).
    #[serde(with = "humantime_serde")]
    pub record_period: Duration,
    /// Wait after mains returns before the compressor may start (avoids every appliance on a
    /// circuit starting at once, and lets pressures settle).
    #[serde(with = "humantime_serde")]
    pub restart_delay: Duration,
    /// Minimum compressor run (the relay enforces it again below us).
    #[serde(with = "humantime_serde")]
    pub min_on: Duration,
    /// Minimum compressor rest.
    #[serde(with = "humantime_serde")]
    pub min_off: Duration,
    /// Longest continuous run before a forced rest.
    #[serde(with = "humantime_serde")]
    pub max_on: Duration,
    /// Fail-safe duty cycle with no valid probe: on time.
    #[serde(with = "humantime_serde")]
    pub failsafe_on: Duration,
    /// Fail-safe duty cycle with no valid probe: off time.
    #[serde(with = "humantime_serde")]
    pub failsafe_off: Duration,
    /// Lowest physically plausible reading.
    pub plausible_min: Celsius,
    /// Highest physically plausible reading.
    pub plausible_max: Celsius,
    /// Fastest plausible change of the buffered probe, °C per minute.
    pub max_rate_per_min: f64,
    /// Fastest plausible change of the air probe with the door shut, °C per minute (the air
    /// node holds the stock, so it cannot swing like free air). Faster is evidence against the
    /// air probe when the probes then disagree; it never rejects a reading by itself.
    pub air_max_rate_per_min: f64,
    /// Largest tolerated difference between the buffered probe and the air probe's buffered
    /// equivalent; beyond it the readings are in doubt (see `alarms.probe_disagreement` for
    /// when that becomes an alarm).
    pub max_disagreement: f64,
    /// The cabinet's thermal time constant (its heat capacity over the walls' conductance): how
    /// slowly it relaxes toward the temperature its cooling holds. The arbiter's energy balance
    /// uses it to tell a drifting probe from a moving cabinet. Default: the reference 50 L
    /// cabinet of `hw/sim.toml` (8000 J/K over 0.6 W/K).
    #[serde(with = "humantime_serde")]
    pub cabinet_time_constant: Duration,
    /// How many °C colder a running compressor holds the cabinet than a stopped one (its
    /// cooling power over the walls' conductance): each 0.1 of duty cycle is worth a tenth of
    /// this. Default: the reference cabinet's 25 W over 0.6 W/K.
    pub cooling_swing: f64,
    /// While the probes disagree and neither can be blamed, cooling stops whenever the colder
    /// one reads at or below this: whichever is right, nothing freezes.
    pub guard_cold: Celsius,
    /// Time constant of the low-pass filter that turns the air probe into a "buffered
    /// equivalent", for comparing it with the vial and for control when the vial probe fails.
    #[serde(with = "humantime_serde")]
    pub air_smoothing: Duration,
    /// A probe with no valid reading for this long is stale.
    #[serde(with = "humantime_serde")]
    pub stale_after: Duration,
    /// A reading that does not move at all over this window, while the compressor starts at
    /// least twice, is stuck.
    #[serde(with = "humantime_serde")]
    pub stuck_window: Duration,
    /// In-range readings needed to close an excursion (one in-range reading between two bad
    /// ones is not a recovery).
    pub excursion_close_after: u32,
    /// Alarm rules.
    pub alarms: AlarmRules,
}

/// Whether an alarm needs its condition for one continuous stretch or in total over a window.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Semantics {
    /// The condition must hold continuously for the delay (WHO PQS 30-day logger alarms).
    Single,
    /// The condition's minutes add up over a rolling 24 h until they reach the delay.
    Cumulative,
}

/// A temperature alarm: beyond `threshold` for `delay`.
#[derive(Clone, Debug, Deserialize, serde::Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TemperatureRule {
    /// Threshold (freeze: at or below; heat: above).
    pub threshold: Celsius,
    /// How long beyond the threshold before the alarm is raised.
    #[serde(with = "humantime_serde")]
    pub delay: Duration,
    /// Continuous or cumulative over 24 h.
    pub semantics: Semantics,
}

/// A condition alarm: the condition for `delay`.
#[derive(Clone, Debug, Deserialize, serde::Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DelayRule {
    /// How long the condition must last before the alarm is raised (zero: at once).
    #[serde(with = "humantime_serde")]
    pub delay: Duration,
}

/// `[coldchain.alarms]`: each alarm with its own delay (defaults: WHO PQS 30-day loggers for
/// freeze and heat, fast local alarms for the rest).
#[derive(Clone, Debug, Deserialize, serde::Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AlarmRules {
    /// Freeze: at or below −0.5 °C for 60 min continuous.
    pub freeze: TemperatureRule,
    /// Heat: above 8.0 °C for 600 min continuous.
    pub heat: TemperatureRule,
    /// Any excursion lasting 15 min.
    pub excursion: DelayRule,
    /// Door open for more than 5 min.
    pub door_open: DelayRule,
    /// No valid probe for 10 min.
    pub no_valid_probe: DelayRule,
    /// The two probes disagree for 15 min (door openings make the air lead the vial for a
    /// few minutes). Latched: it stays raised until a person acknowledges it, even if the
    /// probes agree again, because a probe that was wrong once must be looked at.
    pub probe_disagreement: DelayRule,
    /// Mains lost (at once).
    pub mains_lost: DelayRule,
    /// Mains lost for more than 24 h (the UPS will not last; stock must be moved).
    pub power_lost_long: DelayRule,
}

impl Default for AlarmRules {
    fn default() -> Self {
        let min = |m: u64| Duration::from_secs(60 * m);
        Self {
            freeze: TemperatureRule {
                threshold: Celsius(-0.5),
                delay: min(60),
                semantics: Semantics::Single,
            },
            heat: TemperatureRule {
                threshold: Celsius(8.0),
                delay: min(600),
                semantics: Semantics::Single,
            },
            excursion: DelayRule { delay: min(15) },
            door_open: DelayRule { delay: min(5) },
            no_valid_probe: DelayRule { delay: min(10) },
            probe_disagreement: DelayRule { delay: min(15) },
            mains_lost: DelayRule { delay: min(0) },
            power_lost_long: DelayRule {
                delay: min(24 * 60),
            },
        }
    }
}

impl Default for ColdChainConfig {
    fn default() -> Self {
        let min = |m: u64| Duration::from_secs(60 * m);
        Self {
            range_min: Celsius(2.0),
            range_max: Celsius(8.0),
            cut_out: Celsius(4.0),
            cut_in: Celsius(6.0),
            control_period: Duration::from_secs(10),
            record_period: min(1),
            restart_delay: min(3),
            min_on: min(2),
            min_off: min(4),
            max_on: min(45),
            failsafe_on: min(4),
            failsafe_off: min(6),
            plausible_min: Celsius(-40.0),
            plausible_max: Celsius(60.0),
            max_rate_per_min: 2.0,
            air_max_rate_per_min: 4.0,
            max_disagreement: 1.5,
            guard_cold: Celsius(1.0),
            cabinet_time_constant: Duration::from_secs(13_333),
            cooling_swing: 41.7,
            air_smoothing: min(10),
            stale_after: min(10),
            stuck_window: min(60),
            excursion_close_after: 3,
            alarms: AlarmRules::default(),
        }
    }
}

/// The compressor relay's own protective times, as a board profile states them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RelayLimits {
    /// Shortest run the relay allows.
    pub min_on: Duration,
    /// Shortest rest the relay allows.
    pub min_off: Duration,
    /// Longest run before the relay opens by itself.
    pub max_on: Duration,
}

impl ColdChainConfig {
    /// SHA-256 (hex) of the settings' canonical JSON: what the appliance records when its rules
    /// change, and what a report compares its own rules with.
    pub fn fingerprint(&self) -> String {
        let json = serde_json::to_string(self).unwrap_or_default();
        let digest = ring::digest::digest(&ring::digest::SHA256, json.as_bytes());
        digest.as_ref().iter().map(|b| format!("{b:02x}")).collect()
    }

    /// The settings the thermostat actually runs with on a board whose relay has `relay`'s
    /// limits: the stricter of each pair (longer minimum times, shorter maximum run). One place
    /// decides them, so the controller never asks for what the relay would refuse, and the
    /// relay's own trip stays what it is meant to be: the sign of a fault above it.
    pub fn with_relay(&self, relay: RelayLimits) -> Self {
        Self {
            min_on: self.min_on.max(relay.min_on),
            min_off: self.min_off.max(relay.min_off),
            max_on: self.max_on.min(relay.max_on),
            ..self.clone()
        }
    }

    /// Relay limits looser than these settings, as (board key, message): such a relay would
    /// not back the controller up (defence in depth).
    pub fn relay_problems(&self, relay: RelayLimits) -> Vec<(&'static str, String)> {
        let mut p = Vec::new();
        let show = |d: Duration| humantime::format_duration(d).to_string();
        if relay.min_on < self.min_on {
            p.push((
                "fridge.compressor.min_on",
                format!(
                    "{} is shorter than coldchain.min_on ({}): the board's relay may only be stricter",
                    show(relay.min_on),
                    show(self.min_on)
                ),
            ));
        }
        if relay.min_off < self.min_off {
            p.push((
                "fridge.compressor.min_off",
                format!(
                    "{} is shorter than coldchain.min_off ({}): the board's relay may only be stricter",
                    show(relay.min_off),
                    show(self.min_off)
                ),
            ));
        }
        if relay.max_on > self.max_on {
            p.push((
                "fridge.compressor.max_on",
                format!(
                    "{} is longer than coldchain.max_on ({}): the board's relay may only be stricter",
                    show(relay.max_on),
                    show(self.max_on)
                ),
            ));
        }
        p
    }

    /// Cross-field problems, as (key, message) pairs.
    pub fn problems(&self) -> Vec<(&'static str, String)> {
        let mut p = Vec::new();
        for (key, v) in [
            ("coldchain.range_min", self.range_min.0),
            ("coldchain.range_max", self.range_max.0),
            ("coldchain.cut_out", self.cut_out.0),
            ("coldchain.cut_in", self.cut_in.0),
            ("coldchain.plausible_min", self.plausible_min.0),
            ("coldchain.plausible_max", self.plausible_max.0),
            ("coldchain.max_rate_per_min", self.max_rate_per_min),
            ("coldchain.air_max_rate_per_min", self.air_max_rate_per_min),
            ("coldchain.guard_cold", self.guard_cold.0),
            (
                "coldchain.alarms.freeze.threshold",
                self.alarms.freeze.threshold.0,
            ),
            (
                "coldchain.alarms.heat.threshold",
                self.alarms.heat.threshold.0,
            ),
        ] {
            if !v.is_finite() {
                p.push((key, format!("{v} is not a number")));
            }
        }
        if !(self.max_rate_per_min > 0.0 && self.air_max_rate_per_min > 0.0) {
            p.push((
                "coldchain.max_rate_per_min",
                "rates of change must be above zero".into(),
            ));
        }
        if self.range_min >= self.range_max {
            p.push(("coldchain.range_min", "must be below range_max".to_string()));
        }
        if !(self.range_min < self.cut_out
            && self.cut_out < self.cut_in
            && self.cut_in < self.range_max)
        {
            p.push((
                "coldchain.cut_in",
                format!(
                    "the band must sit inside the range: range_min {} < cut_out {} < cut_in {} < range_max {}",
                    self.range_min.0, self.cut_out.0, self.cut_in.0, self.range_max.0
                ),
            ));
        }
        if self.max_on <= self.min_on {
            p.push(("coldchain.max_on", "must be longer than min_on".into()));
        }
        if self.failsafe_on.is_zero() || self.failsafe_off.is_zero() {
            p.push((
                "coldchain.failsafe_on",
                "fail-safe on and off times must both be above zero".into(),
            ));
        }
        if self.failsafe_on > self.max_on || self.failsafe_on < self.min_on {
            p.push((
                "coldchain.failsafe_on",
                "must lie between min_on and max_on".into(),
            ));
        }
        if self.failsafe_off < self.min_off {
            p.push(("coldchain.failsafe_off", "must be at least min_off".into()));
        }
        if self.control_period.is_zero() || self.control_period > self.record_period {
            p.push((
                "coldchain.control_period",
                "must be above zero and no longer than record_period".into(),
            ));
        }
        if !(self.alarms.freeze.threshold < self.guard_cold && self.guard_cold < self.range_min) {
            p.push((
                "coldchain.guard_cold",
                format!(
                    "must lie between the freeze alarm threshold ({}) and range_min ({})",
                    self.alarms.freeze.threshold.0, self.range_min.0
                ),
            ));
        }
        if self.cabinet_time_constant < Duration::from_secs(600) {
            p.push((
                "coldchain.cabinet_time_constant",
                "must be at least 10 min (a cabinet with its stock is hours)".into(),
            ));
        }
        if !(self.cooling_swing > 0.0 && self.cooling_swing.is_finite()) {
            p.push(("coldchain.cooling_swing", "must be above zero".into()));
        }
        if !(self.max_disagreement > 0.0 && self.max_disagreement.is_finite()) {
            p.push(("coldchain.max_disagreement", "must be above zero".into()));
        }
        if self.excursion_close_after == 0 {
            p.push((
                "coldchain.excursion_close_after",
                "must be at least 1".into(),
            ));
        }
        if self.alarms.freeze.threshold >= self.range_min {
            p.push((
                "coldchain.alarms.freeze.threshold",
                "must be below range_min".into(),
            ));
        }
        if self.alarms.heat.threshold < self.range_max {
            p.push((
                "coldchain.alarms.heat.threshold",
                "must be at or above range_max".into(),
            ));
        }
        if self.record_period > Duration::from_secs(30 * 60) {
            p.push((
                "coldchain.record_period",
                "must be 30 min or less (CDC digital data logger guidance)".into(),
            ));
        }
        p
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn relay(min_on: u64, min_off: u64, max_on: u64) -> RelayLimits {
        let m = |v| Duration::from_secs(60 * v);
        RelayLimits {
            min_on: m(min_on),
            min_off: m(min_off),
            max_on: m(max_on),
        }
    }

    #[test]
    fn the_thermostat_runs_with_the_stricter_of_the_config_and_the_relay() {
        let cfg = ColdChainConfig::default();
        let eff = cfg.with_relay(relay(3, 2, 30));
        assert_eq!(
            eff.min_on,
            Duration::from_secs(180),
            "the relay's longer min_on"
        );
        assert_eq!(eff.min_off, cfg.min_off, "the config's longer min_off");
        assert_eq!(
            eff.max_on,
            Duration::from_secs(1800),
            "the relay's shorter max_on"
        );
        assert_eq!(cfg.with_relay(relay(2, 4, 45)), cfg);
    }

    #[test]
    fn a_relay_looser_than_the_cold_chain_settings_is_a_config_problem() {
        let cfg = ColdChainConfig::default();
        assert!(cfg.relay_problems(relay(2, 4, 45)).is_empty());
        assert!(
            cfg.relay_problems(relay(3, 5, 30)).is_empty(),
            "stricter is fine"
        );
        let keys: Vec<_> = cfg
            .relay_problems(relay(1, 3, 60))
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        assert_eq!(
            keys,
            [
                "fridge.compressor.min_on",
                "fridge.compressor.min_off",
                "fridge.compressor.max_on"
            ]
        );
    }
}
