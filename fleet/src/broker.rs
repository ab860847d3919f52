//! A private Mosquitto with the fleet broker's settings (`docs/mosquitto/fleet.conf`), on a free
//! local port: what the fleet's tests and `medbox-fleet bench` publish through, so a shared
//! machine's broker (with Mosquitto's default queue limit of 1 000 messages per client, which
//! silently drops a collector's backlog) never decides a result.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// The fleet broker's settings as shipped.
pub const FLEET_CONF: &str = include_str!("../../docs/mosquitto/fleet.conf");

/// A running private broker; stopped when dropped.
pub struct PrivateBroker {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl PrivateBroker {
    /// Starts `mosquitto` with the fleet settings on a free port, anonymous, local only.
    pub fn start() -> std::io::Result<Self> {
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let dir = tempfile::tempdir()?;
        let conf = dir.path().join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!("listener {port} 127.0.0.1\nallow_anonymous true\n{FLEET_CONF}"),
        )?;
        let child = Command::new("mosquitto")
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let broker = Self {
            child,
            port,
            _dir: dir,
        };
        // Up when it accepts a connection (bounded: five seconds).
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Ok(broker);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(std::io::Error::other("mosquitto did not start listening"))
    }

    /// Its URL.
    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }
}

impl Drop for PrivateBroker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
