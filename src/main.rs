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
    /// Cold-chain tools for pharmacists.
    Coldchain {
        #[command(subcommand)]
        command: ColdchainCommand,
    },
}

#[derive(Subcommand)]
enum ColdchainCommand {
    /// Min, max, mean, MKT, time in range, excursions and the alarms that would have fired, from a
    /// readings CSV (`time,celsius`, ISO-8601 times with offset; or `medbox sim --export-readings`).
    Stats {
        /// The readings file.
        #[arg(long)]
        csv: PathBuf,
        /// Appliance config whose [coldchain] rules to apply (default: the built-in defaults).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum ControllerArg {
    /// The medbox controller.
    Medbox,
    /// Naive baseline for comparison: bang-bang on the raw air probe, no minimum times.
    Naive,
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
    /// Which controller decides the compressor.
    #[arg(long, value_enum, default_value = "medbox")]
    controller: ControllerArg,
    /// Write every fridge record to this CSV file (readable by `medbox coldchain stats`).
    #[arg(long)]
    export_readings: Option<PathBuf>,
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
        Command::Coldchain {
            command: ColdchainCommand::Stats { csv, config, json },
        } => coldchain_stats(&csv, config.as_deref(), json),
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
        strategy: match args.controller {
            ControllerArg::Medbox => medbox::controller::Strategy::Protected,
            ControllerArg::Naive => medbox::controller::Strategy::NaiveBaseline,
        },
        keep_records: args.export_readings.is_some(),
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
    if let Some(path) = &args.export_readings {
        let file = std::fs::File::create(path)
            .with_context(|| format!("cannot create {}", path.display()))?;
        medbox::coldchain::readings_csv::write_records(
            std::io::BufWriter::new(file),
            &summary.records,
        )
        .with_context(|| format!("cannot write {}", path.display()))?;
    }
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
            biased;
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
    print_coldchain(&s.coldchain);
    for a in &s.acknowledgements {
        println!("  acknowledged: {a}");
    }
    for c in &s.commands_rejected {
        println!("  command rejected: {c}");
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

fn print_coldchain(r: &medbox::coldchain::analysis::AnalysisReport) {
    println!(
        "  MKT {} °C   worst excursion {:.0} min   {} excursions   {} alarms",
        opt(r.mkt),
        r.worst_excursion_minutes,
        r.excursions.len(),
        r.alarms.len()
    );
    for x in &r.excursions {
        let end = x.end.map_or("still open".to_string(), |e| e.to_rfc3339());
        println!(
            "  excursion {}: {} → {} ({:.0} min), {:.2}–{:.2} °C, MKT {:.2} °C (24 h {:.2} °C)",
            x.id,
            x.start.to_rfc3339(),
            end,
            x.minutes,
            x.min,
            x.max,
            x.mkt,
            x.mkt_24h
        );
    }
    for a in &r.alarms {
        println!(
            "  alarm {} raised {} (condition since {})",
            a.alarm.code(),
            a.at.to_rfc3339(),
            a.since.to_rfc3339()
        );
    }
}

fn coldchain_stats(
    csv: &std::path::Path,
    config: Option<&std::path::Path>,
    json: bool,
) -> Result<()> {
    let cfg = match config {
        Some(p) => {
            config::ApplianceConfig::load(p)
                .map_err(config_errors)?
                .coldchain
        }
        None => ColdChainConfig::default(),
    };
    let file =
        std::fs::File::open(csv).with_context(|| format!("cannot open {}", csv.display()))?;
    let observations =
        medbox::coldchain::readings_csv::read_observations(std::io::BufReader::new(file))
            .with_context(|| csv.display().to_string())?;
    let report = medbox::coldchain::analysis::analyse(&cfg, observations);
    if json {
        println!("{}", serde_json::to_string(&report)?);
        return Ok(());
    }
    println!(
        "{}: {} valid readings, {} without a valid value",
        csv.display(),
        report.readings,
        report.rejected
    );
    println!(
        "  min {} °C  max {} °C  mean {} °C",
        opt(report.min),
        opt(report.max),
        opt(report.mean)
    );
    println!(
        "  in {:.1}–{:.1} °C: {:.0} min   out of range: {:.0} min   unknown: {:.0} min",
        cfg.range_min.0,
        cfg.range_max.0,
        report.minutes_in_range,
        report.minutes_out_of_range,
        report.minutes_unknown
    );
    print_coldchain(&report);
    Ok(())
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
        let mut running = medbox::controller::start(
            clock,
            cfg.coldchain,
            medbox::controller::Strategy::Protected,
            fridge,
            dispenser,
        );
        let signal = shutdown_signal();
        tokio::pin!(signal);
        loop {
            tokio::select! {
                biased;
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
