//! Dose occurrences in the patient's time zone.
//!
//! Wall-clock schedules (times, days, cron) are matched on *naive local* time — cron's fields are
//! evaluated as if the zone had no daylight saving — and each naive time is then resolved to an
//! instant with the RFC 5545 rule: in a gap, shifted forward by the gap's length; in a fold, the
//! first occurrence. The `cron` crate alone would skip a 02:30 dose on a spring-forward night.
//! Interval schedules ("every 8 h") are anchored instants plus multiples of the interval in UTC.

use chrono::{DateTime, Duration, NaiveDate, NaiveDateTime, TimeZone, Utc};
use chrono_tz::Tz;
use std::str::FromStr;

/// How a medication's times are given, compiled from the friendly forms.
#[derive(Clone, Debug)]
pub enum Recurrence {
    /// Cron field matching on local wall-clock time (times/days compile to this too).
    Wall {
        /// The cron schedule (seconds field first, as the `cron` crate wants).
        cron: Box<cron::Schedule>,
        /// Only every other day, counted from this date.
        every_other_day_from: Option<NaiveDate>,
        /// Each local day's instants, computed once (the planner asks about the same few days
        /// every minute). Belongs to this compiled recurrence: a new schedule starts empty.
        days: DayCache,
    },
    /// The union of several recurrences (several daily times).
    Multi(Vec<Recurrence>),
    /// Fixed elapsed spacing from an anchor instant.
    Interval {
        /// First dose.
        anchor: DateTime<Utc>,
        /// Spacing.
        every: Duration,
    },
}

/// Resolves a local wall-clock time in `tz` to an instant (RFC 5545: gap → forward by the gap,
/// fold → first occurrence).
pub fn resolve_local(tz: Tz, local: NaiveDateTime) -> Option<DateTime<Utc>> {
    match tz.from_local_datetime(&local) {
        chrono::LocalResult::Single(t) => Some(t.with_timezone(&Utc)),
        chrono::LocalResult::Ambiguous(first, _) => Some(first.with_timezone(&Utc)),
        chrono::LocalResult::None => {
            // Use the offset in force before the gap: the result lands `gap` later on the wall.
            let before = tz
                .from_local_datetime(&(local - Duration::hours(3)))
                .earliest()?;
            let offset = before.offset().fix();
            Some(Utc.from_utc_datetime(
                &(local - Duration::seconds(i64::from(offset.local_minus_utc()))),
            ))
        }
    }
}

/// A moment a caregiver types: RFC 3339 with an offset, or a local date and time in the
/// schedule's zone (`2026-03-29T08:10`, `2026-03-29 08:10`), or a local date alone (its start).
/// A local time the clocks skip (spring forward) is refused rather than guessed.
pub fn parse_moment(text: &str, tz: Tz) -> Result<DateTime<Utc>, String> {
    let text = text.trim();
    if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        return Ok(t.with_timezone(&Utc));
    }
    let local = ["%Y-%m-%dT%H:%M", "%Y-%m-%d %H:%M", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M:%S"]
        .iter()
        .find_map(|f| NaiveDateTime::parse_from_str(text, f).ok())
        .or_else(|| {
            NaiveDate::parse_from_str(text, "%Y-%m-%d")
                .ok()
                .map(|d| d.and_time(chrono::NaiveTime::MIN))
        })
        .ok_or_else(|| {
            format!(
                "{text:?} is not a moment: write 2026-03-29, 2026-03-29T08:10 (local time in {tz}) or 2026-03-29T08:10:00+02:00"
            )
        })?;
    match tz.from_local_datetime(&local) {
        chrono::LocalResult::Single(t) => Ok(t.with_timezone(&Utc)),
        chrono::LocalResult::Ambiguous(first, _) => Ok(first.with_timezone(&Utc)),
        chrono::LocalResult::None => Err(format!(
            "{local} does not exist in {tz} (the clocks skip it); give a time outside the change or an offset"
        )),
    }
}

use chrono::Offset;

