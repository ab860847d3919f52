//! `medbox schedule …`: the caregiver's tools for dosing schedules.

use crate::config_cmd::config_errors;
use crate::ScheduleCommand;
use anyhow::{Context, Result};
use medbox::config::BoardProfile;
use std::process::ExitCode;

pub(crate) fn schedule_command(cmd: ScheduleCommand) -> ExitCode {
    let result = match cmd {
        ScheduleCommand::Check { paths, board } => {
            let mut errors = Vec::new();
            let slots = match board.as_deref().map(BoardProfile::load).transpose() {
                Ok(b) => b.map(|b| b.carousel.slots),
                Err(e) => {
                    errors.extend(e);
                    None
                }
            };
            // Every file given shares one carousel: a slot clash between two of them counts
            // whether they came from one directory or were named one by one.
            let mut loaded = Vec::new();
            for p in &paths {
                if p.is_dir() {
                    let (ok, errs) = medbox::dosing::schedule::Schedule::load_dir(p);
                    errors.extend(errs.into_iter().filter(|e| !is_clash(e)));
                    loaded.extend(ok);
                } else {
                    match medbox::dosing::schedule::Schedule::load(p) {
                        Ok(s) => loaded.push((p.clone(), s)),
                        Err(e) => errors.extend(e),
                    }
                }
            }
            loaded.sort_by(|a, b| a.0.cmp(&b.0));
            loaded.dedup_by(|a, b| a.0 == b.0);
            errors.extend(medbox::dosing::schedule::Schedule::slot_clashes(&loaded));
            if let Some(slots) = slots {
                errors.extend(loaded.iter().flat_map(|(_, s)| s.slot_problems(slots)));
            }
            let checked = loaded.len();
            for e in &errors {
                println!("{e}");
            }
            if errors.is_empty() {
                println!("{checked} schedule(s) valid");
                return ExitCode::SUCCESS;
            }
            return ExitCode::FAILURE;
        }
        ScheduleCommand::Next {
            file,
            from,
            count,
            json,
        } => schedule_next(&file, from, count, json),
        ScheduleCommand::Week {
            path,
            from,
            days,
            ics,
        } => schedule_week(&path, from, days, ics),
        ScheduleCommand::Explain { file, at, db, json } => {
            schedule_explain(&file, at, db.as_deref(), json)
        }
    };
    crate::exit_code(result)
}

/// A moment typed on the command line, read in the schedule's zone.
fn moment(
    text: &str,
    s: &medbox::dosing::schedule::Schedule,
    flag: &str,
) -> Result<chrono::DateTime<chrono::Utc>> {
    medbox::dosing::when::parse_moment(text, s.tz).map_err(|e| anyhow::anyhow!("{flag}: {e}"))
}

/// A time as the caregiver reads it: local, with the zone's abbreviation.
fn local(t: chrono::DateTime<chrono::Utc>, tz: chrono_tz::Tz) -> String {
    t.with_timezone(&tz)
        .format("%a %Y-%m-%d %H:%M %Z")
        .to_string()
}

