-- The parallel run's shadow batches (`fleetgate migrate shadow start`, docs/migration.md): a
-- reproducible sample of the fleet, stratified by vehicle type, whose vehicles fleetgate and
-- the legacy platform both observe for `days` from started_at. A batch runs until ends_at or
-- stopped_at; a vehicle is in at most one running batch and a name names at most one running
-- batch (checked by the store under a lock of this table: "running" depends on the clock).
CREATE TABLE shadow_batches (
    id          serial PRIMARY KEY,
    name        text NOT NULL CHECK (name ~ '^[A-Za-z0-9_.:-]{1,64}$'),
    percent     double precision NOT NULL CHECK (percent > 0 AND percent <= 100),
    days        double precision NOT NULL CHECK (days > 0 AND days <= 366),
    seed        bigint NOT NULL,
    started_at  timestamptz NOT NULL,
    ends_at     timestamptz NOT NULL CHECK (ends_at > started_at),
    stopped_at  timestamptz CHECK (stopped_at >= started_at),
    fleet_size  integer NOT NULL,          -- vehicles registered when the sample was picked
    by_type     jsonb NOT NULL             -- {vehicle type: vehicles picked}
);
CREATE INDEX shadow_batches_name_idx ON shadow_batches (name, id);

CREATE TABLE shadow_batch_vehicles (
    batch    integer NOT NULL REFERENCES shadow_batches (id) ON DELETE CASCADE,
    vehicle  integer NOT NULL REFERENCES vehicles (id) ON DELETE CASCADE,
    PRIMARY KEY (batch, vehicle)
);
CREATE INDEX shadow_batch_vehicles_vehicle_idx ON shadow_batch_vehicles (vehicle);

-- validate reads the legacy observations of a batch's vehicles; those that arrived before their
-- device was registered have no vehicle and are found by the device id.
CREATE INDEX legacy_observations_unmatched_idx ON legacy_observations (legacy_device, time)
    WHERE vehicle IS NULL;