/// The instants of one naive local `day` of a wall-clock recurrence: every cron match on that
/// date, resolved with the RFC 5545 rule (see [`resolve_local`]).
fn wall_day(
    cron: &cron::Schedule,
    every_other_day_from: Option<NaiveDate>,
    tz: Tz,
    day: NaiveDate,
) -> Vec<DateTime<Utc>> {
    if every_other_day_from.is_some_and(|from| (day - from).num_days().rem_euclid(2) != 0) {
        return Vec::new();
    }
    let start = day.and_time(chrono::NaiveTime::MIN) - Duration::seconds(1);
    let mut out = Vec::new();
    for naive in cron.after(&Utc.from_utc_datetime(&start)) {
        let naive = naive.naive_utc();
        if naive.date() != day {
            break;
        }
        if let Some(t) = resolve_local(tz, naive) {
            if !out.contains(&t) {
                out.push(t);
            }
        }
    }
    out
}

/// A small cache of a wall-clock recurrence's days, shared by its clones (a schedule cloned for
/// a task keeps what was computed). Cleared when it grows past [`DayCache::MAX_DAYS`].
#[derive(Clone, Default)]
pub struct DayCache(std::sync::Arc<std::sync::Mutex<Days>>);

/// Each (zone, local day)'s instants.
type Days = std::collections::HashMap<(Tz, NaiveDate), Vec<DateTime<Utc>>>;

impl std::fmt::Debug for DayCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DayCache")
    }
}

impl DayCache {
    /// Most days kept before the cache starts again.
    const MAX_DAYS: usize = 256;

    /// Hands `use_` the instants of `day`, computing them with `compute` the first time.
    fn with_day(
        &self,
        tz: Tz,
        day: NaiveDate,
        compute: impl FnOnce(NaiveDate) -> Vec<DateTime<Utc>>,
        use_: impl FnOnce(&[DateTime<Utc>]),
    ) {
        // A poisoned lock only means another thread panicked mid-insert: start afresh.
        let mut map = self.0.lock().unwrap_or_else(|p| {
            let mut m = p.into_inner();
            m.clear();
            m
        });
        if map.len() > Self::MAX_DAYS {
            map.clear();
        }
        let ts = map.entry((tz, day)).or_insert_with(|| compute(day));
        use_(ts);
    }
}

impl Recurrence {
    /// Builds a wall-clock recurrence from a caregiver's cron expression: exactly the standard
    /// five fields (minute hour day-of-month month day-of-week). The `cron` crate's own six- and
    /// seven-field forms start with *seconds*, so `"0 8 * * * *"` would silently mean "every
    /// hour at minute 8": they are refused, as are `@hourly`-style macros.
    pub fn from_cron(expr: &str, every_other_day_from: Option<NaiveDate>) -> Result<Self, String> {
        let fields = expr.split_whitespace().count();
        if fields != 5 {
            return Err(format!(
                "{expr:?} has {fields} field(s); write the standard five: minute hour day-of-month month day-of-week (e.g. \"0 8 * * Mon\")"
            ));
        }
        Self::from_cron_with_seconds(&format!("0 {expr}"), every_other_day_from)
            .map_err(|e| format!("{expr:?}: {e}"))
    }

    /// A recurrence from the crate's six-field form (seconds first), as `times` compile to.
    pub(crate) fn from_cron_with_seconds(
        full: &str,
        every_other_day_from: Option<NaiveDate>,
    ) -> Result<Self, String> {
        let cron = cron::Schedule::from_str(full).map_err(|e| e.to_string())?;
        Ok(Recurrence::Wall {
            cron: Box::new(cron),
            every_other_day_from,
            days: DayCache::default(),
        })
    }

    /// The local times of day (minutes after midnight, sorted) at which a wall-clock
    /// recurrence can fire on some day; None for an interval. Worked out from the expression,
    /// so it costs the same whatever the schedule's lifetime.
    pub fn minutes_of_day(&self) -> Option<Vec<u32>> {
        use cron::TimeUnitSpec;
        match self {
            Recurrence::Interval { .. } => None,
            Recurrence::Wall { cron, .. } => {
                let mut out: Vec<u32> = cron
                    .hours()
                    .iter()
                    .flat_map(|h| cron.minutes().iter().map(move |m| h * 60 + m))
                    .collect();
                out.sort_unstable();
                Some(out)
            }
            Recurrence::Multi(parts) => {
                let mut out = Vec::new();
                for p in parts {
                    out.extend(p.minutes_of_day()?);
                }
                out.sort_unstable();
                out.dedup();
                Some(out)
            }
        }
    }

