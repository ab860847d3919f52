//! The collector and witness against the real things: PostgreSQL (a fresh schema per test) and
//! a Mosquitto of the test's own (configured as docs/mosquitto/fleet.conf says a fleet broker
//! must be), with whole simulated appliances publishing through it.

use medbox_fleet::archive::{self, Archive};
use medbox_fleet::collect::{collect, CollectConfig, CollectStats};
use std::path::Path;
use std::time::Duration;
use support::*;

mod support;

/// A Mosquitto of the test's own with the shipped fleet settings.
type Broker = medbox_fleet::broker::PrivateBroker;

fn broker() -> Broker {
    Broker::start()
        .expect("mosquitto is needed: apt-get install mosquitto (.ci/prerequisites does)")
}

/// A whole simulated appliance (shipped board and schedules, one day) publishing to `url`;
/// returns its database's counts of audit rows, readings and checkpoints.
fn appliance(url: &str, device: &str, seed: u64, dir: &Path) -> (i64, i64, i64) {
    appliance_for(url, device, seed, dir, 86_400)
}

/// As [`appliance`], for `secs` of simulated time (resuming where its database stopped).
fn appliance_for(url: &str, device: &str, seed: u64, dir: &Path, secs: u64) -> (i64, i64, i64) {
    let db = dir.join(format!("{device}.db"));
    run_fast(appliance_options(url, device, seed, dir), secs);
    let conn = medbox::store::schema::open_read_only(&db).expect("db");
    let count = |sql: &str| -> i64 { conn.query_row(sql, [], |r| r.get(0)).expect(sql) };
    (
        count("SELECT count(*) FROM audit"),
        count("SELECT count(*) FROM readings"),
        count("SELECT count(*) FROM checkpoints"),
    )
}

async fn count(a: &Archive, sql: &str, device: &str) -> i64 {
    a.client()
        .query_one(sql, &[&device])
        .await
        .expect(sql)
        .get(0)
}

fn config(broker: &Broker, schema: &str, group: &str, name: &str) -> CollectConfig {
    CollectConfig {
        mqtt: broker.url(),
        credentials: None,
        pg: pg(),
        schema: Some(schema.into()),
        group: group.into(),
        name: name.into(),
        subscribed: None,
        repair_every: None,
        progress: None,
    }
}

/// Starts a collector; returns its stop switch and its run.
fn start(
    cfg: CollectConfig,
) -> (
    tokio::sync::oneshot::Sender<()>,
    tokio::sync::mpsc::UnboundedReceiver<()>,
    tokio::task::JoinHandle<anyhow::Result<CollectStats>>,
) {
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let (tx, subscribed) = tokio::sync::mpsc::unbounded_channel();
    let cfg = CollectConfig {
        subscribed: Some(tx),
        ..cfg
    };
    let run = tokio::spawn(async move {
        collect(&cfg, async {
            let _ = stopped.await;
        })
        .await
    });
    (stop, subscribed, run)
}

