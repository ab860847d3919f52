//! HL7 FHIR R4 renderings for receivers that speak FHIR: each dose as one
//! `MedicationAdministration`, updated in place as the dose goes on (the same resource id from
//! dispensed to taken, not taken or held), and each vital reading as an `Observation` with its
//! LOINC code, UCUM unit and, for vital signs, the FHIR vital-signs profile. Pure; the recorder
//! puts them in the outbox beside the medbox JSON when the config asks for it. Patients appear by
//! pseudonym only. `tests/fhir/validate.py` checks them with an independent FHIR library in CI.

use crate::dosing::engine::{DoseRecord, Outcome, Quality, VitalReading};
use crate::dosing::schedule::Vital;
use serde_json::{json, Value};

const LOINC: &str = "http://loinc.org";
const UCUM: &str = "http://unitsofmeasure.org";
/// Where medbox's own codes (reason codes, pseudonyms) are defined.
const MEDBOX: &str = "urn:medbox";
/// The base vital-signs profile every vital-signs Observation must claim.
const VITAL_SIGNS: &str = "http://hl7.org/fhir/StructureDefinition/vitalsigns";

/// A FHIR resource id (`[A-Za-z0-9\-\.]{1,64}`) naming `parts` together: a prefix and the first
/// 128 bits of their SHA-256, so the same parts always give the same id and different ones
/// never collide in practice. Device ids may hold `_` and dose keys `:`, which ids may not.
fn resource_id(prefix: &str, parts: &[&str]) -> String {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    for p in parts {
        ctx.update(p.as_bytes());
        ctx.update(&[0]);
    }
    let digest = ctx.finish();
    let hex: String = digest.as_ref()[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("{prefix}-{hex}")
}

/// The id of a dose's `MedicationAdministration`: the same for every record of one dose (its
/// release, pickup, reconciliation), whatever the medication was later renamed to in letter
/// case or spacing. A scheduled dose is its occurrence; a PRN dose is its release, which every
/// later record of it carries on the elapsed timeline.
pub fn dose_id(device: &str, patient: &str, record: &DoseRecord) -> String {
    let when = record
        .occurrence
        .map(|o| format!("scheduled {}", o.to_rfc3339()))
        .or_else(|| {
            record
                .elapsed
                .map(|e| format!("released {}", e.to_rfc3339()))
        })
        .unwrap_or_else(|| format!("at {}", record.at.to_rfc3339()));
    resource_id(
        "dose",
        &[
            device,
            patient,
            &crate::dosing::identity::normalise(&record.medication),
            &when,
        ],
    )
}

/// The id of a reading's `Observation`: the audit row that recorded it; for a blood pressure,
/// the measurement (source, patient and instant), so its systolic and diastolic halves update
/// one panel.
pub fn reading_id(device: &str, seq: i64, r: &VitalReading) -> String {
    match r.vital {
        Vital::SystolicBp | Vital::DiastolicBp => resource_id(
            "bp",
            &[
                device,
                r.patient.as_deref().unwrap_or(""),
                &r.source,
                &r.at.to_rfc3339(),
            ],
        ),
        _ => resource_id("vital", &[device, &seq.to_string()]),
    }
}

fn patient_ref(patient: &str) -> Value {
    json!({"identifier": {"system": format!("{MEDBOX}:patient"), "value": patient}})
}

/// A dose outcome as the current version of its dose's `MedicationAdministration` (`id` from
/// [`dose_id`], `event` the audit row's id), or None for a step that is not one (a
/// `dispensing` intent, a `failed` attempt that may be tried again).
///
/// Status follows the dose: `in-progress` once released into the cup; `completed` when picked
/// up or confirmed given; `not-done` when it never reached the patient (held, skipped, missed
/// before release, confirmed not given); `unknown` when it was released but nobody picked it up
/// within its window, or the release itself is uncertain.
pub fn medication_administration(
    id: &str,
    event: &str,
    patient: &str,
    record: &DoseRecord,
    reason: Option<&str>,
    detail: &str,
) -> Option<Value> {
    let status = match record.outcome {
        Outcome::Taken | Outcome::ConfirmedGiven => "completed",
        Outcome::Dispensed => "in-progress",
        // Released into the cup and never picked up: it may or may not have been taken.
        Outcome::Missed if reason == Some("NOT_TAKEN") => "unknown",
        // Reconciled as not given: the dose did not happen (it may still be dispensed again).
        Outcome::Missed | Outcome::Held | Outcome::Skipped | Outcome::ConfirmedNotGiven => {
            "not-done"
        }
        Outcome::Uncertain => "unknown",
        Outcome::Dispensing | Outcome::Failed => return None,
    };
    let mut r = json!({
        "resourceType": "MedicationAdministration",
        "id": id,
        "identifier": [{"system": format!("{MEDBOX}:event"), "value": event}],
        "status": status,
        "medicationCodeableConcept": {"text": record.medication},
        "subject": patient_ref(patient),
        "effectiveDateTime": record.at.to_rfc3339(),
        "dosage": {"dose": {"value": record.units, "unit": "unit"}},
    });
    if let Some(o) = record.occurrence {
        r["extension"] = json!([{
            "url": format!("{MEDBOX}:scheduled-time"),
            "valueDateTime": o.to_rfc3339(),
        }]);
    }
    if status == "not-done" || status == "unknown" {
        let code = reason.unwrap_or(match record.outcome {
            Outcome::Held => "HELD",
            Outcome::Missed => "MISSED",
            Outcome::Skipped => "SKIPPED",
            Outcome::Uncertain => "UNCERTAIN",
            Outcome::ConfirmedNotGiven => "CONFIRMED_NOT_GIVEN",
            _ => "MISSED",
        });
        r["statusReason"] = json!([{
            "coding": [{"system": format!("{MEDBOX}:reason"), "code": code}],
            "text": if detail.is_empty() { code } else { detail },
        }]);
    }
    Some(r)
}

/// The LOINC codings of a vital (SpO2 carries both the oximetry and the generic code).
fn loinc(v: Vital) -> Vec<(&'static str, &'static str)> {
    match v {
        Vital::HeartRate => vec![("8867-4", "Heart rate")],
        Vital::Spo2 => vec![
            ("2708-6", "Oxygen saturation in Arterial blood"),
            (
                "59408-5",
                "Oxygen saturation in Arterial blood by Pulse oximetry",
            ),
        ],
        Vital::SystolicBp => vec![("8480-6", "Systolic blood pressure")],
        Vital::DiastolicBp => vec![("8462-4", "Diastolic blood pressure")],
        Vital::BodyTemperature => vec![("8310-5", "Body temperature")],
        Vital::Glucose => vec![(
            "41653-7",
            "Glucose [Mass/volume] in Capillary blood by Glucometer",
        )],
    }
}

fn coding(codes: &[(&str, &str)]) -> Value {
    json!({"coding": codes.iter().map(|(c, d)| json!({"system": LOINC, "code": c, "display": d})).collect::<Vec<_>>()})
}

/// The FHIR profile of a vital-signs reading (None: not a vital sign).
fn profile(v: Vital) -> Option<&'static str> {
    Some(match v {
        Vital::HeartRate => "http://hl7.org/fhir/StructureDefinition/heartrate",
        Vital::Spo2 => "http://hl7.org/fhir/StructureDefinition/oxygensat",
        Vital::SystolicBp | Vital::DiastolicBp => "http://hl7.org/fhir/StructureDefinition/bp",
        Vital::BodyTemperature => "http://hl7.org/fhir/StructureDefinition/bodytemp",
        // A capillary glucose is a laboratory result, not a vital sign.
        Vital::Glucose => return None,
    })
}

