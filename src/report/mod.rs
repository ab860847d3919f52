//! The printable report for pharmacists: one self-contained HTML page (inline CSS and SVG, no
//! scripts, no external resources) built from the database.

pub mod charts;
pub mod detail;

use crate::coldchain::analysis::AnalysisReport;
use crate::coldchain::arbiter::Doubt;
use crate::coldchain::monitor::Observation;
use crate::coldchain::ColdChainConfig;
use crate::store::audit::{self, Filter, Row, Verification};
use crate::store::StoreError;
use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use rusqlite::{Connection, OptionalExtension};
use std::fmt::Write;

/// One stored reading.
#[derive(Clone, Debug, PartialEq)]
pub struct StoredReading {
    /// When.
    pub at: DateTime<Utc>,
    /// Buffered probe.
    pub vial: Option<f64>,
    /// Air probe.
    pub air: Option<f64>,
    /// The product estimate ([`crate::coldchain::monitor::estimate`]).
    pub control: Option<f64>,
    /// Set while the probes disagreed.
    pub doubt: Option<Doubt>,
    /// Door open.
    pub door_open: bool,
    /// Mains present.
    pub mains: bool,
}

/// Stored readings in a time range, in the order the appliance stored them, split into those in
/// time order and those whose time is not after the one stored before them (the clock stepped
/// back, a restarted simulation, or rows inserted by hand): those are shown and counted, never
/// silently dropped, and kept out of the monitor, which needs time order.
#[derive(Clone, Debug, Default)]
pub struct Readings {
    /// In time order.
    pub ordered: Vec<StoredReading>,
    /// Out of time order, with the time of the reading stored before them.
    pub out_of_order: Vec<(StoredReading, DateTime<Utc>)>,
    /// Rows whose time cannot be read.
    pub unreadable: u64,
}

