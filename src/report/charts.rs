//! The report's SVG charts: a daily min/max envelope for the whole period (a short excursion is
//! a bar that crosses the band, never lost in a month of compressor cycles), and one chart per
//! notable day with both probes, the band, excursions and event markers (door, mains, probe
//! faults, alarms), each chart with its legend. Times are the pharmacist's local time.

use super::{esc, StoredReading};
use crate::coldchain::monitor::DaySummary;
use chrono::{DateTime, NaiveDate, Utc};
use chrono_tz::Tz;
use std::fmt::Write;

const W: f64 = 900.0;
const LEFT: f64 = 50.0;
const RIGHT: f64 = 10.0;

/// Colours, shared by charts and legends.
const BAND: &str = "#dff3e4";
const EXCURSION: &str = "#f8d0d0";
const VIAL: &str = "#1f4e9c";
const AIR: &str = "#9aa7b8";
const DOOR: &str = "#ef8f00";
const MAINS: &str = "#555";
const FAULT: &str = "#7b1fa2";
const ALARM: &str = "#c62828";

/// Something that happened at an instant, marked on a day's chart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Marker {
    /// A probe fault was reported.
    ProbeFault,
    /// An alarm was raised.
    Alarm,
}

/// What a day's chart shows beside the readings.
#[derive(Clone, Debug, Default)]
pub struct DayEvents {
    /// Excursions (start, end) overlapping the day.
    pub excursions: Vec<(DateTime<Utc>, DateTime<Utc>)>,
    /// Instants of probe faults and alarms.
    pub markers: Vec<(DateTime<Utc>, Marker)>,
}

fn legend(items: &[(&str, &str)]) -> String {
    let mut s = String::from("<p class=legend>");
    for (colour, what) in items {
        let _ = write!(
            s,
            r#"<span><svg width="14" height="10" aria-hidden="true"><rect width="14" height="10" fill="{colour}"/></svg> {}</span> "#,
            esc(what)
        );
    }
    s.push_str("</p>");
    s
}

/// Scale from a value range to the chart's height.
struct Scale {
    lo: f64,
    hi: f64,
    top: f64,
    bottom: f64,
}

impl Scale {
    fn new(band: (f64, f64), values: impl Iterator<Item = f64>, top: f64, bottom: f64) -> Self {
        let (mut lo, mut hi) = (band.0 - 1.0, band.1 + 1.0);
        for v in values {
            lo = lo.min(v);
            hi = hi.max(v);
        }
        Self {
            lo: lo.floor(),
            hi: hi.ceil(),
            top,
            bottom,
        }
    }

    fn y(&self, v: f64) -> f64 {
        self.top + (self.hi - v) / (self.hi - self.lo) * (self.bottom - self.top)
    }

    /// The band, its limits labelled, and the axis extremes.
    fn frame(&self, svg: &mut String, band: (f64, f64)) {
        let _ = write!(
            svg,
            r#"<rect x="{LEFT}" y="{:.1}" width="{:.1}" height="{:.1}" fill="{BAND}"/>"#,
            self.y(band.1),
            W - LEFT - RIGHT,
            self.y(band.0) - self.y(band.1)
        );
        for v in [band.0, band.1] {
            let _ = write!(
                svg,
                r##"<line x1="{LEFT}" x2="{:.1}" y1="{y:.1}" y2="{y:.1}" stroke="#2e7d32" stroke-dasharray="4 3"/><text x="4" y="{:.1}" font-size="11">{v:.0} °C</text>"##,
                W - RIGHT,
                self.y(v) + 4.0,
                y = self.y(v)
            );
        }
        for v in [self.lo, self.hi] {
            let _ = write!(
                svg,
                r#"<text x="4" y="{:.1}" font-size="11">{v:.0}</text>"#,
                self.y(v) + 4.0
            );
        }
    }
}