/// Waits (bounded) until the archive holds `want` of a device's rows.
async fn settle(a: &Archive, sql: &str, device: &str, want: i64) -> i64 {
    let mut got = 0;
    for _ in 0..600 {
        got = count(a, sql, device).await;
        if got >= want {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_collectors_sharing_a_subscription_store_every_message_once_even_when_one_is_killed() {
    let broker = broker();
    let schema = fresh_schema("share");
    let group = format!("g{}", std::process::id());
    let (stop_a, mut sub_a, run_a) = start(config(&broker, &schema, &group, "a"));
    let (stop_b, mut sub_b, run_b) = start(config(&broker, &schema, &group, "b"));
    sub_a.recv().await.expect("a subscribed");
    sub_b.recv().await.expect("b subscribed");
    let dir = tempfile::tempdir().expect("tempdir");
    let url = broker.url();
    let d1 = dir.path().to_path_buf();
    let a = Archive::connect(&pg(), Some(&schema))
        .await
        .expect("archive");
    // The first appliance reports while both collect; collector a is killed mid-way (no
    // goodbye, nothing acknowledged after), while dev-one's messages are still arriving.
    let one = tokio::task::spawn_blocking(move || appliance(&url, "dev-one", 1, &d1));
    let at_kill = settle(
        &a,
        "SELECT count(*) FROM readings WHERE device_id = $1",
        "dev-one",
        200,
    )
    .await;
    run_a.abort();
    let _ = stop_a;
    let one = one.await.expect("appliance one");
    assert!(
        at_kill < one.1,
        "killed mid-way: {at_kill} of {} readings stored",
        one.1
    );
    // The second appliance reports to b alone; then a comes back under its name and the broker
    // gives it back what it had not acknowledged.
    let url = broker.url();
    let d2 = dir.path().to_path_buf();
    let two = tokio::task::spawn_blocking(move || appliance(&url, "dev-two", 2, &d2))
        .await
        .expect("appliance two");
    let (stop_a, mut sub_a, run_a) = start(config(&broker, &schema, &group, "a"));
    sub_a.recv().await.expect("a back");
    for (device, (audit, readings, checkpoints)) in [("dev-one", one), ("dev-two", two)] {
        let rows = settle(
            &a,
            "SELECT count(*) FROM audit_rows WHERE device_id = $1",
            device,
            audit,
        )
        .await;
        let got_readings = settle(
            &a,
            "SELECT count(*) FROM readings WHERE device_id = $1",
            device,
            readings,
        )
        .await;
        let got_checkpoints = settle(
            &a,
            "SELECT count(*) FROM checkpoints WHERE device_id = $1",
            device,
            checkpoints,
        )
        .await;
        assert_eq!(
            (rows, got_readings, got_checkpoints),
            (audit, readings, checkpoints),
            "{device}: every audit row, reading and checkpoint, once"
        );
        // Rows 1..=n, no gap and no double (the keys forbid doubles; the range says no gap).
        let (min, max): (i64, i64) = {
            let r = a
                .client()
                .query_one(
                    "SELECT min(seq), max(seq) FROM audit_rows WHERE device_id = $1",
                    &[&device],
                )
                .await
                .expect("range");
            (r.get(0), r.get(1))
        };
        assert_eq!((min, max), (1, audit), "{device}");
        assert!(
            count(
                &a,
                "SELECT count(*) FROM doses WHERE device_id = $1",
                device
            )
            .await
                > 0,
            "{device}: doses derived"
        );
        assert!(
            count(
                &a,
                "SELECT count(*) FROM patients WHERE device_id = $1",
                device
            )
            .await
                > 0,
            "{device}: patients by pseudonym"
        );
        assert_eq!(
            count(
                &a,
                "SELECT count(*) FROM witness_flags WHERE device_id = $1",
                device
            )
            .await,
            0,
            "{device}: an honest device raises no flag"
        );
        assert_eq!(
            count(
                &a,
                "SELECT count(*) FROM devices WHERE device_id = $1 AND public_key IS NOT NULL",
                device
            )
            .await,
            1,
            "{device}: its key pinned"
        );
    }
    // Readings went into monthly partitions.
    let partitions: i64 = a
        .client()
        .query_one(
            "SELECT count(*) FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid \
             JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = $1",
            &[&schema],
        )
        .await
        .expect("partitions")
        .get(0);
    assert!(partitions >= 1);
    let _ = stop_a.send(());
    let _ = stop_b.send(());
    let stats_a = run_a.await.expect("a").expect("a ran");
    let stats_b = run_b.await.expect("b").expect("b ran");
    assert!(stats_b.stored > 0, "b took a share: {stats_b:?}");
    assert!(
        stats_a.stored + stats_a.duplicates > 0,
        "a took a share: {stats_a:?}"
    );
    drop_schema(&a, &schema).await;
}

/// A collector whose broker connection is taken away mid-burst (another client takes over its
/// session, reads some of its messages without acknowledging them, and drops dead) reconnects
/// and stores everything once: nothing read on the lost connection is acknowledged on the next.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_whose_connection_is_taken_mid_burst_loses_nothing() {
    let broker = broker();
    let schema = fresh_schema("takeover");
    let group = format!("t{}", std::process::id());
    let (stop, mut sub, run) = start(config(&broker, &schema, &group, "t"));
    sub.recv().await.expect("subscribed");
    let a = Archive::connect(&pg(), Some(&schema))
        .await
        .expect("archive");
    let dir = tempfile::tempdir().expect("tempdir");
    let (url, d) = (broker.url(), dir.path().to_path_buf());
    let device = tokio::task::spawn_blocking(move || appliance(&url, "dev-t", 5, &d));
    settle(
        &a,
        "SELECT count(*) FROM readings WHERE device_id = $1",
        "dev-t",
        200,
    )
    .await;
    // The intruder: same client id, session kept, reads without acknowledging, dies.
    let mut opts = rumqttc::MqttOptions::new("medbox-fleet-t", "127.0.0.1", broker_port(&broker));
    opts.set_clean_session(false);
    opts.set_manual_acks(true);
    let (_client, mut ev) = rumqttc::AsyncClient::new(opts, 10);
    let mut read = 0;
    while read < 20 {
        match tokio::time::timeout(Duration::from_secs(5), ev.poll()).await {
            Ok(Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(_)))) => read += 1,
            Ok(Ok(_)) => {}
            _ => break,
        }
    }
    drop(ev);
    assert!(
        read > 0,
        "the intruder took over while messages were on their way"
    );
    let (audit, readings, checkpoints) = device.await.expect("appliance");
    for (sql, want) in [
        (
            "SELECT count(*) FROM audit_rows WHERE device_id = $1",
            audit,
        ),
        (
            "SELECT count(*) FROM readings WHERE device_id = $1",
            readings,
        ),
        (
            "SELECT count(*) FROM checkpoints WHERE device_id = $1",
            checkpoints,
        ),
    ] {
        assert_eq!(settle(&a, sql, "dev-t", want).await, want, "{sql}");
    }
    let _ = stop.send(());
    let stats = run.await.expect("collector").expect("ran");
    assert!(stats.stored > 0, "{stats:?}");
    drop_schema(&a, &schema).await;
}

