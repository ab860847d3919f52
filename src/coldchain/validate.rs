//! Probe validation: no reading is used before it passes these checks (see the README's "The cold
//! chain").
//!
//! Signatures rejected here: the driver's own (bus error, CRC, 85.000 power-on, 127.937 failed
//! conversion, unreadable), a value outside the physically plausible range, a buffered probe moving
//! faster than glycol can, and a value frozen while the compressor cycles. Staleness (no valid
//! reading for `stale_after`) and disagreement between the two probes are the [`super::arbiter`]'s.
//! Every rejection is a probe fault, to be recorded as such and never as a temperature excursion.

use super::config::ColdChainConfig;
use crate::devices::ProbeError;
use crate::units::Celsius;
use std::time::Duration;

/// Why a reading was rejected. The names are stable codes for records and alarms.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ProbeFaultKind {
    /// The probe did not answer.
    NotResponding,
    /// Bus or CRC error.
    BusError,
    /// DS18B20 85.000 °C power-on value.
    PowerOnValue,
    /// DS18B20 127.937 °C failed conversion.
    ConversionFailed,
    /// The answer could not be parsed.
    Malformed,
    /// Outside the plausible range.
    OutOfRange,
    /// Changed faster than the probe's buffer allows.
    ImplausibleRate,
    /// Did not move while the compressor cycled.
    Stuck,
}

impl From<&ProbeError> for ProbeFaultKind {
    fn from(e: &ProbeError) -> Self {
        match e {
            ProbeError::NotResponding(_) => Self::NotResponding,
            ProbeError::Bus(_) => Self::BusError,
            ProbeError::PowerOnValue => Self::PowerOnValue,
            ProbeError::ConversionFailed => Self::ConversionFailed,
            ProbeError::Malformed(_) => Self::Malformed,
        }
    }
}

/// The outcome of validating one reading.
#[derive(Clone, Debug, PartialEq)]
pub enum Verdict {
    /// Usable.
    Valid(Celsius),
    /// Rejected, with the raw value if there was one.
    Rejected(ProbeFaultKind, Option<Celsius>),
}

/// Whether a probe sits in a thermal buffer (its rate of change is bounded) or in free air.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mounting {
    /// In a glycol vial.
    Buffered,
    /// In free air (door openings move it fast; no rate check).
    Air,
}

/// Validation state of one probe.
#[derive(Clone, Debug)]
pub struct ProbeValidator {
    cfg: ColdChainConfig,
    mounting: Mounting,
    last_valid: Option<(Duration, f64)>,
    /// Reference for stuck detection: value, since when, compressor starts at that time.
    unchanged: Option<(f64, Duration, u64)>,
}

impl ProbeValidator {
    /// A validator with no history.
    pub fn new(cfg: ColdChainConfig, mounting: Mounting) -> Self {
        Self {
            cfg,
            mounting,
            last_valid: None,
            unchanged: None,
        }
    }

