-- The fleet archive: what every appliance published, stored once per message id.

CREATE TABLE devices (
    device_id   text PRIMARY KEY,
    first_seen  timestamptz NOT NULL DEFAULT now(),
    last_seen   timestamptz NOT NULL DEFAULT now(),
    status      text,
    -- The checkpoint key the witness trusts: enrolled, or pinned at the first checkpoint seen.
    public_key  text,
    key_source  text
);

-- Every message once: redelivery (QoS 1 is at least once) finds its id and changes nothing.
CREATE TABLE messages (
    message_id  text PRIMARY KEY,
    device_id   text NOT NULL REFERENCES devices,
    topic       text NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now(),
    payload     jsonb NOT NULL
);
CREATE INDEX messages_device ON messages (device_id, received_at);

-- The devices' audit rows, with the hashes the witness links.
CREATE TABLE audit_rows (
    device_id     text NOT NULL REFERENCES devices,
    seq           bigint NOT NULL,
    utc           timestamptz NOT NULL,
    kind          text NOT NULL,
    subject       text NOT NULL,
    actor         text NOT NULL,
    reason        text NOT NULL,
    clock_trusted boolean NOT NULL,
    body          jsonb NOT NULL,
    prev_hash     text,
    hash          text,
    PRIMARY KEY (device_id, seq)
);
CREATE INDEX audit_rows_kind ON audit_rows (kind, utc);
CREATE INDEX audit_rows_utc ON audit_rows (utc);

-- Fridge readings, one partition per month (created as readings arrive).
CREATE TABLE readings (
    device_id     text NOT NULL,
    row_id        bigint NOT NULL,
    utc           timestamptz NOT NULL,
    vial_c        double precision,
    air_c         double precision,
    product_c     double precision,
    doubt         text,
    compressor_on boolean NOT NULL,
    door_open     boolean NOT NULL,
    mains         boolean NOT NULL,
    mode          text,
    PRIMARY KEY (device_id, row_id, utc)
) PARTITION BY RANGE (utc);

CREATE TABLE checkpoints (
    device_id   text NOT NULL REFERENCES devices,
    seq         bigint NOT NULL,
    head        text NOT NULL,
    utc         text NOT NULL,
    signature   text NOT NULL,
    public_key  text NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (device_id, seq)
);

-- Patients by pseudonym only (the schedules' ids): the fleet never holds a name.
CREATE TABLE patients (
    device_id  text NOT NULL REFERENCES devices,
    patient    text NOT NULL,
    first_seen timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (device_id, patient)
);

-- Each dose at its latest outcome (the audit rows keep every step).
CREATE TABLE doses (
    device_id  text NOT NULL REFERENCES devices,
    patient    text NOT NULL,
    medication text NOT NULL,
    -- The scheduled occurrence; an as-needed dose has none and is keyed by when it was given.
    occurrence timestamptz NOT NULL,
    as_needed  boolean NOT NULL,
    outcome    text NOT NULL,
    units      integer,
    at         timestamptz NOT NULL,
    seq        bigint NOT NULL,
    PRIMARY KEY (device_id, patient, medication, occurrence)
);

-- What the witness found wrong with a device's chain, with the evidence.
CREATE TABLE witness_flags (
    id         bigserial PRIMARY KEY,
    device_id  text NOT NULL REFERENCES devices,
    flagged_at timestamptz NOT NULL DEFAULT now(),
    finding    text NOT NULL,
    seq        bigint,
    detail     text NOT NULL,
    evidence   jsonb NOT NULL
);

CREATE VIEW vitals AS
    SELECT device_id, seq, utc, kind, body->>'patient' AS patient, body
    FROM audit_rows WHERE kind LIKE 'vitals.%';
CREATE VIEW adherence AS
    SELECT device_id, seq, utc, kind, body
    FROM audit_rows WHERE kind LIKE 'adherence.%';
CREATE VIEW alarms AS
    SELECT device_id, seq, utc, kind, reason AS alarm, body
    FROM audit_rows WHERE kind LIKE 'coldchain.alarm%';
CREATE VIEW excursions AS
    SELECT device_id, seq, utc, kind, body
    FROM audit_rows WHERE kind LIKE 'coldchain.excursion%';
