//! The summary of a simulation written for people: what each patient's doses became, the fridge
//! at a glance, the dispenser, and the faults, with every time in the household's local zone.
//!
//! A caregiver or pharmacist trying the appliance reads this first; it must say what happened in
//! their words (not serialised maps), explain what looks alarming (the commissioning pull-down),
//! and collapse what repeats. Machines read `--json` instead.

use super::SimSummary;
use crate::dosing::adherence::Tally;
use crate::dosing::engine::Outcome;
use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use std::collections::BTreeMap;
use std::fmt::Write as _;

/// One time format for the whole summary: weekday, day, month and local time.
fn local(t: DateTime<Utc>, tz: Tz) -> String {
    t.with_timezone(&tz).format("%a %-d %b %H:%M").to_string()
}

/// The same, with the year, for the header.
fn dated(t: DateTime<Utc>, tz: Tz) -> String {
    t.with_timezone(&tz)
        .format("%a %-d %b %Y %H:%M")
        .to_string()
}

/// "1 homing", "3 homings", "no homings".
fn count(n: u64, one: &str, many: &str) -> String {
    match n {
        0 => format!("no {many}"),
        1 => format!("1 {one}"),
        n => format!("{n} {many}"),
    }
}

/// Minutes as people say them: "45 min", "1 h 56 min", "2 d 3 h".
fn span(minutes: f64) -> String {
    let m = minutes.round().max(0.0) as u64;
    match m {
        m if m < 60 => format!("{m} min"),
        m if m < 24 * 60 => match m % 60 {
            0 => format!("{} h", m / 60),
            r => format!("{} h {r} min", m / 60),
        },
        m => match (m / 60) % 24 {
            0 => format!("{} d", m / 1440),
            h => format!("{} d {h} h", m / 1440),
        },
    }
}

/// Doses that were meant to reach the patient and did, as a share (None: none were due).
pub fn adherence(t: &Tally) -> Option<f64> {
    let meant = t.taken + t.not_taken + t.missed + t.uncertain;
    (meant > 0).then(|| f64::from(t.taken) / f64::from(meant))
}

fn tally_words(t: &Tally) -> String {
    let mut parts = Vec::new();
    let mut add = |n: u32, what: &str| {
        if n > 0 {
            parts.push(format!("{n} {what}"));
        }
    };
    match t.taken_late {
        0 => add(t.taken, "taken"),
        late => add(t.taken, &format!("taken ({late} late)")),
    }
    add(t.not_taken, "not taken");
    add(t.missed, "missed");
    add(t.held, "held");
    add(t.skipped, "skipped");
    add(t.uncertain, "uncertain");
    add(t.failed, "not dispensed");
    if parts.is_empty() {
        "nothing recorded".into()
    } else {
        parts.join(", ")
    }
}

/// What an alert code means, for the people who get it.
fn alert_gloss(code: &str) -> &'static str {
    match code {
        "LATE_NOTICE" => "the patient was reminded again",
        "CAREGIVER_ALERT" => "the caregiver was told a dose was waiting",
        "NOT_TAKEN" => "the window closed with the dose in the cup",
        "NEEDS_READING" => "a reading was asked for before a held dose",
        "HELD_VITALS" => "a dose was held on a reading",
        _ => "",
    }
}

/// Renders the summary.
pub fn render(s: &SimSummary) -> String {
    let mut o = String::new();
    let tz = s.zone;
    let _ = writeln!(
        o,
        "medbox simulation on {}: {} from {} to {}",
        s.board,
        span(s.days * 1440.0),
        dated(s.start, tz),
        dated(s.end, tz)
    );
    let others = s.patient_zones.values().any(|z| *z != tz);
    let _ = writeln!(
        o,
        "times are local to {}{}; seed {}: the same seed plays the same run",
        tz.name(),
        if others {
            " (a patient in another zone has their dose times in their own)"
        } else {
            ""
        },
        s.seed
    );
    if let Some(sc) = &s.scenario {
        let _ = writeln!(o, "scenario: {sc}");
    }
    patients(&mut o, s);
    fridge(&mut o, s);
    dispenser(&mut o, s);
    faults(&mut o, s);
    let t = &s.truth;
    let _ = writeln!(o);
    let _ = writeln!(
        o,
        "model truth (the simulated physics, to compare with the records above): stock (air) {:.1}–{:.1} °C, {} below and {} above the range; vial {:.1}–{:.1} °C; {} released by the carousel",
        t.air_min,
        t.air_max,
        span(t.product_minutes_below),
        span(t.product_minutes_above),
        t.vial_min,
        t.vial_max,
        count(u64::from(t.units_released), "unit", "units"),
    );
    o
}

