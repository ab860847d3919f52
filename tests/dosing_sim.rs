//! Dosing on the simulated appliance: the shipped schedules dispensed on the simulated carousel.

mod common;

use medbox::dosing::engine::Outcome;
use medbox::dosing::schedule::{Schedule, DEFAULT_SCHEDULES};
use medbox::scenario::Scenario;
use medbox::sim::{SimOptions, SimSummary};
use std::collections::BTreeMap;
use std::path::Path;

fn schedules() -> Vec<Schedule> {
    DEFAULT_SCHEDULES
        .iter()
        .map(|(n, s)| Schedule::parse(s, Path::new(n)).unwrap())
        .collect()
}

fn run(days: f64, scenario: Option<&str>, db: Option<&Path>) -> SimSummary {
    common::run(SimOptions {
        scenario: scenario.map(|t| Scenario::parse(t, Path::new("s.toml")).unwrap()),
        keep_records: false,
        db: db.map(Path::to_path_buf),
        schedules: schedules(),
        ..common::options(days)
    })
}

#[test]
fn a_month_of_dosing_accounts_for_every_occurrence_exactly_once() {
    let days = 30;
    let s = run(f64::from(days), None, None);
    let start = common::profile().sim.unwrap().start;
    let end = start + chrono::Duration::days(i64::from(days));
    let mut finals: BTreeMap<(String, chrono::DateTime<chrono::Utc>), u32> = BTreeMap::new();
    for r in &s.dose_records {
        if r.outcome != Outcome::Taken && r.outcome != Outcome::Dispensing {
            *finals
                .entry((r.medication.clone(), r.occurrence.unwrap()))
                .or_default() += 1;
        }
    }
    assert!(
        finals.values().all(|n| *n == 1),
        "an occurrence with two outcomes: {finals:?}"
    );
    // Every occurrence whose window closed inside the run has its outcome.
    for sch in schedules() {
        for (m, rec) in &sch.medications {
            let Some(rec) = rec else { continue };
            for w in medbox::dosing::engine::windows(m, rec, sch.tz, start, end) {
                let day = w.occurrence.with_timezone(&sch.tz).date_naive();
                if w.occurrence < start || w.closes > end || !m.active_on(day) {
                    continue;
                }
                assert!(
                    finals.contains_key(&(m.name.clone(), w.occurrence)),
                    "{} at {} has no outcome",
                    m.name,
                    w.occurrence
                );
            }
        }
    }
    // Metoprolol has holds and no reading ever came: held every day, never dispensed.
    let held = s
        .dose_records
        .iter()
        .filter(|r| r.medication == "Metoprolol" && r.outcome == Outcome::Held)
        .count();
    assert_eq!(held, days as usize);
    assert_eq!(
        s.dispenser.doses.get("uncertain"),
        None,
        "{:?}",
        s.dispenser.doses
    );
    // What the engine recorded as dispensed is what fell.
    let units: u32 = s
        .dose_records
        .iter()
        .filter(|r| r.outcome == Outcome::Dispensed)
        .map(|r| r.units)
        .sum();
    assert_eq!(units, s.truth.units_released);
}

#[test]
fn a_low_heart_rate_holds_the_beta_blocker_and_a_good_one_releases_it() {
    // Berlin 08:00 is 07:00 UTC; readings at 06:45 UTC.
    let sc = r#"
name = "pulse"
[[event]]
at = "6h 45m"
action = "vital"
patient = "p-0042"
vital = "heart_rate"
value = 51
[[event]]
at = "6h 46m"
action = "vital"
patient = "p-0042"
vital = "systolic_bp"
value = 120
[[event]]
at = "1d 6h 45m"
action = "vital"
patient = "p-0042"
vital = "heart_rate"
value = 64
[[event]]
at = "1d 6h 46m"
action = "vital"
patient = "p-0042"
vital = "systolic_bp"
value = 118
"#;
    let s = run(2.0, Some(sc), None);
    let meto: Vec<_> = s
        .dose_records
        .iter()
        .filter(|r| r.medication == "Metoprolol" && r.outcome != Outcome::Dispensing)
        .collect();
    assert_eq!(meto.len(), 2, "{meto:?}");
    assert_eq!(meto[0].outcome, Outcome::Held);
    assert_eq!(meto[1].outcome, Outcome::Dispensed);
}

#[test]
fn a_clock_jump_locks_the_dispenser_until_the_clock_is_trusted_again() {
    // At 06:20 UTC the wall clock jumps back 3 h; a caregiver confirms it at 12:05 (wall 09:05).
    // Metformin's 08:00 Berlin dose (07:00 UTC, window to 09:00) falls in the locked time: it is
    // missed, never dispensed while the clock was not trusted.
    let sc = r#"
name = "jump"
[[event]]
at = "6h 20m"
action = "clock_jump"
by = "-3h"
[[event]]
at = "12h 5m"
action = "trust_clock"
"#;
    let s = run(1.0, Some(sc), None);
    assert_eq!(s.dispenser.clock_trust_changes, 2);
    let met: Vec<_> = s
        .dose_records
        .iter()
        .filter(|r| r.medication == "Metformin")
        .collect();
    assert_eq!(met[0].outcome, Outcome::Missed, "{met:?}");
}

#[test]
fn a_restart_neither_repeats_nor_loses_a_dose() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("m.db");
    run(0.5, None, Some(&db));
    // The simulated clock starts at the same instant again: every occurrence of the first run
    // comes round once more, and the rebuilt history must refuse all of them.
    run(1.0, None, Some(&db));
    let conn = medbox::store::schema::open_read_only(&db).unwrap();
    let history = medbox::store::doses::history(&conn).unwrap();
    let mut dispensed: BTreeMap<(String, String, Option<chrono::DateTime<chrono::Utc>>), u32> =
        BTreeMap::new();
    for (patient, r) in history
        .iter()
        .filter(|(_, r)| r.outcome == Outcome::Dispensed)
    {
        *dispensed
            .entry((patient.to_string(), r.medication.clone(), r.occurrence))
            .or_default() += 1;
    }
    assert!(!dispensed.is_empty());
    assert!(dispensed.values().all(|n| *n == 1), "{dispensed:?}");
}

