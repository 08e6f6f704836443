-- The transactional outbox of outbound events (docs/webhooks.md). Its source is what already
-- commits with each state change: events and command_history rows. Their ids are taken from a
-- sequence before commit, so reading them by id can skip a row that commits later with a smaller
-- id. Each row therefore records its transaction's id (xid8): once the oldest transaction still
-- running is younger than a row's, the row's transaction has ended and no row with a smaller
-- (xid, id) can appear any more. The delivery worker numbers such rows into the outbox in that
-- order (`position`, commit order: never skipping, never going back).
-- Rows already stored keep xid NULL: they were never announced and are not now.
ALTER TABLE events ADD COLUMN xid xid8;
ALTER TABLE events ALTER COLUMN xid SET DEFAULT pg_current_xact_id();
CREATE INDEX events_xid_idx ON events (xid, id) WHERE xid IS NOT NULL;
ALTER TABLE command_history ADD COLUMN xid xid8;
ALTER TABLE command_history ALTER COLUMN xid SET DEFAULT pg_current_xact_id();
CREATE INDEX command_history_xid_idx ON command_history (xid, id) WHERE xid IS NOT NULL;

-- The announced events in commit order, each with the body every delivery of it sends.
CREATE TABLE outbox (
    position      bigint PRIMARY KEY,
    event_id      bigint NOT NULL UNIQUE,
    vehicle       integer NOT NULL,
    type          text NOT NULL,
    time          timestamptz NOT NULL,
    body          text NOT NULL,
    sequenced_at  timestamptz NOT NULL DEFAULT now()
);

-- How far the worker has numbered: the last (xid, id) taken into the outbox.
CREATE TABLE outbox_cursor (
    only_row  boolean PRIMARY KEY DEFAULT true CHECK (only_row),
    xid       xid8 NOT NULL,
    id        bigint NOT NULL
);
INSERT INTO outbox_cursor (xid, id) VALUES ('0', 0);

CREATE TABLE webhook_subscriptions (
    id                text PRIMARY KEY,
    url               text NOT NULL,
    description       text NOT NULL DEFAULT '',
    event_types       text[],              -- NULL: every type of the catalogue
    secret            text NOT NULL,       -- HMAC key: kept as is, a hash could not sign
    enabled           boolean NOT NULL DEFAULT true,
    disabled_reason   text,
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now(),
    -- Bumped by every change the worker must reload for (types, URL, replay, re-drive).
    revision          bigint NOT NULL DEFAULT 1,
    -- Every outbox position up to here is settled (delivered, dead-lettered or not wanted) for
    -- this subscription; what lies beyond is in webhook_deliveries or still to deliver.
    resolved_through  bigint NOT NULL
);

-- One row per event and subscription once an attempt was made: delivered, waiting for a retry,
-- or dead-lettered (re-drivable).
CREATE TABLE webhook_deliveries (
    subscription      text NOT NULL REFERENCES webhook_subscriptions ON DELETE CASCADE,
    position          bigint NOT NULL,
    event_id          bigint NOT NULL,
    vehicle           integer NOT NULL,
    state             text NOT NULL CHECK (state IN ('delivered', 'retrying', 'dead')),
    attempts          integer NOT NULL,
    first_attempt_at  timestamptz NOT NULL,
    last_attempt_at   timestamptz NOT NULL,
    next_attempt_at   timestamptz,
    last_status       integer,
    last_error        text,
    PRIMARY KEY (subscription, position)
);
CREATE INDEX webhook_deliveries_undelivered_idx ON webhook_deliveries (subscription, position)
    WHERE state <> 'delivered';
CREATE INDEX webhook_deliveries_event_idx ON webhook_deliveries (subscription, event_id);