fn schedule_week(
    path: &std::path::Path,
    from: Option<chrono::NaiveDate>,
    days: u32,
    ics: bool,
) -> Result<()> {
    use medbox::dosing::week;
    let schedules: Vec<medbox::dosing::schedule::Schedule> = if path.is_dir() {
        let (ok, errs) = medbox::dosing::schedule::Schedule::load_dir(path);
        if !errs.is_empty() {
            return Err(config_errors(errs));
        }
        ok.into_iter().map(|(_, s)| s).collect()
    } else {
        vec![load_schedule(path)?]
    };
    let zone = schedules.first().map_or(chrono_tz::UTC, |s| s.tz);
    let from = from.unwrap_or_else(|| chrono::Utc::now().with_timezone(&zone).date_naive());
    let (doses, prn) = week::plan(&schedules, from, days);
    if ics {
        print!("{}", week::to_ics(&doses, &prn));
        return Ok(());
    }
    let one_zone = schedules.iter().all(|s| s.tz == zone);
    let last = from + chrono::Duration::days(i64::from(days) - 1);
    println!(
        "doses from {} to {}{}",
        from.format("%a %-d %b %Y"),
        last.format("%a %-d %b %Y"),
        if one_zone {
            format!(", local time in {}", zone.name())
        } else {
            ", each patient's local time".to_string()
        }
    );
    let name_width = doses
        .iter()
        .map(|d| d.medication.chars().count() + 1 + d.strength.chars().count())
        .max()
        .unwrap_or(0);
    let patient_width = doses.iter().map(|d| d.patient.len()).max().unwrap_or(0);
    let mut day = None;
    for d in &doses {
        if day != Some(d.day()) {
            day = Some(d.day());
            println!();
            println!("{}", d.day().format("%A %-d %B"));
        }
        let local =
            |t: chrono::DateTime<chrono::Utc>| t.with_timezone(&d.tz).format("%H:%M").to_string();
        let zone = if one_zone {
            String::new()
        } else {
            format!(
                " {:<5}",
                d.occurrence.with_timezone(&d.tz).format("%Z").to_string()
            )
        };
        println!(
            "  {}{zone}  {:<patient_width$}  {:<name_width$}  {} unit{}  slot {}  window {}–{}",
            local(d.occurrence),
            d.patient,
            format!("{} {}", d.medication, d.strength),
            d.units,
            if d.units == 1 { " " } else { "s" },
            d.slot,
            local(d.opens),
            local(d.closes),
        );
    }
    if doses.is_empty() {
        println!();
        println!("no scheduled dose in these days");
    }
    if !prn.is_empty() {
        println!();
        println!("as needed");
        for p in &prn {
            println!(
                "  {}  {} {}: at least {} apart, at most {} in 24 h",
                p.patient,
                p.medication,
                p.strength,
                humantime::format_duration(p.min_interval),
                p.max_per_24h
            );
        }
    }
    Ok(())
}

/// Whether an error is a slot clash between files (re-checked across every path given).
fn is_clash(e: &medbox::config::ConfigError) -> bool {
    matches!(e, medbox::config::ConfigError::Invalid { message, .. } if message.contains(medbox::dosing::schedule::SLOT_CLASH))
}

pub(crate) fn load_schedule(file: &std::path::Path) -> Result<medbox::dosing::schedule::Schedule> {
    medbox::dosing::schedule::Schedule::load(file).map_err(config_errors)
}

pub(crate) fn schedule_next(
    file: &std::path::Path,
    from: Option<String>,
    count: usize,
    json: bool,
) -> Result<()> {
    use medbox::dosing::engine::windows;
    let s = load_schedule(file)?;
    let from = match from {
        Some(text) => moment(&text, &s, "--from")?,
        None => chrono::Utc::now(),
    };
    let mut out = Vec::new();
    for (m, rec) in &s.medications {
        let Some(rec) = rec else {
            out.push(serde_json::json!({ "medication": m.name, "prn": true, "occurrences": [] }));
            continue;
        };
        let occ = rec.next(s.tz, from - chrono::Duration::seconds(1), count * 3);
        let horizon = occ.last().copied().unwrap_or(from);
        let ws = windows(m, rec, s.tz, from, horizon);
        let list: Vec<_> = ws
            .iter()
            .filter(|w| {
                w.occurrence >= from && m.active_on(w.occurrence.with_timezone(&s.tz).date_naive())
            })
            .take(count)
            .map(|w| {
                let day = w.occurrence.with_timezone(&s.tz).date_naive();
                serde_json::json!({
                    "local": w.occurrence.with_timezone(&s.tz).to_rfc3339(),
                    "utc": w.occurrence.to_rfc3339(),
                    "units": m.units_on(day),
                    "opens_local": w.opens.with_timezone(&s.tz).to_rfc3339(),
                    "closes_local": w.closes.with_timezone(&s.tz).to_rfc3339(),
                })
            })
            .collect();
        out.push(serde_json::json!({ "medication": m.name, "slot": m.slot.get_ref(), "occurrences": list }));
    }
    let doc = serde_json::json!({ "patient": s.patient, "timezone": s.tz.name(), "from": from.to_rfc3339(), "medications": out });
    if json {
        println!("{doc}");
        return Ok(());
    }
    println!("patient {}; times in {}", s.patient, s.tz.name());
    for m in out {
        println!("{}", m["medication"].as_str().unwrap_or(""));
        if m["prn"].as_bool() == Some(true) {
            println!("  as needed");
        }
        for o in m["occurrences"].as_array().into_iter().flatten() {
            let at = |key: &str| {
                o[key]
                    .as_str()
                    .and_then(|t| t.parse::<chrono::DateTime<chrono::Utc>>().ok())
            };
            let (Some(due), Some(opens), Some(closes)) =
                (at("local"), at("opens_local"), at("closes_local"))
            else {
                continue;
            };
            let units = o["units"].as_u64().unwrap_or(0);
            println!(
                "  {}  {units} unit{}  window {}–{}",
                local(due, s.tz),
                if units == 1 { "" } else { "s" },
                opens.with_timezone(&s.tz).format("%H:%M"),
                if closes.with_timezone(&s.tz).date_naive() == due.with_timezone(&s.tz).date_naive()
                {
                    closes.with_timezone(&s.tz).format("%H:%M").to_string()
                } else {
                    local(closes, s.tz)
                }
            );
        }
    }
    Ok(())
}