fn broker_port(b: &Broker) -> u16 {
    b.url()
        .rsplit_once(':')
        .and_then(|(_, p)| p.parse().ok())
        .expect("port")
}

async fn drop_schema(a: &Archive, schema: &str) {
    let _ = a
        .client()
        .batch_execute(&format!("DROP SCHEMA {schema} CASCADE"))
        .await;
}

/// A device restored from an old copy goes on from an earlier row: its rows come again under
/// seqs the witness holds, with other hashes, and are flagged with the evidence; the export of
/// the restored copy then fails `verify` against the witness's checkpoints.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_rolled_back_to_an_old_copy_is_flagged_and_its_export_fails_the_witness() {
    let broker = broker();
    let schema = fresh_schema("rollback");
    let group = format!("r{}", std::process::id());
    let (stop, mut sub, run) = start(config(&broker, &schema, &group, "w"));
    sub.recv().await.expect("subscribed");
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("dev-rb.db");
    let backup = dir.path().join("backup.db");
    // Two hours on the device, then a backup copy of its database is taken.
    let url = broker.url();
    let d = dir.path().to_path_buf();
    tokio::task::spawn_blocking(move || appliance_for(&url, "dev-rb", 3, &d, 7_200))
        .await
        .expect("first hours");
    std::fs::copy(&db, &backup).expect("backup");
    // The rest of the day, all witnessed.
    let url = broker.url();
    let d = dir.path().to_path_buf();
    let (audit, _, _) = tokio::task::spawn_blocking(move || appliance(&url, "dev-rb", 3, &d))
        .await
        .expect("the day");
    let a = Archive::connect(&pg(), Some(&schema))
        .await
        .expect("archive");
    settle(
        &a,
        "SELECT count(*) FROM audit_rows WHERE device_id = $1",
        "dev-rb",
        audit,
    )
    .await;
    // An export of the genuine chain verifies against the witness.
    let rows_of = |db: &Path| {
        medbox::store::audit::rows(
            &medbox::store::schema::open_read_only(db).expect("db"),
            &Default::default(),
        )
        .expect("rows")
    };
    let unkeyed = medbox::store::audit::ChainKey::unkeyed();
    let v = medbox_fleet::verify::verify(&a, "dev-rb", rows_of(&db), &unkeyed)
        .await
        .expect("verify");
    assert!(v.intact(), "{v:?}");
    assert!(v.checkpoints > 0);
    // Rolled back: the backup is restored (same device key) and the appliance runs on from it.
    for ext in ["-wal", "-shm"] {
        let _ = std::fs::remove_file(dir.path().join(format!("dev-rb.db{ext}")));
    }
    std::fs::copy(&backup, &db).expect("restore");
    let url = broker.url();
    let d = dir.path().to_path_buf();
    tokio::task::spawn_blocking(move || appliance(&url, "dev-rb", 4, &d))
        .await
        .expect("after the restore");
    let mut flagged = 0;
    for _ in 0..300 {
        flagged = count(
            &a,
            "SELECT count(*) FROM witness_flags WHERE device_id = $1 AND finding = 'ROW_REWRITTEN'",
            "dev-rb",
        )
        .await;
        if flagged > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(flagged > 0, "the rewritten history is flagged");
    let flags = archive::flags(&a, "dev-rb").await.expect("flags");
    assert!(
        flags.iter().any(|(_, _, d)| d.contains("rewritten")),
        "{flags:?}"
    );
    // The restored copy's export no longer passes the witness.
    let v = medbox_fleet::verify::verify(&a, "dev-rb", rows_of(&db), &unkeyed)
        .await
        .expect("verify");
    assert!(!v.intact(), "{v:?}");
    let _ = stop.send(());
    let _ = run.await;
    drop_schema(&a, &schema).await;
}

