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
            let mut checked = 0;
            for p in &paths {
                let loaded = if p.is_dir() {
                    let (ok, errs) = medbox::dosing::schedule::Schedule::load_dir(p);
                    errors.extend(errs);
                    ok.into_iter().map(|(_, s)| s).collect()
                } else {
                    match medbox::dosing::schedule::Schedule::load(p) {
                        Ok(s) => vec![s],
                        Err(e) => {
                            errors.extend(e);
                            Vec::new()
                        }
                    }
                };
                checked += loaded.len();
                if let Some(slots) = slots {
                    errors.extend(loaded.iter().flat_map(|s| s.slot_problems(slots)));
                }
            }
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
        ScheduleCommand::Explain { file, at, db, json } => {
            schedule_explain(&file, at, db.as_deref(), json)
        }
    };
    crate::exit_code(result)
}

pub(crate) fn load_schedule(file: &std::path::Path) -> Result<medbox::dosing::schedule::Schedule> {
    medbox::dosing::schedule::Schedule::load(file).map_err(config_errors)
}

pub(crate) fn schedule_next(
    file: &std::path::Path,
    from: Option<chrono::DateTime<chrono::FixedOffset>>,
    count: usize,
    json: bool,
) -> Result<()> {
    use medbox::dosing::engine::windows;
    let s = load_schedule(file)?;
    let from = from.map_or_else(chrono::Utc::now, |t| t.with_timezone(&chrono::Utc));
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
    println!("patient {} ({})", s.patient, s.tz.name());
    for m in out {
        println!("{}", m["medication"].as_str().unwrap_or(""));
        if m["prn"].as_bool() == Some(true) {
            println!("  as needed");
        }
        for o in m["occurrences"].as_array().into_iter().flatten() {
            println!(
                "  {}  (UTC {})  {} unit(s)  window {} – {}",
                o["local"].as_str().unwrap_or(""),
                o["utc"].as_str().unwrap_or(""),
                o["units"],
                o["opens_local"].as_str().unwrap_or(""),
                o["closes_local"].as_str().unwrap_or("")
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
    at: chrono::DateTime<chrono::FixedOffset>,
    db: Option<&std::path::Path>,
    json: bool,
) -> Result<()> {
    use medbox::dosing::engine::{decide, decide_prn, Decision, PrnRequest, Role};
    let s = load_schedule(file)?;
    let now = at.with_timezone(&chrono::Utc);
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
        now.with_timezone(&s.tz).to_rfc3339(),
        s.tz.name()
    );
    for (name, d) in out {
        match d {
            Decision::Dispense { occurrence, units } => println!(
                "  {name}: DISPENSE {units} unit(s){}",
                occurrence.map_or(" (as needed)".to_string(), |o| format!(
                    " for the dose of {}",
                    o.with_timezone(&s.tz).to_rfc3339()
                ))
            ),
            Decision::Refuse { reason, detail } => {
                println!("  {name}: {}: {detail}", reason.code())
            }
        }
    }
    Ok(())
}
