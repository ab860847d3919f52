//! Commands to an appliance from elsewhere (a caregiver's or pharmacist's terminal, a back end):
//! the request a person means, built into the payload the appliance takes, sent on its role's
//! topic, and the appliance's own answer waited for and matched by the command's id.
//!
//! People should not type JSON into an MQTT client to refill a slot or install a schedule; this
//! is the one place that knows the payloads, so `medbox cmd` and any later tool say the same.

use crate::wire;
use chrono::{DateTime, NaiveDate, Utc};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::{json, Value};
use std::time::Duration;
use thiserror::Error;

/// What a person asks the appliance to do.
#[derive(Clone, Debug, PartialEq)]
pub enum Request {
    /// Units loaded into a slot.
    Refill {
        /// Carousel slot.
        slot: u8,
        /// Units added.
        units: u32,
        /// Expiry of the units loaded.
        expiry: Option<NaiveDate>,
        /// Lot or remark.
        note: Option<String>,
    },
    /// An alarm acknowledged.
    Acknowledge {
        /// Alarm code (`DOOR_OPEN`, `LOW_STOCK`, …).
        alarm: String,
        /// What was done about it.
        comment: String,
        /// The slot, for stock alarms.
        slot: Option<u8>,
    },
    /// An uncertain dose checked by a carer.
    Reconcile {
        /// Patient pseudonym.
        patient: String,
        /// Medication.
        medication: String,
        /// The dose's scheduled time (None: an as-needed dose).
        occurrence: Option<DateTime<Utc>>,
        /// Whether the patient had it.
        given: bool,
        /// What was found.
        note: String,
        /// Units given, when not the whole dose.
        units: Option<u32>,
    },
    /// A dose skipped on purpose.
    Skip {
        /// Patient pseudonym.
        patient: String,
        /// Medication.
        medication: String,
        /// The dose's scheduled time.
        occurrence: DateTime<Utc>,
    },
    /// An as-needed dose asked for.
    Prn {
        /// Patient pseudonym.
        patient: String,
        /// Medication.
        medication: String,
        /// A nurse's or clinician's reason to go past the limits.
        override_reason: Option<String>,
    },
    /// An adherence summary published now.
    Report {
        /// Days it covers.
        days: Option<u32>,
    },
    /// Audit rows `from..=to` (and the checkpoints among them) published again, for an
    /// archive that lost some on the way.
    ResendAudit {
        /// First sequence number.
        from: i64,
        /// Last (inclusive).
        to: i64,
    },
    /// The clock checked after a jump.
    TrustClock {
        /// What it was checked against.
        comment: String,
    },
    /// A patient's schedule replaced by a file's text.
    InstallSchedule {
        /// Whose schedule (from the file).
        patient: String,
        /// The whole TOML file.
        schedule: String,
        /// The version a second person confirms (high-alert changes).
        confirm: Option<String>,
    },
}

impl Request {
    /// The command's name on the wire.
    pub fn name(&self) -> &'static str {
        match self {
            Request::Refill { .. } => "refill",
            Request::Acknowledge { .. } => "acknowledge_alarm",
            Request::Reconcile { .. } => "reconcile_dose",
            Request::Skip { .. } => "skip_dose",
            Request::Prn { .. } => "request_prn",
            Request::Report { .. } => "request_report",
            Request::ResendAudit { .. } => "resend_audit",
            Request::TrustClock { .. } => "trust_clock",
            Request::InstallSchedule { .. } => "replace_schedule",
        }
    }

    /// The role such a request usually comes in (the broker decides which roles an identity
    /// may use; this is only the default of `medbox cmd`).
    pub fn usual_role(&self) -> &'static str {
        match self {
            Request::Refill { .. } | Request::ResendAudit { .. } => "pharmacist",
            Request::Prn { .. } => "patient",
            _ => "caregiver",
        }
    }

    /// The command's `args`.
    pub fn args(&self) -> Value {
        let mut v = match self {
            Request::Refill {
                slot,
                units,
                expiry,
                note,
            } => json!({ "slot": slot, "units": units, "expiry": expiry, "note": note }),
            Request::Acknowledge {
                alarm,
                comment,
                slot,
            } => json!({ "alarm": alarm, "comment": comment, "slot": slot }),
            Request::Reconcile {
                patient,
                medication,
                occurrence,
                given,
                note,
                units,
            } => json!({ "patient": patient, "medication": medication,
                "occurrence": occurrence, "given": given, "note": note, "units": units }),
            Request::Skip {
                patient,
                medication,
                occurrence,
            } => json!({ "patient": patient, "medication": medication, "occurrence": occurrence }),
            Request::Prn {
                patient,
                medication,
                override_reason,
            } => json!({ "patient": patient, "medication": medication,
                "override_reason": override_reason }),
            Request::Report { days } => json!({ "days": days }),
            Request::ResendAudit { from, to } => json!({ "from": from, "to": to }),
            Request::TrustClock { comment } => json!({ "comment": comment }),
            Request::InstallSchedule {
                patient,
                schedule,
                confirm,
            } => json!({ "patient": patient, "schedule": schedule, "confirm": confirm }),
        };
        // Absent, not null: the appliance reads a missing optional argument as its default.
        if let Some(map) = v.as_object_mut() {
            map.retain(|_, value| !value.is_null());
        }
        v
    }

    /// The payload the appliance takes.
    pub fn payload(&self, id: &str, actor: &str) -> Vec<u8> {
        json!({ "id": id, "actor": actor, "args": self.args() })
            .to_string()
            .into_bytes()
    }
}

