//! The cold-chain monitor: excursions, alarms and daily records, from a stream of observations.
//!
//! The same pure core runs in the live fridge task (one observation per recorded reading) and in
//! `medbox coldchain stats` over an exported CSV, so both give the same answer on the same
//! readings. Each observation stands for the time since the previous one (capped at
//! `MAX_GAP`, beyond which time is counted as unknown): that is how minutes in and out of range,
//! and cumulative alarm minutes, are counted.
//!
//! Semantics, stated once: a *single-event* alarm needs its condition continuously from the first
//! observation that shows it until an observation at least `delay` later; a *cumulative* alarm
//! adds up the minutes its condition held over the last 24 h. Either is raised once per episode
//! and cleared when its condition ends (single) or its 24 h total falls back below the delay
//! (cumulative). Rejected readings (probe faults) neither open nor close an excursion.

use super::arbiter::Doubt;
use super::config::{ColdChainConfig, Semantics};
use super::mkt::MktAccumulator;
use chrono::{DateTime, NaiveDate, Utc};
use serde::Serialize;
use std::collections::VecDeque;
use std::time::Duration;
use thiserror::Error;

/// Longest gap one observation may stand for; beyond it, the time is unknown.
pub const MAX_GAP: Duration = Duration::from_secs(30 * 60);

/// What the monitor is told at each recorded reading.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Observation {
    /// When.
    pub at: DateTime<Utc>,
    /// The best estimate of the product's temperature ([`estimate`]), if there is one.
    pub buffered: Option<f64>,
    /// Whether any probe gave a valid reading.
    pub any_valid: bool,
    /// Set while the two probes disagree: the minute counts as uncertain, never in range.
    pub doubt: Option<Doubt>,
    /// Door open, if known.
    pub door_open: Option<bool>,
    /// Mains present, if known.
    pub mains: Option<bool>,
}

/// The product temperature a stored or exported reading stands for, the same way live and
/// offline: the arbitrated `control` value; rows written before it was stored (no control, no
/// doubt) stand for their vial reading.
pub fn estimate(vial: Option<f64>, control: Option<f64>, doubt: Option<Doubt>) -> Option<f64> {
    match doubt {
        Some(_) => control,
        None => control.or(vial),
    }
}

/// Alarm kinds, with stable codes.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, serde::Deserialize,
)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum AlarmKind {
    /// At or below the freeze threshold.
    Freeze,
    /// Above the heat threshold.
    Heat,
    /// An excursion lasting the excursion delay.
    Excursion,
    /// Door left open.
    DoorOpen,
    /// No valid probe.
    NoValidProbe,
    /// Mains lost.
    MainsLost,
    /// Mains lost for a day.
    PowerLostLong,
    /// The two probes disagree (latched until acknowledged).
    ProbeDisagreement,
    /// The compressor relay opened by itself at its maximum on-time while the controller asked
    /// for cooling (latched until acknowledged).
    CompressorTrip,
    /// The compressor ran and the cabinet did not cool (latched until acknowledged).
    CoolingFailed,
    /// The compressor was stopped and the cabinet kept cooling: the relay is stuck closed
    /// (latched until acknowledged).
    CompressorStuckOn,
}

impl AlarmKind {
    /// Every kind, in evaluation order.
    pub const ALL: [AlarmKind; 11] = [
        AlarmKind::Freeze,
        AlarmKind::Heat,
        AlarmKind::Excursion,
        AlarmKind::DoorOpen,
        AlarmKind::NoValidProbe,
        AlarmKind::MainsLost,
        AlarmKind::PowerLostLong,
        AlarmKind::ProbeDisagreement,
        AlarmKind::CompressorTrip,
        AlarmKind::CoolingFailed,
        AlarmKind::CompressorStuckOn,
    ];

    /// The stable code.
    pub fn code(self) -> &'static str {
        match self {
            AlarmKind::Freeze => "FREEZE",
            AlarmKind::Heat => "HEAT",
            AlarmKind::Excursion => "EXCURSION",
            AlarmKind::DoorOpen => "DOOR_OPEN",
            AlarmKind::NoValidProbe => "NO_VALID_PROBE",
            AlarmKind::MainsLost => "MAINS_LOST",
            AlarmKind::PowerLostLong => "POWER_LOST_LONG",
            AlarmKind::ProbeDisagreement => "PROBE_DISAGREEMENT",
            AlarmKind::CompressorTrip => "COMPRESSOR_TRIP",
            AlarmKind::CoolingFailed => "COOLING_FAILED",
            AlarmKind::CompressorStuckOn => "COMPRESSOR_STUCK_ON",
        }
    }

    /// Parses a stable code.
    pub fn from_code(code: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.code() == code)
    }

    /// Whether the alarm stays raised after its condition ends, until a person acknowledges
    /// it: a probe that was wrong once must be looked at even if it agrees again.
    pub fn latched(self) -> bool {
        matches!(
            self,
            AlarmKind::ProbeDisagreement | AlarmKind::CompressorTrip
        )
    }
}

