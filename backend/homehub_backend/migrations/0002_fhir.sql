-- homehub-backend schema, version 2: FHIR payloads (issue 13 part 1).
--
-- A hub with [mqtt] payload = "fhir" sends each reading as a FHIR transaction Bundle; it is
-- stored in the same table, keyed by the same reading id (the Bundle's identifier), so a
-- resend in either form is the same row. `format` says which document `payload` holds.
ALTER TABLE readings
    ADD COLUMN format text NOT NULL DEFAULT 'homehub'
        CONSTRAINT readings_format CHECK (format IN ('homehub', 'fhir'));
-- A Bundle carries the hub's storing time only with a coincident timestamp (a device
-- clock fault): otherwise received_at is unknown, NULL, never a made-up time.
ALTER TABLE readings ALTER COLUMN received_at DROP NOT NULL;
