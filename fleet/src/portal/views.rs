//! What the pages show, worked out from archived rows: which alerts are open, how a dose's
//! status reads, the days of a person's time zone, and adherence by day (counted by the
//! appliance's own tally, so the portal and the device's report never disagree). Pure.

use chrono::{DateTime, Datelike, Duration, NaiveDate, TimeZone, Utc};
use chrono_tz::Tz;
use medbox::dosing::adherence;
use medbox::dosing::engine::DoseRecord;
use serde::Serialize;

/// The latest alert-state row of one subject on one device.
#[derive(Clone, Debug, PartialEq)]
pub struct AlertState {
    /// Appliance.
    pub device: String,
    /// `alarm:<CODE>` or `slot:<n>`.
    pub subject: String,
    /// The row's kind.
    pub kind: String,
    /// When.
    pub utc: DateTime<Utc>,
    /// The row's reason (a stock alert's code).
    pub reason: String,
}

/// An alert someone still has to acknowledge.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Alert {
    /// Appliance.
    pub device: String,
    /// The code the appliance's `acknowledge_alarm` takes.
    pub code: String,
    /// The slot, for stock alerts.
    pub slot: Option<u8>,
    /// When it was raised (UTC).
    pub raised: String,
    /// What kind of alert.
    pub detail: String,
}

/// The alerts still open, as the appliance sees them: a cold-chain alarm whose latest row is
/// its raising (cleared or acknowledged closes it; the appliance refuses to acknowledge an
/// alarm that is no longer raised), and a slot whose latest stock row is an alert
/// (acknowledged or refilled closes it).
pub fn open_alerts(states: &[AlertState]) -> Vec<Alert> {
    states
        .iter()
        .filter_map(|s| match s.kind.as_str() {
            "coldchain.alarm_raised" => Some(Alert {
                device: s.device.clone(),
                code: s.subject.strip_prefix("alarm:")?.to_string(),
                slot: None,
                raised: stamp(s.utc),
                detail: "cold chain".into(),
            }),
            "inventory.alert" => Some(Alert {
                device: s.device.clone(),
                code: s.reason.clone(),
                slot: s.subject.strip_prefix("slot:")?.parse().ok(),
                raised: stamp(s.utc),
                detail: "stock".into(),
            }),
            _ => None,
        })
        .collect()
}

/// A dose as a row of a page.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DoseView {
    /// Scheduled local time (date and time for the week's list).
    pub time: String,
    /// Medication.
    pub medication: String,
    /// Status in words.
    pub outcome: String,
    /// `ok`, `warn` or `bad`, for colour.
    pub class: &'static str,
    /// Units.
    pub units: Option<i32>,
    /// A carer should say whether it was had (the appliance takes `reconcile_dose`).
    pub uncertain: bool,
    /// The occurrence as the appliance names it (RFC 3339 UTC).
    pub occurrence: String,
    /// As-needed.
    pub as_needed: bool,
}

/// How a dose's latest outcome reads, and whether it waits for a carer.
pub fn dose_view(d: &super::store::DoseRow, tz: Tz, with_date: bool) -> DoseView {
    let local = d.occurrence.with_timezone(&tz);
    let (class, uncertain) = match d.outcome.as_str() {
        "taken" | "confirmed_given" => ("ok", false),
        "uncertain" | "dispensing" => ("warn", true),
        "dispensed" => ("warn", false),
        "skipped" => ("", false),
        _ => ("bad", false),
    };
    DoseView {
        time: if with_date {
            local.format("%a %d %b %H:%M").to_string()
        } else {
            local.format("%H:%M").to_string()
        },
        medication: d.medication.clone(),
        outcome: format!(
            "{}{}",
            d.outcome.replace('_', " "),
            if d.as_needed { " (as needed)" } else { "" }
        ),
        class,
        units: d.units,
        uncertain,
        occurrence: d
            .occurrence
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        as_needed: d.as_needed,
    }
}

