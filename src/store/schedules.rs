//! Schedules installed by command (`replace_schedule`) outlive a restart: at start-up, a
//! patient's latest installed schedule is used instead of the file, unless the file changed
//! after it was installed (then the caregiver's newer file wins, and the loader audits the
//! change back).

use super::StoreError;
use crate::dosing::schedule::Schedule;
use rusqlite::{params, Connection, OptionalExtension};
use std::path::Path;

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
