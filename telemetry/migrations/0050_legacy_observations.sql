-- What a legacy platform observed during the parallel run (docs/dialects.md), forwarded over HTTP
-- (POST /v1/migration/shadow/{source}, Traccar's position forwarding). Kept apart from positions:
-- these are the other system's claims, compared with fleetgate's own observations, never mixed
-- into them. vehicle is the fleetgate vehicle whose device id is the legacy device's unique id,
-- where there is one when the observation arrives. Numbers are doubles: what a forwarder sends
-- within the checked ranges is kept as sent (a real would refuse a tiny accuracy as underflow).
CREATE TABLE legacy_observations (
    id             bigserial PRIMARY KEY,
    source         text NOT NULL,
    legacy_device  text NOT NULL,
    vehicle        integer REFERENCES vehicles (id) ON DELETE SET NULL,
    time           timestamptz NOT NULL,
    lat            double precision,
    lon            double precision,
    speed_kmh      double precision,
    heading_deg    double precision,
    altitude_m     double precision,
    accuracy_m     double precision,
    valid          boolean,
    attributes     jsonb NOT NULL DEFAULT '{}',
    received_at    timestamptz NOT NULL DEFAULT now(),
    UNIQUE (source, legacy_device, time)
);
CREATE INDEX legacy_observations_vehicle_time_idx ON legacy_observations (vehicle, time);