#[test]
fn escalation_of_a_dose_left_in_the_cup_reaches_the_caregiver_and_a_pickup_stops_it() {
    let alerts = |s: &SimSummary, code: &str| s.dispenser.dose_alerts.get(code).copied();
    let nobody = run(1.0, None, None);
    let left: Vec<_> = nobody
        .dose_records
        .iter()
        .filter(|r| r.outcome == Outcome::Dispensed)
        .collect();
    assert!(left.len() >= 4, "{left:?}");
    // Nobody lifted the cup: every dispensed dose whose window closed reached "not taken", and
    // the caregiver heard of each before that.
    let not_taken = alerts(&nobody, "NOT_TAKEN").unwrap_or(0);
    assert!(not_taken >= 3, "{:?}", nobody.dispenser.dose_alerts);
    assert!(alerts(&nobody, "CAREGIVER_ALERT").unwrap_or(0) >= not_taken);
    assert!(alerts(&nobody, "LATE_NOTICE").unwrap_or(0) >= 1);
    // The patient lifts the cup after every dose: no escalation at all.
    let sc = r#"
name = "pickups"
[[event]]
at = "0s"
action = "tray_pickup"
every = "5m"
times = 288
"#;
    let diligent = run(1.0, Some(sc), None);
    assert_eq!(
        alerts(&diligent, "NOT_TAKEN"),
        None,
        "{:?}",
        diligent.dispenser.dose_alerts
    );
    assert_eq!(alerts(&diligent, "CAREGIVER_ALERT"), None);
    assert!(diligent
        .dose_records
        .iter()
        .any(|r| r.outcome == Outcome::Taken));
}

#[test]
fn inventory_counts_drops_refuses_an_empty_slot_before_motion_and_a_refill_restores_it() {
    // One unit daily at 09:00 UTC from slot 3, which the model loads with 10: the count runs out
    // after day 9. A pharmacist refills it on day 12; doses are given again from then on.
    let schedule = Schedule::parse(
        "[patient]\nid = \"p-9\"\ntimezone = \"UTC\"\n[[medication]]\nname = \"Vitamin D\"\nslot = 3\nunits = 1\ntimes = [\"09:00\"]\n",
        Path::new("p-9.toml"),
    )
    .unwrap();
    let sc = r#"
name = "refill"
[[event]]
at = "12d 6h"
action = "refill"
slot = 3
units = 30
expiry = "2027-12-31"
actor = "ph-7"
"#;
    let s = common::run(SimOptions {
        scenario: Some(Scenario::parse(sc, Path::new("s.toml")).unwrap()),
        keep_records: false,
        schedules: vec![schedule],
        ..common::options(15.0)
    });
    let count = |o: Outcome| s.dose_records.iter().filter(|r| r.outcome == o).count();
    // Days 0–9 from the first load, days 12–14 after the refill.
    assert_eq!(count(Outcome::Dispensed), 13, "{:?}", s.dose_records);
    // Days 10 and 11: refused before motion (once each, not every minute), then missed.
    assert_eq!(count(Outcome::Failed), 2, "{:?}", s.dose_records);
    assert_eq!(count(Outcome::Missed), 2);
    assert_eq!(
        count(Outcome::Uncertain),
        0,
        "nothing turned for an empty slot"
    );
    // Low stock was reported, daily, before it ran out.
    let low = s
        .dispenser
        .stock_alerts
        .get("LOW_STOCK")
        .copied()
        .unwrap_or(0);
    assert!(low >= 5, "{:?}", s.dispenser.stock_alerts);
    assert_eq!(
        s.dispenser.refills, 8,
        "seven slots commissioned, one refill"
    );
    // The appliance's counts match the model's slots.
    for (slot, count) in &s.dispenser.stock {
        assert_eq!(*count, s.truth.stock[usize::from(*slot)], "slot {slot}");
    }
    assert_eq!(s.dispenser.stock[&3], 27);
}

#[test]
fn inventory_survives_a_restart_and_commissioning_is_recorded_once() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("m.db");
    let first = run(2.0, None, Some(&db));
    assert_eq!(first.dispenser.refills, 7);
    let second = run(0.1, None, Some(&db));
    assert_eq!(
        second.dispenser.refills, 0,
        "a known carousel is not commissioned again"
    );
    let conn = medbox::store::schema::open_read_only(&db).unwrap();
    let inv = medbox::store::inventory::rebuild(&conn).unwrap();
    for (slot, count) in &first.dispenser.stock {
        assert_eq!(inv.slot(*slot).unwrap().count, *count, "slot {slot}");
    }
}

fn command(name: &str, actor: &str, role: &str, args: serde_json::Value) -> medbox::scenario::Op {
    medbox::scenario::Op::Command(
        name.into(),
        serde_json::json!({"id": "", "actor": actor, "role": role, "args": args}).to_string(),
    )
}

/// A scenario of commands at the given hours; each command gets its own id.
fn scenario(ops: Vec<(f64, medbox::scenario::Op)>) -> Scenario {
    Scenario {
        name: "commands".into(),
        description: String::new(),
        start: None,
        initial: None,
        household: None,
        ops: ops
            .into_iter()
            .enumerate()
            .map(|(i, (h, op))| {
                let op = match op {
                    medbox::scenario::Op::Command(name, payload) => {
                        let mut v: serde_json::Value = serde_json::from_str(&payload).unwrap();
                        v["id"] = format!("c{i}").into();
                        medbox::scenario::Op::Command(name, v.to_string())
                    }
                    op => op,
                };
                (std::time::Duration::from_secs_f64(h * 3600.0), op)
            })
            .collect(),
    }
}