    /// The most doses any one local day can hold for a wall-clock form: its distinct times of
    /// day (a repeated hour doses once, a skipped one shifts). For an interval, as many as fit
    /// into the longest (25 h) day, whatever its phase (an upper bound).
    pub fn max_per_day(&self) -> u32 {
        match self {
            Recurrence::Interval { every, .. } => {
                let secs = every.num_seconds().max(1);
                u32::try_from((25 * 3600 + secs - 1) / secs).unwrap_or(u32::MAX)
            }
            _ => self
                .minutes_of_day()
                .map_or(0, |m| u32::try_from(m.len()).unwrap_or(u32::MAX)),
        }
    }

    /// The shortest gap between two times of day a wall-clock recurrence can fire at,
    /// including from the last of one day to the first of the next; None for an interval or a
    /// single time a day.
    pub fn shortest_gap_of_day(&self) -> Option<u32> {
        let m = self.minutes_of_day()?;
        let (first, last) = (*m.first()?, *m.last()?);
        let inner = m.windows(2).map(|w| w[1] - w[0]).min();
        let wrap = (m.len() > 1).then_some(1440 - last + first);
        inner.into_iter().chain(wrap).min()
    }

    /// Occurrences strictly after `after`, in order, up to `until`.
    pub fn between(
        &self,
        tz: Tz,
        after: DateTime<Utc>,
        until: DateTime<Utc>,
    ) -> Vec<DateTime<Utc>> {
        match self {
            Recurrence::Multi(parts) => {
                let mut all: Vec<DateTime<Utc>> = parts
                    .iter()
                    .flat_map(|p| p.between(tz, after, until))
                    .collect();
                all.sort();
                all.dedup();
                all
            }
            Recurrence::Interval { anchor, every } => {
                if every.num_seconds() <= 0 {
                    return Vec::new();
                }
                let k = if after < *anchor {
                    0
                } else {
                    (after - *anchor).num_seconds() / every.num_seconds() + 1
                };
                let mut out = Vec::new();
                let mut t = *anchor + *every * k as i32;
                while t <= until {
                    if t > after {
                        out.push(t);
                    }
                    t += *every;
                }
                out
            }
            Recurrence::Wall {
                cron,
                every_other_day_from,
                days,
            } => {
                // Whole local days from the one before `after` to the one after `until` (a
                // time shifted by a daylight-saving change may land in the neighbour's range).
                let first = after.with_timezone(&tz).date_naive() - Duration::days(1);
                let last = until.with_timezone(&tz).date_naive() + Duration::days(1);
                let mut out: Vec<DateTime<Utc>> = Vec::new();
                let mut day = first;
                while day <= last {
                    days.with_day(
                        tz,
                        day,
                        |d| wall_day(cron, *every_other_day_from, tz, d),
                        |ts| out.extend(ts.iter().filter(|t| **t > after && **t <= until)),
                    );
                    match day.succ_opt() {
                        Some(next) => day = next,
                        None => break,
                    }
                }
                out.sort();
                out.dedup();
                out
            }
        }
    }

    /// The next `n` occurrences after `after` (searching up to a year ahead).
    pub fn next(&self, tz: Tz, after: DateTime<Utc>, n: usize) -> Vec<DateTime<Utc>> {
        let mut out = Vec::new();
        let mut from = after;
        while out.len() < n {
            let chunk = self.between(tz, from, from + Duration::days(31));
            if chunk.is_empty() {
                if from - after > Duration::days(366) {
                    break;
                }
                from += Duration::days(31);
                continue;
            }
            from = *chunk.last().unwrap_or(&from);
            out.extend(chunk);
        }
        out.truncate(n);
        out
    }

    /// At most `n` occurrences after `after`, searching at most `horizon` ahead: a bounded
    /// walk, so checking a schedule costs the same whatever the expression.
    pub fn first_n(
        &self,
        tz: Tz,
        after: DateTime<Utc>,
        n: usize,
        horizon: Duration,
    ) -> Vec<DateTime<Utc>> {
        let mut out = Vec::new();
        let mut from = after;
        let end = after + horizon;
        while out.len() < n && from < end {
            let to = (from + Duration::days(7)).min(end);
            out.extend(self.between(tz, from, to));
            from = to;
        }
        out.truncate(n);
        out
    }

