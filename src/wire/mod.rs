//! The wire protocol: which topic each message goes to, at what priority, in what shape, and
//! which inbound topics are commands.
//!
//! Pure (no SQL, no sockets) and below both the store, which writes each message into its outbox
//! in the same transaction as the record it reports, and the uplink, which carries the messages
//! and takes commands in. One place decides the protocol, so the two can never disagree; the
//! store keeps only SQL.

pub mod fhir;

use crate::events::{Event, FridgeRecord};
use serde_json::Value;

/// Outbox priority: lower drains first, so a new alarm overtakes a backlog of telemetry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Priority {
    /// Alarms, and answers to commands (someone is waiting).
    Alarm = 0,
    /// Dose outcomes, faults, other events.
    Event = 1,
    /// Periodic readings.
    Telemetry = 2,
}

/// A device's topic: everything is under `medbox/<device-id>/`.
pub fn topic(dev: &str, suffix: &str) -> String {
    format!("medbox/{dev}/{suffix}")
}

/// The retained `online` / `offline` (Last Will) topic.
pub const STATUS: &str = "status";

/// The inbound topic (under `medbox/<device-id>/`) where monitors and gateways publish
/// readings.
pub const VITALS_IN: &str = "vitals/in";

/// An audit row as it goes upstream.
#[derive(Clone, Copy, Debug)]
pub struct EventRow<'a> {
    /// Sequence number in the chain.
    pub seq: i64,
    /// UTC, as recorded.
    pub utc: &'a str,
    /// Monotonic milliseconds since boot, as recorded.
    pub mono_ms: i64,
    /// The boot the row was recorded in.
    pub boot_id: &'a str,
    /// Kind (`dose.dispensed`, …).
    pub kind: &'a str,
    /// Subject.
    pub subject: &'a str,
    /// Actor.
    pub actor: &'a str,
    /// Reason code.
    pub reason: &'a str,
    /// Whether the clock was trusted.
    pub clock_trusted: bool,
    /// The body (JSON text).
    pub body: &'a str,
    /// The previous row's hash.
    pub prev_hash: &'a str,
    /// This row's hash.
    pub hash: &'a str,
    /// Whether the chain is keyed (HMAC): a witness without the secret can then check links
    /// and checkpoints but not recompute a hash.
    pub keyed: bool,
}

impl<'a> EventRow<'a> {
    /// A stored audit row as it is sent; `keyed` says how its chain links.
    pub fn of(row: &'a crate::store::audit::Row, keyed: bool) -> Self {
        Self {
            seq: row.seq,
            utc: &row.utc,
            mono_ms: row.mono_ms,
            boot_id: &row.boot_id,
            kind: &row.kind,
            subject: &row.subject,
            actor: &row.actor,
            reason: &row.reason,
            clock_trusted: row.clock_trusted,
            body: &row.body,
            prev_hash: &row.prev_hash,
            hash: &row.hash,
            keyed,
        }
    }
}

/// The topic suffix and priority of an audit kind (`events/<kind>`, `vitals`, `adherence`).
pub fn route(kind: &str) -> (Priority, String) {
    let k = match kind {
        k if k.starts_with("coldchain.alarm") => return (Priority::Alarm, "events/alarm".into()),
        "audit.integrity" => return (Priority::Alarm, "events/alarm".into()),
        k if k.starts_with("coldchain.excursion") => "excursion",
        "coldchain.probe_fault"
        | "coldchain.probe_doubt"
        | "device.fault"
        | "dispenser.stray_drop" => "fault",
        "coldchain.day" => "coldchain_day",
        k if k.starts_with("dose.") => "dose",
        k if k.starts_with("vitals.") => return (Priority::Event, "vitals".into()),
        k if k.starts_with("adherence.") => return (Priority::Event, "adherence".into()),
        k => k.split('.').next().unwrap_or("system"),
    };
    (Priority::Event, format!("events/{k}"))
}

