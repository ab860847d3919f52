//! The portal's SQL: people, sessions, audited actions, pending confirmations, and the archive
//! read through the person's organisation. Every query that returns patient or device data
//! takes the organisation and joins `device_orgs`, so scoping is not left to each page.

use super::auth;
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use tokio_postgres::Client;

pub use tokio_postgres::Error as PgError;

/// A signed-in person, as the pages see them.
#[derive(Clone, Debug, Serialize)]
pub struct Person {
    /// Login name; also the actor named in the commands they send.
    pub username: String,
    /// Shown in the header.
    pub display_name: String,
    /// Their organisation.
    pub org_id: String,
    /// Its name.
    pub org_name: String,
    /// caregiver, nurse, clinician or pharmacist: the role their commands are sent in.
    pub role: String,
    /// The organisation's time zone (days and "today" on the pages).
    pub tz: String,
    /// The session's CSRF token, rendered into every form.
    pub csrf: String,
    /// Whether they administer their organisation's people.
    pub admin: bool,
    /// Whether they create organisations and give them administrators and appliances.
    pub fleet_admin: bool,
    /// Whether their password was set by someone else and not yet replaced by their own.
    pub first_password: bool,
}

/// A person as the People page lists them.
#[derive(Clone, Debug, Serialize)]
pub struct PersonRow {
    /// Login name.
    pub username: String,
    /// Name shown.
    pub display_name: String,
    /// Role.
    pub role: String,
    /// Signed out and unable to sign in.
    pub disabled: bool,
    /// Administers the organisation's people.
    pub admin: bool,
}

/// Creates or renames an organisation.
pub async fn upsert_org(c: &Client, org: &str, name: &str, tz: &str) -> Result<(), PgError> {
    c.execute(
        "INSERT INTO organisations (org_id, name, timezone) VALUES ($1, $2, $3) \
         ON CONFLICT (org_id) DO UPDATE SET name = EXCLUDED.name, timezone = EXCLUDED.timezone",
        &[&org, &name, &tz],
    )
    .await
    .map(drop)
}

/// Puts an appliance in an organisation's care (moving it if it was in another's).
pub async fn assign_device(c: &Client, device: &str, org: &str) -> Result<(), PgError> {
    c.execute(
        "INSERT INTO device_orgs (device_id, org_id) VALUES ($1, $2) \
         ON CONFLICT (device_id) DO UPDATE SET org_id = EXCLUDED.org_id",
        &[&device, &org],
    )
    .await
    .map(drop)
}

/// Creates a person, or sets an existing person's organisation, role, name and password.
pub async fn upsert_person(
    c: &Client,
    username: &str,
    org: &str,
    role: &str,
    display_name: &str,
    password: &str,
) -> Result<(), PgError> {
    let hash = auth::hash_password(password);
    c.execute(
        "INSERT INTO people (username, org_id, role, display_name, password_hash) \
         VALUES ($1, $2, $3, $4, $5) ON CONFLICT (username) DO UPDATE SET \
         org_id = EXCLUDED.org_id, role = EXCLUDED.role, display_name = EXCLUDED.display_name, \
         password_hash = EXCLUDED.password_hash, disabled = false",
        &[&username, &org, &role, &display_name, &hash],
    )
    .await
    .map(drop)
}

/// Whether `username` and `password` sign in (an unknown or disabled name costs as much time
/// as a wrong password).
pub async fn check_password(c: &Client, username: &str, password: &str) -> Result<bool, PgError> {
    let row = c
        .query_opt(
            "SELECT password_hash FROM people WHERE username = $1 AND NOT disabled",
            &[&username],
        )
        .await?;
    let hash = row.map(|r| r.get::<_, String>(0));
    let password = password.to_string();
    let matched = tokio::task::spawn_blocking(move || match hash {
        Some(h) => auth::password_matches(&h, &password),
        None => {
            auth::password_matches(auth::decoy_hash(), &password);
            false
        }
    })
    .await
    .unwrap_or(false);
    Ok(matched)
}

