//! Schedule files: one TOML file per patient, written by caregivers.
//!
//! ```toml
//! [patient]
//! id = "p-0042"                 # a pseudonym, never a name
//! timezone = "Europe/Berlin"
//! quiet_hours = "22:00-07:00"   # optional: routine reminders light up without sounding
//!
//! [[medication]]
//! name = "Metoprolol"
//! strength = "25 mg"
//! slot = 0
//! units = 1
//! times = ["08:00", "20:00"]    # or: every = "8h" with first = "2026-03-02T06:00";
//!                               #     every_other_day = true (with times); cron = "0 8 * * Mon";
//!                               #     prn = { min_interval = "4h", max_per_24h = 4 }
//! max_daily_units = 2
//! [[medication.hold]]
//! vital = "heart_rate"
//! below = 55
//! max_age = "2h"
//! ```
//!
//! Parsing is strict (unknown keys are errors) and every problem names the file, the line and the
//! field, because the person reading it is a caregiver, not a programmer.

use super::when::Recurrence;
use crate::config::{line_of, parse_str, ConfigError, Findings, Validate};
use chrono::{DateTime, Duration as CDuration, NaiveDate, NaiveDateTime, NaiveTime, Utc};
use chrono_tz::Tz;
use serde::Deserialize;
use std::path::Path;
use std::time::Duration;
use toml::Spanned;

/// Accepts a TOML date (`2026-03-02`) or a quoted one (`"2026-03-02"`).
fn date<'de, D: serde::Deserializer<'de>>(d: D) -> Result<NaiveDate, D::Error> {
    let v = toml::Value::deserialize(d)?;
    let text = match &v {
        toml::Value::String(s) => s.clone(),
        toml::Value::Datetime(dt) => dt.to_string(),
        other => {
            return Err(serde::de::Error::custom(format!(
                "expected a date like 2026-03-02, found {other}"
            )))
        }
    };
    NaiveDate::parse_from_str(&text, "%Y-%m-%d")
        .map_err(|_| serde::de::Error::custom(format!("{text:?} is not a date like 2026-03-02")))
}

fn opt_date<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<NaiveDate>, D::Error> {
    date(d).map(Some)
}

/// `[patient]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Patient {
    /// Pseudonym; appears in records and payloads, never a name.
    pub id: Spanned<String>,
    /// IANA zone in which the schedule is evaluated.
    pub timezone: Spanned<String>,
    /// Local span (`"22:00-07:00"`) when routine reminders do not sound.
    #[serde(default)]
    pub quiet_hours: Option<Spanned<String>>,
}

/// As-needed dosing limits.
#[derive(Clone, Debug, Deserialize, serde::Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Prn {
    /// Shortest time between two doses.
    #[serde(with = "humantime_serde")]
    pub min_interval: Duration,
    /// Most doses in any rolling 24 h.
    pub max_per_24h: u32,
}

/// Vital signs a hold can watch.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Vital {
    /// Beats per minute.
    HeartRate,
    /// mmHg.
    SystolicBp,
    /// mmHg.
    DiastolicBp,
    /// Percent.
    Spo2,
    /// °C.
    BodyTemperature,
    /// mg/dL.
    Glucose,
}

/// A clinician-set hold parameter.
#[derive(Clone, Debug, Deserialize, serde::Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Hold {
    /// The vital watched.
    pub vital: Vital,
    /// Hold when the reading is below this.
    pub below: Option<f64>,
    /// Hold when the reading is above this.
    pub above: Option<f64>,
    /// A reading older than this does not count (a new one is asked for).
    #[serde(with = "humantime_serde")]
    pub max_age: Duration,
}

/// A taper segment: a different number of units between two dates.
#[derive(Clone, Debug, Deserialize, serde::Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Taper {
    /// First day (inclusive).
    #[serde(deserialize_with = "date")]
    pub from: NaiveDate,
    /// Last day (inclusive).
    #[serde(deserialize_with = "date")]
    pub until: NaiveDate,
    /// Units per dose in the segment.
    pub units: u32,
}

