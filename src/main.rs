//! The `medbox` command line. Library errors get their context here.

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use medbox::coldchain::ColdChainConfig;
use medbox::config::{self, BoardProfile, CheckedFile};
use medbox::scenario::Scenario;
use medbox::sim::{self, SimOptions, Speed};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

#[derive(Parser)]
#[command(
    name = "medbox",
    version,
    about = "Medication dispenser and vaccine fridge controller"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the appliance on the simulated board, on simulated time.
    Sim(SimArgs),
    /// Run the appliance on the board its config names.
    Run {
        /// Appliance config (TOML).
        #[arg(long)]
        config: PathBuf,
    },
    /// Configuration tools.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Validate board profiles and appliance configs; exit 1 listing every error found.
    Check {
        /// Files to check.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
}

#[derive(clap::Args)]
struct SimArgs {
    /// Board profile (default: the shipped hw/sim.toml, embedded in the binary).
    #[arg(long)]
    board: Option<PathBuf>,
    /// Appliance config whose [coldchain] settings to use (default: the built-in defaults).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Scenario of events to play (TOML; see hw/scenarios/).
    #[arg(long)]
    scenario: Option<PathBuf>,
    /// Simulated days to run, then print a summary (default: run until interrupted).
    #[arg(long)]
    days: Option<f64>,
    /// Simulated seconds per real second, or "max" (default: max with --days, else 60).
    #[arg(long)]
    speed: Option<String>,
    /// Seed for the model's random draws (default: the profile's).
    #[arg(long)]
    seed: Option<u64>,
    /// Print the summary as one JSON object.
    #[arg(long)]
    json: bool,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Sim(args) => run_sim(args),
        Command::Run { config } => run_appliance(config),
        Command::Config {
            command: ConfigCommand::Check { files },
        } => return config_check(&files),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("medbox: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn config_errors(errs: Vec<config::ConfigError>) -> anyhow::Error {
    let lines: Vec<String> = errs.iter().map(|e| e.to_string()).collect();
    anyhow::anyhow!("invalid configuration:\n  {}", lines.join("\n  "))
}

fn config_check(files: &[PathBuf]) -> ExitCode {
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

fn parse_speed(s: &str) -> Result<Speed> {
    if s == "max" {
        return Ok(Speed::Max);
    }
    let f: f64 = s
        .parse()
        .with_context(|| format!("--speed {s:?}: expected a number or \"max\""))?;
    if !(f.is_finite() && f > 0.0) {
        bail!("--speed must be above zero");
    }
    Ok(Speed::Factor(f))
}

fn run_sim(args: SimArgs) -> Result<()> {
    let profile = match &args.board {
        Some(p) => BoardProfile::load(p).map_err(config_errors)?,
        None => BoardProfile::default_sim().map_err(config_errors)?,
    };
    let coldchain = match &args.config {
        Some(p) => {
            config::ApplianceConfig::load(p)
                .map_err(config_errors)?
                .coldchain
        }
        None => ColdChainConfig::default(),
    };
    let scenario = args
        .scenario
        .as_deref()
        .map(Scenario::load)
        .transpose()
        .map_err(config_errors)?;
    let duration = args
        .days
        .map(|d| {
            if d.is_finite() && d > 0.0 {
                Ok(Duration::from_secs_f64(d * 86_400.0))
            } else {
                bail!("--days must be above zero")
            }
        })
        .transpose()?;
    let speed = match (&args.speed, duration) {
        (Some(s), _) => parse_speed(s)?,
        (None, Some(_)) => Speed::Max,
        (None, None) => Speed::Factor(60.0),
    };
    let opts = SimOptions {
        profile,
        coldchain,
        scenario,
        duration,
        seed: args.seed,
        live: duration.is_none() || !args.json,
    };
    let runtime = match speed {
        // Paused time on one thread: tokio jumps to the next timer whenever every task is idle.
        Speed::Max => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build(),
        Speed::Factor(_) => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build(),
    }
    .context("cannot start the async runtime")?;
    let live = opts.live && duration.is_none();
    let opts = SimOptions { live, ..opts };
    let summary = runtime.block_on(sim::run(opts, speed, shutdown_signal()))?;
    if args.json {
        println!("{}", serde_json::to_string(&summary)?);
    } else {
        print_summary(&summary);
    }
    Ok(())
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = match signal(SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
                return;
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

fn opt(v: Option<f64>) -> String {
    v.map_or("--".into(), |v| format!("{v:.2}"))
}

fn print_summary(s: &sim::SimSummary) {
    let f = &s.fridge;
    println!(
        "medbox simulation: {} ({:.2} days from {})",
        s.board, s.days, s.start
    );
    if let Some(sc) = &s.scenario {
        println!("scenario: {sc}");
    }
    println!("seed: {}", s.seed);
    println!();
    println!("fridge (from the controller's records, through the drivers)");
    for (name, p) in [
        ("vial (TMP117, buffered)", &f.vial),
        ("air (DS18B20)", &f.air),
    ] {
        println!(
            "  {name:24} min {:>6} °C  max {:>6} °C  mean {:>6} °C  ({} readings, {} rejected)",
            opt(p.min),
            opt(p.max),
            opt(p.mean),
            p.readings,
            p.rejected
        );
    }
    println!(
        "  in 2–8 °C: {:.0} min   out of range: {:.0} min   unknown: {:.0} min",
        f.minutes_in_range, f.minutes_out_of_range, f.minutes_unknown
    );
    println!(
        "  compressor: {} starts ({:.2}/h), on {:.0} min   door open {:.0} min   mains off {:.0} min   fail-safe {:.0} min",
        f.compressor_starts, f.compressor_starts_per_hour, f.compressor_on_minutes, f.door_open_minutes, f.mains_off_minutes, f.failsafe_minutes
    );
    if !s.probe_faults.is_empty() {
        println!("  probe faults: {:?}", s.probe_faults);
    }
    let d = &s.dispenser;
    println!();
    println!(
        "dispenser: {} homings, {} dispenses, {} units seen, {} lost positions, {} cup pickups, {} button presses",
        d.homings, d.dispenses, d.units_seen, d.lost_position, d.tray_pickups, d.button_presses
    );
    for fault in &s.device_faults {
        println!("  device fault: {fault}");
    }
    println!();
    println!(
        "model truth: air {:.2}–{:.2} °C, vial {:.2}–{:.2} °C, {} units released, stock {:?}",
        s.truth.air_min,
        s.truth.air_max,
        s.truth.vial_min,
        s.truth.vial_max,
        s.truth.units_released,
        s.truth.stock
    );
}

fn run_appliance(config_path: PathBuf) -> Result<()> {
    let cfg = config::ApplianceConfig::load(&config_path).map_err(config_errors)?;
    let board = cfg.board_path(&config_path);
    let profile = BoardProfile::load(&board).map_err(config_errors)?;
    match profile.board.kind {
        config::BoardKind::Sim => bail!(
            "{} is a simulated board: use `medbox sim --board {}`",
            board.display(),
            board.display()
        ),
        config::BoardKind::Rpi => run_rpi(cfg, profile),
    }
}

#[cfg(feature = "rpi")]
fn run_rpi(cfg: config::ApplianceConfig, profile: BoardProfile) -> Result<()> {
    use medbox::clock::{Clock, SystemClock};
    use std::sync::Arc;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        let clock: Arc<dyn Clock> = Arc::new(SystemClock::new());
        let (fridge, dispenser) = medbox::board::rpi::build(&profile, clock.monotonic())
            .context("cannot open the Raspberry Pi's GPIO and buses")?;
        let mut running = medbox::controller::start(clock, cfg.coldchain, fridge, dispenser);
        let signal = shutdown_signal();
        tokio::pin!(signal);
        loop {
            tokio::select! {
                ev = running.events.recv() => match ev {
                    Some(ev) => println!("{}", serde_json::to_string(&ev)?),
                    None => break,
                },
                _ = &mut signal => break,
            }
        }
        let mut rest = running.stop().await;
        rest.close();
        while let Some(ev) = rest.recv().await {
            println!("{}", serde_json::to_string(&ev)?);
        }
        Ok(())
    })
}

#[cfg(not(feature = "rpi"))]
fn run_rpi(_cfg: config::ApplianceConfig, _profile: BoardProfile) -> Result<()> {
    bail!("this medbox was built without Raspberry Pi support: rebuild with `cargo build --release --features rpi`")
}