/// Starts a session; returns the token for the cookie (only its hash is stored).
pub async fn start_session(c: &Client, username: &str) -> Result<String, PgError> {
    let token = auth::random_token();
    c.execute(
        "INSERT INTO sessions (token_hash, username, csrf, expires_at) \
         VALUES ($1, $2, $3, now() + make_interval(hours => $4::int))",
        &[
            &auth::token_hash(&token),
            &username,
            &auth::random_token(),
            &(auth::SESSION_HOURS as i32),
        ],
    )
    .await?;
    // Expired sessions go as new ones start; nothing else needs them.
    c.execute("DELETE FROM sessions WHERE expires_at < now()", &[])
        .await?;
    Ok(token)
}

/// What the sign-in form records for a wrong password (the throttle counts these rows).
pub const WRONG_PASSWORD: &str = "wrong username or password";

/// Wrong passwords tried under `username` in the last `minutes`, since its last sign-in: the
/// audit of sign-ins is the throttle's memory, so it holds across restarts and portals.
pub async fn recent_failed_sign_ins(
    c: &Client,
    username: &str,
    minutes: i32,
) -> Result<i64, PgError> {
    Ok(c.query_one(
        "SELECT count(*) FROM portal_actions \
             WHERE action = 'login' AND username = $1 AND NOT ok AND detail = $3 \
               AND at > now() - make_interval(mins => $2::int) \
               AND at > coalesce((SELECT max(at) FROM portal_actions \
                                  WHERE action = 'login' AND username = $1 AND ok), '-infinity')",
        &[&username, &minutes, &WRONG_PASSWORD],
    )
    .await?
    .get(0))
}

/// The person a session token belongs to, while it lasts and they are not disabled.
pub async fn session(c: &Client, token: &str) -> Result<Option<Person>, PgError> {
    let row = c
        .query_opt(
            "SELECT p.username, p.display_name, p.org_id, o.name, p.role, o.timezone, s.csrf, p.admin, \
                    p.fleet_admin, p.first_password \
             FROM sessions s JOIN people p USING (username) JOIN organisations o USING (org_id) \
             WHERE s.token_hash = $1 AND s.expires_at > now() AND NOT p.disabled",
            &[&auth::token_hash(token)],
        )
        .await?;
    Ok(row.map(|r| Person {
        username: r.get(0),
        display_name: r.get(1),
        org_id: r.get(2),
        org_name: r.get(3),
        role: r.get(4),
        tz: r.get(5),
        csrf: r.get(6),
        admin: r.get(7),
        fleet_admin: r.get(8),
        first_password: r.get(9),
    }))
}

/// Makes `username` choose their own password before anything else (a password someone else
/// set), or not.
pub async fn set_first_password(c: &Client, username: &str, on: bool) -> Result<bool, PgError> {
    c.execute(
        "UPDATE people SET first_password = $2 WHERE username = $1",
        &[&username, &on],
    )
    .await
    .map(|n| n == 1)
}

/// Makes `username` a fleet administrator, or not.
pub async fn set_fleet_admin(c: &Client, username: &str, on: bool) -> Result<bool, PgError> {
    c.execute(
        "UPDATE people SET fleet_admin = $2 WHERE username = $1",
        &[&username, &on],
    )
    .await
    .map(|n| n == 1)
}

/// An organisation as the Organisations page lists it.
#[derive(Clone, Debug, Serialize)]
pub struct OrgRow {
    /// Short id.
    pub org_id: String,
    /// Name shown.
    pub name: String,
    /// Its people's time zone.
    pub timezone: String,
    /// Appliances in its care.
    pub appliances: i64,
    /// People who may sign in.
    pub people: i64,
    /// Its administrators' login names, comma-separated ("" while it has none).
    pub admins: String,
}

/// Every organisation, by id.
pub async fn organisations(c: &Client) -> Result<Vec<OrgRow>, PgError> {
    Ok(c.query(
        "SELECT o.org_id, o.name, o.timezone, \
                (SELECT count(*) FROM device_orgs d WHERE d.org_id = o.org_id), \
                (SELECT count(*) FROM people p WHERE p.org_id = o.org_id AND NOT p.disabled), \
                coalesce((SELECT string_agg(p.username, ', ' ORDER BY p.username) FROM people p \
                          WHERE p.org_id = o.org_id AND p.admin AND NOT p.disabled), '') \
         FROM organisations o ORDER BY o.org_id",
        &[],
    )
    .await?
    .into_iter()
    .map(|r| OrgRow {
        org_id: r.get(0),
        name: r.get(1),
        timezone: r.get(2),
        appliances: r.get(3),
        people: r.get(4),
        admins: r.get(5),
    })
    .collect())
}

