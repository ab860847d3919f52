//! The pages people read. Each takes the signed-in person and shows only their
//! organisation's appliances and patients; a device of another organisation is "not found".

use super::store::{self, Person};
use super::views::{self, Alert};
use super::{signed_in, zone, PageError, PageResult, Portal, St};
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect};
use chrono::{Datelike, Duration, NaiveDate};
use minijinja::context;
use serde::{Deserialize, Serialize};

pub(super) async fn home(State(portal): St, headers: HeaderMap) -> PageResult {
    let person = signed_in!(portal, headers);
    Ok(Redirect::to(if person.role == "pharmacist" {
        "/fridges"
    } else {
        "/patients"
    })
    .into_response())
}

pub(super) async fn password_form(State(portal): St, headers: HeaderMap) -> PageResult {
    let person = signed_in!(portal, headers, first_password_allowed);
    portal.page(
        StatusCode::OK,
        "password.html",
        context! { person, error => None::<String> },
    )
}

pub(super) async fn login_form(State(portal): St) -> PageResult {
    portal.page(
        StatusCode::OK,
        "login.html",
        context! { person => None::<Person> },
    )
}

#[derive(Serialize)]
struct PatientSummary {
    device: String,
    patient: String,
    today: Vec<views::DoseView>,
    week_taken: usize,
    week_due: usize,
    open_alerts: usize,
}

/// Patients on one page of the list: an organisation of a thousand appliances has thousands.
const PATIENTS_PER_PAGE: i64 = 50;

#[derive(Deserialize)]
pub(super) struct Paging {
    page: Option<i64>,
}

pub(super) async fn patients(
    State(portal): St,
    headers: HeaderMap,
    Query(paging): Query<Paging>,
) -> PageResult {
    let person = signed_in!(portal, headers);
    let db = portal.db();
    let tz = zone(&person);
    let today = views::local_day(portal.now(), tz);
    let week = views::days_utc(views::week_start(today), today, tz);
    let day = views::days_utc(today, today, tz);
    let total = store::patient_count(db, &person.org_id).await?;
    let pages = (total + PATIENTS_PER_PAGE - 1) / PATIENTS_PER_PAGE;
    let page = paging.page.unwrap_or(1).clamp(1, pages.max(1));
    let list = store::patients(
        db,
        &person.org_id,
        ((page - 1) * PATIENTS_PER_PAGE, PATIENTS_PER_PAGE),
    )
    .await?;
    let devices: Vec<String> = {
        let mut d: Vec<String> = list.iter().map(|(d, _)| d.clone()).collect();
        d.sort();
        d.dedup();
        d
    };
    let doses = store::doses(db, &person.org_id, &devices, None, week).await?;
    let alerts = views::open_alerts(&store::alert_states(db, &devices).await?);
    let patients: Vec<PatientSummary> = list
        .into_iter()
        .map(|(device, patient)| {
            let mine: Vec<&store::DoseRow> = doses
                .iter()
                .filter(|d| d.device == device && d.patient == patient)
                .collect();
            let scheduled = mine
                .iter()
                .filter(|d| !d.as_needed && d.outcome != "skipped");
            PatientSummary {
                today: mine
                    .iter()
                    .filter(|d| d.occurrence >= day.0 && d.occurrence < day.1)
                    .map(|d| views::dose_view(d, tz, false))
                    .collect(),
                week_taken: scheduled
                    .clone()
                    .filter(|d| matches!(d.outcome.as_str(), "taken" | "confirmed_given"))
                    .count(),
                week_due: scheduled.count(),
                open_alerts: alerts.iter().filter(|a| a.device == device).count(),
                device,
                patient,
            }
        })
        .collect();
    portal.page(
        StatusCode::OK,
        "patients.html",
        context! { person, patients, today => today.to_string(), tz => tz.name(),
        page, pages, total },
    )
}

#[derive(Serialize)]
struct Section {
    title: String,
    id: &'static str,
    doses: Vec<views::DoseView>,
}