/// The local day `now` falls on in `tz`.
pub fn local_day(now: DateTime<Utc>, tz: Tz) -> NaiveDate {
    now.with_timezone(&tz).date_naive()
}

/// `[first, last]` local days as UTC instants `[start, end)`; a day that starts in a DST gap
/// starts at its first existing instant.
pub fn days_utc(first: NaiveDate, last: NaiveDate, tz: Tz) -> (DateTime<Utc>, DateTime<Utc>) {
    (start_of(first, tz), start_of(last + Duration::days(1), tz))
}

fn start_of(day: NaiveDate, tz: Tz) -> DateTime<Utc> {
    let midnight = day.and_hms_opt(0, 0, 0).expect("midnight");
    (0..=3)
        .find_map(|h| {
            tz.from_local_datetime(&(midnight + Duration::hours(h)))
                .earliest()
        })
        .map(|t| t.with_timezone(&Utc))
        .unwrap_or_else(|| Utc.from_utc_datetime(&midnight))
}

/// Monday of the week `day` is in.
pub fn week_start(day: NaiveDate) -> NaiveDate {
    day - Duration::days(i64::from(day.weekday().num_days_from_monday()))
}

/// One day of an adherence trend.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DayTrend {
    /// Local date.
    pub day: String,
    /// Scheduled doses taken (a carer's confirmation counts).
    pub taken: u32,
    /// Scheduled doses due (skipped ones are not).
    pub due: u32,
    /// taken / due in whole percent (none when nothing was due).
    pub percent: Option<u32>,
}

/// Adherence per local day over `days` days ending on `last`, by each occurrence's local date,
/// tallied as the appliance tallies it.
pub fn trend(records: &[DoseRecord], tz: Tz, last: NaiveDate, days: u32) -> Vec<DayTrend> {
    (0..days)
        .rev()
        .map(|back| {
            let day = last - Duration::days(i64::from(back));
            let on_day = records
                .iter()
                .filter(|r| r.occurrence.is_some_and(|o| local_day(o, tz) == day))
                .map(|r| (String::new(), r.clone()));
            let (taken, due) = adherence::tally(on_day).iter().fold((0, 0), |(t, d), x| {
                (t + x.taken, d + x.scheduled - x.skipped)
            });
            DayTrend {
                day: day.format("%a %d %b").to_string(),
                taken,
                due,
                percent: (due > 0).then(|| taken * 100 / due),
            }
        })
        .collect()
}

/// Whether a vial temperature is inside the band.
pub fn in_range(vial: Option<f64>, (low, high): (f64, f64)) -> Option<bool> {
    vial.map(|v| (low..=high).contains(&v))
}

