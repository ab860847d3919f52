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
    config_with(dir, dev, "[mqtt]\nurl = \"mqtt://127.0.0.1:1883\"\n")
}

fn config_with(dir: &Path, dev: &str, more: &str) -> PathBuf {
    let cfg = dir.join("medbox.toml");
    std::fs::write(
        &cfg,
        format!(
            "[appliance]\ndevice_id = \"{dev}\"\nboard = {:?}\ndb = \"medbox.db\"\nschedules = {:?}\n\n{more}",
            repo("hw/sim.toml"),
            repo("schedules"),
        ),
    )
    .unwrap();
    cfg
}

/// A running `medbox run`, its event lines arriving on a channel.
struct Appliance {
    /// None once waited for.
    child: Option<Child>,
    events: mpsc::Receiver<serde_json::Value>,
}

impl Appliance {
    fn start(cfg: &Path) -> Self {
        Self::start_with(cfg, &[])
    }

    fn start_with(cfg: &Path, env: &[(&str, &std::ffi::OsStr)]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_medbox"))
            .args(["run", "--config"])
            .arg(cfg)
            .envs(env.iter().copied())
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
        Self {
            child: Some(child),
            events,
        }
    }

    fn signal(&self, name: &str) {
        let ok = Command::new("kill")
            .args([format!("-{name}"), self.pid().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{name}");
    }

    /// Waits for the process to end (within [`PATIENCE`]) and returns its exit code and every
    /// event it printed.
    fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    fn wait(mut self) -> (Option<i32>, Vec<serde_json::Value>) {
        let mut child = self.child.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(child.wait());
        });
        let status = rx
            .recv_timeout(PATIENCE)
            .expect("medbox run ended in time")
            .unwrap();
        // The reader thread ends with the pipe; what it read is all there is.
        (status.code(), self.events.iter().collect())
    }
}

/// A test that fails leaves no appliance running.
impl Drop for Appliance {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
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
                // A retained message is what the broker kept from an earlier run, not news.
                if !p.retain && p.topic.ends_with(suffix) && accept(&p.payload) {
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

/// A device id no earlier run used (the broker keeps each device's last retained status).
fn unique(name: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!("t-{}-{nanos}-{name}", std::process::id())
}

fn online(p: &[u8]) -> bool {
    p == b"online"
}

fn audit_kinds(db: &Path) -> Vec<String> {
    let conn = rusqlite::Connection::open(db).unwrap();
    conn.busy_timeout(PATIENCE).unwrap();
    let mut st = conn.prepare("SELECT kind FROM audit ORDER BY seq").unwrap();
    st.query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

/// Waits until the store holds a second run's start row, read as any other process would read
/// it (the running appliance keeps writing beside this).
async fn started_twice(db: &Path) {
    let deadline = std::time::Instant::now() + PATIENCE;
    loop {
        let starts = audit_kinds(db)
            .iter()
            .filter(|k| *k == "system.start")
            .count();
        if starts >= 2 {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the second run never recorded its start"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_serves_commands_stops_safely_on_sigterm_and_resumes_after_sigkill() {
    let dev = unique("run");
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

    // 2. Start again and SIGKILL it once its start is on record (`online` may come first: the
    //    uplink connects beside the controller): nothing can run at a kill.
    let second = Appliance::start(&cfg);
    published(&mut ev, "/status", online).await;
    started_twice(&db).await;
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

/// Starts `medbox run` as systemd would with `WatchdogSec` of `watchdog_usec` µs, and the
/// socket its notifications arrive on.
fn under_systemd(
    dir: &Path,
    cfg: &Path,
    watchdog_usec: &str,
) -> (Appliance, std::os::unix::net::UnixDatagram) {
    let path = dir.join("notify.sock");
    let sock = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
    sock.set_read_timeout(Some(PATIENCE)).unwrap();
    let app = Appliance::start_with(
        cfg,
        &[
            ("NOTIFY_SOCKET", path.as_os_str()),
            ("WATCHDOG_USEC", watchdog_usec.as_ref()),
        ],
    );
    (app, sock)
}

/// Reads notification datagrams until one contains `what`; returns every one read.
fn notes_until(sock: &std::os::unix::net::UnixDatagram, what: &str) -> Vec<String> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = sock
            .recv(&mut buf)
            .unwrap_or_else(|e| panic!("no {what:?} within {PATIENCE:?} ({e}); got {got:#?}"));
        got.push(String::from_utf8_lossy(&buf[..n]).to_string());
        if got.last().is_some_and(|g| g.lines().any(|l| l == what)) {
            return got;
        }
    }
}

#[test]
fn under_systemd_run_says_ready_earns_its_watchdog_pings_and_says_stopping() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config_with(dir.path(), &unique("notify"), "");
    // WatchdogSec=2: pings every second while healthy.
    let (app, sock) = under_systemd(dir.path(), &cfg, "2000000");
    let before_ready = notes_until(&sock, "READY=1");
    assert!(
        before_ready[..before_ready.len() - 1]
            .iter()
            .all(|n| !n.contains("WATCHDOG=1")),
        "no ping before ready: {before_ready:#?}"
    );
    let ready = before_ready.last().unwrap();
    assert!(ready.contains("STATUS=fridge "), "{ready}");
    // Two more pings, each with the fridge's state.
    for _ in 0..2 {
        let ping = notes_until(&sock, "WATCHDOG=1");
        assert!(ping.last().unwrap().contains("STATUS=fridge "), "{ping:#?}");
    }
    app.signal("TERM");
    let stopping = notes_until(&sock, "STOPPING=1");
    assert!(
        !stopping.last().unwrap().contains("WATCHDOG=1"),
        "{stopping:#?}"
    );
    let (code, _) = app.wait();
    assert_eq!(code, Some(0));
}

#[test]
fn with_the_broker_down_the_control_loop_heartbeat_never_gaps_a_second() {
    // A port nothing listens on: the uplink keeps failing to connect the whole time.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let dir = tempfile::tempdir().unwrap();
    let cfg = config_with(
        dir.path(),
        &unique("down"),
        &format!("[mqtt]\nurl = \"mqtt://127.0.0.1:{port}\"\n"),
    );
    // WatchdogSec=0.5 s: a healthy loop pings every 250 ms.
    let (app, sock) = under_systemd(dir.path(), &cfg, "500000");
    notes_until(&sock, "READY=1");
    let mut pings = vec![std::time::Instant::now()];
    while pings.len() < 20 {
        notes_until(&sock, "WATCHDOG=1");
        pings.push(std::time::Instant::now());
    }
    let widest = pings.windows(2).map(|w| w[1] - w[0]).max().unwrap();
    assert!(
        widest < Duration::from_secs(1),
        "a heartbeat gap of {widest:?} with the broker down"
    );
    app.signal("TERM");
    let (code, _) = app.wait();
    assert_eq!(code, Some(0), "a clean stop without a broker too");
}
