//! `medbox cmd …`: a command sent to an appliance over MQTT, with its answer printed, so nobody
//! types JSON into an MQTT client.

use crate::config_cmd::config_errors;
use crate::BrokerAuth;
use anyhow::{bail, Context, Result};
use clap::Subcommand;
use medbox::remote::{self, Request};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// Where the command goes and who sends it.
#[derive(clap::Args)]
pub(crate) struct Target {
    /// The appliance's device id.
    #[arg(long)]
    device: String,
    /// Who you are: the person the appliance records as having done it.
    #[arg(long)]
    actor: String,
    /// The role to send as (default: the command's usual one). The broker decides which roles
    /// your identity may use.
    #[arg(long)]
    role: Option<String>,
    /// The broker.
    #[arg(long, default_value = "mqtt://127.0.0.1:1883")]
    mqtt: String,
    #[command(flatten)]
    auth: BrokerAuth,
    /// How long to wait for the appliance's answer.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    timeout: Duration,
    /// The command's id (default: a new one). Sending an id again is answered, not done again.
    #[arg(long)]
    id: Option<String>,
}

#[derive(Subcommand)]
pub(crate) enum RemoteCommand {
    /// Record units loaded into a slot.
    Refill {
        #[command(flatten)]
        to: Target,
        /// Carousel slot.
        #[arg(long)]
        slot: u8,
        /// Units added.
        #[arg(long)]
        units: u32,
        /// Expiry date of the units loaded (YYYY-MM-DD).
        #[arg(long)]
        expiry: Option<chrono::NaiveDate>,
        /// Lot number or remark.
        #[arg(long)]
        note: Option<String>,
    },
    /// Acknowledge an alarm.
    Acknowledge {
        #[command(flatten)]
        to: Target,
        /// The alarm's code (DOOR_OPEN, EXCURSION, LOW_STOCK, …).
        #[arg(long)]
        alarm: String,
        /// What was done about it.
        #[arg(long)]
        comment: String,
        /// The slot, for a stock alarm.
        #[arg(long)]
        slot: Option<u8>,
    },
    /// Say what became of an uncertain dose after checking.
    Reconcile {
        #[command(flatten)]
        to: Target,
        #[command(flatten)]
        dose: Dose,
        /// Whether the patient had it (yes or no).
        #[arg(long, value_parser = clap::builder::BoolishValueParser::new())]
        given: bool,
        /// What was found.
        #[arg(long)]
        note: String,
        /// Units the patient had, when not the whole dose.
        #[arg(long)]
        units: Option<u32>,
    },
    /// Skip a scheduled dose on purpose.
    Skip {
        #[command(flatten)]
        to: Target,
        #[command(flatten)]
        dose: Dose,
    },
    /// Ask for an as-needed dose.
    Prn {
        #[command(flatten)]
        to: Target,
        /// Patient pseudonym.
        #[arg(long)]
        patient: String,
        /// Medication.
        #[arg(long)]
        medication: String,
        /// A nurse's or clinician's reason to go past the limits.
        #[arg(long)]
        override_reason: Option<String>,
    },
    /// Publish an adherence summary now.
    Report {
        #[command(flatten)]
        to: Target,
        /// Days it covers (1–90).
        #[arg(long)]
        days: Option<u32>,
    },
    /// Publish audit rows again (from..=to, at most 10 000), for an archive missing them.
    ResendAudit {
        #[command(flatten)]
        to: Target,
        /// First audit sequence number.
        #[arg(long)]
        from: i64,
        /// Last audit sequence number (inclusive).
        #[arg(long = "to", value_name = "TO")]
        last: i64,
    },
    /// Unlock dispensing after a clock jump, once the clock was checked.
    TrustClock {
        #[command(flatten)]
        to: Target,
        /// What the clock was checked against.
        #[arg(long)]
        comment: String,
    },
    /// Install a schedule file as its patient's schedule (checked here first, with the same
    /// parser as the appliance).
    #[command(alias = "schedule-install")]
    InstallSchedule {
        #[command(flatten)]
        to: Target,
        /// The schedule file.
        file: PathBuf,
        /// The version a second person confirms (a high-alert change needs it).
        #[arg(long)]
        confirm: Option<String>,
    },
}

/// Which dose: patient, medication and its scheduled time.
#[derive(clap::Args)]
pub(crate) struct Dose {
    /// Patient pseudonym.
    #[arg(long)]
    patient: String,
    /// Medication.
    #[arg(long)]
    medication: String,
    /// The dose's scheduled time: RFC 3339 with an offset, or a local time with --tz.
    #[arg(long)]
    occurrence: Option<String>,
    /// The zone of a local --occurrence (e.g. Europe/Berlin).
    #[arg(long)]
    tz: Option<chrono_tz::Tz>,
}

