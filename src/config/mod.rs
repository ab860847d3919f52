//! Strict configuration: board profiles (`hw/*.toml`) and the appliance config.
//!
//! Modelled on Klipper: an unknown key is an error, bounds are checked while reading, and every
//! error names the file, the line and the key, because the person reading it is standing in front of
//! an appliance with a text editor, not a debugger. Parsing stops at the first syntax error (the
//! TOML parser cannot go on); the cross-field checks after it report every problem they find.

mod appliance;
mod profile;

pub use appliance::{valid_device_id, ApplianceConfig, ApplianceSection, MqttSection};
pub use profile::{
    BoardKind, BoardProfile, CarouselWiring, DispenserWiring, FridgeWiring, I2cProbe, InputSpec,
    Level, MotorWiring, OutputSpec, Pull, RelaySpec, SafeState, SimModel, W1Probe,
};

use serde::de::DeserializeOwned;
use std::path::{Path, PathBuf};
use thiserror::Error;

/// The shipped simulated board profile, so `medbox sim` works without any file on disk.
pub const DEFAULT_SIM_PROFILE: &str = include_str!("../../hw/sim.toml");

/// A problem with a configuration file, located as precisely as the file allows.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// The file could not be read at all.
    #[error("{file}: cannot read: {source}")]
    Read {
        /// The file that was asked for.
        file: PathBuf,
        /// The operating system's reason.
        source: std::io::Error,
    },
    /// The file is not valid TOML, or a value has the wrong type, or a key is unknown or missing.
    #[error("{file}:{line}: {message}")]
    Syntax {
        /// The file.
        file: PathBuf,
        /// 1-based line of the offending text.
        line: usize,
        /// The parser's explanation.
        message: String,
    },
    /// The file parsed, but a value is out of range or contradicts another.
    #[error("{file}:{line}: {key}: {message}")]
    Invalid {
        /// The file.
        file: PathBuf,
        /// 1-based line of the offending value (the section's line when the key is absent).
        line: usize,
        /// Dotted path of the key, as written in the file.
        key: String,
        /// What is wrong and what would be right.
        message: String,
    },
}

/// Cross-field problems found in a parsed file, before they are tied to its name.
#[derive(Debug, Default)]
pub(crate) struct Findings {
    items: Vec<(usize, String, String)>,
}

impl Findings {
    /// Records a problem at a byte offset of the source.
    pub(crate) fn at(&mut self, line: usize, key: impl Into<String>, message: impl Into<String>) {
        self.items.push((line, key.into(), message.into()));
    }

    fn into_errors(mut self, file: &Path) -> Vec<ConfigError> {
        self.items.sort_by_key(|(line, _, _)| *line);
        self.items
            .into_iter()
            .map(|(line, key, message)| ConfigError::Invalid {
                file: file.to_path_buf(),
                line,
                key,
                message,
            })
            .collect()
    }
}

