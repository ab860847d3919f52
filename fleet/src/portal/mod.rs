//! `medbox-fleet serve`: the portal. Server-rendered pages (auto-escaping templates, no
//! JavaScript) over the archive, for the people of each organisation: caregivers see their
//! patients' doses and alerts and act on them, pharmacists every fridge, the audit and each
//! device's witness status. Every action goes to the appliance as its own command, in the
//! person's role, and is audited in PostgreSQL with the person.

pub mod actions;
pub mod auth;
mod forms;
mod organisations;
mod pages;
mod people;
pub mod store;
pub mod views;

use crate::archive::{Archive, ArchiveError};
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;
use chrono::{DateTime, Utc};
use minijinja::Environment;
use std::sync::Arc;
use std::time::Duration;
use store::Person;

/// How the portal runs.
#[derive(Clone)]
pub struct PortalConfig {
    /// PostgreSQL connection string.
    pub pg: String,
    /// Schema (tests use one each).
    pub schema: Option<String>,
    /// The broker the appliances take commands from.
    pub mqtt: String,
    /// Broker username and password, if the broker wants them.
    pub mqtt_credentials: Option<(String, String)>,
    /// Mark the session cookie `Secure` (set when a TLS proxy is in front).
    pub secure_cookies: bool,
    /// How long to wait for an appliance's answer.
    pub command_timeout: Duration,
    /// What "now" is for the pages' today, week and month (a demo or test sets it; the
    /// appliances' own times are what they reported).
    pub clock: Clock,
    /// The vial band the fridge page calls in range (°C).
    pub band: (f64, f64),
}

/// The portal's idea of now.
#[derive(Clone, Copy, Debug)]
pub enum Clock {
    /// The system clock.
    System,
    /// A fixed instant.
    Fixed(DateTime<Utc>),
}

impl Clock {
    fn now(self) -> DateTime<Utc> {
        match self {
            Clock::System => Utc::now(),
            Clock::Fixed(t) => t,
        }
    }
}

pub(crate) struct Inner {
    archive: Archive,
    templates: Environment<'static>,
    cfg: PortalConfig,
}

/// The portal's shared state.
#[derive(Clone)]
pub struct Portal(pub(crate) Arc<Inner>);

/// A page could not be made.
#[derive(Debug, thiserror::Error)]
pub enum PageError {
    /// PostgreSQL.
    #[error("database: {0}")]
    Pg(#[from] tokio_postgres::Error),
    /// A template.
    #[error("template: {0}")]
    Template(#[from] minijinja::Error),
    /// Not there, or not this person's organisation's (the same answer, on purpose).
    #[error("not found")]
    NotFound,
    /// A device's report.
    #[error("report: {0}")]
    Report(String),
    /// The CSV writer.
    #[error("csv: {0}")]
    Csv(String),
    /// A form without the session's CSRF token, or posted from another site.
    #[error("this form is not from your session; reload the page and try again")]
    Forbidden,
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        let status = match self {
            PageError::NotFound => StatusCode::NOT_FOUND,
            PageError::Forbidden => StatusCode::FORBIDDEN,
            _ => {
                tracing::error!("portal: {self}");
                StatusCode::INTERNAL_SERVER_ERROR
            }
        };
        (status, self.to_string()).into_response()
    }
}

type PageResult = Result<Response, PageError>;

impl Portal {
    /// Connects to the archive (migrating it) and loads the templates.
    pub async fn new(cfg: PortalConfig) -> Result<Self, ArchiveError> {
        let archive = Archive::connect(&cfg.pg, cfg.schema.as_deref()).await?;
        Ok(Self(Arc::new(Inner {
            archive,
            templates: templates(),
            cfg,
        })))
    }

    /// The archive connection (for provisioning organisations and people).
    pub fn db(&self) -> &tokio_postgres::Client {
        self.0.archive.client()
    }

    /// The routes.
    pub fn router(&self) -> Router {
        Router::new()
            .route("/", get(pages::home))
            .route("/login", get(pages::login_form).post(forms::login))
            .route("/logout", post(forms::logout))
            .route("/password", get(pages::password_form).post(forms::password))
            .route("/patients", get(pages::patients))
            .route("/patients/{device}/{patient}", get(pages::patient))
            .route("/devices/{device}/command", post(forms::command))
            .route(
                "/devices/{device}/schedule",
                get(pages::schedule_form).post(forms::schedule),
            )
            .route("/confirmations", get(pages::confirmations))
            .route("/confirmations/{device}/{version}", post(forms::confirm))
            .route("/fridges", get(pages::fridges))
            .route("/devices/{device}/report", get(pages::report))
            .route("/audit", get(pages::audit))
            .route("/audit.csv", get(pages::audit_csv))
            .route("/people", get(people::list).post(people::create))
            .route(
                "/organisations",
                get(organisations::list).post(organisations::create),
            )
            .route(
                "/organisations/{org}/admins",
                post(organisations::add_admin),
            )
            .route("/organisations/{org}/devices", post(organisations::assign))
            .route("/people/{username}/disabled", post(people::disabled))
            .route("/people/{username}/password", post(people::password))
            .layer(axum::middleware::from_fn(same_origin))
            .with_state(self.clone())
    }