/// The appliance's answer to one command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Answer {
    /// Done (true) or refused.
    pub ok: bool,
    /// What was done, or the reason code and why not.
    pub detail: String,
    /// The id had been seen before: answered again, not done again.
    pub duplicate: bool,
}

/// The answer to command `id` in a `…/result` message, if that is what it holds.
pub fn answer_for(id: &str, payload: &[u8]) -> Option<Answer> {
    let v: Value = serde_json::from_slice(payload).ok()?;
    let body = &v["body"];
    (body["id"].as_str() == Some(id)).then(|| Answer {
        ok: body["ok"].as_bool().unwrap_or(false),
        detail: body["detail"].as_str().unwrap_or_default().to_string(),
        duplicate: body["duplicate"].as_bool().unwrap_or(false),
    })
}

/// Why no answer came.
#[derive(Debug, Error)]
pub enum RemoteError {
    /// The broker could not be reached or dropped the connection.
    #[error("broker: {0}")]
    Broker(String),
    /// The appliance did not answer in time.
    #[error("no answer within {0:?}: is the appliance online (its retained `status` topic)?")]
    Timeout(Duration),
}

/// Sends `request` to `device` as `actor` in `role` with the command id `id`, and waits up to
/// `timeout` for the appliance's answer.
pub async fn send(
    opts: MqttOptions,
    device: &str,
    role: &str,
    actor: &str,
    id: &str,
    request: &Request,
    timeout: Duration,
) -> Result<Answer, RemoteError> {
    let topic = wire::topic(device, &format!("cmd/{role}/{}", request.name()));
    let result = format!("{topic}/result");
    let (client, mut events) = AsyncClient::new(opts, 16);
    let exchange = async {
        let mut sent = false;
        loop {
            let event = events
                .poll()
                .await
                .map_err(|e| RemoteError::Broker(e.to_string()))?;
            match event {
                Event::Incoming(Packet::ConnAck(_)) => client
                    .subscribe(&result, QoS::AtLeastOnce)
                    .await
                    .map_err(|e| RemoteError::Broker(e.to_string()))?,
                // Subscribed first, so the answer cannot come before we listen for it.
                Event::Incoming(Packet::SubAck(_)) if !sent => {
                    sent = true;
                    client
                        .publish(&topic, QoS::AtLeastOnce, false, request.payload(id, actor))
                        .await
                        .map_err(|e| RemoteError::Broker(e.to_string()))?;
                }
                Event::Incoming(Packet::Publish(p)) if p.topic == result => {
                    if let Some(answer) = answer_for(id, &p.payload) {
                        let _ = client.disconnect().await;
                        return Ok(answer);
                    }
                }
                _ => {}
            }
        }
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| RemoteError::Timeout(timeout))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn optional_arguments_are_left_out_not_sent_as_null() {
        let r = Request::Refill {
            slot: 3,
            units: 30,
            expiry: None,
            note: Some("lot A12".into()),
        };
        assert_eq!(r.args(), json!({"slot": 3, "units": 30, "note": "lot A12"}));
        let payload: Value = serde_json::from_slice(&r.payload("c-1", "ph-7")).unwrap();
        assert_eq!(payload["id"], "c-1");
        assert_eq!(payload["actor"], "ph-7");
        assert!(payload.get("role").is_none(), "the role is the topic's");
    }

    #[test]
    fn each_request_goes_to_the_command_the_appliance_knows() {
        let skip = Request::Skip {
            patient: "p-1".into(),
            medication: "A".into(),
            occurrence: "2026-03-02T07:00:00Z".parse().unwrap(),
        };
        assert_eq!(skip.name(), "skip_dose");
        assert_eq!(skip.args()["occurrence"], "2026-03-02T07:00:00Z");
        let install = Request::InstallSchedule {
            patient: "p-1".into(),
            schedule: "[patient]\n".into(),
            confirm: None,
        };
        assert_eq!(install.name(), "replace_schedule");
        assert_eq!(install.usual_role(), "caregiver");
    }

    #[test]
    fn an_answer_is_taken_only_for_its_own_command() {
        let result = br#"{"schema":"medbox.event.v1","body":{"kind":"command_result","id":"c-1","ok":false,"detail":"ROLE_NOT_ALLOWED: x","duplicate":false}}"#;
        assert_eq!(
            answer_for("c-1", result),
            Some(Answer {
                ok: false,
                detail: "ROLE_NOT_ALLOWED: x".into(),
                duplicate: false
            })
        );
        assert_eq!(answer_for("c-2", result), None);
        assert_eq!(answer_for("c-1", b"not json"), None);
    }
}