/// Where a recorded event goes: an answer to a command on the topic the command came on (so
/// only who may send it reads the answer), anything else by its kind.
pub fn route_event(e: &Event, kind: &str) -> (Priority, String) {
    match e {
        Event::CommandResult {
            command,
            role: Some(role),
            ..
        } => (Priority::Alarm, format!("cmd/{role}/{command}/result")),
        Event::CommandResult { command, .. } => (Priority::Alarm, format!("cmd/{command}/result")),
        _ => route(kind),
    }
}

/// Where a stored audit row of `kind` with `body` (the event as recorded) went when it was
/// first sent: as [`route_event`] routed the event, read back from the row.
pub fn route_row(kind: &str, body: &Value) -> (Priority, String) {
    match (kind, body["command"].as_str()) {
        ("command.result", Some(command)) => match body["role"].as_str() {
            Some(role) => (Priority::Alarm, format!("cmd/{role}/{command}/result")),
            None => (Priority::Alarm, format!("cmd/{command}/result")),
        },
        _ => route(kind),
    }
}

/// `chain` of a row linked with plain SHA-256 (anyone can recompute its hash).
pub const CHAIN_PLAIN: &str = "sha256";
/// `chain` of a row linked with HMAC-SHA-256 (only the secret's holder can).
pub const CHAIN_KEYED: &str = "hmac-sha256";

/// An audit row as a `medbox.event.v1` message; its id (`<device>:<seq>`) lets receivers drop
/// a message delivered twice.
pub fn event_message(dev: &str, row: &EventRow<'_>) -> Result<Value, serde_json::Error> {
    Ok(serde_json::json!({
        "schema": "medbox.event.v1",
        "id": format!("{dev}:{}", row.seq),
        "seq": row.seq,
        "utc": row.utc,
        "kind": row.kind,
        "subject": row.subject,
        "actor": row.actor,
        "reason": row.reason,
        "clock_trusted": row.clock_trusted,
        "body": serde_json::from_str::<Value>(row.body)?,
        // With these three a witness recomputes the row's hash itself (the canonical row has
        // the body's exact text, which a JSON receiver would not keep) and an archive can
        // rebuild the appliance's own report.
        "mono_ms": row.mono_ms,
        "boot_id": row.boot_id,
        "body_text": row.body,
        // A witness off the device checks that the rows it receives link up and that the
        // signed checkpoints name them; a row rewritten under a seq it already holds is a fork.
        "prev_hash": row.prev_hash,
        "hash": row.hash,
        // How `hash` was made from `prev_hash` and the canonical row, so a witness knows
        // whether it can recompute it (`sha256`) or must leave that to the secret's holder.
        "chain": if row.keyed { CHAIN_KEYED } else { CHAIN_PLAIN },
    }))
}

/// A fridge reading as a `medbox.telemetry.v1` message (id `<device>:r<row>`), on
/// `telemetry/fridge`.
pub fn telemetry_message(dev: &str, rowid: i64, utc: &str, r: &FridgeRecord) -> Value {
    serde_json::json!({
        "schema": "medbox.telemetry.v1",
        "id": format!("{dev}:r{rowid}"),
        "utc": utc,
        "vial_c": r.vial,
        "air_c": r.air,
        "product_c": r.control,
        "doubt": r.doubt.map(|d| d.code()),
        "compressor_on": r.compressor_on,
        "door_open": r.door_open,
        "mains": r.mains,
        "mode": code(&r.mode),
    })
}

/// Where telemetry goes.
pub const TELEMETRY: &str = "telemetry/fridge";

/// A signed checkpoint as a `medbox.checkpoint.v1` message (id `<device>:c<seq>`), on
/// `audit/checkpoint`.
pub fn checkpoint_message(dev: &str, seq: i64, checkpoint: &impl serde::Serialize) -> Value {
    serde_json::json!({
        "schema": "medbox.checkpoint.v1",
        "id": format!("{dev}:c{seq}"),
        "checkpoint": checkpoint,
    })
}

/// Where checkpoints go.
pub const CHECKPOINT: &str = "audit/checkpoint";