fn patients(o: &mut String, s: &SimSummary) {
    let _ = writeln!(o);
    let _ = writeln!(
        o,
        "patients (adherence: doses taken of those meant to reach the patient)"
    );
    let mut by_patient: BTreeMap<&str, Vec<&Tally>> = BTreeMap::new();
    for p in &s.patients {
        by_patient.entry(p).or_default();
    }
    for t in &s.adherence {
        by_patient.entry(&t.patient).or_default().push(t);
    }
    for (patient, tallies) in by_patient {
        let total = tallies.iter().fold(Tally::default(), |mut acc, t| {
            acc.taken += t.taken;
            acc.taken_late += t.taken_late;
            acc.not_taken += t.not_taken;
            acc.missed += t.missed;
            acc.uncertain += t.uncertain;
            acc
        });
        let head = match adherence(&total) {
            Some(a) => format!(
                "adherence {:.0} % ({} of {} taken)",
                a * 100.0,
                total.taken,
                total.taken + total.not_taken + total.missed + total.uncertain
            ),
            None => "no dose was due".into(),
        };
        let zone = s.patient_zones.get(patient).copied().unwrap_or(s.zone);
        let zone_note = if zone == s.zone {
            String::new()
        } else {
            format!("  (times in {})", zone.name())
        };
        let _ = writeln!(o, "  {patient}  {head}{zone_note}");
        for t in tallies {
            let due = if t.scheduled > 0 {
                format!("{} due", t.scheduled)
            } else {
                format!("{} as needed", t.as_needed)
            };
            let _ = writeln!(o, "    {:<16} {due}: {}", t.medication, tally_words(t));
            for n in s.dose_notes.iter().filter(|n| {
                n.patient == t.patient
                    && n.record.medication == t.medication
                    && matches!(n.record.outcome, Outcome::Held | Outcome::Missed)
            }) {
                let when = n.record.occurrence.unwrap_or(n.record.at);
                let what = match n.record.outcome {
                    Outcome::Held => "held",
                    _ => "missed",
                };
                let why = match (n.detail.is_empty(), &n.reason) {
                    (false, _) => n.detail.clone(),
                    (true, Some(code)) => code.clone(),
                    (true, None) => "no reason recorded".into(),
                };
                let _ = writeln!(o, "      {what} {}: {why}", local(when, zone));
            }
        }
    }
}

