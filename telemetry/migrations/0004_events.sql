-- Events about vehicles: reported by devices now; geofence, battery, gateway and command
-- events from later issues. Stored once per (vehicle, time, type, source).
CREATE TABLE events (
    id           bigserial PRIMARY KEY,
    time         timestamptz NOT NULL,
    vehicle      integer NOT NULL,
    source       text NOT NULL
                 CHECK (source IN ('device', 'geofence', 'battery', 'gateway', 'command')),
    type         text NOT NULL,
    detail       jsonb,
    received_at  timestamptz NOT NULL DEFAULT now(),
    -- Also the index for one vehicle's events over time (its leading columns).
    UNIQUE (vehicle, time, type, source)
);
CREATE INDEX events_time_idx ON events (time);
