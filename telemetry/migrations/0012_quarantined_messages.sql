-- Device messages the gateway could not process because of a fault of its own (an exception no
-- validation foresaw), kept verbatim instead of being lost or blocking the pipeline: the gateway
-- acknowledges such a message only after it is stored here. Expected to stay empty; a row is a bug
-- report with its reproducer (docs/deployment.md, "Quarantined messages").
CREATE TABLE quarantined_messages (
    id              bigserial PRIMARY KEY,
    quarantined_at  timestamptz NOT NULL DEFAULT now(),
    received_at     timestamptz NOT NULL,
    transport       text NOT NULL,
    kind            text NOT NULL,
    device_id       text NOT NULL,
    content_type    text,
    payload         bytea NOT NULL,
    error           text NOT NULL
);
CREATE INDEX quarantined_messages_time_idx ON quarantined_messages (quarantined_at);
