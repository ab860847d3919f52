//! The People page: an organisation's administrator adds people, disables and re-enables them
//! (a disabled person is signed out at once and cannot sign in), and sets a new password for
//! one who lost theirs. Only within their own organisation; every try is audited, refused ones
//! too. The command line (`medbox-fleet person`) stays for the first administrator.

use super::auth;
use super::forms::{audit, csrf};
use super::store::{self, Person};
use super::{signed_in, PageResult, Portal, St};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Form;
use minijinja::context;
use std::collections::HashMap;

fn admins_only(portal: &Portal, person: &Person) -> Option<PageResult> {
    (!person.admin).then(|| {
        portal.message(
            Some(person),
            StatusCode::FORBIDDEN,
            "Administrators only",
            false,
            "This page is for your organisation's administrators.",
            Some("/".into()),
        )
    })
}

/// For a form: refuses a person who is not an administrator, and audits the try.
async fn unless_admin(
    portal: &Portal,
    person: &Person,
    action: &str,
    who: &str,
) -> Result<Option<PageResult>, super::PageError> {
    let Some(refused) = admins_only(portal, person) else {
        return Ok(None);
    };
    audit(
        portal,
        person,
        None,
        action,
        None,
        serde_json::json!({ "person": who }),
        false,
        "refused: administrators only",
    )
    .await?;
    Ok(Some(refused))
}

async fn page(
    portal: &Portal,
    person: Person,
    status: StatusCode,
    flash: Option<(bool, String)>,
) -> PageResult {
    let people = store::people(portal.db(), &person.org_id).await?;
    let (ok, message) = flash.unzip();
    portal.page(
        status,
        "people.html",
        context! { person, people, roles => auth::ROLES, ok, message },
    )
}

pub(super) async fn list(State(portal): St, headers: HeaderMap) -> PageResult {
    let person = signed_in!(portal, headers);
    if let Some(refused) = admins_only(&portal, &person) {
        return refused;
    }
    page(&portal, person, StatusCode::OK, None).await
}

/// Audits what an administrator did or tried, then shows the page with the outcome.
async fn done(
    portal: &Portal,
    person: Person,
    action: &str,
    who: &str,
    outcome: Result<String, (StatusCode, String)>,
) -> PageResult {
    let (ok, detail, status) = match &outcome {
        Ok(d) => (true, d.clone(), StatusCode::OK),
        Err((s, d)) => (false, d.clone(), *s),
    };
    audit(
        portal,
        &person,
        None,
        action,
        None,
        serde_json::json!({ "person": who }),
        ok,
        &detail,
    )
    .await?;
    page(portal, person, status, Some((ok, detail))).await
}

pub(super) async fn create(
    State(portal): St,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> PageResult {
    let person = signed_in!(portal, headers);
    csrf(&person, form.get("csrf"))?;
    let username = form.get("username").map_or("", |u| u.trim());
    if let Some(refused) = unless_admin(&portal, &person, "person.add", username).await? {
        return refused;
    }
    let outcome = add_person(&portal, &person.org_id, &form, false).await?;
    done(&portal, person, "person.add", username, outcome).await
}

pub(super) async fn disabled(
    State(portal): St,
    headers: HeaderMap,
    Path(username): Path<String>,
    Form(form): Form<HashMap<String, String>>,
) -> PageResult {
    let person = signed_in!(portal, headers);
    csrf(&person, form.get("csrf"))?;
    let disable = form.get("disabled").map(String::as_str) == Some("true");
    let action = if disable {
        "person.disable"
    } else {
        "person.enable"
    };
    if let Some(refused) = unless_admin(&portal, &person, action, &username).await? {
        return refused;
    }
    let outcome = if disable && username == person.username {
        Err((
            StatusCode::UNPROCESSABLE_ENTITY,
            "you cannot disable yourself".to_string(),
        ))
    } else if store::set_disabled(portal.db(), &person.org_id, &username, disable).await? {
        Ok(if disable {
            format!("{username} is disabled and signed out")
        } else {
            format!("{username} may sign in again")
        })
    } else {
        Err(not_yours(&username))
    };
    done(&portal, person, action, &username, outcome).await
}

pub(super) async fn password(
    State(portal): St,
    headers: HeaderMap,
    Path(username): Path<String>,
    Form(form): Form<HashMap<String, String>>,
) -> PageResult {
    let person = signed_in!(portal, headers);
    csrf(&person, form.get("csrf"))?;
    let action = "person.password_reset";
    if let Some(refused) = unless_admin(&portal, &person, action, &username).await? {
        return refused;
    }
    let new = form.get("password").map_or("", String::as_str);
    let outcome = if let Some(short) = auth::too_short(new) {
        Err((
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("not set: {short}"),
        ))
    } else if store::reset_password(portal.db(), &person.org_id, &username, new).await? {
        Ok(format!(
            "{username} has a new password; their sessions are signed out"
        ))
    } else {
        Err(not_yours(&username))
    };
    done(&portal, person, action, &username, outcome).await
}

/// Checks a new person's fields (from the add-person form) and adds them to `org`, as an
/// administrator of its people if `admin`; the outcome as the page tells it.
pub(super) async fn add_person(
    portal: &Portal,
    org: &str,
    form: &HashMap<String, String>,
    admin: bool,
) -> Result<Result<String, (StatusCode, String)>, super::PageError> {
    let field = |f: &str| form.get(f).map_or("", String::as_str);
    let (username, role, name, password) = (
        field("username").trim(),
        field("role"),
        field("display_name"),
        field("password"),
    );
    if let Some(p) = auth::new_person_problem(username, role, name, password) {
        return Ok(Err((
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("not added: {p}"),
        )));
    }
    Ok(
        if store::create_person(portal.db(), org, username, role, name, password, admin).await? {
            Ok(if admin {
                format!("{username} added to {org} as {role} and administrator of its people")
            } else {
                format!("{username} added as {role}")
            })
        } else {
            Err((
                StatusCode::CONFLICT,
                format!("not added: the login name {username} is taken"),
            ))
        },
    )
}

/// A person of another organisation is answered as one who does not exist.
fn not_yours(username: &str) -> (StatusCode, String) {
    (
        StatusCode::NOT_FOUND,
        format!("no person {username} in your organisation"),
    )
}