pub(super) async fn patient(
    State(portal): St,
    headers: HeaderMap,
    Path((device, patient)): Path<(String, String)>,
) -> PageResult {
    let person = signed_in!(portal, headers);
    let db = portal.db();
    if !store::patient_in_org(db, &person.org_id, &device, &patient).await? {
        return Err(PageError::NotFound);
    }
    let tz = zone(&person);
    let today = views::local_day(portal.now(), tz);
    let week = store::doses(
        db,
        &person.org_id,
        std::slice::from_ref(&device),
        Some(&patient),
        views::days_utc(views::week_start(today), today + Duration::days(1), tz),
    )
    .await?;
    let day = views::days_utc(today, today, tz);
    let dose_sections = vec![
        Section {
            title: format!("Today ({today})"),
            id: "today",
            doses: week
                .iter()
                .filter(|d| d.occurrence >= day.0 && d.occurrence < day.1)
                .map(|d| views::dose_view(d, tz, false))
                .collect(),
        },
        Section {
            title: format!("This week (from {})", views::week_start(today)),
            id: "week",
            doses: week.iter().map(|d| views::dose_view(d, tz, true)).collect(),
        },
    ];
    let records = store::dose_records(
        db,
        &device,
        &patient,
        views::days_utc(today - Duration::days(15), today + Duration::days(1), tz),
    )
    .await?;
    let trend = views::trend(&records, tz, today, 14);
    let alerts: Vec<Alert> =
        views::open_alerts(&store::alert_states(db, std::slice::from_ref(&device)).await?);
    let actions = store::actions(db, &device, 20).await?;
    let here = format!(
        "/patients/{}/{}",
        urlencoding(&device),
        urlencoding(&patient)
    );
    let may = super::actions::allowed(&person.role);
    portal.page(
        StatusCode::OK,
        "patient.html",
        context! { person, device, patient, dose_sections, trend, alerts, actions, here, may,
            form => super::actions::form_token(),
        today => today.to_string() },
    )
}

#[derive(Deserialize)]
pub(super) struct SchedulePatient {
    patient: Option<String>,
}

pub(super) async fn schedule_form(
    State(portal): St,
    headers: HeaderMap,
    Path(device): Path<String>,
    Query(q): Query<SchedulePatient>,
) -> PageResult {
    let person = signed_in!(portal, headers);
    portal.own_device(&person, &device).await?;
    let errors: Vec<String> = Vec::new();
    portal.page(
        StatusCode::OK,
        "schedule.html",
        context! { person, device, patient => q.patient, errors, text => "",
        form => super::actions::form_token() },
    )
}

#[derive(Serialize)]
struct PendingView {
    #[serde(flatten)]
    pending: store::Pending,
    may_confirm: bool,
}

pub(super) async fn confirmations(State(portal): St, headers: HeaderMap) -> PageResult {
    let person = signed_in!(portal, headers);
    let may_confirm = super::actions::may(&person.role, "replace_schedule");
    let pending: Vec<PendingView> = store::pending(portal.db(), &person.org_id, None)
        .await?
        .into_iter()
        .map(|pending| PendingView {
            pending,
            may_confirm,
        })
        .collect();
    portal.page(
        StatusCode::OK,
        "confirmations.html",
        context! { person, pending, form => super::actions::form_token() },
    )
}

fn pharmacist_only(portal: &Portal, person: &Person) -> Option<PageResult> {
    (person.role != "pharmacist").then(|| {
        portal.message(
            Some(person),
            StatusCode::FORBIDDEN,
            "Pharmacists only",
            false,
            "This page is for pharmacists.",
            Some("/".into()),
        )
    })
}

pub(super) async fn fridges(State(portal): St, headers: HeaderMap) -> PageResult {
    let person = signed_in!(portal, headers);
    if let Some(refused) = pharmacist_only(&portal, &person) {
        return refused;
    }
    let tz = zone(&person);
    let today = views::local_day(portal.now(), tz);
    let month = NaiveDate::from_ymd_opt(today.year(), today.month(), 1).expect("first of month");
    let band = portal.0.cfg.band;
    let fridges = store::fridges(
        portal.db(),
        &person.org_id,
        views::days_utc(month, month, tz).0,
    )
    .await?;
    let devices: Vec<String> = fridges.iter().map(|f| f.device.clone()).collect();
    let alerts = views::open_alerts(&store::alert_states(portal.db(), &devices).await?);
    let mut fridges: Vec<(bool, minijinja::Value)> = fridges
        .into_iter()
        .map(|f| {
            let alarms = alerts
                .iter()
                .filter(|a| a.device == f.device && a.slot.is_none())
                .count();
            let in_range = views::in_range(f.vial, band);
            let vial = f.vial.map(|v| format!("{v:.1}"));
            // What needs a pharmacist comes first.
            let needs_look = in_range != Some(true) || alarms > 0 || f.flags > 0;
            (
                needs_look,
                context! { alarms, in_range, vial, ..minijinja::Value::from_serialize(&f) },
            )
        })
        .collect();
    fridges.sort_by_key(|(needs_look, _)| !needs_look);
    let fridges: Vec<minijinja::Value> = fridges.into_iter().map(|(_, f)| f).collect();
    portal.page(
        StatusCode::OK,
        "fridges.html",
        context! { person, fridges, band_low => band.0, band_high => band.1,
        month => month.format("%B %Y").to_string() },
    )
}

/// An audit search as the form sends it.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
pub(super) struct AuditQuery {
    device: Option<String>,
    kind: Option<String>,
    patient: Option<String>,
    from: Option<String>,
    to: Option<String>,
}

