//! Vital-sign readings from outside (paired monitors, a gateway, a person at the device):
//! validated before they can hold or release a dose, and checked against alert bands. Pure.
//!
//! Monitors on Bluetooth LE send IEEE 11073 16-bit SFLOATs, whose special values (NaN, NRes,
//! ±infinity, reserved) are not measurements and are refused with their name.

use super::engine::{Quality, VitalReading};
use super::schedule::Vital;
use crate::refusal::{refuse, Refusal, RefusalCode};
use chrono::{DateTime, Duration, Utc};
use serde::Deserialize;

/// A reading as it arrives: the value either as a number or as a raw SFLOAT.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawVital {
    /// Which vital.
    pub vital: Vital,
    /// The value in the vital's unit (see [`unit`]).
    #[serde(default)]
    pub value: Option<f64>,
    /// The value as an IEEE 11073 SFLOAT (16 bits), as BLE health profiles send it.
    #[serde(default)]
    pub sfloat: Option<u16>,
    /// When it was measured (default: when received).
    #[serde(default)]
    pub at: Option<DateTime<Utc>>,
    /// The device's quality flag (default good).
    #[serde(default)]
    pub quality: Option<Quality>,
    /// Where it came from.
    pub source: String,
    /// Whose reading (required when the cabinet doses more than one patient).
    #[serde(default)]
    pub patient: Option<String>,
}

/// The UCUM unit each vital is given in.
pub fn unit(v: Vital) -> &'static str {
    match v {
        Vital::HeartRate => "/min",
        Vital::SystolicBp | Vital::DiastolicBp => "mm[Hg]",
        Vital::Spo2 => "%",
        Vital::BodyTemperature => "Cel",
        Vital::Glucose => "mg/dL",
    }
}

/// Whose a reading is: the patient it names if the cabinet doses them, or the cabinet's only
/// patient. A name that is not one of the cabinet's pseudonyms is refused, so a person's real
/// name typed by mistake never reaches the audit log, which cannot be erased.
pub fn whose(named: Option<&str>, patients: &[&str]) -> Result<String, Refusal> {
    match (named, patients) {
        (Some(p), known) if known.contains(&p) => Ok(p.to_string()),
        (Some(p), []) => refuse(
            RefusalCode::UnknownPatient,
            format!("{p:?}: no schedule is recorded yet, so no patient is known; give the reading once the appliance runs its schedules"),
        ),
        (Some(p), known) => refuse(
            RefusalCode::UnknownPatient,
            format!(
                "{p:?} has no schedule in this cabinet (its patients: {}); give the pseudonym, never a name",
                known.join(", ")
            ),
        ),
        (None, [only]) => Ok(only.to_string()),
        (None, known) => refuse(
            RefusalCode::PatientRequired,
            format!(
                "this cabinet doses {} patients; say whose reading it is (`patient`)",
                known.len()
            ),
        ),
    }
}

/// What people call the vital, for messages.
pub fn label(v: Vital) -> &'static str {
    match v {
        Vital::HeartRate => "pulse",
        Vital::SystolicBp => "systolic blood pressure",
        Vital::DiastolicBp => "diastolic blood pressure",
        Vital::Spo2 => "oxygen saturation",
        Vital::BodyTemperature => "body temperature",
        Vital::Glucose => "blood glucose",
    }
}

/// The unit as people write it, for messages.
pub fn unit_for_people(v: Vital) -> &'static str {
    match v {
        Vital::HeartRate => "bpm",
        Vital::SystolicBp | Vital::DiastolicBp => "mmHg",
        Vital::Spo2 => "%",
        Vital::BodyTemperature => "°C",
        Vital::Glucose => "mg/dL",
    }
}