/// Creates an organisation; false if the id is taken (the portal never renames one).
pub async fn create_org(c: &Client, org: &str, name: &str, tz: &str) -> Result<bool, PgError> {
    c.execute(
        "INSERT INTO organisations (org_id, name, timezone) VALUES ($1, $2, $3) \
         ON CONFLICT (org_id) DO NOTHING",
        &[&org, &name.trim(), &tz],
    )
    .await
    .map(|n| n == 1)
}

/// Whether an organisation exists.
pub async fn org_exists(c: &Client, org: &str) -> Result<bool, PgError> {
    Ok(
        c.query_opt("SELECT 1 FROM organisations WHERE org_id = $1", &[&org])
            .await?
            .is_some(),
    )
}

/// The organisation an appliance is in the care of, if any.
pub async fn device_org(c: &Client, device: &str) -> Result<Option<String>, PgError> {
    Ok(c.query_opt(
        "SELECT org_id FROM device_orgs WHERE device_id = $1",
        &[&device],
    )
    .await?
    .map(|r| r.get(0)))
}

/// Appliances that have reported but are in nobody's care: nobody sees their patients yet.
pub async fn unassigned_devices(c: &Client) -> Result<Vec<String>, PgError> {
    Ok(c.query(
        "SELECT device_id FROM devices d \
         WHERE NOT EXISTS (SELECT 1 FROM device_orgs o WHERE o.device_id = d.device_id) \
         ORDER BY device_id",
        &[],
    )
    .await?
    .into_iter()
    .map(|r| r.get(0))
    .collect())
}

/// Makes `username` an administrator of their organisation's people, or not.
pub async fn set_admin(c: &Client, username: &str, admin: bool) -> Result<bool, PgError> {
    c.execute(
        "UPDATE people SET admin = $2 WHERE username = $1",
        &[&username, &admin],
    )
    .await
    .map(|n| n == 1)
}

/// An organisation's people, by login name.
pub async fn people(c: &Client, org: &str) -> Result<Vec<PersonRow>, PgError> {
    Ok(c.query(
        "SELECT username, display_name, role, disabled, admin FROM people \
             WHERE org_id = $1 ORDER BY username",
        &[&org],
    )
    .await?
    .into_iter()
    .map(|r| PersonRow {
        username: r.get(0),
        display_name: r.get(1),
        role: r.get(2),
        disabled: r.get(3),
        admin: r.get(4),
    })
    .collect())
}

/// Adds a person to `org` (an administrator of its people if `admin`); false if the login
/// name is taken (in any organisation: it is also the actor the appliances record, so it must
/// name one person).
pub async fn create_person(
    c: &Client,
    org: &str,
    username: &str,
    role: &str,
    display_name: &str,
    password: &str,
    admin: bool,
) -> Result<bool, PgError> {
    let hash = auth::hash_password(password);
    c.execute(
        "INSERT INTO people (username, org_id, role, display_name, password_hash, admin, \
                             first_password) \
         VALUES ($1, $2, $3, $4, $5, $6, true) ON CONFLICT (username) DO NOTHING",
        &[&username, &org, &role, &display_name.trim(), &hash, &admin],
    )
    .await
    .map(|n| n == 1)
}

/// Disables (signing them out everywhere) or re-enables a person of `org`; false if `org` has
/// no such person.
pub async fn set_disabled(
    c: &Client,
    org: &str,
    username: &str,
    disabled: bool,
) -> Result<bool, PgError> {
    let n = c
        .execute(
            "UPDATE people SET disabled = $3 WHERE username = $1 AND org_id = $2",
            &[&username, &org, &disabled],
        )
        .await?;
    if n == 1 && disabled {
        c.execute("DELETE FROM sessions WHERE username = $1", &[&username])
            .await?;
    }
    Ok(n == 1)
}

