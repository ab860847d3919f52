//! The portal driven in headless Chromium against the real things: a Mosquitto of the test's
//! own, PostgreSQL (a fresh schema), a collector archiving two simulated appliances of two
//! organisations, and one appliance left running to answer the portal's commands. Screenshots
//! of the main pages go to `target/portal-screenshots/`.

use fantoccini::{Client, ClientBuilder, Locator};
use medbox_fleet::collect::{collect, CollectConfig};
use medbox_fleet::portal::{store, Clock, Portal, PortalConfig};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

mod support;

use support::{fresh_schema, pg, run_fast, run_live};

type Broker = medbox_fleet::broker::PrivateBroker;

/// Options for a simulated appliance with the shipped board; `only` keeps one schedule and
/// gives its patient another pseudonym (a second organisation's patient).
fn appliance(url: &str, device: &str, dir: &Path, only: Option<&str>) -> medbox::sim::SimOptions {
    let mut opts = support::appliance_options(url, device, 7, dir);
    if let Some(patient) = only {
        opts.schedules.truncate(1);
        opts.schedules[0].patient = patient.into();
    }
    // Stock alerts early, so there is an alert to acknowledge.
    opts.refill_days = Some(60.0);
    opts
}

fn screenshots() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/portal-screenshots");
    std::fs::create_dir_all(&dir).expect("screenshot dir");
    dir
}

async fn shot(c: &Client, name: &str) {
    let png = c.screenshot().await.expect("screenshot");
    let path = screenshots().join(format!("{name}.png"));
    std::fs::write(&path, png).expect("write screenshot");
    println!("screenshot: {}", path.display());
}

/// A chromedriver of the test's own, on a free port.
struct Driver {
    child: std::process::Child,
    port: u16,
}