    /// Serves on `listener` until `stop` resolves.
    pub async fn serve(
        &self,
        listener: tokio::net::TcpListener,
        stop: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        axum::serve(listener, self.router())
            .with_graceful_shutdown(stop)
            .await
    }

    fn now(&self) -> DateTime<Utc> {
        self.0.cfg.clock.now()
    }

    fn render(&self, name: &str, ctx: minijinja::Value) -> Result<String, PageError> {
        Ok(self.0.templates.get_template(name)?.render(ctx)?)
    }

    fn page(&self, status: StatusCode, name: &str, ctx: minijinja::Value) -> PageResult {
        Ok(html(status, self.render(name, ctx)?))
    }

    /// Refuses a device outside the person's organisation as not found (the same answer as
    /// one that does not exist).
    async fn own_device(&self, person: &Person, device: &str) -> Result<(), PageError> {
        if store::device_in_org(self.db(), device, &person.org_id).await? {
            Ok(())
        } else {
            Err(PageError::NotFound)
        }
    }

    /// A one-message page (a command's result, a refusal).
    fn message(
        &self,
        person: Option<&Person>,
        status: StatusCode,
        title: &str,
        ok: bool,
        message: &str,
        back: Option<String>,
    ) -> PageResult {
        self.page(
            status,
            "message.html",
            minijinja::context! { person, title, ok, message, back },
        )
    }

    /// The signed-in person, or the login page.
    /// The signed-in person. One still on a password someone else set is sent to choose their
    /// own first, unless `first_password_allowed` (the password page and signing out).
    async fn person(
        &self,
        headers: &HeaderMap,
        first_password_allowed: bool,
    ) -> Result<Result<Person, Response>, PageError> {
        let token = headers
            .get(header::COOKIE)
            .and_then(|v| v.to_str().ok())
            .and_then(auth::session_cookie);
        match token {
            Some(t) => match store::session(self.db(), t).await? {
                Some(p) if p.first_password && !first_password_allowed => {
                    Ok(Err(Redirect::to("/password").into_response()))
                }
                Some(p) => Ok(Ok(p)),
                None => Ok(Err(Redirect::to("/login").into_response())),
            },
            None => Ok(Err(Redirect::to("/login").into_response())),
        }
    }
}

/// An HTML page that no cache keeps (it holds patients' data).
fn html(status: StatusCode, body: String) -> Response {
    (
        status,
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        body,
    )
        .into_response()
}

/// Signed in, or return the redirect to the login page.
macro_rules! signed_in {
    ($portal:expr, $headers:expr) => {
        match $portal.person(&$headers, false).await? {
            Ok(p) => p,
            Err(redirect) => return Ok(redirect),
        }
    };
    ($portal:expr, $headers:expr, first_password_allowed) => {
        match $portal.person(&$headers, true).await? {
            Ok(p) => p,
            Err(redirect) => return Ok(redirect),
        }
    };
}
pub(crate) use signed_in;

/// Refuses a state-changing request another site started (its `Origin` is not this host),
/// on top of SameSite cookies and the CSRF token.
async fn same_origin(req: Request, next: Next) -> Response {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let host = req
            .headers()
            .get(header::HOST)
            .and_then(|v| v.to_str().ok());
        let origin = req
            .headers()
            .get(header::ORIGIN)
            .and_then(|v| v.to_str().ok());
        if let Some(origin) = origin {
            let origin_host = origin.split_once("://").map(|(_, h)| h);
            if origin_host.is_none() || origin_host != host {
                return PageError::Forbidden.into_response();
            }
        }
    }
    next.run(req).await
}

fn templates() -> Environment<'static> {
    let mut env = Environment::new();
    for (name, src) in [
        ("base.html", include_str!("templates/base.html")),
        ("login.html", include_str!("templates/login.html")),
        ("password.html", include_str!("templates/password.html")),
        ("message.html", include_str!("templates/message.html")),
        ("patients.html", include_str!("templates/patients.html")),
        ("patient.html", include_str!("templates/patient.html")),
        ("schedule.html", include_str!("templates/schedule.html")),
        (
            "confirmations.html",
            include_str!("templates/confirmations.html"),
        ),
        ("fridges.html", include_str!("templates/fridges.html")),
        ("audit.html", include_str!("templates/audit.html")),
        ("people.html", include_str!("templates/people.html")),
        (
            "organisations.html",
            include_str!("templates/organisations.html"),
        ),
    ] {
        env.add_template(name, src)
            .unwrap_or_else(|e| panic!("template {name}: {e}"));
    }
    env
}

/// The person's time zone (UTC when the organisation's is not a zone name).
fn zone(person: &Person) -> chrono_tz::Tz {
    person.tz.parse().unwrap_or(chrono_tz::UTC)
}

/// The portal, as the handlers take it.
pub(crate) type St = State<Portal>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_template_loads_and_escapes_what_it_is_given() {
        let env = templates();
        let html = env
            .get_template("message.html")
            .unwrap()
            .render(minijinja::context! {
                title => "<script>alert(1)</script>", ok => false,
                message => "\"><img src=x onerror=alert(1)>", back => "/x"
            })
            .unwrap();
        assert!(!html.contains("<script>alert"), "{html}");
        assert!(!html.contains("<img src=x"), "{html}");
        assert!(html.contains("&lt;script&gt;"));
    }
}
