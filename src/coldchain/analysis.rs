//! The pharmacist's view of a run of readings: min, max, mean, MKT, time in range, every
//! excursion, every alarm raised, and the daily records. Built either from the live controller's
//! events ([`Analysis::add_event`]) or offline from observations ([`analyse`]); both paths go
//! through the same [`Monitor`], so they agree on the same readings.

use super::config::ColdChainConfig;
use super::mkt::MktAccumulator;
use super::monitor::{AlarmKind, DaySummary, Excursion, Monitor, MonitorEvent, Observation};
use chrono::{DateTime, Utc};
use serde::Serialize;

/// One alarm raised.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct AlarmRecord {
    /// Which.
    pub alarm: AlarmKind,
    /// When it was raised.
    pub at: DateTime<Utc>,
    /// When its condition began.
    pub since: DateTime<Utc>,
    /// What the appliance does about it, where the alarm says (a probe disagreement).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// The result.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct AnalysisReport {
    /// Valid buffered readings.
    pub readings: u64,
    /// Rejected or missing readings.
    pub rejected: u64,
    /// Lowest valid reading.
    pub min: Option<f64>,
    /// Highest valid reading.
    pub max: Option<f64>,
    /// Mean of valid readings.
    pub mean: Option<f64>,
    /// MKT of valid readings.
    pub mkt: Option<f64>,
    /// Minutes in range.
    pub minutes_in_range: f64,
    /// Minutes out of range (below + above).
    pub minutes_out_of_range: f64,
    /// Minutes without a valid reading.
    pub minutes_unknown: f64,
    /// Minutes while the probes disagreed: uncertain, never counted in or out of range.
    pub minutes_uncertain: f64,
    /// Readings stored or exported out of time order, left out of the analysis (the source
    /// lists them).
    pub readings_out_of_order: u64,
    /// Every excursion (the last may still be open: `end` is None).
    pub excursions: Vec<Excursion>,
    /// The longest excursion's minutes.
    pub worst_excursion_minutes: f64,
    /// Every alarm raised.
    pub alarms: Vec<AlarmRecord>,
    /// Daily records.
    pub days: Vec<DaySummary>,
}

/// Accumulates readings and monitor events.
#[derive(Clone, Debug, Default)]
pub struct Analysis {
    report: AnalysisReport,
    sum: f64,
    mkt: MktAccumulator,
}

impl Analysis {
    /// Counts one recorded buffered reading (None: rejected or missing).
    pub fn add_reading(&mut self, buffered: Option<f64>) {
        let r = &mut self.report;
        match buffered {
            Some(v) => {
                r.readings += 1;
                self.sum += v;
                self.mkt.add(v);
                r.min = Some(r.min.map_or(v, |m| m.min(v)));
                r.max = Some(r.max.map_or(v, |m| m.max(v)));
            }
            None => r.rejected += 1,
        }
    }

    /// Takes in one monitor event.
    pub fn add_event(&mut self, e: &MonitorEvent) {
        let r = &mut self.report;
        match e {
            MonitorEvent::ExcursionClosed(x) => {
                r.worst_excursion_minutes = r.worst_excursion_minutes.max(x.minutes);
                r.excursions.push(x.clone());
            }
            MonitorEvent::AlarmRaised {
                alarm,
                at,
                since,
                detail,
                ..
            } => r.alarms.push(AlarmRecord {
                alarm: *alarm,
                at: *at,
                since: *since,
                detail: detail.clone(),
            }),
            MonitorEvent::DayClosed(d) => {
                r.minutes_in_range += d.minutes_in_range;
                r.minutes_out_of_range += d.minutes_below + d.minutes_above;
                r.minutes_unknown += d.minutes_unknown;
                r.minutes_uncertain += d.minutes_uncertain;
                r.days.push(d.clone());
            }
            MonitorEvent::ExcursionOpened { .. } | MonitorEvent::AlarmCleared { .. } => {}
        }
    }

    /// The report so far.
    pub fn report(&self) -> AnalysisReport {
        let mut r = self.report.clone();
        r.mean = (r.readings > 0).then(|| self.sum / r.readings as f64);
        r.mkt = self.mkt.value();
        r
    }
}

/// Feeds the end of a monitor's life (its last, partial day and an excursion still open) to an
/// analysis, as events.
pub fn final_events(monitor: &mut Monitor) -> Vec<MonitorEvent> {
    let (day, open) = monitor.finish();
    let mut out = Vec::new();
    if let Some(x) = open {
        out.push(MonitorEvent::ExcursionClosed(x));
    }
    if let Some(d) = day {
        out.push(MonitorEvent::DayClosed(d));
    }
    out
}

/// Analyses observations offline.
pub fn analyse(
    cfg: &ColdChainConfig,
    observations: impl IntoIterator<Item = Observation>,
) -> AnalysisReport {
    analyse_in(cfg, observations, chrono_tz::UTC)
}

/// [`analyse`], with the daily records cut at `tz`'s midnights (a pharmacist's local days).
pub fn analyse_in(
    cfg: &ColdChainConfig,
    observations: impl IntoIterator<Item = Observation>,
    tz: chrono_tz::Tz,
) -> AnalysisReport {
    let mut monitor = Monitor::new(cfg.clone()).with_day_zone(tz);
    let mut a = Analysis::default();
    for o in observations {
        a.add_reading(o.buffered);
        for e in monitor.observe(&o) {
            a.add_event(&e);
        }
    }
    for e in final_events(&mut monitor) {
        a.add_event(&e);
    }
    a.report()
}
