//! Schedules installed by command (`replace_schedule`) outlive a restart: at start-up, a
//! patient's latest installed schedule is used instead of the file, unless the file changed
//! after it was installed (then the caregiver's newer file wins, and the loader audits the
//! change back).

use super::StoreError;
use crate::dosing::schedule::Schedule;
use rusqlite::{params, Connection, OptionalExtension};
use std::path::Path;

/// Every patient whose schedule the appliance ever recorded (by file or by command): the
/// pseudonyms a reading or command given at the device may name.
pub fn known_patients(conn: &Connection) -> Result<Vec<String>, StoreError> {
    let subjects: Vec<String> = conn
        .prepare(
            "SELECT DISTINCT subject FROM audit WHERE kind = 'schedule.change' ORDER BY subject",
        )?
        .query_map([], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    Ok(subjects
        .iter()
        .filter_map(|s| s.strip_prefix("schedule:").map(str::to_string))
        .collect())
}

/// Replaces, in `schedules`, every patient's file schedule by the schedule installed by command
/// since the loader last saw that file. Returns the patients whose schedule came from the store.
pub fn apply_installed(
    conn: &Connection,
    schedules: &mut Vec<Schedule>,
) -> Result<Vec<String>, StoreError> {
    let subjects: Vec<String> = conn
        .prepare(
            "SELECT DISTINCT subject FROM audit WHERE kind = 'schedule.change' \
             AND json_extract(body, '$.source') IS NOT NULL",
        )?
        .query_map([], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    let mut applied = Vec::new();
    for subject in subjects {
        let Some(patient) = subject.strip_prefix("schedule:") else {
            continue;
        };
        let loader: Option<(i64, Option<String>)> = conn
            .query_row(
                "SELECT seq, json_extract(body, '$.new') FROM audit WHERE kind = 'schedule.change' \
                 AND subject = ?1 AND actor = 'system:loader' ORDER BY seq DESC LIMIT 1",
                params![subject],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        let installed: Option<(i64, String)> = conn
            .query_row(
                "SELECT seq, json_extract(body, '$.source') FROM audit WHERE kind = 'schedule.change' \
                 AND subject = ?1 AND json_extract(body, '$.source') IS NOT NULL ORDER BY seq DESC LIMIT 1",
                params![subject],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        let Some((installed_seq, source)) = installed else {
            continue;
        };
        let file = schedules.iter().position(|s| s.patient == patient);
        let file_version = file.map(|i| crate::dosing::replace::version(&schedules[i]));
        let (loader_seq, loader_seen) = loader.map_or((0, None), |(s, v)| (s, v));
        if installed_seq < loader_seq || file_version != loader_seen {
            // The file changed after the command installed its schedule: the file wins.
            continue;
        }
        match Schedule::parse(&source, Path::new(&format!("store:{subject}"))) {
            Ok(s) => {
                match file {
                    Some(i) => schedules[i] = s,
                    None => schedules.push(s),
                }
                applied.push(patient.to_string());
            }
            Err(errs) => tracing::warn!(
                "installed schedule of {patient} no longer parses ({}); using the file",
                errs.iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("; ")
            ),
        }
    }
    Ok(applied)
}

/// The guarded medications of a patient's last *confirmed* schedule version: from the latest
/// `schedule.change` row, the schedule a command installed (its text) or the guards the loader
/// recorded (which a loaded file that removed a guard does not replace until a second person
/// confirms). None when nothing was recorded yet.
pub fn confirmed_guards(
    conn: &Connection,
    patient: &str,
) -> Result<Option<Vec<crate::dosing::replace::Guarded>>, StoreError> {
    let body: Option<String> = conn
        .query_row(
            "SELECT body FROM audit WHERE kind = 'schedule.change' AND subject = ?1 \
             ORDER BY seq DESC LIMIT 1",
            params![format!("schedule:{patient}")],
            |r| r.get(0),
        )
        .optional()?;
    let Some(body) = body.and_then(|b| serde_json::from_str::<serde_json::Value>(&b).ok()) else {
        return Ok(None);
    };
    if let Some(source) = body.get("source").and_then(serde_json::Value::as_str) {
        return Ok(Schedule::parse(source, Path::new("store"))
            .ok()
            .map(|s| crate::dosing::replace::guarded(&s)));
    }
    Ok(body
        .get("guards")
        .and_then(|g| serde_json::from_value(g.clone()).ok()))
}

/// Checks schedule files found at start-up against the last confirmed versions: a file that
/// removes a weekly guard (edited behind the appliance's back) is used, but the medications
/// concerned stay locked until a second person confirms. Returns what waits for confirmation
/// and, per schedule subject, what the loader's audit row must carry (`guards`: the confirmed
/// reference; `unconfirmed`: the locked medications).
pub fn check_loaded(
    conn: &Connection,
    schedules: &[Schedule],
) -> Result<
    (
        Vec<crate::dosing::replace::Unconfirmed>,
        std::collections::BTreeMap<String, serde_json::Value>,
    ),
    StoreError,
> {
    use crate::dosing::replace::{guarded, version, weakened, Unconfirmed};
    let mut waiting = Vec::new();
    let mut extra = std::collections::BTreeMap::new();
    for s in schedules {
        let subject = format!("schedule:{}", s.patient);
        let confirmed = confirmed_guards(conn, &s.patient)?;
        let weak = confirmed
            .as_deref()
            .map(|c| weakened(c, s))
            .unwrap_or_default();
        if weak.is_empty() {
            extra.insert(subject, serde_json::json!({ "guards": guarded(s) }));
            continue;
        }
        let confirmed = confirmed.unwrap_or_default();
        let u = Unconfirmed {
            patient: s.patient.clone(),
            version: version(s),
            medications: weak.iter().map(|(m, _)| m.clone()).collect(),
            reasons: weak.into_iter().map(|(_, r)| r).collect(),
            confirmed: confirmed.clone(),
        };
        extra.insert(
            subject,
            serde_json::json!({ "guards": confirmed, "unconfirmed": u.medications, "reasons": u.reasons }),
        );
        waiting.push(u);
    }
    Ok((waiting, extra))
}

/// When each patient's schedule version in force was recorded (the latest `schedule.change`
/// row), so the planner never records as missed a dose from before it was prescribed.
pub fn installed_at(
    conn: &Connection,
) -> Result<std::collections::BTreeMap<String, chrono::DateTime<chrono::Utc>>, StoreError> {
    let mut stmt = conn.prepare(
        "SELECT subject, max(utc) FROM audit WHERE kind = 'schedule.change' GROUP BY subject",
    )?;
    let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?;
    let mut out = std::collections::BTreeMap::new();
    for row in rows {
        let (subject, utc) = row?;
        if let (Some(patient), Ok(t)) = (
            subject.strip_prefix("schedule:"),
            chrono::DateTime::parse_from_rfc3339(&utc),
        ) {
            out.insert(patient.to_string(), t.with_timezone(&chrono::Utc));
        }
    }
    Ok(out)
}