fn fridge(o: &mut String, s: &SimSummary) {
    let f = &s.fridge;
    let c = &s.coldchain;
    let (lo, hi) = (s.range.0, s.range.1);
    let _ = writeln!(o);
    let _ = writeln!(o, "fridge ({lo}–{hi} °C, from the controller's records)");
    let total =
        f.minutes_in_range + f.minutes_out_of_range + f.minutes_unknown + f.minutes_uncertain;
    let share = if total > 0.0 {
        100.0 * f.minutes_in_range / total
    } else {
        0.0
    };
    let _ = writeln!(
        o,
        "  in range {share:.1} % of the time: {} in, {} out, {} without a reading, {} with the probes disagreeing",
        span(f.minutes_in_range),
        span(f.minutes_out_of_range),
        span(f.minutes_unknown),
        span(f.minutes_uncertain)
    );
    // The first pull-down of a freshly commissioned cabinet is not a storage excursion.
    let commissioning = c.excursions.first().filter(|x| {
        s.commissioned && x.start <= s.start + chrono::Duration::minutes(5) && x.min > lo
    });
    if let Some(x) = commissioning {
        let reached = x.end.map_or(
            "had not reached the range when the run ended".to_string(),
            |e| {
                format!(
                    "reached the range at {} after {}",
                    local(e, s.zone),
                    span(x.minutes)
                )
            },
        );
        let _ = writeln!(
            o,
            "  commissioning: switched on warm ({:.1} °C) and {reached}; load stock only once it is in range",
            x.max
        );
    }
    let storage: Vec<_> = c
        .excursions
        .iter()
        .filter(|x| Some(x.id) != commissioning.map(|c| c.id))
        .collect();
    match storage.len() {
        0 => {
            let _ = writeln!(
                o,
                "  no excursions{}",
                if commissioning.is_some() {
                    " after that"
                } else {
                    ""
                }
            );
        }
        n => {
            let _ = writeln!(o, "  {}:", count(n as u64, "excursion", "excursions"));
        }
    }
    for x in storage {
        let end = x.end.map_or("still open".to_string(), |e| local(e, s.zone));
        let extreme = if x.min < lo {
            format!("lowest {:.1} °C", x.min)
        } else {
            format!("peak {:.1} °C", x.max)
        };
        let _ = writeln!(
            o,
            "    {} – {end} ({}), {extreme}, mean kinetic temperature {:.1} °C",
            local(x.start, s.zone),
            span(x.minutes),
            x.mkt
        );
    }
    for a in &c.alarms {
        let during = commissioning
            .filter(|x| a.since >= x.start && x.end.is_none_or(|e| a.since < e))
            .map_or("", |_| " (during the commissioning pull-down)");
        let _ = writeln!(
            o,
            "  alarm {} raised {}{during}{}",
            a.alarm.code(),
            local(a.at, s.zone),
            a.detail
                .as_deref()
                .map_or(String::new(), |d| format!(": {d}"))
        );
    }
    for a in &s.acknowledgements {
        let _ = writeln!(o, "  acknowledged: {a}");
    }
    for (name, p) in [
        ("vial probe (TMP117)", &f.vial),
        ("air probe (DS18B20)", &f.air),
    ] {
        let range = match (p.min, p.max, p.mean) {
            (Some(lo), Some(hi), Some(mean)) => {
                format!("{lo:.1}–{hi:.1} °C, mean {mean:.1} °C")
            }
            _ => "no valid reading".into(),
        };
        let _ = writeln!(
            o,
            "  {name:20} {range}; {}, {} rejected",
            count(p.readings, "reading", "readings"),
            p.rejected
        );
    }
    if !s.probe_faults.is_empty() {
        let faults: Vec<String> = s
            .probe_faults
            .iter()
            .map(|(k, n)| format!("{k} ×{n}"))
            .collect();
        let _ = writeln!(o, "  probe faults: {}", faults.join(", "));
    }
    for d in &s.probe_doubts {
        let what = match (d.doubt, d.evidence) {
            (Some(doubt), _) => format!("{}: {}", doubt.code(), doubt.control()),
            (None, _) => "the probes agree again".into(),
        };
        let _ = writeln!(o, "  probes at {}: {what}", local(d.at, s.zone));
    }
    let _ = writeln!(
        o,
        "  compressor started {} ({:.1} an hour) and ran {}; door open {}; mains off {}; fail-safe {}",
        count(f.compressor_starts, "time", "times"),
        f.compressor_starts_per_hour,
        span(f.compressor_on_minutes),
        span(f.door_open_minutes),
        span(f.mains_off_minutes),
        span(f.failsafe_minutes)
    );
    if let Some(mkt) = c.mkt {
        let _ = writeln!(o, "  mean kinetic temperature {mkt:.1} °C");
    }
    for c in &s.commands_rejected {
        let _ = writeln!(o, "  command refused: {c}");
    }
}