/// A message PostgreSQL refuses for what it holds (here a NUL inside a text, which `text`
/// columns cannot store) is kept in `quarantine` with the reason and acknowledged; the messages
/// around it are stored, and the collector does not retry it for ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_the_database_refuses_for_its_content_is_quarantined_and_the_rest_stored() {
    let broker = broker();
    let schema = fresh_schema("poison");
    let group = format!("q{}", std::process::id());
    let (stop, mut sub, run) = start(config(&broker, &schema, &group, "q"));
    sub.recv().await.expect("subscribed");
    let a = Archive::connect(&pg(), Some(&schema))
        .await
        .expect("archive");
    let event = |seq: i64, subject: &str| {
        let row = medbox::wire::EventRow {
            seq,
            utc: "2026-03-02T08:00:00.000Z",
            mono_ms: seq,
            boot_id: "b1",
            kind: "system.barrier",
            subject,
            actor: "system:test",
            reason: "",
            clock_trusted: true,
            body: "{}",
            prev_hash: "",
            hash: "",
            keyed: false,
        };
        medbox::wire::event_message("dev-q", &row)
            .expect("message")
            .to_string()
    };
    let mut opts = rumqttc::MqttOptions::new("poisoner", "127.0.0.1", broker_port(&broker));
    opts.set_clean_session(true);
    let (client, mut ev) = rumqttc::AsyncClient::new(opts, 10);
    for (seq, subject) in [(1, "fine"), (2, "nul \u{0} inside"), (3, "fine again")] {
        client
            .publish(
                "medbox/dev-q/events/system",
                rumqttc::QoS::AtLeastOnce,
                false,
                event(seq, subject),
            )
            .await
            .expect("publish");
    }
    let mut acked = 0;
    while acked < 3 {
        if let Ok(rumqttc::Event::Incoming(rumqttc::Packet::PubAck(_))) = ev.poll().await {
            acked += 1;
        }
    }
    assert_eq!(
        settle(
            &a,
            "SELECT count(*) FROM audit_rows WHERE device_id = $1",
            "dev-q",
            2
        )
        .await,
        2
    );
    assert_eq!(
        settle(
            &a,
            "SELECT count(*) FROM quarantine WHERE topic = 'medbox/' || $1 || '/events/system'",
            "dev-q",
            1
        )
        .await,
        1
    );
    let kept: (Vec<u8>, String) = a
        .client()
        .query_one("SELECT payload, error FROM quarantine", &[])
        .await
        .map(|r| (r.get(0), r.get(1)))
        .expect("quarantined row");
    assert_eq!(
        kept.0,
        event(2, "nul \u{0} inside").into_bytes(),
        "kept whole"
    );
    assert!(kept.1.contains("postgres"), "{}", kept.1);
    let _ = stop.send(());
    let stats = run.await.expect("collector").expect("ran");
    assert_eq!(stats.quarantined, 1, "{stats:?}");
    assert_eq!(
        stats.retries, 0,
        "not retried as if it could pass: {stats:?}"
    );
    drop_schema(&a, &schema).await;
}

