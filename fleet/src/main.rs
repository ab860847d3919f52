//! `medbox-fleet`: the fleet's collector and witness.

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use medbox_fleet::archive::{self, Archive};
use medbox_fleet::collect::{self, CollectConfig};
use medbox_fleet::portal::{store, Clock, Portal, PortalConfig};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "medbox-fleet",
    version,
    about = "Archive and witness a fleet of medbox appliances"
)]
struct Cli {
    /// PostgreSQL connection string.
    #[arg(
        long,
        global = true,
        env = "MEDBOX_FLEET_PG",
        default_value = "host=127.0.0.1 user=postgres dbname=test"
    )]
    pg: String,
    /// Schema to use (created if missing).
    #[arg(long, global = true)]
    schema: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Store every appliance's messages (shared subscription; acknowledged after commit).
    Collect {
        /// Broker.
        #[arg(long, default_value = "mqtt://127.0.0.1:1883")]
        mqtt: String,
        /// Shared-subscription group: collectors in one group split the load.
        #[arg(long, default_value = "medbox-fleet")]
        group: String,
        /// This collector's name (its MQTT client id; a restart resumes its session).
        #[arg(long, default_value = "collector-1")]
        name: String,
        /// Broker username (the password from MEDBOX_FLEET_MQTT_PASSWORD).
        #[arg(long)]
        username: Option<String>,
        /// Ask appliances for missing audit rows on their own, every so often (e.g. `15m`; a
        /// gap must outlive one round first). The identity must be granted the pharmacist
        /// role's command topics. Off by default: `medbox-fleet repair` asks on request.
        #[arg(long, value_parser = humantime::parse_duration)]
        repair_every: Option<std::time::Duration>,
    },
    /// Take a collector out of its group for good: it leaves the shared subscription, stores
    /// what the broker had queued for it, and its session is removed (a collector simply not
    /// started again leaves its share of the fleet's messages queued for it). Stop the collector
    /// first: two connections under one client id take the session from each other.
    Retire {
        /// Broker.
        #[arg(long, default_value = "mqtt://127.0.0.1:1883")]
        mqtt: String,
        /// Its shared-subscription group.
        #[arg(long, default_value = "medbox-fleet")]
        group: String,
        /// Its name.
        #[arg(long)]
        name: String,
        /// Broker username (the password from MEDBOX_FLEET_MQTT_PASSWORD).
        #[arg(long)]
        username: Option<String>,
        /// How long nothing must come, after leaving the group, before its session is removed.
        #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
        idle: std::time::Duration,
    },
    /// Create or update the archive's tables.
    Migrate,
    /// How fast collectors take a fleet's backlog into PostgreSQL (prints figures).
    Bench {
        /// Broker (default: a private Mosquitto with docs/mosquitto/fleet.conf's settings).
        #[arg(long)]
        mqtt: Option<String>,
        /// Simulated devices.
        #[arg(long, default_value_t = 20)]
        devices: usize,
        /// Simulated hours of backlog per device.
        #[arg(long, default_value_t = 6)]
        hours: u64,
        /// Collectors sharing the subscription.
        #[arg(long, default_value_t = 2)]
        collectors: usize,
        /// Most messages published and not yet stored (what one broker must hold at once).
        #[arg(long, default_value_t = 200_000)]
        max_queued: usize,
    },
    /// How long the portal's pages take for a fleet of N appliances (prints figures).
    BenchPages {
        /// Appliances in one organisation (each with a simulated day).
        #[arg(long, default_value_t = 1000)]
        devices: usize,
        /// Fetches of each page.
        #[arg(long, default_value_t = 20)]
        runs: usize,
    },
    /// Trust this checkpoint key for a device before it reports (otherwise the first valid
    /// checkpoint's key is pinned).
    Enrol {
        /// Device id.
        #[arg(long)]
        device: String,
        /// Its public key (hex), as `medbox audit pubkey` prints it at commissioning.
        #[arg(long)]
        pubkey: String,
    },
    /// Serve the portal to caregivers and pharmacists.
    Serve {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: std::net::SocketAddr,
        /// Broker the appliances take commands from.
        #[arg(long, default_value = "mqtt://127.0.0.1:1883")]
        mqtt: String,
        /// Broker username for the portal (the password from MEDBOX_FLEET_MQTT_PASSWORD).
        #[arg(long)]
        username: Option<String>,
        /// Mark the session cookie Secure (when a TLS proxy serves the portal).
        #[arg(long)]
        secure_cookies: bool,
        /// Seconds to wait for an appliance's answer to a command.
        #[arg(long, default_value_t = 15)]
        command_timeout: u64,
        /// Show the pages as of this instant (RFC 3339), e.g. to look at a simulated fleet.
        #[arg(long)]
        now: Option<chrono::DateTime<chrono::Utc>>,
    },
    /// Create or rename an organisation.
    Org {
        /// Short id.
        id: String,
        /// Name shown.
        name: String,
        /// Time zone of its people (IANA name).
        #[arg(long, default_value = "UTC")]
        timezone: chrono_tz::Tz,
    },
    /// Put an appliance in an organisation's care.
    Assign {
        /// Device id.
        device: String,
        /// Organisation id.
        org: String,
    },
    /// Create a person (or reset their password, role and organisation). The password is
    /// read from MEDBOX_FLEET_PASSWORD or the first line of standard input.
    Person {
        /// Login name.
        username: String,
        /// Organisation id.
        #[arg(long)]
        org: String,
        /// caregiver, nurse, clinician or pharmacist.
        #[arg(long)]
        role: String,
        /// Name shown.
        #[arg(long)]
        name: String,
        /// Make them an administrator of their organisation's people (the portal's People
        /// page); without it an existing person's administrator right is left as it was.
        #[arg(long)]
        admin: bool,
        /// Make them a fleet administrator: the portal's Organisations page (create
        /// organisations, add their administrators, put appliances in their care). Shows them no
        /// other organisation's patients.
        #[arg(long)]
        fleet_admin: bool,
        /// They must choose their own password at their first sign-in (for someone other than
        /// yourself: whoever sets a password knows it).
        #[arg(long)]
        must_change_password: bool,
    },
    /// Ask appliances for the audit rows the archive lacks (holes, and a tail up to the last
    /// checkpoint held); prints each gap and the appliance's answer.
    Repair {
        /// Only this device (default: every device in the archive).
        #[arg(long)]
        device: Option<String>,
        /// Broker (the identity must be granted the pharmacist role's command topics).
        #[arg(long, default_value = "mqtt://127.0.0.1:1883")]
        mqtt: String,
        /// Broker username (the password from MEDBOX_FLEET_MQTT_PASSWORD).
        #[arg(long)]
        username: Option<String>,
        /// Who asks, as the appliances record it.
        #[arg(long, default_value = "medbox-fleet repair")]
        actor: String,
        /// Only list the gaps.
        #[arg(long)]
        dry_run: bool,
    },
    /// Verify a device's exported chain (`medbox audit export --format json`) against the
    /// checkpoints the witness holds.
    Verify {
        /// Device id.
        #[arg(long)]
        device: String,
        /// The export.
        #[arg(long)]
        export: PathBuf,
        /// The chain's HMAC secret, when it is keyed.
        #[arg(long)]
        secret_file: Option<PathBuf>,
    },
}

