//! The appliance's one start-up, serving and shutdown path, shared by `medbox run` (on the Pi or
//! on the simulated board in real time) and `medbox sim` (on simulated time).
//!
//! The order matters and is the same everywhere, which is why it lives here and not in each
//! command: the audit chain is verified before anything is rebuilt from it; the time floor, the
//! clock lock and the elapsed anchor are read before this start writes anything (a row written
//! first would raise the floor past a clock that went back); only then is the start recorded
//! (an unclean stop, the configuration versions) and the dosing state rebuilt; the controller
//! starts on the devices; the store owner serves events until asked to stop, puts the actuators
//! in their safe states, and finally the uplink delivers what is waiting.
//!
//! The phases are separate values ([`Opened`] → [`Restored`] → [`Started`] → [`Stopped`]) so a
//! caller can do what only it knows between them: the simulator sets its clock from the floor
//! and loads its scenario; a real appliance opens its GPIO.

use crate::clock::Clock;
use crate::coldchain::ColdChainConfig;
use crate::config::BoardProfile;
use crate::controller::{self, DispenserCommand, FridgeCommand, Strategy};
use crate::devices::{DispenserDevices, FridgeDevices};
use crate::dosing::dispenser::IntegrityBreak;
use crate::dosing::schedule::Schedule;
use crate::events::Event;
use crate::store::audit::ChainKey;
use crate::store::outbox::{OutboxRequest, OutboxRequests};
use crate::store::recorder::{Recorded, Recorder};
use crate::store::StoreError;
use crate::uplink::{UplinkStats, UplinkThread};
use chrono::{DateTime, Utc};
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use thiserror::Error;
use tokio::sync::{mpsc, watch};

/// How long the uplink keeps trying to deliver the outbox after a stop without a broker.
const DRAIN_GIVE_UP: Duration = Duration::from_secs(10);

/// Where the appliance keeps its records.
#[derive(Clone, Debug)]
pub struct StoreSettings {
    /// The SQLite database.
    pub db: PathBuf,
    /// HMAC key of the audit chain (unkeyed: plain SHA-256).
    pub key: ChainKey,
    /// The checkpoint signing key (None: beside the database).
    pub signing_key: Option<PathBuf>,
    /// Cap the database at this many pages (rehearses a full disk).
    pub max_pages: Option<u32>,
    /// Keep dose records in memory this long (None:
    /// [`crate::dosing::dispenser::KEEP_HISTORY`]); older ones are read back from here when a
    /// decision reaches them.
    pub keep_dose_history: Option<std::time::Duration>,
}

/// Where the appliance publishes.
#[derive(Clone, Debug)]
pub struct UplinkSettings {
    /// `mqtt://host:port` or `mqtts://host:port`.
    pub url: String,
    /// TLS files.
    pub tls: Option<crate::uplink::tls::TlsFiles>,
    /// Username and password.
    pub credentials: Option<(String, String)>,
    /// Whether the path to the broker exists (a simulated outage); None: always.
    pub link: Option<watch::Receiver<bool>>,
}

/// What the appliance runs with.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Device id (topic level, MQTT client id; never a patient's name).
    pub device_id: String,
    /// The board profile the devices were built from (recorded as a configuration version).
    pub profile: BoardProfile,
    /// Cold-chain settings.
    pub coldchain: ColdChainConfig,
    /// Validated schedules (a version installed by command replaces its file's at restore).
    pub schedules: Vec<Schedule>,
    /// Refill alert below this many days of doses (None: the default).
    pub refill_days: Option<f64>,
    /// How the compressor is decided.
    pub strategy: Strategy,
    /// Also queue FHIR renderings for the uplink.
    pub fhir: bool,
    /// The store (None: nothing durable; a simulation only).
    pub store: Option<StoreSettings>,
    /// The uplink (needs the store: the outbox lives there).
    pub uplink: Option<UplinkSettings>,
    /// Where blocking device calls run: the blocking pool for real time, in place for the
    /// simulated board on simulated time.
    pub offload: controller::hardware::Offload,
}

