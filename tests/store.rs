//! Durability and tamper evidence of the store, through the appliance and the CLI.

mod common;

use medbox::store::audit::{self, ChainKey, Filter, Verification};
use medbox::store::schema;
use rand::{Rng, SeedableRng};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};

fn medbox() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_medbox"));
    c.current_dir(env!("CARGO_MANIFEST_DIR"));
    c
}

fn sim_into(db: &Path, days: f64, scenario: Option<&str>) -> medbox::sim::SimSummary {
    let scenario = scenario.map(|n| {
        medbox::scenario::Scenario::load(
            &Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("hw/scenarios")
                .join(n),
        )
        .unwrap()
    });
    common::run(medbox::sim::SimOptions {
        scenario,
        keep_records: false,
        db: Some(db.to_path_buf()),
        ..common::options(days)
    })
}

/// Runs `medbox sim` on `db` for `days` with the scenario `text` (written beside the database).
fn sim_with(db: &Path, days: &str, text: &str) -> std::process::Output {
    let file = db.with_extension("scenario.toml");
    std::fs::write(&file, text).unwrap();
    medbox()
        .args(["sim", "--days", days, "--scenario"])
        .arg(&file)
        .arg("--db")
        .arg(db)
        .output()
        .unwrap()
}

/// Asserts that a run succeeded, showing its standard error otherwise.
fn ran(out: std::process::Output) {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The number an SQL query over `db` gives.
fn number(db: &Path, sql: &str) -> i64 {
    schema::open_read_only(db)
        .unwrap()
        .query_row(sql, [], |r| r.get(0))
        .unwrap()
}

fn verify_db(db: &Path) -> Verification {
    let conn = schema::open_read_only(db).unwrap();
    audit::verify(
        audit::rows(&conn, &Filter::default()).unwrap(),
        &ChainKey::unkeyed(),
        &[],
    )
}

#[test]
fn the_simulated_appliance_records_a_verifiable_chain_readings_and_checkpoints() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("m.db");
    let s = sim_into(&db, 1.0, Some("door-left-open.toml"));
    assert!(matches!(verify_db(&db), Verification::Intact { .. }));
    let conn = schema::open_read_only(&db).unwrap();
    let readings: i64 = conn
        .query_row("SELECT count(*) FROM readings", [], |r| r.get(0))
        .unwrap();
    assert!((1440..=1441).contains(&readings), "{readings}");
    let kinds: Vec<String> = audit::rows(&conn, &Filter::default())
        .unwrap()
        .into_iter()
        .map(|r| r.kind)
        .collect();
    // The versions of the configuration in use come first, then the start.
    assert_eq!(
        &kinds[..3],
        ["config.change", "config.change", "system.start"]
    );
    assert_eq!(kinds.last().map(String::as_str), Some("system.stop"));
    assert!(kinds.iter().any(|k| k == "coldchain.alarm_raised"));
    assert!(!s.checkpoints.is_empty());
    assert!(s.checkpoints.iter().all(|c| c.signature_valid()));
}

#[test]
fn a_restart_continues_the_same_chain() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("m.db");
    sim_into(&db, 0.2, None);
    let first = match verify_db(&db) {
        Verification::Intact { count, .. } => count,
        other => panic!("{other:?}"),
    };
    sim_into(&db, 0.2, None);
    match verify_db(&db) {
        Verification::Intact { count, .. } => assert!(count > first),
        other => panic!("{other:?}"),
    }
    let conn = schema::open_read_only(&db).unwrap();
    let starts = audit::rows(
        &conn,
        &Filter {
            kind: Some("system.start".into()),
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(starts.len(), 2);
    assert_ne!(starts[0].boot_id, starts[1].boot_id);
}

/// The temperature history is sealed into the chain: a warm reading rewritten as a cool one
/// (the triggers dropped first, as a tamperer would) is named by the seal that covers it.
#[test]
fn verify_catches_a_rewritten_fridge_reading_by_its_seal() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("m.db");
    sim_into(&db, 0.5, Some("door-left-open.toml"));
    let verify = || {
        let out = medbox()
            .args(["audit", "verify", "--db"])
            .arg(&db)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).to_string(),
        )
    };
    let (code, text) = verify();
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("all match"), "{text}");
    let conn = rusqlite::Connection::open(&db).unwrap();
    let (warmest, seal): (i64, i64) = conn
        .query_row(
            "SELECT r.id, (SELECT min(seq) FROM audit WHERE kind = 'coldchain.readings'
                AND json_extract(body, '$.to_id') >= r.id)
             FROM readings r ORDER BY r.vial DESC LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    conn.execute_batch("DROP TRIGGER readings_no_update;")
        .unwrap();
    conn.execute(
        "UPDATE readings SET vial = 5.0, air = 5.0 WHERE id = ?1",
        [warmest],
    )
    .unwrap();
    drop(conn);
    let (code, text) = verify();
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains(&format!("first bad row {seal} (readings_changed)")),
        "{text}"
    );
}