/// A collector (configured by `tune`) and one simulated appliance whose first `secs` are
/// already archived, for the tests that take rows away and get them back.
struct Archived {
    broker: Broker,
    schema: String,
    dir: tempfile::TempDir,
    device: &'static str,
    seed: u64,
    a: Archive,
    /// Audit rows the appliance recorded.
    audit: i64,
    stop: tokio::sync::oneshot::Sender<()>,
    run: tokio::task::JoinHandle<anyhow::Result<CollectStats>>,
}

impl Archived {
    async fn start(
        name: &str,
        device: &'static str,
        seed: u64,
        secs: u64,
        tune: impl FnOnce(CollectConfig) -> CollectConfig,
    ) -> Self {
        let broker = broker();
        let schema = fresh_schema(name);
        let group = format!("{name}{}", std::process::id());
        let (stop, mut subscribed, run) = start(tune(config(&broker, &schema, &group, name)));
        subscribed.recv().await.expect("subscribed");
        let dir = tempfile::tempdir().expect("tempdir");
        let (url, d) = (broker.url(), dir.path().to_path_buf());
        let (audit, _, _) =
            tokio::task::spawn_blocking(move || appliance_for(&url, device, seed, &d, secs))
                .await
                .expect("appliance");
        let a = Archive::connect(&pg(), Some(&schema))
            .await
            .expect("archive");
        let rows = "SELECT count(*) FROM audit_rows WHERE device_id = $1";
        assert_eq!(settle(&a, rows, device, audit).await, audit);
        Self {
            broker,
            schema,
            dir,
            device,
            seed,
            a,
            audit,
            stop,
            run,
        }
    }

    /// Removes rows from the archive as a broker that dropped them would have left it.
    async fn lose(&self, seqs: impl IntoIterator<Item = i64>) {
        for seq in seqs {
            for sql in [
                "DELETE FROM audit_rows WHERE device_id = $2 AND seq = $1",
                "DELETE FROM messages WHERE message_id = $2 || ':' || $1::bigint",
            ] {
                self.a
                    .client()
                    .execute(sql, &[&seq, &self.device])
                    .await
                    .expect(sql);
            }
        }
    }

    /// Switches the appliance on again, connected; returns its stop switch.
    async fn live(&self) -> Live {
        let opts = appliance_options(&self.broker.url(), self.device, self.seed, self.dir.path());
        let (thread, stop) = run_live(opts);
        wait_online(&self.broker.url(), self.device).await;
        Live { thread, stop }
    }

