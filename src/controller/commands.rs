//! Commands from outside (MQTT `cmd/<role>/<name>`): validated, authorised by role, de-duplicated
//! by id, dispatched to the task that owns the affected device, and always answered with a result
//! event (published on `cmd/<role>/<name>/result`). A bad command changes nothing.
//!
//! The role is the topic's: the broker's ACL grants each identity the command topics of its own
//! role, so a sender cannot claim another by writing it into the payload.
//!
//! Payload: `{"id": "...", "actor": "...", "args": {...}}` (an optional `"role"` must agree with
//! the topic's).

use super::{DispenserCommand, FridgeCommand};
use crate::clock::Clock;
use crate::coldchain::monitor::AlarmKind;
use crate::dosing::dispenser::Command;
use crate::dosing::engine::{PrnRequest, Role};
use crate::events::Event;
use crate::refusal::{refuse, Answer, Refusal, RefusalCode};
use serde::Deserialize;
use std::collections::HashMap;
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot, watch};

/// Largest accepted payload.
pub const MAX_PAYLOAD: usize = 16 * 1024;

/// A command as it arrived.
#[derive(Debug)]
pub struct Inbound {
    /// `<name>` from `cmd/<role>/<name>` (or [`VITALS_IN`]).
    pub name: String,
    /// `<role>` from `cmd/<role>/<name>`, as received; None for a local source (a scenario),
    /// whose payload names the role.
    pub role: Option<String>,
    /// Raw payload.
    pub payload: Vec<u8>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Envelope {
    id: String,
    actor: String,
    #[serde(default)]
    role: Option<Role>,
    #[serde(default)]
    args: serde_json::Value,
}

/// The role a command is sent in: the topic's, which the broker grants per identity. A role in
/// the payload must agree with it; only a local source (no topic) names its role in the payload.
fn sent_as(topic: Option<&str>, claimed: Option<Role>) -> Result<Role, Refusal> {
    let Some(topic) = topic else {
        return claimed.ok_or_else(|| Refusal::new(RefusalCode::Malformed, "`role` is missing"));
    };
    let role: Role = serde_json::from_value(serde_json::Value::String(topic.to_string()))
        .map_err(|_| {
            Refusal::new(
                RefusalCode::RoleNotAllowed,
                format!("{topic:?} is not a role (patient, caregiver, nurse, clinician, pharmacist, device)"),
            )
        })?;
    match claimed {
        Some(c) if c != role => refuse(
            RefusalCode::Malformed,
            format!("the payload says {c:?} but the command came on the {topic} topic"),
        ),
        _ => Ok(role),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AckArgs {
    alarm: String,
    comment: String,
    /// For stock alarms (`LOW_STOCK`, `EXPIRES_SOON`, `EXPIRED`): which slot.
    #[serde(default)]
    slot: Option<u8>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RefillArgs {
    slot: u8,
    units: u32,
    #[serde(default)]
    expiry: Option<chrono::NaiveDate>,
    #[serde(default)]
    note: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReplaceArgs {
    patient: String,
    /// The schedule file's TOML text.
    schedule: String,
    /// The version a second person confirms.
    #[serde(default)]
    confirm: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReportArgs {
    /// Days back from now.
    #[serde(default = "one_week")]
    days: u32,
}

fn one_week() -> u32 {
    7
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ResendArgs {
    /// First audit sequence number.
    from: i64,
    /// Last (inclusive).
    to: i64,
}

/// Most audit rows one `resend_audit` queues: a gap larger than this is asked for in parts, so
/// one command never floods the outbox ahead of what the appliance records next.
pub const MAX_RESEND: i64 = 10_000;

/// Command names this router knows.
const COMMANDS: &[&str] = &[
    "acknowledge_alarm",
    "skip_dose",
    "reconcile_dose",
    "request_prn",
    "refill",
    "replace_schedule",
    "record_vital",
    "request_report",
    "resend_audit",
    "trust_clock",
];

/// The inbound topic (under `medbox/<device-id>/`) where monitors and gateways publish
/// readings: `{"id": …, "source": …, "vital": …, "value" | "sfloat": …, "at"?, "quality"?}`.
pub const VITALS_IN: &str = crate::wire::VITALS_IN;

/// The alarm of a broken audit chain, acknowledged by a pharmacist at the dispenser.
const INTEGRITY: &str = "INTEGRITY";

/// Stock alarm codes, acknowledged per slot at the dispenser.
const STOCK_ALARMS: &[&str] = &["LOW_STOCK", "EXPIRES_SOON", "EXPIRED"];

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SkipArgs {
    patient: String,
    medication: String,
    occurrence: chrono::DateTime<chrono::Utc>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReconcileArgs {
    patient: String,
    medication: String,
    /// Absent for an as-needed dose.
    #[serde(default)]
    occurrence: Option<chrono::DateTime<chrono::Utc>>,
    given: bool,
    #[serde(default)]
    units: Option<u32>,
    /// What the caregiver found (required: it is the pharmacist's only account of it).
    note: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TrustClockArgs {
    /// What the person checked the clock against (required: it is the audit's only account).
    comment: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PrnArgs {
    patient: String,
    medication: String,
    #[serde(default)]
    override_reason: Option<String>,
}

/// A reading published on [`VITALS_IN`] as the command envelope the router checks: the
/// device that sent it is the actor, with the `device` role. Anything unreadable is passed on
/// as it is, to be refused as malformed.
fn device_envelope(payload: &[u8]) -> Vec<u8> {
    let Ok(serde_json::Value::Object(mut m)) = serde_json::from_slice(payload) else {
        return payload.to_vec();
    };
    let id = m.remove("id").unwrap_or_default();
    let actor = m.get("source").cloned().unwrap_or_default();
    serde_json::json!({"id": id, "actor": actor, "args": m})
        .to_string()
        .into_bytes()
}

/// A command's `args` as `T`, or a MALFORMED refusal naming what is wrong.
fn parse_args<T: serde::de::DeserializeOwned>(args: &serde_json::Value) -> Result<T, Refusal> {
    serde_json::from_value(args.clone())
        .map_err(|e| Refusal::new(RefusalCode::Malformed, format!("args: {e}")))
}

fn is_stock_alarm(args: &serde_json::Value) -> bool {
    args.get("alarm")
        .and_then(|a| a.as_str())
        .is_some_and(|a| STOCK_ALARMS.contains(&a))
}

/// Which roles may send which command (None: no such command). Public so that a front end
/// (the fleet portal) offers a person only what the appliance will take from their role.
pub fn roles(command: &str) -> Option<&'static [Role]> {
    use Role::*;
    Some(match command {
        "acknowledge_alarm" => &[Caregiver, Nurse, Clinician, Pharmacist],
        "skip_dose" => &[Caregiver, Nurse, Clinician],
        // Someone at the patient's side says whether the dose was had.
        "reconcile_dose" => &[Caregiver, Nurse, Clinician],
        "request_prn" => &[Patient, Caregiver, Nurse, Clinician],
        "refill" => &[Caregiver, Nurse, Pharmacist],
        "replace_schedule" => &[Caregiver, Nurse, Clinician, Pharmacist],
        "record_vital" => &[Patient, Caregiver, Nurse, Clinician, Device],
        "request_report" => &[Caregiver, Nurse, Clinician, Pharmacist],
        // Whoever audits asks for what an archive lost on the way.
        "resend_audit" => &[Pharmacist],
        // A person who has checked the clock against a trusted one unlocks dosing.
        "trust_clock" => &[Caregiver, Nurse, Clinician, Pharmacist],
        _ => return None,
    })
}

/// A command from outside, parsed and authorised: which task carries it out, and what it asks.
#[derive(Debug)]
enum Routed {
    /// A cold-chain alarm to acknowledge.
    Fridge { alarm: AlarmKind, comment: String },
    /// Anything the dispenser does.
    Dispenser(Command),
    /// Audit rows to publish again (the recorder does it).
    Resend { from: i64, to: i64 },
}

/// Parses `{name, args}` into what it asks, after checking the sender's role may ask it. Pure,
/// so every refusal before anything runs is tested without a task.
fn parse(
    name: &str,
    role: Role,
    env: &Envelope,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<Routed, Refusal> {
    let Some(allowed) = roles(name) else {
        return refuse(
            RefusalCode::UnknownCommand,
            format!("{name:?} ({})", COMMANDS.join(", ")),
        );
    };
    if env.actor.trim().is_empty() || env.id.trim().is_empty() {
        return refuse(RefusalCode::Malformed, "`id` and `actor` must not be empty");
    }
    if !allowed.contains(&role) {
        return refuse(
            RefusalCode::RoleNotAllowed,
            format!("a {role:?} may not {name}"),
        );
    }
    let actor = env.actor.clone();
    let command = match name {
        "acknowledge_alarm" if is_stock_alarm(&env.args) => {
            let a: AckArgs = parse_args(&env.args)?;
            let slot = a.slot.ok_or_else(|| {
                Refusal::new(RefusalCode::Malformed, format!("{} needs `slot`", a.alarm))
            })?;
            Command::AcknowledgeStock {
                slot,
                actor,
                comment: a.comment,
            }
        }
        "acknowledge_alarm"
            if env.args.get("alarm").and_then(|a| a.as_str()) == Some(INTEGRITY) =>
        {
            // Whether the dose history may still be trusted is a pharmacist's call.
            if role != Role::Pharmacist {
                return refuse(
                    RefusalCode::RoleNotAllowed,
                    format!("only a pharmacist may acknowledge {INTEGRITY}"),
                );
            }
            let a: AckArgs = parse_args(&env.args)?;
            Command::AcknowledgeIntegrity {
                actor,
                comment: a.comment,
            }
        }
        "acknowledge_alarm" => {
            let a: AckArgs = parse_args(&env.args)?;
            let alarm = AlarmKind::from_code(&a.alarm).ok_or_else(|| {
                Refusal::new(
                    RefusalCode::Malformed,
                    format!("{:?} is not an alarm code", a.alarm),
                )
            })?;
            return Ok(Routed::Fridge {
                alarm,
                comment: a.comment,
            });
        }
        "refill" => {
            let a: RefillArgs = parse_args(&env.args)?;
            Command::Refill {
                slot: a.slot,
                added: a.units,
                expiry: a.expiry,
                actor,
                note: a.note,
            }
        }
        "request_report" => {
            let a: ReportArgs = parse_args(&env.args)?;
            if !(1..=90).contains(&a.days) {
                return refuse(RefusalCode::Malformed, "`days` must be 1–90");
            }
            Command::Report {
                days: a.days,
                actor,
            }
        }
        "record_vital" => {
            let raw: crate::dosing::vitals::RawVital = parse_args(&env.args)?;
            let reading = crate::dosing::vitals::validate(&raw, now)
                .map_err(|e| Refusal::new(RefusalCode::InvalidReading, e.to_string()))?;
            Command::Vital(reading)
        }
        "replace_schedule" => {
            let a: ReplaceArgs = parse_args(&env.args)?;
            Command::ReplaceSchedule {
                patient: a.patient,
                source: a.schedule,
                actor,
                confirm: a.confirm,
            }
        }
        "reconcile_dose" => {
            let a: ReconcileArgs = parse_args(&env.args)?;
            if a.note.trim().is_empty() {
                return refuse(RefusalCode::Malformed, "`note` must say what was found");
            }
            Command::Reconcile {
                patient: a.patient,
                medication: a.medication,
                occurrence: a.occurrence,
                given: a.given,
                units: a.units,
                actor,
                note: a.note,
            }
        }
        "resend_audit" => {
            let a: ResendArgs = parse_args(&env.args)?;
            if a.from < 1 || a.to < a.from || a.to - a.from >= MAX_RESEND {
                return refuse(
                    RefusalCode::Malformed,
                    format!("`from` and `to` must be 1 <= from <= to < from + {MAX_RESEND}"),
                );
            }
            return Ok(Routed::Resend {
                from: a.from,
                to: a.to,
            });
        }
        "trust_clock" => {
            let a: TrustClockArgs = parse_args(&env.args)?;
            if a.comment.trim().is_empty() {
                return refuse(
                    RefusalCode::Malformed,
                    "`comment` must say what the clock was checked against",
                );
            }
            Command::TrustClock {
                actor,
                comment: a.comment,
            }
        }
        "skip_dose" => {
            let a: SkipArgs = parse_args(&env.args)?;
            Command::Skip {
                patient: a.patient,
                medication: a.medication,
                occurrence: a.occurrence,
                actor,
            }
        }
        _ => {
            let a: PrnArgs = parse_args(&env.args)?;
            Command::Prn {
                patient: a.patient,
                medication: a.medication,
                request: PrnRequest {
                    actor,
                    role,
                    override_reason: a.override_reason,
                },
            }
        }
    };
    Ok(Routed::Dispenser(command))
}

/// A command already answered: its id, what it was, and the answer it got.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Answered {
    /// The command's id.
    pub id: String,
    /// The command's name.
    pub command: String,
    /// SHA-256 of what it asked (None: recorded before digests were kept).
    pub digest: Option<String>,
    /// Done or refused.
    pub ok: bool,
    /// The answer's detail.
    pub detail: String,
}

/// Most command ids remembered in memory (the store keeps [`crate::store::commands::RETENTION`]).
pub const REMEMBERED: usize = 50_000;

/// SHA-256 (hex) of what a command asks: its name, actor, role and arguments, in canonical JSON
/// (object keys sorted), so a redelivery of the same command matches and a reused id does not.
fn digest(name: &str, role: Role, env: &Envelope) -> String {
    let canonical = serde_json::json!({
        "name": name,
        "actor": env.actor,
        "role": role,
        "args": env.args,
    })
    .to_string();
    let d = ring::digest::digest(&ring::digest::SHA256, canonical.as_bytes());
    d.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// Where a command came in, and so where its answer goes (`cmd/<role>/<name>/result`).
struct Topic {
    name: String,
    role: Option<String>,
}

/// The command router's state.
pub(super) struct Router {
    clock: Arc<dyn Clock>,
    fridge: mpsc::Sender<FridgeCommand>,
    dispenser: mpsc::Sender<DispenserCommand>,
    events: mpsc::Sender<Event>,
    answered: HashMap<String, Answered>,
    /// Ids in the order they were answered, to forget the oldest first.
    order: std::collections::VecDeque<String>,
    /// Audit rows `resend_audit` may still queue.
    resend: super::resend_budget::ResendBudget,
}

impl Router {
    pub(super) fn new(
        clock: Arc<dyn Clock>,
        fridge: mpsc::Sender<FridgeCommand>,
        dispenser: mpsc::Sender<DispenserCommand>,
        events: mpsc::Sender<Event>,
        answered: Vec<Answered>,
    ) -> Self {
        let resend = super::resend_budget::ResendBudget::new(clock.monotonic());
        let mut router = Self {
            resend,
            clock,
            fridge,
            dispenser,
            events,
            answered: HashMap::new(),
            order: Default::default(),
        };
        for a in answered {
            router.remember(a);
        }
        router
    }

    fn remember(&mut self, a: Answered) {
        self.order.push_back(a.id.clone());
        self.answered.insert(a.id.clone(), a);
        while self.order.len() > REMEMBERED {
            if let Some(old) = self.order.pop_front() {
                self.answered.remove(&old);
            }
        }
    }

    pub(super) async fn run(
        mut self,
        mut inbound: mpsc::Receiver<Inbound>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        loop {
            tokio::select! {
                biased;
                _ = shutdown.changed() => break,
                cmd = inbound.recv() => match cmd {
                    Some(c) => self.handle(c).await,
                    None => break,
                },
            }
        }
    }

    async fn answer(
        &self,
        to: &Topic,
        id: Option<String>,
        actor: Option<String>,
        result: Answer,
        (duplicate, digest): (bool, Option<String>),
    ) {
        self.publish(
            to,
            id,
            actor,
            result.map_err(|r| r.to_string()),
            (duplicate, digest),
        )
        .await
    }

    /// Publishes an answer as it goes on the wire: the detail, or `CODE: detail`.
    async fn publish(
        &self,
        to: &Topic,
        id: Option<String>,
        actor: Option<String>,
        result: Result<String, String>,
        (duplicate, digest): (bool, Option<String>),
    ) {
        let (ok, detail) = match result {
            Ok(d) => (true, d),
            Err(r) => (false, r),
        };
        super::emit(
            &self.events,
            Event::CommandResult {
                at: self.clock.now(),
                command: to.name.clone(),
                role: to.role.clone(),
                id,
                actor,
                ok,
                detail,
                duplicate,
                digest,
            },
        )
        .await;
    }

    async fn handle(&mut self, c: Inbound) {
        // Readings from a gateway come as the `device` role, answered under it.
        let to = if c.name == VITALS_IN {
            Topic {
                name: "record_vital".into(),
                role: Some("device".into()),
            }
        } else {
            Topic {
                name: c.name.clone(),
                role: c.role.clone(),
            }
        };
        if c.payload.len() > MAX_PAYLOAD {
            let too_large = refuse(
                RefusalCode::PayloadTooLarge,
                format!("{} bytes (at most {MAX_PAYLOAD})", c.payload.len()),
            );
            return self.answer(&to, None, None, too_large, (false, None)).await;
        }
        let payload = if c.name == VITALS_IN {
            device_envelope(&c.payload)
        } else {
            c.payload
        };
        let env: Envelope = match serde_json::from_slice(&payload) {
            Ok(e) => e,
            Err(e) => {
                let malformed = refuse(RefusalCode::Malformed, e.to_string());
                return self.answer(&to, None, None, malformed, (false, None)).await;
            }
        };
        let role = match sent_as(to.role.as_deref(), env.role) {
            Ok(r) => r,
            Err(r) => {
                let (id, actor) = (Some(env.id), Some(env.actor));
                return self.answer(&to, id, actor, Err(r), (false, None)).await;
            }
        };
        let name = to.name.clone();
        let digest = digest(&name, role, &env);
        if let Some(seen) = self.answered.get(&env.id).cloned() {
            // Answered on the topic of the command that carried the id, whatever it was.
            let result = match &seen.digest {
                Some(d) if *d != digest => Err(Refusal::new(
                    RefusalCode::IdReused,
                    format!(
                        "id {:?} was already used for another {} command; nothing done \
                         (every command needs its own id)",
                        env.id, seen.command
                    ),
                )
                .to_string()),
                _ if seen.ok => Ok(seen.detail),
                // Replayed word for word as it was first answered (its code included).
                _ => Err(seen.detail),
            };
            let (id, actor) = (Some(env.id), Some(env.actor));
            return self
                .publish(&to, id, actor, result, (true, Some(digest)))
                .await;
        }
        let result = self.execute(&name, role, &env).await;
        let (ok, detail) = match &result {
            Ok(d) => (true, d.clone()),
            Err(r) => (false, r.to_string()),
        };
        self.remember(Answered {
            id: env.id.clone(),
            command: name.clone(),
            digest: Some(digest.clone()),
            ok,
            detail,
        });
        let (id, actor) = (Some(env.id), Some(env.actor));
        self.answer(&to, id, actor, result, (false, Some(digest)))
            .await;
    }

    async fn execute(&mut self, name: &str, role: Role, env: &Envelope) -> Answer {
        let (tx, rx) = oneshot::channel();
        match parse(name, role, env, self.clock.now())? {
            Routed::Fridge { alarm, comment } => self
                .fridge
                .send(FridgeCommand::AcknowledgeAlarm {
                    alarm,
                    actor: env.actor.clone(),
                    comment,
                    reply: Some(tx),
                })
                .await
                .map_err(|_| {
                    Refusal::new(RefusalCode::Unavailable, "the fridge task is stopping")
                })?,
            Routed::Dispenser(command) => self
                .dispenser
                .send(DispenserCommand::ask(command, tx))
                .await
                .map_err(|_| {
                    Refusal::new(RefusalCode::Unavailable, "the dispenser task is stopping")
                })?,
            Routed::Resend { from, to } => {
                if let Err(wait) = self.resend.take(to - from + 1, self.clock.monotonic()) {
                    return refuse(
                        RefusalCode::Busy,
                        format!(
                            "{} rows asked for, {} may be sent again now (at most {} an hour); \
                             ask again in {} min",
                            to - from + 1,
                            self.resend.left(),
                            super::resend_budget::ROWS_PER_HOUR,
                            wait.as_secs().div_ceil(60)
                        ),
                    );
                }
                let at = self.clock.now();
                let actor = env.actor.clone();
                self.events
                    .send(Event::AuditResend {
                        at,
                        actor,
                        from,
                        to,
                    })
                    .await
                    .map_err(|_| {
                        Refusal::new(RefusalCode::Unavailable, "the recorder is stopping")
                    })?;
                return Ok(format!(
                    "audit rows {from}-{to} (those that exist) are queued to be published again, \
                     with the checkpoints among them"
                ));
            }
        }
        rx.await
            .unwrap_or_else(|_| refuse(RefusalCode::Unavailable, "no answer"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(role: Role, args: serde_json::Value) -> (Role, Envelope) {
        let e = Envelope {
            id: "c-1".into(),
            actor: "someone".into(),
            role: None,
            args,
        };
        (role, e)
    }

    #[tokio::test]
    async fn resends_under_fresh_ids_are_held_to_the_hourly_budget_and_the_refusal_says_when() {
        let clock = Arc::new(crate::clock::SimClock::new(chrono::Utc::now(), 1.0));
        // Only `advance` moves it.
        let _frozen = clock.hold();
        let (fridge, _f) = mpsc::channel(1);
        let (dispenser, _d) = mpsc::channel(1);
        let (events, mut queued) = mpsc::channel(8);
        let mut router = Router::new(clock.clone(), fridge, dispenser, events, Vec::new());
        let ask = |id: &str| Envelope {
            id: id.into(),
            actor: "pharmacist:rx".into(),
            role: None,
            args: serde_json::json!({ "from": 1, "to": MAX_RESEND }),
        };
        for id in ["r-1", "r-2"] {
            let a = router
                .execute("resend_audit", Role::Pharmacist, &ask(id))
                .await;
            assert!(a.is_ok(), "{a:?}");
            assert!(matches!(queued.try_recv(), Ok(Event::AuditResend { .. })));
        }
        let refused = router
            .execute("resend_audit", Role::Pharmacist, &ask("r-3"))
            .await
            .expect_err("over the budget");
        assert_eq!(refused.code, RefusalCode::Busy);
        assert!(
            refused.to_string().contains("ask again in 30 min"),
            "{refused}"
        );
        assert!(queued.try_recv().is_err(), "nothing queued");
        clock.advance(std::time::Duration::from_secs(30 * 60));
        let a = router
            .execute("resend_audit", Role::Pharmacist, &ask("r-4"))
            .await;
        assert!(a.is_ok(), "refilled: {a:?}");
    }

    fn code(name: &str, (role, e): &(Role, Envelope)) -> Option<RefusalCode> {
        parse(name, *role, e, chrono::Utc::now())
            .err()
            .map(|r| r.code)
    }

    const ROLES: [Role; 6] = [
        Role::Patient,
        Role::Caregiver,
        Role::Nurse,
        Role::Clinician,
        Role::Pharmacist,
        Role::Device,
    ];

    #[test]
    fn every_command_is_refused_to_a_role_that_may_not_send_it_before_its_arguments_are_read() {
        for name in COMMANDS {
            let allowed = roles(name).unwrap_or_else(|| panic!("{name} has no roles"));
            for role in ROLES {
                let got = code(name, &env(role, serde_json::json!({})));
                if allowed.contains(&role) {
                    assert_ne!(got, Some(RefusalCode::RoleNotAllowed), "{name} {role:?}");
                } else {
                    assert_eq!(got, Some(RefusalCode::RoleNotAllowed), "{name} {role:?}");
                }
            }
        }
    }

    #[test]
    fn the_role_is_the_topics_and_a_payload_cannot_claim_another() {
        assert_eq!(sent_as(Some("nurse"), None), Ok(Role::Nurse));
        assert_eq!(sent_as(Some("nurse"), Some(Role::Nurse)), Ok(Role::Nurse));
        let claimed = sent_as(Some("caregiver"), Some(Role::Pharmacist));
        assert_eq!(claimed.map_err(|r| r.code), Err(RefusalCode::Malformed));
        let unknown = sent_as(Some("wizard"), Some(Role::Nurse));
        assert_eq!(
            unknown.map_err(|r| r.code),
            Err(RefusalCode::RoleNotAllowed)
        );
        // Only a local source without a topic names its role in the payload.
        assert_eq!(sent_as(None, Some(Role::Nurse)), Ok(Role::Nurse));
        assert_eq!(
            sent_as(None, None).map_err(|r| r.code),
            Err(RefusalCode::Malformed)
        );
    }

    #[test]
    fn only_a_pharmacist_asks_for_audit_rows_again_and_a_range_is_bounded() {
        let ok = |from: i64, to: i64| {
            parse(
                "resend_audit",
                Role::Pharmacist,
                &env(
                    Role::Pharmacist,
                    serde_json::json!({"from": from, "to": to}),
                )
                .1,
                chrono::Utc::now(),
            )
        };
        assert!(matches!(ok(5, 9), Ok(Routed::Resend { from: 5, to: 9 })));
        assert!(matches!(ok(1, MAX_RESEND), Ok(Routed::Resend { .. })));
        for (from, to) in [(0, 3), (9, 5), (1, MAX_RESEND + 1), (-4, 2)] {
            assert_eq!(
                ok(from, to).map(|_| ()).map_err(|r| r.code),
                Err(RefusalCode::Malformed),
                "{from}..{to}"
            );
        }
        let (role, e) = env(Role::Caregiver, serde_json::json!({"from": 1, "to": 2}));
        assert_eq!(
            code("resend_audit", &(role, e)),
            Some(RefusalCode::RoleNotAllowed)
        );
    }

    #[test]
    fn only_a_pharmacist_may_acknowledge_a_broken_audit_chain() {
        let ack = |role| {
            env(
                role,
                serde_json::json!({"alarm": "INTEGRITY", "comment": "checked"}),
            )
        };
        for role in [Role::Caregiver, Role::Nurse, Role::Clinician] {
            assert_eq!(
                code("acknowledge_alarm", &ack(role)),
                Some(RefusalCode::RoleNotAllowed),
                "{role:?}"
            );
        }
        let (role, e) = ack(Role::Pharmacist);
        assert!(matches!(
            parse("acknowledge_alarm", role, &e, chrono::Utc::now()),
            Ok(Routed::Dispenser(Command::AcknowledgeIntegrity { .. }))
        ));
    }

    #[test]
    fn a_device_may_only_record_vital_readings() {
        let allowed: Vec<&str> = COMMANDS
            .iter()
            .copied()
            .filter(|n| roles(n).is_some_and(|r| r.contains(&Role::Device)))
            .collect();
        assert_eq!(allowed, vec!["record_vital"]);
    }

    #[test]
    fn unknown_commands_and_malformed_arguments_are_refused_with_their_code() {
        let nurse = |args| env(Role::Nurse, args);
        assert_eq!(
            code("open_pod_bay", &nurse(serde_json::json!({}))),
            Some(RefusalCode::UnknownCommand)
        );
        let refill = nurse(serde_json::json!({"slot": 1, "units": "many"}));
        let r = parse("refill", refill.0, &refill.1, chrono::Utc::now()).err();
        assert!(
            r.as_ref().is_some_and(
                |r| r.code == RefusalCode::Malformed && r.detail.contains("invalid type")
            ),
            "{r:?}"
        );
        let empty_note = nurse(serde_json::json!({
            "patient": "p-1", "medication": "M", "given": true, "note": "  "
        }));
        assert_eq!(
            code("reconcile_dose", &empty_note),
            Some(RefusalCode::Malformed)
        );
        let mut anonymous = nurse(serde_json::json!({"comment": "x"}));
        anonymous.1.actor = " ".into();
        assert_eq!(
            code("trust_clock", &anonymous),
            Some(RefusalCode::Malformed)
        );
    }

    #[test]
    fn a_prn_request_carries_its_sender_role_and_override_reason() {
        let (role, e) = env(
            Role::Nurse,
            serde_json::json!({"patient": "p-1", "medication": "P", "override_reason": "pain 8/10"}),
        );
        match parse("request_prn", role, &e, chrono::Utc::now()) {
            Ok(Routed::Dispenser(Command::Prn { request, .. })) => {
                assert_eq!(request.role, Role::Nurse);
                assert_eq!(request.actor, "someone");
                assert_eq!(request.override_reason.as_deref(), Some("pain 8/10"));
            }
            other => panic!("{other:?}"),
        }
    }
}