#[test]
fn verify_names_the_first_tampered_row_and_exits_one() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("m.db");
    sim_into(&db, 0.5, Some("door-left-open.toml"));
    let ok = medbox()
        .args(["audit", "verify", "--db"])
        .arg(&db)
        .output()
        .unwrap();
    assert_eq!(
        ok.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&ok.stdout)
    );
    let conn = rusqlite::Connection::open(&db).unwrap();
    conn.execute_batch(
        "DROP TRIGGER audit_no_update; UPDATE audit SET reason = 'nothing happened' WHERE seq = 3;",
    )
    .unwrap();
    drop(conn);
    let bad = medbox()
        .args(["audit", "verify", "--db"])
        .arg(&db)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&bad.stdout);
    assert_eq!(bad.status.code(), Some(1), "{text}");
    assert!(
        text.contains("first bad row 3 (changed); last good row 2"),
        "{text}"
    );
    let missing = medbox()
        .args(["audit", "verify", "--db", "/nonexistent/x.db"])
        .output()
        .unwrap();
    assert_eq!(missing.status.code(), Some(2));
}

#[test]
fn an_export_reverifies_offline_and_checkpoints_catch_a_truncation() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("m.db");
    let cps = dir.path().join("cps.jsonl");
    let out = medbox()
        .args([
            "sim",
            "--days",
            "1",
            "--scenario",
            "hw/scenarios/door-left-open.toml",
            "--db",
        ])
        .arg(&db)
        .arg("--checkpoints-out")
        .arg(&cps)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The device's public key, as recorded at commissioning: checkpoints are pinned to it.
    let key = pubkey(&db);
    assert_eq!(key.len(), 64, "{key}");
    for fmt in ["json", "csv"] {
        let file = dir.path().join(format!("export.{fmt}"));
        let e = medbox()
            .args(["audit", "export", "--format", fmt, "--db"])
            .arg(&db)
            .arg("--out")
            .arg(&file)
            .output()
            .unwrap();
        assert!(e.status.success());
        let v = medbox()
            .args(["audit", "verify", "--export"])
            .arg(&file)
            .arg("--against")
            .arg(&cps)
            .args(["--pubkey", &key])
            .output()
            .unwrap();
        assert_eq!(
            v.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&v.stdout)
        );
    }
    // A filtered export holds no chain to check: "cannot verify", never "broken".
    let filtered = dir.path().join("doses.json");
    let e = medbox()
        .args([
            "audit",
            "export",
            "--format",
            "json",
            "--kind",
            "coldchain.",
            "--db",
        ])
        .arg(&db)
        .arg("--out")
        .arg(&filtered)
        .output()
        .unwrap();
    assert!(e.status.success());
    let v = medbox()
        .args(["audit", "verify", "--export"])
        .arg(&filtered)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&v.stdout);
    assert_eq!(v.status.code(), Some(2), "{text}");
    assert!(text.contains("cannot verify"), "{text}");
    // Checkpoints signed by another key (another device, or a re-signed rewrite) are refused.
    let other = dir.path().join("other.db");
    let other_cps = dir.path().join("other.jsonl");
    let out = medbox()
        .args(["sim", "--days", "0.1", "--db"])
        .arg(&other)
        .arg("--checkpoints-out")
        .arg(&other_cps)
        .output()
        .unwrap();
    assert!(out.status.success());
    let v = medbox()
        .args(["audit", "verify", "--db"])
        .arg(&db)
        .arg("--against")
        .arg(&other_cps)
        .args(["--pubkey", &key])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&v.stdout);
    assert_eq!(v.status.code(), Some(2), "{text}");
    assert!(text.contains("signed by another key"), "{text}");
    // The signing key is its own file, readable by its owner only, and not in the database.
    let key_file = dir.path().join("m.db.signing-key");
    assert!(key_file.exists());
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&key_file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{mode:o}");
    }
    let in_db: i64 = schema::open_read_only(&db)
        .unwrap()
        .query_row("SELECT count(*) FROM device_identity", [], |r| r.get(0))
        .unwrap();
    assert_eq!(in_db, 0);
    // Cut the tail off the database: the chain alone still links, the checkpoints do not.
    let conn = rusqlite::Connection::open(&db).unwrap();
    let max: i64 = conn
        .query_row("SELECT max(seq) FROM audit", [], |r| r.get(0))
        .unwrap();
    conn.execute_batch(&format!(
        "DROP TRIGGER audit_no_delete; DELETE FROM checkpoints WHERE seq > {k}; DELETE FROM audit WHERE seq > {k};",
        k = max - 3
    ))
    .unwrap();
    drop(conn);
    let v = medbox()
        .args(["audit", "verify", "--db"])
        .arg(&db)
        .arg("--against")
        .arg(&cps)
        .args(["--pubkey", &key])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&v.stdout);
    assert_eq!(v.status.code(), Some(1), "{text}");
    assert!(text.contains("(truncated)"), "{text}");
}