/// The FHIR rendering of an event recorded as audit row `seq` of `device`, if it has one:
/// (resource type, resource), on `fhir/<resource type>`. A dose's records all render the same
/// resource id, so a receiver keeps one resource per dose at its latest status.
///
/// `partner` is the other half of a blood-pressure measurement, when the store has it.
pub fn fhir_resource(
    e: &Event,
    device: &str,
    seq: i64,
    partner: Option<&crate::dosing::engine::VitalReading>,
) -> Option<(&'static str, Value)> {
    let event = format!("{device}:{seq}");
    match e {
        Event::Dose {
            patient,
            record,
            reason,
            detail,
            ..
        } => fhir::medication_administration(
            &fhir::dose_id(device, patient, record),
            &event,
            patient,
            record,
            reason.as_deref(),
            detail,
        )
        .map(|r| ("MedicationAdministration", r)),
        // Released and never picked up: the dose's resource becomes `unknown`.
        Event::DoseAlert {
            patient,
            reason,
            detail,
            released: Some(record),
            ..
        } if reason == crate::dosing::escalation::Step::NotTaken.code() => {
            fhir::medication_administration(
                &fhir::dose_id(device, patient, record),
                &event,
                patient,
                &crate::dosing::engine::DoseRecord {
                    outcome: crate::dosing::engine::Outcome::Missed,
                    ..record.clone()
                },
                Some(reason),
                detail,
            )
            .map(|r| ("MedicationAdministration", r))
        }
        Event::Vital { reading, .. } => Some((
            "Observation",
            fhir::observation(
                &fhir::reading_id(device, seq, reading),
                &event,
                reading.patient.as_deref(),
                reading,
                partner,
            ),
        )),
        _ => None,
    }
}

/// A serde enum's code (`"cooling"` for `Mode::Cooling`).
fn code<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_value(v)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

/// An inbound message the appliance takes as a command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Inbound {
    /// `cmd/<role>/<name>`: the role is the topic's, granted by the broker per identity.
    Command {
        /// The role segment, as received.
        role: String,
        /// The command's name.
        name: String,
    },
    /// A reading on `vitals/in`.
    Reading,
}

/// What a message on `topic` is for device `dev`: a command, a reading, or nothing it takes.
pub fn inbound(dev: &str, topic: &str) -> Option<Inbound> {
    let rest = topic.strip_prefix(&format!("medbox/{dev}/"))?;
    if rest == VITALS_IN {
        return Some(Inbound::Reading);
    }
    let (role, name) = rest.strip_prefix("cmd/")?.split_once('/')?;
    if role.is_empty() || name.is_empty() || name.contains('/') {
        return None;
    }
    Some(Inbound::Command {
        role: role.into(),
        name: name.into(),
    })
}

/// The subscriptions that bring a device its commands and readings.
pub fn subscriptions(dev: &str) -> [String; 2] {
    [topic(dev, "cmd/+/+"), topic(dev, VITALS_IN)]
}