/// Sets a new password for a person of `org` who lost theirs, and ends every session of
/// theirs; false if `org` has no such person.
pub async fn reset_password(
    c: &Client,
    org: &str,
    username: &str,
    password: &str,
) -> Result<bool, PgError> {
    let hash = auth::hash_password(password);
    let n = c
        .execute(
            "UPDATE people SET password_hash = $3, first_password = true \
             WHERE username = $1 AND org_id = $2",
            &[&username, &org, &hash],
        )
        .await?;
    if n == 1 {
        c.execute("DELETE FROM sessions WHERE username = $1", &[&username])
            .await?;
    }
    Ok(n == 1)
}

/// Ends a session.
pub async fn end_session(c: &Client, token: &str) -> Result<(), PgError> {
    c.execute(
        "DELETE FROM sessions WHERE token_hash = $1",
        &[&auth::token_hash(token)],
    )
    .await
    .map(drop)
}

/// Replaces `username`'s password, and ends every session of theirs but the one whose token is
/// `keep`: whoever else held one (perhaps why the password is being changed) is signed out.
pub async fn change_password(
    c: &Client,
    username: &str,
    password: &str,
    keep: &str,
) -> Result<(), PgError> {
    let hash = auth::hash_password(password);
    c.execute(
        "UPDATE people SET password_hash = $2, first_password = false WHERE username = $1",
        &[&username, &hash],
    )
    .await?;
    c.execute(
        "DELETE FROM sessions WHERE username = $1 AND token_hash <> $2",
        &[&username, &auth::token_hash(keep)],
    )
    .await
    .map(drop)
}

/// One portal action, as it is audited.
pub struct Action<'a> {
    /// Who (for a failed sign-in: the name that was tried).
    pub username: &'a str,
    /// Their organisation, when known.
    pub org: Option<&'a str>,
    /// The appliance it concerned.
    pub device: Option<&'a str>,
    /// What: `login`, a command's name, `schedule.check`, `export.csv`, …
    pub action: &'a str,
    /// The command id sent, if a command was sent.
    pub command_id: Option<&'a str>,
    /// What was asked.
    pub args: Value,
    /// Whether it succeeded.
    pub ok: bool,
    /// The result or the reason.
    pub detail: &'a str,
}

/// Audits a portal action.
pub async fn record(c: &Client, a: &Action<'_>) -> Result<(), PgError> {
    c.execute(
        "INSERT INTO portal_actions (username, org_id, device_id, action, command_id, args, ok, detail) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        &[
            &a.username,
            &a.org,
            &a.device,
            &a.action,
            &a.command_id,
            &a.args,
            &a.ok,
            &a.detail,
        ],
    )
    .await
    .map(drop)
}

/// Whether `device` is in the organisation's care.
pub async fn device_in_org(c: &Client, device: &str, org: &str) -> Result<bool, PgError> {
    Ok(c.query_opt(
        "SELECT 1 FROM device_orgs WHERE device_id = $1 AND org_id = $2",
        &[&device, &org],
    )
    .await?
    .is_some())
}

/// A page of the organisation's patients, as (device, pseudonym), by pseudonym.
pub async fn patients(
    c: &Client,
    org: &str,
    (offset, limit): (i64, i64),
) -> Result<Vec<(String, String)>, PgError> {
    Ok(c.query(
        "SELECT p.device_id, p.patient FROM patients p JOIN device_orgs d USING (device_id) \
             WHERE d.org_id = $1 ORDER BY p.patient, p.device_id OFFSET $2 LIMIT $3",
        &[&org, &offset, &limit],
    )
    .await?
    .into_iter()
    .map(|r| (r.get(0), r.get(1)))
    .collect())
}

/// How many patients the organisation has.
pub async fn patient_count(c: &Client, org: &str) -> Result<i64, PgError> {
    Ok(c.query_one(
        "SELECT count(*) FROM patients p JOIN device_orgs d USING (device_id) WHERE d.org_id = $1",
        &[&org],
    )
    .await?
    .get(0))
}