    /// Waits (bounded) until the archive lacks nothing; what it still lacks.
    async fn gaps_left(&self) -> Vec<medbox_fleet::repair::Gap> {
        let mut left = Vec::new();
        for _ in 0..300 {
            left = medbox_fleet::repair::gaps(&self.a, Some(self.device))
                .await
                .expect("gaps");
            if left.is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        left
    }

    async fn flags(&self) -> i64 {
        let sql = "SELECT count(*) FROM witness_flags WHERE device_id = $1";
        count(&self.a, sql, self.device).await
    }

    async fn finish(self, live: Live) {
        let _ = live.stop.send(());
        tokio::task::spawn_blocking(move || live.thread.join().expect("live"))
            .await
            .expect("join");
        let _ = self.stop.send(());
        self.run.await.expect("collector").expect("ran");
        drop_schema(&self.a, &self.schema).await;
    }
}

/// A running appliance.
struct Live {
    thread: std::thread::JoinHandle<()>,
    stop: tokio::sync::oneshot::Sender<()>,
}

/// A broker that drops what it acknowledged (a full queue) leaves the archive with holes the
/// appliance no longer has in its outbox; `repair` names them and asks the appliance, which
/// publishes those rows again from its audit log, and the archive stores and witnesses them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_a_broker_dropped_are_asked_for_again_archived_and_witnessed() {
    use medbox_fleet::repair;
    let x = Archived::start("repair", "dev-gap", 3, 6 * 3600, |c| c).await;
    let audit = x.audit;
    // What the broker "dropped": rows 5-9 and the last two, as if they had never come.
    x.lose((5..=9).chain([audit - 1, audit])).await;
    let gaps = repair::gaps(&x.a, Some("dev-gap")).await.expect("gaps");
    let named: Vec<(i64, i64)> = gaps.iter().map(|g| (g.from, g.to)).collect();
    assert_eq!(
        named,
        vec![(5, 9), (audit - 1, audit)],
        "a hole, and a tail up to the last checkpoint held"
    );
    // The appliance is on again; the repair asks it.
    let live = x.live().await;
    let asked = repair::ask(
        &x.broker.url(),
        None,
        "test",
        &gaps,
        Duration::from_secs(20),
    )
    .await;
    assert_eq!(asked.len(), 2);
    for a in &asked {
        let answer = a.answer.as_ref().expect("answered");
        assert!(answer.ok, "{}", answer.detail);
    }
    assert_eq!(x.gaps_left().await, vec![], "every lost row came back");
    assert_eq!(
        x.flags().await,
        0,
        "the rows that came back link up with their neighbours"
    );
    x.finish(live).await;
}

/// A row edited in the appliance's own database (its hash left as it was, so the chain still
/// links and the checkpoints still name it) and then sent again is caught by the witness, which
/// recomputes each plain-SHA-256 row's hash from its content.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_edited_on_the_device_and_sent_again_is_flagged_as_altered() {
    use medbox_fleet::repair::{self, Gap};
    let x = Archived::start("altered", "dev-alt", 5, 2 * 3600, |c| c).await;
    assert_eq!(x.flags().await, 0, "as recorded");
    // Row 3's words are changed on the device; its hashes are not.
    rusqlite::Connection::open(x.dir.path().join("dev-alt.db"))
        .expect("db")
        .execute_batch(
            "DROP TRIGGER audit_no_update; \
             UPDATE audit SET body = '{\"edited\":true}' WHERE seq = 3;",
        )
        .expect("tamper");
    let live = x.live().await;
    let gap = Gap {
        device: "dev-alt".into(),
        from: 3,
        to: 3,
    };
    let asked = repair::ask(
        &x.broker.url(),
        None,
        "test",
        &[gap],
        Duration::from_secs(20),
    )
    .await;
    assert!(asked[0].answer.as_ref().is_ok_and(|a| a.ok), "{asked:?}");
    let altered = "SELECT count(*) FROM witness_flags WHERE device_id = $1 \
                   AND finding = 'CONTENT_ALTERED' AND seq = 3";
    assert_eq!(settle(&x.a, altered, "dev-alt", 1).await, 1);
    let all = archive::flags(&x.a, "dev-alt").await.expect("flags");
    assert_eq!(all.len(), 1, "nothing else is wrong: {all:?}");
    assert!(
        all[0].2.contains("altered after it was recorded"),
        "{all:?}"
    );
    x.finish(live).await;
}