/// What happens to a dose that is not taken on time.
#[derive(Clone, Copy, Debug, Deserialize, serde::Serialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum MissedPolicy {
    /// A late dose may still be taken until half the interval to the next dose has passed (and
    /// never after the late window).
    #[default]
    HalfInterval,
    /// A late dose may be taken until the late window closes.
    Window,
}

/// One `[[medication]]`.
#[derive(Clone, Debug, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct Medication {
    /// Name as on the label.
    pub name: String,
    /// Strength as on the label.
    #[serde(default)]
    pub strength: String,
    /// Carousel slot.
    pub slot: Spanned<u8>,
    /// Units per dose.
    pub units: u32,
    /// Wall-clock times ("HH:MM").
    #[serde(default)]
    pub times: Option<Vec<String>>,
    /// Days of the week for `times` ("mon".."sun"); all days when absent.
    #[serde(default)]
    pub days: Option<Vec<String>>,
    /// With `times`: only every other day, counted from `start`.
    #[serde(default)]
    pub every_other_day: bool,
    /// Fixed interval, with `first`.
    #[serde(default, with = "humantime_serde")]
    pub every: Option<Duration>,
    /// First dose of an interval schedule (local time, "YYYY-MM-DDTHH:MM").
    #[serde(default)]
    pub first: Option<String>,
    /// Raw cron expression (minute hour day-of-month month day-of-week, names for days).
    #[serde(default)]
    pub cron: Option<String>,
    /// As-needed limits.
    #[serde(default)]
    pub prn: Option<Prn>,
    /// First day of the course.
    #[serde(default, deserialize_with = "opt_date")]
    pub start: Option<NaiveDate>,
    /// Last day of the course.
    #[serde(default, deserialize_with = "opt_date")]
    pub end: Option<NaiveDate>,
    /// Availability before the scheduled time.
    #[serde(default, with = "humantime_serde")]
    pub early: Option<Duration>,
    /// Availability after the scheduled time.
    #[serde(default, with = "humantime_serde")]
    pub late: Option<Duration>,
    /// Time-critical: ±30 min.
    #[serde(default)]
    pub time_critical: bool,
    /// Most units in one calendar day (patient's zone).
    pub max_daily_units: Option<u32>,
    /// Missed-dose policy.
    #[serde(default)]
    pub missed_policy: MissedPolicy,
    /// Weekly high-alert medication (e.g. methotrexate): never twice within 6 days.
    #[serde(default)]
    pub high_alert_weekly: bool,
    /// Holds on vitals.
    #[serde(default, rename = "hold")]
    pub holds: Vec<Hold>,
    /// Taper segments.
    #[serde(default, rename = "taper")]
    pub tapers: Vec<Taper>,
    /// The shortest time two doses of this medication may be apart (three quarters of the
    /// smallest gap between its occurrences), worked out when the schedule is parsed; None for
    /// as-needed medications, whose `prn.min_interval` rules instead.
    #[serde(skip)]
    pub spacing: Option<Duration>,
}

/// A whole schedule file.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleFile {
    /// The patient.
    pub patient: Patient,
    /// Medications.
    #[serde(rename = "medication")]
    pub medications: Vec<Spanned<Medication>>,
}

/// Default availability before a dose.
pub const DEFAULT_EARLY: Duration = Duration::from_secs(30 * 60);
/// Default availability after a dose.
pub const DEFAULT_LATE: Duration = Duration::from_secs(2 * 3600);
/// Window of a time-critical medication, each side.
pub const CRITICAL_WINDOW: Duration = Duration::from_secs(30 * 60);
/// The words of a slot clash between two files.
pub const SLOT_CLASH: &str = "is also used by";
/// Shortest time between two doses of a weekly high-alert medication.
pub const WEEKLY_GUARD: Duration = Duration::from_secs(6 * 86_400);

