//! Commands already answered, as the store holds them: replayed from the audit log at start-up
//! so a command re-sent after a restart (an MQTT redelivery, an impatient user) is answered
//! again and never executed twice (docs/dose-safety.md). Bounded retention: the answers of the last
//! [`RETENTION`].

use super::StoreError;
use crate::controller::commands::Answered;
use chrono::{DateTime, Utc};
use rusqlite::Connection;

/// How long a command id is remembered.
pub const RETENTION: chrono::Duration = chrono::Duration::days(30);

/// Every command answered (not as a duplicate) since `now - RETENTION`, oldest first.
pub fn answered(conn: &Connection, now: DateTime<Utc>) -> Result<Vec<Answered>, StoreError> {
    let since = (now - RETENTION).to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let mut stmt = conn.prepare(
        "SELECT json_extract(body, '$.id'), json_extract(body, '$.command'), \
                json_extract(body, '$.digest'), json_extract(body, '$.ok'), \
                json_extract(body, '$.detail') \
         FROM audit WHERE kind = 'command.result' AND utc >= ?1 \
           AND json_extract(body, '$.duplicate') = 0 AND json_extract(body, '$.id') IS NOT NULL \
         ORDER BY seq",
    )?;
    let rows = stmt.query_map([since], |r| {
        Ok(Answered {
            id: r.get(0)?,
            command: r.get(1)?,
            digest: r.get(2)?,
            ok: r.get::<_, Option<bool>>(3)?.unwrap_or(false),
            detail: r.get::<_, Option<String>>(4)?.unwrap_or_default(),
        })
    })?;
    Ok(rows.collect::<Result<Vec<_>, _>>()?)
}
