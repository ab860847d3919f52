//! `medbox bench`: figures, not assertions (the machines are shared and noisy; tests never assert
//! on wall-clock time).

use crate::store::audit::{self, ChainKey, Entry};
use crate::store::{schema, StoreError};
use chrono::Utc;
use serde::Serialize;
use std::path::Path;
use std::time::Instant;

/// Store benchmark figures.
#[derive(Clone, Debug, Serialize)]
pub struct StoreBench {
    /// Durable appends measured.
    pub appends: u64,
    /// Durable appends per second as the recorder writes an event: the hash-chained audit row
    /// and its outbox row in one transaction, synchronous=FULL.
    pub audit_appends_per_s: f64,
    /// Plain inserts of the same rows per second, same settings, one transaction each.
    pub plain_inserts_per_s: f64,
    /// audit / plain.
    pub ratio: f64,
    /// Rows verified.
    pub verify_rows: u64,
    /// Seconds to read and verify them.
    pub verify_seconds: f64,
    /// Rows verified per second.
    pub verify_rows_per_s: f64,
}

fn entry(i: u64) -> Entry {
    Entry {
        utc: Utc::now(),
        mono_ms: i as i64,
        boot_id: "bench".into(),
        clock_trusted: true,
        actor: "system:bench".into(),
        kind: "bench.event".into(),
        subject: format!("n:{i}"),
        body: serde_json::json!({ "i": i, "vial": 4.98, "air": 5.12, "note": "a typical small event body" }),
        reason: String::new(),
    }
}

/// Runs the store benchmark in `dir`.
pub fn store(dir: &Path, appends: u64, verify_rows: u64) -> Result<StoreBench, StoreError> {
    let key = ChainKey::unkeyed();
    let mut conn = schema::open(&dir.join("bench-audit.db"))?;
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS plain (utc TEXT, mono_ms INTEGER, boot_id TEXT, clock_trusted INTEGER, actor TEXT, kind TEXT, subject TEXT, body TEXT, reason TEXT)",
    )?;
    // Interleave the two so both see the same disk conditions.
    let (mut t_audit, mut t_plain) = (0.0, 0.0);
    for i in 0..appends {
        let e = entry(i);
        let t = Instant::now();
        // What the recorder writes per event: the audit row and its outbox row, one transaction.
        let tx = conn.transaction()?;
        let row = audit::append(&tx, &key, &e)?;
        crate::store::recorder::outbox(
            &tx,
            crate::wire::Priority::Event,
            "medbox/bench/events/bench",
            &serde_json::json!({ "schema": "medbox.event.v1", "id": format!("bench:{}", row.seq), "body": e.body }),
            &row.utc,
        )?;
        tx.commit()?;
        t_audit += t.elapsed().as_secs_f64();
        let t = Instant::now();
        let tx = conn.transaction()?;
        // Cached, as the recorder's statements are: the comparison is of what is written.
        tx.prepare_cached("INSERT INTO plain VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)")?
            .execute(rusqlite::params![
                e.utc.to_rfc3339(),
                e.mono_ms,
                e.boot_id,
                1,
                e.actor,
                e.kind,
                e.subject,
                serde_json::to_string(&e.body)?,
                e.reason
            ])?;
        tx.commit()?;
        t_plain += t.elapsed().as_secs_f64();
    }
    drop(conn);

    let mut conn = schema::open(&dir.join("bench-verify.db"))?;
    let have: u64 =
        conn.query_row("SELECT count(*) FROM audit", [], |r| r.get::<_, i64>(0))? as u64;
    if have < verify_rows {
        let tx = conn.transaction()?;
        for i in have..verify_rows {
            audit::append(&tx, &key, &entry(i))?;
        }
        tx.commit()?;
    }
    let t = Instant::now();
    // The same streaming verification as `audit verify --db` and the report.
    let v = audit::verify_store(&conn, &key, &[], &Default::default())?;
    let n = match &v {
        audit::Verification::Intact { count, .. } => *count as u64,
        audit::Verification::Broken { .. } => 0,
    };
    let verify_seconds = t.elapsed().as_secs_f64();
    if !matches!(v, audit::Verification::Intact { .. }) {
        return Err(StoreError::Key(format!(
            "benchmark chain did not verify: {v:?}"
        )));
    }
    let audit_rate = appends as f64 / t_audit.max(1e-9);
    let plain_rate = appends as f64 / t_plain.max(1e-9);
    Ok(StoreBench {
        appends,
        audit_appends_per_s: audit_rate,
        plain_inserts_per_s: plain_rate,
        ratio: audit_rate / plain_rate,
        verify_rows: n,
        verify_seconds,
        verify_rows_per_s: n as f64 / verify_seconds.max(1e-9),
    })
}