impl Medication {
    /// Compiles the friendly forms into one recurrence, or None for PRN. `Err(field, message)`.
    pub fn recurrence(&self, tz: Tz) -> Result<Option<Recurrence>, (&'static str, String)> {
        let forms = [
            self.times.is_some(),
            self.every.is_some(),
            self.cron.is_some(),
            self.prn.is_some(),
        ]
        .iter()
        .filter(|b| **b)
        .count();
        if forms != 1 {
            return Err((
                "times",
                "give exactly one of `times`, `every` (with `first`), `cron` or `prn`".into(),
            ));
        }
        if self.days.is_some() && self.times.is_none() {
            return Err(("days", "`days` goes with `times`".into()));
        }
        if self.every_other_day && self.times.is_none() {
            return Err((
                "every_other_day",
                "`every_other_day` goes with `times`".into(),
            ));
        }
        if let Some(times) = &self.times {
            if times.is_empty() {
                return Err(("times", "list at least one time".into()));
            }
            let mut parsed = Vec::new();
            for t in times {
                let nt = NaiveTime::parse_from_str(t, "%H:%M").map_err(|_| {
                    (
                        "times",
                        format!("{t:?} is not a time like \"08:00\" (24-hour HH:MM)"),
                    )
                })?;
                use chrono::Timelike;
                parsed.push((nt.hour(), nt.minute()));
            }
            let dow = match &self.days {
                None => "*".to_string(),
                Some(days) => {
                    if days.is_empty() {
                        return Err((
                            "days",
                            "list at least one day, or leave `days` out for every day".into(),
                        ));
                    }
                    let mut names = Vec::new();
                    for d in days {
                        // "sun", "Sun", "Sunday", "SUNDAY": however a caregiver writes it.
                        let Ok(day) = d.trim().parse::<chrono::Weekday>() else {
                            return Err((
                                "days",
                                format!("{d:?} is not a day (mon, tue, wed, thu, fri, sat, sun, or the full names)"),
                            ));
                        };
                        names.push(day.to_string());
                    }
                    names.join(",")
                }
            };
            let mut seen = std::collections::BTreeSet::new();
            if let Some(t) = parsed.iter().find(|t| !seen.insert(**t)) {
                return Err((
                    "times",
                    format!("{:02}:{:02} is listed twice: one dose per time", t.0, t.1),
                ));
            }
            // One cron expression per distinct minute keeps it exact: "0 M H * * DOW".
            let exprs: Vec<String> = parsed
                .iter()
                .map(|(h, m)| format!("0 {m} {h} * * {dow}"))
                .collect();
            let every_other = if self.every_other_day {
                Some(self.start.ok_or((
                    "every_other_day",
                    "`every_other_day` needs a `start` date to count from".to_string(),
                ))?)
            } else {
                None
            };
            if exprs.len() == 1 {
                return Recurrence::from_cron_with_seconds(&exprs[0], every_other)
                    .map(Some)
                    .map_err(|e| ("times", e));
            }
            // Several times: minutes and hours as lists only when they pair up; otherwise use a
            // multi-recurrence through `Multi`.
            return Ok(Some(Recurrence::Multi(
                exprs
                    .iter()
                    .map(|e| {
                        Recurrence::from_cron_with_seconds(e, every_other).map_err(|m| ("times", m))
                    })
                    .collect::<Result<_, _>>()?,
            )));
        }
        if let Some(every) = self.every {
            let first = self.first.as_deref().ok_or((
                "first",
                "`every` needs `first`, the first dose as local \"YYYY-MM-DDTHH:MM\"".to_string(),
            ))?;
            let naive = NaiveDateTime::parse_from_str(first, "%Y-%m-%dT%H:%M").map_err(|_| {
                (
                    "first",
                    format!("{first:?} is not a local time like \"2026-03-02T06:00\""),
                )
            })?;
            let anchor = super::when::resolve_local(tz, naive)
                .ok_or(("first", format!("{first:?} does not exist in {tz}")))?;
            if every < Duration::from_secs(3600) || every > Duration::from_secs(7 * 86_400) {
                return Err(("every", "must be between 1h and 7d".into()));
            }
            return Ok(Some(Recurrence::Interval {
                anchor,
                every: CDuration::from_std(every).map_err(|e| ("every", e.to_string()))?,
            }));
        }
        if let Some(expr) = &self.cron {
            let rec = Recurrence::from_cron(expr, None).map_err(|e| ("cron", e))?;
            if rec.minutes_of_day().is_some_and(|m| m.is_empty()) {
                return Err(("cron", format!("{expr:?} never fires")));
            }
            return Ok(Some(rec));
        }
        Ok(None)
    }

