//! Why a command was refused: one typed list of codes, so the answer a caregiver's back end
//! parses, the audit row a pharmacist reads and the documentation can never drift apart.
//!
//! On the wire a refusal is `CODE: detail` (the `detail` of a `command.result`); the code is
//! stable, the detail is for people.

use crate::dosing::engine::Reason;
use serde::Serialize;

/// A refusal's stable code.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum RefusalCode {
    /// The payload or an argument cannot be read.
    Malformed,
    /// No such command.
    UnknownCommand,
    /// The payload is larger than a command may be.
    PayloadTooLarge,
    /// The sender's role may not send this command.
    RoleNotAllowed,
    /// The id was already used for another command.
    IdReused,
    /// The command queue is full: nothing done, send it again.
    Busy,
    /// The task that would carry it out is stopping.
    Unavailable,
    /// A number outside what can be true (more units than a slot holds).
    OutOfRange,
    /// The patient has no schedule in this cabinet.
    UnknownPatient,
    /// The medication is not one of the patient's.
    UnknownMedication,
    /// The medication is not scheduled at that instant.
    UnknownOccurrence,
    /// The carousel has no such slot.
    UnknownSlot,
    /// The cabinet doses several patients and the command did not say whose.
    PatientRequired,
    /// The schedule names another patient than the command.
    PatientMismatch,
    /// A reading outside what can be measured, or stale, or from nobody.
    InvalidReading,
    /// A schedule with problems (every one listed with file, line and field).
    InvalidSchedule,
    /// A slot belongs to another patient.
    SlotConflict,
    /// The change removes a safety guard and needs a second person.
    ConfirmationRequired,
    /// The second confirmation came from the person who asked.
    SamePerson,
    /// Nothing to acknowledge or to trust: it is not raised.
    NotRaised,
    /// The alarm was already acknowledged.
    AlreadyAcknowledged,
    /// The dose already has an outcome.
    AlreadySettled,
    /// No uncertain dispense of that dose waits for a caregiver.
    NothingToReconcile,
    /// The lot's expiry date has passed.
    Expired,
    /// Storage fails: nothing is done that could not be recorded.
    StorageFailed,
    /// The audit chain was found broken: nothing is dispensed until a pharmacist acknowledges.
    IntegrityBroken,
    /// A dispense is under way; the command is answered once it ends.
    Dispensing,
    /// The dispense failed before anything moved (it may be tried again).
    Failed,
    /// The motor turned and what fell is not known: a caregiver must reconcile it.
    Uncertain,
    /// The dose engine refused (its reason code: `PRN_TOO_SOON`, `CLOCK_UNTRUSTED`, …).
    #[serde(skip)]
    Dose(Reason),
}

impl RefusalCode {
    /// Every code of the command layer (the dose engine's own are [`Reason::ALL`]), for
    /// documentation checks.
    pub const ALL: [RefusalCode; 29] = [
        RefusalCode::Malformed,
        RefusalCode::UnknownCommand,
        RefusalCode::PayloadTooLarge,
        RefusalCode::RoleNotAllowed,
        RefusalCode::IdReused,
        RefusalCode::Busy,
        RefusalCode::Unavailable,
        RefusalCode::OutOfRange,
        RefusalCode::UnknownPatient,
        RefusalCode::UnknownMedication,
        RefusalCode::UnknownOccurrence,
        RefusalCode::UnknownSlot,
        RefusalCode::PatientRequired,
        RefusalCode::PatientMismatch,
        RefusalCode::InvalidReading,
        RefusalCode::InvalidSchedule,
        RefusalCode::SlotConflict,
        RefusalCode::ConfirmationRequired,
        RefusalCode::SamePerson,
        RefusalCode::NotRaised,
        RefusalCode::AlreadyAcknowledged,
        RefusalCode::AlreadySettled,
        RefusalCode::NothingToReconcile,
        RefusalCode::Expired,
        RefusalCode::StorageFailed,
        RefusalCode::IntegrityBroken,
        RefusalCode::Dispensing,
        RefusalCode::Failed,
        RefusalCode::Uncertain,
    ];

    /// The stable code as written on the wire.
    pub fn code(self) -> String {
        match self {
            RefusalCode::Dose(r) => r.code(),
            other => serde_json::to_value(other)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default(),
        }
    }
}

/// A refused command: its code and, for people, what exactly was wrong.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}: {detail}", code.code())]
pub struct Refusal {
    /// The stable code.
    pub code: RefusalCode,
    /// What was wrong, for people.
    pub detail: String,
}

impl Refusal {
    /// A refusal with its code and detail.
    pub fn new(code: RefusalCode, detail: impl Into<String>) -> Self {
        Self {
            code,
            detail: detail.into(),
        }
    }
}

/// Shorthand for `Err(Refusal::new(code, detail))`.
pub fn refuse<T>(code: RefusalCode, detail: impl Into<String>) -> Result<T, Refusal> {
    Err(Refusal::new(code, detail))
}

/// The answer to a command: what was done, or why nothing was.
pub type Answer = Result<String, Refusal>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_reads_code_colon_detail() {
        let r = Refusal::new(RefusalCode::NothingToReconcile, "no uncertain dispense");
        assert_eq!(r.to_string(), "NOTHING_TO_RECONCILE: no uncertain dispense");
        let r = Refusal::new(RefusalCode::Dose(Reason::PrnMax24h), "4 in 24 h");
        assert_eq!(r.to_string(), "PRN_MAX_24H: 4 in 24 h");
    }

    #[test]
    fn every_refusal_code_is_documented_once_with_one_spelling() {
        let doc = include_str!("../docs/mqtt.md");
        for code in RefusalCode::ALL
            .into_iter()
            .chain(Reason::ALL.map(RefusalCode::Dose))
        {
            let c = code.code();
            assert!(!c.is_empty(), "{code:?} has no code");
            assert!(
                doc.contains(&format!("`{c}`")),
                "{c} is not in docs/mqtt.md"
            );
        }
    }
}