/// Whether the patient is on one of the organisation's appliances.
pub async fn patient_in_org(
    c: &Client,
    org: &str,
    device: &str,
    patient: &str,
) -> Result<bool, PgError> {
    Ok(c.query_opt(
        "SELECT 1 FROM patients p JOIN device_orgs d USING (device_id) \
             WHERE d.org_id = $1 AND p.device_id = $2 AND p.patient = $3",
        &[&org, &device, &patient],
    )
    .await?
    .is_some())
}

/// A dose at its latest outcome.
#[derive(Clone, Debug, PartialEq)]
pub struct DoseRow {
    /// Appliance.
    pub device: String,
    /// Patient pseudonym.
    pub patient: String,
    /// Medication.
    pub medication: String,
    /// Scheduled time (as-needed: when given).
    pub occurrence: DateTime<Utc>,
    /// Whether it was an as-needed dose.
    pub as_needed: bool,
    /// Latest outcome.
    pub outcome: String,
    /// Units, when known.
    pub units: Option<i32>,
}

/// The organisation's doses on `devices` scheduled in `[from, to)`, optionally of one patient.
pub async fn doses(
    c: &Client,
    org: &str,
    devices: &[String],
    patient: Option<&str>,
    (from, to): (DateTime<Utc>, DateTime<Utc>),
) -> Result<Vec<DoseRow>, PgError> {
    Ok(c
        .query(
            "SELECT x.device_id, x.patient, x.medication, x.occurrence, x.as_needed, x.outcome, x.units \
             FROM doses x JOIN device_orgs d USING (device_id) \
             WHERE d.org_id = $1 AND x.occurrence >= $2 AND x.occurrence < $3 \
               AND x.device_id = ANY($4) AND ($5::text IS NULL OR x.patient = $5) \
             ORDER BY x.occurrence, x.medication",
            &[&org, &from, &to, &devices, &patient],
        )
        .await?
        .into_iter()
        .map(|r| DoseRow {
            device: r.get(0),
            patient: r.get(1),
            medication: r.get(2),
            occurrence: r.get(3),
            as_needed: r.get(4),
            outcome: r.get(5),
            units: r.get(6),
        })
        .collect())
}

/// The dose records of one patient written in `[from, to)`, in the order they were recorded.
pub async fn dose_records(
    c: &Client,
    device: &str,
    patient: &str,
    (from, to): (DateTime<Utc>, DateTime<Utc>),
) -> Result<Vec<medbox::dosing::engine::DoseRecord>, PgError> {
    Ok(c.query(
        "SELECT body->'record' FROM audit_rows \
             WHERE device_id = $1 AND kind LIKE 'dose.%' AND body->>'patient' = $2 \
               AND body ? 'record' \
               AND utc >= $3 AND utc < $4 ORDER BY seq",
        &[&device, &patient, &from, &to],
    )
    .await?
    .into_iter()
    .filter_map(|r| serde_json::from_value(r.try_get::<_, Value>(0).ok()?).ok())
    .collect())
}

/// The latest alert-state row of each alert subject on the given devices: an alarm raised or
/// acknowledged, a stock alert, acknowledgement or refill. Which of them are open is
/// [`super::views::open_alerts`]'s to say.
pub async fn alert_states(
    c: &Client,
    devices: &[String],
) -> Result<Vec<super::views::AlertState>, PgError> {
    Ok(c.query(
        "SELECT DISTINCT ON (device_id, subject) device_id, subject, kind, utc, reason \
             FROM audit_rows WHERE device_id = ANY($1) AND kind IN \
             ('coldchain.alarm_raised', 'coldchain.alarm_cleared', 'coldchain.alarm_acknowledged', \
              'inventory.alert', 'inventory.acknowledged', 'inventory.refill') \
             ORDER BY device_id, subject, seq DESC",
        &[&devices],
    )
    .await?
    .into_iter()
    .map(|r| super::views::AlertState {
        device: r.get(0),
        subject: r.get(1),
        kind: r.get(2),
        utc: r.get(3),
        reason: r.get(4),
    })
    .collect())
}

/// A portal action as listed on a page.
#[derive(Clone, Debug, Serialize)]
pub struct ActionRow {
    /// When (UTC).
    pub at: String,
    /// Who.
    pub username: String,
    /// What.
    pub action: String,
    /// Succeeded.
    pub ok: bool,
    /// Result or reason.
    pub detail: String,
}

