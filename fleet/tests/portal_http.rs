//! The portal's guards over plain HTTP against PostgreSQL (a fresh schema per test): signing
//! in and out, CSRF and same-origin checks, organisation scoping, roles, escaping of what
//! appliances report, and the audited CSV export. No appliance answers in most of them: each
//! request is refused before anything would be sent, and the tests check that nothing was. One
//! runs a live appliance to show that a form sent twice is done once.

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{HeaderMap, Method, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use medbox_fleet::portal::{store, Clock, Portal, PortalConfig};
use std::time::Duration;

mod support;

use support::pg;

const PASSWORD: &str = "correct horse battery";

/// A portal over a fresh schema holding two organisations, each with one appliance, a
/// patient, a dose and people.
struct Site {
    portal: Portal,
    base: String,
    schema: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Site {
    async fn start(name: &str) -> Self {
        // Nothing listens there: a command that got this far would fail, and be audited.
        Self::start_with(name, "mqtt://127.0.0.1:9").await
    }

    /// A site whose commands go to the broker at `mqtt`.
    async fn start_with(name: &str, mqtt: &str) -> Self {
        let schema = support::fresh_schema(&format!("http_{name}"));
        let portal = Portal::new(PortalConfig {
            pg: pg(),
            schema: Some(schema.clone()),
            mqtt: mqtt.into(),
            mqtt_credentials: None,
            secure_cookies: false,
            command_timeout: Duration::from_secs(10),
            clock: Clock::Fixed("2026-03-02T12:00:00Z".parse().unwrap()),
            band: (2.0, 8.0),
        })
        .await
        .expect("portal");
        let db = portal.db();
        for (org, dev, patient) in [
            ("north", "mb-north", "p-0107"),
            ("south", "mb-south", "<script>alert('p')</script>"),
        ] {
            store::upsert_org(db, org, org, "UTC").await.unwrap();
            store::assign_device(db, dev, org).await.unwrap();
            db.execute("INSERT INTO devices (device_id) VALUES ($1)", &[&dev])
                .await
                .unwrap();
            db.execute(
                "INSERT INTO patients (device_id, patient) VALUES ($1, $2)",
                &[&dev, &patient],
            )
            .await
            .unwrap();
            db.execute(
                "INSERT INTO doses (device_id, patient, medication, occurrence, as_needed, outcome, units, at, seq) \
                 VALUES ($1, $2, 'Methotrexate', '2026-03-02T09:00:00Z', false, 'taken', 4, '2026-03-02T09:05:00Z', 1)",
                &[&dev, &patient],
            )
            .await
            .unwrap();
            db.execute(
                "INSERT INTO audit_rows (device_id, seq, utc, kind, subject, actor, reason, clock_trusted, body) \
                 VALUES ($1, 1, '2026-03-02T09:05:00Z', 'dose.taken', '', 'system:dispenser', '', true, \
                         jsonb_build_object('patient', $2::text))",
                &[&dev, &patient],
            )
            .await
            .unwrap();
        }
        for (user, org, role) in [
            ("alice", "north", "caregiver"),
            ("pete", "north", "pharmacist"),
            ("carol", "south", "caregiver"),
        ] {
            store::upsert_person(db, user, org, role, user, PASSWORD)
                .await
                .unwrap();
        }
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let p = portal.clone();
        tokio::spawn(async move {
            p.serve(listener, async {
                let _ = stopped.await;
            })
            .await
        });
        Self {
            portal,
            base,
            schema,
            stop: Some(stop),
        }
    }

    async fn request(
        &self,
        method: Method,
        path: &str,
        cookie: Option<&str>,
        form: Option<&[(&str, &str)]>,
        origin: Option<&str>,
    ) -> (StatusCode, HeaderMap, String) {
        let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
        let mut req = hyper::Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base));
        if let Some(c) = cookie {
            req = req.header("cookie", format!("medbox_session={c}"));
        }
        if let Some(o) = origin {
            req = req.header("origin", o);
        }
        let body = match form {
            Some(f) => {
                req = req.header("content-type", "application/x-www-form-urlencoded");
                serde_urlencoded::to_string(f).unwrap()
            }
            None => String::new(),
        };
        let resp = client
            .request(req.body(Full::new(Bytes::from(body))).unwrap())
            .await
            .expect("request");
        let (parts, body) = resp.into_parts();
        let bytes = body.collect().await.unwrap().to_bytes();
        (
            parts.status,
            parts.headers,
            String::from_utf8_lossy(&bytes).into_owned(),
        )
    }

    /// Posts the sign-in form.
    async fn login(&self, user: &str, password: &str) -> (StatusCode, HeaderMap, String) {
        self.request(
            Method::POST,
            "/login",
            None,
            Some(&[("username", user), ("password", password)]),
            None,
        )
        .await
    }

    /// Signs in; returns the session token and the CSRF token of its forms.
    async fn sign_in(&self, user: &str) -> (String, String) {
        let (status, headers, _) = self.login(user, PASSWORD).await;
        assert_eq!(status, StatusCode::SEE_OTHER);
        let cookie = headers["set-cookie"].to_str().unwrap().to_string();
        let token = cookie
            .strip_prefix("medbox_session=")
            .and_then(|c| c.split(';').next())
            .unwrap()
            .to_string();
        // The password page answers everyone signed in, even on a password set by someone else.
        let (_, _, page) = self
            .request(Method::GET, "/password", Some(&token), None, None)
            .await;
        let csrf = page
            .split("name=\"csrf\" value=\"")
            .nth(1)
            .and_then(|s| s.split('"').next())
            .expect("a form with a CSRF token")
            .to_string();
        (token, csrf)
    }

    async fn actions(&self, action: &str) -> Vec<(String, bool, String)> {
        self.portal
            .db()
            .query(
                "SELECT username, ok, detail FROM portal_actions WHERE action = $1 ORDER BY id",
                &[&action],
            )
            .await
            .unwrap()
            .into_iter()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .collect()
    }

    async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        self.portal
            .db()
            .batch_execute(&format!("DROP SCHEMA {} CASCADE", self.schema))
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn nobody_signed_in_sees_anything_and_a_wrong_password_is_audited() {
    let site = Site::start("anon").await;
    for path in [
        "/",
        "/patients",
        "/patients/mb-north/p-0107",
        "/fridges",
        "/audit.csv",
    ] {
        let (status, headers, _) = site.request(Method::GET, path, None, None, None).await;
        assert_eq!(status, StatusCode::SEE_OTHER, "{path}");
        assert_eq!(headers["location"], "/login", "{path}");
    }
    let (status, _, _) = site
        .request(
            Method::POST,
            "/devices/mb-north/command",
            Some("00ff"),
            Some(&[("command", "refill"), ("slot", "1"), ("units", "9")]),
            None,
        )
        .await;
    assert_eq!(
        status,
        StatusCode::SEE_OTHER,
        "a made-up session is no session"
    );
    let (status, headers, page) = site.login("alice", "guess").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(headers.get("set-cookie").is_none());
    assert!(page.contains("Wrong username or password"));
    let (status, _, unknown) = site.login("mallory", "guess").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        unknown, page,
        "an unknown name reads exactly like a wrong password"
    );
    let logins = site.actions("login").await;
    assert_eq!(
        logins,
        vec![
            ("alice".into(), false, "wrong username or password".into()),
            ("mallory".into(), false, "wrong username or password".into())
        ]
    );
    site.stop().await;
}