#[test]
fn schedule_replacement_is_validated_completely_audited_with_its_actor_and_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("m.db");
    let file = DEFAULT_SCHEDULES[0].1;
    // Breakfast moves from 08:00 to 10:00 (09:00 UTC in March).
    let later = file.replace(
        "times = [\"08:00\", \"19:00\"]",
        "times = [\"10:00\", \"19:00\"]",
    );
    let broken = later
        .replace(
            "units = 1\ntimes = [\"10:00\"",
            "units = 1\ncolour = \"red\"\ntimes = [\"10:00\"",
        )
        .replace("times = [\"08:00\"]", "times = [\"25:00\"]");
    let sc = scenario(vec![
        (
            1.0,
            command(
                "replace_schedule",
                "n-1",
                "nurse",
                serde_json::json!({"patient": "p-0042", "schedule": broken}),
            ),
        ),
        (
            1.5,
            command(
                "replace_schedule",
                "n-1",
                "nurse",
                serde_json::json!({"patient": "p-0107", "schedule": later}),
            ),
        ),
        (
            2.0,
            command(
                "replace_schedule",
                "n-1",
                "patient",
                serde_json::json!({"patient": "p-0042", "schedule": later}),
            ),
        ),
        (
            3.0,
            command(
                "replace_schedule",
                "n-1",
                "nurse",
                serde_json::json!({"patient": "p-0042", "schedule": later}),
            ),
        ),
    ]);
    let s = common::run(SimOptions {
        scenario: Some(sc),
        keep_records: false,
        db: Some(db.clone()),
        schedules: schedules(),
        ..common::options(1.0)
    });
    // A rejected schedule changes nothing and lists every problem with file, line and field.
    let rejected = &s.commands_rejected;
    assert_eq!(rejected.len(), 3, "{rejected:?}");
    assert!(rejected[0].contains("INVALID_SCHEDULE"), "{}", rejected[0]);
    assert!(
        rejected[0].contains("cmd:replace_schedule/p-0042.toml:"),
        "{}",
        rejected[0]
    );
    assert!(rejected[0].contains("colour"), "{}", rejected[0]);
    assert!(rejected[1].contains("PATIENT_MISMATCH"), "{}", rejected[1]);
    assert!(rejected[2].contains("ROLE_NOT_ALLOWED"), "{}", rejected[2]);
    assert_eq!(s.dispenser.schedule_replacements, 1);
    let at = |h: u32| {
        chrono::DateTime::parse_from_rfc3339(&format!("2026-03-02T{h:02}:00:00Z"))
            .unwrap()
            .with_timezone(&chrono::Utc)
    };
    let metformin = |s: &SimSummary| -> Vec<chrono::DateTime<chrono::Utc>> {
        s.dose_records
            .iter()
            .filter(|r| r.medication == "Metformin" && r.outcome == Outcome::Dispensed)
            .filter_map(|r| r.occurrence)
            .collect()
    };
    assert_eq!(metformin(&s), vec![at(9), at(18)]);
    // Audited with who made it, old and new versions.
    let conn = medbox::store::schema::open_read_only(&db).unwrap();
    let (actor, old, new): (String, Option<String>, String) = conn
        .query_row(
            "SELECT actor, json_extract(body, '$.old'), json_extract(body, '$.new') FROM audit \
             WHERE kind = 'schedule.change' AND reason = 'REPLACED'",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .unwrap();
    assert_eq!(actor, "n-1");
    assert_ne!(old.unwrap(), new);
    drop(conn);
    // After a restart with the same files the installed schedule is still the one in use:
    // the next day (the simulated clock resumes where the database stopped) doses Metformin at
    // 09:00 UTC, not at the file's 08:00 Berlin (07:00 UTC).
    let again = common::run(SimOptions {
        keep_records: false,
        db: Some(db.clone()),
        schedules: schedules(),
        ..common::options(1.0)
    });
    let next_day = |h: u32| at(h) + chrono::Duration::days(1);
    assert_eq!(metformin(&again), vec![next_day(9), next_day(18)]);
    let conn = medbox::store::schema::open_read_only(&db).unwrap();
    let loader_rows: i64 = conn
        .query_row(
            "SELECT count(*) FROM audit WHERE kind = 'schedule.change' AND subject = 'schedule:p-0042'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(
        loader_rows, 2,
        "first seen, then replaced; the restart changed nothing"
    );
    drop(conn);
    // The caregiver then edits the file: the newer file wins, and the loader audits it.
    let edited = file.replace("\"19:00\"", "\"20:00\"");
    let mut with_edit = schedules();
    with_edit[0] = Schedule::parse(&edited, Path::new("p-0042.toml")).unwrap();
    let want = medbox::dosing::replace::version(&with_edit[0]);
    common::run(SimOptions {
        keep_records: false,
        db: Some(db.clone()),
        schedules: with_edit,
        ..common::options(0.1)
    });
    let conn = medbox::store::schema::open_read_only(&db).unwrap();
    let (actor, new): (String, String) = conn
        .query_row(
            "SELECT actor, json_extract(body, '$.new') FROM audit WHERE kind = 'schedule.change' \
             AND subject = 'schedule:p-0042' ORDER BY seq DESC LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!((actor.as_str(), new), ("system:loader", want));
}

#[test]
fn high_alert_weekly_made_more_frequent_needs_a_second_person_to_confirm() {
    // Methotrexate cannot be written daily under any of its names (the built-in list), so the
    // dangerous edit renames it too: the same slot, daily, without the flag.
    let file = DEFAULT_SCHEDULES[1].1;
    let daily = file
        .replace("days = [\"mon\"]\nhigh_alert_weekly = true\n", "")
        .replace("max_daily_units = 4\nlate = \"12h\"", "max_daily_units = 4")
        .replace("\"Methotrexate\"", "\"Vitamin B12\"");
    let new = Schedule::parse(&daily, Path::new("x.toml")).unwrap();
    let v = medbox::dosing::replace::version(&new);
    let args = |confirm: Option<&str>| serde_json::json!({"patient": "p-0107", "schedule": daily, "confirm": confirm});
    let sc = scenario(vec![
        (1.0, command("replace_schedule", "n-1", "nurse", args(None))),
        (
            1.1,
            command("replace_schedule", "n-1", "nurse", args(Some(&v))),
        ),
        (
            1.2,
            command("replace_schedule", "cl-2", "clinician", args(Some(&v))),
        ),
    ]);
    let s = common::run(SimOptions {
        scenario: Some(sc),
        keep_records: false,
        schedules: schedules(),
        ..common::options(0.2)
    });
    let rejected = &s.commands_rejected;
    assert_eq!(rejected.len(), 2, "{rejected:?}");
    assert!(
        rejected[0].contains("CONFIRMATION_REQUIRED"),
        "{}",
        rejected[0]
    );
    assert!(rejected[0].contains(&v), "{}", rejected[0]);
    assert!(rejected[1].contains("SAME_PERSON"), "{}", rejected[1]);
    assert_eq!(s.dispenser.schedule_replacements, 1);
}

#[test]
fn the_shipped_dosing_week_scenario_shows_held_prn_failed_missed_and_uncertain_doses() {
    let sc = Scenario::load(Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/hw/scenarios/dosing-week.toml"
    )))
    .unwrap();
    let s = common::run(SimOptions {
        scenario: Some(sc),
        keep_records: false,
        schedules: schedules(),
        ..common::options(7.0)
    });
    let outcomes = |m: &str, o: Outcome| {
        s.dose_records
            .iter()
            .filter(|r| r.medication == m && r.outcome == o)
            .count()
    };
    // The low pulse held the first Metoprolol with its reason; the good reading never came after.
    assert_eq!(s.dispenser.dose_alerts.get("HELD_VITALS"), Some(&1));
    assert!(outcomes("Metoprolol", Outcome::Held) >= 1);
    // The PRN request was answered with a dispense.
    assert_eq!(outcomes("Paracetamol", Outcome::Dispensed), 1);
    // The jam: refused before motion (retried every 10 min, not every minute), then missed.
    let failed = outcomes("Metformin", Outcome::Failed);
    assert!((1..=30).contains(&failed), "{failed}");
    assert_eq!(outcomes("Metformin", Outcome::Missed), 1);
    // The unrecorded empty slot: the motor turned, nothing fell, uncertain, never retried.
    assert_eq!(outcomes("Co-careldopa", Outcome::Uncertain), 2);
    // Until the caregiver reconciled both as not given: the one whose window had closed is
    // missed, the open one was dispensed again from the refilled slot.
    assert_eq!(outcomes("Co-careldopa", Outcome::ConfirmedNotGiven), 2);
    let occ = |t: &str| {
        Some(
            chrono::DateTime::parse_from_rfc3339(t)
                .unwrap()
                .with_timezone(&chrono::Utc),
        )
    };
    let of = |o: Option<chrono::DateTime<chrono::Utc>>| {
        s.dose_records
            .iter()
            .filter(|r| r.medication == "Co-careldopa" && r.occurrence == o)
            .map(|r| r.outcome)
            .collect::<Vec<_>>()
    };
    assert_eq!(
        of(occ("2026-03-04T15:00:00Z")),
        [
            Outcome::Dispensing,
            Outcome::Uncertain,
            Outcome::ConfirmedNotGiven,
            Outcome::Missed
        ]
    );
    let again = of(occ("2026-03-04T19:00:00Z"));
    assert_eq!(
        again[..5],
        [
            Outcome::Dispensing,
            Outcome::Uncertain,
            Outcome::ConfirmedNotGiven,
            Outcome::Dispensing,
            Outcome::Dispensed
        ],
        "{again:?}"
    );
    assert!(s.commands_rejected.is_empty(), "{:?}", s.commands_rejected);
    assert!(s.dose_records.iter().any(|r| r.outcome == Outcome::Taken));
}

