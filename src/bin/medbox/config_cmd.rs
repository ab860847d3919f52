//! `medbox config check`, and how configuration errors are shown.

use medbox::config::{self, CheckedFile};
use std::path::PathBuf;
use std::process::ExitCode;

pub(crate) fn config_errors(errs: Vec<config::ConfigError>) -> anyhow::Error {
    let lines: Vec<String> = errs.iter().map(|e| e.to_string()).collect();
    anyhow::anyhow!("invalid configuration:\n  {}", lines.join("\n  "))
}

pub(crate) fn config_check(files: &[PathBuf]) -> ExitCode {
    let mut ok = true;
    for f in files {
        match config::check_file(f) {
            Ok(CheckedFile::Profile(p)) => {
                println!(
                    "{}: ok (board profile {:?}, {} lines in use)",
                    f.display(),
                    p.board.name,
                    p.pins().len()
                )
            }
            Ok(CheckedFile::Appliance(c)) => {
                println!("{}: ok (appliance {})", f.display(), c.appliance.device_id)
            }
            Err(errs) => {
                ok = false;
                for e in errs {
                    println!("{e}");
                }
            }
        }
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
