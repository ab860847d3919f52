//! A portal form turned into the appliance command it means, checked against the role the
//! person's commands go in (the appliance's own table of roles), and sent as that command.
//! Parsing and the role check are pure; sending is [`medbox::remote::send`], the same code
//! `medbox cmd` uses, so the portal and the terminal cannot say different things.

use medbox::dosing::engine::Role;
use medbox::remote::Request;
use std::collections::HashMap;
use thiserror::Error;

/// A form that does not make a command.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum FormError {
    /// A field the command needs is missing or empty.
    #[error("{0} is required")]
    Missing(&'static str),
    /// A field holds something that is not what it should be.
    #[error("{field}: {why}")]
    Invalid {
        /// The form field.
        field: &'static str,
        /// What is wrong.
        why: String,
    },
    /// Not a command the portal sends.
    #[error("unknown command {0:?}")]
    Unknown(String),
}

/// Whether a person in `role` may send `command` (the appliance would refuse otherwise).
pub fn may(role: &str, command: &str) -> bool {
    let Ok(role) = serde_json::from_value::<Role>(serde_json::Value::String(role.into())) else {
        return false;
    };
    medbox::controller::commands::roles(command).is_some_and(|r| r.contains(&role))
}

/// The commands a role may send from the pages, for showing or hiding their forms.
pub fn allowed(role: &str) -> HashMap<&'static str, bool> {
    [
        "acknowledge_alarm",
        "skip_dose",
        "reconcile_dose",
        "refill",
        "replace_schedule",
        "request_report",
        "trust_clock",
    ]
    .into_iter()
    .map(|c| (c, may(role, c)))
    .collect()
}

/// The request a command form asks for. `form` holds the posted fields (the CSRF token and
/// `back` are the page's business, not the command's).
pub fn request(form: &HashMap<String, String>) -> Result<Request, FormError> {
    let text = |f: &'static str| -> Result<String, FormError> {
        form.get(f)
            .map(|v| v.trim())
            .filter(|v| !v.is_empty())
            .map(str::to_string)
            .ok_or(FormError::Missing(f))
    };
    let optional = |f: &'static str| text(f).ok();
    let number = |f: &'static str, v: String| -> Result<u32, FormError> {
        v.parse().map_err(|_| FormError::Invalid {
            field: f,
            why: format!("{v:?} is not a whole number"),
        })
    };
    let slot = |v: String| -> Result<u8, FormError> {
        v.parse().map_err(|_| FormError::Invalid {
            field: "slot",
            why: format!("{v:?} is not a slot number"),
        })
    };
    let instant = |f: &'static str, v: String| {
        chrono::DateTime::parse_from_rfc3339(&v)
            .map(|t| t.with_timezone(&chrono::Utc))
            .map_err(|e| FormError::Invalid {
                field: f,
                why: format!("{v:?} is not a time like 2026-03-02T09:00:00Z ({e})"),
            })
    };
    let command = text("command")?;
    Ok(match command.as_str() {
        "acknowledge_alarm" => Request::Acknowledge {
            alarm: text("alarm")?,
            comment: text("comment")?,
            slot: optional("slot").map(slot).transpose()?,
        },
        "skip_dose" => Request::Skip {
            patient: text("patient")?,
            medication: text("medication")?,
            occurrence: instant("occurrence", text("occurrence")?)?,
        },
        "reconcile_dose" => Request::Reconcile {
            patient: text("patient")?,
            medication: text("medication")?,
            occurrence: optional("occurrence")
                .map(|v| instant("occurrence", v))
                .transpose()?,
            given: match text("given")?.as_str() {
                "true" => true,
                "false" => false,
                other => {
                    return Err(FormError::Invalid {
                        field: "given",
                        why: format!("{other:?} is neither true nor false"),
                    })
                }
            },
            note: text("note")?,
            units: optional("units").map(|v| number("units", v)).transpose()?,
        },
        "refill" => Request::Refill {
            slot: slot(text("slot")?)?,
            units: match number("units", text("units")?)? {
                0 => {
                    return Err(FormError::Invalid {
                        field: "units",
                        why: "a refill adds at least one unit".into(),
                    })
                }
                n => n,
            },
            expiry: optional("expiry")
                .map(|v| {
                    v.parse().map_err(|_| FormError::Invalid {
                        field: "expiry",
                        why: format!("{v:?} is not a date like 2027-01-31"),
                    })
                })
                .transpose()?,
            note: optional("note"),
        },
        "request_report" => Request::Report {
            days: optional("days").map(|v| number("days", v)).transpose()?,
        },
        "trust_clock" => Request::TrustClock {
            comment: text("comment")?,
        },
        other => return Err(FormError::Unknown(other.into())),
    })
}

/// A link back into the portal: a local path only, never another site.
pub fn local_path(back: Option<&String>) -> Option<String> {
    back.filter(|b| b.starts_with('/') && !b.starts_with("//") && !b.contains('\\'))
        .cloned()
}

/// A token rendered into each page's command forms (field `form`): what makes a command's id.
pub fn form_token() -> String {
    super::auth::random_token()[..24].to_string()
}

