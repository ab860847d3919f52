//! Readings as CSV: the export format of `medbox sim --export-readings` and the input of
//! `medbox coldchain stats`.
//!
//! Columns: `time` (ISO-8601 with offset) and `celsius` (the product temperature the appliance
//! believed; empty: none) are required; `doubt` (a probe-disagreement code, empty when the probes
//! agreed), `vial`, `air`, `door_open` and `mains` are used when present; any other column is
//! ignored. A file without a header is read as `time,celsius`.

use super::arbiter::Doubt;
use super::monitor::Observation;
use crate::events::FridgeRecord;
use chrono::{DateTime, Utc};
use std::io::{Read, Write};
use thiserror::Error;

/// A row that cannot be used.
#[derive(Debug, Error)]
pub enum CsvError {
    /// The file could not be read or written.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// A row is malformed.
    #[error("line {line}: {field}: {message}")]
    Row {
        /// 1-based line.
        line: u64,
        /// Column.
        field: &'static str,
        /// What is wrong.
        message: String,
    },
    /// The CSV itself is broken (unbalanced quotes, ragged rows).
    #[error("{0}")]
    Csv(#[from] csv::Error),
}

/// The header the exporter writes.
pub const HEADER: [&str; 9] = [
    "time",
    "celsius",
    "doubt",
    "vial",
    "air",
    "compressor_on",
    "door_open",
    "mains",
    "mode",
];

/// Writes records as CSV.
pub fn write_records<'a, W: Write>(
    out: W,
    records: impl IntoIterator<Item = &'a FridgeRecord>,
) -> Result<(), CsvError> {
    let mut w = csv::Writer::from_writer(out);
    w.write_record(HEADER)?;
    let opt = |v: Option<f64>| v.map_or(String::new(), |v| format!("{v:.4}"));
    for r in records {
        let mode = serde_json::to_value(r.mode)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        w.write_record([
            r.at.to_rfc3339(),
            opt(r.control),
            r.doubt.map_or("", |d| d.code()).to_string(),
            opt(r.vial),
            opt(r.air),
            r.compressor_on.to_string(),
            r.door_open.to_string(),
            r.mains.to_string(),
            mode,
        ])?;
    }
    w.flush()?;
    Ok(())
}

fn parse_bool(s: &str, line: u64, field: &'static str) -> Result<Option<bool>, CsvError> {
    match s.trim() {
        "" => Ok(None),
        "true" | "1" => Ok(Some(true)),
        "false" | "0" => Ok(Some(false)),
        other => Err(CsvError::Row {
            line,
            field,
            message: format!("{other:?} is not true or false"),
        }),
    }
}

/// Where each used column is.
struct Columns {
    time: usize,
    celsius: usize,
    doubt: Option<usize>,
    probes: Vec<usize>,
    door_open: Option<usize>,
    mains: Option<usize>,
}

/// What a readings CSV holds: the observations in time order, and the rows whose time is not
/// after the row before them (shown and counted by the caller, kept out of the analysis, which
/// needs time order).
#[derive(Clone, Debug, Default)]
pub struct CsvReadings {
    /// In time order.
    pub observations: Vec<Observation>,
    /// Out of time order: (line, time).
    pub out_of_order: Vec<(u64, DateTime<Utc>)>,
}