#[test]
fn the_dst_weekend_scenario_gives_the_monday_dose_at_local_time_after_spring_forward() {
    let sc = Scenario::load(Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/hw/scenarios/dst-weekend.toml"
    )))
    .unwrap();
    let s = common::run(SimOptions {
        scenario: Some(sc),
        keep_records: false,
        schedules: schedules(),
        ..common::options(3.0)
    });
    let utc = |t: &str| {
        chrono::DateTime::parse_from_rfc3339(t)
            .unwrap()
            .with_timezone(&chrono::Utc)
    };
    let mtx: Vec<_> = s
        .dose_records
        .iter()
        .filter(|r| r.medication == "Methotrexate" && r.outcome == Outcome::Dispensed)
        .map(|r| r.occurrence.unwrap())
        .collect();
    // 09:00 EDT is 13:00 UTC (it was 14:00 UTC the Monday before).
    assert_eq!(mtx, vec![utc("2026-03-09T13:00:00Z")]);
    // Berlin's Metformin is still 07:00 and 18:00 UTC on the US change day.
    let met: Vec<_> = s
        .dose_records
        .iter()
        .filter(|r| r.medication == "Metformin" && r.outcome == Outcome::Dispensed)
        .map(|r| r.occurrence.unwrap())
        .filter(|o| o.date_naive().to_string() == "2026-03-08")
        .collect();
    assert_eq!(
        met,
        vec![utc("2026-03-08T07:00:00Z"), utc("2026-03-08T18:00:00Z")]
    );
}

#[test]
fn with_fhir_on_dose_outcomes_and_vitals_are_queued_as_fhir_resources() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("m.db");
    let vital = |at: &str, vital: &str, value: u32| {
        format!("[[event]]\nat = \"{at}\"\naction = \"vital\"\npatient = \"p-0042\"\nvital = \"{vital}\"\nvalue = {value}\n")
    };
    // A pulse, then one blood-pressure measurement reported as its two halves.
    let sc = format!(
        "name = \"pulse\"\n{}{}{}",
        vital("6h 20m", "heart_rate", 51),
        vital("7h", "systolic_bp", 124),
        vital("7h", "diastolic_bp", 78)
    );
    common::run(SimOptions {
        scenario: Some(Scenario::parse(&sc, Path::new("s.toml")).unwrap()),
        keep_records: false,
        db: Some(db.clone()),
        schedules: schedules(),
        fhir: true,
        ..common::options(1.0)
    });
    let conn = medbox::store::schema::open_read_only(&db).unwrap();
    let resources = |topic: &str| -> Vec<serde_json::Value> {
        conn.prepare("SELECT payload FROM outbox WHERE topic LIKE ?1 ORDER BY id")
            .unwrap()
            .query_map([format!("%/fhir/{topic}")], |r| r.get::<_, String>(0))
            .unwrap()
            .map(|p| serde_json::from_str(&p.unwrap()).unwrap())
            .collect()
    };
    let obs = resources("Observation");
    assert_eq!(obs.len(), 3, "{obs:#?}");
    assert_eq!(obs[0]["code"]["coding"][0]["code"], "8867-4");
    // The blood pressure: one panel, sent again when its second half arrived.
    assert_eq!(obs[1]["id"], obs[2]["id"]);
    assert_eq!(obs[1]["component"].as_array().unwrap().len(), 1);
    assert_eq!(obs[2]["component"].as_array().unwrap().len(), 2);
    assert_eq!(obs[0]["subject"]["identifier"]["value"], "p-0042");
    assert_eq!(
        obs[0]["meta"]["profile"][0],
        "http://hl7.org/fhir/StructureDefinition/vitalsigns"
    );
    let admin = resources("MedicationAdministration");
    assert!(admin.iter().any(|a| a["status"] == "in-progress"));
    // FHIR ids, and one resource per dose: every later version reuses the id its release had.
    let fhir_id = |id: &str| {
        (1..=64).contains(&id.len())
            && id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
    };
    assert!(
        admin
            .iter()
            .chain(&obs)
            .all(|r| fhir_id(r["id"].as_str().unwrap())),
        "{admin:#?}"
    );
    let mut latest = std::collections::BTreeMap::new();
    for a in &admin {
        latest.insert(a["id"].as_str().unwrap().to_string(), a["status"].clone());
    }
    assert!(latest.len() < admin.len(), "doses are updated in place");
    // Nobody picks a dose up in this run: once its window has passed, a released dose is
    // `unknown`, not in progress for ever.
    assert!(latest.values().any(|s| s == "unknown"), "{latest:#?}");
    // The beta blocker held on the low pulse: not done, with the reading's reason (HELD_VITALS
    // stays its reason after the reading ages out and the engine asks for another).
    assert!(
        admin.iter().any(|a| a["status"] == "not-done"
            && a["medicationCodeableConcept"]["text"] == "Metoprolol"
            && a["statusReason"][0]["coding"][0]["code"] == "HELD_VITALS"),
        "{admin:#?}"
    );
}