/// The range a living patient's reading can have; outside it the reading is a device error.
fn physiological(v: Vital) -> (f64, f64) {
    match v {
        Vital::HeartRate => (20.0, 300.0),
        Vital::SystolicBp => (40.0, 300.0),
        Vital::DiastolicBp => (20.0, 200.0),
        Vital::Spo2 => (50.0, 100.0),
        Vital::BodyTemperature => (25.0, 45.0),
        Vital::Glucose => (10.0, 1000.0),
    }
}

/// The band outside which the caregiver is alerted (the reading itself is kept and used).
pub fn alert_band(v: Vital) -> (f64, f64) {
    match v {
        Vital::HeartRate => (40.0, 130.0),
        Vital::SystolicBp => (90.0, 180.0),
        Vital::DiastolicBp => (50.0, 110.0),
        Vital::Spo2 => (90.0, 100.0),
        Vital::BodyTemperature => (35.0, 38.5),
        Vital::Glucose => (70.0, 250.0),
    }
}

/// Decodes an IEEE 11073-20601 SFLOAT: a 4-bit signed exponent over a 12-bit signed mantissa.
pub fn decode_sfloat(raw: u16) -> Result<f64, String> {
    let mantissa = raw & 0x0FFF;
    match mantissa {
        0x07FF => return Err("SFLOAT NaN (not a number)".into()),
        0x0800 => return Err("SFLOAT NRes (not at this resolution)".into()),
        0x07FE => return Err("SFLOAT +INFINITY".into()),
        0x0802 => return Err("SFLOAT -INFINITY".into()),
        0x0801 => return Err("SFLOAT reserved value".into()),
        _ => {}
    }
    let m = if mantissa >= 0x0800 {
        i32::from(mantissa) - 0x1000
    } else {
        i32::from(mantissa)
    };
    let e = i32::from((raw >> 12) as u8);
    let e = if e >= 8 { e - 16 } else { e };
    Ok(f64::from(m) * 10f64.powi(e))
}

/// Accepts a reading received at `now`, or says why not.
pub fn validate(raw: &RawVital, now: DateTime<Utc>) -> Result<VitalReading, String> {
    let value = match (raw.value, raw.sfloat) {
        (Some(v), None) => v,
        (None, Some(s)) => decode_sfloat(s)?,
        (Some(_), Some(_)) => return Err("give `value` or `sfloat`, not both".into()),
        (None, None) => return Err("`value` or `sfloat` is required".into()),
    };
    if !value.is_finite() {
        return Err(format!("{value} is not a measurement"));
    }
    let (lo, hi) = physiological(raw.vital);
    if !(lo..=hi).contains(&value) {
        return Err(format!(
            "{value} {} is outside the physiological range {lo}–{hi}: a device error",
            unit(raw.vital)
        ));
    }
    let at = raw.at.unwrap_or(now);
    if at > now + Duration::minutes(5) {
        return Err(format!("measured in the future ({})", at.to_rfc3339()));
    }
    if now - at > Duration::hours(24) {
        return Err(format!("older than a day ({})", at.to_rfc3339()));
    }
    let source = raw.source.trim();
    if source.is_empty() || source.len() > 64 {
        return Err("`source` must name the device or person (1–64 characters)".into());
    }
    let patient = match raw.patient.as_deref().map(str::trim) {
        Some("") => return Err("`patient` is empty: give the pseudonym, or leave it out".into()),
        p => p.map(str::to_string),
    };
    Ok(VitalReading {
        vital: raw.vital,
        value,
        at,
        quality: raw.quality.unwrap_or(Quality::Good),
        source: source.to_string(),
        patient,
    })
}

/// The readings of one patient (a reading names its patient once the dispenser took it).
pub fn of_patient(readings: &[VitalReading], patient: &str) -> Vec<VitalReading> {
    readings
        .iter()
        .filter(|r| r.patient.as_deref() == Some(patient))
        .cloned()
        .collect()
}

