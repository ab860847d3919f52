//! HL7 FHIR R4 renderings for receivers that speak FHIR (DESIGN.md §6): each dose outcome as a
//! `MedicationAdministration`, each vital reading as a vital-signs `Observation` with its LOINC
//! code and UCUM unit. Pure; the recorder puts them in the outbox beside the medbox JSON when the
//! config asks for it. Patients appear by pseudonym only.

use crate::dosing::engine::{DoseRecord, Outcome, Quality, VitalReading};
use crate::dosing::schedule::Vital;
use serde_json::{json, Value};

const LOINC: &str = "http://loinc.org";
const UCUM: &str = "http://unitsofmeasure.org";
/// Where medbox's own codes (reason codes, pseudonyms) are defined.
const MEDBOX: &str = "urn:medbox";

fn patient_ref(patient: &str) -> Value {
    json!({"identifier": {"system": format!("{MEDBOX}:patient"), "value": patient}})
}

/// A dose outcome as a `MedicationAdministration`, or None for a step that is not one (a
/// `dispensing` intent, a `failed` attempt that may be tried again).
pub fn medication_administration(
    id: &str,
    patient: &str,
    record: &DoseRecord,
    reason: Option<&str>,
    detail: &str,
) -> Option<Value> {
    let status = match record.outcome {
        Outcome::Taken | Outcome::ConfirmedGiven => "completed",
        Outcome::Dispensed => "in-progress",
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
        "identifier": [{"system": format!("{MEDBOX}:event"), "value": id}],
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

/// A vital reading as a vital-signs `Observation`. Blood pressure goes in the 85354-9 panel,
/// its value as the systolic or diastolic component.
pub fn observation(id: &str, patient: Option<&str>, r: &VitalReading) -> Value {
    let unit = crate::dosing::vitals::unit(r.vital);
    let quantity = json!({"value": r.value, "unit": unit, "system": UCUM, "code": unit});
    let mut o = json!({
        "resourceType": "Observation",
        "id": id,
        "identifier": [{"system": format!("{MEDBOX}:event"), "value": id}],
        // A reading the device flagged as poor is not final.
        "status": if r.quality == Quality::Good { "final" } else { "preliminary" },
        "category": [{"coding": [{
            "system": "http://terminology.hl7.org/CodeSystem/observation-category",
            "code": "vital-signs",
            "display": "Vital Signs",
        }]}],
        "effectiveDateTime": r.at.to_rfc3339(),
        "device": {"display": r.source},
    });
    match r.vital {
        Vital::SystolicBp | Vital::DiastolicBp => {
            o["code"] = coding(&[("85354-9", "Blood pressure panel with all children optional")]);
            o["component"] = json!([{"code": coding(&loinc(r.vital)), "valueQuantity": quantity}]);
        }
        v => {
            o["code"] = coding(&loinc(v));
            o["valueQuantity"] = quantity;
        }
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
        let hr = observation("d:1", Some("p-0042"), &reading(Vital::HeartRate, 52.0));
        assert_eq!(hr["code"]["coding"][0]["code"], "8867-4");
        assert_eq!(hr["valueQuantity"]["code"], "/min");
        assert_eq!(hr["valueQuantity"]["system"], UCUM);
        assert_eq!(hr["subject"]["identifier"]["value"], "p-0042");
        let spo2 = observation("d:2", None, &reading(Vital::Spo2, 97.0));
        let codes: Vec<&str> = spo2["code"]["coding"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["code"].as_str().unwrap())
            .collect();
        assert_eq!(codes, ["2708-6", "59408-5"]);
        assert_eq!(spo2["valueQuantity"]["unit"], "%");
        let bp = observation("d:3", None, &reading(Vital::SystolicBp, 118.0));
        assert_eq!(bp["code"]["coding"][0]["code"], "85354-9");
        assert_eq!(bp["component"][0]["code"]["coding"][0]["code"], "8480-6");
        assert_eq!(bp["component"][0]["valueQuantity"]["code"], "mm[Hg]");
        let t = observation("d:4", None, &reading(Vital::BodyTemperature, 37.1));
        assert_eq!(
            (
                t["code"]["coding"][0]["code"].as_str(),
                t["valueQuantity"]["code"].as_str()
            ),
            (Some("8310-5"), Some("Cel"))
        );
        let g = observation("d:5", None, &reading(Vital::Glucose, 110.0));
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
            medication_administration("d:9", "p-0042", &rec(Outcome::Taken), None, "").unwrap();
        assert_eq!(taken["status"], "completed");
        assert_eq!(taken["resourceType"], "MedicationAdministration");
        assert!(taken.get("statusReason").is_none());
        let held = medication_administration(
            "d:10",
            "p-0042",
            &rec(Outcome::Held),
            Some("HELD_VITALS"),
            "heart rate 51 /min below 55",
        )
        .unwrap();
        assert_eq!(held["status"], "not-done");
        assert_eq!(held["statusReason"][0]["coding"][0]["code"], "HELD_VITALS");
        assert!(
            medication_administration("d:11", "p-0042", &rec(Outcome::Dispensing), None, "")
                .is_none()
        );
    }
}