#[test]
fn adherence_is_summarised_daily_and_on_request() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("m.db");
    let sc = scenario(vec![
        (
            30.0,
            command(
                "request_report",
                "n-1",
                "nurse",
                serde_json::json!({"days": 2}),
            ),
        ),
        (
            30.5,
            command("request_report", "p-0042", "patient", serde_json::json!({})),
        ),
    ]);
    let s = common::run(SimOptions {
        scenario: Some(sc),
        keep_records: false,
        db: Some(db.clone()),
        schedules: schedules(),
        ..common::options(1.95)
    });
    assert_eq!(s.commands_rejected.len(), 1, "{:?}", s.commands_rejected);
    assert!(s.commands_rejected[0].contains("ROLE_NOT_ALLOWED"));
    let conn = medbox::store::schema::open_read_only(&db).unwrap();
    let summaries: Vec<serde_json::Value> = conn
        .prepare("SELECT payload FROM outbox WHERE topic LIKE '%/adherence' ORDER BY id")
        .unwrap()
        .query_map([], |r| r.get::<_, String>(0))
        .unwrap()
        .map(|p| serde_json::from_str(&p.unwrap()).unwrap())
        .collect();
    // Day 1 (at 24 h) and the request at 30 h; day 2's falls after the run's end (46.8 h).
    assert_eq!(summaries.len(), 2, "{summaries:#?}");
    assert_eq!(summaries[0]["body"]["trigger"], "daily");
    assert_eq!(summaries[1]["body"]["trigger"], "requested by n-1");
    let metformin = summaries[1]["body"]["tallies"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["medication"] == "Metformin")
        .unwrap()
        .clone();
    assert_eq!(metformin["patient"], "p-0042");
    // 07:00 and 18:00 UTC on day 1 (day 2's comes at 06:30, after the request); no pickups.
    assert_eq!(metformin["scheduled"], 2, "{metformin}");
    assert_eq!(metformin["not_taken"], 2, "{metformin}");
}

#[test]
fn reconciling_is_for_carers_names_an_uncertain_dose_and_says_what_was_found() {
    let args = |note: Option<&str>| {
        let mut a = serde_json::json!({
            "patient": "p-0042",
            "medication": "Metformin",
            "occurrence": "2026-03-02T07:00:00Z",
            "given": true,
        });
        if let Some(n) = note {
            a["note"] = n.into();
        }
        a
    };
    let sc = scenario(vec![
        (
            9.0,
            command("reconcile_dose", "p-0042", "patient", args(Some("took it"))),
        ),
        (
            9.1,
            command("reconcile_dose", "cg-1", "caregiver", args(None)),
        ),
        (
            9.2,
            command("reconcile_dose", "cg-1", "caregiver", args(Some(" "))),
        ),
        (
            9.3,
            command(
                "reconcile_dose",
                "cg-1",
                "caregiver",
                args(Some("in the cup")),
            ),
        ),
    ]);
    let s = common::run(SimOptions {
        scenario: Some(sc),
        keep_records: false,
        schedules: schedules(),
        ..common::options(0.5)
    });
    let r = &s.commands_rejected;
    assert_eq!(r.len(), 4, "{r:?}");
    assert!(r[0].contains("ROLE_NOT_ALLOWED"), "{r:?}");
    assert!(r[1].contains("MALFORMED") && r[1].contains("note"), "{r:?}");
    assert!(r[2].contains("MALFORMED") && r[2].contains("note"), "{r:?}");
    // The morning dose was dispensed normally: there is nothing to reconcile.
    assert!(r[3].contains("NOTHING_TO_RECONCILE"), "{r:?}");
    assert!(!s
        .dose_records
        .iter()
        .any(|d| d.outcome == Outcome::ConfirmedGiven));
}

