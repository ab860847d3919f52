//! `medbox sim`: the appliance on the simulated board, and its printed summary.

use crate::audit_cmd::chain_key;
use crate::config_cmd::config_errors;
use crate::run_cmd::{shutdown_signal, stops_on_storage, storage_stop};
use crate::ControllerArg;
use crate::SimArgs;
use anyhow::{bail, Context, Result};
use medbox::coldchain::ColdChainConfig;
use medbox::config::{self, BoardProfile};
use medbox::scenario::Scenario;
use medbox::sim::{self, SimOptions, Speed};
use std::time::Duration;

pub(crate) fn parse_speed(s: &str) -> Result<Speed> {
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

pub(crate) fn run_sim(args: SimArgs) -> Result<()> {
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
    // Nobody is home unless asked for: a scenario names its household, a plain run has one.
    let household = match &scenario {
        _ if args.no_household => None,
        Some(sc) => sc.household.clone(),
        None => Some(Default::default()),
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
        keep_checkpoints: args.checkpoints_out.is_some(),
        db,
        db_max_pages: args.db_max_pages,
        keep_dose_history: args.keep_dose_history,
        refill_days,
        fhir: args.fhir,
        audit_key: match &args.audit_secret_file {
            Some(f) => Some(chain_key(Some(f))?),
            None => None,
        },
        print_durable: args.print_durable,
        household,
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
        Err(sim::SimError::Appliance(e)) if stops_on_storage(&e) => storage_stop(e),
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
        print!("{}", sim::story::render(&summary));
    }
    Ok(())
}

pub(crate) fn opt(v: Option<f64>) -> String {
    v.map_or("--".into(), |v| format!("{v:.2}"))
}