/// The appliance could not start, or stopped on a failure.
#[derive(Debug, Error)]
pub enum ApplianceError {
    /// A schedule uses a slot the carousel does not have.
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
    Schedules(Vec<crate::config::ConfigError>),
    /// The uplink was asked for without a store.
    #[error("the uplink needs a database (the outbox lives there)")]
    UplinkWithoutStore,
    /// The uplink could not start or failed.
    #[error("uplink: {0}")]
    Uplink(#[from] crate::uplink::UplinkError),
    /// The database could not be opened or read at start-up.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Storage failed past its grace period: the appliance stopped with its actuators safe. The
    /// events that could not be stored are handed back (oldest first) so the edge can put them
    /// where a supervisor keeps them.
    #[error("storage failed, appliance stopped: {error}")]
    StorageFailed {
        /// The last storage error.
        error: StoreError,
        /// What could not be recorded.
        unrecorded: Vec<Event>,
    },
}

/// The store is open and its chain checked; nothing has been written yet.
pub struct Opened {
    settings: Settings,
    recorder: Option<Recorder>,
    integrity: Option<IntegrityBreak>,
    clock_floor: Option<DateTime<Utc>>,
    clock_locked: bool,
    elapsed_anchor: Option<crate::dosing::engine::ElapsedAnchor>,
}

/// Opens the store (if any), verifies the audit chain and reads the time floor, writing nothing.
/// A schedule that names a slot the profile's carousel lacks is refused here.
pub fn open(settings: Settings, boot_id: String) -> Result<Opened, ApplianceError> {
    let misfits: Vec<_> = settings
        .schedules
        .iter()
        .flat_map(|s| s.slot_problems(settings.profile.carousel.slots))
        .collect();
    if !misfits.is_empty() {
        return Err(ApplianceError::Schedules(misfits));
    }
    if settings.uplink.is_some() && settings.store.is_none() {
        return Err(ApplianceError::UplinkWithoutStore);
    }
    let Some(store) = &settings.store else {
        return Ok(Opened {
            settings,
            recorder: None,
            integrity: None,
            clock_floor: None,
            clock_locked: false,
            elapsed_anchor: None,
        });
    };
    let signing_key = store
        .signing_key
        .clone()
        .unwrap_or_else(|| crate::store::checkpoint::default_key_path(&store.db));
    let mut recorder =
        Recorder::open_signing_with(&store.db, store.key.clone(), boot_id, &signing_key)?;
    if let Some(pages) = store.max_pages {
        recorder.limit_pages(pages)?;
    }
    recorder.set_device_id(&settings.device_id);
    recorder.set_fhir(settings.fhir);
    // The chain is checked before anything is rebuilt from it.
    let integrity = recorder.integrity()?.map(|b| {
        tracing::error!(
            "the audit chain is broken at {}: nothing is dispensed until a pharmacist acknowledges",
            b.detail
        );
        IntegrityBreak {
            seq: b.seq,
            detail: b.detail,
        }
    });
    let conn = recorder.connection();
    Ok(Opened {
        clock_floor: crate::store::doses::clock_floor(conn)?,
        clock_locked: crate::store::doses::clock_locked(conn)?,
        elapsed_anchor: crate::store::doses::elapsed_anchor(conn)?,
        settings,
        recorder: Some(recorder),
        integrity,
    })
}

impl Opened {
    /// When the appliance last recorded anything (None: never). A simulated clock resumes
    /// from here; a real one is judged against it by the dispenser core.
    pub fn clock_floor(&self) -> Option<DateTime<Utc>> {
        self.clock_floor
    }

