//! `medbox run`, the production start-up, serving and shutdown path, on the simulated board in
//! real time against the machine's Mosquitto (127.0.0.1:1883; `.ci/run` starts it): it serves
//! commands, stops safely on SIGTERM with exit 0, and after a SIGKILL the next start records the
//! unclean stop and resumes from the store (an answered command is not executed again).

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use std::io::BufRead as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// How long a step may take on a busy host before the test gives up (a bound, not a wait).
const PATIENCE: Duration = Duration::from_secs(60);

fn repo(p: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(p)
}

/// A config beside its database: the shipped simulated board and schedules, the local broker.
fn config(dir: &Path, dev: &str) -> PathBuf {
    let cfg = dir.join("medbox.toml");
    std::fs::write(
        &cfg,
        format!(
            "[appliance]\ndevice_id = \"{dev}\"\nboard = {:?}\ndb = \"medbox.db\"\nschedules = {:?}\n\n\
             [mqtt]\nurl = \"mqtt://127.0.0.1:1883\"\n",
            repo("hw/sim.toml"),
            repo("schedules"),
        ),
    )
    .unwrap();
    cfg
}

/// A running `medbox run`, its event lines arriving on a channel.
struct Appliance {
    child: Child,
    events: mpsc::Receiver<serde_json::Value>,
}

impl Appliance {
    fn start(cfg: &Path) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_medbox"))
            .args(["run", "--config"])
            .arg(cfg)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let out = child.stdout.take().unwrap();
        let (tx, events) = mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str(&line) {
                    let _ = tx.send(v);
                }
            }
        });
        Self { child, events }
    }

    fn signal(&self, name: &str) {
        let ok = Command::new("kill")
            .args([format!("-{name}"), self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{name}");
    }

    /// Waits for the process to end (within [`PATIENCE`]) and returns its exit code and every
    /// event it printed.
    fn wait(self) -> (Option<i32>, Vec<serde_json::Value>) {
        let Self { mut child, events } = self;
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(child.wait());
        });
        let status = rx
            .recv_timeout(PATIENCE)
            .expect("medbox run ended in time")
            .unwrap();
        // The reader thread ends with the pipe; what it read is all there is.
        (status.code(), events.iter().collect())
    }
}

/// A back end's connection that sees everything the device publishes.
async fn backend(dev: &str) -> (AsyncClient, rumqttc::EventLoop) {
    let mut opts = MqttOptions::new(format!("{dev}-ctl"), "127.0.0.1", 1883);
    opts.set_keep_alive(Duration::from_secs(5));
    let (client, mut ev) = AsyncClient::new(opts, 100);
    client
        .subscribe(format!("medbox/{dev}/#"), QoS::AtLeastOnce)
        .await
        .unwrap();
    loop {
        if let Event::Incoming(Packet::SubAck(_)) = ev.poll().await.unwrap() {
            return (client, ev);
        }
    }
}

/// Waits for a publish on a topic ending in `suffix` that `accept` takes.
async fn published(
    ev: &mut rumqttc::EventLoop,
    suffix: &str,
    accept: impl Fn(&[u8]) -> bool,
) -> Vec<u8> {
    let found = tokio::time::timeout(PATIENCE, async {
        loop {
            if let Event::Incoming(Packet::Publish(p)) = ev.poll().await.unwrap() {
                if p.topic.ends_with(suffix) && accept(&p.payload) {
                    return p.payload.to_vec();
                }
            }
        }
    })
    .await;
    found.unwrap_or_else(|_| panic!("nothing on …{suffix} within {PATIENCE:?}"))
}

/// Sends a command and returns its result's body.
async fn ask(
    client: &AsyncClient,
    ev: &mut rumqttc::EventLoop,
    dev: &str,
    role_and_name: &str,
    payload: serde_json::Value,
) -> serde_json::Value {
    let id = payload["id"].clone();
    client
        .publish(
            format!("medbox/{dev}/cmd/{role_and_name}"),
            QoS::AtLeastOnce,
            false,
            payload.to_string(),
        )
        .await
        .unwrap();
    let raw = published(ev, "/result", |p| {
        serde_json::from_slice::<serde_json::Value>(p).is_ok_and(|v| v["body"]["id"] == id)
    })
    .await;
    serde_json::from_slice::<serde_json::Value>(&raw).unwrap()["body"].clone()
}

fn online(p: &[u8]) -> bool {
    p == b"online"
}

fn audit_kinds(db: &Path) -> Vec<String> {
    let conn = rusqlite::Connection::open(db).unwrap();
    let mut st = conn.prepare("SELECT kind FROM audit ORDER BY seq").unwrap();
    st.query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_serves_commands_stops_safely_on_sigterm_and_resumes_after_sigkill() {
    let dev = format!("t-{}-run", std::process::id());
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &dev);
    let db = dir.path().join("medbox.db");
    let (client, mut ev) = backend(&dev).await;
    let refill = serde_json::json!({"id": "r1", "actor": "ph-7",
        "args": {"slot": 4, "units": 5, "note": "commissioning"}});

    // 1. Start, serve a command over the broker, SIGTERM.
    let first = Appliance::start(&cfg);
    published(&mut ev, "/status", online).await;
    let answer = ask(&client, &mut ev, &dev, "pharmacist/refill", refill.clone()).await;
    assert_eq!(answer["ok"], true, "{answer}");
    assert!(
        answer["detail"].as_str().unwrap().contains("5 added"),
        "{answer}"
    );
    first.signal("TERM");
    let (code, events) = first.wait();
    assert_eq!(code, Some(0), "SIGTERM is a clean stop");
    let kinds: Vec<&str> = events.iter().filter_map(|e| e["kind"].as_str()).collect();
    assert!(kinds.contains(&"started"), "{kinds:?}");
    assert_eq!(
        kinds.last(),
        Some(&"stopped"),
        "the stop comes after the safe states: {kinds:?}"
    );
    assert!(kinds.contains(&"reading"), "the fridge was read: {kinds:?}");
    let kinds = audit_kinds(&db);
    assert_eq!(kinds.last().map(String::as_str), Some("system.stop"));
    assert!(
        !kinds.iter().any(|k| k == "system.unclean_stop"),
        "{kinds:?}"
    );

    // 2. Start again and SIGKILL it: nothing can run at a kill.
    let second = Appliance::start(&cfg);
    published(&mut ev, "/status", online).await;
    second.signal("KILL");
    let (code, _) = second.wait();
    assert_eq!(code, None, "killed by a signal");

    // 3. The next start records the unclean stop and resumes from the store: the refill it
    //    answered is not executed again, and the stock it recorded is still there.
    let third = Appliance::start(&cfg);
    published(&mut ev, "/status", online).await;
    let again = ask(&client, &mut ev, &dev, "pharmacist/refill", refill).await;
    assert_eq!(again["duplicate"], true, "{again}");
    let more = serde_json::json!({"id": "r2", "actor": "ph-7", "args": {"slot": 4, "units": 1}});
    let more = ask(&client, &mut ev, &dev, "pharmacist/refill", more).await;
    assert!(
        more["detail"].as_str().unwrap().contains("6 in the slot"),
        "{more}"
    );
    third.signal("TERM");
    let (code, _) = third.wait();
    assert_eq!(code, Some(0));
    let kinds = audit_kinds(&db);
    assert_eq!(
        kinds.iter().filter(|k| *k == "system.unclean_stop").count(),
        1,
        "{kinds:?}"
    );
    let verify = Command::new(env!("CARGO_BIN_EXE_medbox"))
        .args(["audit", "verify", "--db"])
        .arg(&db)
        .output()
        .unwrap();
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stdout)
    );
}