/// Quiet hours soften only routine reminders: the LED lights and the buzzer stays silent for a
/// dose at 23:00, while a time-critical dose in the same night still sounds.
#[test]
fn critical_alerts_ignore_quiet_hours_and_routine_reminders_keep_them() {
    let sched = |quiet: &str| {
        medbox::dosing::schedule::Schedule::parse(
            &format!(
                "[patient]\nid = \"p-q\"\ntimezone = \"UTC\"\n{quiet}\n\
                 [[medication]]\nname = \"Routine\"\nslot = 0\nunits = 1\ntimes = [\"23:00\"]\n\
                 [[medication]]\nname = \"Critical\"\nslot = 1\nunits = 1\ntimes = [\"23:30\"]\ntime_critical = true\n"
            ),
            Path::new("q.toml"),
        )
        .unwrap()
    };
    let night = |quiet: &str| {
        common::run(SimOptions {
            keep_records: false,
            schedules: vec![sched(quiet)],
            ..common::options(1.0)
        })
        .truth
    };
    let at = |t: &str| {
        chrono::DateTime::parse_from_rfc3339(t)
            .unwrap()
            .with_timezone(&chrono::Utc)
    };
    let between = |times: &[chrono::DateTime<chrono::Utc>], from: &str, to: &str| {
        times.iter().any(|t| *t >= at(from) && *t < at(to))
    };
    let quiet = night("quiet_hours = \"22:00-07:00\"");
    // The routine dose is dispensed at 22:30 (its window opens 30 min early): lit, silent.
    assert!(
        between(
            &quiet.led_on_at,
            "2026-03-02T22:29:00Z",
            "2026-03-02T22:32:00Z"
        ),
        "{quiet:?}"
    );
    assert!(
        !between(
            &quiet.buzzer_on_at,
            "2026-03-02T22:00:00Z",
            "2026-03-02T23:00:00Z"
        ),
        "{:?}",
        quiet.buzzer_on_at
    );
    // The time-critical dose at 23:00 sounds.
    assert!(
        between(
            &quiet.buzzer_on_at,
            "2026-03-02T22:59:00Z",
            "2026-03-02T23:02:00Z"
        ),
        "{:?}",
        quiet.buzzer_on_at
    );
    // Without quiet hours the routine dose sounds at once.
    let loud = night("");
    assert!(
        between(
            &loud.buzzer_on_at,
            "2026-03-02T22:29:00Z",
            "2026-03-02T22:32:00Z"
        ),
        "{:?}",
        loud.buzzer_on_at
    );
}

/// A dose the break-beam did not see but the caregiver says the patient had: it counts once,
/// the slot's count drops by it, and the alarm for it ends.
#[test]
fn an_uncertain_dose_reconciled_as_given_leaves_the_slot_count_too() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("m.db");
    let run_with = |reconcile: bool| {
        let mut ops = vec![(6.0, medbox::scenario::Op::EmptySlot(0))];
        if reconcile {
            ops.push((
                6.7,
                command(
                    "reconcile_dose",
                    "cg-1",
                    "caregiver",
                    serde_json::json!({"patient": "p-0042", "medication": "Metformin",
                        "occurrence": "2026-03-02T07:00:00Z", "given": true,
                        "note": "found the tablet in the cup's rim"}),
                ),
            ));
        }
        common::run(SimOptions {
            scenario: Some(scenario(ops)),
            keep_records: false,
            schedules: schedules(),
            db: reconcile.then(|| db.clone()),
            ..common::options(0.3)
        })
    };
    let unreconciled = run_with(false);
    let reconciled = run_with(true);
    assert!(
        reconciled.commands_rejected.is_empty(),
        "{:?}",
        reconciled.commands_rejected
    );
    let metformin = |s: &SimSummary| {
        s.dose_records
            .iter()
            .filter(|r| r.medication == "Metformin")
            .map(|r| (r.outcome, r.units))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        metformin(&reconciled),
        [
            (Outcome::Dispensing, 1),
            (Outcome::Uncertain, 0),
            (Outcome::ConfirmedGiven, 1)
        ]
    );
    assert_eq!(
        reconciled.dispenser.stock[&0] + 1,
        unreconciled.dispenser.stock[&0],
        "the unit the beam missed leaves the count once the caregiver confirms it"
    );
    // A restart counts the same.
    let conn = medbox::store::schema::open_read_only(&db).unwrap();
    let replayed = medbox::store::inventory::rebuild(&conn).unwrap();
    assert_eq!(
        replayed.slot(0).unwrap().count,
        reconciled.dispenser.stock[&0]
    );
}

/// A pharmacist asks who did what: a skip, an as-needed dose a nurse requested over its limits
/// and a reconciliation are audit rows whose actor is the person, with the override's reason.
#[test]
fn a_skip_and_a_prn_override_are_audited_with_the_person_and_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("m.db");
    let prn = |actor: &str, role: &str, reason: Option<&str>| {
        command(
            "request_prn",
            actor,
            role,
            serde_json::json!({"patient": "p-0311", "medication": "paracetamol", "override_reason": reason}),
        )
    };
    let sc = scenario(vec![
        (
            1.0,
            command(
                "skip_dose",
                "cg-3",
                "caregiver",
                serde_json::json!({"patient": "p-0042", "medication": "metformin", "occurrence": "2026-03-02T07:00:00Z"}),
            ),
        ),
        (2.0, prn("p-0311", "patient", None)),
        (
            3.0,
            prn("n-4", "nurse", Some("breakthrough pain, GP consulted")),
        ),
    ]);
    common::run(SimOptions {
        scenario: Some(sc),
        keep_records: false,
        db: Some(db.clone()),
        schedules: schedules(),
        ..common::options(0.2)
    });
    let conn = medbox::store::schema::open_read_only(&db).unwrap();
    let rows: Vec<(String, String, String)> = conn
        .prepare(
            "SELECT kind, actor, json_extract(body, '$.detail') FROM audit \
             WHERE kind IN ('dose.skipped', 'dose.dispensed') \
             AND (subject LIKE '%Paracetamol' OR kind = 'dose.skipped') ORDER BY seq",
        )
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(rows.len(), 3, "{rows:?}");
    assert_eq!(
        (rows[0].0.as_str(), rows[0].1.as_str()),
        ("dose.skipped", "cg-3")
    );
    assert_eq!(rows[1].1, "p-0311");
    assert_eq!(rows[2].1, "n-4");
    assert!(
        rows[2]
            .2
            .contains("overridden: breakthrough pain, GP consulted"),
        "{rows:?}"
    );
}

