//! The command line as an operator uses it.

use std::process::Command;

fn medbox(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_medbox"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("medbox runs");
    let mut text = String::from_utf8_lossy(&out.stdout).to_string();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status.code().unwrap_or(-1), text)
}

#[test]
fn config_check_accepts_the_shipped_profiles() {
    let (code, text) = medbox(&["config", "check", "hw/rpi4.toml", "hw/sim.toml"]);
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("hw/rpi4.toml: ok"));
}

#[test]
fn config_check_names_both_uses_of_a_duplicated_pin_and_every_other_error() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    let src = include_str!("../hw/rpi4.toml")
        .replace("pin = 27", "pin = 17")
        .replace("0x48", "0x50");
    std::fs::write(&bad, src).unwrap();
    let (code, text) = medbox(&["config", "check", bad.to_str().unwrap()]);
    assert_eq!(code, 1, "{text}");
    assert!(
        text.contains(
            "fridge.door.pin: GPIO 17 is already used by fridge.compressor.pin (line 14)"
        ),
        "{text}"
    );
    assert!(text.contains("fridge.vial_probe.address"), "{text}");
}

#[test]
fn run_on_a_host_without_the_rpi_feature_says_how_to_build_it() {
    if cfg!(feature = "rpi") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("medbox.toml");
    let board = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("hw/rpi4.toml");
    std::fs::write(
        &cfg,
        format!(
            "[appliance]\ndevice_id = \"medbox-test\"\nboard = {:?}\ndb = \"x.db\"\nschedules = \"s\"\n",
            board
        ),
    )
    .unwrap();
    let (code, text) = medbox(&["run", "--config", cfg.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(text.contains("--features rpi"), "{text}");
}

#[test]
fn sim_prints_a_json_summary_from_the_model() {
    let (code, text) = medbox(&["sim", "--days", "0.5", "--speed", "max", "--json"]);
    assert_eq!(code, 0, "{text}");
    let v: serde_json::Value = serde_json::from_str(text.trim()).expect("one JSON object");
    assert!(v["fridge"]["vial"]["min"].as_f64().unwrap() < 22.0);
    assert!(v["fridge"]["compressor_starts"].as_u64().unwrap() >= 1);
    assert!((v["days"].as_f64().unwrap() - 0.5).abs() < 0.001, "{v}");
}

#[test]
fn sim_rejects_a_bad_scenario_with_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let sc = dir.path().join("s.toml");
    std::fs::write(
        &sc,
        "name = \"x\"\n[[event]]\nat = \"1h\"\naction = \"door_open\"\n",
    )
    .unwrap();
    let (code, text) = medbox(&["sim", "--days", "1", "--scenario", sc.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(text.contains("s.toml:2: event[0].for"), "{text}");
}

#[test]
fn vitals_add_refuses_bad_readings_with_a_reason_and_records_good_ones() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("m.db");
    let db = db.to_str().unwrap();
    let add = |extra: &[&str]| {
        let mut args = vec!["vitals", "add", "--db", db];
        args.extend_from_slice(extra);
        medbox(&args)
    };
    let (code, text) = add(&["--vital", "spo2", "--sfloat", "0x07FF", "--source", "oxi-1"]);
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("SFLOAT NaN"), "{text}");
    let (code, text) = add(&["--vital", "heart_rate", "--value", "NaN", "--source", "n-4"]);
    assert_eq!(code, 1, "{text}");
    let (code, text) = add(&["--vital", "heart_rate", "--value", "400", "--source", "n-4"]);
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("physiological range"), "{text}");
    let (code, text) = add(&["--vital", "pulse", "--value", "60", "--source", "n-4"]);
    assert_eq!(code, 1, "{text}");
    // The appliance records its schedules when it runs: only their patients may be named.
    let (code, text) = medbox(&["sim", "--days", "0.01", "--db", db, "--no-household"]);
    assert_eq!(code, 0, "{text}");
    let (code, text) = add(&[
        "--vital",
        "heart_rate",
        "--value",
        "52",
        "--source",
        "n-4",
        "--patient",
        "Marie",
    ]);
    assert_eq!(code, 1, "{text}");
    assert!(
        text.contains("UNKNOWN_PATIENT") && text.contains("never a name"),
        "{text}"
    );
    let (code, text) = add(&["--vital", "heart_rate", "--value", "52", "--source", "n-4"]);
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("PATIENT_REQUIRED"), "{text}");
    // Nothing refused was recorded; the good one is, with its source as the actor.
    let (code, text) = add(&[
        "--vital",
        "heart_rate",
        "--value",
        "52",
        "--source",
        "n-4",
        "--patient",
        "p-0042",
    ]);
    assert_eq!(code, 0, "{text}");
    let (code, text) = medbox(&[
        "audit",
        "log",
        "--db",
        db,
        "--kind",
        "vitals.",
        "--patient",
        "p-0042",
    ]);
    assert_eq!(code, 0, "{text}");
    assert_eq!(text.matches("vitals.reading").count(), 1, "{text}");
    let (_, all) = medbox(&["audit", "log", "--db", db, "--kind", "vitals"]);
    assert!(
        !all.contains("Marie"),
        "a refused name is never recorded: {all}"
    );
    assert!(text.contains("n-4"), "{text}");
}