    /// The availability window before and after a dose (before clamping against neighbours).
    pub fn window(&self) -> (Duration, Duration) {
        if self.time_critical {
            return (CRITICAL_WINDOW, CRITICAL_WINDOW);
        }
        (
            self.early.unwrap_or(DEFAULT_EARLY),
            self.late.unwrap_or(DEFAULT_LATE),
        )
    }

    /// Units per dose on `day` (tapers override `units`).
    pub fn units_on(&self, day: NaiveDate) -> u32 {
        self.tapers
            .iter()
            .find(|t| t.from <= day && day <= t.until)
            .map_or(self.units, |t| t.units)
    }

    /// Whether the weekly guard applies: the file says so, or the name is on the built-in
    /// high-alert list (a guard no file can remove).
    pub fn weekly_guard(&self) -> bool {
        self.high_alert_weekly || super::identity::is_high_alert_weekly(&self.name)
    }

    /// Whether the course runs on `day`.
    pub fn active_on(&self, day: NaiveDate) -> bool {
        self.start.is_none_or(|s| day >= s) && self.end.is_none_or(|e| day <= e)
    }
}

/// A parsed and validated schedule, ready for the engine.
#[derive(Clone, Debug)]
pub struct Schedule {
    /// Patient pseudonym.
    pub patient: String,
    /// Patient's zone.
    pub tz: Tz,
    /// Medications with their compiled recurrences.
    pub medications: Vec<(Medication, Option<Recurrence>)>,
    /// Line of each medication's `slot` key, for errors that span files.
    pub slot_lines: Vec<usize>,
    /// When routine reminders do not sound (local time).
    pub quiet: Option<super::quiet::QuietHours>,
    /// Where it was read from, for errors found after parsing (the board's slots).
    pub file: std::path::PathBuf,
}

/// The shipped example schedules, embedded so `medbox sim` needs no files.
pub const DEFAULT_SCHEDULES: [(&str, &str); 4] = [
    (
        "schedules/p-0042-twice-daily-and-beta-blocker.toml",
        include_str!("../../schedules/p-0042-twice-daily-and-beta-blocker.toml"),
    ),
    (
        "schedules/p-0107-weekly-methotrexate.toml",
        include_str!("../../schedules/p-0107-weekly-methotrexate.toml"),
    ),
    (
        "schedules/p-0311-prn-painkiller.toml",
        include_str!("../../schedules/p-0311-prn-painkiller.toml"),
    ),
    (
        "schedules/p-0520-prednisolone-taper.toml",
        include_str!("../../schedules/p-0520-prednisolone-taper.toml"),
    ),
];

/// Three quarters of the smallest gap between consecutive occurrences (over the first 2 000
/// from a reference Monday, enough to see any weekly or monthly pattern and a DST change).
/// Any fraction below one keeps each dose's window reachable after a dose given at the end of
/// the previous one; three quarters keeps a moved time from giving a second dose the same day.
fn spacing(rec: &Recurrence, tz: Tz) -> Option<Duration> {
    let from = match rec {
        Recurrence::Interval { anchor, .. } => *anchor - CDuration::seconds(1),
        _ => reference_start(),
    };
    let occ = rec.first_n(tz, from, 2_000, CDuration::days(400));
    let gap = occ.windows(2).map(|w| w[1] - w[0]).min()?;
    (gap * 3 / 4).to_std().ok()
}

fn reference_start() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-01-05T00:00:00Z")
        .map(|t| t.with_timezone(&Utc))
        .unwrap_or_default()
}

/// Whether a zone name is a place (`Area/Location`) or plain UTC. Names like `EST`, `CET`,
/// `EST5EDT` or `Etc/GMT+5` parse, but they are offsets or rules, not where the patient lives:
/// a schedule in `EST` doses an hour off all summer.
fn is_region_zone(name: &str) -> bool {
    matches!(name, "UTC" | "Etc/UTC")
        || (name.contains('/') && !name.starts_with("Etc/") && !name.starts_with("SystemV/"))
}

/// Slots available to schedules when no board profile is given.
pub const DEFAULT_SLOTS: u8 = 8;

