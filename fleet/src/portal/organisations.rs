//! The Organisations page: a fleet administrator creates an organisation, adds its first
//! administrator (who then adds its people on the People page), and puts appliances in its care.
//! Nothing here shows a patient, and a fleet administrator's other pages stay scoped to their own
//! organisation. They do set the first password of each administrator they add (as an
//! organisation's administrator does for its people), so every try is audited under the
//! organisation it concerns, refused ones too.

use super::auth;
use super::store::{self, Action, Person};
use super::{signed_in, PageError, PageResult, Portal, St};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Form;
use minijinja::context;
use std::collections::HashMap;

/// What an organisation's id may be: it names the organisation on the command line and in the
/// audit, so the same short, plain characters as a login name.
pub fn org_id_problem(id: &str) -> Option<String> {
    let ok = (2..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b));
    (!ok).then(|| "an organisation's id is 2 to 64 of a-z, 0-9, '.', '_' and '-'".into())
}

/// Checks the new organisation's fields; the time zone must be an IANA name, since every "today"
/// its people see is that zone's.
pub fn new_org_problem(id: &str, name: &str, timezone: &str) -> Option<String> {
    if let Some(p) = org_id_problem(id) {
        Some(p)
    } else if name.trim().is_empty() || name.chars().count() > 100 {
        Some("the name shown needs 1 to 100 characters".into())
    } else if timezone.parse::<chrono_tz::Tz>().is_err() {
        Some(format!(
            "{timezone:?} is not a time zone (an IANA name such as Europe/Berlin)"
        ))
    } else {
        None
    }
}

type Outcome = Result<String, (StatusCode, String)>;

async fn page(
    portal: &Portal,
    person: Person,
    status: StatusCode,
    flash: Option<(bool, String)>,
) -> PageResult {
    let orgs = store::organisations(portal.db()).await?;
    let unassigned = store::unassigned_devices(portal.db()).await?;
    let (ok, message) = flash.unzip();
    portal.page(
        status,
        "organisations.html",
        context! { person, orgs, unassigned, roles => auth::ROLES, ok, message },
    )
}

fn refusal(portal: &Portal, person: &Person) -> PageResult {
    portal.message(
        Some(person),
        StatusCode::FORBIDDEN,
        "Fleet administrators only",
        false,
        "This page is for the fleet's administrators.",
        Some("/".into()),
    )
}

pub(super) async fn list(State(portal): St, headers: HeaderMap) -> PageResult {
    let person = signed_in!(portal, headers);
    if !person.fleet_admin {
        return refusal(&portal, &person);
    }
    page(&portal, person, StatusCode::OK, None).await
}

/// Audits what was done or tried, under the organisation it concerns, then answers: the page
/// with the outcome, or the refusal for someone who is not a fleet administrator.
async fn done(
    portal: &Portal,
    person: Person,
    action: &str,
    org: &str,
    args: serde_json::Value,
    outcome: Outcome,
) -> PageResult {
    let (ok, detail, status) = match &outcome {
        Ok(d) => (true, d.clone(), StatusCode::OK),
        Err((s, d)) => (false, d.clone(), *s),
    };
    store::record(
        portal.db(),
        &Action {
            username: &person.username,
            org: Some(org),
            device: args.get("device").and_then(|d| d.as_str()),
            action,
            command_id: None,
            args: args.clone(),
            ok,
            detail: &detail,
        },
    )
    .await
    .map_err(PageError::from)?;
    if !person.fleet_admin {
        return refusal(portal, &person);
    }
    page(portal, person, status, Some((ok, detail))).await
}

fn forbidden() -> Outcome {
    Err((
        StatusCode::FORBIDDEN,
        "refused: fleet administrators only".into(),
    ))
}

fn no_such_org(org: &str) -> (StatusCode, String) {
    (StatusCode::NOT_FOUND, format!("no organisation {org}"))
}

pub(super) async fn create(
    State(portal): St,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> PageResult {
    let person = signed_in!(portal, headers);
    super::forms::csrf(&person, form.get("csrf"))?;
    let field = |f: &str| form.get(f).map_or("", |v| v.trim());
    let (id, name, tz) = (field("org_id"), field("name"), field("timezone"));
    let outcome = if !person.fleet_admin {
        forbidden()
    } else if let Some(p) = new_org_problem(id, name, tz) {
        Err((
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("not created: {p}"),
        ))
    } else if store::create_org(portal.db(), id, name, tz).await? {
        Ok(format!("organisation {id} ({name}, {tz}) created"))
    } else {
        Err((
            StatusCode::CONFLICT,
            format!("not created: the id {id} is taken"),
        ))
    };
    let args = serde_json::json!({ "org": id, "name": name, "timezone": tz });
    done(&portal, person, "org.create", id, args, outcome).await
}

/// Adds an administrator to an organisation: how a new organisation gets its first person.
pub(super) async fn add_admin(
    State(portal): St,
    headers: HeaderMap,
    Path(org): Path<String>,
    Form(form): Form<HashMap<String, String>>,
) -> PageResult {
    let person = signed_in!(portal, headers);
    super::forms::csrf(&person, form.get("csrf"))?;
    let outcome = if !person.fleet_admin {
        forbidden()
    } else if !store::org_exists(portal.db(), &org).await? {
        Err(no_such_org(&org))
    } else {
        super::people::add_person(&portal, &org, &form, true).await?
    };
    let args = serde_json::json!({
        "person": form.get("username").map_or("", |u| u.trim()),
        "role": form.get("role"),
    });
    done(&portal, person, "org.add_admin", &org, args, outcome).await
}

/// Puts an appliance in an organisation's care. Moving one from another organisation is allowed
/// (a patient changes provider) and the audit names where it came from: from then on only the
/// new organisation's people see its patients.
pub(super) async fn assign(
    State(portal): St,
    headers: HeaderMap,
    Path(org): Path<String>,
    Form(form): Form<HashMap<String, String>>,
) -> PageResult {
    let person = signed_in!(portal, headers);
    super::forms::csrf(&person, form.get("csrf"))?;
    let device = form.get("device").map_or("", |d| d.trim());
    let outcome = if !person.fleet_admin {
        forbidden()
    } else if !medbox::config::valid_device_id(device) {
        Err((
            StatusCode::UNPROCESSABLE_ENTITY,
            "not assigned: an appliance id is 1 to 64 of A-Z, a-z, 0-9, '-' and '_'".into(),
        ))
    } else if !store::org_exists(portal.db(), &org).await? {
        Err(no_such_org(&org))
    } else {
        match store::device_org(portal.db(), device).await? {
            Some(was) if was == org => Ok(format!("{device} was already in the care of {org}")),
            was => {
                store::assign_device(portal.db(), device, &org).await?;
                Ok(match was {
                    Some(was) => format!("{device} moved from {was} to {org}"),
                    None => format!("{device} is in the care of {org}"),
                })
            }
        }
    };
    let args = serde_json::json!({ "device": device });
    done(&portal, person, "device.assign", &org, args, outcome).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_organisation_needs_a_plain_id_a_name_and_a_real_time_zone() {
        assert_eq!(new_org_problem("east", "East Care", "Europe/Berlin"), None);
        assert!(new_org_problem("East Care", "East Care", "UTC")
            .unwrap()
            .contains("id"));
        assert!(new_org_problem("e", "East", "UTC").is_some());
        assert!(new_org_problem("east", "  ", "UTC")
            .unwrap()
            .contains("name"));
        assert!(new_org_problem("east", "East", "Mars/Olympus")
            .unwrap()
            .contains("time zone"));
    }
}