/// Reads observations; every malformed row is an error naming its line.
pub fn read_observations<R: Read>(input: R) -> Result<CsvReadings, CsvError> {
    let mut rdr = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .trim(csv::Trim::All)
        .from_reader(input);
    let mut columns = Columns {
        time: 0,
        celsius: 1,
        doubt: None,
        probes: Vec::new(),
        door_open: None,
        mains: None,
    };
    let mut out = CsvReadings::default();
    let mut last: Option<DateTime<Utc>> = None;
    for (i, row) in rdr.records().enumerate() {
        let row = row?;
        let line = row.position().map_or(i as u64 + 1, |p| p.line());
        if i == 0
            && row
                .get(0)
                .is_some_and(|f| DateTime::parse_from_rfc3339(f).is_err())
        {
            let find = |name: &str| row.iter().position(|c| c.eq_ignore_ascii_case(name));
            let (Some(t), Some(c)) = (find("time"), find("celsius")) else {
                return Err(CsvError::Row {
                    line,
                    field: "header",
                    message: "needs `time` and `celsius` columns".into(),
                });
            };
            columns = Columns {
                time: t,
                celsius: c,
                doubt: find("doubt"),
                probes: [find("vial"), find("air")].into_iter().flatten().collect(),
                door_open: find("door_open"),
                mains: find("mains"),
            };
            continue;
        }
        let (tc, cc, dc, mc) = (
            columns.time,
            columns.celsius,
            columns.door_open,
            columns.mains,
        );
        let time = row.get(tc).unwrap_or("");
        let at = DateTime::parse_from_rfc3339(time)
            .map_err(|e| CsvError::Row {
                line,
                field: "time",
                message: format!(
                    "{time:?}: {e} (ISO-8601 with offset, e.g. 2026-03-02T08:00:00+01:00)"
                ),
            })?
            .with_timezone(&Utc);
        if last.is_some_and(|l| at <= l) {
            out.out_of_order.push((line, at));
            continue;
        }
        last = Some(at);
        let cel = row.get(cc).unwrap_or("");
        let buffered = if cel.is_empty() {
            None
        } else {
            let v: f64 = cel.parse().map_err(|_| CsvError::Row {
                line,
                field: "celsius",
                message: format!("{cel:?} is not a number"),
            })?;
            if !v.is_finite() || !(-100.0..=100.0).contains(&v) {
                return Err(CsvError::Row {
                    line,
                    field: "celsius",
                    message: format!("{v} is not a plausible temperature"),
                });
            }
            Some(v)
        };
        let door_open = match dc {
            Some(c) => parse_bool(row.get(c).unwrap_or(""), line, "door_open")?,
            None => None,
        };
        let mains = match mc {
            Some(c) => parse_bool(row.get(c).unwrap_or(""), line, "mains")?,
            None => None,
        };
        let doubt = match columns.doubt.map(|c| row.get(c).unwrap_or("")) {
            None | Some("") => None,
            Some(code) => Some(Doubt::from_code(code).ok_or_else(|| CsvError::Row {
                line,
                field: "doubt",
                message: format!("{code:?} is not VIAL_SUSPECT, AIR_SUSPECT or UNDECIDED"),
            })?),
        };
        let a_probe_read = columns
            .probes
            .iter()
            .any(|c| !row.get(*c).unwrap_or("").is_empty());
        out.observations.push(Observation {
            at,
            buffered,
            any_valid: buffered.is_some() || a_probe_read,
            doubt,
            door_open,
            mains,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_plain_two_column_file_with_offsets() {
        let o = read_observations(
            "2026-03-02T08:00:00+01:00,5.0\n2026-03-02T08:01:00+01:00,\n".as_bytes(),
        )
        .unwrap()
        .observations;
        assert_eq!(o.len(), 2);
        assert_eq!(o[0].at.to_rfc3339(), "2026-03-02T07:00:00+00:00");
        assert_eq!(o[1].buffered, None);
    }

    #[test]
    fn reads_the_export_header() {
        let text = "time,celsius,doubt,vial,air,compressor_on,door_open,mains,mode\n\
            2026-03-02T00:00:00+00:00,5.1,,5.1,5.0,false,true,true,thermostat\n\
            2026-03-02T00:01:00+00:00,,UNDECIDED,9.0,4.0,false,false,true,disputed\n";
        let o = read_observations(text.as_bytes()).unwrap().observations;
        assert_eq!(
            (o[0].buffered, o[0].door_open, o[0].mains, o[0].doubt),
            (Some(5.1), Some(true), Some(true), None)
        );
        assert_eq!((o[1].buffered, o[1].any_valid), (None, true));
        assert_eq!(o[1].doubt, Some(Doubt::Undecided));
        let bad = text.replace("UNDECIDED", "MAYBE");
        let e = read_observations(bad.as_bytes()).unwrap_err();
        assert!(e.to_string().starts_with("line 3: doubt:"), "{e}");
    }

    #[test]
    fn bad_rows_name_their_line_and_field() {
        let e = read_observations(
            "time,celsius\n2026-03-02T00:00:00Z,5\n2026-03-02 00:01,5\n".as_bytes(),
        )
        .unwrap_err();
        assert!(e.to_string().starts_with("line 3: time:"), "{e}");
        let e =
            read_observations("time,celsius\n2026-03-02T00:00:00Z,warm\n".as_bytes()).unwrap_err();
        assert!(e.to_string().starts_with("line 2: celsius:"), "{e}");
    }

    #[test]
    fn rows_out_of_time_order_are_counted_and_kept_out_not_refused() {
        let r = read_observations(
            "2026-03-02T00:01:00Z,5\n2026-03-02T00:00:00Z,9\n2026-03-02T00:02:00Z,5\n".as_bytes(),
        )
        .unwrap();
        assert_eq!(r.observations.len(), 2);
        assert_eq!(r.out_of_order.len(), 1);
        assert_eq!(r.out_of_order[0].0, 2, "its line");
    }
}