/// The line of `field`'s own key inside a `[[medication]]` table (`table` is the table's text,
/// starting on line `first`), or the table's first line when the key is not written there.
/// Errors point at the key a caregiver must change, not at the table's header.
fn field_line(table: &str, first: usize, field: &str) -> usize {
    let key = field.split(['.', '[']).next().unwrap_or(field);
    table
        .lines()
        .position(|l| {
            l.trim_start()
                .strip_prefix(key)
                .is_some_and(|rest| rest.trim_start().starts_with('='))
        })
        .map_or(first, |i| first + i)
}

/// Checks one medication. `table` is its `[[medication]]` table's text and `first` that
/// table's first line.
fn validate_medication(
    m: &Medication,
    tz: Tz,
    slots: u8,
    (table, first): (&str, usize),
    key: &str,
    out: &mut Findings,
) {
    let k = |f: &str| format!("{key}.{f}");
    let at = |f: &str| field_line(table, first, f);
    if let Some(problem) = super::identity::name_problem(&m.name) {
        out.at(at("name"), k("name"), problem);
    }
    let rec = match m.recurrence(tz) {
        Ok(r) => r,
        Err((field, msg)) => {
            out.at(at(field), k(field), msg);
            return;
        }
    };
    if *m.slot.get_ref() >= slots {
        out.at(
            at("slot"),
            k("slot"),
            format!(
                "slot {} does not exist (the carousel has slots 0–{})",
                m.slot.get_ref(),
                slots.saturating_sub(1)
            ),
        );
    }
    if m.units == 0 || m.units > 10 {
        out.at(at("units"), k("units"), "must be 1–10 units per dose");
    }
    if let Some(late) = m.late {
        if !(Duration::from_secs(1800)..=Duration::from_secs(86_400)).contains(&late) {
            out.at(at("late"), k("late"), "must be between 30m and 24h");
        }
    }
    if let Some(early) = m.early {
        if early > Duration::from_secs(4 * 3600) {
            out.at(at("early"), k("early"), "must be 4h or less");
        }
    }
    if m.time_critical && (m.early.is_some() || m.late.is_some()) {
        out.at(
            at("time_critical"),
            k("time_critical"),
            "a time-critical medication has a fixed ±30 min window: remove `early`/`late`",
        );
    }
    if let (Some(s), Some(e)) = (m.start, m.end) {
        if e < s {
            out.at(at("end"), k("end"), "is before `start`");
        }
    }
    for (i, h) in m.holds.iter().enumerate() {
        if h.below.is_none() && h.above.is_none() {
            out.at(
                first,
                format!("{key}.hold[{i}]"),
                "needs `below` or `above`",
            );
        }
        if h.max_age.is_zero() {
            out.at(
                first,
                format!("{key}.hold[{i}].max_age"),
                "must be above zero",
            );
        }
    }
    validate_tapers(m, key, at("start"), out);
    match (&rec, &m.prn) {
        (None, Some(prn)) => {
            if prn.max_per_24h == 0 {
                out.at(at("prn"), k("prn.max_per_24h"), "must be at least 1");
            }
            if prn.min_interval.is_zero() {
                out.at(at("prn"), k("prn.min_interval"), "must be above zero");
            } else {
                // Doses at least `min_interval` apart: how many fit in a rolling 24 h.
                let fit = 86_400f64 / prn.min_interval.as_secs_f64();
                let fit = fit.ceil() as u32;
                if prn.max_per_24h > fit {
                    out.at(
                        at("prn"),
                        k("prn.max_per_24h"),
                        format!(
                            "{} doses cannot be given in 24 h at least {} apart (at most {fit}): lower one of them",
                            prn.max_per_24h,
                            humantime::format_duration(prn.min_interval)
                        ),
                    );
                }
            }
            if let Some(max) = m.max_daily_units {
                if max < m.units {
                    out.at(
                        at("max_daily_units"),
                        k("max_daily_units"),
                        format!("{max} is below one dose of {} units", m.units),
                    );
                }
            }
            if m.weekly_guard() {
                out.at(
                    at("prn"),
                    k("high_alert_weekly"),
                    "a weekly high-alert medication cannot be as-needed",
                );
            }
        }
        (Some(r), _) => validate_recurrence(m, r, tz, key, &at, out),
        (None, None) => {}
    }
}