/// `schedule explain --db` decides as the appliance would after a restart: with the stored dose
/// history and the stored vital readings (a low pulse holds the beta blocker; without the
/// readings it would only ask for one).
#[test]
fn schedule_explain_with_a_database_uses_its_stored_vital_readings() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("m.db");
    let scenario = dir.path().join("pulse.toml");
    std::fs::write(
        &scenario,
        "name = \"low pulse\"\n[[event]]\nat = \"6h 20m\"\naction = \"vital\"\npatient = \"p-0042\"\nvital = \"heart_rate\"\nvalue = 50\n",
    )
    .unwrap();
    let (code, text) = medbox(&[
        "sim",
        "--days",
        "0.3",
        "--scenario",
        scenario.to_str().unwrap(),
        "--db",
        db.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{text}");
    let explain = |db: Option<&str>| {
        let mut args = vec![
            "schedule",
            "explain",
            "schedules/p-0042-twice-daily-and-beta-blocker.toml",
            "--at",
            "2026-03-02T08:05:00+01:00",
        ];
        if let Some(db) = db {
            args.extend(["--db", db]);
        }
        medbox(&args)
    };
    let (code, with_db) = explain(db.to_str());
    assert_eq!(code, 0, "{with_db}");
    assert!(with_db.contains("Metoprolol: HELD_VITALS"), "{with_db}");
    let (_, without) = explain(None);
    assert!(without.contains("Metoprolol: NEEDS_READING"), "{without}");
}

/// A schedule is parsed against the largest carousel; the board it runs on may have fewer slots.
/// `schedule check --board` and the simulator both check against the board's own carousel.
#[test]
fn schedules_are_checked_against_the_boards_slots() {
    let dir = tempfile::tempdir().unwrap();
    let small = dir.path().join("four-slots.toml");
    let src = include_str!("../hw/sim.toml")
        .replace("slots = 8", "slots = 4")
        .replace(
            "slot_stock = [60, 30, 20, 10, 40, 200, 30, 0]",
            "slot_stock = [60, 30, 20, 10]",
        );
    std::fs::write(&small, src).unwrap();
    let board = small.to_str().unwrap();
    let (code, text) = medbox(&["schedule", "check", "schedules", "--board", board]);
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("p-0311-prn-painkiller.toml:12:"), "{text}");
    assert!(
        text.contains("slot 4 does not exist on this board"),
        "{text}"
    );
    assert!(text.contains("p-0520-prednisolone-taper.toml:9:"), "{text}");
    assert!(!text.contains("p-0042"), "slots 0 and 1 exist: {text}");
    let (code, text) = medbox(&["schedule", "check", "schedules", "--board", "hw/sim.toml"]);
    assert_eq!(code, 0, "{text}");
    // The simulator refuses to start rather than leave a dose `uncertain` on a missing slot.
    let (code, text) = medbox(&["sim", "--days", "0.01", "--board", board]);
    assert_ne!(code, 0, "{text}");
    assert!(text.contains("does not exist on this board"), "{text}");
}

/// One source of truth for the compressor's protection: `[coldchain]` sets it, and the board's
/// relay may only be stricter; `config check` names the relay key that is looser, at its line.
#[test]
fn config_check_refuses_a_relay_looser_than_the_cold_chain_settings() {
    let dir = tempfile::tempdir().unwrap();
    let board = dir.path().join("board.toml");
    std::fs::write(&board, include_str!("../hw/sim.toml")).unwrap();
    std::fs::create_dir(dir.path().join("s")).unwrap();
    let cfg = dir.path().join("appliance.toml");
    let write = |coldchain: &str| {
        std::fs::write(
            &cfg,
            format!(
                "[appliance]\ndevice_id = \"medbox-test\"\nboard = \"board.toml\"\ndb = \"x.db\"\nschedules = \"s\"\n\n[coldchain]\n{coldchain}\n"
            ),
        )
        .unwrap();
    };
    write("max_on = \"30m\"\nmin_off = \"5m\"");
    let (code, text) = medbox(&["config", "check", cfg.to_str().unwrap()]);
    assert_eq!(code, 1, "{text}");
    let line = include_str!("../hw/sim.toml")
        .lines()
        .position(|l| l.starts_with("max_on = \"45m\""))
        .unwrap()
        + 1;
    assert!(
        text.contains(&format!("board.toml:{line}: fridge.compressor.max_on: 45m is longer than coldchain.max_on (30m)")),
        "{text}"
    );
    assert!(
        text.contains("fridge.compressor.min_off: 4m is shorter"),
        "{text}"
    );
    // A relay stricter than the settings is fine.
    write("max_on = \"60m\"");
    let (code, text) = medbox(&["config", "check", cfg.to_str().unwrap()]);
    assert_eq!(code, 0, "{text}");
}