/// The caregiver edits the methotrexate file behind the appliance's back: renamed, daily, the
/// flag gone. At the next start the file is used but that medication is locked (its doses close
/// held with CONFIRMATION_REQUIRED), a restart keeps the lock, and a second person's confirmation
/// of that very version lifts it.
#[test]
fn a_file_edit_that_removes_a_weekly_guard_locks_the_medication_until_a_second_person_confirms() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("m.db");
    let with = |p0107: &str| {
        let mut s = schedules();
        s[1] = Schedule::parse(p0107, Path::new("p-0107.toml")).unwrap();
        s
    };
    let daily = DEFAULT_SCHEDULES[1]
        .1
        .replace("days = [\"mon\"]\nhigh_alert_weekly = true\n", "")
        .replace("max_daily_units = 4\nlate = \"12h\"", "max_daily_units = 4")
        .replace("\"Methotrexate\"", "\"Vitamin B12\"");
    let slot2 = |db: &Path| -> Vec<(String, String)> {
        let conn = medbox::store::schema::open_read_only(db).unwrap();
        let rows = conn
            .prepare(
                "SELECT kind, reason FROM audit WHERE subject LIKE 'patient:p-0107/medication:Vitamin B12' \
                 AND kind != 'dose.alert' ORDER BY seq",
            )
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        rows
    };
    let run = |schedules: Vec<Schedule>, days: f64, sc: Option<Scenario>| {
        common::run(SimOptions {
            scenario: sc,
            keep_records: false,
            db: Some(db.clone()),
            schedules,
            ..common::options(days)
        })
    };
    run(schedules(), 1.0, None);
    // The edited file, two days: nothing from slot 2, each dose held for confirmation.
    run(with(&daily), 2.0, None);
    let rows = slot2(&db);
    assert!(!rows.is_empty(), "{rows:?}");
    assert!(
        rows.iter()
            .all(|(k, r)| k == "dose.held" && r == "CONFIRMATION_REQUIRED"),
        "{rows:?}"
    );
    // A restart keeps the lock.
    run(with(&daily), 1.0, None);
    assert!(slot2(&db).iter().all(|(k, _)| k == "dose.held"));
    // A nurse confirms the version the loader recorded: unlocked, dispensed from then on.
    let version = medbox::dosing::replace::version(&with(&daily)[1]);
    let confirm = scenario(vec![(
        0.1,
        command(
            "replace_schedule",
            "n-2",
            "nurse",
            serde_json::json!({"patient": "p-0107", "schedule": daily, "confirm": version}),
        ),
    )]);
    let s = run(with(&daily), 1.0, Some(confirm));
    assert!(s.commands_rejected.is_empty(), "{:?}", s.commands_rejected);
    assert!(
        slot2(&db).iter().any(|(k, _)| k == "dose.dispensed"),
        "{:?}",
        slot2(&db)
    );
}

/// A command executes at most once per id, across restarts (docs/dose-safety.md): a `refill`
/// re-sent after a restart is answered again and adds nothing; the same id carrying another command
/// is refused as such, on that command's own topic.
#[test]
fn a_command_id_executes_once_across_restarts_a_reused_id_and_an_impossible_refill_are_refused() {
    use medbox::scenario::Op;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("m.db");
    let refill = r#"{"id":"r-1","actor":"ph-7","role":"pharmacist","args":{"slot":3,"units":30}}"#;
    let at = |h: f64, name: &str, payload: &str| {
        (
            std::time::Duration::from_secs_f64(h * 3600.0),
            Op::Command(name.into(), payload.into()),
        )
    };
    let run = |ops: Vec<(std::time::Duration, Op)>| {
        common::run(SimOptions {
            scenario: Some(Scenario {
                name: "commands".into(),
                description: String::new(),
                start: None,
                initial: None,
                household: None,
                ops,
            }),
            keep_records: false,
            db: Some(db.clone()),
            schedules: schedules(),
            ..common::options(0.25)
        })
    };
    let first = run(vec![at(1.0, "refill", refill)]);
    let count = first.dispenser.stock[&3];
    assert_eq!(count, 10 + 30, "the commissioning load and the refill");
    // Restarted on the same database: the redelivered refill and a reuse of its id.
    let reused = r#"{"id":"r-1","actor":"ph-7","role":"pharmacist","args":{"slot":3,"units":300}}"#;
    let ack =
        r#"{"id":"r-1","actor":"n-1","role":"nurse","args":{"alarm":"DOOR_OPEN","comment":"x"}}"#;
    let second = run(vec![
        at(1.0, "refill", refill),
        at(1.1, "refill", reused),
        at(1.2, "acknowledge_alarm", ack),
        at(
            1.3,
            "refill",
            r#"{"id":"r-2","actor":"ph-7","role":"pharmacist","args":{"slot":3,"units":4294967295}}"#,
        ),
    ]);
    let conn = rusqlite::Connection::open(&db).unwrap();
    let stored = medbox::store::inventory::rebuild(&conn).unwrap();
    assert_eq!(
        stored.slot(3).map(|s| s.count),
        Some(count),
        "no stock added twice"
    );
    let rejected = &second.commands_rejected;
    assert_eq!(rejected.len(), 3, "{rejected:?}");
    assert!(
        rejected[0].starts_with("refill: ID_REUSED"),
        "{}",
        rejected[0]
    );
    assert!(
        rejected[1].starts_with("acknowledge_alarm: ID_REUSED"),
        "answered on its own topic: {}",
        rejected[1]
    );
    // A count that cannot be true would defeat the empty-slot and stock alerts.
    assert!(
        rejected[2].starts_with("refill: OUT_OF_RANGE"),
        "{}",
        rejected[2]
    );
    assert!(
        rejected[2].contains("carousel.slot_capacity"),
        "{}",
        rejected[2]
    );
}

/// Runs the shipped schedules with a simulated household.
fn run_household(days: f64, household: medbox::sim::household::HouseholdConfig) -> SimSummary {
    common::run(SimOptions {
        keep_records: false,
        schedules: schedules(),
        household: Some(household),
        ..common::options(days)
    })
}

#[test]
fn a_simulated_household_collects_its_doses_and_takes_its_readings() {
    let s = run_household(4.0, Default::default());
    let taken: u32 = s.adherence.iter().map(|t| t.taken).sum();
    let meant: u32 = s
        .adherence
        .iter()
        .map(|t| t.taken + t.not_taken + t.missed + t.uncertain)
        .sum();
    assert!(meant > 20, "{:?}", s.adherence);
    // The default habit: most doses on time, a few late, now and then one forgotten.
    assert!(
        f64::from(taken) / f64::from(meant) > 0.85,
        "{taken} of {meant}: {:?}",
        s.adherence
    );
    assert!(s.dispenser.tray_pickups > 0);
    // The monitor's readings release the beta blocker on most mornings.
    let metoprolol = s
        .adherence
        .iter()
        .find(|t| t.medication == "Metoprolol")
        .expect("the beta blocker is scheduled");
    assert!(metoprolol.taken >= 2, "{metoprolol:?}");
    assert!(
        s.events.get("vital").copied().unwrap_or(0) >= 9,
        "{:?}",
        s.events
    );
    // Seeded: the same household again gives the same story.
    let again = run_household(4.0, Default::default());
    assert_eq!(s.adherence, again.adherence);
}

