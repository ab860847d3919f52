//! Fridge statistics over a run of records: what a pharmacist asks first (min, max, mean per
//! probe, time in range, how hard the compressor worked).

use super::config::ColdChainConfig;
use super::ControlMode;
use crate::events::FridgeRecord;
use serde::Serialize;
use std::time::Duration;

/// Min, max and mean of one probe's valid readings.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct ProbeStats {
    /// Valid readings.
    pub readings: u64,
    /// Readings rejected by validation (not temperatures).
    pub rejected: u64,
    /// Lowest valid reading.
    pub min: Option<f64>,
    /// Highest valid reading.
    pub max: Option<f64>,
    /// Mean of valid readings.
    pub mean: Option<f64>,
    #[serde(skip)]
    sum: f64,
}

impl ProbeStats {
    fn add(&mut self, v: Option<f64>) {
        let Some(v) = v else {
            self.rejected += 1;
            return;
        };
        self.readings += 1;
        self.sum += v;
        self.min = Some(self.min.map_or(v, |m| m.min(v)));
        self.max = Some(self.max.map_or(v, |m| m.max(v)));
        self.mean = Some(self.sum / self.readings as f64);
    }
}

/// Statistics of the fridge over a run.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct FridgeStats {
    /// The buffered (vial) probe.
    pub vial: ProbeStats,
    /// The air probe.
    pub air: ProbeStats,
    /// Minutes the product estimate (the vial, or the air probe's buffered equivalent when
    /// the vial is missing or suspect) was inside the range.
    pub minutes_in_range: f64,
    /// Minutes it was outside the range.
    pub minutes_out_of_range: f64,
    /// Minutes with no product estimate.
    pub minutes_unknown: f64,
    /// Minutes while the probes disagreed: uncertain whatever they read.
    pub minutes_uncertain: f64,
    /// Compressor starts.
    pub compressor_starts: u64,
    /// Compressor starts per hour of the run.
    pub compressor_starts_per_hour: f64,
    /// Minutes the compressor relay was closed.
    pub compressor_on_minutes: f64,
    /// Minutes the door was open.
    pub door_open_minutes: f64,
    /// Minutes without mains.
    pub mains_off_minutes: f64,
    /// Minutes in the fail-safe duty cycle.
    pub failsafe_minutes: f64,
    /// Minutes the run covered.
    pub minutes: f64,
    #[serde(skip)]
    range: (f64, f64),
    #[serde(skip)]
    first_starts: Option<u64>,
}

impl FridgeStats {
    /// Empty statistics for the configured range.
    pub fn new(cfg: &ColdChainConfig) -> Self {
        Self {
            range: (cfg.range_min.0, cfg.range_max.0),
            ..Self::default()
        }
    }

    /// Adds one record that stands for `period` of time.
    pub fn add(&mut self, r: &FridgeRecord, period: Duration) {
        let m = period.as_secs_f64() / 60.0;
        self.vial.add(r.vial);
        self.air.add(r.air);
        match r.control {
            _ if r.doubt.is_some() => self.minutes_uncertain += m,
            Some(v) if v >= self.range.0 && v <= self.range.1 => self.minutes_in_range += m,
            Some(_) => self.minutes_out_of_range += m,
            None => self.minutes_unknown += m,
        }
        let first = *self.first_starts.get_or_insert(
            r.compressor_starts
                .saturating_sub(u64::from(r.compressor_on)),
        );
        self.compressor_starts = r.compressor_starts - first.min(r.compressor_starts);
        if r.compressor_on {
            self.compressor_on_minutes += m;
        }
        if r.door_open {
            self.door_open_minutes += m;
        }
        if !r.mains {
            self.mains_off_minutes += m;
        }
        if r.mode == ControlMode::FailSafe {
            self.failsafe_minutes += m;
        }
        self.minutes += m;
        if self.minutes > 0.0 {
            self.compressor_starts_per_hour = self.compressor_starts as f64 / (self.minutes / 60.0);
        }
    }
}