#[tokio::test]
async fn five_wrong_passwords_stop_sign_ins_under_that_name_for_a_quarter_hour() {
    let site = Site::start("throttle").await;
    for _ in 0..5 {
        assert_eq!(
            site.login("alice", "guess").await.0,
            StatusCode::UNAUTHORIZED
        );
    }
    // The right password now gets nowhere, and is not even checked.
    let (status, headers, page) = site.login("alice", PASSWORD).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert!(headers.get("set-cookie").is_none());
    assert!(page.contains("Too many wrong passwords"), "{page}");
    // Another name is not held up by it.
    assert_eq!(site.login("pete", PASSWORD).await.0, StatusCode::SEE_OTHER);
    let alices: Vec<String> = site
        .actions("login")
        .await
        .into_iter()
        .filter(|(u, _, _)| u == "alice")
        .map(|(_, _, d)| d)
        .collect();
    assert_eq!(alices.len(), 6);
    assert_eq!(alices[5], "throttled: too many wrong passwords");
    // A quarter of an hour later (the audit's times moved back), she signs in, and a sign-in
    // starts the count again.
    site.portal
        .db()
        .execute(
            "UPDATE portal_actions SET at = at - interval '16 minutes' WHERE username = 'alice'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(site.login("alice", PASSWORD).await.0, StatusCode::SEE_OTHER);
    for _ in 0..4 {
        assert_eq!(
            site.login("alice", "guess").await.0,
            StatusCode::UNAUTHORIZED
        );
    }
    assert_eq!(site.login("alice", PASSWORD).await.0, StatusCode::SEE_OTHER);
    site.stop().await;
}

#[tokio::test]
async fn a_person_changes_their_password_and_their_other_sessions_end() {
    let site = Site::start("password").await;
    let (here, csrf) = site.sign_in("alice").await;
    let (elsewhere, _) = site.sign_in("alice").await;
    let change = |current: &'static str, new: &'static str, repeat: &'static str| {
        let (site, here, csrf) = (&site, here.clone(), csrf.clone());
        async move {
            site.request(
                Method::POST,
                "/password",
                Some(&here),
                Some(&[
                    ("csrf", csrf.as_str()),
                    ("current", current),
                    ("new", new),
                    ("repeat", repeat),
                ]),
                None,
            )
            .await
        }
    };
    let (status, _, page) = change("guess", "a much longer phrase", "a much longer phrase").await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(page.contains("current password is wrong"), "{page}");
    let (status, _, page) = change(PASSWORD, "too short", "too short").await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(page.contains("at least 12"), "{page}");
    let (status, _, page) = change(PASSWORD, "a much longer phrase", "a much longer phrase").await;
    assert_eq!(status, StatusCode::OK, "{page}");
    // This session goes on; the other one is over.
    let (status, _, _) = site
        .request(Method::GET, "/patients", Some(&here), None, None)
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _, _) = site
        .request(Method::GET, "/patients", Some(&elsewhere), None, None)
        .await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    // The old password no longer signs in; the new one does.
    assert_eq!(
        site.login("alice", PASSWORD).await.0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        site.login("alice", "a much longer phrase").await.0,
        StatusCode::SEE_OTHER
    );
    let changes: Vec<bool> = site
        .actions("password_change")
        .await
        .into_iter()
        .map(|(_, ok, _)| ok)
        .collect();
    assert_eq!(changes, vec![false, false, true], "every try is audited");
    site.stop().await;
}

