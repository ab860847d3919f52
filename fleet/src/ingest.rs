//! What an appliance's message is, read from its topic and payload: pure, so every way a
//! message can be wrong is tested without a broker or a database.
//!
//! The appliance's wire protocol (`medbox::wire`) decides topics and shapes; this is its reading
//! side. A message whose id names another device than its topic is refused: a device's
//! credentials let it publish only under its own topic (the broker's ACL), so an id claiming
//! another device is forged or broken, and storing it would let one device write into
//! another's record.

use chrono::{DateTime, Utc};
use medbox::store::audit::Row;
use medbox::store::checkpoint::Checkpoint;
use serde::Deserialize;
use serde_json::Value;
use thiserror::Error;

/// A message the collector cannot store, and why (logged; the message is acknowledged so it
/// does not come back forever).
#[derive(Debug, Error, PartialEq)]
pub enum Refused {
    /// Not under `medbox/<device-id>/`.
    #[error("topic {0:?} is not medbox/<device-id>/…")]
    Topic(String),
    /// The payload is not the JSON its topic carries.
    #[error("{topic}: {why}")]
    Payload {
        /// Where it came.
        topic: String,
        /// What was wrong.
        why: String,
    },
    /// The message id names another device.
    #[error("{topic}: id {id:?} does not belong to device {device:?}")]
    ForeignId {
        /// Where it came.
        topic: String,
        /// The id it carried.
        id: String,
        /// The device its topic names.
        device: String,
    },
}

/// An audit row as the appliance publishes it (`medbox.event.v1`).
#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct EventMsg {
    /// `<device>:<seq>`.
    pub id: String,
    /// Sequence number in the device's chain.
    pub seq: i64,
    /// When it was recorded.
    pub utc: DateTime<Utc>,
    /// `dose.dispensed`, `coldchain.alarm_raised`, …
    pub kind: String,
    /// Subject.
    pub subject: String,
    /// Who.
    pub actor: String,
    /// Reason code.
    pub reason: String,
    /// Whether the device trusted its clock.
    pub clock_trusted: bool,
    /// The event.
    pub body: Value,
    /// The previous row's hash (absent from appliances older than the witness).
    #[serde(default)]
    pub prev_hash: Option<String>,
    /// This row's hash.
    #[serde(default)]
    pub hash: Option<String>,
    /// The row exactly as the appliance hashed it, when its chain is plain SHA-256 and the
    /// message carries every field (so a witness can recompute the hash); `None` for a keyed
    /// chain, whose hash only the secret's holder can recompute, and for older appliances.
    #[serde(skip)]
    pub hashed: Option<Row>,
}

/// The row a `medbox.event.v1` message was made from, with the body's exact text, if the
/// message says its chain is plain SHA-256 and carries every field the hash covers.
pub fn hashed_row(json: &Value) -> Option<Row> {
    if json.get("chain")?.as_str()? != medbox::wire::CHAIN_PLAIN {
        return None;
    }
    let text = |k: &str| json.get(k).and_then(Value::as_str).map(str::to_string);
    Some(Row {
        seq: json.get("seq")?.as_i64()?,
        utc: text("utc")?,
        mono_ms: json.get("mono_ms")?.as_i64()?,
        boot_id: text("boot_id")?,
        clock_trusted: json.get("clock_trusted")?.as_bool()?,
        actor: text("actor")?,
        kind: text("kind")?,
        subject: text("subject")?,
        body: text("body_text")?,
        reason: text("reason")?,
        prev_hash: text("prev_hash")?,
        hash: text("hash")?,
    })
}

/// A fridge reading (`medbox.telemetry.v1`).
#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct ReadingMsg {
    /// `<device>:r<row>`.
    pub id: String,
    /// When.
    pub utc: DateTime<Utc>,
    /// Vial probe, °C.
    pub vial_c: Option<f64>,
    /// Air probe, °C.
    pub air_c: Option<f64>,
    /// The temperature the appliance believed.
    #[serde(default)]
    pub product_c: Option<f64>,
    /// Set while the probes disagree.
    #[serde(default)]
    pub doubt: Option<String>,
    /// Compressor relay.
    pub compressor_on: bool,
    /// Door.
    pub door_open: bool,
    /// Mains.
    pub mains: bool,
    /// Control mode.
    #[serde(default)]
    pub mode: Option<String>,
}

/// What a message is.
#[derive(Clone, Debug, PartialEq)]
pub enum Message {
    /// `online` / `offline`.
    Status {
        /// Device.
        device: String,
        /// Online.
        online: bool,
    },
    /// An audit row.
    Event {
        /// Device.
        device: String,
        /// The row.
        event: Box<EventMsg>,
    },
    /// A reading, with the device's row id.
    Reading {
        /// Device.
        device: String,
        /// Row id on the device.
        row_id: i64,
        /// The reading.
        reading: Box<ReadingMsg>,
    },
    /// A signed checkpoint.
    Checkpoint {
        /// Device.
        device: String,
        /// Message id.
        id: String,
        /// The checkpoint.
        checkpoint: Checkpoint,
    },
    /// Anything else the device sent (FHIR resources): archived as it came, keyed by its
    /// content so a redelivery is stored once.
    Other {
        /// Device.
        device: String,
        /// Content key.
        id: String,
    },
    /// Not the devices' to report (commands sent to them, readings sent in by monitors).
    Inbound,
}