/// The device's checkpoint public key, as `audit pubkey` prints it.
fn pubkey(db: &Path) -> String {
    let out = medbox()
        .args(["audit", "pubkey", "--db"])
        .arg(db)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn a_full_disk_locks_the_dispenser_keeps_the_fridge_running_then_exits_with_code_three() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("m.db");
    let out = medbox()
        .args(["sim", "--days", "2", "--db-max-pages", "30", "--db"])
        .arg(&db)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(err.contains("storage failed"), "{err}");
    assert!(err.contains("dispenser locked, fridge running"), "{err}");
    // The fridge kept reporting during the grace period; what could not be stored is written
    // out, not dropped.
    let unrecorded: Vec<serde_json::Value> = err
        .lines()
        .filter_map(|l| l.strip_prefix("unrecorded: "))
        .map(|j| serde_json::from_str(j).unwrap())
        .collect();
    let readings = unrecorded.iter().filter(|v| v["kind"] == "reading").count();
    assert!(readings >= 1, "{err}");
    assert!(
        !unrecorded
            .iter()
            .any(|v| v["kind"] == "dose" && v["record"]["outcome"] == "dispensed"),
        "nothing is dispensed while storage fails"
    );
    // What was committed before the failure is intact.
    assert!(matches!(verify_db(&db), Verification::Intact { .. }));
}

/// `medbox audit report` on `db` with `extra` arguments; the page it wrote.
fn report(db: &Path, extra: &[&std::ffi::OsStr]) -> String {
    let html_path = db.with_extension("html");
    let out = medbox()
        .args(["audit", "report", "--db"])
        .arg(db)
        .arg("--out")
        .arg(&html_path)
        .args(extra)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::read_to_string(&html_path).unwrap()
}

#[test]
fn the_report_is_a_self_contained_page_with_chart_tables_and_verification() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("m.db");
    common::run(common::recording(&db, "door-left-open.toml", 1.5));
    let html = report(&db, &[]);
    for needle in [
        "<svg",
        "Audit chain intact",
        "Daily record",
        "Excursions",
        "DOOR_OPEN",
        "Range 2.0–8.0 °C",
        "Adherence per patient",
        "taken late",
        "Inventory and refills",
        "commissioning load",
        "Readings intact",
        "p-0042: Metformin",
    ] {
        assert!(html.contains(needle), "missing {needle}");
    }
    assert!(!html.contains("<script"), "no scripts");
    assert!(
        !html.contains("src=") && !html.contains("<link"),
        "no external resources"
    );
    assert!(
        html.contains("Cold-chain rules: the ones the appliance last recorded"),
        "the default rules are the ones the run recorded"
    );
    assert!(!html.contains("out of time order"));

    // A back-dated reading inserted by hand is shown and counted, not silently dropped; rules
    // other than the appliance's are said to differ.
    {
        let conn = rusqlite::Connection::open(&db).unwrap();
        conn.execute(
            "INSERT INTO readings (utc, vial, air, compressor_on, door_open, mains, mode) \
             VALUES ('2026-03-02T06:00:30.000Z', 4.2, 4.0, 0, 0, 1, 'thermostat')",
            [],
        )
        .unwrap();
    }
    let cfg = dir.path().join("appliance.toml");
    std::fs::write(
        &cfg,
        format!(
            "[appliance]\ndevice_id = \"medbox-test\"\nboard = {:?}\ndb = \"x.db\"\nschedules = \"s\"\n\n[coldchain.alarms.door_open]\ndelay = \"10m\"\n",
            Path::new(env!("CARGO_MANIFEST_DIR")).join("hw/sim.toml")
        ),
    )
    .unwrap();
    let html = report(&db, &["--config".as_ref(), cfg.as_os_str()]);
    assert!(
        html.contains("1 stored readings are out of time order"),
        "{html}"
    );
    assert!(html.contains("2026-03-02 06:00:30 UTC"));
    assert!(html.contains("COLD-CHAIN RULES DIFFER"));
}

