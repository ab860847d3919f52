//! The appliance config (`medbox run --config FILE`): which board profile, where the data lives,
//! the cold-chain settings, and the uplink.

use super::{line_of, Findings, Validate};
use crate::coldchain::ColdChainConfig;
use serde::Deserialize;
use std::path::{Path, PathBuf};

/// `[appliance]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApplianceSection {
    /// Device id used in MQTT topics; never a patient's name.
    pub device_id: String,
    /// Board profile, relative to this file's directory.
    pub board: PathBuf,
    /// SQLite database.
    pub db: PathBuf,
    /// Directory of dosing schedules.
    pub schedules: PathBuf,
}

/// `[mqtt]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttSection {
    /// Broker URL, `mqtt://host:port` or `mqtts://host:port`.
    pub url: String,
    /// Also publish dose outcomes and vitals as FHIR R4 resources.
    #[serde(default)]
    pub fhir: bool,
    /// CA certificate (PEM) for `mqtts://`.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Client certificate (PEM) for mutual TLS.
    #[serde(default)]
    pub cert_file: Option<PathBuf>,
    /// Client key (PEM).
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    /// Username (with `password_file`; there are no default credentials).
    #[serde(default)]
    pub username: Option<String>,
    /// File holding the password.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
}

/// `[dosing]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DosingSection {
    /// Refill alert when fewer than this many days of doses remain in a slot.
    #[serde(default = "default_refill_days")]
    pub refill_days: f64,
}

fn default_refill_days() -> f64 {
    crate::dosing::inventory::DEFAULT_REFILL_DAYS
}

impl Default for DosingSection {
    fn default() -> Self {
        Self {
            refill_days: default_refill_days(),
        }
    }
}

/// `[audit]`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditSection {
    /// File holding the HMAC secret that keys the audit chain (readable by medbox only);
    /// absent: plain SHA-256 chaining.
    #[serde(default)]
    pub secret_file: Option<PathBuf>,
    /// The Ed25519 key that signs checkpoints (created there on first start, mode 0600);
    /// absent: beside the database (`<db>.signing-key`). Never inside the database.
    #[serde(default)]
    pub signing_key: Option<PathBuf>,
    /// The device's checkpoint public key (hex) as recorded at commissioning:
    /// `audit verify --against` refuses checkpoints signed by any other.
    #[serde(default)]
    pub public_key: Option<String>,
}

/// The whole appliance config.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApplianceConfig {
    /// Identity and paths.
    pub appliance: ApplianceSection,
    /// Cold-chain settings (all defaulted).
    #[serde(default)]
    pub coldchain: ColdChainConfig,
    /// Dosing settings (all defaulted).
    #[serde(default)]
    pub dosing: DosingSection,
    /// Audit chain settings.
    #[serde(default)]
    pub audit: AuditSection,
    /// Uplink; absent means store-only.
    #[serde(default)]
    pub mqtt: Option<MqttSection>,
}

impl ApplianceConfig {
    /// Loads and checks a config file.
    pub fn load(path: &Path) -> Result<Self, Vec<super::ConfigError>> {
        super::load_file(path)
    }

    /// The board profile's path, resolved against the config file's directory.
    pub fn board_path(&self, config_file: &Path) -> PathBuf {
        let dir = config_file.parent().unwrap_or(Path::new("."));
        dir.join(&self.appliance.board)
    }
}

/// Ids name MQTT topics and audit rows, so they stay topic-safe (no `/`, `+`, `#`, spaces).
pub fn valid_device_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

impl Validate for ApplianceConfig {
    fn validate(&self, src: &str, out: &mut Findings) {
        let line_at = |needle: &str| src.find(needle).map(|o| line_of(src, o)).unwrap_or(1);
        if !valid_device_id(&self.appliance.device_id) {
            out.at(
                line_at("device_id"),
                "appliance.device_id",
                "must be 1–64 letters, digits, '-' or '_' (it becomes an MQTT topic level)",
            );
        }
        for (key, message) in self.coldchain.problems() {
            let field = key.rsplit('.').next().unwrap_or(key);
            let line = src
                .lines()
                .position(|l| l.trim_start().starts_with(field))
                .map(|i| i + 1)
                .unwrap_or_else(|| line_at("[coldchain]"));
            out.at(line, key, message);
        }
        let days = self.dosing.refill_days;
        if !(days.is_finite() && (1.0..=90.0).contains(&days)) {
            out.at(
                line_at("refill_days"),
                "dosing.refill_days",
                "must be 1–90 days",
            );
        }
        if let Some(m) = &self.mqtt {
            if !(m.url.starts_with("mqtt://") || m.url.starts_with("mqtts://")) {
                out.at(
                    line_at("url"),
                    "mqtt.url",
                    "must start with mqtt:// or mqtts://",
                );
            }
            if m.url.starts_with("mqtts://") && m.ca_file.is_none() {
                out.at(line_at("url"), "mqtt.ca_file", "mqtts:// needs a CA file");
            }
            if m.cert_file.is_some() != m.key_file.is_some() {
                out.at(
                    line_at("[mqtt]"),
                    "mqtt.cert_file",
                    "a client certificate and its key go together",
                );
            }
            if m.username.is_some() != m.password_file.is_some() {
                out.at(
                    line_at("[mqtt]"),
                    "mqtt.username",
                    "username and password_file go together",
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse_str;

    const GOOD: &str = r#"
[appliance]
device_id = "medbox-0001"
board = "../hw/rpi4.toml"
db = "/var/lib/medbox/medbox.db"
schedules = "/etc/medbox/schedules"

[coldchain]
cut_in = 6.5
"#;

    #[test]
    fn appliance_config_parses_with_defaults() {
        let c: ApplianceConfig = parse_str(GOOD, Path::new("a.toml")).unwrap();
        assert_eq!(c.coldchain.cut_in.0, 6.5);
        assert_eq!(c.coldchain.range_max.0, 8.0);
    }

    #[test]
    fn band_outside_range_is_rejected_with_its_line() {
        let src = GOOD.replace("cut_in = 6.5", "cut_in = 8.5");
        let errs = parse_str::<ApplianceConfig>(&src, Path::new("a.toml")).unwrap_err();
        let text = errs[0].to_string();
        assert!(text.starts_with("a.toml:9: coldchain.cut_in:"), "{text}");
    }

    #[test]
    fn refill_days_is_configurable_and_checked() {
        let c: ApplianceConfig = parse_str(GOOD, Path::new("a.toml")).unwrap();
        assert_eq!(c.dosing.refill_days, 7.0);
        let src = format!("{GOOD}\n[dosing]\nrefill_days = 0.5\n");
        let errs = parse_str::<ApplianceConfig>(&src, Path::new("a.toml")).unwrap_err();
        assert!(
            errs[0]
                .to_string()
                .contains("a.toml:12: dosing.refill_days"),
            "{}",
            errs[0]
        );
    }

    #[test]
    fn device_id_must_be_topic_safe() {
        let src = GOOD.replace("medbox-0001", "Mrs Smith/kitchen");
        let errs = parse_str::<ApplianceConfig>(&src, Path::new("a.toml")).unwrap_err();
        assert!(errs[0].to_string().contains("appliance.device_id"));
    }
}
