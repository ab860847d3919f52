//! The dose engine: given the time, a medication, what has happened and the latest vitals, may a
//! dose be dispensed now — and if not, why (a stable reason code for every refusal).
//!
//! Pure: no clock, no hardware, no storage. Rules, in the order they are checked:
//! a clock that is not trusted locks the dispenser (`CLOCK_UNTRUSTED`); a scheduled dose only
//! inside its window (`TOO_EARLY`, `MISSED_LOCKED`); each occurrence at most once
//! (`ALREADY_DISPENSED`, `UNRECONCILED` for an uncertain dispense, `SKIPPED`); the course dates
//! (`NOT_ACTIVE`); the weekly high-alert guard (`WEEKLY_GUARD`); the daily maximum
//! (`DAILY_MAX`); PRN spacing and rolling 24 h count (`PRN_TOO_SOON`, `PRN_MAX_24H`); holds on
//! vitals (`HELD_VITALS`, `NEEDS_READING`, `LOW_QUALITY_READING`).

use super::schedule::{Medication, MissedPolicy, Vital, WEEKLY_GUARD};
use super::when::Recurrence;
use chrono::{DateTime, Duration, NaiveDate, Utc};
use chrono_tz::Tz;
use serde::{Deserialize, Serialize};

/// What became of a dose occurrence (or a PRN request).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Released and seen falling.
    Dispensed,
    /// Picked up or confirmed with the button.
    Taken,
    /// The window closed without a dispense.
    Missed,
    /// Held on a vital sign.
    Held,
    /// Skipped by a caregiver.
    Skipped,
    /// Nothing moved (slot empty, jam before motion): may be tried again.
    Failed,
    /// The motor turned but no drop was seen, or it jammed mid-way: a caregiver must reconcile it.
    Uncertain,
    /// Written, durably, before the motor moves; superseded by the outcome. Alone (the process
    /// died mid-dispense) it means uncertain: never retried automatically.
    Dispensing,
    /// A caregiver checked an uncertain (or interrupted) dispense: the patient had the dose. It
    /// supersedes the uncertain records before it, counts its units once and closes the dose.
    ConfirmedGiven,
    /// A caregiver checked an uncertain (or interrupted) dispense: nothing reached the patient.
    /// It supersedes the uncertain records before it, which stop counting; the dose may be
    /// dispensed again while its window is open, and is missed when it closes.
    ConfirmedNotGiven,
}

impl Outcome {
    /// Whether this record's units may have reached the patient and count towards limits.
    /// `Taken` does not: it always follows the `Dispensed` record of the same units, which
    /// already counts (counting both would refuse the next dose as over the daily maximum).
    pub fn counts(self) -> bool {
        matches!(
            self,
            Outcome::Dispensed | Outcome::Uncertain | Outcome::Dispensing | Outcome::ConfirmedGiven
        )
    }

    /// A caregiver's reconciliation of an uncertain dispense.
    pub fn is_confirmation(self) -> bool {
        matches!(self, Outcome::ConfirmedGiven | Outcome::ConfirmedNotGiven)
    }
}

/// The records that stand, in order (one patient's history):
/// - a `Dispensing` intent is dropped when the next record of its dose is its outcome (an intent
///   followed by nothing, or by another intent, is an interrupted dispense and stays);
/// - `Uncertain` records and interrupted intents are dropped once a caregiver's confirmation of
///   the same dose follows them.
pub fn effective(history: &[DoseRecord]) -> Vec<&DoseRecord> {
    effective_positions(history)
        .into_iter()
        .map(|i| &history[i])
        .collect()
}

/// [`effective`] as positions in `history`, for an index kept beside the records.
pub fn effective_positions(history: &[DoseRecord]) -> Vec<usize> {
    type Key = (String, Option<DateTime<Utc>>);
    let mut next: std::collections::HashMap<Key, Outcome> = std::collections::HashMap::new();
    let mut confirmed: std::collections::HashSet<Key> = std::collections::HashSet::new();
    let mut kept: Vec<usize> = Vec::with_capacity(history.len());
    for (i, r) in history.iter().enumerate().rev() {
        let key = (super::identity::normalise(&r.medication), r.occurrence);
        let superseded = match r.outcome {
            Outcome::Dispensing => {
                confirmed.contains(&key)
                    || next.get(&key).is_some_and(|o| *o != Outcome::Dispensing)
            }
            Outcome::Uncertain => confirmed.contains(&key),
            _ => false,
        };
        if !superseded {
            kept.push(i);
        }
        if r.outcome.is_confirmation() {
            confirmed.insert(key.clone());
        }
        next.insert(key, r.outcome);
    }
    kept.reverse();
    kept
}

/// One thing that happened to a medication.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DoseRecord {
    /// Medication name.
    pub medication: String,
    /// The scheduled instant (None for PRN).
    pub occurrence: Option<DateTime<Utc>>,
    /// When it happened.
    pub at: DateTime<Utc>,
    /// Units.
    pub units: u32,
    /// What happened.
    pub outcome: Outcome,
    /// The carousel slot it came from (the second key of a medication's identity, see
    /// [`super::identity`]); None in records written before slots were recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slot: Option<u8>,
    /// Where the record falls on the appliance's elapsed timeline ([`Now::elapsed`]); None in
    /// records written before it existed (their wall time stands in).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub elapsed: Option<DateTime<Utc>>,
}

/// When a decision is made, on two clocks.
///
/// The wall clock places windows and local dates, so schedules follow it. Elapsed-time rules
/// (dose spacing, PRN interval, rolling 24 h, the weekly guard) must not: a wall clock stepped
/// back (or a Pi without a real-time clock booting in the past, then corrected by NTP) would
/// make a dose look longer ago than it was. They use `elapsed`, a timeline the dispenser keeps:
/// within a run it advances with the monotonic clock, whatever the wall clock does; at start it
/// resumes from the later of the wall clock and the last record's elapsed time. It never makes
/// time between two records look longer than it really was.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Now {
    /// Wall-clock UTC.
    pub wall: DateTime<Utc>,
    /// The elapsed timeline.
    pub elapsed: DateTime<Utc>,
}

/// A wall clock this far off the monotonic clock, or this far behind the time floor at
/// start-up, is not trusted: dispensing locks until a person confirms it.
pub const CLOCK_TOLERANCE_S: i64 = 60;

/// Whether the dispenser may trust the wall clock when it starts: not when it reads more than
/// [`CLOCK_TOLERANCE_S`] behind the time floor (the last durable record: a Pi without a
/// real-time clock before NTP), and never when the clock was left untrusted (`locked`): a
/// restart does not lift a lock, only a person does. `Some(seconds behind the floor, 0 or
/// less)` when untrusted.
pub fn untrusted_at_start(
    wall: DateTime<Utc>,
    floor: Option<DateTime<Utc>>,
    locked: bool,
) -> Option<i64> {
    let behind = floor.map_or(0, |f| (wall - f).num_seconds()).min(0);
    (locked || behind < -CLOCK_TOLERANCE_S).then_some(behind)
}