/// Kills the simulator with SIGKILL at many points and restarts it on the same file: after each
/// round the database is intact, the chain verifies, and every record the child reported
/// durable (audit rows and group-committed readings) is still there, unchanged.
#[test]
fn sigkill_at_random_moments_loses_nothing_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("crash.db");
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(20261129);
    let mut verified_prefix: Vec<String> = Vec::new();
    for round in 0..10 {
        let mut child = medbox()
            .args([
                "sim",
                "--days",
                "2",
                "--scenario",
                "hw/scenarios/door-left-open.toml",
                "--print-durable",
                "--db",
            ])
            .arg(&db)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // About 420 commits in the two days: most rounds are killed mid-run.
        let kill_after: usize = rng.random_range(1..400);
        let mut acked_seq = 0i64;
        let mut acked_reading = 0i64;
        let mut lines = 0;
        let stdout = child.stdout.take().unwrap();
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if let Some(seq) = line.strip_prefix("durable audit ") {
                acked_seq = acked_seq.max(seq.parse().unwrap());
            }
            if let Some((_, to)) = line
                .strip_prefix("durable readings ")
                .and_then(|r| r.split_once('-'))
            {
                acked_reading = acked_reading.max(to.parse().unwrap());
            }
            if line.starts_with("durable") {
                lines += 1;
                if lines >= kill_after {
                    child.kill().unwrap();
                    break;
                }
            }
        }
        let _ = child.wait();
        let conn = rusqlite::Connection::open(&db).unwrap();
        let check: String = conn
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .unwrap();
        assert_eq!(check, "ok", "round {round}");
        drop(conn);
        let conn = schema::open_read_only(&db).unwrap();
        let rows = audit::rows(&conn, &Filter::default()).unwrap();
        let max = rows.last().map_or(0, |r| r.seq);
        assert!(
            max >= acked_seq,
            "round {round}: row {acked_seq} was acknowledged but the chain ends at {max}"
        );
        let readings: i64 = conn
            .query_row("SELECT coalesce(max(id), 0) FROM readings", [], |r| {
                r.get(0)
            })
            .unwrap();
        assert!(
            readings >= acked_reading,
            "round {round}: reading {acked_reading} was acknowledged but the last stored is {readings}"
        );
        for (i, h) in verified_prefix.iter().enumerate() {
            assert_eq!(&rows[i].hash, h, "round {round}: row {} changed", i + 1);
        }
        match audit::verify(rows.clone(), &ChainKey::unkeyed(), &[]) {
            Verification::Intact { .. } => {}
            other => panic!("round {round}: {other:?}"),
        }
        // No dose occurrence was released twice, whatever moment the kill hit (an interrupted
        // dispense stays `dispensing`: uncertain, never repeated).
        let history = medbox::store::doses::history(&conn).unwrap();
        let mut released = std::collections::BTreeMap::new();
        for (patient, r) in history.iter() {
            if matches!(r.outcome, medbox::dosing::engine::Outcome::Dispensing) {
                *released
                    .entry((patient.to_string(), r.medication.clone(), r.occurrence))
                    .or_insert(0) += 1;
            }
        }
        assert!(
            released.values().all(|n| *n == 1),
            "round {round}: {released:?}"
        );
        verified_prefix = rows.into_iter().map(|r| r.hash).collect();
    }
    assert!(verified_prefix.len() > 10);
}

#[test]
fn configuration_changes_are_audited_with_old_and_new_versions() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("m.db");
    let run = |cut_in: f64| {
        let coldchain = medbox::coldchain::ColdChainConfig {
            cut_in: medbox::units::Celsius(cut_in),
            ..Default::default()
        };
        common::run(medbox::sim::SimOptions {
            coldchain,
            keep_records: false,
            db: Some(db.clone()),
            ..common::options(1.0 / 24.0)
        });
    };
    run(6.0);
    run(6.0);
    run(6.5);
    let conn = schema::open_read_only(&db).unwrap();
    let changes = audit::rows(
        &conn,
        &Filter {
            kind: Some("config.change".into()),
            ..Default::default()
        },
    )
    .unwrap();
    let summary: Vec<(String, String)> = changes
        .iter()
        .map(|r| (r.subject.clone(), r.reason.clone()))
        .collect();
    assert_eq!(
        summary,
        vec![
            ("config:board".to_string(), "FIRST_SEEN".to_string()),
            ("config:coldchain".to_string(), "FIRST_SEEN".to_string()),
            ("config:coldchain".to_string(), "CHANGED".to_string()),
        ]
    );
    let last: serde_json::Value = serde_json::from_str(&changes[2].body).unwrap();
    let first: serde_json::Value = serde_json::from_str(&changes[1].body).unwrap();
    assert_eq!(last["old"], first["new"]);
    assert_ne!(last["old"], last["new"]);
}