/// A temperature excursion (closed, or still open at the end of a run).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Excursion {
    /// Sequence number within this monitor's life.
    pub id: u64,
    /// First out-of-range reading.
    pub start: DateTime<Utc>,
    /// First in-range reading of the run that closed it (None: still open).
    pub end: Option<DateTime<Utc>>,
    /// Minutes from start to end (or to the last reading, if open).
    pub minutes: f64,
    /// Lowest reading while open.
    pub min: f64,
    /// Highest reading while open.
    pub max: f64,
    /// MKT of the readings while open.
    pub mkt: f64,
    /// MKT of the 24 h of readings ending at the excursion's end (or last reading).
    pub mkt_24h: f64,
}

/// One day's record (UTC day).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DaySummary {
    /// The day.
    pub date: NaiveDate,
    /// Lowest valid buffered reading.
    pub min: Option<f64>,
    /// Highest valid buffered reading.
    pub max: Option<f64>,
    /// Mean of valid buffered readings.
    pub mean: Option<f64>,
    /// MKT of valid buffered readings.
    pub mkt: Option<f64>,
    /// Minutes in range.
    pub minutes_in_range: f64,
    /// Minutes below range (cumulative over the day).
    pub minutes_below: f64,
    /// Minutes above range (cumulative over the day).
    pub minutes_above: f64,
    /// Minutes without a valid reading (probe faults, gaps).
    pub minutes_unknown: f64,
    /// Minutes while the probes disagreed (never counted in range, below or above).
    #[serde(default)]
    pub minutes_uncertain: f64,
}

/// What the monitor reports.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum MonitorEvent {
    /// An excursion began.
    ExcursionOpened {
        /// Its id.
        id: u64,
        /// When.
        at: DateTime<Utc>,
        /// The reading that opened it.
        value: f64,
    },
    /// An excursion ended.
    ExcursionClosed(Excursion),
    /// An alarm was raised.
    AlarmRaised {
        /// Which.
        alarm: AlarmKind,
        /// When it was raised.
        at: DateTime<Utc>,
        /// When its condition began (single) or was first seen in the window (cumulative).
        since: DateTime<Utc>,
        /// The product estimate at the time, if there is one.
        value: Option<f64>,
        /// What the appliance does about it, where that is not obvious (a probe disagreement
        /// says which probe is suspected and what control runs on).
        #[serde(skip_serializing_if = "Option::is_none")]
        detail: Option<String>,
    },
    /// An alarm's condition ended.
    AlarmCleared {
        /// Which.
        alarm: AlarmKind,
        /// When.
        at: DateTime<Utc>,
        /// Whether someone had acknowledged it.
        acknowledged: bool,
    },
    /// A day ended.
    DayClosed(DaySummary),
}

