//! The fridge readings out of the database for a pharmacist: CSV in the columns of `medbox sim
//! --export-readings` (so `medbox coldchain stats` and a spreadsheet read it), or JSON lines,
//! with times in the pharmacist's zone. Rows are streamed from the statement, so a year of
//! readings costs no more memory than a day.

use crate::coldchain::readings_csv::HEADER;
use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use rusqlite::Connection;
use std::io::Write;

/// How to write the readings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// CSV with a header.
    Csv,
    /// One JSON object per line.
    Json,
}

/// Why the export stopped.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// The database could not be read.
    #[error("database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// The output could not be written (a closed pipe ends the export quietly at the caller).
    #[error("write: {0}")]
    Write(#[from] std::io::Error),
    /// The CSV writer failed.
    #[error("csv: {0}")]
    Csv(#[from] csv::Error),
}

/// Writes the readings recorded in `from .. to` (UTC instants, either end open) to `out`, their
/// times with `tz`'s offset; returns how many.
pub fn export<W: Write>(
    conn: &Connection,
    from: Option<DateTime<Utc>>,
    to: Option<DateTime<Utc>>,
    tz: Tz,
    format: Format,
    out: W,
) -> Result<u64, ExportError> {
    let fmt = |t: DateTime<Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let from = from.map(fmt).unwrap_or_default();
    let to = to.map(fmt).unwrap_or_else(|| "9999".into());
    let mut stmt = conn.prepare(
        "SELECT utc, control, doubt, vial, air, compressor_on, door_open, mains, mode \
         FROM readings WHERE utc >= ?1 AND utc < ?2 ORDER BY id",
    )?;
    let mut rows = stmt.query([from, to])?;
    enum Sink<W: Write> {
        Csv(Box<csv::Writer<W>>),
        Json(std::io::BufWriter<W>),
    }
    let mut sink = match format {
        Format::Csv => {
            let mut w = csv::Writer::from_writer(out);
            w.write_record(HEADER)?;
            Sink::Csv(Box::new(w))
        }
        Format::Json => Sink::Json(std::io::BufWriter::new(out)),
    };
    let mut n = 0u64;
    while let Some(r) = rows.next()? {
        let utc: String = r.get(0)?;
        let time = DateTime::parse_from_rfc3339(&utc)
            .map_or(utc.clone(), |t| t.with_timezone(&tz).to_rfc3339());
        let control: Option<f64> = r.get(1)?;
        let doubt: Option<String> = r.get(2)?;
        let vial: Option<f64> = r.get(3)?;
        let air: Option<f64> = r.get(4)?;
        let compressor_on: bool = r.get(5)?;
        let door_open: bool = r.get(6)?;
        let mains: bool = r.get(7)?;
        let mode: String = r.get(8)?;
        match &mut sink {
            Sink::Csv(w) => {
                let opt = |v: Option<f64>| v.map_or(String::new(), |v| format!("{v:.4}"));
                w.write_record([
                    time,
                    opt(control),
                    doubt.unwrap_or_default(),
                    opt(vial),
                    opt(air),
                    compressor_on.to_string(),
                    door_open.to_string(),
                    mains.to_string(),
                    mode,
                ])?;
            }
            Sink::Json(w) => {
                let line = serde_json::json!({
                    "time": time, "celsius": control, "doubt": doubt, "vial": vial, "air": air,
                    "compressor_on": compressor_on, "door_open": door_open, "mains": mains,
                    "mode": mode,
                });
                writeln!(w, "{line}")?;
            }
        }
        n += 1;
    }
    match &mut sink {
        Sink::Csv(w) => w.flush()?,
        Sink::Json(w) => w.flush()?,
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn db() -> Connection {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(
            "CREATE TABLE readings (id INTEGER PRIMARY KEY, utc TEXT NOT NULL, vial REAL, air REAL, \
             compressor_on INTEGER NOT NULL, door_open INTEGER NOT NULL, mains INTEGER NOT NULL, \
             mode TEXT NOT NULL, control REAL, doubt TEXT);
             INSERT INTO readings (utc, vial, air, compressor_on, door_open, mains, mode, control, doubt) VALUES
               ('2026-03-02T22:59:00.000Z', 5.0, 4.8, 0, 0, 1, 'thermostat', 5.0, NULL),
               ('2026-03-02T23:00:00.000Z', 5.1, 9.8, 1, 1, 1, 'thermostat', 5.1, 'AIR_SUSPECT'),
               ('2026-03-03T23:00:00.000Z', 5.2, 5.0, 0, 0, 1, 'thermostat', 5.2, NULL);",
        )
        .unwrap();
        conn
    }

    #[test]
    fn a_local_day_of_readings_exports_as_csv_that_coldchain_stats_reads_back() {
        let tz: Tz = "Europe/Berlin".parse().unwrap();
        let from = crate::dosing::when::parse_moment("2026-03-03", tz).unwrap();
        let to = crate::dosing::when::parse_moment("2026-03-04", tz).unwrap();
        let mut out = Vec::new();
        let n = export(&db(), Some(from), Some(to), tz, Format::Csv, &mut out).unwrap();
        assert_eq!(n, 1, "only the reading of 3 March, Berlin time");
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("time,celsius,doubt"), "{text}");
        assert!(
            text.contains("2026-03-03T00:00:00+01:00,5.1000,AIR_SUSPECT"),
            "{text}"
        );
        let back = crate::coldchain::readings_csv::read_observations(text.as_bytes()).unwrap();
        assert_eq!(back.observations.len(), 1);
    }

    #[test]
    fn readings_export_as_json_lines() {
        let mut out = Vec::new();
        let n = export(&db(), None, None, chrono_tz::UTC, Format::Json, &mut out).unwrap();
        assert_eq!(n, 3);
        let text = String::from_utf8(out).unwrap();
        let first: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
        assert_eq!(first["celsius"], 5.0);
        assert_eq!(first["time"], "2026-03-02T22:59:00+00:00");
    }
}
