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
