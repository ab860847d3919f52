//! `medbox-fleet bench pages`: how long the portal's pages take for a fleet of N appliances.
//! A figure, never an assertion.
//!
//! One simulated appliance-day is stored through the collector's own path (parsed and stored
//! in batches, the witness checking it), then copied in SQL under N device ids into a schema of
//! the bench's own, all in one organisation. The portal then serves it on a local port and each
//! page is fetched over HTTP as a signed-in caregiver or pharmacist would, timed from request
//! to last byte.

use crate::archive::Archive;
use crate::ingest;
use crate::portal::{store, Clock, Portal, PortalConfig};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use std::time::{Duration, Instant};

/// One page's timings.
#[derive(Debug, serde::Serialize)]
pub struct PageTime {
    /// The page.
    pub page: String,
    /// Bytes of HTML (or CSV).
    pub bytes: usize,
    /// Fetches.
    pub runs: usize,
    /// Milliseconds: fastest, median, 95th percentile, slowest.
    pub min_ms: f64,
    /// Median.
    pub p50_ms: f64,
    /// 95th percentile.
    pub p95_ms: f64,
    /// Slowest.
    pub max_ms: f64,
}

/// What was measured.
#[derive(Debug, serde::Serialize)]
pub struct PagesBench {
    /// Appliances in the organisation.
    pub devices: usize,
    /// Patients in the organisation.
    pub patients: i64,
    /// Rows in the archive (audit rows + readings + messages).
    pub rows: i64,
    /// Seconds to fill the archive.
    pub fill_seconds: f64,
    /// Each page.
    pub pages: Vec<PageTime>,
}

const TEMPLATE: &str = "bench-template";

/// Runs the bench with `devices` appliances, fetching each page `runs` times.
pub async fn pages(pg: &str, devices: usize, runs: usize) -> anyhow::Result<PagesBench> {
    let started = Instant::now();
    let (template, _) =
        tokio::task::spawn_blocking(|| crate::bench::backlog_of(TEMPLATE, 24)).await??;
    let schema = format!("fleet_bench_pages_{}", std::process::id());
    let mut archive = Archive::connect(pg, Some(&schema)).await?;
    let result = measure(&mut archive, pg, &schema, template, devices, runs, started).await;
    // The bench's data goes whatever happened.
    archive
        .client()
        .batch_execute(&format!("DROP SCHEMA {schema} CASCADE"))
        .await?;
    result
}