/// The 1-based line on which byte `offset` of `src` lies.
pub fn line_of(src: &str, offset: usize) -> usize {
    src.as_bytes()
        .iter()
        .take(offset.min(src.len()))
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// A config type that can check itself after parsing.
pub(crate) trait Validate {
    /// Pushes every cross-field problem into `findings`; `src` is the text, for line numbers.
    fn validate(&self, src: &str, findings: &mut Findings);
}

/// Parses `src` (named `file` in errors) strictly and runs its cross-field checks.
pub(crate) fn parse_str<T>(src: &str, file: &Path) -> Result<T, Vec<ConfigError>>
where
    T: DeserializeOwned + Validate,
{
    let value: T = toml::from_str(src).map_err(|e| {
        let start = e.span().map(|s| s.start);
        let line = start.map(|s| line_of(src, s)).unwrap_or(1);
        let message = plain_type_error(e.message().trim());
        vec![ConfigError::Syntax {
            file: file.to_path_buf(),
            line,
            message: match start.and_then(|s| key_at(src, s)) {
                Some(key) => format!("{key}: {message}"),
                None => message,
            },
        }]
    })?;
    let mut findings = Findings::default();
    value.validate(src, &mut findings);
    if findings.items.is_empty() {
        Ok(value)
    } else {
        Err(findings.into_errors(file))
    }
}

/// The key whose value starts at byte `offset` (`times` in `times = "08:00"`), so a type error
/// names the field and not only the line.
fn key_at(src: &str, offset: usize) -> Option<String> {
    let offset = offset.min(src.len());
    let line_start = src[..offset].rfind('\n').map_or(0, |i| i + 1);
    let before = src.get(line_start..offset)?;
    let (key, _) = before.split_once('=')?;
    let key = key.trim().trim_matches('"');
    (!key.is_empty() && !key.contains(['[', ']', '#'])).then(|| key.to_string())
}

/// The parser's words for a type mismatch, in the file's words ("a list" rather than "a
/// sequence", "a whole number" rather than "u32").
fn plain_type_error(message: &str) -> String {
    let mut m = message.replace("expected a sequence", "expected a list in square brackets");
    for int in ["u8", "u16", "u32", "u64", "i32", "i64", "usize"] {
        m = m.replace(&format!("expected {int}"), "expected a whole number");
    }
    m.replace("expected f64", "expected a number")
}

/// Reads a config-like file, with the error naming it.
pub(crate) fn read_source(file: &Path) -> Result<String, Vec<ConfigError>> {
    std::fs::read_to_string(file).map_err(|source| {
        vec![ConfigError::Read {
            file: file.to_path_buf(),
            source,
        }]
    })
}

/// Reads and parses a file strictly.
pub(crate) fn load_file<T>(file: &Path) -> Result<T, Vec<ConfigError>>
where
    T: DeserializeOwned + Validate,
{
    let src = read_source(file)?;
    parse_str(&src, file)
}

/// The line of `key = …` inside the table `[section]` (the table's own line if the key is not
/// there, 1 if neither is), so an error found after parsing points at the value itself.
pub(crate) fn key_line(src: &str, section: &str, key: &str) -> usize {
    let header = format!("[{section}]");
    let bare = |l: &str| l.split('#').next().unwrap_or("").trim().to_string();
    let Some(start) = src.lines().position(|l| bare(l) == header) else {
        return 1;
    };
    src.lines()
        .enumerate()
        .skip(start + 1)
        .take_while(|(_, l)| !l.trim_start().starts_with('['))
        .find(|(_, l)| {
            l.trim_start()
                .strip_prefix(key)
                .is_some_and(|rest| rest.trim_start().starts_with('='))
        })
        .map_or(start + 1, |(i, _)| i + 1)
}

/// What a config file turned out to be, for `medbox config check`.
#[derive(Debug)]
pub enum CheckedFile {
    /// A board profile (`[board]` table).
    Profile(Box<BoardProfile>),
    /// An appliance config (`[appliance]` table).
    Appliance(Box<ApplianceConfig>),
}

/// Validates one file of either kind, telling them apart by their first table.
pub fn check_file(file: &Path) -> Result<CheckedFile, Vec<ConfigError>> {
    let src = read_source(file)?;
    let is_profile = src
        .lines()
        .map(str::trim)
        .any(|l| l == "[board]" || l.starts_with("board.") || l.starts_with("[board."));
    if is_profile {
        let profile: BoardProfile = parse_str(&src, file)?;
        Ok(CheckedFile::Profile(Box::new(profile)))
    } else {
        let config: ApplianceConfig = parse_str(&src, file)?;
        // The profile the appliance names must be valid too.
        let board = config.board_path(file);
        let profile: BoardProfile = load_file(&board)?;
        // One source of truth for the compressor's protection: the board's relay may only be
        // stricter than [coldchain] (the thermostat then runs with the stricter values).
        let problems = config
            .coldchain
            .relay_problems(crate::board::relay_limits(&profile));
        if !problems.is_empty() {
            let board_src = read_source(&board)?;
            return Err(problems
                .into_iter()
                .map(|(key, message)| ConfigError::Invalid {
                    file: board.clone(),
                    line: key_line(
                        &board_src,
                        "fridge.compressor",
                        key.rsplit('.').next().unwrap_or(key),
                    ),
                    key: key.to_string(),
                    message,
                })
                .collect());
        }
        // And the schedules it names: each valid, no slot shared, every slot on this carousel
        // (what `medbox run` would refuse at start is refused here, before a visit).
        let dir = file
            .parent()
            .unwrap_or(Path::new("."))
            .join(&config.appliance.schedules);
        let (schedules, mut errors) = crate::dosing::schedule::Schedule::load_dir(&dir);
        errors.extend(
            schedules
                .iter()
                .flat_map(|(_, s)| s.slot_problems(profile.carousel.slots)),
        );
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(CheckedFile::Appliance(Box::new(config)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_of_counts_newlines_before_offset() {
        let src = "a\nb\nc";
        assert_eq!(line_of(src, 0), 1);
        assert_eq!(line_of(src, 2), 2);
        assert_eq!(line_of(src, 4), 3);
        assert_eq!(line_of(src, 99), 3);
    }
}
