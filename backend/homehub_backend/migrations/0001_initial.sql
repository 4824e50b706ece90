-- homehub-backend schema, version 1. Applied once by `homehub-backend migrate` (migrate.py),
-- inside one transaction together with its row in schema_migrations.

-- One row per reading, whatever the number of resends: the id is the hub's stable reading
-- id (homehub.reading/1 "id"), so INSERT ... ON CONFLICT (id) DO NOTHING makes a resend a
-- no-op. The whole document stays in payload; the typed columns are what a clinician's
-- query filters and sorts on.
CREATE TABLE readings (
    id          text        PRIMARY KEY,
    gateway     text        NOT NULL,
    device      text        NOT NULL,
    kind        text        NOT NULL,
    measured_at timestamptz NOT NULL,   -- the device's (or hub's) clock, offset kept in payload
    received_at timestamptz NOT NULL,   -- when the hub stored it
    stored_at   timestamptz NOT NULL DEFAULT now(),  -- when this backend committed it
    payload     jsonb       NOT NULL
);
-- "this patient's hub, this device, newest first" and "everything of this kind this week".
CREATE INDEX readings_gateway_device_measured ON readings (gateway, device, measured_at DESC);
CREATE INDEX readings_kind_measured ON readings (kind, measured_at DESC);

-- Everything that arrived and could not be stored as a reading or a status: never dropped
-- silently. raw is the message as received (cut to the size limit when it was oversize).
CREATE TABLE rejected (
    seq    bigserial   PRIMARY KEY,
    at     timestamptz NOT NULL DEFAULT now(),
    topic  text        NOT NULL,
    reason text        NOT NULL,
    raw    bytea       NOT NULL
);
CREATE INDEX rejected_at ON rejected (at DESC);

-- The fleet: one row per hub, from its retained homehub.status/1 (and its Last Will).
CREATE TABLE hubs (
    gateway          text        PRIMARY KEY,
    status           jsonb       NOT NULL,  -- the last status document
    last_seen        timestamptz NOT NULL,  -- when the newest status arrived here
    online           boolean     NOT NULL,
    offline_since    timestamptz,           -- set when it went offline, NULL while online
    version          text        NOT NULL,
    unsent           integer,
    previous_unsent  integer,               -- unsent in the status before: is it growing?
    oldest_unsent_age_s double precision,
    failing_devices  text[]      NOT NULL DEFAULT '{}'
);
