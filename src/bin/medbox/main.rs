//! The `medbox` command line: argument parsing and dispatch. Library errors get their context
//! in the command modules.

mod audit_cmd;
mod coldchain_cmd;
mod config_cmd;
mod generate;
mod remote_cmd;
mod run_cmd;
mod schedule_cmd;
mod sim_cmd;

use anyhow::{bail, Context, Result};
use audit_cmd::{audit_command, vitals_add};
use clap::{Parser, Subcommand};
use coldchain_cmd::coldchain_stats;
use config_cmd::config_check;
use generate::generate;
use run_cmd::run_appliance;
use schedule_cmd::schedule_command;
use sim_cmd::run_sim;
use std::path::PathBuf;
use std::process::ExitCode;

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

/// What `medbox run --help` (and its man page) says beyond the options.
const RUN_HELP: &str = "\
The board profile named by [appliance] board decides the hardware: a Raspberry Pi profile \
(kind = \"rpi\", needs a build with --features rpi) or the simulated board (kind = \"sim\"), \
which runs the same start-up, serving and shutdown path over the physical model in real time.

Signals: SIGTERM or SIGINT stops cleanly: compressor relay open, stepper de-energised, \
buzzer and LED off, the stop recorded, then the uplink delivers what waits (up to 10 s \
without a broker).

Exit status: 0 stopped on a signal; 1 configuration or hardware error (nothing was \
changed); 3 storage failed (the database could not be opened or written; what could not \
be recorded is printed to standard error as `unrecorded: <json>` lines).

Environment: RUST_LOG sets the log filter (default warn; e.g. RUST_LOG=info). NO_COLOR, or \
standard error not being a terminal, gives plain log lines. Under systemd (Type=notify) \
NOTIFY_SOCKET and WATCHDOG_USEC are read: READY=1 after the first valid fridge reading, \
WATCHDOG=1 only while readings are current and recorded, STATUS= with the fridge's state, \
STOPPING=1 on shutdown.";

