-- The latest known state of each vehicle: what the live map and the command interlocks read.
-- Each field holds the newest value a sample reported (a sample without it does not erase it);
-- lat/lon come from the newest plausible fix (fix_time). Presence is kept here too.
CREATE TABLE vehicle_state (
    vehicle              integer PRIMARY KEY REFERENCES vehicles (id) ON DELETE CASCADE,
    time                 timestamptz,        -- newest sample stored (NULL: presence only so far)
    received_at          timestamptz,        -- when the gateway received that sample
    fix_time             timestamptz,        -- time of the newest unflagged fix (lat, lon)
    lat                  double precision,
    lon                  double precision,
    speed_kmh            real,
    heading_deg          real,
    soc_pct              real,
    pack_v               real,
    pack_a               real,
    aux_v                real,
    odometer_m           double precision,
    locked               boolean,
    ignition             boolean,
    immobilised          boolean,
    charging             boolean,
    flags                smallint,           -- flags of the newest sample
    online               boolean NOT NULL DEFAULT false,
    presence_changed_at  timestamptz,        -- time of the status message that set `online`
    last_seen            timestamptz,        -- gateway clock, newest telemetry or online status
    updated_at           timestamptz NOT NULL DEFAULT now()
) WITH (fillfactor = 70);
-- Every batch updates most rows; free space per page and no index on a changing column
-- (only the primary key) keep those updates HOT. expire_presence scans the table instead.