#[test]
fn a_forgetful_household_leaves_doses_in_the_cup_and_the_caregiver_hears_of_it() {
    let forgetful = medbox::sim::household::HouseholdConfig {
        habit: medbox::sim::household::Habit {
            on_time: 0.0,
            late: 0.0,
            forget: 1.0,
            skip_reading: 1.0,
        },
        patient: Default::default(),
    };
    let s = run_household(2.0, forgetful);
    assert_eq!(s.dispenser.tray_pickups, 0);
    assert!(
        s.dispenser
            .dose_alerts
            .get("NOT_TAKEN")
            .copied()
            .unwrap_or(0)
            >= 3
    );
    let metoprolol = s
        .adherence
        .iter()
        .find(|t| t.medication == "Metoprolol")
        .expect("scheduled");
    assert_eq!(metoprolol.held, metoprolol.scheduled, "no reading, no dose");
}

#[test]
fn the_summary_for_people_tells_each_patients_doses_in_local_time_and_names_the_commissioning() {
    let s = run_household(2.0, Default::default());
    let text = medbox::sim::story::render(&s);
    for patient in ["p-0042", "p-0107", "p-0311", "p-0520"] {
        assert!(text.contains(&format!("  {patient}  ")), "{text}");
    }
    assert!(text.contains("Europe/Berlin"), "{text}");
    // The shipped board is switched on warm: its pull-down is commissioning, not an excursion.
    assert!(text.contains("commissioning: switched on warm"), "{text}");
    assert!(
        text.contains("(during the commissioning pull-down)"),
        "{text}"
    );
    // Written for people: no serialised maps, no RFC 3339 stamps, numbers agree with nouns.
    assert!(!text.contains('{') && !text.contains("+00:00"), "{text}");
    assert!(
        !text.contains(" 1 homings") && text.contains("homed once"),
        "{text}"
    );
}

#[test]
fn repeated_device_faults_are_told_once_with_how_often() {
    let s = common::run(SimOptions {
        keep_records: false,
        schedules: schedules(),
        scenario: Some(
            Scenario::load(
                &Path::new(env!("CARGO_MANIFEST_DIR")).join("hw/scenarios/dosing-week.toml"),
            )
            .unwrap(),
        ),
        ..common::options(7.0)
    });
    assert!(s.device_faults.len() > 1, "{:?}", s.device_faults);
    let text = medbox::sim::story::render(&s);
    let first = &s.device_faults[0];
    assert_eq!(text.matches(first.as_str()).count(), 1, "{text}");
    assert!(text.contains("times, "), "{text}");
}

/// Records let go from memory come back from the store when a decision reaches them, through
/// the real controller and SQLite. Every record is let go as soon as no rule reaches it
/// (`keep_dose_history = 0`: memory then holds 8.25 days, the weekly medication's reach). After
/// 18.5 days the wall clock is set back seven days and a person confirms it: the as-needed
/// painkiller's rules now reach back past what memory holds, so the dispenser asks the store.
/// A request three hours after an earlier dose (on the new clock) is refused as too soon once
/// the records are back (it would be answered BUSY for days if they never came), and nothing
/// is dispensed twice.
#[test]
fn records_let_go_from_memory_are_read_back_after_the_clock_is_set_back() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("m.db");
    let prn = |at: &str, id: &str| {
        format!(
            "[[event]]\nat = \"{at}\"\naction = \"command\"\ncommand = \"request_prn\"\n\
             payload = '{{\"id\": \"{id}\", \"actor\": \"p-0311\", \"role\": \"patient\", \"args\": {{\"patient\": \"p-0311\", \"medication\": \"Paracetamol\"}}}}'\n"
        )
    };
    let sc = format!(
        "name = \"set back\"\n{}{}{}[[event]]\nat = \"18d 12h\"\naction = \"clock_jump\"\nby = \"-7d\"\n\
         [[event]]\nat = \"18d 12h 10m\"\naction = \"trust_clock\"\n",
        prn("11d 10h", "before"),
        prn("18d 13h", "after"),
        prn("18d 13h 1m", "after-again"),
    );
    let s = common::run(SimOptions {
        scenario: Some(Scenario::parse(&sc, Path::new("s.toml")).unwrap()),
        keep_records: false,
        db: Some(db.clone()),
        keep_dose_history: Some(std::time::Duration::ZERO),
        schedules: schedules(),
        ..common::options(19.0)
    });
    let mut dispensed: BTreeMap<(String, Option<chrono::DateTime<chrono::Utc>>), u32> =
        BTreeMap::new();
    for r in s
        .dose_records
        .iter()
        .filter(|r| r.outcome == Outcome::Dispensed && r.occurrence.is_some())
    {
        *dispensed
            .entry((r.medication.clone(), r.occurrence))
            .or_default() += 1;
    }
    assert!(
        dispensed.values().all(|n| *n == 1),
        "dispensed twice: {dispensed:?}"
    );
    let conn = medbox::store::schema::open_read_only(&db).unwrap();
    let answer = |id: &str| -> String {
        conn.query_row(
            "SELECT body FROM audit WHERE kind = 'command.result' AND body LIKE ?1 ORDER BY seq DESC LIMIT 1",
            [format!("%\"id\":\"{id}\"%")],
            |r| r.get(0),
        )
        .unwrap_or_else(|e| panic!("no answer to {id}: {e}"))
    };
    assert!(
        answer("before").contains("\"ok\":true"),
        "{}",
        answer("before")
    );
    for id in ["after", "after-again"] {
        assert!(answer(id).contains("PRN_TOO_SOON"), "{id}: {}", answer(id));
    }
    let faults: i64 = conn
        .query_row(
            "SELECT count(*) FROM audit WHERE body LIKE '%dose history%'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(faults, 0, "the records lined up");
}
