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
    Sim(Box<SimArgs>),
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
    /// Dosing schedules: check them, list the next doses, explain a decision.
    Schedule {
        #[command(subcommand)]
        command: ScheduleCommand,
    },
    /// The MQTT uplink on its own.
    Uplink {
        #[command(subcommand)]
        command: UplinkCommand,
    },
    /// Vital readings entered at the device.
    Vitals {
        #[command(subcommand)]
        command: VitalsCommand,
    },
    /// Print benchmark figures (not assertions).
    Bench {
        #[command(subcommand)]
        command: BenchCommand,
    },
    /// The audit log: verify, read, export, report.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
}

#[derive(Subcommand)]
enum VitalsCommand {
    /// Validate a reading and record it in the database; a running appliance uses it within a
    /// minute (exit 1 with the reason when it is refused).
    Add {
        /// The appliance's database.
        #[arg(long)]
        db: PathBuf,
        /// heart_rate, systolic_bp, diastolic_bp, spo2, body_temperature, glucose.
        #[arg(long)]
        vital: String,
        /// The value in the vital's unit (/min, mm[Hg], %, Cel, mg/dL).
        #[arg(long, allow_hyphen_values = true)]
        value: Option<f64>,
        /// The value as a BLE IEEE 11073 SFLOAT (e.g. 0x0048).
        #[arg(long)]
        sfloat: Option<String>,
        /// When it was measured (RFC 3339; default now).
        #[arg(long)]
        at: Option<chrono::DateTime<chrono::Utc>>,
        /// good or low.
        #[arg(long, default_value = "good")]
        quality: String,
        /// Who or what measured it.
        #[arg(long)]
        source: String,
        /// Whose reading (required by an appliance that doses more than one patient).
        #[arg(long)]
        patient: Option<String>,
        /// The audit chain's HMAC secret, when the appliance keys it.
        #[arg(long)]
        audit_secret_file: Option<PathBuf>,
    },
}

#[derive(clap::Args, Clone)]
struct AuditFilter {
    /// From this time (RFC 3339, inclusive).
    #[arg(long)]
    from: Option<chrono::DateTime<chrono::Utc>>,
    /// To this time (RFC 3339, exclusive).
    #[arg(long)]
    to: Option<chrono::DateTime<chrono::Utc>>,
    /// Kind, or a prefix ending in "." (e.g. "coldchain.").
    #[arg(long)]
    kind: Option<String>,
    /// Patient pseudonym.
    #[arg(long)]
    patient: Option<String>,
    /// Medication name.
    #[arg(long)]
    medication: Option<String>,
}