impl Driver {
    async fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let child = std::process::Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("chromedriver is needed: apt-get install chromium chromium-driver (.ci/prerequisites does)");
        let start = Instant::now();
        // Ready when it accepts connections (a real process: polled, not timed).
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "chromedriver did not start"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Self { child, port }
    }

    async fn browser(&self) -> Client {
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            serde_json::json!({
                "binary": std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into()),
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                         "--disable-dev-shm-usage", "--window-size=1200,1400"]
            }),
        );
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        ClientBuilder::new(connector)
            .capabilities(caps)
            .connect(&format!("http://127.0.0.1:{}", self.port))
            .await
            .expect("a Chromium session")
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn wait_for<F, Fut>(what: &str, limit: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while !check().await {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The element, once the page that has it has loaded (a form's answer can take a while: the
/// portal waits for the appliance).
async fn el(c: &Client, l: Locator<'_>) -> fantoccini::elements::Element {
    match c
        .wait()
        .at_most(Duration::from_secs(30))
        .for_element(l)
        .await
    {
        Ok(e) => e,
        Err(e) => {
            shot(c, "failure").await;
            let page = c.source().await.unwrap_or_default();
            panic!("{l:?}: {e}; the page was:\n{page}")
        }
    }
}

async fn text(c: &Client) -> String {
    el(c, Locator::Css("body"))
        .await
        .text()
        .await
        .expect("text")
}

async fn sign_in(c: &Client, base: &str, user: &str, password: &str) {
    c.goto(&format!("{base}/login")).await.expect("login page");
    c.find(Locator::Id("username"))
        .await
        .unwrap()
        .send_keys(user)
        .await
        .unwrap();
    c.find(Locator::Id("password"))
        .await
        .unwrap()
        .send_keys(password)
        .await
        .unwrap();
    c.find(Locator::Id("sign-in"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    // The next page: signed in (the header names the person) or refused.
    el(c, Locator::Css("header .who, #login-error")).await;
}

async fn sign_out(c: &Client) {
    c.find(Locator::Css("header form button"))
        .await
        .expect("sign-out button")
        .click()
        .await
        .unwrap();
    el(c, Locator::Id("sign-in")).await;
}

const PASSWORD: &str = "correct horse battery";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caregivers_and_pharmacists_use_the_portal_in_a_browser() {
    let broker = Broker::start().expect("mosquitto is needed (.ci/prerequisites installs it)");
    let url = broker.url();
    let schema = fresh_schema("portal");
    let dir = tempfile::tempdir().unwrap();

    // A collector archives what the appliances publish.
    let cfg = CollectConfig {
        mqtt: url.clone(),
        credentials: None,
        pg: pg(),
        schema: Some(schema.clone()),
        group: "portal-test".into(),
        name: "collector-portal".into(),
        subscribed: None,
        repair_every: None,
        progress: None,
    };
    let (stop_collector, collector_stopped) = tokio::sync::oneshot::channel::<()>();
    let collector = tokio::spawn(async move {
        collect(&cfg, async {
            let _ = collector_stopped.await;
        })
        .await
    });
    let portal = Portal::new(PortalConfig {
        pg: pg(),
        schema: Some(schema.clone()),
        mqtt: url.clone(),
        mqtt_credentials: None,
        secure_cookies: false,
        command_timeout: Duration::from_secs(20),
        // The simulated day: 2026-03-02 (UTC).
        clock: Clock::Fixed("2026-03-02T23:00:00Z".parse().unwrap()),
        band: (2.0, 8.0),
    })
    .await
    .expect("portal");
    tokio::time::sleep(Duration::from_millis(500)).await;

    // A day of two appliances in two organisations.
    let (north, south) = (
        appliance(&url, "mb-north", dir.path(), None),
        appliance(&url, "mb-south", dir.path(), Some("p-9001")),
    );
    let (n, s) = (north.clone(), south.clone());
    tokio::task::spawn_blocking(move || {
        run_fast(n, 86_400);
        run_fast(s, 12 * 3600);
    })
    .await
    .unwrap();

    let db = portal.db();
    store::upsert_org(db, "north", "North Home Care", "UTC")
        .await
        .unwrap();
    store::upsert_org(db, "south", "South Community Nursing", "UTC")
        .await
        .unwrap();
    store::assign_device(db, "mb-north", "north").await.unwrap();
    store::assign_device(db, "mb-south", "south").await.unwrap();
    for (user, org, role, name) in [
        ("alice", "north", "caregiver", "Alice Carer"),
        ("bob", "north", "nurse", "Bob Nurse"),
        ("pete", "north", "pharmacist", "Pete Pharmacist"),
        ("carol", "south", "caregiver", "Carol Carer"),
    ] {
        store::upsert_person(db, user, org, role, name, PASSWORD)
            .await
            .unwrap();
    }
    // Pete also administers North's people.
    assert!(store::set_admin(db, "pete", true).await.unwrap());
    assert!(store::set_fleet_admin(db, "pete", true).await.unwrap());
    wait_for("the archive to hold both appliances' days", Duration::from_secs(120), || async {
        db.query_one(
            "SELECT (SELECT count(*) FROM patients WHERE patient IN ('p-0107', 'p-9001')) = 2 \
               AND EXISTS (SELECT 1 FROM audit_rows WHERE device_id = 'mb-north' AND kind = 'inventory.alert') \
               AND EXISTS (SELECT 1 FROM audit_rows WHERE device_id = 'mb-north' \
                             AND utc >= '2026-03-02T23:00:00Z')",
            &[],
        )
        .await
        .map(|r| r.get::<_, bool>(0))
        .unwrap_or(false)
    })
    .await;

    // mb-north stays on, in real time, to answer commands.
    let (live, stop_live) = run_live(north);

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (stop_portal, portal_stopped) = tokio::sync::oneshot::channel::<()>();
    let server = {
        let portal = portal.clone();
        tokio::spawn(async move {
            portal
                .serve(listener, async {
                    let _ = portal_stopped.await;
                })
                .await
        })
    };

    let driver = Driver::start().await;
    let c = driver.browser().await;

    // A wrong password is refused without saying which part was wrong.
    c.goto(&format!("{base}/patients")).await.unwrap();
    assert!(c.current_url().await.unwrap().path().ends_with("/login"));
    sign_in(&c, &base, "alice", "not her password").await;
    let t = text(&c).await;
    assert!(t.contains("Wrong username or password"), "{t}");
    shot(&c, "01-login").await;

    // The caregiver sees her organisation's patients and a dose of today.
    sign_in(&c, &base, "alice", PASSWORD).await;
    let t = text(&c).await;
    assert!(t.contains("p-0107") && t.contains("mb-north"), "{t}");
    assert!(!t.contains("p-9001") && !t.contains("mb-south"), "{t}");
    shot(&c, "02-patients").await;
    c.goto(&format!("{base}/patients/mb-north/p-0107"))
        .await
        .unwrap();
    let today = c
        .find(Locator::Id("doses-today"))
        .await
        .expect("today's doses")
        .text()
        .await
        .unwrap();
    assert!(today.contains("Methotrexate"), "{today}");
    shot(&c, "03-patient").await;

    // An open alert, acknowledged through the appliance.
    let alerts = el(&c, Locator::Id("alerts")).await.text().await.unwrap();
    assert!(alerts.contains("LOW_STOCK (slot 0)"), "{alerts}");
    let form = c.find(Locator::Css("#alerts form")).await.unwrap();
    form.find(Locator::Css("input[name=comment]"))
        .await
        .unwrap()
        .send_keys("ordered from the pharmacy")
        .await
        .unwrap();
    form.find(Locator::Css("button"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let message = el(&c, Locator::Id("message")).await.text().await.unwrap();
    assert!(message.starts_with("Done:"), "{message}");
    shot(&c, "04-acknowledged").await;
    // The appliance's own record of it comes back through the collector and closes the alert.
    let page = format!("{base}/patients/mb-north/p-0107");
    let c2 = &c;
    wait_for(
        "the acknowledgement to reach the archive",
        Duration::from_secs(30),
        || async {
            c2.goto(&page).await.unwrap();
            !text(c2).await.contains("LOW_STOCK (slot 0)")
        },
    )
    .await;
    let acknowledged: i64 = db
        .query_one(
            "SELECT count(*) FROM portal_actions WHERE username = 'alice' \
             AND action = 'acknowledge_alarm' AND ok AND device_id = 'mb-north'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(acknowledged, 1, "the action is audited with the person");

    // A bad schedule file is refused with its line and field, and nothing is sent.
    let bad = dir.path().join("bad-schedule.toml");
    std::fs::write(
        &bad,
        "[patient]\nid = \"p-0107\"\ntimezone = \"America/New_York\"\n\n[[medication]]\nname = \"Methotrexate\"\nslot = 2\nunits = 0\ntimes = [\"09:00\"]\n",
    )
    .unwrap();
    c.goto(&format!("{base}/devices/mb-north/schedule?patient=p-0107"))
        .await
        .unwrap();
    c.find(Locator::Id("schedule-file"))
        .await
        .unwrap()
        .send_keys(bad.to_str().unwrap())
        .await
        .unwrap();
    c.find(Locator::Id("send-schedule"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let errors = el(&c, Locator::Id("schedule-errors"))
        .await
        .text()
        .await
        .unwrap();
    assert!(errors.contains("bad-schedule.toml:8"), "{errors}");
    assert!(errors.contains("units"), "{errors}");
    shot(&c, "05-bad-schedule").await;

    // A high-alert change: methotrexate's slot renamed off the built-in list, stripped of its
    // weekly guard and made daily (the classic fatal error) waits for a second person.
    let riskier = include_str!("../../schedules/p-0107-weekly-methotrexate.toml")
        .replacen("name = \"Methotrexate\"", "name = \"Folate supplement\"", 1)
        .replacen("days = [\"mon\"]\n", "", 1)
        .replace("high_alert_weekly = true\n", "");
    c.goto(&format!("{base}/devices/mb-north/schedule?patient=p-0107"))
        .await
        .unwrap();
    let area = c.find(Locator::Id("schedule-text")).await.unwrap();
    area.clear().await.unwrap();
    area.send_keys(&riskier).await.unwrap();
    c.find(Locator::Id("send-schedule"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let message = el(&c, Locator::Id("message")).await.text().await.unwrap();
    assert!(message.contains("until someone else confirms"), "{message}");
    c.goto(&format!("{base}/confirmations")).await.unwrap();
    let t = text(&c).await;
    assert!(t.contains("You asked for this change"), "{t}");
    assert!(
        c.find(Locator::Css("button.confirm")).await.is_err(),
        "no confirm button for the asker"
    );
    sign_out(&c).await;

    sign_in(&c, &base, "bob", PASSWORD).await;
    c.goto(&format!("{base}/confirmations")).await.unwrap();
    shot(&c, "06-confirmation").await;
    c.find(Locator::Css("button.confirm"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let message = el(&c, Locator::Id("message")).await.text().await.unwrap();
    assert!(
        message.starts_with("Done:") && message.contains("replaced"),
        "{message}"
    );
    c.goto(&format!("{base}/confirmations")).await.unwrap();
    assert!(c.find(Locator::Id("no-pending")).await.is_ok());
    sign_out(&c).await;

    // Another organisation's caregiver sees none of it, not even by address.
    sign_in(&c, &base, "carol", PASSWORD).await;
    let t = text(&c).await;
    assert!(t.contains("p-9001"), "{t}");
    assert!(!t.contains("p-0107") && !t.contains("mb-north"), "{t}");
    c.goto(&format!("{base}/patients/mb-north/p-0107"))
        .await
        .unwrap();
    let t = text(&c).await;
    assert!(
        t.contains("not found") && !t.contains("Methotrexate"),
        "{t}"
    );
    c.goto(&format!("{base}/devices/mb-north/schedule"))
        .await
        .unwrap();
    assert!(text(&c).await.contains("not found"));
    c.goto(&format!("{base}/fridges")).await.unwrap();
    assert!(text(&c).await.contains("for pharmacists"));
    sign_out(&c).await;

    // The pharmacist: every fridge, and the audit.
    sign_in(&c, &base, "pete", PASSWORD).await;
    let t = text(&c).await;
    assert!(
        t.contains("Every fridge at a glance") && t.contains("mb-north"),
        "{t}"
    );
    assert!(!t.contains("mb-south"), "{t}");
    shot(&c, "07-fridges").await;
    // The appliance's own report, rebuilt from the archive, verifies the chain it was given.
    c.find(Locator::LinkText("report"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let report = el(&c, Locator::Css("h1")).await.text().await.unwrap();
    assert_eq!(report, "medbox cold-chain and dispensing report");
    let t = text(&c).await;
    assert!(t.contains("Readings intact"), "{t}");
    shot(&c, "08-report").await;
    c.goto(&format!("{base}/audit?device=mb-north&kind=schedule."))
        .await
        .unwrap();
    shot(&c, "09-audit").await;
    // As North's administrator, Pete adds a nurse from the People page.
    c.goto(&format!("{base}/people")).await.unwrap();
    let t = text(&c).await;
    assert!(t.contains("alice") && !t.contains("carol"), "{t}");
    for (field, value) in [
        ("username", "nina"),
        ("display_name", "Nina Nurse"),
        ("password", "a long first password"),
    ] {
        c.find(Locator::Css(&format!("#add-person [name={field}]")))
            .await
            .unwrap()
            .send_keys(value)
            .await
            .unwrap();
    }
    c.find(Locator::Css("#add-person option[value=nurse]"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    c.find(Locator::Css("#add-person button"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let added = el(&c, Locator::Id("people-result"))
        .await
        .text()
        .await
        .unwrap();
    assert_eq!(added, "nina added as nurse");
    assert!(el(&c, Locator::Id("person-nina"))
        .await
        .text()
        .await
        .unwrap()
        .contains("Nina Nurse"));
    shot(&c, "10-people").await;
    // As the fleet's administrator, Pete creates an organisation from the Organisations page.
    c.goto(&format!("{base}/organisations")).await.unwrap();
    let t = text(&c).await;
    assert!(
        t.contains("North Home Care") && t.contains("South Community Nursing"),
        "{t}"
    );
    for (field, value) in [("org_id", "west"), ("name", "West Care")] {
        c.find(Locator::Css(&format!("#add-org [name={field}]")))
            .await
            .unwrap()
            .send_keys(value)
            .await
            .unwrap();
    }
    c.find(Locator::Css("#add-org button"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let created = el(&c, Locator::Id("orgs-result"))
        .await
        .text()
        .await
        .unwrap();
    assert_eq!(created, "organisation west (West Care, UTC) created");
    assert!(el(&c, Locator::Id("org-west"))
        .await
        .text()
        .await
        .unwrap()
        .contains("none yet"));
    shot(&c, "11-organisations").await;

    c.close().await.unwrap();
    drop(driver);
    let _ = stop_live.send(());
    tokio::task::spawn_blocking(move || live.join())
        .await
        .unwrap()
        .unwrap();
    let _ = stop_portal.send(());
    server.await.unwrap().unwrap();
    let _ = stop_collector.send(());
    collector.await.unwrap().unwrap();
    let people_actions: i64 = db
        .query_one("SELECT count(DISTINCT username) FROM portal_actions", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(people_actions, 4, "every person's actions are audited");
    db.batch_execute(&format!("DROP SCHEMA {schema} CASCADE"))
        .await
        .unwrap();
}