#[test]
fn a_keyed_chain_verifies_only_with_its_secret() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("m.db");
    let secret = dir.path().join("audit.key");
    std::fs::write(&secret, "correct horse battery staple\n").unwrap();
    let out = medbox()
        .args(["sim", "--days", "0.3", "--audit-secret-file"])
        .arg(&secret)
        .arg("--db")
        .arg(&db)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let verify = |secret: Option<&std::path::Path>| {
        let mut c = medbox();
        c.args(["audit", "verify", "--db"]).arg(&db);
        if let Some(s) = secret {
            c.arg("--secret-file").arg(s);
        }
        c.output().unwrap()
    };
    assert_eq!(verify(Some(&secret)).status.code(), Some(0));
    // Without the secret a keyed chain cannot be verified at all (exit 2), never "broken".
    let plain = verify(None);
    let text = String::from_utf8_lossy(&plain.stdout).to_string()
        + &String::from_utf8_lossy(&plain.stderr);
    assert_eq!(plain.status.code(), Some(2), "{text}");
    assert!(text.contains("keyed"), "{text}");
    let wrong = dir.path().join("wrong.key");
    std::fs::write(&wrong, "not the secret at all, sorry").unwrap();
    assert_eq!(verify(Some(&wrong)).status.code(), Some(1));
    // The appliance will not append to it without its secret (nor add one to a plain chain).
    let out = medbox()
        .args(["sim", "--days", "0.05", "--db"])
        .arg(&db)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("the chain is keyed"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A keyed chain passed off as a plain one (the mode rewritten): the holder of the secret
    // sees the downgrade.
    rusqlite::Connection::open(&db)
        .unwrap()
        .execute_batch("DROP TRIGGER chain_no_update; UPDATE chain SET keyed = 0;")
        .unwrap();
    let downgraded = verify(Some(&secret));
    let text = String::from_utf8_lossy(&downgraded.stdout);
    assert_eq!(downgraded.status.code(), Some(1), "{text}");
    assert!(text.contains("downgrade"), "{text}");
    // A secret too short to protect anything is refused up front.
    std::fs::write(&wrong, "short").unwrap();
    let out = medbox()
        .args(["sim", "--days", "0.1", "--audit-secret-file"])
        .arg(&wrong)
        .output()
        .unwrap();
    assert!(!out.status.success());
}

