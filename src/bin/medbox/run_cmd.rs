//! `medbox run`: the appliance on the board its config names, in real time. A Raspberry Pi
//! profile drives the real hardware; the simulated board's profile runs the same start-up,
//! serving and shutdown path over the physical model, so that path is tested end to end.

use crate::config_cmd::config_errors;
use crate::BrokerAuth;
use anyhow::{Context, Result};
use medbox::appliance::{self, ApplianceError, Settings, StoreSettings, UplinkSettings};
use medbox::clock::Clock;
use medbox::config::{self, BoardKind, BoardProfile};
use medbox::devices::{DispenserDevices, FridgeDevices};
use medbox::supervise::{supervise, Liveness, Note, Notify, Systemd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

/// Resolves on SIGINT or SIGTERM.
pub(crate) async fn shutdown_signal() {
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

/// Whether the appliance stopped because its store failed (exit 3, so a supervisor can tell a
/// storage failure from a configuration error).
pub(crate) fn stops_on_storage(e: &ApplianceError) -> bool {
    matches!(
        e,
        ApplianceError::Store(_) | ApplianceError::StorageFailed { .. }
    )
}

/// Reports a storage stop and exits 3. Nothing is lost silently: whatever could not be stored
/// goes to standard error, one JSON object a line, for the supervisor's journal.
pub(crate) fn storage_stop(e: ApplianceError) -> ! {
    if let ApplianceError::StorageFailed { unrecorded, .. } = &e {
        for ev in unrecorded {
            eprintln!(
                "unrecorded: {}",
                serde_json::to_string(ev).unwrap_or_default()
            );
        }
    }
    eprintln!("medbox: {e}");
    std::process::exit(3);
}

/// Why a Raspberry Pi profile cannot run here.
const NO_RPI: &str = "this medbox was built without Raspberry Pi support: rebuild with `cargo build --release --features rpi`";

/// A path from the config, relative to the config file's directory (so a config and what it
/// names move together).
pub(crate) fn beside(config_file: &Path, p: &Path) -> PathBuf {
    config_file.parent().unwrap_or(Path::new(".")).join(p)
}

/// Everything `run` needs from the config file, checked before any device is touched.
fn settings(config_path: &Path) -> Result<(Settings, BoardKind)> {
    let cfg = config::ApplianceConfig::load(config_path).map_err(config_errors)?;
    let profile = BoardProfile::load(&cfg.board_path(config_path)).map_err(config_errors)?;
    if profile.board.kind == BoardKind::Rpi && !cfg!(feature = "rpi") {
        anyhow::bail!(NO_RPI);
    }
    let dir = beside(config_path, &cfg.appliance.schedules);
    let (schedules, errs) = medbox::dosing::schedule::Schedule::load_dir(&dir);
    if !errs.is_empty() {
        return Err(config_errors(errs));
    }
    let key = match &cfg.audit.secret_file {
        Some(f) => {
            medbox::store::audit::ChainKey::from_file(f).with_context(|| f.display().to_string())?
        }
        None => medbox::store::audit::ChainKey::unkeyed(),
    };
    let uplink = match &cfg.mqtt {
        Some(m) => {
            let (tls, credentials) = BrokerAuth {
                mqtt_ca: m.ca_file.clone(),
                mqtt_cert: m.cert_file.clone(),
                mqtt_key: m.key_file.clone(),
                mqtt_username: m.username.clone(),
                mqtt_password_file: m.password_file.clone(),
            }
            .resolve()?;
            Some(UplinkSettings {
                url: m.url.clone(),
                tls,
                credentials,
                link: None,
            })
        }
        None => None,
    };
    let kind = profile.board.kind;
    Ok((
        Settings {
            device_id: cfg.appliance.device_id.clone(),
            profile,
            coldchain: cfg.coldchain.clone(),
            schedules: schedules.into_iter().map(|(_, s)| s).collect(),
            refill_days: Some(cfg.dosing.refill_days),
            strategy: medbox::controller::Strategy::Protected,
            fhir: cfg.mqtt.as_ref().is_some_and(|m| m.fhir),
            store: Some(StoreSettings {
                db: beside(config_path, &cfg.appliance.db),
                key,
                signing_key: cfg.audit.signing_key.clone(),
                max_pages: None,
                keep_dose_history: None,
            }),
            uplink,
            // Real time on either board: blocking device calls go to the blocking pool.
            offload: medbox::controller::hardware::Offload::Blocking,
        },
        kind,
    ))
}

/// The board's devices and the clock they run on.
type Board = (Arc<dyn Clock>, FridgeDevices, DispenserDevices);

/// Opens the board the profile names. Call inside the runtime (a simulated clock starts there).
fn open_board(profile: &BoardProfile, kind: BoardKind) -> Result<Board> {
    match kind {
        BoardKind::Sim => {
            // The simulated board in real time: its physics follow a simulated clock that
            // starts at the system's time and runs at one second a second.
            let clock = Arc::new(medbox::clock::SimClock::new(chrono::Utc::now(), 1.0));
            let (fridge, dispenser, _model) = medbox::board::sim::build(profile, clock.clone())?;
            Ok((clock, fridge, dispenser))
        }
        BoardKind::Rpi => open_rpi(profile),
    }
}

#[cfg(feature = "rpi")]
fn open_rpi(profile: &BoardProfile) -> Result<Board> {
    let clock: Arc<dyn Clock> = Arc::new(medbox::clock::SystemClock::new());
    let (fridge, dispenser) = medbox::board::rpi::build(profile, clock.monotonic())
        .context("cannot open the Raspberry Pi's GPIO and buses")?;
    Ok((clock, fridge, dispenser))
}

#[cfg(not(feature = "rpi"))]
fn open_rpi(_profile: &BoardProfile) -> Result<Board> {
    anyhow::bail!(NO_RPI)
}

/// The liveness record, even if a thread panicked while holding it (it holds no invariant a
/// panic could break half-way).
fn lock(l: &Mutex<Liveness>) -> MutexGuard<'_, Liveness> {
    l.lock().unwrap_or_else(|e| e.into_inner())
}

/// `medbox run --config FILE`: runs until SIGTERM or SIGINT, then puts the actuators in their
/// safe states, records the stop, lets the uplink deliver what waits, and exits 0.
pub(crate) fn run_appliance(config_path: PathBuf) -> Result<()> {
    let (settings, kind) = settings(&config_path)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let result = runtime.block_on(async {
        let profile = settings.profile.clone();
        // Random, so rows of different boots never share an id (a process id repeats).
        let opened = appliance::open(settings, medbox::store::recorder::new_boot_id())?;
        let (clock, fridge, dispenser) = open_board(&profile, kind)?;
        let liveness = Arc::new(Mutex::new(Liveness::new(clock.monotonic(), true)));
        let notify: Arc<dyn Notify> = Arc::new(Systemd);
        let supervisor = tokio::spawn(supervise(
            liveness.clone(),
            clock.clone(),
            notify.clone(),
            Systemd::watchdog(),
        ));
        let started = opened
            .restore(&*clock)?
            .start(clock.clone(), fridge, dispenser)?;
        tracing::info!("medbox is running");
        let until = async {
            shutdown_signal().await;
            lock(&liveness).stopping();
            notify.notify(&[
                Note::Stopping,
                Note::Status("stopping: compressor and carousel to their safe states".into()),
            ]);
        };
        let stopped = started
            .serve(
                until,
                |ev| {
                    lock(&liveness).seen(ev, clock.monotonic());
                    println!("{}", serde_json::to_string(ev).unwrap_or_default());
                },
                |_| lock(&liveness).stored(clock.monotonic()),
            )
            .await?;
        supervisor.abort();
        notify.notify(&[Note::Status("stopped: delivering the outbox".into())]);
        stopped.deliver().await?;
        anyhow::Ok(())
    });
    match result {
        Err(e) => match e.downcast::<ApplianceError>() {
            Ok(e) if stops_on_storage(&e) => storage_stop(e),
            Ok(e) => Err(e.into()),
            Err(e) => Err(e),
        },
        Ok(()) => Ok(()),
    }
}