/// `config check` of an appliance config checks the schedules it names, as `run` would at start.
#[test]
fn config_check_checks_the_schedules_directory_the_config_names() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("appliance.toml");
    std::fs::write(
        &cfg,
        format!(
            "[appliance]\ndevice_id = \"medbox-test\"\nboard = {:?}\ndb = \"x.db\"\nschedules = \"s\"\n",
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("hw/sim.toml")
        ),
    )
    .unwrap();
    let (code, text) = medbox(&["config", "check", cfg.to_str().unwrap()]);
    assert_eq!(code, 1, "a missing directory: {text}");
    assert!(text.contains("s: cannot read"), "{text}");
    let s = dir.path().join("s");
    std::fs::create_dir(&s).unwrap();
    let (code, text) = medbox(&["config", "check", cfg.to_str().unwrap()]);
    assert_eq!(code, 0, "no patients yet is valid: {text}");
    std::fs::copy(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("schedules/p-0311-prn-painkiller.toml"),
        s.join("p-0311.toml"),
    )
    .unwrap();
    std::fs::write(s.join("broken.toml"), "patient = 3\n").unwrap();
    let (code, text) = medbox(&["config", "check", cfg.to_str().unwrap()]);
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("broken.toml"), "names the file: {text}");
}

/// A day of the appliance with its household, recorded in a fresh database.
fn recorded_day(dir: &std::path::Path) -> String {
    let db = dir.join("m.db").to_string_lossy().to_string();
    let (code, text) = medbox(&["sim", "--days", "1", "--db", &db]);
    assert_eq!(code, 0, "{text}");
    db
}

#[test]
fn a_pharmacist_reads_the_log_in_local_time_with_a_detail_column_and_local_day_filters() {
    let dir = tempfile::tempdir().unwrap();
    let db = recorded_day(dir.path());
    let (code, text) = medbox(&[
        "audit",
        "log",
        "--db",
        &db,
        "--tz",
        "Europe/Berlin",
        "--from",
        "2026-03-02T07:30",
        "--to",
        "2026-03-02T08:00",
        "--kind",
        "dose",
    ]);
    assert_eq!(code, 0, "{text}");
    let header = text.lines().next().unwrap();
    assert!(
        header.contains("time (Europe/Berlin)") && header.contains("detail"),
        "{text}"
    );
    let dispensed = text
        .lines()
        .find(|l| l.contains("dose.dispensed") && l.contains("Metformin"))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(dispensed.contains("2026-03-02 07:30"), "{dispensed}");
    assert!(
        dispensed.contains("dose of 2026-03-02 08:00 CET"),
        "{dispensed}"
    );
    // Columns line up: every row's kind starts where the header's does.
    let kind_at = header.find("kind").unwrap();
    for line in text.lines().skip(1).filter(|l| l.contains("dose.")) {
        assert_eq!(line.find("dose."), Some(kind_at), "{text}");
    }
    // A date alone is that local day.
    let (code, day) = medbox(&[
        "audit",
        "log",
        "--db",
        &db,
        "--tz",
        "Europe/Berlin",
        "--from",
        "2026-03-03",
        "--kind",
        "system.stop",
    ]);
    assert_eq!(code, 0, "{day}");
    assert!(
        day.contains("system.stop") && day.contains("2026-03-03 01:00:00 CET"),
        "{day}"
    );
}

#[test]
fn the_json_export_carries_bodies_as_objects_and_still_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let db = recorded_day(dir.path());
    let export = dir.path().join("audit.jsonl");
    let export = export.to_str().unwrap();
    let (code, text) = medbox(&[
        "audit", "export", "--db", &db, "--format", "json", "--out", export,
    ]);
    assert_eq!(code, 0, "{text}");
    let lines = std::fs::read_to_string(export).unwrap();
    let dose = lines
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|v| v["kind"] == "dose.dispensed")
        .expect("a dispensed dose");
    assert_eq!(dose["body"]["medication"], "Metformin", "{dose}");
    let (code, text) = medbox(&["audit", "verify", "--export", export]);
    assert_eq!(code, 0, "{text}");
    assert!(text.starts_with("intact"), "{text}");
}

#[test]
fn readings_export_gives_a_local_day_as_csv_that_coldchain_stats_reads() {
    let dir = tempfile::tempdir().unwrap();
    let db = recorded_day(dir.path());
    let csv = dir.path().join("day.csv");
    let csv = csv.to_str().unwrap();
    let (code, text) = medbox(&[
        "readings",
        "export",
        "--db",
        &db,
        "--tz",
        "Europe/Berlin",
        "--from",
        "2026-03-02T12:00",
        "--to",
        "2026-03-02T13:00",
        "--csv",
        "--out",
        csv,
    ]);
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("60 readings"), "{text}");
    let rows = std::fs::read_to_string(csv).unwrap();
    assert!(
        rows.lines().nth(1).unwrap().starts_with("2026-03-02T12:00"),
        "{rows}"
    );
    assert!(rows.lines().nth(1).unwrap().contains("+01:00"), "{rows}");
    let (code, text) = medbox(&["coldchain", "stats", "--csv", csv]);
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("60 valid readings"), "{text}");
}