/// Whether a reading is outside its alert band, and which side.
pub fn out_of_band(r: &VitalReading) -> Option<&'static str> {
    let (lo, hi) = alert_band(r.vital);
    if r.value < lo {
        Some("LOW")
    } else if r.value > hi {
        Some("HIGH")
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_reading_may_only_name_a_patient_of_the_cabinet() {
        let code = |r: Result<String, Refusal>| r.map_err(|e| e.code);
        assert_eq!(code(whose(Some("p-1"), &["p-1", "p-2"])), Ok("p-1".into()));
        assert_eq!(code(whose(None, &["p-1"])), Ok("p-1".into()));
        assert_eq!(
            code(whose(Some("Marie"), &["p-1", "p-2"])),
            Err(RefusalCode::UnknownPatient)
        );
        assert_eq!(
            code(whose(Some("p-1"), &[])),
            Err(RefusalCode::UnknownPatient)
        );
        assert_eq!(
            code(whose(None, &["p-1", "p-2"])),
            Err(RefusalCode::PatientRequired)
        );
    }

    use super::*;

    fn raw(vital: Vital, value: Option<f64>, sfloat: Option<u16>) -> RawVital {
        RawVital {
            vital,
            value,
            sfloat,
            at: None,
            quality: None,
            source: "oximeter-1".into(),
            patient: None,
        }
    }

    fn now() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-03-02T08:00:00Z")
            .unwrap()
            .with_timezone(&Utc)
    }

    #[test]
    fn vitals_sfloat_decodes_and_its_special_values_are_refused_by_name() {
        // 0xF048: exponent -1, mantissa 72 → 7.2; 0x0048 → 72.
        assert_eq!(decode_sfloat(0x0048).unwrap(), 72.0);
        assert!((decode_sfloat(0xF2E6).unwrap() - 74.2).abs() < 1e-9);
        // Negative mantissa: 0xFFFF is exponent -1, mantissa -1.
        assert!((decode_sfloat(0xFFFF).unwrap() + 0.1).abs() < 1e-9);
        for (raw, name) in [
            (0x07FF, "NaN"),
            (0x0800, "NRes"),
            (0x07FE, "+INFINITY"),
            (0x0802, "-INFINITY"),
            (0x0801, "reserved"),
        ] {
            let e = decode_sfloat(raw).unwrap_err();
            assert!(e.contains(name), "{raw:#x}: {e}");
        }
        let e = validate(&raw(Vital::Spo2, None, Some(0x07FF)), now()).unwrap_err();
        assert!(e.contains("NaN"), "{e}");
    }

    #[test]
    fn vitals_nan_and_out_of_physiological_range_are_rejected_with_a_reason() {
        let e = validate(&raw(Vital::HeartRate, Some(f64::NAN), None), now()).unwrap_err();
        assert!(e.contains("not a measurement"), "{e}");
        let e = validate(&raw(Vital::HeartRate, Some(0.0), None), now()).unwrap_err();
        assert!(e.contains("physiological range"), "{e}");
        let e = validate(&raw(Vital::Spo2, Some(104.0), None), now()).unwrap_err();
        assert!(e.contains("physiological range"), "{e}");
        let mut future = raw(Vital::HeartRate, Some(60.0), None);
        future.at = Some(now() + Duration::hours(1));
        assert!(validate(&future, now()).unwrap_err().contains("future"));
        let mut anonymous = raw(Vital::HeartRate, Some(60.0), None);
        anonymous.source = " ".into();
        assert!(validate(&anonymous, now()).unwrap_err().contains("source"));
        let ok = validate(&raw(Vital::HeartRate, Some(52.0), None), now()).unwrap();
        assert_eq!((ok.value, ok.at, ok.quality), (52.0, now(), Quality::Good));
    }

    #[test]
    fn vitals_past_their_alert_band_are_flagged() {
        let r = validate(&raw(Vital::Spo2, Some(86.0), None), now()).unwrap();
        assert_eq!(out_of_band(&r), Some("LOW"));
        let r = validate(&raw(Vital::Spo2, Some(97.0), None), now()).unwrap();
        assert_eq!(out_of_band(&r), None);
    }
}