/// One patient's dose history as the appliance rebuilds it at start-up.
/// A patient's dose history and the day of vital readings before `now`, as the dispenser sees
/// them after a restart (readings stored without a patient belong to a one-patient cabinet's
/// only one, which is the patient asked about).
pub(crate) fn dose_history(
    db: &std::path::Path,
    patient: &str,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<(
    Vec<medbox::dosing::engine::DoseRecord>,
    Vec<medbox::dosing::engine::VitalReading>,
)> {
    let conn =
        medbox::store::schema::open_read_only(db).with_context(|| db.display().to_string())?;
    let history = medbox::store::doses::history(&conn)?.of(patient).to_vec();
    let vitals = medbox::store::vitals::recent(&conn, now - chrono::Duration::days(1))?
        .into_iter()
        .filter(|v| v.at <= now && v.patient.as_deref().is_none_or(|p| p == patient))
        .collect();
    Ok((history, vitals))
}

pub(crate) fn schedule_explain(
    file: &std::path::Path,
    at: String,
    db: Option<&std::path::Path>,
    json: bool,
) -> Result<()> {
    use medbox::dosing::engine::{decide, decide_prn, Decision, PrnRequest, Role};
    let s = load_schedule(file)?;
    let now = moment(&at, &s, "--at")?;
    let (history, vitals) = match db {
        Some(db) => dose_history(db, &s.patient, now)?,
        None => Default::default(),
    };
    let mut out = Vec::new();
    for (m, rec) in &s.medications {
        let d = match rec {
            Some(r) => decide(m, r, s.tz, now, &history, &vitals, true),
            None => decide_prn(
                m,
                s.tz,
                now,
                &history,
                &vitals,
                true,
                &PrnRequest {
                    actor: "explain".into(),
                    role: Role::Patient,
                    override_reason: None,
                },
            ),
        };
        out.push((m.name.clone(), d));
    }
    if json {
        let v: Vec<_> = out
            .iter()
            .map(|(n, d)| serde_json::json!({ "medication": n, "result": d }))
            .collect();
        println!(
            "{}",
            serde_json::json!({ "patient": s.patient, "at": now.to_rfc3339(), "medications": v })
        );
        return Ok(());
    }
    println!(
        "patient {} at {} ({})",
        s.patient,
        local(now, s.tz),
        s.tz.name()
    );
    for (name, d) in out {
        match d {
            Decision::Dispense { occurrence, units } => println!(
                "  {name}: DISPENSE {units} unit(s){}",
                occurrence.map_or(" (as needed)".to_string(), |o| format!(
                    " for the dose of {}",
                    local(o, s.tz)
                ))
            ),
            Decision::Refuse { reason, detail } => {
                println!("  {name}: {}: {detail}", reason.code())
            }
        }
    }
    Ok(())
}
