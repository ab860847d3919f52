//! `medbox generate --out DIR`: the man pages and shell completions, written from the same clap
//! definition the binary parses with, so they cannot drift from it. The Debian package ships
//! what this writes.

use anyhow::{Context, Result};
use clap::CommandFactory as _;
use std::path::Path;

/// Writes `man/medbox.1`, one `man/medbox-<sub>.1` per subcommand, and
/// `completions/{medbox.bash,_medbox,medbox.fish}` under `out`.
pub(crate) fn generate(out: &Path) -> Result<()> {
    let cmd = crate::Cli::command();
    let man = out.join("man");
    std::fs::create_dir_all(&man).with_context(|| man.display().to_string())?;
    clap_mangen::generate_to(cmd.clone(), &man).with_context(|| man.display().to_string())?;
    let completions = out.join("completions");
    std::fs::create_dir_all(&completions).with_context(|| completions.display().to_string())?;
    for shell in [
        clap_complete::Shell::Bash,
        clap_complete::Shell::Zsh,
        clap_complete::Shell::Fish,
    ] {
        clap_complete::generate_to(shell, &mut cmd.clone(), "medbox", &completions)
            .with_context(|| format!("{shell} completions"))?;
    }
    Ok(())
}