/// The power fails between a dispense's durable intent and its outcome (the shipped
/// `crash-mid-dispense` scenario aborts the process there). On restart the carousel re-homes
/// without dispensing, the dose is never given again on its own (the caregiver is alerted), the
/// chain is intact, and once a caregiver reconciles it as not given it is dispensed exactly once.
#[test]
fn a_crash_mid_dispense_and_a_restart_never_give_the_dose_twice() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("m.db");
    let sim = |days: &str, scenario: &Path| {
        medbox()
            .args(["sim", "--days", days, "--scenario"])
            .arg(scenario)
            .arg("--db")
            .arg(&db)
            .output()
            .unwrap()
    };
    let crashed = sim("1", Path::new("hw/scenarios/crash-mid-dispense.toml"));
    assert!(!crashed.status.success(), "the scenario aborts the process");
    let metformin = |conn: &rusqlite::Connection| -> Vec<(String, String)> {
        conn.prepare(
            "SELECT kind, reason FROM audit WHERE subject = 'patient:p-0042/medication:Metformin'
             AND (json_extract(body, '$.record.occurrence') = '2026-03-02T07:00:00Z'
                  OR json_extract(body, '$.occurrence') = '2026-03-02T07:00:00Z')
             ORDER BY seq",
        )
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect()
    };
    let kinds = |v: &[(String, String)]| v.iter().map(|(k, _)| k.clone()).collect::<Vec<_>>();
    {
        let conn = schema::open_read_only(&db).unwrap();
        assert_eq!(kinds(&metformin(&conn)), ["dose.dispensing"]);
    }
    // Restart half an hour later, inside the dose's window (the simulated clock resumes where
    // the database stopped, as a real one would).
    let quiet_day = dir.path().join("day.toml");
    std::fs::write(&quiet_day, "name = \"half an hour\"\n").unwrap();
    let again = sim("0.02", &quiet_day);
    assert!(
        again.status.success(),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    {
        let conn = schema::open_read_only(&db).unwrap();
        let check: String = conn
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .unwrap();
        assert_eq!(check, "ok");
        assert!(matches!(verify_db(&db), Verification::Intact { .. }));
        let m = metformin(&conn);
        assert_eq!(kinds(&m), ["dose.dispensing", "dose.alert"], "{m:?}");
        assert_eq!(m[1].1, "UNRECONCILED");
        let homed: i64 = conn
            .query_row(
                "SELECT count(*) FROM audit WHERE kind = 'dispenser.homed'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert!(homed >= 2, "homed at each start");
    }
    // A caregiver checks: nothing reached the patient. The window is still open: dispensed once.
    let reconcile = dir.path().join("reconcile.toml");
    std::fs::write(
        &reconcile,
        r#"name = "reconcile"
[[event]]
at = "30m"
action = "command"
command = "reconcile_dose"
payload = '{"id": "r1", "actor": "cg-1", "role": "caregiver", "args": {"patient": "p-0042", "medication": "Metformin", "occurrence": "2026-03-02T07:00:00Z", "given": false, "note": "power cut; cup empty"}}'
"#,
    )
    .unwrap();
    let third = sim("0.1", &reconcile);
    assert!(
        third.status.success(),
        "{}",
        String::from_utf8_lossy(&third.stderr)
    );
    let conn = schema::open_read_only(&db).unwrap();
    let m = kinds(&metformin(&conn));
    assert_eq!(
        m.iter().filter(|k| *k == "dose.dispensed").count(),
        1,
        "{m:?}"
    );
    assert!(m.contains(&"dose.confirmed_not_given".to_string()), "{m:?}");
}

/// A Pi without a real-time clock boots in the past (before NTP): the wall clock is behind the
/// last record. Dispensing stays locked (CLOCK_UNTRUSTED, audited) instead of repeating the
/// day's doses; a restart does not lift the lock; a person's `trust_clock` does, and is
/// audited with their name. No dose of the first day is ever given twice.
#[test]
fn a_restart_on_a_clock_behind_the_last_record_locks_dispensing_until_a_person_trusts_it() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("m.db");
    let run = |days: &str, scenario: &str| ran(sim_with(&db, days, scenario));
    let dispensed = |conn: &rusqlite::Connection| -> Vec<String> {
        conn.prepare(
            "SELECT json_extract(body, '$.record.occurrence') FROM audit \
             WHERE kind = 'dose.dispensed' AND subject LIKE 'patient:p-0042/%' ORDER BY seq",
        )
        .unwrap()
        .query_map([], |r| r.get::<_, String>(0))
        .unwrap()
        .map(Result::unwrap)
        .collect()
    };
    run("1", "name = \"first day\"\n");
    let first = dispensed(&schema::open_read_only(&db).unwrap());
    assert!(first.len() >= 2, "{first:?}");
    // The clock comes back on the same morning: behind every record.
    run(
        "1",
        "name = \"stale clock\"\nstart = \"2026-03-02T00:00:00Z\"\n",
    );
    {
        let conn = schema::open_read_only(&db).unwrap();
        assert_eq!(dispensed(&conn), first, "nothing given on a stale clock");
        let (actor, reason): (String, String) = conn
            .query_row(
                "SELECT actor, reason FROM audit WHERE kind = 'system.clock' ORDER BY seq LIMIT 1",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        assert_eq!(
            (actor.as_str(), reason.as_str()),
            ("system:controller", "UNTRUSTED")
        );
    }
    // A restart (the clock now resumes after the last record) keeps the lock.
    run("0.5", "name = \"restart\"\n");
    assert_eq!(dispensed(&schema::open_read_only(&db).unwrap()), first);
    // A caregiver checks the clock and says so: dosing resumes, the day before is not repeated.
    run(
        "1",
        r#"name = "trusted"
[[event]]
at = "1m"
action = "command"
command = "trust_clock"
payload = '{"id": "t1", "actor": "cg-7", "role": "caregiver", "args": {"comment": "checked against the phone network time"}}'
"#,
    );
    let conn = schema::open_read_only(&db).unwrap();
    let (actor, reason): (String, String) = conn
        .query_row(
            "SELECT actor, reason FROM audit WHERE kind = 'system.clock' ORDER BY seq DESC LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!((actor.as_str(), reason.as_str()), ("cg-7", "TRUSTED"));
    let after_trust: i64 = conn
        .query_row(
            "SELECT count(*) FROM audit WHERE clock_trusted = 0 \
             AND seq >= (SELECT max(seq) FROM audit WHERE kind = 'system.clock')",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(after_trust, 0, "rows after trust_clock are trusted");
    let all = dispensed(&conn);
    assert!(all.len() > first.len(), "dosing resumed: {all:?}");
    let unique: std::collections::BTreeSet<&String> = all.iter().collect();
    assert_eq!(
        unique.len(),
        all.len(),
        "an occurrence given twice: {all:?}"
    );
}

/// One analysis everywhere: over a month with faults (a power cut, a long door opening, probe
/// glitches and a stuck air probe that the vial disagrees with), the live monitor, the report
/// recomputed from the database and `coldchain stats` over the exported CSV run the same monitor
/// over the same inputs and agree.
#[test]
fn the_live_monitor_the_report_and_coldchain_stats_agree_on_a_month_with_faults() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("month.db");
    let s = common::run(medbox::sim::SimOptions {
        scenario: Some(
            medbox::scenario::Scenario::load(
                &Path::new(env!("CARGO_MANIFEST_DIR")).join("hw/scenarios/typical-month.toml"),
            )
            .unwrap(),
        ),
        db: Some(db.clone()),
        ..common::options(30.0)
    });
    let cfg = medbox::coldchain::ColdChainConfig::default();
    let conn = rusqlite::Connection::open(&db).unwrap();
    let (stored, report) = medbox::report::analysis(&conn, &cfg, None, None).unwrap();
    assert_eq!(stored.out_of_order.len(), 0);
    let mut csv = Vec::new();
    medbox::coldchain::readings_csv::write_records(&mut csv, &s.records).unwrap();
    let read = medbox::coldchain::readings_csv::read_observations(csv.as_slice()).unwrap();
    let stats = medbox::coldchain::analysis::analyse(&cfg, read.observations);
    let live = &s.coldchain;
    let alarms = |r: &medbox::coldchain::analysis::AnalysisReport| {
        r.alarms.iter().map(|a| (a.alarm, a.at)).collect::<Vec<_>>()
    };
    let spans = |r: &medbox::coldchain::analysis::AnalysisReport| {
        r.excursions
            .iter()
            .map(|x| (x.start, x.end))
            .collect::<Vec<_>>()
    };
    assert!(
        alarms(live)
            .iter()
            .any(|(k, _)| *k == medbox::coldchain::monitor::AlarmKind::ProbeDisagreement),
        "the stuck air probe is in the month"
    );
    for (name, other) in [("report", &report), ("coldchain stats", &stats)] {
        assert_eq!(alarms(other), alarms(live), "{name}");
        assert_eq!(spans(other), spans(live), "{name}");
        for (what, a, b) in [
            ("in range", other.minutes_in_range, live.minutes_in_range),
            (
                "out of range",
                other.minutes_out_of_range,
                live.minutes_out_of_range,
            ),
            ("uncertain", other.minutes_uncertain, live.minutes_uncertain),
        ] {
            assert!((a - b).abs() < 1.0, "{name}: {what} {a} vs live {b}");
        }
    }
}

/// A database changed behind the appliance's back: at the next start the chain does not verify,
/// so the dose history rebuilt from it cannot be trusted. The appliance raises the integrity
/// alarm, keeps the fridge running and dispenses nothing until a pharmacist acknowledges; after
/// that a restart follows the chain past the acknowledged row, and any new change locks again.
#[test]
fn a_tampered_database_locks_dispensing_until_a_pharmacist_acknowledges_the_break() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("m.db");
    let run = |days: &str, scenario: &str| ran(sim_with(&db, days, scenario));
    let count = |sql: &str| number(&db, sql);
    let dispensed = "SELECT count(*) FROM audit WHERE kind = 'dose.dispensed'";
    let broken = "SELECT count(*) FROM audit WHERE kind = 'audit.integrity' AND reason = 'BROKEN'";
    let readings = "SELECT count(*) FROM readings";
    run("1", "name = \"first day\"\n");
    let first = count(dispensed);
    assert!(first >= 2, "{first}");
    // Someone rewrites a dose row.
    rusqlite::Connection::open(&db)
        .unwrap()
        .execute_batch(
            "DROP TRIGGER IF EXISTS audit_no_update; \
             UPDATE audit SET reason = 'never happened' \
             WHERE seq = (SELECT min(seq) FROM audit WHERE kind = 'dose.dispensed');",
        )
        .unwrap();
    let before = count(readings);
    run("1", "name = \"tampered\"\n");
    assert_eq!(
        count(dispensed),
        first,
        "dispensed on an unverified history"
    );
    assert_eq!(count(broken), 1);
    assert!(count(readings) > before + 1000, "the fridge kept running");
    assert!(
        count(
            "SELECT count(*) FROM audit WHERE kind = 'dose.alert' AND reason = 'INTEGRITY_BROKEN'"
        ) >= 2
    );
    // A nurse may not decide it; a pharmacist does.
    run(
        "1",
        r#"name = "acknowledged"
[[event]]
at = "1m"
action = "command"
command = "acknowledge_alarm"
payload = '{"id": "i0", "actor": "n-1", "role": "nurse", "args": {"alarm": "INTEGRITY", "comment": "looks fine"}}'
[[event]]
at = "2m"
action = "command"
command = "acknowledge_alarm"
payload = '{"id": "i1", "actor": "ph-7", "role": "pharmacist", "args": {"alarm": "INTEGRITY", "comment": "compared with the pharmacy copy"}}'
"#,
    );
    assert_eq!(
        count(
            "SELECT count(*) FROM audit WHERE kind = 'audit.integrity' \
             AND reason = 'ACKNOWLEDGED' AND actor = 'ph-7'"
        ),
        1
    );
    assert_eq!(
        count(
            "SELECT count(*) FROM audit WHERE kind = 'command.result' \
             AND actor = 'n-1' AND reason LIKE 'ROLE_NOT_ALLOWED%'"
        ),
        1,
        "the nurse's acknowledgement was refused"
    );
    let resumed = count(dispensed);
    assert!(resumed > first, "dosing resumed");
    // That run started on the broken chain too, before the pharmacist came.
    assert_eq!(count(broken), 2);
    // The acknowledged break does not lock the next start; a new change does.
    run("0.5", "name = \"restart\"\n");
    assert_eq!(count(broken), 2, "the acknowledged break locked again");
    let after = count(dispensed);
    assert!(after > resumed, "the acknowledged break is followed past");
    rusqlite::Connection::open(&db)
        .unwrap()
        .execute_batch(
            "DROP TRIGGER IF EXISTS audit_no_update; \
             UPDATE audit SET reason = 'edited again' \
             WHERE seq = (SELECT max(seq) FROM audit WHERE kind = 'dose.dispensed');",
        )
        .unwrap();
    run("0.5", "name = \"tampered again\"\n");
    assert_eq!(count(broken), 3);
    assert_eq!(count(dispensed), after);
}

/// A run that dies (here: the process aborts) leaves no stop row; the next start records an
/// unclean stop naming the last row written. A clean stop ends with a checkpoint of the head it
/// stopped at, and the loader's configuration rows go upstream like every other audit row.
#[test]
fn an_unclean_stop_is_recorded_at_the_next_start_and_a_clean_stop_ends_with_a_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("m.db");
    let run = |scenario: &str| sim_with(&db, "0.2", scenario);
    let count = |sql: &str| number(&db, sql);
    let crashed = run("name = \"dies\"\n[[event]]\nat = \"2h\"\naction = \"crash\"\n");
    assert!(!crashed.status.success(), "the scenario's crash aborts");
    let unclean = "SELECT count(*) FROM audit WHERE kind = 'system.unclean_stop'";
    assert_eq!(count(unclean), 0);
    let last_before = count("SELECT max(seq) FROM audit");
    assert!(run("name = \"clean\"\n").status.success());
    assert_eq!(count(unclean), 1, "the crash is on record");
    assert_eq!(
        count(
            "SELECT json_extract(body, '$.last_seq') FROM audit WHERE kind = 'system.unclean_stop'"
        ),
        last_before,
        "it names the last row the dead run wrote"
    );
    // A clean stop: its stop row is the last row, and it is checkpointed.
    let stop = count("SELECT max(seq) FROM audit WHERE kind = 'system.stop'");
    assert_eq!(stop, count("SELECT max(seq) FROM audit"));
    assert_eq!(count("SELECT max(seq) FROM checkpoints"), stop);
    assert!(run("name = \"again\"\n").status.success());
    assert_eq!(count(unclean), 1, "a clean stop is not an unclean one");
    // The loader's rows are in the outbox too (no broker here, so they wait there).
    assert!(
        count("SELECT count(*) FROM outbox WHERE topic LIKE '%/events/config'") >= 1,
        "config.change rows never reach the outbox"
    );
    assert!(matches!(verify_db(&db), Verification::Intact { .. }));
    // A clean stop sealed every reading: one added by hand afterwards (back-dated, so it would
    // have looked genuine once the next run sealed it) locks dispensing at the next start.
    rusqlite::Connection::open(&db)
        .unwrap()
        .execute_batch(
            "INSERT INTO readings (utc, vial, air, compressor_on, door_open, mains, mode) \
             VALUES ('2026-03-02T03:00:00.000Z', 5.0, 5.0, 0, 0, 1, 'normal');",
        )
        .unwrap();
    assert!(run("name = \"forged\"\n").status.success());
    let detail: String = schema::open_read_only(&db)
        .unwrap()
        .query_row(
            "SELECT json_extract(body, '$.detail') FROM audit WHERE kind = 'audit.integrity'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert!(detail.contains("not written by the appliance"), "{detail}");
}

#[test]
fn audit_log_into_a_reader_that_stops_early_ends_quietly() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("m.db");
    // Enough rows to overflow a pipe's buffer, so the writer meets the closed pipe.
    sim_into(&db, 10.0, None);
    // `medbox audit log | head -n 1`: the reader goes away after one line.
    let mut child = medbox()
        .args(["audit", "log", "--db"])
        .arg(&db)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut first = String::new();
    std::io::BufRead::read_line(&mut out, &mut first).unwrap();
    assert!(first.contains("seq"), "{first}");
    drop(out);
    let done = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&done.stderr);
    assert!(done.status.success(), "{:?}: {stderr}", done.status);
    assert!(!stderr.contains("panicked"), "{stderr}");
}