#[derive(Subcommand)]
enum Command {
    /// Run the appliance on the simulated board, on simulated time.
    Sim(Box<SimArgs>),
    /// Run the appliance on the board its config names.
    #[command(after_long_help = RUN_HELP)]
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
    /// Send a command to an appliance over MQTT and print its answer (refill, acknowledge,
    /// reconcile, skip, an as-needed dose, a report, trust the clock, install a schedule).
    Cmd {
        #[command(subcommand)]
        command: remote_cmd::RemoteCommand,
    },
    /// The fridge readings in the database, for a pharmacist.
    Readings {
        #[command(subcommand)]
        command: ReadingsCommand,
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
    /// Write the man pages and shell completions into a directory (for packaging).
    #[command(hide = true)]
    Generate {
        /// Where to write `man/` and `completions/`.
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Subcommand)]
enum ReadingsCommand {
    /// Write the recorded readings between two moments as CSV (the columns `coldchain stats`
    /// reads) or JSON lines, times in the zone given.
    Export {
        /// The appliance's database.
        #[arg(long)]
        db: PathBuf,
        #[command(flatten)]
        period: Period,
        /// The zone of --from/--to and of the times written (default UTC).
        #[arg(long, default_value = "UTC")]
        tz: chrono_tz::Tz,
        /// CSV with a header (the default).
        #[arg(long, conflicts_with = "json")]
        csv: bool,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
        /// Write to this file instead of standard output.
        #[arg(long)]
        out: Option<PathBuf>,
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
    #[command(flatten)]
    period: Period,
    /// The zone of dates and times given and shown (e.g. Europe/Berlin; default UTC).
    #[arg(long, default_value = "UTC")]
    tz: chrono_tz::Tz,
    /// Kind and its family: "coldchain.excursion" also takes "coldchain.excursion.opened";
    /// "coldchain" every cold-chain row (a trailing "." is optional).
    #[arg(long)]
    kind: Option<String>,
    /// Patient pseudonym.
    #[arg(long)]
    patient: Option<String>,
    /// Medication name (letter case and spacing do not matter).
    #[arg(long)]
    medication: Option<String>,
}

impl AuditFilter {
    fn to_filter(&self) -> Result<medbox::store::audit::Filter> {
        let (from, to) = self.period.within(self.tz)?;
        Ok(medbox::store::audit::Filter {
            from,
            to,
            kind: self.kind.clone(),
            patient: self.patient.clone(),
            medication: self.medication.clone(),
        })
    }
}

/// A span of time typed by a person: either end may be left open.
#[derive(clap::Args, Clone)]
struct Period {
    /// From this moment (inclusive): a date (2026-03-03: its start), a date and time in the
    /// zone given, or RFC 3339 with an offset.
    #[arg(long)]
    from: Option<String>,
    /// To this moment (exclusive), written as --from.
    #[arg(long)]
    to: Option<String>,
}

/// The instants of a span.
type Span = (
    Option<chrono::DateTime<chrono::Utc>>,
    Option<chrono::DateTime<chrono::Utc>>,
);

impl Period {
    /// Its ends as instants, read in `tz`; a mistyped end names its flag.
    fn within(&self, tz: chrono_tz::Tz) -> Result<Span> {
        let moment = |flag: &str, text: &Option<String>| {
            text.as_deref()
                .map(|t| {
                    medbox::dosing::when::parse_moment(t, tz)
                        .map_err(|e| anyhow::anyhow!("{flag}: {e}"))
                })
                .transpose()
        };
        Ok((moment("--from", &self.from)?, moment("--to", &self.to)?))
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
        /// From this moment: a date or a date and time in the schedule's zone
        /// (2026-03-28, 2026-03-28T08:00), or RFC 3339 with an offset (default: now).
        #[arg(long)]
        from: Option<String>,
        /// Occurrences per medication.
        #[arg(long, default_value_t = 5)]
        count: usize,
        /// One JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Every dose of a week, day by day in local time (or an iCalendar file to import into a
    /// calendar).
    Week {
        /// A schedule file, or a directory of them (the whole cabinet).
        path: PathBuf,
        /// The first day (local date, default today in the schedules' zone).
        #[arg(long)]
        from: Option<chrono::NaiveDate>,
        /// How many days.
        #[arg(long, default_value_t = 7, value_parser = clap::value_parser!(u32).range(1..=62))]
        days: u32,
        /// Print an iCalendar (RFC 5545) file instead of the table.
        #[arg(long)]
        ics: bool,
    },
    /// What the engine would do at a moment for each medication, and why.
    Explain {
        /// The schedule file.
        file: PathBuf,
        /// The moment: a date and time in the schedule's zone (2026-03-29T08:10), or RFC 3339
        /// with an offset.
        #[arg(long)]
        at: String,
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
pub(crate) struct BrokerAuth {
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
pub(crate) type Security = (
    Option<medbox::uplink::tls::TlsFiles>,
    Option<(String, String)>,
);

impl BrokerAuth {
    /// Reads the password file and gathers the TLS files.
    pub(crate) fn resolve(&self) -> Result<Security> {
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
    /// What the default simulation writes to storage per simulated day (bytes, commits).
    Disk {
        /// Simulated days.
        #[arg(long, default_value_t = 2.0)]
        days: f64,
        /// Directory for the database (default: a temporary one).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// CPU seconds of the default simulation at several lengths (per simulated day, so
    /// linearity shows).
    Sim {
        /// Simulated lengths in days.
        #[arg(long, value_delimiter = ',', default_value = "1,7,30")]
        days: Vec<f64>,
        /// Runs per length.
        #[arg(long, default_value_t = 3)]
        runs: usize,
        /// Seed for the model's and the household's draws.
        #[arg(long)]
        seed: Option<u64>,
    },
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
        #[command(flatten)]
        period: Period,
        /// The zone of the report's times and days (default: the zone of the schedules the
        /// --config names, else UTC).
        #[arg(long)]
        tz: Option<chrono_tz::Tz>,
        /// Output file (HTML; print it, or open it in a browser and save as PDF).
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
    /// Keep dose records in memory this long (e.g. `0s`), to rehearse reading them back from
    /// the database; the default is 92 days.
    #[arg(long, hide = true, value_parser = humantime::parse_duration)]
    keep_dose_history: Option<std::time::Duration>,
    /// Also publish dose outcomes and vitals as FHIR R4 resources (`fhir/<resource>` topics).
    #[arg(long)]
    fhir: bool,
    /// Key the audit chain with the HMAC secret in this file (verify with `--secret-file`).
    #[arg(long)]
    audit_secret_file: Option<PathBuf>,
    /// Print `durable <seq>` after each audit row commits (crash-test harness).
    #[arg(long, hide = true)]
    print_durable: bool,
    /// Leave out the simulated people who collect doses and take readings (a run without a
    /// scenario has one per schedule; a scenario brings its own with a `[household]` table).
    #[arg(long)]
    no_household: bool,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        // Plain lines for the journal and for files; colour only for a person at a terminal
        // who has not asked for none (https://no-color.org).
        .with_ansi(
            std::io::IsTerminal::is_terminal(&std::io::stderr())
                && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()),
        )
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Sim(args) => run_sim(*args),
        Command::Run { config } => run_appliance(config),
        Command::Generate { out } => generate(&out),
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
        Command::Cmd { command } => return remote_cmd::remote_command(command),
        Command::Readings {
            command:
                ReadingsCommand::Export {
                    db,
                    period,
                    tz,
                    csv: _,
                    json,
                    out,
                },
        } => period
            .within(tz)
            .and_then(|span| audit_cmd::readings_export(&db, span, tz, json, out.as_deref())),
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
            command: BenchCommand::Disk { days, dir },
        } => (|| {
            let (dir, _tmp) = bench_dir(dir)?;
            let r = medbox::bench::disk(&dir, days)?;
            println!("{}", serde_json::to_string_pretty(&r)?);
            Ok(())
        })(),
        Command::Bench {
            command: BenchCommand::Sim { days, runs, seed },
        } => (|| {
            let rows = medbox::bench::sim(&days, runs, seed)?;
            for r in &rows {
                let shown: Vec<String> = r.cpu_seconds.iter().map(|s| format!("{s:.2}")).collect();
                println!(
                    "{:>5} days: CPU s {}  → {:.3} s per simulated day (median)",
                    r.days,
                    shown.join(" / "),
                    r.per_day_median
                );
            }
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
            let (dir, _tmp) = bench_dir(dir)?;
            let r = medbox::bench::store(&dir, appends, verify_rows)?;
            println!("{}", serde_json::to_string_pretty(&r)?);
            Ok(())
        })(),
    };
    exit_code(result)
}

/// The directory a bench writes its databases in: the one given, or a temporary one that lives
/// as long as the returned guard.
fn bench_dir(dir: Option<PathBuf>) -> Result<(PathBuf, Option<tempfile::TempDir>)> {
    match dir {
        Some(d) => Ok((d, None)),
        None => {
            let tmp = tempfile::tempdir()?;
            Ok((tmp.path().to_path_buf(), Some(tmp)))
        }
    }
}

/// Exit 0, or report the error with its context and exit 1.
fn exit_code(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("medbox: {e:#}");
            ExitCode::FAILURE
        }
    }
}