/// The whole period, one bar per local day from its lowest to its highest reading: red where
/// the day left the range.
pub fn envelope(days: &[DaySummary], band: (f64, f64), tz: Tz) -> String {
    let days: Vec<&DaySummary> = days
        .iter()
        .filter(|d| d.min.is_some() && d.max.is_some())
        .collect();
    if days.is_empty() {
        return "<p>No day with readings in this period.</p>".into();
    }
    let (h, top, bottom) = (240.0, 14.0, 200.0);
    let scale = Scale::new(
        band,
        days.iter().flat_map(|d| [d.min, d.max]).flatten(),
        top,
        bottom,
    );
    let slot = (W - LEFT - RIGHT) / days.len() as f64;
    let mut svg = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {W} {h}" width="100%" role="img" aria-label="Daily lowest and highest temperature">"#
    );
    scale.frame(&mut svg, band);
    let every = (days.len() / 12).max(1);
    for (i, d) in days.iter().enumerate() {
        let (Some(lo), Some(hi)) = (d.min, d.max) else {
            continue;
        };
        let out = lo < band.0 || hi > band.1;
        let x = LEFT + slot * i as f64 + slot * 0.2;
        let _ = write!(
            svg,
            r#"<rect x="{x:.1}" y="{:.1}" width="{:.1}" height="{:.1}" fill="{}"><title>{}: {lo:.1}–{hi:.1} °C</title></rect>"#,
            scale.y(hi),
            (slot * 0.6).max(1.0),
            (scale.y(lo) - scale.y(hi)).max(1.5),
            if out { ALARM } else { VIAL },
            d.date
        );
        if i % every == 0 {
            let _ = write!(
                svg,
                r#"<text x="{:.1}" y="{:.1}" font-size="10" text-anchor="middle">{}</text>"#,
                x + slot * 0.3,
                bottom + 14.0,
                d.date.format("%d %b")
            );
        }
    }
    svg.push_str("</svg>");
    format!(
        "<figure><figcaption>Each day's lowest and highest product temperature ({}, local days)</figcaption>{svg}{}</figure>",
        esc(tz.name()),
        legend(&[
            (BAND, "acceptable range"),
            (VIAL, "day stayed in range"),
            (ALARM, "day left the range"),
        ])
    )
}

