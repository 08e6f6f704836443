-- Command authority during a fleet migration (docs/migration.md, "Cut-over and roll-back").
-- A vehicle without a row here is fleetgate's (every vehicle that never came through a
-- migration). `fleetgate migrate import` gives each vehicle of a legacy export a row held by
-- that platform (its source: traccar, gbfs, csv); `migrate cutover` moves it to fleetgate,
-- `migrate rollback` back. Commands to a vehicle not held by fleetgate are refused (409), and
-- the dispatcher fails a queued one instead of sending it.
CREATE TABLE vehicle_authority (
    vehicle      integer PRIMARY KEY REFERENCES vehicles (id) ON DELETE CASCADE,
    holder       text NOT NULL,                  -- 'fleetgate' or the legacy platform's source
    legacy       text NOT NULL,                  -- the platform it came from (rollback returns it)
    batch        text,                           -- the cut-over batch while fleetgate holds it
    -- The device's own boundary (device clock): samples from here on go to fleetgate's broker
    -- (the set_config result's t, else the cut-over's time); NULL while the legacy one holds it.
    since_t      timestamptz,
    changed_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX vehicle_authority_batch ON vehicle_authority (batch) WHERE batch IS NOT NULL;

-- Every cut-over and roll-back, per vehicle: the history a batch's status and its backfill
-- windows are read from.
CREATE TABLE cutover_history (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    batch        text NOT NULL,
    action       text NOT NULL CHECK (action IN ('cutover', 'rollback')),
    vehicle      integer NOT NULL REFERENCES vehicles (id) ON DELETE CASCADE,
    holder       text NOT NULL,                  -- who holds it after this
    at           timestamptz NOT NULL DEFAULT now(),
    -- The device's boundary of this change (set_config result t), filled in when it answers.
    device_t     timestamptz,
    detail       jsonb NOT NULL DEFAULT '{}'
);
CREATE INDEX cutover_history_batch ON cutover_history (batch, vehicle, id);
