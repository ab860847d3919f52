//! What the forms do: sign in and out, and send commands to appliances. Each checks the
//! session's CSRF token first, sends the command in the person's role and name, shows the
//! appliance's own answer, and audits the action (refused and failed ones too).

use super::actions;
use super::auth;
use super::store::{self, Action, Person};
use super::{signed_in, PageError, PageResult, Portal, St};
use axum::extract::{Multipart, Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect};
use axum::Form;
use medbox::remote::{Answer, Request};
use minijinja::context;
use serde::Deserialize;
use std::collections::HashMap;

#[derive(Deserialize)]
pub(super) struct Login {
    username: String,
    password: String,
}

/// Audits a sign-in try under the name that was typed (there is no person yet).
async fn record_sign_in(
    db: &tokio_postgres::Client,
    username: &str,
    ok: bool,
    detail: &str,
) -> Result<(), PageError> {
    let action = Action {
        username,
        org: None,
        device: None,
        action: "login",
        command_id: None,
        args: serde_json::json!({}),
        ok,
        detail,
    };
    Ok(store::record(db, &action).await?)
}

pub(super) async fn login(State(portal): St, Form(f): Form<Login>) -> PageResult {
    let db = portal.db();
    let failures =
        store::recent_failed_sign_ins(db, &f.username, auth::SIGN_IN_WINDOW_MINUTES).await?;
    if auth::sign_in_throttled(failures) {
        record_sign_in(
            db,
            &f.username,
            false,
            "throttled: too many wrong passwords",
        )
        .await?;
        let error = format!(
            "Too many wrong passwords under this name: wait {} minutes, or ask whoever runs \
             the portal.",
            auth::SIGN_IN_WINDOW_MINUTES
        );
        return portal.page(
            StatusCode::TOO_MANY_REQUESTS,
            "login.html",
            context! { person => None::<Person>, error },
        );
    }
    let ok = store::check_password(db, &f.username, &f.password).await?;
    let detail = if ok {
        "signed in"
    } else {
        store::WRONG_PASSWORD
    };
    record_sign_in(db, &f.username, ok, detail).await?;
    if !ok {
        return portal.page(
            StatusCode::UNAUTHORIZED,
            "login.html",
            context! { person => None::<Person>, error => "Wrong username or password." },
        );
    }
    let token = store::start_session(db, &f.username).await?;
    Ok((
        [(
            header::SET_COOKIE,
            auth::set_cookie(&token, portal.0.cfg.secure_cookies),
        )],
        Redirect::to("/"),
    )
        .into_response())
}

pub(super) fn csrf(person: &Person, form: Option<&String>) -> Result<(), PageError> {
    if auth::csrf_matches(&person.csrf, form.map_or("", String::as_str)) {
        Ok(())
    } else {
        Err(PageError::Forbidden)
    }
}

/// The session token the request's cookie carries.
fn session_token(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::COOKIE)
        .and_then(|v| v.to_str().ok())
        .and_then(auth::session_cookie)
}