    /// Validates a raw reading taken at `now`; `compressor_starts` is the running count of
    /// compressor starts, for stuck detection.
    pub fn check(
        &mut self,
        now: Duration,
        raw: &Result<Celsius, ProbeError>,
        compressor_starts: u64,
    ) -> Verdict {
        let value = match raw {
            Ok(c) => *c,
            Err(e) => return Verdict::Rejected(e.into(), None),
        };
        let v = value.0;
        let c = &self.cfg;
        if !v.is_finite() || value < c.plausible_min || value > c.plausible_max {
            return Verdict::Rejected(ProbeFaultKind::OutOfRange, Some(value));
        }
        if self.mounting == Mounting::Buffered {
            if let Some((t0, v0)) = self.last_valid {
                let dt = now.saturating_sub(t0);
                // Only against a recent anchor: after a long gap the probe may have moved honestly.
                if dt > Duration::ZERO && dt <= c.stale_after {
                    let per_min = (v - v0).abs() / (dt.as_secs_f64() / 60.0);
                    // Allow the TMP117's quantisation noise on very short intervals.
                    if per_min > c.max_rate_per_min && (v - v0).abs() > 0.1 {
                        return Verdict::Rejected(ProbeFaultKind::ImplausibleRate, Some(value));
                    }
                }
            }
        }
        match self.unchanged {
            Some((v0, since, starts0)) if v == v0 => {
                if now.saturating_sub(since) >= c.stuck_window && compressor_starts >= starts0 + 2 {
                    return Verdict::Rejected(ProbeFaultKind::Stuck, Some(value));
                }
            }
            _ => self.unchanged = Some((v, now, compressor_starts)),
        }
        self.last_valid = Some((now, v));
        Verdict::Valid(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: u64) -> Duration {
        Duration::from_secs(v)
    }
    fn ok(v: f64) -> Result<Celsius, ProbeError> {
        Ok(Celsius(v))
    }
    fn buffered() -> ProbeValidator {
        ProbeValidator::new(ColdChainConfig::default(), Mounting::Buffered)
    }

    #[test]
    fn driver_signatures_are_probe_faults() {
        let mut p = buffered();
        for (err, kind) in [
            (ProbeError::Bus("crc".into()), ProbeFaultKind::BusError),
            (ProbeError::PowerOnValue, ProbeFaultKind::PowerOnValue),
            (
                ProbeError::ConversionFailed,
                ProbeFaultKind::ConversionFailed,
            ),
            (
                ProbeError::NotResponding("nack".into()),
                ProbeFaultKind::NotResponding,
            ),
        ] {
            assert_eq!(p.check(s(0), &Err(err), 0), Verdict::Rejected(kind, None));
        }
    }

    #[test]
    fn readings_outside_physical_range_are_rejected() {
        let mut p = buffered();
        assert_eq!(
            p.check(s(0), &ok(-40.5), 0),
            Verdict::Rejected(ProbeFaultKind::OutOfRange, Some(Celsius(-40.5)))
        );
        assert_eq!(
            p.check(s(0), &ok(60.5), 0),
            Verdict::Rejected(ProbeFaultKind::OutOfRange, Some(Celsius(60.5)))
        );
        assert!(matches!(
            p.check(s(0), &ok(f64::NAN), 0),
            Verdict::Rejected(ProbeFaultKind::OutOfRange, _)
        ));
        assert_eq!(p.check(s(0), &ok(5.0), 0), Verdict::Valid(Celsius(5.0)));
    }

    #[test]
    fn buffered_probe_jumping_more_than_two_degrees_a_minute_is_rejected() {
        let mut p = buffered();
        assert!(matches!(p.check(s(0), &ok(5.0), 0), Verdict::Valid(_)));
        assert!(matches!(
            p.check(s(60), &ok(7.1), 0),
            Verdict::Rejected(ProbeFaultKind::ImplausibleRate, _)
        ));
        assert!(matches!(p.check(s(60), &ok(6.9), 0), Verdict::Valid(_)));
    }

    #[test]
    fn air_probe_may_move_fast() {
        let mut p = ProbeValidator::new(ColdChainConfig::default(), Mounting::Air);
        p.check(s(0), &ok(5.0), 0);
        assert!(matches!(p.check(s(60), &ok(12.0), 0), Verdict::Valid(_)));
    }

    #[test]
    fn value_stuck_while_compressor_cycles_is_rejected() {
        let mut p = buffered();
        assert!(matches!(p.check(s(0), &ok(5.0), 10), Verdict::Valid(_)));
        // An hour unchanged but only one compressor start: could be a quiet fridge.
        assert!(matches!(p.check(s(3600), &ok(5.0), 11), Verdict::Valid(_)));
        assert!(matches!(
            p.check(s(3610), &ok(5.0), 12),
            Verdict::Rejected(ProbeFaultKind::Stuck, _)
        ));
        // Any movement clears it.
        assert!(matches!(p.check(s(3620), &ok(5.01), 12), Verdict::Valid(_)));
    }
}