async fn measure(
    archive: &mut Archive,
    pg: &str,
    schema: &str,
    template: Vec<(String, String)>,
    devices: usize,
    runs: usize,
    started: Instant,
) -> anyhow::Result<PagesBench> {
    let parsed: Vec<(String, ingest::Message, Vec<u8>)> = template
        .into_iter()
        .filter_map(|(topic, payload)| {
            let m = ingest::parse(&topic, payload.as_bytes()).ok()?;
            Some((topic, m, payload.into_bytes()))
        })
        .collect();
    for chunk in parsed.chunks(100) {
        let items: Vec<(&str, &ingest::Message, &[u8])> = chunk
            .iter()
            .map(|(t, m, p)| (t.as_str(), m, &p[..]))
            .collect();
        archive.store_batch(&items).await?;
    }
    let db = archive.client();
    let copies = i64::try_from(devices.saturating_sub(1))?;
    // The other devices: the template's rows under their ids (readings keep their partition).
    let id = "'bench-' || lpad(g::text, 4, '0')";
    for sql in [
        format!("INSERT INTO devices (device_id, status, public_key, key_source) SELECT {id}, status, public_key, key_source FROM devices, generate_series(1, $1::bigint) g WHERE device_id = '{TEMPLATE}'"),
        format!("INSERT INTO messages (message_id, device_id, topic, payload) SELECT replace(message_id, '{TEMPLATE}', {id}), {id}, replace(topic, '{TEMPLATE}', {id}), payload FROM messages, generate_series(1, $1::bigint) g WHERE device_id = '{TEMPLATE}'"),
        format!("INSERT INTO audit_rows (device_id, seq, utc, kind, subject, actor, reason, clock_trusted, body, prev_hash, hash) SELECT {id}, seq, utc, kind, subject, actor, reason, clock_trusted, body, prev_hash, hash FROM audit_rows, generate_series(1, $1::bigint) g WHERE device_id = '{TEMPLATE}'"),
        format!("INSERT INTO readings SELECT {id}, row_id, utc, vial_c, air_c, product_c, doubt, compressor_on, door_open, mains, mode FROM readings, generate_series(1, $1::bigint) g WHERE device_id = '{TEMPLATE}'"),
        format!("INSERT INTO checkpoints (device_id, seq, head, utc, signature, public_key) SELECT {id}, seq, head, utc, signature, public_key FROM checkpoints, generate_series(1, $1::bigint) g WHERE device_id = '{TEMPLATE}'"),
        format!("INSERT INTO patients (device_id, patient) SELECT {id}, patient FROM patients, generate_series(1, $1::bigint) g WHERE device_id = '{TEMPLATE}'"),
        format!("INSERT INTO doses SELECT {id}, patient, medication, occurrence, as_needed, outcome, units, at, seq FROM doses, generate_series(1, $1::bigint) g WHERE device_id = '{TEMPLATE}'"),
    ] {
        db.execute(&sql, &[&copies]).await?;
    }
    store::upsert_org(db, "fleet", "Bench Care", "UTC").await?;
    db.execute(
        "INSERT INTO device_orgs (device_id, org_id) SELECT device_id, 'fleet' FROM devices",
        &[],
    )
    .await?;
    db.batch_execute("ANALYZE").await?;
    let password = "bench password 1234";
    store::upsert_person(db, "carer", "fleet", "caregiver", "Carer", password).await?;
    store::upsert_person(db, "pharm", "fleet", "pharmacist", "Pharmacist", password).await?;
    let count =
        |sql: &'static str| async move { db.query_one(sql, &[]).await.map(|r| r.get::<_, i64>(0)) };
    let patients = count("SELECT count(*) FROM patients").await?;
    let rows = count(
        "SELECT (SELECT count(*) FROM audit_rows) + (SELECT count(*) FROM readings) + (SELECT count(*) FROM messages)",
    )
    .await?;
    let fill_seconds = started.elapsed().as_secs_f64();
    let (device, patient): (String, String) = {
        let r = db
            .query_one(
                "SELECT device_id, patient FROM doses ORDER BY device_id DESC, patient LIMIT 1",
                &[],
            )
            .await?;
        (r.get(0), r.get(1))
    };

    let portal = Portal::new(PortalConfig {
        pg: pg.into(),
        schema: Some(schema.into()),
        mqtt: "mqtt://127.0.0.1:9".into(),
        mqtt_credentials: None,
        secure_cookies: false,
        command_timeout: Duration::from_secs(1),
        clock: Clock::Fixed("2026-03-02T23:00:00Z".parse()?),
        band: (2.0, 8.0),
    })
    .await?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = {
        let portal = portal.clone();
        tokio::spawn(async move {
            portal
                .serve(listener, async {
                    let _ = stopped.await;
                })
                .await
        })
    };
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let carer = sign_in(&client, &base, "carer", password).await?;
    let pharm = sign_in(&client, &base, "pharm", password).await?;
    let mut pages = Vec::new();
    for (who, path, n) in [
        (&carer, "/patients".to_string(), runs),
        (&carer, "/patients?page=40".to_string(), runs),
        (&carer, format!("/patients/{device}/{patient}"), runs),
        (&carer, "/confirmations".to_string(), runs),
        (&pharm, "/fridges".to_string(), runs),
        (&pharm, "/audit".to_string(), runs),
        (&pharm, format!("/audit?device={device}&kind=dose."), runs),
        (&pharm, format!("/audit.csv?device={device}"), runs),
        (
            &pharm,
            format!("/devices/{device}/report"),
            runs.div_ceil(4),
        ),
    ] {
        pages.push(time(&client, &base, who, &path, n).await?);
    }
    let _ = stop.send(());
    server.await??;
    Ok(PagesBench {
        devices,
        patients,
        rows,
        fill_seconds,
        pages,
    })
}

type Http = Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>;

async fn sign_in(client: &Http, base: &str, user: &str, password: &str) -> anyhow::Result<String> {
    let body = serde_urlencoded::to_string([("username", user), ("password", password)])?;
    let resp = client
        .request(
            hyper::Request::post(format!("{base}/login"))
                .header("content-type", "application/x-www-form-urlencoded")
                .body(Full::new(Bytes::from(body)))?,
        )
        .await?;
    let cookie = resp
        .headers()
        .get("set-cookie")
        .and_then(|c| c.to_str().ok())
        .and_then(|c| c.split(';').next())
        .ok_or_else(|| anyhow::anyhow!("{user} could not sign in"))?;
    Ok(cookie.to_string())
}

async fn time(
    client: &Http,
    base: &str,
    cookie: &str,
    path: &str,
    runs: usize,
) -> anyhow::Result<PageTime> {
    let mut ms = Vec::with_capacity(runs);
    let mut bytes = 0;
    for _ in 0..runs.max(1) {
        let t = Instant::now();
        let resp = client
            .request(
                hyper::Request::get(format!("{base}{path}"))
                    .header("cookie", cookie)
                    .body(Full::new(Bytes::new()))?,
            )
            .await?;
        let status = resp.status();
        let body = resp.into_body().collect().await?.to_bytes();
        ms.push(t.elapsed().as_secs_f64() * 1000.0);
        anyhow::ensure!(status.is_success(), "{path}: {status}");
        bytes = body.len();
    }
    ms.sort_by(f64::total_cmp);
    let at = |q: f64| ms[((ms.len() - 1) as f64 * q).round() as usize];
    Ok(PageTime {
        page: path.into(),
        bytes,
        runs: ms.len(),
        min_ms: at(0.0),
        p50_ms: at(0.5),
        p95_ms: at(0.95),
        max_ms: at(1.0),
    })
}