impl AuditQuery {
    fn filter(&self, person: &Person) -> Result<store::AuditFilter, PageError> {
        let tz = zone(person);
        let date = |s: &Option<String>| -> Result<Option<NaiveDate>, PageError> {
            match s.as_deref().map(str::trim).filter(|s| !s.is_empty()) {
                None => Ok(None),
                Some(s) => s.parse().map(Some).map_err(|_| PageError::NotFound),
            }
        };
        let nonempty = |s: &Option<String>| {
            s.as_deref()
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_string)
        };
        Ok(store::AuditFilter {
            org: person.org_id.clone(),
            device: nonempty(&self.device),
            kind: nonempty(&self.kind),
            patient: nonempty(&self.patient),
            from: date(&self.from)?.map(|d| views::days_utc(d, d, tz).0),
            to: date(&self.to)?.map(|d| views::days_utc(d, d, tz).1),
        })
    }
}

/// Rows shown on the page; the CSV has them all.
const AUDIT_PAGE_ROWS: i64 = 500;

pub(super) async fn audit(
    State(portal): St,
    headers: HeaderMap,
    Query(q): Query<AuditQuery>,
) -> PageResult {
    let person = signed_in!(portal, headers);
    if let Some(refused) = pharmacist_only(&portal, &person) {
        return refused;
    }
    let rows = store::audit(portal.db(), &q.filter(&person)?, Some(AUDIT_PAGE_ROWS + 1)).await?;
    let truncated = rows.len() as i64 > AUDIT_PAGE_ROWS;
    let rows: Vec<_> = rows.into_iter().take(AUDIT_PAGE_ROWS as usize).collect();
    let query = serde_urlencoded::to_string(&q).unwrap_or_default();
    portal.page(
        StatusCode::OK,
        "audit.html",
        context! { person, rows, truncated, q, query },
    )
}

pub(super) async fn audit_csv(
    State(portal): St,
    headers: HeaderMap,
    Query(q): Query<AuditQuery>,
) -> PageResult {
    let person = signed_in!(portal, headers);
    if let Some(refused) = pharmacist_only(&portal, &person) {
        return refused;
    }
    let rows = store::audit(portal.db(), &q.filter(&person)?, None).await?;
    let mut out = csv::Writer::from_writer(Vec::new());
    for r in &rows {
        out.serialize(r)
            .map_err(|e| PageError::Csv(e.to_string()))?;
    }
    let body = out
        .into_inner()
        .map_err(|e| PageError::Csv(e.to_string()))?;
    store::record(
        portal.db(),
        &store::Action {
            username: &person.username,
            org: Some(&person.org_id),
            device: q.device.as_deref().filter(|d| !d.is_empty()),
            action: "export.csv",
            command_id: None,
            args: serde_json::to_value(&q).unwrap_or_default(),
            ok: true,
            detail: &format!("{} rows", rows.len()),
        },
    )
    .await?;
    Ok((
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "text/csv; charset=utf-8"),
            (
                header::CONTENT_DISPOSITION,
                "attachment; filename=\"medbox-audit.csv\"",
            ),
        ],
        body,
    )
        .into_response())
}

/// Percent-encodes a path segment.
pub(super) fn urlencoding(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}

/// A report's period as the form sends it (local dates of the person's zone).
#[derive(Debug, Default, Deserialize, Serialize)]
pub(super) struct Period {
    from: Option<NaiveDate>,
    to: Option<NaiveDate>,
}

/// The appliance's own report, rebuilt from the archive (default: the last 30 days).
pub(super) async fn report(
    State(portal): St,
    headers: HeaderMap,
    Path(device): Path<String>,
    Query(p): Query<Period>,
) -> PageResult {
    let person = signed_in!(portal, headers);
    if let Some(refused) = pharmacist_only(&portal, &person) {
        return refused;
    }
    portal.own_device(&person, &device).await?;
    let tz = zone(&person);
    let today = views::local_day(portal.now(), tz);
    let to = p.to.unwrap_or(today);
    let from = p.from.unwrap_or(to - Duration::days(29));
    let period = views::days_utc(from, to, tz);
    let html = crate::report::render(
        portal.db(),
        &device,
        (Some(period.0), Some(period.1)),
        tz,
        portal.now(),
    )
    .await
    .map_err(|e| PageError::Report(e.to_string()))?;
    store::record(
        portal.db(),
        &store::Action {
            username: &person.username,
            org: Some(&person.org_id),
            device: Some(&device),
            action: "report.view",
            command_id: None,
            args: serde_json::json!({ "from": from, "to": to }),
            ok: true,
            detail: "report rebuilt from the archive",
        },
    )
    .await?;
    Ok(super::html(StatusCode::OK, html))
}
