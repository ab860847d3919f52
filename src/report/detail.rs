//! One line of detail for an audit row, as a pharmacist reads it in `audit log`: what the row's
//! body says that its kind and subject do not (the dose's medication and time, the alarm's
//! value, the refill's count, the reading). Bodies are recorded JSON; a body that is not JSON
//! (a damaged row) is shown as it is, so nothing is hidden.

use serde_json::Value;

fn num(v: &Value) -> Option<String> {
    v.as_f64().map(|x| {
        if x.fract() == 0.0 {
            format!("{x:.0}")
        } else {
            format!("{x:.1}")
        }
    })
}

fn text<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Value::as_str).filter(|s| !s.is_empty())
}

/// An instant from a body, in the reader's zone.
fn when(v: &Value, key: &str, tz: chrono_tz::Tz) -> Option<String> {
    let t = text(v, key)?;
    Some(chrono::DateTime::parse_from_rfc3339(t).map_or_else(
        |_| t.to_string(),
        |t| t.with_timezone(&tz).format("%Y-%m-%d %H:%M %Z").to_string(),
    ))
}

/// The detail of a row with this `body`, its times in `tz`.
pub fn row_detail(body: &str, tz: chrono_tz::Tz) -> String {
    let Ok(v) = serde_json::from_str::<Value>(body) else {
        return body.to_string();
    };
    let kind = text(&v, "kind").unwrap_or("");
    let parts: Vec<String> = match kind {
        "dose" => {
            let rec = &v["record"];
            let mut p = vec![format!(
                "{} {} unit{}",
                text(&v, "medication").unwrap_or("?"),
                rec["units"].as_u64().unwrap_or(0),
                if rec["units"].as_u64() == Some(1) {
                    ""
                } else {
                    "s"
                }
            )];
            if let Some(o) = when(rec, "occurrence", tz) {
                p.push(format!("dose of {o}"));
            }
            p.extend(text(&v, "detail").map(str::to_string));
            p
        }
        "dose_alert" => vec![
            text(&v, "medication").unwrap_or("?").to_string(),
            text(&v, "detail").unwrap_or("").to_string(),
        ],
        "vital" | "vital_alert" => {
            let r = &v["reading"];
            let mut p = vec![format!(
                "{} {}",
                text(r, "vital").unwrap_or("?"),
                num(&r["value"]).unwrap_or_default()
            )];
            p.extend(text(&v, "band").map(|b| format!("band {b}")));
            p.extend(text(r, "source").map(|s| format!("from {s}")));
            p
        }
        "refill" => vec![format!(
            "slot {}: +{} = {}{}{}",
            v["slot"],
            v["added"],
            v["count"],
            text(&v, "expiry").map_or(String::new(), |e| format!(", expires {e}")),
            text(&v, "note").map_or(String::new(), |n| format!(", {n}"))
        )],
        "cold_chain" => match text(&v, "type").unwrap_or("") {
            "excursion_closed" => vec![format!(
                "{} min, {}–{} °C, MKT {} °C",
                num(&v["minutes"]).unwrap_or_default(),
                num(&v["min"]).unwrap_or_default(),
                num(&v["max"]).unwrap_or_default(),
                num(&v["mkt"]).unwrap_or_default()
            )],
            "day_closed" => vec![format!(
                "{}: {}–{} °C, MKT {} °C, {} min out of range",
                text(&v, "date").unwrap_or("?"),
                num(&v["min"]).unwrap_or_default(),
                num(&v["max"]).unwrap_or_default(),
                num(&v["mkt"]).unwrap_or_default(),
                num(&(v["minutes_above"].as_f64().unwrap_or(0.0)
                    + v["minutes_below"].as_f64().unwrap_or(0.0))
                .into())
                .unwrap_or_default()
            )],
            _ => generic(&v, tz),
        },
        "readings_sealed" => vec![format!(
            "readings {}–{} ({})",
            v["from_id"], v["to_id"], v["count"]
        )],
        "schedule_replaced" | "" if v.get("new").is_some() => vec![format!(
            "version {}",
            text(&v, "new").map_or("?".to_string(), |n| n.chars().take(12).collect())
        )],
        _ => generic(&v, tz),
    };
    parts
        .into_iter()
        .filter(|p| !p.is_empty())
        .collect::<Vec<_>>()
        .join("; ")
}

/// What any other body says: its `detail` or `comment`, else its short scalar fields.
fn generic(v: &Value, tz: chrono_tz::Tz) -> Vec<String> {
    if let Some(d) = text(v, "detail").or_else(|| text(v, "comment")) {
        return vec![d.to_string()];
    }
    let Some(map) = v.as_object() else {
        return vec![v.to_string()];
    };
    map.iter()
        .filter(|(k, _)| !matches!(k.as_str(), "at" | "kind" | "type"))
        .filter_map(|(k, val)| match val {
            Value::String(s) if chrono::DateTime::parse_from_rfc3339(s).is_ok() => {
                when(v, k, tz).map(|t| format!("{k} {t}"))
            }
            Value::String(s) if !s.is_empty() && s.len() <= 40 => Some(format!("{k} {s}")),
            Value::Number(_) => num(val).map(|n| format!("{k} {n}")),
            Value::Bool(b) => Some(format!("{k} {b}")),
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dose_row_says_which_medication_and_dose() {
        let body = r#"{"at":"2026-03-02T06:30:15Z","detail":"1 unit(s) seen falling","kind":"dose","medication":"Metformin","patient":"p-0042","reason":null,"record":{"medication":"Metformin","occurrence":"2026-03-02T07:00:00Z","units":1,"outcome":"dispensed"}}"#;
        assert_eq!(
            row_detail(body, chrono_tz::Europe::Berlin),
            "Metformin 1 unit; dose of 2026-03-02 08:00 CET; 1 unit(s) seen falling"
        );
    }

    #[test]
    fn cold_chain_rows_give_their_figures() {
        let body = r#"{"end":"2026-03-02T01:56:00Z","id":1,"kind":"cold_chain","max":22.0078125,"min":7.7265625,"minutes":116.0,"mkt":16.1157,"start":"2026-03-02T00:00:00Z","type":"excursion_closed"}"#;
        assert_eq!(
            row_detail(body, chrono_tz::UTC),
            "116 min, 7.7–22.0 °C, MKT 16.1 °C"
        );
        let alarm = r#"{"alarm":"EXCURSION","at":"2026-03-02T00:15:00Z","kind":"cold_chain","since":"2026-03-02T00:00:00Z","type":"alarm_raised","value":21.1953125}"#;
        assert_eq!(
            row_detail(alarm, chrono_tz::UTC),
            "alarm EXCURSION; since 2026-03-02 00:00 UTC; value 21.2"
        );
    }

    #[test]
    fn a_damaged_body_is_shown_as_it_is() {
        assert_eq!(row_detail("not json", chrono_tz::UTC), "not json");
    }
}