impl Dose {
    fn occurrence(&self) -> Result<Option<chrono::DateTime<chrono::Utc>>> {
        let Some(text) = &self.occurrence else {
            return Ok(None);
        };
        let t = match self.tz {
            Some(tz) => medbox::dosing::when::parse_moment(text, tz).map_err(anyhow::Error::msg),
            None => chrono::DateTime::parse_from_rfc3339(text)
                .map(|t| t.with_timezone(&chrono::Utc))
                .map_err(|_| {
                    anyhow::anyhow!(
                        "{text:?} has no offset: write it as 2026-03-02T08:00:00+01:00, or give --tz with a local time"
                    )
                }),
        };
        t.map(Some).context("--occurrence")
    }
}

pub(crate) fn remote_command(cmd: RemoteCommand) -> ExitCode {
    match build(cmd).and_then(|(to, request)| send(&to, &request)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("medbox: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn build(cmd: RemoteCommand) -> Result<(Target, Request)> {
    Ok(match cmd {
        RemoteCommand::Refill {
            to,
            slot,
            units,
            expiry,
            note,
        } => (
            to,
            Request::Refill {
                slot,
                units,
                expiry,
                note,
            },
        ),
        RemoteCommand::Acknowledge {
            to,
            alarm,
            comment,
            slot,
        } => (
            to,
            Request::Acknowledge {
                alarm: alarm.trim().to_ascii_uppercase(),
                comment,
                slot,
            },
        ),
        RemoteCommand::Reconcile {
            to,
            dose,
            given,
            note,
            units,
        } => {
            let occurrence = dose.occurrence()?;
            (
                to,
                Request::Reconcile {
                    patient: dose.patient,
                    medication: dose.medication,
                    occurrence,
                    given,
                    note,
                    units,
                },
            )
        }
        RemoteCommand::Skip { to, dose } => {
            let Some(occurrence) = dose.occurrence()? else {
                bail!("skip needs --occurrence: the dose's scheduled time");
            };
            (
                to,
                Request::Skip {
                    patient: dose.patient,
                    medication: dose.medication,
                    occurrence,
                },
            )
        }
        RemoteCommand::Prn {
            to,
            patient,
            medication,
            override_reason,
        } => (
            to,
            Request::Prn {
                patient,
                medication,
                override_reason,
            },
        ),
        RemoteCommand::Report { to, days } => (to, Request::Report { days }),
        RemoteCommand::ResendAudit { to, from, last } => {
            (to, Request::ResendAudit { from, to: last })
        }
        RemoteCommand::TrustClock { to, comment } => (to, Request::TrustClock { comment }),
        RemoteCommand::InstallSchedule { to, file, confirm } => {
            let schedule = std::fs::read_to_string(&file)
                .with_context(|| format!("cannot read {}", file.display()))?;
            // The appliance would refuse a file its parser refuses: say so here, by line.
            let parsed = medbox::dosing::schedule::Schedule::parse(&schedule, &file)
                .map_err(config_errors)?;
            (
                to,
                Request::InstallSchedule {
                    patient: parsed.patient,
                    schedule,
                    confirm,
                },
            )
        }
    })
}

fn send(to: &Target, request: &Request) -> Result<ExitCode> {
    let role = to.role.as_deref().unwrap_or(request.usual_role());
    let id = to
        .id
        .clone()
        .unwrap_or_else(|| format!("cli-{}", medbox::store::recorder::new_boot_id()));
    let (tls, credentials) = to.auth.resolve()?;
    let client_id = format!("medbox-cmd-{}", medbox::store::recorder::new_boot_id());
    let mut opts =
        medbox::uplink::broker_options(&to.mqtt, &client_id, tls.as_ref(), credentials.as_ref())?;
    opts.set_keep_alive(Duration::from_secs(10));
    opts.set_max_packet_size(256 * 1024, 64 * 1024);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let answer = runtime.block_on(remote::send(
        opts, &to.device, role, &to.actor, &id, request, to.timeout,
    ))?;
    let again = if answer.duplicate {
        " (this id was answered before: nothing was done again)"
    } else {
        ""
    };
    if answer.ok {
        println!("{} ({id}): done: {}{again}", request.name(), answer.detail);
        Ok(ExitCode::SUCCESS)
    } else {
        println!(
            "{} ({id}): refused: {}{again}",
            request.name(),
            answer.detail
        );
        Ok(ExitCode::from(1))
    }
}