/// A dose record with no slot or elapsed time yet (the dispenser adds both when it records
/// it).
pub fn record(
    medication: String,
    occurrence: Option<DateTime<Utc>>,
    at: DateTime<Utc>,
    units: u32,
    outcome: Outcome,
) -> DoseRecord {
    DoseRecord {
        medication,
        occurrence,
        at,
        units,
        outcome,
        slot: None,
        elapsed: None,
    }
}

/// The latest record that holds both clocks: (its wall time, its place on the elapsed
/// timeline), read together so a clock corrected in between cannot skew them.
pub type ElapsedAnchor = (DateTime<Utc>, DateTime<Utc>);

/// Where the elapsed timeline resumes at start-up, from `anchor`: the wall time and the
/// elapsed time of the latest record that holds both (read together, so a clock corrected in
/// between cannot skew them). The timeline advances by the wall-clock time since that record,
/// never by less than nothing: a clock behind it adds nothing, and a timeline that lagged the
/// wall clock keeps its lag (a gap then looks shorter than it was, never longer). With no
/// record, the wall clock. A clock left untrusted (`wall_trusted` false) says nothing about
/// the time that passed: the timeline resumes where it stopped.
pub fn resume_elapsed(
    wall: DateTime<Utc>,
    anchor: Option<ElapsedAnchor>,
    wall_trusted: bool,
) -> DateTime<Utc> {
    match anchor {
        None => wall,
        Some((_, elapsed)) if !wall_trusted => elapsed,
        Some((anchor_wall, elapsed)) => elapsed + (wall - anchor_wall).max(Duration::zero()),
    }
}

impl From<DateTime<Utc>> for Now {
    /// Both clocks at one instant: for tools and tests with no monotonic clock.
    fn from(t: DateTime<Utc>) -> Self {
        Now {
            wall: t,
            elapsed: t,
        }
    }
}

impl DoseRecord {
    /// The record's place on the elapsed timeline.
    pub fn elapsed_at(&self) -> DateTime<Utc> {
        self.elapsed.unwrap_or(self.at)
    }

    /// Whether this record is one of `med`'s: the same normalised name, or the same slot.
    pub fn is_of(&self, med: &Medication) -> bool {
        super::identity::same(&self.medication, &med.name)
            || self.slot.is_some_and(|s| s == *med.slot.get_ref())
    }
}

/// The instant elapsed-time rules measure from: the elapsed timeline, or the latest record's
/// place on it if that is later (a record is never in the future), so no clock step can make a
/// dose look longer ago than it was.
pub fn elapsed_now(now: Now, history: &[&DoseRecord]) -> DateTime<Utc> {
    history
        .iter()
        .map(|r| r.elapsed_at())
        .fold(now.elapsed, DateTime::max)
}

/// How far back, on either timeline, the rules deciding `med` may look: its spacing or PRN
/// interval, the weekly guard, the rolling 24 h, and three days for the windows around now
/// (an occurrence up to 24 h before now, records from 4 h before it, counted on its local
/// date in any zone). A record whose every instant is older cannot change a decision about
/// `med`, whatever its name was then: what decides is when, not what it was called.
pub fn reach(med: &Medication) -> Duration {
    let longest = [
        med.spacing,
        med.prn.as_ref().map(|p| p.min_interval),
        med.weekly_guard().then_some(WEEKLY_GUARD),
    ]
    .into_iter()
    .flatten()
    .filter_map(|d| Duration::from_std(d).ok())
    .max()
    .unwrap_or_default();
    longest.max(Duration::days(1)) + Duration::days(3)
}

/// The earliest instant a decision at `now` about any of `meds` may read: [`reach`] back from
/// the earlier of the two timelines.
pub fn needed_from<'a>(now: Now, meds: impl IntoIterator<Item = &'a Medication>) -> DateTime<Utc> {
    let reach = meds
        .into_iter()
        .map(reach)
        .max()
        .unwrap_or_else(|| Duration::days(4));
    now.wall.min(now.elapsed) - reach
}

/// How long ago a record was for elapsed-time rules: the shorter of what the two timelines say.
/// The elapsed timeline (`elapsed`, from [`elapsed_now`]) cannot be shrunk by a wall-clock step;
/// the wall clock catches a timeline that resumed too far ahead (a restart on a wall clock that
/// was wrong then, corrected since). So a gap never looks longer than either clock says.
pub fn ago(now: Now, elapsed: DateTime<Utc>, r: &DoseRecord) -> Duration {
    (elapsed - r.elapsed_at()).min(now.wall - r.at)
}

/// Reading quality, as the source reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Quality {
    /// Usable.
    Good,
    /// Flagged by the device (motion, poor contact): never releases a held dose.
    Low,
}

/// A vital-sign reading.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VitalReading {
    /// Which vital.
    pub vital: Vital,
    /// Value in the vital's unit.
    pub value: f64,
    /// When measured.
    pub at: DateTime<Utc>,
    /// Quality flag.
    pub quality: Quality,
    /// Where it came from (a paired monitor, a gateway, a person at the device).
    #[serde(default)]
    pub source: String,
    /// Whose reading it is. Holds only ever look at their own patient's readings; the
    /// dispenser fills it in when the cabinet doses one patient only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patient: Option<String>,
}

/// Stable reason codes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Reason {
    /// The window has not opened.
    TooEarly,
    /// The window closed; the dose is missed and locked.
    MissedLocked,
    /// This occurrence was already dispensed.
    AlreadyDispensed,
    /// An uncertain dispense awaits a caregiver's reconciliation.
    Unreconciled,
    /// A caregiver skipped this occurrence.
    Skipped,
    /// Outside the course's start/end dates.
    NotActive,
    /// A weekly high-alert medication was dispensed within 6 days.
    WeeklyGuard,
    /// The dose would exceed `max_daily_units`.
    DailyMax,
    /// PRN: too soon after the last dose.
    PrnTooSoon,
    /// PRN: the rolling 24 h maximum is reached.
    #[serde(rename = "PRN_MAX_24H")]
    PrnMax24h,
    /// PRN requested for a scheduled medication, or scheduled for a PRN one.
    NotPrn,
    /// An override was asked for without a reason or by a role that may not override.
    OverrideNotAuthorised,
    /// A hold parameter is met by a recent reading.
    HeldVitals,
    /// A hold needs a reading and there is no recent one.
    NeedsReading,
    /// The latest reading is flagged low quality.
    LowQualityReading,
    /// The wall clock is not trusted.
    ClockUntrusted,
    /// The schedule in force removed this medication's weekly guard (a rename, a flag, a
    /// file edited behind the appliance's back) and no second person has confirmed it yet.
    ConfirmationRequired,
}

impl Reason {
    /// Every reason, for documentation checks.
    pub const ALL: [Reason; 17] = [
        Reason::TooEarly,
        Reason::MissedLocked,
        Reason::AlreadyDispensed,
        Reason::Unreconciled,
        Reason::Skipped,
        Reason::NotActive,
        Reason::WeeklyGuard,
        Reason::DailyMax,
        Reason::PrnTooSoon,
        Reason::PrnMax24h,
        Reason::NotPrn,
        Reason::OverrideNotAuthorised,
        Reason::HeldVitals,
        Reason::NeedsReading,
        Reason::LowQualityReading,
        Reason::ClockUntrusted,
        Reason::ConfirmationRequired,
    ];

    /// The stable code.
    pub fn code(self) -> String {
        serde_json::to_value(self)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default()
    }
}