/// The shortest time between two scheduled doses, as for `every`.
const MIN_DOSE_GAP_MINUTES: u32 = 60;

/// Checks a scheduled medication's recurrence over its whole lifetime: spacing and the daily
/// maximum from the expression itself (no horizon to fall off), the weekly guard and "never
/// fires" over a bounded walk of at most a few hundred occurrences.
fn validate_recurrence(
    m: &Medication,
    r: &Recurrence,
    tz: Tz,
    key: &str,
    at: &dyn Fn(&str) -> usize,
    out: &mut Findings,
) {
    let k = |f: &str| format!("{key}.{f}");
    let form = if m.cron.is_some() { "cron" } else { "times" };
    if let Some(gap) = r.shortest_gap_of_day() {
        if gap < MIN_DOSE_GAP_MINUTES {
            out.at(
                at(form),
                k(form),
                format!("doses only {gap} min apart: scheduled doses must be at least 1h apart (as for `every`)"),
            );
            return;
        }
    }
    let from = match r {
        Recurrence::Interval { anchor, .. } => *anchor - CDuration::seconds(1),
        _ => m
            .start
            .and_then(|d| d.and_hms_opt(0, 0, 0))
            .and_then(|n| super::when::resolve_local(tz, n))
            .unwrap_or_else(reference_start),
    };
    let occ = r.first_n(tz, from, 60, CDuration::days(400));
    if occ.is_empty() {
        out.at(at(form), key.to_string(), "the schedule never fires");
        return;
    }
    if m.weekly_guard()
        && occ
            .windows(2)
            .any(|w| (w[1] - w[0]).to_std().unwrap_or_default() < WEEKLY_GUARD)
    {
        let why = if m.high_alert_weekly {
            ""
        } else {
            " (it is on the built-in list of weekly high-alert medications)"
        };
        out.at(
            if m.high_alert_weekly {
                at("high_alert_weekly")
            } else {
                at(form)
            },
            k("high_alert_weekly"),
            format!("a weekly high-alert medication needs a schedule at most once a week (e.g. times = [\"08:00\"], days = [\"mon\"]){why}"),
        );
    }
    if let Some(max) = m.max_daily_units {
        // The most any day of the course can get, whenever that day is.
        let most_units = m
            .tapers
            .iter()
            .map(|t| t.units)
            .chain((!tapers_cover_course(m)).then_some(m.units))
            .max()
            .unwrap_or(m.units);
        let per_day = match r {
            // An interval's phase decides how many doses a day holds: count a year of them
            // (both daylight-saving changes), at most 9 000 occurrences.
            Recurrence::Interval { .. } => {
                let mut days: std::collections::HashMap<NaiveDate, u32> = Default::default();
                for t in r.first_n(tz, from, 9_000, CDuration::days(366)) {
                    *days.entry(t.with_timezone(&tz).date_naive()).or_default() += 1;
                }
                days.values().copied().max().unwrap_or(0)
            }
            _ => r.max_per_day(),
        };
        let units = per_day.saturating_mul(most_units);
        if units > max {
            out.at(
                at("max_daily_units"),
                k("max_daily_units"),
                format!("{max} is below what the schedule itself gives ({units} units on a day with {per_day} dose(s) of {most_units})"),
            );
        }
    }
}

/// Whether the taper segments cover every day of the course, so `units` is never used.
fn tapers_cover_course(m: &Medication) -> bool {
    !m.tapers.is_empty() && m.start.is_some() && m.end.is_some()
}