/// An acknowledgement could not be taken.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum AckError {
    /// No such alarm is raised now.
    #[error("alarm {0} is not raised")]
    NotRaised(&'static str),
    /// It was already acknowledged.
    #[error("alarm {0} is already acknowledged")]
    AlreadyAcknowledged(&'static str),
    /// An acknowledgement needs a person and a reason.
    #[error("an acknowledgement needs an actor and a comment")]
    Incomplete,
}

#[derive(Clone, Debug, Default)]
struct RuleState {
    since: Option<DateTime<Utc>>,
    window: VecDeque<(DateTime<Utc>, f64)>,
    raised: Option<bool>,
}

#[derive(Clone, Debug)]
struct OpenExcursion {
    id: u64,
    start: DateTime<Utc>,
    min: f64,
    max: f64,
    mkt: MktAccumulator,
    in_range_run: u32,
    first_in_range: Option<DateTime<Utc>>,
    last: DateTime<Utc>,
}

#[derive(Clone, Debug)]
struct Day {
    date: NaiveDate,
    min: Option<f64>,
    max: Option<f64>,
    sum: f64,
    n: u64,
    mkt: MktAccumulator,
    in_range: f64,
    below: f64,
    above: f64,
    unknown: f64,
    uncertain: f64,
}

impl Day {
    fn new(date: NaiveDate) -> Self {
        Self {
            date,
            min: None,
            max: None,
            sum: 0.0,
            n: 0,
            mkt: MktAccumulator::default(),
            in_range: 0.0,
            below: 0.0,
            above: 0.0,
            unknown: 0.0,
            uncertain: 0.0,
        }
    }

    fn summary(&self) -> DaySummary {
        DaySummary {
            date: self.date,
            min: self.min,
            max: self.max,
            mean: (self.n > 0).then(|| self.sum / self.n as f64),
            mkt: self.mkt.value(),
            minutes_in_range: self.in_range,
            minutes_below: self.below,
            minutes_above: self.above,
            minutes_unknown: self.unknown,
            minutes_uncertain: self.uncertain,
        }
    }
}

/// The monitor's state.
#[derive(Clone, Debug)]
pub struct Monitor {
    cfg: ColdChainConfig,
    rules: [RuleState; 11],
    open: Option<OpenExcursion>,
    next_id: u64,
    last_at: Option<DateTime<Utc>>,
    day: Option<Day>,
    /// The zone whose midnights end a day (UTC on the appliance; a report may ask for the
    /// pharmacist's local days).
    day_zone: chrono_tz::Tz,
    last_24h: VecDeque<(DateTime<Utc>, f64)>,
}

fn minutes(d: chrono::Duration) -> f64 {
    d.num_milliseconds() as f64 / 60_000.0
}

impl Monitor {
    /// A monitor with no history.
    pub fn new(cfg: ColdChainConfig) -> Self {
        Self {
            cfg,
            rules: Default::default(),
            open: None,
            next_id: 1,
            last_at: None,
            day: None,
            day_zone: chrono_tz::UTC,
            last_24h: VecDeque::new(),
        }
    }

    /// The same monitor with its daily records cut at `tz`'s midnights.
    pub fn with_day_zone(mut self, tz: chrono_tz::Tz) -> Self {
        self.day_zone = tz;
        self
    }

    /// Alarms raised now, with whether each is acknowledged.
    pub fn active_alarms(&self) -> Vec<(AlarmKind, bool)> {
        AlarmKind::ALL
            .into_iter()
            .zip(self.rules.iter())
            .filter_map(|(k, r)| r.raised.map(|ack| (k, ack)))
            .collect()
    }

    /// Acknowledges a raised alarm; `actor` and `comment` are required (they are audited).
    pub fn acknowledge(
        &mut self,
        alarm: AlarmKind,
        actor: &str,
        comment: &str,
    ) -> Result<(), AckError> {
        if actor.trim().is_empty() || comment.trim().is_empty() {
            return Err(AckError::Incomplete);
        }
        let state = &mut self.rules[alarm as usize];
        match state.raised {
            None => Err(AckError::NotRaised(alarm.code())),
            Some(true) => Err(AckError::AlreadyAcknowledged(alarm.code())),
            Some(false) => {
                state.raised = Some(true);
                Ok(())
            }
        }
    }

    /// Raises an equipment alarm that no reading shows (the relay's own trip), latched until
    /// acknowledged; None if it is already raised.
    pub fn equipment_alarm(
        &mut self,
        alarm: AlarmKind,
        at: DateTime<Utc>,
        detail: String,
    ) -> Option<MonitorEvent> {
        let state = &mut self.rules[alarm as usize];
        if state.raised.is_some() {
            return None;
        }
        state.raised = Some(false);
        Some(MonitorEvent::AlarmRaised {
            alarm,
            at,
            since: at,
            value: None,
            detail: Some(detail),
        })
    }

    /// Feeds one observation; returns what happened, in order.
    pub fn observe(&mut self, o: &Observation) -> Vec<MonitorEvent> {
        let mut out = Vec::new();
        let weight = match self.last_at {
            Some(prev) if o.at > prev => minutes(o.at - prev),
            Some(_) => 0.0,
            None => self.cfg.record_period.as_secs_f64() / 60.0,
        };
        let max_gap = MAX_GAP.as_secs_f64() / 60.0;
        let (counted, lost) = (weight.min(max_gap), (weight - max_gap).max(0.0));
        self.last_at = Some(o.at);

        self.roll_day(o.at, &mut out);
        let (lo, hi) = (self.cfg.range_min.0, self.cfg.range_max.0);
        if let Some(day) = self.day.as_mut() {
            day.unknown += lost;
            match o.buffered {
                Some(v) => {
                    day.min = Some(day.min.map_or(v, |m| m.min(v)));
                    day.max = Some(day.max.map_or(v, |m| m.max(v)));
                    day.sum += v;
                    day.n += 1;
                    day.mkt.add(v);
                    if o.doubt.is_some() {
                        day.uncertain += counted;
                    } else if v < lo {
                        day.below += counted;
                    } else if v > hi {
                        day.above += counted;
                    } else {
                        day.in_range += counted;
                    }
                }
                None if o.doubt.is_some() => day.uncertain += counted,
                None => day.unknown += counted,
            }
        }
        if let Some(v) = o.buffered {
            self.last_24h.push_back((o.at, v));
        }
        while self
            .last_24h
            .front()
            .is_some_and(|(t, _)| o.at - *t > chrono::Duration::hours(24))
        {
            self.last_24h.pop_front();
        }

        self.track_excursion(o, &mut out);
        self.evaluate_alarms(o, counted, &mut out);
        out
    }

    /// Ends the run: closes the current day and reports an excursion still open.
    pub fn finish(&mut self) -> (Option<DaySummary>, Option<Excursion>) {
        let day = self.day.take().map(|d| d.summary());
        let open = self.open.as_ref().map(|e| self.excursion(e, None));
        (day, open)
    }

    fn roll_day(&mut self, at: DateTime<Utc>, out: &mut Vec<MonitorEvent>) {
        let date = at.with_timezone(&self.day_zone).date_naive();
        match &self.day {
            Some(d) if d.date == date => {}
            Some(d) => {
                out.push(MonitorEvent::DayClosed(d.summary()));
                self.day = Some(Day::new(date));
            }
            None => self.day = Some(Day::new(date)),
        }
    }

    fn excursion(&self, e: &OpenExcursion, end: Option<DateTime<Utc>>) -> Excursion {
        let until = end.unwrap_or(e.last);
        Excursion {
            id: e.id,
            start: e.start,
            end,
            minutes: minutes(until - e.start),
            min: e.min,
            max: e.max,
            mkt: e.mkt.value().unwrap_or(e.max),
            mkt_24h: super::mkt::mean_kinetic_temperature(self.last_24h.iter().map(|(_, v)| *v))
                .unwrap_or(e.max),
        }
    }

    fn track_excursion(&mut self, o: &Observation, out: &mut Vec<MonitorEvent>) {
        let Some(v) = o.buffered else { return };
        let outside = v < self.cfg.range_min.0 || v > self.cfg.range_max.0;
        match self.open.as_mut() {
            None if outside => {
                let id = self.next_id;
                self.next_id += 1;
                let mut mkt = MktAccumulator::default();
                mkt.add(v);
                self.open = Some(OpenExcursion {
                    id,
                    start: o.at,
                    min: v,
                    max: v,
                    mkt,
                    in_range_run: 0,
                    first_in_range: None,
                    last: o.at,
                });
                out.push(MonitorEvent::ExcursionOpened {
                    id,
                    at: o.at,
                    value: v,
                });
            }
            None => {}
            Some(e) => {
                e.last = o.at;
                e.min = e.min.min(v);
                e.max = e.max.max(v);
                e.mkt.add(v);
                if outside {
                    e.in_range_run = 0;
                    e.first_in_range = None;
                } else {
                    e.in_range_run += 1;
                    e.first_in_range.get_or_insert(o.at);
                    if e.in_range_run >= self.cfg.excursion_close_after {
                        let end = e.first_in_range;
                        if let Some(e) = self.open.take() {
                            out.push(MonitorEvent::ExcursionClosed(self.excursion(&e, end)));
                        }
                    }
                }
            }
        }
    }

    fn evaluate_alarms(&mut self, o: &Observation, weight: f64, out: &mut Vec<MonitorEvent>) {
        let a = &self.cfg.alarms;
        let excursion_open = self.open.is_some();
        let conditions: [(Option<bool>, Duration, Semantics); 11] = [
            (
                o.buffered.map(|v| v <= a.freeze.threshold.0),
                a.freeze.delay,
                a.freeze.semantics,
            ),
            (
                o.buffered.map(|v| v > a.heat.threshold.0),
                a.heat.delay,
                a.heat.semantics,
            ),
            (Some(excursion_open), a.excursion.delay, Semantics::Single),
            (o.door_open, a.door_open.delay, Semantics::Single),
            (
                Some(!o.any_valid),
                a.no_valid_probe.delay,
                Semantics::Single,
            ),
            (o.mains.map(|m| !m), a.mains_lost.delay, Semantics::Single),
            (
                o.mains.map(|m| !m),
                a.power_lost_long.delay,
                Semantics::Single,
            ),
            (
                Some(o.doubt.is_some()),
                a.probe_disagreement.delay,
                Semantics::Single,
            ),
            // Raised by `equipment_alarm`, never by a reading; cleared once acknowledged.
            (Some(false), Duration::ZERO, Semantics::Single),
            (Some(false), Duration::ZERO, Semantics::Single),
            (Some(false), Duration::ZERO, Semantics::Single),
        ];
        for (kind, (cond, delay, semantics)) in AlarmKind::ALL.into_iter().zip(conditions) {
            // An unknown condition (rejected reading, unknown line) leaves the rule as it is.
            let Some(cond) = cond else { continue };
            let state = &mut self.rules[kind as usize];
            let delay_min = delay.as_secs_f64() / 60.0;
            let (fire, since, clear) = match semantics {
                Semantics::Single => {
                    if cond {
                        let since = *state.since.get_or_insert(o.at);
                        (minutes(o.at - since) >= delay_min - 1e-9, since, false)
                    } else {
                        state.since = None;
                        (false, o.at, true)
                    }
                }
                Semantics::Cumulative => {
                    if cond {
                        state.window.push_back((o.at, weight));
                    }
                    while state
                        .window
                        .front()
                        .is_some_and(|(t, _)| o.at - *t >= chrono::Duration::hours(24))
                    {
                        state.window.pop_front();
                    }
                    let total: f64 = state.window.iter().map(|(_, w)| w).sum();
                    let since = state.window.front().map_or(o.at, |(t, _)| *t);
                    (
                        cond && total >= delay_min - 1e-9,
                        since,
                        !cond && total < delay_min,
                    )
                }
            };
            match state.raised {
                None if fire => {
                    state.raised = Some(false);
                    out.push(MonitorEvent::AlarmRaised {
                        alarm: kind,
                        at: o.at,
                        since,
                        value: o.buffered,
                        detail: match kind {
                            AlarmKind::ProbeDisagreement => o.doubt.map(|d| d.control().into()),
                            _ => None,
                        },
                    });
                }
                Some(acknowledged) if clear && (acknowledged || !kind.latched()) => {
                    state.raised = None;
                    out.push(MonitorEvent::AlarmCleared {
                        alarm: kind,
                        at: o.at,
                        acknowledged,
                    });
                }
                _ => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::coldchain::config::Semantics;

    fn t(min: i64) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-03-02T00:00:00Z")
            .unwrap()
            .with_timezone(&Utc)
            + chrono::Duration::minutes(min)
    }

    fn obs(min: i64, v: f64) -> Observation {
        Observation {
            at: t(min),
            buffered: Some(v),
            any_valid: true,
            doubt: None,
            door_open: Some(false),
            mains: Some(true),
        }
    }

    /// Feeds one reading a minute from `from` for `n` minutes; returns the alarms raised.
    fn feed(
        m: &mut Monitor,
        from: i64,
        n: i64,
        f: impl Fn(i64) -> Observation,
    ) -> Vec<(AlarmKind, i64)> {
        let mut raised = Vec::new();
        for i in from..from + n {
            for e in m.observe(&f(i)) {
                if let MonitorEvent::AlarmRaised { alarm, at, .. } = e {
                    raised.push((alarm, (at - t(0)).num_minutes()));
                }
            }
        }
        raised
    }

    fn raised_kinds(r: &[(AlarmKind, i64)]) -> Vec<AlarmKind> {
        r.iter().map(|(k, _)| *k).collect()
    }

    fn doubted(i: i64, v: Option<f64>) -> Observation {
        Observation {
            buffered: v,
            doubt: Some(Doubt::Undecided),
            ..obs(i, 5.0)
        }
    }

    #[test]
    fn daily_records_may_follow_the_pharmacists_local_midnight() {
        let days = |m: &mut Monitor| {
            let mut closed = Vec::new();
            for i in 0..(3 * 1440) {
                for e in m.observe(&obs(i, 5.0)) {
                    if let MonitorEvent::DayClosed(d) = e {
                        closed.push((d.date.to_string(), d.minutes_in_range.round() as i64));
                    }
                }
            }
            closed
        };
        let utc = days(&mut Monitor::new(ColdChainConfig::default()));
        let berlin = days(
            &mut Monitor::new(ColdChainConfig::default()).with_day_zone(chrono_tz::Europe::Berlin),
        );
        // UTC days are whole; Berlin's first day ends at 23:00 UTC, an hour before UTC's.
        assert_eq!(utc[1].1, 1440, "{utc:?}");
        assert_eq!(berlin[0].1 + 60, utc[0].1, "{berlin:?} {utc:?}");
        assert_eq!(berlin[1].1, 1440, "{berlin:?}");
    }

    #[test]
    fn two_probes_that_disagree_raise_a_latched_alarm_that_says_what_control_does() {
        let mut m = Monitor::new(ColdChainConfig::default());
        feed(&mut m, 0, 10, |i| obs(i, 5.0));
        let mut raised = Vec::new();
        for i in 10..26 {
            raised.extend(m.observe(&doubted(i, None)));
        }
        let detail = raised.iter().find_map(|e| match e {
            MonitorEvent::AlarmRaised {
                alarm: AlarmKind::ProbeDisagreement,
                at,
                detail,
                ..
            } => Some(((*at - t(0)).num_minutes(), detail.clone())),
            _ => None,
        });
        let (at, detail) = detail.expect("raised");
        assert_eq!(at, 25, "15 min after the doubt began");
        assert!(detail.unwrap().contains("colder probe caps cooling"));
        // The probes agree again: the alarm stays until a person acknowledges it.
        let events: Vec<_> = (26..60).flat_map(|i| m.observe(&obs(i, 5.0))).collect();
        assert!(!events
            .iter()
            .any(|e| matches!(e, MonitorEvent::AlarmCleared { .. })));
        assert_eq!(
            m.active_alarms(),
            vec![(AlarmKind::ProbeDisagreement, false)]
        );
        m.acknowledge(
            AlarmKind::ProbeDisagreement,
            "tech-2",
            "replaced the air probe",
        )
        .unwrap();
        let events = m.observe(&obs(60, 5.0));
        assert!(events.iter().any(|e| matches!(
            e,
            MonitorEvent::AlarmCleared {
                alarm: AlarmKind::ProbeDisagreement,
                acknowledged: true,
                ..
            }
        )));
    }

    #[test]
    fn a_compressor_trip_is_a_latched_alarm_until_acknowledged() {
        let mut m = Monitor::new(ColdChainConfig::default());
        feed(&mut m, 0, 10, |i| obs(i, 5.0));
        let raised = m.equipment_alarm(AlarmKind::CompressorTrip, t(10), "tripped".into());
        assert!(matches!(
            raised,
            Some(MonitorEvent::AlarmRaised {
                alarm: AlarmKind::CompressorTrip,
                ..
            })
        ));
        assert_eq!(
            m.equipment_alarm(AlarmKind::CompressorTrip, t(11), "again".into()),
            None,
            "once per episode"
        );
        let events: Vec<_> = (11..30).flat_map(|i| m.observe(&obs(i, 5.0))).collect();
        assert!(events.is_empty(), "{events:?}");
        m.acknowledge(AlarmKind::CompressorTrip, "tech-2", "relay checked")
            .unwrap();
        let events = m.observe(&obs(30, 5.0));
        assert!(matches!(
            events.as_slice(),
            [MonitorEvent::AlarmCleared {
                alarm: AlarmKind::CompressorTrip,
                acknowledged: true,
                ..
            }]
        ));
    }

    #[test]
    fn readings_taken_while_the_probes_disagree_are_uncertain_never_in_range() {
        let mut m = Monitor::new(ColdChainConfig::default());
        for i in 0..60 {
            m.observe(&doubted(i, if i % 2 == 0 { Some(5.0) } else { None }));
        }
        let (day, _) = m.finish();
        let day = day.unwrap();
        assert_eq!(day.minutes_in_range, 0.0);
        assert_eq!(day.minutes_unknown, 0.0);
        assert_eq!(day.minutes_uncertain, 60.0);
    }

    #[test]
    fn freeze_alarm_one_minute_short_does_not_fire() {
        let mut m = Monitor::new(ColdChainConfig::default());
        feed(&mut m, 0, 10, |i| obs(i, 5.0));
        // Frozen readings from minute 10 to minute 69: 59 minutes of condition.
        let r = feed(&mut m, 10, 60, |i| obs(i, -0.5));
        assert!(!raised_kinds(&r).contains(&AlarmKind::Freeze), "{r:?}");
    }

    #[test]
    fn freeze_alarm_fires_at_sixty_minutes_continuous() {
        let mut m = Monitor::new(ColdChainConfig::default());
        feed(&mut m, 0, 10, |i| obs(i, 5.0));
        let r = feed(&mut m, 10, 61, |i| obs(i, -0.5));
        assert!(r.contains(&(AlarmKind::Freeze, 70)), "{r:?}");
    }

    #[test]
    fn freeze_alarm_needs_the_threshold_reached() {
        let mut m = Monitor::new(ColdChainConfig::default());
        let r = feed(&mut m, 0, 200, |i| obs(i, -0.49));
        assert!(!raised_kinds(&r).contains(&AlarmKind::Freeze));
    }

    #[test]
    fn heat_alarm_fires_at_six_hundred_minutes_continuous_and_not_at_599() {
        let mut m = Monitor::new(ColdChainConfig::default());
        let r = feed(&mut m, 0, 600, |i| obs(i, 8.1));
        assert!(!raised_kinds(&r).contains(&AlarmKind::Heat));
        let r = feed(&mut m, 600, 1, |i| obs(i, 8.1));
        assert_eq!(raised_kinds(&r), vec![AlarmKind::Heat]);
    }

    #[test]
    fn heat_alarm_single_event_restarts_after_an_in_range_reading() {
        let mut m = Monitor::new(ColdChainConfig::default());
        feed(&mut m, 0, 500, |i| obs(i, 8.1));
        feed(&mut m, 500, 1, |i| obs(i, 7.9));
        let r = feed(&mut m, 501, 500, |i| obs(i, 8.1));
        assert!(!raised_kinds(&r).contains(&AlarmKind::Heat), "{r:?}");
    }

    #[test]
    fn cumulative_heat_alarm_adds_minutes_over_24h() {
        let mut cfg = ColdChainConfig::default();
        cfg.alarms.heat.semantics = Semantics::Cumulative;
        let mut m = Monitor::new(cfg);
        // Stretches of 10 minutes above 8 °C with 10 in range between them: minutes 0–1188
        // hold 599 warm minutes, never more than 10 in a row.
        let pattern = |i: i64| obs(i, if (i / 10) % 2 == 0 { 8.5 } else { 6.0 });
        let r = feed(&mut m, 0, 1189, pattern);
        assert!(!raised_kinds(&r).contains(&AlarmKind::Heat), "{r:?}");
        // The 600th warm minute fires it.
        let r = feed(&mut m, 1189, 1, |i| obs(i, 8.5));
        assert_eq!(raised_kinds(&r), vec![AlarmKind::Heat]);
    }

    #[test]
    fn excursion_alarm_fires_at_fifteen_minutes_not_fourteen() {
        let mut m = Monitor::new(ColdChainConfig::default());
        let r = feed(&mut m, 0, 15, |i| obs(i, 8.5));
        assert!(r.is_empty(), "{r:?}");
        let r = feed(&mut m, 15, 1, |i| obs(i, 8.5));
        assert_eq!(r, vec![(AlarmKind::Excursion, 15)]);
    }

    #[test]
    fn door_open_alarm_fires_after_five_minutes() {
        let mut m = Monitor::new(ColdChainConfig::default());
        let door = |i: i64| Observation {
            door_open: Some(true),
            ..obs(i, 5.0)
        };
        assert!(feed(&mut m, 0, 5, door).is_empty());
        assert_eq!(feed(&mut m, 5, 1, door), vec![(AlarmKind::DoorOpen, 5)]);
    }

    #[test]
    fn no_valid_probe_alarm_fires_after_ten_minutes() {
        let mut m = Monitor::new(ColdChainConfig::default());
        let none = |i: i64| Observation {
            buffered: None,
            any_valid: false,
            doubt: None,
            ..obs(i, 0.0)
        };
        assert!(feed(&mut m, 0, 10, none).is_empty());
        assert_eq!(
            feed(&mut m, 10, 1, none),
            vec![(AlarmKind::NoValidProbe, 10)]
        );
    }

    #[test]
    fn mains_lost_fires_at_once_and_power_lost_long_after_a_day() {
        let mut m = Monitor::new(ColdChainConfig::default());
        let cut = |i: i64| Observation {
            mains: Some(false),
            ..obs(i, 5.0)
        };
        assert_eq!(feed(&mut m, 0, 1, cut), vec![(AlarmKind::MainsLost, 0)]);
        assert!(feed(&mut m, 1, 1439, cut).is_empty());
        assert_eq!(
            feed(&mut m, 1440, 1, cut),
            vec![(AlarmKind::PowerLostLong, 1440)]
        );
    }

    #[test]
    fn one_alarm_per_episode_not_a_storm() {
        let mut m = Monitor::new(ColdChainConfig::default());
        let r = feed(&mut m, 0, 2000, |i| obs(i, 9.0));
        assert_eq!(
            raised_kinds(&r),
            vec![AlarmKind::Excursion, AlarmKind::Heat]
        );
    }

    #[test]
    fn rejected_readings_are_never_excursions() {
        let mut m = Monitor::new(ColdChainConfig::default());
        let mut events = Vec::new();
        for i in 0..30 {
            events.extend(m.observe(&Observation {
                buffered: None,
                any_valid: true,
                doubt: None,
                ..obs(i, 0.0)
            }));
        }
        assert!(events.is_empty(), "{events:?}");
        let (day, open) = m.finish();
        assert!(open.is_none());
        assert_eq!(day.unwrap().minutes_unknown, 30.0);
    }

    #[test]
    fn excursion_closes_after_three_in_range_readings_with_its_figures() {
        let mut m = Monitor::new(ColdChainConfig::default());
        feed(&mut m, 0, 5, |i| obs(i, 5.0));
        let temps = [8.5, 9.5, 7.0, 9.0, 7.5, 7.0, 6.0];
        let mut closed = None;
        for (k, v) in temps.iter().enumerate() {
            for e in m.observe(&obs(5 + k as i64, *v)) {
                if let MonitorEvent::ExcursionClosed(x) = e {
                    closed = Some(x);
                }
            }
        }
        let x = closed.expect("closed");
        assert_eq!(x.start, t(5));
        assert_eq!(x.end, Some(t(9)));
        assert_eq!(x.minutes, 4.0);
        assert_eq!((x.min, x.max), (6.0, 9.5));
        assert!(x.mkt > 7.0 && x.mkt < 9.5);
    }

    #[test]
    fn acknowledgement_needs_a_raised_alarm_an_actor_and_a_comment() {
        let mut m = Monitor::new(ColdChainConfig::default());
        assert_eq!(
            m.acknowledge(AlarmKind::DoorOpen, "nurse-1", "closed it"),
            Err(AckError::NotRaised("DOOR_OPEN"))
        );
        let door = |i: i64| Observation {
            door_open: Some(true),
            ..obs(i, 5.0)
        };
        feed(&mut m, 0, 6, door);
        assert_eq!(
            m.acknowledge(AlarmKind::DoorOpen, "", "x"),
            Err(AckError::Incomplete)
        );
        assert_eq!(
            m.acknowledge(AlarmKind::DoorOpen, "nurse-1", "closing it"),
            Ok(())
        );
        assert_eq!(m.active_alarms(), vec![(AlarmKind::DoorOpen, true)]);
        let closed = m.observe(&obs(6, 5.0));
        assert!(closed.contains(&MonitorEvent::AlarmCleared {
            alarm: AlarmKind::DoorOpen,
            at: t(6),
            acknowledged: true
        }));
    }

    #[test]
    fn days_close_at_utc_midnight_with_minutes_in_and_out_of_range() {
        let mut m = Monitor::new(ColdChainConfig::default());
        let mut days = Vec::new();
        for i in 0..1441 {
            let v = if i < 60 { 9.0 } else { 5.0 };
            for e in m.observe(&obs(i, v)) {
                if let MonitorEvent::DayClosed(d) = e {
                    days.push(d);
                }
            }
        }
        assert_eq!(days.len(), 1);
        let d = &days[0];
        assert_eq!(d.minutes_above, 60.0);
        assert_eq!(d.minutes_in_range, 1380.0);
        assert_eq!((d.min, d.max), (Some(5.0), Some(9.0)));
    }
}