#[tokio::test]
async fn the_session_cookie_is_httponly_and_strict_and_a_signed_out_session_is_dead() {
    let site = Site::start("session").await;
    let (status, headers, _) = site.login("alice", PASSWORD).await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    let cookie = headers["set-cookie"].to_str().unwrap();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    let (token, csrf) = site.sign_in("alice").await;
    let stored: i64 = site
        .portal
        .db()
        .query_one(
            "SELECT count(*) FROM sessions WHERE token_hash = $1",
            &[&token],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(stored, 0, "the token itself is never stored");
    let (status, _, _) = site
        .request(
            Method::POST,
            "/logout",
            Some(&token),
            Some(&[("csrf", &csrf)]),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    let (status, headers, _) = site
        .request(Method::GET, "/patients", Some(&token), None, None)
        .await;
    assert_eq!(
        (status, &headers["location"]),
        (StatusCode::SEE_OTHER, &"/login".parse().unwrap())
    );
    site.stop().await;
}

#[tokio::test]
async fn a_form_without_the_sessions_csrf_token_or_from_another_site_is_refused_and_nothing_is_sent(
) {
    let site = Site::start("csrf").await;
    let (token, csrf) = site.sign_in("alice").await;
    fn ack(csrf: &str) -> [(&str, &str); 4] {
        [
            ("csrf", csrf),
            ("command", "acknowledge_alarm"),
            ("alarm", "DOOR_OPEN"),
            ("comment", "closed it"),
        ]
    }
    let (status, _, _) = site
        .request(
            Method::POST,
            "/devices/mb-north/command",
            Some(&token),
            Some(&ack("")),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (_, carols_csrf) = site.sign_in("carol").await;
    let (status, _, _) = site
        .request(
            Method::POST,
            "/devices/mb-north/command",
            Some(&token),
            Some(&ack(&carols_csrf)),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "another session's token");
    let (status, _, _) = site
        .request(
            Method::POST,
            "/devices/mb-north/command",
            Some(&token),
            Some(&ack(&csrf)),
            Some("http://evil.example"),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "posted from another site");
    assert!(
        site.actions("acknowledge_alarm").await.is_empty(),
        "nothing sent"
    );
    site.stop().await;
}

#[tokio::test]
async fn a_person_sees_and_acts_on_only_their_organisations_appliances() {
    let site = Site::start("scope").await;
    let (token, csrf) = site.sign_in("carol").await;
    let (status, _, page) = site
        .request(Method::GET, "/patients", Some(&token), None, None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        !page.contains("mb-north") && !page.contains("p-0107"),
        "{page}"
    );
    for path in [
        "/patients/mb-north/p-0107",
        "/devices/mb-north/schedule",
        "/patients/mb-south/p-0107",
    ] {
        let (status, _, page) = site
            .request(Method::GET, path, Some(&token), None, None)
            .await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}");
        assert!(!page.contains("Methotrexate"));
    }
    let (status, _, _) = site
        .request(
            Method::POST,
            "/devices/mb-north/command",
            Some(&token),
            Some(&[
                ("csrf", &csrf),
                ("command", "refill"),
                ("slot", "1"),
                ("units", "9"),
            ]),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(site.actions("refill").await.is_empty(), "nothing sent");
    site.stop().await;
}

#[tokio::test]
async fn a_role_is_refused_what_the_appliance_would_refuse_it_and_the_refusal_is_audited() {
    let site = Site::start("roles").await;
    let (token, csrf) = site.sign_in("pete").await;
    let (status, _, page) = site
        .request(
            Method::POST,
            "/devices/mb-north/command",
            Some(&token),
            Some(&[
                ("csrf", &csrf),
                ("command", "skip_dose"),
                ("patient", "p-0107"),
                ("medication", "Methotrexate"),
                ("occurrence", "2026-03-09T14:00:00Z"),
            ]),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(
        page.contains("a pharmacist may not send skip_dose"),
        "{page}"
    );
    assert_eq!(
        site.actions("skip_dose").await,
        vec![(
            "pete".into(),
            false,
            "a pharmacist may not send skip_dose".into()
        )]
    );
    // A caregiver's pages are not a pharmacist's.
    let (alice, _) = site.sign_in("alice").await;
    let (status, _, _) = site
        .request(Method::GET, "/fridges", Some(&alice), None, None)
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    // A malformed form names its field and sends nothing.
    let (status, _, page) = site
        .request(
            Method::POST,
            "/devices/mb-north/command",
            Some(&token),
            Some(&[
                ("csrf", &csrf),
                ("command", "refill"),
                ("slot", "x"),
                ("units", "3"),
            ]),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(page.contains("slot"), "{page}");
    site.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_form_sent_twice_is_done_once_and_an_edited_one_is_a_new_command() {
    let broker = medbox_fleet::broker::PrivateBroker::start().expect("mosquitto");
    let dir = tempfile::tempdir().unwrap();
    let (live, stop_live) = support::run_live(support::appliance_options(
        &broker.url(),
        "mb-north",
        7,
        dir.path(),
    ));
    support::wait_online(&broker.url(), "mb-north").await;
    let site = Site::start_with("twice", &broker.url()).await;
    let (token, csrf) = site.sign_in("pete").await;
    let (_, _, page) = site
        .request(
            Method::GET,
            "/patients/mb-north/p-0107",
            Some(&token),
            None,
            None,
        )
        .await;
    let form = page
        .split("name=\"form\" value=\"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .expect("a command form carries its token")
        .to_string();
    let refill = |units: &'static str| {
        [
            ("csrf", csrf.clone()),
            ("form", form.clone()),
            ("command", "refill".to_string()),
            ("slot", "1".to_string()),
            ("units", units.to_string()),
        ]
    };
    let mut pages = Vec::new();
    // A double click, then the same form with another number.
    for units in ["5", "5", "6"] {
        let fields = refill(units);
        let fields: Vec<(&str, &str)> = fields.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let (status, _, page) = site
            .request(
                Method::POST,
                "/devices/mb-north/command",
                Some(&token),
                Some(&fields),
                None,
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{page}");
        pages.push(page);
    }
    assert!(pages[0].contains("Done:"), "{}", pages[0]);
    assert!(pages[1].contains("Already done"), "{}", pages[1]);
    assert!(pages[2].contains("Done:"), "{}", pages[2]);
    let ids: Vec<String> = site
        .portal
        .db()
        .query(
            "SELECT command_id FROM portal_actions WHERE action = 'refill' AND ok ORDER BY id",
            &[],
        )
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(ids.len(), 3, "every send is audited");
    assert_eq!(ids[0], ids[1], "the resend was the same command");
    assert_ne!(ids[0], ids[2], "the edited form was a new command");
    stop_live.send(()).unwrap();
    tokio::task::spawn_blocking(move || live.join().unwrap())
        .await
        .unwrap();
    // The appliance refilled twice (5, then 6), not three times.
    let conn = medbox::store::schema::open_read_only(&dir.path().join("mb-north.db")).unwrap();
    let added: Vec<i64> = conn
        .prepare(
            "SELECT json_extract(body, '$.added') FROM audit \
             WHERE kind = 'inventory.refill' AND actor = 'pete' ORDER BY seq",
        )
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(added, vec![5, 6]);
    site.stop().await;
}

#[tokio::test]
async fn what_an_appliance_reports_is_shown_escaped() {
    let site = Site::start("escape").await;
    let (token, _) = site.sign_in("carol").await;
    let (_, _, page) = site
        .request(Method::GET, "/patients", Some(&token), None, None)
        .await;
    assert!(!page.contains("<script>alert"), "{page}");
    assert!(page.contains("&lt;script&gt;"), "{page}");
    site.stop().await;
}

#[tokio::test]
async fn the_audit_export_holds_only_the_organisations_rows_and_is_itself_audited() {
    let site = Site::start("csv").await;
    let (token, _) = site.sign_in("pete").await;
    let (status, headers, csv) = site
        .request(
            Method::GET,
            "/audit.csv?kind=dose.",
            Some(&token),
            None,
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/csv"));
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines.len(), 2, "{csv}");
    assert!(lines[0].starts_with("device,seq,utc,kind"), "{csv}");
    assert!(
        lines[1].starts_with("mb-north,1,2026-03-02T09:05:00Z,dose.taken"),
        "{csv}"
    );
    let (_, _, none) = site
        .request(
            Method::GET,
            "/audit.csv?device=mb-south",
            Some(&token),
            None,
            None,
        )
        .await;
    assert_eq!(
        none.lines().count(),
        0,
        "another organisation's device: {none}"
    );
    let exports = site.actions("export.csv").await;
    assert_eq!(exports.len(), 2);
    assert_eq!(exports[0], ("pete".into(), true, "1 rows".into()));
    site.stop().await;
}

#[tokio::test]
async fn an_administrator_manages_the_people_of_their_own_organisation_only() {
    let site = Site::start("people").await;
    let db = site.portal.db();
    store::upsert_person(db, "nina", "north", "nurse", "Nina Admin", PASSWORD)
        .await
        .unwrap();
    assert!(store::set_admin(db, "nina", true).await.unwrap());
    // Not an administrator: neither the page nor its forms.
    let (alice, alice_csrf) = site.sign_in("alice").await;
    let (status, _, _) = site
        .request(Method::GET, "/people", Some(&alice), None, None)
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let add = |who: &'static str, password: &'static str| {
        [
            ("username", who),
            ("display_name", "Dana Nurse"),
            ("role", "nurse"),
            ("password", password),
        ]
    };
    let with_csrf = |csrf: &str, f: &[(&'static str, &'static str)]| -> Vec<(String, String)> {
        let mut v = vec![("csrf".to_string(), csrf.to_string())];
        v.extend(f.iter().map(|(k, x)| (k.to_string(), x.to_string())));
        v
    };
    let post = |path: String, token: String, form: Vec<(String, String)>| {
        let site = &site;
        async move {
            let f: Vec<(&str, &str)> = form.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            site.request(Method::POST, &path, Some(&token), Some(&f), None)
                .await
        }
    };
    let (status, _, _) = post(
        "/people".into(),
        alice.clone(),
        with_csrf(&alice_csrf, &add("dana", "a long first password")),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(
        site.login("dana", "a long first password").await.0,
        StatusCode::UNAUTHORIZED
    );
    // The administrator sees their organisation's people, and nobody else's.
    let (nina, csrf) = site.sign_in("nina").await;
    let (status, _, page) = site
        .request(Method::GET, "/people", Some(&nina), None, None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        page.contains("person-alice") && page.contains("person-pete"),
        "{page}"
    );
    assert!(
        !page.contains("carol"),
        "another organisation's person: {page}"
    );
    // Adds a person, who can then sign in; a bad or taken name adds nobody.
    let (status, _, page) = post(
        "/people".into(),
        nina.clone(),
        with_csrf(&csrf, &add("Dana K", "a long first password")),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(page.contains("login name"), "{page}");
    let (status, _, page) = post(
        "/people".into(),
        nina.clone(),
        with_csrf(&csrf, &add("carol", "a long first password")),
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT, "{page}");
    assert_eq!(
        site.login("carol", "a long first password").await.0,
        StatusCode::UNAUTHORIZED
    );
    let (status, _, page) = post(
        "/people".into(),
        nina.clone(),
        with_csrf(&csrf, &add("dana", "a long first password")),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert!(page.contains("dana added as nurse"), "{page}");
    let (dana, _) = {
        let (status, headers, _) = site.login("dana", "a long first password").await;
        assert_eq!(status, StatusCode::SEE_OTHER);
        let c = headers["set-cookie"].to_str().unwrap().to_string();
        (
            c.strip_prefix("medbox_session=")
                .and_then(|c| c.split(';').next())
                .unwrap()
                .to_string(),
            (),
        )
    };
    let (_, headers, _) = site
        .request(Method::GET, "/patients", Some(&dana), None, None)
        .await;
    assert_eq!(
        headers["location"], "/password",
        "a password someone else set is replaced before anything else"
    );
    // Another organisation's person cannot be disabled from here.
    let disable = |v: &'static str| with_csrf(&csrf, &[("disabled", v)]);
    let (status, _, _) = post(
        "/people/carol/disabled".into(),
        nina.clone(),
        disable("true"),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(site.login("carol", PASSWORD).await.0, StatusCode::SEE_OTHER);
    // Disabling signs the person out at once and keeps them out.
    let (status, _, _) = post(
        "/people/dana/disabled".into(),
        nina.clone(),
        disable("true"),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let (status, headers, _) = site
        .request(Method::GET, "/patients", Some(&dana), None, None)
        .await;
    assert_eq!(status, StatusCode::SEE_OTHER, "the session ended");
    assert_eq!(headers["location"], "/login", "the session ended");
    assert_eq!(
        site.login("dana", "a long first password").await.0,
        StatusCode::UNAUTHORIZED
    );
    // Re-enabled, with a new password set for them: the old one no longer works.
    post(
        "/people/dana/disabled".into(),
        nina.clone(),
        disable("false"),
    )
    .await;
    let (status, _, _) = post(
        "/people/dana/password".into(),
        nina.clone(),
        with_csrf(&csrf, &[("password", "short")]),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    let (status, _, _) = post(
        "/people/dana/password".into(),
        nina.clone(),
        with_csrf(&csrf, &[("password", "another long password")]),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        site.login("dana", "a long first password").await.0,
        StatusCode::UNAUTHORIZED
    );
    let (status, headers, _) = site.login("dana", "another long password").await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    let token = headers["set-cookie"].to_str().unwrap().to_string();
    let token = token
        .strip_prefix("medbox_session=")
        .and_then(|c| c.split(';').next())
        .unwrap();
    let (_, headers, _) = site
        .request(Method::GET, "/patients", Some(token), None, None)
        .await;
    assert_eq!(
        headers["location"], "/password",
        "a password an administrator reset is hers to replace too"
    );
    // Nobody locks themselves out.
    let (status, _, _) = post(
        "/people/nina/disabled".into(),
        nina.clone(),
        disable("true"),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(site.login("nina", PASSWORD).await.0, StatusCode::SEE_OTHER);
    // Every try is audited, with who did it.
    let adds: Vec<(String, bool)> = site
        .actions("person.add")
        .await
        .into_iter()
        .map(|(who, ok, _)| (who, ok))
        .collect();
    assert_eq!(
        adds,
        vec![
            ("alice".to_string(), false),
            ("nina".to_string(), false),
            ("nina".to_string(), false),
            ("nina".to_string(), true)
        ],
        "the non-administrator's try is audited as refused"
    );
    assert_eq!(site.actions("person.disable").await.len(), 3);
    site.stop().await;
}

#[tokio::test]
async fn a_fleet_administrator_creates_an_organisation_gives_it_an_administrator_and_an_appliance()
{
    let site = Site::start("orgs").await;
    let db = site.portal.db();
    store::upsert_person(db, "fran", "north", "pharmacist", "Fran Fleet", PASSWORD)
        .await
        .unwrap();
    assert!(store::set_fleet_admin(db, "fran", true).await.unwrap());
    // An appliance that reports but is in nobody's care: nobody sees its patient.
    db.execute("INSERT INTO devices (device_id) VALUES ('mb-east')", &[])
        .await
        .unwrap();
    db.execute(
        "INSERT INTO patients (device_id, patient) VALUES ('mb-east', 'p-east-1')",
        &[],
    )
    .await
    .unwrap();
    let new_org = |csrf: &str, id: &str, tz: &str| {
        vec![
            ("csrf".to_string(), csrf.to_string()),
            ("org_id".to_string(), id.to_string()),
            ("name".to_string(), "East Care".to_string()),
            ("timezone".to_string(), tz.to_string()),
        ]
    };
    let post = |path: &str, token: &str, form: Vec<(String, String)>| {
        let (site, path, token) = (&site, path.to_string(), token.to_string());
        async move {
            let f: Vec<(&str, &str)> = form.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            site.request(Method::POST, &path, Some(&token), Some(&f), None)
                .await
        }
    };
    // An organisation's own administrator is no fleet administrator.
    store::set_admin(db, "alice", true).await.unwrap();
    let (alice, alice_csrf) = site.sign_in("alice").await;
    let (status, _, _) = site
        .request(Method::GET, "/organisations", Some(&alice), None, None)
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _, _) = post(
        "/organisations",
        &alice,
        new_org(&alice_csrf, "east", "UTC"),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _, _) = post(
        "/organisations/south/devices",
        &alice,
        vec![
            ("csrf".into(), alice_csrf.clone()),
            ("device".into(), "mb-north".into()),
        ],
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(!store::org_exists(db, "east").await.unwrap());
    assert_eq!(
        store::device_org(db, "mb-north").await.unwrap().as_deref(),
        Some("north"),
        "a refused move moves nothing"
    );
    // The fleet administrator sees every organisation and the appliance nobody looks after.
    // Made on the command line with --must-change-password, she chooses her own first.
    assert!(store::set_first_password(db, "fran", true).await.unwrap());
    let (fran, csrf) = site.sign_in("fran").await;
    let (_, headers, _) = site
        .request(Method::GET, "/organisations", Some(&fran), None, None)
        .await;
    assert_eq!(headers["location"], "/password");
    let (status, _, _) = post(
        "/password",
        &fran,
        vec![
            ("csrf".into(), csrf.clone()),
            ("current".into(), PASSWORD.into()),
            ("new".into(), "fran's very own password".into()),
            ("repeat".into(), "fran's very own password".into()),
        ],
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _, page) = site
        .request(Method::GET, "/organisations", Some(&fran), None, None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        page.contains("org-north") && page.contains("org-south"),
        "{page}"
    );
    assert!(page.contains("mb-east"), "{page}");
    // Bad fields create nothing and say which.
    let (status, _, page) = post(
        "/organisations",
        &fran,
        new_org(&csrf, "east", "Mars/Olympus"),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(page.contains("is not a time zone"), "{page}");
    let (status, _, _) = post("/organisations", &fran, new_org(&csrf, "East Care", "UTC")).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    let (status, _, _) = post("/organisations", &fran, new_org(&csrf, "north", "UTC")).await;
    assert_eq!(
        status,
        StatusCode::CONFLICT,
        "an existing one is never renamed"
    );
    assert!(!store::org_exists(db, "east").await.unwrap());
    let (status, _, page) = post(
        "/organisations",
        &fran,
        new_org(&csrf, "east", "Europe/Berlin"),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert!(page.contains("org-east"), "{page}");
    // Its first administrator, who can sign in and manage its people.
    let admin = |org: &str, who: &str| {
        post(
            &format!("/organisations/{org}/admins"),
            &fran,
            vec![
                ("csrf".into(), csrf.clone()),
                ("username".into(), who.into()),
                ("display_name".into(), "Erin East".into()),
                ("role".into(), "nurse".into()),
                ("password".into(), PASSWORD.into()),
            ],
        )
    };
    assert_eq!(admin("nowhere", "erin").await.0, StatusCode::NOT_FOUND);
    assert_eq!(admin("east", "carol").await.0, StatusCode::CONFLICT);
    let (status, _, page) = admin("east", "erin").await;
    assert_eq!(status, StatusCode::OK, "{page}");
    let (erin, erin_csrf) = site.sign_in("erin").await;
    // On a password someone else chose, the password page is all there is until she picks
    // her own.
    let (status, headers, _) = site
        .request(Method::GET, "/people", Some(&erin), None, None)
        .await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert_eq!(headers["location"], "/password");
    let (_, _, page) = site
        .request(Method::GET, "/password", Some(&erin), None, None)
        .await;
    assert!(page.contains("set by someone else"), "{page}");
    let (status, _, page) = post(
        "/password",
        &erin,
        vec![
            ("csrf".into(), erin_csrf),
            ("current".into(), PASSWORD.into()),
            ("new".into(), "erin's very own password".into()),
            ("repeat".into(), "erin's very own password".into()),
        ],
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{page}");
    let (status, _, page) = site
        .request(Method::GET, "/people", Some(&erin), None, None)
        .await;
    assert_eq!(status, StatusCode::OK, "erin administers east's people");
    assert!(
        page.contains("East Care") && page.contains("person-erin"),
        "{page}"
    );
    assert!(!page.contains("alice"), "{page}");
    let (_, _, page) = site
        .request(Method::GET, "/patients", Some(&erin), None, None)
        .await;
    assert!(!page.contains("p-east-1"), "not in east's care yet: {page}");
    // The appliance goes into east's care: erin sees its patient, the fleet administrator,
    // being of north, still does not.
    let assign = |org: &str, device: &str| {
        post(
            &format!("/organisations/{org}/devices"),
            &fran,
            vec![
                ("csrf".into(), csrf.clone()),
                ("device".into(), device.into()),
            ],
        )
    };
    assert_eq!(
        assign("east", "mb/east#").await.0,
        StatusCode::UNPROCESSABLE_ENTITY
    );
    let (status, _, page) = assign("east", "mb-east").await;
    assert_eq!(status, StatusCode::OK);
    assert!(page.contains("mb-east is in the care of east"), "{page}");
    let (_, _, page) = site
        .request(Method::GET, "/patients", Some(&erin), None, None)
        .await;
    assert!(page.contains("p-east-1"), "{page}");
    let (_, _, page) = site
        .request(Method::GET, "/patients", Some(&fran), None, None)
        .await;
    assert!(!page.contains("p-east-1"), "{page}");
    let (status, _, _) = site
        .request(
            Method::GET,
            "/patients/mb-east/p-east-1",
            Some(&fran),
            None,
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "no right to east's patients");
    // A move between organisations says where it came from.
    let (_, _, page) = assign("south", "mb-east").await;
    assert!(page.contains("mb-east moved from east to south"), "{page}");
    // Every try is audited, under the organisation it concerned, with who made it.
    let audited: Vec<(String, Option<String>, String, bool)> = db
        .query(
            "SELECT username, org_id, action, ok FROM portal_actions \
             WHERE action IN ('org.create', 'org.add_admin', 'device.assign') ORDER BY id",
            &[],
        )
        .await
        .unwrap()
        .into_iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect();
    let row = |who: &str, org: &str, action: &str, ok: bool| {
        (
            who.to_string(),
            Some(org.to_string()),
            action.to_string(),
            ok,
        )
    };
    assert_eq!(
        audited,
        vec![
            row("alice", "east", "org.create", false),
            row("alice", "south", "device.assign", false),
            row("fran", "east", "org.create", false),
            row("fran", "East Care", "org.create", false),
            row("fran", "north", "org.create", false),
            row("fran", "east", "org.create", true),
            row("fran", "nowhere", "org.add_admin", false),
            row("fran", "east", "org.add_admin", false),
            row("fran", "east", "org.add_admin", true),
            row("fran", "east", "device.assign", false),
            row("fran", "east", "device.assign", true),
            row("fran", "south", "device.assign", true),
        ]
    );
    site.stop().await;
}