/// Reads stored readings in a time range (see [`Readings`]).
pub fn readings(
    conn: &Connection,
    from: Option<DateTime<Utc>>,
    to: Option<DateTime<Utc>>,
) -> Result<Readings, StoreError> {
    let fmt = |t: DateTime<Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let from = from.map(fmt).unwrap_or_default();
    let to = to.map(fmt).unwrap_or_else(|| "9999".into());
    let mut stmt = conn.prepare(
        "SELECT utc, vial, air, door_open, mains, control, doubt FROM readings WHERE utc >= ?1 AND utc < ?2 ORDER BY id",
    )?;
    let rows = stmt
        .query_map([from, to], |r| {
            let utc: String = r.get(0)?;
            Ok((
                utc,
                r.get::<_, Option<f64>>(1)?,
                r.get::<_, Option<f64>>(2)?,
                r.get::<_, bool>(3)?,
                r.get::<_, bool>(4)?,
                r.get::<_, Option<f64>>(5)?,
                r.get::<_, Option<String>>(6)?,
            ))
        })?
        .collect::<Result<Vec<_>, _>>()?;
    let mut out = Readings {
        ordered: Vec::with_capacity(rows.len()),
        ..Readings::default()
    };
    for (utc, vial, air, door_open, mains, control, doubt) in rows {
        let Ok(at) = DateTime::parse_from_rfc3339(&utc) else {
            out.unreadable += 1;
            continue;
        };
        let at = at.with_timezone(&Utc);
        let doubt = doubt.as_deref().and_then(Doubt::from_code);
        let reading = StoredReading {
            at,
            vial,
            air,
            control: crate::coldchain::monitor::estimate(vial, control, doubt),
            doubt,
            door_open,
            mains,
        };
        match out.ordered.last() {
            Some(last) if at <= last.at => {
                let before = last.at;
                out.out_of_order.push((reading, before));
            }
            _ => out.ordered.push(reading),
        }
    }
    Ok(out)
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A row's time to the second in the report's zone, unbreakable, as a pharmacist reads it (the
/// exact UTC value is in the export).
fn when(utc: &str, tz: Tz) -> String {
    let shown = DateTime::parse_from_rfc3339(utc)
        .map(|t| t.with_timezone(&tz).format("%Y-%m-%d %H:%M:%S").to_string())
        .unwrap_or_else(|_| utc.to_string());
    format!("<span class=t>{}</span>", esc(&shown))
}

fn f2(v: Option<f64>) -> String {
    v.map_or("—".into(), |v| format!("{v:.2}"))
}

fn verification_html(v: &Verification, conn: &Connection, tz: Tz) -> Result<String, StoreError> {
    use crate::store::readings::{self, SealCheck};
    let chain = chain_html(v, tz);
    if !matches!(v, Verification::Intact { .. }) {
        return Ok(chain);
    }
    // The chart and tables below come from the readings: say whether their seals hold.
    let seals = match readings::check(conn)? {
        SealCheck::Intact {
            seals,
            sealed,
            unsealed,
        } => format!(
            r#"<p class="ok">Readings intact: {sealed} readings under {seals} seals in the chain; {unsealed} newer than the last seal.</p>"#
        ),
        SealCheck::Broken { seq, detail } => format!(
            r#"<p class="bad">READINGS ALTERED: the seal in row {seq} no longer matches. {}</p>"#,
            esc(&detail)
        ),
    };
    Ok(chain + &seals)
}

fn chain_html(v: &Verification, tz: Tz) -> String {
    let local = |t: Option<&str>| {
        t.map_or("—".to_string(), |t| {
            DateTime::parse_from_rfc3339(t).map_or(t.to_string(), |t| {
                t.with_timezone(&tz)
                    .format("%Y-%m-%d %H:%M:%S %Z")
                    .to_string()
            })
        })
    };
    match v {
        Verification::Intact {
            count,
            head,
            first_utc,
            last_utc,
            checkpoints,
        } => format!(
            r#"<p class="ok">Audit chain intact: {count} rows from {} to {}, head <code>{}</code>, {checkpoints} stored checkpoints match.</p>"#,
            esc(&local(first_utc.as_deref())),
            esc(&local(last_utc.as_deref())),
            esc(head)
        ),
        Verification::Broken {
            seq,
            kind,
            last_good,
            detail,
        } => format!(
            r#"<p class="bad">AUDIT CHAIN BROKEN at row {seq} ({kind:?}); last good row {}. {}</p>"#,
            last_good.map_or("none".into(), |s| s.to_string()),
            esc(detail)
        ),
    }
}

/// Whether the report's cold-chain rules are the ones the appliance recorded it ran with.
fn rules_html(conn: &Connection, cfg: &ColdChainConfig) -> Result<String, StoreError> {
    let recorded: Option<String> = conn
        .query_row(
            "SELECT json_extract(body, '$.new') FROM audit WHERE kind = 'config.change' \
             AND subject = 'config:coldchain' ORDER BY seq DESC LIMIT 1",
            [],
            |r| r.get(0),
        )
        .optional()?
        .flatten();
    let mine = cfg.fingerprint();
    let short = |f: &str| f.chars().take(12).collect::<String>();
    Ok(match recorded {
        Some(r) if r == mine => format!(
            r#"<p class="ok">Cold-chain rules: the ones the appliance last recorded (<code>{}</code>).</p>"#,
            short(&mine)
        ),
        Some(r) => format!(
            r#"<p class="bad">COLD-CHAIN RULES DIFFER from the ones the appliance last recorded (<code>{}</code>, this report <code>{}</code>): excursions and alarms below are recomputed with other thresholds. Pass the appliance's own config with <code>--config</code>.</p>"#,
            short(&r),
            short(&mine)
        ),
        None => format!(
            r#"<p>Cold-chain rules <code>{}</code>; the database records none to compare with.</p>"#,
            short(&mine)
        ),
    })
}

/// Readings stored out of time order: listed and counted, never silently dropped.
fn out_of_order_html(all: &Readings) -> String {
    let mut h = String::new();
    if all.unreadable > 0 {
        let _ = write!(
            h,
            r#"<p class="bad">{} stored readings have a time that cannot be read; they are left out of the analysis.</p>"#,
            all.unreadable
        );
    }
    if all.out_of_order.is_empty() {
        return h;
    }
    let _ = write!(
        h,
        r#"<p class="bad">{} stored readings are out of time order (the clock stepped back, or rows were inserted): they are listed here and left out of the analysis, which needs time order.</p><table><tr><th class=l>reading time</th><th class=l>stored after a reading of</th><th>vial °C</th><th>air °C</th></tr>"#,
        all.out_of_order.len()
    );
    for (r, before) in all.out_of_order.iter().take(100) {
        let _ = write!(
            h,
            "<tr><td class=l>{}</td><td class=l>{}</td><td>{}</td><td>{}</td></tr>",
            r.at.format("%Y-%m-%d %H:%M:%S UTC"),
            before.format("%Y-%m-%d %H:%M:%S UTC"),
            f2(r.vial),
            f2(r.air)
        );
    }
    if all.out_of_order.len() > 100 {
        let _ = write!(
            h,
            "<tr><td class=l colspan=4>… and {} more</td></tr>",
            all.out_of_order.len() - 100
        );
    }
    h.push_str("</table>");
    h
}

/// The stored readings of `[from, to)` and the cold-chain monitor's analysis of them, with
/// `cfg`'s rules: the same monitor, fed the same way, as the live controller and
/// `coldchain stats`.
pub fn analysis(
    conn: &Connection,
    cfg: &ColdChainConfig,
    from: Option<DateTime<Utc>>,
    to: Option<DateTime<Utc>>,
) -> Result<(Readings, AnalysisReport), StoreError> {
    analysis_in(conn, cfg, from, to, chrono_tz::UTC)
}

/// [`analysis`] with the daily records on `tz`'s days.
pub fn analysis_in(
    conn: &Connection,
    cfg: &ColdChainConfig,
    from: Option<DateTime<Utc>>,
    to: Option<DateTime<Utc>>,
    tz: Tz,
) -> Result<(Readings, AnalysisReport), StoreError> {
    let all = readings(conn, from, to)?;
    let obs: Vec<Observation> = all
        .ordered
        .iter()
        .map(|r| Observation {
            at: r.at,
            buffered: r.control,
            any_valid: r.vial.is_some() || r.air.is_some(),
            doubt: r.doubt,
            door_open: Some(r.door_open),
            mains: Some(r.mains),
        })
        .collect();
    let mut a = crate::coldchain::analysis::analyse_in(cfg, obs, tz);
    a.readings_out_of_order = all.out_of_order.len() as u64;
    Ok((all, a))
}

/// Builds the report for `[from, to)`, its times and days in `tz`.
pub fn render(
    conn: &Connection,
    key: &audit::ChainKey,
    cfg: &ColdChainConfig,
    (from, to): (Option<DateTime<Utc>>, Option<DateTime<Utc>>),
    tz: Tz,
    generated: DateTime<Utc>,
) -> Result<String, StoreError> {
    let stored_checkpoints: Vec<audit::CheckpointRef> = crate::store::checkpoint::all(conn)?
        .into_iter()
        .map(|c| audit::CheckpointRef {
            seq: c.seq,
            head: c.head,
        })
        .collect();
    let verification = audit::verify_store(conn, key, &stored_checkpoints, &Default::default())?;
    let (all, a) = analysis_in(conn, cfg, from, to, tz)?;
    let rs = &all.ordered;
    let rows = audit::rows(
        conn,
        &Filter {
            from,
            to,
            ..Default::default()
        },
    )?;
    let band = (cfg.range_min.0, cfg.range_max.0);

    let mut h = String::new();
    let period = match (rs.first(), rs.last()) {
        (Some(f), Some(l)) => format!(
            "{} – {}",
            f.at.with_timezone(&tz).format("%Y-%m-%d %H:%M %Z"),
            l.at.with_timezone(&tz).format("%Y-%m-%d %H:%M %Z")
        ),
        _ => "no readings".into(),
    };
    let _ = write!(
        h,
        r#"<!doctype html><html lang="en"><head><meta charset="utf-8"><title>medbox report</title><style>
body{{font-family:system-ui,sans-serif;margin:2em;color:#222;max-width:60em}}
h1{{font-size:1.5em}} .t{{white-space:nowrap}} h2{{font-size:1.15em;border-bottom:1px solid #ccc;margin-top:1.6em}}
table{{border-collapse:collapse;font-size:.9em;margin-bottom:.8em}} td,th{{border:1px solid #bbb;padding:.25em .5em;text-align:right}}
th{{background:#f0f0f0}} td.l,th.l{{text-align:left}} .ok{{color:#1b5e20;font-weight:600}} .bad{{color:#b71c1c;font-weight:700}}
figure{{margin:0 0 1em}} figcaption{{font-weight:600;margin-bottom:.3em}} code{{font-size:.8em;word-break:break-all}}
.legend{{font-size:.8em;margin:.2em 0 0}} .legend span{{margin-right:1em;white-space:nowrap}}
.review{{margin-top:2em;break-inside:avoid}} .review td{{text-align:left;height:2.2em;min-width:14em}}
@page{{size:A4;margin:14mm 12mm 16mm;@bottom-right{{content:"page " counter(page) " of " counter(pages);font:9pt system-ui,sans-serif}}@bottom-left{{content:"medbox report, {period_short}";font:9pt system-ui,sans-serif}}}}
@media print{{body{{margin:0;max-width:none}} h2{{break-after:avoid}} table,figure{{break-inside:avoid}}}}
</style></head><body>
<h1>medbox cold-chain and dispensing report</h1>
<p>Period: {period}. Times and days are local to <b>{zone}</b>; the exported records keep UTC. Generated {}. Range {:.1}–{:.1} °C; MKT with ΔH/R = 10 000 K.</p>
{}{}{}"#,
        generated.with_timezone(&tz).format("%Y-%m-%d %H:%M %Z"),
        band.0,
        band.1,
        verification_html(&verification, conn, tz)?,
        rules_html(conn, cfg)?,
        out_of_order_html(&all),
        period_short = esc(&period),
        zone = esc(tz.name()),
    );
    let _ = write!(
        h,
        "<h2>Summary</h2><table><tr><th class=l>valid readings</th><td>{}</td><th class=l>min</th><td>{} °C</td><th class=l>max</th><td>{} °C</td><th class=l>mean</th><td>{} °C</td><th class=l>MKT</th><td>{} °C</td></tr>\
<tr><th class=l>in range</th><td>{:.0} min</td><th class=l>out of range</th><td>{:.0} min</td><th class=l>unknown</th><td>{:.0} min</td><th class=l>uncertain (probes disagreed)</th><td{}>{:.0} min</td><th class=l>excursions</th><td>{}</td><th class=l>alarms</th><td>{}</td></tr></table>",
        a.readings, f2(a.min), f2(a.max), f2(a.mean), f2(a.mkt), a.minutes_in_range, a.minutes_out_of_range, a.minutes_unknown,
        if a.minutes_uncertain > 0.0 { " class=bad" } else { "" }, a.minutes_uncertain, a.excursions.len(), a.alarms.len()
    );
    h.push_str("<h2>Temperature</h2>");
    h.push_str(&charts::envelope(&a.days, band, tz));
    h.push_str(&notable_days(rs, &a, &rows, band, tz));
    let _ = write!(
        h,
        "<h2>Daily record</h2><table><tr><th class=l>day ({})</th>",
        esc(tz.name())
    );
    h.push_str("<th>min °C</th><th>max °C</th><th>mean °C</th><th>MKT °C</th><th>in range min</th><th>below min</th><th>above min</th><th>unknown min</th><th>uncertain min</th></tr>");
    for d in &a.days {
        let _ = write!(
            h,
            "<tr><td class=l>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{:.0}</td><td>{:.0}</td><td>{:.0}</td><td>{:.0}</td><td>{:.0}</td></tr>",
            d.date, f2(d.min), f2(d.max), f2(d.mean), f2(d.mkt), d.minutes_in_range, d.minutes_below, d.minutes_above, d.minutes_unknown, d.minutes_uncertain
        );
    }
    h.push_str("</table><h2>Excursions</h2>");
    if a.excursions.is_empty() {
        h.push_str("<p>No excursion in this period.</p>");
    } else {
        h.push_str("<table><tr><th class=l>#</th><th class=l>start</th><th class=l>end</th><th>minutes</th><th class=l>furthest out</th><th>MKT °C</th><th>24 h MKT °C</th></tr>");
        for x in &a.excursions {
            // The reading furthest from the range, on the side it left by: a minimum inside
            // the range says nothing about a warm excursion.
            let furthest = if x.min < band.0 {
                format!("lowest {:.2} °C", x.min)
            } else {
                format!("peak {:.2} °C", x.max)
            };
            let local =
                |t: DateTime<Utc>| t.with_timezone(&tz).format("%Y-%m-%d %H:%M").to_string();
            let _ = write!(
                h,
                "<tr><td class=l>{}</td><td class=l>{}</td><td class=l>{}</td><td>{:.0}</td><td class=l>{furthest}</td><td>{:.2}</td><td>{:.2}</td></tr>",
                x.id,
                local(x.start),
                x.end.map_or("still open".into(), local),
                x.minutes, x.mkt, x.mkt_24h
            );
        }
        h.push_str("</table>");
    }
    h.push_str("<h2>Alarms, acknowledgements and faults</h2>");
    let notable: Vec<&Row> = rows
        .iter()
        .filter(|r| {
            r.kind.starts_with("coldchain.alarm")
                || r.kind == "coldchain.probe_fault"
                || r.kind == "coldchain.probe_doubt"
                || r.kind == "device.fault"
                || r.kind == "command.rejected"
        })
        .collect();
    if notable.is_empty() {
        h.push_str("<p>None in this period.</p>");
    } else {
        let _ = write!(h, "<table><tr><th class=l>row</th><th class=l>time ({})</th><th class=l>kind</th><th class=l>subject</th><th class=l>actor</th><th class=l>reason / detail</th></tr>", esc(tz.name()));
        for g in repeats(&notable) {
            let first = g.first;
            let (row, time) = if g.count > 1 {
                (
                    format!("{}–{}", first.seq, g.last.seq),
                    format!(
                        "{} – {}<br><small>{} times</small>",
                        when(&first.utc, tz),
                        when(&g.last.utc, tz),
                        g.count
                    ),
                )
            } else {
                (first.seq.to_string(), when(&first.utc, tz))
            };
            let _ = write!(
                h,
                "<tr><td class=l>{row}</td><td class=l>{time}</td><td class=l>{}</td><td class=l>{}</td><td class=l>{}</td><td class=l>{}</td></tr>",
                esc(&first.kind), esc(&first.subject), esc(&first.actor), esc(&g.detail)
            );
        }
        h.push_str("</table>");
    }
    adherence(&mut h, &rows);
    inventory(&mut h, conn, &rows, tz)?;
    h.push_str("<h2>Dispenser mechanics</h2>");
    let mech: Vec<&Row> = rows
        .iter()
        .filter(|r| r.kind.starts_with("dispenser."))
        .collect();
    if mech.is_empty() {
        h.push_str("<p>No dispenser activity recorded in this period.</p>");
    } else {
        let _ = write!(h, "<table><tr><th class=l>row</th><th class=l>time ({})</th><th class=l>kind</th><th class=l>subject</th></tr>", esc(tz.name()));
        for r in mech {
            let _ = write!(
                h,
                "<tr><td class=l>{}</td><td class=l>{}</td><td class=l>{}</td><td class=l>{}</td></tr>",
                r.seq, when(&r.utc, tz), esc(&r.kind), esc(&r.subject)
            );
        }
        h.push_str("</table>");
    }
    h.push_str(
        "<section class=review><h2>Review</h2><p>I have reviewed this record of storage and dispensing.</p>\
<table><tr><th class=l>reviewed by</th><td></td><th class=l>role</th><td></td></tr>\
<tr><th class=l>signature</th><td></td><th class=l>date</th><td></td></tr>\
<tr><th class=l>action taken</th><td colspan=3></td></tr></table></section>",
    );
    h.push_str("</body></html>\n");
    Ok(h)
}

/// Days worth a chart of their own: any excursion, alarm, probe fault, power cut or a door left
/// open for long; at most [`MAX_DAY_CHARTS`], the rest named.
fn notable_days(
    rs: &[StoredReading],
    a: &AnalysisReport,
    rows: &[Row],
    band: (f64, f64),
    tz: Tz,
) -> String {
    use charts::{DayEvents, Marker};
    use std::collections::BTreeMap;
    let day_of = |t: DateTime<Utc>| t.with_timezone(&tz).date_naive();
    let mut events: BTreeMap<chrono::NaiveDate, DayEvents> = BTreeMap::new();
    let last = rs.last().map(|r| r.at);
    for x in &a.excursions {
        let end = x.end.or(last).unwrap_or(x.start);
        let mut d = day_of(x.start);
        while d <= day_of(end) {
            events.entry(d).or_default().excursions.push((x.start, end));
            match d.succ_opt() {
                Some(n) => d = n,
                None => break,
            }
        }
    }
    for r in rows {
        let marker = match r.kind.as_str() {
            "coldchain.alarm_raised" => Marker::Alarm,
            "coldchain.probe_fault" => Marker::ProbeFault,
            _ => continue,
        };
        if let Ok(t) = DateTime::parse_from_rfc3339(&r.utc) {
            let t = t.with_timezone(&Utc);
            events
                .entry(day_of(t))
                .or_default()
                .markers
                .push((t, marker));
        }
    }
    let mut by_day: BTreeMap<chrono::NaiveDate, Vec<&StoredReading>> = BTreeMap::new();
    for r in rs {
        by_day.entry(day_of(r.at)).or_default().push(r);
    }
    for (d, day) in &by_day {
        let door = day.iter().filter(|r| r.door_open).count();
        let mains_off = day.iter().any(|r| !r.mains);
        if door >= 5 || mains_off {
            events.entry(*d).or_default();
        }
    }
    // A short report (two days or less) shows every day.
    if by_day.len() <= 2 {
        for d in by_day.keys() {
            events.entry(*d).or_default();
        }
    }
    let mut h = String::new();
    let days: Vec<_> = events.into_iter().collect();
    for (d, ev) in days.iter().take(MAX_DAY_CHARTS) {
        let readings = by_day.get(d).map(Vec::as_slice).unwrap_or(&[]);
        h.push_str(&charts::day(*d, readings, band, ev, tz));
    }
    if days.len() > MAX_DAY_CHARTS {
        let more: Vec<String> = days[MAX_DAY_CHARTS..]
            .iter()
            .map(|(d, _)| d.format("%-d %b").to_string())
            .collect();
        let _ = write!(
            h,
            "<p>Also notable, without a chart here: {} (run the report for those days).</p>",
            esc(&more.join(", "))
        );
    }
    h
}

/// Most days charted one by one in a report.
const MAX_DAY_CHARTS: usize = 12;

/// Consecutive alarm-table rows that say the same thing, shown as one line.
struct Repeat<'a> {
    first: &'a Row,
    last: &'a Row,
    count: usize,
    detail: String,
}

/// What a pharmacist needs beside the kind: the reason, and the body's detail or value.
fn detail(r: &Row) -> String {
    let body: serde_json::Value = serde_json::from_str(&r.body).unwrap_or_default();
    let mut parts: Vec<String> = Vec::new();
    if !r.reason.is_empty() {
        parts.push(r.reason.clone());
    }
    if let Some(d) = body.get("detail").and_then(|d| d.as_str()) {
        parts.push(d.to_string());
    }
    if let Some(v) = body.get("value").and_then(|v| v.as_f64()) {
        parts.push(format!("{v:.2} °C"));
    }
    parts.join(": ")
}

/// A fault repeating every few minutes through a jam would bury the rest: a run of rows with
/// the same kind, subject and detail is one entry with its first and last row and a count.
fn repeats<'a>(rows: &[&'a Row]) -> Vec<Repeat<'a>> {
    let mut out: Vec<Repeat<'a>> = Vec::new();
    for r in rows {
        let d = detail(r);
        match out.last_mut() {
            Some(g) if g.first.kind == r.kind && g.first.subject == r.subject && g.detail == d => {
                g.last = r;
                g.count += 1;
            }
            _ => out.push(Repeat {
                first: r,
                last: r,
                count: 1,
                detail: d,
            }),
        }
    }
    out
}

/// Per patient and medication: scheduled occurrences and their final outcomes.
fn adherence(h: &mut String, rows: &[Row]) {
    use crate::dosing::engine::DoseRecord;
    h.push_str("<h2>Adherence per patient</h2>");
    let records = rows
        .iter()
        .filter(|r| r.kind.starts_with("dose.") && r.kind != "dose.alert")
        .filter_map(|r| {
            let b: serde_json::Value = serde_json::from_str(&r.body).ok()?;
            let patient = b.get("patient")?.as_str()?.to_string();
            let rec: DoseRecord = serde_json::from_value(b.get("record")?.clone()).ok()?;
            Some((patient, rec))
        });
    let tallies = crate::dosing::adherence::tally(records);
    if tallies.is_empty() {
        h.push_str("<p>No dosing records in this period.</p>");
        return;
    }
    h.push_str("<table><tr><th class=l>patient</th><th class=l>medication</th><th>scheduled</th><th>as needed</th><th>taken</th><th>taken late</th><th>dispensed, not taken</th><th>missed</th><th>held</th><th>skipped</th><th>uncertain</th><th>failed only</th></tr>");
    for t in tallies {
        let _ = write!(
            h,
            "<tr><td class=l>{}</td><td class=l>{}</td>",
            esc(&t.patient),
            esc(&t.medication)
        );
        for v in [
            t.scheduled,
            t.as_needed,
            t.taken,
            t.taken_late,
            t.not_taken,
            t.missed,
            t.held,
            t.skipped,
            t.uncertain,
            t.failed,
        ] {
            let _ = write!(h, "<td>{v}</td>");
        }
        h.push_str("</tr>");
    }
    h.push_str("</table>");
}

/// Units per slot now, the refills in the period (who, how many, expiry) and stock alerts.
fn inventory(h: &mut String, conn: &Connection, rows: &[Row], tz: Tz) -> Result<(), StoreError> {
    h.push_str("<h2>Inventory and refills</h2>");
    let inv = crate::store::inventory::rebuild(conn)?;
    if inv.slots().is_empty() {
        h.push_str("<p>No stock was ever recorded.</p>");
    } else {
        // What each slot held, as the dose records of the period say (patient: medication).
        let mut held: std::collections::BTreeMap<u64, std::collections::BTreeSet<String>> =
            Default::default();
        for r in rows.iter().filter(|r| r.kind.starts_with("dose.")) {
            let b: serde_json::Value = serde_json::from_str(&r.body).unwrap_or_default();
            if let (Some(slot), Some(p), Some(m)) = (
                b["slot"].as_u64(),
                b["patient"].as_str(),
                b["medication"].as_str(),
            ) {
                held.entry(slot).or_default().insert(format!("{p}: {m}"));
            }
        }
        h.push_str(
            "<table><tr><th class=l>slot</th><th class=l>medication (from the period's doses)</th><th>units now</th><th class=l>expiry</th></tr>",
        );
        for (slot, st) in inv.slots() {
            let meds = held.get(&u64::from(*slot)).map_or("—".to_string(), |m| {
                m.iter().cloned().collect::<Vec<_>>().join(", ")
            });
            let _ = write!(
                h,
                "<tr><td class=l>{slot}</td><td class=l>{}</td><td>{}</td><td class=l>{}</td></tr>",
                esc(&meds),
                st.count,
                st.expiry.map_or("—".into(), |d| d.to_string())
            );
        }
        h.push_str("</table>");
    }
    let stock: Vec<&Row> = rows
        .iter()
        .filter(|r| r.kind.starts_with("inventory."))
        .collect();
    if stock.is_empty() {
        h.push_str("<p>No refills or stock alerts in this period.</p>");
        return Ok(());
    }
    h.push_str("<table><tr><th class=l>row</th><th class=l>time (UTC)</th><th class=l>kind</th><th class=l>slot</th><th class=l>who</th><th class=l>details</th></tr>");
    for r in stock {
        let b: serde_json::Value = serde_json::from_str(&r.body).unwrap_or_default();
        let details = match r.kind.as_str() {
            "inventory.refill" => format!(
                "+{} → {} units, expiry {}, {}",
                b["added"],
                b["count"],
                b["expiry"].as_str().unwrap_or("—"),
                b["note"].as_str().unwrap_or("")
            ),
            "inventory.alert" => format!(
                "{}: {} units left ({} days)",
                r.reason, b["count"], b["days_left"]
            ),
            _ => r.reason.clone(),
        };
        let _ = write!(
            h,
            "<tr><td class=l>{}</td><td class=l>{}</td><td class=l>{}</td><td class=l>{}</td><td class=l>{}</td><td class=l>{}</td></tr>",
            r.seq,
            when(&r.utc, tz),
            esc(&r.kind),
            esc(&r.subject),
            esc(&r.actor),
            esc(&details)
        );
    }
    h.push_str("</table>");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(seq: i64, kind: &str, body: &str) -> Row {
        Row {
            seq,
            utc: format!("2026-03-03T17:{:02}:06.344Z", seq),
            mono_ms: seq,
            boot_id: "b".into(),
            clock_trusted: true,
            actor: "system:controller".into(),
            kind: kind.into(),
            subject: "carousel".into(),
            body: body.into(),
            reason: String::new(),
            prev_hash: String::new(),
            hash: String::new(),
        }
    }

    #[test]
    fn a_repeating_fault_is_one_line_with_its_count_and_detail() {
        let jam = r#"{"detail":"home sensor not found"}"#;
        let rows = [
            row(1, "device.fault", jam),
            row(2, "device.fault", jam),
            row(3, "device.fault", jam),
            row(4, "device.fault", r#"{"detail":"drop not seen"}"#),
            row(5, "device.fault", jam),
        ];
        let refs: Vec<&Row> = rows.iter().collect();
        let groups = repeats(&refs);
        let seen: Vec<(i64, i64, usize, &str)> = groups
            .iter()
            .map(|g| (g.first.seq, g.last.seq, g.count, g.detail.as_str()))
            .collect();
        assert_eq!(
            seen,
            [
                (1, 3, 3, "home sensor not found"),
                (4, 4, 1, "drop not seen"),
                (5, 5, 1, "home sensor not found"),
            ],
            "only consecutive rows merge, so the order of events stays readable"
        );
    }

    #[test]
    fn report_times_are_shown_to_the_second_and_do_not_wrap() {
        assert_eq!(
            when("2026-03-03T17:41:06.344Z", chrono_tz::UTC),
            "<span class=t>2026-03-03 17:41:06</span>"
        );
    }
}