/// The engine's answer.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "decision", rename_all = "snake_case")]
pub enum Decision {
    /// Dispense now.
    Dispense {
        /// The occurrence (None for PRN).
        occurrence: Option<DateTime<Utc>>,
        /// Units to release.
        units: u32,
    },
    /// Do not dispense.
    Refuse {
        /// Why.
        reason: Reason,
        /// Details for people.
        detail: String,
    },
}

fn refuse(reason: Reason, detail: impl Into<String>) -> Decision {
    Decision::Refuse {
        reason,
        detail: detail.into(),
    }
}

/// One occurrence's availability window, clamped so a medication's windows never overlap.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Window {
    /// Scheduled instant.
    pub occurrence: DateTime<Utc>,
    /// First instant it may be dispensed.
    pub opens: DateTime<Utc>,
    /// First instant it may no longer be dispensed.
    pub closes: DateTime<Utc>,
}

/// Windows of the occurrences between `from` and `to` (neighbours outside are used to clamp).
pub fn windows(
    med: &Medication,
    rec: &Recurrence,
    tz: Tz,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Vec<Window> {
    let (early, late) = med.window();
    let early = Duration::from_std(early).unwrap_or_default();
    let late = Duration::from_std(late).unwrap_or_default();
    // Neighbours clamp the first and last windows: look two days either side, and further
    // (up to the weekly guard's reach) only where that found none.
    let near = Duration::days(2);
    let far = Duration::days(8);
    let mut occ = rec.between(tz, from - near, to + near);
    if occ.first().is_none_or(|f| *f > from - Duration::days(1)) {
        if let Some(p) = rec.between(tz, from - far, from - near).last() {
            occ.insert(0, *p);
        }
    }
    if occ.last().is_none_or(|l| *l < to + Duration::days(1)) {
        if let Some(n) = rec.between(tz, to + near, to + far).first() {
            occ.push(*n);
        }
    }
    let mut out = Vec::new();
    for (i, &o) in occ.iter().enumerate() {
        let prev = i.checked_sub(1).map(|j| occ[j]);
        let next = occ.get(i + 1).copied();
        let mut close = o + late;
        if let Some(n) = next {
            if med.missed_policy == MissedPolicy::HalfInterval {
                close = close.min(o + (n - o) / 2);
            }
            close = close.min(n - early);
        }
        let mut open = o - early;
        if let Some(p) = prev {
            // Mirror of the previous window's clamp, so the two never overlap.
            let mut p_close = p + late;
            if med.missed_policy == MissedPolicy::HalfInterval {
                p_close = p_close.min(p + (o - p) / 2);
            }
            open = open.max(p_close.min(o - early));
        }
        let open = open.min(o);
        let close = close.max(o + Duration::minutes(1));
        if close > from && open <= to {
            out.push(Window {
                occurrence: o,
                opens: open,
                closes: close,
            });
        }
    }
    out
}

/// A time in a refusal's detail: in the patient's zone with its abbreviation, as the caregiver
/// reading it (the record itself keeps UTC instants).
fn local(t: DateTime<Utc>, tz: Tz) -> String {
    t.with_timezone(&tz)
        .format("%a %Y-%m-%d %H:%M %Z")
        .to_string()
}

fn day_of(tz: Tz, t: DateTime<Utc>) -> NaiveDate {
    t.with_timezone(&tz).date_naive()
}

/// Units counted against `max_daily_units` on `day`: each record on its *occurrence's* local
/// date (a 23:00 dose given at 00:31 belongs to the evening before), PRN doses on the date given.
fn units_on_day(med: &Medication, tz: Tz, day: NaiveDate, history: &[&DoseRecord]) -> u32 {
    history
        .iter()
        .filter(|r| r.is_of(med) && r.outcome.counts())
        .filter(|r| day_of(tz, r.occurrence.unwrap_or(r.at)) == day)
        .map(|r| r.units)
        .sum()
}

/// The hold's limits in words: "below 55 bpm", "below 90 or above 160 mmHg".
fn hold_limits(h: &super::schedule::Hold) -> String {
    let unit = super::vitals::unit_for_people(h.vital);
    match (h.below, h.above) {
        (Some(b), Some(a)) => format!("outside the hold's {b}–{a} {unit}"),
        (Some(b), None) => format!("below the hold's {b} {unit}"),
        (None, Some(a)) => format!("above the hold's {a} {unit}"),
        (None, None) => "within a hold that names no limit".into(),
    }
}

fn check_holds(med: &Medication, now: DateTime<Utc>, vitals: &[VitalReading]) -> Option<Decision> {
    for h in &med.holds {
        let latest = vitals
            .iter()
            .filter(|v| v.vital == h.vital && v.at <= now)
            .max_by_key(|v| v.at);
        let max_age = Duration::from_std(h.max_age).unwrap_or_default();
        let Some(r) = latest.filter(|r| now - r.at <= max_age) else {
            return Some(refuse(
                Reason::NeedsReading,
                format!(
                    "a {} reading from the last {} is needed",
                    super::vitals::label(h.vital),
                    humantime::format_duration(h.max_age)
                ),
            ));
        };
        if r.quality == Quality::Low {
            return Some(refuse(
                Reason::LowQualityReading,
                format!(
                    "the latest {} reading ({} {}) is flagged low quality; take another",
                    super::vitals::label(h.vital),
                    r.value,
                    super::vitals::unit_for_people(h.vital)
                ),
            ));
        }
        if h.below.is_some_and(|b| r.value < b) || h.above.is_some_and(|a| r.value > a) {
            return Some(refuse(
                Reason::HeldVitals,
                format!(
                    "{} {} {} ({}) is {}",
                    super::vitals::label(h.vital),
                    r.value,
                    super::vitals::unit_for_people(h.vital),
                    match (now - r.at).num_minutes() {
                        0 => "just measured".to_string(),
                        m => format!("measured {m} min earlier"),
                    },
                    hold_limits(h)
                ),
            ));
        }
    }
    None
}

/// The weekly guard and the daily maximum. `day` is the local date the dose counts on (its
/// occurrence's, or today's for PRN).
fn check_limits(
    med: &Medication,
    tz: Tz,
    now: Now,
    day: NaiveDate,
    units: u32,
    history: &[&DoseRecord],
) -> Option<Decision> {
    let clocks = now;
    let now = elapsed_now(clocks, history);
    if med.weekly_guard() {
        let guard = Duration::from_std(WEEKLY_GUARD).unwrap_or_default();
        if let Some(last) = history
            .iter()
            .filter(|r| r.is_of(med) && r.outcome.counts() && ago(clocks, now, r) < guard)
            .max_by_key(|r| r.elapsed_at())
        {
            return Some(refuse(
                Reason::WeeklyGuard,
                format!(
                    "weekly high-alert medication last dispensed {}",
                    local(last.at, tz)
                ),
            ));
        }
    }
    if let Some(max) = med.max_daily_units {
        let given = units_on_day(med, tz, day, history);
        if given + units > max {
            return Some(refuse(
                Reason::DailyMax,
                format!(
                    "{given} of {max} units already counted on {day}; {units} more would exceed it"
                ),
            ));
        }
    }
    None
}

/// Once per window, whatever was edited: a dose of this medication (by name or slot) that
/// already counts inside the current window, or closer to now than the medication's spacing,
/// settles it. This is what keeps a moved time (08:00 given, moved to 09:00) or a renamed
/// medication from giving a second dose: the occurrence is new, the pills are not.
fn check_spacing(
    med: &Medication,
    tz: Tz,
    w: &Window,
    now: Now,
    history: &[&DoseRecord],
) -> Option<Decision> {
    let clocks = now;
    let now = elapsed_now(clocks, history);
    let spacing = med
        .spacing
        .and_then(|s| Duration::from_std(s).ok())
        .unwrap_or_default();
    let near = history.iter().filter(|r| {
        r.is_of(med)
            && r.outcome.counts()
            && r.occurrence != Some(w.occurrence)
            && ((w.opens <= r.at && r.at < w.closes) || ago(clocks, now, r) < spacing)
    });
    let last = near.max_by_key(|r| r.elapsed_at())?;
    let (reason, what) = match last.outcome {
        Outcome::Uncertain | Outcome::Dispensing => (
            Reason::Unreconciled,
            "an uncertain dispense awaiting reconciliation",
        ),
        _ => (Reason::AlreadyDispensed, "a dose"),
    };
    Some(refuse(
        reason,
        format!(
            "{what} of {} was given at {}, within this dose's window or less than {} before: it counts for this dose",
            med.name,
            local(last.at, tz),
            humantime::format_duration(spacing.to_std().unwrap_or_default())
        ),
    ))
}

/// The decision for a scheduled medication at `now`.
pub fn decide(
    med: &Medication,
    rec: &Recurrence,
    tz: Tz,
    now: impl Into<Now>,
    history: &[DoseRecord],
    vitals: &[VitalReading],
    clock_trusted: bool,
) -> Decision {
    decide_on(
        med,
        rec,
        tz,
        now,
        &effective(history),
        vitals,
        clock_trusted,
    )
}

/// [`decide`] on a history already reduced by [`effective`]: the planner reduces each
/// patient's history once per round instead of once per medication.
pub fn decide_on(
    med: &Medication,
    rec: &Recurrence,
    tz: Tz,
    now: impl Into<Now>,
    history: &[&DoseRecord],
    vitals: &[VitalReading],
    clock_trusted: bool,
) -> Decision {
    let clocks = now.into();
    let now = clocks.wall;
    if !clock_trusted {
        return refuse(
            Reason::ClockUntrusted,
            "the clock jumped and is not trusted yet; the dispenser stays locked",
        );
    }
    let ws = windows(
        med,
        rec,
        tz,
        now - Duration::days(2),
        now + Duration::days(2),
    );
    let Some(w) = ws.iter().find(|w| w.opens <= now && now < w.closes) else {
        let next = ws.iter().find(|w| w.opens > now);
        let last = ws.iter().rev().find(|w| w.closes <= now);
        return match (last, next) {
            (Some(l), _)
                if !history.iter().any(|r| {
                    r.is_of(med) && r.occurrence == Some(l.occurrence) && r.outcome.counts()
                }) && next.is_none_or(|n| now - l.closes < n.opens - now) =>
            {
                refuse(
                    Reason::MissedLocked,
                    format!(
                        "the dose of {} closed at {}: missed, not merged into the next",
                        local(l.occurrence, tz),
                        local(l.closes, tz)
                    ),
                )
            }
            (_, Some(n)) => refuse(
                Reason::TooEarly,
                format!(
                    "the next dose ({}) opens at {}",
                    local(n.occurrence, tz),
                    local(n.opens, tz)
                ),
            ),
            _ => refuse(
                Reason::TooEarly,
                "no dose is scheduled in the next two days",
            ),
        };
    };
    let day = day_of(tz, w.occurrence);
    if !med.active_on(day) {
        return refuse(
            Reason::NotActive,
            format!("the course does not run on {day}"),
        );
    }
    let mine: Vec<&&DoseRecord> = history
        .iter()
        .filter(|r| r.is_of(med) && r.occurrence == Some(w.occurrence))
        .collect();
    if let Some(r) = mine.iter().find(|r| {
        matches!(
            r.outcome,
            Outcome::Dispensed | Outcome::Taken | Outcome::ConfirmedGiven
        )
    }) {
        return refuse(
            Reason::AlreadyDispensed,
            format!(
                "the dose of {} was dispensed at {}",
                local(w.occurrence, tz),
                local(r.at, tz)
            ),
        );
    }
    if mine
        .iter()
        .any(|r| matches!(r.outcome, Outcome::Uncertain | Outcome::Dispensing))
    {
        return refuse(
            Reason::Unreconciled,
            "an uncertain or interrupted dispense of this dose awaits reconciliation; it is never retried automatically",
        );
    }
    if mine.iter().any(|r| r.outcome == Outcome::Skipped) {
        return refuse(Reason::Skipped, "a caregiver skipped this dose");
    }
    if mine.iter().any(|r| r.outcome == Outcome::Missed) {
        return refuse(Reason::MissedLocked, "this dose was recorded missed");
    }
    let units = med.units_on(day);
    if units == 0 {
        return refuse(
            Reason::NotActive,
            format!("the taper gives 0 units on {day}"),
        );
    }
    if let Some(d) = check_limits(med, tz, clocks, day, units, history) {
        return d;
    }
    if let Some(d) = check_spacing(med, tz, w, clocks, history) {
        return d;
    }
    if let Some(d) = check_holds(med, now, vitals) {
        return d;
    }
    Decision::Dispense {
        occurrence: Some(w.occurrence),
        units,
    }
}

/// Who asks for a PRN dose, and whether they override its limits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PrnRequest {
    /// Person's id.
    pub actor: String,
    /// Their role.
    pub role: Role,
    /// A reason, when overriding the spacing or 24 h limit.
    pub override_reason: Option<String>,
}