/// A taper must say what every day of the course gets: it needs `start` and `end`, its
/// segments must run from `start` to `end` without gaps or overlaps, and no segment gives
/// 0 units (to stop, end the course). A missing day would otherwise silently fall back to the
/// base dose.
fn validate_tapers(m: &Medication, key: &str, line: usize, out: &mut Findings) {
    if m.tapers.is_empty() {
        return;
    }
    let mut tapers = m.tapers.clone();
    tapers.sort_by_key(|t| t.from);
    let (Some(start), Some(end)) = (m.start, m.end) else {
        out.at(
            line,
            format!("{key}.taper"),
            "a taper needs `start` and `end`: the course's first and last day",
        );
        return;
    };
    let mut expect = start;
    for (i, t) in tapers.iter().enumerate() {
        let here = format!("{key}.taper[{i}]");
        if t.until < t.from {
            out.at(line, here.clone(), "`until` is before `from`");
        }
        if t.units == 0 {
            out.at(
                line,
                format!("{here}.units"),
                "0 units: end the course with `end` instead of a 0-unit segment",
            );
        } else if t.units > 10 {
            out.at(line, format!("{here}.units"), "must be 1–10");
        }
        if t.from < expect {
            out.at(
                line,
                here.clone(),
                format!("starts {} but the days before {expect} are already covered (overlap, or before `start`)", t.from),
            );
        } else if t.from > expect {
            out.at(
                line,
                here.clone(),
                format!("the days {expect} to {} have no segment: every day from `start` to `end` needs one", t.from.pred_opt().unwrap_or(t.from)),
            );
        }
        expect = expect.max(t.until.succ_opt().unwrap_or(t.until));
    }
    if expect <= end {
        out.at(
            line,
            format!("{key}.taper"),
            format!("the days {expect} to {end} have no segment: every day from `start` to `end` needs one"),
        );
    } else if expect > end.succ_opt().unwrap_or(end) {
        out.at(
            line,
            format!("{key}.taper"),
            format!("a segment runs past `end` ({end})"),
        );
    }
}

impl Validate for ScheduleFile {
    fn validate(&self, src: &str, out: &mut Findings) {
        let tz_line = line_of(src, self.patient.timezone.span().start);
        let zone = self.patient.timezone.get_ref();
        let tz: Tz = match zone.parse() {
            Ok(tz) if !is_region_zone(zone) => {
                out.at(
                    tz_line,
                    "patient.timezone",
                    format!("{zone:?} is a fixed offset or an old abbreviation that ignores the patient's daylight saving; name the place (e.g. \"America/New_York\", or \"UTC\")"),
                );
                tz
            }
            Ok(tz) => tz,
            Err(_) => {
                out.at(
                    tz_line,
                    "patient.timezone",
                    format!(
                        "{:?} is not an IANA time zone (e.g. \"Europe/Berlin\")",
                        self.patient.timezone.get_ref()
                    ),
                );
                return;
            }
        };
        if let Some(q) = &self.patient.quiet_hours {
            if let Err(e) = super::quiet::QuietHours::parse(q.get_ref()) {
                out.at(line_of(src, q.span().start), "patient.quiet_hours", e);
            }
        }
        let id = self.patient.id.get_ref();
        if id.is_empty()
            || id.len() > 64
            || !id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            out.at(
                line_of(src, self.patient.id.span().start),
                "patient.id",
                "must be a pseudonym of letters, digits, '-' or '_' (never the patient's name)",
            );
        }
        let mut slots: std::collections::BTreeMap<u8, String> = Default::default();
        let mut names = std::collections::BTreeMap::new();
        for m in &self.medications {
            let line = line_of(src, m.span().start);
            let table = src.get(m.span()).unwrap_or_default();
            let med = m.get_ref();
            let key = format!("medication {:?}", med.name);
            let name_line = field_line(table, line, "name");
            if let Some(other) =
                names.insert(super::identity::normalise(&med.name), med.name.clone())
            {
                out.at(
                    name_line,
                    format!("{key}.name"),
                    format!("is listed twice (as {other:?} too; letter case and spacing do not make another medication)"),
                );
            }
            if let Some(other) = slots.insert(*med.slot.get_ref(), med.name.clone()) {
                out.at(
                    line_of(src, med.slot.span().start),
                    format!("{key}.slot"),
                    format!("slot {} is already used by {other:?}", med.slot.get_ref()),
                );
            }
            validate_medication(med, tz, DEFAULT_SLOTS, (table, line), &key, out);
        }
    }
}

