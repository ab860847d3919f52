//! The shipped schedules, the invalid examples and their errors, and `schedule next` across
//! daylight-saving changes.

use std::path::Path;
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
fn every_shipped_schedule_is_valid() {
    let (code, text) = medbox(&["schedule", "check", "schedules/"]);
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("4 schedule(s) valid"), "{text}");
}

#[test]
fn every_invalid_example_is_rejected_with_its_expected_error() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("schedules/invalid");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        let expect = text
            .lines()
            .find_map(|l| l.strip_prefix("# expect: "))
            .unwrap_or_else(|| panic!("{} has no `# expect:` line", path.display()));
        let rel = format!(
            "schedules/invalid/{}",
            path.file_name().unwrap().to_string_lossy()
        );
        let (code, out) = medbox(&["schedule", "check", &rel]);
        assert_eq!(code, 1, "{rel} was accepted");
        assert!(
            out.contains(expect),
            "{rel}: expected {expect:?}, got {out}"
        );
        n += 1;
    }
    assert!(n >= 8);
}

fn next_local(zone: &str, time: &str, from: &str, count: usize) -> Vec<String> {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("s.toml");
    std::fs::write(
        &file,
        format!("[patient]\nid = \"p-1\"\ntimezone = \"{zone}\"\n[[medication]]\nname = \"A\"\nslot = 0\nunits = 1\ntimes = [\"{time}\"]\n"),
    )
    .unwrap();
    let (code, out) = medbox(&[
        "schedule",
        "next",
        file.to_str().unwrap(),
        "--from",
        from,
        "--count",
        &count.to_string(),
        "--json",
    ]);
    assert_eq!(code, 0, "{out}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    v["medications"][0]["occurrences"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["local"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn schedule_next_shifts_a_dose_in_the_spring_gap_forward_in_several_zones() {
    // New York: 2026-03-08 02:00 → 03:00. 02:30 fires at 03:30 new time that night.
    assert_eq!(
        next_local("America/New_York", "02:30", "2026-03-07T12:00:00Z", 3),
        vec![
            "2026-03-08T03:30:00-04:00",
            "2026-03-09T02:30:00-04:00",
            "2026-03-10T02:30:00-04:00"
        ]
    );
    // Berlin: 2026-03-29 02:00 → 03:00.
    assert_eq!(
        next_local("Europe/Berlin", "02:15", "2026-03-28T12:00:00Z", 2),
        vec!["2026-03-29T03:15:00+02:00", "2026-03-30T02:15:00+02:00"]
    );
    // Sydney: 2026-10-04 02:00 → 03:00 (southern spring).
    assert_eq!(
        next_local("Australia/Sydney", "02:45", "2026-10-03T00:00:00Z", 1),
        vec!["2026-10-04T03:45:00+11:00"]
    );
}

#[test]
fn schedule_next_doses_once_in_the_repeated_autumn_hour() {
    // Berlin 2026-10-25: 03:00 CEST → 02:00 CET; 02:30 exists twice, dose at the first.
    assert_eq!(
        next_local("Europe/Berlin", "02:30", "2026-10-24T12:00:00Z", 2),
        vec!["2026-10-25T02:30:00+02:00", "2026-10-26T02:30:00+01:00"]
    );
    // New York 2026-11-01: 01:30 exists twice (EDT, then EST).
    assert_eq!(
        next_local("America/New_York", "01:30", "2026-10-31T12:00:00Z", 2),
        vec!["2026-11-01T01:30:00-04:00", "2026-11-02T01:30:00-05:00"]
    );
}

#[test]
fn explain_gives_reason_codes() {
    let (code, out) = medbox(&[
        "schedule",
        "explain",
        "schedules/p-0042-twice-daily-and-beta-blocker.toml",
        "--at",
        "2026-03-02T05:00:00Z",
        "--json",
    ]);
    assert_eq!(code, 0, "{out}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["medications"][0]["result"]["reason"], "TOO_EARLY");
    assert_eq!(v["medications"][1]["result"]["reason"], "TOO_EARLY");
}

#[test]
fn schedule_check_finds_a_slot_clash_between_files_named_one_by_one() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, patient: &str, med: &str| {
        let path = dir.path().join(name);
        std::fs::write(
            &path,
            format!("[patient]\nid = \"{patient}\"\ntimezone = \"Europe/Berlin\"\n[[medication]]\nname = \"{med}\"\nslot = 3\nunits = 1\ntimes = [\"08:00\"]\n"),
        )
        .unwrap();
        path.to_string_lossy().to_string()
    };
    let a = write("a.toml", "p-1", "Aspirin");
    let b = write("b.toml", "p-2", "Ramipril");
    let dir_text = dir.path().to_string_lossy().to_string();
    for args in [
        vec!["schedule", "check", a.as_str(), b.as_str()],
        vec!["schedule", "check", dir_text.as_str()],
        vec!["schedule", "check", dir_text.as_str(), a.as_str()],
    ] {
        let (code, out) = medbox(&args);
        assert_eq!(code, 1, "{args:?}: {out}");
        assert_eq!(
            out.matches("slot 3 is also used by \"Aspirin\"").count(),
            1,
            "{args:?}: one clash, told once: {out}"
        );
        assert!(
            out.contains("b.toml:6: medication \"Ramipril\".slot"),
            "{out}"
        );
    }
}

#[test]
fn days_may_be_written_as_full_names_in_any_case() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("s.toml");
    std::fs::write(
        &file,
        "[patient]\nid = \"p-1\"\ntimezone = \"Europe/Berlin\"\n[[medication]]\nname = \"A\"\nslot = 0\nunits = 1\ntimes = [\"08:00\"]\ndays = [\"Sunday\", \"WED\"]\n",
    )
    .unwrap();
    let (code, out) = medbox(&[
        "schedule",
        "next",
        file.to_str().unwrap(),
        "--from",
        "2026-03-02",
        "--count",
        "3",
        "--json",
    ]);
    assert_eq!(code, 0, "{out}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    let days: Vec<&str> = v["medications"][0]["occurrences"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| &o["local"].as_str().unwrap()[..10])
        .collect();
    assert_eq!(days, ["2026-03-04", "2026-03-08", "2026-03-11"]);
}

#[test]
fn moments_on_the_command_line_are_local_to_the_schedule_and_so_are_the_answers() {
    let file = "schedules/p-0042-twice-daily-and-beta-blocker.toml";
    // A date alone is the start of that local day.
    let (code, out) = medbox(&[
        "schedule",
        "next",
        file,
        "--from",
        "2026-03-28",
        "--count",
        "1",
    ]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("Sat 2026-03-28 08:00 CET"), "{out}");
    // 06:10 in Berlin on the first summer-time morning: too early, told in local time.
    let (code, out) = medbox(&["schedule", "explain", file, "--at", "2026-03-29T06:10"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("at Sun 2026-03-29 06:10 CEST"), "{out}");
    assert!(
        out.contains("TOO_EARLY: the next dose (Sun 2026-03-29 08:00 CEST) opens at Sun 2026-03-29 07:30 CEST"),
        "{out}"
    );
    assert!(!out.contains("+00:00") && !out.contains('Z'), "{out}");
    // A local time the clocks skip is refused, not guessed.
    let (code, out) = medbox(&["schedule", "explain", file, "--at", "2026-03-29T02:30"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("does not exist in Europe/Berlin"), "{out}");
}

#[test]
fn explain_names_a_missing_reading_in_words() {
    let (code, out) = medbox(&[
        "schedule",
        "explain",
        "schedules/p-0042-twice-daily-and-beta-blocker.toml",
        "--at",
        "2026-03-02T08:05",
    ]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("Metoprolol: NEEDS_READING: a pulse reading from the last 2h is needed"),
        "{out}"
    );
}

#[test]
fn schedule_week_lists_every_dose_by_local_day_and_exports_a_calendar() {
    let file = "schedules/p-0520-prednisolone-taper.toml";
    let (code, out) = medbox(&[
        "schedule",
        "week",
        file,
        "--from",
        "2026-03-02",
        "--days",
        "7",
    ]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("local time in Australia/Sydney"), "{out}");
    assert!(out.contains("Monday 2 March"), "{out}");
    assert_eq!(out.matches("Prednisolone 5 mg").count(), 7, "{out}");
    let (code, ics) = medbox(&[
        "schedule",
        "week",
        file,
        "--from",
        "2026-03-02",
        "--days",
        "7",
        "--ics",
    ]);
    assert_eq!(code, 0, "{ics}");
    assert_eq!(ics.matches("BEGIN:VEVENT").count(), 7, "{ics}");
    // 08:00 in Sydney (AEDT, UTC+11) is 21:00 UTC the evening before.
    assert!(ics.contains("DTSTART:20260301T210000Z"), "{ics}");
    // The whole cabinet: every schedule in a directory, as-needed medications listed apart.
    let (code, out) = medbox(&[
        "schedule",
        "week",
        "schedules",
        "--from",
        "2026-03-02",
        "--days",
        "1",
    ]);
    assert_eq!(code, 0, "{out}");
    for patient in ["p-0042", "p-0107", "p-0311", "p-0520"] {
        assert!(out.contains(patient), "{out}");
    }
    assert!(out.contains("as needed\n  p-0311  Paracetamol"), "{out}");
}