/// A vital reading as an `Observation` (`id` from [`reading_id`], `event` the audit row's id).
/// Blood pressure goes in the 85354-9 panel: the systolic and diastolic components together
/// once `partner` (the other half of the measurement) is known, the one received until then.
pub fn observation(
    id: &str,
    event: &str,
    patient: Option<&str>,
    r: &VitalReading,
    partner: Option<&VitalReading>,
) -> Value {
    let unit = crate::dosing::vitals::unit(r.vital);
    let quantity = json!({"value": r.value, "unit": unit, "system": UCUM, "code": unit});
    let mut o = json!({
        "resourceType": "Observation",
        "id": id,
        "identifier": [{"system": format!("{MEDBOX}:event"), "value": event}],
        // A reading the device flagged as poor is not final.
        "status": if r.quality == Quality::Good { "final" } else { "preliminary" },
        "category": [{"coding": [match profile(r.vital) {
            Some(_) => json!({
                "system": "http://terminology.hl7.org/CodeSystem/observation-category",
                "code": "vital-signs",
                "display": "Vital Signs",
            }),
            None => json!({
                "system": "http://terminology.hl7.org/CodeSystem/observation-category",
                "code": "laboratory",
                "display": "Laboratory",
            }),
        }]}],
        "effectiveDateTime": r.at.to_rfc3339(),
        "device": {"display": r.source},
    });
    match r.vital {
        Vital::SystolicBp | Vital::DiastolicBp => {
            o["code"] = coding(&[("85354-9", "Blood pressure panel with all children optional")]);
            let mut halves: Vec<&VitalReading> = std::iter::once(r).chain(partner).collect();
            halves.sort_by_key(|h| h.vital != Vital::SystolicBp);
            o["component"] = halves
                .iter()
                .map(|h| {
                    json!({
                        "code": coding(&loinc(h.vital)),
                        "valueQuantity": {"value": h.value, "unit": unit, "system": UCUM, "code": unit},
                    })
                })
                .collect();
        }
        v => {
            o["code"] = coding(&loinc(v));
            o["valueQuantity"] = quantity;
        }
    }
    if let Some(specific) = profile(r.vital) {
        o["meta"] = json!({"profile": [VITAL_SIGNS, specific]});
    }
    if let Some(p) = patient {
        o["subject"] = patient_ref(p);
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{DateTime, Utc};

    fn at() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-03-02T07:05:00Z")
            .unwrap()
            .with_timezone(&Utc)
    }

    fn reading(vital: Vital, value: f64) -> VitalReading {
        VitalReading {
            vital,
            value,
            at: at(),
            quality: Quality::Good,
            source: "monitor-1".into(),
            patient: Some("p-0042".into()),
        }
    }

    #[test]
    fn fhir_observations_carry_loinc_codes_and_ucum_units() {
        let hr = observation(
            "v-1",
            "d:1",
            Some("p-0042"),
            &reading(Vital::HeartRate, 52.0),
            None,
        );
        assert_eq!(hr["code"]["coding"][0]["code"], "8867-4");
        assert_eq!(hr["valueQuantity"]["code"], "/min");
        assert_eq!(hr["valueQuantity"]["system"], UCUM);
        assert_eq!(hr["subject"]["identifier"]["value"], "p-0042");
        let spo2 = observation("v-2", "d:2", None, &reading(Vital::Spo2, 97.0), None);
        let codes: Vec<&str> = spo2["code"]["coding"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["code"].as_str().unwrap())
            .collect();
        assert_eq!(codes, ["2708-6", "59408-5"]);
        assert_eq!(spo2["valueQuantity"]["unit"], "%");
        let bp = observation("v-3", "d:3", None, &reading(Vital::SystolicBp, 118.0), None);
        assert_eq!(bp["code"]["coding"][0]["code"], "85354-9");
        assert_eq!(bp["component"][0]["code"]["coding"][0]["code"], "8480-6");
        assert_eq!(bp["component"][0]["valueQuantity"]["code"], "mm[Hg]");
        let t = observation(
            "v-4",
            "d:4",
            None,
            &reading(Vital::BodyTemperature, 37.1),
            None,
        );
        assert_eq!(
            (
                t["code"]["coding"][0]["code"].as_str(),
                t["valueQuantity"]["code"].as_str()
            ),
            (Some("8310-5"), Some("Cel"))
        );
        let g = observation("v-5", "d:5", None, &reading(Vital::Glucose, 110.0), None);
        assert_eq!(g["code"]["coding"][0]["code"], "41653-7");
        assert_eq!(g["valueQuantity"]["code"], "mg/dL");
    }

    #[test]
    fn fhir_medication_administration_is_completed_or_not_done_with_its_reason() {
        let rec = |outcome| DoseRecord {
            medication: "Metoprolol".into(),
            occurrence: Some(at()),
            at: at(),
            units: 1,
            outcome,
            slot: None,
            elapsed: None,
        };
        let taken =
            medication_administration("dose-9", "d:9", "p-0042", &rec(Outcome::Taken), None, "")
                .unwrap();
        assert_eq!(taken["status"], "completed");
        assert_eq!(taken["resourceType"], "MedicationAdministration");
        assert!(taken.get("statusReason").is_none());
        let held = medication_administration(
            "dose-10",
            "d:10",
            "p-0042",
            &rec(Outcome::Held),
            Some("HELD_VITALS"),
            "heart rate 51 /min below 55",
        )
        .unwrap();
        assert_eq!(held["status"], "not-done");
        assert_eq!(held["statusReason"][0]["coding"][0]["code"], "HELD_VITALS");
        assert!(medication_administration(
            "dose-11",
            "d:11",
            "p-0042",
            &rec(Outcome::Dispensing),
            None,
            ""
        )
        .is_none());
    }

    fn dose(outcome: Outcome, at_: &str, occurrence: Option<&str>) -> DoseRecord {
        let t = |s: &str| DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc);
        DoseRecord {
            medication: "Metformin".into(),
            occurrence: occurrence.map(t),
            at: t(at_),
            units: 1,
            outcome,
            slot: Some(0),
            elapsed: Some(t("2026-03-02T06:30:15Z")),
        }
    }

    fn valid_fhir_id(id: &str) -> bool {
        (1..=64).contains(&id.len())
            && id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
    }

    #[test]
    fn a_dose_keeps_one_resource_id_from_release_to_pickup_whatever_its_name_case() {
        let released = dose(
            Outcome::Dispensed,
            "2026-03-02T06:30:15Z",
            Some("2026-03-02T07:00:00Z"),
        );
        let taken = DoseRecord {
            medication: "metformin ".into(),
            ..dose(
                Outcome::Taken,
                "2026-03-02T07:10:00Z",
                Some("2026-03-02T07:00:00Z"),
            )
        };
        let id = dose_id("medbox_0001", "p-0042", &released);
        assert_eq!(id, dose_id("medbox_0001", "p-0042", &taken));
        assert!(valid_fhir_id(&id), "{id}");
        // Another occurrence, patient or device is another resource.
        let evening = dose(
            Outcome::Dispensed,
            "2026-03-02T17:30:00Z",
            Some("2026-03-02T18:00:00Z"),
        );
        assert_ne!(id, dose_id("medbox_0001", "p-0042", &evening));
        assert_ne!(id, dose_id("medbox_0001", "p-0043", &released));
        assert_ne!(id, dose_id("medbox_0002", "p-0042", &released));
        // An as-needed dose is its release: its pickup names the same resource.
        let prn = dose(Outcome::Dispensed, "2026-03-02T06:30:15Z", None);
        let prn_taken = dose(Outcome::Taken, "2026-03-02T09:00:00Z", None);
        assert_eq!(
            dose_id("d", "p-0311", &prn),
            dose_id("d", "p-0311", &prn_taken)
        );
        assert!(valid_fhir_id(&reading_id(
            "medbox_0001",
            42,
            &reading(Vital::HeartRate, 60.0)
        )));
    }

    #[test]
    fn a_released_dose_nobody_picked_up_is_unknown_not_in_progress_for_ever() {
        let r = dose(
            Outcome::Missed,
            "2026-03-02T06:30:15Z",
            Some("2026-03-02T07:00:00Z"),
        );
        let ma = medication_administration("dose-1", "d:1", "p-0042", &r, Some("NOT_TAKEN"), "")
            .unwrap();
        assert_eq!(ma["status"], "unknown");
        assert_eq!(ma["statusReason"][0]["coding"][0]["code"], "NOT_TAKEN");
        let never_released =
            medication_administration("dose-2", "d:2", "p-0042", &r, Some("MISSED"), "").unwrap();
        assert_eq!(never_released["status"], "not-done");
    }

    #[test]
    fn vital_signs_claim_their_profile_and_glucose_is_a_laboratory_result() {
        let hr = observation("v-1", "d:1", None, &reading(Vital::HeartRate, 52.0), None);
        assert_eq!(hr["meta"]["profile"][0], VITAL_SIGNS);
        assert_eq!(
            hr["meta"]["profile"][1],
            "http://hl7.org/fhir/StructureDefinition/heartrate"
        );
        assert_eq!(hr["category"][0]["coding"][0]["code"], "vital-signs");
        let g = observation("v-2", "d:2", None, &reading(Vital::Glucose, 110.0), None);
        assert_eq!(g["category"][0]["coding"][0]["code"], "laboratory");
        assert!(g.get("meta").is_none());
    }

    #[test]
    fn blood_pressure_taken_together_is_one_panel_with_both_components() {
        let sys = reading(Vital::SystolicBp, 124.0);
        let dia = reading(Vital::DiastolicBp, 78.0);
        let id = reading_id("d", 7, &dia);
        assert_eq!(
            id,
            reading_id("d", 6, &sys),
            "one measurement, one resource"
        );
        let alone = observation(&id, "d:6", None, &sys, None);
        assert_eq!(alone["component"].as_array().unwrap().len(), 1);
        let both = observation(&id, "d:7", None, &dia, Some(&sys));
        let codes: Vec<&str> = both["component"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["code"]["coding"][0]["code"].as_str().unwrap())
            .collect();
        assert_eq!(
            codes,
            ["8480-6", "8462-4"],
            "systolic first, then diastolic"
        );
        assert_eq!(both["component"][1]["valueQuantity"]["value"], 78.0);
        assert_eq!(
            both["meta"]["profile"][1],
            "http://hl7.org/fhir/StructureDefinition/bp"
        );
        // Another measurement is another panel.
        let later = VitalReading {
            at: at() + chrono::Duration::minutes(5),
            ..reading(Vital::SystolicBp, 120.0)
        };
        assert_ne!(reading_id("d", 8, &later), id);
    }
}
