-- Remote commands (lock, unlock, immobilise, ...): one row per command with its current state,
-- and every state change in command_history, so "who unlocked car 42 at 09:14 and did it open?"
-- has an answer. Written by commands/store.py; the states are commands.CommandState.
CREATE TABLE commands (
    id               uuid PRIMARY KEY,              -- also the id in the device payload
    seq              bigint GENERATED ALWAYS AS IDENTITY UNIQUE,  -- submission order (FIFO)
    vehicle          integer NOT NULL REFERENCES vehicles (id),
    device_id        text NOT NULL,                 -- the TCU it was addressed to
    type             text NOT NULL CHECK (type IN ('lock', 'unlock', 'immobilise', 'mobilise',
                                                   'locate', 'set_speed_limit', 'set_config')),
    params           jsonb NOT NULL DEFAULT '{}',
    idempotency_key  text NOT NULL,
    requested_by     text NOT NULL,                 -- the caller (API key name, "geofence", ...)
    request_hash     text NOT NULL,                 -- the same key with another request: refused
    on_unsafe        text NOT NULL CHECK (on_unsafe IN ('wait', 'refuse')),
    state            text NOT NULL CHECK (state IN ('queued', 'waiting_for_safe_state', 'sent',
                                                    'acknowledged', 'succeeded', 'failed',
                                                    'timed_out', 'expired', 'cancelled')),
    reason           text,                          -- why it is in its state (refusal, wait, ...)
    created_at       timestamptz NOT NULL,
    deadline         timestamptz NOT NULL,          -- never delivered or executed after this
    sent_at          timestamptz,                   -- first delivery attempt
    last_sent_at     timestamptz,                   -- latest delivery attempt (retries)
    acknowledged_at  timestamptz,                   -- the device said it received it
    finished_at      timestamptz,                   -- reached a terminal state
    attempts         integer NOT NULL DEFAULT 0,
    device_status    text,                          -- what the device answered, late answers too
    device_reason    text,
    device_t         timestamptz,                   -- device clock when it acted
    updated_at       timestamptz NOT NULL,
    UNIQUE (requested_by, idempotency_key)          -- a key is unique per caller
);
-- What a dispatcher reloads on start: the open commands, in order.
CREATE INDEX commands_open_idx ON commands (seq)
    WHERE state IN ('queued', 'waiting_for_safe_state', 'sent', 'acknowledged');
-- A vehicle's commands by order: the API's list by vehicle, and the interlocks' "when did the
-- vehicle last carry out a lock/unlock/immobilise/mobilise?" (its newest such command).
CREATE INDEX commands_vehicle_idx ON commands (vehicle, seq);

CREATE TABLE command_history (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    command_id  uuid NOT NULL REFERENCES commands (id) ON DELETE CASCADE,
    at          timestamptz NOT NULL,
    from_state  text,                               -- NULL for the creation
    to_state    text NOT NULL,                      -- equal to from_state for notes (retries,
    reason      text,                               -- a late device answer)
    detail      jsonb
);
CREATE INDEX command_history_command_idx ON command_history (command_id, id);

-- A guarded change (commands/store.py) updates each command only if it is still in the state
-- the change started from; this raises when fewer rows matched than were meant, so the whole
-- transaction rolls back inside the one round trip that also commits it.
CREATE FUNCTION commands_guard(expected integer, changed bigint) RETURNS integer
LANGUAGE plpgsql AS $$
BEGIN
    IF changed <> expected THEN
        RAISE EXCEPTION 'command_conflict: % of % commands were not in the expected state',
            expected - changed, expected USING ERRCODE = 'FGC01';
    END IF;
    RETURN expected;
END $$;