/// A broker username with its password from `MEDBOX_FLEET_MQTT_PASSWORD` (never an argument).
fn mqtt_credentials(username: Option<String>) -> Result<Option<(String, String)>> {
    username
        .map(|u| {
            std::env::var("MEDBOX_FLEET_MQTT_PASSWORD")
                .context("--username needs MEDBOX_FLEET_MQTT_PASSWORD")
                .map(|p| (u, p))
        })
        .transpose()
}

#[tokio::main]
async fn main() -> Result<ExitCode> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::Collect {
            mqtt,
            group,
            name,
            username,
            repair_every,
        } => {
            let credentials = mqtt_credentials(username)?;
            let cfg = CollectConfig {
                mqtt,
                credentials,
                pg: cli.pg,
                schema: cli.schema,
                group,
                name,
                subscribed: None,
                repair_every,
                progress: None,
            };
            let stats = collect::collect(&cfg, async {
                let _ = tokio::signal::ctrl_c().await;
            })
            .await?;
            println!("{}", serde_json::to_string(&stats)?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Retire {
            mqtt,
            group,
            name,
            username,
            idle,
        } => {
            let cfg = CollectConfig {
                mqtt,
                credentials: mqtt_credentials(username)?,
                pg: cli.pg,
                schema: cli.schema,
                group,
                name,
                subscribed: None,
                repair_every: None,
                progress: None,
            };
            let stats = collect::retire(&cfg, idle).await?;
            println!("{}", serde_json::to_string(&stats)?);
            eprintln!(
                "{} left group {} and its session is removed",
                cfg.name, cfg.group
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::BenchPages { devices, runs } => {
            let r = medbox_fleet::bench_pages::pages(&cli.pg, devices, runs).await?;
            println!("{}", serde_json::to_string_pretty(&r)?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench {
            mqtt,
            devices,
            hours,
            collectors,
            max_queued,
        } => {
            let r = medbox_fleet::bench::ingest(&medbox_fleet::bench::BenchConfig {
                mqtt,
                pg: cli.pg,
                devices,
                hours,
                collectors,
                max_queued,
            })
            .await?;
            println!("{}", serde_json::to_string_pretty(&r)?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Serve {
            listen,
            mqtt,
            username,
            secure_cookies,
            command_timeout,
            now,
        } => {
            let mqtt_credentials = mqtt_credentials(username)?;
            let portal = Portal::new(PortalConfig {
                pg: cli.pg,
                schema: cli.schema,
                mqtt,
                mqtt_credentials,
                secure_cookies,
                command_timeout: std::time::Duration::from_secs(command_timeout),
                clock: now.map_or(Clock::System, Clock::Fixed),
                band: (2.0, 8.0),
            })
            .await?;
            let listener = tokio::net::TcpListener::bind(listen)
                .await
                .with_context(|| format!("cannot listen on {listen}"))?;
            eprintln!("portal on http://{}", listener.local_addr()?);
            portal
                .serve(listener, async {
                    let _ = tokio::signal::ctrl_c().await;
                })
                .await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Org { id, name, timezone } => {
            let a = Archive::connect(&cli.pg, cli.schema.as_deref()).await?;
            store::upsert_org(a.client(), &id, &name, timezone.name()).await?;
            println!("organisation {id}: {name} ({timezone})");
            Ok(ExitCode::SUCCESS)
        }
        Command::Assign { device, org } => {
            let a = Archive::connect(&cli.pg, cli.schema.as_deref()).await?;
            store::assign_device(a.client(), &device, &org).await?;
            println!("{device} is in the care of {org}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Person {
            username,
            org,
            role,
            name,
            admin,
            fleet_admin,
            must_change_password,
        } => {
            let password = match std::env::var("MEDBOX_FLEET_PASSWORD") {
                Ok(p) => p,
                Err(_) => {
                    let mut line = String::new();
                    std::io::stdin().read_line(&mut line)?;
                    line.trim_end_matches(['\r', '\n']).to_string()
                }
            };
            if let Some(short) = medbox_fleet::portal::auth::too_short(&password) {
                anyhow::bail!("{short}");
            }
            let a = Archive::connect(&cli.pg, cli.schema.as_deref()).await?;
            store::upsert_person(a.client(), &username, &org, &role, &name, &password)
                .await
                .context("role must be caregiver, nurse, clinician or pharmacist, and the organisation must exist")?;
            if admin {
                store::set_admin(a.client(), &username, true).await?;
            }
            if fleet_admin {
                store::set_fleet_admin(a.client(), &username, true).await?;
            }
            if must_change_password {
                store::set_first_password(a.client(), &username, true).await?;
            }
            let what = match (admin, fleet_admin) {
                (false, false) => "",
                (true, false) => ", administrator",
                (false, true) => ", fleet administrator",
                (true, true) => ", administrator and fleet administrator",
            };
            println!("{username}: {role} of {org}{what}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Migrate => {
            Archive::connect(&cli.pg, cli.schema.as_deref()).await?;
            println!("archive up to date");
            Ok(ExitCode::SUCCESS)
        }
        Command::Enrol { device, pubkey } => {
            let a = Archive::connect(&cli.pg, cli.schema.as_deref()).await?;
            if archive::enrol(&a, &device, pubkey.trim()).await? {
                println!("{device}: key enrolled");
                Ok(ExitCode::SUCCESS)
            } else {
                println!("{device}: a key is already trusted for this device; not replaced");
                Ok(ExitCode::from(1))
            }
        }
        Command::Repair {
            device,
            mqtt,
            username,
            actor,
            dry_run,
        } => {
            let a = Archive::connect(&cli.pg, cli.schema.as_deref()).await?;
            let gaps = medbox_fleet::repair::gaps(&a, device.as_deref()).await?;
            for g in &gaps {
                println!("{}: audit rows {}-{} missing", g.device, g.from, g.to);
            }
            if dry_run || gaps.is_empty() {
                return Ok(ExitCode::SUCCESS);
            }
            let credentials = mqtt_credentials(username)?;
            let asked = medbox_fleet::repair::ask(
                &mqtt,
                credentials.as_ref(),
                &actor,
                &gaps,
                std::time::Duration::from_secs(30),
            )
            .await;
            let mut all_ok = true;
            for a in &asked {
                match &a.answer {
                    Ok(answer) => {
                        all_ok &= answer.ok;
                        println!("{}: {}", a.device, answer.detail);
                    }
                    Err(why) => {
                        all_ok = false;
                        println!("{}: not asked: {why}", a.device);
                    }
                }
            }
            Ok(if all_ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        Command::Verify {
            device,
            export,
            secret_file,
        } => {
            let a = Archive::connect(&cli.pg, cli.schema.as_deref()).await?;
            let rows = medbox::store::export_file::read(&export)?;
            let key = match secret_file {
                Some(p) => medbox::store::audit::ChainKey::from_file(&p)?,
                None => medbox::store::audit::ChainKey::unkeyed(),
            };
            let v = medbox_fleet::verify::verify(&a, &device, rows, &key).await?;
            println!("{}", serde_json::to_string(&v.verification)?);
            println!("witness checkpoints: {}", v.checkpoints);
            if !v.beyond.is_empty() {
                println!(
                    "broken: the witness holds checkpoints past the export's last row ({:?}): the export is cut short or older than what the device reported",
                    v.beyond
                );
            }
            for (code, detail) in &v.flags {
                println!("flagged {code}: {detail}");
            }
            Ok(if v.intact() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
    }
}