pub(super) async fn logout(
    State(portal): St,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> PageResult {
    let person = signed_in!(portal, headers, first_password_allowed);
    csrf(&person, form.get("csrf"))?;
    if let Some(t) = session_token(&headers) {
        store::end_session(portal.db(), t).await?;
    }
    audit(
        &portal,
        &person,
        None,
        "logout",
        None,
        serde_json::json!({}),
        true,
        "signed out",
    )
    .await?;
    Ok((
        [(header::SET_COOKIE, auth::clear_cookie())],
        Redirect::to("/login"),
    )
        .into_response())
}

pub(super) async fn password(
    State(portal): St,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> PageResult {
    let person = signed_in!(portal, headers, first_password_allowed);
    csrf(&person, form.get("csrf"))?;
    let field = |f: &str| form.get(f).map_or("", String::as_str);
    let (current, new) = (field("current"), field("new"));
    let problem = if !store::check_password(portal.db(), &person.username, current).await? {
        Some("the current password is wrong".to_string())
    } else {
        auth::new_password_problem(current, new, field("repeat"))
    };
    let detail = problem
        .as_deref()
        .unwrap_or("password changed; other sessions ended");
    audit(
        &portal,
        &person,
        None,
        "password_change",
        None,
        serde_json::json!({}),
        problem.is_none(),
        detail,
    )
    .await?;
    if let Some(error) = problem {
        return portal.page(
            StatusCode::UNPROCESSABLE_ENTITY,
            "password.html",
            context! { person, error },
        );
    }
    let token = session_token(&headers).unwrap_or_default();
    store::change_password(portal.db(), &person.username, new, token).await?;
    portal.message(
        Some(&person),
        StatusCode::OK,
        "Password changed",
        true,
        "Your password is changed; any other session of yours has been signed out.",
        Some("/".into()),
    )
}

#[allow(clippy::too_many_arguments)]
pub(super) async fn audit(
    portal: &Portal,
    person: &Person,
    device: Option<&str>,
    action: &str,
    command_id: Option<&str>,
    args: serde_json::Value,
    ok: bool,
    detail: &str,
) -> Result<(), PageError> {
    store::record(
        portal.db(),
        &Action {
            username: &person.username,
            org: Some(&person.org_id),
            device,
            action,
            command_id,
            args,
            ok,
            detail,
        },
    )
    .await
    .map_err(PageError::from)
}

/// What became of a command sent to an appliance.
enum Sent {
    /// The appliance answered.
    Answered(Answer),
    /// It could not be sent, or no answer came.
    Failed(String),
}

impl Portal {
    /// Sends `request` to `device` as `person` under command id `id` and audits it with the
    /// answer.
    async fn send(
        &self,
        person: &Person,
        device: &str,
        request: &Request,
        id: &str,
    ) -> Result<Sent, PageError> {
        let client = format!("medbox-portal-{}", &auth::random_token()[..16]);
        let cfg = &self.0.cfg;
        let sent = match medbox::uplink::broker_options(
            &cfg.mqtt,
            &client,
            None,
            cfg.mqtt_credentials.as_ref(),
        ) {
            Err(e) => Sent::Failed(format!("broker: {e}")),
            Ok(mut opts) => {
                opts.set_keep_alive(std::time::Duration::from_secs(10));
                opts.set_max_packet_size(256 * 1024, 64 * 1024);
                match medbox::remote::send(
                    opts,
                    device,
                    &person.role,
                    &person.username,
                    id,
                    request,
                    cfg.command_timeout,
                )
                .await
                {
                    Ok(a) => Sent::Answered(a),
                    Err(e) => Sent::Failed(e.to_string()),
                }
            }
        };
        let (ok, detail) = match &sent {
            Sent::Answered(a) => (a.ok, a.detail.clone()),
            Sent::Failed(why) => (false, why.clone()),
        };
        audit(
            self,
            person,
            Some(device),
            request.name(),
            Some(id),
            request.args(),
            ok,
            &detail,
        )
        .await?;
        Ok(sent)
    }

    /// Sends `request` under the id of the form rendered with `token`; a form without a valid
    /// token is not sent, and the page saying so comes back instead.
    async fn send_form(
        &self,
        person: &Person,
        device: &str,
        request: &Request,
        token: Option<&String>,
        back: Option<String>,
    ) -> Result<Result<Sent, axum::response::Response>, PageError> {
        match actions::command_id(token, request) {
            Ok(id) => Ok(Ok(self.send(person, device, request, &id).await?)),
            Err(e) => Ok(Err(self.message(
                Some(person),
                StatusCode::UNPROCESSABLE_ENTITY,
                "Not sent",
                false,
                &e.to_string(),
                back,
            )?)),
        }
    }

    fn answer_page(
        &self,
        person: &Person,
        what: &str,
        sent: &Sent,
        back: Option<String>,
    ) -> PageResult {
        let (status, ok, message) = match sent {
            Sent::Answered(a) if a.ok && a.duplicate => (
                StatusCode::OK,
                true,
                format!(
                    "Already done: this form had been sent before, and the appliance does a \
                     command once: {}",
                    a.detail
                ),
            ),
            Sent::Answered(a) if a.ok => (StatusCode::OK, true, format!("Done: {}", a.detail)),
            Sent::Answered(a) => (
                StatusCode::CONFLICT,
                false,
                format!("The appliance refused: {}", a.detail),
            ),
            Sent::Failed(why) => (
                StatusCode::GATEWAY_TIMEOUT,
                false,
                format!(
                    "No answer: {why}. If the appliance got the command it may have done it; \
                     sending this same form again is safe, since the appliance does a command \
                     once and answers again."
                ),
            ),
        };
        self.message(Some(person), status, what, ok, &message, back)
    }
}

pub(super) async fn command(
    State(portal): St,
    headers: HeaderMap,
    Path(device): Path<String>,
    Form(form): Form<HashMap<String, String>>,
) -> PageResult {
    let person = signed_in!(portal, headers);
    csrf(&person, form.get("csrf"))?;
    portal.own_device(&person, &device).await?;
    let back = actions::local_path(form.get("back"));
    let parsed = actions::request(&form);
    let (name, args) = match &parsed {
        Ok(r) => (r.name().to_string(), r.args()),
        Err(_) => (
            form.get("command").cloned().unwrap_or("command".into()),
            serde_json::json!(form_args(&form)),
        ),
    };
    // Checked in this order so the reason shown is the one that matters most: a malformed
    // form, then a command the role may not send, then a form without its token.
    let checked = parsed
        .map_err(|e| (StatusCode::UNPROCESSABLE_ENTITY, e.to_string()))
        .and_then(|r| {
            if actions::may(&person.role, r.name()) {
                Ok(r)
            } else {
                let why = format!("a {} may not send {}", person.role, r.name());
                Err((StatusCode::FORBIDDEN, why))
            }
        })
        .and_then(|r| match actions::command_id(form.get("form"), &r) {
            Ok(id) => Ok((id, r)),
            Err(e) => Err((StatusCode::UNPROCESSABLE_ENTITY, e.to_string())),
        });
    let (id, request) = match checked {
        Ok(sent) => sent,
        Err((status, why)) => {
            audit(
                &portal,
                &person,
                Some(&device),
                &name,
                None,
                args,
                false,
                &why,
            )
            .await?;
            return portal.message(Some(&person), status, "Not sent", false, &why, back);
        }
    };
    let sent = portal.send(&person, &device, &request, &id).await?;
    portal.answer_page(
        &person,
        &format!("{} on {device}", request.name()),
        &sent,
        back,
    )
}

/// The form's fields without its CSRF token, for the audit.
fn form_args(form: &HashMap<String, String>) -> HashMap<&str, &str> {
    form.iter()
        .filter(|(k, _)| k.as_str() != "csrf" && k.as_str() != "form")
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect()
}

pub(super) async fn schedule(
    State(portal): St,
    headers: HeaderMap,
    Path(device): Path<String>,
    mut multipart: Multipart,
) -> PageResult {
    let person = signed_in!(portal, headers);
    let mut fields: HashMap<String, String> = HashMap::new();
    let mut file_name = None;
    while let Some(field) = multipart
        .next_field()
        .await
        .map_err(|_| PageError::Forbidden)?
    {
        let name = field.name().unwrap_or_default().to_string();
        if name == "file" {
            file_name = field.file_name().map(str::to_string);
        }
        let value = field.text().await.map_err(|_| PageError::Forbidden)?;
        fields.insert(name, value);
    }
    csrf(&person, fields.get("csrf"))?;
    portal.own_device(&person, &device).await?;
    let uploaded = fields.get("file").filter(|f| !f.trim().is_empty());
    let text = uploaded.or(fields.get("text")).cloned().unwrap_or_default();
    let shown_name = match (uploaded, &file_name) {
        (Some(_), Some(n)) if !n.is_empty() => n.clone(),
        _ => "schedule.toml".into(),
    };
    let parsed =
        medbox::dosing::schedule::Schedule::parse(&text, std::path::Path::new(&shown_name));
    let schedule = match parsed {
        Ok(s) => s,
        Err(errors) => {
            let errors: Vec<String> = errors.iter().map(ToString::to_string).collect();
            audit(
                &portal,
                &person,
                Some(&device),
                "replace_schedule",
                None,
                serde_json::json!({ "file": shown_name }),
                false,
                &format!("not sent: {}", errors.join("; ")),
            )
            .await?;
            return portal.page(
                StatusCode::UNPROCESSABLE_ENTITY,
                "schedule.html",
                context! { person, device, patient => None::<String>, errors, text,
                form => fields.get("form").cloned().unwrap_or_else(actions::form_token) },
            );
        }
    };
    if !actions::may(&person.role, "replace_schedule") {
        return Err(PageError::Forbidden);
    }
    let request = Request::InstallSchedule {
        patient: schedule.patient.clone(),
        schedule: text.clone(),
        confirm: None,
    };
    let sent = match portal
        .send_form(&person, &device, &request, fields.get("form"), None)
        .await?
    {
        Ok(sent) => sent,
        Err(not_sent) => return Ok(not_sent),
    };
    if let Some(page) =
        held_for_confirmation(&portal, &person, &device, &schedule.patient, &text, &sent).await?
    {
        return Ok(page);
    }
    let back = format!(
        "/patients/{}/{}",
        super::pages::urlencoding(&device),
        super::pages::urlencoding(&schedule.patient)
    );
    portal.answer_page(
        &person,
        &format!("Schedule of {}", schedule.patient),
        &sent,
        Some(back),
    )
}

/// When the appliance holds a change for a second person, keeps it for them to read and
/// confirm, and says so.
async fn held_for_confirmation(
    portal: &Portal,
    person: &Person,
    device: &str,
    patient: &str,
    text: &str,
    sent: &Sent,
) -> Result<Option<axum::response::Response>, PageError> {
    let Sent::Answered(a) = sent else {
        return Ok(None);
    };
    let Some(version) = confirmation_version(&a.detail).filter(|_| !a.ok) else {
        return Ok(None);
    };
    store::hold(
        portal.db(),
        &store::Pending {
            device: device.into(),
            version: version.clone(),
            patient: patient.into(),
            schedule: text.into(),
            why: a.detail.clone(),
            requested_by: person.username.clone(),
            requested_at: String::new(),
        },
    )
    .await?;
    portal
        .message(
            Some(person),
            StatusCode::ACCEPTED,
            "Waiting for a second person",
            true,
            &format!(
                "The appliance holds version {version} until someone else confirms it: {}",
                a.detail
            ),
            Some("/confirmations".into()),
        )
        .map(Some)
}

/// The version named in a `CONFIRMATION_REQUIRED` refusal (`… confirm = "<version>"`).
pub(crate) fn confirmation_version(detail: &str) -> Option<String> {
    if !detail.starts_with("CONFIRMATION_REQUIRED") {
        return None;
    }
    let after = detail.rsplit_once("confirm = ")?.1;
    let quoted = after.strip_prefix('"')?;
    Some(quoted.split('"').next()?.to_string()).filter(|v| !v.is_empty())
}

pub(super) async fn confirm(
    State(portal): St,
    headers: HeaderMap,
    Path((device, version)): Path<(String, String)>,
    Form(form): Form<HashMap<String, String>>,
) -> PageResult {
    let person = signed_in!(portal, headers);
    csrf(&person, form.get("csrf"))?;
    let Some(pending) = store::pending(portal.db(), &person.org_id, Some((&device, &version)))
        .await?
        .pop()
    else {
        return Err(PageError::NotFound);
    };
    if pending.requested_by == person.username {
        let why = "the second confirmation must come from someone else";
        audit(
            &portal,
            &person,
            Some(&device),
            "replace_schedule.confirm",
            None,
            serde_json::json!({ "version": version }),
            false,
            why,
        )
        .await?;
        return portal.message(
            Some(&person),
            StatusCode::FORBIDDEN,
            "Not sent",
            false,
            why,
            Some("/confirmations".into()),
        );
    }
    let request = Request::InstallSchedule {
        patient: pending.patient.clone(),
        schedule: pending.schedule.clone(),
        confirm: Some(version.clone()),
    };
    let back = Some("/confirmations".to_string());
    let sent = match portal
        .send_form(&person, &device, &request, form.get("form"), back)
        .await?
    {
        Ok(sent) => sent,
        Err(not_sent) => return Ok(not_sent),
    };
    if matches!(&sent, Sent::Answered(a) if a.ok) {
        store::confirmed(portal.db(), &device, &version, &person.username).await?;
    } else if let Some(page) = held_for_confirmation(
        &portal,
        &person,
        &device,
        &pending.patient,
        &pending.schedule,
        &sent,
    )
    .await?
    {
        // The appliance no longer held the first request (it restarted): this person's
        // confirmation now is the first, and someone else must confirm.
        return Ok(page);
    }
    portal.answer_page(
        &person,
        &format!("Schedule of {} (confirmed)", pending.patient),
        &sent,
        Some("/confirmations".into()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_version_to_confirm_is_read_from_the_appliances_refusal() {
        let d = "CONFIRMATION_REQUIRED: Methotrexate loses its weekly guard; a second person must send the same schedule with confirm = \"3f2a9c\"";
        assert_eq!(confirmation_version(d), Some("3f2a9c".into()));
        assert_eq!(confirmation_version("SLOT_CONFLICT: confirm = \"x\""), None);
        assert_eq!(
            confirmation_version("CONFIRMATION_REQUIRED: no version"),
            None
        );
    }
}