/// The answer to a command the appliance could not take in because its queue was full: on the
/// command's own result topic, in the shape of a recorded result but with no sequence number
/// (nothing was recorded: the appliance never held the command).
pub fn busy_answer(dev: &str, role: &str, name: &str, payload: &[u8]) -> (String, Vec<u8>) {
    let sent: Value = serde_json::from_slice(payload).unwrap_or_default();
    let detail = "BUSY: the appliance's command queue is full; nothing done, send it again";
    let answer = serde_json::json!({
        "schema": "medbox.event.v1",
        "kind": "command.result",
        "subject": format!("command:{name}"),
        "actor": sent.get("actor"),
        "reason": detail,
        "body": {
            "kind": "command_result",
            "command": name,
            "role": role,
            "id": sent.get("id"),
            "ok": false,
            "detail": detail,
            "duplicate": false,
        },
    });
    (
        topic(dev, &format!("cmd/{role}/{name}/result")),
        answer.to_string().into_bytes(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stored_row_is_routed_again_where_its_event_first_went() {
        let at: chrono::DateTime<chrono::Utc> = "2026-03-02T08:00:00Z".parse().unwrap();
        let answer = |role: Option<&str>| Event::CommandResult {
            at,
            command: "refill".into(),
            role: role.map(str::to_string),
            id: Some("c-1".into()),
            actor: Some("pete".into()),
            ok: true,
            detail: "done".into(),
            duplicate: false,
            digest: None,
        };
        for (e, kind) in [
            (answer(Some("pharmacist")), "command.result"),
            (answer(None), "command.result"),
            (Event::Started { at }, "system.start"),
        ] {
            let body = serde_json::to_value(&e).unwrap();
            assert_eq!(route_row(kind, &body), route_event(&e, kind), "{kind}");
        }
        assert_eq!(
            route_row("coldchain.alarm_raised", &serde_json::json!({})),
            route("coldchain.alarm_raised")
        );
    }

    #[test]
    fn a_command_is_taken_only_from_cmd_role_name_and_keeps_the_topics_role() {
        assert_eq!(
            inbound("mb-1", "medbox/mb-1/cmd/nurse/refill"),
            Some(Inbound::Command {
                role: "nurse".into(),
                name: "refill".into()
            })
        );
        for not_a_command in [
            "medbox/mb-1/cmd/refill",
            "medbox/mb-1/cmd/nurse/refill/result",
            "medbox/mb-1/cmd//refill",
            "medbox/mb-2/cmd/nurse/refill",
            "medbox/mb-1/events/alarm",
        ] {
            assert_eq!(inbound("mb-1", not_a_command), None, "{not_a_command}");
        }
        assert_eq!(
            inbound("mb-1", "medbox/mb-1/vitals/in"),
            Some(Inbound::Reading)
        );
    }

    #[test]
    fn alarms_and_answers_overtake_events_which_overtake_telemetry() {
        assert_eq!(
            route("coldchain.alarm_raised"),
            (Priority::Alarm, "events/alarm".into())
        );
        assert_eq!(
            route("audit.integrity"),
            (Priority::Alarm, "events/alarm".into())
        );
        assert_eq!(
            route("dose.dispensed"),
            (Priority::Event, "events/dose".into())
        );
        assert_eq!(
            route("config.change"),
            (Priority::Event, "events/config".into())
        );
        assert_eq!(route("vitals.reading"), (Priority::Event, "vitals".into()));
        let answer = Event::CommandResult {
            at: chrono::Utc::now(),
            command: "refill".into(),
            role: Some("pharmacist".into()),
            id: None,
            actor: None,
            ok: true,
            detail: String::new(),
            duplicate: false,
            digest: None,
        };
        assert_eq!(
            route_event(&answer, "command.result"),
            (Priority::Alarm, "cmd/pharmacist/refill/result".into())
        );
        assert!(Priority::Alarm < Priority::Event && Priority::Event < Priority::Telemetry);
    }

    #[test]
    fn every_message_carries_an_id_a_receiver_can_deduplicate_by() {
        let row = EventRow {
            seq: 42,
            utc: "2026-03-02T08:00:00.000Z",
            mono_ms: 5,
            boot_id: "b1",
            kind: "dose.dispensed",
            subject: "patient:p-1/medication:M",
            actor: "system:dispenser",
            reason: "",
            clock_trusted: true,
            body: r#"{"kind":"dose"}"#,
            prev_hash: "aa",
            hash: "bb",
            keyed: false,
        };
        let m = event_message("mb-1", &row).unwrap_or_default();
        assert_eq!(m["id"], "mb-1:42");
        assert_eq!((&m["prev_hash"], &m["hash"]), (&"aa".into(), &"bb".into()));
        assert_eq!(m["body"]["kind"], "dose");
        assert_eq!(
            m["body_text"], r#"{"kind":"dose"}"#,
            "the body's exact text"
        );
        assert_eq!((&m["mono_ms"], &m["boot_id"]), (&5.into(), &"b1".into()));
        assert_eq!(m["chain"], CHAIN_PLAIN);
        assert_eq!(checkpoint_message("mb-1", 7, &"c")["id"], "mb-1:c7");
        let (t, p) = busy_answer("mb-1", "nurse", "refill", br#"{"id":"x","actor":"n"}"#);
        assert_eq!(t, "medbox/mb-1/cmd/nurse/refill/result");
        let v: Value = serde_json::from_slice(&p).unwrap_or_default();
        assert_eq!(v["body"]["id"], "x");
    }
}
