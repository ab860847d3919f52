-- The portal: organisations, the people who sign in, their sessions, what they did, and the
-- schedule changes that wait for a second person.

CREATE TABLE organisations (
    org_id   text PRIMARY KEY,
    name     text NOT NULL,
    -- Where its people are: "today" and each day on the pages are this zone's.
    timezone text NOT NULL DEFAULT 'UTC'
);

-- Which organisation looks after each appliance (assigned before or after it first reports).
CREATE TABLE device_orgs (
    device_id text PRIMARY KEY,
    org_id    text NOT NULL REFERENCES organisations
);
CREATE INDEX device_orgs_org ON device_orgs (org_id);

-- A person's role is the role their commands are sent in (the appliance's command roles).
CREATE TABLE people (
    username      text PRIMARY KEY,
    org_id        text NOT NULL REFERENCES organisations,
    role          text NOT NULL CHECK (role IN ('caregiver', 'nurse', 'clinician', 'pharmacist')),
    display_name  text NOT NULL,
    password_hash text NOT NULL,
    disabled      boolean NOT NULL DEFAULT false,
    created_at    timestamptz NOT NULL DEFAULT now()
);

-- Only a hash of the session token is kept: a read of this table signs nobody in.
CREATE TABLE sessions (
    token_hash text PRIMARY KEY,
    username   text NOT NULL REFERENCES people,
    csrf       text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL
);
CREATE INDEX sessions_expiry ON sessions (expires_at);

-- Every portal action with the person, including refused and failed ones.
CREATE TABLE portal_actions (
    id         bigserial PRIMARY KEY,
    at         timestamptz NOT NULL DEFAULT now(),
    username   text NOT NULL,
    org_id     text,
    device_id  text,
    action     text NOT NULL,
    command_id text,
    args       jsonb NOT NULL DEFAULT '{}',
    ok         boolean NOT NULL,
    detail     text NOT NULL
);
CREATE INDEX portal_actions_at ON portal_actions (at);

-- A schedule change the appliance holds until a second person confirms it (the appliance
-- decides that; the portal keeps the text so the second person can read what they confirm).
CREATE TABLE pending_schedules (
    device_id    text NOT NULL,
    version      text NOT NULL,
    patient      text NOT NULL,
    schedule     text NOT NULL,
    why          text NOT NULL,
    requested_by text NOT NULL,
    requested_at timestamptz NOT NULL DEFAULT now(),
    confirmed_by text,
    confirmed_at timestamptz,
    PRIMARY KEY (device_id, version)
);

-- The latest state of each alarm and stock alert, per device, without scanning the audit.
CREATE INDEX audit_rows_alert_state ON audit_rows (device_id, subject, seq DESC)
    WHERE kind IN ('coldchain.alarm_raised', 'coldchain.alarm_cleared', 'coldchain.alarm_acknowledged',
                   'inventory.alert', 'inventory.acknowledged', 'inventory.refill');

-- A patient's dose records.
CREATE INDEX audit_rows_dose_patient ON audit_rows (device_id, (body->>'patient'), utc)
    WHERE kind LIKE 'dose.%';

-- The last reading of each fridge.
CREATE INDEX readings_device_utc ON readings (device_id, utc DESC);
