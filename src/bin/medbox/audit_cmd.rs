//! `medbox audit …` and `medbox vitals add`: the pharmacist's view of the store.

use crate::config_cmd::config_errors;
use crate::{AuditCommand, AuditFilter, ExportFormat};
use anyhow::{bail, Context, Result};
use medbox::coldchain::ColdChainConfig;
use medbox::config;
use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

pub(crate) fn read_export(path: &std::path::Path) -> Result<Vec<medbox::store::audit::Row>> {
    Ok(medbox::store::export_file::read(path)?)
}

pub(crate) fn read_checkpoints(
    path: &std::path::Path,
) -> Result<Vec<medbox::store::checkpoint::Checkpoint>> {
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
pub(crate) fn vitals_add(
    db: &std::path::Path,
    raw: serde_json::Value,
    secret: Option<&std::path::Path>,
) -> ExitCode {
    let now = chrono::Utc::now();
    let reading = serde_json::from_value::<medbox::dosing::vitals::RawVital>(raw)
        .map_err(|e| e.to_string())
        .and_then(|r| medbox::dosing::vitals::validate(&r, now));
    let mut reading = match reading {
        Ok(r) => r,
        Err(e) => {
            eprintln!("medbox: reading refused: {e}");
            return ExitCode::from(1);
        }
    };
    // Only a patient this appliance doses: a name typed by mistake must not reach the log.
    let known = medbox::store::schema::open_read_only(db)
        .map_err(anyhow::Error::from)
        .and_then(|conn| Ok(medbox::store::schedules::known_patients(&conn)?));
    let known = match known {
        Ok(k) => k,
        Err(e) => {
            eprintln!("medbox: {}: {e:#}", db.display());
            return ExitCode::from(2);
        }
    };
    let known: Vec<&str> = known.iter().map(String::as_str).collect();
    match medbox::dosing::vitals::whose(reading.patient.as_deref(), &known) {
        Ok(p) => reading.patient = Some(p),
        Err(refusal) => {
            eprintln!("medbox: reading refused: {refusal}");
            return ExitCode::from(1);
        }
    }
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
pub(crate) fn chain_key(file: Option<&std::path::Path>) -> Result<medbox::store::audit::ChainKey> {
    match file {
        Some(f) => medbox::store::audit::ChainKey::from_file(f)
            .with_context(|| format!("audit secret {}", f.display())),
        None => Ok(medbox::store::audit::ChainKey::unkeyed()),
    }
}

pub(crate) fn audit_verify(
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
    // A database is streamed; an export is read whole (it is a file someone handed over).
    let exported = match (&conn, &export) {
        (Some(_), _) => None,
        (None, Some(e)) => Some(read_export(e)?),
        (None, None) => bail!("give --db or --export"),
    };
    if let Some(first) = exported
        .as_ref()
        .and_then(|rows| rows.first())
        .filter(|r| r.seq != 1)
    {
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
    let v = match (exported, &conn) {
        (Some(rows), _) => audit::verify(rows, &key, &refs),
        (None, Some(conn)) => audit::verify_store(conn, &key, &refs, &Default::default())?,
        (None, None) => bail!("give --db or --export"),
    };
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

pub(crate) fn audit_command(cmd: AuditCommand) -> ExitCode {
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
            period,
            tz,
            out,
            secret_file,
            config,
        } => (|| {
            let conn = medbox::store::schema::open_read_only(&db)
                .with_context(|| db.display().to_string())?;
            let key = chain_key(secret_file.as_deref())?;
            let appliance = config
                .as_deref()
                .map(|p| config::ApplianceConfig::load(p).map_err(config_errors))
                .transpose()?;
            let rules = appliance
                .as_ref()
                .map_or_else(ColdChainConfig::default, |c| c.coldchain.clone());
            // The appliance's zone is its schedules' (its household's); UTC without them.
            let tz = tz.unwrap_or_else(|| {
                appliance
                    .as_ref()
                    .zip(config.as_deref())
                    .and_then(|(c, path)| {
                        let dir = crate::run_cmd::beside(path, &c.appliance.schedules);
                        let (loaded, _) = medbox::dosing::schedule::Schedule::load_dir(&dir);
                        loaded.first().map(|(_, s)| s.tz)
                    })
                    .unwrap_or(chrono_tz::UTC)
            });
            let period = period.within(tz)?;
            let html = medbox::report::render(&conn, &key, &rules, period, tz, chrono::Utc::now())?;
            std::fs::write(&out, html)
                .with_context(|| format!("cannot write {}", out.display()))?;
            println!("wrote {}", out.display());
            Ok(())
        })(),
    };
    crate::exit_code(result)
}

pub(crate) fn audit_log(db: &std::path::Path, filter: &AuditFilter) -> Result<()> {
    let conn =
        medbox::store::schema::open_read_only(db).with_context(|| db.display().to_string())?;
    let rows = medbox::store::audit::rows(&conn, &filter.to_filter()?)?;
    let tz = filter.tz;
    let mut table = comfy_table::Table::new();
    table
        .load_preset(comfy_table::presets::NOTHING)
        .set_header([
            "seq".to_string(),
            format!("time ({tz})"),
            "kind".into(),
            "subject".into(),
            "actor".into(),
            "reason".into(),
            "detail".into(),
        ]);
    if let Some(seq) = table.column_mut(0) {
        seq.set_cell_alignment(comfy_table::CellAlignment::Right);
    }
    for r in &rows {
        let time = chrono::DateTime::parse_from_rfc3339(&r.utc).map_or_else(
            |_| r.utc.clone(),
            |t| {
                t.with_timezone(&tz)
                    .format("%Y-%m-%d %H:%M:%S %Z")
                    .to_string()
            },
        );
        table.add_row([
            r.seq.to_string(),
            time,
            r.kind.clone(),
            r.subject.clone(),
            r.actor.clone(),
            r.reason.clone(),
            medbox::report::detail::row_detail(&r.body, tz),
        ]);
    }
    let mut out = std::io::stdout().lock();
    let printed = (|| -> std::io::Result<()> {
        for line in table.lines() {
            writeln!(out, "{}", line.trim_end())?;
        }
        out.flush()
    })();
    match printed {
        // `audit log | head`: the reader has what it wanted.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        Err(e) => Err(e.into()),
        Ok(()) => {
            eprintln!("{} rows", rows.len());
            Ok(())
        }
    }
}

pub(crate) fn audit_export(
    db: &std::path::Path,
    format: ExportFormat,
    out: Option<&std::path::Path>,
    filter: &AuditFilter,
) -> Result<()> {
    use std::io::Write as _;
    let conn =
        medbox::store::schema::open_read_only(db).with_context(|| db.display().to_string())?;
    let rows = medbox::store::audit::rows(&conn, &filter.to_filter()?)?;
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
                writeln!(sink, "{}", medbox::store::audit::to_json_line(r)?)?;
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

pub(crate) fn readings_export(
    db: &std::path::Path,
    (from, to): crate::Span,
    tz: chrono_tz::Tz,
    json: bool,
    out: Option<&std::path::Path>,
) -> Result<()> {
    use medbox::store::readings_export::{export, ExportError, Format};
    let conn =
        medbox::store::schema::open_read_only(db).with_context(|| db.display().to_string())?;
    let format = if json { Format::Json } else { Format::Csv };
    let sink: Box<dyn std::io::Write> = match out {
        Some(p) => Box::new(
            std::fs::File::create(p).with_context(|| format!("cannot create {}", p.display()))?,
        ),
        None => Box::new(std::io::stdout().lock()),
    };
    match export(&conn, from, to, tz, format, sink) {
        Ok(n) => {
            eprintln!("{n} readings");
            Ok(())
        }
        // `readings export | head`: the reader has what it wanted.
        Err(ExportError::Write(e)) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        Err(ExportError::Csv(e)) if matches!(e.kind(), csv::ErrorKind::Io(io) if io.kind() == std::io::ErrorKind::BrokenPipe) => {
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}