/// Roles that act on the dispenser.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// The patient at the device.
    Patient,
    /// A family or home caregiver.
    Caregiver,
    /// A nurse.
    Nurse,
    /// A prescribing clinician.
    Clinician,
    /// A pharmacist.
    Pharmacist,
    /// A paired monitor or gateway: may only record vital readings.
    Device,
}

impl Role {
    /// Roles that may override PRN spacing and the rolling 24 h limit.
    pub fn may_override_prn(self) -> bool {
        matches!(self, Role::Nurse | Role::Clinician)
    }
}

/// The decision for an as-needed request at `now`.
pub fn decide_prn(
    med: &Medication,
    tz: Tz,
    now: impl Into<Now>,
    history: &[DoseRecord],
    vitals: &[VitalReading],
    clock_trusted: bool,
    request: &PrnRequest,
) -> Decision {
    let clocks = now.into();
    let now = clocks.wall;
    let Some(prn) = &med.prn else {
        return refuse(
            Reason::NotPrn,
            format!("{} is scheduled, not as-needed", med.name),
        );
    };
    if !clock_trusted {
        return refuse(
            Reason::ClockUntrusted,
            "the clock jumped and is not trusted yet; the dispenser stays locked",
        );
    }
    let day = day_of(tz, now);
    if !med.active_on(day) {
        return refuse(
            Reason::NotActive,
            format!("the course does not run on {day}"),
        );
    }
    let overriding = match &request.override_reason {
        Some(reason) if !reason.trim().is_empty() && request.role.may_override_prn() => true,
        Some(_) => {
            return refuse(
                Reason::OverrideNotAuthorised,
                format!(
                    "a {:?} may not override PRN limits, and an override needs a reason",
                    request.role
                ),
            );
        }
        None => false,
    };
    let history = effective(history);
    // Every counted dose, also one recorded "after" a wall clock that was stepped back.
    let given: Vec<&DoseRecord> = history
        .iter()
        .copied()
        .filter(|r| r.is_of(med) && r.outcome.counts())
        .collect();
    let elapsed = elapsed_now(clocks, &history);
    if !overriding {
        let min = Duration::from_std(prn.min_interval).unwrap_or_default();
        if let Some(last) = given.iter().min_by_key(|r| ago(clocks, elapsed, r)) {
            let since = ago(clocks, elapsed, last);
            if since < min {
                return refuse(
                    Reason::PrnTooSoon,
                    format!(
                        "last dose at {}; the next may be given from {}",
                        local(last.at, tz),
                        local(clocks.wall + (min - since), tz)
                    ),
                );
            }
        }
        let in_24h = given
            .iter()
            .filter(|r| ago(clocks, elapsed, r) < Duration::hours(24))
            .count() as u32;
        if in_24h >= prn.max_per_24h {
            return refuse(
                Reason::PrnMax24h,
                format!(
                    "{in_24h} doses in the last 24 h (maximum {})",
                    prn.max_per_24h
                ),
            );
        }
    }
    let units = med.units_on(day);
    if let Some(d) = check_limits(med, tz, clocks, day, units, &history) {
        return d;
    }
    if let Some(d) = check_holds(med, now, vitals) {
        return d;
    }
    Decision::Dispense {
        occurrence: None,
        units,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dosing::schedule::Schedule;
    use proptest::prelude::*;
    use std::path::Path;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn schedule(meds: &str) -> Schedule {
        let src = format!("[patient]\nid = \"p-1\"\ntimezone = \"Europe/Berlin\"\n{meds}");
        Schedule::parse(&src, Path::new("t.toml")).unwrap_or_else(|e| panic!("{e:?}"))
    }

    const TWICE: &str = "[[medication]]\nname = \"A\"\nslot = 0\nunits = 1\ntimes = [\"08:00\", \"20:00\"]\nmax_daily_units = 2\n";

    fn run(s: &Schedule, now: &str, history: &[DoseRecord], vitals: &[VitalReading]) -> Decision {
        let (m, r) = &s.medications[0];
        decide(
            m,
            r.as_ref().unwrap(),
            s.tz,
            utc(now),
            history,
            vitals,
            true,
        )
    }

    fn reason(d: &Decision) -> Option<Reason> {
        match d {
            Decision::Refuse { reason, .. } => Some(*reason),
            Decision::Dispense { .. } => None,
        }
    }

    fn dispensed(at: &str, occ: &str) -> DoseRecord {
        DoseRecord {
            medication: "A".into(),
            occurrence: Some(utc(occ)),
            at: utc(at),
            units: 1,
            outcome: Outcome::Dispensed,
            slot: None,
            elapsed: None,
        }
    }

    // 08:00 Berlin in March (CET) is 07:00 UTC.
    #[test]
    fn window_opens_early_and_closes_late() {
        let s = schedule(TWICE);
        assert_eq!(
            reason(&run(&s, "2026-03-02T06:29:00Z", &[], &[])),
            Some(Reason::TooEarly)
        );
        assert_eq!(
            run(&s, "2026-03-02T06:30:00Z", &[], &[]),
            Decision::Dispense {
                occurrence: Some(utc("2026-03-02T07:00:00Z")),
                units: 1
            }
        );
        assert!(reason(&run(&s, "2026-03-02T08:59:00Z", &[], &[])).is_none());
        assert_eq!(
            reason(&run(&s, "2026-03-02T09:00:00Z", &[], &[])),
            Some(Reason::MissedLocked)
        );
    }

    #[test]
    fn once_a_dose_occurrence_is_dispensed_at_most_once() {
        let s = schedule(TWICE);
        let h = [dispensed("2026-03-02T07:00:00Z", "2026-03-02T07:00:00Z")];
        assert_eq!(
            reason(&run(&s, "2026-03-02T07:05:00Z", &h, &[])),
            Some(Reason::AlreadyDispensed)
        );
    }

    #[test]
    fn no_doubling_a_missed_dose_is_not_merged_into_the_next() {
        let s = schedule(TWICE);
        // Morning missed; the evening dose gives one unit, not two.
        assert_eq!(
            run(&s, "2026-03-02T19:00:00Z", &[], &[]),
            Decision::Dispense {
                occurrence: Some(utc("2026-03-02T19:00:00Z")),
                units: 1
            }
        );
    }

    #[test]
    fn missed_dose_policy_half_interval_caps_the_late_window() {
        let s = schedule("[[medication]]\nname = \"A\"\nslot = 0\nunits = 1\nevery = \"2h\"\nfirst = \"2026-03-02T08:00\"\n");
        // Every 2 h from 08:00 Berlin (07:00 UTC): half the interval caps the 2 h late window at
        // 1 h, so the dose closes at 08:00 UTC although `late` alone would allow 09:00.
        assert!(reason(&run(&s, "2026-03-02T07:59:00Z", &[], &[])).is_none());
        let d = run(&s, "2026-03-02T08:00:00Z", &[], &[]);
        assert_eq!(reason(&d), Some(Reason::MissedLocked), "{d:?}");
        // The next dose (09:00 Berlin) opens 30 min early.
        assert_eq!(
            reason(&run(&s, "2026-03-02T08:29:00Z", &[], &[])),
            Some(Reason::TooEarly)
        );
        assert!(reason(&run(&s, "2026-03-02T08:30:00Z", &[], &[])).is_none());
    }

    #[test]
    fn windows_of_one_medication_never_overlap() {
        let s = schedule("[[medication]]\nname = \"A\"\nslot = 0\nunits = 1\ntimes = [\"08:00\", \"09:00\"]\nlate = \"3h\"\nmissed_policy = \"window\"\n");
        let (m, r) = &s.medications[0];
        let ws = windows(
            m,
            r.as_ref().unwrap(),
            s.tz,
            utc("2026-03-01T00:00:00Z"),
            utc("2026-03-05T00:00:00Z"),
        );
        assert!(ws.windows(2).all(|p| p[0].closes <= p[1].opens), "{ws:?}");
    }

    #[test]
    fn daily_max_is_never_exceeded() {
        let s = schedule("[[medication]]\nname = \"A\"\nslot = 0\nunits = 1\ntimes = [\"08:00\", \"20:00\"]\nmax_daily_units = 2\n");
        let h = [
            DoseRecord {
                medication: "A".into(),
                occurrence: None,
                at: utc("2026-03-02T06:00:00Z"),
                units: 1,
                outcome: Outcome::Uncertain,
                slot: None,
                elapsed: None,
            },
            dispensed("2026-03-02T07:00:00Z", "2026-03-02T07:00:00Z"),
        ];
        assert_eq!(
            reason(&run(&s, "2026-03-02T19:00:00Z", &h, &[])),
            Some(Reason::DailyMax)
        );
    }

    #[test]
    fn uncertain_dispense_is_never_retried_automatically() {
        let s = schedule(TWICE);
        let h = [DoseRecord {
            outcome: Outcome::Uncertain,
            ..dispensed("2026-03-02T07:00:00Z", "2026-03-02T07:00:00Z")
        }];
        assert_eq!(
            reason(&run(&s, "2026-03-02T07:10:00Z", &h, &[])),
            Some(Reason::Unreconciled)
        );
    }

    fn with(outcome: Outcome, units: u32, at: &str) -> DoseRecord {
        DoseRecord {
            outcome,
            units,
            ..dispensed(at, "2026-03-02T07:00:00Z")
        }
    }

    #[test]
    fn uncertain_reconciled_as_given_counts_once_and_closes_the_dose() {
        let s = schedule(TWICE);
        let h = [
            with(Outcome::Dispensing, 1, "2026-03-02T07:00:00Z"),
            with(Outcome::Uncertain, 1, "2026-03-02T07:00:09Z"),
            with(Outcome::ConfirmedGiven, 1, "2026-03-02T07:00:09Z"),
        ];
        assert_eq!(
            reason(&run(&s, "2026-03-02T07:30:00Z", &h, &[])),
            Some(Reason::AlreadyDispensed)
        );
        // One unit that day, not two (the uncertain record no longer counts): the evening dose
        // stays within max_daily_units = 2.
        assert!(reason(&run(&s, "2026-03-02T19:00:00Z", &h, &[])).is_none());
    }

    #[test]
    fn uncertain_reconciled_as_not_given_frees_the_dose_within_its_window() {
        let s = schedule(TWICE);
        let h = [
            with(Outcome::Dispensing, 1, "2026-03-02T07:00:00Z"),
            with(Outcome::Uncertain, 1, "2026-03-02T07:00:09Z"),
            with(Outcome::ConfirmedNotGiven, 0, "2026-03-02T07:20:00Z"),
        ];
        assert_eq!(
            run(&s, "2026-03-02T07:30:00Z", &h, &[]),
            Decision::Dispense {
                occurrence: Some(utc("2026-03-02T07:00:00Z")),
                units: 1
            }
        );
        // Never outside the window, reconciled or not.
        assert_eq!(
            reason(&run(&s, "2026-03-02T09:00:00Z", &h, &[])),
            Some(Reason::MissedLocked)
        );
        // A second uncertain dispense after the reconciliation needs its own.
        let mut again = h.to_vec();
        again.push(with(Outcome::Uncertain, 0, "2026-03-02T07:30:09Z"));
        assert_eq!(
            reason(&run(&s, "2026-03-02T07:40:00Z", &again, &[])),
            Some(Reason::Unreconciled)
        );
    }

    #[test]
    fn an_interrupted_dispense_after_a_failed_attempt_is_still_never_retried() {
        // Failed before motion, tried again, and the process died mid-turn: the intent has no
        // outcome of its own, whatever came before it.
        let s = schedule(TWICE);
        let h = [
            with(Outcome::Dispensing, 1, "2026-03-02T06:30:00Z"),
            with(Outcome::Failed, 0, "2026-03-02T06:30:02Z"),
            with(Outcome::Dispensing, 1, "2026-03-02T06:40:00Z"),
        ];
        assert_eq!(
            reason(&run(&s, "2026-03-02T07:10:00Z", &h, &[])),
            Some(Reason::Unreconciled)
        );
    }

    #[test]
    fn an_interrupted_dispense_is_never_repeated_after_a_restart() {
        let s = schedule(TWICE);
        let intent = DoseRecord {
            outcome: Outcome::Dispensing,
            ..dispensed("2026-03-02T07:00:00Z", "2026-03-02T07:00:00Z")
        };
        assert_eq!(
            reason(&run(
                &s,
                "2026-03-02T07:10:00Z",
                std::slice::from_ref(&intent),
                &[]
            )),
            Some(Reason::Unreconciled)
        );
        // Intent then outcome: the outcome stands, and its units count once.
        let h = [
            intent,
            dispensed("2026-03-02T07:00:05Z", "2026-03-02T07:00:00Z"),
        ];
        assert_eq!(
            reason(&run(&s, "2026-03-02T07:10:00Z", &h, &[])),
            Some(Reason::AlreadyDispensed)
        );
        assert!(reason(&run(&s, "2026-03-02T19:00:00Z", &h, &[])).is_none());
    }

    #[test]
    fn daily_max_counts_a_dose_once_when_it_is_dispensed_then_taken() {
        let s = schedule(TWICE);
        let morning = dispensed("2026-03-02T07:00:00Z", "2026-03-02T07:00:00Z");
        let taken = DoseRecord {
            at: utc("2026-03-02T07:20:00Z"),
            outcome: Outcome::Taken,
            ..morning.clone()
        };
        assert!(reason(&run(&s, "2026-03-02T19:00:00Z", &[morning, taken], &[])).is_none());
    }

    #[test]
    fn failed_dispense_where_nothing_moved_may_be_tried_again() {
        let s = schedule(TWICE);
        let h = [DoseRecord {
            outcome: Outcome::Failed,
            ..dispensed("2026-03-02T07:00:00Z", "2026-03-02T07:00:00Z")
        }];
        assert!(reason(&run(&s, "2026-03-02T07:10:00Z", &h, &[])).is_none());
    }

    const BETA: &str = "[[medication]]\nname = \"A\"\nslot = 0\nunits = 1\ntimes = [\"08:00\"]\n[[medication.hold]]\nvital = \"heart_rate\"\nbelow = 55\nmax_age = \"2h\"\n";

    fn hr(v: f64, at: &str, q: Quality) -> VitalReading {
        VitalReading {
            source: "test".into(),
            vital: Vital::HeartRate,
            value: v,
            at: utc(at),
            quality: q,
            patient: Some("p-1".into()),
        }
    }

    #[test]
    fn held_vitals_a_low_heart_rate_holds_the_dose() {
        let s = schedule(BETA);
        let d = run(
            &s,
            "2026-03-02T07:00:00Z",
            &[],
            &[hr(52.0, "2026-03-02T06:45:00Z", Quality::Good)],
        );
        assert_eq!(reason(&d), Some(Reason::HeldVitals));
        let d = run(
            &s,
            "2026-03-02T07:00:00Z",
            &[],
            &[hr(62.0, "2026-03-02T06:45:00Z", Quality::Good)],
        );
        assert!(reason(&d).is_none());
    }

    #[test]
    fn a_hold_with_no_recent_reading_asks_for_one() {
        let s = schedule(BETA);
        assert_eq!(
            reason(&run(&s, "2026-03-02T07:00:00Z", &[], &[])),
            Some(Reason::NeedsReading)
        );
        let stale = [hr(70.0, "2026-03-02T04:59:00Z", Quality::Good)];
        assert_eq!(
            reason(&run(&s, "2026-03-02T07:00:00Z", &[], &stale)),
            Some(Reason::NeedsReading)
        );
    }

    #[test]
    fn a_low_quality_reading_never_releases_a_dose() {
        let s = schedule(BETA);
        let v = [hr(70.0, "2026-03-02T06:50:00Z", Quality::Low)];
        assert_eq!(
            reason(&run(&s, "2026-03-02T07:00:00Z", &[], &v)),
            Some(Reason::LowQualityReading)
        );
    }

    #[test]
    fn weekly_guard_never_twice_within_six_days() {
        let s = schedule("[[medication]]\nname = \"A\"\nslot = 0\nunits = 1\ntimes = [\"08:00\"]\ndays = [\"mon\"]\nhigh_alert_weekly = true\n");
        // Given on Thursday by hand (e.g. reconciled late): Monday's dose is held back.
        let h = [DoseRecord {
            medication: "A".into(),
            occurrence: None,
            at: utc("2026-03-05T07:00:00Z"),
            units: 1,
            outcome: Outcome::Dispensed,
            slot: None,
            elapsed: None,
        }];
        assert_eq!(
            reason(&run(&s, "2026-03-09T07:00:00Z", &h, &[])),
            Some(Reason::WeeklyGuard)
        );
        assert!(reason(&run(&s, "2026-03-16T07:00:00Z", &h, &[])).is_none());
    }

    #[test]
    fn clock_untrusted_locks_the_dispenser() {
        let s = schedule(TWICE);
        let (m, r) = &s.medications[0];
        let d = decide(
            m,
            r.as_ref().unwrap(),
            s.tz,
            utc("2026-03-02T07:00:00Z"),
            &[],
            &[],
            false,
        );
        assert_eq!(reason(&d), Some(Reason::ClockUntrusted));
    }

    const PRN: &str = "[[medication]]\nname = \"P\"\nslot = 1\nunits = 1\nprn = { min_interval = \"4h\", max_per_24h = 3 }\n";

    fn prn_at(s: &Schedule, now: &str, h: &[DoseRecord], req: &PrnRequest) -> Decision {
        decide_prn(&s.medications[0].0, s.tz, utc(now), h, &[], true, req)
    }

    fn patient() -> PrnRequest {
        PrnRequest {
            actor: "p-1".into(),
            role: Role::Patient,
            override_reason: None,
        }
    }

    fn prn_given(at: &str) -> DoseRecord {
        DoseRecord {
            medication: "P".into(),
            occurrence: None,
            at: utc(at),
            units: 1,
            outcome: Outcome::Dispensed,
            slot: None,
            elapsed: None,
        }
    }

    #[test]
    fn prn_too_soon_respects_min_interval() {
        let s = schedule(PRN);
        let h = [prn_given("2026-03-02T08:00:00Z")];
        assert_eq!(
            reason(&prn_at(&s, "2026-03-02T11:59:00Z", &h, &patient())),
            Some(Reason::PrnTooSoon)
        );
        assert!(reason(&prn_at(&s, "2026-03-02T12:00:00Z", &h, &patient())).is_none());
    }

    #[test]
    fn prn_max_24h_is_a_rolling_window_not_a_calendar_day() {
        let s = schedule(PRN);
        let h = [
            prn_given("2026-03-02T12:00:00Z"),
            prn_given("2026-03-02T17:00:00Z"),
            prn_given("2026-03-02T22:00:00Z"),
        ];
        // After midnight a calendar-day rule would allow a fourth; the rolling 24 h does not.
        assert_eq!(
            reason(&prn_at(&s, "2026-03-03T03:00:00Z", &h, &patient())),
            Some(Reason::PrnMax24h)
        );
        assert!(reason(&prn_at(&s, "2026-03-03T12:00:00Z", &h, &patient())).is_none());
    }

    #[test]
    fn prn_override_needs_a_reason_and_an_authorised_role() {
        let s = schedule(PRN);
        let h = [prn_given("2026-03-02T08:00:00Z")];
        let caregiver = PrnRequest {
            actor: "c-1".into(),
            role: Role::Caregiver,
            override_reason: Some("pain".into()),
        };
        assert_eq!(
            reason(&prn_at(&s, "2026-03-02T09:00:00Z", &h, &caregiver)),
            Some(Reason::OverrideNotAuthorised)
        );
        let nurse_no_reason = PrnRequest {
            actor: "n-1".into(),
            role: Role::Nurse,
            override_reason: Some(" ".into()),
        };
        assert_eq!(
            reason(&prn_at(&s, "2026-03-02T09:00:00Z", &h, &nurse_no_reason)),
            Some(Reason::OverrideNotAuthorised)
        );
        let nurse = PrnRequest {
            actor: "n-1".into(),
            role: Role::Nurse,
            override_reason: Some("breakthrough pain, GP consulted".into()),
        };
        assert!(reason(&prn_at(&s, "2026-03-02T09:00:00Z", &h, &nurse)).is_none());
    }

    #[test]
    fn taper_changes_units_by_date() {
        let s = schedule("[[medication]]\nname = \"A\"\nslot = 0\nunits = 1\ntimes = [\"08:00\"]\nstart = 2026-03-02\nend = 2026-03-08\n[[medication.taper]]\nfrom = 2026-03-02\nuntil = 2026-03-04\nunits = 3\n[[medication.taper]]\nfrom = 2026-03-05\nuntil = 2026-03-08\nunits = 1\n");
        assert_eq!(
            run(&s, "2026-03-03T07:00:00Z", &[], &[]),
            Decision::Dispense {
                occurrence: Some(utc("2026-03-03T07:00:00Z")),
                units: 3
            }
        );
        assert_eq!(
            run(&s, "2026-03-05T07:00:00Z", &[], &[]),
            Decision::Dispense {
                occurrence: Some(utc("2026-03-05T07:00:00Z")),
                units: 1
            }
        );
    }

    fn named(name: &str, slot: u8, at: &str, occ: &str) -> DoseRecord {
        DoseRecord {
            medication: name.into(),
            slot: Some(slot),
            elapsed: None,
            ..dispensed(at, occ)
        }
    }

    #[test]
    fn a_medication_renamed_or_recased_inherits_its_history() {
        // Given as "A" from slot 0; the schedule now says "a", or "Alpha" in the same slot.
        let h = [named(
            "A",
            0,
            "2026-03-02T07:00:00Z",
            "2026-03-02T07:00:00Z",
        )];
        for renamed in [
            TWICE.replace("\"A\"", "\"a\""),
            TWICE.replace("\"A\"", "\"Alpha\""),
        ] {
            let s = schedule(&renamed);
            assert_eq!(
                reason(&run(&s, "2026-03-02T07:30:00Z", &h, &[])),
                Some(Reason::AlreadyDispensed),
                "{renamed}"
            );
        }
    }

    #[test]
    fn a_moved_time_never_gives_a_second_dose() {
        // 08:00 Berlin given, then the schedule moves the dose to 09:00 (a new occurrence).
        let h = [named(
            "A",
            0,
            "2026-03-02T07:00:00Z",
            "2026-03-02T07:00:00Z",
        )];
        let moved =
            schedule("[[medication]]\nname = \"A\"\nslot = 0\nunits = 1\ntimes = [\"09:00\"]\n");
        for now in [
            "2026-03-02T07:30:00Z",
            "2026-03-02T08:00:00Z",
            "2026-03-02T09:59:00Z",
        ] {
            assert_eq!(
                reason(&run(&moved, now, &h, &[])),
                Some(Reason::AlreadyDispensed),
                "{now}"
            );
        }
        // The next day's dose is given as usual.
        assert!(reason(&run(&moved, "2026-03-03T08:00:00Z", &h, &[])).is_none());
    }

    #[test]
    fn an_uncertain_dose_under_another_occurrence_is_never_given_again() {
        let mut h = named("A", 0, "2026-03-02T07:00:00Z", "2026-03-02T07:00:00Z");
        h.outcome = Outcome::Uncertain;
        let moved =
            schedule("[[medication]]\nname = \"A\"\nslot = 0\nunits = 1\ntimes = [\"09:00\"]\n");
        assert_eq!(
            reason(&run(&moved, "2026-03-02T08:00:00Z", &[h], &[])),
            Some(Reason::Unreconciled)
        );
    }

    #[test]
    fn max_daily_units_counts_by_the_occurrences_local_date() {
        // The 23:00 dose of 2 March (Berlin, 22:00 UTC) given late, at 00:31 on 3 March: it
        // counts for 2 March, so the 23:00 dose of 3 March is not a false DAILY_MAX.
        let s = schedule("[[medication]]\nname = \"A\"\nslot = 0\nunits = 1\ntimes = [\"23:00\"]\nmax_daily_units = 1\nmissed_policy = \"window\"\n");
        let h = [named(
            "A",
            0,
            "2026-03-02T23:31:00Z",
            "2026-03-02T22:00:00Z",
        )];
        assert!(reason(&run(&s, "2026-03-03T22:00:00Z", &h, &[])).is_none());
    }

    #[test]
    fn prn_spacing_survives_a_backward_clock_step() {
        // Last dose at 12:00; the wall clock was then stepped back to 10:40 (and trusted by
        // someone): the dose is not 40 minutes, nor "in the future", but at least 0 h ago.
        let s = schedule(PRN);
        let h = [prn_given("2026-03-02T12:00:00Z")];
        assert_eq!(
            reason(&prn_at(&s, "2026-03-02T10:40:00Z", &h, &patient())),
            Some(Reason::PrnTooSoon)
        );
        let three = [
            prn_given("2026-03-02T04:00:00Z"),
            prn_given("2026-03-02T08:00:00Z"),
            prn_given("2026-03-02T12:00:00Z"),
        ];
        // 28 h after the first by the wall clock, but the records say 24 h have not passed.
        assert_eq!(
            reason(&prn_at(&s, "2026-03-03T08:00:00Z", &three, &patient())),
            None
        );
        assert_eq!(
            reason(&prn_at(&s, "2026-03-02T03:00:00Z", &three, &patient())),
            Some(Reason::PrnTooSoon)
        );
    }

    #[test]
    fn a_gap_is_the_shorter_of_what_the_wall_clock_and_the_elapsed_timeline_say() {
        let r = prn_given("2026-03-02T08:00:00Z");
        // The wall clock was stepped back 2 h: the timeline says 4 h passed, the wall 2 h.
        let stepped_back = Now {
            wall: utc("2026-03-02T10:00:00Z"),
            elapsed: utc("2026-03-02T12:00:00Z"),
        };
        assert_eq!(
            ago(stepped_back, stepped_back.elapsed, &r),
            Duration::hours(2)
        );
        // The timeline resumed 5 h ahead after a restart on a clock that was wrong then and has
        // been corrected since: the wall clock's 3 h count.
        let resumed_ahead = Now {
            wall: utc("2026-03-02T11:00:00Z"),
            elapsed: utc("2026-03-02T16:00:00Z"),
        };
        assert_eq!(
            ago(resumed_ahead, resumed_ahead.elapsed, &r),
            Duration::hours(3)
        );
        // So a PRN dose 3 h after the last is too soon, whichever clock ran ahead.
        let s = schedule(PRN);
        let d = decide_prn(
            &s.medications[0].0,
            s.tz,
            resumed_ahead,
            &[r],
            &[],
            true,
            &patient(),
        );
        assert_eq!(reason(&d), Some(Reason::PrnTooSoon));
    }

    #[test]
    fn a_start_behind_the_time_floor_or_a_lock_left_at_stop_keeps_dispensing_locked() {
        let floor = Some(utc("2026-03-02T12:00:00Z"));
        // Behind the last record by more than the tolerance: locked, and by how much.
        assert_eq!(
            untrusted_at_start(utc("2026-03-02T11:00:00Z"), floor, false),
            Some(-3600)
        );
        // Within the tolerance, or ahead (time passed while off): trusted.
        assert_eq!(
            untrusted_at_start(utc("2026-03-02T11:59:30Z"), floor, false),
            None
        );
        assert_eq!(
            untrusted_at_start(utc("2026-03-05T08:00:00Z"), floor, false),
            None
        );
        // A lock left when the appliance stopped survives the restart, whatever the clock.
        assert_eq!(
            untrusted_at_start(utc("2026-03-05T08:00:00Z"), floor, true),
            Some(0)
        );
        // A new appliance has no floor.
        assert_eq!(
            untrusted_at_start(utc("2026-03-02T11:00:00Z"), None, false),
            None
        );
    }

    #[test]
    fn reason_codes_are_the_documented_spellings() {
        let docs = include_str!("../../docs/mqtt.md");
        for r in Reason::ALL {
            let code = r.code();
            assert!(!code.is_empty(), "{r:?}");
            assert!(
                docs.contains(&format!("`{code}`")),
                "{code} is not in docs/mqtt.md"
            );
        }
        assert_eq!(Reason::PrnMax24h.code(), "PRN_MAX_24H");
    }

    proptest! {
        /// Against a reference: whatever the request times, an occurrence is dispensed at most
        /// once, only inside its window, and never over the daily maximum.
        #[test]
        fn never_twice_never_outside_a_window_never_over_the_daily_max(
            offsets in proptest::collection::vec(0i64..(10 * 24 * 60), 1..120)
        ) {
            let s = schedule("[[medication]]\nname = \"A\"\nslot = 0\nunits = 1\ntimes = [\"08:00\", \"20:00\"]\nmax_daily_units = 2\n");
            let (m, r) = &s.medications[0];
            let r = r.as_ref().unwrap();
            let base = utc("2026-03-20T00:00:00Z");
            let mut sorted = offsets.clone();
            sorted.sort();
            let mut history: Vec<DoseRecord> = Vec::new();
            for off in sorted {
                let now = base + Duration::minutes(off);
                if let Decision::Dispense { occurrence: Some(o), units } = decide(m, r, s.tz, now, &history, &[], true) {
                    prop_assert!(!history.iter().any(|h| h.occurrence == Some(o)), "twice: {o}");
                    let ws = windows(m, r, s.tz, now - Duration::days(1), now + Duration::days(1));
                    let w = ws.iter().find(|w| w.occurrence == o).unwrap();
                    prop_assert!(w.opens <= now && now < w.closes);
                    history.push(DoseRecord { medication: "A".into(), occurrence: Some(o), at: now, units, outcome: Outcome::Dispensed, slot: None, elapsed: None });
                    let day = now.with_timezone(&s.tz).date_naive();
                    let total: u32 = history.iter().filter(|h| h.at.with_timezone(&s.tz).date_naive() == day).map(|h| h.units).sum();
                    prop_assert!(total <= 2);
                }
            }
        }
    }
}