/// With `repair_every` the collector does the repair itself: a gap that outlives a round, on a
/// device that is online, is asked for and filled without anyone running `repair`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_that_repairs_on_its_own_gets_back_what_the_broker_dropped() {
    let every = Some(Duration::from_secs(1));
    let x = Archived::start("autorepair", "dev-ar", 7, 3 * 3600, |c| CollectConfig {
        repair_every: every,
        progress: None,
        ..c
    })
    .await;
    x.lose([4, 5, x.audit - 1, x.audit]).await;
    let gaps = medbox_fleet::repair::gaps(&x.a, Some("dev-ar")).await;
    assert_eq!(gaps.expect("gaps").len(), 2);
    // The appliance comes back on; the collector asks it.
    let live = x.live().await;
    assert_eq!(
        x.gaps_left().await,
        vec![],
        "every lost row came back on its own"
    );
    let asked = count(
        &x.a,
        "SELECT count(*) FROM audit_rows WHERE device_id = $1 AND kind = 'audit.resend'",
        "dev-ar",
    )
    .await;
    assert!(asked >= 1, "the appliance recorded being asked");
    assert_eq!(x.flags().await, 0);
    x.finish(live).await;
}

/// Publishes `n` QoS 1 messages no collector can read (each is refused, acknowledged and
/// counted), as fast as the broker takes them.
async fn publish_unreadable(broker: &Broker, n: usize) {
    let mut opts = rumqttc::MqttOptions::new(
        format!("flood{}", std::process::id()),
        "127.0.0.1",
        broker_port(broker),
    );
    opts.set_inflight(100);
    let (client, mut ev) = rumqttc::AsyncClient::new(opts, 100);
    let publisher = tokio::spawn(async move {
        for i in 0..n {
            client
                .publish(
                    "medbox/dev-flood/telemetry/reading",
                    rumqttc::QoS::AtLeastOnce,
                    false,
                    format!("not json {i}"),
                )
                .await
                .expect("publish");
        }
        client
    });
    let mut acked = 0;
    while acked < n {
        match tokio::time::timeout(Duration::from_secs(30), ev.poll()).await {
            Ok(Ok(rumqttc::Event::Incoming(rumqttc::Packet::PubAck(_)))) => acked += 1,
            Ok(Ok(_)) => {}
            other => panic!("publisher: {other:?}"),
        }
    }
    drop(publisher.await);
}