    /// Records this start on `clock` (an unclean stop before it, the versions in use) and
    /// rebuilds the dosing state from the store.
    pub fn restore(mut self, clock: &dyn Clock) -> Result<Restored, ApplianceError> {
        let (now, mono) = (clock.now(), clock.monotonic());
        let mut unconfirmed = Vec::new();
        if let Some(rec) = self.recorder.as_mut() {
            // After the time floor is read: this row must not lower it.
            if rec.note_unclean_stop(now, mono)? {
                tracing::warn!("the last run ended without stopping cleanly (recorded)");
            }
            for patient in crate::store::schedules::apply_installed(
                rec.connection(),
                &mut self.settings.schedules,
            )? {
                tracing::info!(
                    "schedule of {patient}: the version installed by command, from the store"
                );
            }
            let (waiting, extra) =
                crate::store::schedules::check_loaded(rec.connection(), &self.settings.schedules)?;
            unconfirmed = waiting;
            rec.record_versions(
                &crate::store::recorder::config_versions(
                    &self.settings.profile,
                    &self.settings.coldchain,
                    &self.settings.schedules,
                ),
                &extra,
                "system:loader",
                now,
                mono,
            )?;
        }
        let dosing = match self.recorder.as_ref().map(Recorder::connection) {
            Some(conn) => controller::Dosing {
                integrity: self.integrity,
                schedules: self.settings.schedules.clone(),
                history: crate::store::doses::history(conn)?,
                since: crate::store::doses::first_start(conn)?,
                inventory: crate::store::inventory::rebuild(conn)?,
                refill_days: self.settings.refill_days,
                clock_floor: self.clock_floor,
                clock_locked: self.clock_locked,
                elapsed_anchor: self.elapsed_anchor,
                unconfirmed,
                installed_at: crate::store::schedules::installed_at(conn)?,
                answered: crate::store::commands::answered(conn, now)?,
                vitals: crate::store::vitals::recent(conn, now - chrono::Duration::days(1))?,
                keep_history: Some(
                    self.settings
                        .store
                        .as_ref()
                        .and_then(|s| s.keep_dose_history)
                        .and_then(|d| chrono::Duration::from_std(d).ok())
                        .unwrap_or(crate::dosing::dispenser::KEEP_HISTORY),
                ),
            },
            None => controller::Dosing {
                schedules: self.settings.schedules.clone(),
                refill_days: self.settings.refill_days,
                ..Default::default()
            },
        };
        Ok(Restored {
            settings: self.settings,
            recorder: self.recorder,
            dosing,
        })
    }
}

/// The start is recorded and the dosing state rebuilt; no device has been touched yet.
pub struct Restored {
    settings: Settings,
    recorder: Option<Recorder>,
    dosing: controller::Dosing,
}

impl Restored {
    /// The rebuilt dosing state (a simulator commissions a carousel whose inventory is empty).
    pub fn dosing(&self) -> &controller::Dosing {
        &self.dosing
    }

    /// Starts the controller on the devices, and the uplink if configured.
    pub fn start(
        self,
        clock: Arc<dyn Clock>,
        fridge: FridgeDevices,
        dispenser: DispenserDevices,
    ) -> Result<Started, ApplianceError> {
        let s = &self.settings;
        let running = controller::start(
            clock.clone(),
            s.coldchain
                .with_relay(crate::board::relay_limits(&s.profile)),
            s.strategy,
            fridge,
            dispenser,
            self.dosing,
            s.offload,
        );
        // The uplink asks the recorder's owner (the serving loop) for outbox rows: one owner
        // of the connection.
        let (owner, outbox_requests) = crate::store::outbox::channel();
        let wake = Arc::new(tokio::sync::Notify::new());
        let uplink = match &s.uplink {
            Some(u) => {
                let mut cfg = crate::uplink::UplinkConfig::with_outbox(
                    &u.url,
                    &s.device_id,
                    crate::uplink::OutboxSource::Owner(owner.clone()),
                );
                cfg.commands = Some(running.commands.clone());
                cfg.link = u.link.clone();
                cfg.wake = Some(wake.clone());
                (cfg.tls, cfg.credentials) = (u.tls.clone(), u.credentials.clone());
                Some(UplinkThread::spawn(cfg, DRAIN_GIVE_UP)?)
            }
            None => None,
        };
        Ok(Started {
            clock,
            handles: Handles {
                dispenser: running.dispenser.clone(),
                fridge: running.fridge.clone(),
                commands: running.commands.clone(),
            },
            running,
            recorder: self.recorder,
            uplink,
            owner,
            outbox_requests,
            wake,
        })
    }
}

/// Where a running appliance takes commands: the same channels the MQTT router feeds.
#[derive(Clone)]
pub struct Handles {
    /// Commands to the dispenser core.
    pub dispenser: mpsc::Sender<DispenserCommand>,
    /// Commands to the fridge.
    pub fridge: mpsc::Sender<FridgeCommand>,
    /// Commands as they arrive from outside, routed and authorised like MQTT ones.
    pub commands: mpsc::Sender<controller::commands::Inbound>,
}

/// The controller runs; nothing is served yet.
pub struct Started {
    clock: Arc<dyn Clock>,
    running: controller::Running,
    handles: Handles,
    recorder: Option<Recorder>,
    uplink: Option<UplinkThread>,
    owner: mpsc::Sender<OutboxRequest>,
    outbox_requests: OutboxRequests,
    /// Told of every durable record, for the uplink.
    wake: Arc<tokio::sync::Notify>,
}

impl Started {
    /// Where to send commands.
    pub fn handles(&self) -> &Handles {
        &self.handles
    }

