//! Dosing: caregiver schedules and the dose engine (pure; no hardware, no I/O).
//!
//! - [`schedule`]: the schedule file format, strict parsing and cross-field validation.
//! - [`when`]: occurrences in the patient's zone, with RFC 5545 daylight-saving semantics on top
//!   of cron's field matching (a time in a skipped hour moves forward by the gap; a time in a
//!   repeated hour doses once, at its first occurrence; intervals keep elapsed spacing).
//! - [`adherence`]: each dose counted once by its final state, per patient and medication.
//! - [`history`]: dose records per patient, so no rule ever mixes two patients' doses.
//! - [`identity`]: which medication a record belongs to (normalised name or slot), and the
//!   built-in list of weekly high-alert medications.
//! - [`engine`]: what may be dispensed now, and every refusal's stable reason code.
//! - [`escalation`]: reminders and alerts for a dose left waiting in the cup.
//! - [`quiet`]: quiet hours, when routine reminders light up without sounding.
//! - [`inventory`]: units per slot, expiry, and refill alerts.
//! - [`vitals`]: readings from outside, validated (ranges, BLE SFLOAT specials) and banded.
//! - [`replace`]: checks a schedule replacing another while the appliance runs.
//! - [`dispenser`]: the dispenser's decisions as a pure state machine the controller drives.

pub mod adherence;
pub mod dispenser;
pub mod engine;
pub mod escalation;
pub mod history;
pub mod identity;
pub mod inventory;
pub mod plan;
pub mod quiet;
pub mod replace;
#[cfg(test)]
mod safety_model;
pub mod schedule;
pub mod vitals;
pub mod week;
pub mod when;
