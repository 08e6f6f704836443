-- One row per sample in a hypertable of daily chunks, compressed once it is no longer recent
-- and dropped after the retention window by TimescaleDB's background jobs.
-- No foreign key to vehicles: a per-row check would cost the hot path, and the gateway only
-- writes ids it resolved from the registry.
CREATE EXTENSION IF NOT EXISTS timescaledb;

CREATE TABLE positions (
    time         timestamptz NOT NULL,
    vehicle      integer NOT NULL,
    lat          double precision,
    lon          double precision,
    speed_kmh    real,
    heading_deg  real,
    soc_pct      real,
    pack_v       real,
    pack_a       real,
    aux_v        real,
    odometer_m   double precision,
    locked       boolean,
    ignition     boolean,
    immobilised  boolean,
    charging     boolean,
    flags        smallint NOT NULL DEFAULT 0,   -- FLAG_* bits, 1 = implausible jump
    received_at  timestamptz NOT NULL,
    PRIMARY KEY (vehicle, time)
);

-- The default btree on time would be one more index to maintain per row; a BRIN index serves
-- fleet-wide time ranges within a chunk just as well for data that arrives in time order.
SELECT create_hypertable('positions', by_range('time', INTERVAL '1 day'),
                         create_default_indexes => false);
CREATE INDEX positions_time_brin ON positions USING brin (time);

-- Compressed per vehicle, newest first: a vehicle's track is one segment, read in order.
ALTER TABLE positions SET (
    timescaledb.compress,
    timescaledb.compress_segmentby = 'vehicle',
    timescaledb.compress_orderby = 'time DESC'
);
SELECT add_compression_policy('positions', INTERVAL '{{recent_days}} days');
SELECT add_retention_policy('positions', INTERVAL '{{retention_days}} days');