fn dispenser(o: &mut String, s: &SimSummary) {
    let d = &s.dispenser;
    let _ = writeln!(o);
    let _ = writeln!(o, "dispenser");
    let homed = match d.homings {
        0 => "never homed".to_string(),
        1 => "homed once".to_string(),
        n => format!("homed {n} times"),
    };
    let _ = writeln!(
        o,
        "  carousel {homed}; {} released ({}); {}; {}",
        count(u64::from(d.doses_released), "dose", "doses"),
        count(u64::from(d.dose_units_released), "unit", "units"),
        count(u64::from(d.tray_pickups), "cup pickup", "cup pickups"),
        count(
            u64::from(d.button_presses),
            "button press",
            "button presses"
        ),
    );
    if d.dispenses > 0 || d.lost_position > 0 {
        let _ = writeln!(
            o,
            "  maintenance: {} ({} seen falling); lost its position {}",
            count(u64::from(d.dispenses), "test dispense", "test dispenses"),
            count(u64::from(d.units_seen), "unit", "units"),
            count(u64::from(d.lost_position), "time", "times"),
        );
    }
    for (code, n) in &d.dose_alerts {
        let gloss = alert_gloss(code);
        let gloss = if gloss.is_empty() {
            String::new()
        } else {
            format!(" ({gloss})")
        };
        let _ = writeln!(o, "  alert {code} ×{n}{gloss}");
    }
    if !d.stock.is_empty() {
        let slots: Vec<String> = d
            .stock
            .iter()
            .map(|(slot, n)| format!("slot {slot}: {n}"))
            .collect();
        let _ = writeln!(o, "  stock in units: {}", slots.join(", "));
        let alerts = if d.stock_alerts.is_empty() {
            "no stock alerts".to_string()
        } else {
            d.stock_alerts
                .iter()
                .map(|(k, n)| format!("{k} ×{n}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let _ = writeln!(
            o,
            "  {} recorded; {alerts}",
            count(u64::from(d.refills), "refill", "refills")
        );
    }
    for (slot, units) in &d.stray_drops {
        let _ = writeln!(o, "  STRAY_DROP: {} fell from slot {slot} while the carousel was positioning: check the cup", count(u64::from(*units), "unit", "units"));
    }
    if let Some(n) = s.outbox_before_uplink {
        match &s.uplink {
            None => {
                let _ = writeln!(o, "  outbox: {n} messages kept for the uplink (no broker given; --mqtt mqtt://127.0.0.1:1883 sends them)");
            }
            Some(u) => {
                let _ = writeln!(
                    o,
                    "  uplink: {} acknowledged by the broker, {} left in the outbox, {}, {}, {}",
                    count(u.acked, "message", "messages"),
                    u.left,
                    count(u.connects, "connect", "connects"),
                    count(u.failures, "failed attempt", "failed attempts"),
                    count(u.outages, "broker outage", "broker outages")
                );
            }
        }
    }
}

/// Device faults, each distinct one once with how often and when.
fn faults(o: &mut String, s: &SimSummary) {
    let mut seen: Vec<(&str, u32, DateTime<Utc>, DateTime<Utc>)> = Vec::new();
    for (at, fault) in &s.device_fault_log {
        match seen.iter_mut().find(|(f, ..)| f == fault) {
            Some(entry) => {
                entry.1 += 1;
                entry.3 = *at;
            }
            None => seen.push((fault, 1, *at, *at)),
        }
    }
    if seen.is_empty() {
        return;
    }
    let _ = writeln!(o);
    let _ = writeln!(o, "device faults");
    for (fault, n, first, last) in seen {
        let when = if n == 1 {
            local(first, s.zone)
        } else {
            format!(
                "{n} times, {} to {}",
                local(first, s.zone),
                local(last, s.zone)
            )
        };
        let _ = writeln!(o, "  {fault} ({when})");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_read_as_people_say_them() {
        assert_eq!(span(45.0), "45 min");
        assert_eq!(span(116.0), "1 h 56 min");
        assert_eq!(span(120.0), "2 h");
        assert_eq!(span(2.0 * 1440.0), "2 d");
        assert_eq!(span(1440.0 + 180.0), "1 d 3 h");
    }

    #[test]
    fn counts_agree_with_their_number() {
        assert_eq!(count(1, "homing", "homings"), "1 homing");
        assert_eq!(count(2, "homing", "homings"), "2 homings");
        assert_eq!(count(0, "homing", "homings"), "no homings");
    }

    #[test]
    fn adherence_counts_only_doses_meant_to_reach_the_patient() {
        let t = Tally {
            taken: 8,
            not_taken: 1,
            missed: 1,
            held: 3,
            skipped: 2,
            ..Tally::default()
        };
        assert_eq!(adherence(&t), Some(0.8));
        assert_eq!(adherence(&Tally::default()), None);
    }

    #[test]
    fn local_times_carry_the_zone_offset() {
        let t = DateTime::parse_from_rfc3339("2026-03-02T07:00:00Z")
            .expect("time")
            .with_timezone(&Utc);
        assert_eq!(local(t, chrono_tz::Europe::Berlin), "Mon 2 Mar 08:00");
    }
}
