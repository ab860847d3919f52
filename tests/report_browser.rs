//! The pharmacist's report as a browser shows and prints it: headless Chromium takes a
//! screenshot and prints a PDF (both kept under `target/test-output/`). `.ci/run` installs
//! Debian's `chromium`; without it this test fails and says so.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

fn chromium() -> PathBuf {
    ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .expect("headless Chromium is needed: apt-get install chromium (.ci/run installs it)")
}

fn output_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/test-output");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Runs headless Chromium on `page` with `args`; its profile lives in `profile`.
fn headless(page: &Path, profile: &Path, args: &[String]) {
    let out = Command::new(chromium())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            "--no-first-run",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .arg(format!("file://{}", page.display()))
        .output()
        .expect("chromium runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_report_renders_in_a_browser_and_prints_with_page_numbers_and_a_review_block() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("m.db");
    common::run(medbox::sim::SimOptions {
        household: Some(Default::default()),
        ..common::recording(&db, "door-left-open.toml", 3.0)
    });
    let html_path = dir.path().join("report.html");
    let out = Command::new(env!("CARGO_BIN_EXE_medbox"))
        .args(["audit", "report", "--tz", "Europe/Berlin", "--db"])
        .arg(&db)
        .arg("--out")
        .arg(&html_path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let html = std::fs::read_to_string(&html_path).unwrap();
    for needle in [
        "local to <b>Europe/Berlin</b>",
        "Each day&#x27;s lowest and highest",
        "day left the range",
        "door open",
        "alarm raised",
        "furthest out",
        "reviewed by",
        "counter(page)",
        "day (Europe/Berlin)",
    ] {
        assert!(
            html.contains(needle) || html.contains(&needle.replace("&#x27;", "'")),
            "missing {needle:?}"
        );
    }
    // The door left open for an hour gets its own chart with the door marked on it.
    assert!(
        html.matches("<figcaption>").count() >= 2,
        "a day chart as well as the envelope"
    );

    let shots = output_dir();
    let png = shots.join("report.png");
    let pdf = shots.join("report.pdf");
    let profile = dir.path().join("chromium");
    headless(
        &html_path,
        &profile,
        &[
            "--window-size=1200,2400".into(),
            format!("--screenshot={}", png.display()),
        ],
    );
    headless(
        &html_path,
        &profile,
        &[
            "--no-pdf-header-footer".into(),
            format!("--print-to-pdf={}", pdf.display()),
        ],
    );
    let png_bytes = std::fs::read(&png).unwrap();
    assert!(png_bytes.starts_with(b"\x89PNG"), "a PNG screenshot");
    assert!(png_bytes.len() > 20_000, "the screenshot shows something");
    let pdf_bytes = std::fs::read(&pdf).unwrap();
    assert!(pdf_bytes.starts_with(b"%PDF"), "a PDF");
    let pages = pdf_bytes
        .windows(b"/Type /Page\n".len())
        .filter(|w| w.starts_with(b"/Type /Page") && !w.starts_with(b"/Type /Pages"))
        .count();
    assert!(pages >= 2, "the report prints over several pages ({pages})");
}