/// Simulation cost at one length.
#[derive(Clone, Debug, Serialize)]
pub struct SimBench {
    /// Simulated days.
    pub days: f64,
    /// CPU seconds of each run (this thread's time on a CPU, from `/proc/thread-self/schedstat`;
    /// wall seconds where that is missing).
    pub cpu_seconds: Vec<f64>,
    /// Median CPU seconds per simulated day: flat across lengths means linear.
    pub per_day_median: f64,
}

/// The shipped simulated board and example schedules, as `medbox sim` runs them by default.
fn shipped() -> anyhow::Result<(
    crate::config::BoardProfile,
    Vec<crate::dosing::schedule::Schedule>,
)> {
    crate::sim::shipped().map_err(|e| anyhow::anyhow!(e))
}

/// This thread's CPU time so far, or None off Linux.
fn thread_cpu() -> Option<f64> {
    let text = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    let ns: f64 = text.split_whitespace().next()?.parse().ok()?;
    Some(ns / 1e9)
}

/// Runs the default simulation (shipped board, schedules and household, `seed`) for each length
/// `runs` times on paused time, as `medbox sim --days N` does, and times each run.
pub fn sim(lengths: &[f64], runs: usize, seed: Option<u64>) -> anyhow::Result<Vec<SimBench>> {
    let (profile, schedules) = shipped()?;
    let mut out = Vec::new();
    for &days in lengths {
        let mut cpu_seconds = Vec::new();
        for _ in 0..runs.max(1) {
            let opts = crate::sim::SimOptions {
                seed,
                device_id: "medbox-bench".into(),
                schedules: schedules.clone(),
                household: Some(Default::default()),
                ..crate::sim::SimOptions::plain(
                    profile.clone(),
                    Some(std::time::Duration::from_secs_f64(days * 86_400.0)),
                )
            };
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .start_paused(true)
                .build()?;
            let (cpu0, wall0) = (thread_cpu(), Instant::now());
            rt.block_on(crate::sim::run(
                opts,
                crate::sim::Speed::Max,
                std::future::pending(),
            ))?;
            let spent = match (cpu0, thread_cpu()) {
                (Some(a), Some(b)) => b - a,
                _ => wall0.elapsed().as_secs_f64(),
            };
            cpu_seconds.push(spent);
        }
        let mut sorted = cpu_seconds.clone();
        sorted.sort_by(f64::total_cmp);
        let median = sorted[sorted.len() / 2];
        out.push(SimBench {
            days,
            cpu_seconds,
            per_day_median: median / days,
        });
    }
    Ok(out)
}

/// What a day of the appliance writes to its storage (SD-card wear).
#[derive(Clone, Debug, Serialize)]
pub struct DiskBench {
    /// Simulated days.
    pub days: f64,
    /// Bytes the process caused to be written to storage, per simulated day
    /// (`/proc/self/io` `write_bytes`).
    pub bytes_per_day: f64,
    /// Durable records (audit rows and readings), each its own committed transaction ending
    /// in an fsync of the write-ahead log, per simulated day.
    pub commits_per_day: f64,
    /// Bytes written per commit.
    pub bytes_per_commit: f64,
    /// Size of the database file at the end (data kept).
    pub db_bytes: u64,
}

fn write_bytes() -> Option<u64> {
    let io = std::fs::read_to_string("/proc/self/io").ok()?;
    io.lines()
        .find_map(|l| l.strip_prefix("write_bytes: "))
        .and_then(|v| v.trim().parse().ok())
}

/// Runs the default simulation with a database in `dir` for `days` and reports what it wrote.
pub fn disk(dir: &Path, days: f64) -> anyhow::Result<DiskBench> {
    let (profile, schedules) = shipped()?;
    let db = dir.join("bench-disk.db");
    let opts = crate::sim::SimOptions {
        db: Some(db.clone()),
        device_id: "medbox-bench".into(),
        schedules,
        household: Some(Default::default()),
        ..crate::sim::SimOptions::plain(
            profile,
            Some(std::time::Duration::from_secs_f64(days * 86_400.0)),
        )
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()?;
    let before = write_bytes().ok_or_else(|| anyhow::anyhow!("no /proc/self/io here"))?;
    let summary = rt.block_on(crate::sim::run(
        opts,
        crate::sim::Speed::Max,
        std::future::pending(),
    ))?;
    let written = write_bytes().unwrap_or(before).saturating_sub(before) as f64;
    let commits = summary.durable_records as f64;
    Ok(DiskBench {
        days,
        bytes_per_day: written / days,
        commits_per_day: commits / days,
        bytes_per_commit: written / commits.max(1.0),
        db_bytes: std::fs::metadata(&db).map(|m| m.len()).unwrap_or(0),
    })
}