/// The command id for `request` sent from a form rendered with `token`: the same form sent again
/// with the same content (a double click, a browser's resend, "try again" after no answer)
/// is the same command, which the appliance answers again without doing it twice (a refill
/// counted twice would overstate stock); a form whose fields were changed is a new command.
/// A form without a token (rendered before this portal, or hand-made) is not sent.
pub fn command_id(token: Option<&String>, request: &Request) -> Result<String, FormError> {
    let token = token
        .map(|t| t.trim())
        .filter(|t| (16..=64).contains(&t.len()) && t.bytes().all(|b| b.is_ascii_alphanumeric()))
        .ok_or(FormError::Invalid {
            field: "form",
            why: "this form is out of date or incomplete; reload the page and send it again".into(),
        })?;
    let content = format!("{}\n{}", request.name(), request.args());
    let digest = super::auth::token_hash(&content);
    Ok(format!("portal-{token}-{}", &digest[..16]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn form(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn each_form_makes_the_command_the_appliance_takes() {
        let ack = request(&form(&[
            ("command", "acknowledge_alarm"),
            ("alarm", "LOW_STOCK"),
            ("slot", "3"),
            ("comment", " ordered more "),
        ]))
        .unwrap();
        assert_eq!(ack.name(), "acknowledge_alarm");
        assert_eq!(
            ack.args(),
            serde_json::json!({"alarm": "LOW_STOCK", "slot": 3, "comment": "ordered more"})
        );
        let refill = request(&form(&[
            ("command", "refill"),
            ("slot", "2"),
            ("units", "28"),
            ("expiry", ""),
            ("note", ""),
        ]))
        .unwrap();
        assert_eq!(refill.args(), serde_json::json!({"slot": 2, "units": 28}));
        let rec = request(&form(&[
            ("command", "reconcile_dose"),
            ("patient", "p-1"),
            ("medication", "Metformin"),
            ("occurrence", "2026-03-02T09:00:00Z"),
            ("given", "false"),
            ("note", "found in the cup"),
        ]))
        .unwrap();
        assert_eq!(rec.args()["given"], false);
        assert_eq!(rec.args()["occurrence"], "2026-03-02T09:00:00Z");
    }

    #[test]
    fn a_bad_form_names_its_field_and_sends_nothing() {
        assert_eq!(
            request(&form(&[("command", "refill"), ("units", "3")])),
            Err(FormError::Missing("slot"))
        );
        assert!(matches!(
            request(&form(&[
                ("command", "refill"),
                ("slot", "300"),
                ("units", "3")
            ])),
            Err(FormError::Invalid { field: "slot", .. })
        ));
        assert!(matches!(
            request(&form(&[
                ("command", "refill"),
                ("slot", "1"),
                ("units", "0")
            ])),
            Err(FormError::Invalid { field: "units", .. })
        ));
        assert!(matches!(
            request(&form(&[
                ("command", "skip_dose"),
                ("patient", "p"),
                ("medication", "m"),
                ("occurrence", "tomorrow")
            ])),
            Err(FormError::Invalid {
                field: "occurrence",
                ..
            })
        ));
        assert_eq!(
            request(&form(&[("command", "factory_reset")])),
            Err(FormError::Unknown("factory_reset".into()))
        );
    }

    #[test]
    fn a_role_is_offered_only_the_commands_the_appliance_takes_from_it() {
        assert!(may("caregiver", "skip_dose"));
        assert!(!may("pharmacist", "skip_dose"));
        assert!(may("pharmacist", "refill"));
        assert!(!may("caregiver", "record_vital_as_admin"));
        assert!(!may("admin", "refill"), "no such role");
        assert!(!may("device", "refill"));
        assert!(allowed("pharmacist")["acknowledge_alarm"]);
    }

    #[test]
    fn the_same_form_sent_twice_is_one_command_and_an_edited_one_is_another() {
        let token = Some("0123456789abcdef01234567".to_string());
        let refill = |units: &str| {
            request(&form(&[
                ("command", "refill"),
                ("slot", "2"),
                ("units", units),
            ]))
            .unwrap()
        };
        let first = command_id(token.as_ref(), &refill("28")).unwrap();
        assert_eq!(first, command_id(token.as_ref(), &refill("28")).unwrap());
        assert_ne!(first, command_id(token.as_ref(), &refill("14")).unwrap());
        // Another rendering of the page is another form: a new command.
        let other = Some("fedcba9876543210fedcba98".to_string());
        assert_ne!(first, command_id(other.as_ref(), &refill("28")).unwrap());
    }

    #[test]
    fn a_form_without_its_token_is_not_sent() {
        let ack = request(&form(&[
            ("command", "trust_clock"),
            ("comment", "checked the clock"),
        ]))
        .unwrap();
        for bad in [
            None,
            Some(""),
            Some("short"),
            Some("0123456789abcdef<script>"),
        ] {
            let bad = bad.map(str::to_string);
            assert!(
                matches!(
                    command_id(bad.as_ref(), &ack),
                    Err(FormError::Invalid { field: "form", .. })
                ),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn a_back_link_stays_inside_the_portal() {
        let ok = "/patients/mb-1/p-1".to_string();
        assert_eq!(local_path(Some(&ok)), Some(ok.clone()));
        for bad in ["//evil.example/x", "https://evil.example", "/\\evil", ""] {
            assert_eq!(local_path(Some(&bad.to_string())), None, "{bad}");
        }
    }
}