/// The latest portal actions on a device.
pub async fn actions(c: &Client, device: &str, limit: i64) -> Result<Vec<ActionRow>, PgError> {
    Ok(c
        .query(
            "SELECT to_char(at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS'), username, action, ok, detail \
             FROM portal_actions WHERE device_id = $1 ORDER BY id DESC LIMIT $2",
            &[&device, &limit],
        )
        .await?
        .into_iter()
        .map(|r| ActionRow {
            at: r.get(0),
            username: r.get(1),
            action: r.get(2),
            ok: r.get(3),
            detail: r.get(4),
        })
        .collect())
}

/// A schedule change waiting for a second person.
#[derive(Clone, Debug, Serialize)]
pub struct Pending {
    /// Appliance.
    pub device: String,
    /// The version the appliance named.
    pub version: String,
    /// Patient pseudonym.
    pub patient: String,
    /// The whole file.
    pub schedule: String,
    /// What the appliance said needs confirming.
    pub why: String,
    /// Who asked first.
    pub requested_by: String,
    /// When (UTC).
    pub requested_at: String,
}

/// Keeps a change the appliance holds for a second person (asked again: the latest asker).
pub async fn hold(c: &Client, p: &Pending) -> Result<(), PgError> {
    c.execute(
        "INSERT INTO pending_schedules (device_id, version, patient, schedule, why, requested_by) \
         VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (device_id, version) DO UPDATE SET \
         why = EXCLUDED.why, requested_by = EXCLUDED.requested_by, requested_at = now(), \
         confirmed_by = NULL, confirmed_at = NULL",
        &[
            &p.device,
            &p.version,
            &p.patient,
            &p.schedule,
            &p.why,
            &p.requested_by,
        ],
    )
    .await
    .map(drop)
}

/// The organisation's unconfirmed changes (one, when `only` names device and version).
pub async fn pending(
    c: &Client,
    org: &str,
    only: Option<(&str, &str)>,
) -> Result<Vec<Pending>, PgError> {
    let (device, version) = only.unzip();
    Ok(c.query(
        "SELECT p.device_id, p.version, p.patient, p.schedule, p.why, p.requested_by, \
                    to_char(p.requested_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS') \
             FROM pending_schedules p JOIN device_orgs d USING (device_id) \
             WHERE d.org_id = $1 AND p.confirmed_by IS NULL \
               AND ($2::text IS NULL OR p.device_id = $2) AND ($3::text IS NULL OR p.version = $3) \
             ORDER BY p.requested_at",
        &[&org, &device, &version],
    )
    .await?
    .into_iter()
    .map(|r| Pending {
        device: r.get(0),
        version: r.get(1),
        patient: r.get(2),
        schedule: r.get(3),
        why: r.get(4),
        requested_by: r.get(5),
        requested_at: r.get(6),
    })
    .collect())
}

/// Marks a change confirmed by `who` (after the appliance accepted it).
pub async fn confirmed(c: &Client, device: &str, version: &str, who: &str) -> Result<(), PgError> {
    c.execute(
        "UPDATE pending_schedules SET confirmed_by = $3, confirmed_at = now() \
         WHERE device_id = $1 AND version = $2",
        &[&device, &version, &who],
    )
    .await
    .map(drop)
}

/// One fridge on the pharmacist's overview.
#[derive(Clone, Debug, Serialize)]
pub struct Fridge {
    /// Appliance.
    pub device: String,
    /// `online` / `offline` as last published.
    pub status: Option<String>,
    /// Last reading (UTC).
    pub last_at: Option<String>,
    /// Its vial temperature.
    pub vial: Option<f64>,
    /// Excursions opened since the month began.
    pub excursions: i64,
    /// Witness flags.
    pub flags: i64,
    /// Their findings.
    pub flag_codes: Option<String>,
    /// How the checkpoint key came to be trusted (`enrolled`, `pinned`), if one is.
    pub key_source: Option<String>,
    /// The latest checkpoint the witness holds.
    pub checkpoint: Option<i64>,
}