impl Schedule {
    /// Parses and validates schedule text (named `file` in errors).
    pub fn parse(src: &str, file: &Path) -> Result<Self, Vec<ConfigError>> {
        let f: ScheduleFile = parse_str(src, file)?;
        let tz: Tz = f
            .patient
            .timezone
            .get_ref()
            .parse()
            .map_err(|_| Vec::new())?;
        let slot_lines = f
            .medications
            .iter()
            .map(|m| line_of(src, m.get_ref().slot.span().start))
            .collect();
        let medications = f
            .medications
            .into_iter()
            .map(|m| {
                let mut m = m.into_inner();
                let r = m.recurrence(tz).ok().flatten();
                m.spacing = r.as_ref().and_then(|r| spacing(r, tz));
                (m, r)
            })
            .collect();
        let quiet = f
            .patient
            .quiet_hours
            .as_ref()
            .and_then(|q| super::quiet::QuietHours::parse(q.get_ref()).ok());
        Ok(Self {
            patient: f.patient.id.into_inner(),
            tz,
            medications,
            slot_lines,
            quiet,
            file: file.to_path_buf(),
        })
    }

    /// Reads and validates one file.
    pub fn load(file: &Path) -> Result<Self, Vec<ConfigError>> {
        let src = crate::config::read_source(file)?;
        Self::parse(&src, file)
    }

    /// Loads every `*.toml` in a directory (not its subdirectories) and checks that no slot is
    /// used by two files; returns the schedules and every error found.
    pub fn load_dir(dir: &Path) -> (Vec<(std::path::PathBuf, Schedule)>, Vec<ConfigError>) {
        let mut files: Vec<_> = match std::fs::read_dir(dir) {
            Ok(rd) => rd
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.is_file() && p.extension().is_some_and(|x| x == "toml"))
                .collect(),
            Err(source) => {
                return (
                    Vec::new(),
                    vec![ConfigError::Read {
                        file: dir.to_path_buf(),
                        source,
                    }],
                )
            }
        };
        files.sort();
        let mut ok = Vec::new();
        let mut errors = Vec::new();
        for f in files {
            match Self::load(&f) {
                Ok(s) => ok.push((f, s)),
                Err(e) => errors.extend(e),
            }
        }
        errors.extend(Self::slot_clashes(&ok));
        (ok, errors)
    }

    /// Slots used by two files: one carousel serves every schedule, so each slot holds one
    /// medication of one file.
    pub fn slot_clashes(loaded: &[(std::path::PathBuf, Schedule)]) -> Vec<ConfigError> {
        let mut errors = Vec::new();
        let mut used: std::collections::BTreeMap<u8, (String, std::path::PathBuf)> =
            Default::default();
        for (path, s) in loaded {
            for ((m, _), line) in s.medications.iter().zip(&s.slot_lines) {
                let slot = *m.slot.get_ref();
                match used.get(&slot) {
                    Some((other, other_file)) if other_file != path => errors.push(ConfigError::Invalid {
                        file: path.clone(),
                        line: *line,
                        key: format!("medication {:?}.slot", m.name),
                        message: format!(
                            "slot {slot} {SLOT_CLASH} {other:?} in {} (one carousel serves every schedule)",
                            other_file.display()
                        ),
                    }),
                    Some(_) => {}
                    None => {
                        used.insert(slot, (m.name.clone(), path.clone()));
                    }
                }
            }
        }
        errors
    }

    /// Medications on slots the board's carousel does not have (a schedule is parsed against
    /// the largest carousel, [`DEFAULT_SLOTS`]; the board it runs on may have fewer).
    pub fn slot_problems(&self, slots: u8) -> Vec<ConfigError> {
        self.medications
            .iter()
            .zip(&self.slot_lines)
            .filter(|((m, _), _)| *m.slot.get_ref() >= slots)
            .map(|((m, _), line)| ConfigError::Invalid {
                file: self.file.clone(),
                line: *line,
                key: format!("medication {:?}.slot", m.name),
                message: format!(
                    "slot {} does not exist on this board (its carousel has slots 0–{})",
                    m.slot.get_ref(),
                    slots.saturating_sub(1)
                ),
            })
            .collect()
    }

    /// The medication with this name (letter case and spacing do not matter).
    pub fn medication(&self, name: &str) -> Option<&(Medication, Option<Recurrence>)> {
        self.medications
            .iter()
            .find(|(m, _)| super::identity::same(&m.name, name))
    }
}
