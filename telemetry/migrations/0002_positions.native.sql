-- One row per sample, natively partitioned by day (UTC). The store creates partitions ahead
-- (maintain) and on demand (a sample for a day without one); old partitions are dropped whole.
-- No foreign key to vehicles: a per-row check would cost the hot path, and the gateway only
-- writes ids it resolved from the registry.
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
) PARTITION BY RANGE (time);

-- Fleet-wide time ranges (the downsampling view, exports) within a day's partition; samples
-- arrive nearly in time order, so a BRIN index is tiny and almost free to maintain.
CREATE INDEX positions_time_brin ON positions USING brin (time);