/// Every fridge of the organisation, with its last reading, this month's excursions and its
/// witness status.
pub async fn fridges(
    c: &Client,
    org: &str,
    month_start: DateTime<Utc>,
) -> Result<Vec<Fridge>, PgError> {
    Ok(c.query(
        "SELECT d.device_id, v.status, \
                    to_char(r.utc AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI'), r.vial_c, \
                    (SELECT count(*) FROM audit_rows a WHERE a.device_id = d.device_id \
                       AND a.kind = 'coldchain.excursion_opened' AND a.utc >= $2), \
                    (SELECT count(*) FROM witness_flags w WHERE w.device_id = d.device_id), \
                    (SELECT string_agg(DISTINCT w.finding, ', ') FROM witness_flags w \
                       WHERE w.device_id = d.device_id), \
                    v.key_source, \
                    (SELECT max(seq) FROM checkpoints k WHERE k.device_id = d.device_id) \
             FROM device_orgs d LEFT JOIN devices v USING (device_id) \
             LEFT JOIN LATERAL (SELECT utc, vial_c FROM readings x WHERE x.device_id = d.device_id \
                                ORDER BY utc DESC LIMIT 1) r ON true \
             WHERE d.org_id = $1 ORDER BY d.device_id",
        &[&org, &month_start],
    )
    .await?
    .into_iter()
    .map(|r| Fridge {
        device: r.get(0),
        status: r.get(1),
        last_at: r.get(2),
        vial: r.get(3),
        excursions: r.get(4),
        flags: r.get(5),
        flag_codes: r.get(6),
        key_source: r.get(7),
        checkpoint: r.get(8),
    })
    .collect())
}

/// What an audit search asks for; always within one organisation.
#[derive(Clone, Debug, Default)]
pub struct AuditFilter {
    /// The searcher's organisation.
    pub org: String,
    /// One appliance.
    pub device: Option<String>,
    /// Kinds starting with this.
    pub kind: Option<String>,
    /// Rows about this patient.
    pub patient: Option<String>,
    /// From (inclusive).
    pub from: Option<DateTime<Utc>>,
    /// To (exclusive).
    pub to: Option<DateTime<Utc>>,
}

/// One audit row found.
#[derive(Clone, Debug, Serialize)]
pub struct AuditHit {
    /// Appliance.
    pub device: String,
    /// Its sequence number.
    pub seq: i64,
    /// When (RFC 3339 UTC).
    pub utc: String,
    /// Kind.
    pub kind: String,
    /// Subject.
    pub subject: String,
    /// Actor.
    pub actor: String,
    /// Reason.
    pub reason: String,
    /// The row's hash, so an export can be checked against the appliance's chain.
    pub hash: Option<String>,
}

/// Audit rows matching `f`, newest first (at most `limit`).
pub async fn audit(
    c: &Client,
    f: &AuditFilter,
    limit: Option<i64>,
) -> Result<Vec<AuditHit>, PgError> {
    let kind = f.kind.as_ref().map(|k| {
        format!(
            "{}%",
            k.replace('\\', "\\\\")
                .replace('%', "\\%")
                .replace('_', "\\_")
        )
    });
    Ok(c
        .query(
            "SELECT a.device_id, a.seq, to_char(a.utc AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'), \
                    a.kind, a.subject, a.actor, a.reason, a.hash \
             FROM audit_rows a JOIN device_orgs d USING (device_id) \
             WHERE d.org_id = $1 AND ($2::text IS NULL OR a.device_id = $2) \
               AND ($3::text IS NULL OR a.kind LIKE $3) \
               AND ($4::text IS NULL OR a.body->>'patient' = $4) \
               AND ($5::timestamptz IS NULL OR a.utc >= $5) AND ($6::timestamptz IS NULL OR a.utc < $6) \
             ORDER BY a.utc DESC, a.device_id, a.seq DESC LIMIT $7",
            &[&f.org, &f.device, &kind, &f.patient, &f.from, &f.to, &limit],
        )
        .await?
        .into_iter()
        .map(|r| AuditHit {
            device: r.get(0),
            seq: r.get(1),
            utc: r.get(2),
            kind: r.get(3),
            subject: r.get(4),
            actor: r.get(5),
            reason: r.get(6),
            hash: r.get(7),
        })
        .collect())
}
