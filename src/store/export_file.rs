//! Reading back an audit export (`audit export`, JSON lines or CSV): what `audit verify
//! --export` and the fleet's witness verify, from one reader.

use super::audit::{self, Row};
use std::io::BufRead as _;
use std::path::{Path, PathBuf};
use thiserror::Error;

/// An export that cannot be read.
#[derive(Debug, Error)]
pub enum ExportError {
    /// The file.
    #[error("cannot open {path}: {source}")]
    Open {
        /// Which.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A CSV export that is not one.
    #[error("{path}: not an audit export: {source}")]
    Csv {
        /// Which.
        path: PathBuf,
        /// Why.
        source: csv::Error,
    },
    /// A JSON line that is not an audit row.
    #[error("{path}:{line}: not an audit row: {source}")]
    Line {
        /// Which.
        path: PathBuf,
        /// Line number (1-based).
        line: usize,
        /// Why.
        source: serde_json::Error,
    },
    /// Reading failed part-way.
    #[error("{path}: {source}")]
    Read {
        /// Which.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// The rows of an export, in file order (`.csv` by its extension, JSON lines otherwise).
pub fn read(path: &Path) -> Result<Vec<Row>, ExportError> {
    let file = std::fs::File::open(path).map_err(|source| ExportError::Open {
        path: path.into(),
        source,
    })?;
    if path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("csv"))
    {
        return csv::Reader::from_reader(file)
            .deserialize()
            .collect::<Result<Vec<Row>, _>>()
            .map_err(|source| ExportError::Csv {
                path: path.into(),
                source,
            });
    }
    let mut rows = Vec::new();
    for (i, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line.map_err(|source| ExportError::Read {
            path: path.into(),
            source,
        })?;
        if line.trim().is_empty() {
            continue;
        }
        rows.push(
            audit::from_json_line(&line).map_err(|source| ExportError::Line {
                path: path.into(),
                line: i + 1,
                source,
            })?,
        );
    }
    Ok(rows)
}