impl Message {
    /// The device it is from, if it is one's report.
    pub fn device(&self) -> Option<&str> {
        match self {
            Message::Status { device, .. }
            | Message::Event { device, .. }
            | Message::Reading { device, .. }
            | Message::Checkpoint { device, .. }
            | Message::Other { device, .. } => Some(device),
            Message::Inbound => None,
        }
    }
}

/// Reads a message.
pub fn parse(topic: &str, payload: &[u8]) -> Result<Message, Refused> {
    let refuse = |why: String| Refused::Payload {
        topic: topic.to_string(),
        why,
    };
    let rest = topic
        .strip_prefix("medbox/")
        .ok_or_else(|| Refused::Topic(topic.into()))?;
    let (device, suffix) = rest
        .split_once('/')
        .filter(|(d, s)| !d.is_empty() && !s.is_empty())
        .ok_or_else(|| Refused::Topic(topic.into()))?;
    let device = device.to_string();
    if suffix == medbox::wire::STATUS {
        return match payload {
            b"online" => Ok(Message::Status {
                device,
                online: true,
            }),
            b"offline" => Ok(Message::Status {
                device,
                online: false,
            }),
            _ => Err(refuse("a status is online or offline".into())),
        };
    }
    if (suffix.starts_with("cmd/") && !suffix.ends_with("/result"))
        || suffix == medbox::wire::VITALS_IN
    {
        return Ok(Message::Inbound);
    }
    let json: Value =
        serde_json::from_slice(payload).map_err(|e| refuse(format!("not JSON: {e}")))?;
    let own = |id: &str| -> Result<(), Refused> {
        match id.strip_prefix(device.as_str()) {
            Some(rest) if rest.starts_with(':') => Ok(()),
            _ => Err(Refused::ForeignId {
                topic: topic.to_string(),
                id: id.to_string(),
                device: device.clone(),
            }),
        }
    };
    match json.get("schema").and_then(Value::as_str) {
        Some("medbox.event.v1") => {
            let hashed = hashed_row(&json);
            let mut event: EventMsg =
                serde_json::from_value(json).map_err(|e| refuse(format!("event: {e}")))?;
            event.hashed = hashed;
            own(&event.id)?;
            if event.id != format!("{device}:{}", event.seq) {
                return Err(refuse(format!(
                    "event id {:?} does not name its seq {}",
                    event.id, event.seq
                )));
            }
            Ok(Message::Event {
                device,
                event: Box::new(event),
            })
        }
        Some("medbox.telemetry.v1") => {
            let reading: ReadingMsg =
                serde_json::from_value(json).map_err(|e| refuse(format!("telemetry: {e}")))?;
            own(&reading.id)?;
            let row_id = reading
                .id
                .rsplit_once(":r")
                .and_then(|(_, n)| n.parse().ok())
                .ok_or_else(|| refuse(format!("telemetry id {:?} has no row", reading.id)))?;
            Ok(Message::Reading {
                device,
                row_id,
                reading: Box::new(reading),
            })
        }
        Some("medbox.checkpoint.v1") => {
            let id = json
                .get("id")
                .and_then(Value::as_str)
                .ok_or_else(|| refuse("checkpoint without id".into()))?
                .to_string();
            own(&id)?;
            let checkpoint: Checkpoint = serde_json::from_value(
                json.get("checkpoint")
                    .cloned()
                    .ok_or_else(|| refuse("checkpoint without checkpoint".into()))?,
            )
            .map_err(|e| refuse(format!("checkpoint: {e}")))?;
            Ok(Message::Checkpoint {
                device,
                id,
                checkpoint,
            })
        }
        _ => {
            let digest = ring::digest::digest(&ring::digest::SHA256, payload);
            let hex: String = digest.as_ref()[..16]
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            Ok(Message::Other {
                id: format!("{device}:{suffix}:{hex}"),
                device,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(id: &str, seq: i64) -> Vec<u8> {
        serde_json::json!({
            "schema": "medbox.event.v1", "id": id, "seq": seq, "utc": "2026-03-02T08:00:00.000Z",
            "kind": "dose.dispensed", "subject": "s", "actor": "a", "reason": "",
            "clock_trusted": true, "body": {"kind": "dose"}, "prev_hash": "aa", "hash": "bb"
        })
        .to_string()
        .into_bytes()
    }

    /// A row as the appliance's store hashes it, and its message as the appliance sends it.
    fn appliance_row(keyed: bool) -> (Row, Vec<u8>) {
        let mut row = Row {
            seq: 12,
            utc: "2026-03-02T08:00:00.120Z".into(),
            mono_ms: 99,
            boot_id: "b7".into(),
            clock_trusted: true,
            actor: "caregiver:ana".into(),
            kind: "dose.skipped".into(),
            subject: "patient:p-1/medication:MTX".into(),
            // Spacing and escapes a JSON receiver would not keep byte for byte.
            body: "{\"note\": \"caf\\u00e9 \\\"x\\\"\",\"units\":1.50}".into(),
            reason: "SKIPPED".into(),
            prev_hash: "ab".repeat(32),
            hash: String::new(),
        };
        row.hash = medbox::store::audit::ChainKey::unkeyed().link(&row.prev_hash, &row.canonical());
        let m = medbox::wire::event_message("mb-1", &medbox::wire::EventRow::of(&row, keyed))
            .unwrap_or_default();
        (row, m.to_string().into_bytes())
    }

    #[test]
    fn a_plain_chains_row_is_rebuilt_from_its_message_exactly_as_it_was_hashed() {
        let (row, payload) = appliance_row(false);
        match parse("medbox/mb-1/events/dose", &payload) {
            Ok(Message::Event { event, .. }) => {
                assert_eq!(event.hashed.as_ref(), Some(&row));
                assert_eq!(
                    event.hashed.and_then(|r| crate::witness::check_content(&r)),
                    None
                );
            }
            other => panic!("{other:?}"),
        }
        // A keyed chain's hash needs the secret: nothing is rebuilt to check.
        let (_, payload) = appliance_row(true);
        match parse("medbox/mb-1/events/dose", &payload) {
            Ok(Message::Event { event, .. }) => assert_eq!(event.hashed, None),
            other => panic!("{other:?}"),
        }
        // Nor from an appliance that does not say how it links its rows.
        match parse("medbox/mb-1/events/dose", &event("mb-1:7", 7)) {
            Ok(Message::Event { event, .. }) => assert_eq!(event.hashed, None),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn each_kind_of_report_is_read_with_its_device_and_key() {
        match parse("medbox/mb-1/events/dose", &event("mb-1:7", 7)) {
            Ok(Message::Event { device, event }) => {
                assert_eq!((device.as_str(), event.seq), ("mb-1", 7));
                assert_eq!(event.hash.as_deref(), Some("bb"));
            }
            other => panic!("{other:?}"),
        }
        let t = br#"{"schema":"medbox.telemetry.v1","id":"mb-1:r1442","utc":"2026-03-03T00:01:00.880Z","vial_c":5.1,"air_c":4.8,"compressor_on":false,"door_open":false,"mains":true,"mode":"thermostat"}"#;
        match parse("medbox/mb-1/telemetry/fridge", t) {
            Ok(Message::Reading { row_id, .. }) => assert_eq!(row_id, 1442),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            parse("medbox/mb-1/status", b"offline"),
            Ok(Message::Status {
                device: "mb-1".into(),
                online: false
            })
        );
        assert_eq!(
            parse("medbox/mb-1/cmd/nurse/refill", b"{}"),
            Ok(Message::Inbound)
        );
        let fhir = br#"{"resourceType":"Observation","id":"bp-1"}"#;
        let (a, b) = (
            parse("medbox/mb-1/fhir/Observation", fhir),
            parse("medbox/mb-1/fhir/Observation", fhir),
        );
        assert!(matches!(a, Ok(Message::Other { .. })));
        assert_eq!(a, b, "the same content is the same key");
    }

    #[test]
    fn a_message_claiming_another_devices_id_is_refused() {
        assert!(matches!(
            parse("medbox/mb-1/events/dose", &event("mb-2:7", 7)),
            Err(Refused::ForeignId { .. })
        ));
        assert!(matches!(
            parse("medbox/mb-1/events/dose", &event("mb-10:7", 7)),
            Err(Refused::ForeignId { .. })
        ));
        assert!(matches!(
            parse("medbox/mb-1/events/dose", &event("mb-1:8", 7)),
            Err(Refused::Payload { .. })
        ));
    }

    #[test]
    fn malformed_messages_say_what_is_wrong() {
        assert_eq!(
            parse("other/mb-1/x", b"{}"),
            Err(Refused::Topic("other/mb-1/x".into()))
        );
        assert!(matches!(
            parse("medbox/mb-1", b"{}"),
            Err(Refused::Topic(_))
        ));
        match parse(
            "medbox/mb-1/events/dose",
            b"{\"schema\":\"medbox.event.v1\"}",
        ) {
            Err(Refused::Payload { why, .. }) => assert!(why.contains("missing field"), "{why}"),
            other => panic!("{other:?}"),
        }
        match parse("medbox/mb-1/events/dose", b"not json") {
            Err(Refused::Payload { why, .. }) => assert!(why.starts_with("not JSON"), "{why}"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            parse("medbox/mb-1/status", b"maybe"),
            Err(Refused::Payload { .. })
        ));
    }
}
