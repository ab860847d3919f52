//! What the fleet's tests share: the PostgreSQL they use and a schema of each test's own.

/// The PostgreSQL the tests use (`.ci/prerequisites` starts one with trust auth).
pub fn pg() -> String {
    std::env::var("MEDBOX_FLEET_PG")
        .unwrap_or_else(|_| "host=127.0.0.1 user=postgres dbname=test".into())
}

/// A schema no other test or run uses.
pub fn fresh_schema(what: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("fleet_test_{what}_{}_{nanos}", std::process::id())
}