    /// The last occurrence at or before `at` (searching up to 40 days back).
    pub fn previous(&self, tz: Tz, at: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.between(tz, at - Duration::days(40), at)
            .into_iter()
            .next_back()
    }
}

#[cfg(test)]
mod tests {
    /// The walk `between` made before days were cached: every cron match in the naive range a
    /// day either side, resolved and filtered. The cached version must agree with it exactly.
    fn between_uncached(
        cron: &cron::Schedule,
        every_other_day_from: Option<NaiveDate>,
        tz: Tz,
        after: DateTime<Utc>,
        until: DateTime<Utc>,
    ) -> Vec<DateTime<Utc>> {
        let start_local = after.with_timezone(&tz).naive_local() - Duration::days(1);
        let end_local = until.with_timezone(&tz).naive_local() + Duration::days(1);
        let mut out: Vec<DateTime<Utc>> = Vec::new();
        for naive in cron.after(&Utc.from_utc_datetime(&start_local)) {
            let naive = naive.naive_utc();
            if naive > end_local {
                break;
            }
            if let Some(from) = every_other_day_from {
                if (naive.date() - from).num_days().rem_euclid(2) != 0 {
                    continue;
                }
            }
            if let Some(t) = resolve_local(tz, naive) {
                if t > after && t <= until && !out.contains(&t) {
                    out.push(t);
                }
            }
        }
        out.sort();
        out
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(300))]
        #[test]
        fn cached_days_give_the_same_occurrences_as_the_walk_across_daylight_saving(
            expr in proptest::sample::select(vec![
                "0 8 * * *", "30 2 * * *", "0 1,13 * * *", "15 */4 * * *", "0 9 * * Mon,Thu",
                "45 23 * * *", "0 0 1 * *", "30 1 * * Sun",
            ]),
            zone in proptest::sample::select(vec![
                "Europe/Berlin", "America/New_York", "Australia/Sydney", "Australia/Lord_Howe",
                "Europe/London", "UTC",
            ]),
            start_min in 0i64..(366 * 24 * 60),
            span_min in 1i64..(6 * 24 * 60),
            every_other in proptest::bool::ANY,
            repeat in 1usize..3,
        ) {
            let tz: Tz = zone.parse().unwrap();
            let from = every_other.then(|| NaiveDate::from_ymd_opt(2026, 1, 1).unwrap());
            let rec = Recurrence::from_cron(expr, from).unwrap();
            let Recurrence::Wall { cron, .. } = &rec else { panic!("a wall recurrence") };
            let after = "2026-01-01T00:00:00Z".parse::<DateTime<Utc>>().unwrap()
                + Duration::minutes(start_min);
            let until = after + Duration::minutes(span_min);
            let expected = between_uncached(cron, from, tz, after, until);
            // Asked again (from the cache), and after a neighbouring question, the same answer.
            for _ in 0..repeat {
                let _ = rec.between(tz, after - Duration::hours(13), after + Duration::hours(3));
                proptest::prop_assert_eq!(rec.between(tz, after, until), expected.clone());
            }
        }
    }

    #[test]
    fn a_moment_is_read_in_the_schedules_zone_unless_it_names_an_offset() {
        let tz: Tz = "Europe/Berlin".parse().unwrap();
        let utc = |t: &str| t.parse::<DateTime<Utc>>().unwrap();
        assert_eq!(
            parse_moment("2026-03-28", tz),
            Ok(utc("2026-03-27T23:00:00Z"))
        );
        assert_eq!(
            parse_moment("2026-03-29T08:10", tz),
            Ok(utc("2026-03-29T06:10:00Z"))
        );
        assert_eq!(
            parse_moment("2026-03-29 08:10", tz),
            Ok(utc("2026-03-29T06:10:00Z"))
        );
        assert_eq!(
            parse_moment("2026-03-29T08:10:00+00:00", tz),
            Ok(utc("2026-03-29T08:10:00Z"))
        );
        // 02:30 does not happen in Berlin on the spring-forward night.
        let gap = parse_moment("2026-03-29T02:30", tz).unwrap_err();
        assert!(gap.contains("does not exist"), "{gap}");
        let junk = parse_moment("next tuesday", tz).unwrap_err();
        assert!(junk.contains("2026-03-29T08:10"), "{junk}");
    }

    use super::*;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn local(tz: Tz, t: DateTime<Utc>) -> String {
        t.with_timezone(&tz)
            .format("%Y-%m-%d %H:%M %:z")
            .to_string()
    }

    #[test]
    fn dose_in_a_skipped_hour_moves_forward_by_the_gap() {
        // 2026-03-08 is the spring-forward night in New York: 02:00 → 03:00.
        let tz: Tz = "America/New_York".parse().unwrap();
        let r = Recurrence::from_cron("30 2 * * *", None).unwrap();
        let got: Vec<_> = r
            .between(tz, utc("2026-03-07T00:00:00Z"), utc("2026-03-10T00:00:00Z"))
            .into_iter()
            .map(|t| local(tz, t))
            .collect();
        assert_eq!(
            got,
            vec![
                "2026-03-07 02:30 -05:00",
                "2026-03-08 03:30 -04:00",
                "2026-03-09 02:30 -04:00"
            ]
        );
    }

    #[test]
    fn dose_in_a_repeated_hour_fires_once_at_its_first_occurrence() {
        // 2026-10-25 in Berlin: 03:00 CEST → 02:00 CET, so 02:30 happens twice.
        let tz: Tz = "Europe/Berlin".parse().unwrap();
        let r = Recurrence::from_cron("30 2 * * *", None).unwrap();
        let got: Vec<_> = r
            .between(tz, utc("2026-10-24T12:00:00Z"), utc("2026-10-26T12:00:00Z"))
            .into_iter()
            .map(|t| local(tz, t))
            .collect();
        assert_eq!(
            got,
            vec!["2026-10-25 02:30 +02:00", "2026-10-26 02:30 +01:00"]
        );
    }

    #[test]
    fn sub_hourly_schedule_keeps_order_through_the_repeated_hour() {
        let tz: Tz = "Europe/Berlin".parse().unwrap();
        let r = Recurrence::from_cron("*/30 1-3 * * *", None).unwrap();
        let got = r.between(tz, utc("2026-10-24T22:00:00Z"), utc("2026-10-25T04:00:00Z"));
        assert!(got.windows(2).all(|w| w[0] < w[1]), "sorted and unique");
        // 01:00 01:30 02:00 02:30 03:00 03:30 on the wall, each once.
        assert_eq!(got.len(), 6);
    }

    #[test]
    fn interval_medication_keeps_elapsed_spacing_across_daylight_saving() {
        let tz: Tz = "America/New_York".parse().unwrap();
        let r = Recurrence::Interval {
            anchor: utc("2026-03-07T11:00:00Z"),
            every: Duration::hours(8),
        };
        let got = r.between(tz, utc("2026-03-07T00:00:00Z"), utc("2026-03-09T00:00:00Z"));
        assert!(got.windows(2).all(|w| w[1] - w[0] == Duration::hours(8)));
        // Wall times shift by an hour after the change, elapsed spacing does not.
        assert_eq!(local(tz, got[0]), "2026-03-07 06:00 -05:00");
        assert_eq!(local(tz, got[3]), "2026-03-08 07:00 -04:00");
    }

    #[test]
    fn cron_day_of_week_names_are_used_not_numbers() {
        let tz: Tz = "Europe/London".parse().unwrap();
        let r = Recurrence::from_cron("0 8 * * Mon,Thu", None).unwrap();
        let got: Vec<_> = r
            .next(tz, utc("2026-03-01T00:00:00Z"), 3)
            .into_iter()
            .map(|t| t.with_timezone(&tz).format("%a %H:%M").to_string())
            .collect();
        assert_eq!(got, vec!["Mon 08:00", "Thu 08:00", "Mon 08:00"]);
    }

    #[test]
    fn every_other_day_counts_from_its_start_date() {
        let tz: Tz = "UTC".parse().unwrap();
        let start = NaiveDate::from_ymd_opt(2026, 3, 2).unwrap();
        let r = Recurrence::from_cron("0 9 * * *", Some(start)).unwrap();
        let got: Vec<_> = r
            .next(tz, utc("2026-03-01T00:00:00Z"), 3)
            .into_iter()
            .map(|t| t.format("%d").to_string())
            .collect();
        assert_eq!(got, vec!["02", "04", "06"]);
    }
}