fn stamp(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M UTC").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use medbox::dosing::engine::Outcome;

    fn state(subject: &str, kind: &str, reason: &str) -> AlertState {
        AlertState {
            device: "mb-1".into(),
            subject: subject.into(),
            kind: kind.into(),
            utc: "2026-03-02T10:00:00Z".parse().unwrap(),
            reason: reason.into(),
        }
    }

    #[test]
    fn an_alarm_is_open_until_cleared_or_acknowledged_and_a_refill_closes_a_stock_alert() {
        let open = open_alerts(&[
            state("alarm:DOOR_OPEN", "coldchain.alarm_raised", "DOOR_OPEN"),
            state("alarm:EXCURSION", "coldchain.alarm_cleared", ""),
            state("alarm:HEAT", "coldchain.alarm_acknowledged", "checked"),
            state("slot:3", "inventory.alert", "LOW_STOCK"),
            state("slot:4", "inventory.refill", ""),
            state("slot:5", "inventory.acknowledged", "ordered"),
        ]);
        assert_eq!(open.len(), 2);
        assert_eq!((open[0].code.as_str(), open[0].slot), ("DOOR_OPEN", None));
        assert_eq!(
            (open[1].code.as_str(), open[1].slot),
            ("LOW_STOCK", Some(3))
        );
    }

    fn dose(outcome: &str) -> super::super::store::DoseRow {
        super::super::store::DoseRow {
            device: "mb-1".into(),
            patient: "p-1".into(),
            medication: "<b>Metformin</b>".into(),
            occurrence: "2026-03-02T14:00:00Z".parse().unwrap(),
            as_needed: false,
            outcome: outcome.into(),
            units: Some(1),
        }
    }

    #[test]
    fn a_dose_reads_in_the_persons_zone_and_only_an_uncertain_one_asks_for_reconciling() {
        let tz: Tz = "America/New_York".parse().unwrap();
        let v = dose_view(&dose("uncertain"), tz, false);
        assert_eq!(v.time, "09:00");
        assert!(v.uncertain);
        assert_eq!(v.occurrence, "2026-03-02T14:00:00Z");
        assert_eq!(dose_view(&dose("taken"), tz, true).time, "Mon 02 Mar 09:00");
        assert_eq!(dose_view(&dose("taken"), tz, false).class, "ok");
        assert_eq!(dose_view(&dose("missed"), tz, false).class, "bad");
        assert!(!dose_view(&dose("dispensed"), tz, false).uncertain);
        assert_eq!(
            dose_view(&dose("confirmed_not_given"), tz, false).outcome,
            "confirmed not given"
        );
    }

    #[test]
    fn a_local_day_spans_23_or_25_hours_across_daylight_saving() {
        let tz: Tz = "Europe/Berlin".parse().unwrap();
        let spring = NaiveDate::from_ymd_opt(2026, 3, 29).unwrap();
        let (a, b) = days_utc(spring, spring, tz);
        assert_eq!(b - a, Duration::hours(23));
        let autumn = NaiveDate::from_ymd_opt(2026, 10, 25).unwrap();
        let (a, b) = days_utc(autumn, autumn, tz);
        assert_eq!(b - a, Duration::hours(25));
        assert_eq!(
            week_start(NaiveDate::from_ymd_opt(2026, 3, 5).unwrap()),
            NaiveDate::from_ymd_opt(2026, 3, 2).unwrap()
        );
    }

    fn rec(occ: &str, minutes_after: i64, outcome: Outcome) -> DoseRecord {
        let o: DateTime<Utc> = occ.parse().unwrap();
        DoseRecord {
            medication: "A".into(),
            occurrence: Some(o),
            at: o + Duration::minutes(minutes_after),
            units: 1,
            outcome,
            slot: Some(1),
            elapsed: None,
        }
    }

    #[test]
    fn adherence_by_day_counts_each_occurrence_once_by_its_final_state_and_not_a_skipped_one() {
        let tz: Tz = "UTC".parse().unwrap();
        let records = vec![
            rec("2026-03-02T08:00:00Z", 0, Outcome::Dispensed),
            rec("2026-03-02T08:00:00Z", 5, Outcome::Taken),
            rec("2026-03-02T20:00:00Z", 0, Outcome::Dispensed),
            rec("2026-03-02T20:00:00Z", 90, Outcome::Missed),
            rec("2026-03-03T08:00:00Z", 0, Outcome::Skipped),
        ];
        let t = trend(
            &records,
            tz,
            NaiveDate::from_ymd_opt(2026, 3, 3).unwrap(),
            3,
        );
        assert_eq!(
            t.iter()
                .map(|d| (d.taken, d.due, d.percent))
                .collect::<Vec<_>>(),
            vec![(0, 0, None), (1, 2, Some(50)), (0, 0, None)]
        );
    }

    #[test]
    fn a_fridge_is_in_range_only_inside_the_band_and_unknown_without_a_reading() {
        assert_eq!(in_range(Some(5.0), (2.0, 8.0)), Some(true));
        assert_eq!(in_range(Some(8.4), (2.0, 8.0)), Some(false));
        assert_eq!(in_range(None, (2.0, 8.0)), None);
    }
}