/// One local day: both probes, the band, excursions, door and mains spans, faults and alarms.
pub fn day(
    date: NaiveDate,
    readings: &[&StoredReading],
    band: (f64, f64),
    events: &DayEvents,
    tz: Tz,
) -> String {
    let Some(start) = crate::dosing::when::resolve_local(tz, date.and_time(chrono::NaiveTime::MIN))
    else {
        return String::new();
    };
    let end = date
        .succ_opt()
        .and_then(|n| crate::dosing::when::resolve_local(tz, n.and_time(chrono::NaiveTime::MIN)))
        .unwrap_or(start + chrono::Duration::days(1));
    let (h, top, bottom) = (250.0, 14.0, 196.0);
    let values = readings.iter().flat_map(|r| [r.vial, r.air]).flatten();
    let scale = Scale::new(band, values, top, bottom);
    let span = (end - start).num_seconds().max(1) as f64;
    let x = |t: DateTime<Utc>| {
        LEFT + ((t - start).num_seconds() as f64 / span).clamp(0.0, 1.0) * (W - LEFT - RIGHT)
    };
    let mut svg = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {W} {h}" width="100%" role="img" aria-label="Temperature on {date}">"#
    );
    scale.frame(&mut svg, band);
    for (s, e) in &events.excursions {
        let (xs, xe) = (x(*s), x(*e));
        let _ = write!(
            svg,
            r#"<rect x="{xs:.1}" y="{top}" width="{:.1}" height="{:.1}" fill="{EXCURSION}" opacity="0.8"/>"#,
            (xe - xs).max(1.5),
            bottom - top
        );
    }
    // Door and mains as strips under the plot, so they never hide a reading.
    let strip = |svg: &mut String, y: f64, colour: &str, on: &dyn Fn(&StoredReading) -> bool| {
        let mut open: Option<DateTime<Utc>> = None;
        let close = |svg: &mut String, from: DateTime<Utc>, to: DateTime<Utc>| {
            let _ = write!(
                svg,
                r#"<rect x="{:.1}" y="{y}" width="{:.1}" height="6" fill="{colour}"/>"#,
                x(from),
                (x(to) - x(from)).max(2.0)
            );
        };
        for r in readings {
            match (on(r), open) {
                (true, None) => open = Some(r.at),
                (false, Some(from)) => {
                    close(svg, from, r.at);
                    open = None;
                }
                _ => {}
            }
        }
        if let (Some(from), Some(last)) = (open, readings.last()) {
            close(svg, from, last.at);
        }
    };
    strip(&mut svg, bottom + 4.0, DOOR, &|r| r.door_open);
    strip(&mut svg, bottom + 12.0, MAINS, &|r| !r.mains);
    for (colour, pick) in [
        (
            AIR,
            &(|r: &StoredReading| r.air) as &dyn Fn(&StoredReading) -> Option<f64>,
        ),
        (VIAL, &|r: &StoredReading| r.vial),
    ] {
        let mut path = String::new();
        for r in readings {
            match pick(r) {
                Some(v) => {
                    let _ = write!(
                        path,
                        "{}{:.1},{:.1}",
                        if path.is_empty() || path.ends_with('|') {
                            "M"
                        } else {
                            " L"
                        },
                        x(r.at),
                        scale.y(v)
                    );
                }
                // A gap (no valid reading) breaks the line instead of bridging it.
                None if !path.is_empty() => path.push('|'),
                None => {}
            }
        }
        let path = path.replace('|', " ");
        let _ = write!(
            svg,
            r#"<path d="{path}" fill="none" stroke="{colour}" stroke-width="1.3"/>"#
        );
    }
    for (at, m) in &events.markers {
        let (colour, label, y) = match m {
            Marker::ProbeFault => (FAULT, "probe fault", top + 2.0),
            Marker::Alarm => (ALARM, "alarm", top + 12.0),
        };
        let xx = x(*at);
        let _ = write!(
            svg,
            r#"<path d="M{:.1},{:.1} L{:.1},{:.1} L{xx:.1},{:.1} Z" fill="{colour}"><title>{label} at {}</title></path>"#,
            xx - 5.0,
            y - 6.0,
            xx + 5.0,
            y - 6.0,
            y + 3.0,
            at.with_timezone(&tz).format("%H:%M")
        );
    }
    for hour in (0..=24).step_by(3) {
        let t = start + chrono::Duration::hours(hour);
        let _ = write!(
            svg,
            r#"<text x="{:.1}" y="{:.1}" font-size="10" text-anchor="middle">{}</text>"#,
            x(t),
            bottom + 34.0,
            if hour == 24 {
                "24:00".to_string()
            } else {
                t.with_timezone(&tz).format("%H:%M").to_string()
            }
        );
    }
    svg.push_str("</svg>");
    format!(
        "<figure><figcaption>{} (local time, {})</figcaption>{svg}{}</figure>",
        date.format("%A %-d %B %Y"),
        esc(tz.name()),
        legend(&[
            (VIAL, "buffered probe (the product)"),
            (AIR, "air probe"),
            (BAND, "acceptable range"),
            (EXCURSION, "excursion"),
            (DOOR, "door open"),
            (MAINS, "mains off"),
            (FAULT, "probe fault"),
            (ALARM, "alarm raised"),
        ])
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reading(min: i64, v: f64, door: bool) -> StoredReading {
        StoredReading {
            at: "2026-03-02T23:00:00Z".parse::<DateTime<Utc>>().unwrap()
                + chrono::Duration::minutes(min),
            vial: Some(v),
            air: Some(v),
            control: Some(v),
            doubt: None,
            door_open: door,
            mains: true,
        }
    }

    #[test]
    fn a_short_excursion_is_a_red_bar_in_the_envelope() {
        let day = |d: u32, lo: f64, hi: f64| DaySummary {
            date: NaiveDate::from_ymd_opt(2026, 3, d).unwrap(),
            min: Some(lo),
            max: Some(hi),
            mean: Some(5.0),
            mkt: Some(5.0),
            minutes_in_range: 1440.0,
            minutes_below: 0.0,
            minutes_above: 0.0,
            minutes_unknown: 0.0,
            minutes_uncertain: 0.0,
        };
        let svg = envelope(
            &[day(2, 3.0, 7.0), day(3, 3.1, 9.4), day(4, 3.0, 6.9)],
            (2.0, 8.0),
            chrono_tz::UTC,
        );
        assert_eq!(
            svg.matches(&format!("fill=\"{ALARM}\">")).count(),
            1,
            "{svg}"
        );
        assert!(svg.contains("day left the range"), "legend: {svg}");
    }

    #[test]
    fn a_days_chart_marks_the_door_and_alarms_in_local_time() {
        let rs: Vec<StoredReading> = (0..1440)
            .map(|m| reading(m, 5.0, (600..610).contains(&m)))
            .collect();
        let refs: Vec<&StoredReading> = rs.iter().collect();
        let events = DayEvents {
            excursions: vec![],
            markers: vec![(rs[700].at, Marker::Alarm)],
        };
        let date = NaiveDate::from_ymd_opt(2026, 3, 3).unwrap();
        let svg = day(date, &refs, (2.0, 8.0), &events, chrono_tz::Europe::Berlin);
        assert!(
            svg.contains(&format!("fill=\"{DOOR}\"/>")),
            "door strip: {svg}"
        );
        // 700 minutes after 23:00 UTC (midnight in Berlin) is 11:40 there.
        assert!(svg.contains("<title>alarm at 11:40</title>"), "{svg}");
        assert!(
            svg.contains("Tuesday 3 March 2026 (local time, Europe/Berlin)"),
            "{svg}"
        );
    }
}