impl AuditFilter {
    fn to_filter(&self) -> medbox::store::audit::Filter {
        medbox::store::audit::Filter {
            from: self.from,
            to: self.to,
            kind: self.kind.clone(),
            patient: self.patient.clone(),
            medication: self.medication.clone(),
        }
    }
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum ExportFormat {
    /// One CSV row per audit row, with a header.
    Csv,
    /// One JSON object per line.
    Json,
}

#[derive(Subcommand)]
enum ScheduleCommand {
    /// Validate schedule files or directories: exit 0 when valid, else 1 printing
    /// `file:line: field: message` for every problem.
    Check {
        /// Files or directories.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// Also check every slot against this board profile's carousel (the schedules are
        /// always checked against the largest carousel, 8 slots).
        #[arg(long)]
        board: Option<PathBuf>,
    },
    /// The next dose occurrences of each medication, with their windows.
    Next {
        /// The schedule file.
        file: PathBuf,
        /// From this time (RFC 3339; default: now).
        #[arg(long)]
        from: Option<chrono::DateTime<chrono::FixedOffset>>,
        /// Occurrences per medication.
        #[arg(long, default_value_t = 5)]
        count: usize,
        /// One JSON object.
        #[arg(long)]
        json: bool,
    },
    /// What the engine would do at a moment for each medication, and why.
    Explain {
        /// The schedule file.
        file: PathBuf,
        /// The moment (RFC 3339).
        #[arg(long)]
        at: chrono::DateTime<chrono::FixedOffset>,
        /// Take the recorded dose history from this database.
        #[arg(long)]
        db: Option<PathBuf>,
        /// One JSON object.
        #[arg(long)]
        json: bool,
    },
}

/// How to authenticate to the broker (no defaults: anonymous unless given).
#[derive(clap::Args, Clone, Default)]
struct BrokerAuth {
    /// CA certificate (PEM) that signed the broker's; needed by mqtts://.
    #[arg(long)]
    mqtt_ca: Option<PathBuf>,
    /// Client certificate (PEM) for mutual TLS.
    #[arg(long, requires = "mqtt_key")]
    mqtt_cert: Option<PathBuf>,
    /// Client private key (PEM).
    #[arg(long, requires = "mqtt_cert")]
    mqtt_key: Option<PathBuf>,
    /// Username.
    #[arg(long, requires = "mqtt_password_file")]
    mqtt_username: Option<String>,
    /// File holding the password (never on the command line).
    #[arg(long, requires = "mqtt_username")]
    mqtt_password_file: Option<PathBuf>,
}

/// TLS files and username/password, as the uplink takes them.
type Security = (
    Option<medbox::uplink::tls::TlsFiles>,
    Option<(String, String)>,
);

impl BrokerAuth {
    /// Reads the password file and gathers the TLS files.
    fn resolve(&self) -> Result<Security> {
        let tls = self
            .mqtt_ca
            .as_ref()
            .map(|ca| medbox::uplink::tls::TlsFiles {
                ca: ca.clone(),
                client_cert: self.mqtt_cert.clone(),
                client_key: self.mqtt_key.clone(),
            });
        let credentials = match (&self.mqtt_username, &self.mqtt_password_file) {
            (Some(u), Some(f)) => {
                let password = std::fs::read_to_string(f)
                    .with_context(|| format!("MQTT password file {}", f.display()))?;
                Some((
                    u.clone(),
                    password.trim_end_matches(['\r', '\n']).to_string(),
                ))
            }
            _ => None,
        };
        Ok((tls, credentials))
    }
}

#[derive(Subcommand)]
enum UplinkCommand {
    /// Publish everything waiting in a database's outbox, then stop.
    Drain {
        /// The database.
        #[arg(long)]
        db: PathBuf,
        /// The broker.
        #[arg(long)]
        mqtt: String,
        /// Device id.
        #[arg(long)]
        device_id: String,
        /// Give up after this many seconds without a connection.
        #[arg(long, default_value_t = 30)]
        give_up_s: u64,
        #[command(flatten)]
        auth: BrokerAuth,
    },
}

#[derive(Subcommand)]
enum BenchCommand {
    /// Durable audit appends against plain inserts (same settings), and verify time.
    Store {
        /// Durable appends to time (each its own fsynced transaction).
        #[arg(long, default_value_t = 2000)]
        appends: u64,
        /// Rows to verify.
        #[arg(long, default_value_t = 1_000_000)]
        verify_rows: u64,
        /// Directory for the benchmark databases (default: a temporary one).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// The outbox drain against a bare rumqttc QoS 1 loop over the same backlog, and the
    /// latency of an alarm overtaking it (needs a broker).
    Uplink {
        /// The broker.
        #[arg(long, default_value = "mqtt://127.0.0.1:1883")]
        mqtt: String,
        /// Days of simulated outage backlog (one reading a minute plus events).
        #[arg(long, default_value_t = 7.0)]
        days: f64,
    },
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Check the hash chain (and signed checkpoints held elsewhere). Exit 0 intact, 1 broken,
    /// 2 cannot verify.
    Verify {
        /// The database.
        #[arg(long, conflicts_with = "export", required_unless_present = "export")]
        db: Option<PathBuf>,
        /// A complete export (`audit export`, .json or .csv) instead of a database.
        #[arg(long)]
        export: Option<PathBuf>,
        /// Checkpoints held off the device (one JSON object per line).
        #[arg(long, requires = "pubkey")]
        against: Option<PathBuf>,
        /// The device's checkpoint public key (hex) as recorded at commissioning (`audit
        /// pubkey`): checkpoints signed by any other key are refused.
        #[arg(long)]
        pubkey: Option<String>,
        /// File holding the HMAC secret the chain was keyed with.
        #[arg(long)]
        secret_file: Option<PathBuf>,
    },
    /// Print rows as a readable table.
    Log {
        /// The database.
        #[arg(long)]
        db: PathBuf,
        #[command(flatten)]
        filter: AuditFilter,
    },
    /// Export complete rows, hashes included.
    Export {
        /// The database.
        #[arg(long)]
        db: PathBuf,
        /// Output format.
        #[arg(long, value_enum)]
        format: ExportFormat,
        /// Output file (default: standard output).
        #[arg(long)]
        out: Option<PathBuf>,
        #[command(flatten)]
        filter: AuditFilter,
    },
    /// Print the device's checkpoint public key (hex), to record at commissioning.
    Pubkey {
        /// The database (the key is beside it unless `--signing-key` says where).
        #[arg(long)]
        db: PathBuf,
        /// The signing key file.
        #[arg(long)]
        signing_key: Option<PathBuf>,
    },
    /// Print the stored signed checkpoints (one JSON object per line).
    Checkpoints {
        /// The database.
        #[arg(long)]
        db: PathBuf,
    },
    /// Write the printable HTML report.
    Report {
        /// The database.
        #[arg(long)]
        db: PathBuf,
        /// From this time (RFC 3339).
        #[arg(long)]
        from: Option<chrono::DateTime<chrono::Utc>>,
        /// To this time (RFC 3339).
        #[arg(long)]
        to: Option<chrono::DateTime<chrono::Utc>>,
        /// Output file.
        #[arg(long)]
        out: PathBuf,
        /// File holding the HMAC secret the chain was keyed with.
        #[arg(long)]
        secret_file: Option<PathBuf>,
        /// The appliance config whose `[coldchain]` rules to apply (default: the built-in
        /// defaults); the report says whether they match what the appliance recorded.
        #[arg(long)]
        config: Option<PathBuf>,
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
    /// Dosing schedules: a file or a directory (default: the shipped examples, embedded).
    #[arg(long)]
    schedules: Option<PathBuf>,
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
    /// Make every event durable in this SQLite database (audit chain, readings, checkpoints).
    #[arg(long)]
    db: Option<PathBuf>,
    /// Append the signed checkpoints of this run to this file (the copies held off the device).
    #[arg(long)]
    checkpoints_out: Option<PathBuf>,
    /// Publish to this MQTT broker (mqtt://host:port). Without it everything stays in the outbox.
    #[arg(long)]
    mqtt: Option<String>,
    /// Device id (topic level and MQTT client id; never a patient's name).
    #[arg(long, default_value = "medbox-sim")]
    device_id: String,
    #[command(flatten)]
    auth: BrokerAuth,
    /// Cap the database at this many pages, to rehearse a full disk.
    #[arg(long, hide = true)]
    db_max_pages: Option<u32>,
    /// Also publish dose outcomes and vitals as FHIR R4 resources (`fhir/<resource>` topics).
    #[arg(long)]
    fhir: bool,
    /// Key the audit chain with the HMAC secret in this file (verify with `--secret-file`).
    #[arg(long)]
    audit_secret_file: Option<PathBuf>,
    /// Print `durable <seq>` after each audit row commits (crash-test harness).
    #[arg(long, hide = true)]
    print_durable: bool,
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
        Command::Sim(args) => run_sim(*args),
        Command::Run { config } => run_appliance(config),
        Command::Config {
            command: ConfigCommand::Check { files },
        } => return config_check(&files),
        Command::Coldchain {
            command: ColdchainCommand::Stats { csv, config, json },
        } => coldchain_stats(&csv, config.as_deref(), json),
        Command::Audit { command } => return audit_command(command),
        Command::Vitals {
            command:
                VitalsCommand::Add {
                    db,
                    vital,
                    value,
                    sfloat,
                    at,
                    quality,
                    source,
                    patient,
                    audit_secret_file,
                },
        } => {
            let raw = serde_json::json!({
                "vital": vital, "value": value, "at": at, "quality": quality, "source": source,
                "patient": patient,
                "sfloat": match sfloat.as_deref().map(|s| u16::from_str_radix(s.trim_start_matches("0x"), 16)) {
                    Some(Ok(v)) => Some(v),
                    Some(Err(e)) => {
                        eprintln!("medbox: --sfloat: {e}");
                        return ExitCode::from(1);
                    }
                    None => None,
                },
            });
            return vitals_add(&db, raw, audit_secret_file.as_deref());
        }
        Command::Schedule { command } => return schedule_command(command),
        Command::Uplink {
            command:
                UplinkCommand::Drain {
                    db,
                    mqtt,
                    device_id,
                    give_up_s,
                    auth,
                },
        } => (|| {
            // Apply migrations (the outbox table) before draining.
            drop(medbox::store::schema::open(&db).with_context(|| db.display().to_string())?);
            let mut cfg = medbox::uplink::UplinkConfig::new(&mqtt, &device_id, &db);
            (cfg.tls, cfg.credentials) = auth.resolve()?;
            let u = medbox::uplink::UplinkThread::spawn(
                cfg,
                std::time::Duration::from_secs(give_up_s),
            )?;
            let stats = u.drain()?;
            println!("{}", serde_json::to_string(&stats)?);
            if stats.left > 0 {
                bail!("{} messages could not be delivered", stats.left);
            }
            Ok(())
        })(),
        Command::Bench {
            command: BenchCommand::Uplink { mqtt, days },
        } => (|| {
            let dir = tempfile::tempdir()?;
            let db = dir.path().join("backlog.db");
            let device = format!("bench-{}", std::process::id());
            eprintln!("building a {days}-day backlog…");
            let sim = std::process::Command::new(std::env::current_exe()?)
                .args([
                    "sim",
                    "--days",
                    &days.to_string(),
                    "--json",
                    "--device-id",
                    &device,
                    "--db",
                ])
                .arg(&db)
                .stdout(std::process::Stdio::null())
                .status()?;
            anyhow::ensure!(sim.success(), "the backlog simulation failed");
            let r = medbox::bench_uplink::uplink(&mqtt, &db, &device)?;
            println!("{}", serde_json::to_string_pretty(&r)?);
            Ok(())
        })(),
        Command::Bench {
            command:
                BenchCommand::Store {
                    appends,
                    verify_rows,
                    dir,
                },
        } => (|| {
            let tmp;
            let dir = match dir {
                Some(d) => d,
                None => {
                    tmp = tempfile::tempdir()?;
                    tmp.path().to_path_buf()
                }
            };
            let r = medbox::bench::store(&dir, appends, verify_rows)?;
            println!("{}", serde_json::to_string_pretty(&r)?);
            Ok(())
        })(),
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
    let (coldchain, refill_days) = match &args.config {
        Some(p) => {
            let c = config::ApplianceConfig::load(p).map_err(config_errors)?;
            (c.coldchain, Some(c.dosing.refill_days))
        }
        None => (ColdChainConfig::default(), None),
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
    let schedules = match &args.schedules {
        Some(p) if p.is_dir() => {
            let (ok, errs) = medbox::dosing::schedule::Schedule::load_dir(p);
            if !errs.is_empty() {
                return Err(config_errors(errs));
            }
            ok.into_iter().map(|(_, s)| s).collect()
        }
        Some(p) => vec![medbox::dosing::schedule::Schedule::load(p).map_err(config_errors)?],
        None => medbox::dosing::schedule::DEFAULT_SCHEDULES
            .iter()
            .map(|(name, src)| {
                medbox::dosing::schedule::Schedule::parse(src, std::path::Path::new(name))
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(config_errors)?,
    };
    // The outbox lives in the database: with a broker but no --db, use a temporary one.
    let tmp_db;
    let db = match (&args.db, &args.mqtt) {
        (Some(db), _) => Some(db.clone()),
        (None, Some(_)) => {
            tmp_db = tempfile::tempdir()?;
            Some(tmp_db.path().join("medbox-sim.db"))
        }
        (None, None) => None,
    };
    let opts = SimOptions {
        mqtt: args.mqtt.clone(),
        mqtt_security: args.auth.resolve()?,
        device_id: args.device_id.clone(),
        schedules,
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
        db,
        db_max_pages: args.db_max_pages,
        refill_days,
        fhir: args.fhir,
        audit_key: match &args.audit_secret_file {
            Some(f) => Some(chain_key(Some(f))?),
            None => None,
        },
        print_durable: args.print_durable,
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
    let summary = match runtime.block_on(sim::run(opts, speed, shutdown_signal())) {
        Ok(s) => s,
        Err(e @ sim::SimError::Store(_)) => {
            eprintln!("medbox: {e}");
            // Distinct from configuration errors, so a supervisor can tell them apart.
            std::process::exit(3);
        }
        Err(e) => return Err(e.into()),
    };
    if let Some(path) = &args.checkpoints_out {
        use std::io::Write as _;
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        for c in &summary.checkpoints {
            writeln!(f, "{}", serde_json::to_string(c)?)?;
        }
    }
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
        "  in 2–8 °C: {:.0} min   out of range: {:.0} min   unknown: {:.0} min   uncertain (probes disagree): {:.0} min",
        f.minutes_in_range, f.minutes_out_of_range, f.minutes_unknown, f.minutes_uncertain
    );
    println!(
        "  compressor: {} starts ({:.2}/h), on {:.0} min   door open {:.0} min   mains off {:.0} min   fail-safe {:.0} min",
        f.compressor_starts, f.compressor_starts_per_hour, f.compressor_on_minutes, f.door_open_minutes, f.mains_off_minutes, f.failsafe_minutes
    );
    if !s.probe_faults.is_empty() {
        println!("  probe faults: {:?}", s.probe_faults);
    }
    for d in &s.probe_doubts {
        let what = match (d.doubt, d.evidence) {
            (Some(doubt), Some(e)) => format!("{} ({e:?}): {}", doubt.code(), doubt.control()),
            (Some(doubt), None) => format!("{}: {}", doubt.code(), doubt.control()),
            (None, _) => "the probes agree again".into(),
        };
        println!("  probes {}: {what}", d.at.to_rfc3339());
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
        "dispenser: {} homings, {} test dispenses, {} units seen, {} lost positions, {} cup pickups, {} button presses",
        d.homings, d.dispenses, d.units_seen, d.lost_position, d.tray_pickups, d.button_presses
    );
    println!("  doses: {:?}", d.doses);
    if let Some(n) = s.outbox_before_uplink {
        match &s.uplink {
            None => println!("  outbox: {n} messages kept for the uplink (no broker configured; --mqtt mqtt://127.0.0.1:1883 to send)"),
            Some(u) => println!(
                "  uplink: {} messages acknowledged by the broker, {} left in the outbox, {} connects, {} failed attempts, {} broker outages",
                u.acked, u.left, u.connects, u.failures, u.outages
            ),
        }
    }
    if !d.dose_alerts.is_empty() {
        println!("  dose alerts: {:?}", d.dose_alerts);
    }
    if !d.stock.is_empty() {
        println!(
            "  inventory: {} refills recorded; units per slot {:?}; stock alerts {:?}",
            d.refills, d.stock, d.stock_alerts
        );
    }
    for (slot, units) in &d.stray_drops {
        println!("  STRAY_DROP: {units} unit(s) fell from slot {slot} while the carousel was positioning: check the cup");
    }
    for fault in &s.device_faults {
        println!("  device fault: {fault}");
    }
    println!();
    println!(
        "model truth: air (the stock) {:.2}–{:.2} °C ({:.0} min below, {:.0} min above the range), vial {:.2}–{:.2} °C, {} units released, stock {:?}",
        s.truth.air_min,
        s.truth.air_max,
        s.truth.product_minutes_below,
        s.truth.product_minutes_above,
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
            "  alarm {} raised {} (condition since {}){}",
            a.alarm.code(),
            a.at.to_rfc3339(),
            a.since.to_rfc3339(),
            a.detail
                .as_deref()
                .map_or(String::new(), |d| format!(": {d}"))
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
    let read = medbox::coldchain::readings_csv::read_observations(std::io::BufReader::new(file))
        .with_context(|| csv.display().to_string())?;
    let mut report = medbox::coldchain::analysis::analyse(&cfg, read.observations);
    report.readings_out_of_order = read.out_of_order.len() as u64;
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
    if report.minutes_uncertain > 0.0 {
        println!(
            "  uncertain (the probes disagreed): {:.0} min",
            report.minutes_uncertain
        );
    }
    for (line, at) in &read.out_of_order {
        println!(
            "  line {line}: {} is not after the row before it: left out of the analysis",
            at.to_rfc3339()
        );
    }
    print_coldchain(&report);
    Ok(())
}

fn read_export(path: &std::path::Path) -> Result<Vec<medbox::store::audit::Row>> {
    let file =
        std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    if path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("csv"))
    {
        let mut rdr = csv::Reader::from_reader(file);
        let rows = rdr
            .deserialize()
            .collect::<Result<Vec<medbox::store::audit::Row>, _>>()
            .with_context(|| format!("{}: not an audit export", path.display()))?;
        Ok(rows)
    } else {
        use std::io::BufRead as _;
        let mut rows = Vec::new();
        for (i, line) in std::io::BufReader::new(file).lines().enumerate() {
            let line = line?;
            if line.trim().is_empty() {
                continue;
            }
            rows.push(
                serde_json::from_str(&line)
                    .with_context(|| format!("{}:{}: not an audit row", path.display(), i + 1))?,
            );
        }
        Ok(rows)
    }
}

fn read_checkpoints(path: &std::path::Path) -> Result<Vec<medbox::store::checkpoint::Checkpoint>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l)
                .with_context(|| format!("{}:{}: not a checkpoint", path.display(), i + 1))
        })
        .collect()
}

/// `medbox vitals add`: exit 0 recorded, 1 refused (with the reason), 2 cannot record.
fn vitals_add(
    db: &std::path::Path,
    raw: serde_json::Value,
    secret: Option<&std::path::Path>,
) -> ExitCode {
    let now = chrono::Utc::now();
    let reading = serde_json::from_value::<medbox::dosing::vitals::RawVital>(raw)
        .map_err(|e| e.to_string())
        .and_then(|r| medbox::dosing::vitals::validate(&r, now));
    let reading = match reading {
        Ok(r) => r,
        Err(e) => {
            eprintln!("medbox: reading refused: {e}");
            return ExitCode::from(1);
        }
    };
    let result = (|| -> Result<i64> {
        let mut rec = medbox::store::recorder::Recorder::open(
            db,
            chain_key(secret)?,
            format!("cli-{}", medbox::store::recorder::new_boot_id()),
        )
        .with_context(|| db.display().to_string())?;
        let r = rec.record(
            &medbox::events::Event::Vital { at: now, reading },
            std::time::Duration::ZERO,
            true,
            now,
        )?;
        Ok(r.seq.unwrap_or_default())
    })();
    match result {
        Ok(seq) => {
            println!("recorded as audit row {seq}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("medbox: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// The audit chain key: keyed with the secret in `file`, or plain SHA-256.
fn chain_key(file: Option<&std::path::Path>) -> Result<medbox::store::audit::ChainKey> {
    match file {
        Some(f) => medbox::store::audit::ChainKey::from_file(f)
            .with_context(|| format!("audit secret {}", f.display())),
        None => Ok(medbox::store::audit::ChainKey::unkeyed()),
    }
}

fn audit_verify(
    db: Option<PathBuf>,
    export: Option<PathBuf>,
    against: Option<(PathBuf, String)>,
    secret_file: Option<PathBuf>,
) -> Result<ExitCode> {
    use medbox::store::audit::{self, CheckpointRef, Verification};
    let key = chain_key(secret_file.as_deref())?;
    let conn = match &db {
        Some(db) => Some(
            medbox::store::schema::open_read_only(db).with_context(|| db.display().to_string())?,
        ),
        None => None,
    };
    // What the database says about its own chain decides what can be verified at all.
    match (
        conn.as_ref()
            .map(audit::recorded_keyed)
            .transpose()?
            .flatten(),
        key.is_keyed(),
    ) {
        (Some(true), false) => {
            println!("cannot verify: the chain is keyed (HMAC-SHA-256); give --secret-file");
            return Ok(ExitCode::from(2));
        }
        (Some(false), true) => {
            println!(
                "broken: the database says its chain is not keyed, but it is verified with a \
                 secret: a keyed chain rewritten as a plain one (a downgrade), or the wrong database"
            );
            return Ok(ExitCode::from(1));
        }
        _ => {}
    }
    let rows = match (&conn, &export) {
        (Some(conn), _) => audit::rows(conn, &audit::Filter::default())?,
        (None, Some(e)) => read_export(e)?,
        (None, None) => bail!("give --db or --export"),
    };
    if let Some(first) = rows.first().filter(|r| r.seq != 1) {
        println!(
            "cannot verify: the rows start at row {}: a filtered or partial export holds no chain \
             to check; export without filters",
            first.seq
        );
        return Ok(ExitCode::from(2));
    }
    let mut refs = Vec::new();
    if let Some((path, pinned)) = &against {
        for c in read_checkpoints(path)? {
            if !c.public_key.eq_ignore_ascii_case(pinned.trim()) {
                println!(
                    "cannot verify: the checkpoint for row {} is signed by another key ({}) than \
                     the device's ({}): not this device's checkpoints",
                    c.seq,
                    c.public_key,
                    pinned.trim()
                );
                return Ok(ExitCode::from(2));
            }
            if !c.signature_valid() {
                println!(
                    "broken: checkpoint for row {} has an invalid signature (forged or altered copy)",
                    c.seq
                );
                return Ok(ExitCode::from(1));
            }
            refs.push(CheckpointRef {
                seq: c.seq,
                head: c.head,
            });
        }
    }
    let v = audit::verify(rows, &key, &refs);
    match &v {
        Verification::Intact {
            count,
            head,
            first_utc,
            last_utc,
            checkpoints,
        } => {
            // The chain is genuine, so its seals are: check the readings against them.
            let readings = match &conn {
                Some(conn) => Some(medbox::store::readings::check(conn)?),
                None => None,
            };
            use medbox::store::readings::SealCheck;
            if let Some(SealCheck::Broken { seq, detail }) = &readings {
                println!(
                    "broken: first bad row {seq} (readings_changed); last good row {}; {detail}",
                    seq - 1
                );
                return Ok(ExitCode::from(1));
            }
            println!(
                "intact: {count} rows, {} to {}, head {head}, {checkpoints} checkpoints matched",
                first_utc.as_deref().unwrap_or("-"),
                last_utc.as_deref().unwrap_or("-")
            );
            if let Some(SealCheck::Intact {
                seals,
                sealed,
                unsealed,
            }) = readings
            {
                println!(
                    "readings: {sealed} sealed by {seals} seals, all match; {unsealed} newer than the last seal"
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Verification::Broken {
            seq,
            kind,
            last_good,
            detail,
        } => {
            println!(
                "broken: first bad row {seq} ({}); last good row {}; {detail}",
                serde_json::to_value(kind)?.as_str().unwrap_or("?"),
                last_good.map_or("none".to_string(), |s| s.to_string())
            );
            Ok(ExitCode::from(1))
        }
    }
}

fn audit_command(cmd: AuditCommand) -> ExitCode {
    let result = match cmd {
        AuditCommand::Verify {
            db,
            export,
            against,
            pubkey,
            secret_file,
        } => {
            return match audit_verify(db, export, against.zip(pubkey), secret_file) {
                Ok(code) => code,
                Err(e) => {
                    eprintln!("medbox: cannot verify: {e:#}");
                    ExitCode::from(2)
                }
            };
        }
        AuditCommand::Log { db, filter } => audit_log(&db, &filter),
        AuditCommand::Export {
            db,
            format,
            out,
            filter,
        } => audit_export(&db, format, out.as_deref(), &filter),
        AuditCommand::Pubkey { db, signing_key } => (|| {
            let path =
                signing_key.unwrap_or_else(|| medbox::store::checkpoint::default_key_path(&db));
            if !path.exists() {
                bail!(
                    "no signing key at {} (it is created at the first start)",
                    path.display()
                );
            }
            let key = medbox::store::checkpoint::DeviceKey::load_file(&path)?;
            println!("{}", key.public_hex());
            Ok(())
        })(),
        AuditCommand::Checkpoints { db } => (|| {
            let conn = medbox::store::schema::open_read_only(&db)
                .with_context(|| db.display().to_string())?;
            for c in medbox::store::checkpoint::all(&conn)? {
                println!("{}", serde_json::to_string(&c)?);
            }
            Ok(())
        })(),
        AuditCommand::Report {
            db,
            from,
            to,
            out,
            secret_file,
            config,
        } => (|| {
            let conn = medbox::store::schema::open_read_only(&db)
                .with_context(|| db.display().to_string())?;
            let key = chain_key(secret_file.as_deref())?;
            let rules = match &config {
                Some(p) => {
                    config::ApplianceConfig::load(p)
                        .map_err(config_errors)?
                        .coldchain
                }
                None => ColdChainConfig::default(),
            };
            let html = medbox::report::render(&conn, &key, &rules, from, to, chrono::Utc::now())?;
            std::fs::write(&out, html)
                .with_context(|| format!("cannot write {}", out.display()))?;
            println!("wrote {}", out.display());
            Ok(())
        })(),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("medbox: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn audit_log(db: &std::path::Path, filter: &AuditFilter) -> Result<()> {
    let conn =
        medbox::store::schema::open_read_only(db).with_context(|| db.display().to_string())?;
    let rows = medbox::store::audit::rows(&conn, &filter.to_filter())?;
    println!(
        "{:>7}  {:24}  {:30}  {:22}  {:18}  reason",
        "seq", "utc", "kind", "subject", "actor"
    );
    for r in &rows {
        println!(
            "{:>7}  {:24}  {:30}  {:22}  {:18}  {}",
            r.seq, r.utc, r.kind, r.subject, r.actor, r.reason
        );
    }
    eprintln!("{} rows", rows.len());
    Ok(())
}

fn audit_export(
    db: &std::path::Path,
    format: ExportFormat,
    out: Option<&std::path::Path>,
    filter: &AuditFilter,
) -> Result<()> {
    use std::io::Write as _;
    let conn =
        medbox::store::schema::open_read_only(db).with_context(|| db.display().to_string())?;
    let rows = medbox::store::audit::rows(&conn, &filter.to_filter())?;
    let sink: Box<dyn std::io::Write> = match out {
        Some(p) => Box::new(
            std::fs::File::create(p).with_context(|| format!("cannot create {}", p.display()))?,
        ),
        None => Box::new(std::io::stdout().lock()),
    };
    let mut sink = std::io::BufWriter::new(sink);
    match format {
        ExportFormat::Json => {
            for r in &rows {
                writeln!(sink, "{}", serde_json::to_string(r)?)?;
            }
        }
        ExportFormat::Csv => {
            let mut w = csv::Writer::from_writer(sink);
            for r in &rows {
                w.serialize(r)?;
            }
            w.flush()?;
            return Ok(());
        }
    }
    sink.flush()?;
    Ok(())
}

fn schedule_command(cmd: ScheduleCommand) -> ExitCode {
    let result = match cmd {
        ScheduleCommand::Check { paths, board } => {
            let mut errors = Vec::new();
            let slots = match board.as_deref().map(BoardProfile::load).transpose() {
                Ok(b) => b.map(|b| b.carousel.slots),
                Err(e) => {
                    errors.extend(e);
                    None
                }
            };
            let mut checked = 0;
            for p in &paths {
                let loaded = if p.is_dir() {
                    let (ok, errs) = medbox::dosing::schedule::Schedule::load_dir(p);
                    errors.extend(errs);
                    ok.into_iter().map(|(_, s)| s).collect()
                } else {
                    match medbox::dosing::schedule::Schedule::load(p) {
                        Ok(s) => vec![s],
                        Err(e) => {
                            errors.extend(e);
                            Vec::new()
                        }
                    }
                };
                checked += loaded.len();
                if let Some(slots) = slots {
                    errors.extend(loaded.iter().flat_map(|s| s.slot_problems(slots)));
                }
            }
            for e in &errors {
                println!("{e}");
            }
            if errors.is_empty() {
                println!("{checked} schedule(s) valid");
                return ExitCode::SUCCESS;
            }
            return ExitCode::FAILURE;
        }
        ScheduleCommand::Next {
            file,
            from,
            count,
            json,
        } => schedule_next(&file, from, count, json),
        ScheduleCommand::Explain { file, at, db, json } => {
            schedule_explain(&file, at, db.as_deref(), json)
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("medbox: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn load_schedule(file: &std::path::Path) -> Result<medbox::dosing::schedule::Schedule> {
    medbox::dosing::schedule::Schedule::load(file).map_err(config_errors)
}

fn schedule_next(
    file: &std::path::Path,
    from: Option<chrono::DateTime<chrono::FixedOffset>>,
    count: usize,
    json: bool,
) -> Result<()> {
    use medbox::dosing::engine::windows;
    let s = load_schedule(file)?;
    let from = from.map_or_else(chrono::Utc::now, |t| t.with_timezone(&chrono::Utc));
    let mut out = Vec::new();
    for (m, rec) in &s.medications {
        let Some(rec) = rec else {
            out.push(serde_json::json!({ "medication": m.name, "prn": true, "occurrences": [] }));
            continue;
        };
        let occ = rec.next(s.tz, from - chrono::Duration::seconds(1), count * 3);
        let horizon = occ.last().copied().unwrap_or(from);
        let ws = windows(m, rec, s.tz, from, horizon);
        let list: Vec<_> = ws
            .iter()
            .filter(|w| {
                w.occurrence >= from && m.active_on(w.occurrence.with_timezone(&s.tz).date_naive())
            })
            .take(count)
            .map(|w| {
                let day = w.occurrence.with_timezone(&s.tz).date_naive();
                serde_json::json!({
                    "local": w.occurrence.with_timezone(&s.tz).to_rfc3339(),
                    "utc": w.occurrence.to_rfc3339(),
                    "units": m.units_on(day),
                    "opens_local": w.opens.with_timezone(&s.tz).to_rfc3339(),
                    "closes_local": w.closes.with_timezone(&s.tz).to_rfc3339(),
                })
            })
            .collect();
        out.push(serde_json::json!({ "medication": m.name, "slot": m.slot.get_ref(), "occurrences": list }));
    }
    let doc = serde_json::json!({ "patient": s.patient, "timezone": s.tz.name(), "from": from.to_rfc3339(), "medications": out });
    if json {
        println!("{doc}");
        return Ok(());
    }
    println!("patient {} ({})", s.patient, s.tz.name());
    for m in out {
        println!("{}", m["medication"].as_str().unwrap_or(""));
        if m["prn"].as_bool() == Some(true) {
            println!("  as needed");
        }
        for o in m["occurrences"].as_array().into_iter().flatten() {
            println!(
                "  {}  (UTC {})  {} unit(s)  window {} – {}",
                o["local"].as_str().unwrap_or(""),
                o["utc"].as_str().unwrap_or(""),
                o["units"],
                o["opens_local"].as_str().unwrap_or(""),
                o["closes_local"].as_str().unwrap_or("")
            );
        }
    }
    Ok(())
}

/// One patient's dose history as the appliance rebuilds it at start-up.
/// A patient's dose history and the day of vital readings before `now`, as the dispenser sees
/// them after a restart (readings stored without a patient belong to a one-patient cabinet's
/// only one, which is the patient asked about).
fn dose_history(
    db: &std::path::Path,
    patient: &str,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<(
    Vec<medbox::dosing::engine::DoseRecord>,
    Vec<medbox::dosing::engine::VitalReading>,
)> {
    let conn =
        medbox::store::schema::open_read_only(db).with_context(|| db.display().to_string())?;
    let history = medbox::store::doses::history(&conn)?.of(patient).to_vec();
    let vitals = medbox::store::vitals::recent(&conn, now - chrono::Duration::days(1))?
        .into_iter()
        .filter(|v| v.at <= now && v.patient.as_deref().is_none_or(|p| p == patient))
        .collect();
    Ok((history, vitals))
}

fn schedule_explain(
    file: &std::path::Path,
    at: chrono::DateTime<chrono::FixedOffset>,
    db: Option<&std::path::Path>,
    json: bool,
) -> Result<()> {
    use medbox::dosing::engine::{decide, decide_prn, Decision, PrnRequest, Role};
    let s = load_schedule(file)?;
    let now = at.with_timezone(&chrono::Utc);
    let (history, vitals) = match db {
        Some(db) => dose_history(db, &s.patient, now)?,
        None => Default::default(),
    };
    let mut out = Vec::new();
    for (m, rec) in &s.medications {
        let d = match rec {
            Some(r) => decide(m, r, s.tz, now, &history, &vitals, true),
            None => decide_prn(
                m,
                s.tz,
                now,
                &history,
                &vitals,
                true,
                &PrnRequest {
                    actor: "explain".into(),
                    role: Role::Patient,
                    override_reason: None,
                },
            ),
        };
        out.push((m.name.clone(), d));
    }
    if json {
        let v: Vec<_> = out
            .iter()
            .map(|(n, d)| serde_json::json!({ "medication": n, "result": d }))
            .collect();
        println!(
            "{}",
            serde_json::json!({ "patient": s.patient, "at": now.to_rfc3339(), "medications": v })
        );
        return Ok(());
    }
    println!(
        "patient {} at {} ({})",
        s.patient,
        now.with_timezone(&s.tz).to_rfc3339(),
        s.tz.name()
    );
    for (name, d) in out {
        match d {
            Decision::Dispense { occurrence, units } => println!(
                "  {name}: DISPENSE {units} unit(s){}",
                occurrence.map_or(" (as needed)".to_string(), |o| format!(
                    " for the dose of {}",
                    o.with_timezone(&s.tz).to_rfc3339()
                ))
            ),
            Decision::Refuse { reason, detail } => {
                println!("  {name}: {}: {detail}", reason.code())
            }
        }
    }
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
    let (schedules, mut errs) =
        medbox::dosing::schedule::Schedule::load_dir(&cfg.appliance.schedules);
    errs.extend(
        schedules
            .iter()
            .flat_map(|(_, s)| s.slot_problems(profile.carousel.slots)),
    );
    if !errs.is_empty() {
        return Err(config_errors(errs));
    }
    // Every time comes from one clock, the one the controller runs on.
    let clock: Arc<dyn Clock> = Arc::new(SystemClock::new());
    let key = match &cfg.audit.secret_file {
        Some(f) => {
            medbox::store::audit::ChainKey::from_file(f).with_context(|| f.display().to_string())?
        }
        None => medbox::store::audit::ChainKey::unkeyed(),
    };
    let signing_key = cfg
        .audit
        .signing_key
        .clone()
        .unwrap_or_else(|| medbox::store::checkpoint::default_key_path(&cfg.appliance.db));
    let mut recorder = medbox::store::recorder::Recorder::open_signing_with(
        &cfg.appliance.db,
        key,
        // Random, so rows of different boots never share an id (a process id repeats).
        medbox::store::recorder::new_boot_id(),
        &signing_key,
    )
    .with_context(|| cfg.appliance.db.display().to_string())?;
    let mut schedules: Vec<_> = schedules.into_iter().map(|(_, s)| s).collect();
    recorder.set_device_id(&cfg.appliance.device_id);
    recorder.set_fhir(cfg.mqtt.as_ref().is_some_and(|m| m.fhir));
    medbox::store::schedules::apply_installed(recorder.connection(), &mut schedules)?;
    // The chain is checked before anything is rebuilt from it.
    let integrity = recorder.integrity()?.map(|b| {
        tracing::error!(
            "the audit chain is broken at {}: nothing is dispensed until a pharmacist acknowledges",
            b.detail
        );
        medbox::dosing::dispenser::IntegrityBreak {
            seq: b.seq,
            detail: b.detail,
        }
    });
    // The time floor, read before this start writes anything.
    let clock_floor = medbox::store::doses::clock_floor(recorder.connection())?;
    let clock_locked = medbox::store::doses::clock_locked(recorder.connection())?;
    let elapsed_anchor = medbox::store::doses::elapsed_anchor(recorder.connection())?;
    // After the time floor is read: this row must not lower it.
    if recorder.note_unclean_stop(clock.now(), clock.monotonic())? {
        tracing::warn!("the last run ended without stopping cleanly (recorded)");
    }
    let (unconfirmed, extra) =
        medbox::store::schedules::check_loaded(recorder.connection(), &schedules)?;
    recorder.record_versions(
        &medbox::store::recorder::config_versions(&profile, &cfg.coldchain, &schedules),
        &extra,
        "system:loader",
        clock.now(),
        clock.monotonic(),
    )?;
    let dosing = medbox::controller::Dosing {
        integrity,
        clock_floor,
        clock_locked,
        elapsed_anchor,
        unconfirmed,
        installed_at: medbox::store::schedules::installed_at(recorder.connection())?,
        answered: medbox::store::commands::answered(recorder.connection(), clock.now())?,
        schedules,
        history: medbox::store::doses::history(recorder.connection())?,
        since: medbox::store::doses::first_start(recorder.connection())?,
        inventory: medbox::store::inventory::rebuild(recorder.connection())?,
        refill_days: Some(cfg.dosing.refill_days),
        vitals: medbox::store::vitals::recent(
            recorder.connection(),
            clock.now() - chrono::Duration::days(1),
        )?,
    };
    runtime.block_on(async {
        let (fridge, dispenser) = medbox::board::rpi::build(&profile, clock.monotonic())
            .context("cannot open the Raspberry Pi's GPIO and buses")?;
        let running = medbox::controller::start(
            clock.clone(),
            cfg.coldchain
                .with_relay(medbox::board::relay_limits(&profile)),
            medbox::controller::Strategy::Protected,
            fridge,
            dispenser,
            dosing,
        );
        // The uplink, when configured: its own thread, the outbox as its queue, read through
        // the recorder's owner (the serving loop below).
        let (owner, mut outbox_requests) = medbox::store::outbox::channel();
        let uplink = match &cfg.mqtt {
            Some(m) => {
                let mut u = medbox::uplink::UplinkConfig::with_outbox(
                    &m.url,
                    &cfg.appliance.device_id,
                    medbox::uplink::OutboxSource::Owner(owner.clone()),
                );
                u.commands = Some(running.commands.clone());
                (u.tls, u.credentials) = BrokerAuth {
                    mqtt_ca: m.ca_file.clone(),
                    mqtt_cert: m.cert_file.clone(),
                    mqtt_key: m.key_file.clone(),
                    mqtt_username: m.username.clone(),
                    mqtt_password_file: m.password_file.clone(),
                }
                .resolve()?;
                Some(medbox::uplink::UplinkThread::spawn(
                    u,
                    std::time::Duration::from_secs(10),
                )?)
            }
            None => None,
        };
        let signal = shutdown_signal();
        tokio::pin!(signal);
        let served = medbox::controller::serve::serve(
            running,
            &*clock,
            Some(&mut recorder),
            uplink.is_some().then_some(&mut outbox_requests),
            signal,
            |ev| println!("{}", serde_json::to_string(ev).unwrap_or_default()),
            |_| {},
        )
        .await;
        if let Some((e, unrecorded)) = served.storage_failure {
            for ev in &unrecorded {
                eprintln!(
                    "unrecorded: {}",
                    serde_json::to_string(ev).unwrap_or_default()
                );
            }
            eprintln!("medbox: storage failed, appliance stopped: {e}");
            std::process::exit(3);
        }
        drop(owner);
        if let Some(u) = uplink {
            // Deliver what is waiting (or give up after a while without a broker).
            u.drain_serving(recorder.connection(), &mut outbox_requests)
                .await?;
        }
        Ok(())
    })
}

#[cfg(not(feature = "rpi"))]
fn run_rpi(_cfg: config::ApplianceConfig, _profile: BoardProfile) -> Result<()> {
    bail!("this medbox was built without Raspberry Pi support: rebuild with `cargo build --release --features rpi`")
}