/// Waits (bounded) until `done` stops moving for half a second; returns where it stopped.
async fn quiet(done: &std::sync::atomic::AtomicU64) -> u64 {
    use std::sync::atomic::Ordering::Relaxed;
    let mut last = done.load(Relaxed);
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = done.load(Relaxed);
        if now == last {
            break;
        }
        last = now;
    }
    last
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_acknowledges_each_batch_as_soon_as_it_is_stored() {
    use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
    use std::sync::Arc;
    const N: u64 = 6_000;
    let broker = broker();
    let schema = fresh_schema("acks");
    let group = format!("k{}", std::process::id());
    let first = Arc::new(AtomicU64::new(0));
    let (stop, mut sub, run) = start(CollectConfig {
        progress: Some(first.clone()),
        ..config(&broker, &schema, &group, "k")
    });
    sub.recv().await.expect("subscribed");
    publish_unreadable(&broker, N as usize).await;
    let mut seen = 0;
    for _ in 0..600 {
        seen = first.load(Relaxed);
        if seen >= N * 2 / 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(seen > 0, "the collector took nothing");
    // Killed with no goodbye: whatever it had finished with but the broker had not heard
    // about comes again to the same session.
    run.abort();
    let _ = stop;
    let finished = first.load(Relaxed);
    let again = Arc::new(AtomicU64::new(0));
    let (stop, mut sub, run) = start(CollectConfig {
        progress: Some(again.clone()),
        ..config(&broker, &schema, &group, "k")
    });
    sub.recv().await.expect("back");
    let mut after = 0;
    for _ in 0..600 {
        after = again.load(Relaxed);
        if finished + after >= N {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let after = after.max(quiet(&again).await);
    assert!(finished + after >= N, "lost: {finished} + {after} of {N}");
    // What came twice is at most what was on its way when it was killed: a batch being
    // stored and the broker's window, not a backlog of acknowledgements never sent.
    let twice = finished + after - N;
    let bound = (medbox_fleet::collect::BATCH + 100) as u64;
    assert!(
        twice <= bound,
        "{twice} messages came twice (at most {bound} expected)"
    );
    let _ = stop.send(());
    run.await.expect("join").expect("collector");
    let a = Archive::connect(&pg(), Some(&schema))
        .await
        .expect("archive");
    drop_schema(&a, &schema).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retired_collector_hands_over_its_share_and_leaves_no_queue_behind() {
    use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
    use std::sync::Arc;
    let broker = broker();
    let schema = fresh_schema("retire");
    let group = format!("r{}", std::process::id());
    let a_done = Arc::new(AtomicU64::new(0));
    let (stop_a, mut sub_a, run_a) = start(CollectConfig {
        progress: Some(a_done.clone()),
        ..config(&broker, &schema, &group, "a")
    });
    let (stop_b, mut sub_b, run_b) = start(config(&broker, &schema, &group, "b"));
    sub_a.recv().await.expect("a subscribed");
    sub_b.recv().await.expect("b subscribed");
    // b goes away without a word: its session stays, and its share waits for it.
    run_b.abort();
    let _ = stop_b;
    publish_unreadable(&broker, 400).await;
    let a_alone = quiet(&a_done).await;
    assert!(
        a_alone < 400,
        "the absent collector's share waited for it, not for a ({a_alone} of 400 went to a)"
    );
    // Retired: b's share is stored, then its session is gone.
    let retired = Arc::new(AtomicU64::new(0));
    let stats = medbox_fleet::collect::retire(
        &CollectConfig {
            progress: Some(retired.clone()),
            ..config(&broker, &schema, &group, "b")
        },
        Duration::from_millis(500),
    )
    .await
    .expect("retire");
    assert_eq!(
        a_alone + retired.load(Relaxed),
        400,
        "every message stored once between them: {stats:?}"
    );
    // From now on everything goes to a.
    publish_unreadable(&broker, 300).await;
    let mut now = a_done.load(Relaxed);
    for _ in 0..300 {
        if now >= a_alone + 300 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        now = a_done.load(Relaxed);
    }
    assert_eq!(now - a_alone, 300, "all of it went to the collector left");
    // And b's name holds no session any more.
    let mut opts = rumqttc::MqttOptions::new(
        medbox_fleet::collect::client_id("b"),
        "127.0.0.1",
        broker_port(&broker),
    );
    opts.set_clean_session(false);
    let (_client, mut ev) = rumqttc::AsyncClient::new(opts, 4);
    match tokio::time::timeout(Duration::from_secs(10), ev.poll()).await {
        Ok(Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(ack)))) => {
            assert!(!ack.session_present, "the broker still kept b's session")
        }
        other => panic!("connect: {other:?}"),
    }
    let _ = stop_a.send(());
    run_a.await.expect("join").expect("collector a");
    let a = Archive::connect(&pg(), Some(&schema))
        .await
        .expect("archive");
    drop_schema(&a, &schema).await;
}
