-- Messages PostgreSQL refused for what they hold (a NUL in a text, a value out of range), not
-- for a passing failure: kept here whole, with the reason, and acknowledged, so one such
-- message cannot stop a collector for good and nothing it carried is thrown away.
CREATE TABLE quarantine (
    id          bigserial PRIMARY KEY,
    received_at timestamptz NOT NULL DEFAULT now(),
    topic       text NOT NULL,
    payload     bytea NOT NULL,
    error       text NOT NULL
);