    /// Serves events into the store until `until` completes (or storage fails past its grace
    /// period), then stops the controller (safe states) and records what the stop reported.
    /// `seen` hears every event before it is stored; `stored` every durable record.
    pub async fn serve(
        mut self,
        until: impl Future<Output = ()>,
        seen: impl FnMut(&Event),
        mut stored: impl FnMut(Recorded),
    ) -> Result<Stopped, ApplianceError> {
        // Every durable record put a row in the outbox: tell the uplink now, not at its next
        // look (a stored permit means a commit while it was busy is not missed either).
        let wake = self.wake.clone();
        let stored = move |r: Recorded| {
            wake.notify_one();
            stored(r)
        };
        let served = controller::serve::serve(
            self.running,
            &*self.clock,
            self.recorder.as_mut(),
            self.uplink.is_some().then_some(&mut self.outbox_requests),
            until,
            seen,
            stored,
        )
        .await;
        if let Some((error, unrecorded)) = served.storage_failure {
            return Err(ApplianceError::StorageFailed { error, unrecorded });
        }
        let outbox_before_uplink = match &self.recorder {
            Some(r) => Some(crate::store::recorder::outbox_len(r.connection())?),
            None => None,
        };
        Ok(Stopped {
            recorder: self.recorder,
            uplink: self.uplink,
            owner: self.owner,
            outbox_requests: self.outbox_requests,
            outbox_before_uplink,
        })
    }
}

/// The controller has stopped with its actuators safe; the uplink may still have messages to
/// deliver.
pub struct Stopped {
    recorder: Option<Recorder>,
    uplink: Option<UplinkThread>,
    owner: mpsc::Sender<OutboxRequest>,
    outbox_requests: OutboxRequests,
    outbox_before_uplink: Option<i64>,
}

/// How a stopped appliance left its outbox.
#[derive(Clone, Debug, Default)]
pub struct Delivery {
    /// Messages waiting when the controller stopped (None: no store).
    pub outbox_before_uplink: Option<i64>,
    /// What the uplink did (None: no uplink).
    pub uplink: Option<UplinkStats>,
}

impl Stopped {
    /// Lets the uplink deliver what is waiting (or give up after a while without a broker),
    /// answering its outbox requests meanwhile, then closes the store.
    pub async fn deliver(mut self) -> Result<Delivery, ApplianceError> {
        drop(self.owner);
        let uplink = match (self.uplink, &self.recorder) {
            (Some(u), Some(rec)) => Some(
                u.drain_serving(rec.connection(), &mut self.outbox_requests)
                    .await?,
            ),
            _ => None,
        };
        drop(self.recorder);
        Ok(Delivery {
            outbox_before_uplink: self.outbox_before_uplink,
            uplink,
        })
    }
}
